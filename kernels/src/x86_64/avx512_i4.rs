//! AVX-512 VNNI INT4 (group-wise) GEMM: each 32-byte packed quad is widened to 64 i8 weights in
//! registers (one broadcast, one shift, one blend, a mask and a sign fix), multiplied with
//! `vpdpbusd` into per-group i32 accumulators, and every group is scaled into f32 accumulators
//! in the same order as the generic twin.

use crate::check::{check_i4, finish_i4};
use crate::pack::{k4, PANEL};
use crate::Act;
use core::arch::x86_64::*;

const MR: usize = 8;
/// Rows per block (see the loop in `i4_gemm_avx512vnni`).
const MB: usize = 64;

/// See [`crate::I4GemmFn`].
#[allow(clippy::too_many_arguments)]
pub fn i4_gemm_avx512vnni(
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
    assert!(super::has_avx512vnni_bw(), "i4_gemm_avx512vnni on a CPU without AVX-512 BW/VNNI");
    if m <= super::I4_TILE_ROWS && super::has_avx2_f16c() {
        // Same bits (both exact); faster for a few rows (see `I4_TILE_ROWS`).
        return super::i4_gemm_avx2(
            m, k, n, a, lda, a_zp, bp, group, gsum, gscale, x_scale, bias, act, out, ldo,
        );
    }
    let groups = check_i4(m, k, n, a, lda, bp, group, gsum, gscale, bias, out, ldo, MAX_GROUP);
    if m == 0 || n == 0 {
        return;
    }
    let pstride = PANEL * k4(k) / 2;
    let panels = n.div_ceil(PANEL);
    let gq = group / 4;
    // Weights of two panels × one group, widened to i8 once and reused by every row tile.
    let mut wide = [0i8; 2 * 64 * (MAX_GROUP / 4)];
    let mut p = 0;
    while p < panels {
        let np = if p + 2 <= panels { 2 } else { 1 };
        // Blocks of MB rows keep their f32 partial sums (MB × 32 floats) in L1 across groups.
        for i0 in (0..m).step_by(MB) {
            let i1 = (i0 + MB).min(m);
            for gi in 0..groups {
                // SAFETY: AVX-512 F/BW present (asserted); quads gi·gq.. of panels p, p+1 lie in bp
                // (checked above), and `wide` holds 2·64·gq bytes.
                unsafe {
                    for t in 0..np {
                        let src = bp.as_ptr().add((p + t) * pstride + gi * gq * 32);
                        widen(src, gq, wide.as_mut_ptr().add(t * 64 * gq));
                    }
                }
                let at = |t: usize| ((p + t) * groups + gi) * PANEL;
                let mut i = i0;
                while i < i1 {
                    let rows = (i1 - i).min(MR);
                    // SAFETY: AVX-512 F/VNNI present; rows i..i+rows of a readable through the
                    // group's k range; group sums/scales at `at(t)` hold 16 entries; the output
                    // rows' columns p·16.. are written with masks that stop at n.
                    unsafe {
                        let args = Step {
                            a: a.as_ptr().add(i * lda + gi * group),
                            lda,
                            w: wide.as_ptr(),
                            gq,
                            a_zp,
                            sum: [gsum.as_ptr().add(at(0)), gsum.as_ptr().add(at(np - 1))],
                            scale: [gscale.as_ptr().add(at(0)), gscale.as_ptr().add(at(np - 1))],
                            out: out.as_mut_ptr().add(i * ldo + p * PANEL),
                            ldo,
                            valid: [
                                (n - p * PANEL).min(PANEL),
                                if np == 2 { (n - (p + 1) * PANEL).min(PANEL) } else { 0 },
                            ],
                            first: gi == 0,
                        };
                        match (rows, np) {
                            (8, 2) => step::<8, 2>(&args),
                            (8, _) => step::<8, 1>(&args),
                            (4..=7, 2) => step::<4, 2>(&args),
                            (4..=7, _) => step::<4, 1>(&args),
                            (_, 2) => step::<1, 2>(&args),
                            _ => step::<1, 1>(&args),
                        }
                    }
                    i += match rows {
                        8 => 8,
                        4..=7 => 4,
                        _ => 1,
                    };
                }
            }
        }
        p += np;
    }
    // out holds Σ_g t; finish with the activation scale, bias and activation.
    let gelu = |a: Act, row: &mut [f32]| {
        // SAFETY: AVX-512 F is present (asserted above).
        unsafe { super::avx512::act_avx512(a, row) }
    };
    finish_i4(m, n, out, ldo, x_scale, bias, act, &gelu);
}

/// Largest group the kernel's stack buffer holds.
pub const MAX_GROUP: usize = 256;

/// One group × one row tile × one or two panels.
struct Step {
    a: *const u8,
    lda: usize,
    w: *const i8,
    gq: usize,
    a_zp: i32,
    sum: [*const i32; 2],
    scale: [*const u16; 2],
    out: *mut f32,
    ldo: usize,
    valid: [usize; 2],
    first: bool,
}

/// Widens `quads` packed quads (32 bytes each) from `src` into `dst` (64 i8 each).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn widen(src: *const u8, quads: usize, dst: *mut i8) {
    // SAFETY: the caller provides `quads`·32 readable and `quads`·64 writable bytes.
    unsafe {
        for q in 0..quads {
            let w = unpack(_mm256_loadu_si256(src.add(q * 32) as *const __m256i));
            _mm512_storeu_si512(dst.add(q * 64) as *mut _, w);
        }
    }
}

/// `out[r][c] (+)= (Σ_q a·w − zp·gsum) as f32 · scale` for R rows and NP panels of one group.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn step<const R: usize, const NP: usize>(s: &Step) {
    // SAFETY: the caller proved every pointer range (see `i4_gemm_avx512vnni`).
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); NP]; R];
        for q in 0..s.gq {
            let mut wv = [_mm512_setzero_si512(); NP];
            for (t, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(s.w.add(t * 64 * s.gq + q * 64) as *const _);
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av =
                    _mm512_set1_epi32((s.a.add(r * s.lda + q * 4) as *const i32).read_unaligned());
                for (x, w) in accr.iter_mut().zip(&wv) {
                    *x = _mm512_dpbusd_epi32(*x, av, *w);
                }
            }
        }
        let zp = _mm512_set1_epi32(s.a_zp);
        for t in 0..NP {
            let mask: __mmask16 =
                if s.valid[t] >= PANEL { 0xFFFF } else { (1u16 << s.valid[t]) - 1 };
            let gs = _mm512_loadu_si512(s.sum[t] as *const _);
            let sc = _mm512_cvtph_ps(_mm256_loadu_si256(s.scale[t] as *const __m256i));
            let corr = _mm512_mullo_epi32(zp, gs);
            for (r, accr) in acc.iter().enumerate() {
                let o = s.out.add(r * s.ldo + t * PANEL);
                let term = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(accr[t], corr)), sc);
                let prev =
                    if s.first { _mm512_setzero_ps() } else { _mm512_maskz_loadu_ps(mask, o) };
                _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(prev, term));
            }
        }
    }
}

/// 64 sign-extended i4 weights from one 32-byte packed quad (values `i` and `i + 32` share byte `i`).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn unpack(raw: __m256i) -> __m512i {
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(raw), raw);
    let high = _mm512_srli_epi16::<4>(both);
    let v = _mm512_mask_blend_epi64(0xF0, both, high);
    let v = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
    let eight = _mm512_set1_epi8(8);
    _mm512_sub_epi8(_mm512_xor_si512(v, eight), eight)
}
