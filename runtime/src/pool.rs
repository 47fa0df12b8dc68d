//! Persistent worker threads for [`Parallel`]: a run publishes one job (a pointer to the
//! caller's closure, no allocation), workers spin briefly then sleep on a condition variable,
//! and the caller takes its own share before waiting for the rest.

use crate::par::Parallel;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How long an idle worker spins before sleeping: long enough to stay awake between the ops of
/// one run and between back-to-back runs (waking a sleeping thread costs tens of microseconds on
/// bare metal and up to milliseconds in a VM whose idle vCPU halted).
const SPIN_FOR: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
    tasks: usize,
}

struct Shared {
    generation: AtomicU64,
    job: UnsafeCell<Option<Job>>,
    pending: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Workers that have started running (`Pool::new` waits for all of them).
    started: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread inside `Pool::run` while no job is pending, and read
// by workers only after they observe the new generation (Acquire after the writer's Release).
unsafe impl Sync for Shared {}
// SAFETY: the raw pointer in `job` refers to a closure that is `Sync`; see `Pool::run`.
unsafe impl Send for Shared {}

/// A fixed set of worker threads (`threads - 1` of them; the caller is the last one).
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes runs from several threads sharing one pool.
    running: Mutex<()>,
}

/// Calls the closure behind `data` (of type `F`) for task `t`.
unsafe fn trampoline<F: Fn(usize) + Sync + ?Sized>(data: *const (), t: usize) {
    // SAFETY: `data` came from `&F` in `Pool::run`, which outlives every call (it waits).
    let f = unsafe { &*(data as *const &F) };
    f(t)
}

impl Pool {
    /// A pool of `threads` threads in all (at least 1); `0` means one per available core.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            threads
        };
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            started: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for w in 1..threads {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("ember-worker-{w}"))
                .spawn(move || worker(&s, w, threads))?;
            workers.push(h);
        }
        // Wait until every worker runs, so the first inference does not pay for thread start-up.
        while shared.started.load(Ordering::Acquire) < threads - 1 {
            std::thread::yield_now();
        }
        Ok(Pool { threads, shared, workers, running: Mutex::new(()) })
    }
}

fn worker(s: &Shared, me: usize, threads: usize) {
    let mut seen = 0u64;
    s.started.fetch_add(1, Ordering::AcqRel);
    loop {
        let idle_since = std::time::Instant::now();
        let mut spins = 0u32;
        while s.generation.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Acquire) {
            spins = spins.wrapping_add(1);
            // Read the clock every 256 spins only.
            if !spins.is_multiple_of(256) || idle_since.elapsed() < SPIN_FOR {
                std::hint::spin_loop();
            } else {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                let _g = s
                    .wake
                    .wait_while(g, |_| {
                        s.generation.load(Ordering::Acquire) == seen
                            && !s.stop.load(Ordering::Acquire)
                    })
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        seen = s.generation.load(Ordering::Acquire);
        // SAFETY: the job was stored before the generation was bumped (Release/Acquire) and is
        // not touched again until `pending` reaches zero, which needs this worker's decrement.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            let mut t = me;
            while t < job.tasks {
                // SAFETY: `job.data`/`job.call` were made together from a live closure of the
                // matching type; the caller in `Pool::run` waits for us before returning.
                let r = catch_unwind(AssertUnwindSafe(|| unsafe { (job.call)(job.data, t) }));
                if r.is_err() {
                    s.panicked.store(true, Ordering::Release);
                }
                t += threads;
            }
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Parallel for Pool {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || tasks <= 1 {
            for t in 0..tasks {
                f(t);
            }
            return;
        }
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let fref: &(dyn Fn(usize) + Sync) = f;
        let job = Job {
            data: &fref as *const &(dyn Fn(usize) + Sync) as *const (),
            call: trampoline::<dyn Fn(usize) + Sync>,
            tasks,
        };
        // SAFETY: no job is pending (the previous run waited for `pending == 0` and runs are
        // serialized by `running`), so no worker reads `job` while we write it.
        unsafe { *s.job.get() = Some(job) };
        s.pending.store(self.threads - 1, Ordering::Release);
        s.generation.fetch_add(1, Ordering::AcqRel);
        // Taking the lock orders this wake-up after any worker's check-then-sleep.
        drop(s.lock.lock().unwrap_or_else(|e| e.into_inner()));
        s.wake.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| {
            let mut t = 0;
            while t < tasks {
                f(t);
                t += self.threads;
            }
        }));
        // The closure must outlive every worker's use of it: wait even if our share panicked.
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("an ember worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        drop(self.shared.lock.lock().unwrap_or_else(|e| e.into_inner()));
        self.shared.wake.notify_all();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
