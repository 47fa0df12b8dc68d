//! The `.ember` reader against corrupt, truncated and forged files: every one is rejected with an
//! error naming the problem, and nothing panics, at load or at run.

use ember_quantize::npz;
use ember_runtime::format::writer::{PlanSpec, SigSpec, Writer};
use ember_runtime::format::*;
use ember_runtime::{AlignedBuf, DType, Error, Model, Pool, Session};
use ember_tests::{reseal, sections, Rng};
use std::sync::Arc;

const DEMO_ONNX: &[u8] = include_bytes!("../../host-tools/demo/model.onnx");

fn demo_file() -> Vec<u8> {
    let calib = npz::read_npz(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../host-tools/demo/calib.npz"
    )))
    .unwrap();
    let opts = ember_quantize::Options { batches: vec![1, 4], ..Default::default() };
    ember_quantize::quantize(DEMO_ONNX, &calib, &opts, &mut |_, _, _| {}).unwrap().0
}

fn parse(b: &[u8]) -> Result<Model<AlignedBuf>, Error> {
    Model::parse(AlignedBuf::from_bytes(b))
}

/// Parses, and when the file is accepted, runs every plan on arbitrary inputs: must not panic.
fn parse_and_run(b: &[u8], rng: &mut Rng) {
    parse_and_run_on(b, rng, &[(None, false)]);
}

/// [`parse_and_run`] once per `(pool, as_written)`: on the pool's threads (one without), by
/// the CPU schedule or by the plan as written.
fn parse_and_run_on(b: &[u8], rng: &mut Rng, ways: &[(Option<&Arc<Pool>>, bool)]) {
    let Ok(m) = parse(b) else { return };
    for batch in m.batch_sizes() {
        for (pool, as_written) in ways {
            let Ok(mut s) = Session::new(&m, batch) else { continue };
            if let Some(p) = pool {
                s.set_pool(Arc::clone(p)).unwrap();
            }
            s.run_as_written(*as_written);
            let inputs: Vec<Vec<u8>> = (0..m.inputs.len())
                .map(|i| (0..s.input_len(i)).map(|_| rng.below(4) as u8).collect())
                .collect();
            let refs: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
            let _ = s.run(&refs);
        }
    }
}

#[test]
fn valid_file_round_trips() {
    let b = demo_file();
    let m = parse(&b).expect("valid file");
    assert_eq!(m.batch_sizes(), vec![1, 4]);
    assert_eq!(
        m.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["user", "movie", "dense"]
    );
    assert!(m.tensors.iter().any(|t| t.dtype == DType::I8));
}

#[test]
fn truncation_anywhere_is_an_error() {
    let b = demo_file();
    let mut cuts: Vec<usize> = (0..4096.min(b.len())).collect();
    for (_, off, len) in sections(&b) {
        for d in [0usize, 1, 7, 63] {
            cuts.extend([off.saturating_sub(d), off + d, (off + len).saturating_sub(d)]);
        }
    }
    let mut rng = Rng::new(1);
    cuts.extend((0..300).map(|_| rng.below(b.len())));
    for c in cuts.into_iter().filter(|c| *c < b.len()) {
        let e = parse(&b[..c])
            .err()
            .unwrap_or_else(|| panic!("truncated at {c} of {} was accepted", b.len()));
        let msg = e.to_string();
        assert!(
            msg.contains("truncated") || msg.contains("magic") || msg.contains("bad"),
            "cut {c}: {msg}"
        );
    }
}

#[test]
fn bit_flips_are_caught() {
    let b = demo_file();
    let mut rng = Rng::new(2);
    for i in 0..3000 {
        let mut x = b.clone();
        let pos = if i < 1024 { i } else { rng.below(x.len()) };
        x[pos] ^= 1 << rng.below(8);
        assert!(parse(&x).is_err(), "flip at byte {pos} was not detected");
    }
}

#[test]
fn resealed_random_mutations_never_panic() {
    // Checksums recomputed after editing, so the structural validation is what stands.
    let b = demo_file();
    let meta: Vec<(u32, usize, usize)> =
        sections(&b).into_iter().filter(|s| s.0 != SectionKind::Data as u32).collect();
    let mut rng = Rng::new(3);
    for _ in 0..4000 {
        let mut x = b.clone();
        for _ in 0..1 + rng.below(4) {
            let (_, off, len) = meta[rng.below(meta.len())];
            let p =
                if rng.below(4) == 0 { rng.below(off + len) } else { off + rng.below(len.max(1)) };
            match rng.below(3) {
                0 => x[p] ^= 1 << rng.below(8),
                1 => x[p] = 0xFF,
                _ => x[p] = x[p].wrapping_add(1),
            }
        }
        reseal(&mut x);
        parse_and_run(&x, &mut rng);
    }
}

/// The oracle's attention block quantized three ways (INT8 with float attention, INT8 with
/// INT8 attention matmuls, INT4 in groups of 4: its hidden size is 8), its plans' records
/// edited at random and resealed: whatever parses runs on one thread and on two, by the CPU
/// schedule (fused attention, folded head shuffles, codes handed between linears, its own
/// arena) and as written, without a panic.
#[test]
fn resealed_mutations_of_an_attention_block_never_panic() {
    let case = ember_tests::case("bert_block");
    let onnx = std::fs::read(case.join("model.onnx")).unwrap();
    let calib = npz::read_npz(&case.join("calib.npz")).unwrap();
    let pool = Arc::new(Pool::new(2).unwrap());
    let ways = [(None, false), (Some(&pool), false), (None, true)];
    for (seed, bits, act_matmul) in [(5u64, 8, false), (6, 8, true), (7, 4, false)] {
        let opts = ember_quantize::Options {
            batches: vec![1, 2],
            bits,
            group: 4,
            int8_act_matmul: act_matmul,
            ..Default::default()
        };
        let b = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap().0;
        // The schedule has something to rewrite: a fused attention or folded matmuls.
        let m = parse(&b).unwrap();
        let p = &m.plans[0];
        assert!(
            (0..p.records.len()).any(|i| p.attention_on_cpu(i) || p.handoff_on_cpu(i).0)
                || act_matmul,
            "{bits} bits: nothing fused"
        );
        let int4 = [OpCode::LinearI4 as u16, OpCode::LinearI4M as u16];
        assert_eq!(p.records.iter().any(|r| int4.contains(&r.opcode)), bits == 4, "{bits} bits");
        // The plans' records (ops, values, parameters) are what the schedule reads: three
        // edits in four go there, the rest anywhere outside the weights.
        let meta: Vec<(u32, usize, usize)> =
            sections(&b).into_iter().filter(|s| s.0 != SectionKind::Data as u32).collect();
        let plans: Vec<(u32, usize, usize)> =
            meta.iter().copied().filter(|s| s.0 == SectionKind::Plan as u32).collect();
        let mut rng = Rng::new(seed);
        // Fewer under emulation (the cross-compiled suite runs under qemu; the schedule's
        // logic is the same on every target).
        let edits = if cfg!(target_arch = "x86_64") { 2000 } else { 500 };
        for _ in 0..edits {
            let mut x = b.clone();
            for _ in 0..1 + rng.below(3) {
                let from = if rng.below(4) == 0 { &meta } else { &plans };
                let (_, off, len) = from[rng.below(from.len())];
                let p = off + rng.below(len.max(1));
                match rng.below(3) {
                    0 => x[p] ^= 1 << rng.below(8),
                    1 => x[p] = 0xFF,
                    _ => x[p] = x[p].wrapping_add(1),
                }
            }
            reseal(&mut x);
            parse_and_run_on(&x, &mut rng, &ways);
        }
    }
}

/// An arena value record of `dims` at `off`.
fn value_record(dt: DType, dims: &[u32], off: u64) -> ValueRecord {
    let mut d = [0; MAX_RANK];
    d[..dims.len()].copy_from_slice(dims);
    ValueRecord {
        dtype: dt as u32,
        rank: dims.len() as u32,
        dims: d,
        offset: off,
        nbytes: dims.iter().product::<u32>() as u64 * dt.size() as u64,
    }
}

/// An op record with one output.
fn op_record(code: OpCode, ins: &[u32], out: u32, params: &[u32]) -> OpRecord {
    let mut r = OpRecord {
        opcode: code as u16,
        n_inputs: ins.len() as u8,
        n_outputs: 1,
        ..Default::default()
    };
    r.inputs[..ins.len()].copy_from_slice(ins);
    r.outputs[0] = out;
    r.params[..params.len()].copy_from_slice(params);
    r
}

/// A small hand-written model: x f32 [B,4] → Linear(3) → Relu, and Gather of an embedding row.
fn small(edit: impl FnOnce(&mut Writer, &mut PlanSpec, &mut Vec<u32>)) -> Vec<u8> {
    let mut w = Writer::new();
    let wt: Vec<u8> = (0..12).flat_map(|i| (i as f32 * 0.1).to_le_bytes()).collect();
    let tw = w.tensor("w", DType::F32, &[3, 4], TensorRole::Plain, REF_NONE, &wt);
    let emb: Vec<u8> = (0..10).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let te = w.tensor("emb", DType::F32, &[5, 2], TensorRole::Plain, REF_NONE, &emb);
    w.input(SigSpec { name: "x".into(), dtype: DType::F32, dims: vec![4] });
    w.input(SigSpec { name: "id".into(), dtype: DType::I64, dims: vec![] });
    w.output(SigSpec { name: "y".into(), dtype: DType::F32, dims: vec![3] });
    w.output(SigSpec { name: "e".into(), dtype: DType::F32, dims: vec![2] });
    let (v, op) = (value_record, op_record);
    let mut p = PlanSpec {
        batch: 2,
        arena_size: 384,
        inputs: vec![0, 1],
        outputs: vec![3, 4],
        values: vec![
            v(DType::F32, &[2, 4], 0),
            v(DType::I64, &[2], 64),
            v(DType::F32, &[2, 3], 128),
            v(DType::F32, &[2, 3], 192),
            v(DType::F32, &[2, 2], 256),
        ],
        ops: vec![
            op(OpCode::LinearF32, &[0, tw, REF_NONE], 2, &[2, 4, 3, 0]),
            op(OpCode::Unary, &[2], 3, &[0]),
            op(OpCode::Gather, &[te, 1], 4, &[0]),
        ],
    };
    let mut extra = vec![];
    edit(&mut w, &mut p, &mut extra);
    w.plan(p);
    w.finish()
}

fn expect_err(b: &[u8], needle: &str) {
    match parse(b) {
        Ok(_) => panic!("forged file accepted (expected an error containing '{needle}')"),
        Err(e) => {
            assert!(e.to_string().contains(needle), "error '{e}' does not mention '{needle}'")
        }
    }
}

#[test]
fn hand_written_model_runs_and_checks_indices_at_run_time() {
    let b = small(|_, _, _| {});
    let m = parse(&b).unwrap();
    let mut s = Session::new(&m, 2).unwrap();
    let x: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let ids: Vec<u8> = [4i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    s.run(&[&x, &ids]).unwrap();
    // Row n of w is [0.4n, 0.4n+0.1, 0.4n+0.2, 0.4n+0.3]; the second sample's outputs are negative.
    let y = s.output_f32(0).unwrap();
    for (g, w) in y.iter().zip([2.0f32, 6.0, 10.0, 0.0, 0.0, 0.0]) {
        assert!((g - w).abs() < 1e-5, "{y:?}");
    }
    assert_eq!(s.output_f32(1).unwrap(), &[8.0, 9.0, 8.0, 9.0]);
    let bad: Vec<u8> = [5i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(s.run(&[&x, &bad]), Err(Error::IndexOutOfRange { op: 2, index: 5, bound: 5 }));
    assert!(matches!(s.run(&[&x]), Err(Error::InputCount { .. })));
    assert!(matches!(s.run(&[&x[..4], &ids]), Err(Error::InputSize { .. })));
    assert!(matches!(Session::new(&m, 3), Err(Error::NoSuchPlan { batch: 3 })));
}

#[test]
fn forged_structures_are_rejected_with_a_named_problem() {
    expect_err(&small(|_, p, _| p.values[2].offset = 1024), "overruns the arena");
    expect_err(&small(|_, p, _| p.values[2].offset = 100), "misaligned");
    expect_err(&small(|_, p, _| p.arena_size = 1 << 40), "exceeds the cap");
    expect_err(&small(|_, p, _| p.ops[0].inputs[0] = 3), "before it is defined");
    expect_err(&small(|_, p, _| p.ops.swap(0, 1)), "before it is defined");
    expect_err(&small(|_, p, _| p.ops[1].outputs[0] = 2), "already defined");
    expect_err(&small(|_, p, _| p.values[3].offset = 128), "overwrites live value");
    expect_err(&small(|_, p, _| p.values[2].offset = 0), "overwrites live value");
    expect_err(&small(|_, p, _| p.ops[0].opcode = 99), "unknown opcode");
    expect_err(&small(|_, p, _| p.ops[0].params[2] = 5), "weights are");
    expect_err(&small(|_, p, _| p.ops[0].inputs[1] = REF_TENSOR | 77), "does not exist");
    expect_err(&small(|_, p, _| p.ops[2].params[0] = 3), "axis");
    expect_err(&small(|_, p, _| p.ops[1].params[0] = 9), "unknown unary");
    expect_err(&small(|_, p, _| p.ops[0].params[3] = 7), "unknown activation");
    expect_err(&small(|_, p, _| p.values[2].dims[1] = u32::MAX), "absurdly large");
    expect_err(&small(|_, p, _| p.values[2].dtype = 42), "unknown dtype");
    expect_err(
        &small(|_, p, _| {
            p.values[0].dims[1] = 5;
            p.values[0].nbytes = 40;
        }),
        "signature",
    );
    expect_err(&small(|_, p, _| p.outputs[0] = 9), "out of range");
    expect_err(&small(|_, p, _| p.batch = 0), "batch size");
    expect_err(&small(|_, p, _| p.ops.clear()), "caps");
    expect_err(&small(|w, _, _| w.plan(PlanSpec { batch: 2, ..Default::default() })), "");
}

#[test]
fn forged_header_and_tables_are_rejected() {
    let good = small(|_, _, _| {});
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(parse(&b).err(), Some(Error::BadMagic));
    let mut b = good.clone();
    b[8] = 2;
    reseal(&mut b);
    assert_eq!(parse(&b).err(), Some(Error::UnsupportedVersion(2)));
    // Huge counts: the TENSORS section claims a million tensors.
    let mut b = good.clone();
    let (_, off, _) =
        sections(&b).into_iter().find(|s| s.0 == SectionKind::Tensors as u32).unwrap();
    b[off..off + 4].copy_from_slice(&(1u32 << 20).to_le_bytes());
    reseal(&mut b);
    expect_err(&b, "tensor count");
    // Two tensors forged onto the same bytes.
    let mut b = good.clone();
    let rec2 = off + 8 + TENSOR_RECORD_LEN;
    b[rec2 + 40..rec2 + 48].copy_from_slice(&0u64.to_le_bytes());
    b[rec2 + 12..rec2 + 16].copy_from_slice(&0u32.to_le_bytes());
    reseal(&mut b);
    expect_err(&b, "overlap");
    // A section moved off its 64-byte alignment.
    let mut b = good.clone();
    let e = 64 + 32;
    let o = u64::from_le_bytes(b[e + 8..e + 16].try_into().unwrap());
    b[e + 8..e + 16].copy_from_slice(&(o + 8).to_le_bytes());
    reseal(&mut b);
    expect_err(&b, "aligned");
    // Section count beyond the cap.
    let mut b = good.clone();
    b[12..16].copy_from_slice(&1000u32.to_le_bytes());
    reseal(&mut b);
    assert!(parse(&b).is_err());
    // Extra bytes after the end.
    let mut b = good;
    b.push(0);
    expect_err(&b, "file_size");
}

/// x f32 [2,4] → LinearI4 (3 outputs, group 4) and ids → GatherRowsI4 (5 rows of 4, group 2).
fn small_i4(edit: impl FnOnce(&mut PlanSpec)) -> Vec<u8> {
    use ember_kernels::pack;
    let mut w = Writer::new();
    let (n, k, group) = (3usize, 4usize, 4usize);
    let q: [i8; 12] = [1, -1, 2, 0, 0, 0, 0, 0, 7, -8, 1, 1];
    let mut packed = vec![0u8; pack::k4n16_i4_len(n, k)];
    pack::pack_k4n16_i4(&q, n, k, &mut packed);
    let sums: Vec<i32> = q.chunks(k).map(|r| r.iter().map(|v| *v as i32).sum()).collect();
    let half = half::f16::from_f32(0.5).to_bits();
    let (mut gsum, mut gscale) = (vec![0i32; 16], vec![0u16; 16]);
    pack::panel_groups(&sums, n, 1, &mut gsum);
    pack::panel_groups(&[half; 3], n, 1, &mut gscale);
    let qp = TensorRole::QuantParam;
    let b = |v: &[u8]| v.to_vec();
    let ts =
        w.tensor("gscale", DType::F16, &[1, 16], qp, REF_NONE, &b(bytemuck::cast_slice(&gscale)));
    let tw = w.tensor("w_i4", DType::U8, &[1, 32], TensorRole::WeightI4Grouped, ts, &packed);
    let tg = w.tensor("gsum", DType::I32, &[1, 16], qp, REF_NONE, &b(bytemuck::cast_slice(&gsum)));
    let tb = w.tensor("bias", DType::F32, &[3], qp, REF_NONE, &[0u8; 12]);
    // Embedding rows r = [r, r+1, r+2, r+3] exactly: codes 0..3 with scale 1, offset r.
    let table: Vec<u8> = (0..5).flat_map(|_| [0x10u8, 0x32]).collect();
    let one = half::f16::from_f32(1.0).to_bits();
    let scales: Vec<u16> = vec![one; 10];
    let offs: Vec<u16> = (0..5)
        .flat_map(|r| [r as f32, r as f32 + 2.0])
        .map(|v| half::f16::from_f32(v).to_bits())
        .collect();
    let te =
        w.tensor("emb_i4", DType::U8, &[5, 2], TensorRole::EmbeddingI4Grouped, REF_NONE, &table);
    let tes =
        w.tensor("emb_s", DType::F16, &[5, 2], qp, REF_NONE, &b(bytemuck::cast_slice(&scales)));
    let teb = w.tensor("emb_b", DType::F16, &[5, 2], qp, REF_NONE, &b(bytemuck::cast_slice(&offs)));
    w.input(SigSpec { name: "x".into(), dtype: DType::F32, dims: vec![4] });
    w.input(SigSpec { name: "id".into(), dtype: DType::I64, dims: vec![] });
    w.output(SigSpec { name: "y".into(), dtype: DType::F32, dims: vec![3] });
    w.output(SigSpec { name: "e".into(), dtype: DType::F32, dims: vec![4] });
    let (v, op) = (value_record, op_record);
    let mut p = PlanSpec {
        batch: 2,
        arena_size: 256,
        inputs: vec![0, 1],
        outputs: vec![2, 3],
        values: vec![
            v(DType::F32, &[2, 4], 0),
            v(DType::I64, &[2], 64),
            v(DType::F32, &[2, 3], 128),
            v(DType::F32, &[2, 4], 192),
        ],
        ops: vec![
            op(
                OpCode::LinearI4,
                &[0, tw, tg, ts, tb, REF_NONE],
                2,
                &[2, 4, 3, 0, 1f32.to_bits(), 0, 2, group as u32],
            ),
            op(OpCode::GatherRowsI4, &[te, tes, teb, 1], 3, &[2]),
        ],
    };
    edit(&mut p);
    w.plan(p);
    w.finish()
}

#[test]
fn int4_ops_run_and_forged_int4_records_are_rejected() {
    let b = small_i4(|_| {});
    let m = parse(&b).unwrap();
    let mut s = Session::new(&m, 2).unwrap();
    let x: Vec<u8> =
        [1.0f32, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let ids: Vec<u8> = [4i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    s.run(&[&x, &ids]).unwrap();
    // 0.5·(1 − 2 + 6 + 0), 0, 0.5·(7 − 16 + 3 + 4); the zero row gives zeros.
    assert_eq!(s.output_f32(0).unwrap(), &[2.5, 0.0, -1.0, 0.0, 0.0, 0.0]);
    assert_eq!(s.output_f32(1).unwrap(), &[4.0, 5.0, 8.0, 9.0, 1.0, 2.0, 5.0, 6.0]);
    let bad: Vec<u8> = [5i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(matches!(s.run(&[&x, &bad]), Err(Error::IndexOutOfRange { op: 1, index: 5, .. })));
    expect_err(&small_i4(|p| p.ops[0].params[7] = 3), "group 3 must be a multiple of 4");
    expect_err(&small_i4(|p| p.ops[0].params[7] = 8), "dividing K=4");
    expect_err(&small_i4(|p| p.ops[0].params[6] = 1), "unknown INT4 weight layout 1");
    expect_err(&small_i4(|p| p.ops[0].params[2] = 20), "packed weights are");
    expect_err(&small_i4(|p| p.ops[0].inputs.swap(2, 3)), "dtype");
    expect_err(&small_i4(|p| p.ops[0].params[4] = 0), "activation scale");
    expect_err(&small_i4(|p| p.ops[1].params[0] = 3), "group 3 does not divide");
    expect_err(&small_i4(|p| p.ops[1].params[0] = 4), "scales are");
}

/// x f32 [2,4] → LinearI4M (3 outputs, group 4, multipliers 2, 1, 3, column scales 0.25).
fn small_i4m(edit: impl FnOnce(&mut PlanSpec)) -> Vec<u8> {
    use ember_kernels::pack;
    let mut w = Writer::new();
    let (n, k) = (3usize, 4usize);
    let q: [i8; 12] = [1, -1, 2, 0, 0, 0, 0, 0, 7, -8, 1, 1];
    let mul = [2u8, 1, 3];
    let mut packed = vec![0u8; pack::k4n16_i4_len(n, k)];
    pack::pack_k4n16_i4(&q, n, k, &mut packed);
    let mut gmul = vec![0u8; 16];
    pack::panel_groups(&mul, n, 1, &mut gmul);
    let wsum: Vec<i32> =
        q.chunks(k).zip(mul).map(|(r, m)| r.iter().map(|v| *v as i32 * m as i32).sum()).collect();
    let qp = TensorRole::QuantParam;
    let b = |v: &[u8]| v.to_vec();
    let tsc =
        w.tensor("scale", DType::F32, &[3], qp, REF_NONE, &b(bytemuck::cast_slice(&[0.25f32; 3])));
    let tw = w.tensor("w_i4", DType::U8, &[1, 32], TensorRole::WeightI4Grouped, tsc, &packed);
    let tm = w.tensor("gmul", DType::U8, &[1, 16], qp, REF_NONE, &gmul);
    let tws = w.tensor("wsum", DType::I32, &[3], qp, REF_NONE, &b(bytemuck::cast_slice(&wsum)));
    let tb = w.tensor("bias", DType::F32, &[3], qp, REF_NONE, &[0u8; 12]);
    w.input(SigSpec { name: "x".into(), dtype: DType::F32, dims: vec![4] });
    w.output(SigSpec { name: "y".into(), dtype: DType::F32, dims: vec![3] });
    let mut p = PlanSpec {
        batch: 2,
        arena_size: 128,
        inputs: vec![0],
        outputs: vec![1],
        values: vec![value_record(DType::F32, &[2, 4], 0), value_record(DType::F32, &[2, 3], 64)],
        ops: vec![op_record(
            OpCode::LinearI4M,
            &[0, tw, tm, tws, tsc, tb, REF_NONE],
            1,
            &[2, 4, 3, 0, 1f32.to_bits(), 0, 2, 4],
        )],
    };
    edit(&mut p);
    w.plan(p);
    w.finish()
}

#[test]
fn int4_multiplier_op_runs_and_forged_records_are_rejected() {
    let b = small_i4m(|_| {});
    let m = parse(&b).unwrap();
    let mut s = Session::new(&m, 2).unwrap();
    let x: Vec<u8> =
        [1.0f32, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    s.run(&[&x]).unwrap();
    // 0.25·2·(1 − 2 + 6 + 0), 0, 0.25·3·(7 − 16 + 3 + 4); the zero row gives zeros.
    assert_eq!(s.output_f32(0).unwrap(), &[2.5, 0.0, -1.5, 0.0, 0.0, 0.0]);
    expect_err(&small_i4m(|p| p.ops[0].params[7] = 3), "group 3 must be a multiple of 4");
    expect_err(&small_i4m(|p| p.ops[0].params[6] = 1), "unknown INT4 weight layout 1");
    expect_err(&small_i4m(|p| p.ops[0].params[2] = 20), "packed weights are");
    expect_err(&small_i4m(|p| p.ops[0].inputs.swap(3, 4)), "dtype");
    expect_err(&small_i4m(|p| p.ops[0].inputs[2] = p.ops[0].inputs[3]), "group multipliers");
    expect_err(&small_i4m(|p| p.ops[0].n_inputs = 6), "expects 7 inputs");
    expect_err(&small_i4m(|p| p.ops[0].inputs[5] = REF_NONE), "input #5 is missing");
}
