//! dotprod: `sdot vd.4s, vb.16b, va.4b[l]` adds, for 4 columns, the dot product of 4 weights
//! with the 4 activations of quad `l` of `va`. Activations are shifted to i8 (`a − 128`, one
//! XOR per 16 bytes); the epilogue corrects with `zp_shift = 128`.

use super::MR;
use crate::pack::PANEL;
use core::arch::aarch64::*;
use core::arch::asm;

#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot<const L: i32>(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` (by element) only reads and writes the three vector registers; the
    // dotprod feature is enabled for this function.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            b = in(vreg) b,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// # Safety
/// dotprod present; `rows` (≤ 4) rows of `quads·4` bytes at stride `lda` readable from `a`;
/// one panel (`quads·64` bytes) readable from `b`.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn tile(
    rows: usize,
    quads: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    acc: &mut [[i32; PANEL]; MR],
) {
    // SAFETY: per the function contract.
    unsafe {
        match rows {
            4 => tile_r::<4>(quads, a, lda, b, acc),
            3 => tile_r::<3>(quads, a, lda, b, acc),
            2 => tile_r::<2>(quads, a, lda, b, acc),
            _ => tile_r::<1>(quads, a, lda, b, acc),
        }
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_r<const R: usize>(
    quads: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    out: &mut [[i32; PANEL]; MR],
) {
    // SAFETY: loads stay inside R rows of quads·4 bytes and one panel of quads·64 bytes: the
    // 16-byte activation loads happen only while 4 whole quads remain.
    unsafe {
        let flip = vdupq_n_u8(0x80);
        let mut acc = [[vdupq_n_s32(0); 4]; R];
        let mut q = 0;
        while q + 4 <= quads {
            let mut av = [vdupq_n_s8(0); R];
            for (r, v) in av.iter_mut().enumerate() {
                *v = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(a.add(r * lda + q * 4)), flip));
            }
            macro_rules! quad {
                ($l:literal) => {{
                    let bq = b.add((q + $l) * 64);
                    let bv = [
                        vld1q_s8(bq),
                        vld1q_s8(bq.add(16)),
                        vld1q_s8(bq.add(32)),
                        vld1q_s8(bq.add(48)),
                    ];
                    for (accr, avr) in acc.iter_mut().zip(&av) {
                        for (x, bc) in accr.iter_mut().zip(&bv) {
                            *x = sdot::<$l>(*x, *bc, *avr);
                        }
                    }
                }};
            }
            quad!(0);
            quad!(1);
            quad!(2);
            quad!(3);
            q += 4;
        }
        while q < quads {
            let mut av = [vdupq_n_s8(0); R];
            for (r, v) in av.iter_mut().enumerate() {
                let a4 = (a.add(r * lda + q * 4) as *const u32).read_unaligned() ^ 0x8080_8080;
                *v = vreinterpretq_s8_u32(vdupq_n_u32(a4));
            }
            let bq = b.add(q * 64);
            let bv =
                [vld1q_s8(bq), vld1q_s8(bq.add(16)), vld1q_s8(bq.add(32)), vld1q_s8(bq.add(48))];
            for (accr, avr) in acc.iter_mut().zip(&av) {
                for (x, bc) in accr.iter_mut().zip(&bv) {
                    *x = sdot::<0>(*x, *bc, *avr);
                }
            }
            q += 1;
        }
        for (o, accr) in out.iter_mut().zip(&acc) {
            for (c, v) in accr.iter().enumerate() {
                vst1q_s32(o.as_mut_ptr().add(4 * c), *v);
            }
        }
    }
}
