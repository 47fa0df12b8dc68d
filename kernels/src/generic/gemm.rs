use crate::pack::k4n16_index;
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
fn act_apply(v: f32, act: Act) -> f32 {
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

/// Reference f32 GEMM against transposed weights `b[n,k]`; see [`crate::set::F32GemmFn`].
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
    for (i, orow) in out[..m * n].chunks_exact_mut(n).enumerate() {
        let arow = &a[i * k..i * k + k];
        for (j, o) in orow.iter_mut().enumerate() {
            let brow = &b[j * k..j * k + k];
            let mut acc = 0.0f32;
            for (x, w) in arow.iter().zip(brow) {
                acc += x * w;
            }
            if !bias.is_empty() {
                acc += bias[j];
            }
            *o = act_apply(acc, act);
        }
    }
}

/// `out[m,n] = Σ_k a[m,k]·b[k,n]`, both operands row-major (activation × activation).
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
