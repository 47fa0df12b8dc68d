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

/// The Linear activation code of a `Gelu` node: 2 (erf form) or 3 (tanh approximation).
pub fn gelu_act(n: &Node) -> i64 {
    match n.attrs.get("approximate") {
        Some(Attr::Str(s)) if s == "tanh" => 3,
        _ => 2,
    }
}

/// Folds `Linear → Add(const [N])` into the bias and `Linear → Relu | Gelu` into the activation.
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
                    "Relu" | "Gelu" => true,
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
                    break 'outer;
                }
                // Only the first reader counts; look at the next Linear.
                break;
            }
        }
        let Some((i, j)) = change else { return };
        let m = g.nodes.remove(j);
        let n = &mut g.nodes[i];
        if m.op == "Relu" {
            n.attrs.insert("act".into(), Attr::Int(1));
        } else if m.op == "Gelu" {
            n.attrs.insert("act".into(), Attr::Int(gelu_act(&m)));
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

/// The value of a one-element f32 constant.
fn scalar(g: &Graph, name: &str) -> Option<f32> {
    g.consts.get(name).filter(|t| t.numel() == 1 && t.as_f32().is_some()).map(|t| t.to_f32_vec()[0])
}

fn near(v: Option<f32>, want: f32) -> bool {
    v.is_some_and(|v| (v - want).abs() <= 1e-4 * want.abs())
}

/// Rewrites the erf form of GELU, `x·0.5·(1 + erf(x/√2))` (as exported by PyTorch and
/// HuggingFace, with the two products in any order and `/√2` or `·(1/√2)`), into one ONNX
/// `Gelu` node, which `fuse_linear` then folds into the preceding Linear's epilogue. Every
/// intermediate value must have no other reader. Returns the number of rewrites.
pub fn fuse_gelu(g: &mut Graph) -> usize {
    let mut count = 0;
    while let Some((remove, x, out, name)) = find_gelu(g) {
        let node = Node {
            name,
            op: "Gelu".into(),
            inputs: vec![x],
            outputs: vec![out],
            attrs: HashMap::from([("approximate".to_string(), Attr::Str("none".into()))]),
        };
        replace_nodes(g, remove, node);
        count += 1;
    }
    count
}

/// Puts `node` in place of the last of the nodes `remove` (the matched pattern) and removes
/// the others.
fn replace_nodes(g: &mut Graph, remove: Vec<usize>, node: Node) {
    let at = *remove.iter().max().unwrap_or(&0);
    g.nodes[at] = node;
    let mut rm: Vec<usize> = remove.into_iter().filter(|i| *i != at).collect();
    rm.sort_unstable();
    for i in rm.into_iter().rev() {
        g.nodes.remove(i);
    }
}

/// One erf-GELU match: (nodes to remove, x, output, a name for the fused node).
fn find_gelu(g: &Graph) -> Option<(Vec<usize>, String, String, String)> {
    let consumers = g.consumers();
    let outputs: HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    let private = |v: &str| consumers.get(v) == Some(&1) && !outputs.contains(v);
    let producer =
        |v: &str| g.nodes.iter().position(|n| n.outputs.first().map(|s| s.as_str()) == Some(v));
    let reader = |v: &str| g.nodes.iter().position(|n| n.inputs.iter().any(|i| i == v));
    // The other operand of a binary node, given one of them.
    let other = |n: &Node, v: &str| -> Option<String> {
        match (n.input(0), n.input(1)) {
            (Some(a), Some(b)) if a == v => Some(b.to_string()),
            (Some(a), Some(b)) if b == v => Some(a.to_string()),
            _ => None,
        }
    };
    for (ie, e) in g.nodes.iter().enumerate() {
        if e.op != "Erf" || !private(&e.inputs[0]) || !private(&e.outputs[0]) {
            continue;
        }
        // u = x / √2  or  x · (1/√2)
        let Some(id) = producer(&e.inputs[0]) else { continue };
        let d = &g.nodes[id];
        let x = match d.op.as_str() {
            "Div" if near(d.input(1).and_then(|c| scalar(g, c)), core::f32::consts::SQRT_2) => {
                d.inputs[0].clone()
            }
            "Mul" => {
                let (a, b) = (d.input(0)?, d.input(1)?);
                if near(scalar(g, b), core::f32::consts::FRAC_1_SQRT_2) {
                    a.to_string()
                } else if near(scalar(g, a), core::f32::consts::FRAC_1_SQRT_2) {
                    b.to_string()
                } else {
                    continue;
                }
            }
            _ => continue,
        };
        if g.consts.contains_key(&x) {
            continue;
        }
        // s = erf + 1
        let Some(ia) = reader(&e.outputs[0]) else { continue };
        let a = &g.nodes[ia];
        if a.op != "Add" || !near(other(a, &e.outputs[0]).and_then(|c| scalar(g, &c)), 1.0) {
            continue;
        }
        let s = a.outputs[0].clone();
        if !private(&s) {
            continue;
        }
        let Some(i1) = reader(&s) else { continue };
        let m1 = &g.nodes[i1];
        if m1.op != "Mul" {
            continue;
        }
        let o1 = other(m1, &s)?;
        let half = |v: &str| near(scalar(g, v), 0.5);
        let base = vec![id, ie, ia, i1];
        if o1 == x || half(&o1) {
            // (x·s)·0.5  or  (s·0.5)·x
            let t = m1.outputs[0].clone();
            if !private(&t) {
                continue;
            }
            let Some(i2) = reader(&t) else { continue };
            let m2 = &g.nodes[i2];
            let o2 = other(m2, &t);
            let ok = m2.op == "Mul"
                && match o2.as_deref() {
                    Some(v) if o1 == x => half(v),
                    Some(v) => v == x,
                    None => false,
                };
            if ok {
                let mut rm = base;
                rm.push(i2);
                return Some((rm, x, m2.outputs[0].clone(), format!("{}.gelu", m2.name)));
            }
        } else if let Some(ih) = producer(&o1) {
            // (x·0.5)·s
            let h = &g.nodes[ih];
            let hx = other(h, &x);
            if h.op == "Mul" && private(&o1) && hx.as_deref().is_some_and(half) {
                let mut rm = base;
                rm.push(ih);
                return Some((rm, x, m1.outputs[0].clone(), format!("{}.gelu", m1.name)));
            }
        }
    }
    None
}

/// Rewrites LayerNorm spelled out in primitive ops (PyTorch exports before opset 17, TF):
/// `d = x − ReduceMean(x)`, `v = ReduceMean(d²)` (`Pow(d, 2)` or `d·d`), `y = d / Sqrt(v + ε)`,
/// then `· γ` and optionally `+ β` (1-D constants), all over the last axis (`axes = [-1]`, as an
/// attribute or a constant input), into one `LayerNormalization` node. Every intermediate value
/// must have no other reader. Returns the number of rewrites.
pub fn fuse_layer_norm(g: &mut Graph) -> usize {
    let mut count = 0;
    while let Some((remove, inputs, out, eps, name)) = find_layer_norm(g) {
        let node = Node {
            name,
            op: "LayerNormalization".into(),
            inputs,
            outputs: vec![out],
            attrs: HashMap::from([
                ("axis".to_string(), Attr::Int(-1)),
                ("epsilon".to_string(), Attr::Float(eps)),
            ]),
        };
        replace_nodes(g, remove, node);
        count += 1;
    }
    count
}

/// One decomposed LayerNorm: (nodes to remove, [x, γ, β?], output, ε, a name).
#[allow(clippy::type_complexity)]
fn find_layer_norm(g: &Graph) -> Option<(Vec<usize>, Vec<String>, String, f32, String)> {
    let consumers = g.consumers();
    let outputs: HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    let readers = |v: &str| {
        if outputs.contains(v) {
            usize::MAX
        } else {
            consumers.get(v).copied().unwrap_or(0)
        }
    };
    let private = |v: &str| readers(v) == 1;
    let producer =
        |v: &str| g.nodes.iter().position(|n| n.outputs.first().map(|s| s.as_str()) == Some(v));
    let reader = |v: &str| g.nodes.iter().position(|n| n.inputs.iter().any(|i| i == v));
    let last_axis_mean = |n: &Node| {
        let axes: Option<Vec<i64>> = match (n.ints("axes"), n.input(1)) {
            (Some(a), _) => Some(a.to_vec()),
            (None, Some(c)) => g.consts.get(c).and_then(|t| t.as_i64().map(|v| v.to_vec())),
            _ => None,
        };
        n.op == "ReduceMean"
            && axes.as_deref() == Some(&[-1])
            && n.int("keepdims").unwrap_or(1) == 1
    };
    let vector = |v: &str| {
        g.consts.get(v).filter(|t| t.shape.len() == 1 && t.shape[0] > 1 && t.as_f32().is_some())
    };
    for (idv, dv) in g.nodes.iter().enumerate() {
        // y = d / s
        if dv.op != "Div" || !private(&dv.outputs[0]) {
            continue;
        }
        let (Some(d), Some(sq)) = (dv.input(0), dv.input(1)) else { continue };
        let (Some(isub), Some(isq)) = (producer(d), producer(sq)) else { continue };
        let (sub, sqrt) = (&g.nodes[isub], &g.nodes[isq]);
        if sub.op != "Sub" || sqrt.op != "Sqrt" || !private(sq) {
            continue;
        }
        // d = x − mean(x)
        let (Some(x), Some(mean)) = (sub.input(0), sub.input(1)) else { continue };
        let Some(imean) = producer(mean) else { continue };
        if !last_axis_mean(&g.nodes[imean]) || g.nodes[imean].inputs[0] != x || !private(mean) {
            continue;
        }
        // s = sqrt(mean(d²) + ε)
        let Some(iadd) = producer(&sqrt.inputs[0]) else { continue };
        let add = &g.nodes[iadd];
        if add.op != "Add" || !private(&add.outputs[0]) {
            continue;
        }
        let (var, eps) = match (add.input(0), add.input(1)) {
            (Some(a), Some(b)) if scalar(g, b).is_some() => (a, scalar(g, b)?),
            (Some(a), Some(b)) if scalar(g, a).is_some() => (b, scalar(g, a)?),
            _ => continue,
        };
        let Some(ivar) = producer(var) else { continue };
        if !last_axis_mean(&g.nodes[ivar]) || !private(var) {
            continue;
        }
        let sqd = &g.nodes[ivar].inputs[0];
        let Some(isqd) = producer(sqd) else { continue };
        let sqn = &g.nodes[isqd];
        let squares = match sqn.op.as_str() {
            "Pow" => sqn.input(0) == Some(d) && near(sqn.input(1).and_then(|e| scalar(g, e)), 2.0),
            "Mul" => sqn.input(0) == Some(d) && sqn.input(1) == Some(d),
            _ => false,
        };
        // d is read by the square (once or twice) and the Div, nothing else.
        let d_reads = if sqn.op == "Mul" { 3 } else { 2 };
        if !squares || !private(sqd) || readers(d) != d_reads || eps.is_nan() || eps <= 0.0 {
            continue;
        }
        // · γ, then optionally + β
        let Some(imul) = reader(&dv.outputs[0]) else { continue };
        let mul = &g.nodes[imul];
        let gamma = match (mul.op.as_str(), mul.input(0), mul.input(1)) {
            ("Mul", Some(a), Some(b)) if a == dv.outputs[0] && vector(b).is_some() => b,
            ("Mul", Some(a), Some(b)) if b == dv.outputs[0] && vector(a).is_some() => a,
            _ => continue,
        };
        let mut remove = vec![imean, isub, isqd, ivar, iadd, isq, idv, imul];
        let mut inputs = vec![x.to_string(), gamma.to_string()];
        let mut out = mul.outputs[0].clone();
        let glen = vector(gamma).map(|t| t.shape[0]);
        if private(&out) {
            if let Some(ib) = reader(&out) {
                let bn = &g.nodes[ib];
                let beta = match (bn.op.as_str(), bn.input(0), bn.input(1)) {
                    ("Add", Some(a), Some(b)) if a == out && vector(b).is_some() => Some(b),
                    ("Add", Some(a), Some(b)) if b == out && vector(a).is_some() => Some(a),
                    _ => None,
                };
                if let Some(b) = beta.filter(|b| vector(b).map(|t| t.shape[0]) == glen) {
                    inputs.push(b.to_string());
                    remove.push(ib);
                    out = bn.outputs[0].clone();
                }
            }
        }
        return Some((remove, inputs, out, eps, format!("{}.layer_norm", sub.name)));
    }
    None
}

/// Folds what surrounds activation × activation MatMuls into the MatMul itself:
/// - a Transpose feeding `b` whose permutation moves the last input axis to the second-to-last
///   place becomes the Transpose with the last two axes swapped back plus `transB = 1` (the
///   kernels then read each column's K values contiguously); an identity Transpose disappears;
/// - a following Div or Mul by a positive scalar constant becomes the MatMul's `alpha`.
///
/// Returns the number of rewrites.
pub fn fuse_matmul_operands(g: &mut Graph) -> usize {
    let mut count = 0;
    loop {
        let consumers = g.consumers();
        let outputs: HashSet<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
        let private = |v: &str| consumers.get(v) == Some(&1) && !outputs.contains(v);
        let mut edit: Option<Edit> = None;
        for (i, n) in g.nodes.iter().enumerate() {
            if n.op != "MatMul" || n.inputs.len() != 2 || g.consts.contains_key(&n.inputs[1]) {
                continue;
            }
            if n.int("transB").unwrap_or(0) == 0 && private(&n.inputs[1]) {
                let t = g.nodes.iter().position(|t| t.outputs.first() == Some(&n.inputs[1]));
                if let Some(ti) = t.filter(|ti| g.nodes[*ti].op == "Transpose") {
                    if let Some(perm) = g.nodes[ti].ints("perm").map(|p| p.to_vec()) {
                        let r = perm.len();
                        if r >= 2 && perm[r - 2] == r as i64 - 1 {
                            let mut np = perm.clone();
                            np.swap(r - 2, r - 1);
                            edit = Some(Edit::TransB { mm: i, t: ti, perm: np });
                            break;
                        }
                    }
                }
            }
            let y = &n.outputs[0];
            if private(y) {
                let r = g.nodes.iter().position(|m| m.inputs.contains(y));
                if let Some(ri) = r {
                    let m = &g.nodes[ri];
                    let c = if m.inputs.len() == 2 && m.inputs[0] == *y {
                        scalar(g, &m.inputs[1])
                    } else if m.op == "Mul" && m.inputs.len() == 2 && m.inputs[1] == *y {
                        scalar(g, &m.inputs[0])
                    } else {
                        None
                    };
                    let f = match (m.op.as_str(), c) {
                        ("Div", Some(c)) if c != 0.0 => Some(1.0 / c),
                        ("Mul", Some(c)) => Some(c),
                        _ => None,
                    };
                    if let Some(f) = f.filter(|f| f.is_finite() && *f > 0.0) {
                        edit = Some(Edit::Alpha { mm: i, reader: ri, factor: f });
                        break;
                    }
                }
            }
        }
        match edit {
            None => return count,
            Some(Edit::TransB { mm, t, perm }) => {
                g.nodes[mm].attrs.insert("transB".into(), Attr::Int(1));
                if perm.iter().enumerate().all(|(i, p)| *p == i as i64) {
                    g.nodes[mm].inputs[1] = g.nodes[t].inputs[0].clone();
                    g.nodes.remove(t);
                } else {
                    g.nodes[t].attrs.insert("perm".into(), Attr::Ints(perm));
                }
            }
            Some(Edit::Alpha { mm, reader, factor }) => {
                let alpha = g.nodes[mm].float("alpha").unwrap_or(1.0) * factor;
                let out = g.nodes[reader].outputs[0].clone();
                let n = &mut g.nodes[mm];
                n.attrs.insert("alpha".into(), Attr::Float(alpha));
                n.outputs[0] = out;
                g.nodes.remove(reader);
            }
        }
        count += 1;
    }
}

enum Edit {
    TransB { mm: usize, t: usize, perm: Vec<i64> },
    Alpha { mm: usize, reader: usize, factor: f32 },
}
