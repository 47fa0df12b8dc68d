//! The batcher on the demo model (plans for batch 1, 4 and 8): answers from many threads equal
//! the model's answers sample by sample, `max_wait` and the policies decide the batches,
//! backpressure is immediate, one bad sample does not fail its batch mates, shutdown drains.

use ember_quantize::npz;
use ember_runtime::{
    AlignedBuf, BatchError, Batcher, BatcherConfig, Error, Model, Policy, Session,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../host-tools/demo");

fn demo_model() -> Arc<Model<AlignedBuf>> {
    let onnx = std::fs::read(format!("{DEMO}/model.onnx")).unwrap();
    let calib = npz::read_npz(std::path::Path::new(&format!("{DEMO}/calib.npz"))).unwrap();
    let opts = ember_quantize::Options { batches: vec![1, 4, 8], ..Default::default() };
    let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
    Arc::new(Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap())
}

/// Per-sample input bytes of the first `n` evaluation samples, in signature order.
fn samples(model: &Model<AlignedBuf>, n: usize) -> Vec<Vec<Vec<u8>>> {
    let eval = npz::read_npz(std::path::Path::new(&format!("{DEMO}/eval.npz"))).unwrap();
    (0..n)
        .map(|i| model.inputs.iter().map(|s| eval[&s.name].take_rows(&[i]).to_le_bytes()).collect())
        .collect()
}

/// The model's answer for each sample, run alone in the batch-1 plan.
fn reference(model: &Model<AlignedBuf>, xs: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let mut s = Session::new(model, 1).unwrap();
    xs.iter()
        .map(|x| {
            let refs: Vec<&[u8]> = x.iter().map(|v| v.as_slice()).collect();
            s.run(&refs).unwrap();
            s.output(0).to_vec()
        })
        .collect()
}

fn refs(x: &[Vec<u8>]) -> Vec<&[u8]> {
    x.iter().map(|v| v.as_slice()).collect()
}

fn cfg(policy: Policy, max_wait_us: u64, queue: usize) -> BatcherConfig {
    BatcherConfig {
        max_wait: Duration::from_micros(max_wait_us),
        queue,
        policy,
        sizes: vec![],
        threads: 1,
        device: None,
        model_path: None,
        row_cache: None,
    }
}

#[test]
fn many_threads_get_their_own_answers() {
    let model = demo_model();
    assert_eq!(model.outputs.len(), 1);
    let xs = Arc::new(samples(&model, 64));
    let want = Arc::new(reference(&model, &xs));
    for policy in [Policy::Pad, Policy::Split] {
        let b = Arc::new(Batcher::new(model.clone(), cfg(policy, 300, 64)).unwrap());
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let (b, xs, want) = (b.clone(), xs.clone(), want.clone());
                std::thread::spawn(move || {
                    let mut out = vec![0u8; b.output_lens()[0]];
                    for k in 0..120 {
                        let i = (k * 7 + t * 13) % xs.len();
                        b.infer(&refs(&xs[i]), &mut [&mut out]).unwrap();
                        assert_eq!(out, want[i], "{policy:?}: sample {i} answered wrongly");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = b.stats();
        assert_eq!((st.accepted, st.completed, st.failed, st.rejected), (720, 720, 0, 0));
        assert_eq!(b.latency().snapshot().count(), 720);
        // Six concurrent callers must have been batched together at least sometimes.
        let batched: u64 = st.per_size.iter().filter(|p| p.0 > 1).map(|p| p.1).sum();
        assert!(batched > 0, "{policy:?}: never batched: {st:?}");
        assert_eq!(st.samples_run, 720);
        assert_eq!(st.depth, 0);
    }
}

#[test]
fn max_wait_pads_a_short_queue_and_backpressure_is_immediate() {
    let model = demo_model();
    let xs = samples(&model, 3);
    let want = reference(&model, &xs);
    let b = Batcher::new(model, cfg(Policy::Pad, 300_000, 2)).unwrap();
    let t0 = Instant::now();
    let p0 = b.submit(&refs(&xs[0])).unwrap();
    let p1 = b.submit(&refs(&xs[1])).unwrap();
    // p1 waits max_wait less the time between the two submissions (a stall of the test thread
    // under emulation must not fail the latency check below).
    let gap = t0.elapsed();
    let full = b.submit(&refs(&xs[2]));
    assert!(matches!(full, Err(BatchError::QueueFull { capacity: 2 })), "{:?}", full.err());
    assert!(t0.elapsed() < Duration::from_millis(250), "QueueFull was not immediate");
    let (mut o0, mut o1) = (vec![0u8; 4], vec![0u8; 4]);
    let l1 = p1.wait(&mut [&mut o1]).unwrap();
    let l0 = p0.wait(&mut [&mut o0]).unwrap();
    assert_eq!((&o0, &o1), (&want[0], &want[1]));
    // Two requests never fill the largest batch: they ran together once the oldest had waited
    // max_wait, in the smallest plan that holds two (4, padded).
    assert!(l0 >= Duration::from_millis(300) && l0 < Duration::from_secs(5), "latency {l0:?}");
    assert!(
        l1 + gap >= Duration::from_millis(300) && l1 < Duration::from_secs(5),
        "latency {l1:?} ({gap:?} after the first)"
    );
    let st = b.stats();
    assert_eq!(
        st.per_size.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        [(1, 0), (4, 1), (8, 0)]
    );
    assert_eq!((st.samples_run, st.rows_run, st.rejected), (2, 4, 1));
    assert!((st.fill_ratio() - 0.5).abs() < 1e-9);
    // The slots are free again.
    let mut o = vec![0u8; 4];
    b.infer(&refs(&xs[2]), &mut [&mut o]).unwrap();
    assert_eq!(o, want[2]);
}

#[test]
fn a_full_batch_runs_without_waiting() {
    let model = demo_model();
    let xs = samples(&model, 8);
    let b = Batcher::new(model, cfg(Policy::Pad, 10_000_000, 8)).unwrap();
    let t0 = Instant::now();
    let ps: Vec<_> = xs.iter().map(|x| b.submit(&refs(x)).unwrap()).collect();
    for p in ps {
        p.wait(&mut [&mut [0u8; 4]]).unwrap();
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "a full batch waited for max_wait");
    let st = b.stats();
    assert_eq!(st.per_size[2], (8, 1, st.per_size[2].2));
}

#[test]
fn a_bad_sample_fails_alone() {
    let model = demo_model();
    let mut xs = samples(&model, 4);
    let want = reference(&model, &xs);
    let user = model.inputs.iter().position(|s| s.name == "user").unwrap();
    xs[2][user] = 1_000_000_000i64.to_le_bytes().to_vec();
    let b = Batcher::new(model, cfg(Policy::Pad, 100_000, 8)).unwrap();
    let ps: Vec<_> = xs.iter().map(|x| b.submit(&refs(x)).unwrap()).collect();
    for (i, p) in ps.into_iter().enumerate() {
        let mut o = vec![0u8; 4];
        let r = p.wait(&mut [&mut o]);
        if i == 2 {
            assert!(
                matches!(
                    r,
                    Err(BatchError::Run(Error::IndexOutOfRange { index: 1_000_000_000, .. }))
                ),
                "{r:?}"
            );
        } else {
            r.unwrap();
            assert_eq!(o, want[i], "sample {i}");
        }
    }
    assert_eq!(b.stats().failed, 1);
}

#[test]
fn wrong_buffers_are_named() {
    let model = demo_model();
    let xs = samples(&model, 1);
    let b = Batcher::new(model.clone(), cfg(Policy::Pad, 100, 4)).unwrap();
    let r = b.submit(&refs(&xs[0])[..1]).err();
    assert!(matches!(r, Some(BatchError::Count { what: "input", .. })), "{r:?}");
    let mut x = xs[0].clone();
    x[0].push(0);
    let r = b.submit(&refs(&x)).err();
    assert!(matches!(r, Some(BatchError::Size { what: "input", index: 0, .. })), "{r:?}");
    let r = b.infer(&refs(&xs[0]), &mut [&mut [0u8; 3]]);
    assert!(matches!(r, Err(BatchError::Size { what: "output", .. })), "{r:?}");
    // Abandoned and mis-waited requests give their slots back.
    let mut dropped = 0;
    while dropped < 20 {
        match b.submit(&refs(&xs[0])) {
            Ok(p) => {
                drop(p);
                dropped += 1;
            }
            Err(BatchError::QueueFull { .. }) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    let t0 = Instant::now();
    while b.stats().depth > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "abandoned requests never finished");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Every slot is free: the whole queue can be taken at once.
    let held: Vec<_> = (0..4).map(|_| b.submit(&refs(&xs[0])).unwrap()).collect();
    for p in held {
        p.wait(&mut [&mut [0u8; 4]]).unwrap();
    }
    let bad = BatcherConfig { sizes: vec![2], ..cfg(Policy::Pad, 100, 4) };
    let e = Batcher::new(model, bad).err().unwrap();
    assert!(e.to_string().contains("batch size 2 is not compiled"), "{e}");
}

#[test]
fn shutdown_answers_every_accepted_request() {
    let model = demo_model();
    let xs = Arc::new(samples(&model, 16));
    let want = Arc::new(reference(&model, &xs));
    let b = Arc::new(Batcher::new(model, cfg(Policy::Split, 2_000, 32)).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (b, xs, want) = (b.clone(), xs.clone(), want.clone());
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0u64, 0u64);
                for k in 0.. {
                    let i = (k + t) % xs.len();
                    match b.submit(&refs(&xs[i])) {
                        Ok(p) => {
                            let mut o = vec![0u8; 4];
                            p.wait(&mut [&mut o]).unwrap();
                            assert_eq!(o, want[i]);
                            ok += 1;
                        }
                        Err(BatchError::ShuttingDown) => break,
                        Err(BatchError::QueueFull { .. }) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    b.shutdown();
    let (mut ok, mut refused) = (0, 0);
    for t in threads {
        let (o, r) = t.join().unwrap();
        ok += o;
        refused += r;
    }
    let st = b.stats();
    assert!(ok > 0);
    assert_eq!((st.accepted, st.completed, st.rejected), (ok, ok, refused));
    assert!(matches!(b.submit(&refs(&xs[0])).err(), Some(BatchError::ShuttingDown)));
}
