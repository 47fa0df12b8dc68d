"""The real Triton HTTP client (PyPI tritonclient[http]) against `ember serve`.

usage: triton_client.py HOST:PORT MODEL INPUTS.npz EXPECTED.npz

Checks health, metadata and config, then infers every sample of INPUTS.npz in requests of
1, 3 and all samples, with inputs and outputs both as JSON and as binary tensor data, and
requires the outputs to equal EXPECTED.npz (written by `ember run` on the same inputs) bit for
bit. Then bad requests must fail with the server's message, and the server must still answer.
Prints "ok" and exits 0 on success.
"""
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, model, inputs_path, expected_path = sys.argv[1:5]
inputs = dict(np.load(inputs_path))
expected = dict(np.load(expected_path))
n = next(iter(inputs.values())).shape[0]
DT = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64", np.dtype("int32"): "INT32"}

c = httpclient.InferenceServerClient(url)
assert c.is_server_live() and c.is_server_ready(), "server not live/ready"
assert c.is_model_ready(model), "model not ready"
assert not c.is_model_ready(model + "-missing"), "unknown model reported ready"
meta = c.get_model_metadata(model)
assert meta["name"] == model, meta
by_name = {t["name"]: t for t in meta["inputs"]}
for k, v in inputs.items():
    t = by_name[k]
    assert t["datatype"] == DT[v.dtype], (k, t)
    assert t["shape"] == [-1] + list(v.shape[1:]), (k, t)
assert sorted(t["name"] for t in meta["outputs"]) == sorted(expected), meta
config = c.get_model_config(model)
assert config["max_batch_size"] >= 1, config


def infer(rows, binary_in, binary_out, model_name=model, mutate=None):
    ins = []
    for k, v in inputs.items():
        x = np.ascontiguousarray(v[rows])
        if mutate:
            x = mutate(k, x)
        i = httpclient.InferInput(k, list(x.shape), DT[x.dtype])
        i.set_data_from_numpy(x, binary_data=binary_in)
        ins.append(i)
    outs = [httpclient.InferRequestedOutput(k, binary_data=binary_out) for k in expected]
    return c.infer(model_name, ins, outputs=outs, request_id="req-%d" % len(rows))


checked = 0
for size in (1, 3, n):
    for binary_in in (True, False):
        for binary_out in (True, False):
            for start in range(0, n, size):
                rows = list(range(start, min(n, start + size)))
                r = infer(rows, binary_in, binary_out)
                assert r.get_response()["id"] == "req-%d" % len(rows)
                for k, want in expected.items():
                    got = r.as_numpy(k)
                    assert got.shape == want[rows].shape, (k, got.shape, want[rows].shape)
                    assert np.array_equal(got, want[rows]), (
                        "%s: rows %s differ from ember run (binary in %s, out %s): max abs diff %g"
                        % (k, rows, binary_in, binary_out, np.abs(got - want[rows]).max())
                    )
                checked += len(rows)
                if size == 1 and start >= 8:
                    break


def must_fail(what, needle, **kw):
    try:
        infer([0], True, True, **kw)
    except InferenceServerException as e:
        assert needle in str(e), "%s: message %r lacks %r" % (what, str(e), needle)
        return
    raise AssertionError("%s was accepted" % what)


must_fail("unknown model", "unknown model", model_name=model + "-missing")
first = next(iter(inputs))
must_fail("wrong shape", "does not match", mutate=lambda k, x: np.concatenate([x, x], axis=-1) if k == first and x.ndim > 1 else (x[:, None] if k == first else x))
must_fail("wrong dtype", "datatype", mutate=lambda k, x: x.astype(np.int32) if k == first and x.dtype != np.int32 else (x.astype(np.float32) if k == first else x))
assert c.is_server_live()
r = infer([0], True, True)
for k, want in expected.items():
    assert np.array_equal(r.as_numpy(k), want[[0]])
print("ok: %d samples matched ember run" % checked)
