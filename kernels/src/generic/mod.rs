//! Reference twins: plain, portable Rust. They define what every overlay must compute.

mod gemm;
pub mod math;
pub mod mf;
mod quant;

pub(crate) use gemm::act_apply;
pub use gemm::{f16_to_f32, f32_gemm, f32_matmul, i4_gemm, i8_gemm, relu};
pub use quant::{quantize_one_u8, quantize_u8, round_half_even};
