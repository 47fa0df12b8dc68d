//! AVX2 without VNNI: u8 activations and i8 weights widened to i16, `vpmaddwd` sums pairs into
//! i32 lanes (exact: no `vpmaddubsw` saturation), lanes of a column folded after the k loop.

use crate::check::check_gemm;
use crate::pack::{k4, PANEL};
use crate::Act;
use core::arch::x86_64::*;

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
    let quads = k4(k) / 4;
    for p in 0..n.div_ceil(PANEL) {
        let j0 = p * PANEL;
        let valid = (n - j0).min(PANEL);
        // The epilogue vectors of a partial panel, zero-extended so whole vectors load.
        let (mut s, mut sc, mut bi) = ([0i32; PANEL], [0f32; PANEL], [0f32; PANEL]);
        s[..valid].copy_from_slice(&b_sum[j0..j0 + valid]);
        sc[..valid].copy_from_slice(&scale[j0..j0 + valid]);
        bi[..valid].copy_from_slice(&bias[j0..j0 + valid]);
        let mut i = 0;
        while i < m {
            let r = if m - i >= 2 { 2 } else { 1 };
            let mut tmp = [[0f32; PANEL]; 2];
            // SAFETY: AVX2 present (asserted); check_gemm proved rows i..i+r readable through
            // k4(k) at stride lda and panel p present in bp; tmp holds R × 16 floats.
            unsafe {
                let b = bp.as_ptr().add(p * PANEL * k4(k));
                let ai = a.as_ptr().add(i * lda);
                if r == 2 {
                    tile::<2>(quads, ai, lda, b, a_zp, &s, &sc, &bi, act, &mut tmp);
                } else {
                    tile::<1>(quads, ai, lda, b, a_zp, &s, &sc, &bi, act, &mut tmp);
                }
            }
            for (t, row) in tmp.iter().enumerate().take(r) {
                out[(i + t) * ldo + j0..(i + t) * ldo + j0 + valid].copy_from_slice(&row[..valid]);
            }
            i += r;
        }
    }
    if matches!(act, Act::Gelu | Act::GeluTanh) {
        for i in 0..m {
            // SAFETY: AVX2 is present (asserted on entry).
            unsafe { gelu_avx2(act, &mut out[i * ldo..i * ldo + n]) };
        }
    }
}

#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    quads: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    a_zp: i32,
    sums: &[i32; PANEL],
    scale: &[f32; PANEL],
    bias: &[f32; PANEL],
    act: Act,
    out: &mut [[f32; PANEL]; 2],
) {
    // SAFETY: reads quads·4 bytes of R rows at stride lda and one whole panel of b (proven by
    // check_gemm in the caller), and 16-element local arrays; writes only `out`, a local array.
    unsafe {
        // acc[r][c]: columns 4c..4c+4, two i32 lanes (k pairs) per column.
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        for q in 0..quads {
            let mut bw = [_mm256_setzero_si256(); 4];
            for (c, v) in bw.iter_mut().enumerate() {
                *v =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(q * 64 + c * 16) as *const __m128i));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let a4 = (a.add(r * lda + q * 4) as *const i32).read_unaligned();
                let av = _mm256_cvtepu8_epi16(_mm_set1_epi32(a4));
                for (c, x) in accr.iter_mut().enumerate() {
                    *x = _mm256_add_epi32(*x, _mm256_madd_epi16(av, bw[c]));
                }
            }
        }
        let zp = _mm256_set1_epi32(a_zp);
        for (r, accr) in acc.iter().enumerate() {
            for h in 0..2 {
                // hadd within 128-bit lanes gives columns [0,1,4,5 | 2,3,6,7]; reorder the 64-bit
                // pairs to [0,1,2,3,4,5,6,7].
                let s = _mm256_hadd_epi32(accr[2 * h], accr[2 * h + 1]);
                let s = _mm256_permute4x64_epi64::<0xD8>(s);
                let j = h * 8;
                let sum = _mm256_loadu_si256(sums.as_ptr().add(j) as *const __m256i);
                let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(s, _mm256_mullo_epi32(zp, sum)));
                let sc = _mm256_loadu_ps(scale.as_ptr().add(j));
                let bi = _mm256_loadu_ps(bias.as_ptr().add(j));
                let mut f = _mm256_add_ps(_mm256_mul_ps(v, sc), bi);
                if act == Act::Relu {
                    f = _mm256_max_ps(f, _mm256_setzero_ps());
                }
                _mm256_storeu_ps(out[r].as_mut_ptr().add(j), f);
            }
        }
    }
}

/// The GELU forms over a finished row segment, vectorized for AVX2 (same bits as generic).
#[target_feature(enable = "avx2")]
fn gelu_avx2(act: Act, v: &mut [f32]) {
    act.apply_slice(v)
}
