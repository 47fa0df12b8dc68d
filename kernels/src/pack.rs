//! Weight layouts, chosen at quantize time for the target board and used in place at run time.
//!
//! `K4N16` (layout code 1): the `[N, K]` i8 weight matrix cut into panels of 16 output columns;
//! inside a panel, K runs in quads of 4, and each quad holds 16 columns × 4 consecutive k values
//! (64 bytes, one 512-bit register, four 128-bit ones). Byte `(j, p)` of the matrix lives at
//! `(j / 16) · 16·K4 + (p / 4) · 64 + (j % 16) · 4 + p % 4`, with `K4 = ⌈K/4⌉·4`; the padding
//! columns (`j ≥ N`) and depths (`p ≥ K`) are zero, so kernels may run whole panels and whole
//! quads. One quad is exactly the operand of x86 `vpdpbusd` (16 lanes × 4 bytes) and of four
//! aarch64 `sdot`s (4 lanes × 4 bytes each).

/// Layout code of [`pack_k4n16`] in a `.ember` LinearI8 op (param 6).
pub const LAYOUT_K4N16: u32 = 1;
/// Output columns per panel.
pub const PANEL: usize = 16;

/// `k` rounded up to a whole quad.
#[inline]
pub const fn k4(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// Bytes of a `K4N16`-packed `[n, k]` matrix.
#[inline]
pub const fn k4n16_len(n: usize, k: usize) -> usize {
    n.div_ceil(PANEL) * PANEL * k4(k)
}

/// Position of element `(j, p)` (column `j` < n, depth `p` < k) in the packed bytes.
#[inline]
pub const fn k4n16_index(j: usize, p: usize, k: usize) -> usize {
    (j / PANEL) * PANEL * k4(k) + (p / 4) * 64 + (j % PANEL) * 4 + p % 4
}

/// Packs row-major `w [n, k]` into `out` (length [`k4n16_len`]); padding is zeroed.
pub fn pack_k4n16(w: &[i8], n: usize, k: usize, out: &mut [i8]) {
    let out = &mut out[..k4n16_len(n, k)];
    out.fill(0);
    for (j, row) in w[..n * k].chunks_exact(k).enumerate() {
        for (p, v) in row.iter().enumerate() {
            out[k4n16_index(j, p, k)] = *v;
        }
    }
}

/// [`crate::QuantizePackFn`]: `b` is `[k, n]` ([`quantize_pack_k4n16_kn`]) or, when
/// `transposed`, `[n, k]` ([`quantize_pack_k4n16_nk`]).
#[inline(always)]
pub fn quantize_pack_k4n16(
    b: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
) {
    if transposed {
        quantize_pack_k4n16_nk(b, n, k, ld, inv, out, sums)
    } else {
        quantize_pack_k4n16_kn(b, k, n, ld, inv, out, sums)
    }
}

/// Elements of a strided `rows × cols` operand with row stride `ld` (`ld ≥ cols`): the
/// slice length its last row ends at (0 when it has no rows or no columns).
#[inline]
pub const fn strided_len(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// Quantizes an f32 activation `b [k, n]` (row-major, rows `ld ≥ n` elements apart)
/// symmetrically (`rne(b·inv)` clamped to ±127, NaN to 0) straight into the packed layout, with
/// the column sums the GEMM needs. Four source rows at a time become one 4-byte group per
/// column (vectorizable).
#[inline(always)]
pub fn quantize_pack_k4n16_kn(
    b: &[f32],
    k: usize,
    n: usize,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
) {
    let out = &mut out[..k4n16_len(n, k)];
    let sums = &mut sums[..n];
    sums.fill(0);
    assert!(ld >= n, "row stride {ld} below the row length {n}");
    let b = &b[..strided_len(k, n, ld)];
    let (full_q, full_p) = (k / 4, n / PANEL);
    // Whole 4-row × 16-column blocks: one 64-byte quad of one panel each.
    for p in 0..full_p {
        let j0 = p * PANEL;
        let mut colsum = [0i32; PANEL];
        for q in 0..full_q {
            let mut blk = [0i8; 64];
            for kk in 0..4 {
                let row: &[f32; PANEL] =
                    b[(4 * q + kk) * ld + j0..][..PANEL].try_into().expect("16 columns");
                for c in 0..PANEL {
                    let v = quantize_sym_i8(row[c], inv);
                    blk[c * 4 + kk] = v;
                    colsum[c] += v as i32;
                }
            }
            let at = k4n16_index(j0, 4 * q, k);
            out[at..at + 64].copy_from_slice(&blk);
        }
        for (s, c) in sums[j0..j0 + PANEL].iter_mut().zip(colsum) {
            *s += c;
        }
    }
    quantize_pack_kn_rest(b, k, n, ld, inv, out, sums);
}

/// The part of [`quantize_pack_k4n16_kn`] outside whole 4-row × 16-column blocks (a partial
/// last quad of rows, a partial last panel of columns), element-wise, padding zeroed; adds to
/// `sums`. Shared by the fast variants, which do the whole blocks themselves.
#[inline(always)]
pub(crate) fn quantize_pack_kn_rest(
    b: &[f32],
    k: usize,
    n: usize,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
) {
    let (full_q, full_p) = (k / 4, n / PANEL);
    for p in 0..n.div_ceil(PANEL) {
        for q in 0..k4(k) / 4 {
            if p < full_p && q < full_q {
                continue;
            }
            for c in 0..PANEL {
                for kk in 0..4 {
                    let (j, r) = (p * PANEL + c, 4 * q + kk);
                    let v = if j < n && r < k { quantize_sym_i8(b[r * ld + j], inv) } else { 0 };
                    out[k4n16_index(p * PANEL + c, r, k)] = v;
                    if j < n {
                        sums[j] += v as i32;
                    }
                }
            }
        }
    }
}

/// Like [`quantize_pack_k4n16_kn`] for `b` stored transposed, `[n, k]` row-major with rows
/// `ld ≥ k` elements apart (each column's k values contiguous, so every 4-byte group comes from
/// 4 consecutive floats).
#[inline(always)]
pub fn quantize_pack_k4n16_nk(
    b: &[f32],
    n: usize,
    k: usize,
    ld: usize,
    inv: f32,
    out: &mut [i8],
    sums: &mut [i32],
) {
    let out = &mut out[..k4n16_len(n, k)];
    out.fill(0);
    let sums = &mut sums[..n];
    assert!(ld >= k, "row stride {ld} below the row length {k}");
    let b = &b[..strided_len(n, k, ld)];
    for (j, sum) in sums.iter_mut().enumerate() {
        let col = &b[j * ld..j * ld + k];
        let mut s = 0i32;
        let mut quads = col.chunks_exact(4);
        let mut p = 0;
        for q4 in &mut quads {
            let g = [
                quantize_sym_i8(q4[0], inv),
                quantize_sym_i8(q4[1], inv),
                quantize_sym_i8(q4[2], inv),
                quantize_sym_i8(q4[3], inv),
            ];
            s += g.iter().map(|v| *v as i32).sum::<i32>();
            let at = k4n16_index(j, p, k);
            out[at..at + 4].copy_from_slice(&g);
            p += 4;
        }
        *sum = s + quantize_pack_nk_tail(col, j, p, inv, out);
    }
}

/// Depths `from..k` of column `j` (`col`, its k values) of [`quantize_pack_k4n16_nk`],
/// element-wise; returns their codes' sum. Shared by the fast variants.
pub(crate) fn quantize_pack_nk_tail(
    col: &[f32],
    j: usize,
    from: usize,
    inv: f32,
    out: &mut [i8],
) -> i32 {
    let k = col.len();
    let mut s = 0;
    for (t, v) in col[from..].iter().enumerate() {
        let q = quantize_sym_i8(*v, inv);
        out[k4n16_index(j, from + t, k)] = q;
        s += q as i32;
    }
    s
}

/// `clamp(rne(x·inv), -127, 127)`, NaN to 0, without a float→int cast (the integer is read
/// from the low bits of `t + 1.5·2^23`), so loops over it vectorize.
#[inline(always)]
pub fn quantize_sym_i8(x: f32, inv: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    let t = (x * inv).clamp(-127.0, 127.0);
    let t = if t.is_nan() { 0.0 } else { t };
    (t + MAGIC).to_bits() as u8 as i8
}

/// Layout code of [`pack_k4n16_i4`] (param 6 of a future LinearI4 op).
pub const LAYOUT_K4N16_I4: u32 = 2;

/// Bytes of `[n, k]` INT4 weights packed by [`pack_k4n16_i4`]: half of [`k4n16_len`].
#[inline]
pub const fn k4n16_i4_len(n: usize, k: usize) -> usize {
    k4n16_len(n, k) / 2
}

/// Packs row-major INT4 values `q [n, k]` (each in -8..=7, one per i8) in the `K4N16` order,
/// two per byte: each 64-value quad of a panel becomes 32 bytes, byte `i` holding value `i` in
/// its low nibble and value `i + 32` in its high nibble (so one 256-bit load and one shift give
/// all 64). Padding is zero.
pub fn pack_k4n16_i4(q: &[i8], n: usize, k: usize, out: &mut [u8]) {
    let out = &mut out[..k4n16_i4_len(n, k)];
    out.fill(0);
    for (j, row) in q[..n * k].chunks_exact(k).enumerate() {
        for (p, v) in row.iter().enumerate() {
            let ix = k4n16_index(j, p, k);
            let (quad, within) = (ix / 64, ix % 64);
            let byte = quad * 32 + within % 32;
            let nib = (*v as u8) & 0x0F;
            out[byte] |= if within < 32 { nib } else { nib << 4 };
        }
    }
}

/// Value `i` (0..64) of a 32-byte packed INT4 quad, sign-extended.
#[inline(always)]
pub fn i4_at(quad: &[u8], i: usize) -> i8 {
    let b = quad[i % 32];
    let nib = if i < 32 { b & 0x0F } else { b >> 4 };
    ((nib ^ 8) as i8).wrapping_sub(8)
}

/// Per-(panel, group) side data of INT4 weights in the order the kernels read it:
/// `[⌈n/16⌉][k/group][16]`, padding columns zero. `per_col[j·groups + g]` → that layout.
pub fn panel_groups<T: Copy + Default>(per_col: &[T], n: usize, groups: usize, out: &mut [T]) {
    let out = &mut out[..n.div_ceil(PANEL) * groups * PANEL];
    out.fill(T::default());
    for j in 0..n {
        for g in 0..groups {
            out[(j / PANEL) * groups * PANEL + g * PANEL + j % PANEL] = per_col[j * groups + g];
        }
    }
}
