// Element-wise ops, strided copies (Transpose, Expand), concatenation and casts. Shapes come in
// Args.i as (rank, dims[6], strides...) with strides in elements per output axis, 0 on a
// broadcast axis. Grid-stride loops: any grid size is correct.

// Offset of output element e in an operand with per-axis strides st (rank ≤ 6).
__device__ __forceinline__ i64 ember_offset(i64 e, int rank, const i64* dims, const i64* st) {
    i64 off = 0;
    for (int d = rank - 1; d >= 0; d--) {
        off += (e % dims[d]) * st[d];
        e /= dims[d];
    }
    return off;
}

// p: [a, b, out]; i: [total, kind (0 add, 1 sub, 2 mul, 3 div), rank, dims[6], sa[6], sb[6]].
extern "C" __global__ void ember_binary_f32(Args A) {
    const float* a = (const float*)A.p[0];
    const float* b = (const float*)A.p[1];
    float* o = (float*)A.p[2];
    int kind = (int)A.i[1], rank = (int)A.i[2];
    for (u64 e = ember_tid(); e < (u64)A.i[0]; e += ember_threads()) {
        float x = a[ember_offset(e, rank, &A.i[3], &A.i[9])];
        float y = b[ember_offset(e, rank, &A.i[3], &A.i[15])];
        float v;
        switch (kind) {
        case 0: v = __fadd_rn(x, y); break;
        case 1: v = __fsub_rn(x, y); break;
        case 2: v = __fmul_rn(x, y); break;
        default: v = __fdiv_rn(x, y); break;
        }
        o[e] = v;
    }
}

// As ember_binary_f32 on i64, wrapping; division by zero gives 0 (as on the CPU).
extern "C" __global__ void ember_binary_i64(Args A) {
    const i64* a = (const i64*)A.p[0];
    const i64* b = (const i64*)A.p[1];
    i64* o = (i64*)A.p[2];
    int kind = (int)A.i[1], rank = (int)A.i[2];
    for (u64 e = ember_tid(); e < (u64)A.i[0]; e += ember_threads()) {
        u64 x = (u64)a[ember_offset(e, rank, &A.i[3], &A.i[9])];
        u64 y = (u64)b[ember_offset(e, rank, &A.i[3], &A.i[15])];
        i64 v;
        switch (kind) {
        case 0: v = (i64)(x + y); break;
        case 1: v = (i64)(x - y); break;
        case 2: v = (i64)(x * y); break;
        default:
            // i64::MIN / -1 overflows: checked_div gives 0 there too.
            v = (y == 0 || ((i64)x == (-9223372036854775807LL - 1) && (i64)y == -1))
                    ? 0 : (i64)x / (i64)y;
            break;
        }
        o[e] = v;
    }
}

// p: [x, out]; i: [n, kind (UnaryKind)]; f: [a, b] (Clip min/max, Pow exponent).
extern "C" __global__ void ember_unary(Args A) {
    const float* x = (const float*)A.p[0];
    float* o = (float*)A.p[1];
    int kind = (int)A.i[1];
    float pa = A.f[0], pb = A.f[1];
    for (u64 e = ember_tid(); e < (u64)A.i[0]; e += ember_threads()) {
        float v = x[e], r;
        switch (kind) {
        case 0: r = v > 0.0f ? v : 0.0f; break; // NaN to 0, as f32::max
        case 1: r = 1.0f / (1.0f + expf(-v)); break;
        case 2: r = tanhf(v); break;
        case 3: r = erff(v); break;
        case 4: r = sqrtf(v); break;
        case 5: r = fminf(fmaxf(v, pa), pb); break;
        case 6: r = powf(v, pa); break;
        case 7: r = ember_gelu(v); break;
        default: r = ember_gelu_tanh(v); break;
        }
        o[e] = r;
    }
}

// Strided copy (Transpose; Expand with zero strides). p: [src, out]; i: [total elements,
// element bytes (1, 2, 4 or 8), rank, dims[6], src strides[6]].
extern "C" __global__ void ember_strided_copy(Args A) {
    const u8* s = (const u8*)A.p[0];
    u8* o = (u8*)A.p[1];
    int elem = (int)A.i[1], rank = (int)A.i[2];
    for (u64 e = ember_tid(); e < (u64)A.i[0]; e += ember_threads()) {
        i64 off = ember_offset(e, rank, &A.i[3], &A.i[9]);
        switch (elem) {
        case 8: ((u64*)o)[e] = ((const u64*)s)[off]; break;
        case 4: ((u32*)o)[e] = ((const u32*)s)[off]; break;
        case 2: ((u16*)o)[e] = ((const u16*)s)[off]; break;
        default:
            for (int c = 0; c < elem; c++) o[e * elem + c] = s[off * elem + c];
        }
    }
}

// One input of a Concat (also Copy, with outer = 1): chunk bytes of each of `outer` rows go to
// byte `pos` of output rows of `total` bytes. p: [src, out]; i: [outer, chunk, total, pos].
extern "C" __global__ void ember_concat_part(Args A) {
    const u8* s = (const u8*)A.p[0];
    u8* o = (u8*)A.p[1];
    i64 chunk = A.i[1], total = A.i[2], pos = A.i[3];
    for (u64 e = ember_tid(); e < (u64)(A.i[0] * chunk); e += ember_threads()) {
        i64 r = e / chunk, c = e % chunk;
        o[r * total + pos + c] = s[e];
    }
}

// Float to integer truncates toward zero, saturating, NaN to 0 (Rust's `as`).
__device__ __forceinline__ i64 ember_f2i64(float v) {
    if (v != v) return 0;
    if (v >= 9.2233720e18f) return 9223372036854775807LL;
    if (v <= -9.2233720e18f) return -9223372036854775807LL - 1;
    return (i64)v;
}

// p: [src, out]; i: [n, from, to] (DType codes: 1 f32, 3 i32, 4 i64).
extern "C" __global__ void ember_cast(Args A) {
    const u8* s = (const u8*)A.p[0];
    u8* o = (u8*)A.p[1];
    int from = (int)A.i[1], to = (int)A.i[2];
    for (u64 e = ember_tid(); e < (u64)A.i[0]; e += ember_threads()) {
        if (from == 1) {
            float v = ((const float*)s)[e];
            if (to == 1) ((float*)o)[e] = v;
            else if (to == 3) {
                i64 t = ember_f2i64(v);
                ((int*)o)[e] = t > 2147483647LL ? 2147483647 : (t < -2147483648LL ? (-2147483647 - 1) : (int)t);
            } else ((i64*)o)[e] = ember_f2i64(v);
        } else {
            i64 v = from == 3 ? (i64)((const int*)s)[e] : ((const i64*)s)[e];
            if (to == 1) ((float*)o)[e] = (float)v;
            else if (to == 3) ((int*)o)[e] = (int)v;
            else ((i64*)o)[e] = v;
        }
    }
}

// p: [out]; i: [n]; f: [value]: fills n floats (Reduce's zeroing).
extern "C" __global__ void ember_fill_f32(Args A) {
    float* o = (float*)A.p[0];
    for (u64 e = ember_tid(); e < (u64)A.i[0]; e += ember_threads()) o[e] = A.f[0];
}
