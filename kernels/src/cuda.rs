//! CUDA C sources of the GPU kernels (`kernels/cuda/*.cu`), compiled by NVRTC: at quantize time
//! for the target board's SM (PTX embedded in the `.ember` file), or at first load on the device.
//!
//! [`SOURCES`] is the one list: the host concatenates them in order (the shared header first)
//! into one NVRTC program; [`KERNELS`] names every `extern "C"` entry point the runtime loads,
//! and the PTX test checks that each one is present for every supported architecture.
//! [`source_hash`] identifies the kernel ABI, so PTX built from other sources is never used.

/// `(file name, CUDA C source)`, in program order.
pub const SOURCES: [(&str, &str); 6] = [
    ("common.cuh", include_str!("../cuda/common.cuh")),
    ("gemm_i8.cu", include_str!("../cuda/gemm_i8.cu")),
    ("gemm_f32.cu", include_str!("../cuda/gemm_f32.cu")),
    ("elementwise.cu", include_str!("../cuda/elementwise.cu")),
    ("norm.cu", include_str!("../cuda/norm.cu")),
    ("gather.cu", include_str!("../cuda/gather.cu")),
];

/// Every kernel entry point, as named in the sources.
pub const KERNELS: [&str; 21] = [
    "ember_quantize_rows",
    "ember_pack_b_i8",
    "ember_linear_i8_dp4a",
    "ember_linear_i8_mma",
    "ember_linear_i4_dp4a",
    "ember_linear_i4m_dp4a",
    "ember_gemm_f32",
    "ember_binary_f32",
    "ember_binary_i64",
    "ember_unary",
    "ember_strided_copy",
    "ember_concat_part",
    "ember_cast",
    "ember_fill_f32",
    "ember_layer_norm",
    "ember_softmax_rows",
    "ember_softmax_strided",
    "ember_reduce_add",
    "ember_gather",
    "ember_gather_rows_i8",
    "ember_gather_rows_i4",
];

/// SM versions (major·10 + minor) the sources are written for and CI compiles: Xavier (72) and
/// Orin (87) are the Jetson targets; the rest are discrete GPUs. `mma.sync` int8 needs 72+.
pub const ARCHS: [u32; 9] = [61, 70, 72, 75, 80, 86, 87, 89, 90];

/// FNV-1a (64-bit) of every source in order: changes whenever any kernel source changes.
pub fn source_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, src) in SOURCES {
        for b in name.bytes().chain(src.bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}
