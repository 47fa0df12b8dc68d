//! Mutated ONNX models never make the quantizer panic: each is either quantized or rejected
//! with an error.

use ember_quantize::{HostTensor, Options};
use ember_tests::onnx_build::*;
use ember_tests::Rng;
use std::collections::BTreeMap;

fn base_model() -> Vec<u8> {
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0) / 7.0).collect();
    model(
        vec![
            node("Gemm", "fc", &["x", "W", "b"], &["h"], vec![attr_int("transB", 1)]),
            node("Relu", "relu", &["h"], &["r"], vec![]),
            node("Gather", "emb", &["T", "id"], &["e"], vec![attr_int("axis", 0)]),
            node("Concat", "cat", &["r", "e"], &["c"], vec![attr_int("axis", 1)]),
            node("Softmax", "sm", &["c"], &["y"], vec![attr_int("axis", 1)]),
        ],
        vec![value("x", 1, &[-1, 4]), value("id", 7, &[-1])],
        vec![value("y", 1, &[-1, 5])],
        vec![
            tensor_f32("W", &[3, 4], &w),
            tensor_f32("b", &[3], &[0.1, 0.2, 0.3]),
            tensor_f32("T", &[6, 2], &[0.5; 12]),
        ],
    )
}

#[test]
fn mutated_models_are_quantized_or_rejected_never_panic() {
    let good = base_model();
    let calib = BTreeMap::from([
        ("x".to_string(), HostTensor::f32(vec![3, 4], (0..12).map(|i| i as f32 / 5.0).collect())),
        ("id".to_string(), HostTensor::i64(vec![3], vec![0, 5, 2])),
    ]);
    ember_quantize::quantize(&good, &calib, &Options::default(), &mut |_, _, _| {})
        .expect("the base model quantizes");
    let mut rng = Rng::new(11);
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..1500 {
        let mut m = good.clone();
        for _ in 0..1 + rng.below(3) {
            let p = rng.below(m.len());
            match rng.below(4) {
                0 => m[p] ^= 1 << rng.below(8),
                1 => m[p] = rng.below(256) as u8,
                2 => m[p] = m[p].wrapping_add(1),
                _ => m[p] = 0,
            }
        }
        let r = std::panic::catch_unwind(|| {
            ember_quantize::quantize(
                &m,
                &calib,
                &Options { batches: vec![1, 2], ..Default::default() },
                &mut |_, _, _| {},
            )
            .is_ok()
        });
        match r {
            Ok(true) => accepted += 1,
            Ok(false) => rejected += 1,
            Err(_) => panic!("mutation #{i} made the quantizer panic"),
        }
    }
    eprintln!("{accepted} mutated models accepted, {rejected} rejected");
    assert!(
        rejected > 0 && accepted + rejected == 1500,
        "{accepted} accepted, {rejected} rejected"
    );
}
