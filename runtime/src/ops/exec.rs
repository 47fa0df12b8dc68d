//! Execution of validated ops. No allocation, no locks, no I/O: every size was checked by
//! `prepare`, and the arena slots of an op's output and its live inputs never overlap.

use super::{BinFast, BinaryKind, MatMulDims, Op, UnaryKind};
use crate::format::{DType, MAX_RANK, REF_NONE, REF_TENSOR};
use crate::model::{TensorInfo, ValueInfo};
use crate::par::{split_rows, Parallel, SharedMut};
use crate::Error;
use ember_kernels::pack::{k4, k4n16_len, quantize_pack_k4n16_kn, quantize_pack_k4n16_nk};
use ember_kernels::{Act, KernelSet};

pub(crate) struct Ctx<'a> {
    pub file: &'a [u8],
    pub tensors: &'a [TensorInfo],
    pub values: &'a [ValueInfo],
    pub kernels: &'a KernelSet,
    pub par: &'a dyn Parallel,
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
    pub u8s: &'s mut [u8],
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
            let (m, kk, n, act, inv_scale) = (*m, *kk, *n, *act, *inv_scale);
            let lda = k4(kk);
            let q = SharedMut(scratch.u8s[..m * lda].as_mut_ptr());
            let mult: &[f32] = if *mult == REF_NONE { &[] } else { cast(io.bytes(*mult))? };
            // The file's zero point is that of i8 codes; kernels take u8 codes (+128).
            let zp = zp + 128;
            let x: &[f32] = cast(io.bytes(*x))?;
            let (w, w_sum) = (cast(io.bytes(*w))?, cast(io.bytes(*w_sum))?);
            let (scale, bias) = (cast(io.bytes(*scale))?, cast(io.bytes(*bias))?);
            let o: &mut [f32] = cast_mut(out)?;
            let o = SharedMut(o[..m * n].as_mut_ptr());
            // Each task quantizes and multiplies its own rows.
            split_rows(ctx.par, m, 16, 8, &|r0, r1| {
                // SAFETY: tasks get disjoint row ranges r0..r1 ≤ m; the scratch holds m·lda
                // bytes and the output m·n floats, both exclusively borrowed by this op.
                let (qs, os) =
                    unsafe { (q.slice(r0 * lda, (r1 - r0) * lda), o.slice(r0 * n, (r1 - r0) * n)) };
                (k.quantize_u8)(&x[r0 * kk..r1 * kk], r1 - r0, kk, lda, inv_scale, mult, zp, qs);
                (k.i8_gemm)(r1 - r0, kk, n, qs, lda, zp, w, w_sum, scale, bias, act, os, n);
            });
        }
        Op::MatMulF32 { a, b, d: MatMulDims { batch, m, k: kk, n, a_bs, b_bs, b_t, alpha } } => {
            let (a, b): (&[f32], &[f32]) = (cast(io.bytes(*a))?, cast(io.bytes(*b))?);
            let o: &mut [f32] = cast_mut(out)?;
            for i in 0..*batch {
                let oi = &mut o[i * m * n..(i + 1) * m * n];
                if *b_t {
                    (k.f32_gemm)(*m, *kk, *n, &a[i * a_bs..], &b[i * b_bs..], &[], Act::None, oi);
                } else {
                    ember_kernels::generic::f32_matmul(
                        *m,
                        *kk,
                        *n,
                        &a[i * a_bs..],
                        &b[i * b_bs..],
                        oi,
                    );
                }
                if *alpha != 1.0 {
                    oi.iter_mut().for_each(|v| *v *= *alpha);
                }
            }
        }
        Op::MatMulI8 {
            a,
            b,
            d: MatMulDims { batch, m, k: kk, n, a_bs, b_bs, b_t, .. },
            a_inv,
            a_zp,
            b_inv,
            out_scale,
        } => {
            let (a, b): (&[f32], &[f32]) = (cast(io.bytes(*a))?, cast(io.bytes(*b))?);
            let o: &mut [f32] = cast_mut(out)?;
            let lda = k4(*kk);
            let (qa, rest) = scratch.u8s.split_at_mut(m * lda);
            let bp: &mut [i8] = bytemuck::cast_slice_mut(&mut rest[..k4n16_len(*n, *kk)]);
            let sums = &mut scratch.i32s[..*n];
            let (scale, bias) = scratch.f32s[..2 * n].split_at_mut(*n);
            scale.fill(*out_scale);
            bias.fill(0.0);
            let zp = a_zp + 128;
            for i in 0..*batch {
                (k.quantize_u8)(&a[i * a_bs..i * a_bs + m * kk], *m, *kk, lda, *a_inv, &[], zp, qa);
                let bi = &b[i * b_bs..i * b_bs + kk * n];
                if *b_t {
                    quantize_pack_k4n16_nk(bi, *n, *kk, *b_inv, bp, sums);
                } else {
                    quantize_pack_k4n16_kn(bi, *kk, *n, *b_inv, bp, sums);
                }
                let (qa, bp, sums): (&[u8], &[i8], &[i32]) = (qa, bp, sums);
                let (scale, bias): (&[f32], &[f32]) = (scale, bias);
                let (m, n) = (*m, *n);
                let oi = SharedMut(o[i * m * n..(i + 1) * m * n].as_mut_ptr());
                split_rows(ctx.par, m, 16, 8, &|r0, r1| {
                    // SAFETY: disjoint row ranges of this head's m·n outputs.
                    let os = unsafe { oi.slice(r0 * n, (r1 - r0) * n) };
                    let a = &qa[r0 * lda..];
                    (k.i8_gemm)(
                        r1 - r0,
                        *kk,
                        n,
                        a,
                        lda,
                        zp,
                        bp,
                        sums,
                        scale,
                        bias,
                        Act::None,
                        os,
                        n,
                    );
                });
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
        Op::Unary { x, kind: UnaryKind::Erf, .. } => {
            let x: &[f32] = cast(io.bytes(*x))?;
            let o: &mut [f32] = cast_mut(out)?;
            let len = o.len();
            let op = SharedMut(o.as_mut_ptr());
            // Blocks of 4096 elements, spread over the threads.
            const BLOCK: usize = 4096;
            split_rows(ctx.par, len.div_ceil(BLOCK), 4, 1, &|b0, b1| {
                let (s0, s1) = (b0 * BLOCK, (b1 * BLOCK).min(len));
                // SAFETY: disjoint element ranges of the output.
                let os = unsafe { op.slice(s0, s1 - s0) };
                (k.erf)(&x[s0..s1], os);
            });
        }
        Op::Unary { x, kind, a, b } => {
            let x: &[f32] = cast(io.bytes(*x))?;
            let o: &mut [f32] = cast_mut(out)?;
            for (o, v) in o.iter_mut().zip(x) {
                *o = match kind {
                    UnaryKind::Relu => v.max(0.0),
                    UnaryKind::Sigmoid => 1.0 / (1.0 + libm::expf(-v)),
                    UnaryKind::Tanh => libm::tanhf(*v),
                    UnaryKind::Erf => ember_kernels::generic::math::erf(*v),
                    UnaryKind::Gelu => ember_kernels::generic::math::gelu(*v),
                    UnaryKind::GeluTanh => ember_kernels::generic::math::gelu_tanh(*v),
                    UnaryKind::Sqrt => libm::sqrtf(*v),
                    UnaryKind::Clip => v.max(*a).min(*b),
                    UnaryKind::Pow => libm::powf(*v, *a),
                };
            }
        }
        Op::LayerNorm { x, scale, bias, rows, d, eps } => {
            let (x, d, eps): (&[f32], usize, f32) = (cast(io.bytes(*x))?, *d, *eps);
            let g: &[f32] = cast(io.bytes(*scale))?;
            let bb: &[f32] = if *bias == REF_NONE { &[] } else { cast(io.bytes(*bias))? };
            let o: &mut [f32] = cast_mut(out)?;
            let op = SharedMut(o[..rows * d].as_mut_ptr());
            split_rows(ctx.par, *rows, 64, 1, &|r0, r1| {
                // SAFETY: disjoint row ranges of the rows·d outputs.
                let os = unsafe { op.slice(r0 * d, (r1 - r0) * d) };
                for (xr, or) in x[r0 * d..r1 * d].chunks_exact(d).zip(os.chunks_exact_mut(d)) {
                    (k.layer_norm_row)(xr, g, bb, eps, or);
                }
            });
        }
        Op::Expand { x, elem, rank, out: od, strides } => {
            // A permuted copy with zero strides on the broadcast axes.
            transpose(io.bytes(*x), out, *elem, *rank, od, strides);
        }
        Op::Softmax { x, outer, n, inner } if *inner == 1 => {
            let (x, n): (&[f32], usize) = (cast(io.bytes(*x))?, *n);
            let o: &mut [f32] = cast_mut(out)?;
            let op = SharedMut(o[..outer * n].as_mut_ptr());
            split_rows(ctx.par, *outer, 64, 1, &|r0, r1| {
                // SAFETY: disjoint row ranges of the outer·n outputs.
                let os = unsafe { op.slice(r0 * n, (r1 - r0) * n) };
                for (xr, or) in x[r0 * n..r1 * n].chunks_exact(n).zip(os.chunks_exact_mut(n)) {
                    (k.softmax_row)(xr, or);
                }
            });
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
                        let e = ember_kernels::generic::math::exp(x[base + j * inner] - mx);
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
            transpose(io.bytes(*x), out, *elem, *rank, od, src_strides);
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
    fn add(a: Self, b: Self) -> Self;
    fn sub(a: Self, b: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn div(a: Self, b: Self) -> Self;
}
impl Arith for f32 {
    fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    fn div(a: f32, b: f32) -> f32 {
        a / b
    }
}
impl Arith for i64 {
    fn add(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    fn sub(a: i64, b: i64) -> i64 {
        a.wrapping_sub(b)
    }
    fn mul(a: i64, b: i64) -> i64 {
        a.wrapping_mul(b)
    }
    /// Integer division by zero is defined as 0 here rather than trapping.
    fn div(a: i64, b: i64) -> i64 {
        a.checked_div(b).unwrap_or(0)
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
    // One monomorphic loop per kind, so each vectorizes.
    match kind {
        BinaryKind::Add => binary_with(a, b, o, rank, od, sa, sb, fast, T::add),
        BinaryKind::Sub => binary_with(a, b, o, rank, od, sa, sb, fast, T::sub),
        BinaryKind::Mul => binary_with(a, b, o, rank, od, sa, sb, fast, T::mul),
        BinaryKind::Div => binary_with(a, b, o, rank, od, sa, sb, fast, T::div),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn binary_with<T: Arith>(
    a: &[T],
    b: &[T],
    o: &mut [T],
    rank: usize,
    od: &[usize; MAX_RANK],
    sa: &[usize; MAX_RANK],
    sb: &[usize; MAX_RANK],
    fast: BinFast,
    f: impl Fn(T, T) -> T,
) {
    match fast {
        BinFast::Same => {
            for ((o, x), y) in o.iter_mut().zip(a).zip(b) {
                *o = f(*x, *y);
            }
        }
        BinFast::BScalar => {
            let y = b[0];
            for (o, x) in o.iter_mut().zip(a) {
                *o = f(*x, y);
            }
        }
        BinFast::AScalar => {
            let x = a[0];
            for (o, y) in o.iter_mut().zip(b) {
                *o = f(x, *y);
            }
        }
        BinFast::BSuffix(len) => {
            for (oc, ac) in o.chunks_exact_mut(len).zip(a.chunks_exact(len)) {
                for ((o, x), y) in oc.iter_mut().zip(ac).zip(b) {
                    *o = f(*x, *y);
                }
            }
        }
        BinFast::ASuffix(len) => {
            for (oc, bc) in o.chunks_exact_mut(len).zip(b.chunks_exact(len)) {
                for ((o, x), y) in oc.iter_mut().zip(a).zip(bc) {
                    *o = f(*x, *y);
                }
            }
        }
        BinFast::General => {
            // Rows of the last axis, odometer over the others with running operand offsets;
            // within a row each operand steps by 0 or 1 (or its stride).
            if rank == 0 {
                o[0] = f(a[0], b[0]);
                return;
            }
            let n = od[rank - 1];
            let (ca, cb) = (sa[rank - 1], sb[rank - 1]);
            let mut idx = [0usize; MAX_RANK];
            let (mut ia, mut ib) = (0usize, 0usize);
            for orow in o.chunks_exact_mut(n.max(1)) {
                match (ca, cb) {
                    (1, 1) => {
                        for ((o, x), y) in orow.iter_mut().zip(&a[ia..ia + n]).zip(&b[ib..ib + n]) {
                            *o = f(*x, *y);
                        }
                    }
                    (1, 0) => {
                        let y = b[ib];
                        for (o, x) in orow.iter_mut().zip(&a[ia..ia + n]) {
                            *o = f(*x, y);
                        }
                    }
                    (0, 1) => {
                        let x = a[ia];
                        for (o, y) in orow.iter_mut().zip(&b[ib..ib + n]) {
                            *o = f(x, *y);
                        }
                    }
                    _ => {
                        for (j, o) in orow.iter_mut().enumerate() {
                            *o = f(a[ia + j * ca], b[ib + j * cb]);
                        }
                    }
                }
                let mut d = rank - 1;
                while d > 0 {
                    d -= 1;
                    idx[d] += 1;
                    ia += sa[d];
                    ib += sb[d];
                    if idx[d] < od[d] {
                        break;
                    }
                    ia -= sa[d] * od[d];
                    ib -= sb[d] * od[d];
                    idx[d] = 0;
                }
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

/// Permuted copy: `out` in output order, `src_strides` (in elements) per output axis. Trailing
/// output axes that stay contiguous in the source are copied as one run.
fn transpose(
    src: &[u8],
    out: &mut [u8],
    elem: usize,
    rank: usize,
    od: &[usize; MAX_RANK],
    st: &[usize; MAX_RANK],
) {
    let mut run = 1;
    let mut r = rank;
    while r > 0 && st[r - 1] == run {
        run *= od[r - 1];
        r -= 1;
    }
    let bytes = run * elem;
    if out.is_empty() {
        return;
    }
    if r == 0 {
        out.copy_from_slice(&src[..out.len()]);
        return;
    }
    let mut idx = [0usize; MAX_RANK];
    let mut s = 0usize;
    for chunk in out.chunks_exact_mut(bytes) {
        if elem == 4 && run == 1 {
            chunk.copy_from_slice(&src[s * 4..s * 4 + 4]);
        } else {
            chunk.copy_from_slice(&src[s * elem..s * elem + bytes]);
        }
        let mut d = r;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            s += st[d];
            if idx[d] < od[d] {
                break;
            }
            s -= st[d] * od[d];
            idx[d] = 0;
        }
    }
}
