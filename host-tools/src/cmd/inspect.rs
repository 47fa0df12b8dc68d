//! `ember inspect MODEL.ember [--json]`: tensors, dtypes, sizes, ops with their kernels, plans.

use anyhow::Result;
use clap::Parser;
use ember_kernels::KernelSet;
use ember_runtime::{FileBytes, Model, OpCode, UnaryKind};
use serde_json::json;
use std::path::PathBuf;

/// Show what a `.ember` file holds and which kernels its ops would run on this machine.
#[derive(Parser, Debug)]
pub struct Args {
    pub model: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// The kernel an op runs on with kernel set `k`, and its precision. `params` are the op
/// record's (a Unary op's kind decides whether it runs the erf kernel).
pub fn kernel_of(code: OpCode, params: &[u32], k: &KernelSet) -> (String, &'static str) {
    match code {
        OpCode::LinearI8 => (format!("{} + {}", k.quantize_u8_name, k.i8_gemm_name), "int8"),
        // The left operand quantized by rows, the right one quantized straight into the packed
        // layout (per head).
        OpCode::MatMulI8 => (
            format!("{} + {} + {}", k.quantize_u8_name, k.quantize_pack_name, k.i8_gemm_name),
            "int8",
        ),
        OpCode::LinearF32 => (k.f32_gemm_name.to_string(), "f32"),
        OpCode::LinearF16 => (format!("f16 widening + {}", k.f32_gemm_name), "f16"),
        OpCode::LinearI4 => (format!("{} + {}", k.quantize_u8_name, k.i4_gemm_name), "int4"),
        OpCode::LinearI4M => (format!("{} + {}", k.quantize_u8_name, k.i4m_gemm_name), "int4"),
        OpCode::GatherRowsI8 => ("i8_gather_rows_dequant_generic".into(), "int8"),
        OpCode::GatherRowsI4 => ("i4_gather_rows_dequant_generic".into(), "int4"),
        OpCode::MatMulF32 => (format!("{} | {}", k.f32_matmul_name, k.f32_gemm_name), "f32"),
        OpCode::Softmax => (k.softmax_row_name.to_string(), "f32"),
        OpCode::LayerNorm => (k.layer_norm_row_name.to_string(), "f32"),
        // Erf is the one unary kind with a kernel family of its own.
        OpCode::Unary if params.first() == Some(&(UnaryKind::Erf as u32)) => {
            (k.erf_name.to_string(), "f32")
        }
        OpCode::Unary => ("f32_unary_generic".into(), "f32"),
        OpCode::Binary | OpCode::Reduce => (format!("f32_{}_generic", code.name()), "f32"),
        _ => (format!("{}_generic", code.name()), "data"),
    }
}

pub fn describe(model: &Model<FileBytes>, file_len: u64) -> serde_json::Value {
    let k = KernelSet::detect();
    let tensors: Vec<_> = model
        .tensors
        .iter()
        .map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.dims, "bytes": t.nbytes, "role": format!("{:?}", t.role)}))
        .collect();
    let plans: Vec<_> = model
        .plans
        .iter()
        .map(|p| {
            let names = model.op_names(p.batch);
            let ops: Vec<_> = p
                .records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let code = OpCode::from_u16(r.opcode).unwrap_or(OpCode::Copy);
                    let (mut kernel, precision) = kernel_of(code, &r.params, &k);
                    let folded = p.folded_on_cpu(i);
                    if folded && p.add_norm_on_cpu(i) {
                        kernel = "none: summed by the next layer norm on the CPU".into();
                    } else if p.in_attention_on_cpu(i) {
                        kernel = "none: part of the fused attention on the CPU".into();
                    } else if folded {
                        kernel = "none: folded into a matmul on the CPU".into();
                    } else if p.add_norm_on_cpu(i) {
                        kernel.push_str(" (sums its residual input itself)");
                    } else if p.attention_on_cpu(i) {
                        kernel.push_str(" (attention fused: scores, softmax, P·V");
                        kernel.push_str(if p.heads_in_place(i) { ", heads in place)" } else { ")" });
                    } else if p.heads_in_place(i) {
                        kernel.push_str(" (heads in place)");
                    } else if p.in_place_on_cpu(i) {
                        kernel.push_str(" (in place over its input)");
                    }
                    match p.handoff_on_cpu(i) {
                        (true, true) => kernel.push_str(" (reads and writes u8 codes)"),
                        (true, false) => kernel.push_str(" (writes the next linear's u8 codes)"),
                        (false, true) => kernel.push_str(" (reads u8 codes, no quantize pass)"),
                        _ => {}
                    }
                    let out = &p.values[r.outputs[0] as usize];
                    json!({"index": i, "op": code.name(), "node": names.get(i), "kernel": kernel, "precision": precision, "cpu_folded": folded, "output_shape": out.dims, "output_dtype": out.dtype.name()})
                })
                .collect();
            json!({"batch": p.batch, "arena_bytes": p.arena_size, "cpu_arena_bytes": p.cpu_arena_size, "values": p.values.len(), "ops": ops})
        })
        .collect();
    let sig = |v: &[ember_runtime::SigEntry]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|s| json!({"name": s.name, "dtype": s.dtype.name(), "per_sample_shape": s.dims}))
            .collect()
    };
    let weight_bytes: usize = model.tensors.iter().map(|t| t.nbytes).sum();
    json!({
        "file_bytes": file_len,
        "weight_bytes": weight_bytes,
        "inputs": sig(&model.inputs),
        "outputs": sig(&model.outputs),
        "batch_sizes": model.batch_sizes(),
        "metadata": model.metadata.iter().filter(|(k, _)| !k.starts_with("op_names.")).map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "tensors": tensors,
        "plans": plans,
    })
}

pub fn run(a: Args) -> Result<()> {
    let model = super::load(&a.model)?;
    let len = std::fs::metadata(&a.model)?.len();
    let d = describe(&model, len);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!(
        "{}: {} bytes, {} tensors ({} bytes), plans for batch {:?}",
        a.model.display(),
        len,
        model.tensors.len(),
        d["weight_bytes"],
        model.batch_sizes()
    );
    for (k, v) in d["metadata"].as_object().into_iter().flatten() {
        println!("  {k}: {}", v.as_str().unwrap_or(""));
    }
    for s in &model.inputs {
        println!("input  {:<20} {} {}", s.name, s.dtype.name(), batch_shape(&s.dims));
    }
    for s in &model.outputs {
        println!("output {:<20} {} {}", s.name, s.dtype.name(), batch_shape(&s.dims));
    }
    println!("\n{:<32} {:<6} {:<16} {:>10}  role", "tensor", "dtype", "shape", "bytes");
    for t in &model.tensors {
        println!(
            "{:<32} {:<6} {:<16} {:>10}  {:?}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.dims),
            t.nbytes,
            t.role
        );
    }
    for p in d["plans"].as_array().into_iter().flatten() {
        println!(
            "\nplan batch {}: arena {} bytes ({} on the CPU schedule), {} values",
            p["batch"], p["arena_bytes"], p["cpu_arena_bytes"], p["values"]
        );
        println!("{:>4} {:<16} {:<24} {:<6} {:<40} output", "#", "op", "node", "prec", "kernel");
        for o in p["ops"].as_array().into_iter().flatten() {
            println!(
                "{:>4} {:<16} {:<24} {:<6} {:<40} {} {}",
                o["index"],
                o["op"].as_str().unwrap_or(""),
                o["node"].as_str().unwrap_or("-"),
                o["precision"].as_str().unwrap_or(""),
                o["kernel"].as_str().unwrap_or(""),
                o["output_dtype"].as_str().unwrap_or(""),
                o["output_shape"]
            );
        }
    }
    let float_ops = d["plans"][0]["ops"]
        .as_array()
        .map(|o| o.iter().filter(|x| x["precision"] == "f32").count())
        .unwrap_or(0);
    if float_ops > 0 {
        println!("\n{float_ops} op(s) of the first plan compute in float (precision f32 above).");
    }
    let folded = d["plans"][0]["ops"]
        .as_array()
        .map(|o| o.iter().filter(|x| x["cpu_folded"] == true).count())
        .unwrap_or(0);
    if folded > 0 {
        println!(
            "{folded} op(s) of the first plan (attention head shuffles) are folded into matmuls on the CPU."
        );
    }
    Ok(())
}

/// A signature shape with its batch axis: `[N, 16, 4]`, or `[N]` for one value per sample.
fn batch_shape(dims: &[usize]) -> String {
    let mut s = String::from("[N");
    for d in dims {
        s.push_str(&format!(", {d}"));
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_with_a_kernel_family_name_the_chosen_variant() {
        let k = KernelSet::detect();
        assert_eq!(kernel_of(OpCode::Softmax, &[], &k), (k.softmax_row_name.to_string(), "f32"));
        let ln = kernel_of(OpCode::LayerNorm, &[], &k);
        assert_eq!(ln, (k.layer_norm_row_name.to_string(), "f32"));
        let (mm, prec) = kernel_of(OpCode::MatMulI8, &[], &k);
        assert!(mm.contains(k.quantize_pack_name) && mm.contains(k.i8_gemm_name), "{mm}");
        assert_eq!(prec, "int8");
        // Erf runs its family's kernel; the other unary kinds (here sqrt) the generic loop.
        assert_eq!(kernel_of(OpCode::Unary, &[UnaryKind::Erf as u32], &k).0, k.erf_name);
        assert_eq!(kernel_of(OpCode::Unary, &[UnaryKind::Sqrt as u32], &k).0, "f32_unary_generic");
    }
}
