//! The activation quantizer on NEON: `fcvtns` rounds half to even as the twin does, and the
//! saturating narrows (`sqxtn`, `sqxtun`) clamp to 0..=255.

use crate::generic::quantize_one_u8;
use core::arch::aarch64::*;

crate::check::quantizer!(
    /// See [`crate::QuantizeU8Fn`]; 16 values per step, the tail by the generic element function.
    quantize_u8_neon,
    super::has_neon,
    "NEON",
    row
);

#[target_feature(enable = "neon")]
unsafe fn row(x: &[f32], inv: f32, mult: &[f32], zp: i32, q: &mut [u8]) {
    // SAFETY: full ≤ k, so every 4-wide load of x/mult (j + 4c + 4 ≤ full) and 16-byte store
    // of q stays within k elements.
    unsafe {
        let k = x.len();
        let full = k / 16 * 16;
        let (lo, hi) = (vdupq_n_f32(-300.0), vdupq_n_f32(300.0));
        let (zv, inv_v) = (vdupq_n_s32(zp), vdupq_n_f32(inv));
        let one = |j: usize| {
            let m = if mult.is_empty() { inv_v } else { vld1q_f32(mult.as_ptr().add(j)) };
            let t = vmulq_f32(vld1q_f32(x.as_ptr().add(j)), m);
            // NaN to 0 (the zero point after the shift), then clamp like the twin.
            let t = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(t), vceqq_f32(t, t)));
            let t = vminq_f32(vmaxq_f32(t, lo), hi);
            vaddq_s32(vcvtnq_s32_f32(t), zv)
        };
        let mut j = 0;
        while j < full {
            let ab = vcombine_s16(vqmovn_s32(one(j)), vqmovn_s32(one(j + 4)));
            let cd = vcombine_s16(vqmovn_s32(one(j + 8)), vqmovn_s32(one(j + 12)));
            vst1q_u8(q.as_mut_ptr().add(j), vcombine_u8(vqmovun_s16(ab), vqmovun_s16(cd)));
            j += 16;
        }
        let zf = zp as f32;
        for j in full..k {
            q[j] = quantize_one_u8(x[j], if mult.is_empty() { inv } else { mult[j] }, zf);
        }
    }
}
