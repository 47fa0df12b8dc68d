//! The `quantize` and `ember` tools. Each subcommand lives in `cmd/`; the binaries only parse
//! arguments and map errors to a message and exit status 1.

pub mod cmd;
pub mod progress;

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
