//! The worker pool: every task runs exactly once per run, runs can follow each other quickly or
//! after the workers went to sleep, a thread held up in one task leaves the rest to the others,
//! a panicking task reaches the caller with its message, and the pool stays usable.

use ember_runtime::{Parallel, Pool};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[test]
fn every_task_runs_once_per_run() {
    for threads in [1, 2, 3, 5] {
        let pool = Pool::new(threads).unwrap();
        assert_eq!(pool.threads(), threads);
        for tasks in [0, 1, 2, 3, 7, 64] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..200 {
                pool.run(tasks, &|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
            }
            for (t, h) in hits.iter().enumerate() {
                assert_eq!(
                    h.load(Ordering::Relaxed),
                    200,
                    "task {t} of {tasks} on {threads} threads"
                );
            }
        }
    }
}

#[test]
fn sleeping_workers_wake_up() {
    let pool = Pool::new(2).unwrap();
    let n = AtomicUsize::new(0);
    for _ in 0..3 {
        // Long enough for the worker to stop spinning and sleep.
        std::thread::sleep(std::time::Duration::from_millis(50));
        pool.run(2, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
    }
    assert_eq!(n.load(Ordering::Relaxed), 6);
}

#[test]
fn a_panicking_task_reaches_the_caller_and_the_pool_survives() {
    let pool = Pool::new(2).unwrap();
    for bad in [0usize, 1] {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(2, &|t| {
                if t == bad {
                    panic!("task {t} fails");
                }
            })
        }));
        let p = r.expect_err(&format!("panic in task {bad} was lost"));
        let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(msg, format!("task {bad} fails"));
    }
    let n = AtomicUsize::new(0);
    pool.run(4, &|_| {
        n.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(n.load(Ordering::Relaxed), 4);
}

#[test]
fn a_thread_held_up_in_one_task_leaves_the_others_to_the_rest() {
    // Whichever thread takes task 0 waits in it until the five others are done, so one thread
    // must run all five (tasks are claimed, not dealt out in turn: a worker that is late, its
    // core taken by another process, does not hold the run up).
    let pool = Pool::new(2).unwrap();
    for _ in 0..20 {
        let done = AtomicUsize::new(0);
        pool.run(6, &|t| {
            if t == 0 {
                let until = Instant::now() + Duration::from_secs(10);
                while done.load(Ordering::Acquire) < 5 && Instant::now() < until {
                    std::thread::yield_now();
                }
                assert_eq!(done.load(Ordering::Acquire), 5, "the other tasks were not taken");
            } else {
                done.fetch_add(1, Ordering::AcqRel);
            }
        });
    }
}
