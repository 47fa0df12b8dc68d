//! The CPU schedule of a plan: the plan's ops, with the head shuffles of attention folded into
//! the matmuls that read or write them, and float attention fused per head.
//!
//! A BERT-style export splits a linear's output `[B0, S, H·D]` into heads with a Reshape (a
//! byte copy here) and a Transpose to `[B0, H, S, D]` before each attention MatMul, and undoes
//! it after `P·V` with a Transpose and a Reshape. [`Op::MatMulI8`] and [`Op::AttentionF32`] read
//! each head in place from the linear's output and write each head's rows straight to their
//! places in the merged output ([`Strides::heads`]), so those copies are not made. A float
//! scores MatMul, its Softmax and the P·V MatMul become one [`Op::AttentionF32`], whose scores
//! stay in a thread's scratch slot. The file's plan is unchanged (the CUDA executor runs it as
//! written). The folds change when values are written and read; the loader then places the
//! schedule's values in an arena of its own and checks it with its liveness check
//! ([`Scheduled`]).

use super::{self as ops, BinFast, MatMulDims, Op, Strides};
use crate::format::{OpCode, OpRecord, REF_NONE, REF_TENSOR};
use crate::model::ValueInfo;
use crate::{BinaryKind, DType};
use alloc::vec;
use alloc::vec::Vec;
use ember_kernels::pack::k4;

/// One op of the CPU schedule: what to run and the value it writes.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub op: Op,
    pub out: u32,
}

/// The schedule: `None` where an op's work went into a matmul.
pub(crate) type Schedule = Vec<Option<Step>>;

/// `def_at` of a value that no step writes.
pub(crate) const NEVER: i64 = i64::MAX;

/// The plan facts the folds need. `def_at[v]`: the op defining value `v` (-1 for inputs),
/// `last_use[v]`: the last op reading it (n_ops for outputs).
pub(crate) struct Facts<'a> {
    pub records: &'a [OpRecord],
    pub ops: &'a [Op],
    pub values: &'a [ValueInfo],
    pub def_at: &'a [i64],
    pub last_use: &'a [i64],
    pub outputs: &'a [u32],
}

/// The CPU schedule and the liveness of its values (`def_at`, `last_use` as in [`Facts`];
/// `def_at` is [`NEVER`] for a value no step writes), from which the loader plans its arena.
pub(crate) struct Scheduled {
    pub steps: Schedule,
    pub def_at: Vec<i64>,
    pub last_use: Vec<i64>,
    /// Values whose size on the CPU differs from the file's: `(value, bytes)` (the u8 codes a
    /// linear hands over instead of its f32 output).
    pub resized: Vec<(u32, usize)>,
    /// Per op, the step that does its work when a fused step took it over (the scores MatMul
    /// and Softmax of a fused attention, the Add of an add-and-norm); `usize::MAX` otherwise.
    pub absorbed_by: Vec<usize>,
}

/// Where a folded operand comes from: the value (or tensor) holding `[B0, S, H, D]`, the ops
/// that no longer run, and the heads layout it is read in.
struct Fold {
    src: u32,
    elided: Vec<usize>,
    layout: Strides,
}

struct State {
    steps: Schedule,
    def_at: Vec<i64>,
    last_use: Vec<i64>,
    absorbed_by: Vec<usize>,
}

/// Where a matmul's output goes when its head shuffle back is folded: the ops no longer run,
/// the value then written, and its layout.
struct OutFold {
    elided: Vec<usize>,
    target: u32,
    lo: Strides,
}

impl State {
    /// Makes op `i` write `of.target` instead of `out` (the shuffle ops elided); the caller
    /// then sets the op's layout and output.
    fn fold_output(&mut self, f: &Facts, i: usize, out: u32, of: &OutFold) {
        for &e in &of.elided {
            self.def_at[f.records[e].outputs[0] as usize] = NEVER;
            self.steps[e] = None;
        }
        self.def_at[out as usize] = NEVER;
        self.def_at[of.target as usize] = i as i64;
    }

    /// Value `x` (when it is one) is read at op `at` too.
    fn read_at(&mut self, x: u32, at: usize) {
        if x != REF_NONE && x & REF_TENSOR == 0 {
            let l = &mut self.last_use[x as usize];
            *l = (*l).max(at as i64);
        }
    }
}

/// Builds the CPU schedule of a plan (see the module docs).
pub(crate) fn schedule(f: &Facts) -> Scheduled {
    let n = f.ops.len();
    let nv = f.def_at.len();
    // Readers per value (every input slot counts; a model output counts as one more), and the
    // op reading it when there is exactly one.
    let mut uses = vec![0usize; nv];
    let mut reader = vec![usize::MAX; nv];
    for (i, r) in f.records.iter().enumerate() {
        for &x in &r.inputs[..r.n_inputs as usize] {
            if x != REF_NONE && x & REF_TENSOR == 0 {
                uses[x as usize] += 1;
                reader[x as usize] = i;
            }
        }
    }
    for &o in f.outputs {
        uses[o as usize] += 1;
    }
    let mut st = State {
        steps: f
            .ops
            .iter()
            .zip(f.records)
            .map(|(op, r)| Some(Step { op: op.clone(), out: r.outputs[0] }))
            .collect(),
        def_at: f.def_at.to_vec(),
        last_use: f.last_use.to_vec(),
        absorbed_by: vec![usize::MAX; n],
    };
    // A head shuffle: a live Transpose [B0, S, H, D] -> [B0, H, S, D] (perm 0, 2, 1, 3).
    let is_shuffle = |st: &State, t: usize| {
        let r = &f.records[t];
        matches!(st.steps[t], Some(Step { op: Op::Transpose { rank: 4, .. }, .. }))
            && r.opcode == OpCode::Transpose as u16
            && r.params[..4] == [0, 2, 1, 3]
    };
    let single_value_use = |v: u32| v & REF_TENSOR == 0 && uses[v as usize] == 1;
    let is_copy =
        |st: &State, c: usize| matches!(st.steps[c], Some(Step { op: Op::Copy { .. }, .. }));
    // The source of matmul operand `v` (`batch` matrices of `rows × cols`) when it is a head
    // shuffle of (a copy of) a tensor `[B0, S, H, D]` with `B0·H = batch`, `S = rows`, `D = cols`.
    let source = |st: &State, v: u32, batch: usize, rows: usize, cols: usize| -> Option<Fold> {
        if !single_value_use(v) {
            return None;
        }
        let od = &f.values[v as usize].dims;
        if od.len() != 4 || batch != od[0] * od[1] || rows != od[2] || cols != od[3] {
            return None;
        }
        let t = usize::try_from(st.def_at[v as usize]).ok().filter(|t| *t < n)?;
        if !is_shuffle(st, t) {
            return None;
        }
        let y = f.records[t].inputs[0];
        let mut elided = vec![t];
        let mut src = y;
        if single_value_use(y) {
            if let Ok(c) = usize::try_from(st.def_at[y as usize]) {
                if c < n && is_copy(st, c) {
                    src = f.records[c].inputs[0];
                    elided.push(c);
                }
            }
        }
        Some(Fold { src, elided, layout: Strides::heads(od[1], od[2], od[3]) })
    };
    // The output [B0, H, S, N] of a matmul (value `out`) shuffled back to [B0, S, H, N] by its
    // one reader (and copied to [B0, S, H·N]).
    let out_fold = |st: &State, out: u32, batch: usize, m: usize, nn: usize| -> Option<OutFold> {
        if !single_value_use(out) {
            return None;
        }
        let t = reader[out as usize];
        if t >= n || !is_shuffle(st, t) {
            return None;
        }
        let zd = &f.values[out as usize].dims;
        let (b0, heads, seq, dn) = (zd[0], zd[1], zd[2], zd[3]);
        if batch != b0 * heads || m != seq || nn != dn {
            return None;
        }
        let w = f.records[t].outputs[0];
        let mut elided = vec![t];
        let mut target = w;
        if single_value_use(w) && reader[w as usize] < n && is_copy(st, reader[w as usize]) {
            let c = reader[w as usize];
            elided.push(c);
            target = f.records[c].outputs[0];
        }
        Some(OutFold { elided, target, lo: Strides::heads(heads, seq, dn) })
    };
    for i in 0..n {
        let Some(Step { op: Op::MatMulI8 { a, b, d, lo, .. }, out }) = st.steps[i].clone() else {
            continue;
        };
        let MatMulDims { batch, m, k, n: nn, b_t, .. } = d;
        // a [S, D] per head.
        if let Some(fd) = source(&st, a, batch, m, k) {
            fold(&mut st, f, i, &fd, |op, src, l| {
                if let Op::MatMulI8 { a, la, .. } = op {
                    (*a, *la) = (src, l);
                }
            });
        }
        // b [S, D] per head: keys (`b_t`, [n, k]) or values ([k, n]).
        let (rows, cols) = if b_t { (nn, k) } else { (k, nn) };
        if let Some(fd) = source(&st, b, batch, rows, cols) {
            fold(&mut st, f, i, &fd, |op, src, l| {
                if let Op::MatMulI8 { b, lb, .. } = op {
                    (*b, *lb) = (src, l);
                }
            });
        }
        if !lo.is_dense() {
            continue;
        }
        if let Some(of) = out_fold(&st, out, batch, m, nn) {
            st.fold_output(f, i, out, &of);
            if let Some(Step { op: Op::MatMulI8 { lo, .. }, out }) = &mut st.steps[i] {
                (*lo, *out) = (of.lo, of.target);
            }
        }
    }
    // Float attention: a scores MatMulF32, the Softmax of its output and the P·V MatMulF32 of
    // that, each the only reader of the one before, become one step in place of the last.
    for j in 0..n {
        let Some((i, sm, op)) = attention_at(&st, j, &single_value_use) else {
            continue;
        };
        let Op::AttentionF32 { q, k: kv, v, qk, pv, mask, .. } = op else {
            continue;
        };
        let Some(Step { out, .. }) = st.steps[j] else {
            continue;
        };
        // The fused step runs where the P·V MatMul ran: q, k and the mask are read there.
        st.def_at[f.records[i].outputs[0] as usize] = NEVER;
        st.def_at[f.records[sm].outputs[0] as usize] = NEVER;
        for x in [q, kv, mask] {
            st.read_at(x, j);
        }
        (st.steps[i], st.steps[sm]) = (None, None);
        (st.absorbed_by[i], st.absorbed_by[sm]) = (j, j);
        st.steps[j] = Some(Step { op, out });
        // q [S, D] per head; keys ([n, k] when transposed, else [k, n]); values ([k, n]).
        let (kr, kc) = if qk.b_t { (qk.n, qk.k) } else { (qk.k, qk.n) };
        let (vr, vc) = if pv.b_t { (pv.n, pv.k) } else { (pv.k, pv.n) };
        for (x, rows, cols, which) in [(q, qk.m, qk.k, 0), (kv, kr, kc, 1), (v, vr, vc, 2)] {
            let Some(fd) = source(&st, x, qk.batch, rows, cols) else {
                continue;
            };
            fold(&mut st, f, j, &fd, |op, src, l| {
                if let Op::AttentionF32 { q, k, v, lq, lk, lv, .. } = op {
                    let (x, lx) = match which {
                        0 => (q, lq),
                        1 => (k, lk),
                        _ => (v, lv),
                    };
                    (*x, *lx) = (src, l);
                }
            });
        }
        if let Some(of) = out_fold(&st, out, pv.batch, pv.m, pv.n) {
            st.fold_output(f, j, out, &of);
            if let Some(Step { op: Op::AttentionF32 { lo, .. }, out }) = &mut st.steps[j] {
                (*lo, *out) = (of.lo, of.target);
            }
        }
        // The context overwrites q when both are heads in place in one layout: each head's
        // output columns are its q columns, which the step gathers into the task's slot before
        // it writes them, and no other head touches. The linear reading the context then
        // reads q's slot (MiniLM: one 196 KB slot less at batch 1, the attention step's peak).
        let Some(Step { op: Op::AttentionF32 { q, lq, lo, .. }, out: t }) = &st.steps[j] else {
            continue;
        };
        let (q, t, r) = (*q, *t, reader[*t as usize]);
        if lq.is_dense()
            || lq != lo
            || !single_value_use(q)
            || !single_value_use(t)
            || r >= n
            || f.values[q as usize].nbytes != f.values[t as usize].nbytes
        {
            continue;
        }
        let Some(x) = st.steps[r].as_mut().and_then(|s| ops::linear_x_mut(&mut s.op)) else {
            continue;
        };
        if *x != t {
            continue;
        }
        *x = q;
        st.def_at[t as usize] = NEVER;
        st.read_at(q, r);
        if let Some(s) = &mut st.steps[j] {
            s.out = q;
        }
    }
    for i in 0..n {
        softmax_in_place(&mut st, f, i, &uses, &reader);
    }
    // A statically quantized LinearI8 whose output only the next quantized linear reads, as
    // its input: it writes that linear's u8 codes (quantized the same way, a tile of rows at a
    // time) instead of the f32 tensor, which then takes a quarter of the bytes, and the next
    // linear skips its quantization pass (MiniLM: each feed-forward intermediate, 786 KB ->
    // 196 KB at batch 1). Not an INT4 writer: its kernels widen every weight panel once per
    // call, and a tile of rows per call widened them four times as often (MiniLM INT4 at
    // batch 1: 1.03 -> 1.09x the INT8 file's latency).
    let mut resized = Vec::new();
    for i in 0..n {
        let Some(Step { op: op @ Op::LinearI8 { .. }, out: y }) = &st.steps[i] else {
            continue;
        };
        let y = *y;
        let Some(w) = ops::static_linear(op) else {
            continue;
        };
        if w.hand.out_q.is_some() || !single_value_use(y) || reader[y as usize] >= n {
            continue;
        }
        let r = reader[y as usize];
        let Some(rd) = st.steps[r].as_ref().and_then(|s| ops::static_linear(&s.op)) else {
            continue;
        };
        let q = rd.quant;
        if rd.x != y
            || rd.m != w.m
            || rd.k != w.n
            || rd.hand.x_codes
            || (q.mult != REF_NONE && q.mult & REF_TENSOR == 0)
        {
            continue;
        }
        if let Some(h) = st.steps[i].as_mut().and_then(|s| ops::handoff_mut(&mut s.op)) {
            h.out_q = Some(q);
        }
        if let Some(h) = st.steps[r].as_mut().and_then(|s| ops::handoff_mut(&mut s.op)) {
            h.x_codes = true;
        }
        resized.push((y, w.m * k4(w.n)));
    }
    add_layer_norm(&mut st, f, &uses, &reader);
    Scheduled {
        steps: st.steps,
        def_at: st.def_at,
        last_use: st.last_use,
        resized,
        absorbed_by: st.absorbed_by,
    }
}

/// A LayerNorm whose input is the sum of two f32 values of its shape (a Binary Add, no
/// broadcast) that nothing else reads becomes one [`Op::AddLayerNorm`] where the norm ran: the
/// sum is formed row by row in a scratch row (the same additions, so the same bits) and never
/// written, read back or given arena room (MiniLM: two per layer, 196 KB each at batch 1).
fn add_layer_norm(st: &mut State, f: &Facts, uses: &[usize], reader: &[usize]) {
    for j in 0..st.steps.len() {
        let Some(Step { op: Op::LayerNorm { x, scale, bias, rows, d, eps }, out }) = &st.steps[j]
        else {
            continue;
        };
        let (t, out) = (*x, *out);
        if t & REF_TENSOR != 0 || uses[t as usize] != 1 || reader[t as usize] != j {
            continue;
        }
        let Ok(i) = usize::try_from(st.def_at[t as usize]) else {
            continue;
        };
        let Some(Step {
            op:
                Op::Binary {
                    a, b, kind: BinaryKind::Add, dtype: DType::F32, fast: BinFast::Same, ..
                },
            out: sum,
        }) = st.steps.get(i).and_then(Option::as_ref)
        else {
            continue;
        };
        if *sum != t || f.values[t as usize].nbytes != rows * d * 4 {
            continue;
        }
        let op = Op::AddLayerNorm {
            a: *a,
            b: *b,
            scale: *scale,
            bias: *bias,
            rows: *rows,
            d: *d,
            eps: *eps,
        };
        for v in [*a, *b] {
            st.read_at(v, j);
        }
        st.def_at[t as usize] = NEVER;
        st.steps[i] = None;
        st.absorbed_by[i] = j;
        st.steps[j] = Some(Step { op, out });
    }
}

/// Scores per head the fused attention holds in a scratch slot at most (1 MiB of f32).
const ATTENTION_MAX_SCORES: usize = 1 << 18;

/// The float attention ending at op `j`: `(i, s, op)` when `j` is a MatMulF32 whose `a` is the
/// output of Softmax `s` (rows along the last axis) over the output of MatMulF32 `i`, each the
/// only reader of the one before, with matching shapes; `op` is the fused step with dense layouts.
fn attention_at(
    st: &State,
    j: usize,
    single_value_use: &dyn Fn(u32) -> bool,
) -> Option<(usize, usize, Op)> {
    let def = |v: u32| usize::try_from(st.def_at[v as usize]).ok().filter(|d| *d < j);
    let Some(Step { op: Op::MatMulF32 { a: p, b: v, d: pv }, .. }) = &st.steps[j] else {
        return None;
    };
    if !single_value_use(*p) || *v == *p {
        return None;
    }
    let s = def(*p)?;
    let Some(Step { op: Op::Softmax { x, outer, n, inner: 1, mask, rank, rows, mstrides }, out }) =
        &st.steps[s]
    else {
        return None;
    };
    if out != p || !single_value_use(*x) {
        return None;
    }
    let i = def(*x)?;
    let Some(Step { op: Op::MatMulF32 { a: q, b: kv, d: qk }, out: sc }) = &st.steps[i] else {
        return None;
    };
    let fits = *sc == *x
        && qk.batch == pv.batch
        && pv.m == qk.m
        && pv.k == qk.n
        && *n == qk.n
        && *outer == qk.batch * qk.m
        && pv.a_bs == pv.m * pv.k
        && qk.m * qk.n <= ATTENTION_MAX_SCORES
        && ![*q, *kv, *v].contains(x);
    if !fits {
        return None;
    }
    let op = Op::AttentionF32 {
        q: *q,
        k: *kv,
        v: *v,
        qk: *qk,
        pv: *pv,
        lq: Strides::dense(qk.a_bs, qk.k),
        lk: Strides::dense(qk.b_bs, if qk.b_t { qk.k } else { qk.n }),
        lv: Strides::dense(pv.b_bs, if pv.b_t { pv.k } else { pv.n }),
        lo: Strides::dense(pv.m * pv.n, pv.n),
        mask: *mask,
        rank: *rank,
        rows: *rows,
        mstrides: *mstrides,
    };
    Some((i, s, op))
}

/// Runs softmax op `i` in place over its input (the attention scores) when the input is read
/// by nothing else and the output only by a matmul as its `a`, which then reads the input's
/// slot: the scores need one slot instead of two (the INT8 attention's `MatMulI8`; float
/// attention fuses the three ops instead).
fn softmax_in_place(st: &mut State, f: &Facts, i: usize, uses: &[usize], reader: &[usize]) {
    let Some(Step { op: Op::Softmax { x, inner: 1, .. }, out }) = &st.steps[i] else {
        return;
    };
    let (x, y) = (*x, *out);
    if x & REF_TENSOR != 0
        || uses[x as usize] != 1
        || uses[y as usize] != 1
        || !(0..NEVER).contains(&st.def_at[x as usize])
        || f.values[x as usize].nbytes != f.values[y as usize].nbytes
    {
        return;
    }
    // The one reader of y: a matmul taking it as `a` only.
    let r = reader[y as usize];
    let Some(Step { op: Op::MatMulI8 { a, b, .. } | Op::MatMulF32 { a, b, .. }, .. }) =
        st.steps.get(r).and_then(Option::as_ref)
    else {
        return;
    };
    if *a != y || *b == y {
        return;
    }
    st.def_at[y as usize] = NEVER;
    st.read_at(x, r);
    if let Some(s) = &mut st.steps[i] {
        s.out = x;
    }
    if let Some(Step { op: Op::MatMulI8 { a, .. } | Op::MatMulF32 { a, .. }, .. }) =
        &mut st.steps[r]
    {
        *a = x;
    }
}

/// Reads `fd.src` in place at op `i` (`set(op, source, its heads layout)` rewrites the op): the
/// shuffle ops no longer run.
fn fold(st: &mut State, f: &Facts, i: usize, fd: &Fold, set: impl Fn(&mut Op, u32, Strides)) {
    for &e in &fd.elided {
        st.def_at[f.records[e].outputs[0] as usize] = NEVER;
        st.steps[e] = None;
    }
    st.read_at(fd.src, i);
    if let Some(Step { op, .. }) = &mut st.steps[i] {
        set(op, fd.src, fd.layout);
    }
}
