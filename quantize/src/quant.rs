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
    yf: &[f64],
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
    let sqnr_db = sqnr_against(yf, &yq);
    LinearChoice {
        weights: qw,
        act_scale: sx,
        zp,
        range,
        smooth: s,
        sqnr_db,
        other_sqnr_db: f32::NAN,
    }
}

/// SQNR (dB) of `yq [m, n]` against the float layer `x [m, k] · wᵀ` (`w [n, k]`).
pub fn output_sqnr(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, yq: &[f32]) -> f32 {
    sqnr_against(&float_output(x, m, k, w, n), yq)
}

/// The float layer `x [m, k] · wᵀ` (`w [n, k]`), each output summed in f64: the reference every
/// candidate of a layer is measured against (computed once per layer).
pub fn float_output(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * n];
    // Rows in parallel; four columns at a time (independent sums, each in the order of one).
    par_chunks_mut(&mut y, n.max(1), 4, |i, yi| {
        let xi = &x[i * k..(i + 1) * k];
        for (ys, ws) in yi.chunks_mut(4).zip(w.chunks(4 * k)) {
            let mut acc = [-0.0f64; 4];
            for (p, a) in xi.iter().enumerate() {
                for (s, wj) in acc.iter_mut().zip(ws.chunks_exact(k)) {
                    *s += *a as f64 * wj[p] as f64;
                }
            }
            ys.copy_from_slice(&acc[..ys.len()]);
        }
    });
    y
}

/// SQNR (dB) of `yq` against the reference `yf` of [`float_output`] (same length).
pub fn sqnr_against(yf: &[f64], yq: &[f32]) -> f32 {
    let (mut sig, mut noise) = (0f64, 0f64);
    for (f, q) in yf.iter().zip(yq) {
        sig += f * f;
        noise += (f - *q as f64).powi(2);
    }
    sqnr(sig, noise)
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
    let yf = float_output(&st.rows, st.rows.len() / k, k, w, n);
    let best = |s: Option<Vec<f32>>| -> LinearChoice {
        let cand = |c: f32| candidate(w, n, k, st, &yf, s.clone(), method, pct, c);
        let mut it = clips.iter().map(|c| cand(*c));
        let first = it.next().unwrap_or_else(|| cand(1.0));
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

/// The range of an activation x activation MatMul operand (`symmetric`: the B side, zero point
/// 0). A clipped range (percentile, entropy) is kept only when it quantizes the calibration rows
/// at least as well as the min-max range: attention probabilities, whose rare peaks carry the
/// signal, are where the entropy threshold would clip what matters.
pub fn operand_range(
    st: &crate::calibrate::Stats,
    method: crate::Method,
    pct: f32,
    symmetric: bool,
) -> crate::calibrate::Range {
    let full = st.range(None, crate::Method::MinMax, pct);
    let r = st.range(None, method, pct);
    if matches!(method, crate::Method::MinMax | crate::Method::Mse) || st.rows.is_empty() {
        return r;
    }
    let db = |r: crate::calibrate::Range| {
        let (s, zp) = if symmetric {
            let a = r.min.abs().max(r.max.abs());
            (if a > 0.0 { a / 127.0 } else { 1.0 }, 0)
        } else {
            act_params(r.min, r.max)
        };
        operand_sqnr(&st.rows, s, zp)
    };
    if db(r) >= db(full) {
        r
    } else {
        full
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
    (ks.quantize_u8)(x, m, k, k, lda, 0.0, mult, zp + 128, &mut q);
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

/// How INT4 group scales are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum I4Scales {
    /// Integer multipliers 1..=16 of one f32 scale per output column (LinearI4M): `Q·M` is an
    /// INT8 weight, so the layer runs on the INT8 kernels at their speed.
    #[default]
    Mult,
    /// One f16 scale per (column, group) (LinearI4): finer scales, a float step per group.
    Group,
}

/// Largest group multiplier: `Q·M` must stay an i8 (−8·16 = −128).
pub const I4_MAX_MUL: u8 = 16;

/// Group-wise symmetric INT4 weights `[N, K]`: one scale per (row, group of `group` K), stored
/// as f16 ([`I4Scales::Group`]) or as an integer multiple of a per-row scale ([`I4Scales::Mult`]).
pub struct QuantI4 {
    /// Values −8..=7, row-major `[N, K]`.
    pub q: Vec<i8>,
    /// Group mode: f16 bits, `[N, K/group]`; empty in multiplier mode.
    pub scale: Vec<u16>,
    /// Multiplier mode: 1..=16, `[N, K/group]`; empty in group mode.
    pub mul: Vec<u8>,
    /// Multiplier mode: the per-row scale `s` (a group's scale is `mul·s`), `[N]`.
    pub col_scale: Vec<f32>,
    /// Σ q over each (row, group), `[N, K/group]`.
    pub sum: Vec<i32>,
    pub sqnr_db: f32,
}

impl QuantI4 {
    /// The scale of group `g` of row `r` (`groups` per row).
    pub fn group_scale(&self, r: usize, g: usize, groups: usize) -> f32 {
        if self.mul.is_empty() {
            f16::from_bits(self.scale[r * groups + g]).to_f32()
        } else {
            self.mul[r * groups + g] as f32 * self.col_scale[r]
        }
    }
}

/// Clipping ratios tried for each INT4 group (the scale is `ratio · max|w| / 7`).
const I4_CLIPS: [f32; 8] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65];

/// The best scale of one group `wg` (its first channel is `j0` of `imp`): among the clip ratios
/// rounded to f16 (`col` None), or among the multiples `m·col`, `m` in 1..=16. Minimizes the
/// activation-weighted squared error; returns (scale, stored code: f16 bits or `m`).
fn best_group_scale(wg: &[f32], imp: &[f32], j0: usize, col: Option<f32>) -> (f32, u16) {
    let weight = |j: usize| if imp.is_empty() { 1.0 } else { imp[j] as f64 + 1e-12 };
    let err = |s: f32| -> f64 {
        wg.iter()
            .enumerate()
            .map(|(i, v)| {
                let t = round_half_even((v / s).clamp(-8.0, 7.0));
                weight(j0 + i) * (*v as f64 - (t * s) as f64).powi(2)
            })
            .sum()
    };
    let amax = wg.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut best = (f64::INFINITY, 0f32, 0u16);
    match col {
        Some(c) => {
            for m in 1..=I4_MAX_MUL {
                let s = m as f32 * c;
                let e = if amax > 0.0 { err(s) } else { 0.0 };
                if e < best.0 {
                    best = (e, s, m as u16);
                }
            }
        }
        None => {
            for clip in I4_CLIPS {
                let s16 = f16::from_f32(if amax > 0.0 { clip * amax / 7.0 } else { 1.0 });
                let s = s16.to_f32();
                if !(s > 0.0 && s.is_finite()) {
                    continue;
                }
                let e = err(s);
                if e < best.0 {
                    best = (e, s, s16.to_bits());
                }
            }
        }
    }
    if best.0.is_finite() {
        (best.1, best.2)
    } else {
        match col {
            Some(c) => (c, 1),
            None => (1.0, f16::from_f32(1.0).to_bits()),
        }
    }
}

/// The per-row scale of multiplier mode: the largest best group scale of the row over
/// `headroom` (16 when the codes are chosen from these weights; a little less when they will
/// move, as under GPTQ), so each group finds a multiple near its own best scale.
fn row_col_scale(row: &[f32], group: usize, imp: &[f32], headroom: f32) -> f32 {
    let smax = row
        .chunks_exact(group)
        .enumerate()
        .map(|(g, wg)| {
            let amax = wg.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax > 0.0 {
                best_group_scale(wg, imp, g * group, None).0
            } else {
                0.0
            }
        })
        .fold(0f32, f32::max);
    if smax > 0.0 && smax.is_finite() {
        smax / headroom
    } else {
        1.0
    }
}

/// Quantizes `w [n, k]` to INT4 in groups of `group` along K with f16 group scales; see
/// [`quantize_i4_with`].
pub fn quantize_i4(w: &[f32], n: usize, k: usize, group: usize, imp: &[f32]) -> QuantI4 {
    quantize_i4_with(w, n, k, group, imp, I4Scales::Group)
}

/// Quantizes `w [n, k]` to INT4 in groups of `group` along K. Each group's scale is searched
/// to minimize the *activation-weighted* squared error `Σ_j imp[j]·(w_j − q_j·s)²`, `imp[j]` the
/// mean square of input channel `j` on the calibration data (AWQ-style: errors on channels
/// that carry large activations cost more); `imp` empty weighs every channel alike. Scales are
/// in their stored form (f16, or a multiple of the row's scale) before the codes are chosen,
/// so the codes match the stored scale.
pub fn quantize_i4_with(
    w: &[f32],
    n: usize,
    k: usize,
    group: usize,
    imp: &[f32],
    mode: I4Scales,
) -> QuantI4 {
    let groups = k / group;
    let mult = mode == I4Scales::Mult;
    let mut q = vec![0i8; n * k];
    let mut scale = vec![0u16; if mult { 0 } else { n * groups }];
    let mut mul = vec![0u8; if mult { n * groups } else { 0 }];
    let mut col_scale = vec![0f32; if mult { n } else { 0 }];
    let mut sum = vec![0i32; n * groups];
    let (mut sig, mut noise) = (0f64, 0f64);
    for r in 0..n {
        let row = &w[r * k..(r + 1) * k];
        let col = mult.then(|| row_col_scale(row, group, imp, I4_MAX_MUL as f32));
        if let Some(c) = col {
            col_scale[r] = c;
        }
        for g in 0..groups {
            let j0 = g * group;
            let wg = &row[j0..j0 + group];
            let (s, code) = best_group_scale(wg, imp, j0, col);
            if mult {
                mul[r * groups + g] = code as u8;
            } else {
                scale[r * groups + g] = code;
            }
            for (i, v) in wg.iter().enumerate() {
                let t = round_half_even((v / s).clamp(-8.0, 7.0));
                q[r * k + j0 + i] = t as i8;
                sum[r * groups + g] += t as i32;
                sig += (*v as f64).powi(2);
                noise += (*v as f64 - (t * s) as f64).powi(2);
            }
        }
    }
    QuantI4 { q, scale, mul, col_scale, sum, sqnr_db: sqnr(sig, noise) }
}

/// The cores to use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |t| t.get())
}

/// Splits `v` into consecutive chunks of `len` elements and calls `f(index, chunk)` once per
/// chunk, the chunks dealt in contiguous runs (at least `min` chunks each) to one scoped thread
/// per core. Each chunk is its own output, so results do not depend on the number of threads.
fn par_chunks_mut<T: Send>(
    v: &mut [T],
    len: usize,
    min: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let items = v.len().div_ceil(len);
    let parts = cores().min(items / min.max(1)).max(1);
    let per = items.div_ceil(parts).max(1);
    std::thread::scope(|sc| {
        let f = &f;
        let mut runs = v.chunks_mut(per * len).enumerate();
        let first = runs.next();
        for (t, run) in runs {
            sc.spawn(move || run.chunks_mut(len).enumerate().for_each(|(i, c)| f(t * per + i, c)));
        }
        if let Some((_, run)) = first {
            run.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
        }
    });
}

/// GPTQ's damping of the Hessian, as a share of its mean diagonal.
const DAMP: f64 = 0.1;

/// In-place lower Cholesky factor of the symmetric `a [k, k]` (row-major); false when `a` is
/// not positive definite.
///
/// Left-looking, one column `j` at a time: the owner of row `j` finishes its diagonal, then
/// every thread computes entry `j` of its own rows below it (rows are dealt to threads in
/// groups of four, and a group's four dot products run interleaved: independent sums, each in
/// the order of the sequential loop), so the factor has the same bits on any number of cores.
fn cholesky(a: &mut [f64], k: usize) -> bool {
    use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    assert!(a.len() >= k * k, "cholesky: {} values for k {k}", a.len());
    let threads = cores().min(k / 128).max(1);
    let groups = k.div_ceil(4);
    let barrier = std::sync::Barrier::new(threads);
    // The first column whose diagonal failed (usize::MAX: none). A column, not a flag: a thread
    // still between column j's barrier and its check must not see a failure of column j + 1
    // (it would return while the failing owner waits at the next barrier for it: a hang).
    let fail = AtomicUsize::new(usize::MAX);
    /// The matrix, shared by the threads; each writes only the rows it owns.
    struct Mat(*mut f64);
    // SAFETY: the threads write disjoint rows and read a row only after the barrier that
    // follows its last write (see `work`).
    unsafe impl Sync for Mat {}
    let m = Mat(a.as_mut_ptr());
    let work = |t: usize| {
        let m = &m;
        for j in 0..k {
            if (j / 4) % threads == t {
                // SAFETY: row j lies inside `a` (k·k values) and belongs to this thread (group
                // j / 4); no other thread touches it until the barrier below.
                let rj = unsafe { core::slice::from_raw_parts_mut(m.0.add(j * k), k) };
                let d = rj[j] - rj[..j].iter().map(|v| v * v).sum::<f64>();
                if d > 0.0 && d.is_finite() {
                    rj[j] = d.sqrt();
                    rj[j + 1..].fill(0.0);
                } else {
                    fail.fetch_min(j, Relaxed);
                }
            }
            barrier.wait();
            // Failures of columns up to j were stored before this barrier, so every thread
            // sees the same answer here and all of them return at the same column.
            if fail.load(Relaxed) <= j {
                return;
            }
            // SAFETY: row j is final (written by its owner before the barrier) and from here
            // on only read.
            let lj = unsafe { core::slice::from_raw_parts(m.0.add(j * k), j + 1) };
            for g in ((j + 1) / 4..groups).filter(|g| g % threads == t) {
                let (i0, i1) = ((4 * g).max(j + 1), (4 * g + 4).min(k));
                let rs: [Option<&mut [f64]>; 4] = core::array::from_fn(|x| {
                    // SAFETY: rows i0..i1 are below row j, inside `a`, and belong to this
                    // thread (group g); each is borrowed once.
                    (i0 + x < i1).then(|| unsafe {
                        core::slice::from_raw_parts_mut(m.0.add((i0 + x) * k), k)
                    })
                });
                let mut dots = [-0.0f64; 4];
                for (p, y) in lj[..j].iter().enumerate() {
                    for (d, r) in dots.iter_mut().zip(&rs) {
                        if let Some(r) = r {
                            *d += r[p] * y;
                        }
                    }
                }
                for (r, d) in rs.into_iter().zip(dots) {
                    if let Some(r) = r {
                        r[j] = (r[j] - d) / lj[j];
                    }
                }
            }
        }
    };
    std::thread::scope(|sc| {
        let work = &work;
        for t in 1..threads {
            sc.spawn(move || work(t));
        }
        work(0);
    });
    fail.load(Relaxed) == usize::MAX
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), row-major, for `H = L·Lᵀ` given `L`.
fn upper_chol_of_inverse(l: &[f64], k: usize) -> Option<Vec<f64>> {
    // L⁻¹ (lower), by forward substitution column by column, stored transposed (`lt[c·k + i]`
    // is L⁻¹[i][c]) so each dot product reads two contiguous rows; columns are independent.
    let mut lt = vec![0f64; k * k];
    par_chunks_mut(&mut lt, k.max(1), 8, |c, col| {
        col[c] = 1.0 / l[c * k + c];
        for i in c + 1..k {
            let s: f64 = l[i * k + c..i * k + i].iter().zip(&col[c..i]).map(|(a, b)| a * b).sum();
            col[i] = -s / l[i * k + i];
        }
    });
    // H⁻¹ = L⁻ᵀ·L⁻¹: entry (a, b), b <= a, is Σ_{p >= a} L⁻¹[p][a]·L⁻¹[p][b], summed in p order.
    let mut hi = vec![0f64; k * k];
    par_chunks_mut(&mut hi, k.max(1), 8, |a, row| {
        let la = &lt[a * k + a..(a + 1) * k];
        for (b, o) in row[..=a].iter_mut().enumerate() {
            *o = la.iter().zip(&lt[b * k + a..(b + 1) * k]).fold(0.0, |s, (x, y)| s + x * y);
        }
    });
    for a in 0..k {
        for b in 0..a {
            hi[b * k + a] = hi[a * k + b];
        }
    }
    if !cholesky(&mut hi, k) {
        return None;
    }
    // U = Lhᵀ.
    let mut u = vec![0f64; k * k];
    for a in 0..k {
        for b in 0..=a {
            u[b * k + a] = hi[a * k + b];
        }
    }
    Some(u)
}

/// Group-wise INT4 with GPTQ error compensation (Frantar et al., 2022): the columns of `w [n, k]`
/// are quantized in order and each one's rounding error is spread over the columns not yet
/// quantized through the inverse of `H = XᵀX/rows` (`x [rows, k]`: the layer's calibration
/// inputs), which minimizes the error of `x·wᵀ` rather than of `w`. Each group's scale is chosen
/// (clip search weighted by `diag(H)`) when its first column is reached, from the weights as
/// updated so far. Falls back to [`quantize_i4`] (round to nearest) when `x` carries nothing
/// or `H` cannot be factored.
pub fn quantize_i4_gptq(
    w: &[f32],
    n: usize,
    k: usize,
    group: usize,
    x: &[f32],
    rows: usize,
) -> QuantI4 {
    quantize_i4_gptq_with(w, n, k, group, x, rows, I4Scales::Group)
}

/// Headroom of GPTQ's per-row scale in multiplier mode: compensation moves the weights not yet
/// quantized, so the row scale leaves room for groups that grow by up to 16/15.
const GPTQ_HEADROOM: f32 = 15.0;

/// [`quantize_i4_gptq`] with the scales stored as `mode` says; in multiplier mode each row's
/// scale is fixed from the original weights before compensation starts.
pub fn quantize_i4_gptq_with(
    w: &[f32],
    n: usize,
    k: usize,
    group: usize,
    x: &[f32],
    rows: usize,
    mode: I4Scales,
) -> QuantI4 {
    let mut h = vec![0f64; k * k];
    let xd: Vec<f64> = x[..rows * k].iter().map(|v| *v as f64).collect();
    // Row a of H is Σ_r x[r, a]·x[r, ..=a], summed over r in order (on whichever thread owns a).
    par_chunks_mut(&mut h, k.max(1), 16, |a, ha| {
        for xr in xd.chunks_exact(k) {
            let xa = xr[a];
            if xa == 0.0 {
                continue;
            }
            for (o, xb) in ha[..a + 1].iter_mut().zip(xr) {
                *o += xa * xb;
            }
        }
    });
    let diag: Vec<f64> = (0..k).map(|j| h[j * k + j] / rows.max(1) as f64).collect();
    let mean = diag.iter().sum::<f64>() / k.max(1) as f64;
    let imp: Vec<f32> = diag.iter().map(|v| *v as f32).collect();
    if rows == 0 || !(mean > 0.0 && mean.is_finite()) {
        return quantize_i4_with(w, n, k, group, &imp, mode);
    }
    for a in 0..k {
        for b in 0..a {
            h[b * k + a] = h[a * k + b];
        }
    }
    for v in h.iter_mut() {
        *v /= rows as f64;
    }
    let mut u = None;
    for damp in [DAMP, 1.0, 10.0] {
        let mut l = h.clone();
        for j in 0..k {
            // Dead channels (never active) get a unit diagonal; their weights do not matter.
            if l[j * k + j] == 0.0 {
                l[j * k + j] = 1.0;
            }
            l[j * k + j] += damp * mean;
        }
        if cholesky(&mut l, k) {
            u = upper_chol_of_inverse(&l, k);
            if u.is_some() {
                break;
            }
        }
    }
    let Some(u) = u else { return quantize_i4_with(w, n, k, group, &imp, mode) };
    let groups = k / group;
    let mult = mode == I4Scales::Mult;
    let mut wf: Vec<f64> = w.iter().map(|v| *v as f64).collect();
    let mut q = vec![0i8; n * k];
    let mut scale = vec![0u16; if mult { 0 } else { n * groups }];
    let mut mul = vec![0u8; if mult { n * groups } else { 0 }];
    let col_scale: Vec<f32> = if mult {
        (0..n).map(|r| row_col_scale(&w[r * k..(r + 1) * k], group, &imp, GPTQ_HEADROOM)).collect()
    } else {
        vec![]
    };
    // The current group's scale of each row.
    let mut cur_s = vec![0f64; n];
    let mut sum = vec![0i32; n * groups];
    for j in 0..k {
        let g = j / group;
        if j.is_multiple_of(group) {
            for r in 0..n {
                let cur: Vec<f32> =
                    wf[r * k + j..r * k + j + group].iter().map(|v| *v as f32).collect();
                let col = mult.then(|| col_scale[r]);
                let (sv, code) = best_group_scale(&cur, &imp[j..j + group], 0, col);
                if mult {
                    mul[r * groups + g] = code as u8;
                } else {
                    scale[r * groups + g] = code;
                }
                cur_s[r] = sv as f64;
            }
        }
        let d = u[j * k + j];
        let urow = &u[j * k + j + 1..(j + 1) * k];
        for r in 0..n {
            let s = cur_s[r];
            let v = wf[r * k + j];
            let t = round_half_even(((v / s) as f32).clamp(-8.0, 7.0));
            q[r * k + j] = t as i8;
            sum[r * groups + g] += t as i32;
            let e = (v - t as f64 * s) / d;
            for (wv, uv) in wf[r * k + j + 1..(r + 1) * k].iter_mut().zip(urow) {
                *wv -= e * uv;
            }
        }
    }
    let mut out = QuantI4 { q, scale, mul, col_scale, sum, sqnr_db: 0.0 };
    let (mut sig, mut noise) = (0f64, 0f64);
    for r in 0..n {
        for j in 0..k {
            let s = out.group_scale(r, j / group, groups) as f64;
            sig += (w[r * k + j] as f64).powi(2);
            noise += (w[r * k + j] as f64 - out.q[r * k + j] as f64 * s).powi(2);
        }
    }
    out.sqnr_db = sqnr(sig, noise);
    out
}

/// Row-wise INT4 embedding table in groups of `group` per row: `value ≈ q·scale + bias`,
/// `q` in 0..=15, f16 scale and bias per (row, group), two codes per byte (low nibble first).
pub struct QuantRowsI4 {
    pub packed: Vec<u8>,
    pub scale: Vec<u16>,
    pub bias: Vec<u16>,
    pub sqnr_db: f32,
}

pub fn quantize_rows_i4(t: &[f32], rows: usize, d: usize, group: usize) -> QuantRowsI4 {
    let gpr = d / group;
    let mut packed = vec![0u8; rows * d / 2];
    let mut scale = vec![0u16; rows * gpr];
    let mut bias = vec![0u16; rows * gpr];
    let (mut sig, mut noise) = (0f64, 0f64);
    let code = |v: f32, s: f32, b: f32| -> f32 {
        if s > 0.0 {
            round_half_even(((v - b) / s).clamp(0.0, 15.0))
        } else {
            0.0
        }
    };
    for r in 0..rows {
        for g in 0..gpr {
            let j0 = r * d + g * group;
            let vals = &t[j0..j0 + group];
            let lo = vals.iter().fold(f32::INFINITY, |m, v| m.min(*v));
            let hi = vals.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
            // Search a narrower range around the middle (outliers clip) by squared error.
            let mut best = (f64::INFINITY, 0u16, 0u16);
            for shrink in [1.0f32, 0.95, 0.9, 0.85, 0.8] {
                let mid = 0.5 * (lo + hi);
                let (l, h) = (mid + (lo - mid) * shrink, mid + (hi - mid) * shrink);
                let s16 = f16::from_f32((h - l) / 15.0);
                let b16 = f16::from_f32(l);
                let (s, b) = (s16.to_f32(), b16.to_f32());
                let err: f64 = vals
                    .iter()
                    .map(|v| (*v as f64 - (code(*v, s, b) * s + b) as f64).powi(2))
                    .sum();
                if err < best.0 {
                    best = (err, s16.to_bits(), b16.to_bits());
                }
            }
            let (s, b) = (f16::from_bits(best.1).to_f32(), f16::from_bits(best.2).to_f32());
            scale[r * gpr + g] = best.1;
            bias[r * gpr + g] = best.2;
            for (i, v) in vals.iter().enumerate() {
                let c = code(*v, s, b);
                let at = j0 + i;
                packed[at / 2] |= (c as u8) << (4 * (at % 2));
                sig += (*v as f64).powi(2);
                noise += (*v as f64 - (c * s + b) as f64).powi(2);
            }
        }
    }
    QuantRowsI4 { packed, scale, bias, sqnr_db: sqnr(sig, noise) }
}

/// What the runtime's LinearI4 / LinearI4M computes on `x [m, k]` (without bias), with this
/// machine's fastest kernels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn simulate_linear_i4(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    mult: &[f32],
    sx: f32,
    zp: i32,
    qw: &QuantI4,
    group: usize,
) -> Vec<f32> {
    use ember_kernels::pack;
    let ks = ember_kernels::KernelSet::detect();
    let lda = pack::k4(k);
    let mut q = vec![0u8; m * lda];
    (ks.quantize_u8)(x, m, k, k, lda, 0.0, mult, zp + 128, &mut q);
    let mut y = vec![0f32; m * n];
    let zero = vec![0.0; n];
    if qw.mul.is_empty() {
        let (packed, gsum, gscale) = pack_i4(qw, n, k, group);
        (ks.i4_gemm)(
            m,
            k,
            n,
            &q,
            lda,
            zp + 128,
            &packed,
            group,
            &gsum,
            &gscale,
            sx,
            &zero,
            ember_kernels::Act::None,
            &mut y,
            n,
        );
    } else {
        let (packed, gmul, wsum, scale) = pack_i4m(qw, n, k, group, sx);
        (ks.i4m_gemm)(
            m,
            k,
            n,
            &q,
            lda,
            zp + 128,
            &packed,
            group,
            &gmul,
            &wsum,
            &scale,
            &zero,
            ember_kernels::Act::None,
            &mut y,
            n,
        );
    }
    y
}

/// The kernels' layout of INT4 weights with f16 group scales: packed codes, group sums, group
/// scales.
pub fn pack_i4(qw: &QuantI4, n: usize, k: usize, group: usize) -> (Vec<u8>, Vec<i32>, Vec<u16>) {
    use ember_kernels::pack;
    let groups = k / group;
    let mut packed = vec![0u8; pack::k4n16_i4_len(n, k)];
    pack::pack_k4n16_i4(&qw.q, n, k, &mut packed);
    let side = n.div_ceil(pack::PANEL) * groups * pack::PANEL;
    let (mut gsum, mut gscale) = (vec![0i32; side], vec![0u16; side]);
    pack::panel_groups(&qw.sum, n, groups, &mut gsum);
    pack::panel_groups(&qw.scale, n, groups, &mut gscale);
    (packed, gsum, gscale)
}

/// The kernels' layout of INT4 weights with group multipliers: packed codes, multipliers,
/// column sums of `Q·M`, and the column scales folded with the activation scale `sx`.
pub fn pack_i4m(
    qw: &QuantI4,
    n: usize,
    k: usize,
    group: usize,
    sx: f32,
) -> (Vec<u8>, Vec<u8>, Vec<i32>, Vec<f32>) {
    use ember_kernels::pack;
    let groups = k / group;
    let mut packed = vec![0u8; pack::k4n16_i4_len(n, k)];
    pack::pack_k4n16_i4(&qw.q, n, k, &mut packed);
    let mut gmul = vec![0u8; n.div_ceil(pack::PANEL) * groups * pack::PANEL];
    pack::panel_groups(&qw.mul, n, groups, &mut gmul);
    let wsum = (0..n)
        .map(|r| (0..groups).map(|g| qw.sum[r * groups + g] * qw.mul[r * groups + g] as i32).sum())
        .collect();
    let scale = qw.col_scale.iter().map(|c| c * sx).collect();
    (packed, gmul, wsum, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_groups_round_trip_and_sums_match() {
        let (n, k, group) = (5, 64, 32);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 211) as f32 - 105.0) / 37.0).collect();
        let qw = quantize_i4(&w, n, k, group, &[]);
        for r in 0..n {
            for g in 0..k / group {
                let s = f16::from_bits(qw.scale[r * 2 + g]).to_f32();
                let codes = &qw.q[r * k + g * group..r * k + (g + 1) * group];
                assert!(codes.iter().all(|c| (-8..=7).contains(c)));
                assert_eq!(qw.sum[r * 2 + g], codes.iter().map(|c| *c as i32).sum::<i32>());
                let amax = w[r * k + g * group..r * k + (g + 1) * group]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                assert!(s <= amax / 7.0 * 1.001 && s >= amax * 0.65 / 7.0 * 0.999, "{s} {amax}");
            }
        }
        assert!(qw.sqnr_db > 15.0, "{}", qw.sqnr_db);
        // Weighting one channel heavily makes its error smaller.
        let mut imp = vec![1.0f32; k];
        imp[3] = 1e6;
        let qi = quantize_i4(&w, n, k, group, &imp);
        let err = |q: &QuantI4, j: usize| -> f32 {
            (0..n)
                .map(|r| {
                    (w[r * k + j]
                        - q.q[r * k + j] as f32
                            * f16::from_bits(q.scale[r * 2 + j / group]).to_f32())
                    .abs()
                })
                .sum()
        };
        assert!(err(&qi, 3) <= err(&qw, 3) + 1e-6);
        // Zero groups do not divide by zero.
        let z = quantize_i4(&[0.0; 64], 1, 64, 32, &[]);
        assert!(z.q.iter().all(|v| *v == 0));
    }

    #[test]
    fn int4_multipliers_stay_in_range_and_lose_little_to_f16_scales() {
        let (n, k, group) = (16, 256, 32);
        let groups = k / group;
        // Rows whose groups differ in magnitude by up to 8x, and one all-zero row.
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                let (r, j) = (i / k, i % k);
                if r == 5 {
                    return 0.0;
                }
                let mag = 1.0 + ((j / group * 3 + r) % 8) as f32;
                mag * (((i * 7919) % 211) as f32 - 105.0) / 300.0
            })
            .collect();
        let g = quantize_i4_with(&w, n, k, group, &[], I4Scales::Group);
        let m = quantize_i4_with(&w, n, k, group, &[], I4Scales::Mult);
        assert!(m.scale.is_empty() && g.mul.is_empty());
        assert_eq!((m.mul.len(), m.col_scale.len()), (n * groups, n));
        assert!(m.mul.iter().all(|v| (1..=I4_MAX_MUL).contains(v)), "{:?}", m.mul);
        assert!(m.q.iter().all(|c| (-8..=7).contains(c)));
        for r in 0..n {
            for gi in 0..groups {
                let codes = &m.q[r * k + gi * group..r * k + (gi + 1) * group];
                assert_eq!(m.sum[r * groups + gi], codes.iter().map(|c| *c as i32).sum::<i32>());
                assert_eq!(
                    m.group_scale(r, gi, groups),
                    m.mul[r * groups + gi] as f32 * m.col_scale[r]
                );
            }
        }
        // The largest group of a row uses (nearly) the top multiplier; small groups small ones.
        assert!(m
            .mul
            .chunks(groups)
            .filter(|c| *c != [1; 8])
            .all(|c| *c.iter().max().unwrap() >= 14));
        assert!(m.sqnr_db > g.sqnr_db - 0.6, "mult {} dB vs f16 {} dB", m.sqnr_db, g.sqnr_db);
        assert!(m.q[5 * k..6 * k].iter().all(|v| *v == 0));
        // Packing: Q·M column sums and folded scales.
        let (_, gmul, wsum, sc) = pack_i4m(&m, n, k, group, 0.5);
        assert_eq!(gmul.len(), n.div_ceil(16) * 16 * groups);
        for r in 0..n {
            let want: i32 =
                (0..k).map(|j| m.q[r * k + j] as i32 * m.mul[r * groups + j / group] as i32).sum();
            assert_eq!(wsum[r], want);
            assert_eq!(sc[r], m.col_scale[r] * 0.5);
        }
    }

    #[test]
    fn inverse_hessian_factor_is_exact() {
        let k = 7;
        let mut h = vec![0f64; k * k];
        for a in 0..k {
            for b in 0..k {
                h[a * k + b] =
                    1.0 / (1.0 + (a as f64 - b as f64).abs()) + if a == b { 1.0 } else { 0.0 };
            }
        }
        let mut l = h.clone();
        assert!(cholesky(&mut l, k));
        let u = upper_chol_of_inverse(&l, k).unwrap();
        // (UᵀU)·H = I.
        for a in 0..k {
            for b in 0..k {
                let v: f64 = (0..k)
                    .map(|c| {
                        (0..k).map(|p| u[p * k + a] * u[p * k + c]).sum::<f64>() * h[c * k + b]
                    })
                    .sum();
                assert!((v - if a == b { 1.0 } else { 0.0 }).abs() < 1e-9, "({a},{b}) = {v}");
            }
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky(&mut bad, 2));
    }

    #[test]
    fn threaded_cholesky_has_the_bits_of_the_plain_loop_and_stops_on_failure() {
        // Large enough to be split over threads (k / 128 >= 2), not a multiple of 4.
        let k = 301;
        let mut h = vec![0f64; k * k];
        for a in 0..k {
            for b in 0..k {
                let x = ((a * 31 + b * 17) % 97) as f64 / 97.0;
                h[a * k + b] = if a == b { k as f64 } else { 0.5 * x };
            }
        }
        for a in 0..k {
            for b in 0..a {
                h[b * k + a] = h[a * k + b];
            }
        }
        // The textbook left-looking loop, one sum at a time.
        let mut want = h.clone();
        for j in 0..k {
            let d = want[j * k + j] - (0..j).map(|p| want[j * k + p].powi(2)).sum::<f64>();
            want[j * k + j] = d.sqrt();
            for c in j + 1..k {
                want[j * k + c] = 0.0;
            }
            for i in j + 1..k {
                let dot: f64 = (0..j).map(|p| want[i * k + p] * want[j * k + p]).sum();
                want[i * k + j] = (want[i * k + j] - dot) / want[j * k + j];
            }
        }
        let mut got = h.clone();
        assert!(cholesky(&mut got, k));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&got) == bits(&want), "threaded Cholesky differs from the plain loop");
        // A matrix that stops being positive definite half way: false, on every thread.
        let mut bad = h.clone();
        bad[150 * k + 150] = -1.0;
        assert!(!cholesky(&mut bad, k));
        // Failures at early columns (little work per column, so the threads leave each barrier
        // at different times), several times each: every thread must stop at the failing
        // column. A thread that saw the next column's failure before its own check returned
        // while the failing owner waited for it at the next barrier: a hang, caught here by the
        // timeout.
        let (tx, rx) = std::sync::mpsc::channel();
        let cols = 1..40;
        let trials = cols.len() * 5;
        std::thread::spawn(move || {
            for c in cols {
                for _ in 0..5 {
                    let mut bad = h.clone();
                    bad[c * k + c] = -1.0;
                    if tx.send(cholesky(&mut bad, k)).is_err() {
                        return;
                    }
                }
            }
        });
        for _ in 0..trials {
            let ok = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("Cholesky hung after a failed column");
            assert!(!ok, "a failed column reported success");
        }
    }

    #[test]
    fn gptq_beats_round_to_nearest_on_correlated_inputs() {
        let (n, k, group, rows) = (8, 64, 32, 200);
        let mut seed = 7u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
        };
        let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        // Inputs with strongly correlated channels and a few large ones.
        let base: Vec<f32> = (0..rows * 4).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| {
                let (r, j) = (i / k, i % k);
                base[r * 4 + j % 4] * (1.0 + (j % 7) as f32) + 0.05 * rnd()
            })
            .collect();
        let out_err = |q: &QuantI4| -> f64 {
            let mut e = 0.0;
            for r in 0..rows {
                for o in 0..n {
                    let (mut yf, mut yq) = (0f64, 0f64);
                    for j in 0..k {
                        let s = q.group_scale(o, j / group, 2) as f64;
                        yf += x[r * k + j] as f64 * w[o * k + j] as f64;
                        yq += x[r * k + j] as f64 * q.q[o * k + j] as f64 * s;
                    }
                    e += (yf - yq).powi(2);
                }
            }
            e
        };
        let rtn = quantize_i4(&w, n, k, group, &[]);
        let g = quantize_i4_gptq(&w, n, k, group, &x, rows);
        for (o, sums) in g.sum.chunks_exact(2).enumerate() {
            for (gi, sm) in sums.iter().enumerate() {
                let codes = &g.q[o * k + gi * group..o * k + (gi + 1) * group];
                assert_eq!(*sm, codes.iter().map(|c| *c as i32).sum::<i32>());
            }
        }
        let (e_rtn, e_gptq) = (out_err(&rtn), out_err(&g));
        assert!(e_gptq < 0.7 * e_rtn, "GPTQ {e_gptq} vs round-to-nearest {e_rtn}");
        // No calibration rows: round to nearest.
        assert_eq!(quantize_i4_gptq(&w, n, k, group, &[], 0).q, rtn.q);
        // The same with integer group multipliers.
        let rtn_m = quantize_i4_with(&w, n, k, group, &[], I4Scales::Mult);
        let g_m = quantize_i4_gptq_with(&w, n, k, group, &x, rows, I4Scales::Mult);
        assert!(g_m.mul.iter().all(|v| (1..=I4_MAX_MUL).contains(v)));
        let (e_rtn_m, e_gptq_m) = (out_err(&rtn_m), out_err(&g_m));
        assert!(e_gptq_m < 0.7 * e_rtn_m, "GPTQ {e_gptq_m} vs round-to-nearest {e_rtn_m}");
        assert!(e_gptq_m < 1.3 * e_gptq, "multipliers {e_gptq_m} vs f16 scales {e_gptq}");
    }

    #[test]
    fn int4_rows_round_trip_within_a_step() {
        let (rows, d, group) = (7, 64, 32);
        let t: Vec<f32> =
            (0..rows * d).map(|i| ((i * 104729 % 997) as f32 - 498.0) / 700.0).collect();
        let qr = quantize_rows_i4(&t, rows, d, group);
        for r in 0..rows {
            for j in 0..d {
                let at = r * d + j;
                let c = (qr.packed[at / 2] >> (4 * (at % 2))) & 15;
                let g = r * 2 + j / group;
                let (s, b) =
                    (f16::from_bits(qr.scale[g]).to_f32(), f16::from_bits(qr.bias[g]).to_f32());
                assert!((c as f32 * s + b - t[at]).abs() <= 1.6 * s + 1e-3, "row {r} col {j}");
            }
        }
        assert!(qr.sqnr_db > 18.0, "{}", qr.sqnr_db);
        let c = quantize_rows_i4(&[0.25; 64], 1, 64, 32);
        for j in 0..64 {
            let c0 = (c.packed[j / 2] >> (4 * (j % 2))) & 15;
            let v = c0 as f32 * f16::from_bits(c.scale[j / 32]).to_f32()
                + f16::from_bits(c.bias[j / 32]).to_f32();
            assert!((v - 0.25).abs() < 1e-3);
        }
    }

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
