//! `ember serve MODEL.ember [--name NAME] [--port P] [--max-wait-us U] [--queue Q]`: the model
//! behind the KServe v2 / Triton HTTP protocol, single requests batched into the compiled sizes.

use crate::serve::{kserve::ModelServer, Running};
use anyhow::{Context, Result};
use clap::Parser;
use ember_runtime::{Batcher, BatcherConfig, Policy};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Serve a model over HTTP (KServe v2 / Triton protocol) with dynamic batching.
#[derive(Parser, Debug)]
pub struct Args {
    pub model: PathBuf,
    /// Name the model is served under (default: the file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[command(flatten)]
    pub batching: BatchingArgs,
    /// Open connections at most (more are answered 503).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// How much of the file to check when opening it.
    #[arg(long, value_enum, default_value_t = super::VerifyArg::Full)]
    pub verify: super::VerifyArg,
    #[command(flatten)]
    pub overlay: super::OverlayArgs,
}

/// How requests are batched (shared by `serve` and `loadgen`).
#[derive(clap::Args, Debug, Clone)]
pub struct BatchingArgs {
    /// How long the oldest request waits for a fuller batch, in microseconds (under `split`,
    /// only when the start-up timing finds the largest batch cheaper per sample).
    #[arg(long, default_value_t = 1000)]
    pub max_wait_us: u64,
    /// Samples queued or running at most; beyond it requests are refused at once (503).
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// How a queue shorter than the largest batch is cleared after max-wait: `split` runs the
    /// sizes that clear it in the least measured compute time (a padded larger batch when runs
    /// cost the same whatever their size, smaller full batches when cost grows with size);
    /// `pad` always runs the smallest size that holds it, padded.
    #[arg(long, value_enum, default_value_t = PolicyArg::Split)]
    pub policy: PolicyArg,
    /// Batch sizes to use, comma-separated (default: every size compiled in the model).
    #[arg(long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Threads for each batch's ops (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where batches run: cpu, cuda[:N], or auto (the GPU when there is one, else the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub row_cache: super::RowCacheArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PolicyArg {
    Pad,
    Split,
}

impl BatchingArgs {
    pub fn config(&self) -> BatcherConfig {
        BatcherConfig {
            max_wait: Duration::from_micros(self.max_wait_us),
            queue: self.queue,
            policy: match self.policy {
                PolicyArg::Pad => Policy::Pad,
                PolicyArg::Split => Policy::Split,
            },
            sizes: self.batch_sizes.clone(),
            threads: self.threads.unwrap_or(0),
            device: None,
            model_path: None,
            row_cache: self.row_cache.config(),
        }
    }
}

/// Loads `path` and puts a batcher with `cfg` in front of it.
pub fn model_server(
    path: &Path,
    name: &str,
    cfg: BatcherConfig,
    verify: super::VerifyArg,
    overlay: &super::OverlayArgs,
) -> Result<ModelServer> {
    let model = Arc::new(super::load_opts(path, verify, overlay)?);
    let (inputs, outputs) = (model.inputs.clone(), model.outputs.clone());
    let batcher =
        Batcher::new(model, cfg).with_context(|| format!("cannot serve {}", path.display()))?;
    Ok(ModelServer::new(name.to_string(), batcher, inputs, outputs))
}

/// The name a model file is served under by default.
pub fn default_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

pub fn run(a: Args) -> Result<()> {
    let name = a.name.clone().unwrap_or_else(|| default_name(&a.model));
    if name.is_empty() || name.contains('/') {
        anyhow::bail!("invalid model name '{name}' (non-empty, no '/')");
    }
    let mut cfg = a.batching.config();
    let gpu = super::device(&a.batching.device)?;
    cfg.device = gpu.as_ref().map(|d| d.ordinal);
    cfg.model_path = Some(a.model.clone());
    let server = model_server(&a.model, &name, cfg, a.verify, &a.overlay)?;
    let b = server.batcher();
    let costs: Vec<String> = b
        .sizes()
        .iter()
        .zip(b.startup_costs())
        .map(|(s, c)| format!("{s}: {:.3} ms", c.as_secs_f64() * 1e3))
        .collect();
    // Under `split` the worker waits for a fuller batch only while the largest batch is
    // measured cheaper per sample (the costs keep being measured as batches run): say which
    // way the start-up timing went, so an unused max wait is no surprise.
    let policy = match a.batching.policy {
        PolicyArg::Pad => "pad".to_string(),
        PolicyArg::Split => {
            let (sizes, costs) = (b.sizes(), b.startup_costs());
            if sizes.len() < 2 {
                "split, not waiting: one batch size".to_string()
            } else if ember_runtime::batcher::batching_pays(sizes, costs) {
                "split, waiting: larger batches cheaper per sample".to_string()
            } else {
                "split, not waiting: larger batches no cheaper per sample".to_string()
            }
        }
    };
    let addr = format!("{}:{}", a.host, a.port);
    let mut running = Running::start(server, &addr, a.max_connections)
        .with_context(|| format!("cannot listen on {addr}"))?;
    let on = gpu.as_ref().map(super::gpu_line).unwrap_or_else(|| "cpu".into());
    println!(
        "serving '{name}' from {} on http://{} ({on}; batch sizes {:?}, policy {policy}, max wait {} us, queue {}; one batch: {})",
        a.model.display(),
        running.addr,
        running.model.batcher().sizes(),
        a.batching.max_wait_us,
        a.batching.queue,
        costs.join(", ")
    );
    let _ = std::io::stdout().flush();
    signals::install();
    while !signals::requested() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Drain: no new connections or requests; every request already accepted is answered.
    running.stop();
    let m = running.model.clone();
    m.batcher().shutdown();
    // Done once nothing is queued or being answered for a short while (a request read just
    // before the signal may still be on its way to the queue), or after 30 s at most.
    let t0 = std::time::Instant::now();
    let mut quiet_since = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if m.batcher().stats().depth > 0 || m.in_flight() > 0 {
            quiet_since = std::time::Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = m.batcher().stats();
    // The reader of stdout may be gone by now (a supervisor, a test): ignore write errors.
    let _ = writeln!(
        std::io::stdout(),
        "stopped: {} samples answered ({} failed), {} refused, {} still in flight",
        st.completed,
        st.failed,
        st.rejected,
        st.depth + m.in_flight()
    );
    Ok(())
}

/// SIGINT / SIGTERM request a draining stop.
#[cfg(unix)]
mod signals {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; `signal`
        // with a valid function pointer has no other precondition.
        unsafe {
            libc::signal(libc::SIGINT, h);
            libc::signal(libc::SIGTERM, h);
        }
    }

    pub fn requested() -> bool {
        STOP.load(Ordering::SeqCst)
    }
}

#[cfg(not(unix))]
mod signals {
    pub fn install() {}
    pub fn requested() -> bool {
        false
    }
}
