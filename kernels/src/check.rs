//! Precondition checks shared by the overlays: they run before any unchecked pointer code.

/// Panics unless the slices satisfy [`crate::I8GemmFn`]'s preconditions, so the unchecked
/// bodies below can never read or write out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn check_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    bp: &[i8],
    b_sum: &[i32],
    scale: &[f32],
    bias: &[f32],
    out: &[f32],
    ldo: usize,
) {
    use crate::pack::{k4, k4n16_len};
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k4(k) && a.len() >= (m - 1) * lda + k4(k), "i8 gemm: a too short");
    assert!(bp.len() >= k4n16_len(n, k), "i8 gemm: packed b too short");
    assert!(b_sum.len() >= n && scale.len() >= n && bias.len() >= n, "i8 gemm: epilogue");
    assert!(ldo >= n && out.len() >= (m - 1) * ldo + n, "i8 gemm: out too short");
    assert!(k <= 65_536, "i8 gemm: k {k} too deep");
}

/// Panics unless the slices satisfy [`crate::I4GemmFn`]'s preconditions (`max_group` is the
/// variant's buffer limit); returns the number of groups.
#[allow(clippy::too_many_arguments)]
pub fn check_i4(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    bp: &[u8],
    group: usize,
    gsum: &[i32],
    gscale: &[u16],
    bias: &[f32],
    out: &[f32],
    ldo: usize,
    max_group: usize,
) -> usize {
    use crate::pack::{k4, k4n16_i4_len, PANEL};
    assert!(
        (4..=max_group).contains(&group) && group.is_multiple_of(4) && k.is_multiple_of(group),
        "i4 gemm: group {group} for k {k}"
    );
    let groups = k / group;
    if m == 0 || n == 0 {
        return groups;
    }
    let side = n.div_ceil(PANEL) * PANEL * groups;
    assert!(lda >= k4(k) && a.len() >= (m - 1) * lda + k4(k), "i4 gemm: a too short");
    assert!(bp.len() >= k4n16_i4_len(n, k), "i4 gemm: packed b too short");
    assert!(gsum.len() >= side && gscale.len() >= side, "i4 gemm: group sums/scales too short");
    assert!(bias.len() >= n, "i4 gemm: bias too short");
    assert!(ldo >= n && out.len() >= (m - 1) * ldo + n, "i4 gemm: out too short");
    assert!(k <= 65_536, "i4 gemm: k {k} too deep");
    groups
}

/// The end of every INT4 variant: `out = act(out · x_scale + bias)` over `m` rows, with `gelu`
/// applying the GELU forms to a whole row (so each ISA can pass a vectorized copy).
#[allow(clippy::too_many_arguments)]
pub fn finish_i4(
    m: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    x_scale: f32,
    bias: &[f32],
    act: crate::Act,
    gelu: &dyn Fn(crate::Act, &mut [f32]),
) {
    for i in 0..m {
        let row = &mut out[i * ldo..i * ldo + n];
        for (o, b) in row.iter_mut().zip(bias) {
            let v = *o * x_scale + b;
            *o = if act == crate::Act::Relu { crate::generic::relu(v) } else { v };
        }
        if matches!(act, crate::Act::Gelu | crate::Act::GeluTanh) {
            gelu(act, row);
        }
    }
}

/// One row of [`crate::QuantizeU8Fn`]: `x` and `q` are the row's `k` values and bytes, `mult`
/// empty or at least `k` long.
///
/// # Safety
/// The CPU has the features the row function was compiled for.
pub type QuantizeRowFn = unsafe fn(x: &[f32], inv: f32, mult: &[f32], zp: i32, q: &mut [u8]);

/// Checks [`crate::QuantizeU8Fn`]'s preconditions (panics otherwise), then quantizes row by
/// row with `row`.
///
/// # Safety
/// The CPU has the features `row` was compiled for (each overlay asserts its own first).
#[allow(clippy::too_many_arguments)]
pub unsafe fn quantize_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    ldx: usize,
    lda: usize,
    inv_scale: f32,
    mult: &[f32],
    zp: i32,
    q: &mut [u8],
    row: QuantizeRowFn,
) {
    if rows == 0 || k == 0 {
        return;
    }
    assert!(
        ldx >= k && x.len() >= (rows - 1) * ldx + k && lda >= k && q.len() >= (rows - 1) * lda + k,
        "quantize_u8"
    );
    assert!(mult.is_empty() || mult.len() >= k, "quantize_u8: mult shorter than k");
    for r in 0..rows {
        let xr = &x[r * ldx..r * ldx + k];
        let qr = &mut q[r * lda..r * lda + k];
        // SAFETY: the caller vouches for the CPU features; the rows and `mult` have the
        // lengths the row function needs (checked above).
        unsafe { row(xr, inv_scale, mult, zp, qr) }
    }
}

/// A written-out [`crate::QuantizeU8Fn`] from its row function: asserts the CPU feature, then
/// [`quantize_rows`]. `$row` is an `unsafe fn` compiled for the feature `$has` checks.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! quantizer {
    ($(#[$doc:meta])* $name:ident, $has:path, $feature:literal, $row:path) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            x: &[f32],
            rows: usize,
            k: usize,
            ldx: usize,
            lda: usize,
            inv_scale: f32,
            mult: &[f32],
            zp: i32,
            q: &mut [u8],
        ) {
            assert!($has(), concat!(stringify!($name), " on a CPU without ", $feature));
            // SAFETY: the feature was asserted just above.
            unsafe { $crate::check::quantize_rows(x, rows, k, ldx, lda, inv_scale, mult, zp, q, $row) }
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use quantizer;
