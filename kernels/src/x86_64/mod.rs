//! x86_64 overlays: AVX-512 VNNI (`vpdpbusd`) and AVX2 (`vpmaddwd`) INT8 GEMMs on `K4N16`
//! weights, and an AVX-512 activation quantizer. Each public function is a safe wrapper that
//! checks the CPU feature and the slice preconditions, then calls its `#[target_feature]` body.

mod avx2;
mod avx2_i4;
mod avx512;
mod avx512_i4;
mod f32_avx2;
mod f32_avx512;
mod mf;
mod qpack;
mod softmax512;
mod vmath;

pub use avx2::{i8_gemm_avx2, quantize_u8_avx2};
pub use avx2_i4::{i4_gemm_avx2, i4m_gemm_avx2};
pub use avx512::{i8_gemm_avx512vnni, quantize_u8_avx512};
pub use avx512_i4::i4_gemm_avx512vnni;
pub use f32_avx2::{f32_gemm_avx2, f32_matmul_avx2};
pub use f32_avx512::{f32_gemm_avx512, f32_matmul_avx512};
pub use mf::{
    has_avx2_f16c, has_avx2_fma, has_avx512bw_vl, mf_step_f16_avx2, mf_step_f16_avx512,
    mf_step_f32_avx2, mf_step_f32_avx512, mf_step_mixed_avx2, mf_step_mixed_avx512,
};
pub use qpack::{quantize_pack_avx2, quantize_pack_avx512};
pub use softmax512::softmax_row_avx512;
pub use vmath::{
    erf_avx2, erf_avx512, layer_norm_row_avx2, layer_norm_row_avx512, softmax_row_avx2,
};

/// INT8 GEMM epilogue operands, shared by the x86 GEMMs: `(acc − a_zp·b_sum[j])·scale[j] +
/// bias[j]` for `j < n`, then ReLU if asked (the GELU forms run over whole rows afterwards).
struct Epi {
    n: usize,
    a_zp: i32,
    b_sum: *const i32,
    scale: *const f32,
    bias: *const f32,
    act: crate::Act,
}

impl Epi {
    fn new(
        n: usize,
        a_zp: i32,
        b_sum: &[i32],
        scale: &[f32],
        bias: &[f32],
        act: crate::Act,
    ) -> Epi {
        Epi { n, a_zp, b_sum: b_sum.as_ptr(), scale: scale.as_ptr(), bias: bias.as_ptr(), act }
    }
}

/// The AVX-512 INT4M widener's bounds checks, then `body(src, mul, quads,
/// group / 4, dst)` once per panel `p0..p0 + np`, with panel p's packed codes (`quads`·32
/// bytes), its multipliers (`k / group`·16) and its destination (`quads`·64 bytes).
///
/// # Safety
/// `body` may run on this CPU (its target features are present) and reads and writes only the
/// bytes it is given.
#[allow(clippy::too_many_arguments)]
unsafe fn each_panel(
    bp: &[u8],
    k: usize,
    group: usize,
    gmul: &[u8],
    p0: usize,
    np: usize,
    dst: &mut [core::mem::MaybeUninit<i8>],
    body: unsafe fn(*const u8, *const u8, usize, usize, *mut i8),
) {
    use crate::pack::{k4, PANEL};
    let quads = k4(k) / 4;
    let groups = k / group;
    // The bounds every pointer access below stays inside.
    assert!(group >= 4 && group.is_multiple_of(4) && k.is_multiple_of(group), "widen: group");
    assert!(bp.len() >= (p0 + np) * quads * 32, "widen: packed codes too short");
    assert!(gmul.len() >= (p0 + np) * groups * PANEL, "widen: multipliers too short");
    assert!(dst.len() >= np * quads * 64, "widen: destination too short");
    for t in 0..np {
        let p = p0 + t;
        // SAFETY: panel p's codes, its multipliers and the t-th destination panel lie inside
        // the slices (asserted above); group/4 divides quads because group divides k; `body`
        // may run here (the caller's contract).
        unsafe {
            body(
                bp.as_ptr().add(p * quads * 32),
                gmul.as_ptr().add(p * groups * PANEL),
                quads,
                group / 4,
                dst.as_mut_ptr().add(t * quads * 64) as *mut i8,
            )
        }
    }
}

/// The INT4-with-multipliers widener for AVX-512 BW (a [`crate::i4m::WidenFn`]), with the same output as
/// [`crate::i4m::widen_panels`] (tested against it through the GEMM twins): per 64-value quad,
/// the nibbles are offset to `u = Q + 8` (0..=15) and one `vpmullw` by the column's multiplier
/// (both bytes of a word belong to one column, and `u·M <= 240` never carries into the next
/// byte) gives `u·M` in every byte; subtracting `8·M` bytewise leaves `Q·M` (−128..=112).
pub fn widen_avx512(
    bp: &[u8],
    k: usize,
    group: usize,
    gmul: &[u8],
    p0: usize,
    np: usize,
    dst: &mut [core::mem::MaybeUninit<i8>],
) {
    assert!(has_avx512vnni_bw(), "widen_avx512 on a CPU without AVX-512 BW");
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn body(src: *const u8, mul: *const u8, quads: usize, gq: usize, dst: *mut i8) {
        use core::arch::x86_64::*;
        // SAFETY: the caller provides `quads`·32 readable bytes at `src`, `quads / gq`·16 at
        // `mul` and `quads`·64 writable bytes at `dst`.
        unsafe {
            let (x88, low) = (_mm256_set1_epi8(0x88u8 as i8), _mm512_set1_epi8(0x0F));
            let (x88z, x08z) = (_mm512_set1_epi8(0x88u8 as i8), _mm512_set1_epi8(0x08));
            let mut q = 0;
            while q < quads {
                let m32 = _mm512_cvtepu8_epi32(_mm_loadu_si128(mul.add(q / gq * 16) as *const _));
                let mw = _mm512_or_si512(m32, _mm512_slli_epi32::<16>(m32));
                let m8 = _mm512_mullo_epi32(m32, _mm512_set1_epi32(0x0808_0808));
                let mut qq = q;
                // Two quads per 64-byte load: u = (raw ^ 0x88) & 0x0F for the low nibbles,
                // ((raw >> 4) ^ 0x08) & 0x0F for the high ones (one ternary-logic op each; bits
                // the 16-bit shift brings in from the next byte are masked off), then each
                // quad's 32 low and 32 high values are put side by side by one lane shuffle.
                while qq + 2 <= q + gq {
                    let raw = _mm512_loadu_si512(src.add(qq * 32) as *const _);
                    // 0x28 = (a ^ b) & c.
                    let lo = _mm512_ternarylogic_epi32::<0x28>(raw, x88z, low);
                    let hi =
                        _mm512_ternarylogic_epi32::<0x28>(_mm512_srli_epi16::<4>(raw), x08z, low);
                    let u0 = _mm512_shuffle_i64x2::<0x44>(lo, hi);
                    let u1 = _mm512_shuffle_i64x2::<0xEE>(lo, hi);
                    let w0 = _mm512_sub_epi8(_mm512_mullo_epi16(u0, mw), m8);
                    let w1 = _mm512_sub_epi8(_mm512_mullo_epi16(u1, mw), m8);
                    _mm512_storeu_si512(dst.add(qq * 64) as *mut _, w0);
                    _mm512_storeu_si512(dst.add(qq * 64 + 64) as *mut _, w1);
                    qq += 2;
                }
                if qq < q + gq {
                    let raw = _mm256_xor_si256(
                        _mm256_loadu_si256(src.add(qq * 32) as *const __m256i),
                        x88,
                    );
                    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(raw), raw);
                    let high = _mm512_srli_epi16::<4>(both);
                    let u = _mm512_and_si512(_mm512_mask_blend_epi64(0xF0, both, high), low);
                    let w = _mm512_sub_epi8(_mm512_mullo_epi16(u, mw), m8);
                    _mm512_storeu_si512(dst.add(qq * 64) as *mut _, w);
                }
                q += gq;
            }
        }
    }
    // SAFETY: AVX-512 F/BW present (asserted); `body` widens one panel as `each_panel` asks.
    unsafe { each_panel(bp, k, group, gmul, p0, np, dst, body) }
}

/// Rows up to which `i4m_gemm_avx512vnni` hands the call to `i4m_gemm_avx2`, which unpacks the
/// codes in its tile: below this the widening pass costs more than the multiply it feeds
/// (1×384×1536 on an Emerald Rapids core: 26.8 µs widened, 14.3 µs in the AVX2 tile; at 2 and 3
/// rows 28.8 / 40.4 against 23.7 / 27.1 µs; from 4 rows the widened VNNI kernel wins, 30.5
/// against 52.2 µs). Both are exact, so the bits do not depend on the row count's side.
const I4M_TILE_ROWS: usize = 3;

/// The same hand-off for the f16-scale form: up to this many rows `i4_gemm_avx512vnni` calls
/// `i4_gemm_avx2` (1×384×1536, group 32, Emerald Rapids core: 34.5 against 19.8 µs; 2 and 3
/// rows 48.0 / 59.8 against 30.4 / 41.0 µs; at 4 rows the VNNI kernel wins, 44.7 against
/// 50.2 µs; bench `i4_gemm_rows`). Both are exact.
pub(super) const I4_TILE_ROWS: usize = 3;

crate::i4m::i4m_variant!(
    i4m_gemm_avx512vnni,
    i8_gemm_avx512vnni,
    widen_avx512,
    up to I4M_TILE_ROWS => i4m_gemm_avx2, if mf::has_avx2_f16c
);

/// AVX-512 F + VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later).
pub fn has_avx512vnni() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// AVX-512 F + BW + VNNI (what the INT4 kernel's byte arithmetic needs).
pub fn has_avx512vnni_bw() -> bool {
    #[cfg(feature = "std")]
    {
        has_avx512vnni() && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// AVX-512 F (Skylake-X, Zen 4 and later).
pub fn has_avx512f() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// AVX2 (Haswell, Zen 1 and later).
pub fn has_avx2() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}
