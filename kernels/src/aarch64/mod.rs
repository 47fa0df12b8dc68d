//! aarch64 overlays of the INT8 GEMM on `K4N16` weights:
//! - `neon`: widening multiply-accumulate (`smlal`), every ARMv8-A core (Cortex-A53/A57/A72);
//! - `dotprod`: `sdot` by element (Cortex-A55/A75/A76/A78, Jetson Orin, Raspberry Pi 5);
//! - `i8mm`: `usmmla` 2×8 · 8×2 blocks (Cortex-A510/A710/X2, Neoverse V1/N2).
//!
//! `sdot`/`usmmla` are emitted with `asm!` inside `#[target_feature]` functions (their
//! intrinsics are nightly-only); the choice is made at run time, never at build time. Each
//! variant computes an i32 tile, and one shared epilogue turns it into f32, so the bits match
//! the generic twin.

mod dot;
mod i4;
mod mf;
mod mm;
mod neon;
mod quant;

pub use mf::{mf_step_f16_neon, mf_step_mixed_neon};
pub use quant::quantize_u8_neon;

use crate::check::check_gemm;
use crate::pack::{k4, PANEL};
use crate::Act;

/// A public [`crate::I8GemmFn`] that checks its CPU feature, then [`drive`]s a variant's tile.
macro_rules! variant {
    ($name:ident, $has:ident, $tile:path, $shift:expr) => {
        /// See [`crate::I8GemmFn`].
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            m: usize,
            k: usize,
            n: usize,
            a: &[u8],
            lda: usize,
            a_zp: i32,
            bp: &[i8],
            b_sum: &[i32],
            scale: &[f32],
            bias: &[f32],
            act: Act,
            out: &mut [f32],
            ldo: usize,
        ) {
            assert!($has(), concat!(stringify!($name), " on a CPU without ", stringify!($has)));
            drive(m, k, n, a, lda, a_zp, bp, b_sum, scale, bias, act, out, ldo, $tile, $shift);
        }
    };
}

variant!(i8_gemm_neon, has_neon, neon::tile, 0);
// sdot multiplies i8 × i8: the tile works on a − 128 and the epilogue corrects.
variant!(i8_gemm_dotprod, has_dotprod, dot::tile, 128);
variant!(i8_gemm_i8mm, has_i8mm, mm::tile, 0);

// INT4 with group multipliers: the portable widener (NEON is baseline, LLVM vectorizes it) in
// front of each INT8 variant.
crate::i4m::i4m_variant!(i4m_gemm_neon, i8_gemm_neon, crate::i4m::widen_portable);
crate::i4m::i4m_variant!(i4m_gemm_dotprod, i8_gemm_dotprod, crate::i4m::widen_portable);
crate::i4m::i4m_variant!(i4m_gemm_i8mm, i8_gemm_i8mm, crate::i4m::widen_portable);

/// A public [`crate::I4GemmFn`] over a variant's INT8 tile (see [`i4::drive_i4`]).
macro_rules! variant_i4 {
    ($name:ident, $has:ident, $tile:path, $shift:expr) => {
        /// See [`crate::I4GemmFn`].
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
            gsum: &[i32],
            gscale: &[u16],
            x_scale: f32,
            bias: &[f32],
            act: Act,
            out: &mut [f32],
            ldo: usize,
        ) {
            assert!($has(), concat!(stringify!($name), " on a CPU without ", stringify!($has)));
            i4::drive_i4(
                m, k, n, a, lda, a_zp, bp, group, gsum, gscale, x_scale, bias, act, out, ldo,
                $tile, $shift,
            );
        }
    };
}

variant_i4!(i4_gemm_neon, has_neon, neon::tile, 0);
variant_i4!(i4_gemm_dotprod, has_dotprod, dot::tile, 128);
variant_i4!(i4_gemm_i8mm, has_i8mm, mm::tile, 0);

/// Rows per tile.
pub(crate) const MR: usize = 4;

/// An i32 tile: `acc[r][c] = Σ_p a[r, p]·B[j0 + c, p]` for `rows` rows and 16 columns (the
/// accumulator's offset convention is the variant's, see `zp_shift`).
pub(crate) type TileFn = unsafe fn(
    rows: usize,
    quads: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    acc: &mut [[i32; PANEL]; MR],
);

pub fn has_dotprod() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

pub fn has_i8mm() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("i8mm")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

pub fn has_neon() -> bool {
    cfg!(target_feature = "neon")
}

/// Runs `tile` over every 4-row × 16-column block and applies the shared epilogue. `zp_shift`
/// is what the tile's accumulator already subtracted from each activation (128 for kernels that
/// work on `a − 128` as i8), so the epilogue subtracts `(a_zp − zp_shift)·b_sum`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn drive(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zp: i32,
    bp: &[i8],
    b_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    ldo: usize,
    tile: TileFn,
    zp_shift: i32,
) {
    check_gemm(m, k, n, a, lda, bp, b_sum, scale, bias, out, ldo);
    if m == 0 || n == 0 {
        return;
    }
    let quads = k4(k) / 4;
    let zp = a_zp - zp_shift;
    let mut acc = [[0i32; PANEL]; MR];
    for p in 0..n.div_ceil(PANEL) {
        let j0 = p * PANEL;
        let valid = (n - j0).min(PANEL);
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(MR);
            // SAFETY: check_gemm proved rows i..i+rows readable through k4(k) at stride lda
            // and panel p (16·k4(k) bytes) present; the caller checked the CPU feature.
            unsafe {
                tile(
                    rows,
                    quads,
                    a.as_ptr().add(i * lda),
                    lda,
                    bp.as_ptr().add(p * PANEL * k4(k)),
                    &mut acc,
                )
            };
            for (r, accr) in acc.iter().enumerate().take(rows) {
                let o = &mut out[(i + r) * ldo + j0..(i + r) * ldo + j0 + valid];
                for (c, o) in o.iter_mut().enumerate() {
                    let j = j0 + c;
                    let corrected = accr[c].wrapping_sub(zp.wrapping_mul(b_sum[j]));
                    let v = corrected as f32 * scale[j] + bias[j];
                    *o = if act == Act::Relu { crate::generic::relu(v) } else { v };
                }
            }
            i += rows;
        }
    }
    if matches!(act, Act::Gelu | Act::GeluTanh) {
        for i in 0..m {
            act.apply_slice(&mut out[i * ldo..i * ldo + n]);
        }
    }
}
