//! NEON baseline: activations and weights widened to i16, `smlal` into one i32x4 per column
//! (its four lanes are the four k of a quad), lanes summed at the end.

use super::MR;
use crate::pack::PANEL;
use core::arch::aarch64::*;

/// # Safety
/// NEON present; `rows` rows of `quads·4` bytes at stride `lda` readable from `a`; one
/// panel (`quads·64` bytes) readable from `b`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn tile(
    rows: usize,
    quads: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    acc: &mut [[i32; PANEL]; MR],
) {
    for (r, accr) in acc.iter_mut().enumerate().take(rows) {
        // SAFETY: per the function contract; every load below is inside row r or the panel.
        unsafe {
            let mut cols = [vdupq_n_s32(0); PANEL];
            let ar = a.add(r * lda);
            for q in 0..quads {
                let a4 = (ar.add(q * 4) as *const u32).read_unaligned();
                let av = vreinterpretq_s16_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(a4))));
                let a_lo = vget_low_s16(av);
                for c4 in 0..4 {
                    let bq = vld1q_s8(b.add(q * 64 + c4 * 16));
                    let lo = vmovl_s8(vget_low_s8(bq));
                    let hi = vmovl_s8(vget_high_s8(bq));
                    let c = 4 * c4;
                    cols[c] = vmlal_s16(cols[c], vget_low_s16(lo), a_lo);
                    cols[c + 1] = vmlal_high_s16(cols[c + 1], lo, av);
                    cols[c + 2] = vmlal_s16(cols[c + 2], vget_low_s16(hi), a_lo);
                    cols[c + 3] = vmlal_high_s16(cols[c + 3], hi, av);
                }
            }
            for (o, v) in accr.iter_mut().zip(cols) {
                *o = vaddvq_s32(v);
            }
        }
    }
}
