//! How ops spread work over cores. The core runtime only knows this trait; [`Serial`] runs
//! everything on the caller's thread (no_std, microcontrollers), and under `std` the
//! [`crate::Pool`] runs tasks on persistent worker threads without allocating per run.

/// Runs `tasks` independent tasks `f(0)..f(tasks-1)`, returning when all are done.
pub trait Parallel: Sync {
    /// Threads available, the caller's included.
    fn threads(&self) -> usize;
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync));
}

/// Everything on the calling thread.
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        for t in 0..tasks {
            f(t);
        }
    }
}

/// A raw pointer that tasks share to write disjoint parts of one buffer.
pub(crate) struct SharedMut<T>(pub *mut T);
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: only used to hand disjoint index ranges of one live buffer to tasks of a single
// `Parallel::run` call, which returns before the buffer's borrow ends.
unsafe impl<T> Sync for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T> Send for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// # Safety
    /// `start..start+len` must lie inside the buffer, no other live slice may cover it, and the
    /// slice must not outlive the buffer's borrow.
    pub(crate) unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: guaranteed by the caller, see above.
        unsafe { core::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Splits rows `0..m` into at most `par.threads()` contiguous ranges of whole `align`-row
/// blocks (none smaller than `min_rows`) and calls `f(r0, r1)` for each, in parallel.
pub(crate) fn split_rows(
    par: &dyn Parallel,
    m: usize,
    min_rows: usize,
    align: usize,
    f: &(dyn Fn(usize, usize) + Sync),
) {
    let t = par.threads().min(m / min_rows.max(1)).max(1);
    split_tasks(par, m, t, align, &|_, r0, r1| f(r0, r1));
}

/// Splits `0..count` into `tasks` contiguous ranges (multiples of `align` but the last) and
/// calls `f(task, r0, r1)` for each non-empty one, in parallel; `task < tasks`.
pub(crate) fn split_tasks(
    par: &dyn Parallel,
    count: usize,
    tasks: usize,
    align: usize,
    f: &(dyn Fn(usize, usize, usize) + Sync),
) {
    if tasks <= 1 {
        f(0, 0, count);
        return;
    }
    let per = count.div_ceil(tasks).div_ceil(align.max(1)) * align.max(1);
    par.run(tasks, &|i| {
        let r0 = (i * per).min(count);
        let r1 = (r0 + per).min(count);
        if r0 < r1 {
            f(i, r0, r1);
        }
    });
}

/// [`split_rows`] over the rows (of `row` elements) of `out`, handing each task its own rows:
/// `f(r0, r1, &mut out[r0·row..r1·row])`. The one place that splits a buffer between tasks.
pub(crate) fn split_rows_mut<T: Send>(
    par: &dyn Parallel,
    out: &mut [T],
    row: usize,
    min_rows: usize,
    align: usize,
    f: &(dyn Fn(usize, usize, &mut [T]) + Sync),
) {
    let m = out.len().checked_div(row).unwrap_or(0);
    let len = out.len();
    let p = SharedMut(out.as_mut_ptr());
    split_rows(par, m, min_rows, align, &|r0, r1| {
        let end = if r1 == m { len } else { r1 * row };
        // SAFETY: the ranges r0..r1 of one `split_rows` call are disjoint and inside 0..m, so
        // these slices are disjoint parts of `out`, which stays mutably borrowed until every
        // task has returned.
        f(r0, r1, unsafe { p.slice(r0 * row, end - r0 * row) });
    });
}
