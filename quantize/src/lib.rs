//! Ember's quantizer: ONNX in, `.ember` out.
//!
//! Pipeline: [`import`] (ONNX → IR) → [`passes`] (fold constants, fuse Linear + bias + ReLU) →
//! [`calibrate`] (float reference over the calibration set, observers) → [`lower`] (quantize,
//! one op list per batch size, memory planning) → `.ember` bytes, plus a [`report::Report`].

#[allow(clippy::all, clippy::undocumented_unsafe_blocks)]
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub mod atomic;
pub mod calibrate;
pub mod error;
pub mod exec;
pub mod graph;
pub mod hostops;
pub mod import;
pub mod lower;
pub mod npz;
pub mod passes;
pub mod quant;
pub mod reference;
pub mod report;
pub mod safetensors;
pub mod tensor;

pub use calibrate::Method;
pub use error::{Error, Result};
pub use exec::IoSpec;
pub use tensor::{Data, HostTensor};

use ember_runtime::{AlignedBuf, DType, Model, Session};
use graph::{Dim, ElemType, Graph};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What `quantize` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// 8 (INT8) or 32 (float, no quantization).
    pub bits: u32,
    pub batches: Vec<usize>,
    /// Per-sample dims for inputs whose dims the model leaves symbolic.
    pub shapes: HashMap<String, Vec<usize>>,
    pub method: Method,
    /// Percentile kept by the percentile observer (e.g. 99.99).
    pub percentile: f32,
    /// Shown in the report and stored in the file's metadata.
    pub source_name: String,
    /// Also quantize activation x activation MatMuls (attention scores and context) to INT8.
    pub int8_act_matmul: bool,
    /// Accuracy budget: the largest allowed drop of output cosine to float on (up to 16 samples of)
    /// the calibration set (mean per-sample cosine for outputs of 8+ values per sample, else the
    /// cosine of the whole output); the most sensitive layers fall back to float until it holds.
    pub max_cos_drop: Option<f64>,
    /// INT4 group size (`bits` 4): along K for weights, along each row for embedding tables.
    pub group: usize,
    /// Bits of embedding tables: 8 or 4 (default: 4 when `bits` is 4, else 8).
    pub embedding_bits: Option<u32>,
    /// How INT4 group scales are stored (`bits` 4). None: integer multipliers of a column scale
    /// (LinearI4M, INT8-kernel speed), or f16 group scales (LinearI4) when CUDA PTX is embedded
    /// (`cuda_archs`), since LinearI4M's CUDA kernel has not yet run on a GPU.
    pub int4_scales: Option<quant::I4Scales>,
    /// Tensors stored in the file as they are (role plain) without being used by any plan,
    /// e.g. the raw ids behind the rows of a fine-tuned model's tables.
    pub extra_tensors: Vec<(String, HostTensor)>,
    /// CUDA architectures (SM, e.g. 87) to embed PTX for (`--board` with a GPU, `--cuda-arch`),
    /// compiled with NVRTC when it is present on this host.
    pub cuda_archs: Vec<u32>,
    /// The board packed for (stored in the metadata).
    pub board: Option<String>,
    /// Linear layers (node names, or "all") whose activations are quantized per row at run time
    /// (INT8 weights) instead of with a static calibrated scale.
    pub dynamic_layers: Vec<String>,
    /// Linear layers (node names, or "all") kept with f16 weights and float activations.
    pub f16_layers: Vec<String>,
    /// Byte blobs stored as plain U8 tensors (e.g. the model's `tokenizer.json`).
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bits: 8,
            batches: vec![1],
            shapes: HashMap::new(),
            method: Method::Mse,
            percentile: 99.99,
            source_name: "model.onnx".into(),
            int8_act_matmul: false,
            max_cos_drop: None,
            group: 32,
            embedding_bits: None,
            int4_scales: None,
            extra_tensors: Vec::new(),
            cuda_archs: Vec::new(),
            board: None,
            dynamic_layers: Vec::new(),
            f16_layers: Vec::new(),
            blobs: Vec::new(),
        }
    }
}

/// Imports an ONNX model and runs the shape-independent passes.
pub fn prepare_graph(onnx_bytes: &[u8]) -> Result<Graph> {
    let mut g = import::import_bytes(onnx_bytes)?;
    passes::fold_constants(&mut g)?;
    passes::fuse_gelu(&mut g);
    passes::fuse_layer_norm(&mut g);
    passes::fuse_linear(&mut g)?;
    passes::fuse_matmul_operands(&mut g);
    Ok(g)
}

/// Per-sample dims of every graph input: fixed dims from the model, symbolic ones from `shapes`.
pub fn input_specs(
    g: &Graph,
    shapes: &HashMap<String, Vec<usize>>,
    batches: &[usize],
) -> Result<Vec<IoSpec>> {
    for k in shapes.keys() {
        if !g.inputs.iter().any(|i| &i.name == k) {
            let names: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(Error::Shape(format!(
                "--shape names '{k}', which is not a model input (inputs: {})",
                names.join(", ")
            )));
        }
    }
    g.inputs
        .iter()
        .map(|d| {
            if d.dims.is_empty() {
                return Err(Error::Shape(format!("input '{}' is a scalar: it needs a batch axis", d.name)));
            }
            if let Dim::Fixed(b) = d.dims[0] {
                if let Some(bad) = batches.iter().find(|x| **x != b) {
                    return Err(Error::Shape(format!("input '{}' fixes its batch axis to {b}; cannot compile batch size {bad}", d.name)));
                }
            }
            let dims = match shapes.get(&d.name) {
                Some(s) if s.len() == d.dims.len() - 1 => s.clone(),
                Some(s) => {
                    return Err(Error::Shape(format!("--shape {}={:?} gives {} dims; the input has {} after the batch axis", d.name, s, s.len(), d.dims.len() - 1)))
                }
                None => d.dims[1..]
                    .iter()
                    .map(|x| match x {
                        Dim::Fixed(v) => Ok(*v),
                        Dim::Sym(s) => Err(Error::Shape(format!("input '{}' has a symbolic dimension '{s}': fix it with --shape {}=D1,D2,...", d.name, d.name))),
                    })
                    .collect::<Result<_>>()?,
            };
            let dtype = match d.elem {
                ElemType::F32 => DType::F32,
                ElemType::I64 => DType::I64,
            };
            Ok(IoSpec { name: d.name.clone(), dtype, dims })
        })
        .collect()
}

/// Shapes and dtypes of every value at batch size `batch`, by evaluating the graph on zeros.
pub fn freeze(g: &Graph, specs: &[IoSpec], batch: usize) -> Result<lower::Shapes> {
    let mut inputs = HashMap::new();
    for s in specs {
        let mut shape = vec![batch];
        shape.extend_from_slice(&s.dims);
        inputs.insert(s.name.clone(), HostTensor::zeros(s.dtype, shape));
    }
    let mut names: HashSet<String> =
        g.nodes.iter().flat_map(|n| n.outputs.iter().cloned()).collect();
    names.extend(specs.iter().map(|s| s.name.clone()));
    let mut shapes = lower::Shapes::new();
    let mut f = |name: &str, t: &HostTensor| {
        shapes.insert(name.to_string(), (t.dtype(), t.shape.clone()));
    };
    reference::evaluate(g, &inputs, Some((&names, &mut f)))?;
    for (k, t) in &g.consts {
        shapes.entry(k.clone()).or_insert((t.dtype(), t.shape.clone()));
    }
    Ok(shapes)
}

/// Quantizes `onnx_bytes` with calibration `calib`. Returns the `.ember` bytes and the report.
/// `progress(stage, done, total)` is called during long stages.
pub fn quantize(
    onnx_bytes: &[u8],
    calib: &BTreeMap<String, HostTensor>,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(Vec<u8>, report::Report)> {
    if ![4, 8, 32].contains(&opts.bits) {
        return Err(Error::Shape(format!(
            "--bits {} is not supported (8, 4, or 32 for float)",
            opts.bits
        )));
    }
    if opts.bits == 4 && !(opts.group.is_multiple_of(4) && (4..=256).contains(&opts.group)) {
        return Err(Error::Shape(format!(
            "--group {} is not supported (a multiple of 4 from 4 to 256, e.g. 32 or 128)",
            opts.group
        )));
    }
    if let Some(b) = opts.embedding_bits.filter(|b| *b != 8 && *b != 4) {
        return Err(Error::Shape(format!("--embeddings int{b} is not supported (int8 or int4)")));
    }
    if opts.batches.is_empty() || opts.batches.contains(&0) {
        return Err(Error::Shape("batch sizes must be >= 1".into()));
    }
    let mut batches = opts.batches.clone();
    batches.sort_unstable();
    batches.dedup();
    let g = prepare_graph(onnx_bytes)?;
    let specs = input_specs(&g, &opts.shapes, &batches)?;
    let linears: Vec<&str> =
        g.nodes.iter().filter(|n| n.op == reference::LINEAR_OP).map(|n| n.name.as_str()).collect();
    let mut wide = Widened::default();
    for (flag, names, set) in [
        ("--dynamic", &opts.dynamic_layers, &mut wide.dynamic),
        ("--f16", &opts.f16_layers, &mut wide.f16),
    ] {
        for d in names {
            if d == "all" {
                set.extend(linears.iter().map(|s| s.to_string()));
            } else if linears.contains(&d.as_str()) {
                set.insert(d.clone());
            } else {
                return Err(Error::Shape(format!(
                    "{flag} names '{d}', which is not a Linear layer of the model (layers: {})",
                    linears.join(", ")
                )));
            }
        }
        if opts.bits == 32 && !set.is_empty() {
            return Err(Error::Shape(format!("{flag} needs --bits 8 or 4")));
        }
    }
    let (samples, n) = exec::check_inputs(&specs, calib, "calibration set")?;
    // Observed: the input of every Linear, and both operands of activation x activation MatMuls.
    let mut linear_inputs: HashSet<String> = g
        .nodes
        .iter()
        .filter(|n| n.op == reference::LINEAR_OP)
        .map(|n| n.inputs[0].clone())
        .collect();
    for n in g.nodes.iter().filter(|n| n.op == "MatMul" && opts.int8_act_matmul) {
        linear_inputs.extend(n.inputs.iter().filter(|i| !g.consts.contains_key(*i)).cloned());
    }
    let stats = if opts.bits != 32 {
        let spread = opts.bits == 4;
        calibrate::calibrate(
            &g,
            &samples,
            batches[0],
            &linear_inputs,
            opts.method,
            spread,
            |d, t| progress("calibrate", d, t),
        )?
    } else {
        HashMap::new()
    };
    let mut out_specs: Vec<IoSpec> = vec![];
    let mut per_batch = vec![];
    for (i, b) in batches.iter().enumerate() {
        progress("plan", i, batches.len());
        let shapes = freeze(&g, &specs, *b)?;
        let gb = passes::specialize(&g, &shapes)?;
        if i == 0 {
            for o in &g.outputs {
                let (dt, dims) = shapes
                    .get(&o.name)
                    .cloned()
                    .ok_or_else(|| Error::Shape(format!("output '{}' has no shape", o.name)))?;
                out_specs.push(IoSpec {
                    name: o.name.clone(),
                    dtype: dt,
                    dims: dims.get(1..).unwrap_or(&[]).to_vec(),
                });
            }
        }
        per_batch.push((*b, shapes, gb));
    }
    let choices = std::cell::RefCell::new(HashMap::new());
    let (ptx, cuda_notes) = cuda_ptx(&opts.cuda_archs, progress);
    let ctx = BuildCtx {
        ptx: &ptx,
        specs: &specs,
        out_specs: &out_specs,
        per_batch: &per_batch,
        stats: &stats,
        opts,
        choices: &choices,
        onnx_bytes,
        n,
    };
    // Layers widened for the accuracy budget, one step at a time: INT4 to INT8, static INT8
    // Linear to dynamic INT8 to f16 weights, and INT8 act x act MatMuls, INT8 embeddings and
    // f16 Linears to f32.
    let mut built = build(&ctx, &wide)?;
    let mut cos_drop = None;
    // (node, gain of its last step, precision before the budget, steps taken)
    let mut fell_back: Vec<(String, f64, String, Vec<Step>)> = vec![];
    if let (8 | 4, Some(budget)) = (opts.bits, opts.max_cos_drop) {
        let eval_n = n.min(16);
        let eval: HashMap<String, HostTensor> =
            samples.iter().map(|(k, v)| (k.clone(), v.slice_rows(0, eval_n))).collect();
        let want = exec::reference_batched(&g, &eval, eval_n, batches[0])?;
        let drop_of = |bytes: &[u8]| -> Result<f64> {
            let m = Model::parse(AlignedBuf::from_bytes(bytes))?;
            let got = exec::run_batched(&m, &eval, eval_n)?;
            Ok(want
                .iter()
                .map(|(k, w)| mean_sample_cos_drop(&got[k], w, eval_n))
                .fold(0.0, f64::max))
        };
        let mut d = drop_of(&built.bytes)?;
        // Rounds: measure every layer's next step on top of what is widened so far, then take
        // the steps that gain most until the budget holds.
        while d > budget {
            let cands: Vec<(String, String, Step)> = built
                .layers
                .iter()
                .filter_map(|l| Step::next(l).map(|s| (l.node.clone(), l.precision.clone(), s)))
                .collect();
            if cands.is_empty() {
                break;
            }
            let mut gains = vec![];
            for (i, (c, from, step)) in cands.iter().enumerate() {
                progress("sensitivity", i, cands.len());
                let one = wide.clone().with(c, *step);
                gains.push((
                    d - drop_of(&build(&ctx, &one)?.bytes)?,
                    c.clone(),
                    from.clone(),
                    *step,
                ));
            }
            gains.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (i, (gain, c, from, step)) in gains.into_iter().enumerate() {
                if d <= budget {
                    break;
                }
                // Steps that did not help are skipped (the best one is always taken, so every
                // round widens something and the rounds end).
                if gain <= 0.0 && i > 0 {
                    continue;
                }
                wide = wide.with(&c, step);
                built = build(&ctx, &wide)?;
                d = drop_of(&built.bytes)?;
                match fell_back.iter_mut().find(|f| f.0 == c) {
                    Some(f) => {
                        f.1 = gain;
                        f.3.push(step);
                    }
                    None => fell_back.push((c, gain, from, vec![step])),
                }
            }
        }
        // Greedy steps overshoot: undo the last step of each widened layer, least gain first,
        // wherever the budget still holds without it.
        if d <= budget && fell_back.len() > 1 {
            let mut order: Vec<usize> = (0..fell_back.len()).collect();
            order.sort_by(|a, b| fell_back[*a].1.total_cmp(&fell_back[*b].1));
            for (i, fi) in order.into_iter().enumerate() {
                progress("prune", i, fell_back.len());
                let (node, steps) = (&fell_back[fi].0, &fell_back[fi].3);
                let Some(last) = steps.last() else { continue };
                let try_wide = wide.clone().without(node, *last);
                let try_built = build(&ctx, &try_wide)?;
                let try_d = drop_of(&try_built.bytes)?;
                if try_d <= budget {
                    (wide, built, d) = (try_wide, try_built, try_d);
                    fell_back[fi].3.pop();
                }
            }
            fell_back.retain(|f| !f.3.is_empty());
        }
        for l in built.layers.iter_mut() {
            if let Some((_, gain, from, steps)) = fell_back.iter().find(|f| f.0 == l.node) {
                let to = steps.last().map(|s| s.name()).unwrap_or("");
                l.reason = Some(format!(
                    "widened from {from} to {to} for --max-cos-drop {budget}: the last step gained {gain:.2e} of output cosine on the calibration set"
                ));
            }
        }
        cos_drop = Some(d);
    }
    let Built { bytes, mut layers, ops: op_reports, ids: first_ids } = built;
    let float_weight_bytes: usize =
        g.consts.values().filter(|t| t.as_f32().is_some()).map(|t| t.numel() * 4).sum();

    // Self-check: the file must pass the runtime's validator, and track the float reference.
    let model = Model::parse(AlignedBuf::from_bytes(&bytes))?;
    progress("report", 0, 1);
    let outputs = measure(&g, &model, &samples, n, &mut layers, &first_ids)?;
    let float_ops: Vec<report::OpReport> =
        op_reports.iter().filter(|o| o.precision == "f32").cloned().collect();
    let rep = report::Report {
        source: opts.source_name.clone(),
        bits: opts.bits,
        method: if opts.bits != 32 {
            format!("{:?}", opts.method).to_lowercase()
        } else {
            "none".into()
        },
        batches,
        calib_samples: n,
        file_bytes: bytes.len(),
        float_weight_bytes,
        layers,
        ops: op_reports,
        float_ops,
        outputs,
        max_cos_drop: opts.max_cos_drop,
        cos_drop,
        fell_back: fell_back.into_iter().map(|(c, ..)| c).collect(),
        cuda: cuda_notes,
    };
    Ok((bytes, rep))
}

/// Everything one lowering needs that does not change between lowerings.
struct BuildCtx<'a> {
    specs: &'a [IoSpec],
    out_specs: &'a [IoSpec],
    per_batch: &'a [(usize, lower::Shapes, Graph)],
    stats: &'a HashMap<String, calibrate::Stats>,
    opts: &'a Options,
    choices: &'a std::cell::RefCell<HashMap<String, quant::LinearChoice>>,
    onnx_bytes: &'a [u8],
    n: usize,
    /// PTX to embed, per SM.
    ptx: &'a [(u32, String)],
}

/// One lowered `.ember` file with its report parts.
struct Built {
    bytes: Vec<u8>,
    layers: Vec<report::LayerReport>,
    ops: Vec<report::OpReport>,
    ids: HashMap<String, u32>,
}

/// Layers kept wider than asked (`--dynamic`, the accuracy budget).
#[derive(Clone, Default)]
struct Widened {
    float: HashSet<String>,
    int8: HashSet<String>,
    dynamic: HashSet<String>,
    f16: HashSet<String>,
}

/// One step wider for a layer of the accuracy budget.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// INT4 weights to INT8 (static activations).
    Int8,
    /// Static INT8 activations to dynamic per-row ones (Linear layers).
    Dynamic,
    /// Dynamic INT8 Linear to f16 weights with float activations.
    F16,
    /// To f32.
    Float,
}

impl Step {
    /// The next step of a layer in the report, if it has one.
    fn next(l: &report::LayerReport) -> Option<Step> {
        match l.precision.as_str() {
            "int4" => Some(Step::Int8),
            "int8" if l.kind == "linear" => Some(Step::Dynamic),
            "int8-dynamic" => Some(Step::F16),
            "int8" | "f16" => Some(Step::Float),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Step::Int8 => "int8",
            Step::Dynamic => "int8-dynamic",
            Step::F16 => "f16",
            Step::Float => "f32",
        }
    }
}

impl Widened {
    /// The layers that took `step`.
    fn set(&mut self, step: Step) -> &mut HashSet<String> {
        match step {
            Step::Int8 => &mut self.int8,
            Step::Dynamic => &mut self.dynamic,
            Step::F16 => &mut self.f16,
            Step::Float => &mut self.float,
        }
    }
    fn with(mut self, node: &str, step: Step) -> Self {
        self.set(step).insert(node.to_string());
        self
    }
    /// Undoes [`Widened::with`].
    fn without(mut self, node: &str, step: Step) -> Self {
        self.set(step).remove(node);
        self
    }
}

/// Lowers every batch size into one file, with the `wide` layers kept wider.
fn build(ctx: &BuildCtx, wide: &Widened) -> Result<Built> {
    let opts = ctx.opts;
    let mut lw = lower::Lowerer::new(opts.bits, ctx.stats, opts.method, opts.percentile);
    lw.int8_act_matmul = opts.int8_act_matmul;
    lw.group = opts.group;
    lw.i4_scales = opts.int4_scales.unwrap_or(if opts.cuda_archs.is_empty() {
        quant::I4Scales::Mult
    } else {
        quant::I4Scales::Group
    });
    lw.emb_bits = opts.embedding_bits.unwrap_or(if opts.bits == 4 { 4 } else { 8 });
    lw.float_nodes = wide.float.clone();
    lw.int8_nodes = wide.int8.clone();
    lw.dynamic_nodes = wide.dynamic.clone();
    lw.f16_nodes = wide.f16.clone();
    lw.choices = Some(ctx.choices);
    let sig = |s: &IoSpec| ember_runtime::format::writer::SigSpec {
        name: s.name.clone(),
        dtype: s.dtype,
        dims: s.dims.iter().map(|d| *d as u32).collect(),
    };
    for s in ctx.specs {
        lw.writer.input(sig(s));
    }
    for s in ctx.out_specs {
        lw.writer.output(sig(s));
    }
    let (mut ops, mut ids) = (vec![], HashMap::new());
    for (i, (b, shapes, gb)) in ctx.per_batch.iter().enumerate() {
        let (plan, reps, names, vids) = lw.plan(gb, *b, shapes, i == 0)?;
        if i == 0 {
            ops = reps;
            ids = vids;
        }
        lw.writer.meta(&ember_runtime::op_names_key(*b), &names.join("\n"));
        lw.writer.plan(plan);
    }
    for (name, t) in &opts.extra_tensors {
        let dims: Vec<u32> = t.shape.iter().map(|d| *d as u32).collect();
        let role = ember_runtime::format::TensorRole::Plain;
        lw.writer.tensor(
            name,
            t.dtype(),
            &dims,
            role,
            ember_runtime::format::REF_NONE,
            &t.to_le_bytes(),
        );
    }
    for (name, bytes) in &opts.blobs {
        let (role, none) =
            (ember_runtime::format::TensorRole::Plain, ember_runtime::format::REF_NONE);
        lw.writer.tensor(name, ember_runtime::DType::U8, &[bytes.len() as u32], role, none, bytes);
    }
    for (sm, text) in ctx.opts.cuda_archs.iter().filter_map(|a| ctx.ptx.iter().find(|p| p.0 == *a))
    {
        let name = format!("{}{sm}", ember_runtime::cuda::PTX_TENSOR_PREFIX);
        let (role, none) =
            (ember_runtime::format::TensorRole::Plain, ember_runtime::format::REF_NONE);
        let dims = [text.len() as u32];
        lw.writer.tensor(&name, ember_runtime::DType::U8, &dims, role, none, text.as_bytes());
    }
    if !ctx.ptx.is_empty() {
        let hash = format!("{:016x}", ember_kernels::cuda::source_hash());
        lw.writer.meta(ember_runtime::cuda::PTX_META_KEY, &hash);
    }
    if let Some(b) = &ctx.opts.board {
        lw.writer.meta("board", b);
    }
    lw.writer.meta("source", &opts.source_name);
    lw.writer.meta("source_crc32", &format!("{:08x}", crc32fast::hash(ctx.onnx_bytes)));
    lw.writer.meta("source_bytes", &ctx.onnx_bytes.len().to_string());
    lw.writer.meta("bits", &opts.bits.to_string());
    lw.writer
        .meta("calibration", &format!("{:?} over {} samples", opts.method, ctx.n).to_lowercase());
    lw.writer.meta("producer", concat!("ember-quantize ", env!("CARGO_PKG_VERSION")));
    let layers = std::mem::take(&mut lw.layers);
    let bytes = std::mem::take(&mut lw.writer).finish();
    Ok(Built { bytes, layers, ops, ids })
}

/// 1 − the output's cosine to the reference: the mean per-sample cosine when a sample's output
/// has at least 8 values (embeddings, logits), else the cosine over the whole output (a per-sample
/// cosine of a scalar is always 1).
fn mean_sample_cos_drop(got: &HostTensor, want: &HostTensor, n: usize) -> f64 {
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    let per = g.len() / n.max(1);
    if per < 8 {
        return 1.0 - report::metrics("", &g, &w).cosine;
    }
    let mean: f64 = (0..n)
        .map(|i| report::metrics("", &g[i * per..(i + 1) * per], &w[i * per..(i + 1) * per]).cosine)
        .sum::<f64>()
        / n as f64;
    1.0 - mean
}

/// Runs up to 256 calibration samples through the model and the float reference, filling each
/// layer's cosine and returning per-output metrics.
fn measure<B: AsRef<[u8]>>(
    g: &Graph,
    model: &Model<B>,
    samples: &HashMap<String, HostTensor>,
    n: usize,
    layers: &mut [report::LayerReport],
    ids: &HashMap<String, u32>,
) -> Result<Vec<report::OutputMetrics>> {
    let b = model.batch_sizes()[0];
    let mut sess = Session::new(model, b)?;
    // Per-layer outputs in the layout the graph gives them (no folded head shuffles).
    sess.run_as_written(true);
    let layer_out: HashMap<String, String> = g
        .nodes
        .iter()
        .filter(|nd| layers.iter().any(|l| l.node == nd.name))
        .map(|nd| (nd.outputs[0].clone(), nd.name.clone()))
        .collect();
    let watch: HashSet<String> = layer_out.keys().cloned().collect();
    // Op index (first plan) → the value name it defines, for the layers being measured.
    let plan = &model.plans[model.plan_index(b).unwrap_or(0)];
    let op_out: HashMap<usize, String> = plan
        .records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            watch.iter().find(|w| ids.get(*w) == Some(&r.outputs[0])).map(|w| (i, w.clone()))
        })
        .collect();
    let mut got: HashMap<String, Vec<f32>> = HashMap::new();
    let mut want: HashMap<String, Vec<f32>> = HashMap::new();
    let limit = n.min(256);
    for (start, real, bb) in exec::schedule(limit, &[b]) {
        let chunk = exec::padded_chunk(samples, start, real, bb);
        let mut f = |name: &str, t: &HostTensor| {
            let v = t.to_f32_vec();
            let keep = v.len() * real / bb;
            want.entry(name.to_string()).or_default().extend_from_slice(&v[..keep]);
        };
        let outs = reference::evaluate(g, &chunk, Some((&watch, &mut f)))?;
        for (k, v) in outs {
            let v = v.to_f32_vec();
            let keep = v.len() * real / bb;
            want.entry(format!("out:{k}")).or_default().extend_from_slice(&v[..keep]);
        }
        let bufs: Vec<Vec<u8>> =
            model.inputs.iter().map(|s| chunk[&s.name].to_le_bytes()).collect();
        let refs: Vec<&[u8]> = bufs.iter().map(|v| v.as_slice()).collect();
        sess.run_with(&refs, |i, bytes| {
            let Some(name) = op_out.get(&i) else { return };
            let vals: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let keep = vals.len() * real / bb;
            got.entry(name.clone()).or_default().extend_from_slice(&vals[..keep]);
        })?;
        for (i, s) in model.outputs.iter().enumerate() {
            let t = HostTensor::from_le_bytes(
                s.dtype,
                {
                    let mut sh = vec![bb];
                    sh.extend_from_slice(&s.dims);
                    sh
                },
                sess.output(i),
            )?;
            let v = t.to_f32_vec();
            let keep = v.len() * real / bb;
            got.entry(format!("out:{}", s.name)).or_default().extend_from_slice(&v[..keep]);
        }
    }
    for l in layers.iter_mut() {
        if let Some((out, _)) = layer_out.iter().find(|(_, node)| **node == l.node) {
            if let (Some(gv), Some(wv)) = (got.get(out), want.get(out)) {
                let m = report::metrics(out, gv, wv);
                l.cosine_to_float = Some(m.cosine);
                l.sqnr_db_to_float = Some(if m.rel_l2_err > 0.0 {
                    -20.0 * m.rel_l2_err.log10()
                } else {
                    f64::INFINITY
                });
            }
        }
    }
    Ok(model
        .outputs
        .iter()
        .map(|s| {
            let k = format!("out:{}", s.name);
            report::metrics(
                &s.name,
                got.get(&k).map(|v| v.as_slice()).unwrap_or(&[]),
                want.get(&k).map(|v| v.as_slice()).unwrap_or(&[]),
            )
        })
        .collect())
}

/// PTX for each requested SM, compiled once per quantization (NVRTC), and one note per SM for
/// the report: embedded, or why not (the device then compiles the kernels at first load).
fn cuda_ptx(
    archs: &[u32],
    progress: &mut dyn FnMut(&str, usize, usize),
) -> (Vec<(u32, String)>, Vec<String>) {
    let (mut ptx, mut notes) = (vec![], vec![]);
    for (i, sm) in archs.iter().enumerate() {
        progress("cuda ptx", i, archs.len());
        match ember_runtime::cuda::compile_ptx(*sm) {
            Ok(text) => {
                notes.push(format!("sm_{sm}: {} bytes of PTX embedded", text.len()));
                ptx.push((*sm, text));
            }
            Err(e) => notes.push(format!(
                "sm_{sm}: no PTX embedded ({e}); the device compiles the kernels at first load"
            )),
        }
    }
    (ptx, notes)
}
