//! Lowering: the fused, frozen graph → one execution plan per batch size, with weights quantized
//! and arena slots assigned.
//!
//! Memory planning is greedy first-fit over value lifetimes (a value lives from the op defining it
//! to its last reader; graph inputs from the start, graph outputs to the end), every slot 64-byte
//! aligned. The runtime re-checks that no live slots overlap.

use crate::calibrate::{Method, Stats};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node};
use crate::quant;
use crate::reference::{norm_axis, LINEAR_OP};
use crate::report::{LayerReport, OpReport};
use ember_kernels::pack;
use ember_runtime::format::writer::{PlanSpec, Writer};
use ember_runtime::format::{
    OpRecord, TensorRole, ValueRecord, MAX_RANK, OP_MAX_INPUTS, REF_NONE, REF_TENSOR,
};
use ember_runtime::{BinaryKind, DType, OpCode, ReduceKind, UnaryKind};
use std::collections::HashMap;

/// Dtype and dims of every value of a frozen graph.
pub type Shapes = HashMap<String, (DType, Vec<usize>)>;

/// One lowered plan: the plan itself, a report per op, the node name per op, and the value id
/// of every named graph value.
pub type Lowered = (PlanSpec, Vec<OpReport>, Vec<String>, HashMap<String, u32>);

/// State shared by all plans of one file: tensors are written once and referenced by every plan.
pub struct Lowerer<'a> {
    pub bits: u32,
    pub stats: &'a HashMap<String, Stats>,
    pub method: Method,
    pub percentile: f32,
    /// Quantize activation x activation MatMuls (attention) to INT8 too.
    pub int8_act_matmul: bool,
    /// Nodes kept in float whatever `bits` says (mixed precision).
    pub float_nodes: std::collections::HashSet<String>,
    /// Scheme choices of Linear layers, shared by every lowering of one quantization.
    pub choices: Option<&'a std::cell::RefCell<HashMap<String, quant::LinearChoice>>>,
    pub writer: Writer,
    tensors: HashMap<String, u32>,
    linear_i8: HashMap<String, ([u32; 5], f32, i32)>,
    linear_i4: HashMap<String, I4Refs>,
    emb_i8: HashMap<String, [u32; 3]>,
    emb_i4: HashMap<String, [u32; 3]>,
    /// INT4 group size along K (weights) and along rows (embedding tables).
    pub group: usize,
    /// How INT4 group scales are stored (LinearI4M multipliers, or LinearI4 f16 scales).
    pub i4_scales: quant::I4Scales,
    /// Bits of embedding tables (8 or 4) when `bits` is not 32.
    pub emb_bits: u32,
    /// Nodes kept in INT8 inside an INT4 model (mixed precision).
    pub int8_nodes: std::collections::HashSet<String>,
    /// Linear nodes whose activations are quantized per row at run time (INT8 weights).
    pub dynamic_nodes: std::collections::HashSet<String>,
    /// Linear nodes with f16 weights (float activations).
    pub f16_nodes: std::collections::HashSet<String>,
    f16_weights: HashMap<String, u32>,
    pub layers: Vec<LayerReport>,
}

struct PlanBuild<'s> {
    shapes: &'s Shapes,
    values: Vec<ValueRecord>,
    ids: HashMap<String, u32>,
    ops: Vec<OpRecord>,
    op_names: Vec<String>,
    op_reports: Vec<OpReport>,
    /// Adds folded into the Softmax that reads them: output name -> (x, mask).
    softmax_adds: HashMap<String, (String, String)>,
}

impl PlanBuild<'_> {
    fn new_value(&mut self, dtype: DType, dims: &[usize]) -> u32 {
        let mut d = [0u32; MAX_RANK];
        for (o, x) in d.iter_mut().zip(dims) {
            *o = *x as u32;
        }
        let nbytes = dims.iter().product::<usize>() * dtype.size();
        self.values.push(ValueRecord {
            dtype: dtype as u32,
            rank: dims.len() as u32,
            dims: d,
            offset: 0,
            nbytes: nbytes as u64,
        });
        (self.values.len() - 1) as u32
    }
    fn define(&mut self, name: &str) -> Result<u32> {
        let (dt, dims) = self
            .shapes
            .get(name)
            .ok_or_else(|| Error::Shape(format!("no shape for '{name}'")))?
            .clone();
        if dims.len() > MAX_RANK {
            return Err(Error::Shape(format!("'{name}' has rank {} (max {MAX_RANK})", dims.len())));
        }
        let id = self.new_value(dt, &dims);
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }
    fn dims(&self, name: &str) -> Result<&[usize]> {
        self.shapes
            .get(name)
            .map(|s| s.1.as_slice())
            .ok_or_else(|| Error::Shape(format!("no shape for '{name}'")))
    }
    fn push(
        &mut self,
        node: &str,
        code: OpCode,
        inputs: &[u32],
        out: u32,
        params: &[u32],
        precision: &str,
    ) {
        let mut r = OpRecord {
            opcode: code as u16,
            n_inputs: inputs.len() as u8,
            n_outputs: 1,
            ..Default::default()
        };
        r.inputs[..inputs.len()].copy_from_slice(inputs);
        r.outputs[0] = out;
        r.params[..params.len()].copy_from_slice(params);
        self.ops.push(r);
        self.op_names.push(node.to_string());
        self.op_reports.push(OpReport {
            node: node.to_string(),
            op: code.name().to_string(),
            precision: precision.to_string(),
        });
    }
}

/// What one INT4 linear layer wrote: its op, inputs 1.. (weights to channel multipliers),
/// activation scale and zero point.
#[derive(Clone)]
struct I4Refs {
    code: OpCode,
    refs: Vec<u32>,
    sx: f32,
    zp: i32,
}

/// Params of LinearI8 / LinearI4: [m, k, n, act, x_inv_scale, x_zero_point, layout, group].
#[allow(clippy::too_many_arguments)]
fn linear_params(
    m: usize,
    k: usize,
    n: usize,
    act: u32,
    sx: f32,
    zp: i32,
    layout: u32,
    group: usize,
) -> [u32; 8] {
    [m as u32, k as u32, n as u32, act, (1.0 / sx).to_bits(), zp as u32, layout, group as u32]
}

fn dtype_bytes<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl<'a> Lowerer<'a> {
    pub fn new(
        bits: u32,
        stats: &'a HashMap<String, Stats>,
        method: Method,
        percentile: f32,
    ) -> Self {
        Lowerer {
            int8_act_matmul: false,
            float_nodes: Default::default(),
            choices: None,
            bits,
            stats,
            method,
            percentile,
            writer: Writer::new(),
            tensors: HashMap::new(),
            linear_i8: HashMap::new(),
            linear_i4: HashMap::new(),
            emb_i8: HashMap::new(),
            emb_i4: HashMap::new(),
            group: 32,
            i4_scales: quant::I4Scales::default(),
            emb_bits: if bits == 4 { 4 } else { 8 },
            int8_nodes: Default::default(),
            dynamic_nodes: Default::default(),
            f16_nodes: Default::default(),
            f16_weights: HashMap::new(),
            layers: vec![],
        }
    }

    /// The activation scheme of a Linear layer (range, scale, zero point, smoothing), chosen
    /// once per quantization by simulation and shared by every plan.
    fn linear_choice(
        &self,
        node: &str,
        x_name: &str,
        w: &[f32],
        nn: usize,
        k: usize,
    ) -> Result<quant::LinearChoice> {
        let err = |m: String| Error::node(node, LINEAR_OP, m);
        let st = self
            .stats
            .get(x_name)
            .ok_or_else(|| err(format!("no calibration data for '{x_name}'")))?;
        let cached = self.choices.and_then(|c| c.borrow().get(node).cloned());
        let c = match cached {
            Some(c) => c,
            None => {
                let c = quant::choose_linear(w, nn, k, st, self.method, self.percentile);
                if let Some(cache) = self.choices {
                    cache.borrow_mut().insert(node.to_string(), c.clone());
                }
                c
            }
        };
        if !c.range.min.is_finite() || !c.range.max.is_finite() {
            return Err(err(format!(
                "calibration range of '{x_name}' is not finite ({}, {})",
                c.range.min, c.range.max
            )));
        }
        Ok(c)
    }

    /// Quantizes a Linear layer's weights to group-wise INT4 (W4A8, the activation scheme of
    /// `c`), writes its tensors, and returns the op with its inputs after x: LinearI4M (group
    /// multipliers, the default) or LinearI4 (f16 group scales).
    #[allow(clippy::too_many_arguments)]
    fn write_linear_i4(
        &mut self,
        g: &Graph,
        n: &Node,
        x_name: &str,
        w: &[f32],
        nn: usize,
        k: usize,
        m: usize,
        c: &quant::LinearChoice,
        first: bool,
    ) -> Result<I4Refs> {
        let group = self.group;
        let (sx, zp) = (c.act_scale, c.zp);
        let st = &self.stats[x_name];
        let rows = (st.rows.len() / k).min(256);
        let sm = |j: usize| c.smooth.as_ref().map(|s| s[j]).unwrap_or(1.0);
        // Weights see the smoothed activations x_j / s_j: migrate s_j into them.
        let ws: Vec<f32> =
            w.chunks_exact(k).flat_map(|r| r.iter().enumerate().map(|(j, v)| v * sm(j))).collect();
        // GPTQ on the spread sample of the layer's inputs, smoothed like the weights' view (it
        // falls back to round-to-nearest when calibration saw no rows).
        let srows = st.spread.len() / k;
        let xsm: Vec<f32> = st
            .spread
            .chunks_exact(k)
            .flat_map(|r| r.iter().enumerate().map(|(j, v)| v / sm(j)))
            .collect();
        // LinearI4M needs the whole widened panel in the kernels' buffer.
        let mode = if pack::k4(k) > ember_kernels::i4m::I4M_MAX_K {
            quant::I4Scales::Group
        } else {
            self.i4_scales
        };
        let qi = quant::quantize_i4_gptq_with(&ws, nn, k, group, &xsm, srows, mode);
        let mult: Vec<f32> = (0..k).map(|j| 1.0 / (sx * sm(j))).collect();
        let xs = &st.rows[..rows * k];
        let yq = quant::simulate_linear_i4(xs, rows, k, nn, &mult, sx, zp, &qi, group);
        let sim_db = quant::output_sqnr(xs, rows, k, w, nn, &yq);
        let bias: Vec<f32> = match n.input(2) {
            Some(b) => g.consts[b].to_f32_vec(),
            None => vec![0.0; nn],
        };
        let name = &n.name;
        let panels = nn.div_ceil(pack::PANEL) as u32;
        let side = (pack::PANEL * (k / group)) as u32;
        let wr = &mut self.writer;
        let qp = TensorRole::QuantParam;
        let wq_dims = [panels, (pack::PANEL * pack::k4(k) / 2) as u32];
        let (code, mut refs) = if qi.mul.is_empty() {
            let (packed, gsum, gscale) = quant::pack_i4(&qi, nn, k, group);
            let gs = wr.tensor(
                &format!("{name}.w_gscale"),
                DType::F16,
                &[panels, side],
                qp,
                REF_NONE,
                dtype_bytes(&gscale),
            );
            let wq = wr.tensor(
                &format!("{name}.w_i4"),
                DType::U8,
                &wq_dims,
                TensorRole::WeightI4Grouped,
                gs,
                &packed,
            );
            let gsm = wr.tensor(
                &format!("{name}.w_gsum"),
                DType::I32,
                &[panels, side],
                qp,
                REF_NONE,
                dtype_bytes(&gsum),
            );
            (OpCode::LinearI4, vec![wq, gsm, gs])
        } else {
            let (packed, gmul, wsum, scale) = quant::pack_i4m(&qi, nn, k, group, sx);
            let sc = wr.tensor(
                &format!("{name}.scale"),
                DType::F32,
                &[nn as u32],
                qp,
                REF_NONE,
                dtype_bytes(&scale),
            );
            let wq = wr.tensor(
                &format!("{name}.w_i4"),
                DType::U8,
                &wq_dims,
                TensorRole::WeightI4Grouped,
                sc,
                &packed,
            );
            let gm = wr.tensor(
                &format!("{name}.w_gmul"),
                DType::U8,
                &[panels, side],
                qp,
                REF_NONE,
                &gmul,
            );
            let ws = wr.tensor(
                &format!("{name}.w_sum"),
                DType::I32,
                &[nn as u32],
                qp,
                REF_NONE,
                dtype_bytes(&wsum),
            );
            (OpCode::LinearI4M, vec![wq, gm, ws, sc])
        };
        let bs = wr.tensor(
            &format!("{name}.bias_f32"),
            DType::F32,
            &[nn as u32],
            qp,
            REF_NONE,
            dtype_bytes(&bias),
        );
        let mr = match &c.smooth {
            Some(_) => wr.tensor(
                &format!("{name}.x_mult"),
                DType::F32,
                &[k as u32],
                qp,
                REF_NONE,
                dtype_bytes(&mult),
            ),
            None => REF_NONE,
        };
        if first {
            self.layers.push(LayerReport::linear_i4(name, m, k, nn, c, qi.sqnr_db, sim_db, group));
        }
        refs.extend([bs, mr]);
        Ok(I4Refs { code, refs, sx, zp })
    }

    /// Quantizes a Linear layer's weights to per-channel INT8 and writes its tensors: with the
    /// static activation scheme chosen on the calibration data, or (`dynamic`) for activations
    /// quantized per row at run time (no smoothing, `scale` = the weight scales alone). Returns
    /// (refs for LinearI8 inputs 1..=5, x scale, zero point).
    #[allow(clippy::too_many_arguments)]
    fn write_linear_i8(
        &mut self,
        g: &Graph,
        n: &Node,
        x_name: &str,
        w: &[f32],
        nn: usize,
        k: usize,
        m: usize,
        dynamic: bool,
        first: bool,
    ) -> Result<([u32; 5], f32, i32)> {
        let name = &n.name;
        let (qw, comb, mult, sx, zp, mut rep) = if dynamic {
            let qw = quant::quantize_weights(w, nn, k);
            let comb = qw.scale.clone();
            let rep = LayerReport::linear_i8_dynamic(name, m, k, nn, qw.sqnr_db);
            (qw, comb, None, 1.0, 0, rep)
        } else {
            let c = self.linear_choice(name, x_name, w, nn, k)?;
            let (sx, zp) = (c.act_scale, c.zp);
            let comb: Vec<f32> = c.weights.scale.iter().map(|s| s * sx).collect();
            let mult: Option<Vec<f32>> =
                c.smooth.as_ref().map(|s| s.iter().map(|v| 1.0 / (v * sx)).collect());
            let rep = LayerReport::linear_i8(name, m, k, nn, &c);
            (c.weights, comb, mult, sx, zp, rep)
        };
        let bias: Vec<f32> = match n.input(2) {
            Some(b) => g.consts[b].to_f32_vec(),
            None => vec![0.0; nn],
        };
        let (nu, ku) = (nn as u32, k as u32);
        let wr = &mut self.writer;
        let qp = TensorRole::QuantParam;
        let sc = wr.tensor(
            &format!("{name}.w_scale"),
            DType::F32,
            &[nu],
            qp,
            REF_NONE,
            dtype_bytes(&qw.scale),
        );
        // Packed once here for the kernels; the runtime uses it in place.
        let mut packed = vec![0i8; pack::k4n16_len(nn, k)];
        pack::pack_k4n16(&qw.q, nn, k, &mut packed);
        let (panels, plen) = (nn.div_ceil(pack::PANEL), pack::PANEL * pack::k4(k));
        let wq = wr.tensor(
            &format!("{name}.w_i8"),
            DType::I8,
            &[panels as u32, plen as u32],
            TensorRole::WeightI8PerChannel,
            sc,
            dtype_bytes(&packed),
        );
        let ws = wr.tensor(
            &format!("{name}.w_sum"),
            DType::I32,
            &[nu],
            qp,
            REF_NONE,
            dtype_bytes(&qw.sum),
        );
        let cs = if dynamic {
            sc
        } else {
            wr.tensor(&format!("{name}.scale"), DType::F32, &[nu], qp, REF_NONE, dtype_bytes(&comb))
        };
        let bs = wr.tensor(
            &format!("{name}.bias_f32"),
            DType::F32,
            &[nu],
            qp,
            REF_NONE,
            dtype_bytes(&bias),
        );
        let mr = match &mult {
            Some(mult) => wr.tensor(
                &format!("{name}.x_mult"),
                DType::F32,
                &[ku],
                qp,
                REF_NONE,
                dtype_bytes(mult),
            ),
            None => REF_NONE,
        };
        if first {
            // (the accuracy budget replaces the reason of the layers it widened)
            if dynamic {
                rep.reason = Some("activations quantized per row at run time (--dynamic)".into());
            } else if self.bits == 4 {
                rep.reason = Some(if self.int8_nodes.contains(name) {
                    "kept in INT8 for the accuracy budget".into()
                } else {
                    format!("INT8: K={k} is not a multiple of the INT4 group {}", self.group)
                });
            }
            self.layers.push(rep);
        }
        Ok(([wq, ws, cs, bs, mr], sx, zp))
    }

    fn const_ref(&mut self, g: &Graph, name: &str) -> Result<u32> {
        let t = &g.consts[name];
        // Specialized graphs may fold different values under one name: key by content too.
        let key = format!("{name}:{:08x}:{:?}", crc32fast::hash(&t.to_le_bytes()), t.shape);
        if let Some(r) = self.tensors.get(&key) {
            return Ok(*r);
        }
        if t.shape.len() > MAX_RANK {
            return Err(Error::Shape(format!("constant '{name}' has rank {}", t.shape.len())));
        }
        let dims: Vec<u32> = t.shape.iter().map(|d| *d as u32).collect();
        let r = self.writer.tensor(
            name,
            t.dtype(),
            &dims,
            TensorRole::Plain,
            REF_NONE,
            &t.to_le_bytes(),
        );
        self.tensors.insert(key, r);
        Ok(r)
    }

    fn operand(&mut self, g: &Graph, pb: &PlanBuild, name: &str, n: &Node) -> Result<u32> {
        if let Some(id) = pb.ids.get(name) {
            return Ok(*id);
        }
        if g.consts.contains_key(name) {
            return self.const_ref(g, name);
        }
        Err(Error::node(&n.name, &n.op, format!("input '{name}' is not computed before this node")))
    }

    /// Builds the plan for one batch size. `shapes` comes from [`crate::freeze`].
    pub fn plan(
        &mut self,
        g: &Graph,
        batch: usize,
        shapes: &Shapes,
        first: bool,
    ) -> Result<Lowered> {
        let mut pb = PlanBuild {
            shapes,
            values: vec![],
            ids: HashMap::new(),
            ops: vec![],
            op_names: vec![],
            op_reports: vec![],
            softmax_adds: HashMap::new(),
        };
        let mut inputs = vec![];
        for d in &g.inputs {
            inputs.push(pb.define(&d.name)?);
        }
        for n in &g.nodes {
            self.lower_node(g, &mut pb, n, first)?;
        }
        let mut outputs = vec![];
        for o in &g.outputs {
            let produced_here = pb
                .ids
                .get(&o.name)
                .copied()
                .filter(|id| !inputs.contains(id) && !outputs.contains(id));
            let id = match produced_here {
                Some(id) => id,
                None => {
                    let src = self.operand(
                        g,
                        &pb,
                        &o.name,
                        &Node {
                            name: o.name.clone(),
                            op: "Output".into(),
                            inputs: vec![],
                            outputs: vec![],
                            attrs: HashMap::new(),
                        },
                    )?;
                    let (dt, dims) = pb.shapes[&o.name].clone();
                    let id = pb.new_value(dt, &dims);
                    pb.push(&o.name, OpCode::Copy, &[src], id, &[], "data");
                    id
                }
            };
            let dims = pb.dims(&o.name)?;
            if dims.first() != Some(&batch) {
                return Err(Error::Shape(format!(
                    "output '{}' has shape {dims:?}: its first axis must be the batch ({batch})",
                    o.name
                )));
            }
            outputs.push(id);
        }
        let arena = plan_memory(&mut pb.values, &pb.ops, &inputs, &outputs);
        let ids = pb.ids.clone();
        Ok((
            PlanSpec {
                batch: batch as u32,
                arena_size: arena,
                inputs,
                outputs,
                values: pb.values,
                ops: pb.ops,
            },
            pb.op_reports,
            pb.op_names,
            ids,
        ))
    }

    /// For `Add(x, mask)` read only by a last-axis Softmax, where `x` has the sum's shape and
    /// `mask` broadcasts to it along the leading axes (an attention mask): (x, mask).
    fn softmax_mask(&self, g: &Graph, pb: &PlanBuild, n: &Node) -> Option<(String, String)> {
        if g.opset < 13 || n.inputs.len() != 2 || g.outputs.iter().any(|o| o.name == n.outputs[0]) {
            return None;
        }
        let y = &n.outputs[0];
        let mut readers = g.nodes.iter().filter(|m| m.inputs.contains(y));
        let sm = readers.next()?;
        if readers.next().is_some() || sm.op != "Softmax" {
            return None;
        }
        let od = pb.dims(y).ok()?;
        if sm.int("axis").unwrap_or(-1) != -1 && sm.int("axis") != Some(od.len() as i64 - 1) {
            return None;
        }
        let (a, b) = (&n.inputs[0], &n.inputs[1]);
        for (x, m) in [(a, b), (b, a)] {
            let (xd, md) = (pb.dims(x).ok()?, pb.dims(m).ok()?);
            let fits = xd == od
                && !od.is_empty()
                && md.len() <= od.len()
                && md.last() == od.last()
                && md.iter().rev().zip(od.iter().rev()).all(|(mv, ov)| mv == ov || *mv == 1);
            if fits && !g.consts.contains_key(x) {
                return Some((x.clone(), m.clone()));
            }
        }
        None
    }

    fn lower_node(&mut self, g: &Graph, pb: &mut PlanBuild, n: &Node, first: bool) -> Result<()> {
        let err = |m: String| Error::node(&n.name, &n.op, m);
        let inp = |i: usize| {
            n.input(i).ok_or_else(|| Error::node(&n.name, &n.op, format!("input #{i} missing")))
        };
        let out_name = n.outputs[0].clone();
        match n.op.as_str() {
            LINEAR_OP => {
                let x_name = inp(0)?;
                let x = self.operand(g, pb, x_name, n)?;
                let w = &g.consts[&n.inputs[1]];
                let (nn, k) = (w.shape[0], w.shape[1]);
                let xd = pb.dims(x_name)?;
                let m = xd.iter().product::<usize>() / k.max(1);
                if xd.last() != Some(&k) {
                    return Err(err(format!("input shape {xd:?} does not end in K={k}")));
                }
                let act = n.int("act").unwrap_or(0) as u32;
                let y = pb.define(&out_name)?;
                let int4 = self.bits == 4 && k.is_multiple_of(self.group);
                let f16 = self.f16_nodes.contains(&n.name) && !self.float_nodes.contains(&n.name);
                let narrow = !self.int8_nodes.contains(&n.name)
                    && !self.dynamic_nodes.contains(&n.name)
                    && !f16;
                if int4 && !self.float_nodes.contains(&n.name) && narrow {
                    let r = match self.linear_i4.get(&n.name) {
                        Some(r) => r.clone(),
                        None => {
                            let wf = w.as_f32().unwrap_or(&[]);
                            let c = self.linear_choice(&n.name, x_name, wf, nn, k)?;
                            let r = self.write_linear_i4(g, n, x_name, wf, nn, k, m, &c, first)?;
                            self.linear_i4.insert(n.name.clone(), r.clone());
                            r
                        }
                    };
                    let params =
                        linear_params(m, k, nn, act, r.sx, r.zp, pack::LAYOUT_K4N16_I4, self.group);
                    let ins: Vec<u32> = core::iter::once(x).chain(r.refs.iter().copied()).collect();
                    pb.push(&n.name, r.code, &ins, y, &params, "int4");
                } else if (self.bits == 8 || self.bits == 4) && !self.float_nodes.contains(&n.name) && !f16 {
                    let dynamic = self.dynamic_nodes.contains(&n.name);
                    let (refs, sx, zp) = match self.linear_i8.get(&n.name) {
                        Some(r) => *r,
                        None => {
                            let wf = w.as_f32().unwrap_or(&[]);
                            let r = self.write_linear_i8(g, n, x_name, wf, nn, k, m, dynamic, first)?;
                            self.linear_i8.insert(n.name.clone(), r);
                            r
                        }
                    };
                    let mut params = linear_params(m, k, nn, act, sx, zp, pack::LAYOUT_K4N16, 0);
                    if dynamic {
                        // x_inv_scale 0: per-row scales computed at run time.
                        params[4] = 0;
                    }
                    let ins = [x, refs[0], refs[1], refs[2], refs[3], refs[4]];
                    pb.push(&n.name, OpCode::LinearI8, &ins, y, &params, "int8");
                } else if f16 {
                    let wr = match self.f16_weights.get(&n.name) {
                        Some(r) => *r,
                        None => {
                            let wf = w.to_f32_vec();
                            let bits: Vec<u16> = wf.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect();
                            let (sig, noise) = wf.iter().zip(&bits).fold((0f64, 0f64), |(s, e), (v, b)| {
                                let back = half::f16::from_bits(*b).to_f32() as f64;
                                (s + (*v as f64).powi(2), e + (*v as f64 - back).powi(2))
                            });
                            let r = self.writer.tensor(
                                &format!("{}.w_f16", n.name),
                                DType::F16,
                                &[nn as u32, k as u32],
                                TensorRole::Plain,
                                REF_NONE,
                                dtype_bytes(&bits),
                            );
                            if first {
                                let mut rep = LayerReport::float(&n.name, "linear", m, k, nn);
                                rep.precision = "f16".into();
                                rep.scheme = "weights f16, activations f32, f32 accumulation".into();
                                rep.weight_sqnr_db = Some(quant::sqnr(sig, noise));
                                rep.reason = Some("weights in f16 (--f16)".into());
                                self.layers.push(rep);
                            }
                            self.f16_weights.insert(n.name.clone(), r);
                            r
                        }
                    };
                    let br = match n.input(2) {
                        Some(b) => self.const_ref(g, b)?,
                        None => REF_NONE,
                    };
                    let params = [m as u32, k as u32, nn as u32, act];
                    pb.push(&n.name, OpCode::LinearF16, &[x, wr, br], y, &params, "f16");
                } else {
                    let wr = self.const_ref(g, &n.inputs[1])?;
                    let br = match n.input(2) {
                        Some(b) => self.const_ref(g, b)?,
                        None => REF_NONE,
                    };
                    if first {
                        self.layers.push(LayerReport::float(&n.name, "linear", m, k, nn));
                    }
                    pb.push(
                        &n.name,
                        OpCode::LinearF32,
                        &[x, wr, br],
                        y,
                        &[m as u32, k as u32, nn as u32, act],
                        "f32",
                    );
                }
            }
            "MatMul" => {
                let (an, bn) = (inp(0)?, inp(1)?);
                let (ad, bd) = (pb.dims(an)?.to_vec(), pb.dims(bn)?.to_vec());
                let od = pb.dims(&out_name)?.to_vec();
                let b_t = n.int("transB").unwrap_or(0) != 0;
                let alpha = n.float("alpha").unwrap_or(1.0);
                let nn = if b_t { bd[bd.len() - 2] } else { bd[bd.len() - 1] };
                let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
                let batch: usize = od[..od.len() - 2].iter().product();
                let stride = |d: &[usize], per: usize| -> Result<u32> {
                    let b: usize = d[..d.len() - 2].iter().product();
                    if b == batch {
                        Ok(if batch == 1 { 0 } else { per as u32 })
                    } else if b == 1 {
                        Ok(0)
                    } else {
                        Err(err(format!(
                            "partial batch broadcasting {ad:?} x {bd:?} is not supported"
                        )))
                    }
                };
                let params = [
                    batch as u32,
                    m as u32,
                    k as u32,
                    nn as u32,
                    stride(&ad, m * k)?,
                    stride(&bd, k * nn)?,
                    0,
                    0,
                    0,
                    0,
                    b_t as u32,
                    if alpha == 1.0 { 0 } else { alpha.to_bits() },
                ];
                let (a, b) = (self.operand(g, pb, an, n)?, self.operand(g, pb, bn, n)?);
                let y = pb.define(&out_name)?;
                let stats = if self.int8_act_matmul && !self.float_nodes.contains(&n.name) { (self.stats.get(an), self.stats.get(bn)) } else { (None, None) };
                if let (8 | 4, Some(sa), Some(sb)) = (self.bits, stats.0, stats.1) {
                    let ra = quant::operand_range(sa, self.method, self.percentile, false);
                    let rb = quant::operand_range(sb, self.method, self.percentile, true);
                    if ![ra.min, ra.max, rb.min, rb.max].iter().all(|v| v.is_finite()) {
                        return Err(err("calibration ranges of the operands are not finite".into()));
                    }
                    let (s_a, zp_a) = quant::act_params(ra.min, ra.max);
                    let amax_b = rb.min.abs().max(rb.max.abs());
                    let s_b = if amax_b > 0.0 { amax_b / 127.0 } else { 1.0 };
                    if first {
                        let mut l = LayerReport::matmul_i8(&n.name, batch * m, k, nn, ra, rb, s_a, zp_a, s_b);
                        let qa = quant::operand_sqnr(&sa.rows, s_a, zp_a);
                        let qb = quant::operand_sqnr(&sb.rows, s_b, 0);
                        l.scheme.push_str(&format!("; operand SQNR {qa:.1} dB / {qb:.1} dB"));
                        self.layers.push(l);
                    }
                    let mut p11 = [0u32; 11];
                    p11[..6].copy_from_slice(&params[..6]);
                    p11[6] = (1.0 / s_a).to_bits();
                    p11[7] = zp_a as u32;
                    p11[8] = (1.0 / s_b).to_bits();
                    p11[9] = (s_a * s_b * alpha).to_bits();
                    p11[10] = b_t as u32;
                    pb.push(&n.name, OpCode::MatMulI8, &[a, b], y, &p11, "int8");
                    return Ok(());
                }
                if first {
                    self.layers.push(LayerReport::float(&n.name, "matmul", batch * m, k, nn));
                }
                pb.push(&n.name, OpCode::MatMulF32, &[a, b], y, &params, "f32");
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                if n.op == "Add" {
                    if let Some(xm) = self.softmax_mask(g, pb, n) {
                        // Emitted by the Softmax that reads it.
                        pb.softmax_adds.insert(out_name, xm);
                        return Ok(());
                    }
                }
                let kind = match n.op.as_str() {
                    "Add" => BinaryKind::Add,
                    "Sub" => BinaryKind::Sub,
                    "Mul" => BinaryKind::Mul,
                    _ => BinaryKind::Div,
                };
                let (a, b) = (self.operand(g, pb, inp(0)?, n)?, self.operand(g, pb, inp(1)?, n)?);
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::Binary, &[a, b], y, &[kind as u32], "f32");
            }
            "Relu" | "Sigmoid" | "Tanh" => {
                let kind = match n.op.as_str() {
                    "Relu" => UnaryKind::Relu,
                    "Sigmoid" => UnaryKind::Sigmoid,
                    _ => UnaryKind::Tanh,
                };
                let x = self.operand(g, pb, inp(0)?, n)?;
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::Unary, &[x], y, &[kind as u32], "f32");
            }
            "Softmax" => {
                let xn = inp(0)?;
                let rank = pb.dims(xn)?.len();
                let (axis, coerce) = if g.opset < 13 {
                    (norm_axis(n.int("axis").unwrap_or(1), rank, n)?, 1)
                } else {
                    (norm_axis(n.int("axis").unwrap_or(-1), rank, n)?, 0)
                };
                let y_params = [axis as u32, coerce];
                if let Some((xs, ms)) = pb.softmax_adds.get(xn).cloned() {
                    // softmax(x + mask) in one pass over the scores.
                    let (x, m) = (self.operand(g, pb, &xs, n)?, self.operand(g, pb, &ms, n)?);
                    let y = pb.define(&out_name)?;
                    pb.push(&n.name, OpCode::Softmax, &[x, m], y, &y_params, "f32");
                } else {
                    let x = self.operand(g, pb, xn, n)?;
                    let y = pb.define(&out_name)?;
                    pb.push(&n.name, OpCode::Softmax, &[x], y, &y_params, "f32");
                }
            }
            "Gather" => {
                let (dn, iname) = (inp(0)?, inp(1)?);
                let ix = self.operand(g, pb, iname, n)?;
                let data_const = g.consts
                    .get(dn)
                    .filter(|t| t.shape.len() == 2 && t.as_f32().is_some());
                let axis = n.int("axis").unwrap_or(0);
                let forced_float = self.float_nodes.contains(&n.name);
                let emb_i4 = data_const
                    .filter(|t| self.bits != 32 && self.emb_bits == 4 && t.shape[1].is_multiple_of(self.group) && self.group.is_multiple_of(2))
                    .filter(|_| axis == 0 && !forced_float && !self.int8_nodes.contains(&n.name));
                if let Some(t) = emb_i4 {
                    let (rows, d) = (t.shape[0], t.shape[1]);
                    let group = self.group;
                    let refs = match self.emb_i4.get(dn) {
                        Some(r) => *r,
                        None => {
                            let qr = quant::quantize_rows_i4(t.as_f32().unwrap_or(&[]), rows, d, group);
                            let wr = &mut self.writer;
                            let side = [rows as u32, (d / group) as u32];
                            let qp = TensorRole::QuantParam;
                            let s = wr.tensor(&format!("{dn}.group_scale"), DType::F16, &side, qp, REF_NONE, dtype_bytes(&qr.scale));
                            let b = wr.tensor(&format!("{dn}.group_bias"), DType::F16, &side, qp, REF_NONE, dtype_bytes(&qr.bias));
                            let q = wr.tensor(
                                &format!("{dn}.i4"),
                                DType::U8,
                                &[rows as u32, (d / 2) as u32],
                                TensorRole::EmbeddingI4Grouped,
                                s,
                                &qr.packed,
                            );
                            if first {
                                self.layers.push(LayerReport::embedding_i4(&n.name, dn, rows, d, group, qr.sqnr_db));
                            }
                            let r = [q, s, b];
                            self.emb_i4.insert(dn.to_string(), r);
                            r
                        }
                    };
                    let y = pb.define(&out_name)?;
                    pb.push(&n.name, OpCode::GatherRowsI4, &[refs[0], refs[1], refs[2], ix], y, &[group as u32], "int4");
                } else if let (Some(t), true, 0, false) = (data_const, self.bits == 8 || self.bits == 4, axis, forced_float) {
                    let (rows, d) = (t.shape[0], t.shape[1]);
                    let refs = match self.emb_i8.get(dn) {
                        Some(r) => *r,
                        None => {
                            let qr = quant::quantize_rows(t.as_f32().unwrap_or(&[]), rows, d);
                            let wr = &mut self.writer;
                            let s = wr.tensor(
                                &format!("{dn}.row_scale"),
                                DType::F16,
                                &[rows as u32],
                                TensorRole::QuantParam,
                                REF_NONE,
                                dtype_bytes(&qr.scale),
                            );
                            let b = wr.tensor(
                                &format!("{dn}.row_bias"),
                                DType::F16,
                                &[rows as u32],
                                TensorRole::QuantParam,
                                REF_NONE,
                                dtype_bytes(&qr.bias),
                            );
                            let q = wr.tensor(
                                &format!("{dn}.i8"),
                                DType::I8,
                                &[rows as u32, d as u32],
                                TensorRole::EmbeddingI8Rowwise,
                                s,
                                dtype_bytes(&qr.q),
                            );
                            if first {
                                self.layers.push(LayerReport::embedding_i8(
                                    &n.name, dn, rows, d, qr.sqnr_db,
                                ));
                            }
                            let r = [q, s, b];
                            self.emb_i8.insert(dn.to_string(), r);
                            r
                        }
                    };
                    let y = pb.define(&out_name)?;
                    pb.push(
                        &n.name,
                        OpCode::GatherRowsI8,
                        &[refs[0], refs[1], refs[2], ix],
                        y,
                        &[],
                        "int8",
                    );
                } else {
                    let rank = pb
                        .shapes
                        .get(dn)
                        .map(|s| s.1.len())
                        .or_else(|| g.consts.get(dn).map(|t| t.shape.len()))
                        .unwrap_or(0);
                    let axis = norm_axis(axis, rank, n)?;
                    let d = self.operand(g, pb, dn, n)?;
                    let y = pb.define(&out_name)?;
                    if let (true, true, Some(t)) = (forced_float, first, data_const) {
                        self.layers.push(LayerReport::float(&n.name, &format!("embedding ({dn})"), t.shape[0], t.shape[1], t.shape[1]));
                    }
                    pb.push(&n.name, OpCode::Gather, &[d, ix], y, &[axis as u32], "data");
                }
            }
            "Concat" => {
                let names: Vec<String> =
                    n.inputs.iter().filter(|s| !s.is_empty()).cloned().collect();
                let rank = pb.dims(&out_name)?.len();
                let axis = norm_axis(n.int("axis").unwrap_or(0), rank, n)?;
                let mut refs: Vec<u32> =
                    names.iter().map(|s| self.operand(g, pb, s, n)).collect::<Result<_>>()?;
                let mut dims: Vec<Vec<usize>> = names
                    .iter()
                    .map(|s| {
                        pb.shapes
                            .get(s)
                            .map(|x| x.1.clone())
                            .or_else(|| g.consts.get(s).map(|t| t.shape.clone()))
                            .unwrap_or_default()
                    })
                    .collect();
                let dt = pb.shapes[&out_name].0;
                while refs.len() > OP_MAX_INPUTS {
                    let mut d = dims[0].clone();
                    d[axis] = dims[..OP_MAX_INPUTS].iter().map(|x| x[axis]).sum();
                    let tmp = pb.new_value(dt, &d);
                    let head: Vec<u32> = refs.drain(..OP_MAX_INPUTS).collect();
                    pb.push(&n.name, OpCode::Concat, &head, tmp, &[axis as u32], "data");
                    refs.insert(0, tmp);
                    dims.drain(..OP_MAX_INPUTS);
                    dims.insert(0, d);
                }
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::Concat, &refs, y, &[axis as u32], "data");
            }
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" => {
                let x = self.operand(g, pb, inp(0)?, n)?;
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::Copy, &[x], y, &[], "data");
            }
            "Transpose" => {
                let xn = inp(0)?;
                let rank = pb.dims(xn)?.len();
                let perm: Vec<u32> = match n.ints("perm") {
                    Some(p) => p
                        .iter()
                        .map(|a| norm_axis(*a, rank, n).map(|v| v as u32))
                        .collect::<Result<_>>()?,
                    None => (0..rank as u32).rev().collect(),
                };
                let x = self.operand(g, pb, xn, n)?;
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::Transpose, &[x], y, &perm, "data");
            }
            "ReduceSum" | "ReduceMean" => {
                let xn = inp(0)?;
                let rank = pb.dims(xn)?.len();
                let axes: Option<Vec<i64>> = match n.ints("axes") {
                    Some(a) => Some(a.to_vec()),
                    None => match n.input(1) {
                        Some(an) => Some(
                            g.consts
                                .get(an)
                                .ok_or_else(|| err("axes must be a constant".into()))?
                                .to_i64_vec(),
                        ),
                        None => None,
                    },
                };
                let x = self.operand(g, pb, xn, n)?;
                let y = pb.define(&out_name)?;
                let axes = match axes {
                    Some(a) if !a.is_empty() => a,
                    _ if n.int("noop_with_empty_axes").unwrap_or(0) == 1 => {
                        pb.push(&n.name, OpCode::Copy, &[x], y, &[], "data");
                        return Ok(());
                    }
                    _ => (0..rank as i64).collect(),
                };
                let mut mask = 0u32;
                for a in axes {
                    mask |= 1 << norm_axis(a, rank, n)?;
                }
                let kind = if n.op == "ReduceSum" { ReduceKind::Sum } else { ReduceKind::Mean };
                let keep = n.int("keepdims").unwrap_or(1) as u32;
                pb.push(&n.name, OpCode::Reduce, &[x], y, &[kind as u32, mask, keep], "f32");
            }
            "Cast" => {
                let xn = inp(0)?;
                let x = self.operand(g, pb, xn, n)?;
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::Cast, &[x], y, &[], "data");
            }
            "Erf" | "Sqrt" | "Clip" | "Pow" | "Gelu" => {
                let scalar = |i: usize, attr: &str, default: f32| -> Result<f32> {
                    match n.input(i) {
                        Some(c) => g
                            .consts
                            .get(c)
                            .filter(|t| t.numel() == 1)
                            .map(|t| t.to_f32_vec()[0])
                            .ok_or_else(|| err(format!("input '{c}' must be a constant scalar"))),
                        None => Ok(n.float(attr).unwrap_or(default)),
                    }
                };
                let (kind, a, b) = match n.op.as_str() {
                    "Erf" => (UnaryKind::Erf, 0.0, 0.0),
                    "Gelu" if crate::passes::gelu_act(n) == 3 => (UnaryKind::GeluTanh, 0.0, 0.0),
                    "Gelu" => (UnaryKind::Gelu, 0.0, 0.0),
                    "Sqrt" => (UnaryKind::Sqrt, 0.0, 0.0),
                    "Clip" => (UnaryKind::Clip, scalar(1, "min", f32::MIN)?, scalar(2, "max", f32::MAX)?),
                    _ => (UnaryKind::Pow, scalar(1, "", 1.0)?, 0.0),
                };
                let x = self.operand(g, pb, inp(0)?, n)?;
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::Unary, &[x], y, &[kind as u32, a.to_bits(), b.to_bits()], "f32");
            }
            "LayerNormalization" => {
                let xn = inp(0)?;
                let rank = pb.dims(xn)?.len();
                let axis = norm_axis(n.int("axis").unwrap_or(-1), rank, n)?;
                let eps = n.float("epsilon").unwrap_or(1e-5);
                let x = self.operand(g, pb, xn, n)?;
                let sc = self.operand(g, pb, inp(1)?, n)?;
                let b = match n.input(2) {
                    Some(b) => self.operand(g, pb, b, n)?,
                    None => REF_NONE,
                };
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::LayerNorm, &[x, sc, b], y, &[axis as u32, eps.to_bits()], "f32");
            }
            "Expand" => {
                let x = self.operand(g, pb, inp(0)?, n)?;
                let y = pb.define(&out_name)?;
                pb.push(&n.name, OpCode::Expand, &[x], y, &[], "data");
            }
            "Shape" | "Slice" | "ConstantOfShape" | "Equal" | "Where" | "Range" => {
                return Err(err(format!(
                    "{} depends on run-time values here; Ember folds it only when its inputs are constant once shapes are frozen",
                    n.op
                )))
            }
            "Gemm" => {
                return Err(err(
                    "Gemm with non-constant weights (B) or transA=1 is not supported".into()
                ))
            }
            other => {
                return Err(Error::UnsupportedOp {
                    op: other.into(),
                    node: n.name.clone(),
                    supported: crate::import::SUPPORTED_OPS.join(", "),
                })
            }
        }
        Ok(())
    }
}

/// Assigns 64-aligned arena offsets, first fit over lifetimes. Returns the arena size.
pub fn plan_memory(
    values: &mut [ValueRecord],
    ops: &[OpRecord],
    inputs: &[u32],
    outputs: &[u32],
) -> u64 {
    let nv = values.len();
    let end = ops.len() as i64;
    let mut def = vec![i64::MAX; nv];
    let mut last = vec![-1i64; nv];
    for v in inputs {
        def[*v as usize] = -1;
    }
    for (i, op) in ops.iter().enumerate() {
        for x in &op.inputs[..op.n_inputs as usize] {
            if *x != REF_NONE && *x & REF_TENSOR == 0 {
                last[*x as usize] = last[*x as usize].max(i as i64);
            }
        }
        def[op.outputs[0] as usize] = i as i64;
    }
    for v in outputs {
        last[*v as usize] = end;
    }
    // Inputs first, then each op's output in op order (first fit, shared with the loader's
    // placement of its CPU schedule).
    let order: Vec<usize> = inputs
        .iter()
        .map(|v| *v as usize)
        .chain(ops.iter().map(|op| op.outputs[0] as usize))
        .collect();
    let nbytes: Vec<usize> = values.iter().map(|v| v.nbytes as usize).collect();
    let (offsets, arena) = ember_runtime::first_fit(&nbytes, &def, &last, &order);
    for (v, o) in values.iter_mut().zip(offsets) {
        v.offset = o as u64;
    }
    arena as u64
}
