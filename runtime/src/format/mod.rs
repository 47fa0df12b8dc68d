//! The `.ember` file format, version 1. This module is its specification.
//!
//! All integers are little-endian. Every section starts on a 64-byte boundary, so tensors are
//! used in place from a memory map or from flash.
//!
//! ```text
//! offset 0    header, 64 bytes
//!   0  magic        [u8; 8] = "EMBER\0v1"
//!   8  version      u32 = 1
//!   12 sections     u32, 1..=MAX_SECTIONS
//!   16 file_size    u64, equal to the real length
//!   24 table_crc    u32, CRC-32 of the section table
//!   28 header_crc   u32, CRC-32 of bytes 0..28
//!   32 reserved     [u8; 32], zero
//! offset 64   section table: `sections` entries of 32 bytes
//!   kind u32 (SectionKind), index u32 (plan number for PLAN), offset u64, length u64,
//!   crc u32 (CRC-32 of the section's bytes), reserved u32
//! sections    each at a 64-aligned offset, inside the file, not overlapping
//! ```
//!
//! Sections (exactly one of each, but PLAN, of which there are 1..=MAX_PLANS):
//! - STRINGS: `count u32`, then `count` × (`offset u32`, `len u32`) relative to the section start,
//!   then UTF-8 bytes.
//! - TENSORS: `count u32`, `reserved u32`, then `count` × [`TensorRecord`] (64 bytes). Tensor
//!   bytes live in DATA at `offset` (64-aligned, relative to DATA); tensors never overlap.
//! - DATA: raw tensor bytes.
//! - SIGNATURE: `n_in u32`, `n_out u32`, then (n_in + n_out) × [`SigRecord`] (40 bytes): name,
//!   dtype and the per-sample shape (the batch axis excluded).
//! - PLAN: one execution plan for one fixed batch size: [`PlanHeader`] (32 bytes), the value ids
//!   of the inputs then outputs (u32 each, padded to 8 bytes), `n_values` × [`ValueRecord`]
//!   (48 bytes: dtype, shape and arena slot), `n_ops` × [`OpRecord`] (96 bytes).
//! - METADATA: `count u32`, then `count` × (`key u32`, `value u32`) string ids.
//!
//! Caps: see the `MAX_*` constants. Every count is checked against them and against the bytes
//! present before anything is read; every product of dimensions is computed with overflow checks.

mod records;
#[cfg(feature = "writer")]
pub mod writer;

pub use records::*;

pub const MAGIC: [u8; 8] = *b"EMBER\0v1";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const SECTION_ENTRY_LEN: usize = 32;
pub const ALIGN: usize = 64;

pub const MAX_SECTIONS: u32 = 64;
pub const MAX_PLANS: usize = 32;
pub const MAX_STRINGS: u32 = 1 << 20;
pub const MAX_TENSORS: u32 = 1 << 16;
pub const MAX_VALUES: u32 = 1 << 16;
pub const MAX_OPS: u32 = 1 << 16;
pub const MAX_IO: u32 = 64;
pub const MAX_RANK: usize = 6;
/// Largest arena a plan may ask for (16 GiB).
pub const MAX_ARENA: u64 = 1 << 34;
/// Largest reduction depth of an integer GEMM, so the i32 accumulator cannot overflow.
pub const MAX_I8_K: u32 = 65_536;
/// Marks a reference as a tensor (constant) rather than an arena value.
pub const REF_TENSOR: u32 = 1 << 31;
/// An absent optional reference.
pub const REF_NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionKind {
    Strings = 1,
    Tensors = 2,
    Data = 3,
    Signature = 4,
    Plan = 5,
    Metadata = 6,
}

impl SectionKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Strings,
            2 => Self::Tensors,
            3 => Self::Data,
            4 => Self::Signature,
            5 => Self::Plan,
            6 => Self::Metadata,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Strings => "STRINGS",
            Self::Tensors => "TENSORS",
            Self::Data => "DATA",
            Self::Signature => "SIGNATURE",
            Self::Plan => "PLAN",
            Self::Metadata => "METADATA",
        }
    }
}

/// Element types of tensors and arena values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    F32 = 1,
    I8 = 2,
    I32 = 3,
    I64 = 4,
    F16 = 5,
    U8 = 6,
}

impl DType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::F32,
            2 => Self::I8,
            3 => Self::I32,
            4 => Self::I64,
            5 => Self::F16,
            6 => Self::U8,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::I8 | Self::U8 => 1,
            Self::I64 => 8,
            Self::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::I8 => "i8",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::F16 => "f16",
            Self::U8 => "u8",
        }
    }
}

/// Op codes of a plan. Each op's inputs, outputs and params are documented on its variant; the
/// validator in `ops` enforces them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum OpCode {
    /// in [x f32 [M,K], w f32 [N,K] tensor, bias f32 [N] | NONE]; params [m, k, n, act], act
    /// 0 none, 1 relu, 2 gelu (erf form), 3 gelu (tanh form); LinearI8 takes the same codes.
    LinearF32 = 1,
    /// in [x f32 [M,K], w i8 packed, w_sum i32 [N], scale f32 [N], bias f32 [N],
    /// mult f32 [K] | NONE]; params [m, k, n, act, x_inv_scale (f32 bits), x_zero_point (i32),
    /// weight layout]. Layout 1 (`K4N16`, see `ember_kernels::pack`) stores `w` as
    /// `[⌈N/16⌉, 16·⌈K/4⌉·4]` with zero padding; it is the only layout defined so far.
    /// `y = act((Σ q(x)·w − zp·w_sum) · scale + bias)`, `q(x) = clamp(rne(x·inv_scale)+zp)`, or,
    /// with `mult` (per-channel smoothing folded with the scale), `q(x_j) = clamp(rne(x_j·mult_j)+zp)`.
    /// `x_inv_scale` bits 0 selects dynamic per-row quantization (zero point 0, no `mult`): row
    /// i is quantized symmetrically with `s_i = max_j |x_ij| / 127` and `scale` holds the weight
    /// scales alone: `y_i = act((Σ q(x_i)·w) · scale · s_i + bias)`.
    LinearI8 = 2,
    /// in [a f32 [B?,M,K], b f32 [B?,K,N]]; params [batch, m, k, n, a_batch_stride,
    /// b_batch_stride, 0, 0, 0, 0, b_transposed, alpha (f32 bits, 0 = 1.0)]. With
    /// `b_transposed = 1`, `b` is stored `[B?,N,K]`; the output is multiplied by `alpha`.
    MatMulF32 = 3,
    /// in [a, b] (numpy broadcasting, f32 or i64); params [BinaryKind].
    Binary = 4,
    /// in [x f32]; params [UnaryKind (0 relu, 1 sigmoid, 2 tanh, 3 erf, 4 sqrt, 5 clip, 6 pow,
    /// 7 gelu, 8 gelu-tanh), a, b]: Clip uses a = min, b = max, Pow uses a = exponent (f32 bits).
    Unary = 5,
    /// in [x f32]; params [axis, coerce]: coerce=1 normalises over all axes from `axis` on.
    Softmax = 6,
    /// in [data, indices i64|i32]; params [axis]. Out-of-range indices fail the run.
    Gather = 7,
    /// in [table i8 [R,D], scale f16 [R], bias f16 [R], indices i64|i32]; out f32 [.., D].
    /// Row r dequantizes as `q·scale[r] + bias[r]`.
    GatherRowsI8 = 8,
    /// in [x0..x7]; params [axis].
    Concat = 9,
    /// in [x]; byte copy to an output of equal size (Reshape, Flatten, Squeeze, Unsqueeze, Identity).
    Copy = 10,
    /// in [x]; params [perm0..perm5].
    Transpose = 11,
    /// in [x f32]; params [ReduceKind, axes bitmask, keepdims].
    Reduce = 12,
    /// in [x]; converts between f32, i32 and i64 (float to int truncates toward zero).
    Cast = 13,
    /// in [x f32, scale f32 [D], bias f32 [D] | NONE]; params [axis, epsilon (f32 bits)];
    /// normalizes over the axes from `axis` on (D elements).
    LayerNorm = 14,
    /// in [x]; broadcasts x (NumPy rules) to the output's shape.
    Expand = 15,
    /// Activation × activation in integer arithmetic: in [a f32 [B?,M,K], b f32 [B?,K,N]];
    /// params [batch, m, k, n, a_batch_stride, b_batch_stride, a_inv_scale, a_zero_point,
    /// b_inv_scale, out_scale] (f32 bits for scales). `a` is quantized affine, `b` symmetric; the
    /// zero-point correction uses `b`'s column sums, computed per run. Param 10 is MatMulF32's
    /// `b_transposed`; param 11 must be 0 (a multiplier is folded into `out_scale`).
    MatMulI8 = 16,
    /// Group-wise INT4 weights, INT8 activations (W4A8): in [x f32 [M,K], w u8 packed,
    /// gsum i32 [⌈N/16⌉, 16·K/G], gscale f16 [⌈N/16⌉, 16·K/G], bias f32 [N], mult f32 [K] | NONE];
    /// params [m, k, n, act, x_inv_scale (f32 bits), x_zero_point (i32), weight layout, group G].
    /// Layout 2 (`K4N16_I4`, see `ember_kernels::pack::pack_k4n16_i4`) stores the values −8..=7
    /// two per byte as `[⌈N/16⌉, 8·⌈K/4⌉·4]`; the side data is in the kernels' per-(panel, group)
    /// order. `y = act(x_scale · Σ_g (Σ_{p∈g} q(x)·w − zp·gsum) · gscale + bias)`, `q(x)` as in
    /// LinearI8 (`x_scale = 1 / x_inv_scale`). `G % 4 == 0`, `4 <= G <= 256`, `K % G == 0`.
    LinearI4 = 17,
    /// in [table u8 [R, D/2], scale f16 [R, D/G], bias f16 [R, D/G], indices i64|i32];
    /// params [group G]; out f32 [.., D]. Element j of row r is the nibble `j % 2` (low first)
    /// of byte `j / 2`, an unsigned code `q` in 0..=15: `q·scale[r, j/G] + bias[r, j/G]`.
    GatherRowsI4 = 18,
    /// As LinearF32 with the weights stored in f16 (`w f16 [N,K]`): the accuracy budget's step
    /// between INT8 and f32 (half the bytes of f32, float activations, f32 accumulation).
    LinearF16 = 19,
    /// INT4 weights with integer group multipliers (W4A8, see `ember_kernels::i4m`): in [x f32
    /// [M,K], w u8 packed, gmul u8 [⌈N/16⌉, 16·K/G], w_sum i32 [N], scale f32 [N], bias f32 [N],
    /// mult f32 [K] | NONE]; params as LinearI4. The weight is `Q·M·s`: codes `Q` (−8..=7, layout
    /// 2 as LinearI4), one multiplier `M` (1..=16) per (column, group) in the per-(panel, group)
    /// order, and `scale` the activation scale × column scale. `Q·M` is an INT8 weight, so
    /// `y = act((Σ_p q(x)·Q·M − zp·w_sum) · scale + bias)` exactly as LinearI8 on those weights.
    /// `G % 4 == 0`, `4 <= G <= 256`, `K % G == 0`, `K <= 4096`.
    LinearI4M = 20,
}

impl OpCode {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::LinearF32,
            2 => Self::LinearI8,
            3 => Self::MatMulF32,
            4 => Self::Binary,
            5 => Self::Unary,
            6 => Self::Softmax,
            7 => Self::Gather,
            8 => Self::GatherRowsI8,
            9 => Self::Concat,
            10 => Self::Copy,
            11 => Self::Transpose,
            12 => Self::Reduce,
            13 => Self::Cast,
            14 => Self::LayerNorm,
            15 => Self::Expand,
            16 => Self::MatMulI8,
            17 => Self::LinearI4,
            18 => Self::GatherRowsI4,
            19 => Self::LinearF16,
            20 => Self::LinearI4M,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::LinearF32 => "linear_f32",
            Self::LinearI8 => "linear_i8",
            Self::MatMulF32 => "matmul_f32",
            Self::Binary => "binary",
            Self::Unary => "unary",
            Self::Softmax => "softmax",
            Self::Gather => "gather",
            Self::GatherRowsI8 => "gather_rows_i8",
            Self::Concat => "concat",
            Self::Copy => "copy",
            Self::Transpose => "transpose",
            Self::Reduce => "reduce",
            Self::Cast => "cast",
            Self::LayerNorm => "layer_norm",
            Self::Expand => "expand",
            Self::MatMulI8 => "matmul_i8",
            Self::LinearI4 => "linear_i4",
            Self::GatherRowsI4 => "gather_rows_i4",
            Self::LinearF16 => "linear_f16",
            Self::LinearI4M => "linear_i4m",
        }
    }
    /// Whether the op computes in integer arithmetic (INT8 or INT4; reported by `inspect` and
    /// the report).
    pub fn is_int8(self) -> bool {
        matches!(
            self,
            Self::LinearI8
                | Self::GatherRowsI8
                | Self::MatMulI8
                | Self::LinearI4
                | Self::LinearI4M
                | Self::GatherRowsI4
        )
    }
}

/// Rounds `x` up to the next multiple of [`ALIGN`].
pub const fn align_up(x: u64) -> u64 {
    (x + ALIGN as u64 - 1) & !(ALIGN as u64 - 1)
}
