// Shared by every Ember CUDA kernel. The host concatenates this header with each .cu file (in
// the order of `ember_kernels::cuda::SOURCES`) into one NVRTC program: no system headers, so
// NVRTC alone (no CUDA toolkit) compiles it.
//
// Calling convention: every kernel takes one `Args` by value. `p` holds device addresses,
// `i` integers, `f` floats; each kernel documents which slots it reads. The host side
// (`ember_runtime::cuda`) fills them from the validated op.

typedef unsigned char u8;
typedef signed char s8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define EMBER_MAX_RANK 6

struct Args {
    u64 p[8];
    i64 i[28];
    float f[8];
};

// Activation codes (ember_kernels::Act).
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_GELU 2
#define ACT_GELU_TANH 3

__device__ __forceinline__ float ember_gelu(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float ember_gelu_tanh(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float ember_act(float v, int act) {
    switch (act) {
    case ACT_RELU: return v > 0.0f ? v : 0.0f;
    case ACT_GELU: return ember_gelu(v);
    case ACT_GELU_TANH: return ember_gelu_tanh(v);
    default: return v;
    }
}

// Exact IEEE binary16 -> f32 from the bits (no cuda_fp16.h under NVRTC).
__device__ __forceinline__ float ember_f16(u16 h) {
    u32 sign = (u32)(h & 0x8000u) << 16;
    u32 exp = (h >> 10) & 0x1Fu;
    u32 man = h & 0x3FFu;
    if (exp == 0) {
        float mag = (float)man * (1.0f / 16777216.0f);
        return sign ? -mag : mag;
    }
    if (exp == 31) return __int_as_float((int)(sign | 0x7F800000u | (man << 13)));
    return __int_as_float((int)(sign | ((exp + 112u) << 23) | (man << 13)));
}

// The CPU's activation quantizer (kernels/src/generic/quant.rs) on signed codes:
// clamp(rne(clamp(x·mult, ±300)) + zp, -128, 127), NaN to the zero point.
__device__ __forceinline__ int ember_quant_s8(float x, float mult, int zp) {
    float t = x * mult;
    if (t != t) t = 0.0f;
    t = fminf(fmaxf(t, -300.0f), 300.0f);
    int v = __float2int_rn(t) + zp;
    return v < -128 ? -128 : (v > 127 ? 127 : v);
}

// Symmetric weight-style quantizer (kernels/src/pack.rs quantize_sym_i8): rne(clamp(x·inv, ±127)).
__device__ __forceinline__ int ember_quant_sym(float x, float inv) {
    float t = x * inv;
    if (t != t) t = 0.0f;
    t = fminf(fmaxf(t, -127.0f), 127.0f);
    return __float2int_rn(t);
}

__device__ __forceinline__ u32 ember_pack4(int a, int b, int c, int d) {
    return (u32)(a & 0xFF) | ((u32)(b & 0xFF) << 8) | ((u32)(c & 0xFF) << 16) | ((u32)(d & 0xFF) << 24);
}

// Records the first out-of-range index of a run: err[0] = 1, err[1] = op, err[2..4] = index.
__device__ __forceinline__ void ember_index_error(int* err, int op, i64 v) {
    if (atomicCAS(err, 0, 1) == 0) {
        err[1] = op;
        err[2] = (int)(v & 0xFFFFFFFF);
        err[3] = (int)(v >> 32);
    }
}

__device__ __forceinline__ i64 ember_index(const u8* idx, int idx64, i64 i) {
    return idx64 ? ((const i64*)idx)[i] : (i64)((const int*)idx)[i];
}

__device__ __forceinline__ u64 ember_tid() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ u64 ember_threads() {
    return (u64)gridDim.x * blockDim.x;
}
