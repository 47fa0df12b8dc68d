//! A [`Batcher`] turns single samples, submitted from many threads, into runs of a model's
//! fixed-size plans.
//!
//! - One worker thread owns a [`Session`] per batch size (sharing one [`Pool`] for the ops).
//! - Requests wait in a bounded queue of preallocated slots: when every slot is taken,
//!   [`Batcher::submit`] fails at once with [`BatchError::QueueFull`] (backpressure; memory never
//!   grows with load). In steady state nothing is allocated per request.
//! - The worker runs the largest batch size as soon as it fills. Otherwise it waits until the
//!   oldest request has waited `max_wait`, then clears the queue by the [`Policy`]: `Pad` runs the
//!   smallest size that holds everything queued (padding the empty rows by repeating the last
//!   sample), `Split` runs the mix of sizes that takes the least measured compute time, and does
//!   not wait at all when a larger batch is not cheaper per sample (see [`batching_pays`]).
//! - A failed batch is retried one sample at a time, so one bad request (an id outside a table)
//!   does not fail the requests batched with it.
//! - Shutdown drains: every accepted request is answered before the worker stops.
//! - Each request's latency (queue + compute) goes to a [`Histogram`].

use crate::histogram::Histogram;
use crate::{Error, Model, Pool, Session};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the worker clears a queue shorter than the largest batch once `max_wait` has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// One run of the smallest batch size that holds the whole queue, padded.
    Pad,
    /// The runs that clear the queue in the least compute time, by each plan's measured cost
    /// (e.g. 4 + 1 instead of a padded 8 when a batch's cost grows with its size); and no
    /// waiting for a fuller batch when it would not be cheaper per sample.
    Split,
}

#[derive(Clone, Debug)]
pub struct BatcherConfig {
    /// How long the oldest queued request may wait for a fuller batch.
    pub max_wait: Duration,
    /// Requests that may be queued or running at once (slots are preallocated).
    pub queue: usize,
    pub policy: Policy,
    /// Batch sizes to use (each must be compiled in the model); empty: all of them.
    pub sizes: Vec<usize>,
    /// Threads for each run's ops (0: one per core).
    pub threads: usize,
    /// Run on this CUDA GPU (ordinal) instead of the CPU (feature `cuda`).
    pub device: Option<usize>,
    /// The model's file, where the CUDA backend caches PTX it compiles (none: in memory only).
    pub model_path: Option<std::path::PathBuf>,
    /// Hot-row caches for the embedding tables larger than its budget (CPU sessions; see
    /// [`Session::set_row_cache`]). Each batch size's session has its own.
    pub row_cache: Option<crate::RowCacheConfig>,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_wait: Duration::from_micros(1000),
            queue: 256,
            policy: Policy::Split,
            sizes: vec![],
            threads: 0,
            device: None,
            model_path: None,
            row_cache: None,
        }
    }
}

/// Why a request was not answered with outputs.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchError {
    /// Every slot is taken: the caller should back off (nothing was queued).
    QueueFull { capacity: usize },
    /// The batcher is shutting down and takes no new requests.
    ShuttingDown,
    /// Wrong number of input (or output) buffers.
    Count { what: &'static str, expected: usize, got: usize },
    /// An input or output buffer of the wrong byte length for one sample.
    Size { what: &'static str, index: usize, expected: usize, got: usize },
    /// The model failed on this sample.
    Run(Error),
    /// The batcher could not be built (bad configuration or model).
    Config(String),
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::QueueFull { capacity } => {
                write!(f, "queue full ({capacity} requests waiting or running); retry later")
            }
            BatchError::ShuttingDown => write!(f, "the batcher is shutting down"),
            BatchError::Count { what, expected, got } => {
                write!(f, "expected {expected} {what} buffers, got {got}")
            }
            BatchError::Size { what, index, expected, got } => {
                write!(f, "{what} #{index}: expected {expected} bytes for one sample, got {got}")
            }
            BatchError::Run(e) => write!(f, "inference failed: {e}"),
            BatchError::Config(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for BatchError {}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Free,
    Queued,
    Done,
}

struct SlotData {
    /// One sample's inputs, concatenated in signature order.
    input: Vec<u8>,
    /// One sample's outputs, concatenated in signature order.
    output: Vec<u8>,
    state: State,
    /// The submitter dropped its `Pending`: the worker frees the slot when done.
    abandoned: bool,
    submitted: Instant,
    latency: Duration,
    error: Option<Error>,
}

struct Slot {
    data: Mutex<SlotData>,
    done: Condvar,
}

struct Queue {
    free: Vec<u32>,
    queued: VecDeque<(u32, Instant)>,
    /// Slots taken from `free` whose submitter has not queued them yet.
    reserved: usize,
    shutdown: bool,
}

/// Counters per compiled batch size.
struct SizeStats {
    runs: AtomicU64,
    compute_ns: AtomicU64,
}

struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    slots: Box<[Slot]>,
    in_lens: Vec<usize>,
    out_lens: Vec<usize>,
    latency: Histogram,
    depth: AtomicUsize,
    accepted: AtomicU64,
    rejected: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    samples_run: AtomicU64,
    rows_run: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    per_size: Vec<SizeStats>,
}

/// A point-in-time view of a batcher's counters.
#[derive(Clone, Debug)]
pub struct BatcherStats {
    /// Requests queued or running now.
    pub depth: usize,
    pub capacity: usize,
    pub accepted: u64,
    pub rejected: u64,
    pub completed: u64,
    pub failed: u64,
    /// Real samples run, and rows run including padding (their ratio is the batch fill).
    pub samples_run: u64,
    pub rows_run: u64,
    /// (batch size, runs, mean compute time of one run).
    pub per_size: Vec<(usize, u64, Duration)>,
    /// Lookups of the hot-row caches (all tables, all sessions) that hit and that missed.
    pub row_cache_hits: u64,
    pub row_cache_misses: u64,
}

impl BatcherStats {
    /// Share of the rows run that carried a real sample (1.0 = no padding).
    pub fn fill_ratio(&self) -> f64 {
        if self.rows_run == 0 {
            1.0
        } else {
            self.samples_run as f64 / self.rows_run as f64
        }
    }
}

/// Fixed-size batching in front of a model; see the module documentation.
pub struct Batcher {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    sizes: Vec<usize>,
    costs: Vec<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (no invariant spans a
    // panic point), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The next run for `q` queued requests: (samples taken, index into `sizes`). `sizes` ascending,
/// `cost[i]` the compute time of one run of `sizes[i]`.
pub fn choose_batch(
    q: usize,
    sizes: &[usize],
    cost: &[Duration],
    policy: Policy,
) -> (usize, usize) {
    let last = sizes.len() - 1;
    let largest = sizes[last];
    match policy {
        Policy::Pad => {
            let i = sizes.iter().position(|&s| s >= q).unwrap_or(last);
            (q.min(sizes[i]), i)
        }
        Policy::Split => {
            // best[r]: least time to clear r requests; first[r]: the size run first.
            // `Batcher::new` keeps the largest size <= 1024.
            let r = q.min(largest).min(1024);
            let mut best = [Duration::MAX; 1025];
            let mut first = [0usize; 1025];
            best[0] = Duration::ZERO;
            for n in 1..=r {
                for (i, &s) in sizes.iter().enumerate() {
                    let rest = best[n - s.min(n)];
                    let t = cost[i].saturating_add(rest);
                    if t < best[n] {
                        best[n] = t;
                        first[n] = i;
                    }
                }
            }
            let i = first[r];
            (r.min(sizes[i]), i)
        }
    }
}

/// Whether the largest batch costs clearly less per sample (by 10%) than the smallest one.
pub fn batching_pays(sizes: &[usize], cost: &[Duration]) -> bool {
    let per = |i: usize| cost[i].as_secs_f64() / sizes[i] as f64;
    sizes.len() > 1 && per(sizes.len() - 1) < 0.9 * per(0)
}

impl Batcher {
    /// Starts the worker: builds one session per batch size and times each plan twice (on zero
    /// inputs; this also maps the weights' pages before the first request).
    pub fn new<B>(model: Arc<Model<B>>, cfg: BatcherConfig) -> Result<Batcher, BatchError>
    where
        B: AsRef<[u8]> + Send + Sync + 'static,
    {
        let compiled = model.batch_sizes();
        let mut sizes = if cfg.sizes.is_empty() { compiled.clone() } else { cfg.sizes.clone() };
        sizes.sort_unstable();
        sizes.dedup();
        if let Some(s) = sizes.iter().find(|s| !compiled.contains(s)) {
            return Err(BatchError::Config(format!(
                "batch size {s} is not compiled in the model (it has {compiled:?})"
            )));
        }
        if sizes.is_empty() || sizes[sizes.len() - 1] > 1024 {
            return Err(BatchError::Config(format!("unusable batch sizes {sizes:?} (1..=1024)")));
        }
        if cfg.queue == 0 || cfg.queue > u32::MAX as usize {
            return Err(BatchError::Config("the queue must hold at least one request".into()));
        }
        let plan = &model.plans[model.plan_index(sizes[0]).expect("checked above")];
        let per = |ids: &[u32]| -> Vec<usize> {
            ids.iter().map(|&v| plan.values[v as usize].nbytes / plan.batch).collect()
        };
        let (in_lens, out_lens) = (per(&plan.inputs), per(&plan.outputs));
        let (ni, no): (usize, usize) = (in_lens.iter().sum(), out_lens.iter().sum());
        let slots = (0..cfg.queue)
            .map(|_| Slot {
                data: Mutex::new(SlotData {
                    input: vec![0; ni],
                    output: vec![0; no],
                    state: State::Free,
                    abandoned: false,
                    submitted: Instant::now(),
                    latency: Duration::ZERO,
                    error: None,
                }),
                done: Condvar::new(),
            })
            .collect();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                free: (0..cfg.queue as u32).rev().collect(),
                queued: VecDeque::with_capacity(cfg.queue),
                reserved: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            slots,
            in_lens,
            out_lens,
            latency: Histogram::new(),
            depth: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            samples_run: AtomicU64::new(0),
            rows_run: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            per_size: sizes
                .iter()
                .map(|_| SizeStats { runs: AtomicU64::new(0), compute_ns: AtomicU64::new(0) })
                .collect(),
        });
        let pool = Arc::new(
            Pool::new(cfg.threads)
                .map_err(|e| BatchError::Config(format!("cannot start threads: {e}")))?,
        );
        let (tx, rx) = mpsc::channel();
        let (sh, sz) = (shared.clone(), sizes.clone());
        let worker = std::thread::Builder::new()
            .name("ember-batcher".into())
            .spawn(move || worker(&model, &sh, &sz, pool, cfg, tx))
            .map_err(|e| BatchError::Config(format!("cannot start the batcher thread: {e}")))?;
        match rx.recv() {
            Ok(Ok(costs)) => Ok(Batcher { shared, worker: Some(worker), sizes, costs }),
            Ok(Err(e)) => {
                let _ = worker.join();
                Err(e)
            }
            Err(_) => {
                let _ = worker.join();
                Err(BatchError::Config("the batcher thread stopped while starting".into()))
            }
        }
    }

    /// Requests that may be queued or running at once.
    pub fn capacity(&self) -> usize {
        self.shared.slots.len()
    }

    /// The batch sizes in use, ascending.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Compute time of one run of each size, measured at start-up.
    pub fn startup_costs(&self) -> &[Duration] {
        &self.costs
    }

    /// Bytes of one sample of each input / output.
    pub fn input_lens(&self) -> &[usize] {
        &self.shared.in_lens
    }
    pub fn output_lens(&self) -> &[usize] {
        &self.shared.out_lens
    }

    /// Queues one sample (one byte slice per model input, little-endian, one sample each).
    /// Fails at once with `QueueFull` when every slot is taken.
    pub fn submit(&self, inputs: &[&[u8]]) -> Result<Pending<'_>, BatchError> {
        let sh = &*self.shared;
        if inputs.len() != sh.in_lens.len() {
            return Err(BatchError::Count {
                what: "input",
                expected: sh.in_lens.len(),
                got: inputs.len(),
            });
        }
        for (i, (x, &n)) in inputs.iter().zip(&sh.in_lens).enumerate() {
            if x.len() != n {
                return Err(BatchError::Size {
                    what: "input",
                    index: i,
                    expected: n,
                    got: x.len(),
                });
            }
        }
        let id = {
            let mut q = lock(&sh.queue);
            if q.shutdown {
                return Err(BatchError::ShuttingDown);
            }
            let Some(id) = q.free.pop() else {
                sh.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(BatchError::QueueFull { capacity: sh.slots.len() });
            };
            q.reserved += 1;
            // Counted before the worker can see it, so the count never goes below zero.
            sh.depth.fetch_add(1, Ordering::SeqCst);
            id
        };
        let now = {
            let mut d = lock(&sh.slots[id as usize].data);
            let mut off = 0;
            for x in inputs {
                d.input[off..off + x.len()].copy_from_slice(x);
                off += x.len();
            }
            d.state = State::Queued;
            d.abandoned = false;
            d.error = None;
            d.submitted = Instant::now();
            d.submitted
        };
        {
            let mut q = lock(&sh.queue);
            q.reserved -= 1;
            q.queued.push_back((id, now));
        }
        sh.accepted.fetch_add(1, Ordering::Relaxed);
        sh.work.notify_one();
        Ok(Pending { sh, id, open: true })
    }

    /// [`submit`](Self::submit) then [`Pending::wait`]: the sample's outputs, written into
    /// `outputs` (one buffer per model output), and its latency.
    pub fn infer(
        &self,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
    ) -> Result<Duration, BatchError> {
        self.submit(inputs)?.wait(outputs)
    }

    /// Per-request latency (queue + compute), from submission to the answer.
    pub fn latency(&self) -> &Histogram {
        &self.shared.latency
    }

    pub fn stats(&self) -> BatcherStats {
        let sh = &*self.shared;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BatcherStats {
            depth: sh.depth.load(Ordering::SeqCst),
            capacity: sh.slots.len(),
            accepted: ld(&sh.accepted),
            rejected: ld(&sh.rejected),
            completed: ld(&sh.completed),
            failed: ld(&sh.failed),
            samples_run: ld(&sh.samples_run),
            rows_run: ld(&sh.rows_run),
            row_cache_hits: ld(&sh.cache_hits),
            row_cache_misses: ld(&sh.cache_misses),
            per_size: self
                .sizes
                .iter()
                .zip(&sh.per_size)
                .map(|(&s, st)| {
                    let runs = ld(&st.runs);
                    (s, runs, Duration::from_nanos(ld(&st.compute_ns) / runs.max(1)))
                })
                .collect(),
        }
    }

    /// Stops taking requests ([`BatchError::ShuttingDown`] from then on); every request already
    /// accepted is still answered. Dropping the batcher shuts it down and waits for the worker.
    pub fn shutdown(&self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.work.notify_all();
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// A queued request; [`wait`](Pending::wait) for its outputs. Dropping it without waiting is
/// allowed (the slot is recycled once its batch is done).
pub struct Pending<'a> {
    sh: &'a Shared,
    id: u32,
    open: bool,
}

impl Pending<'_> {
    /// Blocks until the sample has run; copies its outputs into `outputs` (one buffer per model
    /// output, one sample each) and returns its latency.
    pub fn wait(mut self, outputs: &mut [&mut [u8]]) -> Result<Duration, BatchError> {
        let sh = self.sh;
        if outputs.len() != sh.out_lens.len() {
            return Err(BatchError::Count {
                what: "output",
                expected: sh.out_lens.len(),
                got: outputs.len(),
            });
        }
        for (i, (o, &n)) in outputs.iter().zip(&sh.out_lens).enumerate() {
            if o.len() != n {
                return Err(BatchError::Size {
                    what: "output",
                    index: i,
                    expected: n,
                    got: o.len(),
                });
            }
        }
        let slot = &sh.slots[self.id as usize];
        let mut d = lock(&slot.data);
        while d.state != State::Done {
            d = slot.done.wait(d).unwrap_or_else(|p| p.into_inner());
        }
        let r = match d.error.take() {
            Some(e) => Err(BatchError::Run(e)),
            None => {
                let mut off = 0;
                for o in outputs.iter_mut() {
                    let n = o.len();
                    o.copy_from_slice(&d.output[off..off + n]);
                    off += n;
                }
                Ok(d.latency)
            }
        };
        d.state = State::Free;
        drop(d);
        self.open = false;
        lock(&sh.queue).free.push(self.id);
        r
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let mut d = lock(&self.sh.slots[self.id as usize].data);
        if d.state == State::Done {
            d.state = State::Free;
            drop(d);
            lock(&self.sh.queue).free.push(self.id);
        } else {
            d.abandoned = true;
        }
    }
}

/// Marks slot `id` answered (outputs or `error` already written into `d`), wakes its waiter or,
/// when abandoned, frees it.
fn finish(sh: &Shared, id: u32, mut d: MutexGuard<'_, SlotData>, error: Option<Error>) {
    d.latency = d.submitted.elapsed();
    sh.latency.record(d.latency);
    if error.is_some() {
        sh.failed.fetch_add(1, Ordering::Relaxed);
    }
    sh.completed.fetch_add(1, Ordering::Relaxed);
    d.error = error;
    // `depth` drops before the slot can be reused or its waiter can see it answered, so a
    // caller that got its answer never sees its own request still counted.
    if d.abandoned {
        d.state = State::Free;
        drop(d);
        lock(&sh.queue).free.push(id);
        sh.depth.fetch_sub(1, Ordering::SeqCst);
    } else {
        d.state = State::Done;
        sh.depth.fetch_sub(1, Ordering::SeqCst);
        drop(d);
        sh.slots[id as usize].done.notify_one();
    }
}

/// Most inputs a run passes without allocating its list of input slices.
const MAX_INPUTS: usize = 16;

/// A plan on the CPU or on a GPU.
enum Engine<'m, B: AsRef<[u8]>> {
    Cpu(Session<'m, B>),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaSession<'m, B>),
}

impl<B: AsRef<[u8]>> Engine<'_, B> {
    /// Row-cache hits and misses since the last call (CPU sessions have the caches).
    fn take_row_cache_counts(&mut self) -> (u64, u64) {
        match self {
            Engine::Cpu(s) => s.take_row_cache_counts(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(_) => (0, 0),
        }
    }

    fn run(&mut self, inputs: &[&[u8]]) -> Result<(), Error> {
        match self {
            Engine::Cpu(s) => s.run(inputs),
            #[cfg(feature = "cuda")]
            Engine::Cuda(s) => s.run(inputs).map_err(|e| match e {
                crate::cuda::CudaError::Run(e) => e,
                other => Error::Device(other.to_string()),
            }),
        }
    }
    fn output(&self, i: usize) -> &[u8] {
        match self {
            Engine::Cpu(s) => s.output(i),
            #[cfg(feature = "cuda")]
            Engine::Cuda(s) => s.output(i),
        }
    }
}

struct Runner<'m, B: AsRef<[u8]>> {
    sessions: Vec<Engine<'m, B>>,
    /// Per size, per input: the batch's input bytes.
    bufs: Vec<Vec<Vec<u8>>>,
    sizes: Vec<usize>,
}

impl<B: AsRef<[u8]>> Runner<'_, B> {
    fn run(&mut self, si: usize) -> Result<(), Error> {
        let bufs = &self.bufs[si];
        if bufs.len() <= MAX_INPUTS {
            let mut refs: [&[u8]; MAX_INPUTS] = [&[]; MAX_INPUTS];
            for (r, b) in refs.iter_mut().zip(bufs) {
                *r = b;
            }
            self.sessions[si].run(&refs[..bufs.len()])
        } else {
            let refs: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
            self.sessions[si].run(&refs)
        }
    }

    /// Runs `ids` (at most `sizes[si]` of them) in one run of plan `si` and answers them.
    fn run_group(&mut self, sh: &Shared, ids: &[u32], si: usize) {
        let size = self.sizes[si];
        for (r, &id) in ids.iter().enumerate() {
            let d = lock(&sh.slots[id as usize].data);
            let mut off = 0;
            for (b, &n) in self.bufs[si].iter_mut().zip(&sh.in_lens) {
                b[r * n..(r + 1) * n].copy_from_slice(&d.input[off..off + n]);
                off += n;
            }
        }
        for (b, &n) in self.bufs[si].iter_mut().zip(&sh.in_lens) {
            let last = (ids.len() - 1) * n;
            for r in ids.len()..size {
                b.copy_within(last..last + n, r * n);
            }
        }
        let t = Instant::now();
        let res = self.run(si);
        let dt = t.elapsed();
        let st = &sh.per_size[si];
        st.runs.fetch_add(1, Ordering::Relaxed);
        st.compute_ns.fetch_add(dt.as_nanos() as u64, Ordering::Relaxed);
        sh.samples_run.fetch_add(ids.len() as u64, Ordering::Relaxed);
        sh.rows_run.fetch_add(size as u64, Ordering::Relaxed);
        // The run's cache lookups move to the shared counters (no allocation: a sum).
        let (h, m) = self.sessions[si].take_row_cache_counts();
        if h + m > 0 {
            sh.cache_hits.fetch_add(h, Ordering::Relaxed);
            sh.cache_misses.fetch_add(m, Ordering::Relaxed);
        }
        match res {
            Ok(()) => {
                for (r, &id) in ids.iter().enumerate() {
                    let mut d = lock(&sh.slots[id as usize].data);
                    let mut off = 0;
                    for (o, &n) in sh.out_lens.iter().enumerate() {
                        let src = &self.sessions[si].output(o)[r * n..(r + 1) * n];
                        d.output[off..off + n].copy_from_slice(src);
                        off += n;
                    }
                    finish(sh, id, d, None);
                }
            }
            Err(e) if ids.len() == 1 => {
                finish(sh, ids[0], lock(&sh.slots[ids[0] as usize].data), Some(e))
            }
            // Find the culprit: each sample alone in the smallest plan.
            Err(_) => {
                for &id in ids {
                    self.run_group(sh, &[id], 0);
                }
            }
        }
    }
}

fn worker<B: AsRef<[u8]>>(
    model: &Model<B>,
    sh: &Shared,
    sizes: &[usize],
    pool: Arc<Pool>,
    cfg: BatcherConfig,
    ready: mpsc::Sender<Result<Vec<Duration>, BatchError>>,
) {
    let start = || -> Result<(Runner<'_, B>, Vec<Duration>), BatchError> {
        let mut runner = Runner { sessions: vec![], bufs: vec![], sizes: sizes.to_vec() };
        #[cfg(feature = "cuda")]
        let gpu = match cfg.device {
            Some(n) => Some(crate::cuda::probe(n).map_err(|e| BatchError::Config(e.to_string()))?),
            None => None,
        };
        #[cfg(not(feature = "cuda"))]
        if cfg.device.is_some() {
            return Err(BatchError::Config("built without the cuda feature".into()));
        }
        for &s in sizes {
            #[cfg(feature = "cuda")]
            if let Some(info) = &gpu {
                let path = cfg.model_path.as_deref();
                let sess = crate::cuda::CudaSession::new(model, s, info.clone(), path)
                    .map_err(|e| BatchError::Config(e.to_string()))?;
                runner.sessions.push(Engine::Cuda(sess));
                runner.bufs.push(sh.in_lens.iter().map(|n| vec![0u8; n * s]).collect());
                continue;
            }
            let mut sess = Session::new(model, s).map_err(|e| BatchError::Config(e.to_string()))?;
            sess.set_pool(pool.clone()).map_err(|e| BatchError::Config(e.to_string()))?;
            if let Some(rc) = cfg.row_cache {
                sess.set_row_cache(rc).map_err(|e| BatchError::Config(e.to_string()))?;
            }
            runner.sessions.push(Engine::Cpu(sess));
            runner.bufs.push(sh.in_lens.iter().map(|n| vec![0u8; n * s]).collect());
        }
        let mut costs = vec![];
        for (si, &size) in sizes.iter().enumerate() {
            let mut best = Duration::MAX;
            for _ in 0..2 {
                let t = Instant::now();
                // Zero inputs may be invalid for a model (then the cost stays a guess).
                let ok = runner.run(si).is_ok();
                best = best.min(if ok { t.elapsed() } else { Duration::from_micros(size as u64) });
            }
            costs.push(best);
        }
        Ok((runner, costs))
    };
    let (mut runner, mut cost) = match start() {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(cost.clone()));
    let largest = sizes[sizes.len() - 1];
    let mut batch: Vec<u32> = Vec::with_capacity(largest);
    loop {
        let si = {
            let mut q = lock(&sh.queue);
            loop {
                if q.queued.is_empty() {
                    if q.shutdown && q.reserved == 0 {
                        return;
                    }
                    q = sh.work.wait(q).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                if q.queued.len() >= largest || q.shutdown {
                    break;
                }
                // Under `Split`, waiting for a fuller batch only pays when a larger batch is
                // cheaper per sample (not so for a compute-bound transformer on a CPU).
                if cfg.policy == Policy::Split && !batching_pays(sizes, &cost) {
                    break;
                }
                let waited = q.queued[0].1.elapsed();
                if waited >= cfg.max_wait {
                    break;
                }
                q = sh
                    .work
                    .wait_timeout(q, cfg.max_wait - waited)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let (take, si) = choose_batch(q.queued.len(), sizes, &cost, cfg.policy);
            batch.clear();
            batch.extend(q.queued.drain(..take).map(|(id, _)| id));
            si
        };
        let t = Instant::now();
        runner.run_group(sh, &batch, si);
        // Track each plan's cost as it runs (a moving average).
        cost[si] = (cost[si] * 7 + t.elapsed()) / 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&x| Duration::from_micros(x)).collect()
    }

    #[test]
    fn pad_takes_the_smallest_size_that_holds_the_queue() {
        let sizes = [1, 4, 8];
        let c = us(&[1, 1, 1]);
        assert_eq!(choose_batch(1, &sizes, &c, Policy::Pad), (1, 0));
        assert_eq!(choose_batch(2, &sizes, &c, Policy::Pad), (2, 1));
        assert_eq!(choose_batch(4, &sizes, &c, Policy::Pad), (4, 1));
        assert_eq!(choose_batch(5, &sizes, &c, Policy::Pad), (5, 2));
        assert_eq!(choose_batch(8, &sizes, &c, Policy::Pad), (8, 2));
        assert_eq!(choose_batch(30, &sizes, &c, Policy::Pad), (8, 2));
        assert_eq!(choose_batch(3, &[4, 8], &c[1..], Policy::Pad), (3, 0));
    }

    #[test]
    fn split_follows_the_measured_costs() {
        let sizes = [1, 4, 8];
        // Cost proportional to size (a compute-bound transformer): never pad.
        let linear = us(&[300, 1200, 2400]);
        for q in 1..=8 {
            let (take, i) = choose_batch(q, &sizes, &linear, Policy::Split);
            assert!(take == sizes[i], "q={q}: padded run of {} for {take}", sizes[i]);
        }
        // 5 = 4 + 1 (1500 µs), not a padded 8 (2400 µs).
        assert!(matches!(choose_batch(5, &sizes, &linear, Policy::Split), (1, 0) | (4, 1)));
        assert!(!batching_pays(&sizes, &linear));
        // Fixed overhead per run (a tiny model): one padded run beats several.
        assert!(batching_pays(&sizes, &us(&[100, 110, 120])));
        let flat = us(&[100, 110, 120]);
        assert_eq!(choose_batch(5, &sizes, &flat, Policy::Split), (5, 2));
        assert_eq!(choose_batch(2, &sizes, &flat, Policy::Split), (2, 1));
        assert_eq!(choose_batch(1, &sizes, &flat, Policy::Split), (1, 0));
        assert_eq!(choose_batch(20, &sizes, &flat, Policy::Split), (8, 2));
        // A large queue under linear costs still runs full batches of the largest size or
        // equivalents, never more than the largest at once.
        let (take, i) = choose_batch(20, &sizes, &linear, Policy::Split);
        assert!(take == sizes[i] && take <= 8);
    }
}
