//! f32 GEMMs for AVX2 + FMA: the weight-transposed form ([`crate::F32GemmFn`], `b[n,k]`) and the
//! row-major form ([`crate::F32MatMulFn`], `b[k,n]`), one micro-kernel for both.
//!
//! Blocking: panels of 16 output columns; the depth in chunks of `KC`. Each (panel, chunk) of
//! `b` is copied k-major into a 16 KiB stack buffer (zero-padded past `n`), then every block of
//! `MR` = 6 rows runs a 6 × 16 micro-tile over it: per depth step, 2 panel loads, 6 broadcast
//! activations and 12 FMAs into 12 ymm accumulators. Chunks after the first add into the
//! outputs; the last adds the bias and applies the activation. Sums are reordered against the
//! generic twin (FMA, per-lane order), so results agree within the family's stated bound.
//! Fewer rows than packing pays for run the twins' bodies compiled for AVX2.

use super::has_avx2_fma;
use crate::Act;
use core::arch::x86_64::*;

/// One f32 GEMM family member: the entry points [`crate::F32GemmFn`] and [`crate::F32MatMulFn`]
/// named `$gemm` and `$matmul`, the twins' bodies compiled for `$feat` for the shapes too short
/// to pack, and the blocked driver over the module's `tile::<R>` (R ∈ `$rows`, the largest
/// first, which must be `MR`), `pack`, `MR`, `NR`, `KC`, `GEMM_PACK_MIN_M` and
/// `MATMUL_PACK_MIN_M`. `$vec` / `$zero` / `$lanes` give the panel buffer its alignment.
macro_rules! f32_family {
    ($gemm:ident, $matmul:ident, $has:path, $feat:literal, $cpu:literal,
     $vec:ty, $zero:path, $lanes:literal, [$($r:literal),+]) => {
        /// The generic twins compiled for the family's features (same bits as the twins: no
        /// contraction), for the shapes too short to pack.
        mod generic {
            use crate::Act;

            #[target_feature(enable = $feat)]
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

            #[target_feature(enable = $feat)]
            pub(super) fn matmul(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
                crate::generic::f32_matmul(m, k, n, a, b, out)
            }
        }

        /// See [`crate::F32GemmFn`]: `out[m,n] = act(a[m,k] · b[n,k]ᵀ + bias)`.
        #[allow(clippy::too_many_arguments)]
        pub fn $gemm(
            m: usize,
            k: usize,
            n: usize,
            a: &[f32],
            b: &[f32],
            bias: &[f32],
            act: Act,
            out: &mut [f32],
        ) {
            assert!($has(), concat!(stringify!($gemm), " on a CPU without ", $cpu));
            assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n, "f32 gemm: operands");
            assert!(bias.is_empty() || bias.len() >= n, "f32 gemm: bias shorter than n");
            if m < GEMM_PACK_MIN_M {
                // SAFETY: the CPU has the features (asserted); `generic` is safe Rust otherwise.
                return unsafe { generic::gemm(m, k, n, a, b, bias, act, out) };
            }
            // SAFETY: the CPU has the features (asserted); `a`, `b` and `out` hold m·k, n·k and
            // m·n values and `bias` is empty or holds n (asserted): all `gemm` reads or writes.
            unsafe { gemm(m, k, n, a.as_ptr(), b.as_ptr(), true, bias, act, out.as_mut_ptr()) }
        }

        /// See [`crate::F32MatMulFn`]: `out[m,n] = a[m,k] · b[k,n]`.
        pub fn $matmul(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
            assert!($has(), concat!(stringify!($matmul), " on a CPU without ", $cpu));
            assert!(a.len() >= m * k && b.len() >= k * n && out.len() >= m * n, "f32 matmul: operands");
            if m < MATMUL_PACK_MIN_M {
                // SAFETY: the CPU has the features (asserted); `generic` is safe Rust otherwise.
                return unsafe { generic::matmul(m, k, n, a, b, out) };
            }
            // SAFETY: as in the gemm form, with `b` holding k·n values.
            unsafe { gemm(m, k, n, a.as_ptr(), b.as_ptr(), false, &[], Act::None, out.as_mut_ptr()) }
        }

        /// What a tile does at its chunk's edges: start from zero (`first`) or from the
        /// outputs, and on the `last` chunk add the bias and apply ReLU; `valid` columns of
        /// `NR` are stored.
        struct Edge<'a> {
            first: bool,
            last: bool,
            valid: usize,
            bias: Option<&'a [f32; NR]>,
            act: Act,
        }

        /// # Safety
        /// The features present; `a` holds m·k values, `b` n·k (`bt`: `[n,k]`, else `[k,n]`),
        /// `out` m·n; `bias` empty or at least n long.
        #[target_feature(enable = $feat)]
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
            let mut panel: [$vec; KC * NR / $lanes] = [$zero(); KC * NR / $lanes];
            let pp = panel.as_mut_ptr() as *mut f32;
            let mut bias_nr = [0f32; NR];
            for j0 in (0..n).step_by(NR) {
                let valid = (n - j0).min(NR);
                if !bias.is_empty() {
                    bias_nr[..valid].copy_from_slice(&bias[j0..j0 + valid]);
                }
                let mut p0 = 0;
                // At least one chunk, so that k = 0 still writes bias and activation.
                loop {
                    let kc = (k - p0).min(KC);
                    // SAFETY: the panel buffer holds KC·NR ≥ kc·NR values; `pack` reads b only
                    // at (j, p) with j < n, p < k, inside the n·k values the caller provides
                    // (every family member's features include the packer's AVX2 and FMA).
                    unsafe { pack::<NR>(b, bt, k, n, j0, valid, p0, kc, pp) };
                    let (first, last) = (p0 == 0, p0 + kc >= k);
                    let bias = (!bias.is_empty()).then_some(&bias_nr);
                    let e = Edge { first, last, valid, bias, act };
                    let mut i = 0;
                    while i < m {
                        let mr = (m - i).min(MR);
                        // SAFETY: rows i..i+mr of a (depths p0..p0+kc) and of out (columns
                        // j0..j0+valid) exist; the panel holds kc·NR packed values.
                        unsafe {
                            let (ai, oi) = (a.add(i * k + p0), out.add(i * n + j0));
                            match mr {
                                $($r => tile::<$r>(kc, ai, k, pp, oi, n, &e),)+
                                _ => unreachable!("rows per tile above MR"),
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
    };
}
pub(super) use f32_family;

/// Rows per micro-tile.
const MR: usize = 6;
/// Columns per panel (two ymm).
const NR: usize = 16;
/// Depth per chunk: a packed panel chunk is `KC · NR` f32 (16 KiB).
const KC: usize = 256;

/// Fewest rows for which packing the weights pays: below, each packed value would serve fewer
/// than 4 rows, and the twins' dot-product bodies compiled for AVX2 are faster (measured on Zen
/// 3, k = n = 384: m = 1, 2 took 15, 27 µs that way against 50, 52 µs packed; m = 4 the same).
const GEMM_PACK_MIN_M: usize = 4;
/// The same for the row-major form, whose panels are plain copies (m = 1: 25 against 30 µs;
/// m = 2: 56 against 32 µs).
const MATMUL_PACK_MIN_M: usize = 2;

f32_family!(
    f32_gemm_avx2,
    f32_matmul_avx2,
    has_avx2_fma,
    "avx2,fma",
    "AVX2 and FMA",
    __m256,
    _mm256_setzero_ps,
    8,
    [6, 5, 4, 3, 2, 1]
);

/// Copies columns `j0..j0 + valid` (zero past `valid`) and depths `p0..p0 + kc` of `b` into
/// the panel `dst`, k-major (`NR` values per depth, a multiple of 8). Whole 8 × 8 blocks of the transposed form
/// are transposed in registers; the rest (and the row-major form's partial panels) element-wise.
///
/// # Safety
/// AVX2; `b` holds the n·k values of its form; `dst` holds kc·NR; `j0 + valid <= n`, `p0 + kc
/// <= k`, `valid <= NR`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack<const NR: usize>(
    b: *const f32,
    bt: bool,
    k: usize,
    n: usize,
    j0: usize,
    valid: usize,
    p0: usize,
    kc: usize,
    dst: *mut f32,
) {
    // SAFETY: every read is at a column below j0 + valid <= n and a depth below p0 + kc <= k;
    // every write at depth p < kc, column t < NR of dst.
    unsafe {
        if !bt && valid == NR {
            for p in 0..kc {
                let src = b.add((p0 + p) * n + j0);
                for h in (0..NR).step_by(8) {
                    _mm256_storeu_ps(dst.add(p * NR + h), _mm256_loadu_ps(src.add(h)));
                }
            }
            return;
        }
        let (mut t_done, p_full) = (0, if bt { kc / 8 * 8 } else { 0 });
        if bt {
            // Blocks of 8 columns × 8 depths: 8 row loads, an 8 × 8 transpose, 8 stores.
            while t_done + 8 <= valid {
                for p in (0..p_full).step_by(8) {
                    let r: [__m256; 8] = core::array::from_fn(|t| {
                        _mm256_loadu_ps(b.add((j0 + t_done + t) * k + p0 + p))
                    });
                    for (d, v) in transpose8(r).into_iter().enumerate() {
                        _mm256_storeu_ps(dst.add((p + d) * NR + t_done), v);
                    }
                }
                t_done += 8;
            }
        }
        for p in 0..kc {
            for t in 0..NR {
                if t < t_done && p < p_full {
                    continue;
                }
                let (j, pk) = (j0 + t, p0 + p);
                *dst.add(p * NR + t) =
                    if t < valid { *b.add(if bt { j * k + pk } else { pk * n + j }) } else { 0.0 };
            }
        }
    }
}

/// The 8 × 8 transpose of eight rows.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// One `R × 16` tile over `kc` depths: `a` at stride `lda`, the packed panel at `bp`
/// (k-major, 16 per depth), outputs at `out` with stride `ldo`.
///
/// # Safety
/// R rows of `a` hold kc values each; `bp` holds kc·16; R rows of `out` hold `e.valid` values.
#[target_feature(enable = "avx2,fma")]
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
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = |h: usize| {
            let left = e.valid as i32 - 8 * h as i32;
            _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane)
        };
        let (m0, m1) = (mask(0), mask(1));
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if !e.first {
            for (r, x) in acc.iter_mut().enumerate() {
                x[0] = _mm256_maskload_ps(out.add(r * ldo), m0);
                x[1] = _mm256_maskload_ps(out.add(r * ldo + 8), m1);
            }
        }
        for p in 0..kc {
            let b0 = _mm256_load_ps(bp.add(p * NR));
            let b1 = _mm256_load_ps(bp.add(p * NR + 8));
            for (r, x) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                x[0] = _mm256_fmadd_ps(av, b0, x[0]);
                x[1] = _mm256_fmadd_ps(av, b1, x[1]);
            }
        }
        if e.last {
            if let Some(bias) = e.bias {
                let (c0, c1) =
                    (_mm256_loadu_ps(bias.as_ptr()), _mm256_loadu_ps(bias.as_ptr().add(8)));
                for x in acc.iter_mut() {
                    x[0] = _mm256_add_ps(x[0], c0);
                    x[1] = _mm256_add_ps(x[1], c1);
                }
            }
            if e.act == Act::Relu {
                let z = _mm256_setzero_ps();
                for x in acc.iter_mut() {
                    x[0] = _mm256_max_ps(x[0], z);
                    x[1] = _mm256_max_ps(x[1], z);
                }
            }
        }
        for (r, x) in acc.iter().enumerate() {
            _mm256_maskstore_ps(out.add(r * ldo), m0, x[0]);
            _mm256_maskstore_ps(out.add(r * ldo + 8), m1, x[1]);
        }
    }
}
