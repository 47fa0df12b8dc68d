//! i8mm: `usmmla vd.4s, va.16b, vb.16b` multiplies a 2×8 u8 block (two activation rows) by an
//! 8×2 i8 block (two weight columns) into a 2×2 i32 block. Two `K4N16` quads give 8 k per
//! column; one `zip` of 32-bit lanes pairs them per column. u8 activations are used as they are.

use super::MR;
use crate::pack::PANEL;
use core::arch::aarch64::*;
use core::arch::asm;

#[target_feature(enable = "neon,i8mm")]
#[inline]
fn usmmla(acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `usmmla` only reads and writes the three vector registers; i8mm is enabled.
    unsafe {
        asm!(
            "usmmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// # Safety
/// i8mm present; `rows` (≤ 4) rows of `quads·4` bytes at stride `lda` readable from `a`; one
/// panel (`quads·64` bytes) readable from `b`.
#[target_feature(enable = "neon,i8mm")]
pub(super) unsafe fn tile(
    rows: usize,
    quads: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    acc: &mut [[i32; PANEL]; MR],
) {
    // Rows past `rows` repeat the last real row (their results are not stored).
    let row = |r: usize| a.wrapping_add(r.min(rows - 1) * lda);
    let ptrs = [row(0), row(1), row(2), row(3)];
    // SAFETY: per the function contract; every pointer in `ptrs` is a real row.
    unsafe {
        if rows <= 2 {
            tile_p::<1>(quads, &ptrs, b, acc)
        } else {
            tile_p::<2>(quads, &ptrs, b, acc)
        }
    }
}

#[target_feature(enable = "neon,i8mm")]
unsafe fn tile_p<const P: usize>(
    quads: usize,
    rows: &[*const u8; 4],
    b: *const i8,
    out: &mut [[i32; PANEL]; MR],
) {
    // SAFETY: an 8-byte activation load happens only when two quads remain (else 4 bytes);
    // weight loads of quad q+1 only when it exists; all inside the rows and the panel.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 8]; P];
        let zero = vdupq_n_s8(0);
        let mut q = 0;
        while q < quads {
            let two = q + 1 < quads;
            let mut bm = [zero; 8];
            for c4 in 0..4 {
                let b0 = vreinterpretq_s32_s8(vld1q_s8(b.add(q * 64 + c4 * 16)));
                let b1 = if two {
                    vreinterpretq_s32_s8(vld1q_s8(b.add((q + 1) * 64 + c4 * 16)))
                } else {
                    vdupq_n_s32(0)
                };
                bm[2 * c4] = vreinterpretq_s8_s32(vzip1q_s32(b0, b1));
                bm[2 * c4 + 1] = vreinterpretq_s8_s32(vzip2q_s32(b0, b1));
            }
            for (p, accp) in acc.iter_mut().enumerate() {
                let load = |r: *const u8| -> uint8x8_t {
                    if two {
                        vld1_u8(r.add(q * 4))
                    } else {
                        vreinterpret_u8_u32(vset_lane_u32::<0>(
                            (r.add(q * 4) as *const u32).read_unaligned(),
                            vdup_n_u32(0),
                        ))
                    }
                };
                let av = vcombine_u8(load(rows[2 * p]), load(rows[2 * p + 1]));
                for (x, bv) in accp.iter_mut().zip(&bm) {
                    *x = usmmla(*x, av, *bv);
                }
            }
            q += 2;
        }
        // acc[p][cp] = [r0·c0, r0·c1, r1·c0, r1·c1] for columns 2cp, 2cp+1.
        for (p, accp) in acc.iter().enumerate() {
            for c4 in 0..4 {
                let (x, y) =
                    (vreinterpretq_s64_s32(accp[2 * c4]), vreinterpretq_s64_s32(accp[2 * c4 + 1]));
                vst1q_s32(
                    out[2 * p].as_mut_ptr().add(4 * c4),
                    vreinterpretq_s32_s64(vzip1q_s64(x, y)),
                );
                vst1q_s32(
                    out[2 * p + 1].as_mut_ptr().add(4 * c4),
                    vreinterpretq_s32_s64(vzip2q_s64(x, y)),
                );
            }
        }
    }
}
