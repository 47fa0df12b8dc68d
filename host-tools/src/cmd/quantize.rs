//! `quantize MODEL.onnx -o OUT.ember --calib CALIB.npz [...]`

use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use ember_quantize::{atomic, Method, Options};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum ActMatmul {
    Float,
    Int8,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum EmbArg {
    Int8,
    Int4,
}

/// How INT4 group scales are stored (`--int4-scales`).
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum I4ScalesArg {
    /// Integer multipliers (1..=16) of one scale per output column: the layer runs on the INT8
    /// kernels at their speed (LinearI4M; K up to 4096).
    Mult,
    /// One f16 scale per group: slightly finer, one float step per group (LinearI4).
    Group,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    /// Observed min and max.
    Minmax,
    /// Clip to --percentile of the observed values.
    Percentile,
    /// Search clipping ratios for the least simulated output error of each layer.
    Mse,
    /// Clip |x| where the 8-bit histogram keeps most information (least KL divergence).
    Entropy,
}

/// Quantize an ONNX model into a `.ember` file, calibrated on sample inputs.
#[derive(Parser, Debug)]
#[command(name = "quantize", version, about)]
pub struct Args {
    /// The trained ONNX model.
    pub model: PathBuf,
    /// Where to write the `.ember` file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Calibration set: one array per model input, named as the input, first axis = samples.
    #[arg(long)]
    pub calib: PathBuf,
    /// Weight bits: 8 (INT8 weights and activations), 4 (group-wise INT4 weights with INT8
    /// activations, W4A8), or 32 to keep the model in float.
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// INT4 group size (with --bits 4): K values per weight scale, and row values per embedding
    /// scale; a multiple of 4 from 4 to 256 (32 or 128 are usual).
    #[arg(long, default_value_t = 32)]
    pub group: usize,
    /// Precision of embedding tables: int8 (row-wise) or int4 (row-wise in groups; the default
    /// with --bits 4).
    #[arg(long, value_enum)]
    pub embeddings: Option<EmbArg>,
    /// How INT4 group scales are stored (with --bits 4). Default: mult, or group when CUDA PTX
    /// is embedded (--cuda-arch or a GPU board).
    #[arg(long, value_enum)]
    pub int4_scales: Option<I4ScalesArg>,
    /// A batch size to compile a plan for; repeat for several (default 1).
    #[arg(long = "batch")]
    pub batch: Vec<usize>,
    /// Fix an input's dims after the batch axis, e.g. `--shape input_ids=128`.
    #[arg(long = "shape", value_name = "NAME=D1,D2,...")]
    pub shape: Vec<String>,
    /// Activation range observer.
    #[arg(long, value_enum, default_value_t = MethodArg::Mse)]
    pub method: MethodArg,
    /// Percentile kept by `--method percentile`.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f32,
    /// Precision of activation x activation MatMuls (attention): kept in float, or INT8 with
    /// static scales.
    #[arg(long, value_enum, default_value_t = ActMatmul::Float)]
    pub act_matmul: ActMatmul,
    /// Accuracy budget: the largest drop of mean per-sample output cosine to float allowed on the
    /// calibration set; the most sensitive layers are widened one step at a time (INT4 -> INT8
    /// -> INT8 with dynamic per-row activations -> f16 weights -> f32) until it holds.
    #[arg(long, value_name = "DROP")]
    pub max_cos_drop: Option<f64>,
    /// Quantize this Linear layer's activations per row at run time (dynamic INT8) instead of
    /// with a static calibrated scale; repeatable, or `all`.
    #[arg(long = "dynamic", value_name = "LAYER|all")]
    pub dynamic: Vec<String>,
    /// Keep this Linear layer's weights in f16 with float activations (half the bytes of f32;
    /// CPU only); repeatable, or `all`.
    #[arg(long = "f16", value_name = "LAYER|all")]
    pub f16: Vec<String>,
    /// Also write the accuracy report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also draw the per-layer error (1 − cosine to float, by precision) as an SVG here.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Target board (see boards/profiles/boards.toml): its default batch sizes when --batch is
    /// not given, and PTX for its GPU (e.g. jetson-orin-nano -> sm_87) when it has one.
    #[arg(long)]
    pub board: Option<String>,
    /// Also embed PTX for this CUDA architecture (sm_72, sm_87, ...; repeatable).
    #[arg(long = "cuda-arch", value_name = "sm_XX")]
    pub cuda_arch: Vec<String>,
    /// Embed this tokenizer.json in the model (`ember embed` then needs nothing else).
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn parse_shapes(specs: &[String]) -> Result<HashMap<String, Vec<usize>>> {
    let mut out = HashMap::new();
    for s in specs {
        let (name, dims) = s
            .split_once('=')
            .with_context(|| format!("--shape '{s}' must look like NAME=D1,D2,..."))?;
        let dims: Vec<usize> = dims
            .split(',')
            .map(|d| d.trim().parse::<usize>().ok().filter(|v| *v > 0))
            .collect::<Option<_>>()
            .with_context(|| format!("--shape '{s}': dimensions must be positive integers"))?;
        out.insert(name.to_string(), dims);
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    if !(0.0..=100.0).contains(&a.percentile) || a.percentile < 50.0 {
        bail!("--percentile must be between 50 and 100");
    }
    if a.max_cos_drop.is_some_and(|d| !(0.0..=1.0).contains(&d)) {
        bail!("--max-cos-drop must be between 0 and 1");
    }
    let board =
        a.board.as_deref().map(ember_boards::find).transpose().map_err(anyhow::Error::msg)?;
    let mut cuda_archs = Vec::new();
    for s in &a.cuda_arch {
        let sm = s.strip_prefix("sm_").unwrap_or(s).parse::<u32>().ok();
        match sm.filter(|v| ember_kernels::cuda::ARCHS.contains(v)) {
            Some(v) => cuda_archs.push(v),
            None => bail!(
                "--cuda-arch {s}: unsupported (supported: {})",
                ember_kernels::cuda::ARCHS.map(|a| format!("sm_{a}")).join(", ")
            ),
        }
    }
    if let Some(sm) = board.as_ref().and_then(|b| b.cuda_sm) {
        cuda_archs.insert(0, sm);
    }
    cuda_archs.dedup();
    let batches = match (&board, a.batch.is_empty()) {
        (Some(b), true) => b.default_batches.iter().map(|v| *v as usize).collect(),
        (_, true) => vec![1],
        _ => a.batch.clone(),
    };
    let onnx = super::read(&a.model)?;
    let calib = super::read_npz(&a.calib)?;
    let opts = Options {
        bits: a.bits,
        batches,
        cuda_archs,
        board: board.map(|b| b.name),
        shapes: parse_shapes(&a.shape)?,
        method: match a.method {
            MethodArg::Minmax => Method::MinMax,
            MethodArg::Percentile => Method::Percentile,
            MethodArg::Mse => Method::Mse,
            MethodArg::Entropy => Method::Entropy,
        },
        percentile: a.percentile,
        int8_act_matmul: a.act_matmul == ActMatmul::Int8,
        max_cos_drop: a.max_cos_drop,
        group: a.group,
        embedding_bits: a.embeddings.map(|e| if e == EmbArg::Int4 { 4 } else { 8 }),
        int4_scales: a.int4_scales.map(|v| match v {
            I4ScalesArg::Mult => ember_quantize::quant::I4Scales::Mult,
            I4ScalesArg::Group => ember_quantize::quant::I4Scales::Group,
        }),
        extra_tensors: Vec::new(),
        dynamic_layers: a.dynamic.clone(),
        f16_layers: a.f16.clone(),
        blobs: match &a.tokenizer {
            Some(p) => {
                vec![(super::embed::TOKENIZER_TENSOR.to_string(), super::embed::read_tokenizer(p)?)]
            }
            None => vec![],
        },
        source_name: a
            .model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let mut prog = Progress::new(a.quiet || a.json);
    let (bytes, report) =
        ember_quantize::quantize(&onnx, &calib, &opts, &mut |s, d, t| prog.update(s, d, t))
            .with_context(|| format!("quantizing {}", a.model.display()))?;
    prog.finish();
    atomic::write(&a.output, &bytes)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(r) = &a.report {
        atomic::write(r, json.as_bytes())?;
    }
    if let Some(p) = &a.plot {
        atomic::write(p, layer_error_chart(&report).to_svg().as_bytes())?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", report.table());
        println!("wrote {} ({} bytes)", a.output.display(), bytes.len());
    }
    Ok(())
}

/// The per-layer error picture: each layer's `1 − cosine` of its output to float (measured on
/// the calibration samples, earlier layers' errors included), one series per precision, so the
/// layers that fell back and the ones that hurt most stand out.
pub fn layer_error_chart(r: &ember_quantize::report::Report) -> crate::plot::Chart {
    use crate::plot::{Chart, Series};
    let mut series: Vec<Series> = vec![];
    for (i, l) in r.layers.iter().enumerate() {
        let Some(c) = l.cosine_to_float else { continue };
        let y = (1.0 - c).max(1e-7);
        match series.iter_mut().find(|s| s.name == l.precision) {
            Some(s) => s.points.push((i as f64, y)),
            None => series.push(Series { name: l.precision.clone(), points: vec![(i as f64, y)] }),
        }
    }
    let hlines =
        r.max_cos_drop.map(|b| vec![(format!("output budget {b}"), b)]).unwrap_or_default();
    Chart {
        title: format!("{}: per-layer error ({} bits)", r.source, r.bits),
        x_label: "layer, in graph order (see the report's table)".into(),
        y_label: "1 - cosine to float (log)".into(),
        series,
        hlines,
        log_y: true,
    }
}
