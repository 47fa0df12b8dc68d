//! The KServe v2 / Triton HTTP inference protocol in front of a [`Batcher`]: server and model
//! health, server and model metadata, model config (Triton), infer with JSON tensors and the
//! binary tensor data extension, and Prometheus metrics.
//!
//! A request's first dimension is its number of samples (the model's per-sample shape follows);
//! each sample is queued on its own and batched with whatever else is waiting.

use super::http::{Request, Response};
use ember_runtime::{BatchError, Batcher, DType, SigEntry};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The model's version as served (one version per server).
pub const VERSION: &str = "1";

/// One model behind the protocol.
pub struct ModelServer {
    pub name: String,
    batcher: Batcher,
    inputs: Vec<SigEntry>,
    outputs: Vec<SigEntry>,
    http: Mutex<BTreeMap<u16, u64>>,
    in_flight: AtomicUsize,
    started: Instant,
}

/// The protocol's name of an element type.
pub fn kserve_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "FP32",
        DType::F16 => "FP16",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
    }
}

fn triton_dtype(d: DType) -> String {
    format!("TYPE_{}", kserve_dtype(d))
}

/// A request error: status and message.
type Fail = (u16, String);

fn fail<T>(status: u16, msg: impl Into<String>) -> Result<T, Fail> {
    Err((status, msg.into()))
}

fn shape_text(dims: &[usize]) -> String {
    let d: Vec<String> =
        ["-1".to_string()].into_iter().chain(dims.iter().map(|d| d.to_string())).collect();
    format!("[{}]", d.join(", "))
}

/// Flattens nested JSON arrays of numbers (row-major) into `out` as little-endian `d` values.
fn json_to_bytes(v: &Value, d: DType, out: &mut Vec<u8>, input: &str) -> Result<(), Fail> {
    let mut stack = vec![v];
    let mut k = 0usize;
    // Depth-first, left to right: push children reversed.
    while let Some(x) = stack.pop() {
        match x {
            Value::Array(items) => stack.extend(items.iter().rev()),
            _ => {
                let bad = || -> Fail {
                    (
                        400,
                        format!(
                            "input '{input}': element {k} ({x}) is not a valid {}",
                            kserve_dtype(d)
                        ),
                    )
                };
                match d {
                    DType::F32 => {
                        out.extend_from_slice(&(x.as_f64().ok_or_else(bad)? as f32).to_le_bytes())
                    }
                    DType::F16 => out.extend_from_slice(
                        &half::f16::from_f64(x.as_f64().ok_or_else(bad)?).to_le_bytes(),
                    ),
                    DType::I64 => out.extend_from_slice(&x.as_i64().ok_or_else(bad)?.to_le_bytes()),
                    DType::I32 => {
                        let v = i32::try_from(x.as_i64().ok_or_else(bad)?).map_err(|_| bad())?;
                        out.extend_from_slice(&v.to_le_bytes())
                    }
                    DType::I8 => {
                        let v = i8::try_from(x.as_i64().ok_or_else(bad)?).map_err(|_| bad())?;
                        out.extend_from_slice(&v.to_le_bytes())
                    }
                    DType::U8 => {
                        let v = u8::try_from(x.as_i64().ok_or_else(bad)?).map_err(|_| bad())?;
                        out.push(v)
                    }
                }
                k += 1;
            }
        }
    }
    Ok(())
}

/// Output tensor data in JSON (shortest round-trip decimal for floats).
#[derive(Serialize)]
#[serde(untagged)]
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

fn bytes_to_data(b: &[u8], d: DType) -> Data {
    match d {
        DType::F32 => Data::F32(
            b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        ),
        DType::F16 => Data::F32(
            b.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
        ),
        DType::I64 => Data::I64(
            b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        ),
        DType::I32 => Data::I32(
            b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect(),
        ),
        DType::I8 => Data::I8(b.iter().map(|&x| x as i8).collect()),
        DType::U8 => Data::U8(b.to_vec()),
    }
}

#[derive(Serialize)]
struct OutTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<OutTensor<'a>>,
}

impl ModelServer {
    pub fn new(
        name: String,
        batcher: Batcher,
        inputs: Vec<SigEntry>,
        outputs: Vec<SigEntry>,
    ) -> Self {
        ModelServer {
            name,
            batcher,
            inputs,
            outputs,
            http: Mutex::new(BTreeMap::new()),
            in_flight: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    pub fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// HTTP requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Answers one HTTP request (never panics on bad input; every error is a status + message).
    pub fn handle(&self, req: &Request) -> Response {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let resp = self.answer(req);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        resp
    }

    fn answer(&self, req: &Request) -> Response {
        let resp = match self.route(req) {
            Ok(r) => r,
            Err((status, msg)) => Response::error(status, msg),
        };
        *self.http.lock().unwrap_or_else(|p| p.into_inner()).entry(resp.status).or_default() += 1;
        resp
    }

    fn route(&self, req: &Request) -> Result<Response, Fail> {
        let path = req.path.trim_end_matches('/');
        let get = req.method == "GET" || req.method == "HEAD";
        let post = req.method == "POST";
        let method = |ok: bool| {
            if ok {
                Ok(())
            } else {
                fail(405, format!("{} is not allowed on {path}", req.method))
            }
        };
        match path {
            "/v2/health/live" | "/v2/health/ready" => {
                method(get)?;
                return Ok(Response::new(200, "application/json", vec![]));
            }
            "/v2" => {
                method(get)?;
                return Ok(Response::json(
                    200,
                    &json!({
                        "name": "ember",
                        "version": env!("CARGO_PKG_VERSION"),
                        "extensions": ["binary_tensor_data", "model_configuration"],
                    }),
                ));
            }
            "/metrics" => {
                method(get)?;
                return Ok(Response::new(
                    200,
                    "text/plain; version=0.0.4",
                    self.metrics().into_bytes(),
                ));
            }
            "/v2/repository/index" => {
                method(post || get)?;
                return Ok(Response::json(
                    200,
                    &json!([{"name": self.name, "version": VERSION, "state": "READY"}]),
                ));
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/v2/models/") else {
            return fail(404, format!("no such endpoint: {path}"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let name = parts[0];
        if name != self.name {
            return fail(404, format!("unknown model '{name}' (this server has '{}')", self.name));
        }
        let mut tail = &parts[1..];
        if tail.first() == Some(&"versions") {
            let v = tail.get(1).copied().unwrap_or("");
            if v != VERSION {
                return fail(
                    404,
                    format!("model '{name}' has no version '{v}' (it has '{VERSION}')"),
                );
            }
            tail = &tail[2..];
        }
        match tail {
            [] => {
                method(get)?;
                Ok(Response::json(200, &self.metadata()))
            }
            ["ready"] => {
                method(get)?;
                Ok(Response::new(200, "application/json", vec![]))
            }
            ["config"] => {
                method(get)?;
                Ok(Response::json(200, &self.config()))
            }
            ["infer"] => {
                method(post)?;
                self.infer(req)
            }
            _ => fail(404, format!("no such endpoint: {path}")),
        }
    }

    fn metadata(&self) -> Value {
        let t = |s: &SigEntry| {
            let mut shape: Vec<i64> = vec![-1];
            shape.extend(s.dims.iter().map(|&d| d as i64));
            json!({"name": s.name, "datatype": kserve_dtype(s.dtype), "shape": shape})
        };
        json!({
            "name": self.name,
            "versions": [VERSION],
            "platform": "ember",
            "inputs": self.inputs.iter().map(t).collect::<Vec<_>>(),
            "outputs": self.outputs.iter().map(t).collect::<Vec<_>>(),
        })
    }

    fn config(&self) -> Value {
        let t = |s: &SigEntry| json!({"name": s.name, "data_type": triton_dtype(s.dtype), "dims": s.dims});
        let sizes = self.batcher.sizes();
        json!({
            "name": self.name,
            "platform": "ember",
            "max_batch_size": sizes[sizes.len() - 1],
            "input": self.inputs.iter().map(t).collect::<Vec<_>>(),
            "output": self.outputs.iter().map(t).collect::<Vec<_>>(),
            "dynamic_batching": {"preferred_batch_size": sizes},
        })
    }

    fn infer(&self, req: &Request) -> Result<Response, Fail> {
        let (head, mut binary) = match req.header("inference-header-content-length") {
            Some(v) => {
                let n: usize = v
                    .parse()
                    .map_err(|_| (400, format!("bad Inference-Header-Content-Length '{v}'")))?;
                if n > req.body.len() {
                    return fail(
                        400,
                        format!(
                            "Inference-Header-Content-Length {n} exceeds the body ({} bytes)",
                            req.body.len()
                        ),
                    );
                }
                (&req.body[..n], &req.body[n..])
            }
            None => (&req.body[..], &[][..]),
        };
        let body: Value = serde_json::from_slice(head)
            .map_err(|e| (400, format!("request body is not valid JSON: {e}")))?;
        let Some(given) = body.get("inputs").and_then(Value::as_array) else {
            return fail(400, "request has no 'inputs' array");
        };
        for g in given {
            let n = g.get("name").and_then(Value::as_str).unwrap_or("");
            if !self.inputs.iter().any(|s| s.name == n) {
                let names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                return fail(400, format!("unknown input '{n}' (the model takes {names:?})"));
            }
        }
        // Each input's bytes (all samples), in signature order, and the sample count.
        let mut data: Vec<Vec<u8>> = vec![];
        let mut count: Option<usize> = None;
        let mut ordered: Vec<(&Value, &SigEntry)> = vec![];
        for s in &self.inputs {
            let found: Vec<&Value> = given
                .iter()
                .filter(|g| g.get("name").and_then(Value::as_str) == Some(&s.name))
                .collect();
            match found.len() {
                0 => return fail(400, format!("missing input '{}'", s.name)),
                1 => ordered.push((found[0], s)),
                _ => return fail(400, format!("input '{}' given more than once", s.name)),
            }
        }
        // Binary parts are laid out in the order the inputs appear in the request.
        let mut bin_of: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for g in given {
            let n = g.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(sz) = g.get("parameters").and_then(|p| p.get("binary_data_size")) {
                let sz = sz
                    .as_u64()
                    .ok_or_else(|| (400, format!("input '{n}': bad binary_data_size")))?
                    as usize;
                if sz > binary.len() {
                    return fail(400, format!("input '{n}': binary_data_size {sz} exceeds the binary data left ({} bytes)", binary.len()));
                }
                bin_of.insert(n, &binary[..sz]);
                binary = &binary[sz..];
            }
        }
        if !binary.is_empty() {
            return fail(
                400,
                format!("{} bytes of binary data not claimed by any input", binary.len()),
            );
        }
        for (g, s) in ordered {
            let dt = g.get("datatype").and_then(Value::as_str).unwrap_or("");
            if dt != kserve_dtype(s.dtype) {
                return fail(
                    400,
                    format!(
                        "input '{}': datatype '{dt}' but the model takes {}",
                        s.name,
                        kserve_dtype(s.dtype)
                    ),
                );
            }
            let shape: Option<Vec<usize>> = g
                .get("shape")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|v| v as usize)).collect());
            let Some(shape) = shape else {
                return fail(400, format!("input '{}': missing or invalid 'shape'", s.name));
            };
            if shape.len() != s.dims.len() + 1 || shape[1..] != s.dims[..] || shape[0] == 0 {
                return fail(
                    400,
                    format!(
                        "input '{}': shape {shape:?} does not match the model's {} (samples first)",
                        s.name,
                        shape_text(&s.dims)
                    ),
                );
            }
            let n = shape[0];
            if count.is_some_and(|c| c != n) {
                return fail(
                    400,
                    format!(
                        "input '{}' has {n} samples, another input has {}",
                        s.name,
                        count.unwrap_or(0)
                    ),
                );
            }
            count = Some(n);
            let want = shape.iter().product::<usize>() * s.dtype.size();
            let bytes = match bin_of.get(s.name.as_str()) {
                Some(b) => b.to_vec(),
                None => {
                    let Some(v) = g.get("data") else {
                        return fail(
                            400,
                            format!("input '{}': no 'data' and no binary data", s.name),
                        );
                    };
                    let mut out = Vec::with_capacity(want);
                    json_to_bytes(v, s.dtype, &mut out, &s.name)?;
                    out
                }
            };
            if bytes.len() != want {
                return fail(
                    400,
                    format!(
                        "input '{}': {} values for shape {shape:?}, which needs {}",
                        s.name,
                        bytes.len() / s.dtype.size(),
                        want / s.dtype.size()
                    ),
                );
            }
            data.push(bytes);
        }
        let n = count.unwrap_or(0);
        if n > self.batcher.capacity() {
            return fail(
                400,
                format!(
                    "{n} samples in one request exceed the queue ({})",
                    self.batcher.capacity()
                ),
            );
        }
        // Which outputs, and which in binary.
        let binary_default = body
            .get("parameters")
            .and_then(|p| p.get("binary_data_output"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut wanted: Vec<(usize, bool)> = vec![];
        match body.get("outputs").and_then(Value::as_array) {
            None => wanted.extend((0..self.outputs.len()).map(|i| (i, binary_default))),
            Some(list) => {
                for o in list {
                    let name = o.get("name").and_then(Value::as_str).unwrap_or("");
                    let Some(i) = self.outputs.iter().position(|s| s.name == name) else {
                        let names: Vec<&str> =
                            self.outputs.iter().map(|s| s.name.as_str()).collect();
                        return fail(
                            400,
                            format!("unknown output '{name}' (the model has {names:?})"),
                        );
                    };
                    let bin = o
                        .get("parameters")
                        .and_then(|p| p.get("binary_data"))
                        .and_then(Value::as_bool)
                        .unwrap_or(binary_default);
                    wanted.push((i, bin));
                }
            }
        }
        let out_bytes = self.run(&data, n)?;
        let mut outs = vec![];
        let mut tail: Vec<u8> = vec![];
        for (i, bin) in wanted {
            let s = &self.outputs[i];
            let mut shape = vec![n];
            shape.extend(&s.dims);
            let b = &out_bytes[i];
            let (data, parameters) = if bin {
                tail.extend_from_slice(b);
                (None, Some(json!({"binary_data_size": b.len()})))
            } else {
                (Some(bytes_to_data(b, s.dtype)), None)
            };
            outs.push(OutTensor {
                name: &s.name,
                datatype: kserve_dtype(s.dtype),
                shape,
                data,
                parameters,
            });
        }
        let id = body.get("id").and_then(Value::as_str).map(str::to_string);
        let resp =
            InferResponse { model_name: &self.name, model_version: VERSION, id, outputs: outs };
        let mut bytes = serde_json::to_vec(&resp).map_err(|e| (500, e.to_string()))?;
        if tail.is_empty() {
            return Ok(Response::new(200, "application/json", bytes));
        }
        let json_len = bytes.len();
        bytes.extend_from_slice(&tail);
        let mut r = Response::new(200, "application/octet-stream", bytes);
        r.headers.push(("Inference-Header-Content-Length", json_len.to_string()));
        Ok(r)
    }

    /// Queues the `n` samples of `data` and gathers their outputs (per output, all samples).
    fn run(&self, data: &[Vec<u8>], n: usize) -> Result<Vec<Vec<u8>>, Fail> {
        let in_lens = self.batcher.input_lens();
        let out_lens = self.batcher.output_lens();
        let mut pending = Vec::with_capacity(n);
        for j in 0..n {
            let x: Vec<&[u8]> =
                data.iter().zip(in_lens).map(|(d, &l)| &d[j * l..(j + 1) * l]).collect();
            match self.batcher.submit(&x) {
                Ok(p) => pending.push(p),
                // Samples already queued are dropped (their slots come back when they finish).
                Err(e @ BatchError::QueueFull { .. }) | Err(e @ BatchError::ShuttingDown) => {
                    return fail(503, e.to_string())
                }
                Err(e) => return fail(400, e.to_string()),
            }
        }
        let mut outs: Vec<Vec<u8>> = out_lens.iter().map(|l| vec![0u8; l * n]).collect();
        let mut first_err = None;
        for (j, p) in pending.into_iter().enumerate() {
            let mut bufs: Vec<&mut [u8]> =
                outs.iter_mut().zip(out_lens).map(|(o, &l)| &mut o[j * l..(j + 1) * l]).collect();
            if let Err(e) = p.wait(&mut bufs) {
                first_err.get_or_insert(format!("sample {j}: {e}"));
            }
        }
        match first_err {
            Some(e) => fail(400, e),
            None => Ok(outs),
        }
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let st = self.batcher.stats();
        let lat = self.batcher.latency().snapshot();
        let m = format!("model=\"{}\"", self.name);
        let mut o = String::new();
        let mut buckets: Vec<(String, String)> = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ]
        .iter()
        .map(|&le| {
            (
                format!("{m},le=\"{le}\""),
                lat.count_le(std::time::Duration::from_secs_f64(le)).to_string(),
            )
        })
        .collect();
        buckets.push((format!("{m},le=\"+Inf\""), lat.count().to_string()));
        let _ = writeln!(
            o,
            "# HELP ember_request_duration_seconds Per-sample latency from queueing to the answer (queue + compute).\n# TYPE ember_request_duration_seconds histogram"
        );
        for (l, v) in &buckets {
            let _ = writeln!(o, "ember_request_duration_seconds_bucket{{{l}}} {v}");
        }
        let _ =
            writeln!(o, "ember_request_duration_seconds_sum{{{m}}} {}", lat.sum().as_secs_f64());
        let _ = writeln!(o, "ember_request_duration_seconds_count{{{m}}} {}", lat.count());
        let mut put = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(o, "{name}{{{labels}}} {v}");
            }
        };
        let one = |v: String| vec![(m.clone(), v)];
        put("ember_queue_depth", "gauge", "Samples queued or running.", &one(st.depth.to_string()));
        put(
            "ember_queue_capacity",
            "gauge",
            "Samples the queue holds.",
            &one(st.capacity.to_string()),
        );
        put(
            "ember_requests_total",
            "counter",
            "Samples accepted into the queue.",
            &one(st.accepted.to_string()),
        );
        put(
            "ember_requests_rejected_total",
            "counter",
            "Samples refused because the queue was full.",
            &one(st.rejected.to_string()),
        );
        put(
            "ember_requests_failed_total",
            "counter",
            "Samples the model failed on.",
            &one(st.failed.to_string()),
        );
        put(
            "ember_batch_fill_ratio",
            "gauge",
            "Real samples per row run (1 = no padding), since start.",
            &one(format!("{:.6}", st.fill_ratio())),
        );
        put(
            "ember_batch_samples_total",
            "counter",
            "Real samples run.",
            &one(st.samples_run.to_string()),
        );
        put(
            "ember_batch_rows_total",
            "counter",
            "Rows run, padding included.",
            &one(st.rows_run.to_string()),
        );
        put(
            "ember_row_cache_hits_total",
            "counter",
            "Embedding-row lookups served from a hot-row cache (--row-cache).",
            &one(st.row_cache_hits.to_string()),
        );
        put(
            "ember_row_cache_misses_total",
            "counter",
            "Embedding-row lookups that missed a hot-row cache and read the table.",
            &one(st.row_cache_misses.to_string()),
        );
        let per: Vec<(String, String)> = st
            .per_size
            .iter()
            .map(|(s, runs, _)| (format!("{m},size=\"{s}\""), runs.to_string()))
            .collect();
        put("ember_batches_total", "counter", "Batches run, by compiled batch size.", &per);
        let per: Vec<(String, String)> = st
            .per_size
            .iter()
            .map(|(s, _, t)| (format!("{m},size=\"{s}\""), format!("{:.9}", t.as_secs_f64())))
            .collect();
        put(
            "ember_batch_compute_seconds",
            "gauge",
            "Mean compute time of one batch, by size.",
            &per,
        );
        let http: Vec<(String, String)> = self
            .http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, n)| (format!("code=\"{c}\""), n.to_string()))
            .collect();
        put("ember_http_responses_total", "counter", "HTTP responses, by status code.", &http);
        put(
            "ember_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            &[(m.clone(), format!("{:.3}", self.started.elapsed().as_secs_f64()))],
        );
        o
    }
}
