//! The generic float vector math compiled for AVX2 and AVX-512 (same bodies, same bits), and
//! the generic f32 GEMMs compiled for AVX-512 (AVX2 has its own, in `f32_avx2`).

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

macro_rules! overlay_gemm {
    ($name:ident, $feat:literal, $has:path) => {
        /// The generic f32 GEMM compiled for wider registers: same contract, same bits.
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            m: usize,
            k: usize,
            n: usize,
            a: &[f32],
            b: &[f32],
            bias: &[f32],
            act: crate::Act,
            out: &mut [f32],
        ) {
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            fn inner(
                m: usize,
                k: usize,
                n: usize,
                a: &[f32],
                b: &[f32],
                bias: &[f32],
                act: crate::Act,
                out: &mut [f32],
            ) {
                crate::generic::f32_gemm(m, k, n, a, b, bias, act, out)
            }
            assert!($has(), concat!(stringify!($name), " on a CPU without ", $feat));
            // SAFETY: the CPU has the feature (asserted above); `inner` is safe Rust otherwise.
            unsafe { inner(m, k, n, a, b, bias, act, out) }
        }
    };
}

overlay_gemm!(f32_gemm_avx512, "avx512f", super::has_avx512f);

macro_rules! overlay_matmul {
    ($name:ident, $feat:literal, $has:path) => {
        /// The generic f32 matmul compiled for wider registers: same contract, same bits.
        pub fn $name(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
            #[target_feature(enable = $feat)]
            fn inner(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
                crate::generic::f32_matmul(m, k, n, a, b, out)
            }
            assert!($has(), concat!(stringify!($name), " on a CPU without ", $feat));
            // SAFETY: the CPU has the feature (asserted above); `inner` is safe Rust otherwise.
            unsafe { inner(m, k, n, a, b, out) }
        }
    };
}

overlay_matmul!(f32_matmul_avx512, "avx512f", super::has_avx512f);

macro_rules! overlay_softmax {
    ($name:ident, $feat:literal, $has:path) => {
        /// Same contract and bits as the generic twin; panics on a CPU without the feature.
        pub fn $name(x: &[f32], mask: &[f32], o: &mut [f32]) {
            #[target_feature(enable = $feat)]
            fn inner(x: &[f32], mask: &[f32], o: &mut [f32]) {
                math::softmax_row(x, mask, o)
            }
            assert!($has(), concat!(stringify!($name), " on a CPU without ", $feat));
            // SAFETY: the CPU has the feature (asserted above); `inner` is safe Rust otherwise.
            unsafe { inner(x, mask, o) }
        }
    };
}

overlay_softmax!(softmax_row_avx512, "avx512f", super::has_avx512f);
overlay_softmax!(softmax_row_avx2, "avx2", super::has_avx2);
