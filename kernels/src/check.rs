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
