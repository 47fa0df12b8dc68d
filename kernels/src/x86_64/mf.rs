//! Matrix-factorization SGD steps (see `generic::mf` for the definition and the fixed order of
//! the dot product): the f32 form is the generic body compiled for wider registers; the f16 form
//! converts rows with `vcvtph2ps`/`vcvtps2ph` (AVX-512F, or AVX2 + F16C + FMA) and counts lost
//! updates on the 16-bit patterns. Same bits as the generic twin.

use crate::generic::mf as g;
use core::arch::x86_64::*;

macro_rules! overlay_f32 {
    ($name:ident, $feat:literal, $has:path) => {
        /// The generic f32 step compiled for wider registers: same contract, same bits.
        pub fn $name(p: &mut [f32], q: &mut [f32], target: f32, lr: f32, reg: f32) -> f32 {
            #[target_feature(enable = $feat)]
            fn inner(p: &mut [f32], q: &mut [f32], target: f32, lr: f32, reg: f32) -> f32 {
                g::mf_step_f32(p, q, target, lr, reg)
            }
            assert!($has(), concat!(stringify!($name), " on a CPU without ", $feat));
            // SAFETY: the CPU has the feature (asserted above); `inner` is safe Rust otherwise.
            unsafe { inner(p, q, target, lr, reg) }
        }
    };
}

overlay_f32!(mf_step_f32_avx2, "avx2,fma", has_avx2_fma);

/// f32 step with AVX-512 F; same contract and bits as `generic::mf::mf_step_f32`. Rows of up
/// to 256 values take the register form (masked last vector); longer ones the generic body
/// compiled for AVX-512.
pub fn mf_step_f32_avx512(p: &mut [f32], q: &mut [f32], target: f32, lr: f32, reg: f32) -> f32 {
    #[target_feature(enable = "avx512f")]
    fn wide(p: &mut [f32], q: &mut [f32], target: f32, lr: f32, reg: f32) -> f32 {
        g::mf_step_f32(p, q, target, lr, reg)
    }
    assert!(super::has_avx512f(), "mf_step_f32_avx512 on a CPU without avx512f");
    let n = p.len().min(q.len());
    let (p, q) = (&mut p[..n], &mut q[..n]);
    let rem = n % 16;
    let last: __mmask16 = if rem == 0 { 0xFFFF } else { (1u16 << rem) - 1 };
    macro_rules! regs {
        ($($c:literal)*) => {
            match n.div_ceil(16) {
                // SAFETY: the CPU has AVX-512 F (asserted); n.div_ceil(16) == $c and the last
                // vector's lanes past n are masked off, so accesses stay within `p[..n]`,
                // `q[..n]`.
                $($c => unsafe { step_f32_avx512::<$c>(p, q, last, target, lr, reg) },)*
                // SAFETY: as above; `wide` is safe Rust compiled with AVX-512 F.
                _ => unsafe { wide(p, q, target, lr, reg) },
            }
        };
    }
    regs!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// The f32 register form: rows of `16·(C − 1) + 1` to `16·C` values (`last` masks the last
/// vector); up to 8 vectors the rows stay in registers from the dot product to the update,
/// beyond that the update loads them again from L1.
#[target_feature(enable = "avx512f")]
fn step_f32_avx512<const C: usize>(
    p: &mut [f32],
    q: &mut [f32],
    last: __mmask16,
    target: f32,
    lr: f32,
    reg: f32,
) -> f32 {
    debug_assert!(q.len() == p.len() && p.len().div_ceil(16) == C);
    let mask = |c: usize| if c + 1 == C { last } else { 0xFFFF };
    let (pp, qp) = (p.as_mut_ptr(), q.as_mut_ptr());
    // Callers pass c < C with m = mask(c): the lanes `m` keeps are values 16·c.. below
    // p.len() = q.len(), and masked-off lanes are not read.
    let load = |x: *mut f32, c: usize, m: __mmask16| {
        // SAFETY: see above.
        unsafe { _mm512_maskz_loadu_ps(m, x.add(16 * c)) }
    };
    let keep = C <= 8;
    let mut a = [_mm512_setzero_ps(); C];
    let mut b = [_mm512_setzero_ps(); C];
    let mut acc = _mm512_setzero_ps();
    for c in 0..C {
        let m = mask(c);
        let (x, y) = (load(pp, c, m), load(qp, c, m));
        acc = _mm512_mask3_fmadd_ps(x, y, acc, m);
        if keep {
            (a[c], b[c]) = (x, y);
        }
    }
    let e = target - fold16_regs(acc);
    let (vc, vd) = (_mm512_set1_ps(lr * e), _mm512_set1_ps(1.0 - lr * reg));
    for c in 0..C {
        let m = mask(c);
        let (x, y) = if keep { (a[c], b[c]) } else { (load(pp, c, m), load(qp, c, m)) };
        let nx = _mm512_fmadd_ps(vc, y, _mm512_mul_ps(vd, x));
        let ny = _mm512_fmadd_ps(vc, x, _mm512_mul_ps(vd, y));
        // SAFETY: the lanes the loads above read, and only those.
        unsafe {
            _mm512_mask_storeu_ps(pp.add(16 * c), m, nx);
            _mm512_mask_storeu_ps(qp.add(16 * c), m, ny);
        }
    }
    e
}

/// AVX-512 F + BW + VL (Skylake-X, Zen 4 and later).
pub fn has_avx512bw_vl() -> bool {
    #[cfg(feature = "std")]
    {
        super::has_avx512f()
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// f16 step with AVX-512 F/BW/VL; same contract and bits as `generic::mf::mf_step_f16`.
pub fn mf_step_f16_avx512(
    p: &mut [u16],
    q: &mut [u16],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    assert!(has_avx512bw_vl(), "mf_step_f16_avx512 on a CPU without avx512f/bw/vl");
    let n = p.len().min(q.len());
    let (p, q) = (&mut p[..n], &mut q[..n]);
    let vecs = n.div_ceil(16);
    let rem = n % 16;
    let last: __mmask16 = if rem == 0 { 0xFFFF } else { (1u16 << rem) - 1 };
    macro_rules! regs {
        ($($c:literal)*) => {
            match vecs {
                // SAFETY: the CPU has AVX-512 F/BW/VL (asserted); n.div_ceil(16) == $c and the
                // last vector's lanes past n are masked off, so accesses stay within `p[..n]`,
                // `q[..n]`.
                $($c => unsafe {
                    match lost {
                        Some(l) => step_f16_avx512_regs::<$c, true>(p, q, last, target, lr, reg, l),
                        None => step_f16_avx512_regs::<$c, false>(p, q, last, target, lr, reg, &mut 0),
                    }
                },)*
                // SAFETY: as above; every access is within `p[..n]`, `q[..n]`.
                _ => unsafe { step_f16_avx512(p, q, target, lr, reg, lost.unwrap_or(&mut 0)) },
            }
        };
    }
    regs!(1 2 3 4 5 6 7 8)
}

/// Rows of `16·(C − 1) + 1` to `16·C` elements (C ≤ 8; `last` masks the last vector's lanes):
/// every vector is loaded and converted once and stays in a register (2·C of them) from the
/// dot product to the update; no call in between (a call would spill them all). With `COUNT`,
/// lost updates are counted in a vector and added up once (the count costs as much as the
/// rest of the step on Zen 5, hence the choice). Same bits as the twin: the tail's products go
/// into lanes 0.. of the one accumulator, folded in halves in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,popcnt")]
#[allow(clippy::too_many_arguments)]
fn step_f16_avx512_regs<const C: usize, const COUNT: bool>(
    p: &mut [u16],
    q: &mut [u16],
    last: __mmask16,
    target: f32,
    lr: f32,
    reg: f32,
    lost: &mut u32,
) -> f32 {
    debug_assert!(q.len() == p.len() && p.len().div_ceil(16) == C);
    let mask = |c: usize| if c + 1 == C { last } else { 0xFFFF };
    let (pp, qp) = (p.as_mut_ptr(), q.as_mut_ptr());
    let mut a = [_mm512_setzero_ps(); C];
    let mut b = [_mm512_setzero_ps(); C];
    let mut hp = [_mm256_setzero_si256(); C];
    let mut hq = [_mm256_setzero_si256(); C];
    let mut acc = _mm512_setzero_ps();
    for c in 0..C {
        let m = mask(c);
        // SAFETY: lanes of vector c that `m` keeps are elements 16·c.. below p.len() = q.len();
        // masked-off lanes are not read.
        unsafe {
            hp[c] = _mm256_maskz_loadu_epi16(m, pp.add(16 * c) as *const i16);
            hq[c] = _mm256_maskz_loadu_epi16(m, qp.add(16 * c) as *const i16);
        }
        a[c] = _mm512_cvtph_ps(hp[c]);
        b[c] = _mm512_cvtph_ps(hq[c]);
        acc = _mm512_mask3_fmadd_ps(a[c], b[c], acc, m);
    }
    let e = target - fold16_regs(acc);
    let (vc, vd) = (_mm512_set1_ps(lr * e), _mm512_set1_ps(1.0 - lr * reg));
    let (one, mut cnt) = (_mm512_set1_epi32(1), _mm512_setzero_si512());
    for c in 0..C {
        let m = mask(c);
        let na = _mm512_fmadd_ps(vc, b[c], _mm512_mul_ps(vd, a[c]));
        let nb = _mm512_fmadd_ps(vc, a[c], _mm512_mul_ps(vd, b[c]));
        let hna = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(na);
        let hnb = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(nb);
        if COUNT {
            let la = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(m, na, a[c])
                & _mm256_cmpeq_epi16_mask(hna, hp[c]);
            let lb = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(m, nb, b[c])
                & _mm256_cmpeq_epi16_mask(hnb, hq[c]);
            cnt = _mm512_mask_add_epi32(cnt, la, cnt, one);
            cnt = _mm512_mask_add_epi32(cnt, lb, cnt, one);
        }
        // SAFETY: the lanes the loads above read, and only those.
        unsafe {
            _mm256_mask_storeu_epi16(pp.add(16 * c) as *mut i16, m, hna);
            _mm256_mask_storeu_epi16(qp.add(16 * c) as *mut i16, m, hnb);
        }
    }
    if COUNT {
        *lost += _mm512_reduce_add_epi32(cnt) as u32;
    }
    e
}

/// Mixed step (f16 row `h`, f32 row `w`) with AVX-512 F/BW/VL; same contract and bits as
/// `generic::mf::mf_step_mixed`.
pub fn mf_step_mixed_avx512(
    h: &mut [u16],
    w: &mut [f32],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    assert!(has_avx512bw_vl(), "mf_step_mixed_avx512 on a CPU without avx512f/bw/vl");
    let n = h.len().min(w.len());
    let (h, w) = (&mut h[..n], &mut w[..n]);
    let rem = n % 16;
    let last: __mmask16 = if rem == 0 { 0xFFFF } else { (1u16 << rem) - 1 };
    macro_rules! regs {
        ($($c:literal)*) => {
            match n.div_ceil(16) {
                // SAFETY: the CPU has AVX-512 F/BW/VL (asserted); n.div_ceil(16) == $c and the
                // last vector's lanes past n are masked off, so accesses stay within `h[..n]`,
                // `w[..n]`.
                $($c => unsafe {
                    match lost {
                        Some(l) => step_mixed_avx512::<$c, true>(h, w, last, target, lr, reg, l),
                        None => step_mixed_avx512::<$c, false>(h, w, last, target, lr, reg, &mut 0),
                    }
                },)*
                _ => g::mf_step_mixed(h, w, target, lr, reg, lost),
            }
        };
    }
    regs!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// The mixed register form: rows of `16·(C − 1) + 1` to `16·C` elements (`last` masks the
/// last vector). Up to 8 vectors the converted rows stay in registers from the dot product to
/// the update; beyond that the update pass loads them again (cheaper than spilling).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,popcnt")]
#[allow(clippy::too_many_arguments)]
fn step_mixed_avx512<const C: usize, const COUNT: bool>(
    h: &mut [u16],
    w: &mut [f32],
    last: __mmask16,
    target: f32,
    lr: f32,
    reg: f32,
    lost: &mut u32,
) -> f32 {
    debug_assert!(w.len() == h.len() && h.len().div_ceil(16) == C);
    let mask = |c: usize| if c + 1 == C { last } else { 0xFFFF };
    let (hp, wp) = (h.as_mut_ptr(), w.as_mut_ptr());
    // Callers pass c < C with m = mask(c): the lanes `m` keeps are elements 16·c.. below
    // h.len() = w.len(), and masked-off lanes are not read.
    let load_h = |c: usize, m: __mmask16| {
        // SAFETY: see above.
        unsafe { _mm256_maskz_loadu_epi16(m, hp.add(16 * c) as *const i16) }
    };
    let load_w = |c: usize, m: __mmask16| {
        // SAFETY: see above.
        unsafe { _mm512_maskz_loadu_ps(m, wp.add(16 * c)) }
    };
    let keep = C <= 8;
    let mut a = [_mm512_setzero_ps(); C];
    let mut b = [_mm512_setzero_ps(); C];
    let mut acc = _mm512_setzero_ps();
    for c in 0..C {
        let m = mask(c);
        let (x, y) = (_mm512_cvtph_ps(load_h(c, m)), load_w(c, m));
        acc = _mm512_mask3_fmadd_ps(x, y, acc, m);
        if keep {
            (a[c], b[c]) = (x, y);
        }
    }
    let e = target - fold16_regs(acc);
    let (vc, vd) = (_mm512_set1_ps(lr * e), _mm512_set1_ps(1.0 - lr * reg));
    let (one, mut cnt) = (_mm512_set1_epi32(1), _mm512_setzero_si512());
    for c in 0..C {
        let m = mask(c);
        let old = load_h(c, m);
        let (x, y) = if keep { (a[c], b[c]) } else { (_mm512_cvtph_ps(old), load_w(c, m)) };
        let nx = _mm512_fmadd_ps(vc, y, _mm512_mul_ps(vd, x));
        let ny = _mm512_fmadd_ps(vc, x, _mm512_mul_ps(vd, y));
        let hx = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(nx);
        if COUNT {
            let l =
                _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(m, nx, x) & _mm256_cmpeq_epi16_mask(hx, old);
            cnt = _mm512_mask_add_epi32(cnt, l, cnt, one);
        }
        // SAFETY: the lanes the loads above read, and only those.
        unsafe {
            _mm256_mask_storeu_epi16(hp.add(16 * c) as *mut i16, m, hx);
            _mm512_mask_storeu_ps(wp.add(16 * c), m, ny);
        }
    }
    if COUNT {
        *lost += _mm512_reduce_add_epi32(cnt) as u32;
    }
    e
}

/// `generic::mf::fold16` in registers: lanes l + l+8, then l + l+4, l + l+2, l + l+1.
#[target_feature(enable = "avx512f")]
#[inline]
fn fold16_regs(acc: __m512) -> f32 {
    let hi8 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    let s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), hi8);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
}

/// A dot-product pass, then an update pass that converts the rows again (keeping them in
/// registers instead measured slower: the spills cost more than the conversions).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,popcnt")]
fn step_f16_avx512(
    p: &mut [u16],
    q: &mut [u16],
    target: f32,
    lr: f32,
    reg: f32,
    lost: &mut u32,
) -> f32 {
    let n = p.len();
    let full = n / 16 * 16;
    let mut acc = _mm512_setzero_ps();
    for c in (0..full).step_by(16) {
        // SAFETY: c + 16 <= full <= n = p.len() = q.len(); unaligned 32-byte loads.
        let (hp, hq) = unsafe {
            (
                _mm256_loadu_si256(p.as_ptr().add(c) as *const __m256i),
                _mm256_loadu_si256(q.as_ptr().add(c) as *const __m256i),
            )
        };
        acc = _mm512_fmadd_ps(_mm512_cvtph_ps(hp), _mm512_cvtph_ps(hq), acc);
    }
    let e = target - fold_tail(acc, &p[full..], &q[full..]);
    let (c, d) = (lr * e, 1.0 - lr * reg);
    let (vc, vd) = (_mm512_set1_ps(c), _mm512_set1_ps(d));
    let mut cnt = 0u32;
    for c in (0..full).step_by(16) {
        // SAFETY: as above; the stores write the same 16 elements.
        unsafe {
            let pp = p.as_mut_ptr().add(c) as *mut __m256i;
            let qp = q.as_mut_ptr().add(c) as *mut __m256i;
            let (hp, hq) = (_mm256_loadu_si256(pp), _mm256_loadu_si256(qp));
            let (a, b) = (_mm512_cvtph_ps(hp), _mm512_cvtph_ps(hq));
            let (hna, hnb, l) = update16(vc, vd, a, b, hp, hq);
            cnt += l;
            _mm256_storeu_si256(pp, hna);
            _mm256_storeu_si256(qp, hnb);
        }
    }
    let tail = g::update_tail(&mut p[full..], &mut q[full..], c, d);
    *lost += cnt + tail;
    e
}

/// The 16 lane sums plus the tail's products, folded as the twin does.
#[target_feature(enable = "avx512f")]
fn fold_tail(acc: __m512, p: &[u16], q: &[u16]) -> f32 {
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    g::fold16_tail(lanes, p, q)
}

/// One vector of the update: the new f16 patterns of `p` and `q` and, per lane, how many of
/// the two element updates were lost (the f32 result moved but rounds to the old pattern).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,popcnt")]
#[inline]
fn update16(
    vc: __m512,
    vd: __m512,
    a: __m512,
    b: __m512,
    hp: __m256i,
    hq: __m256i,
) -> (__m256i, __m256i, u32) {
    let na = _mm512_fmadd_ps(vc, b, _mm512_mul_ps(vd, a));
    let nb = _mm512_fmadd_ps(vc, a, _mm512_mul_ps(vd, b));
    let hna = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(na);
    let hnb = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(nb);
    let la = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(na, a) & _mm256_cmpeq_epi16_mask(hna, hp);
    let lb = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(nb, b) & _mm256_cmpeq_epi16_mask(hnb, hq);
    (hna, hnb, la.count_ones() + lb.count_ones())
}

/// AVX2 + FMA.
pub fn has_avx2_fma() -> bool {
    #[cfg(feature = "std")]
    {
        super::has_avx2() && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// AVX2 + F16C + FMA + POPCNT.
pub fn has_avx2_f16c() -> bool {
    #[cfg(feature = "std")]
    {
        has_avx2_fma()
            && std::is_x86_feature_detected!("f16c")
            && std::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// f16 step with AVX2 + F16C; same contract and bits as `generic::mf::mf_step_f16`.
pub fn mf_step_f16_avx2(
    p: &mut [u16],
    q: &mut [u16],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    assert!(has_avx2_f16c(), "mf_step_f16_avx2 on a CPU without avx2, f16c, fma and popcnt");
    let n = p.len().min(q.len());
    let (p, q) = (&mut p[..n], &mut q[..n]);
    // SAFETY: the CPU has AVX2 and F16C (asserted); accesses stay within `p[..n]`, `q[..n]`.
    unsafe {
        match lost {
            Some(l) => step_f16_avx2::<true>(p, q, target, lr, reg, l),
            None => step_f16_avx2::<false>(p, q, target, lr, reg, &mut 0),
        }
    }
}

#[target_feature(enable = "avx2,f16c,fma,popcnt")]
fn step_f16_avx2<const COUNT: bool>(
    p: &mut [u16],
    q: &mut [u16],
    target: f32,
    lr: f32,
    reg: f32,
    lost: &mut u32,
) -> f32 {
    let n = p.len();
    let full = n / 16 * 16;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for c in (0..full).step_by(16) {
        // SAFETY: c + 16 <= full <= n = p.len() = q.len(); unaligned 16-byte loads.
        unsafe {
            let pp = p.as_ptr().add(c) as *const __m128i;
            let qp = q.as_ptr().add(c) as *const __m128i;
            let a0 = _mm256_cvtph_ps(_mm_loadu_si128(pp));
            let a1 = _mm256_cvtph_ps(_mm_loadu_si128(pp.add(1)));
            let b0 = _mm256_cvtph_ps(_mm_loadu_si128(qp));
            let b1 = _mm256_cvtph_ps(_mm_loadu_si128(qp.add(1)));
            lo = _mm256_fmadd_ps(a0, b0, lo);
            hi = _mm256_fmadd_ps(a1, b1, hi);
        }
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
    }
    let e = target - g::fold16_tail(lanes, &p[full..], &q[full..]);
    let (c, d) = (lr * e, 1.0 - lr * reg);
    let (vc, vd) = (_mm256_set1_ps(c), _mm256_set1_ps(d));
    let mut nlost = 0u32;
    for c in (0..full).step_by(8) {
        // SAFETY: as above; the stores write the same 8 elements.
        unsafe {
            let pp = p.as_mut_ptr().add(c) as *mut __m128i;
            let qp = q.as_mut_ptr().add(c) as *mut __m128i;
            let (hp, hq) = (_mm_loadu_si128(pp), _mm_loadu_si128(qp));
            let (a, b) = (_mm256_cvtph_ps(hp), _mm256_cvtph_ps(hq));
            let na = _mm256_fmadd_ps(vc, b, _mm256_mul_ps(vd, a));
            let nb = _mm256_fmadd_ps(vc, a, _mm256_mul_ps(vd, b));
            let hna = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(na);
            let hnb = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(nb);
            let same = |h: __m128i, old: __m128i| {
                _mm_movemask_epi8(_mm_packs_epi16(_mm_cmpeq_epi16(h, old), _mm_setzero_si128()))
                    as u32
            };
            if COUNT {
                let la =
                    _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(na, a)) as u32 & same(hna, hp);
                let lb =
                    _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(nb, b)) as u32 & same(hnb, hq);
                nlost += la.count_ones() + lb.count_ones();
            }
            _mm_storeu_si128(pp, hna);
            _mm_storeu_si128(qp, hnb);
        }
    }
    nlost += g::update_tail(&mut p[full..], &mut q[full..], c, d);
    *lost += nlost;
    e
}

/// Mixed step (f16 row `h`, f32 row `w`) with AVX2 + F16C; same contract and bits as
/// `generic::mf::mf_step_mixed`.
pub fn mf_step_mixed_avx2(
    h: &mut [u16],
    w: &mut [f32],
    target: f32,
    lr: f32,
    reg: f32,
    lost: Option<&mut u32>,
) -> f32 {
    assert!(has_avx2_f16c(), "mf_step_mixed_avx2 on a CPU without avx2, f16c, fma and popcnt");
    let n = h.len().min(w.len());
    let (h, w) = (&mut h[..n], &mut w[..n]);
    // SAFETY: the CPU has AVX2 and F16C (asserted); accesses stay within `h[..n]`, `w[..n]`.
    unsafe {
        match lost {
            Some(l) => step_mixed_avx2::<true>(h, w, target, lr, reg, l),
            None => step_mixed_avx2::<false>(h, w, target, lr, reg, &mut 0),
        }
    }
}

#[target_feature(enable = "avx2,f16c,fma,popcnt")]
fn step_mixed_avx2<const COUNT: bool>(
    h: &mut [u16],
    w: &mut [f32],
    target: f32,
    lr: f32,
    reg: f32,
    lost: &mut u32,
) -> f32 {
    let n = h.len();
    let full = n / 16 * 16;
    let (hp, wp) = (h.as_mut_ptr(), w.as_mut_ptr());
    let load = |c: usize| {
        // SAFETY: callers pass c + 8 <= full <= n = h.len() = w.len(); unaligned loads.
        unsafe {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(hp.add(c) as *const __m128i));
            (x, _mm256_loadu_ps(wp.add(c)))
        }
    };
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for c in (0..full).step_by(16) {
        let ((a0, b0), (a1, b1)) = (load(c), load(c + 8));
        lo = _mm256_fmadd_ps(a0, b0, lo);
        hi = _mm256_fmadd_ps(a1, b1, hi);
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
    }
    let e = target - g::fold16_tail(lanes, &h[full..], &w[full..]);
    let (c, d) = (lr * e, 1.0 - lr * reg);
    let (vc, vd) = (_mm256_set1_ps(c), _mm256_set1_ps(d));
    let mut nlost = 0u32;
    for j in (0..full).step_by(8) {
        let (a, b) = load(j);
        let na = _mm256_fmadd_ps(vc, b, _mm256_mul_ps(vd, a));
        let nb = _mm256_fmadd_ps(vc, a, _mm256_mul_ps(vd, b));
        let hna = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(na);
        // SAFETY: j + 8 <= full <= n; the stores write the 8 elements just loaded.
        unsafe {
            if COUNT {
                let old = _mm_loadu_si128(hp.add(j) as *const __m128i);
                let same = _mm_movemask_epi8(_mm_packs_epi16(
                    _mm_cmpeq_epi16(hna, old),
                    _mm_setzero_si128(),
                )) as u32;
                let moved = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(na, a)) as u32;
                nlost += (moved & same).count_ones();
            }
            _mm_storeu_si128(hp.add(j) as *mut __m128i, hna);
            _mm256_storeu_ps(wp.add(j), nb);
        }
    }
    nlost += g::update_tail(&mut h[full..], &mut w[full..], c, d);
    *lost += nlost;
    e
}
