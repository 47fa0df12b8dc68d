// Integer GEMMs: activation quantization, INT8 weights (dp4a everywhere, mma.sync on sm_72+),
// INT4 group-wise weights (dp4a with the nibbles widened in registers), and the packing of an
// activation operand for activation x activation products (MatMulI8).
//
// Weights use the CPU's K4N16 layout (kernels/src/pack.rs): panel P of 16 columns holds, for
// quad q of 4 depths, 16 words of 4 bytes: word (q, c) = w32[P·4·K4 + q·16 + c], K4 = ⌈K/4⌉·4.
// A 4-byte word is exactly one dp4a operand, so the device uses the file's bytes in place.
//
// The integer sums are exact (wrapping i32 as on the CPU); the epilogue rounds each product and
// sum separately (__fmul_rn / __fadd_rn, no contraction), so it matches the CPU bit for bit
// before the activation.

// Quantizes f32 rows to signed codes at row stride lda (padding zero).
// p: [x f32, mult f32 | 0, q s8]; i: [m, k, lda, zp, heads, x head stride (elements),
// q head stride (bytes)]; f: [inv_scale]. One thread per (head, row, quad).
extern "C" __global__ void ember_quantize_rows(Args A) {
    const float* x = (const float*)A.p[0];
    const float* mult = (const float*)A.p[1];
    s8* q = (s8*)A.p[2];
    i64 m = A.i[0], k = A.i[1], lda = A.i[2];
    int zp = (int)A.i[3];
    i64 heads = A.i[4], xs = A.i[5], qs = A.i[6];
    float inv = A.f[0];
    i64 quads = lda / 4, total = heads * m * quads;
    for (u64 t = ember_tid(); t < (u64)total; t += ember_threads()) {
        i64 h = t / (m * quads), rq = t % (m * quads), r = rq / quads, qd = rq % quads;
        const float* xr = x + h * xs + r * k;
        int c[4];
        for (int e = 0; e < 4; e++) {
            i64 p = qd * 4 + e;
            c[e] = p < k ? ember_quant_s8(xr[p], mult ? mult[p] : inv, zp) : 0;
        }
        *(u32*)(q + h * qs + r * lda + qd * 4) = ember_pack4(c[0], c[1], c[2], c[3]);
    }
}

// Quantizes an activation b (symmetric, like quantize_sym_i8) into K4N16 panels with the
// column sums, per head. p: [b f32, packed s8, sums i32]; i: [k, n, b_transposed, heads,
// b head stride (elements), packed head stride (bytes)]; f: [inv]. One thread per (head,
// padded column).
extern "C" __global__ void ember_pack_b_i8(Args A) {
    const float* b = (const float*)A.p[0];
    s8* out = (s8*)A.p[1];
    int* sums = (int*)A.p[2];
    i64 k = A.i[0], n = A.i[1], bt = A.i[2], heads = A.i[3], bs = A.i[4], ps = A.i[5];
    float inv = A.f[0];
    i64 k4 = (k + 3) / 4 * 4, n16 = (n + 15) / 16 * 16;
    for (u64 t = ember_tid(); t < (u64)(heads * n16); t += ember_threads()) {
        i64 h = t / n16, j = t % n16;
        const float* bh = b + h * bs;
        s8* o = out + h * ps + (j / 16) * 16 * k4 + (j % 16) * 4;
        int s = 0;
        for (i64 p = 0; p < k4; p++) {
            int v = 0;
            if (j < n && p < k) v = ember_quant_sym(bt ? bh[j * k + p] : bh[p * n + j], inv);
            o[(p / 4) * 64 + p % 4] = (s8)v;
            s += v;
        }
        if (j < n) sums[h * n + j] = s;
    }
}

// The operands of one head of an INT8 product (Args of ember_linear_i8_dp4a).
struct I8Gemm {
    const s8* q;
    const int* w;
    const int* wsum;
    float* out;
    int m, k, n, lda, zp, act, uniform, quads;
};

__device__ __forceinline__ I8Gemm ember_i8_gemm(const Args& A) {
    i64 head = blockIdx.z;
    I8Gemm g;
    g.q = (const s8*)A.p[0] + head * A.i[7];
    g.w = (const int*)((const s8*)A.p[1] + head * A.i[8]);
    g.wsum = (const int*)A.p[2] + head * A.i[9];
    g.out = (float*)A.p[5] + head * A.i[10];
    g.m = (int)A.i[0];
    g.k = (int)A.i[1];
    g.n = (int)A.i[2];
    g.lda = (int)A.i[3];
    g.zp = (int)A.i[4];
    g.act = (int)A.i[5];
    g.uniform = (int)A.i[6];
    g.quads = (g.k + 3) / 4;
    return g;
}

// Shared epilogue of the INT8 kernels: uniform = 1 uses one scale f[0] and no bias (MatMulI8).
__device__ __forceinline__ float ember_i8_epilogue(int acc, int zp, int wsum, const float* scale,
                                                   const float* bias, int j, int uniform,
                                                   float uscale, int act) {
    int corrected = acc - zp * wsum;
    float v = uniform ? __fadd_rn(__fmul_rn((float)corrected, uscale), 0.0f)
                      : __fadd_rn(__fmul_rn((float)corrected, scale[j]), bias[j]);
    return ember_act(v, act);
}

// y[m, n] = act((Σ q·w − zp·w_sum)·scale + bias), dp4a. Block (16, 16): x = column of the
// panel, y = row; each thread 4 rows (y, y+16, y+32, y+48). Grid (panels, ⌈m/64⌉, heads).
// p: [q s8 [m, lda], w K4N16, w_sum i32 [n], scale f32 [n], bias f32 [n], out f32 [m, n]];
// i: [m, k, n, lda, zp, act, uniform, q/w/w_sum/out head strides (bytes, bytes, elems, elems)];
// f: [uniform scale].
extern "C" __global__ void ember_linear_i8_dp4a(Args A) {
    const I8Gemm op = ember_i8_gemm(A);
    int m = op.m, quads = op.quads;
    int c = threadIdx.x, j = blockIdx.x * 16 + c;
    const int* wp = op.w + (i64)blockIdx.x * 16 * quads + c;
    int r0 = blockIdx.y * 64 + threadIdx.y;
    const int* ar[4];
    int acc[4];
    for (int t = 0; t < 4; t++) {
        int r = r0 + 16 * t;
        ar[t] = (const int*)(op.q + (i64)(r < m ? r : 0) * op.lda);
        acc[t] = 0;
    }
    for (int kq = 0; kq < quads; kq++) {
        int wv = wp[kq * 16];
        for (int t = 0; t < 4; t++) acc[t] = __dp4a(ar[t][kq], wv, acc[t]);
    }
    if (j >= op.n) return;
    for (int t = 0; t < 4; t++) {
        int r = r0 + 16 * t;
        if (r < m)
            op.out[(i64)r * op.n + j] =
                ember_i8_epilogue(acc[t], op.zp, op.wsum[j], (const float*)A.p[3],
                                  (const float*)A.p[4], j, op.uniform, A.f[0], op.act);
    }
}

// The same product on the tensor cores: mma.sync m8n8k16 s8·s8→s32 (sm_72 and newer). Block of
// 4 warps = 32 rows × one panel (16 columns); warp w owns rows 8w..8w+7, lane = 4·g + t: A
// fragment row g, depth quad t of each k16 step; B fragment column g (and 8 + g), quad t;
// C fragment row g, columns 2t and 2t + 1 of each half. Grid (panels, ⌈m/32⌉, heads).
// Same Args as ember_linear_i8_dp4a.
extern "C" __global__ void ember_linear_i8_mma(Args A) {
#if __CUDA_ARCH__ >= 720
    const I8Gemm op = ember_i8_gemm(A);
    int m = op.m, quads = op.quads;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int row0 = blockIdx.y * 32 + warp * 8;
    int ra = row0 + g;
    const int* arow = (const int*)(op.q + (i64)(ra < m ? ra : 0) * op.lda);
    const int* wp = op.w + (i64)blockIdx.x * 16 * quads;
    int d0 = 0, d1 = 0, d2 = 0, d3 = 0;
    for (int kb = 0; kb < quads; kb += 4) {
        int kq = kb + t;
        int a = (ra < m && kq < quads) ? arow[kq] : 0;
        int b0 = kq < quads ? wp[kq * 16 + g] : 0;
        int b1 = kq < quads ? wp[kq * 16 + 8 + g] : 0;
        asm volatile("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0,%1}, {%2}, {%3}, {%0,%1};"
                     : "+r"(d0), "+r"(d1) : "r"(a), "r"(b0));
        asm volatile("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0,%1}, {%2}, {%3}, {%0,%1};"
                     : "+r"(d2), "+r"(d3) : "r"(a), "r"(b1));
    }
    if (ra >= m) return;
    int d[4] = {d0, d1, d2, d3};
    for (int e = 0; e < 4; e++) {
        int j = blockIdx.x * 16 + (e / 2) * 8 + 2 * t + e % 2;
        if (j < op.n)
            op.out[(i64)ra * op.n + j] =
                ember_i8_epilogue(d[e], op.zp, op.wsum[j], (const float*)A.p[3],
                                  (const float*)A.p[4], j, op.uniform, A.f[0], op.act);
    }
#else
    __trap();
#endif
}

// The i32 dots of one thread's 4 rows with its column's INT4 codes over quads kq0..kq1 (one
// group): a word load and a nibble shift give 4 codes, sign-fixed bytewise, fed to dp4a.
__device__ __forceinline__ void ember_i4_group_dots(const u8* wp, const int* const* ar, int kq0,
                                                    int kq1, int shift, int* dot) {
    for (int t = 0; t < 4; t++) dot[t] = 0;
    for (int kq = kq0; kq < kq1; kq++) {
        u32 raw = (*(const u32*)(wp + (i64)kq * 32) >> shift) & 0x0F0F0F0Fu;
        int wv = (int)__vsub4(raw ^ 0x08080808u, 0x08080808u);
        for (int t = 0; t < 4; t++) dot[t] = __dp4a(ar[t][kq], wv, dot[t]);
    }
}

// Group-wise INT4 weights (K4N16_I4, kernels/src/pack.rs): the 64 values of quad block B of a
// panel are 32 bytes, value i in the low nibble of byte i (i < 32) or the high nibble of byte
// i − 32; column c's 4 depths are values 4c..4c+3, so one word load and a nibble shift give a
// dp4a operand. y = act(x_scale·Σ_g (Σ q·w − zp·gsum)·gscale + bias).
// p: [q s8, w u8, gsum i32, gscale f16, bias f32, out f32]; i: [m, k, n, lda, zp, act, group];
// f: [x_scale]. Block (16, 16), 4 rows per thread, grid (panels, ⌈m/64⌉).
extern "C" __global__ void ember_linear_i4_dp4a(Args A) {
    const s8* q = (const s8*)A.p[0];
    const u8* w = (const u8*)A.p[1];
    const int* gsum = (const int*)A.p[2];
    const u16* gscale = (const u16*)A.p[3];
    const float* bias = (const float*)A.p[4];
    float* out = (float*)A.p[5];
    int m = (int)A.i[0], k = (int)A.i[1], n = (int)A.i[2], lda = (int)A.i[3];
    int zp = (int)A.i[4], act = (int)A.i[5], group = (int)A.i[6];
    int groups = k / group, quads = k / 4;
    int c = threadIdx.x, j = blockIdx.x * 16 + c;
    int shift = c >= 8 ? 4 : 0;
    const u8* wp = w + (i64)blockIdx.x * quads * 32 + (c % 8) * 4;
    int r0 = blockIdx.y * 64 + threadIdx.y;
    const int* ar[4];
    float facc[4];
    for (int t = 0; t < 4; t++) {
        int r = r0 + 16 * t;
        ar[t] = (const int*)(q + (i64)(r < m ? r : 0) * lda);
        facc[t] = 0.0f;
    }
    i64 side = (i64)blockIdx.x * groups * 16 + c;
    for (int g = 0; g < groups; g++) {
        int dot[4];
        ember_i4_group_dots(wp, ar, g * group / 4, (g + 1) * group / 4, shift, dot);
        int gs = gsum[side + g * 16];
        float sc = ember_f16(gscale[side + g * 16]);
        for (int t = 0; t < 4; t++)
            facc[t] = __fadd_rn(facc[t], __fmul_rn((float)(dot[t] - zp * gs), sc));
    }
    if (j >= n) return;
    for (int t = 0; t < 4; t++) {
        int r = r0 + 16 * t;
        if (r < m)
            out[(i64)r * n + j] = ember_act(__fadd_rn(__fmul_rn(facc[t], A.f[0]), bias[j]), act);
    }
}

// INT4 with integer group multipliers (LinearI4M): the codes as in ember_linear_i4_dp4a, each
// group's i32 dot scaled by its multiplier M (1..=16) and summed in i32, so the epilogue is
// LinearI8's: y = act((Σ_g M·Σ_{p∈g} q·w − zp·w_sum)·scale + bias), exactly the INT8 GEMM on the
// widened weights Q·M. p: [q s8, w u8, gmul u8, w_sum i32, scale f32, bias f32, out f32];
// i: [m, k, n, lda, zp, act, group]. Block (16, 16), 4 rows per thread, grid (panels, ⌈m/64⌉).
extern "C" __global__ void ember_linear_i4m_dp4a(Args A) {
    const s8* q = (const s8*)A.p[0];
    const u8* w = (const u8*)A.p[1];
    const u8* gmul = (const u8*)A.p[2];
    const int* wsum = (const int*)A.p[3];
    const float* scale = (const float*)A.p[4];
    const float* bias = (const float*)A.p[5];
    float* out = (float*)A.p[6];
    int m = (int)A.i[0], k = (int)A.i[1], n = (int)A.i[2], lda = (int)A.i[3];
    int zp = (int)A.i[4], act = (int)A.i[5], group = (int)A.i[6];
    int groups = k / group, quads = k / 4;
    int c = threadIdx.x, j = blockIdx.x * 16 + c;
    int shift = c >= 8 ? 4 : 0;
    const u8* wp = w + (i64)blockIdx.x * quads * 32 + (c % 8) * 4;
    int r0 = blockIdx.y * 64 + threadIdx.y;
    const int* ar[4];
    int acc[4] = {0, 0, 0, 0};
    for (int t = 0; t < 4; t++) {
        int r = r0 + 16 * t;
        ar[t] = (const int*)(q + (i64)(r < m ? r : 0) * lda);
    }
    i64 side = (i64)blockIdx.x * groups * 16 + c;
    for (int g = 0; g < groups; g++) {
        int dot[4];
        ember_i4_group_dots(wp, ar, g * group / 4, (g + 1) * group / 4, shift, dot);
        int mg = (int)gmul[side + g * 16];
        for (int t = 0; t < 4; t++) acc[t] += mg * dot[t];
    }
    if (j >= n) return;
    for (int t = 0; t < 4; t++) {
        int r = r0 + 16 * t;
        if (r < m) {
            float v = (float)(acc[t] - zp * wsum[j]);
            out[(i64)r * n + j] = ember_act(__fadd_rn(__fmul_rn(v, scale[j]), bias[j]), act);
        }
    }
}
