//! `ember embed` end to end on the real MiniLM-L3 export: `quantize --tokenizer` embeds the
//! tokenizer, `ember embed` tokenizes like the Python `tokenizers` package (the oracle's token
//! ids, and tricky strings encoded by Python here), and the embeddings track onnxruntime FP32.
//! Bad input gets a clear error. Host only (quantizing under qemu would take minutes).
#![cfg(target_arch = "x86_64")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn bin(name: &str) -> Command {
    let path = match name {
        "quantize" => env!("CARGO_BIN_EXE_quantize"),
        _ => env!("CARGO_BIN_EXE_ember"),
    };
    ember_tests::bin_command(path)
}

use ember_tests::cli_ok as ok;

/// A failure naming `needle` (no output file involved).
fn fails(o: &Output, needle: &str) {
    ember_tests::cli_fails(o, needle, None)
}

fn tokenizer_json() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/minilm/tokenizer.json")
}

/// MiniLM-L3 at static INT8 (batch 1 and 8) with its tokenizer embedded, once per process.
fn model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let (onnx, dir) = ember_tests::minilm();
        let d = std::env::temp_dir().join(format!("ember-embed-{}", std::process::id()));
        // A directory of an earlier run with the same process id would hold its outputs.
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let m = d.join("minilm.ember");
        let calib = dir.join("calib.npz");
        let tok = tokenizer_json();
        let args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &onnx,
            &"-o",
            &m,
            &"--calib",
            &calib,
            &"--shape",
            &"input_ids=128",
            &"--shape",
            &"attention_mask=128",
            &"--batch",
            &"1",
            &"--batch",
            &"8",
            &"--method",
            &"minmax",
            &"--act-matmul",
            &"int8",
            &"--tokenizer",
            &tok,
            &"-q",
        ];
        ok(&bin("quantize").args(args).output().unwrap());
        m
    })
}

fn embed_json(args: &[&str]) -> serde_json::Value {
    let out =
        ok(&bin("ember").arg("embed").arg(model()).args(args).arg("--json").output().unwrap());
    serde_json::from_str(&out).unwrap()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn sentences_embed_like_onnxruntime_with_the_oracle_token_ids() {
    let (_, dir) = ember_tests::minilm();
    let text = std::fs::read_to_string(dir.join("sentences.txt")).unwrap();
    // The oracle's eval set is sentences 48.. (calibration used the first 48).
    let eval: Vec<&str> = text.lines().skip(48).take(12).collect();
    let file = std::env::temp_dir().join(format!("ember-embed-s-{}.txt", std::process::id()));
    std::fs::write(&file, eval.join("\n")).unwrap();
    let j = embed_json(&["--file", file.to_str().unwrap()]);
    assert_eq!(j["output"], "461");
    assert_eq!(j["tokenizer"], "embedded in the model");
    let ids = ember_quantize::npz::read_npz(&dir.join("eval.npz")).unwrap();
    let want_ids = ids["input_ids"].as_i64().unwrap().to_vec();
    let want =
        ember_quantize::npz::read_npz(&dir.join("expected.npz")).unwrap()["461"].to_f32_vec();
    let items = j["embeddings"].as_array().unwrap();
    assert_eq!(items.len(), eval.len());
    let mut cos = vec![];
    for (i, it) in items.iter().enumerate() {
        let got: Vec<i64> =
            it["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let row = &want_ids[i * 128..(i + 1) * 128];
        assert_eq!(&got[..], &row[..got.len()], "token ids of \"{}\"", eval[i]);
        assert!(row[got.len()..].iter().all(|v| *v == 0), "padding of \"{}\"", eval[i]);
        let e: Vec<f64> =
            it["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let w: Vec<f64> = want[i * 384..(i + 1) * 384].iter().map(|v| *v as f64).collect();
        cos.push(cosine(&e, &w));
    }
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    eprintln!("ember embed (INT8) vs onnxruntime FP32: mean cosine {mean:.5}");
    assert!(mean >= 0.995, "{cos:?}");
    // Similarity matrix: symmetric, ones on the diagonal.
    let sim = j["similarity"].as_array().unwrap();
    for (a, row) in sim.iter().enumerate() {
        for (b, v) in row.as_array().unwrap().iter().enumerate() {
            let v = v.as_f64().unwrap();
            let t = sim[b][a].as_f64().unwrap();
            assert!((v - t).abs() < 1e-9 && (a != b || (v - 1.0).abs() < 1e-6), "{a},{b}: {v}");
        }
    }
}

#[test]
fn tricky_text_tokenizes_like_python_tokenizers() {
    let long_word = "x".repeat(150);
    let many = "word ".repeat(200);
    let texts = [
        "Café naïve résumé ÉCOLE",
        "Hello,world!!! (really?) — yes: 100% \"quoted\"",
        "北京欢迎你 and 東京",
        "don't stop-believing; e-mail me@example.com",
        "emoji 🙂 and zero\u{200b}width tab\there",
        long_word.as_str(),
        many.as_str(),
        "   ",
    ];
    let script = r#"
import json, sys
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
t.no_padding()
t.enable_truncation(max_length=128)
print(json.dumps([t.encode(s).ids for s in json.load(sys.stdin)]))
"#;
    let mut py = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(tokenizer_json())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(serde_json::to_string(&texts).unwrap().as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "python tokenizers failed (installed by scripts/setup.sh?)");
    let want: Vec<Vec<i64>> = serde_json::from_slice(&out.stdout).unwrap();
    let args: Vec<&str> = texts.to_vec();
    let j = embed_json(&args);
    for (i, it) in j["embeddings"].as_array().unwrap().iter().enumerate() {
        let got: Vec<i64> =
            it["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(got, want[i], "{:?}", texts[i]);
    }
    assert_eq!(want[6].len(), 128, "truncated to the model's sequence length");
}

#[test]
fn bad_input_is_a_clear_error() {
    let m = model();
    let run = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut c = bin("ember");
        c.arg("embed");
        for a in args {
            c.arg(a);
        }
        c.output().unwrap()
    };
    fails(&run(&[&m]), "no sentences");
    fails(&run(&[&m, &"hi", &"--output-name", &"nope"]), "has no output 'nope'");
    let garbage = m.with_file_name("garbage.json");
    std::fs::write(&garbage, b"{not json").unwrap();
    fails(&run(&[&m, &"hi", &"--tokenizer", &garbage]), "not a usable tokenizer.json");
    fails(&run(&[&m, &"hi", &"--file", &"/nonexistent/s.txt"]), "/nonexistent/s.txt");
    // A model without an embedded tokenizer and none beside it.
    let plain = m.with_file_name("plain.ember");
    let (onnx, dir) = ember_tests::minilm();
    ok(&bin("quantize")
        .args([onnx.as_os_str(), "-o".as_ref(), plain.as_os_str(), "--calib".as_ref()])
        .arg(dir.join("calib.npz"))
        .args(["--shape", "input_ids=128", "--shape", "attention_mask=128", "--bits", "32", "-q"])
        .output()
        .unwrap());
    fails(&run(&[&plain, &"hi"]), "has no tokenizer");
    // Not a text model.
    let case = ember_tests::case("mlp");
    let mlp = m.with_file_name("mlp.ember");
    ok(&bin("quantize")
        .arg(case.join("model.onnx"))
        .args(["-o".as_ref(), mlp.as_os_str(), "--calib".as_ref()])
        .arg(case.join("calib.npz"))
        .args(["--tokenizer".as_ref(), tokenizer_json().as_os_str(), "-q".as_ref()])
        .output()
        .unwrap());
    fails(&run(&[&mlp, &"hi"]), "is not a tokenizer output");
    // quantize --tokenizer with a file that is not one: refused before any output is written.
    let out = m.with_file_name("never.ember");
    let o = bin("quantize")
        .arg(case.join("model.onnx"))
        .args(["-o".as_ref(), out.as_os_str(), "--calib".as_ref()])
        .arg(case.join("calib.npz"))
        .args(["--tokenizer".as_ref(), garbage.as_os_str()])
        .output()
        .unwrap();
    fails(&o, "not a usable tokenizer.json");
    assert!(!out.exists());
}
