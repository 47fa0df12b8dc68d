//! x86_64 overlays: AVX-512 VNNI (`vpdpbusd`) and AVX2 (`vpmaddwd`) INT8 GEMMs on `K4N16`
//! weights, and an AVX-512 activation quantizer. Each public function is a safe wrapper that
//! checks the CPU feature and the slice preconditions, then calls its `#[target_feature]` body.

mod avx2;
mod avx512;
mod avx512_i4;
mod mf;
mod vmath;

pub use avx2::i8_gemm_avx2;
pub use avx512::{i8_gemm_avx512vnni, quantize_u8_avx512};
pub use avx512_i4::i4_gemm_avx512vnni;
pub use mf::{
    has_avx2_f16c, has_avx2_fma, has_avx512bw_vl, mf_step_f16_avx2, mf_step_f16_avx512,
    mf_step_f32_avx2, mf_step_f32_avx512,
};
pub use vmath::{
    erf_avx2, erf_avx512, f32_gemm_avx2, f32_gemm_avx512, f32_matmul_avx2, f32_matmul_avx512,
    layer_norm_row_avx2, layer_norm_row_avx512, softmax_row_avx2, softmax_row_avx512,
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
