//! The ONNX graph of a biased matrix-factorization model, which `quantize` then turns into a
//! servable `.ember`: inputs `user` and `item` (int64 dense rows, one per sample), output
//! `rating = clip(mean + user_bias[u] + item_bias[i] + Σ_j P[u,j]·Q[i,j], lo, hi)`.

use ember_quantize::onnx::*;
use prost::Message;

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn value(name: &str, elem: i32) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let dim = vec![Dimension { value: Some(Value::DimParam("N".into())), ..Default::default() }];
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(out.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        attribute: attrs,
        ..Default::default()
    }
}

/// The model's ONNX bytes; `p` is `[users, k]`, `q` `[items, k]` row-major.
pub fn onnx_bytes(
    k: usize,
    p: &[f32],
    q: &[f32],
    bu: &[f32],
    bi: &[f32],
    (mean, lo, hi): (f32, f32, f32),
) -> Vec<u8> {
    let (users, items) = ((p.len() / k) as i64, (q.len() / k) as i64);
    let axes = TensorProto {
        name: Some("axes".into()),
        dims: vec![1],
        data_type: Some(7),
        int64_data: vec![1],
        ..Default::default()
    };
    let inits = vec![
        f32_tensor("user_factors", &[users, k as i64], p),
        f32_tensor("item_factors", &[items, k as i64], q),
        f32_tensor("user_bias", &[users], bu),
        f32_tensor("item_bias", &[items], bi),
        f32_tensor("mean", &[], &[mean]),
        f32_tensor("lo", &[], &[lo]),
        f32_tensor("hi", &[], &[hi]),
        axes,
    ];
    let keep = AttributeProto {
        name: Some("keepdims".into()),
        r#type: Some(2),
        i: Some(0),
        ..Default::default()
    };
    let nodes = vec![
        node("Gather", &["user_factors", "user"], "pu", vec![]),
        node("Gather", &["item_factors", "item"], "qi", vec![]),
        node("Mul", &["pu", "qi"], "pq", vec![]),
        node("ReduceSum", &["pq", "axes"], "dot", vec![keep]),
        node("Gather", &["user_bias", "user"], "bu", vec![]),
        node("Gather", &["item_bias", "item"], "bi", vec![]),
        node("Add", &["dot", "bu"], "s1", vec![]),
        node("Add", &["s1", "bi"], "s2", vec![]),
        node("Add", &["s2", "mean"], "s3", vec![]),
        node("Clip", &["s3", "lo", "hi"], "rating", vec![]),
    ];
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        producer_name: Some("ember finetune".into()),
        graph: Some(GraphProto {
            node: nodes,
            input: vec![value("user", 7), value("item", 7)],
            output: vec![value("rating", 1)],
            initializer: inits,
            name: Some("matrix_factorization".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}
