//! The attention operands' quantize-and-pack ([`crate::QuantizePackFn`]) written out for AVX-512
//! F and for AVX2: 16 (8) values per step, quantized as [`crate::pack::quantize_sym_i8`]
//! does and put in the `K4N16` order with byte unpacks (the `[k, n]` form) or dword stores (the
//! `[n, k]` form). Same bytes and column sums as the twin [`crate::pack::quantize_pack_k4n16`].

use crate::pack::{
    k4n16_index, k4n16_len, quantize_pack_kn_rest, quantize_pack_nk_tail, strided_len, PANEL,
};
use core::arch::x86_64::*;

/// A form's body: `b`, `out` and `sums` already cut to the strided operand (row stride `ld`),
/// the packed length and the n sums, k > 0: (b, k, n, ld, inv, out, sums).
type Body = unsafe fn(&[f32], usize, usize, usize, f32, &mut [i8], &mut [i32]);

/// Cuts the slices to what the bodies index (panicking as the twin does when they are short)
/// and runs the body of `b`'s form.
///
/// # Safety
/// The CPU has the features `kn` and `nk` were compiled for.
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
    b: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
    (kn, nk): (Body, Body),
) {
    let out = &mut out[..k4n16_len(n, k)];
    let (rows, cols) = if transposed { (n, k) } else { (k, n) };
    assert!(ld >= cols, "row stride {ld} below the row length {cols}");
    let (b, sums) = (&b[..strided_len(rows, cols, ld)], &mut sums[..n]);
    if k == 0 {
        sums.fill(0);
        return;
    }
    let body = if transposed { nk } else { kn };
    // SAFETY: the features are present (the caller's promise); the slices are cut above.
    unsafe { body(b, k, n, ld, inv, out, sums) }
}

/// See [`crate::QuantizePackFn`].
pub fn quantize_pack_avx512(
    b: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
) {
    assert!(super::has_avx512f(), "quantize_pack_avx512 on a CPU without AVX-512 F");
    // SAFETY: the CPU has AVX-512 F (asserted).
    unsafe { dispatch(b, k, n, transposed, ld, inv, out, sums, (kn, nk)) }
}

/// The codes of 16 values as i32 lanes: `rne(clamp(x·inv, ±127))`, NaN to 0, as the twin
/// (`vcvtps2dq` rounds half to even under the default MXCSR, as the twin's magic add does).
#[inline]
#[target_feature(enable = "avx512f")]
fn codes(x: __m512, inv: __m512) -> __m512i {
    let t = _mm512_mul_ps(x, inv);
    let t = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(t, t), t);
    let t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-127.0)), _mm512_set1_ps(127.0));
    _mm512_cvtps_epi32(t)
}

/// One `K4N16` quad from the codes of 4 rows × 16 columns (16 bytes per row, in column
/// order): (k0, k1) and (k2, k3) byte pairs per column, then the pairs joined, 4 columns of 4
/// depths per 16 bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn store_quad(quad: &mut [i8; 64], [b0, b1, b2, b3]: [__m128i; 4]) {
    let (t0, t1) = (_mm_unpacklo_epi8(b0, b1), _mm_unpackhi_epi8(b0, b1));
    let (t2, t3) = (_mm_unpacklo_epi8(b2, b3), _mm_unpackhi_epi8(b2, b3));
    let d = quad.as_mut_ptr() as *mut __m128i;
    // SAFETY: four 16-byte stores cover exactly the 64 bytes of `quad`.
    unsafe {
        _mm_storeu_si128(d, _mm_unpacklo_epi16(t0, t2));
        _mm_storeu_si128(d.add(1), _mm_unpackhi_epi16(t0, t2));
        _mm_storeu_si128(d.add(2), _mm_unpacklo_epi16(t1, t3));
        _mm_storeu_si128(d.add(3), _mm_unpackhi_epi16(t1, t3));
    }
}

/// `b [k, n]`: each whole block of 4 rows × 16 columns becomes one 64-byte quad (rows' codes
/// narrowed to bytes, then interleaved bytewise and wordwise into column-major 4-byte groups).
#[target_feature(enable = "avx512f")]
unsafe fn kn(b: &[f32], k: usize, n: usize, ld: usize, inv: f32, out: &mut [i8], sums: &mut [i32]) {
    sums.fill(0);
    let (full_q, full_p) = (k / 4, n / PANEL);
    let vinv = _mm512_set1_ps(inv);
    for p in 0..full_p {
        let j0 = p * PANEL;
        let mut colsum = _mm512_setzero_si512();
        for q in 0..full_q {
            // SAFETY: row 4q + kk < k and columns j0..j0 + 16 <= n lie inside b's k·n values.
            let row = |kk: usize| unsafe {
                codes(_mm512_loadu_ps(b.as_ptr().add((4 * q + kk) * ld + j0)), vinv)
            };
            let (c0, c1, c2, c3) = (row(0), row(1), row(2), row(3));
            colsum = _mm512_add_epi32(
                colsum,
                _mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
            );
            let rows = [c0, c1, c2, c3].map(|c| _mm512_cvtepi32_epi8(c));
            let quad: &mut [i8; 64] =
                (&mut out[k4n16_index(j0, 4 * q, k)..][..64]).try_into().expect("64-byte quad");
            store_quad(quad, rows);
        }
        // SAFETY: columns j0..j0 + 16 <= n of the n sums.
        unsafe {
            let s = sums.as_mut_ptr().add(j0) as *mut __m512i;
            _mm512_storeu_si512(s, _mm512_add_epi32(_mm512_loadu_si512(s), colsum));
        }
    }
    quantize_pack_kn_rest(b, k, n, ld, inv, out, sums);
}

/// `b [n, k]`: each column's codes, 16 depths at a time, go out as four 4-byte groups, one per
/// quad (64 bytes apart); the last k mod 16 depths element-wise, padding left zero.
#[target_feature(enable = "avx512f")]
unsafe fn nk(b: &[f32], k: usize, n: usize, ld: usize, inv: f32, out: &mut [i8], sums: &mut [i32]) {
    out.fill(0);
    let full = k / 16 * 16;
    let vinv = _mm512_set1_ps(inv);
    for j in 0..n {
        let col = &b[j * ld..j * ld + k];
        let base = k4n16_index(j, 0, k);
        let mut acc = _mm512_setzero_si512();
        let mut p = 0;
        while p < full {
            // SAFETY: depths p..p + 16 <= k of column j; the four groups written are those of
            // depths p..p + 16 of column j, inside its panel.
            unsafe {
                let c = codes(_mm512_loadu_ps(col.as_ptr().add(p)), vinv);
                acc = _mm512_add_epi32(acc, c);
                let g = _mm512_cvtepi32_epi8(c);
                let d = out.as_mut_ptr().add(base + p / 4 * 64) as *mut i32;
                d.write_unaligned(_mm_extract_epi32::<0>(g));
                d.add(16).write_unaligned(_mm_extract_epi32::<1>(g));
                d.add(32).write_unaligned(_mm_extract_epi32::<2>(g));
                d.add(48).write_unaligned(_mm_extract_epi32::<3>(g));
            }
            p += 16;
        }
        let s = _mm512_reduce_add_epi32(acc);
        sums[j] = s + quantize_pack_nk_tail(col, j, full, inv, out);
    }
}

/// See [`crate::QuantizePackFn`].
pub fn quantize_pack_avx2(
    b: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
) {
    assert!(super::has_avx2(), "quantize_pack_avx2 on a CPU without AVX2");
    // SAFETY: the CPU has AVX2 (asserted).
    unsafe { dispatch(b, k, n, transposed, ld, inv, out, sums, (kn2, nk2)) }
}

/// The codes of 8 values as i32 lanes (see [`codes`]).
#[inline]
#[target_feature(enable = "avx2")]
fn codes8(x: __m256, inv: __m256) -> __m256i {
    let t = _mm256_mul_ps(x, inv);
    let t = _mm256_and_ps(t, _mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
    let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-127.0)), _mm256_set1_ps(127.0));
    _mm256_cvtps_epi32(t)
}

/// 16 codes (two vectors of i32 lanes, all within ±127) as 16 bytes in order.
#[inline]
#[target_feature(enable = "avx2")]
fn narrow16(lo: __m256i, hi: __m256i) -> __m128i {
    // packs work per 128-bit lane; the 64-bit permutes put the lanes' halves back in order.
    let w = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(lo, hi));
    let b = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi16(w, w));
    _mm256_castsi256_si128(b)
}

/// [`kn`] on AVX2.
#[target_feature(enable = "avx2")]
unsafe fn kn2(
    b: &[f32],
    k: usize,
    n: usize,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
) {
    sums.fill(0);
    let (full_q, full_p) = (k / 4, n / PANEL);
    let vinv = _mm256_set1_ps(inv);
    for p in 0..full_p {
        let j0 = p * PANEL;
        let (mut s_lo, mut s_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for q in 0..full_q {
            let mut row = |kk: usize| {
                // SAFETY: row 4q + kk < k and columns j0..j0 + 16 <= n lie inside b.
                let (lo, hi) = unsafe {
                    let at = b.as_ptr().add((4 * q + kk) * ld + j0);
                    (codes8(_mm256_loadu_ps(at), vinv), codes8(_mm256_loadu_ps(at.add(8)), vinv))
                };
                s_lo = _mm256_add_epi32(s_lo, lo);
                s_hi = _mm256_add_epi32(s_hi, hi);
                narrow16(lo, hi)
            };
            let rows = [row(0), row(1), row(2), row(3)];
            let quad: &mut [i8; 64] =
                (&mut out[k4n16_index(j0, 4 * q, k)..][..64]).try_into().expect("64-byte quad");
            store_quad(quad, rows);
        }
        // SAFETY: columns j0..j0 + 16 <= n of the n sums.
        unsafe {
            let s = sums.as_mut_ptr().add(j0) as *mut __m256i;
            _mm256_storeu_si256(s, _mm256_add_epi32(_mm256_loadu_si256(s), s_lo));
            _mm256_storeu_si256(s.add(1), _mm256_add_epi32(_mm256_loadu_si256(s.add(1)), s_hi));
        }
    }
    quantize_pack_kn_rest(b, k, n, ld, inv, out, sums);
}

/// [`nk`] on AVX2: 8 depths (two quads) per step.
#[target_feature(enable = "avx2")]
unsafe fn nk2(
    b: &[f32],
    k: usize,
    n: usize,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
) {
    out.fill(0);
    let full = k / 8 * 8;
    let vinv = _mm256_set1_ps(inv);
    for j in 0..n {
        let col = &b[j * ld..j * ld + k];
        let base = k4n16_index(j, 0, k);
        let mut acc = _mm256_setzero_si256();
        let mut p = 0;
        while p < full {
            // SAFETY: depths p..p + 8 <= k of column j; the two groups written are those of
            // depths p..p + 8 of column j, inside its panel.
            unsafe {
                let c = codes8(_mm256_loadu_ps(col.as_ptr().add(p)), vinv);
                acc = _mm256_add_epi32(acc, c);
                let w = _mm256_packs_epi32(c, c);
                let g = _mm256_packs_epi16(w, w);
                let d = out.as_mut_ptr().add(base + p / 4 * 64) as *mut i32;
                d.write_unaligned(_mm256_extract_epi32::<0>(g));
                d.add(16).write_unaligned(_mm256_extract_epi32::<4>(g));
            }
            p += 8;
        }
        let h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
        let h = _mm_add_epi32(h, _mm_shuffle_epi32::<0x4E>(h));
        let h = _mm_add_epi32(h, _mm_shuffle_epi32::<0xB1>(h));
        let s = _mm_cvtsi128_si32(h);
        sums[j] = s + quantize_pack_nk_tail(col, j, full, inv, out);
    }
}
