#!/usr/bin/env python3
"""Fits the rational erf of kernels/src/generic/math.rs and checks it in f32.

erf(x) ~ x * P(x^2) / Q(x^2) on [0, 3.92], P and Q of degree 5 in x^2, Q(0) = 1: a linearized
least-squares fit (x*P - erf*Q = 0), reweighted towards the largest errors (Lawson) so the
result approaches minimax. Prints the f32 coefficients and the worst absolute error of the
f32 evaluation in the kernel's operation order (Estrin's form, input clamped to +-3.92, result
clamped to +-1). Needs numpy only.
"""
from math import erf

import numpy as np

CLAMP = 3.92


def fit(dp=5, dq=5, iters=40):
    xs = np.sort(np.concatenate([CLAMP * (1 - np.cos(np.linspace(0, np.pi / 2, 6000))),
                                 np.linspace(0, CLAMP, 6000)]))
    f = np.array([erf(x) for x in xs])
    t = xs * xs
    w = np.ones_like(xs)
    q_prev = np.ones_like(xs)
    for it in range(iters):
        a = np.hstack([np.stack([xs * t**i for i in range(dp + 1)], 1),
                       np.stack([-f * t**j for j in range(1, dq + 1)], 1)])
        s = w / np.abs(q_prev)
        sol, *_ = np.linalg.lstsq(a * s[:, None], f * s, rcond=None)
        p, q = sol[:dp + 1], np.concatenate([[1.0], sol[dp + 1:]])
        q_prev = sum(q[j] * t**j for j in range(dq + 1))
        err = xs * sum(p[i] * t**i for i in range(dp + 1)) / q_prev - f
        if it > 5:
            w = w * (np.abs(err) / np.abs(err).max() + 1e-3) ** 0.5
            w /= w.mean()
    return [np.float32(v) for v in p], [np.float32(v) for v in q]


def erf32(x, p, q):
    f32 = np.float32
    x = np.clip(x.astype(f32), f32(-CLAMP), f32(CLAMP))
    t = x * x
    t2 = t * t
    t4 = t2 * t2
    pv = ((p[0] + p[1] * t) + (p[2] + p[3] * t) * t2) + (p[4] + p[5] * t) * t4
    qv = ((q[0] + q[1] * t) + (q[2] + q[3] * t) * t2) + (q[4] + q[5] * t) * t4
    return np.clip((x * pv) / qv, f32(-1), f32(1))


if __name__ == "__main__":
    p, q = fit()
    print("P:", ", ".join(repr(float(v)) for v in p))
    print("Q:", ", ".join(repr(float(v)) for v in q))
    x = np.linspace(-6, 6, 400_001).astype(np.float32)
    want = np.array([erf(float(v)) for v in x])
    print("worst |f32 erf - erf|:", np.abs(erf32(x, p, q).astype(np.float64) - want).max())
