//! The generic float vector math compiled for AVX2 and AVX-512 (same bodies, same bits). The
//! f32 GEMMs have kernels of their own (`f32_avx2`, `f32_avx512`).

use crate::generic::math;

macro_rules! overlay {
    ($name:ident, $feat:literal, $has:path, $body:path) => {
        /// Same contract and bits as the generic twin; panics on a CPU without the feature.
        pub fn $name(x: &[f32], o: &mut [f32]) {
            #[target_feature(enable = $feat)]
            fn inner(x: &[f32], o: &mut [f32]) {
                $body(x, o)
            }
            assert!($has(), concat!(stringify!($name), " on a CPU without ", $feat));
            // SAFETY: the CPU has the feature (asserted above); `inner` is safe Rust otherwise.
            unsafe { inner(x, o) }
        }
    };
}

overlay!(erf_avx512, "avx512f", super::has_avx512f, math::erf_slice);
overlay!(erf_avx2, "avx2", super::has_avx2, math::erf_slice);

macro_rules! overlay_ln {
    ($name:ident, $feat:literal, $has:path) => {
        /// Same contract and bits as the generic twin; panics on a CPU without the feature.
        pub fn $name(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, o: &mut [f32]) {
            #[target_feature(enable = $feat)]
            fn inner(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, o: &mut [f32]) {
                math::layer_norm_row(x, gamma, beta, eps, o)
            }
            assert!($has(), concat!(stringify!($name), " on a CPU without ", $feat));
            // SAFETY: the CPU has the feature (asserted above); `inner` is safe Rust otherwise.
            unsafe { inner(x, gamma, beta, eps, o) }
        }
    };
}

overlay_ln!(layer_norm_row_avx512, "avx512f", super::has_avx512f);
overlay_ln!(layer_norm_row_avx2, "avx2", super::has_avx2);

/// See [`crate::SoftmaxFn`]: the generic rows compiled for AVX2 (same bits).
pub fn softmax_row_avx2(x: &mut [f32], n: usize, masks: &[&[f32]], alpha: f32) {
    #[target_feature(enable = "avx2")]
    fn inner(x: &mut [f32], n: usize, masks: &[&[f32]], alpha: f32) {
        math::softmax_rows(x, n, masks, alpha)
    }
    assert!(super::has_avx2(), "softmax_row_avx2 on a CPU without avx2");
    // SAFETY: the CPU has the feature (asserted above); `inner` is safe Rust otherwise.
    unsafe { inner(x, n, masks, alpha) }
}
