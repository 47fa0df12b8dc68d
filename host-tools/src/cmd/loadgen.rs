//! `ember loadgen`: open-loop load on the inference protocol over loopback.
//!
//! - `ember loadgen MODEL.ember`: for each batching policy, serves the model in-process on a
//!   loopback port, measures the maximum throughput (closed loop, first policy), then offers
//!   fractions of it as Poisson arrivals and reports p50/p99/p99.9, throughput, rejections and the
//!   batch fill; `--svg` plots p99 against offered load per policy.
//! - `ember loadgen --url http://HOST:PORT [--name M] --rate R`: one open-loop run against a
//!   running `ember serve` (or any KServe v2 server); without `--rate`, a closed loop.

use crate::plot::{Chart, Series};
use crate::serve::http::read_response;
use crate::serve::loadgen::{self, infer_request, Load, Outcome};
use crate::serve::Running;
use anyhow::{bail, Context, Result};
use clap::Parser;
use ember_runtime::{BatcherConfig, DType, Policy, SigEntry};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Load-test a served model: latency against offered load, per batching policy.
#[derive(Parser, Debug)]
pub struct Args {
    /// A model to serve in-process on loopback (omit with --url).
    pub model: Option<PathBuf>,
    /// A running server instead, e.g. http://127.0.0.1:8000.
    #[arg(long, conflicts_with = "model")]
    pub url: Option<String>,
    /// The model's name at --url (default: the first in the server's repository index).
    #[arg(long)]
    pub name: Option<String>,
    /// Samples to send: an .npz with one array per model input, samples first (default: zeros).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Offered load in requests per second (one point per policy; with --url, one run).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Offered loads as fractions of the measured maximum throughput.
    #[arg(long, value_delimiter = ',', default_value = "0.3,0.5,0.7,0.9")]
    pub loads: Vec<f64>,
    /// Batching policies to compare: `pad:US` or `split:US` (max wait in microseconds), `single`
    /// (batch 1 only, no waiting), `full:US` (only the largest batch).
    #[arg(long, value_delimiter = ',', default_value = "split:1000,pad:1000,single")]
    pub policies: Vec<String>,
    /// Seconds of load per point.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of closed-loop load to measure the maximum throughput.
    #[arg(long, default_value_t = 5.0)]
    pub max_seconds: f64,
    /// Stop each point after this many requests.
    #[arg(long)]
    pub requests: Option<usize>,
    /// Client connections (each carries one request at a time).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Threads for each batch's ops in the served model (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Queue capacity of the served model.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Seconds without an answer before a request counts as hung.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Write a plot of p99 latency against offered load (SVG).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

struct PolicySpec {
    name: String,
    policy: Policy,
    max_wait: Duration,
    /// Only the smallest / only the largest compiled size.
    only: Option<bool>,
}

fn parse_policy(s: &str) -> Result<PolicySpec> {
    let (kind, us) = s.split_once(':').unwrap_or((s, ""));
    let wait = || -> Result<Duration> {
        Ok(Duration::from_micros(if us.is_empty() {
            1000
        } else {
            us.parse()
                .with_context(|| format!("policy '{s}': bad max wait '{us}' (microseconds)"))?
        }))
    };
    let (policy, max_wait, only) = match kind {
        "pad" => (Policy::Pad, wait()?, None),
        "split" => (Policy::Split, wait()?, None),
        "full" => (Policy::Pad, wait()?, Some(false)),
        "single" => (Policy::Pad, Duration::ZERO, Some(true)),
        _ => bail!("unknown policy '{s}' (pad:US, split:US, single, full:US)"),
    };
    Ok(PolicySpec { name: s.to_string(), policy, max_wait, only })
}

fn dtype_of(kserve: &str) -> Option<DType> {
    [DType::F32, DType::F16, DType::I8, DType::U8, DType::I32, DType::I64]
        .into_iter()
        .find(|d| crate::serve::kserve::kserve_dtype(*d) == kserve)
}

/// Per-sample input bytes to send: from `--input`, or one sample of zeros.
fn samples(inputs: &[SigEntry], path: Option<&PathBuf>) -> Result<Vec<Vec<Vec<u8>>>> {
    let Some(p) = path else {
        return Ok(vec![inputs
            .iter()
            .map(|s| vec![0u8; s.dims.iter().product::<usize>() * s.dtype.size()])
            .collect()]);
    };
    let arrays = super::read_npz(p)?;
    let specs: Vec<_> = inputs
        .iter()
        .map(|s| ember_quantize::exec::IoSpec {
            name: s.name.clone(),
            dtype: s.dtype,
            dims: s.dims.clone(),
        })
        .collect();
    let (t, n) = ember_quantize::exec::check_inputs(&specs, &arrays, &p.display().to_string())?;
    if n == 0 {
        bail!("{} has no samples", p.display());
    }
    Ok((0..n.min(256))
        .map(|i| inputs.iter().map(|s| t[&s.name].take_rows(&[i]).to_le_bytes()).collect())
        .collect())
}

fn get_json(addr: SocketAddr, method: &str, path: &str) -> Result<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: ember\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let r = read_response(&mut BufReader::new(s))
        .with_context(|| format!("{method} {path} on {addr}"))?;
    if r.status != 200 {
        bail!(
            "{method} {path} on {addr}: status {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    serde_json::from_slice(&r.body).with_context(|| format!("{method} {path} on {addr}: not JSON"))
}

/// The server's signature of `name`, from its model metadata.
fn remote_signature(addr: SocketAddr, name: &str) -> Result<(Vec<SigEntry>, Vec<SigEntry>)> {
    let m = get_json(addr, "GET", &format!("/v2/models/{name}"))?;
    let list = |k: &str| -> Result<Vec<SigEntry>> {
        let arr = m
            .get(k)
            .and_then(|v| v.as_array())
            .with_context(|| format!("model metadata has no '{k}'"))?;
        arr.iter()
            .map(|t| {
                let name = t["name"].as_str().unwrap_or_default().to_string();
                let dt = t["datatype"].as_str().unwrap_or_default();
                let dtype =
                    dtype_of(dt).with_context(|| format!("{name}: unsupported datatype {dt}"))?;
                let shape: Vec<i64> = t["shape"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
                    .unwrap_or_default();
                let dims = shape
                    .iter()
                    .skip(1)
                    .map(|&d| usize::try_from(d).context("dynamic dimension"))
                    .collect::<Result<_>>()?;
                Ok(SigEntry { name, dtype, dims })
            })
            .collect()
    };
    Ok((list("inputs")?, list("outputs")?))
}

fn print_row(policy: &str, load: Option<f64>, o: &Outcome, fill: Option<f64>) {
    let ms = |q: f64| o.latency.quantile(q).as_secs_f64() * 1e3;
    println!(
        "{policy:>12} {:>6} {:>9.1} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>6} {:>6}",
        load.map(|l| format!("{l:.2}")).unwrap_or_else(|| "-".into()),
        o.offered_rps.unwrap_or(f64::NAN),
        o.throughput(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        o.rejected,
        o.errors + o.timed_out,
        fill.map(|f| format!("{f:.2}")).unwrap_or_else(|| "-".into()),
    );
}

fn header() {
    println!(
        "{:>12} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>6}",
        "policy",
        "load",
        "offered/s",
        "done/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "rejected",
        "lost",
        "fill"
    );
}

fn make_load<'r>(
    a: &Args,
    addr: SocketAddr,
    reqs: &'r [Vec<u8>],
    rate: Option<f64>,
    secs: f64,
) -> Load<'r> {
    Load {
        addr,
        requests: reqs,
        rate,
        duration: Duration::from_secs_f64(secs),
        max_requests: a.requests.unwrap_or(usize::MAX),
        connections: a.connections,
        seed: a.seed,
        timeout: Duration::from_secs_f64(a.timeout),
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.duration <= 0.0 || a.max_seconds <= 0.0 || a.timeout <= 0.0 {
        bail!("--duration, --max-seconds and --timeout must be positive");
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of requests per second");
    }
    if a.loads.iter().any(|l| !(*l > 0.0 && l.is_finite())) {
        bail!("--loads must be positive fractions");
    }
    if let Some(url) = &a.url {
        let hostport = url.trim_start_matches("http://").trim_end_matches('/');
        let addr = hostport
            .to_socket_addrs()
            .with_context(|| format!("bad --url {url}"))?
            .next()
            .with_context(|| format!("--url {url} resolves to no address"))?;
        let name = match &a.name {
            Some(n) => n.clone(),
            None => get_json(addr, "POST", "/v2/repository/index")?
                .get(0)
                .and_then(|m| m["name"].as_str().map(str::to_string))
                .context("the server lists no model; give --name")?,
        };
        let (ins, outs) = remote_signature(addr, &name)?;
        let reqs: Vec<Vec<u8>> = samples(&ins, a.input.as_ref())?
            .iter()
            .map(|x| infer_request(&name, &ins, &outs, x))
            .collect();
        let secs = if a.rate.is_some() { a.duration } else { a.max_seconds };
        let o = loadgen::run(&make_load(&a, addr, &reqs, a.rate, secs));
        if a.json {
            println!("{}", serde_json::json!({"model": name, "url": url, "result": o.to_json()}));
        } else {
            header();
            print_row(&name, None, &o, None);
        }
        if !o.none_lost() {
            bail!(
                "{} requests failed and {} timed out (of {} sent)",
                o.errors,
                o.timed_out,
                o.sent
            );
        }
        return Ok(());
    }
    let Some(path) = &a.model else { bail!("give a model file, or --url of a running server") };
    let policies: Vec<PolicySpec> =
        a.policies.iter().map(|s| parse_policy(s)).collect::<Result<_>>()?;
    if policies.is_empty() {
        bail!("--policies is empty");
    }
    let name = super::serve::default_name(path);
    let mut points = vec![];
    let mut series = vec![];
    let mut max_rps = None;
    let mut full_batch = None;
    if !a.json {
        header();
    }
    // The signature, compiled sizes and requests are the same for every policy.
    let probe = super::load_with(path, super::VerifyArg::Full)?;
    let (ins, outs) = (probe.inputs.clone(), probe.outputs.clone());
    let reqs: Vec<Vec<u8>> = samples(&ins, a.input.as_ref())?
        .iter()
        .map(|x| infer_request(&name, &ins, &outs, x))
        .collect();
    for p in &policies {
        let sizes = probe.batch_sizes();
        let sizes = match p.only {
            Some(true) => vec![sizes[0]],
            Some(false) => vec![sizes[sizes.len() - 1]],
            None => vec![],
        };
        let cfg = BatcherConfig {
            max_wait: p.max_wait,
            queue: a.queue,
            policy: p.policy,
            sizes,
            threads: a.threads.unwrap_or(0),
            device: None,
            model_path: None,
            row_cache: None,
        };
        let server = super::serve::model_server(
            path,
            &name,
            cfg,
            super::VerifyArg::Full,
            &Default::default(),
        )?;
        let running = Running::start(server, "127.0.0.1:0", a.connections + 16)?;
        let b = running.model.batcher();
        if full_batch.is_none() {
            let c = b.startup_costs();
            full_batch = Some((b.sizes()[c.len() - 1], c[c.len() - 1]));
        }
        let reference = match (a.rate, max_rps) {
            (Some(_), _) => None,
            (None, Some(m)) => Some(m),
            (None, None) => {
                // Enough concurrency to fill the largest batch several times over.
                let conns = (4 * b.sizes()[b.sizes().len() - 1]).max(8).min(a.connections);
                let mut l = make_load(&a, running.addr, &reqs, None, a.max_seconds);
                l.connections = conns;
                let o = loadgen::run(&l);
                if o.ok == 0 {
                    bail!(
                        "no request succeeded while measuring the maximum throughput ({} errors)",
                        o.errors
                    );
                }
                if !a.json {
                    print_row(&format!("{} max", p.name), None, &o, Some(b.stats().fill_ratio()));
                }
                max_rps = Some(o.throughput());
                points.push(serde_json::json!({"policy": p.name, "closed_loop": true, "connections": conns, "result": o.to_json()}));
                max_rps
            }
        };
        let rates: Vec<(Option<f64>, f64)> = match (a.rate, reference) {
            (Some(r), _) => vec![(None, r)],
            (None, Some(m)) => a.loads.iter().map(|&l| (Some(l), l * m)).collect(),
            (None, None) => unreachable!(),
        };
        let mut pts = vec![];
        for (frac, rate) in rates {
            let before = b.stats();
            let o = loadgen::run(&make_load(&a, running.addr, &reqs, Some(rate), a.duration));
            let after = b.stats();
            let rows = after.rows_run - before.rows_run;
            let fill =
                (rows > 0).then(|| (after.samples_run - before.samples_run) as f64 / rows as f64);
            let batches: serde_json::Map<String, serde_json::Value> = after
                .per_size
                .iter()
                .zip(&before.per_size)
                .map(|(x, y)| (x.0.to_string(), serde_json::json!(x.1 - y.1)))
                .collect();
            if !a.json {
                print_row(&p.name, frac, &o, fill);
            }
            pts.push((rate, o.latency.quantile(0.99).as_secs_f64() * 1e3));
            points.push(serde_json::json!({
                "policy": p.name, "load": frac, "result": o.to_json(), "fill_ratio": fill,
                "batches": batches, "none_lost": o.none_lost(),
            }));
        }
        series.push(Series { name: p.name.clone(), points: pts });
    }
    let (fb_size, fb) = full_batch.unwrap_or((0, Duration::ZERO));
    let fb_ms = fb.as_secs_f64() * 1e3;
    if let Some(svg) = &a.svg {
        let chart = Chart {
            title: format!("{name}: p99 latency against offered load"),
            x_label: "offered load (requests/s, Poisson arrivals)".into(),
            y_label: "p99 latency (ms)".into(),
            series,
            hlines: vec![(format!("2 x batch {fb_size} ({:.3} ms)", 2.0 * fb_ms), 2.0 * fb_ms)],
            log_y: true,
        };
        ember_quantize::atomic::write(svg, chart.to_svg().as_bytes())?;
    }
    let summary = serde_json::json!({
        "model": path, "max_rps": max_rps, "full_batch": {"size": fb_size, "ms": fb_ms},
        "duration_s": a.duration, "connections": a.connections, "points": points,
    });
    if a.json {
        println!("{summary}");
    } else {
        println!(
            "maximum throughput {:.1}/s (closed loop, {}); one batch of {fb_size}: {fb_ms:.3} ms{}",
            max_rps.unwrap_or(f64::NAN),
            policies[0].name,
            a.svg.as_ref().map(|p| format!("; plot: {}", p.display())).unwrap_or_default()
        );
    }
    let lost: u64 = points
        .iter()
        .map(|p| {
            p["result"]["errors"].as_u64().unwrap_or(0)
                + p["result"]["timed_out"].as_u64().unwrap_or(0)
        })
        .sum();
    if lost > 0 {
        bail!("{lost} requests were lost (failed or timed out) during the run");
    }
    Ok(())
}
