//! Host-side helpers around the runtime: input validation against a signature, running any
//! number of samples through the compiled batch sizes, and the batched float reference.

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::reference;
use crate::tensor::HostTensor;
use ember_runtime::{DType, Model, Session};
use std::collections::{BTreeMap, HashMap};

/// One model input or output: name, dtype, per-sample dims.
#[derive(Clone, Debug, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
}

/// Checks `arrays` against `specs` (names, dtypes, per-sample shapes, finite values, equal sample
/// counts) and returns them with the sample count. `what` names the data set in errors.
pub fn check_inputs(
    specs: &[IoSpec],
    arrays: &BTreeMap<String, HostTensor>,
    what: &str,
) -> Result<(HashMap<String, HostTensor>, usize)> {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let e = |m: String| if what == "calibration set" { Error::Calib(m) } else { Error::Input(m) };
    for k in arrays.keys() {
        if !names.contains(&k.as_str()) {
            return Err(e(format!(
                "{what} has an array '{k}' that is not a model input (inputs: {})",
                names.join(", ")
            )));
        }
    }
    let mut out = HashMap::new();
    let mut count = None;
    for s in specs {
        let t = arrays.get(&s.name).ok_or_else(|| {
            e(format!(
                "{what} lacks model input '{}' (it has: {})",
                s.name,
                arrays.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let is_float = t.as_f32().is_some();
        match (s.dtype, is_float) {
            (DType::F32, false) => {
                return Err(e(format!(
                    "input '{}' must be float32, the {what} gives integers",
                    s.name
                )))
            }
            (DType::I64 | DType::I32, true) => {
                return Err(e(format!(
                    "input '{}' must be integer (int64), the {what} gives floats",
                    s.name
                )))
            }
            _ => {}
        }
        if t.shape.len() != s.dims.len() + 1 || t.shape[1..] != s.dims[..] {
            let mut want = vec!["N".to_string()];
            want.extend(s.dims.iter().map(|d| d.to_string()));
            return Err(e(format!(
                "input '{}' has shape {:?}, expected [{}] (N samples)",
                s.name,
                t.shape,
                want.join(", ")
            )));
        }
        if let Some(v) = t.as_f32() {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                let per = s.dims.iter().product::<usize>().max(1);
                return Err(e(format!(
                    "input '{}' contains NaN or Inf (sample {}, value {})",
                    s.name,
                    i / per,
                    v[i]
                )));
            }
        }
        let n = t.shape[0];
        if n == 0 {
            return Err(e(format!("input '{}' has no samples", s.name)));
        }
        if let Some(c) = count {
            if c != n {
                return Err(e(format!(
                    "inputs have different sample counts ({c} vs {n} for '{}')",
                    s.name
                )));
            }
        }
        count = Some(n);
        out.insert(s.name.clone(), t.clone());
    }
    Ok((out, count.unwrap_or(0)))
}

/// Input specs of a loaded `.ember` model.
pub fn model_inputs<B: AsRef<[u8]>>(m: &Model<B>) -> Vec<IoSpec> {
    m.inputs
        .iter()
        .map(|s| IoSpec { name: s.name.clone(), dtype: s.dtype, dims: s.dims.clone() })
        .collect()
}

/// Splits `n` samples into compiled batch sizes: full batches of the largest size that fits,
/// then the smallest size that holds the rest (padded). Returns (start, real samples, batch).
pub fn schedule(n: usize, sizes: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    let mut out = vec![];
    let mut start = 0;
    while start < n {
        let r = n - start;
        let b = sizes
            .iter()
            .rev()
            .find(|b| **b <= r)
            .copied()
            .unwrap_or_else(|| sizes.iter().find(|b| **b >= r).copied().unwrap_or(sizes[0]));
        let real = b.min(r);
        out.push((start, real, b));
        start += real;
    }
    out
}

/// Samples `start..start + real` of every input, padded to `batch` rows by repeating the last.
pub fn padded_chunk(
    inputs: &HashMap<String, HostTensor>,
    start: usize,
    real: usize,
    batch: usize,
) -> HashMap<String, HostTensor> {
    let rows: Vec<usize> = (0..batch).map(|i| start + i.min(real - 1)).collect();
    inputs.iter().map(|(k, v)| (k.clone(), v.take_rows(&rows))).collect()
}

/// Runs every sample of `inputs` (validated with [`check_inputs`]) through the model.
pub fn run_batched<B: AsRef<[u8]>>(
    model: &Model<B>,
    inputs: &HashMap<String, HostTensor>,
    n: usize,
) -> Result<BTreeMap<String, HostTensor>> {
    run_batched_on(model, inputs, n, None)
}

/// [`run_batched`] with the sessions' ops spread over `pool`'s threads.
pub fn run_batched_on<B: AsRef<[u8]>>(
    model: &Model<B>,
    inputs: &HashMap<String, HostTensor>,
    n: usize,
    pool: Option<std::sync::Arc<ember_runtime::Pool>>,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut sessions: HashMap<usize, Session<B>> = HashMap::new();
    run_batched_by(model, inputs, n, &mut |b, refs, out| {
        let s = match sessions.entry(b) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut s = Session::new(model, b)?;
                if let Some(p) = &pool {
                    s.set_pool(p.clone())?;
                }
                e.insert(s)
            }
        };
        s.run(refs)?;
        for i in 0..model.outputs.len() {
            out(i, s.output(i))?;
        }
        Ok(())
    })
}

/// Receives output `i` of one run (its bytes).
pub type OutputSink<'a> = dyn FnMut(usize, &[u8]) -> Result<()> + 'a;

/// Runs one padded chunk on the plan of `batch`, passing each output's bytes to the sink.
pub type BatchRun<'a> = dyn FnMut(usize, &[&[u8]], &mut OutputSink) -> Result<()> + 'a;

/// The batching of [`run_batched_on`] over any backend: `run(batch, inputs, sink)` runs one
/// padded chunk on the plan of `batch` and passes each output's bytes to `sink`.
pub fn run_batched_by<B: AsRef<[u8]>>(
    model: &Model<B>,
    inputs: &HashMap<String, HostTensor>,
    n: usize,
    run: &mut BatchRun,
) -> Result<BTreeMap<String, HostTensor>> {
    let sizes = model.batch_sizes();
    let mut parts: Vec<Vec<HostTensor>> = vec![vec![]; model.outputs.len()];
    for (start, real, b) in schedule(n, &sizes) {
        let chunk = padded_chunk(inputs, start, real, b);
        let bufs: Vec<Vec<u8>> =
            model.inputs.iter().map(|sig| chunk[&sig.name].to_le_bytes()).collect();
        let refs: Vec<&[u8]> = bufs.iter().map(|v| v.as_slice()).collect();
        run(b, &refs, &mut |i, bytes| {
            let sig = &model.outputs[i];
            let mut shape = vec![b];
            shape.extend_from_slice(&sig.dims);
            let t = HostTensor::from_le_bytes(sig.dtype, shape, bytes)?;
            parts[i].push(t.slice_rows(0, real));
            Ok(())
        })?;
    }
    Ok(model
        .outputs
        .iter()
        .zip(parts)
        .map(|(sig, p)| (sig.name.clone(), HostTensor::concat_rows(&p)))
        .collect())
}

/// Float reference over all samples, `batch` at a time (the last chunk padded then trimmed).
pub fn reference_batched(
    g: &Graph,
    inputs: &HashMap<String, HostTensor>,
    n: usize,
    batch: usize,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut parts: BTreeMap<String, Vec<HostTensor>> = BTreeMap::new();
    for (start, real, b) in schedule(n, &[batch]) {
        let chunk = padded_chunk(inputs, start, real, b);
        for (k, v) in reference::evaluate(g, &chunk, None)? {
            parts.entry(k).or_default().push(v.slice_rows(0, real));
        }
    }
    Ok(parts.into_iter().map(|(k, p)| (k, HostTensor::concat_rows(&p))).collect())
}
