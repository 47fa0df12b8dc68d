//! The AVX2 INT4 GEMMs (W4A8: integer group multipliers, [`crate::I4mGemmFn`], or f16 group
//! scales, [`crate::I4GemmFn`]) without going through the INT8 kernel: the 4-bit codes make
//! `vpmaddubsw` exact.
//!
//! AVX2 without VNNI keeps INT8 exact only by widening both sides to i16 (`vpmaddwd`, see
//! `avx2.rs`); `vpmaddubsw` (u8 × i8, pairs summed into a *saturating* i16) would be twice the
//! work per instruction but can overflow on full-range INT8 weights. With the raw codes `Q`
//! (−8..=7) it cannot: a pair is at most 255·8·2 = 4080 in magnitude, and eight of them, 32640,
//! still fit an i16. So per 16-column panel and row, each quad of depths costs two `vpmaddubsw`
//! and two i16 adds, and every 8 quads (or group, if shorter) one `vpmaddwd` per 8 columns turns
//! the i16 pair sums into i32 column sums: by the columns' multipliers `M` for INT4M (both words
//! of a column's dword hold its `M`, so the result is `Σ a·Q·M` in the column's i32 lane), by
//! ones for f16 scales, whose group sums then take the float step of the generic twin
//! (`(dot − a_zp·gsum) as f32 · scale`, added in order). The integers are exactly the twins'.
//!
//! Rows of more than [`PACKED_ROWS`] widen a block of panels into signed bytes (`Q`, two
//! `vpshufb` per quad) on the stack once per call; shorter ones, and panels deeper than the
//! buffer, unpack the nibbles where they are used. Micro-tile: 3 rows × 16 columns (6
//! accumulators, 6 i16 sums, 2 weight vectors, one broadcast activation quad).

use super::Epi;
use crate::check::check_i4;
use crate::i4m::WIDE_BYTES;
use crate::pack::PANEL;
use crate::Act;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

/// Rows per micro-tile.
const MR: usize = 3;
/// Quads summed in i16 before the multiply into i32 (8 · 4080 = 32640 ≤ i16::MAX).
const I16_QUADS: usize = 8;
/// Largest group of the f16-scale form ([`crate::I4GemmFn`]'s contract; any group works here).
const MAX_GROUP: usize = 256;
/// Up to this many rows, the tiles unpack the packed nibbles themselves (widening whole panels
/// first would cost more than the multiply).
const PACKED_ROWS: usize = 3;

/// See [`crate::I4mGemmFn`].
#[allow(clippy::too_many_arguments)]
pub fn i4m_gemm_avx2(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[u8],
    group: usize,
    gmul: &[u8],
    w_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(super::has_avx2_f16c(), "i4m_gemm_avx2 on a CPU without AVX2 and F16C");
    let groups = crate::i4m::check(m, k, n, a, lda, bp, group, gmul, w_sum, scale, bias, out, ldo);
    if m == 0 || n == 0 {
        return;
    }
    let e = Epi::new(n, a_zp, w_sum, scale, bias, act);
    let c = Call { gmul: gmul.as_ptr(), ..Call::new(m, k, group, groups, a, lda, ldo, e) };
    // SAFETY: AVX2 and F16C are present (asserted); `check` proved the rows of `a` (k = k4(k)
    // bytes each: group divides k and 4 divides group), every packed panel, its multipliers,
    // the epilogue vectors and the output rows.
    unsafe {
        run::<false>(&c, bp.as_ptr(), out.as_mut_ptr());
        super::avx2::gelu_rows_avx2(m, n, act, out, ldo);
    }
}

/// See [`crate::I4GemmFn`].
#[allow(clippy::too_many_arguments)]
pub fn i4_gemm_avx2(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[u8],
    group: usize,
    gsum: &[i32],
    gscale: &[u16],
    x_scale: f32,
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(super::has_avx2_f16c(), "i4_gemm_avx2 on a CPU without AVX2 and F16C");
    let groups = check_i4(m, k, n, a, lda, bp, group, gsum, gscale, bias, out, ldo, MAX_GROUP);
    if m == 0 || n == 0 {
        return;
    }
    // Only `n`, `a_zp`, `bias` and `act` of the epilogue are read in this form.
    let e = Epi::new(n, a_zp, &[], &[], bias, act);
    let c = Call {
        gsum: gsum.as_ptr(),
        gscale: gscale.as_ptr(),
        x_scale,
        ..Call::new(m, k, group, groups, a, lda, ldo, e)
    };
    // SAFETY: AVX2 and F16C are present (asserted); `check_i4` proved the rows of `a`, every
    // packed panel, the group sums and scales, the bias and the output rows.
    unsafe {
        run::<true>(&c, bp.as_ptr(), out.as_mut_ptr());
        super::avx2::gelu_rows_avx2(m, n, act, out, ldo);
    }
}

/// What every tile of one call shares. `GS` (f16 group scales) reads `gsum`, `gscale` and
/// `x_scale`; INT4M reads `gmul` and the whole epilogue `e`.
struct Call {
    m: usize,
    quads: usize,
    /// Quads per group.
    gq: usize,
    groups: usize,
    a: *const u8,
    lda: usize,
    ldo: usize,
    e: Epi,
    gmul: *const u8,
    gsum: *const i32,
    gscale: *const u16,
    x_scale: f32,
}

impl Call {
    /// The shape of a call, with no group operands (each form sets its own).
    #[allow(clippy::too_many_arguments)]
    fn new(
        m: usize,
        k: usize,
        group: usize,
        groups: usize,
        a: &[u8],
        lda: usize,
        ldo: usize,
        e: Epi,
    ) -> Call {
        Call {
            m,
            quads: k / 4,
            gq: group / 4,
            groups,
            a: a.as_ptr(),
            lda,
            ldo,
            e,
            gmul: core::ptr::null(),
            gsum: core::ptr::null(),
            gscale: core::ptr::null(),
            x_scale: 0.0,
        }
    }
}

/// All panels of one call: widened in blocks into a stack buffer when there are more than
/// [`PACKED_ROWS`] rows and a panel fits it, else straight from the packed codes.
///
/// # Safety
/// AVX2 and F16C are present and `c`, `bp` and `out` satisfy the form's preconditions.
#[target_feature(enable = "avx2,f16c")]
unsafe fn run<const GS: bool>(c: &Call, bp: *const u8, out: *mut f32) {
    let panels = c.e.n.div_ceil(PANEL);
    let per_panel = c.quads * 64;
    if c.m <= PACKED_ROWS || per_panel > WIDE_BYTES {
        // SAFETY: the caller's contract.
        unsafe { panels_block::<true, GS>(c, bp as *const i8, 0, panels, out) };
        return;
    }
    #[repr(C, align(64))]
    struct Wide([MaybeUninit<i8>; WIDE_BYTES]);
    let mut wide = Wide([MaybeUninit::<i8>::uninit(); WIDE_BYTES]);
    let np = WIDE_BYTES / per_panel;
    let mut p0 = 0;
    while p0 < panels {
        let nb = np.min(panels - p0);
        // SAFETY: panels p0..p0+nb of `bp` exist (quads·32 bytes each) and the buffer holds
        // nb·per_panel ≤ WIDE_BYTES bytes, all written by `widen_q` before the tiles read them.
        unsafe {
            let w = wide.0.as_mut_ptr() as *mut i8;
            widen_q(bp.add(p0 * c.quads * 32), nb * c.quads, w);
            panels_block::<false, GS>(c, w, p0, nb, out);
        }
        p0 += nb;
    }
}

/// Signed nibble values: code `c` (0..=15, two's complement) as an i8.
const NIBBLE_LUT: [i8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1];

/// The two weight vectors of one packed quad (32 bytes at `src`): columns 0..8 (low nibbles)
/// and 8..16 (high ones), each byte the signed code `Q`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn unpack(src: *const u8, lut: __m256i) -> [__m256i; 2] {
    // SAFETY: the caller provides 32 readable bytes at `src`.
    let raw = unsafe { _mm256_loadu_si256(src as *const __m256i) };
    let low = _mm256_set1_epi8(0x0F);
    [
        _mm256_shuffle_epi8(lut, _mm256_and_si256(raw, low)),
        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low)),
    ]
}

/// Unpacks `quads` packed quads at `src` into `quads`·64 signed bytes at `dst` (the `K4N16` i8
/// layout of the widened panels).
#[target_feature(enable = "avx2")]
unsafe fn widen_q(src: *const u8, quads: usize, dst: *mut i8) {
    let lut = lut();
    for q in 0..quads {
        // SAFETY: the caller provides quads·32 readable bytes at src and quads·64 writable
        // bytes at dst.
        unsafe {
            let [lo, hi] = unpack(src.add(q * 32), lut);
            _mm256_storeu_si256(dst.add(q * 64) as *mut __m256i, lo);
            _mm256_storeu_si256(dst.add(q * 64 + 32) as *mut __m256i, hi);
        }
    }
}

#[target_feature(enable = "avx2")]
#[inline]
fn lut() -> __m256i {
    // SAFETY: reads the 16 bytes of the table.
    let t = unsafe { _mm_loadu_si128(NIBBLE_LUT.as_ptr() as *const __m128i) };
    _mm256_broadcastsi128_si256(t)
}

/// Every tile of panels `p0..p0 + np`: their weights at `w` (packed nibbles, `quads`·32 bytes
/// per panel from panel 0, when `PACKED`; else widened bytes, `quads`·64 per panel from panel
/// `p0`), outputs from column `16·p0` of `out`.
#[target_feature(enable = "avx2,f16c")]
unsafe fn panels_block<const PACKED: bool, const GS: bool>(
    c: &Call,
    w: *const i8,
    p0: usize,
    np: usize,
    out: *mut f32,
) {
    let per_panel = if PACKED { c.quads * 32 } else { c.quads * 64 };
    let mut i = 0;
    while i < c.m {
        let mr = (c.m - i).min(MR);
        for t in 0..np {
            let p = p0 + t;
            // SAFETY: panel p's weights, group operands and output columns exist (the
            // caller's contract); rows i..i+mr of `a` and `out` exist.
            unsafe {
                let wp = w.add(if PACKED { p * per_panel } else { t * per_panel });
                let a = c.a.add(i * c.lda);
                let o = out.add(i * c.ldo);
                match mr {
                    3 => tile::<3, PACKED, GS>(c, a, wp, p, o),
                    2 => tile::<2, PACKED, GS>(c, a, wp, p, o),
                    _ => tile::<1, PACKED, GS>(c, a, wp, p, o),
                }
            }
        }
        i += mr;
    }
}

/// One `R × 16` output tile: rows at `a` (stride `c.lda`), panel `p`'s weights at `w` (packed
/// or widened, see [`panels_block`]), output columns `16p..16p + 16` (stores masked at `n`).
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn tile<const R: usize, const PACKED: bool, const GS: bool>(
    c: &Call,
    a: *const u8,
    w: *const i8,
    p: usize,
    out: *mut f32,
) {
    let lut = lut();
    let ones = _mm256_set1_epi16(1);
    let zp = _mm256_set1_epi32(c.e.a_zp);
    let j0 = p * PANEL;
    // INT4M: i32 column sums; f16 scales: f32 sums of the scaled groups.
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let mut facc = [[_mm256_setzero_ps(); 2]; R];
    let mut q = 0;
    // SAFETY: reads R rows of `quads` quads (4 bytes each) at `a`, the panel's `quads` weight
    // quads and its `groups` × 16 group operands (the caller's contract).
    unsafe {
        for g in 0..c.groups {
            let side = (p * c.groups + g) * PANEL;
            // What a column's pair sums are multiplied by: its M in both words, or 1.
            let mw = if GS {
                [ones; 2]
            } else {
                [0, 8].map(|h| {
                    let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        c.gmul.add(side + h) as *const __m128i
                    ));
                    _mm256_or_si256(v, _mm256_slli_epi32::<16>(v))
                })
            };
            let mut dot = [[_mm256_setzero_si256(); 2]; R];
            let gend = q + c.gq;
            while q < gend {
                let cend = (q + I16_QUADS).min(gend);
                let mut s16 = [[_mm256_setzero_si256(); 2]; R];
                for qq in q..cend {
                    let wv = if PACKED {
                        unpack(w.add(qq * 32) as *const u8, lut)
                    } else {
                        [0, 32].map(|h| _mm256_loadu_si256(w.add(qq * 64 + h) as *const __m256i))
                    };
                    for (r, sr) in s16.iter_mut().enumerate() {
                        let x = (a.add(r * c.lda + qq * 4) as *const i32).read_unaligned();
                        let av = _mm256_set1_epi32(x);
                        for h in 0..2 {
                            sr[h] = _mm256_add_epi16(sr[h], _mm256_maddubs_epi16(av, wv[h]));
                        }
                    }
                }
                let sums = if GS { &mut dot } else { &mut acc };
                for (sr, s16r) in sums.iter_mut().zip(&s16) {
                    for h in 0..2 {
                        sr[h] = _mm256_add_epi32(sr[h], _mm256_madd_epi16(s16r[h], mw[h]));
                    }
                }
                q = cend;
            }
            if GS {
                for h in 0..2 {
                    let at = side + 8 * h;
                    let corr = _mm256_mullo_epi32(
                        zp,
                        _mm256_loadu_si256(c.gsum.add(at) as *const __m256i),
                    );
                    let sc = _mm256_cvtph_ps(_mm_loadu_si128(c.gscale.add(at) as *const __m128i));
                    for (fr, dr) in facc.iter_mut().zip(&dot) {
                        let t = _mm256_cvtepi32_ps(_mm256_sub_epi32(dr[h], corr));
                        fr[h] = _mm256_add_ps(fr[h], _mm256_mul_ps(t, sc));
                    }
                }
            }
        }
        for (h, j) in [j0, j0 + 8].into_iter().enumerate() {
            if j >= c.e.n {
                break;
            }
            if GS {
                let f: [__m256; R] = core::array::from_fn(|r| facc[r][h]);
                scaled_epilogue8(&f, c, j, out);
            } else {
                let sums: [__m256i; R] = core::array::from_fn(|r| acc[r][h]);
                super::avx2::epilogue8(&sums, &c.e, j, out, c.ldo);
            }
        }
    }
}

/// The f16-scale form's end of `R` rows × 8 columns from `j`: `act(f · x_scale + bias)` (ReLU
/// here, the GELU forms over whole rows afterwards), stores stopping at `n`.
///
/// # Safety
/// AVX2 is present; the bias holds column j and rows `0..R` of `out` (stride `c.ldo`) hold
/// columns `j..min(j + 8, n)`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn scaled_epilogue8<const R: usize>(f: &[__m256; R], c: &Call, j: usize, out: *mut f32) {
    let valid = (c.e.n - j).min(8);
    let mut b = [0f32; 8];
    // SAFETY: reads bias columns j..j+valid and writes R rows of them (the caller's contract).
    unsafe {
        core::ptr::copy_nonoverlapping(c.e.bias.add(j), b.as_mut_ptr(), valid);
        let (xs, bv) = (_mm256_set1_ps(c.x_scale), _mm256_loadu_ps(b.as_ptr()));
        for (r, fr) in f.iter().enumerate() {
            let mut v = _mm256_add_ps(_mm256_mul_ps(*fr, xs), bv);
            if c.e.act == Act::Relu {
                v = _mm256_max_ps(v, _mm256_setzero_ps());
            }
            let o = out.add(r * c.ldo + j);
            if valid == 8 {
                _mm256_storeu_ps(o, v);
            } else {
                let mut tmp = [0f32; 8];
                _mm256_storeu_ps(tmp.as_mut_ptr(), v);
                core::ptr::copy_nonoverlapping(tmp.as_ptr(), o, valid);
            }
        }
    }
}
