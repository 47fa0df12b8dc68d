//! The real transformer export (paraphrase-MiniLM-L3-v2, opset 17): imported with its shape
//! sub-graphs folded, run in float (must match onnxruntime's sentence embedding `461`) and in
//! static INT8 with every MatMul in integer arithmetic (mean cosine to onnxruntime FP32 >= 0.995
//! on sentences not used for calibration), and with group-wise INT4 weights and embedding
//! tables (W4A8, group 32: mean cosine >= 0.99, the whole file <= 15 MB).
//! Host only: quantization is a workstation job, and emulated aarch64 would take minutes.
#![cfg(target_arch = "x86_64")]

use ember_quantize::{exec, npz, Method, Options};
use ember_runtime::{AlignedBuf, Model};
use std::collections::{BTreeMap, HashMap};

const EVAL: usize = 16;

fn quantize(bits: u32) -> (Vec<u8>, ember_quantize::report::Report) {
    quantize_with(bits, |_| {})
}

fn quantize_with(
    bits: u32,
    f: impl FnOnce(&mut Options),
) -> (Vec<u8>, ember_quantize::report::Report) {
    let (model, dir) = ember_tests::minilm();
    let onnx = std::fs::read(model).unwrap();
    let calib = npz::read_npz(&dir.join("calib.npz")).unwrap();
    let mut opts = Options {
        bits,
        batches: vec![1, 8],
        method: Method::MinMax,
        int8_act_matmul: true,
        ..Default::default()
    };
    opts.shapes =
        HashMap::from([("input_ids".into(), vec![128]), ("attention_mask".into(), vec![128])]);
    f(&mut opts);
    ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap()
}

/// Per-sentence cosine of output 461 against onnxruntime on the first EVAL eval sentences.
fn cosines(bytes: &[u8]) -> Vec<f64> {
    let (_, dir) = ember_tests::minilm();
    let model = Model::parse(AlignedBuf::from_bytes(bytes)).unwrap();
    let ev: BTreeMap<_, _> = npz::read_npz(&dir.join("eval.npz"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.slice_rows(0, EVAL)))
        .collect();
    let (inputs, n) = exec::check_inputs(&exec::model_inputs(&model), &ev, "eval").unwrap();
    let got = exec::run_batched(&model, &inputs, n).unwrap()["461"].to_f32_vec();
    let want =
        npz::read_npz(&dir.join("expected.npz")).unwrap()["461"].slice_rows(0, EVAL).to_f32_vec();
    let d = got.len() / EVAL;
    (0..EVAL)
        .map(|i| {
            ember_quantize::report::metrics(
                "461",
                &got[i * d..(i + 1) * d],
                &want[i * d..(i + 1) * d],
            )
            .cosine
        })
        .collect()
}

#[test]
fn float_path_matches_onnxruntime() {
    let (bytes, rep) = quantize(32);
    let c = cosines(&bytes);
    assert!(c.iter().all(|v| *v > 1.0 - 1e-9), "{c:?}");
    assert!(rep.outputs.iter().all(|o| o.rel_l2_err < 1e-5), "{:?}", rep.outputs);
}

#[test]
fn static_int8_keeps_sentence_embeddings() {
    let (bytes, rep) = quantize(8);
    let c = cosines(&bytes);
    let mean = c.iter().sum::<f64>() / c.len() as f64;
    let min = c.iter().cloned().fold(1.0, f64::min);
    eprintln!("MiniLM-L3 static INT8: mean cosine {mean:.5}, min {min:.5}, {} bytes", bytes.len());
    assert!(mean >= 0.995, "mean cosine {mean}");
    assert!(min >= 0.99, "min cosine {min}");
    let linear = rep.layers.iter().filter(|l| l.kind == "linear").count();
    assert_eq!(linear, 18, "every projection and FFN layer is a Linear");
    assert!(rep.layers.iter().filter(|l| l.kind == "linear").all(|l| l.precision == "int8"));
    // All MatMuls in integer arithmetic: the six attention products too (QK^T and P.V per layer).
    let mm: Vec<&str> =
        rep.layers.iter().filter(|l| l.kind == "matmul").map(|l| l.precision.as_str()).collect();
    assert_eq!(mm, vec!["int8"; 6], "attention matmuls");
    // The word-embedding table is row-wise INT8 too.
    assert!(rep.layers.iter().any(|l| l.kind.starts_with("embedding")));
}

#[test]
fn accuracy_budget_of_0_001_holds_on_unseen_sentences() {
    let (model, dir) = ember_tests::minilm();
    let onnx = std::fs::read(model).unwrap();
    let calib = npz::read_npz(&dir.join("calib.npz")).unwrap();
    let mut opts = Options {
        batches: vec![8],
        method: Method::MinMax,
        int8_act_matmul: true,
        max_cos_drop: Some(0.001),
        ..Default::default()
    };
    opts.shapes =
        HashMap::from([("input_ids".into(), vec![128]), ("attention_mask".into(), vec![128])]);
    let (bytes, rep) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
    let c = cosines(&bytes);
    let mean = c.iter().sum::<f64>() / c.len() as f64;
    eprintln!(
        "MiniLM-L3 --max-cos-drop 0.001: mean cosine {mean:.5}, fell back: {:?}",
        rep.fell_back
    );
    assert!(mean >= 0.999, "mean cosine {mean}");
    assert!(rep.cos_drop.unwrap() <= 0.001);
    // Every layer not in INT8 is named, with its reason.
    for l in rep.layers.iter().filter(|l| l.precision != "int8") {
        assert!(
            rep.fell_back.contains(&l.node),
            "{} is float but not reported as a fallback",
            l.node
        );
        assert!(l.reason.as_deref().unwrap_or("").contains("--max-cos-drop"));
    }
}

#[test]
fn int4_group32_keeps_sentence_embeddings_in_15_mb() {
    let (bytes, rep) = quantize_with(4, |o| o.group = 32);
    let c = cosines(&bytes);
    let mean = c.iter().sum::<f64>() / c.len() as f64;
    let min = c.iter().cloned().fold(1.0, f64::min);
    eprintln!("MiniLM-L3 INT4 g32: mean cosine {mean:.5}, min {min:.5}, {} bytes", bytes.len());
    assert!(mean >= 0.99, "mean cosine {mean}");
    assert!(bytes.len() <= 15_000_000, "file is {} bytes", bytes.len());
    let lin: Vec<&str> =
        rep.layers.iter().filter(|l| l.kind == "linear").map(|l| l.precision.as_str()).collect();
    assert_eq!(lin, vec!["int4"; 18], "every Linear in INT4");
    let emb: Vec<&str> = rep
        .layers
        .iter()
        .filter(|l| l.kind.starts_with("embedding"))
        .map(|l| l.precision.as_str())
        .collect();
    assert!(!emb.is_empty() && emb.iter().all(|p| *p == "int4"), "embeddings: {emb:?}");
    // The same bits on every kernel tier the CPU has, and on 2 threads.
    let model = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
    // By default every INT4 Linear stores integer group multipliers (LinearI4M: INT8 kernels).
    let i4m = model.plans[0]
        .records
        .iter()
        .filter(|r| r.opcode == ember_runtime::OpCode::LinearI4M as u16)
        .count();
    assert_eq!(i4m, 18, "LinearI4M ops in the default INT4 build");
    let (_, dir) = ember_tests::minilm();
    let ev: BTreeMap<_, _> = npz::read_npz(&dir.join("eval.npz"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.slice_rows(0, 2)))
        .collect();
    let (inputs, n) = exec::check_inputs(&exec::model_inputs(&model), &ev, "eval").unwrap();
    let base = exec::run_batched(&model, &inputs, n).unwrap()["461"].to_f32_vec();
    let pool = std::sync::Arc::new(ember_runtime::Pool::new(2).unwrap());
    let two = exec::run_batched_on(&model, &inputs, n, Some(pool)).unwrap()["461"].to_f32_vec();
    assert_eq!(base, two, "2 threads changed the bits");
}

#[test]
fn entropy_calibration_keeps_sentence_embeddings() {
    let (bytes, rep) = quantize_with(8, |o| o.method = Method::Entropy);
    let c = cosines(&bytes);
    let mean = c.iter().sum::<f64>() / c.len() as f64;
    let min = c.iter().cloned().fold(1.0, f64::min);
    eprintln!("MiniLM-L3 static INT8, entropy calibration: mean cosine {mean:.5}, min {min:.5}");
    assert_eq!(rep.method, "entropy");
    assert!(rep.layers.iter().filter(|l| l.kind == "linear").all(|l| l.precision == "int8"));
    assert!(mean >= 0.995, "mean cosine {mean}");
}

#[test]
fn dynamic_per_row_activations_keep_sentence_embeddings() {
    let (bytes, rep) = quantize_with(8, |o| o.dynamic_layers = vec!["all".into()]);
    let c = cosines(&bytes);
    let mean = c.iter().sum::<f64>() / c.len() as f64;
    let min = c.iter().cloned().fold(1.0, f64::min);
    eprintln!("MiniLM-L3 dynamic INT8 (every Linear): mean cosine {mean:.5}, min {min:.5}");
    let lin: Vec<_> = rep.layers.iter().filter(|l| l.kind == "linear").collect();
    assert!(!lin.is_empty() && lin.iter().all(|l| l.precision == "int8-dynamic"), "{lin:?}");
    assert!(lin.iter().all(|l| l.act_scale.is_none() && l.reason.is_some()));
    assert!(mean >= 0.995, "mean cosine {mean}");
}

/// A budget tighter than static INT8 can meet: layers step to dynamic per-row activations
/// before any goes to float, and every widened layer is named with its steps.
#[test]
fn tight_budget_widens_through_dynamic_int8_first() {
    let (bytes, rep) = quantize_with(8, |o| {
        o.batches = vec![8];
        o.max_cos_drop = Some(0.0004);
    });
    let c = cosines(&bytes);
    let mean = c.iter().sum::<f64>() / c.len() as f64;
    let by = |p: &str| {
        rep.layers.iter().filter(|l| l.precision == p).map(|l| l.node.clone()).collect::<Vec<_>>()
    };
    eprintln!(
        "MiniLM-L3 --max-cos-drop 0.0004: mean cosine {mean:.5}, drop on calibration {:.2e}, dynamic {:?}, f32 {:?}",
        rep.cos_drop.unwrap(), by("int8-dynamic"), by("f32")
    );
    assert!(rep.cos_drop.unwrap() <= 0.0004);
    assert!(!by("int8-dynamic").is_empty(), "no layer stepped to dynamic INT8");
    // The pruning pass keeps the widened set small (MiniLM-L3 has 24 quantized layers).
    assert!(rep.fell_back.len() <= 8, "{:?}", rep.fell_back);
    for l in rep.layers.iter().filter(|l| l.precision != "int8") {
        assert!(rep.fell_back.contains(&l.node), "{} ({}) not reported", l.node, l.precision);
        let why = l.reason.as_deref().unwrap_or("");
        assert!(why.contains("--max-cos-drop") && why.contains(&l.precision), "{why}");
    }
    assert!(mean >= 0.999, "mean cosine {mean}");
}

/// The CPU schedule reads the attention heads in place and writes P·V's heads straight to
/// their merged places (the Reshape/Transpose copies around the attention MatMuls are folded
/// into them, and the softmax overwrites its input): the same output bits as running every op
/// of the plan as written, at batch 1 and 8, on one and two threads, with most of those
/// copies gone.
#[test]
fn folded_head_shuffles_give_the_written_plans_bits() {
    let (bytes, _) = quantize(8);
    schedule_gives_the_written_plans_bits(&bytes, &|p, batch, all, ran| {
        // Per layer: Q's, K's and V's Reshape and Transpose, and the output's Transpose and
        // Reshape (the CPU schedule places its own arena, so every one folds).
        assert!(all - ran >= 24, "batch {batch}: only {} of {all} ops folded", all - ran);
        // And each layer's softmax overwrites its scores instead of a slot of its own.
        let in_place = (0..p.records.len()).filter(|i| p.in_place_on_cpu(*i)).count();
        assert_eq!(in_place, 3, "batch {batch}: {in_place} ops in place");
        assert_handoffs(p, batch);
    });
}

/// Each layer's first feed-forward linear writes the second's u8 codes on the CPU.
fn assert_handoffs(p: &ember_runtime::Plan, batch: usize) {
    let n = p.records.len();
    let writes: Vec<usize> = (0..n).filter(|i| p.handoff_on_cpu(*i) == (true, false)).collect();
    let reads: Vec<usize> = (0..n).filter(|i| p.handoff_on_cpu(*i) == (false, true)).collect();
    assert_eq!(writes.len(), 3, "batch {batch}: hand-overs written by {writes:?}");
    assert_eq!(reads, writes.iter().map(|i| i + 1).collect::<Vec<_>>(), "batch {batch}");
}

/// The INT4 build's schedule (fused attention, no hand-over: an INT4 linear writing codes in
/// tiles of rows would widen its weight panels once per tile) gives the bits of the plan as
/// written.
#[test]
fn int4_schedule_gives_the_written_plans_bits() {
    let (bytes, _) = quantize_with(4, |o| {
        o.group = 32;
        o.int8_act_matmul = false;
    });
    schedule_gives_the_written_plans_bits(&bytes, &|p, batch, _, _| {
        let fused = (0..p.records.len()).filter(|i| p.attention_on_cpu(*i)).count();
        assert_eq!(fused, 3, "batch {batch}: {fused} fused attentions");
        let hand = (0..p.records.len()).filter(|i| p.handoff_on_cpu(*i) != (false, false));
        assert_eq!(hand.count(), 0, "batch {batch}: an INT4 linear hands codes over");
    });
}

/// The default build's float attention runs fused on the CPU (scores, softmax and P·V per
/// head in a thread's slot, the head shuffles folded): the bits of the plan as written, in
/// a smaller arena.
#[test]
fn fused_float_attention_gives_the_written_plans_bits() {
    let (bytes, _) = quantize_with(8, |o| o.int8_act_matmul = false);
    schedule_gives_the_written_plans_bits(&bytes, &|p, batch, all, ran| {
        let fused = (0..p.records.len()).filter(|i| p.attention_on_cpu(*i)).count();
        assert_eq!(fused, 3, "batch {batch}: {fused} fused attentions");
        let parts = (0..p.records.len()).filter(|i| p.in_attention_on_cpu(*i)).count();
        assert_eq!(parts, 6, "batch {batch}: scores and softmax ops inside the fused steps");
        // Per layer: the scores MatMul, the Softmax, and the eight shuffle copies.
        assert!(all - ran >= 30, "batch {batch}: only {} of {all} ops folded", all - ran);
        // Every layer norm after a residual add of two same-shape values (two per layer, and
        // at batch 1 the embeddings': at batch 8 its position term broadcasts) forms the sum
        // itself; the adds do not run.
        let norms = (0..all).filter(|i| p.add_norm_on_cpu(*i) && !p.folded_on_cpu(*i)).count();
        let adds = (0..all).filter(|i| p.add_norm_on_cpu(*i) && p.folded_on_cpu(*i)).count();
        let want = if batch == 1 { 7 } else { 6 };
        assert_eq!((norms, adds), (want, want), "batch {batch}: norms that add, adds folded");
        // The scores never reach the arena: at batch 1 they alone were 786 KB of it.
        assert_handoffs(p, batch);
        // At most four hidden states live at once: the attention step's k and v sources, the
        // residual, and q with the context written over it (the feed-forward intermediate goes
        // as u8 codes).
        let hidden = p.batch * 128 * 384 * 4;
        assert!(
            p.cpu_arena_size <= 4 * hidden + (64 << 10),
            "batch {batch}: CPU arena {} for hidden states of {hidden}",
            p.cpu_arena_size
        );
        assert!(
            p.cpu_arena_size + (p.batch * 12 * 128 * 128 * 4) / 2 <= p.arena_size,
            "batch {batch}: CPU arena {} against {} as written",
            p.cpu_arena_size,
            p.arena_size
        );
    });
}

/// Runs the eval inputs through the CPU schedule and the plan as written at batch 1 and 8, on
/// one and two threads: the same output bits; `check(plan, batch, ops, ops run)` then.
fn schedule_gives_the_written_plans_bits(
    bytes: &[u8],
    check: &dyn Fn(&ember_runtime::Plan, usize, usize, usize),
) {
    use ember_runtime::{Pool, Session};
    use std::sync::Arc;
    let model = Model::parse(AlignedBuf::from_bytes(bytes)).unwrap();
    let (_, dir) = ember_tests::minilm();
    let ev = npz::read_npz(&dir.join("eval.npz")).unwrap();
    let (inputs, _) = exec::check_inputs(&exec::model_inputs(&model), &ev, "eval").unwrap();
    for batch in [1usize, 8] {
        let rows: Vec<usize> = (0..batch).collect();
        let bufs: Vec<Vec<u8>> =
            model.inputs.iter().map(|s| inputs[&s.name].take_rows(&rows).to_le_bytes()).collect();
        let refs: Vec<&[u8]> = bufs.iter().map(|v| v.as_slice()).collect();
        for threads in [1, 2] {
            let run = |as_written: bool| {
                let mut s = Session::new(&model, batch).unwrap();
                s.set_pool(Arc::new(Pool::new(threads).unwrap())).unwrap();
                s.run_as_written(as_written);
                let mut ran = 0;
                s.run_with(&refs, |_, _| ran += 1).unwrap();
                let outs: Vec<Vec<u8>> =
                    (0..model.outputs.len()).map(|i| s.output(i).to_vec()).collect();
                (outs, ran)
            };
            let (want, all) = run(true);
            let (got, ran) = run(false);
            assert!(got == want, "batch {batch}, {threads} threads: the CPU schedule differs");
            check(&model.plans[model.plan_index(batch).unwrap()], batch, all, ran);
        }
    }
}
