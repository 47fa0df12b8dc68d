//! The kernel table. One list (`Kernels::ALL`) drives registration, tests and benches.

use crate::generic;

/// Activation fused into a GEMM epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Act {
    None = 0,
    Relu = 1,
    /// `x·(1 + erf(x/√2))/2`, with [`crate::generic::math::gelu`].
    Gelu = 2,
    /// `x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))/2`, with [`crate::generic::math::gelu_tanh`].
    GeluTanh = 3,
}

impl Act {
    pub fn from_u32(v: u32) -> Option<Act> {
        match v {
            0 => Some(Act::None),
            1 => Some(Act::Relu),
            2 => Some(Act::Gelu),
            3 => Some(Act::GeluTanh),
            _ => None,
        }
    }

    /// Applies the activation to a finished row segment in place (GELU forms; ReLU and None are
    /// applied inside the epilogues). Inlined so that each ISA's caller vectorizes it.
    #[inline(always)]
    pub fn apply_slice(self, v: &mut [f32]) {
        match self {
            Act::None => {}
            Act::Relu => v.iter_mut().for_each(|x| *x = crate::generic::relu(*x)),
            Act::Gelu => v.iter_mut().for_each(|x| *x = crate::generic::math::gelu(*x)),
            Act::GeluTanh => v.iter_mut().for_each(|x| *x = crate::generic::math::gelu_tanh(*x)),
        }
    }
}

/// `out[i·ldo + j] = act((Σ_p a[i·lda + p]·B[j,p] − a_zp·b_sum[j]) · scale[j] + bias[j])` for
/// `i < m`, `j < n`, where `a` holds u8 activations (zero point `a_zp`, 0..=255) and `B` is
/// the i8 weight matrix packed as [`crate::pack`]'s `K4N16` in `bp`. The integer part is exact;
/// the epilogue is one f32 multiply then one add (no FMA), so every variant is bit-exact.
///
/// Preconditions: `lda >= k4(k)`, `a.len() >= (m-1)·lda + k4(k)` (the bytes of a row between
/// `k` and `k4(k)` are read and must exist, their value does not matter), `bp.len() >=
/// k4n16_len(n, k)`, `b_sum`, `scale`, `bias` `>= n`, `ldo >= n`, `out.len() >= (m-1)·ldo + n`,
/// `k <= 65536` (so the i32 accumulator cannot overflow).
pub type I8GemmFn = fn(
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
);

/// Group-wise INT4 weights (W4A8): `out[i·ldo + j] = act(x_scale · Σ_g t[i,j,g] + bias[j])`,
/// `t = (Σ_{p∈g} a[i·lda + p]·Q[j,p] − a_zp·gsum[j,g]) as f32 · scale[j,g]`, the groups `g` of
/// `group` consecutive k summed in order into an f32 (no FMA), so every variant is bit-exact.
/// `Q` (values −8..=7) is packed by [`crate::pack::pack_k4n16_i4`]; `gsum` (Σ_{p∈g} Q[j,p]) and
/// `gscale` (f16 bits) are in the `[⌈n/16⌉][k/group][16]` order of [`crate::pack::panel_groups`].
///
/// Preconditions: as [`I8GemmFn`], plus `group % 4 == 0`, `4 <= group <= 256`, `k % group == 0`, `bp.len() >=
/// k4n16_i4_len(n, k)`, `gsum`/`gscale` `>= ⌈n/16⌉·16·k/group`.
pub type I4GemmFn = fn(
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
);

/// INT4 weights with integer group multipliers (see [`crate::i4m`]): exactly
/// [`I8GemmFn`] on the widened weights `W[j,p] = Q[j,p]·gmul[j,p/group]`, with `w_sum[j] = Σ_p
/// W[j,p]` and `scale[j]` the folded activation × column scale. `Q` (−8..=7) is packed by
/// [`crate::pack::pack_k4n16_i4`], `gmul` (1..=16; larger values wrap, never UB) is in the
/// `[⌈n/16⌉][k/group][16]` order of [`crate::pack::panel_groups`].
///
/// Preconditions: as [`I8GemmFn`], plus `group % 4 == 0`, `4 <= group <= 256`, `k % group == 0`,
/// `k4(k) <= `[`crate::i4m::I4M_MAX_K`], `bp.len() >= k4n16_i4_len(n, k)`, `gmul.len() >=
/// ⌈n/16⌉·16·k/group`.
pub type I4mGemmFn = fn(
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
);

/// `out[m,n] = act(Σ_k a[m,k]·b[n,k] + bias[n])`; `bias` may be empty (no bias).
pub type F32GemmFn =
    fn(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], bias: &[f32], act: Act, out: &mut [f32]);

/// Quantizes `rows` rows of `k` f32 (row-major, rows `ldx ≥ k` elements apart) into u8 rows
/// of stride `lda`: `q[r·lda + j] = clamp(rne(x[r·ldx + j] · s_j) + zp, 0, 255)`, with
/// `s_j = inv_scale` when `mult` is empty and `mult[j]` (per-channel smoothing folded with the
/// scale) otherwise; NaN maps to the zero point. Bytes `k..lda` of each row are left as they
/// are, and `x` between rows is not read.
pub type QuantizeU8Fn = fn(
    x: &[f32],
    rows: usize,
    k: usize,
    ldx: usize,
    lda: usize,
    inv_scale: f32,
    mult: &[f32],
    zp: i32,
    q: &mut [u8],
);

/// Quantizes an f32 activation symmetrically (`rne(b·inv)` clamped to ±127, NaN to 0) into
/// the `K4N16` layout of an `[n, k]` operand, with its column sums: `b` is `[k, n]` row-major,
/// or `[n, k]` when `transposed`, its rows `ld` elements apart (`ld` ≥ the row length; one
/// head of an attention tensor stored `[seq, heads, d]` is read in place with `ld = heads·d`).
/// See [`crate::pack::quantize_pack_k4n16`].
pub type QuantizePackFn = fn(
    b: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
);

/// `o[i] = f(x[i])` over a slice, or a function of a whole row (softmax); `o.len() == x.len()`.
pub type RowFn = fn(x: &[f32], o: &mut [f32]);

/// `out[m,n] = Σ_k a[m,k]·b[k,n]`, both row-major; see [`crate::generic::f32_matmul`].
pub type F32MatMulFn = fn(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]);

/// Layer normalization of one row; see [`crate::generic::math::layer_norm_row`].
pub type LayerNormFn = fn(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, o: &mut [f32]);

/// `x = softmax(alpha·x + mask)` in place over each of `masks.len()` rows of `n` values in `x`
/// (row `r` at `x[r·n..]`, its mask `masks[r]` empty or at least `n` long), as
/// [`crate::generic::math::softmax_row`] computes each row (twin:
/// [`crate::generic::math::softmax_rows`]), within 5e-7 relatively; in every variant the
/// scale read with the row gives the bits of a scaling pass before it, values more than 87.3
/// below the row's maximum give 0 and NaN gives NaN. Variants may work on several rows at once.
/// Panics if `x` is shorter than `masks.len()·n`.
pub type SoftmaxFn = fn(x: &mut [f32], n: usize, masks: &[&[f32]], alpha: f32);

/// One matrix-factorization SGD step on f32 rows; see [`crate::generic::mf`]. Returns the error.
pub type MfStepF32Fn = fn(p: &mut [f32], q: &mut [f32], target: f32, lr: f32, reg: f32) -> f32;

/// The same step on rows stored as f16 bits; adds the element updates lost to the 16-bit
/// storage to `lost` when given one (`None`: the same rows, no count, faster). See
/// [`crate::generic::mf`].
pub type MfStepF16Fn =
    fn(p: &mut [u16], q: &mut [u16], target: f32, lr: f32, reg: f32, lost: Option<&mut u32>) -> f32;

/// The same step on an f16-stored row `h` and an f32 row `w` (the step is symmetric: either
/// can be the user row); counts the updates lost in `h`. See [`crate::generic::mf`].
pub type MfStepMixedFn =
    fn(h: &mut [u16], w: &mut [f32], target: f32, lr: f32, reg: f32, lost: Option<&mut u32>) -> f32;

/// The kernels chosen for this process. Plain function pointers: no dispatch cost beyond a call.
#[derive(Clone, Copy, Debug)]
pub struct KernelSet {
    pub i8_gemm: I8GemmFn,
    pub i8_gemm_name: &'static str,
    pub i4_gemm: I4GemmFn,
    pub i4_gemm_name: &'static str,
    pub i4m_gemm: I4mGemmFn,
    pub i4m_gemm_name: &'static str,
    pub f32_gemm: F32GemmFn,
    pub f32_gemm_name: &'static str,
    pub quantize_u8: QuantizeU8Fn,
    pub quantize_u8_name: &'static str,
    pub quantize_pack: QuantizePackFn,
    pub quantize_pack_name: &'static str,
    pub softmax_row: SoftmaxFn,
    pub softmax_row_name: &'static str,
    pub erf: RowFn,
    pub erf_name: &'static str,
    pub layer_norm_row: LayerNormFn,
    pub layer_norm_row_name: &'static str,
    pub f32_matmul: F32MatMulFn,
    pub f32_matmul_name: &'static str,
    pub mf_step_f32: MfStepF32Fn,
    pub mf_step_f32_name: &'static str,
    pub mf_step_f16: MfStepF16Fn,
    pub mf_step_f16_name: &'static str,
    pub mf_step_mixed: MfStepMixedFn,
    pub mf_step_mixed_name: &'static str,
}

/// One registered variant: its name, the function, and whether this CPU can run it.
pub struct Variant<F: 'static> {
    pub name: &'static str,
    pub f: F,
    pub usable: fn() -> bool,
}

fn always() -> bool {
    true
}

#[cfg(target_arch = "aarch64")]
use crate::aarch64 as arm;
#[cfg(target_arch = "x86_64")]
use crate::x86_64 as x86;

/// Registry of every kernel variant, by family, best first; tests iterate it against the
/// generic twin, `detect` picks the first usable one.
pub struct Kernels;

static I8_GEMMS: &[Variant<I8GemmFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant { name: "i8_gemm_avx512vnni", f: x86::i8_gemm_avx512vnni, usable: x86::has_avx512vnni },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "i8_gemm_avx2", f: x86::i8_gemm_avx2, usable: x86::has_avx2 },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i8_gemm_i8mm", f: arm::i8_gemm_i8mm, usable: arm::has_i8mm },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i8_gemm_dotprod", f: arm::i8_gemm_dotprod, usable: arm::has_dotprod },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i8_gemm_neon", f: arm::i8_gemm_neon, usable: arm::has_neon },
    Variant { name: "i8_gemm_generic", f: generic::i8_gemm, usable: always },
];
static I4_GEMMS: &[Variant<I4GemmFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "i4_gemm_avx512vnni",
        f: x86::i4_gemm_avx512vnni,
        usable: x86::has_avx512vnni_bw,
    },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "i4_gemm_avx2", f: x86::i4_gemm_avx2, usable: x86::has_avx2_f16c },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i4_gemm_i8mm", f: arm::i4_gemm_i8mm, usable: arm::has_i8mm },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i4_gemm_dotprod", f: arm::i4_gemm_dotprod, usable: arm::has_dotprod },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i4_gemm_neon", f: arm::i4_gemm_neon, usable: arm::has_neon },
    Variant { name: "i4_gemm_generic", f: generic::i4_gemm, usable: always },
];
static I4M_GEMMS: &[Variant<I4mGemmFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "i4m_gemm_avx512vnni",
        f: x86::i4m_gemm_avx512vnni,
        usable: x86::has_avx512vnni_bw,
    },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "i4m_gemm_avx2", f: x86::i4m_gemm_avx2, usable: x86::has_avx2_f16c },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i4m_gemm_i8mm", f: arm::i4m_gemm_i8mm, usable: arm::has_i8mm },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i4m_gemm_dotprod", f: arm::i4m_gemm_dotprod, usable: arm::has_dotprod },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "i4m_gemm_neon", f: arm::i4m_gemm_neon, usable: arm::has_neon },
    Variant { name: "i4m_gemm_generic", f: crate::i4m::i4m_gemm_generic, usable: always },
];
static F32_GEMMS: &[Variant<F32GemmFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant { name: "f32_gemm_avx512", f: x86::f32_gemm_avx512, usable: x86::has_avx512f },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "f32_gemm_avx2", f: x86::f32_gemm_avx2, usable: x86::has_avx2_fma },
    Variant { name: "f32_gemm_generic", f: generic::f32_gemm, usable: always },
];
static F32_MATMULS: &[Variant<F32MatMulFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant { name: "f32_matmul_avx512", f: x86::f32_matmul_avx512, usable: x86::has_avx512f },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "f32_matmul_avx2", f: x86::f32_matmul_avx2, usable: x86::has_avx2_fma },
    Variant { name: "f32_matmul_generic", f: generic::f32_matmul, usable: always },
];
static QUANTIZERS: &[Variant<QuantizeU8Fn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant { name: "quantize_u8_avx512", f: x86::quantize_u8_avx512, usable: x86::has_avx512vnni },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "quantize_u8_avx2", f: x86::quantize_u8_avx2, usable: x86::has_avx2 },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "quantize_u8_neon", f: arm::quantize_u8_neon, usable: arm::has_neon },
    Variant { name: "quantize_u8_generic", f: generic::quantize_u8, usable: always },
];
static QUANTIZE_PACKS: &[Variant<QuantizePackFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "quantize_pack_avx512",
        f: x86::quantize_pack_avx512,
        usable: x86::has_avx512f,
    },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "quantize_pack_avx2", f: x86::quantize_pack_avx2, usable: x86::has_avx2 },
    Variant { name: "quantize_pack_generic", f: crate::pack::quantize_pack_k4n16, usable: always },
];

static SOFTMAXES: &[Variant<SoftmaxFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant { name: "softmax_row_avx512", f: x86::softmax_row_avx512, usable: x86::has_avx512f },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "softmax_row_avx2", f: x86::softmax_row_avx2, usable: x86::has_avx2 },
    Variant { name: "softmax_row_generic", f: generic::math::softmax_rows, usable: always },
];
static ERFS: &[Variant<RowFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant { name: "erf_avx512", f: x86::erf_avx512, usable: x86::has_avx512f },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "erf_avx2", f: x86::erf_avx2, usable: x86::has_avx2 },
    Variant { name: "erf_generic", f: generic::math::erf_slice, usable: always },
];

static LAYER_NORMS: &[Variant<LayerNormFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "layer_norm_row_avx512",
        f: x86::layer_norm_row_avx512,
        usable: x86::has_avx512f,
    },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "layer_norm_row_avx2", f: x86::layer_norm_row_avx2, usable: x86::has_avx2 },
    Variant { name: "layer_norm_row_generic", f: generic::math::layer_norm_row, usable: always },
];

static MF_STEPS_F32: &[Variant<MfStepF32Fn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant { name: "mf_step_f32_avx512", f: x86::mf_step_f32_avx512, usable: x86::has_avx512f },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "mf_step_f32_avx2", f: x86::mf_step_f32_avx2, usable: x86::has_avx2_fma },
    Variant { name: "mf_step_f32_generic", f: generic::mf::mf_step_f32, usable: always },
];
static MF_STEPS_F16: &[Variant<MfStepF16Fn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "mf_step_f16_avx512",
        f: x86::mf_step_f16_avx512,
        usable: x86::has_avx512bw_vl,
    },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "mf_step_f16_avx2", f: x86::mf_step_f16_avx2, usable: x86::has_avx2_f16c },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "mf_step_f16_neon", f: arm::mf_step_f16_neon, usable: always },
    Variant { name: "mf_step_f16_generic", f: generic::mf::mf_step_f16, usable: always },
];
static MF_STEPS_MIXED: &[Variant<MfStepMixedFn>] = &[
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "mf_step_mixed_avx512",
        f: x86::mf_step_mixed_avx512,
        usable: x86::has_avx512bw_vl,
    },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "mf_step_mixed_avx2", f: x86::mf_step_mixed_avx2, usable: x86::has_avx2_f16c },
    #[cfg(target_arch = "aarch64")]
    Variant { name: "mf_step_mixed_neon", f: arm::mf_step_mixed_neon, usable: always },
    Variant { name: "mf_step_mixed_generic", f: generic::mf::mf_step_mixed, usable: always },
];

fn usable<F: Copy>(v: &'static [Variant<F>]) -> impl Iterator<Item = (&'static str, F)> {
    v.iter().filter(|v| (v.usable)()).map(|v| (v.name, v.f))
}

impl Kernels {
    /// Every i8 GEMM variant this CPU can run, best first (the generic twin last).
    pub fn i8_gemms() -> impl Iterator<Item = (&'static str, I8GemmFn)> {
        usable(I8_GEMMS)
    }
    /// Every INT4 GEMM variant this CPU can run, best first.
    pub fn i4_gemms() -> impl Iterator<Item = (&'static str, I4GemmFn)> {
        usable(I4_GEMMS)
    }
    /// Every INT4-with-multipliers GEMM variant this CPU can run, best first.
    pub fn i4m_gemms() -> impl Iterator<Item = (&'static str, I4mGemmFn)> {
        usable(I4M_GEMMS)
    }
    pub fn f32_gemms() -> impl Iterator<Item = (&'static str, F32GemmFn)> {
        usable(F32_GEMMS)
    }
    pub fn quantizers() -> impl Iterator<Item = (&'static str, QuantizeU8Fn)> {
        usable(QUANTIZERS)
    }
    pub fn quantize_packs() -> impl Iterator<Item = (&'static str, QuantizePackFn)> {
        usable(QUANTIZE_PACKS)
    }
    pub fn softmaxes() -> impl Iterator<Item = (&'static str, SoftmaxFn)> {
        usable(SOFTMAXES)
    }
    pub fn erfs() -> impl Iterator<Item = (&'static str, RowFn)> {
        usable(ERFS)
    }
    pub fn layer_norms() -> impl Iterator<Item = (&'static str, LayerNormFn)> {
        usable(LAYER_NORMS)
    }
    pub fn f32_matmuls() -> impl Iterator<Item = (&'static str, F32MatMulFn)> {
        usable(F32_MATMULS)
    }
    pub fn mf_steps_f32() -> impl Iterator<Item = (&'static str, MfStepF32Fn)> {
        usable(MF_STEPS_F32)
    }
    pub fn mf_steps_f16() -> impl Iterator<Item = (&'static str, MfStepF16Fn)> {
        usable(MF_STEPS_F16)
    }
    pub fn mf_steps_mixed() -> impl Iterator<Item = (&'static str, MfStepMixedFn)> {
        usable(MF_STEPS_MIXED)
    }
}

/// The first usable variant of a family whose name passes `allow`, or the generic twin.
fn pick<F: Copy>(v: &'static [Variant<F>], allow: &dyn Fn(&str) -> bool) -> (F, &'static str) {
    let g = v.last().expect("every family registers its generic twin last");
    usable(v).find(|(n, _)| allow(n)).map(|(n, f)| (f, n)).unwrap_or((g.f, g.name))
}

impl KernelSet {
    /// The portable reference set (every family's generic twin); always available.
    pub fn generic() -> KernelSet {
        Self::with_override("generic")
    }

    /// Chooses the fastest variant of each family this CPU supports. Under `std`, the
    /// environment variable `EMBER_KERNELS` overrides the choice: a comma-separated list of
    /// tiers (`generic`, `avx2`, `avx512vnni`, `neon`, `dotprod`, `i8mm`) applying to every
    /// family, or `family=tier` for one family (`i8_gemm=avx2,quantize_u8=generic`). A variant
    /// named there but not usable on this CPU is skipped for the next best.
    pub fn detect() -> KernelSet {
        #[cfg(feature = "std")]
        if let Ok(v) = std::env::var("EMBER_KERNELS") {
            return Self::with_override(&v);
        }
        Self::choose(&|_, _| true)
    }

    /// [`KernelSet::detect`] with an explicit override string (the `EMBER_KERNELS` syntax).
    pub fn with_override(spec: &str) -> KernelSet {
        Self::choose(&|family, name| {
            let mut ok = true;
            for tok in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let (fam, tier) = match tok.split_once('=') {
                    Some((f, t)) => (Some(f.trim()), t.trim()),
                    None => (None, tok),
                };
                if fam.is_none_or(|f| f == family) {
                    // A variant serves every tier its suffix begins: `avx512vnni` allows the
                    // `_avx512` softmax as well as the `_avx512vnni` GEMM.
                    let suffix = name.strip_prefix(family).unwrap_or(name).trim_start_matches('_');
                    ok = tier.starts_with(suffix);
                }
            }
            ok
        })
    }

    fn choose(allow: &dyn Fn(&str, &str) -> bool) -> KernelSet {
        let (i8_gemm, i8_gemm_name) = pick(I8_GEMMS, &|n| allow("i8_gemm", n));
        let (i4_gemm, i4_gemm_name) = pick(I4_GEMMS, &|n| allow("i4_gemm", n));
        let (i4m_gemm, i4m_gemm_name) = pick(I4M_GEMMS, &|n| allow("i4m_gemm", n));
        let (f32_gemm, f32_gemm_name) = pick(F32_GEMMS, &|n| allow("f32_gemm", n));
        let (quantize_u8, quantize_u8_name) = pick(QUANTIZERS, &|n| allow("quantize_u8", n));
        let (quantize_pack, quantize_pack_name) =
            pick(QUANTIZE_PACKS, &|n| allow("quantize_pack", n));
        let (softmax_row, softmax_row_name) = pick(SOFTMAXES, &|n| allow("softmax_row", n));
        let (erf, erf_name) = pick(ERFS, &|n| allow("erf", n));
        let (layer_norm_row, layer_norm_row_name) =
            pick(LAYER_NORMS, &|n| allow("layer_norm_row", n));
        let (f32_matmul, f32_matmul_name) = pick(F32_MATMULS, &|n| allow("f32_matmul", n));
        let (mf_step_f32, mf_step_f32_name) = pick(MF_STEPS_F32, &|n| allow("mf_step_f32", n));
        let (mf_step_f16, mf_step_f16_name) = pick(MF_STEPS_F16, &|n| allow("mf_step_f16", n));
        let (mf_step_mixed, mf_step_mixed_name) =
            pick(MF_STEPS_MIXED, &|n| allow("mf_step_mixed", n));
        KernelSet {
            i8_gemm,
            i8_gemm_name,
            i4_gemm,
            i4_gemm_name,
            i4m_gemm,
            i4m_gemm_name,
            f32_gemm,
            f32_gemm_name,
            quantize_u8,
            quantize_u8_name,
            quantize_pack,
            quantize_pack_name,
            softmax_row,
            softmax_row_name,
            erf,
            erf_name,
            layer_norm_row,
            layer_norm_row_name,
            f32_matmul,
            f32_matmul_name,
            mf_step_f32,
            mf_step_f32_name,
            mf_step_f16,
            mf_step_f16_name,
            mf_step_mixed,
            mf_step_mixed_name,
        }
    }
}
