// Embedding lookups: Gather (any element type, byte rows) and row-wise dequantizing gathers of
// INT8 and INT4 tables. An index outside the table records an error (ember_index_error) that
// the host turns into IndexOutOfRange after the run; the output element is then zero.

// p: [data, idx, out, err]; i: [outer, dim, inner bytes, n_idx, idx64, op]. Thread per byte.
extern "C" __global__ void ember_gather(Args A) {
    const u8* d = (const u8*)A.p[0];
    const u8* ix = (const u8*)A.p[1];
    u8* o = (u8*)A.p[2];
    i64 outer = A.i[0], dim = A.i[1], ib = A.i[2], n_idx = A.i[3];
    for (u64 e = ember_tid(); e < (u64)(outer * n_idx * ib); e += ember_threads()) {
        i64 a = e / (n_idx * ib), i = e / ib % n_idx, c = e % ib;
        i64 v = ember_index(ix, (int)A.i[4], i), r = v < 0 ? v + dim : v;
        if (r < 0 || r >= dim) {
            ember_index_error((int*)A.p[3], (int)A.i[5], v);
            o[e] = 0;
        } else {
            o[e] = d[(a * dim + r) * ib + c];
        }
    }
}

// Row of output element e of a row gather (p[3] indices, p[5] error word; i[0] rows, i[1] d,
// i[3] idx64, i[4] op), or -1 after recording an out-of-range index.
__device__ __forceinline__ i64 ember_gather_row(const Args& A, u64 e) {
    i64 rows = A.i[0];
    i64 v = ember_index((const u8*)A.p[3], (int)A.i[3], e / A.i[1]), r = v < 0 ? v + rows : v;
    if (r < 0 || r >= rows) {
        ember_index_error((int*)A.p[5], (int)A.i[4], v);
        return -1;
    }
    return r;
}

// q·scale[r] + bias[r] per row (f16 side data). p: [table i8, scale f16, bias f16, idx, out,
// err]; i: [rows, d, n_idx, idx64, op]. Thread per output element.
extern "C" __global__ void ember_gather_rows_i8(Args A) {
    const s8* t = (const s8*)A.p[0];
    const u16* sc = (const u16*)A.p[1];
    const u16* bi = (const u16*)A.p[2];
    float* o = (float*)A.p[4];
    i64 d = A.i[1];
    for (u64 e = ember_tid(); e < (u64)(A.i[2] * d); e += ember_threads()) {
        i64 r = ember_gather_row(A, e);
        if (r < 0) {
            o[e] = 0.0f;
            continue;
        }
        o[e] = __fadd_rn(__fmul_rn((float)t[r * d + e % d], ember_f16(sc[r])), ember_f16(bi[r]));
    }
}

// Unsigned 4-bit codes, two per byte (low nibble first), scale and bias per group of G.
// p: as ember_gather_rows_i8 (table u8 [R, D/2], scale/bias f16 [R, D/G]); i: [rows, d, n_idx,
// idx64, op, group].
extern "C" __global__ void ember_gather_rows_i4(Args A) {
    const u8* t = (const u8*)A.p[0];
    const u16* sc = (const u16*)A.p[1];
    const u16* bi = (const u16*)A.p[2];
    float* o = (float*)A.p[4];
    i64 d = A.i[1], g = A.i[5];
    for (u64 e = ember_tid(); e < (u64)(A.i[2] * d); e += ember_threads()) {
        i64 r = ember_gather_row(A, e);
        if (r < 0) {
            o[e] = 0.0f;
            continue;
        }
        i64 j = e % d;
        u8 b = t[r * d / 2 + j / 2];
        int q = j % 2 ? b >> 4 : b & 15;
        i64 s = r * (d / g) + j / g;
        o[e] = __fadd_rn(__fmul_rn((float)q, ember_f16(sc[s])), ember_f16(bi[s]));
    }
}
