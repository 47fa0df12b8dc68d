//! `ember run MODEL.ember --input IN.npz --output OUT.npz`

use anyhow::Result;
use clap::Parser;
use ember_quantize::{exec, npz};
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
    /// Threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let model = super::load(&a.model)?;
    let arrays = super::read_npz(&a.input)?;
    let (inputs, n) = exec::check_inputs(
        &exec::model_inputs(&model),
        &arrays,
        &format!("{}", a.input.display()),
    )?;
    let t0 = std::time::Instant::now();
    let pool = std::sync::Arc::new(ember_runtime::Pool::new(a.threads.unwrap_or(0))?);
    let outs = exec::run_batched_on(&model, &inputs, n, Some(pool))?;
    let secs = t0.elapsed().as_secs_f64();
    npz::write_npz(&a.output, &outs)?;
    if a.json {
        let shapes: serde_json::Map<String, serde_json::Value> =
            outs.iter().map(|(k, v)| (k.clone(), serde_json::json!(v.shape))).collect();
        println!(
            "{}",
            serde_json::json!({"samples": n, "seconds": secs, "outputs": shapes, "output_file": a.output})
        );
    } else {
        println!(
            "ran {n} samples in {:.1} ms (batch sizes {:?}); wrote {}",
            secs * 1e3,
            model.batch_sizes(),
            a.output.display()
        );
    }
    Ok(())
}
