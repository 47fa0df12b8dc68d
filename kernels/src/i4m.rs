//! INT4 weights with integer group multipliers (W4A8, "two-level" scales).
//!
//! Each (column `j`, group `g`) of K carries a small integer multiplier `M[j,g]` in 1..=16 and each
//! column one f32 scale, so the weight is `Q[j,p]·M[j,p/group]·s_j` with `Q` in −8..=7. The product
//! `Q·M` lies in −128..=112: it *is* an INT8 weight, and the whole GEMM is the INT8 GEMM of
//! [`crate::I8GemmFn`] on those widened weights, with `b_sum[j] = Σ_p Q·M` and `scale[j]` the
//! folded activation × column scale. Every variant therefore widens a block of panels into a stack
//! buffer (once per call, reused by every row) and hands it to one INT8 GEMM variant: no per-group
//! float work, so INT4 runs at the INT8 kernel's speed while its weights take half the bytes.
//!
//! The codes use the packed INT4 `K4N16` layout of [`crate::pack::pack_k4n16_i4`]; multipliers are
//! one byte per (panel, group, column), in the `[⌈n/16⌉][k/group][16]` order of
//! [`crate::pack::panel_groups`].

use crate::pack::{k4, k4n16_i4_len, k4n16_index, PANEL};
use crate::{Act, I8GemmFn};
use core::mem::MaybeUninit;

/// Bytes of the widening buffer on each caller's stack.
pub const WIDE_BYTES: usize = 65_536;
/// Deepest K a variant accepts: one whole widened panel (16 columns × k4(K) bytes) fits the buffer.
pub const I4M_MAX_K: usize = WIDE_BYTES / PANEL;

/// Panics unless the slices satisfy [`crate::I4mGemmFn`]'s preconditions; returns the groups.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    bp: &[u8],
    group: usize,
    gmul: &[u8],
    w_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    out: &[f32],
    ldo: usize,
) -> usize {
    assert!(
        (4..=256).contains(&group) && group.is_multiple_of(4) && k.is_multiple_of(group),
        "i4m gemm: group {group} for k {k}"
    );
    assert!(k4(k) <= I4M_MAX_K, "i4m gemm: k {k} deeper than {I4M_MAX_K}");
    let groups = k / group;
    if m == 0 || n == 0 {
        return groups;
    }
    assert!(lda >= k4(k) && a.len() >= (m - 1) * lda + k4(k), "i4m gemm: a too short");
    assert!(bp.len() >= k4n16_i4_len(n, k), "i4m gemm: packed b too short");
    assert!(gmul.len() >= n.div_ceil(PANEL) * PANEL * groups, "i4m gemm: multipliers too short");
    assert!(w_sum.len() >= n && scale.len() >= n && bias.len() >= n, "i4m gemm: epilogue");
    assert!(ldo >= n && out.len() >= (m - 1) * ldo + n, "i4m gemm: out too short");
    groups
}

/// The reference twin (see [`crate::I4mGemmFn`]): exact i32 sums of `a·Q·M`, then the INT8
/// epilogue of [`crate::generic::i8_gemm`] (one multiply, one add, then the activation).
#[allow(clippy::too_many_arguments)]
pub fn i4m_gemm_generic(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[u8],
    group: usize,
    gmul: &[u8],
    w_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
) {
    let groups = check(m, k, n, a, lda, bp, group, gmul, w_sum, scale, bias, out, ldo);
    for i in 0..m {
        let arow = &a[i * lda..i * lda + k];
        for j in 0..n {
            let side = (j / PANEL) * groups * PANEL + j % PANEL;
            let mut acc: i32 = 0;
            for (p, x) in arow.iter().enumerate() {
                let ix = k4n16_index(j, p, k);
                let q = crate::pack::i4_at(&bp[ix / 64 * 32..ix / 64 * 32 + 32], ix % 64);
                let w = q.wrapping_mul(gmul[side + (p / group) * PANEL] as i8);
                acc = acc.wrapping_add(*x as i32 * w as i32);
            }
            let corrected = acc.wrapping_sub(a_zp.wrapping_mul(w_sum[j]));
            out[i * ldo + j] =
                crate::generic::act_apply(corrected as f32 * scale[j] + bias[j], act);
        }
    }
}

/// Widens panels `p0..p0 + np` into `dst` (`np · 16 · k4(k)` bytes, the `K4N16` i8 layout):
/// byte `i` of each 64-byte quad becomes `Q_i · M`, `M` the multiplier of the quad's group and
/// of column `i / 4`. Inlined into each ISA's `#[target_feature]` wrapper, which vectorizes it.
#[inline(always)]
pub fn widen_panels(
    bp: &[u8],
    k: usize,
    group: usize,
    gmul: &[u8],
    p0: usize,
    np: usize,
    dst: &mut [MaybeUninit<i8>],
) {
    let quads = k4(k) / 4;
    let groups = k / group;
    let (src_stride, dst_stride) = (quads * 32, quads * 64);
    for t in 0..np {
        let p = p0 + t;
        let src = &bp[p * src_stride..(p + 1) * src_stride];
        let out = &mut dst[t * dst_stride..(t + 1) * dst_stride];
        let mut mv = [0i8; 64];
        for q in 0..quads {
            // Depth 4q starts a new group every group/4 quads (the pad quad of a k that is not a
            // multiple of 4 cannot occur: group divides k and is a multiple of 4).
            if (4 * q).is_multiple_of(group) {
                let g = (4 * q / group).min(groups - 1);
                let mrow = &gmul[(p * groups + g) * PANEL..][..PANEL];
                for (c, mc) in mrow.iter().enumerate() {
                    mv[4 * c..4 * c + 4].fill(*mc as i8);
                }
            }
            let s: &[u8; 32] = src[q * 32..q * 32 + 32].try_into().expect("32-byte quad");
            let o: &mut [MaybeUninit<i8>; 64] =
                (&mut out[q * 64..q * 64 + 64]).try_into().expect("64-byte quad");
            for i in 0..32 {
                let lo = ((s[i] & 0x0F) ^ 8) as i8 - 8;
                let hi = ((s[i] >> 4) ^ 8) as i8 - 8;
                o[i].write(lo.wrapping_mul(mv[i]));
                o[i + 32].write(hi.wrapping_mul(mv[i + 32]));
            }
        }
    }
}

/// A [`widen_panels`] compiled for one ISA.
pub type WidenFn = fn(
    bp: &[u8],
    k: usize,
    group: usize,
    gmul: &[u8],
    p0: usize,
    np: usize,
    dst: &mut [MaybeUninit<i8>],
);

/// The body of every fast variant: blocks of panels widened by `widen`, each block one call of
/// the INT8 GEMM `i8` on all `m` rows.
///
/// # Safety
/// `widen` must write every byte of the `dst` it is given (the INT8 kernel then reads them as
/// initialized i8): [`widen_panels`] and the ISA wideners built on it or tested against it do.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
#[inline(always)]
pub(crate) unsafe fn i4m_via_i8(
    i8: I8GemmFn,
    widen: WidenFn,
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[u8],
    group: usize,
    gmul: &[u8],
    w_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
) {
    check(m, k, n, a, lda, bp, group, gmul, w_sum, scale, bias, out, ldo);
    if m == 0 || n == 0 {
        return;
    }
    let per_panel = PANEL * k4(k);
    let fit = WIDE_BYTES / per_panel;
    // As many panels per INT8 call as the buffer holds (an even count when it holds two or
    // more, so the INT8 tile runs two panels wide): fewer calls measured faster than blocks
    // sized for L1 (the INT8 kernel streams its weights from L2 either way).
    let np = if fit >= 2 { fit & !1 } else { 1 };
    let panels = n.div_ceil(PANEL);
    // Cache-line aligned, as the packed weights of a mapped file are: every 64-byte quad the
    // INT8 kernel loads is one line.
    #[repr(C, align(64))]
    struct Wide([MaybeUninit<i8>; WIDE_BYTES]);
    let mut wide = Wide([MaybeUninit::<i8>::uninit(); WIDE_BYTES]);
    let wide = &mut wide.0;
    let mut p0 = 0;
    while p0 < panels {
        let nb = np.min(panels - p0);
        let (j0, len) = (p0 * PANEL, nb * per_panel);
        let cols = (n - j0).min(nb * PANEL);
        widen(bp, k, group, gmul, p0, nb, &mut wide[..len]);
        // SAFETY: `widen` wrote every one of the first `len` bytes (the caller's contract), and
        // `MaybeUninit<i8>` has i8's layout.
        let w: &[i8] = unsafe { core::slice::from_raw_parts(wide.as_ptr() as *const i8, len) };
        i8(
            m,
            k,
            cols,
            a,
            lda,
            a_zp,
            w,
            &w_sum[j0..],
            &scale[j0..],
            &bias[j0..],
            act,
            &mut out[j0..],
            ldo,
        );
        p0 += nb;
    }
}

/// [`widen_panels`] as plain portable code (the generic composition and the aarch64 variants).
pub fn widen_portable(
    bp: &[u8],
    k: usize,
    group: usize,
    gmul: &[u8],
    p0: usize,
    np: usize,
    dst: &mut [MaybeUninit<i8>],
) {
    widen_panels(bp, k, group, gmul, p0, np, dst)
}

/// A public [`crate::I4mGemmFn`]: the INT8 variant `$i8` fed by the widener `$widen`, which
/// must write every byte it is given (see [`i4m_via_i8`]).
#[allow(unused_macros)]
macro_rules! i4m_variant {
    // The optional tail hands calls of at most `$rows` rows to `$small` (an exact INT4M GEMM
    // without the widening pass) on a CPU where `$has()` holds.
    ($name:ident, $i8:path, $widen:path $(, up to $rows:expr => $small:path, if $has:path)?) => {
        /// See [`crate::I4mGemmFn`].
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            m: usize,
            k: usize,
            n: usize,
            a: &[u8],
            lda: usize,
            a_zp: i32,
            bp: &[u8],
            group: usize,
            gmul: &[u8],
            w_sum: &[i32],
            scale: &[f32],
            bias: &[f32],
            act: $crate::Act,
            out: &mut [f32],
            ldo: usize,
        ) {
            $(
                if m <= $rows && $has() {
                    return $small(
                        m, k, n, a, lda, a_zp, bp, group, gmul, w_sum, scale, bias, act, out, ldo,
                    );
                }
            )?
            // SAFETY: every widener passed here (`widen_portable`, the x86 ones) writes all of
            // its destination: byte-compared with the definition in the twins tests.
            unsafe {
                $crate::i4m::i4m_via_i8(
                    $i8, $widen, m, k, n, a, lda, a_zp, bp, group, gmul, w_sum, scale, bias, act,
                    out, ldo,
                )
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use i4m_variant;
