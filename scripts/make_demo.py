#!/usr/bin/env python3
"""Builds the model and data that `ember demo` embeds, from MovieLens ml-latest-small.

A small DLRM-style rating predictor: user and movie embedding tables (Gather), four dense
features through a dense layer, concatenation, a ReLU MLP, and a sigmoid scaled to 0.5..5 stars.
Trained here with NumPy (Adam, MSE) on a random 90% of the ratings; the other 10% is the demo's
evaluation set, and 512 training samples are its calibration set.

Usage: python3 scripts/make_demo.py [RATINGS_CSV] [OUT_DIR]
Defaults: ../shared/data/ml-latest-small/ratings.csv, host-tools/demo
Needs numpy and onnx. Deterministic (seeded).
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/ml-latest-small/ratings.csv"
out = sys.argv[2] if len(sys.argv) > 2 else "host-tools/demo"
rng = np.random.default_rng(7)

raw = np.loadtxt(src, delimiter=",", skiprows=1, usecols=(0, 1, 2))
users_raw, movies_raw, ratings = raw[:, 0].astype(np.int64), raw[:, 1].astype(np.int64), raw[:, 2].astype(np.float32)
_, users = np.unique(users_raw, return_inverse=True)
_, movies = np.unique(movies_raw, return_inverse=True)
n_users, n_movies = users.max() + 1, movies.max() + 1
perm = rng.permutation(len(ratings))
n_test = len(ratings) // 10
test, train = perm[:n_test], perm[n_test:]

# Dense features from the training split only: log counts and mean ratings per user and movie.
def stats(ids, n):
    cnt = np.bincount(ids[train], minlength=n).astype(np.float32)
    s = np.bincount(ids[train], weights=ratings[train], minlength=n).astype(np.float32)
    mean = np.where(cnt > 0, s / np.maximum(cnt, 1), ratings[train].mean()).astype(np.float32)
    return np.log1p(cnt), mean

u_cnt, u_mean = stats(users, n_users)
m_cnt, m_mean = stats(movies, n_movies)
dense_all = np.stack([u_cnt[users] / 7, m_cnt[movies] / 6, u_mean[users] - 3.5, m_mean[movies] - 3.5], axis=1).astype(np.float32)

D, H1, H2 = 16, 64, 32
P = {
    "user_table": rng.normal(0, 0.05, (n_users, D)),
    "movie_table": rng.normal(0, 0.05, (n_movies, D)),
    "Wd": rng.normal(0, 0.5, (4, D)), "bd": np.zeros(D),
    "W1": rng.normal(0, np.sqrt(2 / (3 * D)), (3 * D, H1)), "b1": np.zeros(H1),
    "W2": rng.normal(0, np.sqrt(2 / H1), (H1, H2)), "b2": np.zeros(H2),
    "W3": rng.normal(0, np.sqrt(1 / H2), (H2, 1)), "b3": np.zeros(1),
}
P = {k: v.astype(np.float32) for k, v in P.items()}
M = {k: np.zeros_like(v) for k, v in P.items()}
V = {k: np.zeros_like(v) for k, v in P.items()}


def forward(u, m, d):
    eu, em = P["user_table"][u], P["movie_table"][m]
    hd_pre = d @ P["Wd"] + P["bd"]
    hd = np.maximum(hd_pre, 0)
    x = np.concatenate([eu, em, hd], axis=1)
    h1_pre = x @ P["W1"] + P["b1"]
    h1 = np.maximum(h1_pre, 0)
    h2_pre = h1 @ P["W2"] + P["b2"]
    h2 = np.maximum(h2_pre, 0)
    z = h2 @ P["W3"] + P["b3"]
    s = 1 / (1 + np.exp(-z))
    return 4.5 * s + 0.5, (eu, em, hd_pre, hd, x, h1_pre, h1, h2_pre, h2, s)


lr, step = 2e-3, 0
for epoch in range(3):
    order = rng.permutation(train)
    for b in range(0, len(order), 256):
        idx = order[b:b + 256]
        u, m, d, y = users[idx], movies[idx], dense_all[idx], ratings[idx][:, None]
        pred, (eu, em, hd_pre, hd, x, h1_pre, h1, h2_pre, h2, s) = forward(u, m, d)
        g = 2 * (pred - y) / len(idx)
        gz = g * 4.5 * s * (1 - s)
        G = {"W3": h2.T @ gz, "b3": gz.sum(0)}
        gh2 = (gz @ P["W3"].T) * (h2_pre > 0)
        G["W2"], G["b2"] = h1.T @ gh2, gh2.sum(0)
        gh1 = (gh2 @ P["W2"].T) * (h1_pre > 0)
        G["W1"], G["b1"] = x.T @ gh1, gh1.sum(0)
        gx = gh1 @ P["W1"].T
        ghd = gx[:, 2 * D:] * (hd_pre > 0)
        G["Wd"], G["bd"] = d.T @ ghd, ghd.sum(0)
        G["user_table"] = np.zeros_like(P["user_table"])
        np.add.at(G["user_table"], u, gx[:, :D])
        G["movie_table"] = np.zeros_like(P["movie_table"])
        np.add.at(G["movie_table"], m, gx[:, D:2 * D])
        step += 1
        for k in P:
            G[k] = G[k] + 1e-5 * P[k]
            M[k] = 0.9 * M[k] + 0.1 * G[k]
            V[k] = 0.999 * V[k] + 0.001 * G[k] ** 2
            P[k] -= (lr * (M[k] / (1 - 0.9 ** step)) / (np.sqrt(V[k] / (1 - 0.999 ** step)) + 1e-8)).astype(np.float32)
    pred, _ = forward(users[test], movies[test], dense_all[test])
    print(f"epoch {epoch}: test RMSE {np.sqrt(np.mean((pred[:, 0] - ratings[test]) ** 2)):.4f}", file=sys.stderr)

inits = [numpy_helper.from_array(P[k], k) for k in P] + [
    numpy_helper.from_array(np.array(4.5, np.float32), "scale"),
    numpy_helper.from_array(np.array(0.5, np.float32), "offset"),
]
nodes = [
    helper.make_node("Gather", ["user_table", "user"], ["eu"], name="user_embedding", axis=0),
    helper.make_node("Gather", ["movie_table", "movie"], ["em"], name="movie_embedding", axis=0),
    helper.make_node("Gemm", ["dense", "Wd", "bd"], ["hd_pre"], name="dense_fc"),
    helper.make_node("Relu", ["hd_pre"], ["hd"], name="dense_relu"),
    helper.make_node("Concat", ["eu", "em", "hd"], ["x"], name="concat", axis=1),
    helper.make_node("MatMul", ["x", "W1"], ["h1_mm"], name="fc1"),
    helper.make_node("Add", ["h1_mm", "b1"], ["h1_pre"], name="fc1_bias"),
    helper.make_node("Relu", ["h1_pre"], ["h1"], name="fc1_relu"),
    helper.make_node("Gemm", ["h1", "W2", "b2"], ["h2_pre"], name="fc2"),
    helper.make_node("Relu", ["h2_pre"], ["h2"], name="fc2_relu"),
    helper.make_node("Gemm", ["h2", "W3", "b3"], ["z"], name="fc3"),
    helper.make_node("Sigmoid", ["z"], ["s"], name="sigmoid"),
    helper.make_node("Mul", ["s", "scale"], ["s45"], name="scale"),
    helper.make_node("Add", ["s45", "offset"], ["rating"], name="offset"),
]
graph = helper.make_graph(
    nodes, "movielens_dlrm",
    [helper.make_tensor_value_info("user", TensorProto.INT64, ["N"]),
     helper.make_tensor_value_info("movie", TensorProto.INT64, ["N"]),
     helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("rating", TensorProto.FLOAT, ["N", 1])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ember make_demo.py")
model.ir_version = 8
onnx.checker.check_model(model)
os.makedirs(out, exist_ok=True)
onnx.save(model, os.path.join(out, "model.onnx"))
calib = rng.choice(train, 512, replace=False)
np.savez(os.path.join(out, "calib.npz"), user=users[calib], movie=movies[calib], dense=dense_all[calib])
np.savez(os.path.join(out, "eval.npz"), user=users[test], movie=movies[test], dense=dense_all[test], rating=ratings[test])
print(f"wrote {out}/model.onnx, calib.npz (512), eval.npz ({len(test)})", file=sys.stderr)
