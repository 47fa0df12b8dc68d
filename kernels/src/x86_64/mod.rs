//! x86_64 overlays: AVX-512 VNNI (`vpdpbusd`) and AVX2 (`vpmaddwd`) INT8 GEMMs on `K4N16`
//! weights, and an AVX-512 activation quantizer. Each public function is a safe wrapper that
//! checks the CPU feature and the slice preconditions, then calls its `#[target_feature]` body.

mod avx2;
mod avx512;
mod vmath;

pub use avx2::i8_gemm_avx2;
pub use avx512::{i8_gemm_avx512vnni, quantize_u8_avx512};
pub use vmath::{
    erf_avx2, erf_avx512, layer_norm_row_avx2, layer_norm_row_avx512, softmax_row_avx2,
    softmax_row_avx512,
};

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

/// Panics unless the slices satisfy [`crate::I8GemmFn`]'s preconditions, so the unchecked
/// bodies below can never read or write out of bounds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    bp: &[i8],
    b_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    out: &[f32],
    ldo: usize,
) {
    use crate::pack::{k4, k4n16_len};
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k4(k) && a.len() >= (m - 1) * lda + k4(k), "i8 gemm: a too short");
    assert!(bp.len() >= k4n16_len(n, k), "i8 gemm: packed b too short");
    assert!(b_sum.len() >= n && scale.len() >= n && bias.len() >= n, "i8 gemm: epilogue");
    assert!(ldo >= n && out.len() >= (m - 1) * ldo + n, "i8 gemm: out too short");
    assert!(k <= 65_536, "i8 gemm: k {k} too deep");
}
