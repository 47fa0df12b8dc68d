//! Ember runtime: maps a `.ember` file, validates it once, and runs its fixed-batch plans.
//!
//! Contract:
//! - [`Model::parse`] validates every byte it will ever use (see [`format`] for the file layout)
//!   and returns an [`Error`] naming the problem on any corruption. After it succeeds, running a
//!   plan cannot index out of bounds.
//! - [`Session::new`] allocates the arena and scratch once. [`Session::run`] then performs no heap
//!   allocation, takes no lock and does no I/O.
//! - The core is `no_std` + `alloc`; `std` adds file loading and memory maps (`mmap`).
#![cfg_attr(not(feature = "std"), no_std)]
extern crate alloc;

#[cfg(feature = "std")]
pub mod batcher;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
#[cfg(feature = "finetune")]
pub mod finetune;
pub mod format;
#[cfg(feature = "std")]
pub mod histogram;
#[cfg(feature = "std")]
mod load;
mod model;
mod ops;
pub mod overlay;
mod par;
#[cfg(feature = "std")]
mod pool;
pub mod rowcache;
mod session;

#[cfg(feature = "std")]
pub use batcher::{BatchError, Batcher, BatcherConfig, BatcherStats, Pending, Policy};
pub use error::Error;
pub use format::{DType, OpCode};
#[cfg(feature = "std")]
pub use load::{load_file, load_file_with, AlignedBuf, FileBytes};
pub use model::{first_fit, op_names_key, Model, Plan, SigEntry, TensorInfo, ValueInfo, Verify};
pub use ops::{BinaryKind, ReduceKind, UnaryKind};
pub use overlay::{Overlay, Patch};
pub use par::{Parallel, Serial};
#[cfg(feature = "std")]
pub use pool::Pool;
pub use rowcache::{CachePolicy, CacheStats, RowCacheConfig};
pub use session::Session;

pub type Result<T> = core::result::Result<T, Error>;
