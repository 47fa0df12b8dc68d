//! The `quantize` and `ember` binaries as users call them: the happy path on the DLRM oracle case
//! and the demo, and every kind of bad input: a clear message, exit status 1, no panic, and no
//! partial output file. `EMBER_TEST_RUNNER` (e.g. a qemu command line) prefixes each binary when
//! the suite runs cross-compiled.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin(name: &str) -> Command {
    let path = match name {
        "quantize" => env!("CARGO_BIN_EXE_quantize"),
        _ => env!("CARGO_BIN_EXE_ember"),
    };
    ember_tests::bin_command(path)
}

fn run(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = bin(name);
    for a in args {
        c.arg(a);
    }
    c.output().expect("binary runs")
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ember-cli-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts a failure with `needle` in stderr, no panic, and `out` not created.
fn fails(o: &Output, needle: &str, out: Option<&Path>) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1; stderr: {err}");
    assert!(err.contains(needle), "stderr does not mention '{needle}': {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "panicked: {err}");
    if let Some(p) = out {
        assert!(!p.exists(), "{} was left behind", p.display());
        let Ok(dir) = std::fs::read_dir(p.parent().unwrap()) else { return };
        let leftovers: Vec<_> =
            dir.flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn quantize_run_inspect_compare() {
    let case = ember_tests::case("dlrm");
    let d = tmp("happy");
    let ember = d.join("m.ember");
    let report = d.join("report.json");
    let out = ok(&run(
        "quantize",
        &[
            &case.join("model.onnx"),
            &"-o",
            &ember,
            &"--calib",
            &case.join("calib.npz"),
            &"--batch",
            &"1",
            &"--batch",
            &"8",
            &"--report",
            &report,
            &"--plot",
            &d.join("layers.svg"),
            &"-q",
        ],
    ));
    assert!(out.contains("top0") && out.contains("int8"), "{out}");
    let svg = std::fs::read_to_string(d.join("layers.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("int8"), "{svg}");
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(rep["bits"], 8);
    assert!(rep["float_ops"].as_array().unwrap().iter().any(|o| o["node"] == "sigmoid"));

    let outputs = d.join("out.npz");
    ok(&run("ember", &[&"run", &ember, &"--input", &case.join("test.npz"), &"--output", &outputs]));
    let got = ember_quantize::npz::read_npz(&outputs).unwrap();
    assert_eq!(got["ctr"].shape, vec![203, 1]);

    let insp: serde_json::Value =
        serde_json::from_str(&ok(&run("ember", &[&"inspect", &ember, &"--json"]))).unwrap();
    assert_eq!(insp["batch_sizes"], serde_json::json!([1, 8]));
    let ops = insp["plans"][0]["ops"].as_array().unwrap();
    assert!(ops
        .iter()
        .any(|o| o["precision"] == "int8" && o["kernel"].as_str().unwrap().contains("i8_gemm")));
    assert!(ops
        .iter()
        .any(|o| o["precision"] == "f32" && o["node"] == "interact" && o["op"] == "matmul_f32"));
    assert!(ops.iter().any(|o| o["precision"] == "f32" && o["node"] == "sigmoid"));
    let text = ok(&run("ember", &[&"inspect", &ember]));
    assert!(text.contains("compute in float"), "{text}");

    let cmp: serde_json::Value = serde_json::from_str(&ok(&run(
        "ember",
        &[
            &"compare",
            &case.join("model.onnx"),
            &ember,
            &"--input",
            &case.join("test.npz"),
            &"--json",
        ],
    )))
    .unwrap();
    assert!(cmp["outputs"][0]["cosine"].as_f64().unwrap() >= 0.999, "{cmp}");
    assert!(cmp["outputs"][0]["max_abs_err"].as_f64().unwrap() < 0.05, "{cmp}");
}

#[test]
fn quantize_rejects_bad_models_and_data() {
    let case = ember_tests::case("dlrm");
    let d = tmp("qbad");
    let out = d.join("never.ember");
    let garbage = d.join("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x96\x01 not onnx at all \xff\xfe").unwrap();
    let (model, calib) = (case.join("model.onnx"), case.join("calib.npz"));
    // quantize MODEL -o OUT --calib CALIB EXTRA...
    let q = |m: &Path, c: &Path, o: &Path, extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&m, &"-o", &o, &"--calib", &c];
        args.extend(extra.iter().map(|e| e as &dyn AsRef<std::ffi::OsStr>));
        run("quantize", &args)
    };
    fails(&q(&garbage, &calib, &out, &[]), "malformed ONNX", Some(&out));
    let unsup = ember_tests::case("unsupported");
    fails(
        &q(&unsup.join("model.onnx"), &unsup.join("calib.npz"), &out, &[]),
        "unsupported op 'Conv' in node 'my_conv'",
        Some(&out),
    );
    fails(&q(&d.join("missing.onnx"), &calib, &out, &[]), "cannot read", Some(&out));
    fails(&q(&model, &d.join("missing.npz"), &out, &[]), "missing.npz", Some(&out));
    // Calibration data of another model: wrong input names.
    fails(
        &q(&model, &ember_tests::case("mlp").join("calib.npz"), &out, &[]),
        "not a model input",
        Some(&out),
    );
    fails(&q(&model, &garbage, &out, &[]), "not a valid .npz", Some(&out));
    fails(&q(&model, &calib, &out, &["--shape", "dense"]), "NAME=D1", Some(&out));
    fails(&q(&model, &calib, &out, &["--bits", "3"]), "--bits 3", Some(&out));
    // Output into a folder that does not exist: an error, not a panic.
    let nodir = d.join("no/such/dir/m.ember");
    fails(&q(&model, &calib, &nodir, &["-q"]), "cannot write", Some(&nodir));
}

#[test]
fn run_rejects_corrupt_files_and_wrong_inputs() {
    let case = ember_tests::case("dlrm");
    let d = tmp("rbad");
    let good = d.join("m.ember");
    ok(&run(
        "quantize",
        &[
            &case.join("model.onnx"),
            &"-o",
            &good,
            &"--calib",
            &case.join("calib.npz"),
            &"--batch",
            &"4",
            &"-q",
        ],
    ));
    let bytes = std::fs::read(&good).unwrap();
    let out = d.join("out.npz");
    let input = case.join("test.npz");

    let flipped = d.join("flipped.ember");
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    std::fs::write(&flipped, &b).unwrap();
    fails(
        &run("ember", &[&"run", &flipped, &"--input", &input, &"--output", &out]),
        "checksum",
        Some(&out),
    );

    let truncated = d.join("truncated.ember");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    fails(
        &run("ember", &[&"run", &truncated, &"--input", &input, &"--output", &out]),
        "truncated",
        Some(&out),
    );
    fails(&run("ember", &[&"inspect", &truncated]), "truncated", None);

    let empty = d.join("empty.ember");
    std::fs::write(&empty, b"").unwrap();
    fails(
        &run("ember", &[&"run", &empty, &"--input", &input, &"--output", &out]),
        "truncated",
        Some(&out),
    );
    fails(
        &run("ember", &[&"run", &d.join("nope.ember"), &"--input", &input, &"--output", &out]),
        "no such file",
        Some(&out),
    );

    // Wrong names, shapes and dtypes in the input .npz.
    let mk = |name: &str, arrays: Vec<(&str, ember_quantize::HostTensor)>| {
        let p = d.join(name);
        let m: ember_quantize::npz::Arrays =
            arrays.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        ember_quantize::npz::write_npz(&p, &m).unwrap();
        p
    };
    use ember_quantize::HostTensor as T;
    let ids = || T::i64(vec![3], vec![1, 2, 3]);
    let full = |dense: T, cat0: T| {
        vec![("dense", dense), ("cat0", cat0), ("cat1", ids()), ("cat2", ids())]
    };
    let wrong_name =
        mk("wn.npz", vec![("dense", T::f32(vec![3, 7], vec![0.0; 21])), ("cat9", ids())]);
    fails(
        &run("ember", &[&"run", &good, &"--input", &wrong_name, &"--output", &out]),
        "not a model input",
        Some(&out),
    );
    let wrong_shape = mk("ws.npz", full(T::f32(vec![3, 6], vec![0.0; 18]), ids()));
    fails(
        &run("ember", &[&"run", &good, &"--input", &wrong_shape, &"--output", &out]),
        "has shape [3, 6], expected [N, 7]",
        Some(&out),
    );
    let wrong_dtype =
        mk("wd.npz", full(T::f32(vec![3, 7], vec![0.0; 21]), T::f32(vec![3], vec![1.0; 3])));
    fails(
        &run("ember", &[&"run", &good, &"--input", &wrong_dtype, &"--output", &out]),
        "must be integer",
        Some(&out),
    );
    let bad_id =
        mk("bi.npz", full(T::f32(vec![3, 7], vec![0.0; 21]), T::i64(vec![3], vec![1, 100, 2])));
    fails(
        &run("ember", &[&"run", &good, &"--input", &bad_id, &"--output", &out]),
        "index 100 out of range",
        Some(&out),
    );
    let counts = mk("cnt.npz", full(T::f32(vec![2, 7], vec![0.0; 14]), ids()));
    fails(
        &run("ember", &[&"run", &good, &"--input", &counts, &"--output", &out]),
        "different sample counts",
        Some(&out),
    );
}

#[test]
fn demo_runs_offline_and_tracks_float() {
    let j: serde_json::Value =
        serde_json::from_str(&ok(&run("ember", &[&"demo", &"--json", &"--iters", &"50"]))).unwrap();
    assert!(j["cosine_to_float"].as_f64().unwrap() >= 0.999, "{j}");
    assert!(j["pearson_to_float"].as_f64().unwrap() >= 0.999, "{j}");
    assert!(
        (j["rmse_int8"].as_f64().unwrap() - j["rmse_float"].as_f64().unwrap()).abs() < 0.01,
        "{j}"
    );
    assert!(j["latency_us"]["batch1"]["p99"].as_f64().unwrap() > 0.0);
}
