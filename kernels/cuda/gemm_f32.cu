// Float GEMM for the layers that stay wide (LinearF32) and activation products (MatMulF32):
// out[h] = act(alpha · a[h]·op(b[h]) + bias), op(b) = bᵀ when b is stored [N, K].
// 16×16 output tile per block of 16×16 threads, operands staged through shared memory in
// 16-deep slices. p: [a, b, bias | 0, out]; i: [m, k, n, heads, a head stride, b head stride,
// b_transposed, act]; f: [alpha]. Grid (⌈n/16⌉, ⌈m/16⌉, heads).

#define EMBER_TILE 16

extern "C" __global__ void ember_gemm_f32(Args A) {
    __shared__ float as[EMBER_TILE][EMBER_TILE];
    __shared__ float bs[EMBER_TILE][EMBER_TILE + 1];
    i64 m = A.i[0], k = A.i[1], n = A.i[2];
    i64 h = blockIdx.z;
    const float* a = (const float*)A.p[0] + h * A.i[4];
    const float* b = (const float*)A.p[1] + h * A.i[5];
    const float* bias = (const float*)A.p[2];
    float* out = (float*)A.p[3] + h * m * n;
    int bt = (int)A.i[6], act = (int)A.i[7];
    int tx = threadIdx.x, ty = threadIdx.y;
    i64 row = (i64)blockIdx.y * EMBER_TILE + ty, col = (i64)blockIdx.x * EMBER_TILE + tx;
    float acc = 0.0f;
    for (i64 p0 = 0; p0 < k; p0 += EMBER_TILE) {
        i64 pa = p0 + tx;
        as[ty][tx] = (row < m && pa < k) ? a[row * k + pa] : 0.0f;
        // bs[depth][column]
        i64 pb = p0 + ty;
        float bv = 0.0f;
        if (pb < k && col < n) bv = bt ? b[col * k + pb] : b[pb * n + col];
        bs[ty][tx] = bv;
        __syncthreads();
        for (int e = 0; e < EMBER_TILE; e++) acc += as[ty][e] * bs[e][tx];
        __syncthreads();
    }
    if (row < m && col < n) {
        float v = acc * A.f[0];
        if (bias) v += bias[col];
        out[row * n + col] = ember_act(v, act);
    }
}
