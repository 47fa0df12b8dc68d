//! The kernel table. One list (`Kernels::ALL`) drives registration, tests and benches.

use crate::generic;

/// Activation fused into a GEMM epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Act {
    None = 0,
    Relu = 1,
}

impl Act {
    pub fn from_u32(v: u32) -> Option<Act> {
        match v {
            0 => Some(Act::None),
            1 => Some(Act::Relu),
            _ => None,
        }
    }
}

/// `out[m,n] = act((Σ_k a[m,k]·b[n,k] − a_zp·b_sum[n]) · scale[n] + bias[n])`.
///
/// Preconditions: `a.len() >= m*k`, `b.len() >= n*k`, `b_sum`, `scale`, `bias` `>= n`,
/// `out.len() >= m*n`, `k <= 65536` (so the i32 accumulator cannot overflow).
pub type I8GemmFn = fn(
    m: usize,
    k: usize,
    n: usize,
    a: &[i8],
    a_zp: i32,
    b: &[i8],
    b_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
);

/// `out[m,n] = act(Σ_k a[m,k]·b[n,k] + bias[n])`; `bias` may be empty (no bias).
pub type F32GemmFn =
    fn(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], bias: &[f32], act: Act, out: &mut [f32]);

/// `q[i] = clamp(round_half_even(x[i] · inv_scale) + zp, -128, 127)`; `q.len() >= x.len()`.
pub type QuantizeI8Fn = fn(x: &[f32], inv_scale: f32, zp: i32, q: &mut [i8]);

/// `q[r,j] = clamp(round_half_even(x[r,j] · mult[j]) + zp, -128, 127)` over rows of `k`.
pub type QuantizeI8ChannelsFn = fn(x: &[f32], k: usize, mult: &[f32], zp: i32, q: &mut [i8]);

/// The kernels chosen for this process. Plain function pointers: no dispatch cost beyond a call.
#[derive(Clone, Copy, Debug)]
pub struct KernelSet {
    pub i8_gemm: I8GemmFn,
    pub i8_gemm_name: &'static str,
    pub f32_gemm: F32GemmFn,
    pub f32_gemm_name: &'static str,
    pub quantize_i8: QuantizeI8Fn,
    pub quantize_i8_name: &'static str,
    pub quantize_i8_channels: QuantizeI8ChannelsFn,
    pub quantize_i8_channels_name: &'static str,
}

/// Registry of every kernel variant, by family; tests iterate it against the generic twin.
pub struct Kernels;

impl Kernels {
    /// Every i8 GEMM variant available on this build: (name, function, usable on this CPU).
    pub fn i8_gemms() -> &'static [(&'static str, I8GemmFn)] {
        &[("i8_gemm_generic", generic::i8_gemm)]
    }
    pub fn f32_gemms() -> &'static [(&'static str, F32GemmFn)] {
        &[("f32_gemm_generic", generic::f32_gemm)]
    }
    pub fn quantizers() -> &'static [(&'static str, QuantizeI8Fn)] {
        &[("f32_quantize_i8_generic", generic::quantize_i8)]
    }
    pub fn channel_quantizers() -> &'static [(&'static str, QuantizeI8ChannelsFn)] {
        &[("f32_quantize_i8_channels_generic", generic::quantize_i8_channels)]
    }
}

impl KernelSet {
    /// The portable reference set; always available, on every target.
    pub const GENERIC: KernelSet = KernelSet {
        i8_gemm: generic::i8_gemm,
        i8_gemm_name: "i8_gemm_generic",
        f32_gemm: generic::f32_gemm,
        f32_gemm_name: "f32_gemm_generic",
        quantize_i8: generic::quantize_i8,
        quantize_i8_name: "f32_quantize_i8_generic",
        quantize_i8_channels: generic::quantize_i8_channels,
        quantize_i8_channels_name: "f32_quantize_i8_channels_generic",
    };

    /// Chooses the fastest variant of each family this CPU supports. Under `std`, the
    /// environment variable `EMBER_KERNELS=generic` forces the reference set.
    pub fn detect() -> KernelSet {
        #[cfg(feature = "std")]
        if let Ok(v) = std::env::var("EMBER_KERNELS") {
            if v == "generic" {
                return KernelSet::GENERIC;
            }
        }
        // Architecture overlays register here as they land (see docs/ARCHITECTURE.md).
        KernelSet::GENERIC
    }
}
