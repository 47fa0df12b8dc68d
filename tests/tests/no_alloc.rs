//! `Session::run` performs no heap allocation: proven with a counting global allocator over the
//! demo model (INT8 linear layers, row-wise embeddings, concat, float ops) and the DLRM oracle
//! case (batched MatMul, transpose). Neither does a request through the `Batcher` in steady state
//! (submitted from several threads, batched, answered).

use ember_quantize::npz;
use ember_runtime::{AlignedBuf, Model, Session};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Whether the model had row-wise tables (and so ran through row caches too).
fn check(onnx: &[u8], calib: &std::path::Path, batch: usize) -> bool {
    check_with(onnx, calib, ember_quantize::Options { batches: vec![batch], ..Default::default() })
}

fn check_with(onnx: &[u8], calib: &std::path::Path, opts: ember_quantize::Options) -> bool {
    let batch = opts.batches[0];
    let calib = npz::read_npz(calib).unwrap();
    let (bytes, _) = ember_quantize::quantize(onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
    let model = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
    let mut s = Session::new(&model, batch).unwrap();
    let rows: Vec<usize> = (0..batch).collect();
    let bufs: Vec<Vec<u8>> =
        model.inputs.iter().map(|sig| calib[&sig.name].take_rows(&rows).to_le_bytes()).collect();
    let refs: Vec<&[u8]> = bufs.iter().map(|v| v.as_slice()).collect();
    s.run(&refs).unwrap();
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..50 {
        s.run(&refs).unwrap();
    }
    let after = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(after - before, 0, "Session::run allocated {} times in 50 runs", after - before);
    assert!(s.output_f32(0).unwrap().iter().all(|v| v.is_finite()));
    // Through hot-row caches too (a 1 KiB budget: every row-wise table gets one, and misses).
    let mut c = Session::new(&model, batch).unwrap();
    let cfg = ember_runtime::RowCacheConfig { bytes: 1 << 10, ..Default::default() };
    let cached = !c.set_row_cache(cfg).unwrap().is_empty();
    if cached {
        c.run(&refs).unwrap();
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..50 {
            c.run(&refs).unwrap();
        }
        let n = ALLOCS.load(Ordering::SeqCst) - before;
        assert_eq!(n, 0, "Session::run with row caches allocated {n} times in 50 runs");
        assert_eq!(c.output(0), s.output(0), "cached rows give the same outputs");
    }
    cached
}

/// The tests of this binary count every allocation in the process: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn run_does_not_allocate() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../host-tools/demo");
    let cached = check(
        &std::fs::read(format!("{demo}/model.onnx")).unwrap(),
        std::path::Path::new(&format!("{demo}/calib.npz")),
        8,
    );
    assert!(cached, "the demo model's row-wise embeddings ran through row caches");
    let dlrm = ember_tests::case("dlrm");
    let _ = check(&std::fs::read(dlrm.join("model.onnx")).unwrap(), &dlrm.join("calib.npz"), 4);
    // The wider Linear types: dynamic per-row INT8 and f16 weights.
    let all = vec!["all".to_string()];
    for opts in [
        ember_quantize::Options {
            batches: vec![4],
            dynamic_layers: all.clone(),
            ..Default::default()
        },
        ember_quantize::Options { batches: vec![4], f16_layers: all.clone(), ..Default::default() },
    ] {
        let _ = check_with(
            &std::fs::read(dlrm.join("model.onnx")).unwrap(),
            &dlrm.join("calib.npz"),
            opts,
        );
    }
}

#[test]
fn batcher_requests_do_not_allocate() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../host-tools/demo");
    let onnx = std::fs::read(format!("{demo}/model.onnx")).unwrap();
    let calib = npz::read_npz(std::path::Path::new(&format!("{demo}/calib.npz"))).unwrap();
    let opts = ember_quantize::Options { batches: vec![1, 4, 8], ..Default::default() };
    let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
    let model = std::sync::Arc::new(Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap());
    let x: Vec<Vec<u8>> =
        model.inputs.iter().map(|s| calib[&s.name].take_rows(&[3]).to_le_bytes()).collect();
    for policy in [ember_runtime::Policy::Pad, ember_runtime::Policy::Split] {
        let cfg = ember_runtime::BatcherConfig {
            max_wait: std::time::Duration::from_micros(200),
            queue: 64,
            policy,
            sizes: vec![],
            threads: 2,
            device: None,
            model_path: None,
            row_cache: None,
        };
        let b = ember_runtime::Batcher::new(model.clone(), cfg).unwrap();
        let start = std::sync::Barrier::new(4);
        let (before, after) = std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let refs: Vec<&[u8]> = x.iter().map(|v| v.as_slice()).collect();
                    let mut out = vec![0u8; b.output_lens()[0]];
                    // Warm-up: the first requests may touch lazily created runtime state.
                    for _ in 0..20 {
                        b.infer(&refs, &mut [&mut out]).unwrap();
                    }
                    start.wait();
                    for _ in 0..300 {
                        b.infer(&refs, &mut [&mut out]).unwrap();
                    }
                    start.wait();
                });
            }
            start.wait();
            let before = ALLOCS.load(Ordering::SeqCst);
            start.wait();
            (before, ALLOCS.load(Ordering::SeqCst))
        });
        assert_eq!(
            after - before,
            0,
            "{policy:?}: 900 batched requests allocated {} times",
            after - before
        );
        assert_eq!(b.stats().completed, 960);
    }
}
