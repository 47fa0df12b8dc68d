//! Runs the float reference of an ONNX model on an `.npz` of inputs and writes its outputs:
//! `cargo run --release -p ember-quantize --example reference -- MODEL.onnx IN.npz OUT.npz`.
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        return Err("usage: reference MODEL.onnx IN.npz OUT.npz".into());
    }
    let g = ember_quantize::prepare_graph(&std::fs::read(&a[1])?)?;
    let inputs = ember_quantize::npz::read_npz(Path::new(&a[2]))?;
    let n = inputs.values().next().map(|t| t.shape[0]).unwrap_or(0);
    let t = std::time::Instant::now();
    let out =
        ember_quantize::exec::reference_batched(&g, &inputs.into_iter().collect(), n, n.max(1))?;
    eprintln!("{n} samples in {:.2} s", t.elapsed().as_secs_f64());
    ember_quantize::npz::write_npz(Path::new(&a[3]), &out)?;
    Ok(())
}
