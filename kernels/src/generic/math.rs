//! Float vector math: exp, erf, softmax rows. Written with fixed lane counts and no
//! data-dependent branches so the compiler vectorizes them; the x86 overlays are these same
//! bodies compiled for AVX2 / AVX-512, so those variants give the same bits (the AVX-512
//! softmax is written out with FMA instead, within its family's bound: see `x86_64::softmax512`).
//!
//! Bounds against the correctly rounded functions (tested): `exp` relative 3e-7 for
//! x in [-87, 88] (0 below -87.3), `erf` absolute 5e-7.

/// The constants of [`exp`] (shared with the AVX-512 softmax's FMA form of it).
pub(crate) mod exp_consts {
    pub const LOG2E: f32 = core::f32::consts::LOG2_E;
    /// ln 2 split in two, so that n·LN2_HI is exact for the n that occur.
    pub const LN2_HI: f32 = 0.693_145_75;
    pub const LN2_LO: f32 = 1.428_606_8e-6;
    /// 1.5·2^23: adding it rounds to an integer in the low mantissa bits.
    pub const MAGIC: f32 = 12_582_912.0;
    /// Inputs below give 0; above `HI`, e^HI.
    pub const LO: f32 = -87.3;
    pub const HI: f32 = 88.3;
}

/// e^x. Range reduction x = n·ln2 + r, |r| ≤ ln2/2, degree-7 Taylor polynomial for e^r, then
/// 2^n through the exponent bits. Inputs below -87.3 give 0, above 88.3 saturate at e^88.3.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    use exp_consts::{HI, LN2_HI, LN2_LO, LO, LOG2E, MAGIC};
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    // The integer n sits in the low mantissa bits of t (no float→int cast, which would not
    // vectorize because of Rust's saturating `as`).
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Σ r^i / i!, i ≤ 7, in Estrin's form: pairs, then r², then r⁴, a chain of three
    // multiply-adds where Horner's form has seven (the vector loops are bound by that latency).
    let r2 = r * r;
    let r4 = r2 * r2;
    let b0 = (1.0 + r) + (0.5 + r * (1.0 / 6.0)) * r2;
    let b1 = (1.0 / 24.0 + r * (1.0 / 120.0)) + (1.0 / 720.0 + r * (1.0 / 5040.0)) * r2;
    let p = b0 + b1 * r4;
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    let v = p * scale;
    // NaN stays NaN; far below the range is 0.
    if x.is_nan() {
        x
    } else if x < LO {
        0.0
    } else {
        v
    }
}

/// erf(x) as a rational function, `x·P(x²)/Q(x²)` with P and Q of degree 5 (coefficients
/// fitted by `scripts/fit_erf.py`, near-minimax on [0, 3.92]), the input clamped to ±3.92 and the
/// result to ±1 (so erf(±∞) = ±1 exactly); absolute error ≤ 3e-7 with float rounding (tested
/// against 5e-7). Odd by construction (signed zeros kept), NaN in gives NaN. About half the
/// operations of the exp-based Abramowitz & Stegun 7.1.26 it replaced, and no `exp`.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    // P[0] is erf'(0) = 2/√π, which the fit reproduces to 7 digits.
    const P: [f32; 6] = [
        core::f32::consts::FRAC_2_SQRT_PI,
        0.192_756_71,
        0.053_059_578,
        0.003_868_031,
        2.874_759_4e-4,
        2.034_833_2e-6,
    ];
    const Q: [f32; 6] =
        [1.0, 0.504_157_84, 0.115_081_646, 0.015_171_7, 0.001_188_049_3, 3.807_147_7e-5];
    let xc = x.clamp(-3.92, 3.92);
    let t = xc * xc;
    let t2 = t * t;
    let t4 = t2 * t2;
    // Estrin's form, as in `exp`.
    let p = ((P[0] + P[1] * t) + (P[2] + P[3] * t) * t2) + (P[4] + P[5] * t) * t4;
    let q = ((Q[0] + Q[1] * t) + (Q[2] + Q[3] * t) * t2) + (Q[4] + Q[5] * t) * t4;
    ((xc * p) / q).clamp(-1.0, 1.0)
}

/// tanh(x) = 1 − 2/(e^(2x) + 1) with [`exp`]; absolute error ≤ 5e-7 (tested).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let e = exp(2.0 * x.clamp(-10.0, 10.0));
    let y = 1.0 - 2.0 / (e + 1.0);
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// GELU, erf form: `x·(1 + erf(x/√2))/2`, in that order of operations.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * core::f32::consts::FRAC_1_SQRT_2))
}

/// GELU, tanh form: `x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))/2`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + tanh(C * (x + 0.044_715 * x * x * x)))
}

/// `o[i] = erf(x[i])`.
#[inline(always)]
pub fn erf_slice(x: &[f32], o: &mut [f32]) {
    for (o, v) in o.iter_mut().zip(x) {
        *o = erf(*v);
    }
}

const LANES: usize = 16;

/// Softmax of one contiguous row in place, of the row scaled by `alpha` plus an optional
/// additive mask (`mask` empty, or as long as the row): `x = softmax(alpha·x + mask)`, each
/// term rounded as written (`alpha·x` to f32, then `+ mask`), so scores scaled by a separate
/// pass first give the same bits; `alpha` 1 skips the multiply (x·1 is x). The maximum and the
/// sum are taken over 16 interleaved lanes, then across lanes as a tree ([`lanes_sum`]), in a
/// fixed order.
#[inline(always)]
pub fn softmax_row(x: &mut [f32], mask: &[f32], alpha: f32) {
    const ZERO: [f32; LANES] = [0.0; LANES];
    if mask.is_empty() {
        // Without a mask the lanes' mask terms are ignored (`MASK = false`): zeros stand in.
        let zeros = core::iter::repeat(&ZERO[..]);
        let tail = &ZERO[..x.len() % LANES];
        if alpha == 1.0 {
            softmax_impl::<false, false, _>(x, zeros, tail, alpha);
        } else {
            softmax_impl::<false, true, _>(x, zeros, tail, alpha);
        }
    } else {
        let n = x.len().min(mask.len());
        let (x, m) = (&mut x[..n], &mask[..n]);
        let tail = &m[n / LANES * LANES..];
        if alpha == 1.0 {
            softmax_impl::<true, false, _>(x, m.chunks_exact(LANES), tail, alpha);
        } else {
            softmax_impl::<true, true, _>(x, m.chunks_exact(LANES), tail, alpha);
        }
    }
}

/// [`softmax_row`] over each of `masks.len()` rows of `n` values in `x` (row `r` at
/// `x[r·n..]`, with mask `masks[r]`), one after the other: the twin of [`crate::SoftmaxFn`].
#[inline(always)]
pub fn softmax_rows(x: &mut [f32], n: usize, masks: &[&[f32]], alpha: f32) {
    if n == 0 {
        return;
    }
    for (row, mask) in x[..masks.len() * n].chunks_exact_mut(n).zip(masks) {
        softmax_row(row, mask, alpha);
    }
}

/// `masks` yields the mask of each whole 16-lane chunk of `x`, `tail` the mask of the rest
/// (both ignored when `MASK` is false).
#[inline(always)]
fn softmax_impl<'m, const MASK: bool, const SCALE: bool, I>(
    x: &mut [f32],
    masks: I,
    tail: &[f32],
    alpha: f32,
) where
    I: Iterator<Item = &'m [f32]> + Clone,
{
    let n = x.len();
    let full = n / LANES * LANES;
    let at = |xv: f32, mv: f32| {
        let s = if SCALE { xv * alpha } else { xv };
        if MASK {
            s + mv
        } else {
            s
        }
    };
    let mut mx = [f32::NEG_INFINITY; LANES];
    for (xc, mc) in x[..full].chunks_exact(LANES).zip(masks.clone()) {
        for l in 0..LANES {
            let t = at(xc[l], mc[l]);
            mx[l] = if t > mx[l] { t } else { mx[l] };
        }
    }
    let mut top = lanes_max(mx);
    for (xv, mv) in x[full..].iter().zip(tail) {
        let t = at(*xv, *mv);
        top = if t > top { t } else { top };
    }
    let mut sums = [0f32; LANES];
    for (xc, mc) in x[..full].chunks_exact_mut(LANES).zip(masks) {
        for l in 0..LANES {
            let e = exp(at(xc[l], mc[l]) - top);
            xc[l] = e;
            sums[l] += e;
        }
    }
    let mut sum = lanes_sum(sums);
    for (xv, mv) in x[full..].iter_mut().zip(tail) {
        *xv = exp(at(*xv, *mv) - top);
        sum += *xv;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// The sum of the 16 lanes as a tree of halves (lane l plus lane l + 8, then l + 4, l + 2,
/// l + 1): four dependent adds where a running sum over the lanes is a chain of sixteen, which
/// on 128-wide attention rows held the softmax up (−13 % on AVX-512). Only the softmax uses it:
/// in `lane_sum` the same tree made the vectorizer split the layer norm's accumulators into
/// 2-wide vectors (+30 %).
#[inline(always)]
fn lanes_sum(mut a: [f32; LANES]) -> f32 {
    let mut h = LANES / 2;
    while h > 0 {
        for l in 0..h {
            a[l] += a[l + h];
        }
        h /= 2;
    }
    a[0]
}

/// The largest of the 16 lanes, as a tree of halves like [`lanes_sum`] (NaN lanes lose every
/// comparison, so the result does not depend on the order).
#[inline(always)]
fn lanes_max(mut a: [f32; LANES]) -> f32 {
    let mut h = LANES / 2;
    while h > 0 {
        for l in 0..h {
            a[l] = if a[l + h] > a[l] { a[l + h] } else { a[l] };
        }
        h /= 2;
    }
    a[0]
}

/// The correctly rounded square root (the same bits everywhere): the compiler's own under
/// `std`, so a body compiled for AVX gets `vsqrtss`. `libm::sqrtf` is a legacy-encoded `sqrtss`
/// in inline assembly, and one of those per row after 256-bit code made the AVX2 layer norm
/// 1.5x slower than the SSE2 build of the same body (measured on Zen 3).
#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        x.sqrt()
    }
    #[cfg(not(feature = "std"))]
    {
        libm::sqrtf(x)
    }
}

/// Layer normalization of one row: `o = (x − mean)/√(var + eps) · gamma + beta` (`beta` may be
/// empty). Mean and variance (two-pass) are summed over 16 interleaved lanes, then across
/// lanes in a fixed order.
#[inline(always)]
pub fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, o: &mut [f32]) {
    let d = x.len();
    let mean = lane_sum(x, |v| v) / d as f32;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / d as f32;
    let inv = 1.0 / sqrt(var + eps);
    let o = &mut o[..d];
    if beta.is_empty() {
        for ((o, v), g) in o.iter_mut().zip(x).zip(&gamma[..d]) {
            *o = (v - mean) * inv * g;
        }
    } else {
        for (((o, v), g), b) in o.iter_mut().zip(x).zip(&gamma[..d]).zip(&beta[..d]) {
            *o = (v - mean) * inv * g + b;
        }
    }
}

/// `Σ f(x[i])` over 16 interleaved lanes, then across lanes, then the tail, in that order.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut c = x.chunks_exact(LANES);
    for ch in &mut c {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a += f(*v);
        }
    }
    let mut s = 0.0;
    for a in acc {
        s += a;
    }
    for v in c.remainder() {
        s += f(*v);
    }
    s
}
