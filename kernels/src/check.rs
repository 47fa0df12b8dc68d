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
