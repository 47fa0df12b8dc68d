//! Persistent worker threads for [`Parallel`]: a run publishes one job (a pointer to the
//! caller's closure, no allocation), workers spin briefly then sleep on a condition variable,
//! and every thread, the caller included, claims tasks from one counter until none are left.
//! A worker that is late (asleep, or its core taken by another process or, in a VM, by the
//! hypervisor) leaves its share to the others instead of holding the run up.

use crate::par::Parallel;
use std::any::Any;
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
}

/// The run's ticket: generation in the high 32 bits, next unclaimed task in bits 16..32, number
/// of tasks in the low 16 bits. A claim is a compare-and-swap on the whole word, so a thread
/// that read an older generation's ticket cannot claim a task of a newer one.
#[derive(Clone, Copy)]
struct Ticket(u64);

impl Ticket {
    fn new(generation: u32, tasks: usize) -> Ticket {
        Ticket((generation as u64) << 32 | tasks as u64)
    }
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    fn next(self) -> usize {
        (self.0 >> 16 & 0xffff) as usize
    }
    fn tasks(self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

/// Most tasks one run may have (the ticket's 16-bit fields); `run` does larger counts in rounds.
const MAX_TASKS: usize = 0xffff;

struct Shared {
    ticket: AtomicU64,
    job: UnsafeCell<Option<Job>>,
    /// Tasks of the current run that have finished.
    done: AtomicUsize,
    panicked: AtomicBool,
    /// The first panic of the current run, re-raised in the caller.
    payload: Mutex<Option<Box<dyn Any + Send>>>,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread inside `Pool::run`, before it publishes the ticket
// of a new generation (Release) and after every task of the previous generation finished, and it
// is read only by a thread that has just claimed a task of the current generation (Acquire on the
// ticket), so no read overlaps a write.
unsafe impl Sync for Shared {}
// SAFETY: the raw pointer in `job` refers to a closure that is `Sync`; see `Pool::run`.
unsafe impl Send for Shared {}

impl Shared {
    /// Claims the next task of generation `generation`, if one is left.
    fn claim(&self, generation: u32) -> Option<usize> {
        let mut cur = Ticket(self.ticket.load(Ordering::Acquire));
        loop {
            if cur.generation() != generation || cur.next() >= cur.tasks() {
                return None;
            }
            let want = Ticket(cur.0 + (1 << 16));
            match self.ticket.compare_exchange_weak(
                cur.0,
                want.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(cur.next()),
                Err(now) => cur = Ticket(now),
            }
        }
    }

    /// Claims and runs tasks of `generation` until none are left.
    fn work(&self, generation: u32) {
        while let Some(t) = self.claim(generation) {
            // SAFETY: the job was stored before this generation's ticket was published, and it
            // is not replaced until every task of the generation, this one included, is done.
            let job = unsafe { *self.job.get() };
            if let Some(job) = job {
                // SAFETY: `job.data`/`job.call` were made together from a live closure of the
                // matching type; the caller in `Pool::run` waits for every task before returning.
                let r = catch_unwind(AssertUnwindSafe(|| unsafe { (job.call)(job.data, t) }));
                if let Err(p) = r {
                    let mut first = self.payload.lock().unwrap_or_else(|e| e.into_inner());
                    if first.is_none() {
                        *first = Some(p);
                    }
                    self.panicked.store(true, Ordering::Release);
                }
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A fixed set of worker threads (`threads - 1` of them; the caller is the last one).
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes runs from several threads sharing one pool (and owns the generation count).
    running: Mutex<u32>,
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
            ticket: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            payload: Mutex::new(None),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for w in 1..threads {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("ember-worker-{w}"))
                .spawn(move || worker(&s))?;
            workers.push(h);
        }
        // No wait for the workers to start: a run's tasks go to whichever threads are up, so the
        // first one does not wait for a thread that the system has not scheduled yet.
        Ok(Pool { threads, shared, workers, running: Mutex::new(0) })
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u32;
    let fresh = |seen: u32| Ticket(s.ticket.load(Ordering::Acquire)).generation() != seen;
    loop {
        let idle_since = std::time::Instant::now();
        let mut spins = 0u32;
        while !fresh(seen) && !s.stop.load(Ordering::Acquire) {
            spins = spins.wrapping_add(1);
            // Read the clock every 256 spins only.
            if !spins.is_multiple_of(256) || idle_since.elapsed() < SPIN_FOR {
                std::hint::spin_loop();
            } else {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                let _g = s
                    .wake
                    .wait_while(g, |_| !fresh(seen) && !s.stop.load(Ordering::Acquire))
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        seen = Ticket(s.ticket.load(Ordering::Acquire)).generation();
        s.work(seen);
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
        if tasks > MAX_TASKS {
            for r0 in (0..tasks).step_by(MAX_TASKS) {
                let n = MAX_TASKS.min(tasks - r0);
                self.run(n, &|t| f(r0 + t));
            }
            return;
        }
        let mut generation = self.running.lock().unwrap_or_else(|e| e.into_inner());
        *generation = generation.wrapping_add(1);
        let s = &*self.shared;
        let fref: &(dyn Fn(usize) + Sync) = f;
        let job = Job {
            data: &fref as *const &(dyn Fn(usize) + Sync) as *const (),
            call: trampoline::<dyn Fn(usize) + Sync>,
        };
        // SAFETY: every task of the previous generation finished before its run returned (and
        // runs are serialized by `running`), and no thread claims a task of the new generation
        // before the ticket below is published, so no thread reads `job` while we write it.
        unsafe { *s.job.get() = Some(job) };
        s.done.store(0, Ordering::Release);
        s.ticket.store(Ticket::new(*generation, tasks).0, Ordering::Release);
        // Taking the lock orders this wake-up after any worker's check-then-sleep.
        drop(s.lock.lock().unwrap_or_else(|e| e.into_inner()));
        s.wake.notify_all();
        s.work(*generation);
        // Every claimed task must finish before the closure goes out of scope.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != tasks {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            let p = s.payload.lock().unwrap_or_else(|e| e.into_inner()).take();
            resume_unwind(p.unwrap_or_else(|| Box::new("an ember task panicked")));
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
