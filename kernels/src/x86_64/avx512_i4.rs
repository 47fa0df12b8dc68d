//! AVX-512 VNNI INT4 (group-wise) GEMM: each 32-byte packed quad is widened to 64 i8 weights in
//! registers (one broadcast, one shift, one blend, a mask and a sign fix), multiplied with
//! `vpdpbusd` into per-group i32 accumulators, and every group is scaled into f32 accumulators
//! in the same order as the generic twin.

use crate::pack::{k4, k4n16_i4_len, PANEL};
use crate::Act;
use core::arch::x86_64::*;

const MR: usize = 8;

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
    if m == 0 || n == 0 {
        return;
    }
    assert!(group >= 4 && group.is_multiple_of(4) && k.is_multiple_of(group), "i4 gemm: group {group} for k {k}");
    let groups = k / group;
    let side = n.div_ceil(PANEL) * PANEL * groups;
    assert!(lda >= k4(k) && a.len() >= (m - 1) * lda + k4(k), "i4 gemm: a too short");
    assert!(bp.len() >= k4n16_i4_len(n, k), "i4 gemm: packed b too short");
    assert!(gsum.len() >= side && gscale.len() >= side, "i4 gemm: group sums/scales too short");
    assert!(bias.len() >= n, "i4 gemm: bias too short");
    assert!(ldo >= n && out.len() >= (m - 1) * ldo + n, "i4 gemm: out too short");
    assert!(k <= 65_536, "i4 gemm: k {k} too deep");
    let e = Epi { n, a_zp, x_scale, bias: bias.as_ptr(), act };
    let g = Groups { count: groups, quads: group / 4, sum: gsum.as_ptr(), scale: gscale.as_ptr() };
    let pstride = PANEL * k4(k) / 2;
    for p in 0..n.div_ceil(PANEL) {
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(MR);
            // SAFETY: AVX-512 F/BW/VNNI present (asserted); the checks above prove rows
            // i..i+rows readable through k at stride lda, panel p's k/4 packed quads (32 bytes
            // each) inside bp, its groups' sums and scales inside gsum/gscale, and the masked
            // output columns inside out.
            unsafe {
                let (ai, bq, oi) = (
                    a.as_ptr().add(i * lda),
                    bp.as_ptr().add(p * pstride),
                    out.as_mut_ptr().add(i * ldo),
                );
                match rows {
                    8 => tile::<8>(ai, lda, bq, &g, p, &e, oi, ldo),
                    4..=7 => tile::<4>(ai, lda, bq, &g, p, &e, oi, ldo),
                    _ => tile::<1>(ai, lda, bq, &g, p, &e, oi, ldo),
                }
            }
            i += match rows {
                8 => 8,
                4..=7 => 4,
                _ => 1,
            };
        }
    }
    if matches!(act, Act::Gelu | Act::GeluTanh) {
        for i in 0..m {
            // SAFETY: AVX-512 F is present (asserted above).
            unsafe { super::avx512::act_avx512(act, &mut out[i * ldo..i * ldo + n]) };
        }
    }
}

struct Epi {
    n: usize,
    a_zp: i32,
    x_scale: f32,
    bias: *const f32,
    act: Act,
}

struct Groups {
    count: usize,
    quads: usize,
    sum: *const i32,
    scale: *const u16,
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

/// One `R × 16` tile of panel `p`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    a: *const u8,
    lda: usize,
    b: *const u8,
    g: &Groups,
    p: usize,
    e: &Epi,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: the caller proved every row, quad, group entry and masked output in range.
    unsafe {
        let zp = _mm512_set1_epi32(e.a_zp);
        let mut facc = [_mm512_setzero_ps(); R];
        for gi in 0..g.count {
            let mut acc = [_mm512_setzero_si512(); R];
            for qq in 0..g.quads {
                let q = gi * g.quads + qq;
                let w = unpack(_mm256_loadu_si256(b.add(q * 32) as *const __m256i));
                for (r, x) in acc.iter_mut().enumerate() {
                    let av =
                        _mm512_set1_epi32((a.add(r * lda + q * 4) as *const i32).read_unaligned());
                    *x = _mm512_dpbusd_epi32(*x, av, w);
                }
            }
            let at = (p * g.count + gi) * PANEL;
            let gs = _mm512_loadu_si512(g.sum.add(at) as *const _);
            let sc = _mm512_cvtph_ps(_mm256_loadu_si256(g.scale.add(at) as *const __m256i));
            let corr = _mm512_mullo_epi32(zp, gs);
            for (f, x) in facc.iter_mut().zip(&acc) {
                *f = _mm512_add_ps(
                    *f,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(*x, corr)), sc),
                );
            }
        }
        let j = p * PANEL;
        let valid = (e.n - j).min(PANEL);
        let mask: __mmask16 = if valid == PANEL { 0xFFFF } else { (1u16 << valid) - 1 };
        let bi = _mm512_maskz_loadu_ps(mask, e.bias.add(j));
        let xs = _mm512_set1_ps(e.x_scale);
        for (r, f) in facc.iter().enumerate() {
            let mut v = _mm512_add_ps(_mm512_mul_ps(*f, xs), bi);
            if e.act == Act::Relu {
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            }
            _mm512_mask_storeu_ps(out.add(r * ldo + j), mask, v);
        }
    }
}
