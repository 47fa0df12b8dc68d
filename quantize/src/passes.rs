//! Graph passes that run before calibration: constant folding and Linear fusion.

use crate::error::{Error, Result};
use crate::graph::{Attr, Graph, Node};
use crate::reference::{self, LINEAR_OP};
use crate::tensor::HostTensor;
use std::collections::{HashMap, HashSet};

/// Evaluates every node whose inputs are all constants and replaces it by its outputs.
pub fn fold_constants(g: &mut Graph) -> Result<usize> {
    let mut folded = HashSet::new();
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if !n.inputs.iter().all(|s| s.is_empty() || g.consts.contains_key(s)) {
            continue;
        }
        let single = Graph {
            nodes: vec![n.clone()],
            inputs: vec![],
            outputs: n
                .outputs
                .iter()
                .map(|o| crate::graph::ValueDecl {
                    name: o.clone(),
                    elem: crate::graph::ElemType::F32,
                    dims: vec![],
                })
                .collect(),
            consts: n
                .inputs
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| (s.clone(), g.consts[s].clone()))
                .collect(),
            opset: g.opset,
        };
        let outs = reference::evaluate(&single, &HashMap::new(), None)?;
        for (k, v) in outs {
            g.consts.insert(k, v);
        }
        folded.insert(i);
    }
    let count = folded.len();
    let mut i = 0;
    g.nodes.retain(|_| {
        let keep = !folded.contains(&i);
        i += 1;
        keep
    });
    Ok(count)
}

fn transpose2(t: &HostTensor) -> Option<HostTensor> {
    let v = t.as_f32()?;
    if t.shape.len() != 2 {
        return None;
    }
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut o = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            o[j * r + i] = v[i * c + j];
        }
    }
    Some(HostTensor::f32(vec![c, r], o))
}

/// Rewrites MatMul / Gemm with constant 2-D weights into `EmberLinear` (weights stored [N, K]),
/// then absorbs a following constant bias Add and a following Relu when the Linear's output has
/// no other reader. Returns the number of Linear nodes.
pub fn fuse_linear(g: &mut Graph) -> Result<usize> {
    let mut count = 0;
    let mut extra: Vec<(usize, Node)> = Vec::new();
    for (idx, n) in g.nodes.iter_mut().enumerate() {
        let w_name = match n.input(1) {
            Some(w) => w.to_string(),
            None => continue,
        };
        let x_is_const = n.input(0).is_some_and(|x| g.consts.contains_key(x));
        let w = match g.consts.get(&w_name) {
            Some(w) if w.shape.len() == 2 && w.as_f32().is_some() && !x_is_const => w.clone(),
            _ => continue,
        };
        let (wt, bias) = match n.op.as_str() {
            "MatMul" => (transpose2(&w), None),
            "Gemm" if n.int("transA").unwrap_or(0) == 0 => {
                let alpha = n.float("alpha").unwrap_or(1.0);
                let beta = n.float("beta").unwrap_or(1.0);
                let mut wt = if n.int("transB").unwrap_or(0) != 0 {
                    Some(w.clone())
                } else {
                    transpose2(&w)
                };
                if let Some(HostTensor { data: crate::Data::F32(v), .. }) = wt.as_mut() {
                    v.iter_mut().for_each(|x| *x *= alpha);
                }
                let nout = wt.as_ref().map(|t| t.shape[0]).unwrap_or(0);
                let bias = match n.input(2).map(|c| (c.to_string(), g.consts.get(c))) {
                    None => None,
                    Some((_, Some(c)))
                        if c.numel() == nout && c.shape.iter().rev().skip(1).all(|d| *d == 1) =>
                    {
                        Some(HostTensor::f32(
                            vec![nout],
                            c.to_f32_vec().iter().map(|v| v * beta).collect(),
                        ))
                    }
                    Some((cname, _)) => {
                        // A C that is not a per-column bias stays a separate (float) Add.
                        let scaled = format!("{}.beta_c", n.name);
                        if let Some(c) = g.consts.get(&cname) {
                            let v: Vec<f32> = c.to_f32_vec().iter().map(|v| v * beta).collect();
                            g.consts.insert(scaled.clone(), HostTensor::f32(c.shape.clone(), v));
                        } else if beta != 1.0 {
                            return Err(Error::node(
                                &n.name,
                                &n.op,
                                "non-constant C with beta != 1 is not supported",
                            ));
                        }
                        let src = if g.consts.contains_key(&scaled) { scaled } else { cname };
                        let mid = format!("{}.mm", n.name);
                        extra.push((
                            idx,
                            Node {
                                name: format!("{}.c_add", n.name),
                                op: "Add".into(),
                                inputs: vec![mid.clone(), src],
                                outputs: vec![n.outputs[0].clone()],
                                attrs: HashMap::new(),
                            },
                        ));
                        n.outputs[0] = mid;
                        None
                    }
                };
                (wt, bias)
            }
            _ => continue,
        };
        let Some(wt) = wt else { continue };
        let wn = format!("{}.weight", n.name);
        g.consts.insert(wn.clone(), wt);
        let mut inputs = vec![n.inputs[0].clone(), wn];
        if let Some(b) = bias {
            let bn = format!("{}.bias", n.name);
            g.consts.insert(bn.clone(), b);
            inputs.push(bn);
        }
        n.op = LINEAR_OP.into();
        n.inputs = inputs;
        n.attrs = HashMap::from([("act".to_string(), Attr::Int(0))]);
        count += 1;
    }
    for (k, (idx, node)) in extra.into_iter().enumerate() {
        g.nodes.insert(idx + 1 + k, node);
    }
    absorb_followers(g);
    Ok(count)
}

/// Folds `Linear → Add(const [N])` into the bias and `Linear → Relu` into the activation.
fn absorb_followers(g: &mut Graph) {
    loop {
        let consumers = g.consumers();
        let graph_outputs: HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
        let mut change: Option<(usize, usize)> = None;
        'outer: for (i, n) in g.nodes.iter().enumerate() {
            if n.op != LINEAR_OP || n.int("act") != Some(0) {
                continue;
            }
            let y = &n.outputs[0];
            if consumers.get(y) != Some(&1) || graph_outputs.contains(y.as_str()) {
                continue;
            }
            let nout = g.consts[&n.inputs[1]].shape[0];
            for (j, m) in g.nodes.iter().enumerate().skip(i + 1) {
                if !m.inputs.contains(y) {
                    continue;
                }
                let ok = match m.op.as_str() {
                    "Relu" => true,
                    "Add" if n.inputs.len() == 2 => {
                        let other = if m.inputs[0] == *y { &m.inputs[1] } else { &m.inputs[0] };
                        g.consts.get(other).is_some_and(|c| {
                            c.numel() == nout
                                && c.as_f32().is_some()
                                && c.shape.last() == Some(&nout)
                        })
                    }
                    _ => false,
                };
                if ok {
                    change = Some((i, j));
                }
                break 'outer;
            }
        }
        let Some((i, j)) = change else { return };
        let m = g.nodes.remove(j);
        let n = &mut g.nodes[i];
        if m.op == "Relu" {
            n.attrs.insert("act".into(), Attr::Int(1));
        } else {
            let other = if m.inputs[0] == n.outputs[0] { &m.inputs[1] } else { &m.inputs[0] };
            let c = &g.consts[other];
            let bn = format!("{}.bias", n.name);
            g.consts.insert(bn.clone(), HostTensor::f32(vec![c.numel()], c.to_f32_vec()));
            n.inputs.push(bn);
        }
        n.outputs[0] = m.outputs[0].clone();
    }
}

/// Specializes a graph to frozen shapes: every `Shape` node becomes a constant (from `shapes`),
/// then constants are folded again, so the shape sub-graphs of real exports (Shape, Gather,
/// Unsqueeze, Concat, ConstantOfShape, Expand, Equal, Where, Range, ...) disappear.
pub fn specialize(g: &Graph, shapes: &crate::lower::Shapes) -> Result<Graph> {
    let mut s = g.clone();
    let mut shape_nodes = HashSet::new();
    for (i, n) in s.nodes.iter().enumerate() {
        if n.op != "Shape" {
            continue;
        }
        let src = n.input(0).ok_or_else(|| Error::node(&n.name, &n.op, "missing input"))?;
        let dims = match shapes.get(src) {
            Some((_, d)) => d.clone(),
            None => continue,
        };
        let shape = crate::hostops::shape_of(&dims, n.int("start"), n.int("end"));
        s.consts.insert(n.outputs[0].clone(), shape);
        shape_nodes.insert(i);
    }
    let mut i = 0;
    s.nodes.retain(|_| {
        let keep = !shape_nodes.contains(&i);
        i += 1;
        keep
    });
    fold_constants(&mut s)?;
    // Drop constants nothing reads any more (folded shape arithmetic).
    let used: HashSet<String> = s
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().cloned())
        .chain(s.outputs.iter().map(|o| o.name.clone()))
        .collect();
    s.consts.retain(|k, _| used.contains(k));
    Ok(s)
}
