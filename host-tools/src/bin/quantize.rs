use clap::Parser;

fn main() {
    keep_freed_memory();
    let args = ember_cli::cmd::quantize::Args::parse();
    ember_cli::guard(|| ember_cli::cmd::quantize::run(args));
}

/// Calibration allocates and frees tensors of tens of MB per op; glibc serves blocks that large
/// with fresh mmaps and unmaps them on free, so every op paid its page faults again (a third of
/// the run's time in the kernel on MiniLM). Keeping them in the heap lets freed blocks be reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator tunables; called first thing, before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
