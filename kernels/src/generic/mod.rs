//! Reference twins: plain, portable Rust. They define what every overlay must compute.

mod gemm;
mod quant;

pub use gemm::{f32_gemm, f32_matmul, i8_gemm};
pub use quant::{quantize_i8, quantize_i8_channels, round_half_even};
