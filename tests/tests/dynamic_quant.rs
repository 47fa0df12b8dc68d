//! The wider types a Linear can be kept in: dynamic per-row activation quantization
//! (`--dynamic`, each row of the input gets its own symmetric scale at run time) and f16 weights
//! (`--f16`). Checked against a direct simulation of the arithmetic on awkward sizes, against
//! static INT8 on rows of very different magnitudes, and for bad names.

use ember_quantize::{exec, quant, HostTensor, Options};
use ember_runtime::{AlignedBuf, Model};
use ember_tests::{onnx_build::*, Rng};
use std::collections::{BTreeMap, HashMap};

const K: usize = 37;
const N: usize = 19;

/// x f32 [B, K] → MatMul(W [K, N]) + b → Relu → y [B, N]
fn model_and_weights(rng: &mut Rng) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = (0..K * N).map(|_| rng.f32() - 0.5).collect();
    let b: Vec<f32> = (0..N).map(|_| (rng.f32() - 0.5) * 0.1).collect();
    let onnx = model(
        vec![
            node("MatMul", "fc", &["x", "W"], &["h"], vec![]),
            node("Add", "fc_bias", &["h", "B"], &["hb"], vec![]),
            node("Relu", "relu", &["hb"], &["y"], vec![]),
        ],
        vec![value("x", 1, &[-1, K as i64])],
        vec![value("y", 1, &[-1, N as i64])],
        vec![tensor_f32("W", &[K as i64, N as i64], &w), tensor_f32("B", &[N as i64], &b)],
    );
    (onnx, w, b)
}

/// Rows whose magnitudes span six decades.
fn rows(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|i| {
            let mag = 10f32.powi((i % 7) as i32 - 3);
            (0..K).map(|_| (rng.f32() - 0.5) * mag).collect::<Vec<_>>()
        })
        .collect()
}

fn run(bytes: &[u8], x: &[f32], n: usize) -> Vec<f32> {
    let m = Model::parse(AlignedBuf::from_bytes(bytes)).unwrap();
    let inputs = HashMap::from([("x".to_string(), HostTensor::f32(vec![n, K], x.to_vec()))]);
    exec::run_batched(&m, &inputs, n).unwrap()["y"].to_f32_vec()
}

fn quantize(onnx: &[u8], calib: &[f32], n: usize, dynamic: &[&str]) -> Result<Vec<u8>, String> {
    quantize_with(onnx, calib, n, |o| {
        o.dynamic_layers = dynamic.iter().map(|s| s.to_string()).collect()
    })
}

fn quantize_with(
    onnx: &[u8],
    calib: &[f32],
    n: usize,
    f: impl FnOnce(&mut Options),
) -> Result<Vec<u8>, String> {
    let c = BTreeMap::from([("x".to_string(), HostTensor::f32(vec![n, K], calib.to_vec()))]);
    let mut opts = Options { batches: vec![1, 8], ..Default::default() };
    f(&mut opts);
    ember_quantize::quantize(onnx, &c, &opts, &mut |_, _, _| {})
        .map(|r| r.0)
        .map_err(|e| e.to_string())
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn dynamic_rows_match_the_simulated_arithmetic_and_beat_static_on_mixed_magnitudes() {
    let mut rng = Rng::new(77);
    let (onnx, w, b) = model_and_weights(&mut rng);
    let calib = rows(&mut rng, 21);
    let dynamic = quantize(&onnx, &calib, 21, &["all"]).unwrap();
    let fixed = quantize(&onnx, &calib, 21, &[]).unwrap();
    let n = 33; // several batch-8 chunks and a padded one
    let x = rows(&mut rng, n);
    let (yd, ys) = (run(&dynamic, &x, n), run(&fixed, &x, n));

    // The same arithmetic written out: per-channel INT8 weights, per-row symmetric codes.
    let wt: Vec<f32> =
        (0..N).flat_map(|j| (0..K).map(move |p| (j, p))).map(|(j, p)| w[p * N + j]).collect();
    let qw = quant::quantize_weights(&wt, N, K);
    for i in 0..n {
        let xr = &x[i * K..(i + 1) * K];
        let amax = xr.iter().fold(0f32, |a, v| a.max(v.abs()));
        let s = amax / 127.0;
        let q: Vec<i32> = xr
            .iter()
            .map(|v| {
                ember_kernels::generic::round_half_even((v * (1.0 / s)).clamp(-127.0, 127.0)) as i32
            })
            .collect();
        let want: Vec<f32> = (0..N)
            .map(|j| {
                let acc: i32 =
                    q.iter().zip(&qw.q[j * K..(j + 1) * K]).map(|(a, b)| a * *b as i32).sum();
                (acc as f32 * qw.scale[j] * s + b[j]).max(0.0)
            })
            .collect();
        let got = &yd[i * N..(i + 1) * N];
        for (g, wv) in got.iter().zip(&want) {
            assert!((g - wv).abs() <= 1e-5 * (1.0 + wv.abs()), "row {i}: {got:?} vs {want:?}");
        }
        // Against float: every row keeps its own precision, whatever its magnitude.
        let fl: Vec<f32> = (0..N)
            .map(|j| {
                (xr.iter().zip(&wt[j * K..(j + 1) * K]).map(|(a, c)| a * c).sum::<f32>() + b[j])
                    .max(0.0)
            })
            .collect();
        let e = rel_err(got, &fl);
        let small = fl.iter().all(|v| v.abs() < 1e-2);
        assert!(e < 0.05 || small, "row {i} (magnitude {amax:e}): dynamic error {e}");
    }
    // Static INT8 has one scale for every row: the small rows drown in it.
    let worst = |y: &[f32]| {
        (0..n)
            .filter(|i| i % 7 == 1) // rows of magnitude 1e-2
            .map(|i| {
                let xr = &x[i * K..(i + 1) * K];
                let fl: Vec<f32> = (0..N)
                    .map(|j| {
                        xr.iter().zip(&wt[j * K..(j + 1) * K]).map(|(a, c)| a * c).sum::<f32>()
                    })
                    .collect();
                let yy: Vec<f32> =
                    y[i * N..(i + 1) * N].iter().zip(&b).map(|(v, bb)| v - bb).collect();
                let mask: Vec<bool> = fl.iter().zip(&b).map(|(f, bb)| f + bb > 0.0).collect();
                let (g2, f2): (Vec<f32>, Vec<f32>) = yy
                    .iter()
                    .zip(&fl)
                    .zip(&mask)
                    .filter(|(_, m)| **m)
                    .map(|((g, f), _)| (*g, *f))
                    .unzip();
                rel_err(&g2, &f2)
            })
            .fold(0.0, f64::max)
    };
    let (wd, ws) = (worst(&yd), worst(&ys));
    eprintln!("worst small-row error: dynamic {wd:.2e}, static {ws:.2e}");
    assert!(wd * 5.0 < ws, "dynamic {wd} should be far better than static {ws} on small rows");
}

#[test]
fn dynamic_layer_names_are_checked() {
    let mut rng = Rng::new(5);
    let (onnx, ..) = model_and_weights(&mut rng);
    let calib = rows(&mut rng, 4);
    let e = quantize(&onnx, &calib, 4, &["nope"]).unwrap_err();
    assert!(e.contains("--dynamic names 'nope'") && e.contains("layers:"), "{e}");
    // A named layer works like `all` here (the model has one Linear).
    let bytes = quantize(&onnx, &calib, 4, &["fc"]);
    assert!(bytes.is_ok(), "{bytes:?}");
    let c = BTreeMap::from([("x".to_string(), HostTensor::f32(vec![4, K], calib))]);
    let opts = Options { bits: 32, dynamic_layers: vec!["all".into()], ..Default::default() };
    let e = ember_quantize::quantize(&onnx, &c, &opts, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("--dynamic needs --bits 8 or 4"), "{e}");
}

#[test]
fn f16_weights_compute_like_float_with_rounded_weights() {
    let mut rng = Rng::new(91);
    let (onnx, w, b) = model_and_weights(&mut rng);
    let calib = rows(&mut rng, 9);
    let bytes = quantize_with(&onnx, &calib, 9, |o| o.f16_layers = vec!["all".into()]).unwrap();
    let m = Model::parse(AlignedBuf::from_bytes(&bytes)).unwrap();
    let codes: Vec<u16> = m.plans[0].records.iter().map(|r| r.opcode).collect();
    assert!(codes.contains(&(ember_runtime::format::OpCode::LinearF16 as u16)), "{codes:?}");
    let n = 33;
    let x = rows(&mut rng, n);
    let y = run(&bytes, &x, n);
    for i in 0..n {
        let xr = &x[i * K..(i + 1) * K];
        for j in 0..N {
            let dot: f64 = (0..K)
                .map(|p| xr[p] as f64 * half::f16::from_f32(w[p * N + j]).to_f32() as f64)
                .sum();
            let want = (dot + b[j] as f64).max(0.0);
            let scale: f64 = (0..K).map(|p| (xr[p] * w[p * N + j]).abs() as f64).sum::<f64>() + 1.0;
            let got = y[i * N + j] as f64;
            assert!((got - want).abs() <= 1e-5 * scale, "row {i} col {j}: {got} vs {want}");
        }
    }
    let c = BTreeMap::from([("x".to_string(), HostTensor::f32(vec![9, K], calib))]);
    let opts = Options { f16_layers: vec!["fc2".into()], ..Default::default() };
    let e = ember_quantize::quantize(&onnx, &c, &opts, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("--f16 names 'fc2'"), "{e}");
}
