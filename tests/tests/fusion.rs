//! Fusion passes on small hand-built graphs: each GELU spelling becomes one Linear epilogue (or
//! a Gelu op), near-misses stay unfused, and the fused model computes the same function, in the
//! reference evaluator and in the runtime.

use ember_quantize::{exec, graph::Graph, HostTensor, Options};
use ember_runtime::{AlignedBuf, Model};
use ember_tests::onnx_build::*;
use std::collections::HashMap;

const K: usize = 8;
const N: usize = 6;

fn weights() -> (Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = (0..K * N).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.09).collect();
    let b: Vec<f32> = (0..N).map(|i| i as f32 * 0.2 - 0.5).collect();
    (w, b)
}

fn gelu_ref(v: f64, tanh: bool) -> f64 {
    if tanh {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
    } else {
        0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
    }
}

/// x [N?, K] → MatMul → Add bias → `tail` (nodes reading "h", writing "y").
fn build(tail: Vec<ember_quantize::onnx::NodeProto>, consts: &[(&str, f32)]) -> Vec<u8> {
    build_with(tail, consts, &[])
}

/// [`build`] with more graph outputs (`[N?, N]` values the tail writes).
fn build_with(
    tail: Vec<ember_quantize::onnx::NodeProto>,
    consts: &[(&str, f32)],
    extra_outputs: &[&str],
) -> Vec<u8> {
    let (w, b) = weights();
    let mut nodes = vec![
        node("MatMul", "mm", &["x", "w"], &["mmo"], vec![]),
        node("Add", "bias", &["mmo", "b"], &["h"], vec![]),
    ];
    nodes.extend(tail);
    let mut inits =
        vec![tensor_f32("w", &[K as i64, N as i64], &w), tensor_f32("b", &[N as i64], &b)];
    for (name, v) in consts {
        inits.push(tensor_f32(name, &[], &[*v]));
    }
    let outputs = std::iter::once("y")
        .chain(extra_outputs.iter().copied())
        .map(|o| value(o, 1, &[-1, N as i64]))
        .collect();
    model(nodes, vec![value("x", 1, &[-1, K as i64])], outputs, inits)
}

/// The HuggingFace GELU spelling on "h" with `c` as the √2 constant: `(h/c → erf → +1)·h·0.5`.
fn hf_gelu(c: &str) -> Vec<ember_quantize::onnx::NodeProto> {
    vec![
        node("Div", "d", &["h", c], &["u"], vec![]),
        node("Erf", "e", &["u"], &["ue"], vec![]),
        node("Add", "a", &["ue", "c_one"], &["s"], vec![]),
        node("Mul", "m1", &["h", "s"], &["t"], vec![]),
        node("Mul", "m2", &["t", "c_half"], &["y"], vec![]),
    ]
}

const GELU_CONSTS: [(&str, f32); 3] =
    [("c_sqrt2", std::f32::consts::SQRT_2), ("c_one", 1.0), ("c_half", 0.5)];

fn ops(g: &Graph) -> Vec<String> {
    g.nodes.iter().map(|n| n.op.clone()).collect()
}

/// Runs `onnx` through the evaluator (after the passes) and the runtime (float), and checks
/// both against the definition.
fn check_function(onnx: &[u8], tanh: bool) {
    let g = ember_quantize::prepare_graph(onnx).unwrap();
    let rows = 5;
    let x: Vec<f32> = (0..rows * K).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.4).collect();
    let (w, b) = weights();
    let want: Vec<f64> = (0..rows)
        .flat_map(|r| {
            let (x, w, b) = (&x, &w, &b);
            (0..N).map(move |j| {
                let h: f64 = (0..K).map(|p| x[r * K + p] as f64 * w[p * N + j] as f64).sum::<f64>()
                    + b[j] as f64;
                gelu_ref(h, tanh)
            })
        })
        .collect();
    let inputs = HashMap::from([("x".to_string(), HostTensor::f32(vec![rows, K], x.clone()))]);
    let got = ember_quantize::reference::evaluate(&g, &inputs, None).unwrap();
    for (gv, wv) in got["y"].to_f32_vec().iter().zip(&want) {
        assert!((*gv as f64 - wv).abs() <= 1e-5 * (1.0 + wv.abs()), "evaluator {gv} vs {wv}");
    }
    let calib = std::collections::BTreeMap::from([(
        "x".to_string(),
        HostTensor::f32(vec![rows, K], x.clone()),
    )]);
    let opts = Options { bits: 32, batches: vec![rows], ..Default::default() };
    let (bytes, _) = ember_quantize::quantize(onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
    let m = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
    let (ins, n) = exec::check_inputs(&exec::model_inputs(&m), &calib, "x").unwrap();
    let out = exec::run_batched(&m, &ins, n).unwrap();
    for (gv, wv) in out["y"].to_f32_vec().iter().zip(&want) {
        assert!((*gv as f64 - wv).abs() <= 2e-6 * (1.0 + wv.abs()), "runtime {gv} vs {wv}");
    }
}

fn sqrt2() -> f32 {
    std::f32::consts::SQRT_2
}

#[test]
fn erf_gelu_in_every_order_fuses_into_the_linear() {
    // HuggingFace: ((x / √2) → erf → +1) · x · 0.5
    let hf = hf_gelu("c_sqrt2");
    // x·(1/√2), 1 + erf, (x·0.5)·s
    let pre_half = vec![
        node("Mul", "d", &["c_isqrt2", "h"], &["u"], vec![]),
        node("Erf", "e", &["u"], &["ue"], vec![]),
        node("Add", "a", &["c_one", "ue"], &["s"], vec![]),
        node("Mul", "hh", &["h", "c_half"], &["hx"], vec![]),
        node("Mul", "m1", &["hx", "s"], &["y"], vec![]),
    ];
    // (s·0.5)·x
    let half_first = vec![
        node("Div", "d", &["h", "c_sqrt2"], &["u"], vec![]),
        node("Erf", "e", &["u"], &["ue"], vec![]),
        node("Add", "a", &["ue", "c_one"], &["s"], vec![]),
        node("Mul", "m1", &["s", "c_half"], &["t"], vec![]),
        node("Mul", "m2", &["h", "t"], &["y"], vec![]),
    ];
    let consts =
        [("c_sqrt2", sqrt2()), ("c_isqrt2", 1.0 / sqrt2()), ("c_one", 1.0), ("c_half", 0.5)];
    for (name, tail) in [("hf", hf), ("pre_half", pre_half), ("half_first", half_first)] {
        let onnx = build(tail, &consts);
        let g = ember_quantize::prepare_graph(&onnx).unwrap();
        assert_eq!(ops(&g), ["EmberLinear"], "{name}: {:?}", ops(&g));
        assert_eq!(g.nodes[0].int("act"), Some(2), "{name}: GELU (erf) epilogue");
        check_function(&onnx, false);
    }
}

#[test]
fn near_misses_are_left_alone() {
    let tail = hf_gelu;
    // Not √2: stays as primitive ops (and still computes its own function).
    let onnx = build(tail("c_other"), &[("c_other", 1.5), ("c_one", 1.0), ("c_half", 0.5)]);
    let g = ember_quantize::prepare_graph(&onnx).unwrap();
    assert!(ops(&g).contains(&"Erf".to_string()), "{:?}", ops(&g));
    // 0.25 instead of 0.5 at the end.
    let onnx = build(tail("c_sqrt2"), &[("c_sqrt2", sqrt2()), ("c_one", 1.0), ("c_half", 0.25)]);
    let g = ember_quantize::prepare_graph(&onnx).unwrap();
    assert!(ops(&g).contains(&"Erf".to_string()), "{:?}", ops(&g));
    // An intermediate value read elsewhere (the erf output is also a graph output).
    let mut nodes = tail("c_sqrt2");
    nodes.push(node("Identity", "leak", &["ue"], &["ue_out"], vec![]));
    let onnx = build_with(nodes, &GELU_CONSTS, &["ue_out"]);
    let g = ember_quantize::prepare_graph(&onnx).unwrap();
    assert!(ops(&g).contains(&"Erf".to_string()), "{:?}", ops(&g));
}

#[test]
fn onnx_gelu_op_both_forms() {
    for (approx, act) in [("none", 2), ("tanh", 3)] {
        let attr = ember_quantize::onnx::AttributeProto {
            name: Some("approximate".into()),
            r#type: Some(3),
            s: Some(approx.as_bytes().to_vec()),
            ..Default::default()
        };
        let onnx = build(vec![node("Gelu", "g", &["h"], &["y"], vec![attr])], &[]);
        let g = ember_quantize::prepare_graph(&onnx).unwrap();
        assert_eq!(ops(&g), ["EmberLinear"]);
        assert_eq!(g.nodes[0].int("act"), Some(act));
        check_function(&onnx, approx == "tanh");
    }
}

#[test]
fn gelu_on_a_value_with_other_readers_stays_a_gelu_op() {
    // h feeds the GELU and is also a graph output: the Linear keeps no activation and the GELU
    // runs as its own op.
    let mut tail = hf_gelu("c_sqrt2");
    tail.push(node("Identity", "keep", &["h"], &["h_out"], vec![]));
    let onnx = build_with(tail, &GELU_CONSTS, &["h_out"]);
    let g = ember_quantize::prepare_graph(&onnx).unwrap();
    assert!(ops(&g).contains(&"Gelu".to_string()), "{:?}", ops(&g));
    assert_eq!(g.nodes[0].int("act"), Some(0));
    check_function(&onnx, false);
}

fn attr_ints(name: &str, v: &[i64]) -> ember_quantize::onnx::AttributeProto {
    ember_quantize::onnx::AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// q [N,2,3,4] · Transpose(kr [N,5,2,4] or [N,2,5,4]) / 2 → y [N,2,3,5].
fn attention_scores(perm: &[i64], kdims: [i64; 4]) -> Vec<u8> {
    model(
        vec![
            node("Transpose", "t", &["kr"], &["kt"], vec![attr_ints("perm", perm)]),
            node("MatMul", "qk", &["q", "kt"], &["s"], vec![]),
            node("Div", "scale", &["s", "c_two"], &["y"], vec![]),
        ],
        vec![value("q", 1, &[-1, 2, 3, 4]), value("kr", 1, &[-1, kdims[1], kdims[2], kdims[3]])],
        vec![value("y", 1, &[-1, 2, 3, 5])],
        vec![tensor_f32("c_two", &[], &[2.0])],
    )
}

#[test]
fn transposed_matmul_operand_and_scale_fold_into_the_matmul() {
    // [0,2,3,1]: heads split and K transposed; becomes [0,2,1,3] + transB.
    // [0,1,3,2]: a plain transpose of the last two axes; disappears.
    for (perm, kdims, left) in [
        ([0, 2, 3, 1], [0, 5, 2, 4], vec!["Transpose", "MatMul"]),
        ([0, 1, 3, 2], [0, 2, 5, 4], vec!["MatMul"]),
    ] {
        let onnx = attention_scores(&perm, kdims);
        let g = ember_quantize::prepare_graph(&onnx).unwrap();
        assert_eq!(ops(&g), left, "perm {perm:?}");
        let mm = g.nodes.iter().find(|n| n.op == "MatMul").unwrap();
        assert_eq!(mm.int("transB"), Some(1));
        assert_eq!(mm.float("alpha"), Some(0.5));
        // Same function as the definition, in the evaluator and in the runtime (float and INT8).
        let rows = 3;
        let q: Vec<f32> = (0..rows * 24).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        let kn = (kdims[1] * kdims[2] * kdims[3]) as usize;
        let kr: Vec<f32> = (0..rows * kn).map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.2).collect();
        let kat = |b: usize, h: usize, t: usize, d: usize| -> f32 {
            if perm == [0, 2, 3, 1] {
                kr[b * 40 + t * 8 + h * 4 + d]
            } else {
                kr[b * 40 + h * 20 + t * 4 + d]
            }
        };
        let mut want = vec![0f32; rows * 30];
        for b in 0..rows {
            for h in 0..2 {
                for i in 0..3 {
                    for t in 0..5 {
                        let s: f32 =
                            (0..4).map(|d| q[b * 24 + h * 12 + i * 4 + d] * kat(b, h, t, d)).sum();
                        want[b * 30 + h * 15 + i * 5 + t] = s / 2.0;
                    }
                }
            }
        }
        let sh = |d: [i64; 4]| vec![rows, d[1] as usize, d[2] as usize, d[3] as usize];
        let inputs = std::collections::BTreeMap::from([
            ("q".to_string(), HostTensor::f32(sh([0, 2, 3, 4]), q.clone())),
            ("kr".to_string(), HostTensor::f32(sh(kdims), kr.clone())),
        ]);
        let hm: HashMap<_, _> = inputs.clone().into_iter().collect();
        let got = ember_quantize::reference::evaluate(&g, &hm, None).unwrap()["y"].to_f32_vec();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "evaluator {a} vs {b}");
        }
        for (bits, act_mm, tol) in [(32, false, 1e-5), (8, true, 0.05)] {
            let opts = Options {
                bits,
                batches: vec![rows],
                int8_act_matmul: act_mm,
                ..Default::default()
            };
            let (bytes, _) =
                ember_quantize::quantize(&onnx, &inputs, &opts, &mut |_, _, _| {}).unwrap();
            let m = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
            let (ins, n) = exec::check_inputs(&exec::model_inputs(&m), &inputs, "t").unwrap();
            let out = exec::run_batched(&m, &ins, n).unwrap()["y"].to_f32_vec();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() <= tol * scale.max(1.0), "runtime bits {bits}: {a} vs {b}");
            }
        }
    }
}

/// x [N?, D] → decomposed LayerNorm over the last axis → y [N?, D], as PyTorch exported it
/// before opset 17: `d = x − mean(x)`, `mean(d²)` (`Pow(d, 2)` or `d·d`), `d / √(v + ε)`, `·γ`
/// and optionally `+β`. `axes` of the two ReduceMeans as an attribute or (opset 18) an input.
fn decomposed_layer_norm(square_by_mul: bool, beta: bool, axes_input: bool, axes: i64) -> Vec<u8> {
    const D: usize = 12;
    let mean = |nm: &str, i: &str, o: &str| {
        if axes_input {
            node("ReduceMean", nm, &[i, "c_axes"], &[o], vec![])
        } else {
            node("ReduceMean", nm, &[i], &[o], vec![attr_ints("axes", &[axes])])
        }
    };
    let mut nodes = vec![
        mean("mu", "x", "m"),
        node("Sub", "sub", &["x", "m"], &["d"], vec![]),
        if square_by_mul {
            node("Mul", "sq", &["d", "d"], &["d2"], vec![])
        } else {
            node("Pow", "sq", &["d", "c_two"], &["d2"], vec![])
        },
        mean("var", "d2", "v"),
        node("Add", "add_eps", &["v", "c_eps"], &["ve"], vec![]),
        node("Sqrt", "sqrt", &["ve"], &["s"], vec![]),
        node("Div", "div", &["d", "s"], &["nrm"], vec![]),
        node("Mul", "gamma", &["c_gamma", "nrm"], &[if beta { "yg" } else { "y" }], vec![]),
    ];
    if beta {
        nodes.push(node("Add", "beta", &["yg", "c_beta"], &["y"], vec![]));
    }
    let gamma: Vec<f32> = (0..D).map(|i| 0.5 + i as f32 * 0.1).collect();
    let betav: Vec<f32> = (0..D).map(|i| i as f32 * 0.05 - 0.3).collect();
    model(
        nodes,
        vec![value("x", 1, &[-1, D as i64])],
        vec![value("y", 1, &[-1, D as i64])],
        vec![
            tensor_i64("c_axes", &[1], &[axes]),
            tensor_f32("c_two", &[], &[2.0]),
            tensor_f32("c_eps", &[], &[1e-5]),
            tensor_f32("c_gamma", &[D as i64], &gamma),
            tensor_f32("c_beta", &[D as i64], &betav),
        ],
    )
}

#[test]
fn decomposed_layer_norm_fuses_in_every_spelling_and_computes_the_same() {
    const D: usize = 12;
    for (by_mul, beta, axes_input) in
        [(false, true, false), (true, true, false), (false, false, true), (true, false, true)]
    {
        let onnx = decomposed_layer_norm(by_mul, beta, axes_input, -1);
        let g = ember_quantize::prepare_graph(&onnx).unwrap();
        assert_eq!(ops(&g), vec!["LayerNormalization"], "mul {by_mul} beta {beta}");
        assert_eq!(g.nodes[0].inputs.len(), if beta { 3 } else { 2 });
        assert_eq!(g.nodes[0].float("epsilon"), Some(1e-5));
        let rows = 7;
        let x: Vec<f32> = (0..rows * D).map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.37).collect();
        let calib = std::collections::BTreeMap::from([(
            "x".to_string(),
            HostTensor::f32(vec![rows, D], x.clone()),
        )]);
        let opts = Options { bits: 32, batches: vec![rows], ..Default::default() };
        let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
        let m = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
        assert_eq!(m.plans[0].records.len(), 1, "one LayerNorm op");
        let (ins, n) = exec::check_inputs(&exec::model_inputs(&m), &calib, "x").unwrap();
        let got = exec::run_batched(&m, &ins, n).unwrap()["y"].to_f32_vec();
        for r in 0..rows {
            let xr = &x[r * D..(r + 1) * D];
            let mu = xr.iter().map(|v| *v as f64).sum::<f64>() / D as f64;
            let var = xr.iter().map(|v| (*v as f64 - mu).powi(2)).sum::<f64>() / D as f64;
            for j in 0..D {
                let mut want = (xr[j] as f64 - mu) / (var + 1e-5).sqrt() * (0.5 + j as f64 * 0.1);
                if beta {
                    want += j as f64 * 0.05 - 0.3;
                }
                let gv = got[r * D + j] as f64;
                assert!((gv - want).abs() <= 1e-5 * (1.0 + want.abs()), "{gv} vs {want}");
            }
        }
    }
}

#[test]
fn layer_norm_near_misses_are_left_alone() {
    // Mean over the batch axis, not the last one.
    let g = ember_quantize::prepare_graph(&decomposed_layer_norm(false, true, false, 0)).unwrap();
    assert!(!ops(&g).contains(&"LayerNormalization".to_string()), "{:?}", ops(&g));
    // The centred value is also a graph output: fusing would lose it.
    let mut onnx_model = {
        use prost::Message;
        ember_quantize::onnx::ModelProto::decode(
            decomposed_layer_norm(false, true, false, -1).as_slice(),
        )
        .unwrap()
    };
    onnx_model.graph.as_mut().unwrap().output.push(value("d", 1, &[-1, 12]));
    let bytes = prost::Message::encode_to_vec(&onnx_model);
    let g = ember_quantize::prepare_graph(&bytes).unwrap();
    assert!(ops(&g).contains(&"ReduceMean".to_string()), "{:?}", ops(&g));
}

/// A residual add feeding a layer norm runs as one add-and-norm step on the CPU at any row
/// width (the sum row lives in the task's scratch slot; rows wider than 4096, which a stack
/// row held, used to stay two ops), with the bits of the plan as written on one and two
/// threads, and the layer norm of the sum within float rounding.
#[test]
fn add_and_norm_fuses_at_any_width_with_the_written_plans_bits() {
    use ember_runtime::{Pool, Session};
    use std::sync::Arc;
    let rows = 130; // more than two tasks' minimum of 64 rows: two threads split the rows
    for d in [12usize, 4096, 5000] {
        let gamma: Vec<f32> = (0..d).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..d).map(|i| (i % 5) as f32 * 0.05 - 0.1).collect();
        let onnx = model(
            vec![
                node("Add", "residual", &["x", "r"], &["s"], vec![]),
                node("LayerNormalization", "ln", &["s", "g", "b"], &["y"], vec![]),
            ],
            vec![value("x", 1, &[-1, d as i64]), value("r", 1, &[-1, d as i64])],
            vec![value("y", 1, &[-1, d as i64])],
            vec![tensor_f32("g", &[d as i64], &gamma), tensor_f32("b", &[d as i64], &beta)],
        );
        let x: Vec<f32> = (0..rows * d).map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.37).collect();
        let r: Vec<f32> = (0..rows * d).map(|i| ((i * 11 % 13) as f32 - 6.0) * 0.21).collect();
        let calib = std::collections::BTreeMap::from([
            ("x".to_string(), HostTensor::f32(vec![rows, d], x.clone())),
            ("r".to_string(), HostTensor::f32(vec![rows, d], r.clone())),
        ]);
        let opts = Options { bits: 32, batches: vec![rows], ..Default::default() };
        let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
        let m = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
        let p = &m.plans[0];
        let all = p.records.len();
        let norms = (0..all).filter(|i| p.add_norm_on_cpu(*i) && !p.folded_on_cpu(*i)).count();
        let adds = (0..all).filter(|i| p.add_norm_on_cpu(*i) && p.folded_on_cpu(*i)).count();
        assert_eq!((all, norms, adds), (2, 1, 1), "d {d}: the add and the norm fuse");
        let refs: Vec<&[u8]> = if m.inputs[0].name == "x" {
            vec![bytemuck::cast_slice(&x), bytemuck::cast_slice(&r)]
        } else {
            vec![bytemuck::cast_slice(&r), bytemuck::cast_slice(&x)]
        };
        let run = |threads: usize, as_written: bool| {
            let mut s = Session::new(&m, rows).unwrap();
            s.set_pool(Arc::new(Pool::new(threads).unwrap())).unwrap();
            s.run_as_written(as_written);
            s.run(&refs).unwrap();
            s.output_f32(0).unwrap().to_vec()
        };
        let written = run(1, true);
        assert!(run(1, false) == written, "d {d}: fused on one thread differs");
        assert!(run(2, false) == written, "d {d}: fused on two threads differs");
        for i in (0..rows).step_by(43) {
            let s: Vec<f64> = (0..d).map(|j| (x[i * d + j] + r[i * d + j]) as f64).collect();
            let mu = s.iter().sum::<f64>() / d as f64;
            let var = s.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / d as f64;
            for j in (0..d).step_by(97) {
                let want = (s[j] - mu) / (var + 1e-5).sqrt() * gamma[j] as f64 + beta[j] as f64;
                let got = written[i * d + j] as f64;
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{got} vs {want}");
            }
        }
    }
}
