//! `ember serve` as clients see it: the KServe v2 protocol over raw HTTP (JSON and binary
//! tensors, every kind of bad request answered 4xx while the server keeps serving, metrics), the
//! real `tritonclient[http]` Python client getting exactly what `ember run` gives, and
//! `ember loadgen` losing no request.

use ember_cli::serve::http::read_response;
use ember_quantize::npz;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo");

fn ember() -> Command {
    ember_tests::bin_command(env!("CARGO_BIN_EXE_ember"))
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ember-serve-{}-{tag}", std::process::id()));
    // A directory of an earlier run with the same process id would hold its outputs.
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The demo model with plans for batch 1, 4 and 8, written to `dir`.
fn demo_model(dir: &Path) -> PathBuf {
    let onnx = std::fs::read(format!("{DEMO}/model.onnx")).unwrap();
    let calib = npz::read_npz(Path::new(&format!("{DEMO}/calib.npz"))).unwrap();
    let opts = ember_quantize::Options { batches: vec![1, 4, 8], ..Default::default() };
    let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {}).unwrap();
    let p = dir.join("demo.ember");
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A running `ember serve`, killed on drop.
struct Server {
    child: Child,
    addr: String,
    /// The start-up line.
    banner: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = ember()
            .arg("serve")
            .arg(model)
            .args(["--port", "0", "--threads", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ember serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(addr) = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next())
        else {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("ember serve did not start: {line} {err}");
        };
        Server { addr: addr.to_string(), child, banner: line.clone() }
    }

    fn request(&self, raw: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(raw).unwrap();
        let r = read_response(&mut BufReader::new(s)).unwrap();
        let ct = r.header("content-type").unwrap_or_default().to_string();
        (r.status, ct, r.body)
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, _, b) = self.request(raw.as_bytes());
        (status, serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn err_of(v: &serde_json::Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

fn infer_body(users: &[i64], movies: &[i64], dense_shape: &str) -> String {
    let n = users.len();
    let dense: Vec<f32> = (0..n * 4).map(|i| (i % 7) as f32 * 0.25).collect();
    format!(
        r#"{{"id":"q1","inputs":[{{"name":"user","shape":[{n}],"datatype":"INT64","data":{users:?}}},{{"name":"movie","shape":[{n}],"datatype":"INT64","data":{movies:?}}},{{"name":"dense","shape":{dense_shape},"datatype":"FP32","data":{dense:?}}}]}}"#
    )
}

#[test]
fn serve_speaks_kserve_v2_and_survives_bad_requests() {
    let d = tmp("proto");
    let model = demo_model(&d);
    // A 1 KiB row budget: the demo's embedding tables are served through hot-row caches.
    let srv =
        Server::start(&model, &["--name", "recs", "--max-wait-us", "200", "--row-cache", "1K"]);
    assert_eq!(srv.call("GET", "/v2/health/live", "").0, 200);
    assert_eq!(srv.call("GET", "/v2/health/ready", "").0, 200);
    assert_eq!(srv.call("GET", "/v2/models/recs/ready", "").0, 200);
    assert_eq!(srv.call("GET", "/v2/models/recs/versions/1/ready", "").0, 200);
    let (s, meta) = srv.call("GET", "/v2/models/recs", "");
    assert_eq!(s, 200);
    assert_eq!(
        meta["inputs"][2],
        serde_json::json!({"name": "dense", "datatype": "FP32", "shape": [-1, 4]})
    );
    assert_eq!(meta["outputs"][0]["name"], "rating");

    // JSON infer of 3 samples, against `ember run` on the same inputs.
    let (users, movies) = ([1i64, 5, 42], [3i64, 4, 900]);
    let (s, r) = srv.call("POST", "/v2/models/recs/infer", &infer_body(&users, &movies, "[3,4]"));
    assert_eq!(s, 200, "{r}");
    assert_eq!((r["id"].as_str(), r["model_name"].as_str()), (Some("q1"), Some("recs")));
    assert_eq!(r["outputs"][0]["shape"], serde_json::json!([3, 1]));
    let got: Vec<f32> = r["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let mut arrays = npz::Arrays::new();
    let dense: Vec<f32> = (0..12).map(|i| (i % 7) as f32 * 0.25).collect();
    arrays.insert("user".into(), ember_quantize::tensor::HostTensor::i64(vec![3], users.to_vec()));
    arrays
        .insert("movie".into(), ember_quantize::tensor::HostTensor::i64(vec![3], movies.to_vec()));
    arrays.insert("dense".into(), ember_quantize::tensor::HostTensor::f32(vec![3, 4], dense));
    npz::write_npz(&d.join("in.npz"), &arrays).unwrap();
    let o = ember()
        .args(["run"])
        .arg(&model)
        .arg("--input")
        .arg(d.join("in.npz"))
        .arg("--output")
        .arg(d.join("out.npz"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = npz::read_npz(&d.join("out.npz")).unwrap()["rating"].to_f32_vec();
    assert_eq!(got, want, "JSON answers differ from ember run");

    // Binary tensors in and out (the binary data extension).
    let head = r#"{"inputs":[{"name":"user","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}},{"name":"movie","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}},{"name":"dense","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}"#;
    let mut body = head.as_bytes().to_vec();
    body.extend(5i64.to_le_bytes());
    body.extend(4i64.to_le_bytes());
    for i in 4..8 {
        body.extend(((i % 7) as f32 * 0.25).to_le_bytes());
    }
    let raw = |body: &[u8], hlen: usize| {
        let mut r = format!(
            "POST /v2/models/recs/infer HTTP/1.1\r\nHost: t\r\nInference-Header-Content-Length: {hlen}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let (s, ct, b) = srv.request(&raw(&body, head.len()));
    assert_eq!((s, ct.as_str()), (200, "application/octet-stream"));
    let json_len: usize = {
        let text = String::from_utf8_lossy(&b);
        text.find("}]}").map(|i| i + 3).unwrap()
    };
    let v: serde_json::Value = serde_json::from_slice(&b[..json_len]).unwrap();
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 4);
    assert_eq!(f32::from_le_bytes(b[json_len..json_len + 4].try_into().unwrap()), want[1]);

    // Bad requests: a 4xx naming the problem, and the server keeps serving.
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/v2/models/recs/infer", "{not json".into(), 400, "not valid JSON"),
        (
            "POST",
            "/v2/models/other/infer",
            infer_body(&[1], &[1], "[1,4]"),
            404,
            "unknown model 'other'",
        ),
        (
            "POST",
            "/v2/models/recs/versions/7/infer",
            infer_body(&[1], &[1], "[1,4]"),
            404,
            "no version '7'",
        ),
        ("POST", "/v2/models/recs/infer", infer_body(&[1], &[1], "[1,5]"), 400, "does not match"),
        (
            "POST",
            "/v2/models/recs/infer",
            infer_body(&[1, 2], &[1], "[2,4]"),
            400,
            "1 values for shape [2], which needs 2",
        ),
        (
            "POST",
            "/v2/models/recs/infer",
            infer_body(&[1], &[1], "[1,4]").replace("\"FP32\"", "\"FP16\""),
            400,
            "datatype",
        ),
        (
            "POST",
            "/v2/models/recs/infer",
            infer_body(&[1], &[1], "[1,4]").replace("\"movie\"", "\"film\""),
            400,
            "unknown input 'film'",
        ),
        ("POST", "/v2/models/recs/infer", r#"{"inputs":[]}"#.into(), 400, "missing input"),
        (
            "POST",
            "/v2/models/recs/infer",
            infer_body(&[1], &[1], "[1,4]").replacen("\"data\":[1]", "\"data\":[\"x\"]", 1),
            400,
            "not a valid INT64",
        ),
        (
            "POST",
            "/v2/models/recs/infer",
            infer_body(&[99_999_999], &[1], "[1,4]"),
            400,
            "out of range",
        ),
        (
            "POST",
            "/v2/models/recs/infer",
            infer_body(&[1], &[1], "[1,4]")
                .replace("}]}", "}],\"outputs\":[{\"name\":\"score\"}]}"),
            400,
            "unknown output 'score'",
        ),
        ("GET", "/v2/models/recs/infer", String::new(), 405, "not allowed"),
        ("GET", "/v3/nothing", String::new(), 404, "no such endpoint"),
    ];
    for (m, p, body, status, needle) in &cases {
        let (s, v) = srv.call(m, p, body);
        assert_eq!(s, *status, "{m} {p} {body}: {v}");
        assert!(err_of(&v).contains(needle), "{m} {p}: '{}' lacks '{needle}'", err_of(&v));
    }
    // Binary data shorter than declared; garbage on the wire; a header without a colon.
    let (s, _, b) = srv.request(&raw(&body[..body.len() - 3], head.len()));
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&b).contains("binary_data_size"));
    assert_eq!(srv.request(b"NONSENSE\r\n\r\n").0, 400);
    assert_eq!(srv.request(b"GET /v2 HTTP/1.1\r\nno colon here\r\n\r\n").0, 400);
    assert_eq!(srv.request(b"GET /v2 HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n").0, 413);
    // A client that hangs up mid-body.
    {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        s.write_all(b"POST /v2/models/recs/infer HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"inp")
            .unwrap();
    }
    // Still serving, with keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..2 {
        s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut r).unwrap().status, 200);
    }
    let (s, r) = srv.call("POST", "/v2/models/recs/infer", &infer_body(&users, &movies, "[3,4]"));
    assert_eq!(s, 200, "{r}");

    let (_, _, m) = srv.request(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    let m = String::from_utf8(m).unwrap();
    let metric = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{m}"))
    };
    // 3 + 1 + 3 good samples, one bad id (failed).
    assert_eq!(metric("ember_request_duration_seconds_count{model=\"recs\"}"), 8.0);
    assert_eq!(metric("ember_requests_failed_total{model=\"recs\"}"), 1.0);
    assert_eq!(metric("ember_queue_depth{model=\"recs\"}"), 0.0);
    assert_eq!(metric("ember_requests_rejected_total{model=\"recs\"}"), 0.0);
    assert!(metric("ember_batch_fill_ratio{model=\"recs\"}") > 0.0);
    assert!(metric("ember_http_responses_total{code=\"400\"}") >= 9.0);
    assert!(m.contains("ember_batches_total{model=\"recs\",size=\"8\"}"));
    // Every row looked up went through a cache (warm-up runs included), and some hit.
    let (h, mi) = (
        metric("ember_row_cache_hits_total{model=\"recs\"}"),
        metric("ember_row_cache_misses_total{model=\"recs\"}"),
    );
    assert!(h > 0.0 && mi > 0.0, "hits {h} misses {mi}");
}

#[test]
fn serve_rejects_bad_start_up() {
    let d = tmp("bad");
    let o = ember().args(["serve"]).arg(d.join("missing.ember")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such file"));
    let model = demo_model(&d);
    let o = ember().args(["serve"]).arg(&model).args(["--batch-sizes", "2"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("batch size 2 is not compiled"));
    let srv = Server::start(&model, &[]);
    let port = srv.addr.rsplit(':').next().unwrap();
    let o = ember().args(["serve"]).arg(&model).args(["--port", port]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot listen"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn tritonclient_gets_what_ember_run_gives() {
    let d = tmp("triton");
    let model = demo_model(&d);
    let eval = npz::read_npz(Path::new(&format!("{DEMO}/eval.npz"))).unwrap();
    let rows: Vec<usize> = (0..20).map(|i| i * 37).collect();
    let mut inputs = npz::Arrays::new();
    for k in ["user", "movie", "dense"] {
        inputs.insert(k.into(), eval[k].take_rows(&rows));
    }
    npz::write_npz(&d.join("in.npz"), &inputs).unwrap();
    let o = ember()
        .arg("run")
        .arg(&model)
        .arg("--input")
        .arg(d.join("in.npz"))
        .arg("--output")
        .arg(d.join("want.npz"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let srv = Server::start(&model, &["--max-wait-us", "500"]);
    // The default policy says which way its start-up timing went.
    assert!(
        srv.banner.contains("policy split, waiting: ")
            || srv.banner.contains("policy split, not waiting: "),
        "{}",
        srv.banner
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/oracle/triton_client.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(&srv.addr)
        .arg("demo")
        .arg(d.join("in.npz"))
        .arg(d.join("want.npz"))
        .output()
        .expect("python3 runs (see scripts/setup.sh)");
    assert!(
        o.status.success(),
        "tritonclient check failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok"));
}

#[test]
fn loadgen_loses_nothing_and_plots_each_policy() {
    let d = tmp("loadgen");
    let model = demo_model(&d);
    let svg = d.join("load.svg");
    let o = ember()
        .arg("loadgen")
        .arg(&model)
        .args(["--duration", "1", "--max-seconds", "1", "--loads", "0.3,0.6", "--threads", "1"])
        .args(["--policies", "split:200,pad:200,single", "--connections", "16", "--json", "--svg"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let max = v["max_rps"].as_f64().unwrap();
    assert!(max > 10.0, "{v}");
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 1 + 3 * 2, "{v}");
    for p in points {
        let r = &p["result"];
        assert_eq!(r["errors"], 0, "{p}");
        assert_eq!(r["timed_out"], 0, "{p}");
        assert_eq!(
            r["ok"].as_u64().unwrap() + r["rejected"].as_u64().unwrap(),
            r["sent"].as_u64().unwrap()
        );
        assert!(r["ok"].as_u64().unwrap() > 0);
        assert!(r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(plot.matches("<polyline").count(), 3);
    for name in ["split:200", "pad:200", "single"] {
        assert!(plot.contains(name));
    }
    // Against a running server by URL, and a bad policy named.
    let srv = Server::start(&model, &[]);
    let o = ember()
        .arg("loadgen")
        .args([
            "--url",
            &format!("http://{}", srv.addr),
            "--rate",
            "200",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "demo");
    assert!(v["result"]["ok"].as_u64().unwrap() > 50, "{v}");
    let o = ember().arg("loadgen").arg(&model).args(["--policies", "fastest"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown policy 'fastest'"));
}

#[test]
fn sigterm_drains_and_stops() {
    let d = tmp("term");
    let model = demo_model(&d);
    // A long max wait keeps a lone request queued until the signal arrives. `pad` always waits;
    // `split` waits only when the start-up timing finds batch 8 cheaper per sample than batch 4,
    // which under emulation is a coin toss (CI once saw the request answered at once).
    let mut srv = Server::start(
        &model,
        &["--max-wait-us", "60000000", "--batch-sizes", "4,8", "--policy", "pad"],
    );
    assert!(srv.banner.contains("policy pad,"), "{}", srv.banner);
    let addr = srv.addr.clone();
    let client = std::thread::spawn(move || {
        let body = infer_body(&[1], &[2], "[1,4]");
        let raw = format!(
            "POST /v2/models/demo/infer HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        read_response(&mut BufReader::new(s)).unwrap().status
    });
    // Signal only once the request sits in the queue (slow under emulation).
    let t0 = std::time::Instant::now();
    loop {
        let (_, _, m) = srv.request(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        if String::from_utf8_lossy(&m).contains("ember_queue_depth{model=\"demo\"} 1") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the request never reached the queue");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // The queued request is answered, then the server exits cleanly.
    assert_eq!(client.join().unwrap(), 200);
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
    assert!(TcpStream::connect(&srv.addr).is_err(), "still accepting after SIGTERM");
}
