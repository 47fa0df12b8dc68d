//! AVX-512 VNNI: `vpdpbusd` multiplies 16 lanes × 4 u8 activations by 4 i8 weights and adds the
//! four products into an i32 lane: exactly one `K4N16` quad per instruction.

use super::Epi;
use crate::check::check_gemm;
use crate::generic::quantize_one_u8;
use crate::pack::{k4, PANEL};
use crate::Act;
use core::arch::x86_64::*;

/// Rows per micro-tile: 8 rows × 2 panels = 16 zmm accumulators of the 32.
const MR: usize = 8;

/// See [`crate::I8GemmFn`].
#[allow(clippy::too_many_arguments)]
pub fn i8_gemm_avx512vnni(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[i8],
    b_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(super::has_avx512vnni(), "i8_gemm_avx512vnni on a CPU without AVX-512 VNNI");
    check_gemm(m, k, n, a, lda, bp, b_sum, scale, bias, out, ldo);
    if m == 0 || n == 0 {
        return;
    }
    let e = Epi::new(n, a_zp, b_sum, scale, bias, act);
    // SAFETY: the CPU has AVX-512 F and VNNI (asserted above), and `check_gemm` proved every
    // row of `a` readable through k4(k), every panel of `bp` present, the epilogue vectors at
    // least n long and every written output element inside `out`.
    unsafe { gemm(m, k, n, a.as_ptr(), lda, bp.as_ptr(), &e, out.as_mut_ptr(), ldo) }
    if matches!(act, Act::Gelu | Act::GeluTanh) {
        for i in 0..m {
            // SAFETY: AVX-512 F is present (asserted above).
            unsafe { act_avx512(act, &mut out[i * ldo..i * ldo + n]) };
        }
    }
}

/// The GELU forms over whole output rows (long enough to vectorize), same bits as generic.
#[target_feature(enable = "avx512f")]
pub(super) fn act_avx512(act: Act, v: &mut [f32]) {
    act.apply_slice(v)
}

#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: *const u8,
    lda: usize,
    bp: *const i8,
    e: &Epi,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees AVX-512 F/VNNI and the bounds of [`check_gemm`]; every pointer
    // offset below stays inside the rows, panels and output rows those bounds cover.
    unsafe {
        let quads = k4(k) / 4;
        let pstride = PANEL * k4(k);
        let panels = n.div_ceil(PANEL);
        let mut p = 0;
        while p < panels {
            let np = if p + 2 <= panels { 2 } else { 1 };
            let b = bp.add(p * pstride);
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                let (ai, oi) = (a.add(i * lda), out.add(i * ldo));
                let j0 = p * PANEL;
                // SAFETY (for each arm): rows i..i+mr exist, panels p..p+np exist.
                match (mr, np) {
                    (8, 2) => tile::<8, 2>(quads, ai, lda, b, pstride, e, j0, oi, ldo),
                    (8, _) => tile::<8, 1>(quads, ai, lda, b, pstride, e, j0, oi, ldo),
                    (4..=7, 2) => tile::<4, 2>(quads, ai, lda, b, pstride, e, j0, oi, ldo),
                    (4..=7, _) => tile::<4, 1>(quads, ai, lda, b, pstride, e, j0, oi, ldo),
                    (_, 2) => tile::<1, 2>(quads, ai, lda, b, pstride, e, j0, oi, ldo),
                    _ => tile::<1, 1>(quads, ai, lda, b, pstride, e, j0, oi, ldo),
                }
                i += match mr {
                    8 => 8,
                    4..=7 => 4,
                    _ => 1,
                };
            }
            p += np;
        }
    }
}

/// One `R × (NP·16)` output tile: rows from `a`, panels from `b`, columns from `j0`.
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const NP: usize>(
    quads: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    pstride: usize,
    e: &Epi,
    j0: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: reads quads·4 bytes of R rows at stride lda (inside a, proven by check_gemm), NP
    // whole panels of b, epilogue vectors with masks that stop at n, and writes masked rows of out.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); NP]; R];
        for q in 0..quads {
            let mut bv = [_mm512_setzero_si512(); NP];
            for (t, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(b.add(t * pstride + q * 64) as *const _);
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32((a.add(r * lda + q * 4) as *const i32).read_unaligned());
                for (t, x) in accr.iter_mut().enumerate() {
                    *x = _mm512_dpbusd_epi32(*x, av, bv[t]);
                }
            }
        }
        let zp = _mm512_set1_epi32(e.a_zp);
        for t in 0..NP {
            let j = j0 + t * PANEL;
            let valid = (e.n - j).min(PANEL);
            let mask: __mmask16 = if valid == PANEL { 0xFFFF } else { (1u16 << valid) - 1 };
            let sum = _mm512_maskz_loadu_epi32(mask, e.b_sum.add(j));
            let sc = _mm512_maskz_loadu_ps(mask, e.scale.add(j));
            let bi = _mm512_maskz_loadu_ps(mask, e.bias.add(j));
            let corr = _mm512_mullo_epi32(zp, sum);
            for (r, accr) in acc.iter().enumerate() {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(accr[t], corr));
                let mut f = _mm512_add_ps(_mm512_mul_ps(v, sc), bi);
                if e.act == Act::Relu {
                    f = _mm512_max_ps(f, _mm512_setzero_ps());
                }
                _mm512_mask_storeu_ps(out.add(r * ldo + j), mask, f);
            }
        }
    }
}

crate::check::quantizer!(
    /// See [`crate::QuantizeU8Fn`]; 16 values per step, the tail by the generic element function.
    quantize_u8_avx512,
    super::has_avx512vnni,
    "AVX-512",
    quantize_row
);

#[target_feature(enable = "avx512f")]
unsafe fn quantize_row(x: &[f32], inv: f32, mult: &[f32], zp: i32, q: &mut [u8]) {
    // SAFETY: full ≤ k, so every 16-wide load of x/mult and store of q stays within k elements.
    unsafe {
        let k = x.len();
        let full = k / 16 * 16;
        let (lo, hi) = (_mm512_set1_ps(-300.0), _mm512_set1_ps(300.0));
        let (zv, z0, z255) =
            (_mm512_set1_epi32(zp), _mm512_setzero_si512(), _mm512_set1_epi32(255));
        let inv_v = _mm512_set1_ps(inv);
        let mut j = 0;
        while j < full {
            let xv = _mm512_loadu_ps(x.as_ptr().add(j));
            let m = if mult.is_empty() { inv_v } else { _mm512_loadu_ps(mult.as_ptr().add(j)) };
            let t = _mm512_mul_ps(xv, m);
            // NaN to 0 (the zero point after the shift), then clamp like the twin.
            let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(t, t);
            let t = _mm512_min_ps(_mm512_max_ps(_mm512_maskz_mov_ps(ordered, t), lo), hi);
            // cvtps rounds to nearest even under the default MXCSR, as the twin does.
            let v = _mm512_add_epi32(_mm512_cvtps_epi32(t), zv);
            let v = _mm512_min_epi32(_mm512_max_epi32(v, z0), z255);
            _mm_storeu_si128(q.as_mut_ptr().add(j) as *mut __m128i, _mm512_cvtepi32_epi8(v));
            j += 16;
        }
        let zf = zp as f32;
        for j in full..k {
            q[j] = quantize_one_u8(x[j], if mult.is_empty() { inv } else { mult[j] }, zf);
        }
    }
}
