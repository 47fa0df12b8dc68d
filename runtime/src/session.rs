//! A [`Session`] runs one plan of a [`Model`] over an arena it owns.
//!
//! Usage: `Session::new(&model, batch)?`, then for each batch `run(&[input bytes...])?` and read
//! `output(i)`. Inputs are the little-endian bytes of each signature input, batch-major, exactly
//! the plan's size. `run` allocates nothing, locks nothing and does no I/O.

use crate::model::{Model, Plan};
use crate::ops::exec::{run_op, Ctx, Scratch};
use crate::ops::Op;
use crate::par::{Parallel, Serial};
use crate::rowcache::{CacheStats, RowCache, RowCacheConfig};
use crate::{DType, Error};
use alloc::vec::Vec;
use ember_kernels::KernelSet;

/// 64-byte aligned storage unit of the arena.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Block(pub(crate) [u8; 64]);

pub struct Session<'m, B: AsRef<[u8]>> {
    model: &'m Model<B>,
    plan: &'m Plan,
    arena: Arena,
    scratch_u8: Vec<u8>,
    scratch_i32: Vec<i32>,
    scratch_f32: Vec<f32>,
    kernels: KernelSet,
    /// Per op: the hot-row cache of a large table's gather (empty: none anywhere).
    caches: Vec<Option<RowCache>>,
    /// Run the plan's ops as the file has them instead of the CPU schedule (see
    /// [`Session::run_as_written`]).
    as_written: bool,
    #[cfg(feature = "std")]
    pool: Option<alloc::sync::Arc<crate::Pool>>,
}

impl<'m, B: AsRef<[u8]>> Session<'m, B> {
    /// Creates a session for the plan compiled for `batch`, with the detected kernels.
    pub fn new(model: &'m Model<B>, batch: usize) -> Result<Self, Error> {
        Self::with_kernels(model, batch, KernelSet::detect())
    }

    pub fn with_kernels(
        model: &'m Model<B>,
        batch: usize,
        kernels: KernelSet,
    ) -> Result<Self, Error> {
        let idx = model.plan_index(batch).ok_or(Error::NoSuchPlan { batch: batch as u32 })?;
        let plan = &model.plans[idx];
        // The CPU schedule's arena; a run of the plan as written grows it first.
        let arena = Arena::new(plan.cpu_arena_size)?;
        let (n8, n32, nf) = plan.scratch;
        let scratch_u8 = zeroed(n8)?;
        let scratch_i32 = zeroed(n32)?;
        let scratch_f32 = zeroed(nf)?;
        Ok(Session {
            model,
            plan,
            arena,
            scratch_u8,
            scratch_i32,
            scratch_f32,
            kernels,
            caches: Vec::new(),
            as_written: false,
            #[cfg(feature = "std")]
            pool: None,
        })
    }

    /// Runs every op of the plan as the file lists it, writing every intermediate value. By
    /// default a session runs the CPU schedule, where the attention head shuffles (Reshape and
    /// Transpose copies around the attention MatMuls) are folded into the matmuls: same output
    /// bits, fewer ops, but [`Session::run_with`] then reports no output for the folded ops and
    /// a folded matmul's output in its merged-heads place. Per-layer comparisons want this on.
    /// The first run as written allocates the file's arena when it is the larger one.
    pub fn run_as_written(&mut self, on: bool) {
        self.as_written = on;
    }

    /// Spreads the large ops of each run over `pool`'s threads (shareable between sessions;
    /// runs from several sessions on one pool take turns).
    /// Allocates (here, not per run) one scratch slot per thread for ops that split by task.
    #[cfg(feature = "std")]
    pub fn set_pool(&mut self, pool: alloc::sync::Arc<crate::Pool>) -> Result<(), Error> {
        let slots = pool.threads().max(1);
        let (n8, n32, _) = self.plan.scratch;
        self.scratch_u8 = zeroed(n8 * slots)?;
        self.scratch_i32 = zeroed(n32 * slots)?;
        self.pool = Some(pool);
        Ok(())
    }

    /// Serves every row-wise INT8/INT4 embedding table whose stored bytes exceed `cfg.bytes`
    /// through a hot-row cache of `cfg.bytes` bytes of its rows (see [`crate::rowcache`]);
    /// smaller tables stay direct. Allocates here, never in `run`. Returns the tables cached
    /// (as op indices). `cfg.bytes == 0` removes every cache.
    pub fn set_row_cache(&mut self, cfg: RowCacheConfig) -> Result<Vec<usize>, Error> {
        self.caches.clear();
        if cfg.bytes == 0 {
            return Ok(Vec::new());
        }
        let mut caches = Vec::new();
        let mut cached = Vec::new();
        for (i, op) in self.plan.ops.iter().enumerate() {
            // Bytes of one row as a cache slot holds it: codes, then scales and offsets.
            let (rows, row_bytes, n_idx) = match op {
                Op::GatherRowsI8 { rows, d, n_idx, .. } => (*rows, d + 4, *n_idx),
                Op::GatherRowsI4 { rows, d, group, n_idx, .. } => {
                    (*rows, d / 2 + 4 * (d / group), *n_idx)
                }
                _ => (0, 0, 0),
            };
            let c = if rows * row_bytes > cfg.bytes && rows < u32::MAX as usize {
                cached.push(i);
                let mut c = RowCache::new(row_bytes, cfg.bytes, cfg.ways, cfg.policy)?;
                c.reserve_lookups(n_idx)?;
                Some(c)
            } else {
                None
            };
            caches.push(c);
        }
        if !cached.is_empty() {
            self.caches = caches;
        }
        Ok(cached)
    }

    /// Each hot-row cache's op index and counters.
    pub fn row_cache_stats(&self) -> Vec<(usize, CacheStats)> {
        self.caches
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.stats())))
            .collect()
    }

    /// The caches' hits and misses since the last call (summed over tables), counters zeroed.
    pub fn take_row_cache_counts(&mut self) -> (u64, u64) {
        let (mut h, mut m) = (0, 0);
        for c in self.caches.iter_mut().flatten() {
            let st = c.stats();
            (h, m) = (h + st.hits, m + st.misses);
            c.reset_stats();
        }
        (h, m)
    }

    /// Zeroes the caches' counters (the cached rows stay).
    pub fn reset_row_cache_stats(&mut self) {
        self.caches.iter_mut().flatten().for_each(RowCache::reset_stats);
    }

    /// Threads a run uses.
    pub fn threads(&self) -> usize {
        self.par().threads()
    }

    fn par(&self) -> &dyn Parallel {
        par_of(
            #[cfg(feature = "std")]
            &self.pool,
        )
    }

    pub fn batch(&self) -> usize {
        self.plan.batch
    }
    pub fn plan(&self) -> &Plan {
        self.plan
    }
    pub fn kernels(&self) -> &KernelSet {
        &self.kernels
    }

    /// Byte length `run` expects for input `i`.
    pub fn input_len(&self, i: usize) -> usize {
        self.plan.values[self.plan.inputs[i] as usize].nbytes
    }

    /// Runs the plan on `inputs` (one byte slice per signature input).
    pub fn run(&mut self, inputs: &[&[u8]]) -> Result<(), Error> {
        self.run_with(inputs, |_, _| {})
    }

    /// Like [`Session::run`], calling `after_op(op_index, output_bytes)` after each op that runs,
    /// while its output is still in the arena (later ops may reuse the slot). For per-layer
    /// comparisons (with [`Session::run_as_written`]), profiles and debugging tools; `run`
    /// passes a no-op.
    pub fn run_with(
        &mut self,
        inputs: &[&[u8]],
        mut after_op: impl FnMut(usize, &[u8]),
    ) -> Result<(), Error> {
        let plan = self.plan;
        if inputs.len() != plan.inputs.len() {
            return Err(Error::InputCount { expected: plan.inputs.len(), got: inputs.len() });
        }
        if self.as_written && self.arena.bytes().len() < plan.arena_size {
            self.arena = Arena::new(plan.arena_size)?;
        }
        let values = self.values();
        let arena: &mut [u8] = self.arena.bytes_mut();
        for (i, (id, data)) in plan.inputs.iter().zip(inputs).enumerate() {
            let v = &values[*id as usize];
            if data.len() != v.nbytes {
                return Err(Error::InputSize { input: i, expected: v.nbytes, got: data.len() });
            }
            arena[v.offset..v.offset + v.nbytes].copy_from_slice(data);
        }
        let par = par_of(
            #[cfg(feature = "std")]
            &self.pool,
        );
        let ctx = Ctx {
            file: self.model.bytes(),
            tensors: &self.model.tensors,
            values,
            kernels: &self.kernels,
            par,
            patches: &self.model.patches,
        };
        let mut scratch = Scratch {
            u8s: &mut self.scratch_u8,
            i32s: &mut self.scratch_i32,
            f32s: &mut self.scratch_f32,
            // One scratch slot per thread (see `set_pool`).
            slots: par.threads(),
        };
        for (i, (op, rec)) in plan.ops.iter().zip(&plan.records).enumerate() {
            let (op, out) = if !self.as_written {
                match &plan.cpu[i] {
                    Some(step) => (&step.op, step.out),
                    None => continue,
                }
            } else {
                (op, rec.outputs[0])
            };
            let cache = self.caches.get_mut(i).and_then(Option::as_mut);
            run_op(op, i, out, &ctx, arena, &mut scratch, cache)?;
            let v = &values[out as usize];
            after_op(i, &arena[v.offset..v.offset + v.nbytes]);
        }
        Ok(())
    }

    /// The values' arena places in the schedule this session runs.
    fn values(&self) -> &'m [crate::model::ValueInfo] {
        if self.as_written {
            &self.plan.values
        } else {
            &self.plan.cpu_values
        }
    }

    /// Bytes of output `i` after `run`.
    pub fn output(&self, i: usize) -> &[u8] {
        let v = &self.values()[self.plan.outputs[i] as usize];
        let arena: &[u8] = self.arena.bytes();
        &arena[v.offset..v.offset + v.nbytes]
    }

    /// Output `i` as f32, if it is an f32 output.
    pub fn output_f32(&self, i: usize) -> Option<&[f32]> {
        let v = &self.plan.values[self.plan.outputs[i] as usize];
        if v.dtype != DType::F32 {
            return None;
        }
        bytemuck::try_cast_slice(self.output(i)).ok()
    }
}

/// The session's threads: its pool, or the caller alone.
// The lifetime is elidable only when the `std` parameter exists.
#[allow(clippy::needless_lifetimes)]
fn par_of<'a>(
    #[cfg(feature = "std")] pool: &'a Option<alloc::sync::Arc<crate::Pool>>,
) -> &'a dyn Parallel {
    #[cfg(feature = "std")]
    if let Some(p) = pool {
        return &**p;
    }
    &Serial
}

/// A zero-filled vector of `n` elements, or an out-of-memory error instead of an abort. The
/// memory comes zeroed from the allocator (`alloc_zeroed`), which hands large blocks over as
/// fresh pages from the system, already zero: no fill pass when a session is created; each page
/// is faulted in where a run first writes it.
fn zeroed<T: bytemuck::Zeroable>(n: usize) -> Result<Vec<T>, Error> {
    let oom = || Error::OutOfMemory { bytes: n.saturating_mul(core::mem::size_of::<T>()) as u64 };
    let layout = core::alloc::Layout::array::<T>(n).map_err(|_| oom())?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout's size is not zero.
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) } as *mut T;
    if p.is_null() {
        return Err(oom());
    }
    // SAFETY: `p` comes from the global allocator with the layout of `n` elements of T (the one
    // a Vec of capacity `n` frees with), and all-zero bytes are a valid T (`Zeroable`), so all
    // `n` elements are initialized.
    Ok(unsafe { Vec::from_raw_parts(p, n, n) })
}

/// The arena's storage: heap blocks, or (with `mmap`, from 64 KiB up) an anonymous map, which
/// the kernel zero-fills page by page on first touch: creating a session then costs no zeroing
/// pass (measured 1.2 ms for MiniLM's 2.5 MB arena; under an earlier 2 MiB bound its 1.5 MB
/// batch-1 arena was filled on the heap: 0.9 of a 1 ms session, now 0.05 ms in all).
/// `MAP_POPULATE` (the pages allocated up front) moved 0.5 ms into the session and left open +
/// first run unchanged (median of 30 alternated fresh processes). The map is not advised to use
/// huge pages: with transparent huge pages on `madvise` (the common default) the first touch of
/// an advised 2 MiB range may compact memory synchronously, and MiniLM's first run then took
/// 17-30 ms instead of 6-10 in 3 of 24 fresh processes (none of 24 with small pages; medians
/// equal).
enum Arena {
    Heap(Vec<Block>),
    #[cfg(feature = "mmap")]
    Map(memmap2::MmapMut),
}

/// Arenas from this size up are anonymous maps (with `mmap`).
#[cfg(feature = "mmap")]
const MAP_ARENA_BYTES: usize = 64 << 10;

impl Arena {
    fn new(bytes: usize) -> Result<Arena, Error> {
        #[cfg(feature = "mmap")]
        if bytes >= MAP_ARENA_BYTES {
            if let Ok(map) = memmap2::MmapMut::map_anon(bytes) {
                return Ok(Arena::Map(map));
            }
        }
        Ok(Arena::Heap(zeroed(bytes.div_ceil(64))?))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Arena::Heap(v) => bytemuck::cast_slice(&v[..]),
            #[cfg(feature = "mmap")]
            Arena::Map(m) => m,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Arena::Heap(v) => bytemuck::cast_slice_mut(&mut v[..]),
            #[cfg(feature = "mmap")]
            Arena::Map(m) => m,
        }
    }
}

#[cfg(all(test, feature = "mmap"))]
mod tests {
    use super::{Arena, MAP_ARENA_BYTES};

    #[test]
    fn arenas_have_the_asked_length_zeroed_and_writable() {
        let map = MAP_ARENA_BYTES;
        for bytes in [64, 4160, map - 64, map, map + 64, (5 << 20) / 2 + 64] {
            let mut a = Arena::new(bytes).expect("arena");
            assert_eq!(matches!(a, Arena::Map(_)), bytes >= map, "{bytes} B");
            let s = a.bytes_mut();
            assert!(s.len() >= bytes && s.len() < bytes + 64, "{bytes} B arena is {}", s.len());
            assert!(s.iter().all(|&b| b == 0));
            s[bytes - 1] = 7;
            assert_eq!(a.bytes()[bytes - 1], 7);
        }
    }
}
