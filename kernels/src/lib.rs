//! Every compute kernel of Ember.
//!
//! Contract: `generic/` holds the reference twin of every kernel family; it is the specification.
//! Architecture overlays (`x86_64/`, `aarch64/`, `cuda/`) must match their twin bit-exactly for
//! integer kernels and within the bound stated by the family for float kernels. Ops never call an
//! overlay directly: they call through a [`KernelSet`], chosen once at start-up by
//! [`KernelSet::detect`] (CPU features, with the `EMBER_KERNELS` override under `std`).
//!
//! Kernels never allocate, never lock and never panic on slices whose lengths satisfy the
//! documented preconditions; callers (the runtime's plan validator) establish those preconditions.
//! An overlay called on a CPU without its features panics (it checks); it is never undefined
//! behaviour, and `detect` only ever chooses usable variants.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[allow(dead_code)]
mod check;
pub mod cuda;
pub mod generic;
pub mod i4m;
pub mod pack;
pub mod prefetch;
mod set;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use set::{
    Act, F32GemmFn, F32MatMulFn, I4GemmFn, I4mGemmFn, I8GemmFn, KernelSet, Kernels, LayerNormFn,
    MfStepF16Fn, MfStepF32Fn, QuantizePackFn, QuantizeU8Fn, RowFn, SoftmaxFn, Variant,
};
