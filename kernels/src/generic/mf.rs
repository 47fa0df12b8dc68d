//! Matrix-factorization SGD: one rating's update of a user row `p` and an item row `q`.
//!
//! Definition (both storage forms): `e = target − p·q`, then for every j, with the old values,
//! `p_j ← p_j + lr·(e·q_j − reg·p_j)` and `q_j ← q_j + lr·(e·p_j − reg·q_j)`, computed as
//! `fma(lr·e, q_j, (1 − lr·reg)·p_j)` (and the same for `q_j`); the kernel returns `e` (the
//! caller updates the biases). The dot product is fused multiply-adds in a fixed order: 16 lane
//! sums (element j into lane j mod 16, in order), then folded in halves (lanes l and l+8, then
//! l and l+4, l and l+2, l and l+1). A fused multiply-add rounds once whatever computes it, so
//! every overlay gives exactly these bits and variants are tested bit-exact.
//!
//! The f16 form stores rows as IEEE binary16 bits and computes in f32: load, update, round to
//! nearest even on store. It also counts the element updates lost to the storage: those whose
//! f32 result differs from the old value but rounds back to the old f16 bits (`lost`). That share
//! tells the trainer when 16-bit storage has stopped keeping up with the updates.
//!
//! The mixed form takes one row stored as f16 (`h`) and one as f32 (`w`): the same step, `h`
//! rounded on store and its lost updates counted, `w` kept in f32. The step is symmetric in its
//! two rows (a fused multiply-add's product commutes), so it does not matter which of the user
//! and item rows is the 16-bit one.

use super::f16_to_f32;

const LANES: usize = 16;

/// `a·b + c` rounded once (the hardware instruction under `std`, `libm` without it).
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(feature = "std"))]
    {
        libm::fmaf(a, b, c)
    }
}

/// `p·q` in the fixed order of the module docs.
#[inline(always)]
pub fn dot_fixed(p: &[f32], q: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut pc = p.chunks_exact(LANES);
    let mut qc = q.chunks_exact(LANES);
    for (a, b) in (&mut pc).zip(&mut qc) {
        for l in 0..LANES {
            acc[l] = fma(a[l], b[l], acc[l]);
        }
    }
    for (l, (a, b)) in pc.remainder().iter().zip(qc.remainder()).enumerate() {
        acc[l] = fma(*a, *b, acc[l]);
    }
    fold16(acc)
}

/// Folds 16 lane sums in halves (l + l+8, l + l+4, l + l+2, l + l+1).
#[inline(always)]
pub fn fold16(acc: [f32; LANES]) -> f32 {
    let mut s8 = [0f32; 8];
    for l in 0..8 {
        s8[l] = acc[l] + acc[l + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// One SGD step on f32 rows; see the module docs. `p.len() == q.len()`. Inlined so that each
/// ISA's overlay compiles it with its own features (FMA among them).
#[inline(always)]
pub fn mf_step_f32(p: &mut [f32], q: &mut [f32], target: f32, lr: f32, reg: f32) -> f32 {
    let e = target - dot_fixed(p, q);
    let (c, d) = (lr * e, 1.0 - lr * reg);
    for (a, b) in p.iter_mut().zip(q.iter_mut()) {
        let (pa, qb) = (*a, *b);
        *a = fma(c, qb, d * pa);
        *b = fma(c, pa, d * qb);
    }
    e
}

/// f32 → f16 bits, round to nearest even (overflow to infinity, subnormals exact, NaN kept NaN).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xFF) as i32;
    let man = b & 0x7F_FFFF;
    if exp == 0xFF {
        return sign | 0x7C00 | if man != 0 { 0x200 | (man >> 13) as u16 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7C00;
    }
    if e <= 0 {
        // Subnormal (or zero) in f16: shift the full significand right, rounding to even.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut v = m >> shift;
        if rest > half || (rest == half && v & 1 == 1) {
            v += 1;
        }
        return sign | v as u16;
    }
    let rest = man & 0x1FFF;
    let mut v = ((e as u32) << 10) | (man >> 13);
    if rest > 0x1000 || (rest == 0x1000 && v & 1 == 1) {
        v += 1; // may carry into the exponent, up to infinity: still correct
    }
    sign | v as u16
}

/// How a row stores its values: f32 as they are, or f16 bits (`u16`) rounded to nearest even.
/// The f16 and mixed steps are one body over the storage of each of their two rows.
pub trait Stored: Copy + PartialEq {
    /// Whether storing can lose an update (f32 never does, and is never counted).
    const ROUNDS: bool;
    fn widen(self) -> f32;
    fn narrow(v: f32) -> Self;
}

impl Stored for f32 {
    const ROUNDS: bool = false;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(v: f32) -> f32 {
        v
    }
}

impl Stored for u16 {
    const ROUNDS: bool = true;
    #[inline(always)]
    fn widen(self) -> f32 {
        f16_to_f32(self)
    }
    #[inline(always)]
    fn narrow(v: f32) -> u16 {
        f32_to_f16(v)
    }
}

/// The dot product from an overlay's 16 lane sums: the elements after the last full vector
/// (`p`, `q`, fewer than 16) added into lanes 0.., then folded as [`fold16`] does.
#[inline(always)]
pub fn fold16_tail<A: Stored, B: Stored>(mut lanes: [f32; LANES], p: &[A], q: &[B]) -> f32 {
    for (j, (a, b)) in p.iter().zip(q).enumerate() {
        lanes[j] = fma(a.widen(), b.widen(), lanes[j]);
    }
    fold16(lanes)
}

/// The step on rows of any storage (the f16 and mixed steps; f32 rows alone take
/// [`mf_step_f32`], whose chunked loop vectorizes).
#[inline(always)]
fn step_stored<A: Stored, B: Stored>(
    p: &mut [A],
    q: &mut [B],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    let mut acc = [0f32; LANES];
    for (j, (a, b)) in p.iter().zip(q.iter()).enumerate() {
        acc[j % LANES] = fma(a.widen(), b.widen(), acc[j % LANES]);
    }
    let e = target - fold16(acc);
    let n = update_tail(p, q, lr * e, 1.0 - lr * reg);
    if let Some(l) = lost {
        *l += n;
    }
    e
}

/// The update half of a step with `c = lr·e`, `d = 1 − lr·reg`; returns the lost element
/// updates (those of rounding rows whose new value moved but stores as the old bits).
/// Overlays run it on the elements after their last full vector.
#[inline(always)]
pub fn update_tail<A: Stored, B: Stored>(p: &mut [A], q: &mut [B], c: f32, d: f32) -> u32 {
    let mut n = 0u32;
    for (a, b) in p.iter_mut().zip(q.iter_mut()) {
        let (pa, qb) = (a.widen(), b.widen());
        let (np, nq) = (fma(c, qb, d * pa), fma(c, pa, d * qb));
        let (hp, hq) = (A::narrow(np), B::narrow(nq));
        n += (A::ROUNDS & (hp == *a) & (np != pa)) as u32;
        n += (B::ROUNDS & (hq == *b) & (nq != qb)) as u32;
        *a = hp;
        *b = hq;
    }
    n
}

/// One SGD step on f16-stored rows; see the module docs. Adds the lost element updates to
/// `lost` when given one (the rows get the same bits either way: counting only costs time,
/// which is why callers sample it).
pub fn mf_step_f16(
    p: &mut [u16],
    q: &mut [u16],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    step_stored(p, q, target, lr, reg, lost)
}

/// One SGD step on an f16-stored row `h` and an f32 row `w` (see the module docs); adds the
/// element updates lost in `h` to `lost` when given one.
pub fn mf_step_mixed(
    h: &mut [u16],
    w: &mut [f32],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    step_stored(h, w, target, lr, reg, lost)
}
