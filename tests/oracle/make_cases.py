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

# 5. A BERT-like block as real exporters write it: a shape sub-graph (Shape, Gather, Unsqueeze,
#    Concat, Reshape) that folds away once shapes are frozen, ConstantOfShape + Equal + Where +
#    Expand, Slice, LayerNormalization, an Erf GELU, masked attention (batched MatMul, Softmax),
#    mean pooling with Clip, and a hand-written norm with Pow and Sqrt.
S, H, NH = 6, 8, 2
DH = H // NH
bert = [
    helper.make_node("Shape", ["x"], ["xs"], name="shape"),
    helper.make_node("Gather", ["xs", "i0"], ["bsz"], name="shape_b", axis=0),
    helper.make_node("Gather", ["xs", "i1s"], ["seq"], name="shape_s", axis=0),
    helper.make_node("Unsqueeze", ["bsz", "ax0"], ["bsz1"], name="unsq_b"),
    helper.make_node("Unsqueeze", ["seq", "ax0"], ["seq1"], name="unsq_s"),
    helper.make_node("Concat", ["bsz1", "seq1", "nh", "dh"], ["qshape"], name="qshape", axis=0),
    helper.make_node("LayerNormalization", ["x", "ln_g", "ln_b"], ["xn"], name="ln0", axis=-1, epsilon=1e-5),
    helper.make_node("MatMul", ["xn", "Wq"], ["q0"], name="q_proj"),
    helper.make_node("Add", ["q0", "bq"], ["q1"], name="q_bias"),
    helper.make_node("MatMul", ["xn", "Wk"], ["k0"], name="k_proj"),
    helper.make_node("MatMul", ["xn", "Wv"], ["v0"], name="v_proj"),
    helper.make_node("Reshape", ["q1", "qshape"], ["q2"], name="q_reshape"),
    helper.make_node("Reshape", ["k0", "qshape"], ["k2"], name="k_reshape"),
    helper.make_node("Reshape", ["v0", "qshape"], ["v2"], name="v_reshape"),
    helper.make_node("Transpose", ["q2"], ["q"], name="q_t", perm=[0, 2, 1, 3]),
    helper.make_node("Transpose", ["k2"], ["kT"], name="k_t", perm=[0, 2, 3, 1]),
    helper.make_node("Transpose", ["v2"], ["v"], name="v_t", perm=[0, 2, 1, 3]),
    helper.make_node("MatMul", ["q", "kT"], ["sc0"], name="scores"),
    helper.make_node("Div", ["sc0", "sqrt_dh"], ["sc1"], name="scale"),
    # mask bias: (1 - mask) * -10000, broadcast over heads and queries
    helper.make_node("Unsqueeze", ["mask", "ax12"], ["m4"], name="mask_unsq"),
    helper.make_node("Cast", ["m4"], ["mf"], name="mask_cast", to=TensorProto.FLOAT),
    helper.make_node("Sub", ["one", "mf"], ["inv"], name="mask_inv"),
    helper.make_node("Mul", ["inv", "neg"], ["mbias"], name="mask_bias"),
    helper.make_node("Add", ["sc1", "mbias"], ["sc2"], name="masked"),
    helper.make_node("Softmax", ["sc2"], ["p"], name="softmax", axis=-1),
    helper.make_node("MatMul", ["p", "v"], ["ctx0"], name="context"),
    helper.make_node("Transpose", ["ctx0"], ["ctx1"], name="ctx_t", perm=[0, 2, 1, 3]),
    helper.make_node("Concat", ["bsz1", "seq1", "hdim"], ["oshape"], name="oshape", axis=0),
    helper.make_node("Reshape", ["ctx1", "oshape"], ["ctx"], name="ctx_reshape"),
    helper.make_node("MatMul", ["ctx", "Wo"], ["o0"], name="o_proj"),
    helper.make_node("Add", ["o0", "x"], ["res"], name="residual"),
    # Erf GELU
    helper.make_node("Div", ["res", "sqrt2"], ["g0"], name="gelu_div"),
    helper.make_node("Erf", ["g0"], ["g1"], name="gelu_erf"),
    helper.make_node("Add", ["g1", "one"], ["g2"], name="gelu_add"),
    helper.make_node("Mul", ["res", "g2"], ["g3"], name="gelu_mul"),
    helper.make_node("Mul", ["g3", "half"], ["h"], name="gelu_half"),
    # A token-type-like path: ConstantOfShape(Shape) -> Equal -> Where -> Expand, folded away.
    helper.make_node("ConstantOfShape", ["qshape"], ["zeros4"], name="cos",
                     value=numpy_helper.from_array(np.array([0], np.int64))),
    helper.make_node("Equal", ["zeros4", "zero_i"], ["eq"], name="eq"),
    helper.make_node("Where", ["eq", "zeros4", "one_i"], ["wh"], name="where"),
    helper.make_node("Slice", ["wh", "s0", "s1", "s2"], ["sl"], name="slice"),
    # mean pooling with Clip on the count
    helper.make_node("Unsqueeze", ["mask", "ax_m1"], ["m3"], name="pool_unsq"),
    helper.make_node("Expand", ["m3", "xs"], ["m3e"], name="pool_expand"),
    helper.make_node("Cast", ["m3e"], ["m3f"], name="pool_cast", to=TensorProto.FLOAT),
    helper.make_node("Mul", ["h", "m3f"], ["hm"], name="pool_mul"),
    helper.make_node("ReduceSum", ["hm", "i1"], ["hs"], name="pool_sum", keepdims=0),
    helper.make_node("ReduceSum", ["m3f", "i1"], ["cnt0"], name="pool_cnt", keepdims=0),
    helper.make_node("Clip", ["cnt0", "tiny", ""], ["cnt"], name="pool_clip"),
    helper.make_node("Div", ["hs", "cnt"], ["pooled"], name="pool_div"),
    # L2 normalisation by hand: Pow, ReduceSum, Sqrt
    helper.make_node("Pow", ["pooled", "two"], ["sq"], name="pow"),
    helper.make_node("ReduceSum", ["sq", "i1"], ["ss"], name="norm_sum", keepdims=1),
    helper.make_node("Sqrt", ["ss"], ["nrm"], name="sqrt"),
    helper.make_node("Div", ["pooled", "nrm"], ["emb"], name="normalize"),
]
bert_inits = [
    init("i0", np.array(0, np.int64)), init("i1s", np.array(1, np.int64)), init("i1", np.array([1], np.int64)), init("ax0", np.array([0], np.int64)),
    init("ax12", np.array([1, 2], np.int64)), init("ax_m1", np.array([-1], np.int64)),
    init("nh", np.array([NH], np.int64)), init("dh", np.array([DH], np.int64)), init("hdim", np.array([H], np.int64)),
    init("ln_g", (1 + 0.1 * rng.normal(size=H)).astype(np.float32)), init("ln_b", w(H, scale=0.1)),
    init("Wq", w(H, H)), init("bq", w(H, scale=0.1)), init("Wk", w(H, H)), init("Wv", w(H, H)), init("Wo", w(H, H)),
    init("sqrt_dh", np.array(np.sqrt(DH), np.float32)), init("one", np.array(1.0, np.float32)),
    init("neg", np.array(-10000.0, np.float32)), init("sqrt2", np.array(np.sqrt(2), np.float32)),
    init("half", np.array(0.5, np.float32)), init("zero_i", np.array(0, np.int64)), init("one_i", np.array(1, np.int64)),
    init("s0", np.array([0], np.int64)), init("s1", np.array([1], np.int64)), init("s2", np.array([3], np.int64)),
    init("tiny", np.array(1e-9, np.float32)), init("two", np.array(2.0, np.float32)),
]


def bert_feeds(n):
    mask = np.zeros((n, S), np.int64)
    for i in range(n):
        mask[i, : rng.integers(1, S + 1)] = 1
    return {"x": rng.normal(0, 1, (n, S, H)).astype(np.float32), "mask": mask}


cases.append(save(
    "bert_block", bert,
    [helper.make_tensor_value_info("x", F, ["N", S, H]), helper.make_tensor_value_info("mask", I, ["N", S])],
    [helper.make_tensor_value_info("emb", F, ["N", H]), helper.make_tensor_value_info("sl", I, ["N", S, NH, 1])],
    bert_inits, bert_feeds,
))

# 6. An op Ember does not support (Conv), for the error path.
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
