//! The CPU schedule of a plan: the plan's ops, with the head shuffles of attention folded into
//! the integer matmuls that read or write them.
//!
//! A BERT-style export splits a linear's output `[B0, S, H·D]` into heads with a Reshape (a
//! byte copy here) and a Transpose to `[B0, H, S, D]` before each attention MatMul, and undoes
//! it after `P·V` with a Transpose and a Reshape. [`Op::MatMulI8`] can read each head in place
//! from the linear's output and write each head's rows straight to their places in the merged
//! output ([`Strides::heads`]), so those copies are not made: MiniLM-L3 drops 24 of its 83 ops.
//! The file's plan is unchanged (the CUDA executor runs it as written); a fold is kept only
//! when the plan's arena assignment stays valid with the source read later and the target
//! written earlier, checked with the loader's own liveness check.

use super::{MatMulDims, Op, Strides};
use crate::format::{OpCode, OpRecord, REF_NONE, REF_TENSOR};
use crate::model::ValueInfo;
use alloc::vec;
use alloc::vec::Vec;

/// One op of the CPU schedule: what to run and the value it writes.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub op: Op,
    pub out: u32,
}

/// The schedule: `None` where an op's work went into a matmul.
pub(crate) type Schedule = Vec<Option<Step>>;

const NEVER: i64 = i64::MAX;

/// The plan facts the folds need. `def_at[v]`: the op defining value `v` (-1 for inputs),
/// `last_use[v]`: the last op reading it (n_ops for outputs); `valid(def_at, last_use)` is the
/// loader's arena liveness check.
pub(crate) struct Facts<'a> {
    pub records: &'a [OpRecord],
    pub ops: &'a [Op],
    pub values: &'a [ValueInfo],
    pub def_at: &'a [i64],
    pub last_use: &'a [i64],
    pub outputs: &'a [u32],
    pub valid: &'a dyn Fn(&[i64], &[i64]) -> bool,
}

/// Where a folded operand comes from: the value (or tensor) holding `[B0, S, H, D]`, the ops
/// that no longer run, and the head layout.
#[derive(Clone)]
struct Fold {
    src: u32,
    elided: Vec<usize>,
    heads: usize,
    seq: usize,
    d: usize,
}

struct State {
    steps: Schedule,
    def_at: Vec<i64>,
    last_use: Vec<i64>,
}

impl State {
    /// Applies `edit` to copies of the liveness facts and keeps them when the loader's check
    /// still passes with them (the arena assignment stays valid); returns whether it did.
    fn relive(&mut self, f: &Facts, edit: impl FnOnce(&mut [i64], &mut [i64])) -> bool {
        let (mut def_at, mut last_use) = (self.def_at.clone(), self.last_use.clone());
        edit(&mut def_at, &mut last_use);
        let ok = (f.valid)(&def_at, &last_use);
        if ok {
            (self.def_at, self.last_use) = (def_at, last_use);
        }
        ok
    }
}

/// Builds the CPU schedule of a plan (see the module docs).
pub(crate) fn schedule(f: &Facts) -> Schedule {
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
    // The source of matmul operand `v` when it is a head shuffle of (a copy of) a tensor.
    let source = |st: &State, v: u32| -> Option<Fold> {
        if !single_value_use(v) {
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
        let od = &f.values[v as usize].dims;
        Some(Fold { src, elided, heads: od[1], seq: od[2], d: od[3] })
    };
    for i in 0..n {
        let Some(Step { op: Op::MatMulI8 { a, b, d, lo, .. }, out }) = st.steps[i].clone() else {
            continue;
        };
        let MatMulDims { batch, m, k, n: nn, b_t, .. } = d;
        // a [S, D] per head.
        if let Some(fd) = source(&st, a) {
            if batch == f.values[a as usize].dims[0] * fd.heads && m == fd.seq && k == fd.d {
                try_fold(&mut st, f, i, &fd, |op, src| {
                    if let Op::MatMulI8 { a, la, .. } = op {
                        *a = src;
                        *la = Strides::heads(fd.heads, fd.seq, fd.d);
                    }
                });
            }
        }
        // b [S, D] per head: keys (`b_t`, [n, k]) or values ([k, n]).
        if let Some(fd) = source(&st, b) {
            let (rows, cols) = if b_t { (nn, k) } else { (k, nn) };
            if batch == f.values[b as usize].dims[0] * fd.heads && rows == fd.seq && cols == fd.d {
                try_fold(&mut st, f, i, &fd, |op, src| {
                    if let Op::MatMulI8 { b, lb, .. } = op {
                        *b = src;
                        *lb = Strides::heads(fd.heads, fd.seq, fd.d);
                    }
                });
            }
        }
        // The output [B0, H, S, N] shuffled back to [B0, S, H, N] (and copied to [B0, S, H·N]).
        if !lo.is_dense() || !single_value_use(out) {
            continue;
        }
        let t = reader[out as usize];
        if t >= n || !is_shuffle(&st, t) {
            continue;
        }
        let zd = &f.values[out as usize].dims;
        let (b0, heads, seq, dn) = (zd[0], zd[1], zd[2], zd[3]);
        if batch != b0 * heads || m != seq || nn != dn {
            continue;
        }
        let w = f.records[t].outputs[0];
        let mut elided = vec![t];
        let mut target = w;
        if single_value_use(w) && reader[w as usize] < n && is_copy(&st, reader[w as usize]) {
            let c = reader[w as usize];
            elided.push(c);
            target = f.records[c].outputs[0];
        }
        let retarget = |def_at: &mut [i64], _: &mut [i64]| {
            for &e in &elided {
                def_at[f.records[e].outputs[0] as usize] = NEVER;
            }
            def_at[out as usize] = NEVER;
            def_at[target as usize] = i as i64;
        };
        if st.relive(f, retarget) {
            for &e in &elided {
                st.steps[e] = None;
            }
            if let Some(Step { op: Op::MatMulI8 { lo, .. }, out }) = &mut st.steps[i] {
                *lo = Strides::heads(heads, seq, dn);
                *out = target;
            }
        }
    }
    for i in 0..n {
        softmax_in_place(&mut st, f, i, &uses, &reader);
    }
    st.steps
}

/// Longest row a softmax runs in place (each row is copied to a stack buffer this long).
pub(crate) const SOFTMAX_IN_PLACE_MAX: usize = 1024;

/// Runs softmax op `i` in place over its input (the attention scores) when the input is read
/// by nothing else and the output only by a matmul as its `a`, which then reads the input's
/// slot: the output's slot is never written (MiniLM: 31 % fewer arena pages touched, so fewer
/// page faults in a fresh process's first run and less cache traffic).
fn softmax_in_place(st: &mut State, f: &Facts, i: usize, uses: &[usize], reader: &[usize]) {
    let Some(Step { op: Op::Softmax { x, n: row, inner: 1, .. }, out }) = &st.steps[i] else {
        return;
    };
    let (x, y, row) = (*x, *out, *row);
    if x & REF_TENSOR != 0
        || uses[x as usize] != 1
        || uses[y as usize] != 1
        || !(0..NEVER).contains(&st.def_at[x as usize])
        || row > SOFTMAX_IN_PLACE_MAX
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
    let hand_over = |def_at: &mut [i64], last_use: &mut [i64]| {
        def_at[y as usize] = NEVER;
        last_use[x as usize] = last_use[x as usize].max(r as i64);
    };
    if !st.relive(f, hand_over) {
        return;
    }
    if let Some(s) = &mut st.steps[i] {
        s.out = x;
    }
    if let Some(Step { op: Op::MatMulI8 { a, .. } | Op::MatMulF32 { a, .. }, .. }) =
        &mut st.steps[r]
    {
        *a = x;
    }
}

/// Reads `fd.src` in place at op `i` (rewriting the op with `set`) when the arena allows it;
/// else, when the fold skipped a Reshape copy too, keeps that copy and reads its output.
fn try_fold(st: &mut State, f: &Facts, i: usize, fd: &Fold, set: impl Fn(&mut Op, u32)) {
    if !fold(st, f, i, fd, &set) && fd.elided.len() == 2 {
        let t = fd.elided[0];
        let kept = Fold { src: f.records[t].inputs[0], elided: vec![t], ..*fd };
        fold(st, f, i, &kept, &set);
    }
}

fn fold(st: &mut State, f: &Facts, i: usize, fd: &Fold, set: &impl Fn(&mut Op, u32)) -> bool {
    let elide_and_extend = |def_at: &mut [i64], last_use: &mut [i64]| {
        for &e in &fd.elided {
            def_at[f.records[e].outputs[0] as usize] = NEVER;
        }
        if fd.src & REF_TENSOR == 0 {
            let s = fd.src as usize;
            last_use[s] = last_use[s].max(i as i64);
        }
    };
    if !st.relive(f, elide_and_extend) {
        return false;
    }
    for &e in &fd.elided {
        st.steps[e] = None;
    }
    if let Some(Step { op, .. }) = &mut st.steps[i] {
        set(op, fd.src);
    }
    true
}
