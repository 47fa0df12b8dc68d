//! Bad models and bad calibration data give errors that name the problem; degenerate but valid
//! data (one sample, constant tensors) quantizes without dividing by zero.

use ember_quantize::{HostTensor, Options};
use ember_tests::onnx_build::*;
use std::collections::BTreeMap;

/// x f32 [N, 4] → MatMul(W [4,3]) → Relu → y [N, 3]
fn linear_model(x_dims: &[i64]) -> Vec<u8> {
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0) / 7.0).collect();
    model(
        vec![
            node("MatMul", "fc", &["x", "W"], &["h"], vec![]),
            node("Relu", "relu", &["h"], &["y"], vec![]),
        ],
        vec![value("x", 1, x_dims)],
        vec![value("y", 1, &[-1, 3])],
        vec![tensor_f32("W", &[4, 3], &w)],
    )
}

fn calib(v: Vec<f32>, n: usize) -> BTreeMap<String, HostTensor> {
    BTreeMap::from([("x".to_string(), HostTensor::f32(vec![n, v.len() / n], v))])
}

fn q(onnx: &[u8], c: &BTreeMap<String, HostTensor>, opts: Options) -> Result<Vec<u8>, String> {
    ember_quantize::quantize(onnx, c, &opts, &mut |_, _, _| {})
        .map(|r| r.0)
        .map_err(|e| e.to_string())
}

fn err(onnx: &[u8], c: &BTreeMap<String, HostTensor>, needle: &str) {
    let e = q(onnx, c, Options::default()).expect_err("expected an error");
    assert!(e.contains(needle), "error '{e}' does not mention '{needle}'");
}

#[test]
fn malformed_onnx_is_named() {
    err(b"this is not a protobuf \xff\xff\xff", &calib(vec![0.0; 4], 1), "malformed ONNX");
    err(&[], &calib(vec![0.0; 4], 1), "malformed ONNX");
    // Truncated real model.
    let m = linear_model(&[-1, 4]);
    let e = q(&m[..m.len() / 2], &calib(vec![0.0; 4], 1), Options::default()).unwrap_err();
    assert!(e.contains("ONNX"), "{e}");
}

#[test]
fn unknown_op_names_op_and_node() {
    let m = model(
        vec![node("Conv", "my_conv", &["x", "W"], &["y"], vec![])],
        vec![value("x", 1, &[-1, 4])],
        vec![value("y", 1, &[-1, 4])],
        vec![tensor_f32("W", &[1], &[1.0])],
    );
    err(&m, &calib(vec![0.0; 4], 1), "unsupported op 'Conv' in node 'my_conv'");
    let m = model(
        vec![node("Foo", "n1", &["x"], &["y"], vec![])],
        vec![value("x", 1, &[-1, 4])],
        vec![value("y", 1, &[-1, 4])],
        vec![],
    );
    err(&m, &calib(vec![0.0; 4], 1), "'Foo'");
}

#[test]
fn dangling_inputs_and_cycles_are_named() {
    let m = model(
        vec![node("Relu", "r", &["nowhere"], &["y"], vec![])],
        vec![value("x", 1, &[-1, 4])],
        vec![value("y", 1, &[-1, 4])],
        vec![],
    );
    err(&m, &calib(vec![0.0; 4], 1), "nowhere");
    let m = model(
        vec![
            node("Relu", "a", &["b_out"], &["a_out"], vec![]),
            node("Relu", "b", &["a_out"], &["b_out"], vec![]),
        ],
        vec![value("x", 1, &[-1, 4])],
        vec![value("a_out", 1, &[-1, 4])],
        vec![],
    );
    err(&m, &calib(vec![0.0; 4], 1), "cycle");
}

#[test]
fn bad_calibration_data_names_the_input() {
    let m = linear_model(&[-1, 4]);
    let mut v = vec![0.5f32; 8];
    v[5] = f32::NAN;
    err(&m, &calib(v, 2), "input 'x' contains NaN or Inf (sample 1");
    let mut v = vec![0.5f32; 8];
    v[0] = f32::INFINITY;
    err(&m, &calib(v, 2), "NaN or Inf");
    err(&m, &calib(vec![0.0; 10], 2), "input 'x' has shape [2, 5], expected [N, 4]");
    err(
        &m,
        &BTreeMap::from([("z".to_string(), HostTensor::f32(vec![1, 4], vec![0.0; 4]))]),
        "'z' that is not a model input",
    );
    err(&m, &BTreeMap::new(), "lacks model input 'x'");
    err(
        &m,
        &BTreeMap::from([("x".to_string(), HostTensor::i64(vec![1, 4], vec![0; 4]))]),
        "must be float32",
    );
    err(
        &m,
        &BTreeMap::from([("x".to_string(), HostTensor::f32(vec![0, 4], vec![]))]),
        "no samples",
    );
}

#[test]
fn symbolic_dims_need_shape_and_fixed_batch_is_respected() {
    let m = linear_model(&[-1, -1]);
    err(&m, &calib(vec![0.1; 4], 1), "--shape x=");
    let mut o = Options::default();
    o.shapes.insert("x".into(), vec![4]);
    q(&m, &calib(vec![0.1; 4], 1), o).expect("--shape fixes the symbolic dim");
    let mut o = Options::default();
    o.shapes.insert("nope".into(), vec![4]);
    assert!(q(&m, &calib(vec![0.1; 4], 1), o).unwrap_err().contains("'nope'"));
    let fixed = linear_model(&[1, 4]);
    let o = Options { batches: vec![8], ..Default::default() };
    assert!(q(&fixed, &calib(vec![0.1; 4], 1), o)
        .unwrap_err()
        .contains("fixes its batch axis to 1"));
}

#[test]
fn one_sample_and_constant_data_quantize_without_nan() {
    let m = linear_model(&[-1, 4]);
    for data in [vec![0.0f32; 4], vec![3.0; 4], vec![-1.0, 2.0, 0.5, 7.0]] {
        let bytes =
            q(&m, &calib(data.clone(), 1), Options { batches: vec![1, 2], ..Default::default() })
                .unwrap();
        let model =
            ember_runtime::Model::parse(ember_runtime::AlignedBuf::from_bytes(&bytes)).unwrap();
        let mut s = ember_runtime::Session::new(&model, 1).unwrap();
        let x: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        s.run(&[&x]).unwrap();
        assert!(s.output_f32(0).unwrap().iter().all(|v| v.is_finite()), "{data:?}");
    }
}

#[test]
fn out_of_range_embedding_ids_in_calibration_name_the_node() {
    let m = model(
        vec![node("Gather", "user_emb", &["T", "id"], &["y"], vec![attr_int("axis", 0)])],
        vec![value("id", 7, &[-1])],
        vec![value("y", 1, &[-1, 2])],
        vec![tensor_f32("T", &[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])],
    );
    let c = BTreeMap::from([("id".to_string(), HostTensor::i64(vec![2], vec![1, 3]))]);
    let e = q(&m, &c, Options::default()).unwrap_err();
    assert!(e.contains("user_emb") && e.contains("index 3"), "{e}");
    let _ = tensor_i64("unused", &[1], &[0]);
}

#[test]
fn unsupported_bits_are_refused() {
    let m = linear_model(&[-1, 4]);
    for bits in [0, 2, 16] {
        assert!(q(&m, &calib(vec![0.0; 4], 1), Options { bits, ..Default::default() })
            .unwrap_err()
            .contains(&format!("--bits {bits} is not supported")));
    }
}

#[test]
fn int4_options_are_checked_and_small_layers_fall_back_to_int8() {
    let m = linear_model(&[-1, 4]);
    let c = calib((0..16).map(|i| i as f32 / 5.0 - 1.0).collect(), 4);
    for (opts, needle) in [
        (Options { bits: 5, ..Default::default() }, "--bits 5 is not supported"),
        (Options { bits: 4, group: 6, ..Default::default() }, "--group 6 is not supported"),
        (Options { bits: 4, group: 512, ..Default::default() }, "--group 512 is not supported"),
        (
            Options { bits: 4, embedding_bits: Some(2), ..Default::default() },
            "int2 is not supported",
        ),
    ] {
        let e = q(&m, &c, opts).expect_err("expected an error");
        assert!(e.contains(needle), "'{e}' lacks '{needle}'");
    }
    // K = 4 is not a multiple of the default group of 32: the layer stays INT8, and says so.
    let (bytes, rep) = ember_quantize::quantize(
        &m,
        &c,
        &Options { bits: 4, ..Default::default() },
        &mut |_, _, _| {},
    )
    .unwrap();
    assert!(!bytes.is_empty());
    let fc = rep.layers.iter().find(|l| l.node == "fc").unwrap();
    assert_eq!(fc.precision, "int8");
    assert!(fc.reason.as_deref().unwrap_or("").contains("group"), "{:?}", fc.reason);
    // With a group that divides K, it is INT4.
    let (_, rep) = ember_quantize::quantize(
        &m,
        &c,
        &Options { bits: 4, group: 4, ..Default::default() },
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(rep.layers.iter().find(|l| l.node == "fc").unwrap().precision, "int4");
}
