#!/usr/bin/env python3
"""INT4 accuracy and size side by side: onnxruntime's MatMulNBits (block 32 and 128, symmetric,
embeddings left in FP32) against Ember `.ember` files, on the MiniLM-L3 sentences of the test
set-up, against onnxruntime FP32 output 461.

usage: minilm_int4_vs_ort.py MINILM.onnx ORACLE_DIR [EMBER_FILE ...]

ORACLE_DIR is the folder tests/oracle/minilm.py writes (eval.npz, expected.npz). Each Ember file
is run with `ember run` (EMBER_BIN, default target/release/ember). onnxruntime's quantizer needs
onnx-ir (pip install onnx-ir). Prints, per configuration, the mean and minimum per-sentence
cosine to FP32 and the file size.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

onnx_path, oracle = sys.argv[1], sys.argv[2]
embers = sys.argv[3:]
ev = dict(np.load(os.path.join(oracle, "eval.npz")))
want = np.load(os.path.join(oracle, "expected.npz"))["461"]


def cos(got):
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def report(name, c, size):
    print("%-46s mean %.5f  min %.5f  %6.1f MB" % (name, c.mean(), c.min(), size / 1e6))


import onnx

tmp = tempfile.mkdtemp()
for block in (32, 128):
    m = onnx.load(onnx_path)
    q = MatMulNBitsQuantizer(m, block_size=block, is_symmetric=True)
    q.process()
    out = os.path.join(tmp, "minilm.int4.b%d.onnx" % block)
    q.model.save_model_to_file(out, use_external_data_format=False)
    s = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = s.run(["461"], {k: v for k, v in ev.items()})[0]
    report("onnxruntime MatMulNBits INT4 block %d" % block, cos(got), os.path.getsize(out))

ember = os.environ.get("EMBER_BIN") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "ember")
for f in embers:
    out = os.path.join(tmp, "out.npz")
    subprocess.run([ember, "run", f, "--input", os.path.join(oracle, "eval.npz"), "--output", out],
                   check=True, stdout=subprocess.DEVNULL)
    report("ember " + os.path.basename(f), cos(np.load(out)["461"]), os.path.getsize(f))
