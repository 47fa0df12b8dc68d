//! Ops of a plan: validation at load ([`prepare`]) and execution ([`exec`]).
//!
//! `prepare` turns an [`OpRecord`] into an [`Op`] with every size the executor needs derived and
//! checked against the shapes of its inputs and output, so execution only indexes in bounds.

pub(crate) mod exec;
pub(crate) mod fuse;

use crate::format::*;
use ember_kernels::pack::{k4, k4n16_len, PANEL};
use ember_kernels::Act;

/// Dtype and shape of a referenced value or tensor, as seen by the validator.
pub(crate) struct RefInfo<'a> {
    pub dtype: DType,
    pub dims: &'a [usize],
    pub is_tensor: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BinaryKind {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum UnaryKind {
    Relu = 0,
    Sigmoid = 1,
    Tanh = 2,
    Erf = 3,
    Sqrt = 4,
    Clip = 5,
    Pow = 6,
    Gelu = 7,
    GeluTanh = 8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ReduceKind {
    Sum = 0,
    Mean = 1,
}

/// Up to [`MAX_RANK`] dims/strides without allocation.
pub(crate) type Dims = [usize; MAX_RANK];

#[derive(Clone, Debug)]
pub(crate) enum Op {
    LinearF32 {
        x: u32,
        w: u32,
        bias: u32,
        m: usize,
        k: usize,
        n: usize,
        act: Act,
        /// Weights stored in f16 (OpCode::LinearF16), widened per panel at run time.
        w_f16: bool,
    },
    LinearI8 {
        x: u32,
        w: u32,
        w_sum: u32,
        scale: u32,
        bias: u32,
        mult: u32,
        m: usize,
        k: usize,
        n: usize,
        act: Act,
        inv_scale: f32,
        zp: i32,
        hand: Handoff,
    },
    LinearI4 {
        x: u32,
        w: u32,
        gsum: u32,
        gscale: u32,
        bias: u32,
        mult: u32,
        m: usize,
        k: usize,
        n: usize,
        act: Act,
        inv_scale: f32,
        zp: i32,
        group: usize,
        /// `1 / inv_scale`, the kernels' dequantization factor (computed once at load).
        x_scale: f32,
        hand: Handoff,
    },
    LinearI4M {
        x: u32,
        w: u32,
        gmul: u32,
        w_sum: u32,
        scale: u32,
        bias: u32,
        mult: u32,
        m: usize,
        k: usize,
        n: usize,
        act: Act,
        inv_scale: f32,
        zp: i32,
        group: usize,
        hand: Handoff,
    },
    MatMulF32 {
        a: u32,
        b: u32,
        d: MatMulDims,
    },
    Binary {
        a: u32,
        b: u32,
        kind: BinaryKind,
        dtype: DType,
        rank: usize,
        out: Dims,
        sa: Dims,
        sb: Dims,
        fast: BinFast,
    },
    MatMulI8 {
        a: u32,
        b: u32,
        d: MatMulDims,
        a_inv: f32,
        a_zp: i32,
        b_inv: f32,
        out_scale: f32,
        /// Where each matrix of `a`, `b` and the output lies: dense as prepared; the CPU
        /// schedule ([`fuse`]) reads and writes attention heads in place through them.
        la: Strides,
        lb: Strides,
        lo: Strides,
    },
    /// Float attention of the CPU schedule ([`fuse`]): per head, the scores `q·kᵀ` (or `q·k`),
    /// the softmax of the plan's Softmax op (with its mask) and the product with `v`, one head
    /// at a time in a task's scratch slot, so the scores never reach the arena. The same kernel
    /// calls on the same operands as the three ops it replaces (the same bits).
    AttentionF32 {
        q: u32,
        k: u32,
        v: u32,
        /// The scores MatMul (`a` = q, `b` = k) and the P·V MatMul (`b` = v).
        qk: MatMulDims,
        pv: MatMulDims,
        lq: Strides,
        lk: Strides,
        lv: Strides,
        lo: Strides,
        /// The Softmax's mask and its broadcast (see [`Op::Softmax`]), rows over `[batch, m]`.
        mask: u32,
        rank: usize,
        rows: Dims,
        mstrides: Dims,
    },
    Unary {
        x: u32,
        kind: UnaryKind,
        a: f32,
        b: f32,
    },
    LayerNorm {
        x: u32,
        scale: u32,
        bias: u32,
        rows: usize,
        d: usize,
        eps: f32,
    },
    /// CPU schedule only ([`fuse`]): a LayerNorm of `a + b` (two f32 `[rows, d]` operands, the
    /// residual add of a transformer block) with the sum formed row by row in the task's
    /// scratch slot instead of in the arena.
    AddLayerNorm {
        a: u32,
        b: u32,
        scale: u32,
        bias: u32,
        rows: usize,
        d: usize,
        eps: f32,
    },
    Expand {
        x: u32,
        elem: usize,
        rank: usize,
        out: Dims,
        strides: Dims,
    },
    Softmax {
        x: u32,
        outer: usize,
        n: usize,
        inner: usize,
        /// Additive mask (REF_NONE when absent), broadcast along the leading axes: row `r`
        /// (multi-index `i` over `rows`) reads the mask row at `Σ i_d·mstrides[d]`.
        mask: u32,
        rank: usize,
        rows: Dims,
        mstrides: Dims,
    },
    Gather {
        data: u32,
        idx: u32,
        idx64: bool,
        outer: usize,
        dim: usize,
        inner_bytes: usize,
        n_idx: usize,
    },
    GatherRowsI8 {
        table: u32,
        scale: u32,
        bias: u32,
        idx: u32,
        idx64: bool,
        rows: usize,
        d: usize,
        n_idx: usize,
    },
    GatherRowsI4 {
        table: u32,
        scale: u32,
        bias: u32,
        idx: u32,
        idx64: bool,
        rows: usize,
        d: usize,
        group: usize,
        n_idx: usize,
    },
    Concat {
        inputs: [u32; OP_MAX_INPUTS],
        n: usize,
        outer: usize,
        chunks: [usize; OP_MAX_INPUTS],
    },
    Copy {
        x: u32,
    },
    Transpose {
        x: u32,
        elem: usize,
        rank: usize,
        out: Dims,
        src_strides: Dims,
    },
    Reduce {
        x: u32,
        mean: bool,
        rank: usize,
        dims: Dims,
        out_strides: Dims,
        count: usize,
    },
    Cast {
        x: u32,
        from: DType,
        to: DType,
    },
}

/// How a statically quantized linear hands its activations over on the CPU schedule: the
/// codes of the linear it feeds are written by it instead of an f32 tensor ([`fuse`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Handoff {
    /// `x` holds the u8 codes the linear before wrote (rows `k4(k)` bytes apart), not f32.
    pub x_codes: bool,
    /// The output is written as the next linear's u8 codes (rows `k4(n)` bytes apart),
    /// quantized as that linear would quantize it.
    pub out_q: Option<OutQuant>,
}

/// The activation quantization of the linear a [`Handoff`] writes for: its scale, channel
/// multipliers (`REF_NONE` when absent) and zero point, as in [`Op::LinearI8`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct OutQuant {
    pub inv_scale: f32,
    pub mult: u32,
    pub zp: i32,
}

/// Rows a handing-over linear computes in f32 at a time before quantizing them (its tile in
/// a task's scratch slot is this many output rows).
pub(crate) const HANDOFF_ROWS: usize = 16;

/// Shape of a (batched) activation matmul: `batch` products of [m,k] x [k,n]; a batch stride of 0
/// broadcasts that operand.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatMulDims {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub a_bs: usize,
    pub b_bs: usize,
    /// `b` is stored transposed, `[B?, N, K]`.
    pub b_t: bool,
    /// Output multiplier (1 when absent).
    pub alpha: f32,
}

/// Where matrix `i` of a batched matmul operand starts and how far apart its rows are (in
/// elements). Dense: matrix `i` at `i·outer`, rows `row` apart. Heads in place: the operand is
/// a `[B0, S, heads, D]` tensor read as `B0·heads` matrices `[S, D]`, matrix `b0·heads + h` at
/// `b0·outer + h·inner` with rows `row = heads·D` apart (what a Reshape and a Transpose of the
/// heads to the front would have copied out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Strides {
    pub heads: usize,
    pub outer: usize,
    pub inner: usize,
    pub row: usize,
}

impl Strides {
    pub const fn dense(batch_stride: usize, row: usize) -> Strides {
        Strides { heads: 1, outer: batch_stride, inner: 0, row }
    }

    pub const fn heads(heads: usize, seq: usize, d: usize) -> Strides {
        Strides { heads, outer: seq * heads * d, inner: d, row: heads * d }
    }

    /// Element offset of matrix `i`.
    #[inline]
    pub const fn base(&self, i: usize) -> usize {
        i / self.heads * self.outer + i % self.heads * self.inner
    }

    pub const fn is_dense(&self) -> bool {
        self.heads == 1
    }

    /// Elements from the operand's start to the end of matrix `batch - 1`'s last row, for
    /// matrices of `rows × cols` (`batch > 0`).
    pub fn extent(&self, batch: usize, rows: usize, cols: usize) -> usize {
        self.base(batch - 1) + ember_kernels::pack::strided_len(rows, cols, self.row)
    }
}

/// Broadcast shortcuts for [`Op::Binary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinFast {
    /// Both operands have the output's shape.
    Same,
    /// `b` repeats along the leading axes (its shape is a suffix of the output's).
    BSuffix(usize),
    /// `a` repeats along the leading axes.
    ASuffix(usize),
    /// `b` is one element.
    BScalar,
    /// `a` is one element.
    AScalar,
    General,
}

/// Weight rows LinearF16 widens to f32 at a time.
pub(crate) const F16_PANEL: usize = 16;

/// A statically quantized linear as the hand-over sees it ([`static_linear`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StaticLinear {
    /// The input value.
    pub x: u32,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// How it quantizes its input.
    pub quant: OutQuant,
    pub hand: Handoff,
}

/// The quantized input of a statically quantized linear, when `op` is one (LinearI8 with a
/// calibrated scale, LinearI4, LinearI4M).
pub(crate) fn static_linear(op: &Op) -> Option<StaticLinear> {
    match op {
        Op::LinearI8 { x, m, k, n, inv_scale, mult, zp, hand, .. } if *inv_scale != 0.0 => {
            let quant = OutQuant { inv_scale: *inv_scale, mult: *mult, zp: *zp };
            Some(StaticLinear { x: *x, m: *m, k: *k, n: *n, quant, hand: *hand })
        }
        Op::LinearI4 { x, m, k, n, inv_scale, mult, zp, hand, .. }
        | Op::LinearI4M { x, m, k, n, inv_scale, mult, zp, hand, .. } => {
            let quant = OutQuant { inv_scale: *inv_scale, mult: *mult, zp: *zp };
            Some(StaticLinear { x: *x, m: *m, k: *k, n: *n, quant, hand: *hand })
        }
        _ => None,
    }
}

/// The input of a linear (any weight form).
pub(crate) fn linear_x_mut(op: &mut Op) -> Option<&mut u32> {
    match op {
        Op::LinearF32 { x, .. }
        | Op::LinearI8 { x, .. }
        | Op::LinearI4 { x, .. }
        | Op::LinearI4M { x, .. } => Some(x),
        _ => None,
    }
}

/// The hand-over of a quantized linear.
pub(crate) fn handoff_mut(op: &mut Op) -> Option<&mut Handoff> {
    match op {
        Op::LinearI8 { hand, .. } | Op::LinearI4 { hand, .. } | Op::LinearI4M { hand, .. } => {
            Some(hand)
        }
        _ => None,
    }
}

impl Op {
    /// Scratch this op needs: (i8 elements, i32 elements, f32 elements).
    pub fn scratch(&self) -> (usize, usize, usize) {
        match self {
            // u8 activations at row stride k4(k)
            // (dynamic LinearI8: and a zero bias for the kernel's epilogue, and the row scales)
            Op::LinearI8 { m, k, n, inv_scale, .. } if *inv_scale == 0.0 => (m * k4(*k), 0, n + m),
            // (handing over: a tile of HANDOFF_ROWS f32 output rows per task, in the i32s)
            Op::LinearI8 { m, k, n, hand, .. }
            | Op::LinearI4 { m, k, n, hand, .. }
            | Op::LinearI4M { m, k, n, hand, .. } => {
                let tile = if hand.out_q.is_some() { HANDOFF_ROWS * n } else { 0 };
                (m * k4(*k), tile, 0)
            }
            // u8 a, packed quantized b; b's column sums; per-column scale and zero bias
            // one panel of weights widened to f32, and its [m, 16] output
            Op::LinearF32 { m, k, w_f16: true, .. } => (0, 0, F16_PANEL * k + m * F16_PANEL),
            // (and, when the output goes to heads in place, the [m, n] output tile in i32s)
            // (and, with `a` as heads in place, all of `a` quantized, shared, in the f32s)
            Op::MatMulI8 { d, la, lo, .. } => {
                let tile = if lo.is_dense() { 0 } else { d.m * d.n };
                let a_all = if la.is_dense() { 0 } else { (d.batch * d.m * d.k).div_ceil(4) };
                (d.m * k4(d.k) + k4n16_len(d.n, d.k), d.n + tile, 2 * d.n + a_all)
            }
            // Per slot, as f32 in the i32s: q, k and v gathered when not dense, the scores,
            // and the output tile when the output goes to heads in place.
            Op::AttentionF32 { qk, pv, lq, lk, lv, lo, .. } => {
                let gathered = |l: &Strides, len: usize| if l.is_dense() { 0 } else { len };
                let per = gathered(lq, qk.m * qk.k)
                    + gathered(lk, qk.k * qk.n)
                    + gathered(lv, pv.k * pv.n)
                    + qk.m * qk.n
                    + gathered(lo, pv.m * pv.n);
                (0, per, 0)
            }
            // Per slot, as f32 in the i32s: the row of a + b.
            Op::AddLayerNorm { d, .. } => (0, *d, 0),
            _ => (0, 0, 0),
        }
    }
}

fn numel(d: &[usize]) -> usize {
    d.iter().product()
}

macro_rules! ensure {
    ($c:expr, $($arg:tt)*) => { if !$c { return Err(alloc::format!($($arg)*)); } };
}

/// Validates one op record; the error message is wrapped with the plan and op index by the caller.
pub(crate) fn prepare<'a>(
    r: &OpRecord,
    info: &dyn Fn(u32) -> RefInfo<'a>,
) -> Result<Op, alloc::string::String> {
    let code =
        OpCode::from_u16(r.opcode).ok_or_else(|| alloc::format!("unknown opcode {}", r.opcode))?;
    let n_in = r.n_inputs as usize;
    let ins = &r.inputs[..n_in];
    let out = info(r.outputs[0]);
    ensure!(!out.is_tensor, "output must be an arena value");
    let p = &r.params;
    let arity = |want: usize| -> Result<(), alloc::string::String> {
        ensure!(n_in == want, "expects {want} inputs, has {n_in}");
        for (j, x) in ins.iter().enumerate() {
            ensure!(
                *x != REF_NONE
                    || (matches!(code, OpCode::LinearF32 | OpCode::LinearF16) && j == 2)
                    || (matches!(code, OpCode::LinearI8 | OpCode::LinearI4) && j == 5)
                    || (code == OpCode::LinearI4M && j == 6),
                "input #{j} is missing"
            );
        }
        Ok(())
    };
    let need = |x: u32, dt: &[DType], what: &str| -> Result<RefInfo<'a>, alloc::string::String> {
        let i = info(x);
        ensure!(
            dt.contains(&i.dtype),
            "{what} has dtype {}, expected one of {:?}",
            i.dtype.name(),
            dt
        );
        Ok(i)
    };
    let f32_only = [DType::F32];
    // Shared by LinearI8 and the INT4 linears: the optional channel multipliers (input 5, or 6
    // for LinearI4M), the activation scale and zero point (params 4 and 5), and the f32 [m, n]
    // output.
    let mult_ix = if code == OpCode::LinearI4M { 6 } else { 5 };
    let linear_quant =
        |m: usize, k: usize, n: usize| -> Result<(f32, i32), alloc::string::String> {
            if ins[mult_ix] != REF_NONE {
                let mlt = need(ins[mult_ix], &f32_only, "channel multipliers")?;
                ensure!(mlt.dims == [k], "channel multipliers are {:?}, expected [{k}]", mlt.dims);
            }
            let inv_scale = f32::from_bits(p[4]);
            let zp = p[5] as i32;
            if code == OpCode::LinearI8 && p[4] == 0 {
                // Dynamic per-row activation quantization (symmetric, scale from each row).
                ensure!(zp == 0, "dynamic activation quantization needs zero point 0, not {zp}");
                ensure!(
                    ins[5] == REF_NONE,
                    "dynamic activation quantization takes no channel multipliers"
                );
            } else {
                ensure!(
                    inv_scale.is_finite() && inv_scale > 0.0 && (1.0 / inv_scale).is_finite(),
                    "activation scale {inv_scale} is not positive"
                );
            }
            ensure!((-128..=127).contains(&zp), "zero point {zp} outside i8");
            ensure!(
                out.dtype == DType::F32 && numel(out.dims) == m * n,
                "output must be f32 with {m}x{n} elements"
            );
            Ok((inv_scale, zp))
        };
    Ok(match code {
        OpCode::LinearF32 | OpCode::LinearF16 | OpCode::LinearI8 => {
            let (m, k, n) = (p[0] as usize, p[1] as usize, p[2] as usize);
            let act =
                Act::from_u32(p[3]).ok_or_else(|| alloc::format!("unknown activation {}", p[3]))?;
            ensure!(m > 0 && k > 0 && n > 0, "empty GEMM {m}x{k}x{n}");
            let x = need(ins.first().copied().unwrap_or(REF_NONE), &f32_only, "x").ok();
            if code != OpCode::LinearI8 {
                arity(3)?;
                let x = x.ok_or("x must be f32")?;
                let f16 = code == OpCode::LinearF16;
                let w = need(ins[1], if f16 { &[DType::F16] } else { &f32_only }, "weights")?;
                ensure!(
                    numel(x.dims) == m * k,
                    "x has {} elements, expected {m}x{k}",
                    numel(x.dims)
                );
                ensure!(w.dims == [n, k], "weights are {:?}, expected [{n}, {k}]", w.dims);
                if ins[2] != REF_NONE {
                    let b = need(ins[2], &f32_only, "bias")?;
                    ensure!(b.dims == [n], "bias is {:?}, expected [{n}]", b.dims);
                }
                ensure!(
                    out.dtype == DType::F32 && numel(out.dims) == m * n,
                    "output must be f32 with {m}x{n} elements"
                );
                let (x, w, bias) = (ins[0], ins[1], ins[2]);
                Op::LinearF32 { x, w, bias, m, k, n, act, w_f16: f16 }
            } else {
                arity(6)?;
                let x = x.ok_or("x must be f32")?;
                ensure!(k as u32 <= MAX_I8_K, "reduction depth {k} exceeds {MAX_I8_K}");
                ensure!(
                    numel(x.dims) == m * k,
                    "x has {} elements, expected {m}x{k}",
                    numel(x.dims)
                );
                ensure!(
                    p[6] == ember_kernels::pack::LAYOUT_K4N16,
                    "unknown weight layout {} (this runtime knows 1, K4N16)",
                    p[6]
                );
                let w = need(ins[1], &[DType::I8], "weights")?;
                let (panels, plen) = (n.div_ceil(PANEL), PANEL * k4(k));
                ensure!(
                    w.dims == [panels, plen],
                    "packed weights are {:?}, expected [{panels}, {plen}] for {n}x{k} in K4N16",
                    w.dims
                );
                for (j, dt, nm) in [
                    (2, DType::I32, "weight sums"),
                    (3, DType::F32, "scales"),
                    (4, DType::F32, "bias"),
                ] {
                    let t = need(ins[j], &[dt], nm)?;
                    ensure!(t.dims == [n], "{nm} are {:?}, expected [{n}]", t.dims);
                }
                let (inv_scale, zp) = linear_quant(m, k, n)?;
                Op::LinearI8 {
                    x: ins[0],
                    w: ins[1],
                    w_sum: ins[2],
                    scale: ins[3],
                    bias: ins[4],
                    mult: ins[5],
                    m,
                    k,
                    n,
                    act,
                    inv_scale,
                    zp,
                    hand: Handoff::default(),
                }
            }
        }
        OpCode::LinearI4 | OpCode::LinearI4M => {
            let with_mul = code == OpCode::LinearI4M;
            arity(if with_mul { 7 } else { 6 })?;
            let (m, k, n, group) = (p[0] as usize, p[1] as usize, p[2] as usize, p[7] as usize);
            let act =
                Act::from_u32(p[3]).ok_or_else(|| alloc::format!("unknown activation {}", p[3]))?;
            ensure!(m > 0 && k > 0 && n > 0, "empty GEMM {m}x{k}x{n}");
            let x = need(ins[0], &f32_only, "x")?;
            ensure!(numel(x.dims) == m * k, "x has {} elements, expected {m}x{k}", numel(x.dims));
            ensure!(k as u32 <= MAX_I8_K, "reduction depth {k} exceeds {MAX_I8_K}");
            if with_mul {
                let max = ember_kernels::i4m::I4M_MAX_K;
                ensure!(k <= max, "reduction depth {k} exceeds {max} (INT4 with multipliers)");
            }
            ensure!(
                group.is_multiple_of(4) && (4..=256).contains(&group) && k.is_multiple_of(group),
                "group {group} must be a multiple of 4 in 4..=256 dividing K={k}"
            );
            ensure!(
                p[6] == ember_kernels::pack::LAYOUT_K4N16_I4,
                "unknown INT4 weight layout {} (this runtime knows 2, K4N16 INT4)",
                p[6]
            );
            let w = need(ins[1], &[DType::U8], "weights")?;
            let (panels, plen) = (n.div_ceil(PANEL), PANEL * k4(k) / 2);
            ensure!(
                w.dims == [panels, plen],
                "packed weights are {:?}, expected [{panels}, {plen}] for {n}x{k} in K4N16 INT4",
                w.dims
            );
            let side = PANEL * (k / group);
            let sides: &[(usize, DType, &str)] = if with_mul {
                &[(2, DType::U8, "group multipliers")]
            } else {
                &[(2, DType::I32, "group sums"), (3, DType::F16, "group scales")]
            };
            for &(j, dt, nm) in sides {
                let t = need(ins[j], &[dt], nm)?;
                ensure!(
                    t.dims == [panels, side],
                    "{nm} are {:?}, expected [{panels}, {side}]",
                    t.dims
                );
            }
            let columns: &[(usize, DType, &str)] = if with_mul {
                &[
                    (3, DType::I32, "weight sums"),
                    (4, DType::F32, "scales"),
                    (5, DType::F32, "bias"),
                ]
            } else {
                &[(4, DType::F32, "bias")]
            };
            for &(j, dt, nm) in columns {
                let t = need(ins[j], &[dt], nm)?;
                ensure!(t.dims == [n], "{nm} are {:?}, expected [{n}]", t.dims);
            }
            let (inv_scale, zp) = linear_quant(m, k, n)?;
            if with_mul {
                Op::LinearI4M {
                    x: ins[0],
                    w: ins[1],
                    gmul: ins[2],
                    w_sum: ins[3],
                    scale: ins[4],
                    bias: ins[5],
                    mult: ins[6],
                    m,
                    k,
                    n,
                    act,
                    inv_scale,
                    zp,
                    group,
                    hand: Handoff::default(),
                }
            } else {
                Op::LinearI4 {
                    x: ins[0],
                    w: ins[1],
                    gsum: ins[2],
                    gscale: ins[3],
                    bias: ins[4],
                    mult: ins[5],
                    m,
                    k,
                    n,
                    act,
                    inv_scale,
                    zp,
                    group,
                    x_scale: 1.0 / inv_scale,
                    hand: Handoff::default(),
                }
            }
        }
        OpCode::MatMulF32 | OpCode::MatMulI8 => {
            arity(2)?;
            let a = need(ins[0], &f32_only, "a")?;
            let b = need(ins[1], &f32_only, "b")?;
            let [batch, m, k, n, a_bs, b_bs] =
                [p[0], p[1], p[2], p[3], p[4], p[5]].map(|v| v as usize);
            ensure!(batch > 0 && m > 0 && k > 0 && n > 0, "empty matmul");
            ensure!(p[10] <= 1, "b layout flag {} is not 0 or 1", p[10]);
            let b_t = p[10] == 1;
            let alpha = if p[11] == 0 { 1.0 } else { f32::from_bits(p[11]) };
            ensure!(alpha.is_finite(), "output multiplier {alpha} is not finite");
            ensure!(
                code == OpCode::MatMulF32 || p[11] == 0,
                "MatMulI8 folds its multiplier into the output scale"
            );
            ensure!(a_bs == 0 || a_bs == m * k, "bad a batch stride {a_bs}");
            ensure!(b_bs == 0 || b_bs == k * n, "bad b batch stride {b_bs}");
            ensure!(
                numel(a.dims) == if a_bs == 0 { m * k } else { batch * m * k },
                "a has the wrong size"
            );
            ensure!(
                numel(b.dims) == if b_bs == 0 { k * n } else { batch * k * n },
                "b has the wrong size"
            );
            ensure!(
                out.dtype == DType::F32 && numel(out.dims) == batch * m * n,
                "output has the wrong size"
            );
            if code == OpCode::MatMulI8 {
                ensure!(k as u32 <= MAX_I8_K, "reduction depth {k} exceeds {MAX_I8_K}");
                let [a_inv, b_inv, out_scale] = [p[6], p[8], p[9]].map(f32::from_bits);
                let a_zp = p[7] as i32;
                for (v, nm) in [(a_inv, "a scale"), (b_inv, "b scale"), (out_scale, "output scale")]
                {
                    ensure!(v.is_finite() && v > 0.0, "{nm} {v} is not positive");
                }
                ensure!((-128..=127).contains(&a_zp), "zero point {a_zp} outside i8");
                Op::MatMulI8 {
                    a: ins[0],
                    b: ins[1],
                    d: MatMulDims { batch, m, k, n, a_bs, b_bs, b_t, alpha },
                    a_inv,
                    a_zp,
                    b_inv,
                    out_scale,
                    la: Strides::dense(a_bs, k),
                    lb: Strides::dense(b_bs, if b_t { k } else { n }),
                    lo: Strides::dense(m * n, n),
                }
            } else {
                let d = MatMulDims { batch, m, k, n, a_bs, b_bs, b_t, alpha };
                Op::MatMulF32 { a: ins[0], b: ins[1], d }
            }
        }
        OpCode::Binary => {
            arity(2)?;
            let kind = match p[0] {
                0 => BinaryKind::Add,
                1 => BinaryKind::Sub,
                2 => BinaryKind::Mul,
                3 => BinaryKind::Div,
                x => return Err(alloc::format!("unknown binary kind {x}")),
            };
            let a = need(ins[0], &[DType::F32, DType::I64], "a")?;
            let b = need(ins[1], &[a.dtype], "b")?;
            ensure!(out.dtype == a.dtype, "output dtype differs from inputs");
            let rank = out.dims.len();
            ensure!(
                a.dims.len() <= rank && b.dims.len() <= rank,
                "inputs have higher rank than output"
            );
            let mut od = [1usize; MAX_RANK];
            od[..rank].copy_from_slice(out.dims);
            let strides = |d: &[usize]| -> Result<Dims, alloc::string::String> {
                let mut s = [0usize; MAX_RANK];
                let off = rank - d.len();
                let mut acc = 1;
                for j in (0..d.len()).rev() {
                    ensure!(
                        d[j] == od[off + j] || d[j] == 1,
                        "shape {d:?} does not broadcast to {:?}",
                        out.dims
                    );
                    s[off + j] = if d[j] == 1 { 0 } else { acc };
                    acc *= d[j];
                }
                Ok(s)
            };
            let sa = strides(a.dims)?;
            let sb = strides(b.dims)?;
            // Leading 1s broadcast like absent axes: [1,1,128] repeats as [128] does.
            let suffix = |d: &[usize]| {
                let lead = d.iter().take_while(|v| **v == 1).count();
                let d = &d[lead..];
                d.len() <= rank && d == &out.dims[rank - d.len()..] && !d.is_empty() && numel(d) > 0
            };
            let fast = if a.dims == out.dims && b.dims == out.dims {
                BinFast::Same
            } else if a.dims == out.dims && numel(b.dims) == 1 {
                BinFast::BScalar
            } else if b.dims == out.dims && numel(a.dims) == 1 {
                BinFast::AScalar
            } else if a.dims == out.dims && suffix(b.dims) {
                BinFast::BSuffix(numel(b.dims))
            } else if b.dims == out.dims && suffix(a.dims) {
                BinFast::ASuffix(numel(a.dims))
            } else {
                BinFast::General
            };
            Op::Binary { a: ins[0], b: ins[1], kind, dtype: a.dtype, rank, out: od, sa, sb, fast }
        }
        OpCode::Unary => {
            arity(1)?;
            let kind = match p[0] {
                0 => UnaryKind::Relu,
                1 => UnaryKind::Sigmoid,
                2 => UnaryKind::Tanh,
                3 => UnaryKind::Erf,
                4 => UnaryKind::Sqrt,
                5 => UnaryKind::Clip,
                6 => UnaryKind::Pow,
                7 => UnaryKind::Gelu,
                8 => UnaryKind::GeluTanh,
                x => return Err(alloc::format!("unknown unary kind {x}")),
            };
            let (a, b) = (f32::from_bits(p[1]), f32::from_bits(p[2]));
            ensure!(kind != UnaryKind::Clip || a <= b, "clip bounds {a} > {b} (or NaN)");
            let x = need(ins[0], &f32_only, "x")?;
            ensure!(
                out.dtype == DType::F32 && numel(out.dims) == numel(x.dims),
                "output size differs"
            );
            Op::Unary { x: ins[0], kind, a, b }
        }
        OpCode::Softmax => {
            ensure!(!ins.is_empty() && ins.len() <= 2, "softmax takes x and an optional mask");
            let x = need(ins[0], &f32_only, "x")?;
            let axis = p[0] as usize;
            ensure!(axis < x.dims.len(), "axis {axis} out of range for rank {}", x.dims.len());
            ensure!(out.dtype == DType::F32 && out.dims == x.dims, "output shape differs");
            let outer = numel(&x.dims[..axis]);
            let (n, inner) = if p[1] == 1 {
                (numel(&x.dims[axis..]), 1)
            } else {
                (x.dims[axis], numel(&x.dims[axis + 1..]))
            };
            let mut rows: Dims = [1; MAX_RANK];
            let mut mstrides: Dims = [0; MAX_RANK];
            let mask = ins.get(1).copied().unwrap_or(REF_NONE);
            let rank = x.dims.len().saturating_sub(1);
            if mask != REF_NONE {
                let m = need(mask, &f32_only, "mask")?;
                let r = x.dims.len();
                ensure!(
                    inner == 1
                        && axis == r - 1
                        && m.dims.len() <= r
                        && m.dims.last() == x.dims.last(),
                    "a softmax mask needs the softmax over the last axis and the same last dim"
                );
                // Right-aligned broadcast strides (in rows of n) over the leading axes.
                let lead = r - m.dims.len();
                let mut stride = 1usize;
                for d in (0..r - 1).rev() {
                    rows[d] = x.dims[d];
                    if d >= lead {
                        let md = m.dims[d - lead];
                        ensure!(
                            md == x.dims[d] || md == 1,
                            "mask dim {md} does not broadcast to {}",
                            x.dims[d]
                        );
                        if md != 1 {
                            mstrides[d] = stride;
                            stride *= md;
                        }
                    }
                }
            }
            Op::Softmax { x: ins[0], outer, n, inner, mask, rank, rows, mstrides }
        }
        OpCode::Gather => {
            arity(2)?;
            let d = need(ins[0], &[DType::F32, DType::I64, DType::I32], "data")?;
            let ix = need(ins[1], &[DType::I64, DType::I32], "indices")?;
            let axis = p[0] as usize;
            ensure!(axis < d.dims.len(), "axis {axis} out of range for rank {}", d.dims.len());
            ensure!(out.dtype == d.dtype, "output dtype differs from data");
            let n_idx = numel(ix.dims);
            let outer = numel(&d.dims[..axis]);
            let inner = numel(&d.dims[axis + 1..]);
            ensure!(numel(out.dims) == outer * n_idx * inner, "output has the wrong size");
            Op::Gather {
                data: ins[0],
                idx: ins[1],
                idx64: ix.dtype == DType::I64,
                outer,
                dim: d.dims[axis],
                inner_bytes: inner * d.dtype.size(),
                n_idx,
            }
        }
        OpCode::GatherRowsI8 | OpCode::GatherRowsI4 => {
            arity(4)?;
            let i4 = code == OpCode::GatherRowsI4;
            let t = need(ins[0], &[if i4 { DType::U8 } else { DType::I8 }], "table")?;
            ensure!(t.dims.len() == 2, "table must be 2-D");
            // INT4: two codes per byte, one scale and offset per group of a row.
            let (rows, d) = (t.dims[0], if i4 { 2 * t.dims[1] } else { t.dims[1] });
            let group = if i4 { p[0] as usize } else { d };
            ensure!(
                !i4 || (group > 0 && group.is_multiple_of(2) && d.is_multiple_of(group)),
                "group {group} does not divide the row of {d}"
            );
            let side: &[usize] = if i4 { &[rows, d / group] } else { &[rows] };
            for (j, nm) in [(1, "scales"), (2, "biases")] {
                let s = need(ins[j], &[DType::F16], nm)?;
                ensure!(s.dims == side, "{nm} are {:?}, expected {side:?}", s.dims);
            }
            let ix = need(ins[3], &[DType::I64, DType::I32], "indices")?;
            let n_idx = numel(ix.dims);
            ensure!(
                out.dtype == DType::F32 && numel(out.dims) == n_idx * d,
                "output has the wrong size"
            );
            let (table, scale, bias, idx, idx64) =
                (ins[0], ins[1], ins[2], ins[3], ix.dtype == DType::I64);
            if i4 {
                Op::GatherRowsI4 { table, scale, bias, idx, idx64, rows, d, group, n_idx }
            } else {
                Op::GatherRowsI8 { table, scale, bias, idx, idx64, rows, d, n_idx }
            }
        }
        OpCode::Concat => {
            ensure!((1..=OP_MAX_INPUTS).contains(&n_in), "needs 1..=8 inputs");
            let first = info(ins[0]);
            let axis = p[0] as usize;
            let rank = first.dims.len();
            ensure!(axis < rank, "axis {axis} out of range for rank {rank}");
            let mut chunks = [0usize; OP_MAX_INPUTS];
            let mut total = 0;
            for (j, x) in ins.iter().enumerate() {
                ensure!(*x != REF_NONE, "input #{j} is missing");
                let i = need(*x, &[first.dtype], "input")?;
                ensure!(i.dims.len() == rank, "input #{j} has rank {}", i.dims.len());
                for a in 0..rank {
                    ensure!(
                        a == axis || i.dims[a] == first.dims[a],
                        "input #{j} shape {:?} differs off the axis",
                        i.dims
                    );
                }
                chunks[j] = numel(&i.dims[axis..]) * i.dtype.size();
                total += i.dims[axis];
            }
            ensure!(
                out.dtype == first.dtype && out.dims.len() == rank && out.dims[axis] == total,
                "output shape is wrong"
            );
            ensure!(
                (0..rank).all(|a| a == axis || out.dims[a] == first.dims[a]),
                "output shape is wrong"
            );
            let mut inputs = [REF_NONE; OP_MAX_INPUTS];
            inputs[..n_in].copy_from_slice(ins);
            Op::Concat { inputs, n: n_in, outer: numel(&first.dims[..axis]), chunks }
        }
        OpCode::Copy => {
            arity(1)?;
            let x = info(ins[0]);
            ensure!(
                x.dtype == out.dtype && numel(x.dims) == numel(out.dims),
                "copy changes size or dtype"
            );
            Op::Copy { x: ins[0] }
        }
        OpCode::Transpose => {
            arity(1)?;
            let x = info(ins[0]);
            let rank = x.dims.len();
            ensure!(
                out.dtype == x.dtype && out.dims.len() == rank,
                "output must keep dtype and rank"
            );
            let mut seen = [false; MAX_RANK];
            let mut in_strides = [0usize; MAX_RANK];
            let mut acc = 1;
            for a in (0..rank).rev() {
                in_strides[a] = acc;
                acc *= x.dims[a];
            }
            let mut od = [1usize; MAX_RANK];
            let mut src = [0usize; MAX_RANK];
            for a in 0..rank {
                let q = p[a] as usize;
                ensure!(q < rank && !seen[q], "perm is not a permutation");
                seen[q] = true;
                ensure!(
                    out.dims[a] == x.dims[q],
                    "output dim {a} is {}, expected {}",
                    out.dims[a],
                    x.dims[q]
                );
                od[a] = out.dims[a];
                src[a] = in_strides[q];
            }
            Op::Transpose { x: ins[0], elem: x.dtype.size(), rank, out: od, src_strides: src }
        }
        OpCode::Reduce => {
            arity(1)?;
            let x = need(ins[0], &f32_only, "x")?;
            let rank = x.dims.len();
            let mask = p[1];
            ensure!(
                mask != 0 && mask >> rank == 0,
                "axes mask {mask:#b} out of range for rank {rank}"
            );
            let keep = p[2] == 1;
            let mean = match p[0] {
                0 => false,
                1 => true,
                k => return Err(alloc::format!("unknown reduce kind {k}")),
            };
            let mut want = alloc::vec::Vec::new();
            let mut count = 1;
            for a in 0..rank {
                if mask & (1 << a) != 0 {
                    count *= x.dims[a];
                    if keep {
                        want.push(1);
                    }
                } else {
                    want.push(x.dims[a]);
                }
            }
            ensure!(
                out.dtype == DType::F32 && out.dims == want.as_slice(),
                "output shape {:?}, expected {want:?}",
                out.dims
            );
            let mut dims = [1usize; MAX_RANK];
            dims[..rank].copy_from_slice(x.dims);
            let mut os = [0usize; MAX_RANK];
            let mut acc = 1;
            for a in (0..rank).rev() {
                if mask & (1 << a) == 0 {
                    os[a] = acc;
                    acc *= x.dims[a];
                }
            }
            Op::Reduce { x: ins[0], mean, rank, dims, out_strides: os, count }
        }
        OpCode::LayerNorm => {
            ensure!(n_in == 3, "expects 3 inputs, has {n_in}");
            let x = need(ins[0], &f32_only, "x")?;
            let axis = p[0] as usize;
            ensure!(axis < x.dims.len(), "axis {axis} out of range for rank {}", x.dims.len());
            let d = numel(&x.dims[axis..]);
            ensure!(d > 0, "empty normalization");
            let sc = need(ins[1], &f32_only, "scale")?;
            ensure!(numel(sc.dims) == d, "scale has {} elements, expected {d}", numel(sc.dims));
            if ins[2] != REF_NONE {
                let b = need(ins[2], &f32_only, "bias")?;
                ensure!(numel(b.dims) == d, "bias has {} elements, expected {d}", numel(b.dims));
            }
            let eps = f32::from_bits(p[1]);
            ensure!(eps.is_finite() && eps >= 0.0, "epsilon {eps} is invalid");
            ensure!(out.dtype == DType::F32 && out.dims == x.dims, "output shape differs");
            Op::LayerNorm {
                x: ins[0],
                scale: ins[1],
                bias: ins[2],
                rows: numel(x.dims) / d,
                d,
                eps,
            }
        }
        OpCode::Expand => {
            arity(1)?;
            let x = info(ins[0]);
            let rank = out.dims.len();
            ensure!(
                x.dtype == out.dtype && x.dims.len() <= rank,
                "output must keep dtype, rank >= input's"
            );
            let mut od = [1usize; MAX_RANK];
            od[..rank].copy_from_slice(out.dims);
            let mut st = [0usize; MAX_RANK];
            let off = rank - x.dims.len();
            let mut acc = 1;
            for j in (0..x.dims.len()).rev() {
                ensure!(
                    x.dims[j] == out.dims[off + j] || x.dims[j] == 1,
                    "shape {:?} does not broadcast to {:?}",
                    x.dims,
                    out.dims
                );
                st[off + j] = if x.dims[j] == 1 { 0 } else { acc };
                acc *= x.dims[j];
            }
            Op::Expand { x: ins[0], elem: x.dtype.size(), rank, out: od, strides: st }
        }
        OpCode::Cast => {
            arity(1)?;
            let ok = [DType::F32, DType::I32, DType::I64];
            let x = need(ins[0], &ok, "x")?;
            ensure!(ok.contains(&out.dtype) && numel(x.dims) == numel(out.dims), "bad cast output");
            Op::Cast { x: ins[0], from: x.dtype, to: out.dtype }
        }
    })
}
