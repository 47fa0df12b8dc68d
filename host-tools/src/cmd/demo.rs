//! `ember demo`: the main job on an embedded default, offline. A DLRM-style rating model trained
//! on MovieLens ml-latest-small (by scripts/make_demo.py) is quantized to INT8 with its bundled
//! calibration set, run in fixed batches on 10,083 held-out ratings, and compared with float.

use anyhow::Result;
use clap::Parser;
use ember_quantize::{exec, report, Method, Options};
use ember_runtime::{AlignedBuf, Model, Session};
use std::collections::BTreeMap;
use std::time::Instant;

const MODEL: &[u8] = include_bytes!("../../demo/model.onnx");
const CALIB: &[u8] = include_bytes!("../../demo/calib.npz");
const EVAL: &[u8] = include_bytes!("../../demo/eval.npz");

/// Quantize and run the bundled MovieLens recommender; print accuracy and latency.
#[derive(Parser, Debug)]
pub struct Args {
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Latency iterations per batch size.
    #[arg(long, default_value_t = 2000)]
    pub iters: usize,
}

fn rmse(pred: &[f32], truth: &[f32]) -> f64 {
    (pred.iter().zip(truth).map(|(p, t)| ((p - t) as f64).powi(2)).sum::<f64>()
        / truth.len().max(1) as f64)
        .sqrt()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(a: Args) -> Result<()> {
    let calib = ember_quantize::npz::read_npz_bytes(CALIB, "bundled calib.npz")?;
    let mut eval = ember_quantize::npz::read_npz_bytes(EVAL, "bundled eval.npz")?;
    let truth = eval.remove("rating").map(|t| t.to_f32_vec()).unwrap_or_default();
    let batches = vec![1, 8, 64];
    let t0 = Instant::now();
    let opts = Options {
        bits: 8,
        batches: batches.clone(),
        method: Method::Mse,
        source_name: "movielens_dlrm.onnx (bundled)".into(),
        ..Default::default()
    };
    let (bytes, rep) = ember_quantize::quantize(MODEL, &calib, &opts, &mut |_, _, _| {})?;
    let quant_s = t0.elapsed().as_secs_f64();
    let model = Model::parse(AlignedBuf::from_bytes(&bytes))?;
    let (inputs, n) =
        exec::check_inputs(&exec::model_inputs(&model), &eval, "demo evaluation set")?;
    let t1 = Instant::now();
    let got = exec::run_batched(&model, &inputs, n)?;
    let run_s = t1.elapsed().as_secs_f64();
    let graph = ember_quantize::prepare_graph(MODEL)?;
    let want = exec::reference_batched(&graph, &inputs, n, 64)?;
    let (g, w) = (got["rating"].to_f32_vec(), want["rating"].to_f32_vec());
    let m = report::metrics("rating", &g, &w);

    // Latency per compiled batch size, one sample batch repeated.
    let mut lat = BTreeMap::new();
    for b in [1usize, 8] {
        let mut s = Session::new(&model, b)?;
        let rows: Vec<usize> = (0..b).collect();
        let bufs: Vec<Vec<u8>> = model
            .inputs
            .iter()
            .map(|sig| inputs[&sig.name].take_rows(&rows).to_le_bytes())
            .collect();
        let refs: Vec<&[u8]> = bufs.iter().map(|v| v.as_slice()).collect();
        for _ in 0..50 {
            s.run(&refs)?;
        }
        let mut t: Vec<f64> = (0..a.iters)
            .map(|_| {
                let st = Instant::now();
                let r = s.run(&refs);
                let e = st.elapsed().as_secs_f64() * 1e6;
                r.map(|_| e)
            })
            .collect::<std::result::Result<_, _>>()?;
        t.sort_by(f64::total_cmp);
        lat.insert(b, (percentile(&t, 0.5), percentile(&t, 0.99)));
    }
    let int8_layers = rep.layers.iter().filter(|l| l.precision == "int8").count();
    let float_ops: Vec<String> =
        rep.float_ops.iter().map(|o| format!("{} ({})", o.node, o.op)).collect();
    let out = serde_json::json!({
        "model": "DLRM-style MovieLens rating model (2 embedding tables, 4 dense layers)",
        "eval_samples": n,
        "int8_layers": int8_layers,
        "float_ops": float_ops,
        "file_bytes": bytes.len(),
        "float_weight_bytes": rep.float_weight_bytes,
        "cosine_to_float": m.cosine,
        "pearson_to_float": m.pearson,
        "max_abs_err_stars": m.max_abs_err,
        "rmse_float": rmse(&w, &truth),
        "rmse_int8": rmse(&g, &truth),
        "quantize_seconds": quant_s,
        "run_all_seconds": run_s,
        "latency_us": lat.iter().map(|(b, (p50, p99))| (format!("batch{b}"), serde_json::json!({"p50": p50, "p99": p99}))).collect::<serde_json::Map<_, _>>(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("Ember demo: DLRM-style rating model trained on MovieLens ml-latest-small");
    println!(
        "  quantized to INT8 in {:.2} s: {} int8 layers, {} bytes (float weights {} bytes)",
        quant_s,
        int8_layers,
        bytes.len(),
        rep.float_weight_bytes
    );
    println!("  ops left in float (reported, not silent): {}", float_ops.join(", "));
    println!("  {n} held-out ratings run in batches {:?} in {:.1} ms", batches, run_s * 1e3);
    println!(
        "  INT8 vs float: cosine {:.6}, pearson {:.6}, max abs err {:.4} stars",
        m.cosine, m.pearson, m.max_abs_err
    );
    println!(
        "  RMSE against the true ratings: float {:.4}, INT8 {:.4}",
        rmse(&w, &truth),
        rmse(&g, &truth)
    );
    for (b, (p50, p99)) in &lat {
        println!(
            "  latency batch {b}: p50 {p50:.1} us, p99 {p99:.1} us ({:.0} samples/s at p50)",
            *b as f64 / (p50 * 1e-6)
        );
    }
    Ok(())
}
