//! The `quantize` and `ember` tools. Each subcommand lives in `cmd/`; the binaries only parse
//! arguments and map errors to a message and exit status 1.

pub mod cmd;
pub mod mf_model;
pub mod mf_overlay;
pub mod plot;
pub mod progress;
pub mod ratings;
pub mod serve;

/// Installs a panic hook that reports a panic as a one-line internal error (exit status 1 via
/// [`guard`]) instead of a backtrace dump. Panics are bugs; this keeps the user's terminal clean.
/// Printing to a closed pipe is not one: it exits with status 141 and no message.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        // A reader that stopped early (`ember inspect m.ember | head`) is not a bug: end as a
        // process killed by SIGPIPE would, quietly and with the shell's status for it.
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        let at =
            info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error: {msg}{at} (this is a bug in Ember; please report it)");
    }));
}

/// Runs a command: errors and panics become `error: ...` on stderr and exit status 1.
pub fn guard(f: impl FnOnce() -> anyhow::Result<()> + std::panic::UnwindSafe) {
    install_panic_hook();
    match std::panic::catch_unwind(f) {
        Ok(r) => exit_on_error(r),
        Err(_) => std::process::exit(1),
    }
}

/// Runs `f`, printing `error: ...` (with its causes) and exiting 1 on failure.
pub fn exit_on_error(r: anyhow::Result<()>) {
    if let Err(e) = r {
        eprintln!("error: {e}");
        let mut src = e.source();
        while let Some(s) = src {
            eprintln!("  caused by: {s}");
            src = s.source();
        }
        std::process::exit(1);
    }
}
