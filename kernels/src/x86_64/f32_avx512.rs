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

super::f32_avx2::f32_family!(
    f32_gemm_avx512,
    f32_matmul_avx512,
    has_avx512f,
    "avx512f",
    "AVX-512 F",
    __m512,
    _mm512_setzero_ps,
    16,
    [8, 7, 6, 5, 4, 3, 2, 1]
);

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
