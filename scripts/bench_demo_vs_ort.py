#!/usr/bin/env python3
"""Side by side: Ember INT8 (`ember demo --json`) and onnxruntime FP32 on the same demo model,
the same input rows, batch sizes 1 and 8, one thread, in one run. Prints p50/p99 latencies and
the Ember/ORT ratio. Also reports ORT's session creation time.

Usage: python3 scripts/bench_demo_vs_ort.py [--iters 2000]
Needs: a release build (cargo build --release -p ember-cli), numpy, onnxruntime.
"""
import argparse
import json
import subprocess
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("--iters", type=int, default=2000)
a = ap.parse_args()

ember = json.loads(subprocess.run(["target/release/ember", "demo", "--json", "--iters", str(a.iters)],
                                  check=True, capture_output=True, text=True).stdout)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
t0 = time.perf_counter()
sess = ort.InferenceSession("host-tools/demo/model.onnx", opts, providers=["CPUExecutionProvider"])
create_ms = (time.perf_counter() - t0) * 1e3
ev = np.load("host-tools/demo/eval.npz")
print(f"onnxruntime {ort.__version__} session creation: {create_ms:.2f} ms")
print(f"{'batch':>5} {'ember p50 us':>13} {'ember p99 us':>13} {'ort p50 us':>11} {'ort p99 us':>11} {'p50 ratio':>10} {'p99 ratio':>10}")
for b in (1, 8):
    feeds = {k: ev[k][:b] for k in ("user", "movie", "dense")}
    for _ in range(50):
        sess.run(None, feeds)
    t = []
    for _ in range(a.iters):
        s = time.perf_counter()
        sess.run(None, feeds)
        t.append((time.perf_counter() - s) * 1e6)
    t.sort()
    o50, o99 = t[len(t) // 2], t[int((len(t) - 1) * 0.99)]
    e = ember["latency_us"][f"batch{b}"]
    print(f"{b:>5} {e['p50']:>13.2f} {e['p99']:>13.2f} {o50:>11.2f} {o99:>11.2f} {e['p50'] / o50:>10.3f} {e['p99'] / o99:>10.3f}")
