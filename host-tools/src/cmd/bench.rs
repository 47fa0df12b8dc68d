//! `ember bench MODEL.ember [--batch N] [--threads T] [--iters K] [--input IN.npz] [--profile] [--json]`:
//! open time, first-run time, latency percentiles and throughput of one compiled plan, and with
//! `--profile` the time spent in each op (summed over iterations) and per op kind.

use anyhow::{bail, Result};
use clap::Parser;
use ember_quantize::exec;
use ember_runtime::cuda::CudaSession;
use ember_runtime::{DType, OpCode, Pool, Session};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Measure latency and throughput of a model on this machine.
#[derive(Parser, Debug)]
pub struct Args {
    pub model: PathBuf,
    /// Batch size (one of the compiled plans; default: the smallest).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed iterations after warm-up.
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// Warm-up iterations (not timed).
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Inputs (first axis = samples). Runs take consecutive batches of its samples in turn
    /// (wrapping; a file shorter than one batch is cycled to fill it), so a stream of lookups
    /// exercises a row cache as traffic would. Default: synthetic inputs, floats uniform in
    /// [-1, 1), integers zero (valid for any index input).
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub row_cache: super::RowCacheArgs,
    /// Time every op; print the most expensive ops and the totals per op kind.
    #[arg(long)]
    pub profile: bool,
    /// A second model run side by side in the same process (same batch, threads and pool),
    /// alternating with MODEL run by run so that machine noise hits both alike; prints its
    /// figures and the latency ratio MODEL / AGAINST (JSON key `against`). Each run evicts
    /// part of the other model's weights from the caches, which costs the larger one more.
    #[arg(long, value_name = "B.ember")]
    pub against: Option<PathBuf>,
    /// How much of the file to check when opening it (part of `open_ms`).
    #[arg(long, value_enum, default_value_t = super::VerifyArg::Full)]
    pub verify: super::VerifyArg,
    #[command(flatten)]
    pub overlay: super::OverlayArgs,
    /// Where to run: cpu, cuda[:N], or auto (the GPU when there is one, else the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the results as JSON (keys p50_ms, p99_ms, samples_per_s, ...).
    #[arg(long)]
    pub json: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One run of `s`, adding each op's time (ns from the previous op's end) into `op_ns`.
fn profiled_run<B: AsRef<[u8]>>(
    s: &mut Session<'_, B>,
    refs: &[&[u8]],
    op_ns: &mut [f64],
) -> Result<()> {
    let mut last = Instant::now();
    s.run_with(refs, |i, _| {
        let now = Instant::now();
        op_ns[i] += (now - last).as_secs_f64() * 1e9;
        last = now;
    })?;
    Ok(())
}

/// Times the first run (ms) and counts the page faults the process took during it, then runs
/// `warmup` more untimed.
fn first_and_warmup(
    warmup: usize,
    run: &mut dyn FnMut() -> Result<()>,
) -> Result<(f64, Option<u64>)> {
    let f0 = page_faults();
    let t = Instant::now();
    run()?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let faults = f0.zip(page_faults()).map(|(a, b)| b.saturating_sub(a));
    for _ in 0..warmup {
        run()?;
    }
    Ok((first_ms, faults))
}

/// Page faults (minor and major, all threads) this process has taken, where the OS counts
/// them: a fresh process's first run pays one per arena page it touches (JSON
/// `first_run_page_faults`), a large share of its cost over a steady run.
fn page_faults() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut r = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes at most one `rusage` through this valid, writable pointer.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, r.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: the call succeeded and filled the struct (which started zeroed anyway).
        let r = unsafe { r.assume_init() };
        u64::try_from(r.ru_minflt).ok().zip(u64::try_from(r.ru_majflt).ok()).map(|(a, b)| a + b)
    }
    #[cfg(not(unix))]
    None
}

/// " (N page faults)" when the OS counted them.
fn faults_text(faults: Option<u64>) -> String {
    faults.map(|n| format!(" ({n} page faults)")).unwrap_or_default()
}

/// The figures every bench reports, from the per-run times (sorted here): the JSON object with
/// the batch, open/load/first-run times, percentiles and throughput, and (p50, p99, mean).
fn timings(
    times: &mut [f64],
    batch: usize,
    open_ms: f64,
    load_ms: f64,
    first_ms: f64,
) -> (serde_json::Value, f64, f64, f64) {
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(times, 0.5), percentile(times, 0.99));
    let out = json!({
        "batch": batch,
        "open_ms": open_ms,
        "load_ms": load_ms,
        "first_run_ms": first_ms,
        "p50_ms": p50,
        "p99_ms": p99,
        "mean_ms": mean,
        "min_ms": times[0],
        "samples_per_s": batch as f64 / (p50 * 1e-3),
    });
    (out, p50, p99, mean)
}

/// Each input batch as the byte slices `run` takes.
fn slices(bufs: &[Vec<Vec<u8>>]) -> Vec<Vec<&[u8]>> {
    bufs.iter().map(|b| b.iter().map(|v| v.as_slice()).collect()).collect()
}

/// Hands out the batches in turn, wrapping (each run takes the next).
fn in_turn<'r, 'b>(refs: &'r [Vec<&'b [u8]>]) -> impl FnMut() -> &'r [&'b [u8]] + 'r {
    let mut next = 0usize;
    move || {
        next += 1;
        &refs[(next - 1) % refs.len()]
    }
}

/// The second model of `--against`: its session, input batches and run times.
struct Side<'m> {
    s: Session<'m, ember_runtime::FileBytes>,
    bufs: Vec<Vec<Vec<u8>>>,
    times: Vec<f64>,
}

impl Side<'_> {
    /// One timed run on the next input batch.
    fn run(&mut self) -> Result<()> {
        let refs = slices(&self.bufs);
        let st = Instant::now();
        self.s.run(&refs[self.times.len() % refs.len()])?;
        self.times.push(st.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }
}

/// Most input batches a bench keeps (the runs cycle through them).
const MAX_INPUT_BATCHES: usize = 4096;

/// The input batches the runs cycle through: one batch of bytes per model input each.
fn inputs(
    model: &ember_runtime::Model<ember_runtime::FileBytes>,
    batch: usize,
    file: Option<&PathBuf>,
) -> Result<Vec<Vec<Vec<u8>>>> {
    if let Some(path) = file {
        let arrays = super::read_npz(path)?;
        let (ins, n) = exec::check_inputs(
            &exec::model_inputs(model),
            &arrays,
            &format!("{}", path.display()),
        )?;
        let batches = (n / batch).clamp(1, MAX_INPUT_BATCHES);
        return Ok((0..batches)
            .map(|b| {
                let rows: Vec<usize> = (0..batch).map(|i| (b * batch + i) % n).collect();
                model.inputs.iter().map(|s| ins[&s.name].take_rows(&rows).to_le_bytes()).collect()
            })
            .collect());
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    Ok(vec![model
        .inputs
        .iter()
        .map(|s| {
            let count = batch * s.dims.iter().product::<usize>();
            match s.dtype {
                DType::F32 => (0..count)
                    .flat_map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        ((seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0).to_le_bytes()
                    })
                    .collect(),
                d => vec![0u8; count * d.size()],
            }
        })
        .collect()])
}

pub fn run(a: Args) -> Result<()> {
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let t_open = Instant::now();
    let model = super::load_opts(&a.model, a.verify, &a.overlay)?;
    let load_ms = t_open.elapsed().as_secs_f64() * 1e3;
    let batch = a.batch.unwrap_or_else(|| model.batch_sizes().into_iter().min().unwrap_or(1));
    if model.plan_index(batch).is_none() {
        bail!(
            "{} has no plan for batch {batch}; compiled batch sizes: {:?}",
            a.model.display(),
            model.batch_sizes()
        );
    }
    if let Some(info) = super::device(&a.device)? {
        if a.profile {
            bail!("--profile times CPU ops; on CUDA profile with Nsight Systems (nsys)");
        }
        if a.against.is_some() {
            bail!("--against compares CPU runs; run the CUDA bench once per model");
        }
        return bench_cuda(&a, &model, batch, info, t_open, load_ms);
    }
    let threads = a.threads.unwrap_or(0);
    let pool = Arc::new(Pool::new(threads)?);
    let mut s = Session::new(&model, batch)?;
    s.set_pool(pool.clone())?;
    let names = model.op_names(batch);
    a.row_cache.apply(&mut s, &names, a.json)?;
    let open_ms = t_open.elapsed().as_secs_f64() * 1e3;
    let bufs = inputs(&model, batch, a.input.as_ref())?;
    let refs = slices(&bufs);
    let mut turn = in_turn(&refs);
    let n_ops = s.plan().records.len();
    // With --profile the first run is profiled too (its own column): where a cold start goes.
    let mut first_ns = vec![0f64; n_ops];
    let mut first = true;
    let (first_ms, first_faults) = first_and_warmup(a.warmup, &mut || {
        let refs = turn();
        if a.profile && std::mem::take(&mut first) {
            return profiled_run(&mut s, refs, &mut first_ns);
        }
        Ok(s.run(refs)?)
    })?;
    // The caches' counters cover the timed runs only (the warm-up filled them).
    s.reset_row_cache_stats();
    if a.profile && a.against.is_some() {
        bail!("--profile and --against do not mix (profiling slows MODEL's runs only)");
    }
    let model_b = match &a.against {
        Some(p) => Some(super::load_opts(p, a.verify, &super::OverlayArgs::default())?),
        None => None,
    };
    let mut side = match &model_b {
        Some(mb) => {
            if mb.plan_index(batch).is_none() {
                bail!(
                    "--against {} has no plan for batch {batch}; compiled batch sizes: {:?}",
                    a.against.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    mb.batch_sizes()
                );
            }
            let mut sb = Session::new(mb, batch)?;
            sb.set_pool(pool.clone())?;
            let bufs_b = inputs(mb, batch, a.input.as_ref())?;
            for _ in 0..=a.warmup {
                sb.run(&slices(&bufs_b)[0])?;
            }
            Some(Side { s: sb, bufs: bufs_b, times: Vec::with_capacity(a.iters) })
        }
        None => None,
    };
    let mut op_ns = vec![0f64; n_ops];
    let mut times = Vec::with_capacity(a.iters);
    // With --against, every other iteration runs AGAINST first, so neither model always finds
    // the caches as the other left them.
    for it in 0..a.iters {
        if let Some(b) = side.as_mut().filter(|_| it % 2 == 1) {
            b.run()?;
        }
        let refs = turn();
        let st = Instant::now();
        if a.profile {
            profiled_run(&mut s, refs, &mut op_ns)?;
        } else {
            s.run(refs)?;
        }
        times.push(st.elapsed().as_secs_f64() * 1e3);
        if let Some(b) = side.as_mut().filter(|_| it % 2 == 0) {
            b.run()?;
        }
    }
    // Side by side: the pairwise ratios (run i of MODEL over run i of AGAINST) before sorting.
    let against = side.map(|Side { times: mut tb, .. }| {
        let mut ratios: Vec<f64> = times.iter().zip(&tb).map(|(x, y)| x / y).collect();
        ratios.sort_by(f64::total_cmp);
        let (jb, p50b, p99b, _) = timings(&mut tb, batch, 0.0, 0.0, 0.0);
        (jb, p50b, p99b, percentile(&ratios, 0.5))
    });
    let k = s.kernels();
    let (mut out, p50, p99, mean) = timings(&mut times, batch, open_ms, load_ms, first_ms);
    out["first_run_page_faults"] = json!(first_faults);
    out["model"] = json!(a.model);
    out["threads"] = json!(s.threads());
    out["iters"] = json!(a.iters);
    // The GEMM kernels this plan runs (the INT4 ones only when it has INT4 linears).
    let has = |c: OpCode| s.plan().records.iter().any(|r| r.opcode == c as u16);
    let mut gemms = vec![k.i8_gemm_name];
    let mut kernels = json!({"i8_gemm": k.i8_gemm_name, "quantize_u8": k.quantize_u8_name, "f32_gemm": k.f32_gemm_name});
    if has(OpCode::LinearI4) {
        gemms.push(k.i4_gemm_name);
        kernels["i4_gemm"] = json!(k.i4_gemm_name);
    }
    if has(OpCode::LinearI4M) {
        gemms.push(k.i4m_gemm_name);
        kernels["i4m_gemm"] = json!(k.i4m_gemm_name);
    }
    out["kernels"] = kernels;
    if let (Some((jb, p50b, _, pair)), Some(pb)) = (&against, &a.against) {
        let mut jb = jb.clone();
        for key in ["open_ms", "load_ms", "first_run_ms"] {
            jb.as_object_mut().map(|o| o.remove(key));
        }
        jb["model"] = json!(pb);
        jb["ratio_p50"] = json!(p50 / p50b);
        jb["ratio_pairwise_median"] = json!(pair);
        out["against"] = jb;
    }
    out["verify"] = json!(format!("{:?}", a.verify).to_lowercase());
    out["input_batches"] = json!(refs.len());
    let caches = super::row_cache_json(&s, &names);
    if a.row_cache.row_cache.is_some() {
        out["row_cache"] = json!(caches);
    }
    let mut by_kind: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    let mut ops = Vec::new();
    if a.profile {
        let plan = s.plan();
        for (i, rec) in plan.records.iter().enumerate() {
            let kind = OpCode::from_u16(rec.opcode).map(|c| c.name()).unwrap_or("?");
            let ms = op_ns[i] / a.iters as f64 / 1e6;
            let e = by_kind.entry(kind).or_default();
            e.0 += ms;
            e.1 += 1;
            ops.push((ms, i, kind, names.get(i).cloned().unwrap_or_default()));
        }
        ops.sort_by(|x, y| y.0.total_cmp(&x.0));
        let first = |i: usize| first_ns[i] / 1e6;
        out["profile"] = json!({
            "ops": ops.iter().map(|(ms, i, kind, name)| json!({"index": i, "op": kind, "node": name, "ms": ms, "first_run_ms": first(*i)})).collect::<Vec<_>>(),
            "by_kind": by_kind.iter().map(|(k, (ms, n))| (k.to_string(), json!({"ms": ms, "count": n}))).collect::<serde_json::Map<_, _>>(),
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: batch {batch}, {} threads, kernels {} / {}",
        a.model.display(),
        s.threads(),
        gemms.join(", "),
        k.quantize_u8_name
    );
    println!(
        "  open {open_ms:.2} ms (load and verify {load_ms:.2} ms, the rest: threads and session), first run {first_ms:.2} ms{}",
        faults_text(first_faults)
    );
    println!(
        "  latency p50 {p50:.3} ms, p99 {p99:.3} ms, mean {mean:.3} ms over {} runs; {:.1} samples/s",
        a.iters,
        batch as f64 / (p50 * 1e-3)
    );
    if let (Some((_, p50b, p99b, pair)), Some(pb)) = (&against, &a.against) {
        println!(
            "  against {}: p50 {p50b:.3} ms, p99 {p99b:.3} ms; ratio {:.3} (p50s), {pair:.3} (median of run-by-run ratios)",
            pb.display(),
            p50 / p50b
        );
    }
    for c in &caches {
        println!(
            "  row cache op #{} ({}): hit rate {:.1}% ({} hits, {} misses, {} evictions; {} rows, {})",
            c["op"], c["node"].as_str().unwrap_or(""), c["hit_rate"].as_f64().unwrap_or(0.0) * 100.0,
            c["hits"], c["misses"], c["evictions"], c["capacity_rows"], c["policy"].as_str().unwrap_or("")
        );
    }
    if a.profile {
        let total: f64 = by_kind.values().map(|v| v.0).sum();
        println!("  time per op kind (mean per run, profiling adds a clock read per op):");
        let mut kinds: Vec<_> = by_kind.iter().collect();
        kinds.sort_by(|x, y| y.1 .0.total_cmp(&x.1 .0));
        for (kind, (ms, n)) in kinds {
            println!(
                "    {kind:<16} {ms:>9.3} ms {:>5.1}%  ({n} ops)",
                100.0 * ms / total.max(1e-12)
            );
        }
        println!("  most expensive ops:");
        for (ms, i, kind, name) in ops.iter().take(12) {
            println!("    #{i:<4} {kind:<14} {ms:>8.3} ms  {name}");
        }
        // The cold start: the ops whose first run exceeds their steady time the most.
        let mut cold: Vec<_> = ops
            .iter()
            .map(|(ms, i, kind, name)| (first_ns[*i] / 1e6 - ms, *i, *ms, kind, name))
            .collect();
        cold.sort_by(|x, y| y.0.total_cmp(&x.0));
        let extra: f64 = cold.iter().map(|c| c.0).sum();
        println!("  first run over the steady mean: {extra:+.3} ms in ops; most of it in:");
        for (d, i, ms, kind, name) in cold.iter().take(8) {
            println!(
                "    #{i:<4} {kind:<14} {:>8.3} ms first, {ms:>8.3} ms steady ({d:+.3})  {name}",
                first_ns[*i] / 1e6
            );
        }
    }
    Ok(())
}

/// `ember bench --device cuda`: the same figures for a [`CudaSession`] (the open time includes
/// loading the PTX and placing the weights; each run copies inputs in and outputs out).
fn bench_cuda(
    a: &Args,
    model: &ember_runtime::Model<ember_runtime::FileBytes>,
    batch: usize,
    info: ember_runtime::cuda::DeviceInfo,
    t_open: Instant,
    load_ms: f64,
) -> Result<()> {
    let gpu = super::gpu_line(&info);
    let mut s = CudaSession::new(model, batch, info, Some(&a.model))?;
    let open_ms = t_open.elapsed().as_secs_f64() * 1e3;
    for note in s.notes() {
        eprintln!("ember: {note}");
    }
    if a.row_cache.row_cache.is_some() {
        eprintln!("ember: --row-cache is a CPU feature; the CUDA bench reads tables directly");
    }
    let bufs = inputs(model, batch, a.input.as_ref())?;
    let refs = slices(&bufs);
    let mut turn = in_turn(&refs);
    let (first_ms, first_faults) = first_and_warmup(a.warmup, &mut || Ok(s.run(turn())?))?;
    let mut times = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let refs = turn();
        let st = Instant::now();
        s.run(refs)?;
        times.push(st.elapsed().as_secs_f64() * 1e3);
    }
    let (launches, graph) = s.launches();
    let (mut out, p50, p99, mean) = timings(&mut times, batch, open_ms, load_ms, first_ms);
    out["first_run_page_faults"] = json!(first_faults);
    out["model"] = json!(a.model);
    out["device"] = json!(gpu);
    out["ptx"] = json!(format!("{:?}", s.ptx_source()));
    out["weights"] = json!(format!("{:?}", s.weights_mode()));
    out["launches_per_run"] = json!(launches);
    out["cuda_graph"] = json!(graph);
    out["iters"] = json!(a.iters);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{}: batch {batch} on {gpu}", a.model.display());
    println!(
        "  PTX {:?}, weights {:?}, {launches} launches per run{}",
        s.ptx_source(),
        s.weights_mode(),
        if graph { " in one CUDA graph" } else { "" }
    );
    println!(
        "  open {open_ms:.2} ms (load and verify {load_ms:.2} ms), first run {first_ms:.2} ms{}",
        faults_text(first_faults)
    );
    println!(
        "  latency p50 {p50:.3} ms, p99 {p99:.3} ms, mean {mean:.3} ms over {} runs; {:.1} samples/s",
        a.iters,
        batch as f64 / (p50 * 1e-3)
    );
    Ok(())
}
