//! `ember compare MODEL.onnx MODEL.ember --input IN.npz [--json]`

use anyhow::Result;
use clap::Parser;
use ember_quantize::{exec, report};
use std::path::PathBuf;

/// Compare a `.ember` model's outputs with the float reference of its ONNX source.
#[derive(Parser, Debug)]
pub struct Args {
    pub onnx: PathBuf,
    pub model: PathBuf,
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let onnx = super::read(&a.onnx)?;
    let graph = ember_quantize::prepare_graph(&onnx)?;
    let model = super::load(&a.model)?;
    let arrays = super::read_npz(&a.input)?;
    let (inputs, n) = exec::check_inputs(
        &exec::model_inputs(&model),
        &arrays,
        &format!("{}", a.input.display()),
    )?;
    let got = exec::run_batched(&model, &inputs, n)?;
    let batch = *model.batch_sizes().last().unwrap_or(&1);
    let want = exec::reference_batched(&graph, &inputs, n, batch)?;
    let mut rows = vec![];
    for s in &model.outputs {
        let w = want
            .get(&s.name)
            .ok_or_else(|| anyhow::anyhow!("the ONNX model has no output '{}'", s.name))?;
        let g = &got[&s.name];
        if g.shape != w.shape {
            anyhow::bail!(
                "output '{}': .ember gives shape {:?}, ONNX gives {:?}",
                s.name,
                g.shape,
                w.shape
            );
        }
        rows.push(report::metrics(&s.name, &g.to_f32_vec(), &w.to_f32_vec()));
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"samples": n, "outputs": rows}))?
        );
    } else {
        println!(
            "{n} samples; float reference: {} ; model: {}",
            a.onnx.display(),
            a.model.display()
        );
        for r in &rows {
            println!(
                "output '{}': cosine {:.6}, max abs err {:.4e}, rel L2 err {:.4e}",
                r.name, r.cosine, r.max_abs_err, r.rel_l2_err
            );
        }
    }
    Ok(())
}
