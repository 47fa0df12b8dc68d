//! NEON matrix-factorization step on f16-stored rows (see `generic::mf` for the definition and
//! the fixed order of the dot product). Rows widen with `fcvtl`/`fcvtl2` and narrow with
//! `fcvtn`/`fcvtn2` (base ARMv8 AdvSIMD: every Cortex-A core, no FP16 arithmetic extension
//! needed), round to nearest even under the default FPCR, as the twin does; emitted with `asm!`
//! because the intrinsics take `float16x4_t`, which is not stable. Same bits as the twin.

use crate::generic::mf as g;
use core::arch::aarch64::*;
use core::arch::asm;

/// Eight f16 patterns → two vectors of four f32 (lanes 0-3, 4-7).
#[target_feature(enable = "neon")]
#[inline]
fn widen(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only conversions (AdvSIMD, baseline on aarch64); no memory, no flags.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    (lo, hi)
}

/// Two vectors of four f32 → eight f16 patterns, round to nearest even.
#[target_feature(enable = "neon")]
#[inline]
fn narrow(lo: float32x4_t, hi: float32x4_t) -> uint16x8_t {
    let r: uint16x8_t;
    // SAFETY: as above; `r` is a plain output (never an input's register): `fcvtn` writes its
    // low half, `fcvtn2` the high half.
    unsafe {
        asm!(
            "fcvtn {r:v}.4h, {lo:v}.4s",
            "fcvtn2 {r:v}.8h, {hi:v}.4s",
            lo = in(vreg) lo,
            hi = in(vreg) hi,
            r = out(vreg) r,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    r
}

/// f16 step with NEON; same contract and bits as `generic::mf::mf_step_f16`.
pub fn mf_step_f16_neon(
    p: &mut [u16],
    q: &mut [u16],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    assert!(super::has_neon(), "mf_step_f16_neon on a CPU without NEON");
    let n = p.len().min(q.len());
    let (p, q) = (&mut p[..n], &mut q[..n]);
    // SAFETY: NEON is present (asserted); the body stays within `p[..n]` and `q[..n]`.
    unsafe {
        match lost {
            Some(l) => step::<true>(p, q, target, lr, reg, l),
            None => step::<false>(p, q, target, lr, reg, &mut 0),
        }
    }
}

#[target_feature(enable = "neon")]
fn step<const COUNT: bool>(
    p: &mut [u16],
    q: &mut [u16],
    target: f32,
    lr: f32,
    reg: f32,
    lost: &mut u32,
) -> f32 {
    let n = p.len();
    let full = n / 16 * 16;
    // Lanes 0-3, 4-7, 8-11, 12-15 of the twin's 16 lane sums.
    let mut acc = [vdupq_n_f32(0.0); 4];
    for c in (0..full).step_by(16) {
        // SAFETY: c + 16 <= full <= n = p.len() = q.len(); 16-byte loads of 8 u16 each.
        let (p0, p1, q0, q1) = unsafe {
            let (pp, qp) = (p.as_ptr().add(c), q.as_ptr().add(c));
            (vld1q_u16(pp), vld1q_u16(pp.add(8)), vld1q_u16(qp), vld1q_u16(qp.add(8)))
        };
        let ((a0, a1), (a2, a3)) = (widen(p0), widen(p1));
        let ((b0, b1), (b2, b3)) = (widen(q0), widen(q1));
        acc[0] = vfmaq_f32(acc[0], a0, b0);
        acc[1] = vfmaq_f32(acc[1], a1, b1);
        acc[2] = vfmaq_f32(acc[2], a2, b2);
        acc[3] = vfmaq_f32(acc[3], a3, b3);
    }
    let mut lanes = [0f32; 16];
    for (l, v) in lanes.chunks_exact_mut(4).zip(acc) {
        // SAFETY: each chunk holds 4 f32.
        unsafe { vst1q_f32(l.as_mut_ptr(), v) };
    }
    let e = target - g::fold16_tail(lanes, &p[full..], &q[full..]);
    let (c, d) = (lr * e, 1.0 - lr * reg);
    let (vc, vd) = (vdupq_n_f32(c), vdupq_n_f32(d));
    let v8 = n / 8 * 8;
    // Per lane, lost element updates as a negative count (a true mask is all ones: −1).
    let mut cnt = vdupq_n_u16(0);
    for c8 in (0..v8).step_by(8) {
        // SAFETY: c8 + 8 <= v8 <= n; the stores write the same 8 elements.
        unsafe {
            let (pp, qp) = (p.as_mut_ptr().add(c8), q.as_mut_ptr().add(c8));
            let (hp, hq) = (vld1q_u16(pp), vld1q_u16(qp));
            let ((a0, a1), (b0, b1)) = (widen(hp), widen(hq));
            let na = (vfmaq_f32(vmulq_f32(vd, a0), vc, b0), vfmaq_f32(vmulq_f32(vd, a1), vc, b1));
            let nb = (vfmaq_f32(vmulq_f32(vd, b0), vc, a0), vfmaq_f32(vmulq_f32(vd, b1), vc, a1));
            let (hna, hnb) = (narrow(na.0, na.1), narrow(nb.0, nb.1));
            if COUNT {
                // Moved in f32 (not equal, NaN included) but the same f16 pattern.
                let moved = |x: float32x4_t, y: float32x4_t| vmvnq_u32(vceqq_f32(x, y));
                let ma = vcombine_u16(vmovn_u32(moved(na.0, a0)), vmovn_u32(moved(na.1, a1)));
                let mb = vcombine_u16(vmovn_u32(moved(nb.0, b0)), vmovn_u32(moved(nb.1, b1)));
                cnt = vsubq_u16(cnt, vandq_u16(ma, vceqq_u16(hna, hp)));
                cnt = vsubq_u16(cnt, vandq_u16(mb, vceqq_u16(hnb, hq)));
            }
            vst1q_u16(pp, hna);
            vst1q_u16(qp, hnb);
        }
    }
    let tail = g::update_tail(&mut p[v8..], &mut q[v8..], c, d);
    if COUNT {
        *lost += vaddlvq_u16(cnt) + tail;
    }
    e
}

/// Mixed step (f16 row `h`, f32 row `w`) with NEON; same contract and bits as
/// `generic::mf::mf_step_mixed`.
pub fn mf_step_mixed_neon(
    h: &mut [u16],
    w: &mut [f32],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    assert!(super::has_neon(), "mf_step_mixed_neon on a CPU without NEON");
    let n = h.len().min(w.len());
    let (h, w) = (&mut h[..n], &mut w[..n]);
    // SAFETY: NEON is present (asserted); the body stays within `h[..n]` and `w[..n]`.
    unsafe {
        match lost {
            Some(l) => step_mixed::<true>(h, w, target, lr, reg, l),
            None => step_mixed::<false>(h, w, target, lr, reg, &mut 0),
        }
    }
}

#[target_feature(enable = "neon")]
fn step_mixed<const COUNT: bool>(
    h: &mut [u16],
    w: &mut [f32],
    target: f32,
    lr: f32,
    reg: f32,
    lost: &mut u32,
) -> f32 {
    let n = h.len();
    let full = n / 16 * 16;
    let (hp, wp) = (h.as_mut_ptr(), w.as_mut_ptr());
    let load = |c: usize| {
        // SAFETY: callers pass c + 8 <= n = h.len() = w.len(); 8 u16 and 8 f32.
        unsafe {
            let (a0, a1) = widen(vld1q_u16(hp.add(c)));
            ((a0, a1), (vld1q_f32(wp.add(c)), vld1q_f32(wp.add(c + 4))))
        }
    };
    // Lanes 0-3, 4-7, 8-11, 12-15 of the twin's 16 lane sums.
    let mut acc = [vdupq_n_f32(0.0); 4];
    for c in (0..full).step_by(16) {
        let (((a0, a1), (b0, b1)), ((a2, a3), (b2, b3))) = (load(c), load(c + 8));
        acc[0] = vfmaq_f32(acc[0], a0, b0);
        acc[1] = vfmaq_f32(acc[1], a1, b1);
        acc[2] = vfmaq_f32(acc[2], a2, b2);
        acc[3] = vfmaq_f32(acc[3], a3, b3);
    }
    let mut lanes = [0f32; 16];
    for (l, v) in lanes.chunks_exact_mut(4).zip(acc) {
        // SAFETY: each chunk holds 4 f32.
        unsafe { vst1q_f32(l.as_mut_ptr(), v) };
    }
    let e = target - g::fold16_tail(lanes, &h[full..], &w[full..]);
    let (c, d) = (lr * e, 1.0 - lr * reg);
    let (vc, vd) = (vdupq_n_f32(c), vdupq_n_f32(d));
    let v8 = n / 8 * 8;
    // Per lane, lost element updates as a negative count (a true mask is all ones: −1).
    let mut cnt = vdupq_n_u16(0);
    for c8 in (0..v8).step_by(8) {
        let ((a0, a1), (b0, b1)) = load(c8);
        let na = (vfmaq_f32(vmulq_f32(vd, a0), vc, b0), vfmaq_f32(vmulq_f32(vd, a1), vc, b1));
        let nb = (vfmaq_f32(vmulq_f32(vd, b0), vc, a0), vfmaq_f32(vmulq_f32(vd, b1), vc, a1));
        let hna = narrow(na.0, na.1);
        // SAFETY: c8 + 8 <= v8 <= n; the stores write the same 8 elements.
        unsafe {
            if COUNT {
                let old = vld1q_u16(hp.add(c8));
                let moved = |x: float32x4_t, y: float32x4_t| vmvnq_u32(vceqq_f32(x, y));
                let ma = vcombine_u16(vmovn_u32(moved(na.0, a0)), vmovn_u32(moved(na.1, a1)));
                cnt = vsubq_u16(cnt, vandq_u16(ma, vceqq_u16(hna, old)));
            }
            vst1q_u16(hp.add(c8), hna);
            vst1q_f32(wp.add(c8), nb.0);
            vst1q_f32(wp.add(c8 + 4), nb.1);
        }
    }
    let tail = g::update_tail(&mut h[v8..], &mut w[v8..], c, d);
    if COUNT {
        *lost += vaddlvq_u16(cnt) + tail;
    }
    e
}
