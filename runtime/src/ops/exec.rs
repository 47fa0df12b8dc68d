//! Execution of validated ops. No allocation, no locks, no I/O: every size was checked by
//! `prepare`, and the arena slots of an op's output and its live inputs never overlap.

use super::{
    BinFast, BinaryKind, Dims, MatMulDims, Op, Strides, UnaryKind, F16_PANEL, HANDOFF_ROWS,
};
use crate::format::{DType, MAX_RANK, REF_NONE, REF_TENSOR};
use crate::model::{TensorInfo, ValueInfo};
use crate::overlay::{patch_of, Patch, RowPatch};
use crate::par::{split_rows, split_rows_mut, split_tasks, Parallel, SharedMut};
use crate::rowcache::RowCache;
use crate::Error;
use ember_kernels::pack::{k4, k4n16_len};
use ember_kernels::{Act, KernelSet};

pub(crate) struct Ctx<'a> {
    pub file: &'a [u8],
    pub tensors: &'a [TensorInfo],
    pub values: &'a [ValueInfo],
    pub kernels: &'a KernelSet,
    pub par: &'a dyn Parallel,
    /// Rows replaced by an overlay.
    pub patches: &'a [RowPatch],
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
    patches: &'x [RowPatch],
}

impl<'x> Io<'x> {
    /// The rows of `x` (`rb` bytes each) with the overlay's replacements, looked up once per op.
    fn rows(&self, x: u32, rb: usize) -> RowSrc<'x> {
        RowSrc { base: self.bytes(x), rb, patch: patch_of(self.patches, x) }
    }
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

/// Rows of an operand read one at a time: the overlay's row when it replaces one, else the
/// stored one.
#[derive(Clone, Copy)]
struct RowSrc<'x> {
    base: &'x [u8],
    rb: usize,
    patch: Option<&'x Patch>,
}

impl<'x> RowSrc<'x> {
    #[inline]
    fn get(&self, r: usize) -> &'x [u8] {
        match self.patch.and_then(|p| p.row(r)) {
            Some(b) => b,
            None => &self.base[r * self.rb..(r + 1) * self.rb],
        }
    }
}

/// Lookups ahead whose rows a direct gather prefetches: the ids are known up front, and each
/// row is a random miss that would otherwise wait alone.
const AHEAD: usize = 4;

/// The index operand of a row gather.
struct Ids<'x> {
    ix: &'x [u8],
    idx64: bool,
    n: usize,
    rows: usize,
    op: usize,
}

impl Ids<'_> {
    fn get(&self, i: usize) -> Result<usize, Error> {
        index(self.ix, self.idx64, i, self.rows, self.op)
    }
}

/// Every row `ids` names, `d` values each, into `o`: `deq(codes, scales, offsets, row)` reads
/// the row from the mapped table, or from the op's hot-row cache when it has one.
///
/// With a cache the batch goes in two passes: all lookups first (bad ids fail the op before
/// the cache changes), each prefetching the slot of a hit or the table row of a miss, then in
/// the same order every miss is copied into its slot (codes, then scales, then offsets) and
/// every row dequantized from its slot: the same values as the direct gather.
fn gather_rows(
    cache: Option<&mut RowCache>,
    ids: &Ids,
    (t, s, b): (&RowSrc, &RowSrc, &RowSrc),
    o: &mut [f32],
    d: usize,
    deq: impl Fn(&[u8], &[u8], &[u8], &mut [f32]),
) -> Result<(), Error> {
    let fetch = |r: usize| {
        for x in [t.get(r), s.get(r), b.get(r)] {
            ember_kernels::prefetch::prefetch(x.as_ptr(), x.len());
        }
    };
    if d == 0 {
        // Nothing to write; the ids are still checked.
        return (0..ids.n).try_for_each(|i| ids.get(i).map(|_| ()));
    }
    let Some(c) = cache else {
        for (i, oi) in o.chunks_exact_mut(d).take(ids.n).enumerate() {
            let r = ids.get(i)?;
            if let Ok(ra) = ids.get((i + AHEAD).min(ids.n - 1)) {
                fetch(ra);
            }
            deq(t.get(r), s.get(r), b.get(r), oi);
        }
        return Ok(());
    };
    for i in 0..ids.n {
        ids.get(i)?;
    }
    let mut pending = core::mem::take(&mut c.pending); // capacity n (reserved at set-up)
    pending.clear();
    for i in 0..ids.n {
        let r = ids.get(i)?;
        if let Ok(ra) = ids.get((i + 2 * AHEAD).min(ids.n - 1)) {
            c.prefetch_set(ra as u32);
        }
        let (slot, miss) = c.lookup(r as u32);
        if miss {
            fetch(r);
        } else {
            c.prefetch_slot(slot);
        }
        pending.push((slot as u32) << 1 | miss as u32);
    }
    for (i, (oi, p)) in o.chunks_exact_mut(d).zip(&pending).enumerate() {
        let slot = (*p >> 1) as usize;
        let (n, sb) = (t.rb, s.rb);
        if p & 1 == 1 {
            let r = ids.get(i)?;
            let dst = c.slot_mut(slot);
            dst[..n].copy_from_slice(t.get(r));
            dst[n..n + sb].copy_from_slice(s.get(r));
            dst[n + sb..].copy_from_slice(b.get(r));
        }
        let src = c.slot(slot);
        deq(&src[..n], &src[n..n + sb], &src[n + sb..], oi);
    }
    c.pending = pending;
    Ok(())
}

/// A row-wise INT8 row: `o[j] = q[j]·scale + bias` (scale and bias f16).
#[inline]
fn dequant_i8_row(q: &[u8], scale: &[u8], bias: &[u8], o: &mut [f32]) {
    let (sc, bi) = (f16_at(scale), f16_at(bias));
    for (o, q) in o.iter_mut().zip(q) {
        *o = *q as i8 as f32 * sc + bi;
    }
}

/// A row-wise INT4 row in groups of `group`: two unsigned codes per byte (low nibble first),
/// `o = code·scale[g] + bias[g]`.
#[inline]
fn dequant_i4_row(q: &[u8], scale: &[u8], bias: &[u8], group: usize, o: &mut [f32]) {
    for (g, og) in o.chunks_exact_mut(group).enumerate() {
        let (sc, bi) = (f16_at(&scale[2 * g..]), f16_at(&bias[2 * g..]));
        for (o2, b) in og.chunks_exact_mut(2).zip(&q[g * group / 2..(g + 1) * group / 2]) {
            o2[0] = (b & 15) as f32 * sc + bi;
            o2[1] = (b >> 4) as f32 * sc + bi;
        }
    }
}

/// The f16 at the start of `b` (little-endian bits), as f32.
#[inline]
fn f16_at(b: &[u8]) -> f32 {
    // The kernels' branch-light bit conversion (exact, as `half`'s): the INT4 rows convert two
    // per group, 24 per 384-wide row, where a software call each cost ~10 µs per MiniLM batch.
    ember_kernels::generic::f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
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

/// Per-session scratch, sized at load for the largest op.
pub(crate) struct Scratch<'s> {
    pub u8s: &'s mut [u8],
    pub i32s: &'s mut [i32],
    pub f32s: &'s mut [f32],
    /// Per-task slots of the i8/i32 scratch (ops that split work by task use one each).
    pub slots: usize,
}

/// Runs op `op_index` (writing value `out_v`).
pub(crate) fn run_op(
    op: &Op,
    op_index: usize,
    out_v: u32,
    ctx: &Ctx,
    arena: &mut [u8],
    scratch: &mut Scratch,
    cache: Option<&mut RowCache>,
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
        patches: ctx.patches,
    };
    let k = ctx.kernels;
    match op {
        Op::LinearF32 { x, w, bias, m, k: kk, n, act, w_f16: false } => {
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
        Op::LinearF32 { x, w, bias, m, k: kk, n, act, w_f16: true } => {
            let (m, kk, n) = (*m, *kk, *n);
            let x: &[f32] = cast(io.bytes(*x))?;
            let w: &[u16] = cast(io.bytes(*w))?;
            let w: &[half::f16] = half::slice::HalfBitsSliceExt::reinterpret_cast(w);
            let b: &[f32] = if *bias == REF_NONE { &[] } else { cast(io.bytes(*bias))? };
            let o: &mut [f32] = cast_mut(out)?;
            let (wp, op) =
                scratch.f32s[..F16_PANEL * kk + m * F16_PANEL].split_at_mut(F16_PANEL * kk);
            // Panels of F16_PANEL weight rows: widen to f32, multiply, scatter the columns.
            for j0 in (0..n).step_by(F16_PANEL) {
                let nb = F16_PANEL.min(n - j0);
                let wf = &mut wp[..nb * kk];
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(
                    &w[j0 * kk..(j0 + nb) * kk],
                    wf,
                );
                let bb = if b.is_empty() { &[][..] } else { &b[j0..j0 + nb] };
                let ob = &mut op[..m * nb];
                (k.f32_gemm)(m, kk, nb, x, wf, bb, *act, ob);
                for (orow, brow) in o.chunks_exact_mut(n).zip(ob.chunks_exact(nb)) {
                    orow[j0..j0 + nb].copy_from_slice(brow);
                }
            }
        }
        Op::LinearI8 { x, w, w_sum, scale, bias, mult, m, k: kk, n, act, inv_scale, zp, hand } => {
            let (w, w_sum) = (cast(io.bytes(*w))?, cast(io.bytes(*w_sum))?);
            let (scale, bias) = (cast(io.bytes(*scale))?, cast(io.bytes(*bias))?);
            let (kk, n, act) = (*kk, *n, *act);
            let q = QuantIn::new(&io, k, *x, *mult, *m, kk, *inv_scale, *zp, hand)?;
            if *inv_scale == 0.0 {
                let (zeros, row_scale) = scratch.f32s.split_at_mut(n);
                zeros.fill(0.0);
                let zeros = &*zeros;
                let o = cast_mut(out)?;
                q.run_dynamic(
                    ctx.par,
                    scratch.u8s,
                    row_scale,
                    o,
                    n,
                    bias,
                    act,
                    &|r, qs, l, z, os| {
                        (k.i8_gemm)(r, kk, n, qs, l, z, w, w_sum, scale, zeros, Act::None, os, n)
                    },
                );
            } else {
                q.run(ctx.par, scratch, out, n, &|rows, qs, lda, zp, os| {
                    (k.i8_gemm)(rows, kk, n, qs, lda, zp, w, w_sum, scale, bias, act, os, n)
                })?;
            }
        }
        Op::LinearI4 {
            x,
            w,
            gsum,
            gscale,
            bias,
            mult,
            m,
            k: kk,
            n,
            act,
            inv_scale,
            zp,
            group,
            x_scale,
            hand,
        } => {
            let w: &[u8] = io.bytes(*w);
            let (gsum, gscale) = (cast(io.bytes(*gsum))?, cast(io.bytes(*gscale))?);
            let bias: &[f32] = cast(io.bytes(*bias))?;
            let (kk, n, act, group, x_scale) = (*kk, *n, *act, *group, *x_scale);
            let q = QuantIn::new(&io, k, *x, *mult, *m, kk, *inv_scale, *zp, hand)?;
            q.run(ctx.par, scratch, out, n, &|rows, qs, lda, zp, os| {
                (k.i4_gemm)(
                    rows, kk, n, qs, lda, zp, w, group, gsum, gscale, x_scale, bias, act, os, n,
                )
            })?;
        }
        Op::LinearI4M {
            x,
            w,
            gmul,
            w_sum,
            scale,
            bias,
            mult,
            m,
            k: kk,
            n,
            act,
            inv_scale,
            zp,
            group,
            hand,
        } => {
            let (w, gmul): (&[u8], &[u8]) = (io.bytes(*w), io.bytes(*gmul));
            let w_sum: &[i32] = cast(io.bytes(*w_sum))?;
            let (scale, bias): (&[f32], &[f32]) = (cast(io.bytes(*scale))?, cast(io.bytes(*bias))?);
            let (kk, n, act, group) = (*kk, *n, *act, *group);
            let q = QuantIn::new(&io, k, *x, *mult, *m, kk, *inv_scale, *zp, hand)?;
            q.run(ctx.par, scratch, out, n, &|rows, qs, lda, zp, os| {
                (k.i4m_gemm)(
                    rows, kk, n, qs, lda, zp, w, group, gmul, w_sum, scale, bias, act, os, n,
                )
            })?;
        }
        Op::GatherRowsI4 { table, scale, bias, idx, idx64, rows, d, group, n_idx } => {
            let ix = io.bytes(*idx);
            let o: &mut [f32] = cast_mut(out)?;
            let (d, group) = (*d, *group);
            let gpr = d / group;
            let (t, s, b) =
                (io.rows(*table, d / 2), io.rows(*scale, 2 * gpr), io.rows(*bias, 2 * gpr));
            let deq =
                |q: &[u8], sc: &[u8], bi: &[u8], o: &mut [f32]| dequant_i4_row(q, sc, bi, group, o);
            let ids = Ids { ix, idx64: *idx64, n: *n_idx, rows: *rows, op: op_index };
            gather_rows(cache, &ids, (&t, &s, &b), o, d, deq)?;
        }
        Op::MatMulF32 { a, b, d } => {
            let MatMulDims { batch, m, n, a_bs, b_bs, .. } = *d;
            let (a, b): (&[f32], &[f32]) = (cast(io.bytes(*a))?, cast(io.bytes(*b))?);
            let o: &mut [f32] = cast_mut(out)?;
            let op = SharedMut(o[..batch * m * n].as_mut_ptr());
            // Head i (prepare proved every head's operands and output in range).
            let head = |i: usize| {
                // SAFETY: head i's outputs are i·m·n..(i+1)·m·n, disjoint between heads.
                let oi = unsafe { op.slice(i * m * n, m * n) };
                matmul_f32(k, d, &a[i * a_bs..], &b[i * b_bs..], oi);
            };
            // Heads over the threads (attention), each head one kernel call as on one thread,
            // so the thread count changes no bits. (A single matrix stays whole: a split would
            // send a short last row block to the kernels' unpacked path, other bits.)
            let tasks = ctx.par.threads().min(batch);
            split_tasks(ctx.par, batch, tasks, 1, &|_, h0, h1| {
                for i in h0..h1 {
                    head(i);
                }
            });
        }
        Op::AttentionF32 { q, k: keys, v, qk, pv, lq, lk, lv, lo, mask, rank, rows, mstrides } => {
            // The CPU schedule may write the context over q (same heads layout): q's heads are
            // then read from the output, each by the task that writes it.
            let q_in_out = *q == out_v;
            let qs: &[f32] = if q_in_out { &[] } else { cast(io.bytes(*q))? };
            let (ks, vs): (&[f32], &[f32]) = (cast(io.bytes(*keys))?, cast(io.bytes(*v))?);
            let mk: &[f32] = if *mask == REF_NONE { &[] } else { cast(io.bytes(*mask))? };
            let o: &mut [f32] = cast_mut(out)?;
            let (batch, m, d, n, dv) = (qk.batch, qk.m, qk.k, qk.n, pv.n);
            let (kr, kc) = if qk.b_t { (n, d) } else { (d, n) };
            let (vr, vc) = if pv.b_t { (dv, n) } else { (n, dv) };
            if batch == 0 || m == 0 || dv == 0 {
                return Ok(());
            }
            // The schedule built these layouts from the dims prepare checked; checked again
            // here because the output is written through a shared pointer.
            let per = op.scratch().1;
            let tasks = ctx.par.threads().min(scratch.slots).min(batch).max(1);
            if (q_in_out && (lq != lo || lq.is_dense()))
                || lq.extent(batch, m, d) > if q_in_out { o.len() } else { qs.len() }
                || lk.extent(batch, kr, kc) > ks.len()
                || lv.extent(batch, vr, vc) > vs.len()
                || lo.extent(batch, m, dv) > o.len()
                || scratch.i32s.len() < tasks * per
            {
                return Err(crate::error::corrupt!(
                    "op #{op_index}: attention layout outside its operands"
                ));
            }
            let sp = SharedMut(scratch.i32s.as_mut_ptr() as *mut f32);
            let op = SharedMut(o.as_mut_ptr());
            let head = |slot: usize, i: usize| {
                // SAFETY: slot < tasks ≤ scratch.slots, each slot's `per` elements (this op's
                // `Op::scratch`, checked against the scratch above) belong to one task; i32 and
                // f32 have the same size and alignment.
                let buf = unsafe { sp.slice(slot * per, per) };
                let (qh, buf) = if q_in_out {
                    let (dst, rest) = buf.split_at_mut(m * d);
                    for (r, dr) in dst.chunks_exact_mut(d).enumerate() {
                        // SAFETY: row r of head i's q columns lies inside `o` (checked above);
                        // only this task reads them, before it writes head i's output there.
                        unsafe {
                            core::ptr::copy_nonoverlapping(
                                op.0.add(lq.base(i) + r * lq.row),
                                dr.as_mut_ptr(),
                                d,
                            )
                        };
                    }
                    (&*dst, rest)
                } else {
                    matrix(qs, lq, i, m, d, buf)
                };
                let (kh, buf) = matrix(ks, lk, i, kr, kc, buf);
                let (vh, buf) = matrix(vs, lv, i, vr, vc, buf);
                let (sc, tile) = buf.split_at_mut(m * n);
                // The scores' scale is applied by the softmax as it reads them (the same
                // rounding as the scaling pass of the plan as written).
                matmul_f32(k, &MatMulDims { alpha: 1.0, ..*qk }, qh, kh, sc);
                softmax_rows(k, sc, n, qk.alpha, |r| {
                    mask_row(mk, i * m + r, n, *rank, rows, mstrides)
                });
                let oh = if lo.is_dense() {
                    // SAFETY: head i's outputs are lo.base(i)..+m·dv, inside `o` (checked
                    // above) and disjoint between heads.
                    unsafe { op.slice(lo.base(i), m * dv) }
                } else {
                    &mut tile[..m * dv]
                };
                matmul_f32(k, pv, sc, vh, oh);
                if !lo.is_dense() {
                    for (r, orow) in oh.chunks_exact(dv).enumerate() {
                        // SAFETY: row r of head i ends inside `o` (checked above); its dv
                        // elements belong to this head alone.
                        unsafe {
                            core::ptr::copy_nonoverlapping(
                                orow.as_ptr(),
                                op.0.add(lo.base(i) + r * lo.row),
                                dv,
                            )
                        };
                    }
                }
            };
            split_tasks(ctx.par, batch, tasks, 1, &|slot, h0, h1| {
                for i in h0..h1 {
                    head(slot, i);
                }
            });
        }
        Op::MatMulI8 {
            a,
            b,
            d: MatMulDims { batch, m, k: kk, n, b_t, .. },
            a_inv,
            a_zp,
            b_inv,
            out_scale,
            la,
            lb,
            lo,
        } => {
            let (a, b): (&[f32], &[f32]) = (cast(io.bytes(*a))?, cast(io.bytes(*b))?);
            let o: &mut [f32] = cast_mut(out)?;
            let (m, kk, n, batch, b_t) = (*m, *kk, *n, *batch, *b_t);
            let (a_inv, b_inv, la, lb, lo) = (*a_inv, *b_inv, *la, *lb, *lo);
            let lda = k4(kk);
            let plen = k4n16_len(n, kk);
            let per8 = m * lda + plen;
            // Output to heads in place: each head's rows go through an [m, n] tile of the
            // task's i32 slot, then to their rows of `o` (no two tasks hold overlapping slices).
            let per32 = if lo.is_dense() { n } else { n + m * n };
            let (sb, rest) = scratch.f32s.split_at_mut(2 * n);
            let (scale, bias) = sb.split_at_mut(n);
            scale.fill(*out_scale);
            bias.fill(0.0);
            let (scale, bias): (&[f32], &[f32]) = (scale, bias);
            let zp = a_zp + 128;
            // `a` as heads in place: quantized once, all heads together (whole rows of the
            // [B0·S, H·D] tensor, in the shared f32 scratch), each head's GEMM then reading its
            // D bytes per row in place (D % 4 == 0, so no quad spans two heads).
            let a_all: Option<&[u8]> = if la.is_dense() || kk % 4 != 0 {
                None
            } else {
                let width = la.row;
                let total = batch / la.heads * m * width;
                let qa_all: &mut [u8] = &mut bytemuck::cast_slice_mut(rest)[..total];
                split_rows_mut(ctx.par, qa_all, width, 16, 8, &|r0, r1, qs| {
                    let x = &a[r0 * width..r1 * width];
                    (k.quantize_u8)(x, r1 - r0, width, width, width, a_inv, &[], zp, qs);
                });
                Some(qa_all)
            };
            let (u8p, i32p) =
                (SharedMut(scratch.u8s.as_mut_ptr()), SharedMut(scratch.i32s.as_mut_ptr()));
            let o_len = o.len();
            let op = SharedMut(o.as_mut_ptr());
            // Every matrix's last row ends inside its operand: prepare checked the dense
            // layouts, and a heads-in-place layout spans exactly the `[B0, S, H, D]` tensor it
            // replaced (`fuse` takes B0, H, S, D from the transposed value's dims, and prepare
            // proved the Reshape copy and the Transpose keep the byte count).
            let (b_rows, b_cols) = if b_t { (n, kk) } else { (kk, n) };
            debug_assert!(
                la.extent(batch, m, kk) <= a.len()
                    && lb.extent(batch, b_rows, b_cols) <= b.len()
                    && lo.extent(batch, m, n) <= o_len,
                "op #{op_index}: matmul layout outside its operands"
            );
            // Heads spread over the threads, each with its own scratch slot, when there are
            // several; one head's rows spread over the threads otherwise.
            let tasks = ctx.par.threads().min(scratch.slots).min(batch).max(1);
            let head = |slot: usize, i: usize, rows: &dyn Fn(&RowTask)| {
                // SAFETY: slot < scratch.slots, each slot holds per8 bytes and per32 i32 (sized
                // for this op by `Op::scratch` × slots), and a slot belongs to one task.
                let (qa, bq, sums, tile) = unsafe {
                    (
                        u8p.slice(slot * per8, m * lda),
                        u8p.slice(slot * per8 + m * lda, plen),
                        i32p.slice(slot * per32, n),
                        SharedMut(i32p.0.add(slot * per32 + n) as *mut f32),
                    )
                };
                let bp: &mut [i8] = bytemuck::cast_slice_mut(bq);
                let (qa, lda): (&[u8], usize) = match a_all {
                    Some(all) => (&all[la.base(i)..], la.row),
                    None => {
                        (k.quantize_u8)(&a[la.base(i)..], m, kk, la.row, lda, a_inv, &[], zp, qa);
                        (qa, lda)
                    }
                };
                (k.quantize_pack)(&b[lb.base(i)..], kk, n, b_t, lb.row, b_inv, bp, sums);
                let (bp, sums): (&[i8], &[i32]) = (bp, sums);
                rows(&|r0, r1| {
                    // SAFETY: dense: head i's outputs are at lo.base(i).., rows r0..r1 of them,
                    // disjoint between heads and between the row ranges of one head. In place:
                    // rows r0..r1 of this slot's tile, written by this task only.
                    let os = unsafe {
                        if lo.is_dense() {
                            op.slice(lo.base(i) + r0 * n, (r1 - r0) * n)
                        } else {
                            tile.slice(r0 * n, (r1 - r0) * n)
                        }
                    };
                    (k.i8_gemm)(
                        r1 - r0,
                        kk,
                        n,
                        &qa[r0 * lda..],
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
                    if !lo.is_dense() {
                        for r in r0..r1 {
                            // SAFETY: row r of matrix i ends inside `o` (see the layouts above);
                            // the n elements of a row of a head belong to this task alone.
                            unsafe {
                                core::ptr::copy_nonoverlapping(
                                    os.as_ptr().add((r - r0) * n),
                                    op.0.add(lo.base(i) + r * lo.row),
                                    n,
                                )
                            };
                        }
                    }
                });
            };
            if tasks > 1 {
                split_tasks(ctx.par, batch, tasks, 1, &|slot, h0, h1| {
                    for i in h0..h1 {
                        head(slot, i, &|f| f(0, m));
                    }
                });
            } else {
                for i in 0..batch {
                    head(0, i, &|f| split_rows(ctx.par, m, 16, 8, f));
                }
            }
        }
        Op::Binary { a, b, kind, dtype, rank, out: od, sa, sb, fast } => {
            let g = Bin { kind: *kind, rank: *rank, od, sa, sb, fast: *fast };
            match dtype {
                DType::F32 => binary_par::<f32>(
                    ctx.par,
                    cast(io.bytes(*a))?,
                    cast(io.bytes(*b))?,
                    cast_mut(out)?,
                    &g,
                ),
                _ => binary_par::<i64>(
                    ctx.par,
                    cast(io.bytes(*a))?,
                    cast(io.bytes(*b))?,
                    cast_mut(out)?,
                    &g,
                ),
            }
        }
        Op::Unary { x, kind, a, b } => {
            let (x, kind, a, b): (&[f32], _, f32, f32) = (cast(io.bytes(*x))?, *kind, *a, *b);
            let o: &mut [f32] = cast_mut(out)?;
            split_rows_mut(ctx.par, o, 1, PAR_BLOCK, PAR_BLOCK, &|e0, e1, os| {
                let xs = &x[e0..e1];
                if kind == UnaryKind::Erf {
                    return (k.erf)(xs, os);
                }
                for (o, v) in os.iter_mut().zip(xs) {
                    *o = match kind {
                        UnaryKind::Relu => v.max(0.0),
                        UnaryKind::Sigmoid => 1.0 / (1.0 + libm::expf(-v)),
                        UnaryKind::Tanh => libm::tanhf(*v),
                        UnaryKind::Erf => ember_kernels::generic::math::erf(*v),
                        UnaryKind::Gelu => ember_kernels::generic::math::gelu(*v),
                        UnaryKind::GeluTanh => ember_kernels::generic::math::gelu_tanh(*v),
                        UnaryKind::Sqrt => libm::sqrtf(*v),
                        UnaryKind::Clip => v.max(a).min(b),
                        UnaryKind::Pow => libm::powf(*v, a),
                    };
                }
            });
        }
        Op::LayerNorm { x, scale, bias, rows, d, eps } => {
            let (x, d, eps): (&[f32], usize, f32) = (cast(io.bytes(*x))?, *d, *eps);
            let g: &[f32] = cast(io.bytes(*scale))?;
            let bb: &[f32] = if *bias == REF_NONE { &[] } else { cast(io.bytes(*bias))? };
            let o: &mut [f32] = cast_mut(out)?;
            split_rows_mut(ctx.par, &mut o[..rows * d], d, 64, 1, &|r0, r1, os| {
                for (xr, or) in x[r0 * d..r1 * d].chunks_exact(d).zip(os.chunks_exact_mut(d)) {
                    (k.layer_norm_row)(xr, g, bb, eps, or);
                }
            });
        }
        Op::AddLayerNorm { a, b, scale, bias, rows, d, eps } => {
            let (a, b): (&[f32], &[f32]) = (cast(io.bytes(*a))?, cast(io.bytes(*b))?);
            let (rows, d, eps) = (*rows, *d, *eps);
            let g: &[f32] = cast(io.bytes(*scale))?;
            let bb: &[f32] = if *bias == REF_NONE { &[] } else { cast(io.bytes(*bias))? };
            let o: &mut [f32] = cast_mut(out)?;
            // One row of a + b per task, in the task's scratch slot (`Op::scratch`: d each).
            let tasks = ctx.par.threads().min(scratch.slots).min(rows / 64).max(1);
            if a.len() < rows * d
                || b.len() < rows * d
                || o.len() < rows * d
                || scratch.i32s.len() < tasks * d
            {
                return Err(crate::error::corrupt!("op #{op_index}: add and norm operands"));
            }
            let (sp, op) =
                (SharedMut(scratch.i32s.as_mut_ptr() as *mut f32), SharedMut(o.as_mut_ptr()));
            split_tasks(ctx.par, rows, tasks, 1, &|slot, r0, r1| {
                // SAFETY: slot < tasks ≤ scratch.slots owns scratch elements slot·d..(slot+1)·d
                // (checked above; i32 and f32 have one size and alignment), and the task's rows
                // r0..r1 ≤ rows of the output are its own.
                let (sum, os) = unsafe { (sp.slice(slot * d, d), op.slice(r0 * d, (r1 - r0) * d)) };
                // The row of a + b (the add as the Binary op computes it), then its norm.
                let (ar, br) = (&a[r0 * d..r1 * d], &b[r0 * d..r1 * d]);
                for ((or, xr), yr) in
                    os.chunks_exact_mut(d).zip(ar.chunks_exact(d)).zip(br.chunks_exact(d))
                {
                    for ((s, x), y) in sum.iter_mut().zip(xr).zip(yr) {
                        *s = x + y;
                    }
                    (k.layer_norm_row)(sum, g, bb, eps, or);
                }
            });
        }
        Op::Expand { x, elem, rank, out: od, strides } => {
            // A permuted copy with zero strides on the broadcast axes.
            transpose(ctx.par, io.bytes(*x), out, *elem, *rank, od, strides);
        }
        Op::Softmax { x, outer, n, inner, mask, rank, rows, mstrides } if *inner == 1 => {
            let n = *n;
            // In place (the CPU schedule's `fuse::softmax_in_place`): the op writes its input.
            let in_place = *x == out_v;
            let x: &[f32] = if in_place { &[] } else { cast(io.bytes(*x))? };
            let mk: &[f32] = if *mask == REF_NONE { &[] } else { cast(io.bytes(*mask))? };
            let o: &mut [f32] = cast_mut(out)?;
            split_rows_mut(ctx.par, &mut o[..outer * n], n, 64, 1, &|r0, r1, os| {
                if !in_place {
                    os.copy_from_slice(&x[r0 * n..r1 * n]);
                }
                softmax_rows(k, os, n, 1.0, |r| mask_row(mk, r0 + r, n, *rank, rows, mstrides));
            });
        }
        Op::Softmax { x, outer, n, inner, .. } => {
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
            let ix = io.bytes(*idx);
            let ib = *inner_bytes;
            // Overlays patch only tables gathered with outer == 1 (apply_overlay), so block `a`
            // of the data is row `a·dim + r` of the table's rows.
            let d = io.rows(*data, ib);
            for a in 0..*outer {
                for i in 0..*n_idx {
                    let r = index(ix, *idx64, i, *dim, op_index)?;
                    let dst = (a * n_idx + i) * ib;
                    out[dst..dst + ib].copy_from_slice(d.get(a * dim + r));
                }
            }
        }
        Op::GatherRowsI8 { table, scale, bias, idx, idx64, rows, d, n_idx } => {
            let ix = io.bytes(*idx);
            let o: &mut [f32] = cast_mut(out)?;
            let d = *d;
            let (t, s, b) = (io.rows(*table, d), io.rows(*scale, 2), io.rows(*bias, 2));
            let ids = Ids { ix, idx64: *idx64, n: *n_idx, rows: *rows, op: op_index };
            gather_rows(cache, &ids, (&t, &s, &b), o, d, dequant_i8_row)?;
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
        Op::Copy { x } => {
            let src = io.bytes(*x);
            split_rows_mut(ctx.par, out, 1, 4 * PAR_BLOCK, 4 * PAR_BLOCK, &|s0, s1, os| {
                os.copy_from_slice(&src[s0..s1]);
            });
        }
        Op::Transpose { x, elem, rank, out: od, src_strides } => {
            transpose(ctx.par, io.bytes(*x), out, *elem, *rank, od, src_strides);
        }
        Op::Reduce { x, mean, rank, dims, out_strides, count } => {
            let x: &[f32] = cast(io.bytes(*x))?;
            let o: &mut [f32] = cast_mut(out)?;
            o.fill(0.0);
            // Rows of the last axis: kept (added element-wise) or reduced (summed first).
            let (r, n) = (*rank, if *rank == 0 { 1 } else { dims[*rank - 1] });
            let last = if r == 0 { 0 } else { out_strides[r - 1] };
            let mut idx = [0usize; MAX_RANK];
            let mut t = 0usize;
            for row in x.chunks_exact(n.max(1)) {
                if last == 1 {
                    for (o, v) in o[t..t + n].iter_mut().zip(row) {
                        *o += v;
                    }
                } else if last == 0 {
                    o[t] += row.iter().sum::<f32>();
                } else {
                    for (j, v) in row.iter().enumerate() {
                        o[t + j * last] += v;
                    }
                }
                let mut off = [t];
                advance(&mut idx, dims, r.saturating_sub(1), &mut off, [out_strides]);
                t = off[0];
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

/// One float matmul of a batch: `o = alpha · a·b` (`b` as `[n, k]` when `d.b_t`).
fn matmul_f32(k: &KernelSet, d: &MatMulDims, a: &[f32], b: &[f32], o: &mut [f32]) {
    if d.b_t {
        (k.f32_gemm)(d.m, d.k, d.n, a, b, &[], Act::None, o);
    } else {
        (k.f32_matmul)(d.m, d.k, d.n, a, b, o);
    }
    if d.alpha != 1.0 {
        o.iter_mut().for_each(|v| *v *= d.alpha);
    }
}

/// Rows per softmax kernel call (the AVX-512 kernel works on four at once).
const SOFTMAX_GROUP: usize = 4;

/// `k.softmax_row` over the rows of `n` in `x`, in calls of [`SOFTMAX_GROUP`] rows; row `r` of
/// `x` gets the mask `mask_of(r)` (empty for none).
fn softmax_rows<'m>(
    k: &KernelSet,
    x: &mut [f32],
    n: usize,
    alpha: f32,
    mask_of: impl Fn(usize) -> &'m [f32],
) {
    if n == 0 {
        return;
    }
    for (g, xs) in x.chunks_mut(SOFTMAX_GROUP * n).enumerate() {
        let rows = xs.len() / n;
        let masks: [&[f32]; SOFTMAX_GROUP] =
            core::array::from_fn(|j| if j < rows { mask_of(g * SOFTMAX_GROUP + j) } else { &[] });
        (k.softmax_row)(xs, n, &masks[..rows], alpha);
    }
}

/// The `n` mask values of softmax row `r` (empty without a mask): the mask broadcast along the
/// leading axes, row `r` being multi-index `i` over `rows` (validated to lie inside the mask).
fn mask_row<'m>(
    mk: &'m [f32],
    r: usize,
    n: usize,
    rank: usize,
    rows: &Dims,
    mstrides: &Dims,
) -> &'m [f32] {
    if mk.is_empty() {
        return mk;
    }
    let (mut rest, mut off) = (r, 0);
    for d in (0..rank).rev() {
        off += rest % rows[d] * mstrides[d];
        rest /= rows[d];
    }
    &mk[off * n..off * n + n]
}

/// Matrix `i` (`rows × cols`) of an operand laid out by `l`: read in place when dense, else its
/// rows copied to the front of `buf`; with the rest of `buf`.
fn matrix<'b>(
    x: &'b [f32],
    l: &Strides,
    i: usize,
    rows: usize,
    cols: usize,
    buf: &'b mut [f32],
) -> (&'b [f32], &'b mut [f32]) {
    if l.is_dense() {
        return (&x[l.base(i)..], buf);
    }
    let (dst, rest) = buf.split_at_mut(rows * cols);
    for (r, dr) in dst.chunks_exact_mut(cols).enumerate() {
        let s = l.base(i) + r * l.row;
        dr.copy_from_slice(&x[s..s + cols]);
    }
    (dst, rest)
}

/// Work on a row range `r0..r1`, run by [`split_rows`].
type RowTask<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// Elements per parallel block of element-wise ops.
const PAR_BLOCK: usize = 4096;

/// A binary op's broadcasting geometry.
struct Bin<'g> {
    kind: BinaryKind,
    rank: usize,
    od: &'g [usize; MAX_RANK],
    sa: &'g [usize; MAX_RANK],
    sb: &'g [usize; MAX_RANK],
    fast: BinFast,
}

/// [`binary`] spread over the threads in blocks of whole repeats of the broadcast operand;
/// the general broadcast stays on one thread.
fn binary_par<T: Arith + Send + Sync>(par: &dyn Parallel, a: &[T], b: &[T], o: &mut [T], g: &Bin) {
    let len = o.len();
    let unit = match g.fast {
        BinFast::Same | BinFast::AScalar | BinFast::BScalar => 1,
        BinFast::BSuffix(l) | BinFast::ASuffix(l) => l.max(1),
        BinFast::General => 0,
    };
    if unit == 0 || len < 4 * PAR_BLOCK || par.threads() == 1 {
        binary(a, b, o, g.kind, g.rank, g.od, g.sa, g.sb, g.fast);
        return;
    }
    // Blocks of whole repeats of the broadcast operand: that operand is passed whole.
    let block = PAR_BLOCK.div_ceil(unit) * unit;
    let (aw, bw) = match g.fast {
        BinFast::Same => (true, true),
        BinFast::BScalar | BinFast::BSuffix(_) => (true, false),
        _ => (false, true),
    };
    split_rows_mut(par, o, 1, 2 * block, block, &|e0, e1, os| {
        let (ap, bp) = (if aw { &a[e0..e1] } else { a }, if bw { &b[e0..e1] } else { b });
        binary(ap, bp, os, g.kind, g.rank, g.od, g.sa, g.sb, g.fast);
    });
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
                let mut off = [ia, ib];
                advance(&mut idx, od, rank - 1, &mut off, [sa, sb]);
                [ia, ib] = off;
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
/// output axes that stay contiguous in the source are copied as one run; the runs are split
/// over the threads (each task starts its odometer at its first run).
fn transpose(
    par: &dyn Parallel,
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
    if st[rank - 1] == 0 && run == 1 {
        // Broadcast along the last axis: each output row repeats one source element.
        let (mut idx, mut s) = ([0usize; MAX_RANK], 0usize);
        let row = od[rank - 1] * elem;
        for chunk in out.chunks_exact_mut(row) {
            let v = &src[s * elem..s * elem + elem];
            if !(fill::<u32>(chunk, v) || fill::<u64>(chunk, v)) {
                for c in chunk.chunks_exact_mut(elem) {
                    c.copy_from_slice(v);
                }
            }
            let mut off = [s];
            advance(&mut idx, od, rank - 1, &mut off, [st]);
            s = off[0];
        }
        return;
    }
    // At least 32 KiB of output per task (smaller copies cost less than a hand-off).
    let min_runs = (32 * 1024 / bytes).max(1);
    split_rows_mut(par, out, bytes, min_runs, 1, &|c0, _, os| {
        // The odometer at run c0 (axes 0..r, the last fastest) and its source offset.
        let (mut idx, mut s, mut rest) = ([0usize; MAX_RANK], 0usize, c0);
        for d in (0..r).rev() {
            idx[d] = rest % od[d];
            rest /= od[d];
            s += idx[d] * st[d];
        }
        for chunk in os.chunks_exact_mut(bytes) {
            chunk.copy_from_slice(&src[s * elem..s * elem + bytes]);
            let mut off = [s];
            advance(&mut idx, od, r, &mut off, [st]);
            s = off[0];
        }
    });
}

/// Advances the odometer `idx` over axes `0..upto` of `dims` (the last of them fastest), moving
/// each running offset `off[i]` by its strides `st[i]`.
#[inline(always)]
fn advance<const N: usize>(
    idx: &mut [usize; MAX_RANK],
    dims: &[usize; MAX_RANK],
    upto: usize,
    off: &mut [usize; N],
    st: [&[usize; MAX_RANK]; N],
) {
    let mut d = upto;
    while d > 0 {
        d -= 1;
        idx[d] += 1;
        for (o, s) in off.iter_mut().zip(&st) {
            *o += s[d];
        }
        if idx[d] < dims[d] {
            return;
        }
        for (o, s) in off.iter_mut().zip(&st) {
            *o -= s[d] * dims[d];
        }
        idx[d] = 0;
    }
}

/// Fills `out` with copies of the one element `v` when both are `T`-sized and aligned.
fn fill<T: bytemuck::Pod>(out: &mut [u8], v: &[u8]) -> bool {
    match (bytemuck::try_cast_slice_mut::<u8, T>(out), bytemuck::try_pod_read_unaligned::<T>(v)) {
        (Ok(words), Ok(x)) => {
            words.fill(x);
            true
        }
        _ => false,
    }
}

/// `task(first row, end row, the block's u8 codes, its output rows)`: one row block's work.
type QuantTask<'t> = dyn Fn(usize, usize, &mut [u8], &mut [f32]) + Sync + 't;

/// `gemm(rows, u8 codes, lda, zero point, output rows)`: the integer GEMM of one row block.
type RowGemm<'g> = dyn Fn(usize, &[u8], usize, i32, &mut [f32]) + Sync + 'g;

/// The f32 input of an integer Linear op with its static quantization: each task quantizes its
/// own rows into the scratch (u8 codes at row stride `k4(k)`) and multiplies them right away.
/// On the CPU schedule ([`super::Handoff`]) the input may already be those codes, and the
/// output may go out as the next linear's codes.
struct QuantIn<'a> {
    /// The f32 input (empty when `codes` holds it).
    x: &'a [f32],
    /// The input as u8 codes, rows `k4(k)` bytes apart (empty unless handed over).
    codes: &'a [u8],
    mult: &'a [f32],
    m: usize,
    k: usize,
    inv_scale: f32,
    /// Zero point of the u8 codes the kernels take (the file's i8 zero point + 128).
    zp: i32,
    /// Quantization of the output for the next linear: scale, multipliers, u8 zero point.
    out_q: Option<(f32, &'a [f32], i32)>,
    kernels: &'a KernelSet,
}

impl<'a> QuantIn<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        io: &'a Io<'_>,
        kernels: &'a KernelSet,
        x: u32,
        mult: u32,
        m: usize,
        k: usize,
        inv_scale: f32,
        zp: i32,
        hand: &super::Handoff,
    ) -> Result<Self, Error> {
        let mults = |r: u32| -> Result<&'a [f32], Error> {
            if r == REF_NONE {
                Ok(&[])
            } else {
                cast(io.bytes(r))
            }
        };
        let (xf, codes): (&[f32], &[u8]) = if hand.x_codes {
            let c = io.bytes(x);
            if c.len() < m * k4(k) {
                return Err(crate::error::corrupt!("handed-over codes shorter than {m} rows"));
            }
            (&[], c)
        } else {
            (cast(io.bytes(x))?, &[])
        };
        let out_q = match &hand.out_q {
            Some(q) => Some((q.inv_scale, mults(q.mult)?, q.zp + 128)),
            None => None,
        };
        Ok(QuantIn {
            x: xf,
            codes,
            mult: mults(mult)?,
            m,
            k,
            inv_scale,
            zp: zp + 128,
            out_q,
            kernels,
        })
    }

    /// Runs `task(r0, r1, codes, out_rows)` on row blocks of `out` (`n` per row), spread over
    /// `par`'s threads; `codes` is the block's part of the scratch (rows at stride `k4(k)`).
    fn blocks(
        &self,
        par: &dyn Parallel,
        scratch: &mut [u8],
        out: &mut [f32],
        n: usize,
        task: &QuantTask<'_>,
    ) {
        let lda = k4(self.k);
        let q = SharedMut(scratch[..self.m * lda].as_mut_ptr());
        split_rows_mut(par, &mut out[..self.m * n], n, 16, 8, &|r0, r1, os| {
            // SAFETY: tasks get disjoint row ranges r0..r1 ≤ m of the scratch's m·lda bytes,
            // exclusively borrowed by this op.
            let qs = unsafe { q.slice(r0 * lda, (r1 - r0) * lda) };
            task(r0, r1, qs, os);
        });
    }

    /// The u8 codes of rows `r0..r1` (rows `k4(k)` apart): handed over, or quantized into `qs`
    /// with the static scale (or channel multipliers).
    fn codes<'q>(&'q self, r0: usize, r1: usize, qs: &'q mut [u8]) -> &'q [u8] {
        let (k, lda) = (self.k, k4(self.k));
        if !self.codes.is_empty() {
            return &self.codes[r0 * lda..r1 * lda];
        }
        let x = &self.x[r0 * k..r1 * k];
        (self.kernels.quantize_u8)(x, r1 - r0, k, k, lda, self.inv_scale, self.mult, self.zp, qs);
        qs
    }

    /// Calls `gemm(rows, codes, lda, zp, out_rows)` on each row block's codes. `out` is the
    /// f32 output (`n` per row), or, handing over, the next linear's codes (rows `k4(n)` bytes
    /// apart): each task then runs [`HANDOFF_ROWS`] rows at a time into its f32 tile (a slot
    /// of the i32 scratch) and quantizes them, as the next linear would, into their rows.
    fn run(
        &self,
        par: &dyn Parallel,
        scratch: &mut Scratch,
        out: &mut [u8],
        n: usize,
        gemm: &RowGemm<'_>,
    ) -> Result<(), Error> {
        let lda = k4(self.k);
        let Some((inv, mult, zp)) = self.out_q else {
            self.blocks(par, scratch.u8s, cast_mut(out)?, n, &|r0, r1, qs, os| {
                gemm(r1 - r0, self.codes(r0, r1, qs), lda, self.zp, os);
            });
            return Ok(());
        };
        let (m, ldq, per) = (self.m, k4(n), HANDOFF_ROWS * n);
        let tasks = par.threads().min(scratch.slots).min(m / 16).max(1);
        if out.len() < m * ldq || scratch.i32s.len() < tasks * per || scratch.u8s.len() < m * lda {
            return Err(crate::error::corrupt!("handed-over output or scratch too short"));
        }
        let (q, o) = (SharedMut(scratch.u8s.as_mut_ptr()), SharedMut(out.as_mut_ptr()));
        let tiles = SharedMut(scratch.i32s.as_mut_ptr() as *mut f32);
        split_tasks(par, m, tasks, 8, &|slot, r0, r1| {
            // SAFETY: tasks get disjoint row ranges r0..r1 ≤ m of the scratch's m·lda bytes and
            // of the output's m·ldq (both checked above), and slot < tasks ≤ scratch.slots
            // their own `per` tile elements (i32 and f32 have one size and alignment).
            let (qs, os, tile) = unsafe {
                (
                    q.slice(r0 * lda, (r1 - r0) * lda),
                    o.slice(r0 * ldq, (r1 - r0) * ldq),
                    tiles.slice(slot * per, per),
                )
            };
            let a = self.codes(r0, r1, qs);
            let mut b0 = 0;
            while b0 < r1 - r0 {
                let rb = (r1 - r0 - b0).min(HANDOFF_ROWS);
                gemm(rb, &a[b0 * lda..], lda, self.zp, &mut tile[..rb * n]);
                (self.kernels.quantize_u8)(
                    &tile[..rb * n],
                    rb,
                    n,
                    n,
                    ldq,
                    inv,
                    mult,
                    zp,
                    &mut os[b0 * ldq..],
                );
                b0 += rb;
            }
        });
        Ok(())
    }

    /// As [`QuantIn::run`], with each row quantized symmetrically by its own scale
    /// (`max |x| / 127`, codes around 128, kept in `row_scale`, one per row) and `gemm` run
    /// without bias or activation; each output row is then multiplied by its row's scale, `bias`
    /// added and `act` applied.
    #[allow(clippy::too_many_arguments)]
    fn run_dynamic(
        &self,
        par: &dyn Parallel,
        scratch: &mut [u8],
        row_scale: &mut [f32],
        out: &mut [f32],
        n: usize,
        bias: &[f32],
        act: Act,
        gemm: &RowGemm<'_>,
    ) {
        let (k, lda) = (self.k, k4(self.k));
        let rs = SharedMut(row_scale[..self.m].as_mut_ptr());
        self.blocks(par, scratch, out, n, &|r0, r1, qs, os| {
            // SAFETY: disjoint row ranges r0..r1 ≤ m of the m row scales, as for the codes.
            let rs = unsafe { rs.slice(r0, r1 - r0) };
            let x = &self.x[r0 * k..r1 * k];
            for ((xr, qr), s) in x.chunks_exact(k).zip(qs.chunks_mut(lda)).zip(rs.iter_mut()) {
                let amax = xr.iter().fold(0f32, |a, v| a.max(v.abs()));
                *s = if amax > 0.0 && amax.is_finite() { amax / 127.0 } else { 0.0 };
                let inv = if *s > 0.0 { 1.0 / *s } else { 0.0 };
                (self.kernels.quantize_u8)(xr, 1, k, k, lda, inv, &[], 128, qr);
            }
            gemm(r1 - r0, qs, lda, 128, os);
            for (or, s) in os.chunks_exact_mut(n).zip(rs.iter()) {
                or.iter_mut().zip(bias).for_each(|(o, b)| *o = *o * s + b);
                act.apply_slice(or);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    /// The permuted copy split over threads gives the bytes of the one-thread copy and of the
    /// definition, for runs of one element and of many, and output sizes that do not split
    /// evenly.
    #[test]
    fn transpose_on_threads_matches_the_definition() {
        let pool = Pool::new(3).unwrap();
        // [a, b, c, d] -> permutation, f32 elements.
        for (dims, perm) in [
            ([3usize, 67, 12, 32], [0usize, 2, 1, 3]),
            ([2, 130, 7, 5], [0, 3, 2, 1]),
            ([1, 300, 33, 1], [2, 1, 0, 3]),
        ] {
            let n: usize = dims.iter().product();
            let src: Vec<u8> = (0..n as u32).flat_map(|v| v.to_le_bytes()).collect();
            let mut sst = [0usize; 4];
            let mut acc = 1;
            for d in (0..4).rev() {
                sst[d] = acc;
                acc *= dims[d];
            }
            let (mut od, mut st) = ([0usize; MAX_RANK], [0usize; MAX_RANK]);
            for (o, &p) in perm.iter().enumerate() {
                od[o] = dims[p];
                st[o] = sst[p];
            }
            let mut want = Vec::with_capacity(n * 4);
            for i0 in 0..od[0] {
                for i1 in 0..od[1] {
                    for i2 in 0..od[2] {
                        for i3 in 0..od[3] {
                            let s = i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3];
                            want.extend_from_slice(&src[4 * s..4 * s + 4]);
                        }
                    }
                }
            }
            for par in [&crate::par::Serial as &dyn Parallel, &pool] {
                let mut got = vec![0u8; n * 4];
                transpose(par, &src, &mut got, 4, 4, &od, &st);
                assert!(got == want, "{dims:?} {perm:?} on {} threads", par.threads());
            }
        }
    }
}
