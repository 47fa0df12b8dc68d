//! Calibration: runs the float reference over the calibration set and observes the input of every
//! quantized layer: the tensor range, per-channel ranges (over the last axis), a subsample of values
//! for percentile estimates, and the first rows, on which [`crate::quant::choose_linear`] simulates
//! candidate schemes.

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::reference;
use crate::tensor::HostTensor;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// Clip to a percentile of the observed values (default 99.99).
    Percentile,
    /// Search clipping ratios of the min-max range for the least simulated output error.
    Mse,
}

/// A range of values.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

/// What calibration saw of one tensor, viewed as rows of its last axis (K channels).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub k: usize,
    pub ch_min: Vec<f32>,
    pub ch_max: Vec<f32>,
    /// Subsample of (value, channel) for percentiles.
    pub kept: Vec<(f32, u32)>,
    seen: usize,
    /// The first rows seen (row-major, `rows.len() / k` rows).
    pub rows: Vec<f32>,
    /// Every [`SPREAD_STRIDE`]th row seen, up to [`SPREAD_ROWS`] rows: a sample spread over the
    /// calibration set (for the Hessian of INT4 error compensation).
    pub spread: Vec<f32>,
    rows_seen: usize,
}

/// Rows kept in [`Stats::spread`], and the stride between them.
pub const SPREAD_ROWS: usize = 1024;
pub const SPREAD_STRIDE: usize = 4;

/// Cap on the values kept per tensor for percentile estimates.
const KEEP: usize = 1 << 20;
/// Rows kept per tensor for simulating candidate schemes.
pub const SIM_ROWS: usize = 256;

impl Stats {
    fn observe(&mut self, v: &[f32], k: usize, keep_values: bool, keep_spread: bool) {
        if self.k == 0 {
            self.k = k;
            self.ch_min = vec![f32::INFINITY; k];
            self.ch_max = vec![f32::NEG_INFINITY; k];
        }
        for row in v.chunks_exact(k) {
            for ((lo, hi), x) in self.ch_min.iter_mut().zip(self.ch_max.iter_mut()).zip(row) {
                *lo = lo.min(*x);
                *hi = hi.max(*x);
            }
        }
        for row in v.chunks_exact(k).filter(|_| keep_spread) {
            if self.rows_seen.is_multiple_of(SPREAD_STRIDE) && self.spread.len() < SPREAD_ROWS * k {
                self.spread.extend_from_slice(row);
            }
            self.rows_seen += 1;
        }
        let room = SIM_ROWS * k - self.rows.len().min(SIM_ROWS * k);
        self.rows.extend_from_slice(&v[..room.min(v.len())]);
        if keep_values {
            let stride = (self.seen + v.len()).div_ceil(KEEP).max(1);
            self.kept
                .extend(v.iter().enumerate().step_by(stride).map(|(i, x)| (*x, (i % k) as u32)));
            self.seen += v.len();
        }
    }

    /// Range of `x_j / s_j` (s = None: of x) by min-max or percentile.
    pub fn range(&self, s: Option<&[f32]>, method: Method, percentile: f32) -> Range {
        let div = |j: usize| s.map(|s| s[j]).unwrap_or(1.0);
        match method {
            Method::MinMax | Method::Mse => {
                let mut r = Range { min: f32::INFINITY, max: f32::NEG_INFINITY };
                for j in 0..self.k {
                    r.min = r.min.min(self.ch_min[j] / div(j));
                    r.max = r.max.max(self.ch_max[j] / div(j));
                }
                r
            }
            Method::Percentile => {
                let mut v: Vec<f32> = self.kept.iter().map(|(x, j)| x / div(*j as usize)).collect();
                if v.is_empty() {
                    return Range { min: 0.0, max: 0.0 };
                }
                v.sort_unstable_by(|a, b| a.total_cmp(b));
                let q = |p: f32| v[(((v.len() - 1) as f32 * p).round() as usize).min(v.len() - 1)];
                Range { min: q(1.0 - percentile / 100.0), max: q(percentile / 100.0) }
            }
        }
    }
}

/// Observes `names` over `samples` (already validated), `batch` samples at a time (the last
/// chunk padded with repeats, which are not observed). `keep_spread`: also keep the
/// [`Stats::spread`] sample (INT4 error compensation needs it; INT8 does not).
pub fn calibrate(
    g: &Graph,
    samples: &HashMap<String, HostTensor>,
    batch: usize,
    names: &HashSet<String>,
    method: Method,
    keep_spread: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<HashMap<String, Stats>> {
    let n = samples.values().next().map(|t| t.shape[0]).unwrap_or(0);
    if n == 0 {
        return Err(Error::Calib("the calibration set has no samples".into()));
    }
    let mut obs: HashMap<String, Stats> = HashMap::new();
    for (start, take, _) in crate::exec::schedule(n, &[batch]) {
        let chunk = crate::exec::padded_chunk(samples, start, take, batch);
        let mut f = |name: &str, t: &HostTensor| {
            let (Some(v), Some(k)) = (t.as_f32(), t.shape.last().copied()) else { return };
            if k == 0 {
                return;
            }
            let v = &v[..v.len() * take / batch];
            obs.entry(name.to_string()).or_default().observe(
                v,
                k,
                method == Method::Percentile,
                keep_spread,
            );
        };
        reference::evaluate(g, &chunk, Some((names, &mut f)))?;
        progress(start + take, n);
    }
    Ok(obs)
}
