//! f32 GEMMs for AVX-512 F: the weight-transposed form ([`crate::F32GemmFn`], `b[n,k]`) and the
//! row-major form ([`crate::F32MatMulFn`], `b[k,n]`), the AVX2 kernels' blocking on 512-bit
//! registers.
//!
//! Panels of 32 output columns, the depth in chunks of `KC`; each (panel, chunk) of `b` is
//! copied k-major into a 16 KiB stack buffer (zero-padded past `n`, by the AVX2 kernels'
//! packer), then every block of `MR` = 8 rows runs an 8 × 32 micro-tile over it: per depth
//! step, 2 panel loads, 8 broadcast activations and 16 FMAs into 16 zmm accumulators. Chunks
//! after the first add into the outputs; the last adds the bias and applies the activation.
//! Sums are reordered against the generic twin (FMA, per-lane order), so results agree within
//! the family's stated bound. Fewer rows than packing pays for run the twins' bodies compiled
//! for AVX-512. (The twins compiled for AVX-512 were this family's AVX-512 variants until
//! stop 23: 978 µs at 128×384×384 against 607 µs for the AVX2 kernels, and MiniLM's float
//! attention MatMuls took 7.8 ms a run on them against 1.5 ms on AVX2's.)

use super::f32_avx2::pack;
use super::has_avx512f;
use crate::Act;
use core::arch::x86_64::*;

/// Rows per micro-tile.
const MR: usize = 8;
/// Columns per panel (two zmm).
const NR: usize = 32;
/// Depth per chunk: a packed panel chunk is `KC · NR` f32 (16 KiB).
const KC: usize = 128;

/// Fewest rows for which packing pays (as the AVX2 kernels; not re-measured for AVX-512).
const GEMM_PACK_MIN_M: usize = 4;
const MATMUL_PACK_MIN_M: usize = 2;

/// The generic twins compiled for AVX-512 (same bits as the twins: no contraction), for the
/// shapes too short to pack.
mod generic {
    use crate::Act;

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        bias: &[f32],
        act: Act,
        out: &mut [f32],
    ) {
        crate::generic::f32_gemm(m, k, n, a, b, bias, act, out)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn matmul(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
        crate::generic::f32_matmul(m, k, n, a, b, out)
    }
}

/// See [`crate::F32GemmFn`]: `out[m,n] = act(a[m,k] · b[n,k]ᵀ + bias)`.
#[allow(clippy::too_many_arguments)]
pub fn f32_gemm_avx512(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
) {
    assert!(has_avx512f(), "f32_gemm_avx512 on a CPU without AVX-512 F");
    assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n, "f32 gemm: operands");
    assert!(bias.is_empty() || bias.len() >= n, "f32 gemm: bias shorter than n");
    if m < GEMM_PACK_MIN_M {
        // SAFETY: the CPU has AVX-512 F (asserted); `generic` is safe Rust otherwise.
        return unsafe { generic::gemm(m, k, n, a, b, bias, act, out) };
    }
    // SAFETY: the CPU has AVX-512 F (asserted); `a`, `b` and `out` hold m·k, n·k and m·n values
    // and `bias` is empty or holds n (asserted), which is all `gemm` reads or writes.
    unsafe { gemm(m, k, n, a.as_ptr(), b.as_ptr(), true, bias, act, out.as_mut_ptr()) }
}

/// See [`crate::F32MatMulFn`]: `out[m,n] = a[m,k] · b[k,n]`.
pub fn f32_matmul_avx512(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(has_avx512f(), "f32_matmul_avx512 on a CPU without AVX-512 F");
    assert!(a.len() >= m * k && b.len() >= k * n && out.len() >= m * n, "f32 matmul: operands");
    if m < MATMUL_PACK_MIN_M {
        // SAFETY: the CPU has AVX-512 F (asserted); `generic` is safe Rust otherwise.
        return unsafe { generic::matmul(m, k, n, a, b, out) };
    }
    // SAFETY: as in `f32_gemm_avx512`, with `b` holding k·n values.
    unsafe { gemm(m, k, n, a.as_ptr(), b.as_ptr(), false, &[], Act::None, out.as_mut_ptr()) }
}

/// # Safety
/// AVX-512 F present; `a` holds m·k values, `b` n·k (`bt`: `[n,k]`, else `[k,n]`), `out` m·n;
/// `bias` empty or at least n long.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    b: *const f32,
    bt: bool,
    bias: &[f32],
    act: Act,
    out: *mut f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let mut panel = [_mm512_setzero_ps(); KC * NR / 16];
    let pp = panel.as_mut_ptr() as *mut f32;
    let mut bias32 = [0f32; NR];
    for j0 in (0..n).step_by(NR) {
        let valid = (n - j0).min(NR);
        if !bias.is_empty() {
            bias32[..valid].copy_from_slice(&bias[j0..j0 + valid]);
        }
        let mut p0 = 0;
        // At least one chunk, so that k = 0 still writes bias and activation.
        loop {
            let kc = (k - p0).min(KC);
            // SAFETY: the panel buffer holds KC·NR ≥ kc·NR values; `pack` reads b only at
            // (j, p) with j < n, p < k, inside the n·k values the caller provides; AVX-512 F
            // implies the AVX2 and FMA the packer is compiled for.
            unsafe { pack::<NR>(b, bt, k, n, j0, valid, p0, kc, pp) };
            let (first, last) = (p0 == 0, p0 + kc >= k);
            let e = Edge { first, last, valid, bias: (!bias.is_empty()).then_some(&bias32), act };
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                // SAFETY: rows i..i+mr of a (depths p0..p0+kc) and of out (columns j0..j0+valid)
                // exist; the panel holds kc·NR packed values.
                unsafe {
                    let (ai, oi) = (a.add(i * k + p0), out.add(i * n + j0));
                    match mr {
                        8 => tile::<8>(kc, ai, k, pp, oi, n, &e),
                        7 => tile::<7>(kc, ai, k, pp, oi, n, &e),
                        6 => tile::<6>(kc, ai, k, pp, oi, n, &e),
                        5 => tile::<5>(kc, ai, k, pp, oi, n, &e),
                        4 => tile::<4>(kc, ai, k, pp, oi, n, &e),
                        3 => tile::<3>(kc, ai, k, pp, oi, n, &e),
                        2 => tile::<2>(kc, ai, k, pp, oi, n, &e),
                        _ => tile::<1>(kc, ai, k, pp, oi, n, &e),
                    }
                }
                i += mr;
            }
            p0 += kc;
            if last {
                break;
            }
        }
    }
    if matches!(act, Act::Gelu | Act::GeluTanh) {
        for i in 0..m {
            // SAFETY: row i of out holds n values (the caller's bound).
            unsafe { act.apply_slice(core::slice::from_raw_parts_mut(out.add(i * n), n)) };
        }
    }
}

/// What a tile does at its chunk's edges: start from zero (`first`) or from the outputs, and
/// on the `last` chunk add the bias and apply ReLU; `valid` columns of 32 are stored.
struct Edge<'a> {
    first: bool,
    last: bool,
    valid: usize,
    bias: Option<&'a [f32; NR]>,
    act: Act,
}

/// One `R × 32` tile over `kc` depths: `a` at stride `lda`, the packed panel at `bp` (k-major,
/// 32 per depth), outputs at `out` with stride `ldo`.
///
/// # Safety
/// R rows of `a` hold kc values each; `bp` holds kc·32; R rows of `out` hold `e.valid` values.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    bp: *const f32,
    out: *mut f32,
    ldo: usize,
    e: &Edge,
) {
    // SAFETY: see the contract; partial columns go through masked loads and stores.
    unsafe {
        let mask = |h: usize| -> __mmask16 {
            let left = e.valid.saturating_sub(16 * h).min(16);
            if left == 16 {
                0xFFFF
            } else {
                (1u16 << left) - 1
            }
        };
        let (m0, m1) = (mask(0), mask(1));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if !e.first {
            for (r, x) in acc.iter_mut().enumerate() {
                x[0] = _mm512_maskz_loadu_ps(m0, out.add(r * ldo));
                x[1] = _mm512_maskz_loadu_ps(m1, out.add(r * ldo + 16));
            }
        }
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(bp.add(p * NR));
            let b1 = _mm512_loadu_ps(bp.add(p * NR + 16));
            for (r, x) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + p));
                x[0] = _mm512_fmadd_ps(av, b0, x[0]);
                x[1] = _mm512_fmadd_ps(av, b1, x[1]);
            }
        }
        if e.last {
            if let Some(bias) = e.bias {
                let (c0, c1) =
                    (_mm512_loadu_ps(bias.as_ptr()), _mm512_loadu_ps(bias.as_ptr().add(16)));
                for x in acc.iter_mut() {
                    x[0] = _mm512_add_ps(x[0], c0);
                    x[1] = _mm512_add_ps(x[1], c1);
                }
            }
            if e.act == Act::Relu {
                let z = _mm512_setzero_ps();
                for x in acc.iter_mut() {
                    x[0] = _mm512_max_ps(x[0], z);
                    x[1] = _mm512_max_ps(x[1], z);
                }
            }
        }
        for (r, x) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * ldo), m0, x[0]);
            _mm512_mask_storeu_ps(out.add(r * ldo + 16), m1, x[1]);
        }
    }
}
