//! The SGD trainer: factor tables, the block grid, epochs, validation and the precision switch.

use crate::{Parallel, Pool};
use alloc::string::String;
use alloc::vec::Vec;
use ember_kernels::generic::mf::f32_to_f16;
use ember_kernels::generic::{f16_to_f32, mf::dot_fixed};
use ember_kernels::prefetch::prefetch;
use ember_kernels::KernelSet;
use std::sync::Mutex;
use std::time::Instant;

/// One rating: dense user and item row indices and the value. 12 bytes, stored in block order.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Rating {
    pub user: u32,
    pub item: u32,
    pub value: f32,
}

/// How factor rows are stored during training; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp16,
    Auto,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "fp32" | "f32" => Some(Precision::Fp32),
            "fp16" | "f16" => Some(Precision::Fp16),
            "auto" => Some(Precision::Auto),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Auto => "auto",
        }
    }
}

/// Training settings. `Default` is what `ember finetune` uses unless told otherwise.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Factors per row.
    pub k: usize,
    pub lr: f32,
    /// L2 regularization of the factor rows.
    pub reg: f32,
    /// L2 regularization of the biases.
    pub reg_bias: f32,
    /// Threads in all (0 = one per core).
    pub threads: usize,
    pub precision: Precision,
    /// Standard deviation of the initial factors.
    pub init_std: f32,
    pub seed: u64,
    /// `Auto`: switch to f32 when more than this share of element updates is lost in f16.
    pub lost_limit: f64,
    /// `Auto`: switch to f32 when the monitored RMSE improves by less than this fraction.
    pub plateau: f64,
    /// Ratings ahead whose rows and biases are prefetched (0: none). The rows of a shuffled
    /// block are random, so without it each update waits for its misses one at a time.
    pub prefetch: usize,
    /// f16 storage: lost element updates are counted on one rating in this many (those at
    /// positions ≡ 0 of the epoch's order; 1 counts all). Counting doubles the f16 step's
    /// compute on AVX-512, and one in 16 of millions of updates estimates the share as well.
    pub lost_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            k: 64,
            lr: 0.01,
            reg: 0.05,
            reg_bias: 0.01,
            threads: 0,
            precision: Precision::Auto,
            init_std: 0.1,
            seed: 42,
            lost_limit: 0.25,
            plateau: 0.001,
            prefetch: 16,
            lost_every: 16,
        }
    }
}

/// Bad input to the trainer.
#[derive(Debug, PartialEq)]
pub enum MfError {
    /// A rating names a row outside the tables.
    Id { index: usize, what: &'static str, id: u32, rows: usize },
    /// A rating is NaN or infinite.
    Value { index: usize, value: f32 },
    /// Zero factors, zero threads after detection, or no ratings.
    Config(String),
}

impl core::fmt::Display for MfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MfError::Id { index, what, id, rows } => {
                write!(f, "rating {index}: {what} {id} is outside the table of {rows} rows")
            }
            MfError::Value { index, value } => {
                write!(f, "rating {index}: value {value} is not finite")
            }
            MfError::Config(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for MfError {}

/// Factor rows, `rows × k` row-major, as f32 or as f16 bits.
#[derive(Clone, Debug)]
pub enum Rows {
    F32(Table<f32>),
    F16(Table<u16>),
}

/// The values of one factor table, in memory that starts on a 2 MiB boundary (64 bytes for
/// tables under 2 MiB) and is advised for transparent huge pages before it is first written.
/// SGD reads rows at random from tables of tens of megabytes: with 4 KiB pages nearly every
/// row costs a TLB miss as well as a cache miss, and a row that starts off a cache line spans
/// one line more (an f16 row of 128 values 5 lines instead of 4), which costs a fill buffer
/// and a prefetch more for every update. Derefs to the values.
#[derive(Debug)]
pub struct Table<T> {
    /// `off` padding values, then the table.
    buf: Vec<T>,
    off: usize,
}

impl<T: Copy + Default> Table<T> {
    /// The items, in order, in aligned memory.
    pub fn collect(items: impl ExactSizeIterator<Item = T>) -> Table<T> {
        const HUGE: usize = 2 << 20;
        let (len, size) = (items.len(), core::mem::size_of::<T>().max(1));
        let align = if len * size >= HUGE { HUGE } else { 64 };
        let mut buf = Vec::with_capacity(len + align / size);
        let addr = buf.as_ptr() as usize;
        // A Vec's memory is aligned to its element, so the gap is whole elements.
        let off = (addr.next_multiple_of(align) - addr) / size;
        advise_huge(addr + off * size, len * size);
        buf.resize(off, T::default());
        buf.extend(items);
        Table { buf, off }
    }
}

impl<T: Copy + Default> Clone for Table<T> {
    fn clone(&self) -> Self {
        Table::collect(self.iter().copied())
    }
}

impl<T> core::ops::Deref for Table<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..]
    }
}

impl<T> core::ops::DerefMut for Table<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..]
    }
}

impl Rows {
    /// f32 values stored as they are, or rounded to f16 (nearest even), in huge-page-advised
    /// memory (see [`Table`]: f32 rows are copied there once).
    pub fn from_f32(v: Vec<f32>, f16: bool) -> Rows {
        if f16 {
            Rows::F16(Table::collect(v.iter().map(|x| f32_to_f16(*x))))
        } else {
            Rows::F32(Table::collect(v.iter().copied()))
        }
    }
    /// Every value as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Rows::F32(v) => v.to_vec(),
            Rows::F16(v) => v.iter().map(|h| f16_to_f32(*h)).collect(),
        }
    }
    /// Row `r` as f32 into `out` (`out.len() == k`).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let k = out.len();
        match self {
            Rows::F32(v) => out.copy_from_slice(&v[r * k..r * k + k]),
            Rows::F16(v) => {
                for (o, h) in out.iter_mut().zip(&v[r * k..r * k + k]) {
                    *o = f16_to_f32(*h);
                }
            }
        }
    }
    /// Values stored (rows × k).
    pub fn elem_count(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
        }
    }
    /// The first byte and the bytes per row of `k` values (for [`prefetch_rating`]).
    fn rows_at(&self, k: usize) -> (*const u8, usize) {
        match self {
            Rows::F32(v) => (v.as_ptr() as *const u8, 4 * k),
            Rows::F16(v) => (v.as_ptr() as *const u8, 2 * k),
        }
    }
    /// Bytes per stored value (4 for f32, 2 for f16).
    pub fn elem_bytes(&self) -> usize {
        match self {
            Rows::F32(_) => 4,
            Rows::F16(_) => 2,
        }
    }
    /// Appends row `r` (`k` values) as stored, little-endian.
    pub fn put_row_le(&self, r: usize, k: usize, out: &mut Vec<u8>) {
        match self {
            Rows::F32(v) => v[r * k..r * k + k].iter().for_each(|x| out.extend(x.to_le_bytes())),
            Rows::F16(v) => v[r * k..r * k + k].iter().for_each(|x| out.extend(x.to_le_bytes())),
        }
    }
    /// Sets row `r` from `k · elem_bytes()` little-endian bytes in this storage's encoding.
    pub fn set_row_le(&mut self, r: usize, k: usize, b: &[u8]) {
        match self {
            Rows::F32(v) => {
                for (x, c) in v[r * k..r * k + k].iter_mut().zip(b.chunks_exact(4)) {
                    *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Rows::F16(v) => {
                for (x, c) in v[r * k..r * k + k].iter_mut().zip(b.chunks_exact(2)) {
                    *x = u16::from_le_bytes([c[0], c[1]]);
                }
            }
        }
    }
    /// Converts f16 rows to f32 in place of the old vector (peak: both forms of this table).
    fn widen(&mut self) {
        if let Rows::F16(v) = self {
            *self = Rows::F32(Table::collect(v.iter().map(|h| f16_to_f32(*h))));
        }
    }
}

#[cfg(target_os = "linux")]
fn advise_huge(addr: usize, bytes: usize) {
    const HUGE: usize = 2 << 20;
    let (start, end) = (addr.next_multiple_of(HUGE), (addr + bytes) & !(HUGE - 1));
    if end > start {
        // SAFETY: [start, end) lies inside the allocation the caller just made; MADV_HUGEPAGE
        // changes only how the kernel backs those pages, never their contents. A refusal (THP
        // off) leaves ordinary pages, which is fine, so the result is not checked.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_addr: usize, _bytes: usize) {}

/// Mean, minimum and maximum of the ratings' values (the model's `mean`, `lo`, `hi`).
pub fn rating_stats(ratings: &[Rating]) -> (f32, f32, f32) {
    let mean = ratings.iter().map(|x| x.value as f64).sum::<f64>() / ratings.len().max(1) as f64;
    let lo = ratings.iter().map(|x| x.value).fold(f32::INFINITY, f32::min);
    let hi = ratings.iter().map(|x| x.value).fold(f32::NEG_INFINITY, f32::max);
    (mean as f32, lo, hi)
}

/// A biased matrix-factorization model: `r̂ = clamp(mean + bu[u] + bi[i] + p[u]·q[i], lo, hi)`.
#[derive(Clone, Debug)]
pub struct Factors {
    pub k: usize,
    pub users: usize,
    pub items: usize,
    pub mean: f32,
    pub lo: f32,
    pub hi: f32,
    pub p: Rows,
    pub q: Rows,
    pub bu: Vec<f32>,
    pub bi: Vec<f32>,
}

/// Ratings ahead whose rows validation prefetches.
const VALIDATE_AHEAD: usize = 16;

/// Hints the cache to fetch what rating `r` touches: its user row and item row (tables at
/// `p.0`/`q.0`, rows of `p.1`/`q.1` bytes) and both biases. Addresses only: a prefetch reads
/// nothing into Rust values and never faults.
#[inline(always)]
fn prefetch_rating(
    p: (*const u8, usize),
    q: (*const u8, usize),
    bu: *const f32,
    bi: *const f32,
    r: &Rating,
) {
    let (u, i) = (r.user as usize, r.item as usize);
    prefetch(p.0.wrapping_add(u * p.1), p.1);
    prefetch(q.0.wrapping_add(i * q.1), q.1);
    prefetch(bu.wrapping_add(u) as *const u8, 4);
    prefetch(bi.wrapping_add(i) as *const u8, 4);
}

/// xorshift64*: the fine-tuning code's only randomness (initialization, shuffling, splits).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.unit().max(1e-300), self.unit());
        (-2.0 * a.ln()).sqrt() * (core::f64::consts::TAU * b).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

impl Factors {
    /// Random rows `N(0, std²)`, zero biases; `f16` picks the storage.
    #[allow(clippy::too_many_arguments)]
    pub fn random(
        users: usize,
        items: usize,
        k: usize,
        stats: (f32, f32, f32),
        std: f32,
        seed: u64,
        f16: bool,
    ) -> Factors {
        let mut rng = Rng::new(seed);
        let mut gen =
            |n: usize| (0..n).map(|_| (rng.normal() * std as f64) as f32).collect::<Vec<f32>>();
        let (p, q) = (gen(users * k), gen(items * k));
        let (mean, lo, hi) = stats;
        Factors {
            k,
            users,
            items,
            mean,
            lo,
            hi,
            p: Rows::from_f32(p, f16),
            q: Rows::from_f32(q, f16),
            bu: alloc::vec![0.0; users],
            bi: alloc::vec![0.0; items],
        }
    }

    /// Whether either table is stored as f16.
    pub fn is_f16(&self) -> bool {
        self.f16_tables() > 0
    }

    /// The storage in words: "f32", "f16", or which table is which.
    pub fn storage(&self) -> &'static str {
        match (&self.p, &self.q) {
            (Rows::F32(_), Rows::F32(_)) => "f32",
            (Rows::F16(_), Rows::F16(_)) => "f16",
            (Rows::F16(_), Rows::F32(_)) => "f16 users, f32 items",
            (Rows::F32(_), Rows::F16(_)) => "f32 users, f16 items",
        }
    }

    /// How many of the two tables are stored as f16 (0, 1 or 2).
    pub fn f16_tables(&self) -> usize {
        matches!(self.p, Rows::F16(_)) as usize + matches!(self.q, Rows::F16(_)) as usize
    }

    /// Widens the table with fewer rows to f32 (the item table when both are as long), leaving
    /// the other as it is. `auto`'s start: the smaller table is the one whose rows come back
    /// most often, mostly from cache, so 16 bits save little traffic there and cost a
    /// conversion per element on every update, and f32 loses none of its updates.
    pub fn widen_smaller(&mut self) {
        if self.users < self.items {
            self.p.widen();
        } else {
            self.q.widen();
        }
    }

    /// Converts f16 storage to f32, one table at a time.
    pub fn widen(&mut self) {
        self.p.widen();
        self.q.widen();
    }

    /// The prediction for one pair; `pu`/`qi` are scratch rows of `k`.
    pub fn predict_with(&self, u: usize, i: usize, pu: &mut [f32], qi: &mut [f32]) -> f32 {
        self.p.row(u, pu);
        self.q.row(i, qi);
        (self.mean + self.bu[u] + self.bi[i] + dot_fixed(pu, qi)).clamp(self.lo, self.hi)
    }

    /// [`Factors::predict_with`] through the SGD kernels: a step with learning rate 0 on copies
    /// of the rows changes nothing and returns `0 − p·q` in the fixed order, so the prediction
    /// has the same bits as `predict_with`, from the vector code (the f16 rows converted in
    /// registers instead of one element at a time).
    fn predict_fast(
        &self,
        ks: &KernelSet,
        u: usize,
        i: usize,
        pu: &mut [f32],
        qi: &mut [f32],
    ) -> f32 {
        let k = self.k;
        let neg_dot = match (&self.p, &self.q) {
            (Rows::F32(p), Rows::F32(q)) => {
                pu.copy_from_slice(&p[u * k..u * k + k]);
                qi.copy_from_slice(&q[i * k..i * k + k]);
                (ks.mf_step_f32)(pu, qi, 0.0, 0.0, 0.0)
            }
            (Rows::F16(p), Rows::F16(q)) => {
                let hu = &mut bytemuck::cast_slice_mut::<f32, u16>(pu)[..k];
                let hq = &mut bytemuck::cast_slice_mut::<f32, u16>(qi)[..k];
                hu.copy_from_slice(&p[u * k..u * k + k]);
                hq.copy_from_slice(&q[i * k..i * k + k]);
                (ks.mf_step_f16)(hu, hq, 0.0, 0.0, 0.0, None)
            }
            (Rows::F16(p), Rows::F32(q)) => {
                let hu = &mut bytemuck::cast_slice_mut::<f32, u16>(pu)[..k];
                hu.copy_from_slice(&p[u * k..u * k + k]);
                qi.copy_from_slice(&q[i * k..i * k + k]);
                (ks.mf_step_mixed)(hu, qi, 0.0, 0.0, 0.0, None)
            }
            (Rows::F32(p), Rows::F16(q)) => {
                pu.copy_from_slice(&p[u * k..u * k + k]);
                let hq = &mut bytemuck::cast_slice_mut::<f32, u16>(qi)[..k];
                hq.copy_from_slice(&q[i * k..i * k + k]);
                (ks.mf_step_mixed)(hq, pu, 0.0, 0.0, 0.0, None)
            }
        };
        (self.mean + self.bu[u] + self.bi[i] - neg_dot).clamp(self.lo, self.hi)
    }

    /// Root mean squared error over `ratings` (ids must be in range), on `pool`'s threads.
    /// The ratings are cut into `threads · 4` contiguous chunks; the sum is the same whatever
    /// the prefetch distance.
    pub fn rmse(&self, ratings: &[Rating], pool: &dyn Parallel) -> f64 {
        if ratings.is_empty() {
            return 0.0;
        }
        let tasks = pool.threads() * 4;
        let chunk = ratings.len().div_ceil(tasks);
        let ks = KernelSet::detect();
        // One slot per task, added in task order: the same bits whatever order tasks finish in.
        let total = Mutex::new(alloc::vec![0f64; tasks]);
        pool.run(tasks, &|t| {
            let (mut pu, mut qi) = (alloc::vec![0f32; self.k], alloc::vec![0f32; self.k]);
            let mut s = 0f64;
            let mine = ratings.chunks(chunk).nth(t).unwrap_or(&[]);
            let (p, q) = (self.p.rows_at(self.k), self.q.rows_at(self.k));
            for (x, r) in mine.iter().enumerate() {
                // The rows of a later rating on their way while this one runs (validation
                // ratings are in no useful order: without it each one waits for memory).
                if let Some(n) = mine.get(x + VALIDATE_AHEAD) {
                    prefetch_rating(p, q, self.bu.as_ptr(), self.bi.as_ptr(), n);
                }
                let (u, i) = (r.user as usize, r.item as usize);
                let e = r.value - self.predict_fast(&ks, u, i, &mut pu, &mut qi);
                s += (e as f64) * (e as f64);
            }
            total.lock().unwrap_or_else(|e| e.into_inner())[t] = s;
        });
        let sum: f64 = total.into_inner().unwrap_or_else(|e| e.into_inner()).iter().sum();
        (sum / ratings.len() as f64).sqrt()
    }
}

/// Checks every rating's ids and value against the tables.
pub fn check_ratings(ratings: &[Rating], users: usize, items: usize) -> Result<(), MfError> {
    for (index, r) in ratings.iter().enumerate() {
        if r.user as usize >= users {
            return Err(MfError::Id { index, what: "user", id: r.user, rows: users });
        }
        if r.item as usize >= items {
            return Err(MfError::Id { index, what: "item", id: r.item, rows: items });
        }
        if !r.value.is_finite() {
            return Err(MfError::Value { index, value: r.value });
        }
    }
    Ok(())
}

/// What one epoch did.
#[derive(Clone, Debug)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub updates: u64,
    /// Element updates lost to f16 storage among the ratings sampled for the count (one in
    /// `TrainConfig::lost_every`; 0 in f32).
    pub lost: u64,
    /// Ratings whose lost updates were counted.
    pub sampled: u64,
    /// `lost / (2·k·sampled)`: the estimated share of element updates lost.
    pub lost_share: f64,
    /// RMSE of the ratings as seen before each update (a free training-loss estimate).
    pub train_rmse: f64,
    pub seconds: f64,
    /// Whether either table was stored as f16 during the epoch.
    pub f16: bool,
    /// The epoch's storage in words ([`Factors::storage`]).
    pub storage: &'static str,
}

/// When and why `Auto` moved to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Switch {
    /// The switch happened after this epoch (1-based).
    pub epoch: usize,
    pub reason: String,
}

/// Raw views of the tables shared by the tasks of one round; see `Trainer::run_epoch`.
struct Raw<P, Q> {
    p: *mut P,
    q: *mut Q,
    bu: *mut f32,
    bi: *mut f32,
}
// SAFETY: the tasks of a round touch disjoint rows (see `Trainer::run_epoch`).
unsafe impl<P, Q> Sync for Raw<P, Q> {}

/// The ratings (indices into the block-ordered data) that task `t` updates in step `step` of
/// epoch `epoch` cut into `b · slices` steps: the `step % slices`-th slice of its block of round
/// `step / slices`.
fn slice(
    starts: &[usize],
    b: usize,
    epoch: usize,
    t: usize,
    step: usize,
    slices: usize,
) -> core::ops::Range<usize> {
    let (round, sl) = (step / slices, step % slices);
    let blk = t * b + (t + round + epoch) % b;
    let (s0, n) = (starts[blk], starts[blk + 1] - starts[blk]);
    s0 + n * sl / slices..s0 + n * (sl + 1) / slices
}

/// Ratings per bucket of the shuffle, about (a bucket's records fit in L2 while it is shuffled).
const BUCKET: usize = 1 << 15;

/// The ratings in block order, each block in a random order, and the blocks' starts.
///
/// A scatter shuffle: every rating goes to a random bucket of its block (one sequential pass,
/// a few hundred write streams), then each bucket is shuffled on its own (Fisher–Yates, in
/// cache, buckets spread over the pool). Random bucket assignment followed by uniform shuffles
/// of the buckets gives a uniformly random order within each block, without the cache miss per
/// swap of one shuffle over all ratings. The result depends only on the ratings, `b` and
/// `seed`, never on the threads' timing.
fn layout(train: &[Rating], b: usize, seed: u64, pool: &Pool) -> (Vec<Rating>, Vec<usize>) {
    let nb = (train.len() / (b * b) / BUCKET).clamp(1, 1024);
    let key = |r: &Rating| block_of(r.user, b) * b + block_of(r.item, b);
    let mut rng = Rng::new(seed ^ 0x5348_5546);
    let buckets: Vec<u16> = train.iter().map(|_| rng.below(nb) as u16).collect();
    let slot = |i: usize, r: &Rating| key(r) * nb + buckets[i] as usize;
    let mut bstart = alloc::vec![0usize; b * b * nb + 1];
    for (i, r) in train.iter().enumerate() {
        bstart[slot(i, r) + 1] += 1;
    }
    for i in 0..b * b * nb {
        bstart[i + 1] += bstart[i];
    }
    let mut fill = bstart.clone();
    let mut data = alloc::vec![Rating { user: 0, item: 0, value: 0.0 }; train.len()];
    for (i, r) in train.iter().enumerate() {
        let s = &mut fill[slot(i, r)];
        data[*s] = *r;
        *s += 1;
    }
    let shared = crate::par::SharedMut(data.as_mut_ptr());
    let (nbk, tasks) = (b * b * nb, pool.threads().max(1));
    pool.run(tasks, &|t| {
        let shared = &shared; // the whole wrapper (Sync), not its raw field
        for k in (t..nbk).step_by(tasks) {
            // SAFETY: bucket k is data[bstart[k]..bstart[k+1]]; buckets are disjoint and each
            // is shuffled by exactly one task (k ≡ t mod threads).
            let v = unsafe { shared.slice(bstart[k], bstart[k + 1] - bstart[k]) };
            let mut rng = Rng::new(seed ^ (k as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            for i in (1..v.len()).rev() {
                v.swap(i, rng.below(i + 1));
            }
        }
    });
    let starts = (0..=b * b).map(|blk| bstart[blk * nb]).collect();
    (data, starts)
}

fn block_of(id: u32, b: usize) -> usize {
    ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % b
}

/// SGD over a fixed set of ratings; see the module docs.
pub struct Trainer {
    pub factors: Factors,
    pub cfg: TrainConfig,
    pub epoch: usize,
    pub switched: Option<Switch>,
    kernels: KernelSet,
    pool: Pool,
    b: usize,
    /// Ratings in block order; block `(ub, ib)` is `data[starts[ub·b+ib]..starts[ub·b+ib+1]]`.
    data: Vec<Rating>,
    starts: Vec<usize>,
    /// `Auto`: the monitored RMSE after each epoch so far.
    history: Vec<f64>,
}

impl Trainer {
    /// Checks the ratings, shuffles them once and lays them out by block.
    /// `Auto` given two f16 tables starts with the smaller one in f32
    /// ([`Factors::widen_smaller`]).
    pub fn new(
        mut factors: Factors,
        train: &[Rating],
        cfg: &TrainConfig,
    ) -> Result<Trainer, MfError> {
        if factors.k == 0 || factors.k != cfg.k {
            return Err(MfError::Config(alloc::format!(
                "k must be at least 1 and match the tables ({} vs {})",
                cfg.k,
                factors.k
            )));
        }
        if train.is_empty() {
            return Err(MfError::Config("no training ratings".into()));
        }
        let f = &factors;
        let (np, nq) = (f.p.elem_count(), f.q.elem_count());
        if np != f.users * f.k
            || nq != f.items * f.k
            || f.bu.len() != f.users
            || f.bi.len() != f.items
        {
            return Err(MfError::Config(alloc::format!(
                "tables do not match their sizes: {} users and {} items of k {} need {} and {} \
                 values and as many biases, not {np}, {nq}, {} and {}",
                f.users,
                f.items,
                f.k,
                f.users * f.k,
                f.items * f.k,
                f.bu.len(),
                f.bi.len()
            )));
        }
        check_ratings(train, factors.users, factors.items)?;
        if cfg.precision == Precision::Auto && factors.f16_tables() == 2 {
            factors.widen_smaller();
        }
        let pool = Pool::new(cfg.threads)
            .map_err(|e| MfError::Config(alloc::format!("cannot start threads: {e}")))?;
        let b = pool.threads().max(1)
            * std::env::var("EMBER_MF_GRID").ok().and_then(|v| v.parse().ok()).unwrap_or(1usize);
        let (data, starts) = layout(train, b, cfg.seed, &pool);
        Ok(Trainer {
            factors,
            cfg: cfg.clone(),
            epoch: 0,
            switched: None,
            kernels: KernelSet::detect(),
            pool,
            b,
            data,
            starts,
            history: Vec::new(),
        })
    }

    /// `Auto`'s monitored RMSE after each epoch so far (kept by checkpoints).
    pub fn history(&self) -> &[f64] {
        &self.history
    }

    /// Puts a trainer built from the same ratings and settings where a checkpoint left one:
    /// after `epoch` whole epochs, with `Auto`'s history and switch.
    pub fn restore(&mut self, epoch: usize, history: Vec<f64>, switched: Option<Switch>) {
        self.epoch = epoch;
        self.history = history;
        self.switched = switched;
    }

    /// The thread pool (for validation on the same threads).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Names of the SGD kernels in use.
    pub fn kernel_names(&self) -> [&'static str; 3] {
        let ks = &self.kernels;
        [ks.mf_step_f32_name, ks.mf_step_f16_name, ks.mf_step_mixed_name]
    }

    /// Blocks per side of the grid (the threads); an epoch is `blocks()` rounds.
    pub fn blocks(&self) -> usize {
        self.b
    }

    /// Ratings that step `step` of an epoch cut into `blocks() · slices` steps updates (round
    /// `step / slices`, the `step % slices`-th slice of each task's block).
    pub fn step_len(&self, step: usize, slices: usize) -> usize {
        (0..self.b).map(|t| slice(&self.starts, self.b, self.epoch, t, step, slices).len()).sum()
    }

    /// One pass over every rating.
    pub fn run_epoch(&mut self) -> EpochStats {
        let t0 = Instant::now();
        let (mut s, mut l) = (0f64, 0u64);
        for step in 0..self.b {
            let (a, b) = self.run_step(step, 1);
            s += a;
            l += b;
        }
        self.finish_epoch(s, l, t0.elapsed().as_secs_f64())
    }

    /// Ends the epoch whose steps ([`Trainer::run_step`]) added up to squared error `s` and
    /// `lost` element updates in `seconds`.
    pub fn finish_epoch(&mut self, s: f64, lost: u64, seconds: f64) -> EpochStats {
        let f16 = self.factors.is_f16();
        self.epoch += 1;
        let updates = self.data.len() as u64;
        let sampled = self.data.len().div_ceil(self.cfg.lost_every.max(1)) as u64;
        // Element updates per counted rating that could be lost: k per f16 table.
        let elems = (self.factors.k * self.factors.f16_tables()).max(1);
        EpochStats {
            epoch: self.epoch,
            updates,
            lost,
            sampled,
            lost_share: lost as f64 / elems as f64 / sampled as f64,
            train_rmse: (s / updates as f64).sqrt(),
            seconds,
            f16,
            storage: self.factors.storage(),
        }
    }

    /// Step `step` of the current epoch cut into `blocks() · slices` steps: every task runs the
    /// `step % slices`-th slice of its block of round `step / slices`. The steps of an epoch run
    /// in order give the same tables for every `slices` (each task's ratings keep their order,
    /// and tasks of a round never share a row), so a run can stop after any step and resume.
    /// Returns the step's squared error and lost element updates.
    pub fn run_step(&mut self, step: usize, slices: usize) -> (f64, u64) {
        let (b, k, e) = (self.b, self.factors.k, self.epoch);
        let f = &mut self.factors;
        let (mean, lr, reg, rb) = (f.mean, self.cfg.lr, self.cfg.reg, self.cfg.reg_bias);
        let (bu, bi) = (f.bu.as_mut_ptr(), f.bi.as_mut_ptr());
        let (data, starts, ks) = (&self.data, &self.starts, &self.kernels);
        let ahead = self.cfg.prefetch;
        let (p_bytes, q_bytes) = (k * f.p.elem_bytes(), k * f.q.elem_bytes());
        let every = self.cfg.lost_every.max(1);
        // Squared error and lost element updates per task, added in task order at the end (the
        // same bits whatever order the tasks finish in).
        let sums = Mutex::new(alloc::vec![(0f64, 0u64); b]);
        macro_rules! epoch {
            ($p:expr, $q:expr, $step:expr) => {{
                let raw = Raw { p: $p.as_mut_ptr(), q: $q.as_mut_ptr(), bu, bi };
                self.pool.run(b, &|t| {
                    let raw = &raw; // the whole struct (Sync), not its raw fields
                    let range = slice(starts, b, e, t, step, slices);
                    let first = range.start;
                    let recs = &data[range];
                    let (mut s, mut l) = (0f64, 0u32);
                    // The next position ≡ 0 (mod every): no division per rating.
                    let mut counted_at = first.next_multiple_of(every);
                    for (x, r) in recs.iter().enumerate() {
                        if let Some(n) = recs.get(x + ahead).filter(|_| ahead > 0) {
                            let (p, q) = (raw.p as *const u8, raw.q as *const u8);
                            prefetch_rating((p, p_bytes), (q, q_bytes), raw.bu, raw.bi, n);
                        }
                        let (u, i) = (r.user as usize, r.item as usize);
                        // SAFETY: ids were checked against the table sizes in `new`, so the
                        // rows and biases are in bounds. In this round, task `t` owns user
                        // block `t` and item block `(t + round + e) mod b`: every rating of
                        // this block has users and items in those blocks only, and no other
                        // task of the round owns either, so no row is aliased.
                        let (pu, qi, bu, bi) = unsafe {
                            (
                                core::slice::from_raw_parts_mut(raw.p.add(u * k), k),
                                core::slice::from_raw_parts_mut(raw.q.add(i * k), k),
                                &mut *raw.bu.add(u),
                                &mut *raw.bi.add(i),
                            )
                        };
                        // Lost updates counted at fixed positions of the epoch's order (the
                        // same ratings however the epoch is cut into steps).
                        let count = (first + x == counted_at).then(|| {
                            counted_at += every;
                            &mut l
                        });
                        let err = $step(pu, qi, r.value - mean - *bu - *bi, lr, reg, count);
                        *bu += lr * (err - rb * *bu);
                        *bi += lr * (err - rb * *bi);
                        s += (err as f64) * (err as f64);
                    }
                    sums.lock().unwrap_or_else(|e| e.into_inner())[t] = (s, l as u64);
                });
            }};
        }
        match (&mut f.p, &mut f.q) {
            (Rows::F32(p), Rows::F32(q)) => {
                let st = ks.mf_step_f32;
                epoch!(p, q, |p: &mut [f32], q: &mut [f32], t, lr, reg, _l: Option<&mut u32>| st(
                    p, q, t, lr, reg
                ))
            }
            (Rows::F16(p), Rows::F16(q)) => epoch!(p, q, ks.mf_step_f16),
            // The mixed step is symmetric in its rows: the f16 one goes first.
            (Rows::F16(p), Rows::F32(q)) => epoch!(p, q, ks.mf_step_mixed),
            (Rows::F32(p), Rows::F16(q)) => {
                let st = ks.mf_step_mixed;
                let swap = |p: &mut [f32], q: &mut [u16], t, lr, reg, l: Option<&mut u32>| {
                    st(q, p, t, lr, reg, l)
                };
                epoch!(p, q, swap)
            }
        }
        let sums = sums.into_inner().unwrap_or_else(|e| e.into_inner());
        sums.iter().fold((0.0, 0), |(s, l), x| (s + x.0, l + x.1))
    }

    /// `Auto`: decides after an epoch whether to move to f32 (and does), given the epoch's
    /// stats and the validation RMSE if there is a validation set.
    pub fn observe(&mut self, st: &EpochStats, val_rmse: Option<f64>) -> Option<Switch> {
        if self.cfg.precision != Precision::Auto || !self.factors.is_f16() {
            return None;
        }
        let (metric, name) = match val_rmse {
            Some(v) => (v, "validation RMSE"),
            None => (st.train_rmse, "training RMSE"),
        };
        let reason = if st.lost_share > self.cfg.lost_limit {
            Some(alloc::format!(
                "{:.1}% of element updates were lost in f16 (limit {:.1}%)",
                st.lost_share * 100.0,
                self.cfg.lost_limit * 100.0
            ))
        } else {
            self.history.push(metric);
            let h = &self.history;
            // The best of the last two epochs against the best before them: blocked SGD's
            // epoch-to-epoch wobble does not count as progress or as a plateau.
            let n = h.len();
            if n >= 3 {
                let recent = h[n - 1].min(h[n - 2]);
                let before = h[..n - 2].iter().copied().fold(f64::INFINITY, f64::min);
                (recent > before * (1.0 - self.cfg.plateau)).then(|| {
                    alloc::format!(
                        "{name} {recent:.4} improved on {before:.4} by less than {:.2}% in two epochs",
                        self.cfg.plateau * 100.0
                    )
                })
            } else {
                None
            }
        };
        let reason = reason?;
        self.factors.widen();
        let s = Switch { epoch: st.epoch, reason };
        self.switched = Some(s.clone());
        Some(s)
    }
}
