//! Calibration: runs the float reference over the calibration set and observes the inputs of
//! every quantized layer. Observers: min-max, and percentile (clips the rare outliers that would
//! otherwise stretch the scale).

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::reference;
use crate::tensor::HostTensor;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    MinMax,
    Percentile,
}

/// Observed range of one tensor.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

/// Cap on the values kept per tensor for percentile estimates (every k-th value is kept).
const KEEP: usize = 1 << 21;

struct Obs {
    min: f32,
    max: f32,
    kept: Vec<f32>,
    seen: usize,
}

/// Observes `names` over `samples` (already validated), evaluated `batch` samples at a time.
/// Returns a range per name.
pub fn calibrate(
    g: &Graph,
    samples: &HashMap<String, HostTensor>,
    batch: usize,
    names: &HashSet<String>,
    method: Method,
    percentile: f32,
    mut progress: impl FnMut(usize, usize),
) -> Result<HashMap<String, Range>> {
    let n = samples.values().next().map(|t| t.shape[0]).unwrap_or(0);
    if n == 0 {
        return Err(Error::Calib("the calibration set has no samples".into()));
    }
    let mut obs: HashMap<String, Obs> = HashMap::new();
    let mut start = 0;
    while start < n {
        let take = batch.min(n - start);
        let rows: Vec<usize> = (0..batch).map(|i| start + i % take).collect();
        let chunk: HashMap<String, HostTensor> =
            samples.iter().map(|(k, v)| (k.clone(), v.take_rows(&rows))).collect();
        let mut f = |name: &str, t: &HostTensor| {
            let Some(v) = t.as_f32() else { return };
            let v = &v[..v.len() * take / batch];
            let o = obs.entry(name.to_string()).or_insert(Obs {
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
                kept: vec![],
                seen: 0,
            });
            for x in v {
                o.min = o.min.min(*x);
                o.max = o.max.max(*x);
            }
            if method == Method::Percentile {
                let stride = (o.seen + v.len()).div_ceil(KEEP).max(1);
                o.kept.extend(v.iter().step_by(stride));
                o.seen += v.len();
            }
        };
        reference::evaluate(g, &chunk, Some((names, &mut f)))?;
        start += take;
        progress(start, n);
    }
    let mut out = HashMap::new();
    for (name, mut o) in obs {
        let r = match method {
            Method::MinMax => Range { min: o.min, max: o.max },
            Method::Percentile => {
                o.kept.sort_unstable_by(|a, b| a.total_cmp(b));
                let q = |p: f32| -> f32 {
                    let i = ((o.kept.len() - 1) as f32 * p).round() as usize;
                    o.kept[i.min(o.kept.len() - 1)]
                };
                Range { min: q(1.0 - percentile / 100.0), max: q(percentile / 100.0) }
            }
        };
        out.insert(name, r);
    }
    Ok(out)
}
