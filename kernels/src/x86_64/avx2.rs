//! AVX2 without VNNI: u8 activations and i8 weights widened to i16, `vpmaddwd` sums pairs into
//! i32 lanes (exact: no `vpmaddubsw` saturation), lanes of a column folded after the k loop.
//!
//! Micro-tile: `MR` = 6 rows × 8 columns (half a `K4N16` panel): 12 accumulators (each 4
//! columns × 2 partial sums), 2 widened weight vectors and 1 broadcast activation quad in the
//! 16 ymm registers. The columns are cut into blocks whose weights fit in L2; in each, a block
//! of 6 activation rows is widened to i16 once into a stack buffer (`vpbroadcastq` then loads
//! a quad ready for `vpmaddwd`, with no shuffle per use) and every panel of the block streams
//! past it. Per quad and tile: 2 weight widenings, 12 `vpmaddwd`, 12 `vpaddd`. Rows deeper than
//! the buffer (`k4(k) > WIDE_K`) widen each activation quad where it is used instead.

use super::Epi;
use crate::check::check_gemm;
use crate::pack::{k4, PANEL};
use crate::Act;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

/// Rows per micro-tile.
const MR: usize = 6;
/// Columns per micro-tile (half a panel).
const NR: usize = 8;
/// Deepest row (in bytes, `k4(k)`) widened once into the stack buffer (`MR · WIDE_K` i16).
const WIDE_K: usize = 2048;
/// Weight bytes of one column block (kept in L2 while every row block streams past it).
const L2_WEIGHTS: usize = 192 * 1024;

/// See [`crate::I8GemmFn`].
#[allow(clippy::too_many_arguments)]
pub fn i8_gemm_avx2(
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
    assert!(super::has_avx2(), "i8_gemm_avx2 on a CPU without AVX2");
    check_gemm(m, k, n, a, lda, bp, b_sum, scale, bias, out, ldo);
    if m == 0 || n == 0 {
        return;
    }
    let e = Epi::new(n, a_zp, b_sum, scale, bias, act);
    // SAFETY: the CPU has AVX2 (asserted above), and `check_gemm` proved every row of `a`
    // readable through k4(k), every panel of `bp` present, the epilogue vectors at least n long
    // and every written output element inside `out`.
    unsafe { gemm(m, k, n, a.as_ptr(), lda, bp.as_ptr(), &e, out.as_mut_ptr(), ldo) }
    // SAFETY: AVX2 is present (asserted on entry).
    unsafe { gelu_rows_avx2(m, n, act, out, ldo) };
}

/// The GELU forms over `m` finished rows of `n` values at stride `ldo` (other activations are
/// applied in the tiles' epilogues).
///
/// # Safety
/// AVX2 is present.
pub(super) unsafe fn gelu_rows_avx2(m: usize, n: usize, act: Act, out: &mut [f32], ldo: usize) {
    if matches!(act, Act::Gelu | Act::GeluTanh) {
        for i in 0..m {
            // SAFETY: AVX2 is present (the caller's contract).
            unsafe { gelu_avx2(act, &mut out[i * ldo..i * ldo + n]) };
        }
    }
}

/// Where a tile's activation quads come from: a widened i16 block (`WIDE`, stride `lda` i16) or
/// the u8 rows themselves (stride `lda` bytes, widened per use).
#[derive(Clone, Copy)]
struct Rows {
    p: *const u8,
    lda: usize,
}

#[target_feature(enable = "avx2")]
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
    let kq = k4(k);
    let wide = kq <= WIDE_K;
    let mut buf = MaybeUninit::<[__m256i; MR * WIDE_K / 16]>::uninit();
    let bufp = buf.as_mut_ptr() as *mut i16;
    // Column blocks whose weights fit in L2 (`L2_WEIGHTS` bytes), so the row blocks that stream
    // past them do not reload them from L3 (which two threads would share).
    let nc = (L2_WEIGHTS / kq / PANEL * PANEL).max(PANEL);
    for jb in (0..n).step_by(nc) {
        let jend = (jb + nc).min(n);
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR);
            // SAFETY: rows i..i+mr of `a` are readable through kq bytes (check_gemm); when
            // `wide`, the buffer holds MR·WIDE_K ≥ mr·kq i16, all written before any tile reads
            // them.
            let rows = unsafe {
                if wide {
                    for r in 0..mr {
                        widen_row(a.add((i + r) * lda), kq, bufp.add(r * kq));
                    }
                    Rows { p: bufp as *const u8, lda: kq }
                } else {
                    Rows { p: a.add(i * lda), lda }
                }
            };
            // SAFETY: row i exists in `out` (check_gemm: out holds (m-1)·ldo + n elements).
            let oi = unsafe { out.add(i * ldo) };
            for j0 in (jb..jend).step_by(NR) {
                // Half `j0 % 16 / 8` of panel `j0 / 16`: 32 bytes of each 64-byte quad.
                // SAFETY: the panel exists (check_gemm); the tile reads kq/4 quads of it and
                // writes columns j0.. (masked at n) of rows i..i+mr.
                unsafe {
                    let b = bp.add(j0 / PANEL * PANEL * kq + j0 % PANEL * 4);
                    macro_rules! t {
                        ($r:literal) => {
                            if wide {
                                tile::<$r, true>(kq / 4, rows, b, e, j0, oi, ldo)
                            } else {
                                tile::<$r, false>(kq / 4, rows, b, e, j0, oi, ldo)
                            }
                        };
                    }
                    match mr {
                        6 => t!(6),
                        5 => t!(5),
                        4 => t!(4),
                        3 => t!(3),
                        2 => t!(2),
                        _ => t!(1),
                    }
                }
            }
            i += mr;
        }
    }
}

/// Widens `kq` u8 values (a multiple of 4) at `src` to i16 at `dst`.
#[target_feature(enable = "avx2")]
unsafe fn widen_row(src: *const u8, kq: usize, dst: *mut i16) {
    // SAFETY: the caller provides kq readable bytes at src and kq writable i16 at dst.
    unsafe {
        let full = kq / 16 * 16;
        let mut p = 0;
        while p < full {
            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(src.add(p) as *const __m128i));
            _mm256_storeu_si256(dst.add(p) as *mut __m256i, v);
            p += 16;
        }
        while p < kq {
            *dst.add(p) = *src.add(p) as i16;
            p += 1;
        }
    }
}

/// One `R × 8` output tile: activation rows from `rows`, the weight half-panel at `b` (32 bytes
/// of every 64-byte quad), output columns from `j0` (stores masked at `e.n`).
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const WIDE: bool>(
    quads: usize,
    rows: Rows,
    b: *const i8,
    e: &Epi,
    j0: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: reads `quads` quads of R rows (i16 ×4 or u8 ×4 each, inside the buffer or the
    // rows proven by check_gemm), 32 bytes of each of `quads` weight quads, the epilogue
    // vectors (a local copy when the tile passes n), and writes R rows of columns below n.
    unsafe {
        // acc[r][c]: columns 4c..4c+4 of the tile, two i32 lanes (k pairs) per column.
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for q in 0..quads {
            let bq = b.add(q * 64);
            let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bq as *const __m128i));
            let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bq.add(16) as *const __m128i));
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = if WIDE {
                    let w = rows.p as *const i16;
                    _mm256_set1_epi64x((w.add(r * rows.lda + q * 4) as *const i64).read_unaligned())
                } else {
                    let x = (rows.p.add(r * rows.lda + q * 4) as *const i32).read_unaligned();
                    _mm256_cvtepu8_epi16(_mm_set1_epi32(x))
                };
                accr[0] = _mm256_add_epi32(accr[0], _mm256_madd_epi16(av, b0));
                accr[1] = _mm256_add_epi32(accr[1], _mm256_madd_epi16(av, b1));
            }
        }
        let sums: [__m256i; R] = core::array::from_fn(|r| {
            // hadd within 128-bit lanes gives columns [0,1,4,5 | 2,3,6,7]; reorder the 64-bit
            // pairs to [0..8].
            _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(acc[r][0], acc[r][1]))
        });
        epilogue8(&sums, e, j0, out, ldo);
    }
}

/// The INT8 epilogue of `R` rows × 8 columns from `j0`: `sums[r]` holds row r's i32 sums of
/// columns j0..j0+8 (lanes at or past `e.n` are ignored, not stored).
///
/// # Safety
/// AVX2 is present; the epilogue vectors hold column j0 and rows `0..R` of `out` (stride `ldo`)
/// hold columns `j0..min(j0 + 8, e.n)`.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn epilogue8<const R: usize>(
    sums: &[__m256i; R],
    e: &Epi,
    j0: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: reads columns j0..j0+valid of the epilogue vectors (a local copy when the tile
    // passes n) and writes R rows of those columns (the caller's contract).
    unsafe {
        let valid = (e.n - j0).min(NR);
        let (mut s, mut sc, mut bi) = ([0i32; NR], [0f32; NR], [0f32; NR]);
        let (sp, scp, bip) = if valid == NR {
            (e.b_sum.add(j0), e.scale.add(j0), e.bias.add(j0))
        } else {
            for t in 0..valid {
                (s[t], sc[t], bi[t]) =
                    (*e.b_sum.add(j0 + t), *e.scale.add(j0 + t), *e.bias.add(j0 + t));
            }
            (s.as_ptr(), sc.as_ptr(), bi.as_ptr())
        };
        let corr =
            _mm256_mullo_epi32(_mm256_set1_epi32(e.a_zp), _mm256_loadu_si256(sp as *const __m256i));
        let (scv, biv) = (_mm256_loadu_ps(scp), _mm256_loadu_ps(bip));
        for (r, s) in sums.iter().enumerate() {
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(*s, corr));
            let mut f = _mm256_add_ps(_mm256_mul_ps(v, scv), biv);
            if e.act == Act::Relu {
                f = _mm256_max_ps(f, _mm256_setzero_ps());
            }
            let o = out.add(r * ldo + j0);
            if valid == NR {
                _mm256_storeu_ps(o, f);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), f);
                core::ptr::copy_nonoverlapping(tmp.as_ptr(), o, valid);
            }
        }
    }
}

/// The GELU forms over a finished row segment, vectorized for AVX2 (same bits as generic).
#[target_feature(enable = "avx2")]
fn gelu_avx2(act: Act, v: &mut [f32]) {
    act.apply_slice(v)
}

crate::check::quantizer!(
    /// See [`crate::QuantizeU8Fn`]: 32 values per step (four `vcvtps2dq`, then the saturating
    /// packs clamp to 0..=255), the tail by the generic element function; same bits as the twin.
    quantize_u8_avx2,
    super::has_avx2,
    "AVX2",
    quantize_row_u8
);

#[target_feature(enable = "avx2")]
unsafe fn quantize_row_u8(x: &[f32], inv: f32, mult: &[f32], zp: i32, q: &mut [u8]) {
    // SAFETY: full ≤ k, so every 8-wide load of x/mult (j + 8c + 8 ≤ full) and 32-byte store
    // of q stays within k elements.
    unsafe {
        let k = x.len();
        let full = k / 32 * 32;
        let (lo, hi) = (_mm256_set1_ps(-300.0), _mm256_set1_ps(300.0));
        let (zv, inv_v) = (_mm256_set1_epi32(zp), _mm256_set1_ps(inv));
        // `vpackssdw` then `vpackuswb` interleave the four vectors' 128-bit lanes: this puts
        // the dwords (4-byte groups) back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let one = |j: usize| {
            let xv = _mm256_loadu_ps(x.as_ptr().add(j));
            let m = if mult.is_empty() { inv_v } else { _mm256_loadu_ps(mult.as_ptr().add(j)) };
            let t = _mm256_mul_ps(xv, m);
            // NaN to 0 (the zero point after the shift), then clamp like the twin.
            let t = _mm256_and_ps(t, _mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
            let t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
            // cvtps rounds to nearest even under the default MXCSR, as the twin does; the
            // packs saturate to 0..=255 as the twin's clamp does (|v| ≤ 555 fits in i16).
            _mm256_add_epi32(_mm256_cvtps_epi32(t), zv)
        };
        let mut j = 0;
        while j < full {
            let ab = _mm256_packs_epi32(one(j), one(j + 8));
            let cd = _mm256_packs_epi32(one(j + 16), one(j + 24));
            let v = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
            _mm256_storeu_si256(q.as_mut_ptr().add(j) as *mut __m256i, v);
            j += 32;
        }
        let zf = zp as f32;
        for j in full..k {
            q[j] = crate::generic::quantize_one_u8(
                x[j],
                if mult.is_empty() { inv } else { mult[j] },
                zf,
            );
        }
    }
}
