#!/usr/bin/env python3
"""Builds the end-to-end test cases and their onnxruntime reference outputs.

For each case, writes OUT/<case>/model.onnx, calib.npz (calibration inputs), test.npz (inputs
NOT used for calibration) and expected.npz (onnxruntime FP32 outputs on test.npz). All weights
are random (seeded). Usage: python3 tests/oracle/make_cases.py OUT_DIR
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = sys.argv[1]
rng = np.random.default_rng(1234)
F, I = TensorProto.FLOAT, TensorProto.INT64


def w(*shape, scale=None):
    s = scale if scale is not None else 1.0 / np.sqrt(shape[0])
    return rng.normal(0, s, shape).astype(np.float32)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def save(name, nodes, inputs, outputs, inits, feeds_fn, opset=17, n_calib=256, n_test=203):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    onnx.save(model, os.path.join(d, "model.onnx"))
    calib, test = feeds_fn(n_calib), feeds_fn(n_test)
    np.savez(os.path.join(d, "calib.npz"), **calib)
    np.savez(os.path.join(d, "test.npz"), **test)
    sess = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
    outs = sess.run(None, test)
    np.savez(os.path.join(d, "expected.npz"), **{o.name: v for o, v in zip(sess.get_outputs(), outs)})
    return {"name": name, "outputs": [o.name for o in sess.get_outputs()], "inputs": list(test.keys())}


cases = []

# 1. MLP: Gemm (transB) + Relu, MatMul + Add + Tanh (second output), Gemm (alpha, beta) + Softmax.
cases.append(save(
    "mlp",
    [
        helper.make_node("Gemm", ["x", "W0", "b0"], ["h0p"], name="fc0", transB=1),
        helper.make_node("Relu", ["h0p"], ["h0"], name="relu0"),
        helper.make_node("MatMul", ["h0", "W1"], ["h1m"], name="fc1"),
        helper.make_node("Add", ["h1m", "b1"], ["h1p"], name="fc1_bias"),
        helper.make_node("Tanh", ["h1p"], ["hidden"], name="tanh1"),
        helper.make_node("Gemm", ["hidden", "W2", "b2"], ["logits"], name="fc2", alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ],
    [helper.make_tensor_value_info("x", F, ["N", 13])],
    [helper.make_tensor_value_info("probs", F, ["N", 10]), helper.make_tensor_value_info("hidden", F, ["N", 24])],
    [init("W0", w(32, 13, scale=0.3)), init("b0", w(32, scale=0.1)), init("W1", w(32, 24)), init("b1", w(24, scale=0.1)),
     init("W2", w(24, 10)), init("b2", w(10, scale=0.1))],
    lambda n: {"x": rng.normal(0, 1, (n, 13)).astype(np.float32)},
))

# 2. DLRM-like: bottom MLP on dense features, three embedding tables, pairwise dot-product
#    interactions (batched MatMul with a transpose), concatenation, top MLP, sigmoid.
T = [(100, 8), (37, 8), (1000, 8)]
dl_nodes = [
    helper.make_node("Gemm", ["dense", "Wb0", "bb0"], ["b0p"], name="bot0"),
    helper.make_node("Relu", ["b0p"], ["b0"], name="bot0_relu"),
    helper.make_node("Gemm", ["b0", "Wb1", "bb1"], ["b1p"], name="bot1"),
    helper.make_node("Relu", ["b1p"], ["bot"], name="bot1_relu"),
]
feats = ["bot"]
for i, _ in enumerate(T):
    dl_nodes.append(helper.make_node("Gather", [f"emb{i}", f"cat{i}"], [f"e{i}"], name=f"embedding{i}", axis=0))
    feats.append(f"e{i}")
for i, f in enumerate(feats):
    dl_nodes.append(helper.make_node("Unsqueeze", [f, "ax1"], [f"u{i}"], name=f"unsq{i}"))
dl_nodes += [
    helper.make_node("Concat", [f"u{i}" for i in range(len(feats))], ["stack"], name="stack", axis=1),
    helper.make_node("Transpose", ["stack"], ["stackT"], name="transpose", perm=[0, 2, 1]),
    helper.make_node("MatMul", ["stack", "stackT"], ["inter"], name="interact"),
    helper.make_node("Flatten", ["inter"], ["inter_flat"], name="flatten", axis=1),
    helper.make_node("Concat", feats + ["inter_flat"], ["top_in"], name="concat", axis=1),
    helper.make_node("Gemm", ["top_in", "Wt0", "bt0"], ["t0p"], name="top0"),
    helper.make_node("Relu", ["t0p"], ["t0"], name="top0_relu"),
    helper.make_node("MatMul", ["t0", "Wt1"], ["t1m"], name="top1"),
    helper.make_node("Add", ["t1m", "bt1"], ["t1p"], name="top1_bias"),
    helper.make_node("Relu", ["t1p"], ["t1"], name="top1_relu"),
    helper.make_node("Gemm", ["t1", "Wt2", "bt2"], ["z"], name="top2"),
    helper.make_node("Sigmoid", ["z"], ["ctr"], name="sigmoid"),
]
dl_inits = [init("Wb0", w(7, 16)), init("bb0", w(16, scale=0.1)), init("Wb1", w(16, 8)), init("bb1", w(8, scale=0.1)),
            init("ax1", np.array([1], np.int64)),
            init("Wt0", w(32 + 16, 33)), init("bt0", w(33, scale=0.1)), init("Wt1", w(33, 17)), init("bt1", w(17, scale=0.1)),
            init("Wt2", w(17, 1)), init("bt2", w(1, scale=0.1))]
dl_inits += [init(f"emb{i}", w(r, d, scale=0.5)) for i, (r, d) in enumerate(T)]


def dl_feeds(n):
    f = {"dense": rng.normal(0, 1, (n, 7)).astype(np.float32)}
    for i, (r, _) in enumerate(T):
        f[f"cat{i}"] = rng.integers(0, r, n).astype(np.int64)
    return f


cases.append(save(
    "dlrm", dl_nodes,
    [helper.make_tensor_value_info("dense", F, ["N", 7])] + [helper.make_tensor_value_info(f"cat{i}", I, ["N"]) for i in range(len(T))],
    [helper.make_tensor_value_info("ctr", F, ["N", 1])],
    dl_inits, dl_feeds,
))

# 3. Op coverage: Transpose, ReduceMean (axes attribute), ReduceSum (axes input), Squeeze,
#    Sub, Div, Constant, Unsqueeze, Reshape (0 and -1), Gather on a runtime tensor, Cast,
#    Concat, Identity, Mul, Sigmoid, Relu, Softmax, embedding Gather of a 2-D index tensor.
cases.append(save(
    "ops",
    [
        helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["t"], ["r"], name="rmean", axes=[2], keepdims=0),
        helper.make_node("ReduceSum", ["x", "ax1"], ["s"], name="rsum", keepdims=1),
        helper.make_node("Squeeze", ["s", "ax1"], ["sq"], name="squeeze"),
        helper.make_node("Sub", ["r", "sq"], ["df"], name="sub"),
        helper.make_node("Constant", [], ["three"], name="const3", value=numpy_helper.from_array(np.array(3.0, np.float32))),
        helper.make_node("Div", ["df", "three"], ["d"], name="div"),
        helper.make_node("Unsqueeze", ["d", "ax2"], ["u"], name="unsqueeze"),
        helper.make_node("Reshape", ["u", "shp"], ["re"], name="reshape"),
        helper.make_node("Gather", ["re", "pick"], ["g"], name="gather_cols", axis=1),
        helper.make_node("Cast", ["idx"], ["c"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Concat", ["g", "c"], ["cc"], name="concat", axis=1),
        helper.make_node("Identity", ["cc"], ["ident"], name="identity"),
        helper.make_node("Sigmoid", ["re"], ["sig"], name="sigmoid"),
        helper.make_node("Mul", ["ident", "sig"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["mr"], name="relu"),
        helper.make_node("Softmax", ["mr"], ["out1"], name="softmax", axis=1),
        helper.make_node("Gather", ["table", "idx"], ["e"], name="embedding", axis=0),
        helper.make_node("Flatten", ["e"], ["ef"], name="flatten"),
        helper.make_node("ReduceSum", ["ef", "ax1"], ["out2"], name="rsum2", keepdims=0),
    ],
    [helper.make_tensor_value_info("x", F, ["N", 3, 5]), helper.make_tensor_value_info("idx", I, ["N", 2])],
    [helper.make_tensor_value_info("out1", F, ["N", 5]), helper.make_tensor_value_info("out2", F, ["N"])],
    [init("ax1", np.array([1], np.int64)), init("ax2", np.array([2], np.int64)), init("shp", np.array([0, -1], np.int64)),
     init("pick", np.array([4, 0, 2], np.int64)), init("table", w(50, 4, scale=1.0))],
    lambda n: {"x": rng.normal(0, 2, (n, 3, 5)).astype(np.float32), "idx": rng.integers(0, 50, (n, 2)).astype(np.int64)},
))

# 4. Opset 11 semantics: Softmax flattens from its axis; Unsqueeze/ReduceSum take axes attributes.
cases.append(save(
    "legacy",
    [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
        helper.make_node("Reshape", ["h", "shp"], ["h3"], name="reshape"),
        helper.make_node("Softmax", ["h3"], ["sm"], name="softmax", axis=1),
        helper.make_node("ReduceSum", ["sm"], ["rs"], name="rsum", axes=[2], keepdims=0),
        helper.make_node("Unsqueeze", ["rs"], ["out"], name="unsqueeze", axes=[1]),
    ],
    [helper.make_tensor_value_info("x", F, ["N", 6])],
    [helper.make_tensor_value_info("out", F, ["N", 1, 2])],
    [init("W", w(6, 6)), init("shp", np.array([-1, 2, 3], np.int64))],
    lambda n: {"x": rng.normal(0, 1, (n, 6)).astype(np.float32)},
    opset=11,
))

# 5. An op Ember does not support (Conv), for the error path.
os.makedirs(os.path.join(OUT, "unsupported"), exist_ok=True)
g = helper.make_graph(
    [helper.make_node("Conv", ["x", "k"], ["y"], name="my_conv")], "unsupported",
    [helper.make_tensor_value_info("x", F, ["N", 1, 8, 8])], [helper.make_tensor_value_info("y", F, ["N", 1, 6, 6])],
    [init("k", w(1, 1, 3, 3))],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.save(m, os.path.join(OUT, "unsupported", "model.onnx"))
np.savez(os.path.join(OUT, "unsupported", "calib.npz"), x=rng.normal(0, 1, (4, 1, 8, 8)).astype(np.float32))

with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(cases, f, indent=1)
print(f"wrote {len(cases)} cases to {OUT}", file=sys.stderr)
