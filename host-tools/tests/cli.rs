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
    // A directory of an earlier run with the same process id would hold its outputs.
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

use ember_tests::{cli_fails as fails, cli_ok as ok};

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
    // A reader that closes the pipe at once (`ember inspect m.ember | head -0`): status 141,
    // as for a process killed by SIGPIPE, and no "internal error".
    let mut child = bin("ember")
        .args(["inspect".as_ref(), ember.as_os_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let closed = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&closed.stderr);
    assert!(closed.status.code() == Some(141) && err.is_empty(), "{:?}: {err}", closed.status);
    // Signature shapes read as one list with the batch axis first.
    assert!(text.contains("[N, ") && !text.contains("[N, ["), "{text}");

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
fn int4_scales_choose_the_op_and_bad_values_are_refused() {
    let case = ember_tests::case("mlp");
    let d = tmp("i4scales");
    let (model, calib) = (case.join("model.onnx"), case.join("calib.npz"));
    let build = |name: &str, extra: &[&str]| {
        let out = d.join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&model, &"--calib", &calib, &"--bits", &"4", &"--group", &"4", &"-q", &"-o"];
        args.push(&out);
        for e in extra {
            args.push(e);
        }
        ok(&run("quantize", &args));
        ok(&run("ember", &[&"inspect", &out]))
    };
    let mult = build("m.ember", &[]);
    assert!(mult.contains("linear_i4m") && mult.contains("i4m_gemm_"), "{mult}");
    let group = build("g.ember", &["--int4-scales", "group"]);
    assert!(group.contains("linear_i4 ") && !group.contains("linear_i4m"), "{group}");
    let o = run(
        "quantize",
        &[
            &model,
            &"--calib",
            &calib,
            &"--bits",
            &"4",
            &"--int4-scales",
            &"f8",
            &"-o",
            &d.join("x"),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--int4-scales"));
    // Both side by side in one bench: INT4M's kernels named, the second model's figures and
    // the ratio reported.
    let (m, g) = (d.join("m.ember"), d.join("g.ember"));
    let b: serde_json::Value = serde_json::from_str(&ok(&run(
        "ember",
        &[&"bench", &m, &"--against", &g, &"--iters", &"20", &"--threads", &"1", &"--json"],
    )))
    .unwrap();
    assert!(b["kernels"]["i4m_gemm"].as_str().unwrap().starts_with("i4m_gemm_"), "{b}");
    assert!(b["kernels"].get("i4_gemm").is_none(), "{b}");
    let (pa, pb) = (b["p50_ms"].as_f64().unwrap(), b["against"]["p50_ms"].as_f64().unwrap());
    assert!(pa > 0.0 && pb > 0.0, "{b}");
    assert!((b["against"]["ratio_p50"].as_f64().unwrap() - pa / pb).abs() < 1e-9, "{b}");
    assert!(b["against"]["ratio_pairwise_median"].as_f64().unwrap() > 0.0, "{b}");
    // --profile times each op of the timed runs and, in its own column, of the first run.
    let p: serde_json::Value = serde_json::from_str(&ok(&run(
        "ember",
        &[&"bench", &m, &"--iters", &"3", &"--warmup", &"0", &"--profile", &"--json"],
    )))
    .unwrap();
    let ops = p["profile"]["ops"].as_array().unwrap();
    assert!(!ops.is_empty(), "{p}");
    let first: f64 = ops.iter().map(|o| o["first_run_ms"].as_f64().unwrap()).sum();
    assert!(ops.iter().all(|o| o["first_run_ms"].as_f64().unwrap() >= 0.0), "{p}");
    assert!(first > 0.0 && first <= p["first_run_ms"].as_f64().unwrap() + 1e-6, "{p}");
    // A fresh process's first run touches memory for the first time: page faults, counted.
    // (Under qemu-user the count is the emulator's, which its own warm-up can leave at zero
    // for a model this small; there the field is only checked to be reported.)
    if cfg!(unix) {
        let faults = p["first_run_page_faults"].as_u64();
        assert!(faults.is_some(), "{p}");
        if cfg!(target_arch = "x86_64") {
            assert!(faults.is_some_and(|n| n > 0), "{p}");
        }
    }
    let b4 = d.join("b4.ember");
    build("b4.ember", &["--batch", "4"]);
    fails(&run("ember", &[&"bench", &m, &"--against", &b4]), "has no plan for batch 1", None);
    fails(&run("ember", &[&"bench", &m, &"--against", &d.join("nope.ember")]), "nope.ember", None);
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

/// Writes `text` as a CSV file in `d`.
fn csv(d: &Path, name: &str, text: &str) -> PathBuf {
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn movielens() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/ml-latest-small/ratings.csv")
}

#[test]
fn finetune_trains_resumes_from_tables_and_serves() {
    let d = tmp("finetune");
    let npz = d.join("mf.npz");
    let o = ok(&run(
        "ember",
        &[
            &"finetune",
            &"--ratings",
            &movielens(),
            &"--holdout",
            &"0.1",
            &"--init",
            &"--k",
            &"16",
            &"--epochs",
            &"8",
            &"--threads",
            &"2",
            &"--json",
            &"-o",
            &npz,
        ],
    ));
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    for key in ["val_rmse", "seconds", "updates_per_s", "switch_epoch"] {
        assert!(j.get(key).is_some(), "--json lacks {key}: {o}");
    }
    let rmse = j["val_rmse"].as_f64().unwrap();
    assert!(rmse > 0.75 && rmse < 0.95, "MovieLens validation RMSE {rmse}");
    assert_eq!(j["epoch_log"].as_array().unwrap().len(), 8);
    assert!(j["updates_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(j["users"], 610);
    assert_eq!(j["precision"], "auto");

    // Continue from the tables on the same split: no worse than where it stopped.
    let npz2 = d.join("mf2.npz");
    let o = ok(&run(
        "ember",
        &[
            &"finetune",
            &"--ratings",
            &movielens(),
            &"--holdout",
            &"0.1",
            &"--model",
            &npz,
            &"--epochs",
            &"4",
            &"--precision",
            &"fp32",
            &"--json",
            &"-o",
            &npz2,
        ],
    ));
    let j2: serde_json::Value = serde_json::from_str(&o).unwrap();
    let rmse2 = j2["val_rmse"].as_f64().unwrap();
    assert!(rmse2 < rmse + 0.01, "resumed {rmse2} vs {rmse}");
    assert_eq!(j2["switch_epoch"], serde_json::Value::Null);

    // A servable .ember: `ember run` predicts what the float tables predict, within INT8 rows.
    // (One epoch at a negligible learning rate over three ratings leaves the tables as they are.)
    let m = d.join("mf.ember");
    let ratings = csv(&d, "few.csv", "user,item,rating\n1,1,4\n1,3,4\n6,1,3\n");
    ok(&run(
        "ember",
        &[
            &"finetune",
            &"--ratings",
            &ratings,
            &"--model",
            &npz2,
            &"--epochs",
            &"1",
            &"--lr",
            &"1e-12",
            &"-o",
            &m,
            &"--quiet",
        ],
    ));
    let inspect = ok(&run("ember", &[&"inspect", &m]));
    assert!(inspect.contains("user_ids") && inspect.contains("gather_rows_i8"), "{inspect}");
    let t = ember_quantize::npz::read_npz(&npz2).unwrap();
    let (p, q) = (t["user_factors"].to_f32_vec(), t["item_factors"].to_f32_vec());
    let (bu, bi, st) =
        (t["user_bias"].to_f32_vec(), t["item_bias"].to_f32_vec(), t["stats"].to_f32_vec());
    let pairs: Vec<(usize, usize)> = (0..40).map(|j| (j * 7 % 610, j * 131 % 9724)).collect();
    let mut input = std::collections::BTreeMap::new();
    let ids =
        |f: fn(&(usize, usize)) -> usize| pairs.iter().map(|x| f(x) as i64).collect::<Vec<i64>>();
    input.insert("user".to_string(), ember_quantize::HostTensor::i64(vec![40], ids(|x| x.0)));
    input.insert("item".to_string(), ember_quantize::HostTensor::i64(vec![40], ids(|x| x.1)));
    let (inp, out) = (d.join("in.npz"), d.join("out.npz"));
    ember_quantize::npz::write_npz(&inp, &input).unwrap();
    ok(&run("ember", &[&"run", &m, &"--input", &inp, &"--output", &out]));
    let got = ember_quantize::npz::read_npz(&out).unwrap()["rating"].to_f32_vec();
    for (n, (u, i)) in pairs.iter().enumerate() {
        let dot: f32 = (0..16).map(|j| p[u * 16 + j] * q[i * 16 + j]).sum();
        let want = (st[0] + bu[*u] + bi[*i] + dot).clamp(st[1], st[2]);
        assert!((got[n] - want).abs() < 0.02, "pair {u},{i}: {} vs {want}", got[n]);
    }
}

#[test]
fn finetune_reads_and_writes_safetensors_tables() {
    use ember_quantize::{npz, safetensors, HostTensor};
    let d = tmp("safetensors");
    let tune = |model: Option<&Path>, ratings: &Path, out: &Path, k: &str, extra: &[&str]| {
        use std::ffi::{OsStr, OsString};
        let mut v: Vec<OsString> = ["finetune", "--ratings"].map(OsString::from).to_vec();
        v.push(ratings.into());
        v.extend(["--epochs", "3", "--precision", "fp32", "-o"].map(OsString::from));
        v.push(out.into());
        v.extend(["--k", k].map(OsString::from));
        match model {
            Some(m) => v.extend([OsString::from("--model"), m.into()]),
            None => v.push("--init".into()),
        }
        v.extend(extra.iter().map(OsString::from));
        let refs: Vec<&dyn AsRef<OsStr>> = v.iter().map(|x| x as &dyn AsRef<OsStr>).collect();
        run("ember", &refs)
    };
    // Tables trained here, written as .safetensors, and the same tables as .npz.
    let ml = movielens();
    let (st, np) = (d.join("t.safetensors"), d.join("t.npz"));
    ok(&tune(None, &ml, &st, "8", &["--holdout", "0.1", "--quiet"]));
    let a = safetensors::read_safetensors(&st).unwrap();
    for key in ["user_factors", "item_factors", "user_bias", "item_bias", "user_ids", "item_ids"] {
        assert!(a.contains_key(key), "{key} missing: {:?}", a.keys().collect::<Vec<_>>());
    }
    assert_eq!(a["user_factors"].shape, vec![610, 8]);
    npz::write_npz(&np, &a).unwrap();
    // Continuing from either file gives the same bits.
    let j =
        |o: &std::process::Output| -> serde_json::Value { serde_json::from_str(&ok(o)).unwrap() };
    let from_st = j(&tune(Some(&st), &ml, &d.join("a.npz"), "8", &["--holdout", "0.1", "--json"]));
    let from_np = j(&tune(Some(&np), &ml, &d.join("b.npz"), "8", &["--holdout", "0.1", "--json"]));
    assert_eq!(from_st["val_rmse"], from_np["val_rmse"], "{from_st} vs {from_np}");
    // Factor tables alone (as a training framework exports them): ids are row numbers, biases
    // zero, stats from the ratings, and stderr says so.
    let mut bare = ember_quantize::npz::Arrays::new();
    let f: Vec<f32> = (0..3 * 4).map(|i| 0.1 * (i % 5) as f32).collect();
    bare.insert("user_factors".into(), HostTensor::f32(vec![3, 4], f.clone()));
    bare.insert("item_factors".into(), HostTensor::f32(vec![3, 4], f));
    let bp = d.join("bare.safetensors");
    std::fs::write(&bp, safetensors::safetensors_bytes(&bare)).unwrap();
    let r = csv(&d, "r.csv", "user,item,rating\n0,1,4\n1,2,3\n2,0,5\n0,0,2\n");
    let o = tune(Some(&bp), &r, &d.join("bare.npz"), "4", &[]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("has no") && err.contains("user_bias") && err.contains("stats"), "{err}");
    // Unclamped stats (infinite min and max, as tables from an .ember without a range carry)
    // load; a NaN mean does not.
    bare.insert(
        "stats".into(),
        HostTensor::f32(vec![3], vec![3.5, f32::NEG_INFINITY, f32::INFINITY]),
    );
    std::fs::write(&bp, safetensors::safetensors_bytes(&bare)).unwrap();
    ok(&tune(Some(&bp), &r, &d.join("inf.npz"), "4", &[]));
    bare.insert("stats".into(), HostTensor::f32(vec![3], vec![f32::NAN, 1.0, 5.0]));
    std::fs::write(&bp, safetensors::safetensors_bytes(&bare)).unwrap();
    fails(&tune(Some(&bp), &r, &d.join("nan.npz"), "4", &[]), "stats must hold", None);
    bare.remove("stats");
    std::fs::write(&bp, safetensors::safetensors_bytes(&bare)).unwrap();
    // An id past the rows is unknown; a file without the factors names what it has.
    let r2 = csv(&d, "r2.csv", "user,item,rating\n7,1,4\n");
    let unknown = "line 2: unknown user id 7 (not in the model's tables)";
    fails(&tune(Some(&bp), &r2, &d.join("x.npz"), "4", &[]), unknown, Some(&d.join("x.npz")));
    bare.remove("item_factors");
    std::fs::write(&bp, safetensors::safetensors_bytes(&bare)).unwrap();
    fails(
        &tune(Some(&bp), &r, &d.join("x.npz"), "4", &[]),
        "no tensor 'item_factors' (it has: user_factors)",
        None,
    );
    std::fs::write(&bp, b"\x05\0\0\0\0\0\0\0{}").unwrap();
    fails(&tune(Some(&bp), &r, &d.join("x.npz"), "4", &[]), "not a valid .safetensors", None);
}

#[test]
fn finetune_names_bad_input() {
    let d = tmp("finetune-bad");
    let out = d.join("o.npz");
    let cases: Vec<(String, &str)> = vec![
        (
            "user,item,rating\n1,2,4\n1,2\n".into(),
            "line 3: expected user,item,rating[,timestamp], found 2 fields",
        ),
        ("1,2,4\nx,2,4\n".into(), "line 2: user id 'x' is not an integer"),
        ("1,2,4\n1,2,NaN\n".into(), "line 2: rating NaN is not finite"),
        ("1,2,4\n1,2,good\n".into(), "line 2: rating 'good' is not a number"),
        ("user,item,rating\n".into(), "no ratings"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let f = csv(&d, &format!("bad{i}.csv"), text);
        fails(
            &run("ember", &[&"finetune", &"--ratings", &f, &"--init", &"-o", &out]),
            needle,
            Some(&out),
        );
    }
    // --skip-bad counts instead.
    let f = csv(&d, "mixed.csv", "1,2,4\n1,2\n2,3,NaN\n2,2,3\n3,2,5\n");
    let o = ok(&run(
        "ember",
        &[
            &"finetune",
            &"--ratings",
            &f,
            &"--init",
            &"--skip-bad",
            &"--epochs",
            &"2",
            &"--json",
            &"-o",
            &out,
        ],
    ));
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(j["train_ratings"], 3);
    assert_eq!(j["skipped"]["wrong field count"], 1);
    assert_eq!(j["skipped"]["non-finite rating"], 1);
    // Unknown ids against existing tables: the line is named, or skipped and counted.
    let f = csv(&d, "new.csv", "1,2,4\n99,2,4\n");
    let out2 = d.join("o2.npz");
    fails(
        &run("ember", &[&"finetune", &"--ratings", &f, &"--model", &out, &"-o", &out2]),
        "line 2: unknown user id 99",
        Some(&out2),
    );
    let o = ok(&run(
        "ember",
        &[&"finetune", &"--ratings", &f, &"--model", &out, &"--skip-bad", &"--json", &"-o", &out2],
    ));
    assert!(o.contains("\"unknown id\": 1"), "{o}");
    // Settings and files.
    std::fs::remove_file(&out2).unwrap();
    let good = csv(&d, "good.csv", "1,2,4\n");
    for (args, needle) in [
        (vec!["--precision", "fp8", "--init"], "--precision fp8"),
        (vec!["--k", "0", "--init"], "--k and --epochs"),
        (vec!["--lr=-1", "--init"], "--lr must be positive"),
        (vec!["--holdout", "1.5", "--init"], "--holdout 1.5"),
        (vec![], "--model M.ember|TABLES.npz|TABLES.safetensors or --init"),
    ] {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"finetune", &"--ratings", &good, &"-o", &out2];
        for x in &args {
            a.push(x);
        }
        fails(&run("ember", &a), needle, Some(&out2));
    }
    let missing = d.join("missing.csv");
    fails(
        &run("ember", &[&"finetune", &"--ratings", &missing, &"--init", &"-o", &out2]),
        "no such file",
        Some(&out2),
    );
    fails(
        &run("ember", &[&"finetune", &"--ratings", &good, &"--init", &"-o", &d.join("x.txt")]),
        "must end in .overlay, .npz, .safetensors or .ember",
        None,
    );
    fails(
        &run("ember", &[&"finetune", &"--ratings", &good, &"--model", &good, &"-o", &out2]),
        "good.csv",
        Some(&out2),
    );
}

#[test]
fn device_selection_and_embedded_ptx() {
    use ember_runtime::cuda;
    let case = ember_tests::case("mlp");
    let d = tmp("cuda");
    let m = d.join("m.ember");
    let (onnx, calib) = (case.join("model.onnx"), case.join("calib.npz"));
    let q = |out: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&onnx as _, &"-o", &out, &"--calib", &calib];
        args.extend_from_slice(extra);
        run("quantize", &args)
    };
    // A Jetson board: its default batches, and PTX for sm_87 when NVRTC is here (else a note).
    let out = ok(&q(&m, &[&"--board", &"jetson-orin-nano", &"--cuda-arch", &"sm_72"]));
    let model = ember_runtime::load_file(&m).unwrap();
    assert_eq!(model.batch_sizes(), vec![1, 8]);
    assert_eq!(model.meta("board"), Some("jetson-orin-nano"));
    let ptx: Vec<&str> =
        model.tensors.iter().filter_map(|t| t.name.strip_prefix(cuda::PTX_TENSOR_PREFIX)).collect();
    if cuda::nvrtc_present() {
        assert_eq!(ptx, vec!["87", "72"], "{out}");
        assert!(out.contains("sm_87: ") && out.contains("PTX embedded"), "{out}");
        let hash = format!("{:016x}", ember_kernels::cuda::source_hash());
        assert_eq!(model.meta(cuda::PTX_META_KEY), Some(hash.as_str()));
    } else {
        assert!(ptx.is_empty());
        assert!(out.contains("compiles the kernels at first load"), "{out}");
    }
    let bad = d.join("bad.ember");
    fails(&q(&bad, &[&"--cuda-arch", &"sm_52"]), "--cuda-arch sm_52: unsupported", Some(&bad));
    fails(&q(&bad, &[&"--board", &"nope"]), "unknown board 'nope'", Some(&bad));

    // --device: cuda fails cleanly without a GPU, auto falls back and says so.
    let outputs = d.join("out.npz");
    let dev = |device: &str| {
        run(
            "ember",
            &[
                &"run",
                &m,
                &"--input",
                &case.join("test.npz"),
                &"--output",
                &outputs,
                &"--device",
                &device,
            ],
        )
    };
    fails(&dev("tpu"), "unknown device 'tpu'", Some(&outputs));
    if cuda::probe(0).is_err() {
        fails(&dev("cuda"), "no CUDA device", Some(&outputs));
        fails(&dev("cuda:1"), "no CUDA device", Some(&outputs));
        let o = dev("auto");
        let text = ok(&o);
        assert!(text.contains("on cpu"), "{text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no CUDA device") && err.contains("running on the CPU"), "{err}");
        fails(&run("ember", &[&"bench", &m, &"--device", &"cuda"]), "no CUDA device", None);
        fails(
            &run("ember", &[&"serve", &m, &"--device", &"cuda", &"--port", &"0"]),
            "no CUDA device",
            None,
        );
    } else {
        // With a GPU the same commands run there and match the CPU.
        let text = ok(&dev("cuda"));
        assert!(text.contains("on cuda:0"), "{text}");
        let gpu = ember_quantize::npz::read_npz(&outputs).unwrap();
        ok(&dev("cpu"));
        let cpu = ember_quantize::npz::read_npz(&outputs).unwrap();
        let (g, c) = (gpu["probs"].to_f32_vec(), cpu["probs"].to_f32_vec());
        assert!(g.iter().zip(&c).all(|(a, b)| (a - b).abs() < 1e-3));
    }
}
