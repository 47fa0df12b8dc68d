//! AVX-512 softmax rows with a fused multiply-add `exp`, four rows per pass. The generic body
//! compiled for AVX-512 (this variant until stop 27) was held up twice over: ~36 vector
//! operations per 16 values, most of them in an `exp` written without FMA so that every ISA
//! rounds it alike (with FMA the same range reduction and degree-7 polynomial take 12), and, one
//! 128-wide row at a time, the dependent chains of its maximum, sum and lane reductions. Either
//! change alone measured within noise; both: one MiniLM head's 128 rows 14.8 → 7.7 µs. Results
//! agree with the generic twin within the family's float bound (tested), not bit for bit.
//!
//! What is kept exactly: the scores' scale is one rounded multiply and the mask one rounded add
//! before anything else (so `alpha` read with the row equals a scaling pass before it, which the
//! fused attention relies on), NaN in gives NaN out, values more than 87.3 below the row's
//! maximum give exactly 0 (a masked key contributes nothing), the maximum is exact.

use core::arch::x86_64::*;

const LANES: usize = 16;

/// Rows that go through each pass together.
const ROWS: usize = 4;

/// See [`crate::SoftmaxFn`].
pub fn softmax_row_avx512(x: &mut [f32], n: usize, masks: &[&[f32]], alpha: f32) {
    assert!(super::has_avx512f(), "softmax_row_avx512 on a CPU without AVX-512 F");
    let rows = masks.len();
    assert!(x.len() >= rows * n, "softmax: {rows} rows of {n} need {} values", rows * n);
    if n == 0 {
        return;
    }
    let mut r = 0;
    while r < rows {
        let g = (rows - r).min(ROWS);
        let ms = &masks[r..r + g];
        let xs = x[r * n..(r + g) * n].as_mut_ptr();
        // Rows as the generic body takes them: a mask shorter than the row limits it.
        let len = |m: &[f32]| if m.is_empty() { n } else { n.min(m.len()) };
        let same = ms.iter().all(|m| len(m) == n);
        let masked = ms.iter().all(|m| !m.is_empty());
        let unmasked = ms.iter().all(|m| m.is_empty());
        if g == ROWS && same && (masked || unmasked) {
            let mp: [*const f32; ROWS] = core::array::from_fn(|i| ms[i].as_ptr());
            // SAFETY: AVX-512 F is present (asserted); `xs` holds ROWS rows of n values and,
            // when `masked`, every mask at least n (checked above).
            unsafe { rows_any(xs, n, n, mp, masked, alpha) };
        } else {
            for (i, m) in ms.iter().enumerate() {
                // SAFETY: as above for one row of n values (len(m) ≤ n of them, and at most
                // the mask's length when it has one).
                unsafe { rows_any(xs.add(i * n), n, len(m), [m.as_ptr()], !m.is_empty(), alpha) };
            }
        }
        r += g;
    }
}

/// Lanes `0..len` of a chunk (`len` ≤ 16).
fn lanes(len: usize) -> __mmask16 {
    if len >= LANES {
        0xFFFF
    } else {
        (1u16 << len) - 1
    }
}

/// e^x on 16 lanes: `x = n·ln2 + r` (|r| ≤ ln2/2, `n` by the 1.5·2^23 rounding trick), the
/// degree-7 Taylor polynomial of e^r by Horner's rule in FMAs, times 2^n; lanes below -87.3
/// give 0, NaN stays NaN (relative error ≤ 3e-7 like the generic `exp`, tested).
#[target_feature(enable = "avx512f")]
#[inline]
fn exp16(x: __m512) -> __m512 {
    use crate::generic::math::exp_consts::{HI, LN2_HI, LN2_LO, LO, LOG2E, MAGIC};
    let s = _mm512_set1_ps;
    // max/min return their second operand when either is NaN: x stays NaN through both.
    let xc = _mm512_min_ps(s(HI), _mm512_max_ps(s(LO), x));
    let t = _mm512_fmadd_ps(xc, s(LOG2E), s(MAGIC));
    let n = _mm512_sub_ps(t, s(MAGIC));
    let r = _mm512_fnmadd_ps(n, s(LN2_HI), xc);
    let r = _mm512_fnmadd_ps(n, s(LN2_LO), r);
    let mut p = s(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, s(c));
    }
    // 2^n through the exponent bits (n sits in t's low mantissa bits).
    let ni = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(s(MAGIC)));
    let scale =
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127))));
    // Zero where x < -87.3 (false for NaN, which keeps its NaN).
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, s(LO));
    _mm512_maskz_mul_ps(keep, p, scale)
}

/// [`rows_at`] with MASK = `masked` and SCALE = `alpha != 1` chosen at run time.
///
/// # Safety
/// As [`rows_at`] with MASK = `masked`.
#[target_feature(enable = "avx512f")]
unsafe fn rows_any<const R: usize>(
    x: *mut f32,
    n: usize,
    l: usize,
    m: [*const f32; R],
    masked: bool,
    alpha: f32,
) {
    // SAFETY: the caller's contract is `rows_at`'s for the MASK chosen here.
    unsafe {
        match (masked, alpha == 1.0) {
            (true, true) => rows_at::<R, true, false>(x, n, l, m, alpha),
            (true, false) => rows_at::<R, true, true>(x, n, l, m, alpha),
            (false, true) => rows_at::<R, false, false>(x, n, l, m, alpha),
            (false, false) => rows_at::<R, false, true>(x, n, l, m, alpha),
        }
    }
}

/// The softmax in place of the first `l` values of each of R rows `n` apart at `x`, row `r`'s
/// mask at `m[r]` when MASK; each pass runs over the R rows together.
///
/// # Safety
/// AVX-512 F; `x` valid for reads and writes of `(R − 1)·n + l` values, each `m[r]` (when
/// MASK) for reads of `l`.
#[target_feature(enable = "avx512f")]
unsafe fn rows_at<const R: usize, const MASK: bool, const SCALE: bool>(
    x: *mut f32,
    n: usize,
    l: usize,
    m: [*const f32; R],
    alpha: f32,
) {
    let av = _mm512_set1_ps(alpha);
    // alpha·x rounded, then + mask rounded: the terms of a scaling pass and a mask add.
    let load = |r: usize, c: usize| {
        // SAFETY: chunk c of row r covers values r·n + 16c.., of which `lanes(l − 16c)` are
        // read or written (here and in every access below), all inside row r's first l.
        unsafe {
            let k = lanes(l - c * LANES);
            let v = _mm512_maskz_loadu_ps(k, x.add(r * n + c * LANES));
            let v = if SCALE { _mm512_mul_ps(v, av) } else { v };
            if MASK {
                _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, m[r].add(c * LANES)))
            } else {
                v
            }
        }
    };
    let chunks = l.div_ceil(LANES);
    let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); R];
    for c in 0..chunks {
        let k = lanes(l - c * LANES);
        for (r, mr) in mx.iter_mut().enumerate() {
            // vmaxps keeps its second operand for a NaN lane: NaN never wins (as generic).
            *mr = _mm512_mask_max_ps(*mr, k, load(r, c), *mr);
        }
    }
    let top: [__m512; R] = core::array::from_fn(|r| _mm512_set1_ps(_mm512_reduce_max_ps(mx[r])));
    let mut sum = [_mm512_setzero_ps(); R];
    for c in 0..chunks {
        let k = lanes(l - c * LANES);
        for (r, sr) in sum.iter_mut().enumerate() {
            let e = exp16(_mm512_sub_ps(load(r, c), top[r]));
            // SAFETY: as above.
            unsafe { _mm512_mask_storeu_ps(x.add(r * n + c * LANES), k, e) };
            *sr = _mm512_mask_add_ps(*sr, k, *sr, e);
        }
    }
    let inv: [__m512; R] =
        core::array::from_fn(|r| _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum[r])));
    for c in 0..chunks {
        let k = lanes(l - c * LANES);
        for (r, ir) in inv.iter().enumerate() {
            // SAFETY: as above.
            unsafe {
                let p = x.add(r * n + c * LANES);
                _mm512_mask_storeu_ps(p, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p), *ir));
            }
        }
    }
}
