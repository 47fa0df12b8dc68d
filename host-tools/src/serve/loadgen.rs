//! An HTTP load generator for the inference protocol: open-loop arrivals (Poisson, seeded) at a
//! given rate, or a closed loop for the maximum throughput. Latency is measured from each
//! request's *scheduled* arrival, so a client that falls behind does not hide the server's
//! queueing (no coordinated omission).

use super::http::read_response;
use ember_runtime::histogram::{Histogram, Snapshot};
use ember_runtime::SigEntry;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A ready-to-send infer request with one sample, inputs in binary (the tensor data extension)
/// and outputs asked in binary too.
pub fn infer_request(
    model: &str,
    inputs: &[SigEntry],
    outputs: &[SigEntry],
    sample: &[Vec<u8>],
) -> Vec<u8> {
    let ins: Vec<serde_json::Value> = inputs
        .iter()
        .zip(sample)
        .map(|(s, b)| {
            let mut shape = vec![1usize];
            shape.extend(&s.dims);
            serde_json::json!({
                "name": s.name, "shape": shape, "datatype": super::kserve::kserve_dtype(s.dtype),
                "parameters": {"binary_data_size": b.len()},
            })
        })
        .collect();
    let outs: Vec<serde_json::Value> = outputs
        .iter()
        .map(|s| serde_json::json!({"name": s.name, "parameters": {"binary_data": true}}))
        .collect();
    let head = serde_json::json!({"inputs": ins, "outputs": outs}).to_string();
    let bin: usize = sample.iter().map(|b| b.len()).sum();
    let mut r = format!(
        "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: ember\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: {}\r\nContent-Length: {}\r\n\r\n",
        head.len(),
        head.len() + bin
    )
    .into_bytes();
    r.extend_from_slice(head.as_bytes());
    for b in sample {
        r.extend_from_slice(b);
    }
    r
}

/// What to send, where, and how fast.
pub struct Load<'a> {
    pub addr: SocketAddr,
    /// Requests to cycle through (from [`infer_request`]).
    pub requests: &'a [Vec<u8>],
    /// Arrivals per second; `None`: closed loop (each connection sends its next request as soon
    /// as the previous one is answered).
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Stop after this many requests (open loop), even before `duration`.
    pub max_requests: usize,
    pub connections: usize,
    pub seed: u64,
    /// A request unanswered this long counts as timed out (hung).
    pub timeout: Duration,
}

/// The outcome of one [`run`].
#[derive(Clone, Debug)]
pub struct Outcome {
    pub offered_rps: Option<f64>,
    pub sent: u64,
    pub ok: u64,
    /// Refused explicitly by the server (503: queue full).
    pub rejected: u64,
    /// Any other status, or a broken connection.
    pub errors: u64,
    /// No answer within the timeout.
    pub timed_out: u64,
    /// Requests that started more than 1 ms after their scheduled time (all connections busy).
    pub late_starts: u64,
    pub elapsed: Duration,
    /// Latency of the answered (status 200) requests.
    pub latency: Snapshot,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Every request sent was answered or refused: none lost, none hung.
    pub fn none_lost(&self) -> bool {
        self.errors == 0 && self.timed_out == 0 && self.ok + self.rejected == self.sent
    }
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        serde_json::json!({
            "offered_rps": self.offered_rps,
            "achieved_rps": self.throughput(),
            "sent": self.sent, "ok": self.ok, "rejected": self.rejected, "errors": self.errors,
            "timed_out": self.timed_out, "late_starts": self.late_starts,
            "seconds": self.elapsed.as_secs_f64(),
            "p50_ms": ms(self.latency.quantile(0.5)), "p99_ms": ms(self.latency.quantile(0.99)),
            "p999_ms": ms(self.latency.quantile(0.999)), "max_ms": ms(self.latency.max()),
            "mean_ms": ms(self.latency.mean()),
        })
    }
}

/// Exponential inter-arrival times (a Poisson process), from a seeded xorshift.
fn arrivals(rate: f64, duration: Duration, max: usize, seed: u64) -> Vec<Duration> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut t = 0.0f64;
    let mut out = vec![];
    while out.len() < max {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let u = ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        t += -u.ln() / rate;
        if t >= duration.as_secs_f64() {
            break;
        }
        out.push(Duration::from_secs_f64(t));
    }
    out
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    timed_out: AtomicU64,
    late: AtomicU64,
}

/// Sends `req` on the connection (opening it if needed) and returns the status.
fn exchange(
    conn: &mut Option<(TcpStream, BufReader<TcpStream>)>,
    addr: SocketAddr,
    req: &[u8],
    timeout: Duration,
) -> std::io::Result<u16> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        let r = BufReader::new(s.try_clone()?);
        *conn = Some((s, r));
    }
    let Some((s, r)) = conn.as_mut() else { unreachable!() };
    let res = s.write_all(req).and_then(|_| read_response(r));
    match res {
        Ok(resp) => {
            if resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                *conn = None;
            }
            Ok(resp.status)
        }
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

/// Runs a load and reports what came back.
pub fn run(load: &Load) -> Outcome {
    let hist = Histogram::new();
    let c = Counters::default();
    let next = AtomicUsize::new(0);
    let schedule = load.rate.map(|r| arrivals(r, load.duration, load.max_requests, load.seed));
    let t0 = Instant::now() + Duration::from_millis(20);
    let end = t0 + load.duration;
    std::thread::scope(|s| {
        for _ in 0..load.connections.max(1) {
            s.spawn(|| {
                let mut conn = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let due = match &schedule {
                        Some(a) => match a.get(i) {
                            Some(d) => t0 + *d,
                            None => break,
                        },
                        None => {
                            let now = Instant::now().max(t0);
                            if now >= end {
                                break;
                            }
                            now
                        }
                    };
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else if now - due > Duration::from_millis(1) {
                        c.late.fetch_add(1, Ordering::Relaxed);
                    }
                    let req = &load.requests[i % load.requests.len()];
                    c.sent.fetch_add(1, Ordering::Relaxed);
                    match exchange(&mut conn, load.addr, req, load.timeout) {
                        Ok(200) => {
                            hist.record(due.elapsed());
                            c.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(503) => {
                            c.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            c.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            c.timed_out.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            c.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Outcome {
        offered_rps: load.rate,
        sent: ld(&c.sent),
        ok: ld(&c.ok),
        rejected: ld(&c.rejected),
        errors: ld(&c.errors),
        timed_out: ld(&c.timed_out),
        late_starts: ld(&c.late),
        elapsed: t0.elapsed(),
        latency: hist.snapshot(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_poisson_at_the_rate() {
        let a = arrivals(1000.0, Duration::from_secs(10), usize::MAX, 7);
        assert!((a.len() as f64 - 10_000.0).abs() < 400.0, "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        // Exponential gaps: standard deviation equals the mean.
        assert!((mean - 1e-3).abs() < 5e-5 && (var.sqrt() / mean - 1.0).abs() < 0.05);
        assert_eq!(arrivals(1000.0, Duration::from_secs(10), 5, 7).len(), 5);
        assert_eq!(a[..5], arrivals(1000.0, Duration::from_secs(10), 5, 7)[..]);
    }
}
