//! Fine-tuning into an overlay beside a flashed model: the runtime serves the trained rows
//! (re-quantized in the model's own row encoding) while the model file stays as it was; bad
//! overlays are named; a run killed with SIGKILL resumes from its last checkpoint and ends with
//! the tables an uninterrupted run gives.

use ember_runtime::{Model, Overlay, Session};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn ember() -> Command {
    ember_tests::bin_command(env!("CARGO_BIN_EXE_ember"))
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = ember();
    for a in args {
        c.arg(a);
    }
    c.output().expect("binary runs")
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ember-overlay-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn movielens() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/ml-latest-small/ratings.csv")
}

use ember_tests::{cli_fails as fails, cli_ok as ok};

/// A matrix-factorization model trained from scratch on the 90% split (`bits` per table value).
fn base_model(d: &Path, bits: u32) -> PathBuf {
    let m = d.join(format!("base{bits}.ember"));
    let (r, b) = (movielens(), bits.to_string());
    ok(&run(&[
        &"finetune",
        &"--ratings",
        &r,
        &"--holdout",
        &"0.1",
        &"--init",
        &"--k",
        &"32",
        &"--epochs",
        &"3",
        &"--table-bits",
        &b,
        &"--quiet",
        &"-o",
        &m,
    ]));
    m
}

/// `ember finetune --model base -o out` on the same split, with `extra` arguments; the JSON report.
fn tune(base: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let r = movielens();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"finetune", &"--ratings", &r, &"--holdout", &"0.1", &"--model", &base, &"--json"];
    for e in extra {
        args.push(e);
    }
    args.push(&"-o");
    args.push(&out);
    serde_json::from_str(&ok(&run(&args))).unwrap()
}

fn blob<'a>(ov: &'a Overlay, name: &str) -> &'a [u8] {
    ov.blob(name).unwrap_or_else(|| panic!("overlay lacks {name}"))
}

fn read_ov(p: &Path) -> Overlay {
    Overlay::parse(&std::fs::read(p).unwrap()).unwrap()
}

/// Ratings the runtime predicts for (user row, item row) pairs, one at a time.
fn predict(m: &Model<ember_runtime::FileBytes>, pairs: &[(u32, u32)]) -> Vec<f32> {
    let mut s = Session::new(m, 1).unwrap();
    pairs
        .iter()
        .map(|(u, i)| {
            let (u, i) = ((*u as i64).to_le_bytes(), (*i as i64).to_le_bytes());
            s.run(&[&u, &i]).unwrap();
            s.output_f32(0).unwrap()[0]
        })
        .collect()
}

#[test]
fn overlay_serves_trained_rows_and_the_model_stays_as_flashed() {
    let d = tmp("serve");
    for bits in [8, 4] {
        let base = base_model(&d, bits);
        let flashed = std::fs::read(&base).unwrap();
        let ovp = d.join(format!("base{bits}.ember.overlay"));
        let j = tune(&base, &ovp, &["--epochs", "4", "--precision", "fp32", "--k", "32"]);
        assert_eq!(std::fs::read(&base).unwrap(), flashed, "the model file was rewritten");
        let (val, served) =
            (j["val_rmse"].as_f64().unwrap(), j["served_val_rmse"].as_f64().unwrap());
        let bound = if bits == 8 { 0.003 } else { 0.02 };
        assert!((served - val).abs() < bound, "int{bits}: served {served} vs trained {val}");
        assert!(val < 0.95, "int{bits}: validation RMSE {val}");

        // The runtime applies the overlay: touched rows predict what the trained f32 rows
        // predict (within the row quantization), untouched rows are the flashed ones.
        let ov = read_ov(&ovp);
        let users = ember_cli::mf_overlay::bytes_u32(blob(&ov, "finetune.users"));
        let items = ember_cli::mf_overlay::bytes_u32(blob(&ov, "finetune.items"));
        let p = ember_cli::mf_overlay::bytes_f32(blob(&ov, "finetune.p"));
        let q = ember_cli::mf_overlay::bytes_f32(blob(&ov, "finetune.q"));
        let bu = ember_cli::mf_overlay::bytes_f32(blob(&ov, "finetune.bu"));
        let bi = ember_cli::mf_overlay::bytes_f32(blob(&ov, "finetune.bi"));
        let plain = ember_runtime::load_file(&base).unwrap();
        let mut m = ember_runtime::load_file(&base).unwrap();
        m.apply_overlay(ov.clone()).unwrap();
        let rows = m.overlay_rows();
        assert!(rows.iter().any(|(t, n)| t.starts_with("item_factors") && *n == items.len()));
        let mf = ember_cli::mf_overlay::MfModel::read(&plain, &base).unwrap();
        let (lo, hi) = mf.range.unwrap();
        let pairs: Vec<(usize, usize)> =
            (0..50).map(|j| (j * 37 % users.len(), j * 101 % items.len())).collect();
        let rows_pairs: Vec<(u32, u32)> =
            pairs.iter().map(|(a, b)| (users[*a], items[*b])).collect();
        let got = predict(&m, &rows_pairs);
        let tol = if bits == 8 { 0.03 } else { 0.25 };
        for (n, (a, b)) in pairs.iter().enumerate() {
            let dot: f32 = (0..32).map(|j| p[a * 32 + j] * q[b * 32 + j]).sum();
            let want = (mf.mean + bu[*a] + bi[*b] + dot).clamp(lo, hi);
            assert!((got[n] - want).abs() < tol, "int{bits} pair {n}: {} vs {want}", got[n]);
        }
        let untouched: Vec<u32> =
            (0..mf.item.rows as u32).filter(|r| items.binary_search(r).is_err()).take(20).collect();
        assert!(!untouched.is_empty());
        // An untouched item with a touched user: the item side must be the flashed row, so the
        // overlay's prediction equals the flashed model's with that user's new row.
        let mut flashed_user = ember_runtime::load_file(&base).unwrap();
        let only_users = Overlay {
            patches: ov.patches.iter().filter(|p| p.tensor.starts_with("user")).cloned().collect(),
            ..ov.clone()
        };
        flashed_user.apply_overlay(only_users).unwrap();
        let probe: Vec<(u32, u32)> = untouched.iter().map(|i| (users[3], *i)).collect();
        assert_eq!(predict(&m, &probe), predict(&flashed_user, &probe));
        assert_ne!(predict(&m, &probe), predict(&plain, &probe), "the user rows were not patched");

        // `ember run` picks up MODEL.overlay beside the model, and --no-overlay runs it as
        // flashed.
        let mut input = std::collections::BTreeMap::new();
        let ids = |f: &dyn Fn(&(u32, u32)) -> u32| rows_pairs.iter().map(|x| f(x) as i64).collect();
        input.insert("user".to_string(), ember_quantize::HostTensor::i64(vec![50], ids(&|x| x.0)));
        input.insert("item".to_string(), ember_quantize::HostTensor::i64(vec![50], ids(&|x| x.1)));
        let (inp, out) = (d.join("in.npz"), d.join("out.npz"));
        ember_quantize::npz::write_npz(&inp, &input).unwrap();
        let o = run(&[&"run", &base, &"--input", &inp, &"--output", &out]);
        ok(&o);
        assert!(String::from_utf8_lossy(&o.stderr).contains("applied overlay"));
        let cli = ember_quantize::npz::read_npz(&out).unwrap()["rating"].to_f32_vec();
        assert_eq!(cli, got);
        ok(&run(&[&"run", &base, &"--no-overlay", &"--input", &inp, &"--output", &out]));
        let cli = ember_quantize::npz::read_npz(&out).unwrap()["rating"].to_f32_vec();
        assert_eq!(cli, predict(&plain, &rows_pairs));
    }

    // --user-only: users refitted alone against the frozen (INT8) items; only user rows change.
    let base = d.join("base8.ember");
    let text = std::fs::read_to_string(movielens()).unwrap();
    let few: String = text
        .lines()
        .filter(|l| l.starts_with("1,") || l.starts_with("7,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let few_csv = d.join("few.csv");
    std::fs::write(&few_csv, few).unwrap();
    let uo = d.join("users.overlay");
    let o = ok(&run(&[
        &"finetune",
        &"--model",
        &base,
        &"--ratings",
        &few_csv,
        &"--user-only",
        &"--json",
        &"-o",
        &uo,
    ]));
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(j["users"], 2);
    let (b, a) = (j["train_rmse_before"].as_f64().unwrap(), j["train_rmse"].as_f64().unwrap());
    assert!(a < b, "user-only fit: RMSE {b} -> {a}");
    assert!(j["fit_us_mean"].as_f64().unwrap() > 0.0);
    let ov = read_ov(&uo);
    for p in &ov.patches {
        let want = if p.tensor.starts_with("user") { 2 } else { 0 };
        assert_eq!(p.ids.len(), want, "{}", p.tensor);
    }
    let mut m = ember_runtime::load_file(&base).unwrap();
    let plain = ember_runtime::load_file(&base).unwrap();
    m.apply_overlay(ov.clone()).unwrap();
    let ids = ember_cli::mf_overlay::MfModel::read(&plain, &base).unwrap().user_ids;
    let row = ids.iter().position(|x| *x == 7).unwrap() as u32;
    let probe: Vec<(u32, u32)> = (0..10).map(|i| (row, i * 13)).collect();
    assert_ne!(predict(&m, &probe), predict(&plain, &probe));

    // Bad overlays are named, and never half-applied; --no-overlay still runs the model.
    let base = d.join("base8.ember");
    let ovp = d.join("base8.ember.overlay");
    let good = std::fs::read(&ovp).unwrap();
    let (inp, out) = (d.join("in.npz"), d.join("bad-out.npz"));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 9] ^= 0x40;
                b
            },
            "body checksum",
        ),
        (good[..good.len() - 100].to_vec(), "the file has"),
        (good[..40].to_vec(), "truncated"),
        (b"not an overlay at all".to_vec(), "bad magic"),
    ];
    for (bytes, needle) in cases {
        std::fs::write(&ovp, &bytes).unwrap();
        let o = run(&[&"run", &base, &"--input", &inp, &"--output", &out]);
        fails(&o, needle, Some(&out));
        ok(&run(&[&"run", &base, &"--no-overlay", &"--input", &inp, &"--output", &out]));
        std::fs::remove_file(&out).unwrap();
    }
    // An overlay made for another model.
    std::fs::write(&ovp, &good).unwrap();
    let other = d.join("base4.ember");
    let o = run(&[&"run", &other, &"--overlay", &ovp, &"--input", &inp, &"--output", &out]);
    fails(&o, "made for another model", Some(&out));
    // A patch on a tensor that is not read by rows, and one with rows of the wrong size.
    let mut m = ember_runtime::load_file(&base).unwrap();
    let mut ov = read_ov(&ovp);
    ov.patches.truncate(1);
    ov.patches[0].tensor = "mean".into();
    let e = m.apply_overlay(ov).unwrap_err().to_string();
    assert!(e.contains("'mean'") && e.contains("rows of"), "{e}");
    let mut ov = read_ov(&ovp);
    ov.patches[0].ids.push(1 << 30);
    let e = m.apply_overlay(ov).unwrap_err().to_string();
    assert!(e.contains("outside the tensor"), "{e}");
    // An overlay output needs a model to overlay.
    let r = movielens();
    let o = run(&[&"finetune", &"--ratings", &r, &"--init", &"-o", &d.join("x.overlay")]);
    fails(&o, "give it with --model", Some(&d.join("x.overlay")));
}

#[test]
fn killed_finetune_resumes_from_its_last_checkpoint() {
    let d = tmp("kill");
    let base = base_model(&d, 8);
    let ovp = d.join("killed.overlay");
    let r = movielens();
    let common = |c: &mut Command| {
        c.args(["finetune", "--holdout", "0.1", "--threads", "2", "--precision", "fp32"])
            .arg("--ratings")
            .arg(&r)
            .arg("--model")
            .arg(&base);
    };
    let mut c = ember();
    common(&mut c);
    c.args(["--epochs", "400", "--checkpoint-every", "20000", "-o"]).arg(&ovp);
    let mut child = c.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = vec![];
    let mut line = String::new();
    while seen.len() < 3 {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0, "no checkpoints");
        if let Some(rest) = line.strip_prefix("checkpoint: ") {
            seen.push(rest.split(' ').next().unwrap().parse::<u64>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run ended before it was killed");

    // The overlay on disk is a whole checkpoint (checksums hold), at or after the last one
    // announced: at most one checkpoint interval of work was lost.
    let ov = read_ov(&ovp);
    let st: serde_json::Value = serde_json::from_slice(blob(&ov, "finetune.state")).unwrap();
    let done = st["updates_done"].as_u64().unwrap();
    assert!(done >= *seen.last().unwrap(), "checkpoint {done} is older than {seen:?}");
    assert!(!st["finished"].as_bool().unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".killed.overlay.tmp"))
        .collect();
    // A temporary file may remain from the write the kill interrupted; it is never the overlay.
    assert!(leftovers.len() <= 1, "{leftovers:?}");

    // Resume to two epochs past the checkpoint, and compare with an uninterrupted run of as
    // many epochs (default checkpointing: other slice boundaries, same arithmetic).
    let epochs = (st["epoch"].as_u64().unwrap() + 2).to_string();
    let mut c = ember();
    common(&mut c);
    c.args(["--resume", "--json", "--epochs", &epochs, "-o"]).arg(&ovp);
    let j: serde_json::Value = serde_json::from_str(&ok(&c.output().unwrap())).unwrap();
    assert_eq!(j["resumed_from_update"].as_u64(), Some(done));
    let whole = d.join("whole.overlay");
    let mut c = ember();
    common(&mut c);
    c.args(["--json", "--epochs", &epochs, "-o"]).arg(&whole);
    let jw: serde_json::Value = serde_json::from_str(&ok(&c.output().unwrap())).unwrap();
    assert_eq!(j["val_rmse"], jw["val_rmse"]);
    let (a, b) = (read_ov(&ovp), read_ov(&whole));
    assert_eq!(a.patches, b.patches, "served rows differ from the uninterrupted run's");
    for n in ["finetune.p", "finetune.q", "finetune.bu", "finetune.bi"] {
        assert!(blob(&a, n) == blob(&b, n), "{n} differs from the uninterrupted run's");
    }

    // Auto precision: two epochs, then --resume to four, equals four in one go (the f16 rows,
    // the switch state and the monitored history are all in the checkpoint).
    let auto = |out: &Path, epochs: &str, resume: bool| {
        let mut c = ember();
        c.args(["finetune", "--holdout", "0.1", "--threads", "2", "--precision", "auto"])
            .arg("--ratings")
            .arg(&r)
            .arg("--model")
            .arg(&base)
            .args(["--epochs", epochs, "--quiet", "-o"])
            .arg(out);
        if resume {
            c.arg("--resume");
        }
        ok(&c.output().unwrap());
        read_ov(out)
    };
    let (x, y) = (d.join("auto-a.overlay"), d.join("auto-b.overlay"));
    auto(&x, "2", false);
    let a = auto(&x, "4", true);
    let b = auto(&y, "4", false);
    assert_eq!(a.patches, b.patches);
    // Resuming with other settings is refused by name.
    let mut c = ember();
    common(&mut c);
    c.args(["--resume", "--lr", "0.02", "-o"]).arg(&ovp);
    fails(&c.output().unwrap(), "settings or ratings differ", None);
}
