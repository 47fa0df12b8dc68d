//! Quantization arithmetic: per-channel symmetric INT8 weights, asymmetric INT8 activations, and
//! row-wise INT8 embedding tables with an f16 scale and bias per row.

use ember_kernels::generic::round_half_even;
use half::f16;

/// INT8 weights `[N, K]` with one symmetric scale per output row.
#[derive(Clone)]
pub struct QuantWeights {
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
    /// Σ_k q[n, k], for the zero-point correction.
    pub sum: Vec<i32>,
    /// Signal-to-quantization-noise ratio of the weights, in dB.
    pub sqnr_db: f32,
}

pub fn quantize_weights(w: &[f32], n: usize, k: usize) -> QuantWeights {
    let mut q = vec![0i8; n * k];
    let mut scale = vec![0f32; n];
    let mut sum = vec![0i32; n];
    let (mut sig, mut noise) = (0f64, 0f64);
    for r in 0..n {
        let row = &w[r * k..(r + 1) * k];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scale[r] = s;
        for (j, v) in row.iter().enumerate() {
            let t = round_half_even((v / s).clamp(-127.0, 127.0));
            q[r * k + j] = t as i8;
            sum[r] += t as i32;
            sig += (*v as f64).powi(2);
            noise += (*v as f64 - t as f64 * s as f64).powi(2);
        }
    }
    QuantWeights { q, scale, sum, sqnr_db: sqnr(sig, noise) }
}

pub fn sqnr(signal: f64, noise: f64) -> f32 {
    if noise <= 0.0 {
        return f32::INFINITY;
    }
    (10.0 * (signal / noise).log10()) as f32
}

/// Affine INT8 parameters for an activation range; the range always includes 0, so that zero is
/// represented exactly. A zero-width range gets scale 1 (no division by zero).
pub fn act_params(min: f32, max: f32) -> (f32, i32) {
    let lo = min.min(0.0);
    let hi = max.max(0.0);
    let scale = if hi > lo && (hi - lo).is_finite() { (hi - lo) / 255.0 } else { 1.0 };
    let zp = round_half_even((-128.0 - lo / scale).clamp(-128.0, 127.0)) as i32;
    (scale, zp)
}

/// Row-wise INT8 embedding table: `value ≈ q · scale[r] + bias[r]`, scale and bias in f16.
pub struct QuantRows {
    pub q: Vec<i8>,
    pub scale: Vec<u16>,
    pub bias: Vec<u16>,
    pub sqnr_db: f32,
}

pub fn quantize_rows(t: &[f32], rows: usize, d: usize) -> QuantRows {
    let mut q = vec![0i8; rows * d];
    let mut scale = vec![0u16; rows];
    let mut bias = vec![0u16; rows];
    let (mut sig, mut noise) = (0f64, 0f64);
    for r in 0..rows {
        let row = &t[r * d..(r + 1) * d];
        let lo = row.iter().fold(f32::INFINITY, |m, v| m.min(*v));
        let hi = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let (lo, hi) = if d == 0 { (0.0, 0.0) } else { (lo, hi) };
        let s16 = f16::from_f32((hi - lo) / 255.0);
        let s = s16.to_f32();
        let b16 = f16::from_f32(if s > 0.0 { lo + 128.0 * s } else { lo });
        let b = b16.to_f32();
        scale[r] = s16.to_bits();
        bias[r] = b16.to_bits();
        for (j, v) in row.iter().enumerate() {
            let qv =
                if s > 0.0 { round_half_even(((v - b) / s).clamp(-128.0, 127.0)) } else { 0.0 };
            q[r * d + j] = qv as i8;
            sig += (*v as f64).powi(2);
            noise += (*v as f64 - (qv * s + b) as f64).powi(2);
        }
    }
    QuantRows { q, scale, bias, sqnr_db: sqnr(sig, noise) }
}

/// How one Linear layer is quantized, chosen by simulation on calibration rows.
#[derive(Clone)]
pub struct LinearChoice {
    pub weights: QuantWeights,
    pub act_scale: f32,
    pub zp: i32,
    pub range: crate::calibrate::Range,
    /// Per-input-channel smoothing divisors (SmoothQuant, α = 0.5), when chosen.
    pub smooth: Option<Vec<f32>>,
    /// Output SQNR (dB) of the chosen scheme on the calibration rows, and of the other one.
    pub sqnr_db: f32,
    pub other_sqnr_db: f32,
}

/// Simulates the integer layer `y = x·Wᵀ` with `s` smoothing on `rows` and returns its SQNR.
fn candidate(
    w: &[f32],
    n: usize,
    k: usize,
    st: &crate::calibrate::Stats,
    s: Option<Vec<f32>>,
    method: crate::Method,
    pct: f32,
    clip: f32,
) -> LinearChoice {
    let ws: Vec<f32> = match &s {
        Some(s) => w.chunks_exact(k).flat_map(|r| r.iter().zip(s).map(|(a, b)| a * b)).collect(),
        None => w.to_vec(),
    };
    let qw = quantize_weights(&ws, n, k);
    let full = st.range(s.as_deref(), method, pct);
    let range = crate::calibrate::Range { min: full.min * clip, max: full.max * clip };
    let (sx, zp) = act_params(range.min, range.max);
    let m = st.rows.len() / k;
    let mult: Vec<f32> =
        (0..k).map(|j| 1.0 / (sx * s.as_ref().map(|s| s[j]).unwrap_or(1.0))).collect();
    let scale: Vec<f32> = qw.scale.iter().map(|v| v * sx).collect();
    let yq = simulate_linear_i8(&st.rows, m, k, n, &mult, zp, &qw, &scale);
    let (mut sig, mut noise) = (0f64, 0f64);
    for i in 0..m {
        let x = &st.rows[i * k..(i + 1) * k];
        for j in 0..n {
            let yf: f64 =
                x.iter().zip(&w[j * k..(j + 1) * k]).map(|(a, b)| *a as f64 * *b as f64).sum();
            sig += yf * yf;
            noise += (yf - yq[i * n + j] as f64).powi(2);
        }
    }
    LinearChoice {
        weights: qw,
        act_scale: sx,
        zp,
        range,
        smooth: s,
        sqnr_db: sqnr(sig, noise),
        other_sqnr_db: f32::NAN,
    }
}

/// Chooses the activation scheme of one Linear layer by simulating candidates on the
/// calibration rows and keeping the closest to float: plain per-tensor quantization, or
/// SmoothQuant-style migration (`x_j / s_j`, `W[:, j] · s_j`, `s_j = (max|x_j| / max|W[:, j]|)^α`)
/// for α in {0.25, 0.5, 0.75}; with [`crate::Method::Mse`], also clipping ratios of the range.
/// Migration must beat the plain scheme by 0.5 dB to be chosen.
pub fn choose_linear(
    w: &[f32],
    n: usize,
    k: usize,
    st: &crate::calibrate::Stats,
    method: crate::Method,
    pct: f32,
) -> LinearChoice {
    let clips: &[f32] =
        if method == crate::Method::Mse { &[1.0, 0.9, 0.8, 0.7, 0.6, 0.5] } else { &[1.0] };
    // Bound the simulation cost on large layers (rows · K · N multiply-adds per candidate).
    let max_rows = ((1usize << 24) / (k * n).max(1)).clamp(16, crate::calibrate::SIM_ROWS);
    let mut st_small;
    let st = if st.rows.len() / k > max_rows {
        st_small = st.clone();
        st_small.rows.truncate(max_rows * k);
        &st_small
    } else {
        st
    };
    let best = |s: Option<Vec<f32>>| -> LinearChoice {
        let mut it = clips.iter().map(|c| candidate(w, n, k, st, s.clone(), method, pct, *c));
        let first =
            it.next().unwrap_or_else(|| candidate(w, n, k, st, s.clone(), method, pct, 1.0));
        it.fold(first, |a, b| if b.sqnr_db > a.sqnr_db { b } else { a })
    };
    let plain = best(None);
    let ax: Vec<f32> = (0..k).map(|j| st.ch_min[j].abs().max(st.ch_max[j].abs())).collect();
    let aw: Vec<f32> =
        (0..k).map(|j| (0..n).fold(0f32, |m, r| m.max(w[r * k + j].abs()))).collect();
    let smooth = [0.25f32, 0.5, 0.75]
        .iter()
        .map(|alpha| {
            let s: Vec<f32> = (0..k)
                .map(|j| {
                    if ax[j] > 0.0 && aw[j] > 0.0 && ax[j].is_finite() {
                        (ax[j].powf(*alpha) / aw[j].powf(1.0 - alpha)).clamp(1e-4, 1e4)
                    } else {
                        1.0
                    }
                })
                .collect();
            best(Some(s))
        })
        .reduce(|a, b| if b.sqnr_db > a.sqnr_db { b } else { a });
    match smooth {
        Some(mut sm) if sm.sqnr_db > plain.sqnr_db + 0.5 => {
            sm.other_sqnr_db = plain.sqnr_db;
            sm
        }
        Some(sm) => LinearChoice { other_sqnr_db: sm.sqnr_db, ..plain },
        None => plain,
    }
}

/// SQNR (dB) of quantizing `v` with `scale` and `zp` (affine, i8) and back.
pub fn operand_sqnr(v: &[f32], scale: f32, zp: i32) -> f32 {
    let (mut sig, mut noise) = (0f64, 0f64);
    for x in v {
        let q =
            (round_half_even((x / scale).clamp(-300.0, 300.0)) + zp as f32).clamp(-128.0, 127.0);
        let back = (q - zp as f32) * scale;
        sig += (*x as f64).powi(2);
        noise += (*x as f64 - back as f64).powi(2);
    }
    sqnr(sig, noise)
}

/// What the runtime's LinearI8 computes on `x [m, k]` (without bias), with this machine's
/// fastest kernels: quantize with `mult`, integer GEMM on the packed weights, rescale.
#[allow(clippy::too_many_arguments)]
pub(crate) fn simulate_linear_i8(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    mult: &[f32],
    zp: i32,
    qw: &QuantWeights,
    scale: &[f32],
) -> Vec<f32> {
    use ember_kernels::pack;
    let ks = ember_kernels::KernelSet::detect();
    let lda = pack::k4(k);
    let mut q = vec![0u8; m * lda];
    (ks.quantize_u8)(x, m, k, lda, 0.0, mult, zp + 128, &mut q);
    let mut packed = vec![0i8; pack::k4n16_len(n, k)];
    pack::pack_k4n16(&qw.q, n, k, &mut packed);
    let mut y = vec![0f32; m * n];
    (ks.i8_gemm)(
        m,
        k,
        n,
        &q,
        lda,
        zp + 128,
        &packed,
        &qw.sum,
        scale,
        &vec![0.0; n],
        ember_kernels::Act::None,
        &mut y,
        n,
    );
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_within_half_a_step() {
        let w: Vec<f32> = (0..3 * 17).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 13.0).collect();
        let qw = quantize_weights(&w, 3, 17);
        for r in 0..3 {
            for j in 0..17 {
                let back = qw.q[r * 17 + j] as f32 * qw.scale[r];
                assert!((back - w[r * 17 + j]).abs() <= qw.scale[r] * 0.5 + 1e-6);
            }
            assert_eq!(
                qw.sum[r],
                qw.q[r * 17..(r + 1) * 17].iter().map(|v| *v as i32).sum::<i32>()
            );
        }
        assert!(qw.sqnr_db > 30.0);
    }

    #[test]
    fn zero_weights_and_zero_ranges_do_not_divide_by_zero() {
        let qw = quantize_weights(&[0.0; 8], 2, 4);
        assert!(qw.q.iter().all(|v| *v == 0) && qw.scale.iter().all(|s| *s == 1.0));
        assert_eq!(act_params(0.0, 0.0), (1.0, -128));
        let (s, zp) = act_params(3.0, 3.0);
        assert!(s > 0.0 && (-128..=127).contains(&zp));
        let r = quantize_rows(&[2.5; 6], 2, 3);
        for (i, q) in r.q.iter().enumerate() {
            let v = *q as f32 * f16::from_bits(r.scale[i / 3]).to_f32()
                + f16::from_bits(r.bias[i / 3]).to_f32();
            assert!((v - 2.5).abs() < 1e-3);
        }
    }

    #[test]
    fn activation_zero_is_exact() {
        for (lo, hi) in [(-1.0, 3.0), (0.0, 6.0), (-5.0, -1.0), (0.1, 0.2)] {
            let (s, zp) = act_params(lo, hi);
            let q0 = round_half_even(0.0 / s) + zp as f32;
            assert_eq!((q0 - zp as f32) * s, 0.0);
            assert!((-128..=127).contains(&zp));
        }
    }
}
