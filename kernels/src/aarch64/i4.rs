//! INT4 (group-wise, W4A8) on aarch64: each group of a panel is widened to i8 once per 64-row
//! block into a stack buffer laid out like a `K4N16` panel, and the INT8 tiles of the variant
//! (NEON, dotprod or i8mm) run over it; every group's i32 sums are scaled into the f32 output in
//! group order, as the generic twin does.

use super::{TileFn, MR};
use crate::check::{check_i4, finish_i4};
use crate::generic::f16_to_f32;
use crate::pack::{i4_at, PANEL};
use crate::Act;

/// Largest group the stack buffer holds.
pub const MAX_GROUP: usize = 256;
/// Rows per block (their f32 partial sums stay in cache across groups).
const MB: usize = 64;

/// See [`crate::I4GemmFn`]; `tile` and `zp_shift` as in [`super::drive`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn drive_i4(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[u8],
    group: usize,
    gsum: &[i32],
    gscale: &[u16],
    x_scale: f32,
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
    tile: TileFn,
    zp_shift: i32,
) {
    let groups = check_i4(m, k, n, a, lda, bp, group, gsum, gscale, bias, out, ldo, MAX_GROUP);
    if m == 0 || n == 0 {
        return;
    }
    let (gq, pstride, zp) = (group / 4, PANEL * k / 2, a_zp - zp_shift);
    let mut wide = [0i8; 64 * (MAX_GROUP / 4)];
    let mut acc = [[0i32; PANEL]; MR];
    for p in 0..n.div_ceil(PANEL) {
        let (j0, valid) = (p * PANEL, (n - p * PANEL).min(PANEL));
        for i0 in (0..m).step_by(MB) {
            let i1 = (i0 + MB).min(m);
            for g in 0..groups {
                for (q, dst) in wide[..64 * gq].chunks_exact_mut(64).enumerate() {
                    let at = p * pstride + (g * gq + q) * 32;
                    let src = &bp[at..at + 32];
                    for (t, d) in dst.iter_mut().enumerate() {
                        *d = i4_at(src, t);
                    }
                }
                let side = (p * groups + g) * PANEL;
                let mut i = i0;
                while i < i1 {
                    let rows = (i1 - i).min(MR);
                    // SAFETY: check_i4 proved rows i..i+rows readable through k at stride lda, so
                    // through the group's k range from offset g·group; `wide` holds gq whole
                    // quads; the caller checked the CPU feature.
                    unsafe {
                        tile(
                            rows,
                            gq,
                            a.as_ptr().add(i * lda + g * group),
                            lda,
                            wide.as_ptr(),
                            &mut acc,
                        )
                    };
                    for (r, accr) in acc.iter().enumerate().take(rows) {
                        let o = &mut out[(i + r) * ldo + j0..(i + r) * ldo + j0 + valid];
                        for (c, o) in o.iter_mut().enumerate() {
                            let corrected = accr[c].wrapping_sub(zp.wrapping_mul(gsum[side + c]));
                            let t = corrected as f32 * f16_to_f32(gscale[side + c]);
                            *o = if g == 0 { 0.0 + t } else { *o + t };
                        }
                    }
                    i += rows;
                }
            }
        }
    }
    finish_i4(m, n, out, ldo, x_scale, bias, act, &|a, row| a.apply_slice(row));
}
