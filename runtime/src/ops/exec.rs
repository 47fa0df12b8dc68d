//! Execution of validated ops. No allocation, no locks, no I/O: every size was checked by
//! `prepare`, and the arena slots of an op's output and its live inputs never overlap.

use super::{BinFast, BinaryKind, MatMulDims, Op, UnaryKind};
use crate::format::{DType, MAX_RANK, REF_NONE, REF_TENSOR};
use crate::model::{TensorInfo, ValueInfo};
use crate::Error;
use ember_kernels::KernelSet;

pub(crate) struct Ctx<'a> {
    pub file: &'a [u8],
    pub tensors: &'a [TensorInfo],
    pub values: &'a [ValueInfo],
    pub kernels: &'a KernelSet,
}

/// Read-only views of everything an op may read, around its mutable output slot.
struct Io<'x> {
    file: &'x [u8],
    tensors: &'x [TensorInfo],
    values: &'x [ValueInfo],
    left: &'x [u8],
    right: &'x [u8],
    out_start: usize,
    out_end: usize,
}

impl<'x> Io<'x> {
    fn bytes(&self, r: u32) -> &'x [u8] {
        if r & REF_TENSOR != 0 {
            let t = &self.tensors[(r & !REF_TENSOR) as usize];
            &self.file[t.offset..t.offset + t.nbytes]
        } else {
            let v = &self.values[r as usize];
            if v.offset + v.nbytes <= self.out_start {
                &self.left[v.offset..v.offset + v.nbytes]
            } else if v.offset >= self.out_end {
                &self.right[v.offset - self.out_end..v.offset - self.out_end + v.nbytes]
            } else {
                // Only a zero-sized value can sit inside the output slot.
                &[]
            }
        }
    }
}

fn cast<T: bytemuck::Pod>(b: &[u8]) -> Result<&[T], Error> {
    bytemuck::try_cast_slice(b).map_err(|_| Error::Misaligned { what: "operand" })
}
fn cast_mut<T: bytemuck::Pod>(b: &mut [u8]) -> Result<&mut [T], Error> {
    bytemuck::try_cast_slice_mut(b).map_err(|_| Error::Misaligned { what: "output" })
}

/// Reads index `i` of an i64 or i32 index tensor and resolves negatives against `dim`.
#[inline]
fn index(ix: &[u8], idx64: bool, i: usize, dim: usize, op: usize) -> Result<usize, Error> {
    let v = if idx64 {
        let b = &ix[i * 8..i * 8 + 8];
        i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    } else {
        let b = &ix[i * 4..i * 4 + 4];
        i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
    };
    let r = if v < 0 { v + dim as i64 } else { v };
    if r < 0 || r >= dim as i64 {
        return Err(Error::IndexOutOfRange { op, index: v, bound: dim });
    }
    Ok(r as usize)
}

/// Runs op `op_index` (writing value `out_v`).
/// Per-session scratch, sized at load for the largest op.
pub(crate) struct Scratch<'s> {
    pub i8s: &'s mut [i8],
    pub i32s: &'s mut [i32],
    pub f32s: &'s mut [f32],
}

pub(crate) fn run_op(
    op: &Op,
    op_index: usize,
    out_v: u32,
    ctx: &Ctx,
    arena: &mut [u8],
    scratch: &mut Scratch,
) -> Result<(), Error> {
    let ov = &ctx.values[out_v as usize];
    let (left, rest) = arena.split_at_mut(ov.offset);
    let (out, right) = rest.split_at_mut(ov.nbytes);
    let io = Io {
        file: ctx.file,
        tensors: ctx.tensors,
        values: ctx.values,
        left,
        right,
        out_start: ov.offset,
        out_end: ov.offset + ov.nbytes,
    };
    let k = ctx.kernels;
    match op {
        Op::LinearF32 { x, w, bias, m, k: kk, n, act } => {
            let b: &[f32] = if *bias == REF_NONE { &[] } else { cast(io.bytes(*bias))? };
            (k.f32_gemm)(
                *m,
                *kk,
                *n,
                cast(io.bytes(*x))?,
                cast(io.bytes(*w))?,
                b,
                *act,
                cast_mut(out)?,
            );
        }
        Op::LinearI8 { x, w, w_sum, scale, bias, mult, m, k: kk, n, act, inv_scale, zp } => {
            let q = &mut scratch.i8s[..m * kk];
            if *mult == REF_NONE {
                (k.quantize_i8)(cast(io.bytes(*x))?, *inv_scale, *zp, q);
            } else {
                (k.quantize_i8_channels)(cast(io.bytes(*x))?, *kk, cast(io.bytes(*mult))?, *zp, q);
            }
            (k.i8_gemm)(
                *m,
                *kk,
                *n,
                q,
                *zp,
                cast(io.bytes(*w))?,
                cast(io.bytes(*w_sum))?,
                cast(io.bytes(*scale))?,
                cast(io.bytes(*bias))?,
                *act,
                cast_mut(out)?,
            );
        }
        Op::MatMulF32 { a, b, d: MatMulDims { batch, m, k: kk, n, a_bs, b_bs } } => {
            let (a, b): (&[f32], &[f32]) = (cast(io.bytes(*a))?, cast(io.bytes(*b))?);
            let o: &mut [f32] = cast_mut(out)?;
            for i in 0..*batch {
                ember_kernels::generic::f32_matmul(
                    *m,
                    *kk,
                    *n,
                    &a[i * a_bs..],
                    &b[i * b_bs..],
                    &mut o[i * m * n..(i + 1) * m * n],
                );
            }
        }
        Op::MatMulI8 {
            a,
            b,
            d: MatMulDims { batch, m, k: kk, n, a_bs, b_bs },
            a_inv,
            a_zp,
            b_inv,
            out_scale,
        } => {
            let (a, b): (&[f32], &[f32]) = (cast(io.bytes(*a))?, cast(io.bytes(*b))?);
            let o: &mut [f32] = cast_mut(out)?;
            let (qa, rest) = scratch.i8s.split_at_mut(m * kk);
            let bt = &mut rest[..n * kk];
            let sums = &mut scratch.i32s[..*n];
            let (scale, bias) = scratch.f32s[..2 * n].split_at_mut(*n);
            scale.fill(*out_scale);
            bias.fill(0.0);
            for i in 0..*batch {
                (k.quantize_i8)(&a[i * a_bs..i * a_bs + m * kk], *a_inv, *a_zp, qa);
                let bi = &b[i * b_bs..i * b_bs + kk * n];
                // b [K, N] → symmetric i8, transposed to [N, K] for the GEMM kernel.
                for p in 0..*kk {
                    for j in 0..*n {
                        let t = (bi[p * n + j] * b_inv).clamp(-127.0, 127.0);
                        let t = if t.is_nan() { 0.0 } else { t };
                        bt[j * kk + p] = ember_kernels::generic::round_half_even(t) as i8;
                    }
                }
                for (j, s) in sums.iter_mut().enumerate() {
                    *s = bt[j * kk..(j + 1) * kk].iter().map(|v| *v as i32).sum();
                }
                (k.i8_gemm)(
                    *m,
                    *kk,
                    *n,
                    qa,
                    *a_zp,
                    bt,
                    sums,
                    scale,
                    bias,
                    ember_kernels::Act::None,
                    &mut o[i * m * n..(i + 1) * m * n],
                );
            }
        }
        Op::Binary { a, b, kind, dtype, rank, out: od, sa, sb, fast } => match dtype {
            DType::F32 => binary::<f32>(
                cast(io.bytes(*a))?,
                cast(io.bytes(*b))?,
                cast_mut(out)?,
                *kind,
                *rank,
                od,
                sa,
                sb,
                *fast,
            ),
            _ => binary::<i64>(
                cast(io.bytes(*a))?,
                cast(io.bytes(*b))?,
                cast_mut(out)?,
                *kind,
                *rank,
                od,
                sa,
                sb,
                *fast,
            ),
        },
        Op::Unary { x, kind, a, b } => {
            let x: &[f32] = cast(io.bytes(*x))?;
            let o: &mut [f32] = cast_mut(out)?;
            for (o, v) in o.iter_mut().zip(x) {
                *o = match kind {
                    UnaryKind::Relu => v.max(0.0),
                    UnaryKind::Sigmoid => 1.0 / (1.0 + libm::expf(-v)),
                    UnaryKind::Tanh => libm::tanhf(*v),
                    UnaryKind::Erf => libm::erff(*v),
                    UnaryKind::Sqrt => libm::sqrtf(*v),
                    UnaryKind::Clip => v.max(*a).min(*b),
                    UnaryKind::Pow => libm::powf(*v, *a),
                };
            }
        }
        Op::LayerNorm { x, scale, bias, rows, d, eps } => {
            let x: &[f32] = cast(io.bytes(*x))?;
            let g: &[f32] = cast(io.bytes(*scale))?;
            let bb: &[f32] = if *bias == REF_NONE { &[] } else { cast(io.bytes(*bias))? };
            let o: &mut [f32] = cast_mut(out)?;
            for r in 0..*rows {
                let xr = &x[r * d..(r + 1) * d];
                let mean = xr.iter().sum::<f32>() / *d as f32;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / *d as f32;
                let inv = 1.0 / libm::sqrtf(var + eps);
                for (j, (o, v)) in o[r * d..(r + 1) * d].iter_mut().zip(xr).enumerate() {
                    *o = (v - mean) * inv * g[j] + if bb.is_empty() { 0.0 } else { bb[j] };
                }
            }
        }
        Op::Expand { x, elem, rank, out: od, strides } => {
            let src = io.bytes(*x);
            let total: usize = od[..*rank].iter().product();
            let mut idx = [0usize; MAX_RANK];
            for o in 0..total {
                let s: usize = (0..*rank).map(|a| idx[a] * strides[a]).sum();
                out[o * elem..(o + 1) * elem].copy_from_slice(&src[s * elem..(s + 1) * elem]);
                step(&mut idx, od, *rank);
            }
        }
        Op::Softmax { x, outer, n, inner } => {
            let x: &[f32] = cast(io.bytes(*x))?;
            let o: &mut [f32] = cast_mut(out)?;
            for a in 0..*outer {
                for c in 0..*inner {
                    let base = a * n * inner + c;
                    let mut mx = f32::NEG_INFINITY;
                    for j in 0..*n {
                        mx = mx.max(x[base + j * inner]);
                    }
                    let mut sum = 0.0;
                    for j in 0..*n {
                        let e = libm::expf(x[base + j * inner] - mx);
                        o[base + j * inner] = e;
                        sum += e;
                    }
                    let inv = 1.0 / sum;
                    for j in 0..*n {
                        o[base + j * inner] *= inv;
                    }
                }
            }
        }
        Op::Gather { data, idx, idx64, outer, dim, inner_bytes, n_idx } => {
            let d = io.bytes(*data);
            let ix = io.bytes(*idx);
            for a in 0..*outer {
                for i in 0..*n_idx {
                    let r = index(ix, *idx64, i, *dim, op_index)?;
                    let src = (a * dim + r) * inner_bytes;
                    let dst = (a * n_idx + i) * inner_bytes;
                    out[dst..dst + inner_bytes].copy_from_slice(&d[src..src + inner_bytes]);
                }
            }
        }
        Op::GatherRowsI8 { table, scale, bias, idx, idx64, rows, d, n_idx } => {
            let t: &[i8] = cast(io.bytes(*table))?;
            let s: &[u16] = cast(io.bytes(*scale))?;
            let bs: &[u16] = cast(io.bytes(*bias))?;
            let ix = io.bytes(*idx);
            let o: &mut [f32] = cast_mut(out)?;
            for i in 0..*n_idx {
                let r = index(ix, *idx64, i, *rows, op_index)?;
                let sc = half::f16::from_bits(s[r]).to_f32();
                let bi = half::f16::from_bits(bs[r]).to_f32();
                for (o, q) in o[i * d..(i + 1) * d].iter_mut().zip(&t[r * d..(r + 1) * d]) {
                    *o = *q as f32 * sc + bi;
                }
            }
        }
        Op::Concat { inputs, n, outer, chunks } => {
            let total: usize = chunks[..*n].iter().sum();
            for a in 0..*outer {
                let mut pos = a * total;
                for j in 0..*n {
                    let src = io.bytes(inputs[j]);
                    let c = chunks[j];
                    out[pos..pos + c].copy_from_slice(&src[a * c..(a + 1) * c]);
                    pos += c;
                }
            }
        }
        Op::Copy { x } => out.copy_from_slice(io.bytes(*x)),
        Op::Transpose { x, elem, rank, out: od, src_strides } => {
            let src = io.bytes(*x);
            let total: usize = od[..*rank].iter().product();
            let mut idx = [0usize; MAX_RANK];
            for o in 0..total {
                let mut s = 0;
                for a in 0..*rank {
                    s += idx[a] * src_strides[a];
                }
                out[o * elem..(o + 1) * elem].copy_from_slice(&src[s * elem..(s + 1) * elem]);
                step(&mut idx, od, *rank);
            }
        }
        Op::Reduce { x, mean, rank, dims, out_strides, count } => {
            let x: &[f32] = cast(io.bytes(*x))?;
            let o: &mut [f32] = cast_mut(out)?;
            o.fill(0.0);
            let mut idx = [0usize; MAX_RANK];
            for v in x {
                let mut t = 0;
                for a in 0..*rank {
                    t += idx[a] * out_strides[a];
                }
                o[t] += v;
                step(&mut idx, dims, *rank);
            }
            if *mean {
                let inv = 1.0 / *count as f32;
                o.iter_mut().for_each(|v| *v *= inv);
            }
        }
        Op::Cast { x, from, to } => {
            let src = io.bytes(*x);
            cast_values(src, *from, out, *to)?;
        }
    }
    Ok(())
}

/// Advances a row-major multi-index over `dims[..rank]`.
#[inline]
fn step(idx: &mut [usize; MAX_RANK], dims: &[usize; MAX_RANK], rank: usize) {
    for a in (0..rank).rev() {
        idx[a] += 1;
        if idx[a] < dims[a] {
            return;
        }
        idx[a] = 0;
    }
}

trait Arith: Copy + bytemuck::Pod {
    fn apply(kind: BinaryKind, a: Self, b: Self) -> Self;
}
impl Arith for f32 {
    #[inline]
    fn apply(kind: BinaryKind, a: f32, b: f32) -> f32 {
        match kind {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
        }
    }
}
impl Arith for i64 {
    #[inline]
    fn apply(kind: BinaryKind, a: i64, b: i64) -> i64 {
        match kind {
            BinaryKind::Add => a.wrapping_add(b),
            BinaryKind::Sub => a.wrapping_sub(b),
            BinaryKind::Mul => a.wrapping_mul(b),
            // Integer division by zero is defined as 0 here rather than trapping.
            BinaryKind::Div => a.checked_div(b).unwrap_or(0),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn binary<T: Arith>(
    a: &[T],
    b: &[T],
    o: &mut [T],
    kind: BinaryKind,
    rank: usize,
    od: &[usize; MAX_RANK],
    sa: &[usize; MAX_RANK],
    sb: &[usize; MAX_RANK],
    fast: BinFast,
) {
    match fast {
        BinFast::Same => {
            for ((o, x), y) in o.iter_mut().zip(a).zip(b) {
                *o = T::apply(kind, *x, *y);
            }
        }
        BinFast::BSuffix(len) => {
            for (oc, ac) in o.chunks_exact_mut(len).zip(a.chunks_exact(len)) {
                for ((o, x), y) in oc.iter_mut().zip(ac).zip(b) {
                    *o = T::apply(kind, *x, *y);
                }
            }
        }
        BinFast::ASuffix(len) => {
            for (oc, bc) in o.chunks_exact_mut(len).zip(b.chunks_exact(len)) {
                for ((o, x), y) in oc.iter_mut().zip(a).zip(bc) {
                    *o = T::apply(kind, *x, *y);
                }
            }
        }
        BinFast::General => {
            let mut idx = [0usize; MAX_RANK];
            for o in o.iter_mut() {
                let (mut ia, mut ib) = (0, 0);
                for d in 0..rank {
                    ia += idx[d] * sa[d];
                    ib += idx[d] * sb[d];
                }
                *o = T::apply(kind, a[ia], b[ib]);
                step(&mut idx, od, rank);
            }
        }
    }
}

fn cast_values(src: &[u8], from: DType, out: &mut [u8], to: DType) -> Result<(), Error> {
    macro_rules! conv {
        ($s:ty, $d:ty) => {{
            let s: &[$s] = cast(src)?;
            let d: &mut [$d] = cast_mut(out)?;
            for (d, s) in d.iter_mut().zip(s) {
                *d = *s as $d;
            }
        }};
    }
    match (from, to) {
        (DType::F32, DType::F32) | (DType::I32, DType::I32) | (DType::I64, DType::I64) => {
            out.copy_from_slice(src)
        }
        (DType::F32, DType::I64) => conv!(f32, i64),
        (DType::F32, DType::I32) => conv!(f32, i32),
        (DType::I64, DType::F32) => conv!(i64, f32),
        (DType::I32, DType::F32) => conv!(i32, f32),
        (DType::I64, DType::I32) => conv!(i64, i32),
        (DType::I32, DType::I64) => conv!(i32, i64),
        _ => {}
    }
    Ok(())
}
