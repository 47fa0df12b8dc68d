//! `ember run MODEL.ember --input IN.npz --output OUT.npz [--device cpu|cuda[:N]|auto]`

use anyhow::Result;
use clap::Parser;
use ember_quantize::{exec, npz};
use ember_runtime::cuda::{CudaError, CudaSession};
use std::collections::hash_map::{Entry, HashMap};
use std::path::PathBuf;

/// Run a model on every sample of an `.npz`, in the compiled batch sizes.
#[derive(Parser, Debug)]
pub struct Args {
    pub model: PathBuf,
    /// Inputs: one array per model input, first axis = samples.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the outputs (named as the model's outputs; written atomically).
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub engine: super::EngineArgs,
    #[command(flatten)]
    pub overlay: super::OverlayArgs,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// A CUDA backend error as the batching helper's error (the message is kept whole).
pub fn cuda_err(e: CudaError) -> ember_quantize::Error {
    match e {
        CudaError::Run(e) => e.into(),
        other => ember_quantize::Error::Io(other.to_string()),
    }
}

/// Runs `n` samples through `model` (loaded from `path`) in its compiled batch sizes: on the CPU
/// with `threads` (None: one per core), or on the GPU `gpu` (PTX cached beside `path`).
pub fn run_on(
    model: &ember_runtime::Model<ember_runtime::FileBytes>,
    path: &std::path::Path,
    inputs: &HashMap<String, ember_quantize::HostTensor>,
    n: usize,
    threads: Option<usize>,
    gpu: Option<&ember_runtime::cuda::DeviceInfo>,
) -> Result<std::collections::BTreeMap<String, ember_quantize::HostTensor>> {
    Ok(match gpu {
        None => {
            let pool = std::sync::Arc::new(ember_runtime::Pool::new(threads.unwrap_or(0))?);
            exec::run_batched_on(model, inputs, n, Some(pool))?
        }
        Some(info) => {
            let mut sessions: HashMap<usize, CudaSession<_>> = HashMap::new();
            exec::run_batched_by(model, inputs, n, &mut |b, refs, out| {
                let s = match sessions.entry(b) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let s = CudaSession::new(model, b, info.clone(), Some(path))
                            .map_err(cuda_err)?;
                        for note in s.notes() {
                            eprintln!("ember: {note}");
                        }
                        e.insert(s)
                    }
                };
                s.run(refs).map_err(cuda_err)?;
                for i in 0..model.outputs.len() {
                    out(i, s.output(i))?;
                }
                Ok(())
            })?
        }
    })
}

pub fn run(a: Args) -> Result<()> {
    let model = super::load_opts(&a.model, super::VerifyArg::Full, &a.overlay)?;
    let arrays = super::read_npz(&a.input)?;
    let (inputs, n) = exec::check_inputs(
        &exec::model_inputs(&model),
        &arrays,
        &format!("{}", a.input.display()),
    )?;
    let gpu = super::device(&a.engine.device)?;
    let t0 = std::time::Instant::now();
    let outs = run_on(&model, &a.model, &inputs, n, a.engine.threads, gpu.as_ref())?;
    let secs = t0.elapsed().as_secs_f64();
    npz::write_npz(&a.output, &outs)?;
    let device = gpu.as_ref().map(super::gpu_line).unwrap_or_else(|| "cpu".into());
    if a.json {
        let shapes: serde_json::Map<String, serde_json::Value> =
            outs.iter().map(|(k, v)| (k.clone(), serde_json::json!(v.shape))).collect();
        println!(
            "{}",
            serde_json::json!({"samples": n, "seconds": secs, "device": device, "outputs": shapes, "output_file": a.output})
        );
    } else {
        println!(
            "ran {n} samples in {:.1} ms on {device} (batch sizes {:?}); wrote {}",
            secs * 1e3,
            model.batch_sizes(),
            a.output.display()
        );
    }
    Ok(())
}
