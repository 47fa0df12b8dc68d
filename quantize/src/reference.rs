//! Float reference evaluation of a [`Graph`] on the host, with candle-core doing the arithmetic.
//!
//! It serves three purposes: the FP32 reference that `compare` and the accuracy report measure
//! against, constant folding, and calibration (an observer sees every intermediate value).

use crate::error::{Error, Result};
use crate::graph::{Attr, Graph, Node};
use crate::tensor::{Data, HostTensor};
use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// The op name of a fused linear layer: inputs [x, w [N,K], bias [N] (optional)], attr act (0/1).
pub const LINEAR_OP: &str = "EmberLinear";

pub fn to_candle(t: &HostTensor) -> Result<Tensor> {
    let r = match &t.data {
        Data::F32(v) => Tensor::from_vec(v.clone(), t.shape.as_slice(), &Device::Cpu),
        Data::I64(v) => Tensor::from_vec(v.clone(), t.shape.as_slice(), &Device::Cpu),
    };
    r.map_err(|e| Error::Shape(format!("tensor of shape {:?}: {}", t.shape, candle_msg(&e))))
}

pub fn from_candle(t: &Tensor) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all().map_err(ce)?;
    Ok(match t.dtype() {
        DType::I64 => HostTensor::i64(shape, flat.to_vec1::<i64>().map_err(ce)?),
        DType::F32 => HostTensor::f32(shape, flat.to_vec1::<f32>().map_err(ce)?),
        _ => HostTensor::f32(
            shape,
            flat.to_dtype(DType::F32).map_err(ce)?.to_vec1::<f32>().map_err(ce)?,
        ),
    })
}

/// candle's message without the backtrace it appends when RUST_BACKTRACE is set.
fn candle_msg(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or("").trim().to_string()
}

fn ce(e: candle_core::Error) -> Error {
    Error::Shape(candle_msg(&e))
}

/// An observer: the value names to watch, and the callback that sees each of them.
pub type Observer<'a> = (&'a HashSet<String>, &'a mut dyn FnMut(&str, &HostTensor));

/// Runs the graph. `observe`, when given, is called for each value whose name is in its set.
/// Returns the graph outputs by name.
pub fn evaluate(
    graph: &Graph,
    inputs: &HashMap<String, HostTensor>,
    mut observe: Option<Observer<'_>>,
) -> Result<HashMap<String, HostTensor>> {
    let mut env: HashMap<String, Tensor> = HashMap::new();
    for d in &graph.inputs {
        let t = inputs
            .get(&d.name)
            .ok_or_else(|| Error::Input(format!("missing input '{}'", d.name)))?;
        env.insert(d.name.clone(), to_candle(t)?);
        if let Some((set, f)) = observe.as_mut() {
            if set.contains(&d.name) {
                f(&d.name, t);
            }
        }
    }
    let mut remaining = graph.consumers();
    let keep: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    for node in &graph.nodes {
        let outs = eval_node(graph, node, &env)?;
        for (name, t) in node.outputs.iter().zip(outs) {
            if let Some((set, f)) = observe.as_mut() {
                if set.contains(name) {
                    f(name, &from_candle(&t)?);
                }
            }
            env.insert(name.clone(), t);
        }
        for i in node.inputs.iter().filter(|s| !s.is_empty()) {
            if let Some(c) = remaining.get_mut(i) {
                *c -= 1;
                if *c == 0 && !keep.contains(i.as_str()) {
                    env.remove(i);
                }
            }
        }
    }
    let mut out = HashMap::new();
    for o in &graph.outputs {
        let t = match env.get(&o.name) {
            Some(t) => from_candle(t)?,
            None => graph
                .consts
                .get(&o.name)
                .cloned()
                .ok_or_else(|| Error::Shape(format!("output '{}' not computed", o.name)))?,
        };
        out.insert(o.name.clone(), t);
    }
    Ok(out)
}

/// Where input `i` of `node` comes from: a value computed in this evaluation, or a constant.
enum Source<'e, 'g> {
    Computed(&'e Tensor),
    Const(&'g HostTensor),
}

fn source<'e, 'g>(
    graph: &'g Graph,
    env: &'e HashMap<String, Tensor>,
    node: &Node,
    i: usize,
) -> Result<Source<'e, 'g>> {
    let name = node
        .input(i)
        .ok_or_else(|| Error::node(&node.name, &node.op, format!("input #{i} is missing")))?;
    if let Some(t) = env.get(name) {
        return Ok(Source::Computed(t));
    }
    match graph.consts.get(name) {
        Some(c) => Ok(Source::Const(c)),
        None => Err(Error::node(&node.name, &node.op, format!("input '{name}' is not available"))),
    }
}

fn get(graph: &Graph, env: &HashMap<String, Tensor>, node: &Node, i: usize) -> Result<Tensor> {
    match source(graph, env, node, i)? {
        Source::Computed(t) => Ok(t.clone()),
        Source::Const(c) => to_candle(c),
    }
}

/// Input `i` as a host tensor for the ops computed on the host: a constant is borrowed as it is
/// (an embedding table is tens of megabytes; a round trip through candle copied it twice per
/// evaluation), a computed value is copied out of candle.
fn host_input<'a>(
    graph: &'a Graph,
    env: &HashMap<String, Tensor>,
    node: &Node,
    i: usize,
) -> Result<Cow<'a, HostTensor>> {
    Ok(match source(graph, env, node, i)? {
        Source::Computed(t) => Cow::Owned(from_candle(t)?),
        Source::Const(c) => Cow::Borrowed(c),
    })
}

/// Input `i` as integers (shapes, indices, axes), read through [`host_input`].
fn host_i64(
    graph: &Graph,
    env: &HashMap<String, Tensor>,
    node: &Node,
    i: usize,
) -> Result<Vec<i64>> {
    Ok(host_input(graph, env, node, i)?.to_i64_vec())
}

/// Normalizes a possibly negative ONNX axis against `rank`; an error names the node.
pub(crate) fn norm_axis(axis: i64, rank: usize, node: &Node) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize >= rank.max(1) {
        return Err(Error::node(
            &node.name,
            &node.op,
            format!("axis {axis} out of range for rank {rank}"),
        ));
    }
    Ok(a as usize)
}

/// Axes given as an attribute (older opsets) or as a constant input (newer ones).
fn axes_of(
    graph: &Graph,
    env: &HashMap<String, Tensor>,
    node: &Node,
    input: usize,
) -> Result<Option<Vec<i64>>> {
    if let Some(a) = node.ints("axes") {
        return Ok(Some(a.to_vec()));
    }
    if node.input(input).is_some() {
        return Ok(Some(host_i64(graph, env, node, input)?));
    }
    Ok(None)
}

pub fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

fn softmax_last(x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(dim)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(dim)?;
    e.broadcast_div(&s)
}

fn eval_node(graph: &Graph, node: &Node, env: &HashMap<String, Tensor>) -> Result<Vec<Tensor>> {
    let err = |m: String| Error::node(&node.name, &node.op, m);
    let c = |e: candle_core::Error| err(candle_msg(&e));
    let x = |i: usize| get(graph, env, node, i);
    let h = |i: usize| host_input(graph, env, node, i);
    let hi = |i: usize| host_i64(graph, env, node, i);
    let out = match node.op.as_str() {
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (x(0)?, x(1)?);
            if a.dtype() != b.dtype() {
                return Err(err(format!(
                    "operand dtypes differ ({:?} vs {:?})",
                    a.dtype(),
                    b.dtype()
                )));
            }
            match node.op.as_str() {
                "Add" => a.broadcast_add(&b),
                "Sub" => a.broadcast_sub(&b),
                "Mul" => a.broadcast_mul(&b),
                _ => a.broadcast_div(&b),
            }
            .map_err(c)?
        }
        "Relu" => x(0)?.relu().map_err(c)?,
        "Sigmoid" => sigmoid(&x(0)?).map_err(c)?,
        "Tanh" => x(0)?.tanh().map_err(c)?,
        "Identity" => x(0)?,
        "MatMul" => {
            let (a, b) = (x(0)?, x(1)?);
            if a.rank() < 2 || b.rank() < 2 {
                return Err(err("MatMul operands of rank < 2 are not supported".into()));
            }
            let b = if node.int("transB").unwrap_or(0) != 0 {
                b.transpose(b.rank() - 2, b.rank() - 1).map_err(c)?
            } else {
                b
            };
            let y = a
                .contiguous()
                .map_err(c)?
                .broadcast_matmul(&b.contiguous().map_err(c)?)
                .map_err(c)?;
            match node.float("alpha") {
                Some(al) if al != 1.0 => y.affine(al as f64, 0.0).map_err(c)?,
                _ => y,
            }
        }
        "Gemm" => {
            let mut a = x(0)?;
            let mut b = x(1)?;
            if node.int("transA").unwrap_or(0) != 0 {
                a = a.t().map_err(c)?;
            }
            if node.int("transB").unwrap_or(0) != 0 {
                b = b.t().map_err(c)?;
            }
            let alpha = node.float("alpha").unwrap_or(1.0) as f64;
            let beta = node.float("beta").unwrap_or(1.0) as f64;
            let mut y =
                a.contiguous().map_err(c)?.matmul(&b.contiguous().map_err(c)?).map_err(c)?;
            if alpha != 1.0 {
                y = y.affine(alpha, 0.0).map_err(c)?;
            }
            if node.input(2).is_some() {
                let cc = x(2)?.affine(beta, 0.0).map_err(c)?;
                y = y.broadcast_add(&cc).map_err(c)?;
            }
            y
        }
        LINEAR_OP => {
            let xin = x(0)?;
            let w = x(1)?;
            let dims = xin.dims().to_vec();
            let k = *dims.last().ok_or_else(|| err("x is a scalar".into()))?;
            let m = xin.elem_count() / k.max(1);
            let x2 = xin.reshape((m, k)).map_err(c)?;
            let mut y = x2.matmul(&w.t().map_err(c)?).map_err(c)?;
            if node.input(2).is_some() {
                y = y.broadcast_add(&x(2)?).map_err(c)?;
            }
            y = match node.int("act").unwrap_or(0) {
                1 => y.relu().map_err(c)?,
                2 => y.gelu_erf().map_err(c)?,
                3 => y.gelu().map_err(c)?,
                _ => y,
            };
            let mut od = dims.clone();
            *od.last_mut().unwrap_or(&mut 0) = w.dims()[0];
            y.reshape(od).map_err(c)?
        }
        "Softmax" => {
            let t = x(0)?;
            let r = t.rank();
            if graph.opset < 13 {
                let axis = norm_axis(node.int("axis").unwrap_or(1), r, node)?;
                let dims = t.dims().to_vec();
                let outer: usize = dims[..axis].iter().product();
                let inner: usize = dims[axis..].iter().product();
                let y = softmax_last(&t.reshape((outer, inner)).map_err(c)?, 1).map_err(c)?;
                y.reshape(dims).map_err(c)?
            } else {
                let axis = norm_axis(node.int("axis").unwrap_or(-1), r, node)?;
                softmax_last(&t, axis).map_err(c)?
            }
        }
        "Gather" => {
            let (data, idx) = (h(0)?, h(1)?);
            let axis = norm_axis(node.int("axis").unwrap_or(0), data.shape.len(), node)?;
            to_candle(&crate::hostops::gather(&data, &idx, axis).map_err(err)?)?
        }
        "Concat" => {
            let ts: Vec<Tensor> = (0..node.inputs.len()).map(x).collect::<Result<_>>()?;
            let axis = norm_axis(
                node.int("axis").ok_or_else(|| err("missing 'axis'".into()))?,
                ts[0].rank(),
                node,
            )?;
            Tensor::cat(&ts, axis).map_err(c)?
        }
        "Reshape" => {
            let t = x(0)?;
            let spec = hi(1)?;
            let allow_zero = node.int("allowzero").unwrap_or(0) == 1;
            let shape = reshape_dims(t.dims(), &spec, allow_zero).map_err(err)?;
            t.reshape(shape).map_err(c)?
        }
        "Flatten" => {
            let t = x(0)?;
            let r = t.rank();
            let a = node.int("axis").unwrap_or(1);
            let axis = if a < 0 { a + r as i64 } else { a };
            if axis < 0 || axis as usize > r {
                return Err(err(format!("axis {a} out of range")));
            }
            let d = t.dims();
            let outer: usize = d[..axis as usize].iter().product();
            t.reshape((outer, t.elem_count() / outer.max(1))).map_err(c)?
        }
        "Transpose" => {
            let t = x(0)?;
            let r = t.rank();
            let perm: Vec<usize> = match node.ints("perm") {
                Some(p) => p.iter().map(|v| norm_axis(*v, r, node)).collect::<Result<_>>()?,
                None => (0..r).rev().collect(),
            };
            t.permute(perm).map_err(c)?.contiguous().map_err(c)?
        }
        "Unsqueeze" => {
            let t = x(0)?;
            let axes = axes_of(graph, env, node, 1)?.ok_or_else(|| err("missing axes".into()))?;
            let out_rank = t.rank() + axes.len();
            let mut ax: Vec<usize> =
                axes.iter().map(|a| norm_axis(*a, out_rank, node)).collect::<Result<_>>()?;
            ax.sort_unstable();
            let mut dims = t.dims().to_vec();
            for a in ax {
                dims.insert(a, 1);
            }
            t.reshape(dims).map_err(c)?
        }
        "Squeeze" => {
            let t = x(0)?;
            let r = t.rank();
            let dims = t.dims().to_vec();
            let axes: Vec<usize> = match axes_of(graph, env, node, 1)? {
                Some(a) => a.iter().map(|v| norm_axis(*v, r, node)).collect::<Result<_>>()?,
                None => (0..r).filter(|a| dims[*a] == 1).collect(),
            };
            for a in &axes {
                if dims[*a] != 1 {
                    return Err(err(format!("cannot squeeze axis {a} of size {}", dims[*a])));
                }
            }
            let nd: Vec<usize> = dims
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, d)| *d)
                .collect();
            t.reshape(nd).map_err(c)?
        }
        "ReduceSum" | "ReduceMean" => {
            let t = x(0)?;
            let r = t.rank();
            let keep = node.int("keepdims").unwrap_or(1) == 1;
            let axes: Vec<usize> = match axes_of(graph, env, node, 1)? {
                Some(a) if !a.is_empty() => {
                    a.iter().map(|v| norm_axis(*v, r, node)).collect::<Result<_>>()?
                }
                _ if node.int("noop_with_empty_axes").unwrap_or(0) == 1 => return Ok(vec![t]),
                _ => (0..r).collect(),
            };
            let count: usize = axes.iter().map(|a| t.dims()[*a]).product();
            let mut y = t.sum_keepdim(axes.clone()).map_err(c)?;
            if node.op == "ReduceMean" {
                y = y.affine(1.0 / count as f64, 0.0).map_err(c)?;
            }
            if !keep {
                let nd: Vec<usize> = y
                    .dims()
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, d)| *d)
                    .collect();
                y = y.reshape(nd).map_err(c)?;
            }
            y
        }
        "Cast" => {
            let t = x(0)?;
            match node.int("to").unwrap_or(0) {
                1 | 11 => t.to_dtype(DType::F32).map_err(c)?,
                6 | 7 | 9 => t.to_dtype(DType::I64).map_err(c)?,
                other => return Err(err(format!("cast to ONNX type {other} is not supported"))),
            }
        }
        "Constant" => {
            let t = match node.attrs.iter().next() {
                Some((k, Attr::Tensor(t))) if k == "value" => t.clone(),
                Some((k, Attr::Float(f))) if k == "value_float" => {
                    HostTensor::f32(vec![], vec![*f])
                }
                Some((k, Attr::Floats(f))) if k == "value_floats" => {
                    HostTensor::f32(vec![f.len()], f.clone())
                }
                Some((k, Attr::Int(i))) if k == "value_int" => HostTensor::i64(vec![], vec![*i]),
                Some((k, Attr::Ints(i))) if k == "value_ints" => {
                    HostTensor::i64(vec![i.len()], i.clone())
                }
                _ => return Err(err("Constant without a supported value attribute".into())),
            };
            to_candle(&t)?
        }
        "Shape" => {
            to_candle(&crate::hostops::shape_of(x(0)?.dims(), node.int("start"), node.int("end")))?
        }
        "ConstantOfShape" => {
            let shape: Vec<usize> = hi(0)?.iter().map(|v| (*v).max(0) as usize).collect();
            let n: usize = shape.iter().product();
            let t = match node.attrs.get("value") {
                Some(Attr::Tensor(v)) if v.as_i64().is_some() => {
                    HostTensor::i64(shape, vec![v.to_i64_vec()[0]; n])
                }
                Some(Attr::Tensor(v)) => {
                    HostTensor::f32(shape, vec![v.to_f32_vec().first().copied().unwrap_or(0.0); n])
                }
                _ => HostTensor::f32(shape, vec![0.0; n]),
            };
            to_candle(&t)?
        }
        "Slice" => {
            let d = h(0)?;
            let starts = hi(1)?;
            let ends = hi(2)?;
            let axes = if node.input(3).is_some() { Some(hi(3)?) } else { None };
            let steps = if node.input(4).is_some() { Some(hi(4)?) } else { None };
            to_candle(
                &crate::hostops::slice(&d, &starts, &ends, axes.as_deref(), steps.as_deref())
                    .map_err(err)?,
            )?
        }
        "Expand" => {
            let d = h(0)?;
            let shape: Vec<usize> = hi(1)?.iter().map(|v| (*v).max(0) as usize).collect();
            to_candle(&crate::hostops::expand(&d, &shape).map_err(err)?)?
        }
        "Equal" => to_candle(&crate::hostops::equal(&*h(0)?, &*h(1)?).map_err(err)?)?,
        "Where" => to_candle(&crate::hostops::where_(&*h(0)?, &*h(1)?, &*h(2)?).map_err(err)?)?,
        "Range" => to_candle(&crate::hostops::range(&*h(0)?, &*h(1)?, &*h(2)?).map_err(err)?)?,
        "Erf" => x(0)?.erf().map_err(c)?,
        "Gelu" => match crate::passes::gelu_act(node) {
            3 => x(0)?.gelu().map_err(c)?,
            _ => x(0)?.gelu_erf().map_err(c)?,
        },
        "Sqrt" => x(0)?.sqrt().map_err(c)?,
        "Pow" => {
            let e = h(1)?;
            if e.numel() != 1 {
                return Err(err("Pow with a non-scalar exponent is not supported".into()));
            }
            x(0)?.powf(e.to_f32_vec()[0] as f64).map_err(c)?
        }
        "Clip" => {
            let t = x(0)?;
            let lo = match node.input(1) {
                Some(_) => h(1)?.to_f32_vec()[0],
                None => node.float("min").unwrap_or(f32::MIN),
            };
            let hi = match node.input(2) {
                Some(_) => h(2)?.to_f32_vec()[0],
                None => node.float("max").unwrap_or(f32::MAX),
            };
            t.clamp(lo, hi).map_err(c)?
        }
        "LayerNormalization" => {
            let t = x(0)?;
            let r = t.rank();
            let axis = norm_axis(node.int("axis").unwrap_or(-1), r, node)?;
            let eps = node.float("epsilon").unwrap_or(1e-5) as f64;
            let dims: Vec<usize> = (axis..r).collect();
            let n: usize = t.dims()[axis..].iter().product();
            let mean =
                t.sum_keepdim(dims.clone()).map_err(c)?.affine(1.0 / n as f64, 0.0).map_err(c)?;
            let xc = t.broadcast_sub(&mean).map_err(c)?;
            let var = xc
                .sqr()
                .map_err(c)?
                .sum_keepdim(dims)
                .map_err(c)?
                .affine(1.0 / n as f64, 0.0)
                .map_err(c)?;
            let mut y = xc.broadcast_div(&(var + eps).map_err(c)?.sqrt().map_err(c)?).map_err(c)?;
            y = y.broadcast_mul(&x(1)?).map_err(c)?;
            if node.input(2).is_some() {
                y = y.broadcast_add(&x(2)?).map_err(c)?;
            }
            y
        }
        other => {
            return Err(Error::UnsupportedOp {
                op: other.to_string(),
                node: node.name.clone(),
                supported: crate::import::SUPPORTED_OPS.join(", "),
            })
        }
    };
    Ok(vec![out])
}

/// ONNX Reshape's target dims: 0 copies the input dim (unless allowzero), one -1 is inferred.
pub fn reshape_dims(
    input: &[usize],
    spec: &[i64],
    allow_zero: bool,
) -> std::result::Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, s) in spec.iter().enumerate() {
        match *s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => {
                out.push(*input.get(i).ok_or(format!("shape {spec:?}: no input dim {i} to copy"))?)
            }
            v if v >= 0 => out.push(v as usize),
            v => return Err(format!("shape {spec:?}: invalid dimension {v}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {spec:?}"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!("cannot reshape {input:?} ({total} elements) to {spec:?}"));
    }
    Ok(out)
}
