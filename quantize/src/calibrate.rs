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
    /// The clipping threshold of |x| whose 8-bit quantized histogram is closest to the observed
    /// one (least KL divergence, over a 2048-bin histogram).
    Entropy,
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
            Method::Entropy => {
                let v: Vec<f32> = self.kept.iter().map(|(x, j)| x / div(*j as usize)).collect();
                let lo = v.iter().fold(f32::INFINITY, |a, b| a.min(*b));
                let hi = v.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
                if v.is_empty() {
                    return Range { min: 0.0, max: 0.0 };
                }
                // Two-sided tensors share the 256 codes between the signs.
                let t = entropy_threshold(&v, if lo < 0.0 && hi > 0.0 { 128 } else { 256 });
                Range { min: lo.max(-t), max: hi.min(t) }
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

/// Bins of the |x| histogram searched by [`entropy_threshold`].
const ENTROPY_BINS: usize = 2048;

/// The threshold `t` on |x| whose quantization to `levels` levels loses least information: for
/// each candidate number of bins `i` (from `levels` to all), the histogram cut at `i` with the
/// mass above folded into its last bin (P) is compared with its merge into `levels` levels
/// spread back over the non-empty bins (Q), and the `i` of least KL(P‖Q) wins. NaN and infinite
/// values are ignored; all-zero data gives 0.
pub fn entropy_threshold(v: &[f32], levels: usize) -> f32 {
    let amax = v.iter().filter(|x| x.is_finite()).fold(0f32, |a, x| a.max(x.abs()));
    if amax <= 0.0 {
        return 0.0;
    }
    let width = amax / ENTROPY_BINS as f32;
    let mut hist = vec![0f64; ENTROPY_BINS];
    for x in v.iter().filter(|x| x.is_finite()) {
        hist[((x.abs() / width) as usize).min(ENTROPY_BINS - 1)] += 1.0;
    }
    let levels = levels.clamp(2, ENTROPY_BINS);
    let mut above: f64 = 0.0;
    let (mut best, mut best_kl) = (ENTROPY_BINS, f64::INFINITY);
    let (mut p, mut q) = (vec![0f64; ENTROPY_BINS], vec![0f64; ENTROPY_BINS]);
    // Candidates from the widest down, so the mass above the cut accumulates.
    for i in (levels..=ENTROPY_BINS).rev() {
        if i < ENTROPY_BINS {
            above += hist[i];
        }
        p[..i].copy_from_slice(&hist[..i]);
        p[i - 1] += above;
        for l in 0..levels {
            let (a, b) = (l * i / levels, (l + 1) * i / levels);
            let total: f64 = hist[a..b].iter().sum();
            let nz = hist[a..b].iter().filter(|h| **h > 0.0).count();
            for j in a..b {
                q[j] = if hist[j] > 0.0 { total / nz as f64 } else { 0.0 };
            }
        }
        let (ps, qs): (f64, f64) = (p[..i].iter().sum(), q[..i].iter().sum());
        if ps <= 0.0 || qs <= 0.0 {
            continue;
        }
        let kl: f64 = p[..i]
            .iter()
            .zip(&q[..i])
            .filter(|(pp, _)| **pp > 0.0)
            .map(|(pp, qq)| {
                let (pn, qn) = (pp / ps, (qq / qs).max(1e-12));
                pn * (pn / qn).ln()
            })
            .sum();
        if kl < best_kl {
            (best, best_kl) = (i, kl);
        }
    }
    best as f32 * width
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
                matches!(method, Method::Percentile | Method::Entropy),
                keep_spread,
            );
        };
        reference::evaluate(g, &chunk, Some((names, &mut f)))?;
        progress(start + take, n);
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic N(0, 1) samples (Box-Muller on a xorshift stream).
    fn gauss(n: usize) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut u = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| ((-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos()) as f32)
            .collect()
    }

    #[test]
    fn entropy_clips_rare_outliers_and_keeps_dense_ranges() {
        let mut v = gauss(200_000);
        v.extend([60.0, -55.0, 58.0]);
        let t = entropy_threshold(&v, 128);
        assert!(t > 2.5 && t < 15.0, "gaussian with outliers: threshold {t}");
        // Uniform data has no tail worth clipping.
        let u: Vec<f32> = (0..100_000).map(|i| (i as f32 / 50_000.0) - 1.0).collect();
        let t = entropy_threshold(&u, 128);
        assert!(t > 0.9 && t <= 1.0, "uniform: threshold {t}");
        // Degenerate inputs do not divide by zero.
        assert_eq!(entropy_threshold(&[0.0; 10], 128), 0.0);
        assert_eq!(entropy_threshold(&[], 128), 0.0);
        let t = entropy_threshold(&[f32::NAN, 2.0, f32::INFINITY, -1.0], 256);
        assert!(t.is_finite() && t <= 2.0, "{t}");
    }

    #[test]
    fn entropy_range_of_stats_is_clipped_on_both_sides_and_one_sided_data_stays_one_sided() {
        let mut st = Stats::default();
        let mut v = gauss(65_536);
        v.push(80.0);
        st.observe(&v, 1, true, false);
        let r = st.range(None, Method::Entropy, 99.99);
        assert!(r.min < -2.0 && r.min > -15.0 && r.max > 2.0 && r.max < 15.0, "{r:?}");
        let mut st = Stats::default();
        let relu: Vec<f32> = gauss(65_536).iter().map(|x| x.max(0.0)).collect();
        st.observe(&relu, 1, true, false);
        let r = st.range(None, Method::Entropy, 99.99);
        assert_eq!(r.min, 0.0);
        assert!(r.max > 1.0 && r.max < 4.5, "{r:?}");
    }
}
