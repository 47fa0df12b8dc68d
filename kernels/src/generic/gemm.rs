use crate::pack::{i4_at, k4n16_index, PANEL};
use crate::Act;

#[inline]
pub fn relu(v: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

#[inline]
pub(crate) fn act_apply(v: f32, act: Act) -> f32 {
    match act {
        Act::None => v,
        Act::Relu => relu(v),
        Act::Gelu => super::math::gelu(v),
        Act::GeluTanh => super::math::gelu_tanh(v),
    }
}

#[allow(clippy::too_many_arguments)]
/// Reference INT8 GEMM on `K4N16`-packed weights with a fused f32 epilogue; see
/// [`crate::set::I8GemmFn`].
pub fn i8_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[i8],
    b_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
) {
    for i in 0..m {
        let arow = &a[i * lda..i * lda + k];
        let orow = &mut out[i * ldo..i * ldo + n];
        for (j, o) in orow.iter_mut().enumerate() {
            let mut acc: i32 = 0;
            for (p, x) in arow.iter().enumerate() {
                acc = acc.wrapping_add(*x as i32 * bp[k4n16_index(j, p, k)] as i32);
            }
            let corrected = acc.wrapping_sub(a_zp.wrapping_mul(b_sum[j]));
            *o = act_apply(corrected as f32 * scale[j] + bias[j], act);
        }
    }
}

const LANES: usize = 16;

/// Σ a[i]·b[i] over 16 interleaved lanes, then across lanes, then the tail, in that order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let full = a.len() / LANES * LANES;
    let mut acc = [0f32; LANES];
    for c in (0..full).step_by(LANES) {
        let (av, bv) = (lanes(a, c), lanes(b, c));
        for l in 0..LANES {
            acc[l] += av[l] * bv[l];
        }
    }
    finish(&acc, &a[full..], &b[full..])
}

/// The 16 elements of `x` from `c` as a fixed-size array (one bounds check, then none).
#[inline(always)]
fn lanes(x: &[f32], c: usize) -> &[f32; LANES] {
    x[c..c + LANES].try_into().expect("16 lanes")
}

#[inline(always)]
fn finish(acc: &[f32; LANES], a_tail: &[f32], b_tail: &[f32]) -> f32 {
    let mut s = 0.0;
    for v in acc {
        s += v;
    }
    for (x, y) in a_tail.iter().zip(b_tail) {
        s += x * y;
    }
    s
}

/// Reference f32 GEMM against transposed weights `b[n,k]`; see [`crate::set::F32GemmFn`].
/// Each output is [`dot`] of a row and a weight row (four weight rows share each load of the
/// activation row), plus bias, then the activation: a fixed order, so the overlays that compile
/// this same body for wider registers give the same bits.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn f32_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
) {
    let full = k / LANES * LANES;
    let out = &mut out[..m * n];
    let put = |v: f32, j: usize| act_apply(if bias.is_empty() { v } else { v + bias[j] }, act);
    let mut i = 0;
    // Two rows at a time: eight independent running sums per step of 16 (one per output), each
    // weight load shared by both rows. Every output's sum keeps its own order: same bits.
    while i + 2 <= m {
        let (a0, a1) = (&a[i * k..i * k + k], &a[(i + 1) * k..(i + 2) * k]);
        let (o0, o1) = out[i * n..(i + 2) * n].split_at_mut(n);
        let mut j = 0;
        while j + 4 <= n {
            let br: [&[f32]; 4] = core::array::from_fn(|t| &b[(j + t) * k..(j + t + 1) * k]);
            let z = [0f32; LANES];
            let (mut s00, mut s01, mut s02, mut s03) = (z, z, z, z);
            let (mut s10, mut s11, mut s12, mut s13) = (z, z, z, z);
            for c in (0..full).step_by(LANES) {
                let (x0, x1) = (lanes(a0, c), lanes(a1, c));
                let (b0, b1, b2, b3) =
                    (lanes(br[0], c), lanes(br[1], c), lanes(br[2], c), lanes(br[3], c));
                for l in 0..LANES {
                    s00[l] += x0[l] * b0[l];
                    s01[l] += x0[l] * b1[l];
                    s02[l] += x0[l] * b2[l];
                    s03[l] += x0[l] * b3[l];
                    s10[l] += x1[l] * b0[l];
                    s11[l] += x1[l] * b1[l];
                    s12[l] += x1[l] * b2[l];
                    s13[l] += x1[l] * b3[l];
                }
            }
            let acc = [[s00, s01, s02, s03], [s10, s11, s12, s13]];
            for t in 0..4 {
                o0[j + t] = put(finish(&acc[0][t], &a0[full..], &br[t][full..]), j + t);
                o1[j + t] = put(finish(&acc[1][t], &a1[full..], &br[t][full..]), j + t);
            }
            j += 4;
        }
        for jj in j..n {
            let brow = &b[jj * k..jj * k + k];
            o0[jj] = put(dot(a0, brow), jj);
            o1[jj] = put(dot(a1, brow), jj);
        }
        i += 2;
    }
    for (i, orow) in out.chunks_exact_mut(n).enumerate().skip(i) {
        let arow = &a[i * k..i * k + k];
        let mut j = 0;
        while j + 4 <= n {
            let br = [
                &b[j * k..j * k + k],
                &b[(j + 1) * k..(j + 2) * k],
                &b[(j + 2) * k..(j + 3) * k],
                &b[(j + 3) * k..(j + 4) * k],
            ];
            let mut acc = [[0f32; LANES]; 4];
            let (mut a0, mut a1, mut a2, mut a3) =
                ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
            for c in (0..full).step_by(LANES) {
                let av = lanes(arow, c);
                let (b0, b1, b2, b3) =
                    (lanes(br[0], c), lanes(br[1], c), lanes(br[2], c), lanes(br[3], c));
                for l in 0..LANES {
                    a0[l] += av[l] * b0[l];
                    a1[l] += av[l] * b1[l];
                    a2[l] += av[l] * b2[l];
                    a3[l] += av[l] * b3[l];
                }
            }
            acc[0] = a0;
            acc[1] = a1;
            acc[2] = a2;
            acc[3] = a3;
            for t in 0..4 {
                orow[j + t] = put(finish(&acc[t], &arow[full..], &br[t][full..]), j + t);
            }
            j += 4;
        }
        for (jj, o) in orow.iter_mut().enumerate().skip(j) {
            *o = put(dot(arow, &b[jj * k..jj * k + k]), jj);
        }
    }
}

/// `out[m,n] = Σ_k a[m,k]·b[k,n]`, both operands row-major (activation × activation).
#[inline(always)]
pub fn f32_matmul(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    let out = &mut out[..m * n];
    out.fill(0.0);
    for i in 0..m {
        let orow = &mut out[i * n..i * n + n];
        for p in 0..k {
            let av = a[i * k + p];
            let brow = &b[p * n..p * n + n];
            for (o, bv) in orow.iter_mut().zip(brow) {
                *o += av * bv;
            }
        }
    }
}

/// Exact f16 → f32 (IEEE binary16 bits; subnormals, infinities and NaN included).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let neg = h & 0x8000 != 0;
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x3FF) as u32;
    let sign = if neg { 0x8000_0000u32 } else { 0 };
    match exp {
        // Zero and subnormals: man · 2^-24, exact in f32.
        0 => {
            let mag = man as f32 * (1.0 / 16_777_216.0);
            if neg {
                -mag
            } else {
                mag
            }
        }
        31 => f32::from_bits(sign | 0x7F80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// Reference INT4 (group-wise) GEMM; see [`crate::set::I4GemmFn`].
#[allow(clippy::too_many_arguments)]
pub fn i4_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[u8],
    group: usize,
    gsum: &[i32],
    gscale: &[u16],
    x_scale: f32,
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
) {
    let groups = k / group;
    for i in 0..m {
        let arow = &a[i * lda..i * lda + k];
        for j in 0..n {
            let side = (j / PANEL) * groups * PANEL + j % PANEL;
            let mut facc = 0f32;
            for g in 0..groups {
                let mut dot: i32 = 0;
                for (p, x) in arow.iter().enumerate().skip(g * group).take(group) {
                    let ix = k4n16_index(j, p, k);
                    let q = i4_at(&bp[ix / 64 * 32..ix / 64 * 32 + 32], ix % 64);
                    dot = dot.wrapping_add(*x as i32 * q as i32);
                }
                let s = side + g * PANEL;
                let corrected = dot.wrapping_sub(a_zp.wrapping_mul(gsum[s]));
                facc += corrected as f32 * f16_to_f32(gscale[s]);
            }
            out[i * ldo + j] = act_apply(facc * x_scale + bias[j], act);
        }
    }
}
