#!/usr/bin/env python3
"""Side by side on paraphrase-MiniLM-L3-v2 at sequence 128: Ember INT8 (`ember bench --json`)
against onnxruntime FP32 and onnxruntime dynamic INT8 (quantize_dynamic, per-channel), on the
same token inputs, batch sizes and thread counts, in one run. Prints p50/p99 latency, samples/s,
and the Ember/ORT ratios; also Ember's open + first run and ORT's session creation.

Usage: python3 scripts/bench_minilm_vs_ort.py EMBER_FILE [--onnx PATH] [--batches 1 8]
           [--threads 1 2] [--iters 50]
EMBER_FILE must hold plans for the batch sizes asked for, e.g.:
  target/release/quantize ~/.cache/ember/minilm/paraphrase-MiniLM-L3-v2.onnx \
      --calib CALIB.npz --shape input_ids=128 --shape attention_mask=128 \
      --batch 1 --batch 8 --act-matmul int8 -o minilm.i8.ember
Needs: a release build (cargo build --release -p ember-cli), numpy, onnxruntime; the model is
fetched by scripts/setup.sh.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

ap = argparse.ArgumentParser()
ap.add_argument("ember_file")
ap.add_argument("--onnx", default=os.path.expanduser("~/.cache/ember/minilm/paraphrase-MiniLM-L3-v2.onnx"))
ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
ap.add_argument("--iters", type=int, default=50)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--json", action="store_true")
a = ap.parse_args()

tmp = tempfile.mkdtemp(prefix="ember-bench-")
dyn_path = os.path.join(tmp, "minilm.dynamic_int8.onnx")
quantize_dynamic(a.onnx, dyn_path, per_channel=True, weight_type=QuantType.QInt8)

# Token ids from the bert-base-uncased vocabulary range ([CLS] ... [SEP]), all positions valid.
rng = np.random.default_rng(7)
nmax = max(a.batches)
ids = rng.integers(1996, 29000, size=(nmax, a.seq), dtype=np.int64)
ids[:, 0], ids[:, -1] = 101, 102
mask = np.ones((nmax, a.seq), dtype=np.int64)
inp = os.path.join(tmp, "tokens.npz")
np.savez(inp, input_ids=ids, attention_mask=mask)


def ort_session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    return s, (time.perf_counter() - t0) * 1e3


def time_ort(sess, b):
    feeds = {"input_ids": ids[:b], "attention_mask": mask[:b]}
    for _ in range(5):
        sess.run(None, feeds)
    t = []
    for _ in range(a.iters):
        s = time.perf_counter()
        sess.run(None, feeds)
        t.append((time.perf_counter() - s) * 1e3)
    t.sort()
    return t[len(t) // 2], t[int(round((len(t) - 1) * 0.99))]


rows = []
for threads in a.threads:
    f32, f32_create = ort_session(a.onnx, threads)
    dyn, dyn_create = ort_session(dyn_path, threads)
    for b in a.batches:
        e = json.loads(subprocess.run(
            ["target/release/ember", "bench", a.ember_file, "--batch", str(b), "--threads", str(threads),
             "--iters", str(a.iters), "--input", inp, "--json"],
            check=True, capture_output=True, text=True).stdout)
        f50, f99 = time_ort(f32, b)
        d50, d99 = time_ort(dyn, b)
        rows.append({
            "batch": b, "threads": threads,
            "ember_p50_ms": e["p50_ms"], "ember_p99_ms": e["p99_ms"],
            "ort_fp32_p50_ms": f50, "ort_fp32_p99_ms": f99,
            "ort_dyn_int8_p50_ms": d50, "ort_dyn_int8_p99_ms": d99,
            "ratio_vs_fp32": e["p50_ms"] / f50, "ratio_vs_dyn_int8": e["p50_ms"] / d50,
            "ember_samples_per_s": e["samples_per_s"],
            "ember_open_plus_first_ms": e["open_ms"] + e["first_run_ms"],
            "ort_fp32_session_ms": f32_create, "ort_dyn_int8_session_ms": dyn_create,
        })

if a.json:
    print(json.dumps({"onnxruntime": ort.__version__, "seq": a.seq, "rows": rows}, indent=2))
else:
    print(f"MiniLM-L3 seq {a.seq}, onnxruntime {ort.__version__}, {a.iters} timed runs each (p50 / p99 ms)")
    print(f"{'batch':>5} {'thr':>3} {'ember':>15} {'ort fp32':>15} {'ort dyn int8':>15} {'vs fp32':>8} {'vs dyn':>8} {'open+1st':>9} {'ort sess':>9}")
    for r in rows:
        print(f"{r['batch']:>5} {r['threads']:>3} {r['ember_p50_ms']:>7.2f}/{r['ember_p99_ms']:<7.2f} "
              f"{r['ort_fp32_p50_ms']:>7.2f}/{r['ort_fp32_p99_ms']:<7.2f} {r['ort_dyn_int8_p50_ms']:>7.2f}/{r['ort_dyn_int8_p99_ms']:<7.2f} "
              f"{r['ratio_vs_fp32']:>8.3f} {r['ratio_vs_dyn_int8']:>8.3f} {r['ember_open_plus_first_ms']:>9.2f} {r['ort_fp32_session_ms']:>9.1f}")
