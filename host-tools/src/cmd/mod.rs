pub mod bench;
pub mod compare;
pub mod demo;
pub mod embed;
pub mod finetune;
pub mod inspect;
pub mod loadgen;
pub mod quantize;
pub mod run;
pub mod serve;

use anyhow::{Context, Result};
use std::path::Path;

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads and validates an `.ember` file (every byte), naming it in the error.
pub fn load(path: &Path) -> Result<ember_runtime::Model<ember_runtime::FileBytes>> {
    load_with(path, VerifyArg::Full)
}

/// How much of a model file to check when opening it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyArg {
    /// Every byte, weights included.
    #[default]
    Full,
    /// All but the weights' checksum (still memory-safe; for files verified after flashing).
    Structure,
}

/// [`load`] with a choice of verification (and the overlay beside the model, if any).
pub fn load_with(
    path: &Path,
    verify: VerifyArg,
) -> Result<ember_runtime::Model<ember_runtime::FileBytes>> {
    load_opts(path, verify, &OverlayArgs::default())
}

/// Which overlay (rows fine-tuned on the device, see `ember finetune`) to apply to a model.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OverlayArgs {
    /// Apply this overlay (default: MODEL.overlay beside the model, when there is one).
    #[arg(long, conflicts_with = "no_overlay")]
    pub overlay: Option<std::path::PathBuf>,
    /// Run the model as flashed, without its overlay.
    #[arg(long)]
    pub no_overlay: bool,
}

/// The overlay file that goes with the model at `model`: `MODEL.overlay`.
pub fn overlay_beside(model: &Path) -> std::path::PathBuf {
    let mut s = model.as_os_str().to_owned();
    s.push(".overlay");
    s.into()
}

/// [`load_with`] with a choice of overlay. An applied overlay is named on stderr.
pub fn load_opts(
    path: &Path,
    verify: VerifyArg,
    ov: &OverlayArgs,
) -> Result<ember_runtime::Model<ember_runtime::FileBytes>> {
    if !path.exists() {
        anyhow::bail!("cannot read {}: no such file", path.display());
    }
    let v = match verify {
        VerifyArg::Full => ember_runtime::Verify::Full,
        VerifyArg::Structure => ember_runtime::Verify::Structure,
    };
    let mut m = ember_runtime::load_file_with(path, v)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let file = match (&ov.overlay, ov.no_overlay) {
        (_, true) => None,
        (Some(f), _) => Some(f.clone()),
        (None, false) => Some(overlay_beside(path)).filter(|f| f.exists()),
    };
    if let Some(f) = file {
        let o = crate::mf_overlay::read_overlay(&f)?;
        m.apply_overlay(o).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let rows: Vec<String> = m.overlay_rows().iter().map(|(t, n)| format!("{t} {n}")).collect();
        eprintln!("ember: applied overlay {} (rows: {})", f.display(), rows.join(", "));
    }
    Ok(m)
}

/// Where and on how many threads a command runs a model (run, embed).
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to run: cpu, cuda[:N], or auto (the GPU when there is one, else the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Resolves `--device cpu|cuda[:N]|auto`: the GPU to use, or `None` for the CPU. `cuda` without
/// a usable GPU is an error ("no CUDA device: ..."); `auto` then falls back to the CPU and says
/// so on stderr.
pub fn device(arg: &str) -> Result<Option<ember_runtime::cuda::DeviceInfo>> {
    use ember_runtime::cuda;
    let choice = cuda::DeviceChoice::parse(arg).map_err(anyhow::Error::msg)?;
    let mut fallback = None;
    let found = cuda::select(choice, &mut fallback)?;
    if let Some(why) = fallback {
        eprintln!("ember: --device auto: {why}");
    }
    Ok(found)
}

/// One line naming the GPU a command runs on.
pub fn gpu_line(d: &ember_runtime::cuda::DeviceInfo) -> String {
    let kind = if d.integrated { "integrated" } else { "discrete" };
    format!("cuda:{} {} (sm_{}, {kind}, {} MiB)", d.ordinal, d.name, d.sm, d.total_mem >> 20)
}

/// Reads an `.npz`, naming it in errors.
pub fn read_npz(path: &Path) -> Result<ember_quantize::npz::Arrays> {
    if !path.exists() {
        anyhow::bail!("cannot read {}: no such file", path.display());
    }
    Ok(ember_quantize::npz::read_npz(path)?)
}

/// The hot-row cache for embedding tables larger than a memory budget (bench, serve).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RowCacheArgs {
    /// Memory budget per embedding table (bytes; K, M, G suffixes): a row-wise INT8/INT4 table
    /// stored in more bytes is served through a cache of this many bytes of its hottest rows.
    /// Default: no cache.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub row_cache: Option<usize>,
    /// Which row a full cache set gives up: lfu (least frequently used) or lru.
    #[arg(long, value_name = "lru|lfu", default_value = "lfu", value_parser = parse_policy)]
    pub row_cache_policy: ember_runtime::CachePolicy,
    /// Slots per cache set (1 = direct-mapped).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub row_cache_ways: usize,
}

impl RowCacheArgs {
    pub fn config(&self) -> Option<ember_runtime::RowCacheConfig> {
        self.row_cache.map(|bytes| ember_runtime::RowCacheConfig {
            bytes,
            policy: self.row_cache_policy,
            ways: self.row_cache_ways,
        })
    }

    /// Gives `s` its caches; says on stderr which tables got one (or that none exceeds it).
    pub fn apply<B: AsRef<[u8]>>(
        &self,
        s: &mut ember_runtime::Session<B>,
        names: &[&str],
        quiet: bool,
    ) -> Result<()> {
        let Some(cfg) = self.config() else { return Ok(()) };
        let ops = s.set_row_cache(cfg)?;
        if !quiet {
            if ops.is_empty() {
                eprintln!(
                    "row cache: no row-wise quantized table is larger than {} bytes; none cached",
                    cfg.bytes
                );
            }
            for (op, (_, st)) in ops.iter().zip(s.row_cache_stats()) {
                let name = names.get(*op).copied().unwrap_or("?");
                eprintln!(
                    "row cache: op #{op} ({name}): {} rows, {}, {} ways",
                    st.capacity,
                    st.policy.name(),
                    cfg.ways.max(1)
                );
            }
        }
        Ok(())
    }
}

/// `4096`, `64K`, `8M`, `1G` (powers of 1024) → bytes.
pub fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1usize << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: usize = num.trim().parse().map_err(|_| format!("'{s}' is not a size in bytes"))?;
    n.checked_mul(mult).ok_or_else(|| format!("'{s}' is too large"))
}

fn parse_policy(s: &str) -> std::result::Result<ember_runtime::CachePolicy, String> {
    ember_runtime::CachePolicy::parse(s).ok_or_else(|| format!("'{s}' is not lru or lfu"))
}

/// Each cache's counters as JSON objects (op index, node, rows, policy, hits, misses, rate).
pub fn row_cache_json<B: AsRef<[u8]>>(
    s: &ember_runtime::Session<B>,
    names: &[&str],
) -> Vec<serde_json::Value> {
    s.row_cache_stats()
        .iter()
        .map(|(op, st)| {
            serde_json::json!({
                "op": op,
                "node": names.get(*op).copied().unwrap_or_default(),
                "policy": st.policy.name(),
                "capacity_rows": st.capacity,
                "hits": st.hits,
                "misses": st.misses,
                "evictions": st.evictions,
                "hit_rate": st.hit_rate(),
            })
        })
        .collect()
}
