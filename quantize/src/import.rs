//! ONNX protobuf → [`Graph`]. Checks structure and op support up front, so later passes can rely
//! on it; every error names the node and op.

use crate::error::{Error, Result};
use crate::graph::{Attr, Dim, ElemType, Graph, Node, ValueDecl};
use crate::onnx;
use crate::tensor::HostTensor;
use prost::Message;
use std::collections::HashMap;

/// Ops the importer accepts, with their ONNX domain "" (ai.onnx).
pub const SUPPORTED_OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "Gather",
    "Concat",
    "Reshape",
    "Flatten",
    "Transpose",
    "Unsqueeze",
    "Squeeze",
    "ReduceSum",
    "ReduceMean",
    "Identity",
    "Constant",
    "Cast",
    "Shape",
    "Slice",
    "ConstantOfShape",
    "Equal",
    "Where",
    "Expand",
    "Range",
    "Erf",
    "Gelu",
    "Pow",
    "Sqrt",
    "Clip",
    "LayerNormalization",
];

/// Parses ONNX bytes.
pub fn import_bytes(bytes: &[u8]) -> Result<Graph> {
    let model = onnx::ModelProto::decode(bytes)
        .map_err(|e| Error::Onnx(format!("not a valid ONNX protobuf: {e}")))?;
    import_model(&model)
}

pub fn import_model(model: &onnx::ModelProto) -> Result<Graph> {
    let g = model.graph.as_ref().ok_or_else(|| Error::Onnx("model has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
        .ok_or_else(|| Error::Onnx("model declares no ai.onnx opset".into()))?;
    let mut graph = Graph { opset, ..Default::default() };
    for t in &g.initializer {
        let name = t.name.clone().unwrap_or_default();
        let ht =
            tensor_from_proto(t).map_err(|m| Error::Onnx(format!("initializer '{name}': {m}")))?;
        graph.consts.insert(name, ht);
    }
    for vi in &g.input {
        let name = vi.name.clone().unwrap_or_default();
        if graph.consts.contains_key(&name) {
            continue; // an initializer listed as input (old exporters)
        }
        graph.inputs.push(value_decl(vi)?);
    }
    for vi in &g.output {
        graph.outputs.push(value_decl(vi)?);
    }
    if graph.inputs.is_empty() || graph.outputs.is_empty() {
        return Err(Error::Onnx("graph needs at least one input and one output".into()));
    }
    for (i, n) in g.node.iter().enumerate() {
        let op = n.op_type.clone().unwrap_or_default();
        let name = n.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| format!("{op}_{i}"));
        let domain = n.domain.as_deref().unwrap_or("");
        if !(domain.is_empty() || domain == "ai.onnx") || !SUPPORTED_OPS.contains(&op.as_str()) {
            let shown = if domain.is_empty() { op.clone() } else { format!("{domain}::{op}") };
            return Err(Error::UnsupportedOp {
                op: shown,
                node: name,
                supported: SUPPORTED_OPS.join(", "),
            });
        }
        let mut attrs = HashMap::new();
        for a in &n.attribute {
            let an = a.name.clone().unwrap_or_default();
            let v = attr_from_proto(a)
                .map_err(|m| Error::node(&name, &op, format!("attribute '{an}': {m}")))?;
            attrs.insert(an, v);
        }
        if n.output.is_empty() {
            return Err(Error::node(&name, &op, "node has no outputs"));
        }
        graph.nodes.push(Node {
            name,
            op,
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attrs,
        });
    }
    graph.toposort().map_err(Error::Onnx)?;
    Ok(graph)
}

fn value_decl(vi: &onnx::ValueInfoProto) -> Result<ValueDecl> {
    let name = vi.name.clone().unwrap_or_default();
    let tt = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(onnx::type_proto::Value::TensorType(t)) => t,
        _ => return Err(Error::Onnx(format!("value '{name}' is not a tensor"))),
    };
    let elem = match tt.elem_type.unwrap_or(0) {
        1 => ElemType::F32,
        6 | 7 => ElemType::I64,
        e => {
            return Err(Error::Onnx(format!(
                "value '{name}' has element type {} (supported: float, int32, int64)",
                dtype_name(e)
            )))
        }
    };
    let dims = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .enumerate()
                .map(|(i, d)| match &d.value {
                    Some(onnx::tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => {
                        Dim::Fixed(*v as usize)
                    }
                    Some(onnx::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                        Dim::Sym(p.clone())
                    }
                    _ => Dim::Sym(format!("{name}_dim{i}")),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ValueDecl { name, elem, dims })
}

fn dtype_name(t: i32) -> &'static str {
    match t {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        16 => "bfloat16",
        _ => "unknown",
    }
}

/// Decodes a TensorProto into a host tensor (float and double → f32; integers and bool → i64).
pub fn tensor_from_proto(t: &onnx::TensorProto) -> std::result::Result<HostTensor, String> {
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(
            "external tensor data is not supported; save the model with its weights inside".into(),
        );
    }
    let mut shape = Vec::with_capacity(t.dims.len());
    for d in &t.dims {
        if *d < 0 {
            return Err(format!("negative dimension {d}"));
        }
        shape.push(*d as usize);
    }
    let n = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)).ok_or("shape overflows")?;
    let raw = t.raw_data.as_deref().unwrap_or(&[]);
    let has_raw = t.raw_data.is_some();
    let dt = t.data_type.unwrap_or(0);
    let check = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(format!("has {len} values but its shape {shape:?} needs {n}"))
        }
    };
    let ht = match dt {
        1 => {
            let v: Vec<f32> = if has_raw {
                if raw.len() != n * 4 {
                    return Err(format!(
                        "raw data is {} bytes, shape {shape:?} needs {}",
                        raw.len(),
                        n * 4
                    ));
                }
                raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            } else {
                t.float_data.clone()
            };
            check(v.len())?;
            HostTensor::f32(shape, v)
        }
        11 => {
            let v: Vec<f32> = if has_raw {
                if raw.len() != n * 8 {
                    return Err(format!(
                        "raw data is {} bytes, shape {shape:?} needs {}",
                        raw.len(),
                        n * 8
                    ));
                }
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                    .collect()
            } else {
                t.double_data.iter().map(|x| *x as f32).collect()
            };
            check(v.len())?;
            HostTensor::f32(shape, v)
        }
        7 => {
            let v: Vec<i64> = if has_raw {
                if raw.len() != n * 8 {
                    return Err(format!(
                        "raw data is {} bytes, shape {shape:?} needs {}",
                        raw.len(),
                        n * 8
                    ));
                }
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect()
            } else {
                t.int64_data.clone()
            };
            check(v.len())?;
            HostTensor::i64(shape, v)
        }
        6 | 9 | 3 | 2 | 5 | 4 => {
            let width = match dt {
                6 => 4,
                5 | 4 => 2,
                _ => 1,
            };
            let v: Vec<i64> = if has_raw {
                if raw.len() != n * width {
                    return Err(format!(
                        "raw data is {} bytes, shape {shape:?} needs {}",
                        raw.len(),
                        n * width
                    ));
                }
                raw.chunks_exact(width)
                    .map(|c| match (dt, width) {
                        (6, _) => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                        (5, _) => i16::from_le_bytes([c[0], c[1]]) as i64,
                        (4, _) => u16::from_le_bytes([c[0], c[1]]) as i64,
                        (3, _) => c[0] as i8 as i64,
                        _ => c[0] as i64,
                    })
                    .collect()
            } else {
                t.int32_data.iter().map(|x| *x as i64).collect()
            };
            check(v.len())?;
            HostTensor::i64(shape, v)
        }
        other => return Err(format!("element type {} is not supported", dtype_name(other))),
    };
    Ok(ht)
}

fn attr_from_proto(a: &onnx::AttributeProto) -> std::result::Result<Attr, String> {
    Ok(match a.r#type.unwrap_or(0) {
        1 => Attr::Float(a.f.unwrap_or(0.0)),
        2 => Attr::Int(a.i.unwrap_or(0)),
        3 => Attr::Str(String::from_utf8_lossy(a.s.as_deref().unwrap_or(&[])).into_owned()),
        4 => Attr::Tensor(tensor_from_proto(
            a.t.as_ref().ok_or("tensor attribute without a tensor")?,
        )?),
        6 => Attr::Floats(a.floats.clone()),
        7 => Attr::Ints(a.ints.clone()),
        8 => Attr::Str(String::new()),
        t => return Err(format!("attribute type {t} is not supported")),
    })
}
