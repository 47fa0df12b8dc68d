// Row reductions: LayerNorm, Softmax (with an additive mask broadcast over the leading axes,
// or along a strided axis), and Reduce (sum / mean over any axes).

#define EMBER_ROW_THREADS 256

// Block-wide sum of v over EMBER_ROW_THREADS threads (all threads get the result).
__device__ __forceinline__ float ember_block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < EMBER_ROW_THREADS / 32; i++) t += sh[i];
    return t;
}

__device__ __forceinline__ float ember_block_max(float v, float* sh) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    float t = -__int_as_float(0x7f800000);
    for (int i = 0; i < EMBER_ROW_THREADS / 32; i++) t = fmaxf(t, sh[i]);
    return t;
}

// o = (x − mean)/√(var + eps)·gamma + beta per row of d. p: [x, gamma, beta | 0, out];
// i: [rows, d]; f: [eps]. One block of EMBER_ROW_THREADS per row.
extern "C" __global__ void ember_layer_norm(Args A) {
    __shared__ float sh[EMBER_ROW_THREADS / 32];
    i64 d = A.i[1], r = blockIdx.x;
    const float* x = (const float*)A.p[0] + r * d;
    const float* g = (const float*)A.p[1];
    const float* b = (const float*)A.p[2];
    float* o = (float*)A.p[3] + r * d;
    float s = 0.0f;
    for (i64 c = threadIdx.x; c < d; c += blockDim.x) s += x[c];
    float mean = ember_block_sum(s, sh) / (float)d;
    float v = 0.0f;
    for (i64 c = threadIdx.x; c < d; c += blockDim.x) v += (x[c] - mean) * (x[c] - mean);
    float var = ember_block_sum(v, sh) / (float)d;
    float inv = 1.0f / sqrtf(var + A.f[0]);
    for (i64 c = threadIdx.x; c < d; c += blockDim.x) {
        float y = (x[c] - mean) * inv * g[c];
        o[c] = b ? y + b[c] : y;
    }
}

// Softmax over rows of n (inner = 1). Row r's mask row is Σ_d i_d·mstrides[d] over the
// multi-index i of r in `rows`. p: [x, mask | 0, out]; i: [outer, n, rank, rows[6],
// mstrides[6]]. One block per row.
extern "C" __global__ void ember_softmax_rows(Args A) {
    __shared__ float sh[EMBER_ROW_THREADS / 32];
    i64 n = A.i[1], r = blockIdx.x;
    const float* x = (const float*)A.p[0] + r * n;
    const float* mk = (const float*)A.p[1];
    float* o = (float*)A.p[2] + r * n;
    if (mk) {
        i64 rest = r, off = 0;
        for (int d = (int)A.i[2] - 1; d >= 0; d--) {
            off += rest % A.i[3 + d] * A.i[9 + d];
            rest /= A.i[3 + d];
        }
        mk += off * n;
    }
    float mx = -__int_as_float(0x7f800000);
    for (i64 c = threadIdx.x; c < n; c += blockDim.x) mx = fmaxf(mx, mk ? x[c] + mk[c] : x[c]);
    mx = ember_block_max(mx, sh);
    float s = 0.0f;
    for (i64 c = threadIdx.x; c < n; c += blockDim.x) {
        float e = expf((mk ? x[c] + mk[c] : x[c]) - mx);
        o[c] = e;
        s += e;
    }
    float inv = 1.0f / ember_block_sum(s, sh);
    for (i64 c = threadIdx.x; c < n; c += blockDim.x) o[c] *= inv;
}

// Softmax along an axis of stride `inner`. p: [x, out]; i: [outer, n, inner]. One thread per
// (outer, inner) line.
extern "C" __global__ void ember_softmax_strided(Args A) {
    const float* x = (const float*)A.p[0];
    float* o = (float*)A.p[1];
    i64 outer = A.i[0], n = A.i[1], inner = A.i[2];
    for (u64 t = ember_tid(); t < (u64)(outer * inner); t += ember_threads()) {
        i64 base = (t / inner) * n * inner + t % inner;
        float mx = -__int_as_float(0x7f800000);
        for (i64 j = 0; j < n; j++) mx = fmaxf(mx, x[base + j * inner]);
        float s = 0.0f;
        for (i64 j = 0; j < n; j++) {
            float e = expf(x[base + j * inner] - mx);
            o[base + j * inner] = e;
            s += e;
        }
        float inv = 1.0f / s;
        for (i64 j = 0; j < n; j++) o[base + j * inner] *= inv;
    }
}

// Adds each input element into its output slot (the output is zeroed first by ember_fill_f32;
// Mean scales afterwards). p: [x, out]; i: [total, rank, dims[6], out strides[6]] (stride 0
// on reduced axes); f: [scale applied to each element (1 for sum, 1/count for mean)].
extern "C" __global__ void ember_reduce_add(Args A) {
    const float* x = (const float*)A.p[0];
    float* o = (float*)A.p[1];
    int rank = (int)A.i[1];
    for (u64 e = ember_tid(); e < (u64)A.i[0]; e += ember_threads()) {
        i64 off = 0, rest = e;
        for (int d = rank - 1; d >= 0; d--) {
            off += rest % A.i[2 + d] * A.i[8 + d];
            rest /= A.i[2 + d];
        }
        atomicAdd(o + off, x[e] * A.f[0]);
    }
}
