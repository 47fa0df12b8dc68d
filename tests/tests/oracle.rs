//! End to end against onnxruntime: ONNX → .ember → run, for every oracle case, in float (must
//! match onnxruntime within `tol::FLOAT_REL_L2`) and INT8 (must track float within the cosine
//! and Pearson bounds) on inputs not used for calibration.

use ember_quantize::{exec, npz, report, Method, Options};
use ember_runtime::{AlignedBuf, Model};
use ember_tests::{case, oracle_dir, tol};
use std::collections::BTreeMap;

fn cases() -> Vec<String> {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oracle_dir().join("cases.json")).unwrap()).unwrap();
    j.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

fn quantize_case(
    name: &str,
    bits: u32,
    batches: &[usize],
    method: Method,
) -> (Vec<u8>, report::Report) {
    let dir = case(name);
    let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
    let calib = npz::read_npz(&dir.join("calib.npz")).unwrap();
    let opts = Options {
        bits,
        batches: batches.to_vec(),
        method,
        source_name: name.into(),
        ..Default::default()
    };
    ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {})
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn run_case(name: &str, bytes: &[u8]) -> BTreeMap<String, ember_quantize::HostTensor> {
    let model = Model::parse(AlignedBuf::from_bytes(bytes)).unwrap();
    let test = npz::read_npz(&case(name).join("test.npz")).unwrap();
    let (inputs, n) = exec::check_inputs(&exec::model_inputs(&model), &test, "test set").unwrap();
    exec::run_batched(&model, &inputs, n).unwrap()
}

#[test]
fn float_path_matches_onnxruntime() {
    for name in cases() {
        let (bytes, _) = quantize_case(&name, 32, &[1, 8], Method::MinMax);
        let got = run_case(&name, &bytes);
        let want = npz::read_npz(&case(&name).join("expected.npz")).unwrap();
        for (k, w) in &want {
            let g = &got[k];
            assert_eq!(g.shape, w.shape, "{name}/{k}: shape");
            let m = report::metrics(k, &g.to_f32_vec(), &w.to_f32_vec());
            assert!(
                m.rel_l2_err <= tol::FLOAT_REL_L2,
                "{name}/{k}: float path rel L2 {} vs onnxruntime",
                m.rel_l2_err
            );
        }
    }
}

#[test]
fn float_reference_matches_onnxruntime() {
    for name in cases() {
        let dir = case(&name);
        let g =
            ember_quantize::prepare_graph(&std::fs::read(dir.join("model.onnx")).unwrap()).unwrap();
        let test = npz::read_npz(&dir.join("test.npz")).unwrap();
        let n = test.values().next().unwrap().shape[0];
        let inputs = test.into_iter().collect();
        let got = exec::reference_batched(&g, &inputs, n, 16).unwrap();
        for (k, w) in npz::read_npz(&dir.join("expected.npz")).unwrap() {
            let m = report::metrics(&k, &got[&k].to_f32_vec(), &w.to_f32_vec());
            assert!(
                m.rel_l2_err <= tol::FLOAT_REL_L2,
                "{name}/{k}: reference rel L2 {}",
                m.rel_l2_err
            );
        }
    }
}

#[test]
fn int8_tracks_float_on_unseen_inputs() {
    for name in cases() {
        for method in [Method::MinMax, Method::Mse] {
            let (bytes, rep) = quantize_case(&name, 8, &[1, 8], method);
            let got = run_case(&name, &bytes);
            let want = npz::read_npz(&case(&name).join("expected.npz")).unwrap();
            for (k, w) in &want {
                let m = report::metrics(k, &got[k].to_f32_vec(), &w.to_f32_vec());
                assert!(m.cosine >= tol::INT8_COSINE, "{name}/{k} {method:?}: cosine {}", m.cosine);
                assert!(
                    m.pearson >= tol::INT8_PEARSON,
                    "{name}/{k} {method:?}: pearson {}",
                    m.pearson
                );
            }
            // Every Linear and embedding table of these models runs in INT8.
            assert!(
                rep.layers.iter().filter(|l| l.kind == "linear").all(|l| l.precision == "int8"),
                "{name}"
            );
        }
    }
}

#[test]
fn int8_percentile_calibration_also_tracks_float() {
    let (bytes, _) = quantize_case("mlp", 8, &[4], Method::Percentile);
    let got = run_case("mlp", &bytes);
    let want = npz::read_npz(&case("mlp").join("expected.npz")).unwrap();
    let m = report::metrics("probs", &got["probs"].to_f32_vec(), &want["probs"].to_f32_vec());
    assert!(m.cosine >= tol::INT8_COSINE && m.pearson >= tol::INT8_PEARSON, "{m:?}");
}

#[test]
fn int8_activation_matmuls_track_float() {
    // With --act-matmul int8 the DLRM interaction and the BERT-like attention run in INT8.
    for name in ["dlrm", "bert_block"] {
        let dir = case(name);
        let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
        let calib = npz::read_npz(&dir.join("calib.npz")).unwrap();
        let opts = Options { batches: vec![4], int8_act_matmul: true, ..Default::default() };
        let (bytes, rep) =
            ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
        assert!(
            rep.layers.iter().filter(|l| l.kind == "matmul").all(|l| l.precision == "int8"),
            "{name}"
        );
        assert!(rep.layers.iter().any(|l| l.kind == "matmul"), "{name}");
        let got = run_case(name, &bytes);
        for (k, w) in npz::read_npz(&dir.join("expected.npz")).unwrap() {
            let m = report::metrics(&k, &got[&k].to_f32_vec(), &w.to_f32_vec());
            assert!(m.cosine >= 0.999 && m.pearson >= 0.998, "{name}/{k}: {m:?}");
        }
    }
}

#[test]
fn accuracy_budget_falls_back_the_most_sensitive_layers_and_says_so() {
    let dir = case("dlrm");
    let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
    let calib = npz::read_npz(&dir.join("calib.npz")).unwrap();
    let q = |budget: f64| {
        let opts = Options {
            batches: vec![4],
            int8_act_matmul: true,
            max_cos_drop: Some(budget),
            ..Default::default()
        };
        ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap().1
    };
    let loose = q(0.5);
    assert!(loose.fell_back.is_empty(), "{:?}", loose.fell_back);
    let full_drop = loose.cos_drop.unwrap();
    assert!(full_drop > 0.0);
    let budget = full_drop / 4.0;
    let tight = q(budget);
    assert!(!tight.fell_back.is_empty());
    assert!(tight.cos_drop.unwrap() <= budget, "{:?} > {budget}", tight.cos_drop);
    for name in &tight.fell_back {
        let l = tight.layers.iter().find(|l| &l.node == name).unwrap();
        assert!(
            ["f32", "f16", "int8-dynamic"].contains(&l.precision.as_str()),
            "{name}: {}",
            l.precision
        );
        assert!(
            l.reason.as_deref().unwrap_or("").contains("--max-cos-drop"),
            "{name}: {:?}",
            l.reason
        );
    }
    // Fewest layers: not everything fell back.
    assert!(tight.layers.iter().any(|l| l.precision == "int8"));

    // INT4: the sensitive INT4 layers widen to INT8 first (not straight to float).
    let q4 = |budget: f64| {
        let opts = Options {
            bits: 4,
            group: 4,
            batches: vec![4],
            max_cos_drop: Some(budget),
            ..Default::default()
        };
        ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap().1
    };
    let loose = q4(0.5);
    assert!(loose.fell_back.is_empty());
    let budget = loose.cos_drop.unwrap() / 4.0;
    let tight = q4(budget);
    assert!(tight.cos_drop.unwrap() <= budget, "{:?} > {budget}", tight.cos_drop);
    assert!(!tight.fell_back.is_empty());
    let widened: Vec<&str> = tight
        .fell_back
        .iter()
        .map(|n| tight.layers.iter().find(|l| &l.node == n).unwrap().precision.as_str())
        .collect();
    assert!(widened.contains(&"int8"), "INT4 layers should widen to INT8: {widened:?}");
    for n in &tight.fell_back {
        let l = tight.layers.iter().find(|l| &l.node == n).unwrap();
        assert!(
            l.reason.as_deref().unwrap_or("").contains("widened from int"),
            "{n}: {:?}",
            l.reason
        );
    }
    assert!(tight.layers.iter().any(|l| l.precision == "int4"), "everything widened");
}

#[test]
fn every_batch_size_gives_the_same_answer() {
    // 203 test samples: batch 8 pads its last batch, batch 1 never pads.
    let (b1, _) = quantize_case("dlrm", 8, &[1], Method::MinMax);
    let (b18, _) = quantize_case("dlrm", 8, &[1, 8, 64], Method::MinMax);
    let one = run_case("dlrm", &b1);
    let many = run_case("dlrm", &b18);
    assert_eq!(one["ctr"].shape, vec![203, 1]);
    assert_eq!(one["ctr"], many["ctr"], "padding or plan choice changed results");
}

#[test]
fn report_lists_float_ops_and_int8_layers() {
    let (_, rep) = quantize_case("dlrm", 8, &[2], Method::MinMax);
    let floats: Vec<&str> = rep.float_ops.iter().map(|o| o.node.as_str()).collect();
    // By default activation x activation MatMuls stay in float, and say so.
    assert!(floats.contains(&"sigmoid") && floats.contains(&"interact"), "{floats:?}");
    let interact =
        rep.layers.iter().find(|l| l.node == "interact").expect("interaction layer reported");
    assert_eq!((interact.kind.as_str(), interact.precision.as_str()), ("matmul", "f32"));
    assert!(interact.reason.as_deref().unwrap_or("").contains("--act-matmul"));
    let emb = rep.layers.iter().filter(|l| l.kind.starts_with("embedding")).count();
    assert_eq!(emb, 3);
    for l in &rep.layers {
        let c = l.cosine_to_float.unwrap_or(0.0);
        assert!(c > 0.99, "layer {} cosine {c}", l.node);
    }
    assert!(
        rep.file_bytes < rep.float_weight_bytes,
        "INT8 file should be smaller than float weights"
    );
}

/// Threads and kernel tiers change nothing: every oracle case at INT8 (activation matmuls
/// integer too), run on every kernel tier this CPU has, with 1, 2 and 3 threads, gives the same
/// bits as the generic kernels on one thread (with the tier's softmax, whose AVX-512 variant
/// agrees with the generic one within a bound, not bit for bit).
#[test]
fn threads_and_kernel_tiers_give_identical_bits() {
    use ember_runtime::{Pool, Session};
    use std::sync::Arc;
    let tiers = ["generic", "avx2", "avx512vnni", "neon", "dotprod", "i8mm"];
    // INT8, and group-wise INT4 with multipliers and with f16 scales (groups of 4 fit every
    // layer of the small oracle models, so LinearI4M, LinearI4 and GatherRowsI4 run on every
    // tier too).
    use ember_quantize::quant::I4Scales;
    let mut int4_ops = std::collections::HashMap::new();
    let builds = |n: String| {
        [(n.clone(), 8, I4Scales::Mult), (n.clone(), 4, I4Scales::Mult), (n, 4, I4Scales::Group)]
    };
    let mut handoffs = std::collections::BTreeMap::new();
    for (case_name, bits, scales) in cases().into_iter().flat_map(builds) {
        if case_name == "unsupported" {
            continue;
        }
        let name = format!("{case_name} ({bits} bits, {scales:?})");
        let dir = case(&case_name);
        let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
        let calib = npz::read_npz(&dir.join("calib.npz")).unwrap();
        let opts = Options {
            bits,
            group: 4,
            int4_scales: Some(scales),
            batches: vec![8],
            int8_act_matmul: true,
            source_name: case_name.clone(),
            ..Default::default()
        };
        let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let model = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
        let test = npz::read_npz(&dir.join("test.npz")).unwrap();
        let (inputs, _) =
            exec::check_inputs(&exec::model_inputs(&model), &test, "test set").unwrap();
        let rows: Vec<usize> = (0..8).collect();
        let bufs: Vec<Vec<u8>> =
            model.inputs.iter().map(|s| inputs[&s.name].take_rows(&rows).to_le_bytes()).collect();
        let refs: Vec<&[u8]> = bufs.iter().map(|v| v.as_slice()).collect();
        let folded = std::cell::Cell::new(0usize);
        let run = |ks: ember_kernels::KernelSet, threads: usize| -> Vec<Vec<u8>> {
            let mut s = Session::with_kernels(&model, 8, ks).unwrap();
            s.set_pool(Arc::new(Pool::new(threads).unwrap())).unwrap();
            s.run(&refs).unwrap();
            let first: Vec<Vec<u8>> =
                (0..model.outputs.len()).map(|i| s.output(i).to_vec()).collect();
            // A second run on the same session gives the same bits (no state leaks).
            s.run(&refs).unwrap();
            for (i, f) in first.iter().enumerate() {
                assert_eq!(s.output(i), &f[..], "{name}: second run differs");
            }
            // The plan's ops as written (no head shuffles folded into the matmuls) agree too.
            let mut w = Session::with_kernels(&model, 8, ks).unwrap();
            w.set_pool(Arc::new(Pool::new(threads).unwrap())).unwrap();
            w.run_as_written(true);
            let mut ran = [0usize; 2];
            w.run_with(&refs, |_, _| ran[0] += 1).unwrap();
            for (i, f) in first.iter().enumerate() {
                assert_eq!(w.output(i), &f[..], "{name}: the plan as written differs");
            }
            s.run_with(&refs, |_, _| ran[1] += 1).unwrap();
            folded.set(folded.get().max(ran[0] - ran[1]));
            first
        };
        // The reference: the generic kernels, but the tier's softmax, the one float family these
        // INT8 models run that is not bit-exact across tiers (the AVX-512 softmax agrees with
        // its twin within 5e-7; the twins test checks that bound).
        let mut wants: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
        for tier in tiers {
            let ks = ember_kernels::KernelSet::with_override(tier);
            if !wants.iter().any(|(n, _)| *n == ks.softmax_row_name) {
                let mut reference = ember_kernels::KernelSet::generic();
                reference.softmax_row = ks.softmax_row;
                reference.softmax_row_name = ks.softmax_row_name;
                wants.push((ks.softmax_row_name, run(reference, 1)));
            }
            let want = &wants.iter().find(|(n, _)| *n == ks.softmax_row_name).unwrap().1;
            for threads in [1, 2, 3] {
                assert!(
                    run(ks, threads) == *want,
                    "{name}: tier {tier} ({}, {}, {}, {}) with {threads} threads differs from generic",
                    ks.i8_gemm_name,
                    ks.i4_gemm_name,
                    ks.i4m_gemm_name,
                    ks.softmax_row_name
                );
            }
        }
        for r in &model.plans[0].records {
            *int4_ops.entry(r.opcode).or_insert(0usize) += (bits == 4) as usize;
        }
        // Linears feeding linears hand over u8 codes on the CPU (compared with the plan as
        // written above): counted per weight form.
        let p = &model.plans[0];
        let writes = (0..p.records.len()).filter(|i| p.handoff_on_cpu(*i).0).count();
        let reads = (0..p.records.len()).filter(|i| p.handoff_on_cpu(*i).1).count();
        assert_eq!(writes, reads, "{name}: {writes} hand-overs written, {reads} read");
        *handoffs.entry((bits, format!("{scales:?}"))).or_insert(0usize) += writes;
        // The attention block's head shuffles (Q, K, V and the context: Reshape + Transpose
        // each) are folded into the matmuls (the CPU schedule places its own arena).
        if case_name == "bert_block" && bits == 8 {
            assert!(folded.get() >= 8, "{name}: {} ops folded", folded.get());
            // Its softmax runs in place over the scores (the comparisons above cover it).
            let p = &model.plans[0];
            let in_place = (0..p.records.len()).filter(|i| p.in_place_on_cpu(*i)).count();
            assert_eq!(in_place, 1, "{name}: {in_place} ops in place");
        }
    }
    // The INT8 builds handed codes over in some case (dlrm's MLPs; INT4 linears do not write
    // codes, they may read them).
    for (form, n) in &handoffs {
        assert!(form.0 != 8 || *n > 0, "no linear handed its codes over in the {form:?} builds");
    }
    // The INT4 builds did run the INT4 ops.
    for code in [
        ember_runtime::OpCode::LinearI4,
        ember_runtime::OpCode::LinearI4M,
        ember_runtime::OpCode::GatherRowsI4,
    ] {
        assert!(
            int4_ops.get(&(code as u16)).copied().unwrap_or(0) > 0,
            "no {code:?} in any INT4 model"
        );
    }
}

/// Float attention (the default `--act-matmul float`): the batched MatMuls spread their heads
/// over the threads, each head one kernel call, so 1, 2 and 3 threads give the same bits on
/// every kernel tier (tiers differ from each other within the f32 GEMM bound only).
#[test]
fn float_attention_heads_over_threads_give_identical_bits() {
    use ember_runtime::{Pool, Session};
    use std::sync::Arc;
    let dir = case("bert_block");
    let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
    let calib = npz::read_npz(&dir.join("calib.npz")).unwrap();
    let opts = Options { batches: vec![8], source_name: "bert_block".into(), ..Default::default() };
    let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
    let model = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
    assert!(
        model.plans[0].records.iter().any(|r| r.opcode == ember_runtime::OpCode::MatMulF32 as u16),
        "no float MatMul in the default build"
    );
    let test = npz::read_npz(&dir.join("test.npz")).unwrap();
    let (inputs, _) = exec::check_inputs(&exec::model_inputs(&model), &test, "test set").unwrap();
    let rows: Vec<usize> = (0..8).collect();
    let bufs: Vec<Vec<u8>> =
        model.inputs.iter().map(|s| inputs[&s.name].take_rows(&rows).to_le_bytes()).collect();
    let refs: Vec<&[u8]> = bufs.iter().map(|v| v.as_slice()).collect();
    for tier in ["generic", "avx2", "avx512vnni", "neon", "dotprod", "i8mm"] {
        let ks = ember_kernels::KernelSet::with_override(tier);
        let run = |threads: usize, as_written: bool| {
            let mut s = Session::with_kernels(&model, 8, ks).unwrap();
            s.set_pool(Arc::new(Pool::new(threads).unwrap())).unwrap();
            s.run_as_written(as_written);
            s.run(&refs).unwrap();
            (0..model.outputs.len()).map(|i| s.output(i).to_vec()).collect::<Vec<_>>()
        };
        let one = run(1, false);
        for threads in [2, 3] {
            assert!(
                run(threads, false) == one,
                "tier {tier} ({}): {threads} threads differ",
                ks.f32_gemm_name
            );
        }
        // The attention runs fused (scores, softmax and P·V per head in a thread's slot): the
        // same bits as the plan as written.
        assert!(run(2, true) == one, "tier {tier}: the plan as written differs");
    }
    let p = &model.plans[0];
    let fused = (0..p.records.len()).filter(|i| p.attention_on_cpu(*i)).count();
    assert_eq!(fused, 1, "{fused} fused attentions");
}
