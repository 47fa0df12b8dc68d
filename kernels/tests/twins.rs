//! Every kernel variant against its generic twin on random inputs of awkward sizes (integer
//! kernels bit-exact, float kernels within `F32_GEMM_REL`), and the generic twins against
//! their definitions. One list (`Kernels::*`) drives both.

use ember_kernels::{generic, pack, Act, Kernels};

/// Float GEMM variants may reorder sums: relative bound on |Δ| / (Σ|a·b| + |bias|).
const F32_GEMM_REL: f32 = 1e-5;
const SIZES: &[usize] = &[1, 3, 17, 33, 127];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn i8(&mut self) -> i8 {
        self.next() as i8
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn shapes() -> Vec<(usize, usize, usize)> {
    let mut v = vec![(1, 1000, 3), (2, 1000, 17)];
    for m in SIZES {
        for k in SIZES {
            for n in [1, 3, 33] {
                v.push((*m, *k, n));
            }
        }
    }
    v
}

fn i8_shapes() -> Vec<(usize, usize, usize)> {
    let mut v = shapes();
    // Every row remainder of a 6-row tile; a depth past the AVX2 kernel's widening buffer;
    // more columns than one of its L2 column blocks holds at that depth.
    v.extend([
        (9, 1000, 127),
        (17, 33, 1000),
        (8, 64, 32),
        (16, 4, 48),
        (11, 2053, 21),
        (7, 1000, 400),
    ]);
    v
}

#[test]
fn i8_gemm_variants_are_bit_exact_and_generic_matches_definition() {
    let mut r = Rng(0x1234_5678);
    for (case, (m, k, n)) in i8_shapes().into_iter().enumerate() {
        // Strides beyond the minimum on every other case; padding bytes hold garbage.
        let lda = pack::k4(k) + if case % 2 == 1 { 4 * (case % 3) + 4 } else { 0 };
        let ldo = n + case % 5;
        let a: Vec<u8> = (0..m * lda).map(|_| r.next() as u8).collect();
        let b: Vec<i8> = (0..n * k).map(|_| r.i8()).collect();
        let mut bp = vec![0i8; pack::k4n16_len(n, k)];
        pack::pack_k4n16(&b, n, k, &mut bp);
        let sums: Vec<i32> = b.chunks(k).map(|row| row.iter().map(|v| *v as i32).sum()).collect();
        let scale: Vec<f32> = (0..n).map(|_| r.f32().abs() * 0.01 + 1e-4).collect();
        let bias: Vec<f32> = (0..n).map(|_| r.f32()).collect();
        let zp = (r.next() % 256) as i32;
        for act in [Act::None, Act::Relu, Act::Gelu, Act::GeluTanh] {
            let mut want = vec![f32::NAN; (m - 1) * ldo + n];
            generic::i8_gemm(m, k, n, &a, lda, zp, &bp, &sums, &scale, &bias, act, &mut want, ldo);
            for i in 0..m {
                for j in 0..n {
                    let acc: i64 = (0..k)
                        .map(|p| (a[i * lda + p] as i64 - zp as i64) * b[j * k + p] as i64)
                        .sum();
                    let mut d = acc as f32 * scale[j] + bias[j];
                    d = match act {
                        Act::None => d,
                        Act::Relu => d.max(0.0),
                        Act::Gelu => generic::math::gelu(d),
                        Act::GeluTanh => generic::math::gelu_tanh(d),
                    };
                    assert_eq!(want[i * ldo + j], d, "generic i8_gemm {m}x{k}x{n} at ({i},{j})");
                }
            }
            for (name, f) in Kernels::i8_gemms() {
                let mut got = vec![f32::NAN; (m - 1) * ldo + n];
                f(m, k, n, &a, lda, zp, &bp, &sums, &scale, &bias, act, &mut got, ldo);
                for i in 0..m {
                    assert_eq!(
                        got[i * ldo..i * ldo + n],
                        want[i * ldo..i * ldo + n],
                        "{name} differs from its twin at {m}x{k}x{n}, row {i}"
                    );
                    // Nothing written between rows (the stride gap belongs to someone else).
                    if i + 1 < m {
                        assert!(
                            got[i * ldo + n..(i + 1) * ldo].iter().all(|v| v.is_nan()),
                            "{name} wrote past n"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn k4n16_layout_is_a_bijection_with_zero_padding() {
    for (n, k) in [(1, 1), (3, 5), (17, 33), (33, 4), (16, 16), (32, 128), (128, 32), (48, 7)] {
        let mut seen = vec![false; pack::k4n16_len(n, k)];
        for j in 0..n {
            for p in 0..k {
                let ix = pack::k4n16_index(j, p, k);
                assert!(!seen[ix], "({j},{p}) collides");
                seen[ix] = true;
            }
        }
        let w: Vec<i8> = (0..n * k).map(|i| (i % 200) as i8 | 1).collect();
        let mut out = vec![7i8; pack::k4n16_len(n, k)];
        pack::pack_k4n16(&w, n, k, &mut out);
        for (ix, used) in seen.iter().enumerate() {
            assert_eq!(out[ix] == 0, !used, "padding byte {ix} of {n}x{k}");
        }
        // Quantizing and packing an activation [k, n] equals packing its quantized transpose;
        // every 5th value is a special one (NaN, infinities, clamped, signed zero, ties).
        let special =
            [f32::NAN, f32::INFINITY, -f32::INFINITY, 1e4, -1e4, -0.0, 0.0625, -0.0625, 0.1875];
        let bf: Vec<f32> = (0..k * n)
            .map(|i| {
                if i % 5 == 2 {
                    special[i / 5 % special.len()]
                } else {
                    (i as f32 * 0.37).sin() * 3.0
                }
            })
            .collect();
        let (mut direct, mut sums) = (vec![7i8; out.len()], vec![99i32; n]);
        pack::quantize_pack_k4n16_kn(&bf, k, n, n, 40.0, &mut direct, &mut sums);
        let mut t = vec![0i8; n * k];
        for p in 0..k {
            for j in 0..n {
                t[j * k + p] = (bf[p * n + j] * 40.0).clamp(-127.0, 127.0).round_ties_even() as i8;
            }
        }
        let mut packed = vec![0i8; out.len()];
        pack::pack_k4n16(&t, n, k, &mut packed);
        assert_eq!(direct, packed);
        for j in 0..n {
            assert_eq!(sums[j], t[j * k..(j + 1) * k].iter().map(|v| *v as i32).sum::<i32>());
        }
        // The transposed-input packer gives the same bytes from b stored [n, k].
        let (mut from_nk, mut sums_nk) = (vec![7i8; out.len()], vec![99i32; n]);
        let bt: Vec<f32> = (0..n * k).map(|i| bf[(i % k) * n + i / k]).collect();
        pack::quantize_pack_k4n16_nk(&bt, n, k, k, 40.0, &mut from_nk, &mut sums_nk);
        assert_eq!(from_nk, packed);
        assert_eq!(sums_nk, sums);
        // The same operands with rows further apart (one head of a [seq, heads, d] tensor),
        // the gaps holding values that must not be read (a stray read changes a sum).
        let widen = |src: &[f32], rows: usize, cols: usize, ld: usize| -> Vec<f32> {
            let mut w = vec![1e3f32; rows.max(1) * ld];
            for r in 0..rows {
                w[r * ld..r * ld + cols].copy_from_slice(&src[r * cols..(r + 1) * cols]);
            }
            w.truncate(pack::strided_len(rows, cols, ld));
            w
        };
        let (ld_kn, ld_nk) = (n + 5, k + 3);
        let (bf_w, bt_w) = (widen(&bf, k, n, ld_kn), widen(&bt, n, k, ld_nk));
        // Every registered variant gives the same bytes and sums, in both forms, contiguous
        // and strided.
        for (name, f) in Kernels::quantize_packs() {
            for (src, transposed, ld) in
                [(&bf, false, n), (&bt, true, k), (&bf_w, false, ld_kn), (&bt_w, true, ld_nk)]
            {
                let (mut got, mut got_sums) = (vec![7i8; out.len()], vec![99i32; n]);
                f(src, k, n, transposed, ld, 40.0, &mut got, &mut got_sums);
                assert_eq!(got, packed, "{name} {n}x{k} transposed {transposed} ld {ld}");
                assert_eq!(got_sums, sums, "{name} sums {n}x{k} transposed {transposed} ld {ld}");
            }
        }
    }
}

#[test]
fn f32_gemm_variants_match_generic_within_bound() {
    let mut r = Rng(0xDEAD_BEEF);
    for (m, k, n) in shapes() {
        let a: Vec<f32> = (0..m * k).map(|_| r.f32()).collect();
        let b: Vec<f32> = (0..n * k).map(|_| r.f32()).collect();
        let bias: Vec<f32> = (0..n).map(|_| r.f32()).collect();
        let mut want = vec![0f32; m * n];
        generic::f32_gemm(m, k, n, &a, &b, &bias, Act::None, &mut want);
        for i in 0..m {
            for j in 0..n {
                let def: f64 =
                    (0..k).map(|p| a[i * k + p] as f64 * b[j * k + p] as f64).sum::<f64>()
                        + bias[j] as f64;
                let mag: f64 =
                    (0..k).map(|p| (a[i * k + p] * b[j * k + p]).abs() as f64).sum::<f64>()
                        + bias[j].abs() as f64;
                let d = (want[i * n + j] as f64 - def).abs();
                assert!(
                    d <= F32_GEMM_REL as f64 * mag.max(1e-30),
                    "generic f32_gemm {m}x{k}x{n}: {d}"
                );
            }
        }
        // Every activation (ReLU and GELU are 1- and 1.13-Lipschitz: the bound carries over).
        for act in [Act::None, Act::Relu, Act::Gelu, Act::GeluTanh] {
            let mut want = vec![0f32; m * n];
            generic::f32_gemm(m, k, n, &a, &b, &bias, act, &mut want);
            for (name, f) in Kernels::f32_gemms() {
                let mut got = vec![f32::NAN; m * n];
                f(m, k, n, &a, &b, &bias, act, &mut got);
                for i in 0..m {
                    for j in 0..n {
                        let mag: f32 =
                            (0..k).map(|p| (a[i * k + p] * b[j * k + p]).abs()).sum::<f32>()
                                + bias[j].abs();
                        let d = (got[i * n + j] - want[i * n + j]).abs();
                        assert!(
                            d <= 1.2 * F32_GEMM_REL * mag.max(1e-30) + 1e-6 * want[i * n + j].abs(),
                            "{name} {act:?} {m}x{k}x{n} ({i},{j}): {d}"
                        );
                    }
                }
            }
        }
        // f32_matmul (b row-major [K,N]) agrees with f32_gemm on the transposed weights.
        let mut bt = vec![0f32; k * n];
        for j in 0..n {
            for p in 0..k {
                bt[p * n + j] = b[j * k + p];
            }
        }
        let mut mm = vec![0f32; m * n];
        generic::f32_matmul(m, k, n, &a, &bt, &mut mm);
        for (name, f) in Kernels::f32_matmuls() {
            let mut got = vec![f32::NAN; m * n];
            f(m, k, n, &a, &bt, &mut got);
            for i in 0..m {
                for j in 0..n {
                    let mag: f32 = (0..k).map(|p| (a[i * k + p] * b[j * k + p]).abs()).sum();
                    let d = (got[i * n + j] - mm[i * n + j]).abs();
                    assert!(
                        d <= F32_GEMM_REL * mag.max(1e-30),
                        "{name} {m}x{k}x{n} ({i},{j}): {d}"
                    );
                }
            }
        }
        let mut nobias = vec![0f32; m * n];
        generic::f32_gemm(m, k, n, &a, &b, &[], Act::None, &mut nobias);
        for (x, y) in mm.iter().zip(&nobias) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "matmul vs gemm {m}x{k}x{n}");
        }
    }
}

#[test]
fn quantizers_match_definition_and_twins() {
    let mut r = Rng(0xC0FFEE);
    for len in [1usize, 3, 17, 33, 127, 1000] {
        let rows = 3;
        let lda = len + 5;
        let mut x: Vec<f32> = (0..rows * len).map(|_| r.f32() * 10.0).collect();
        x[len / 2] = f32::NAN;
        x[len - 1] = f32::INFINITY;
        x[len] = f32::NEG_INFINITY;
        x[2 * len] = -1e30;
        // The last row: halves, so x·inv = j/2 - 150 holds ties for round-half-even.
        for (j, v) in x[2 * len + 1..].iter_mut().enumerate() {
            *v = (j as f32 * 0.5 - 150.0) / 16.0;
        }
        let inv = 16.0f32;
        let mult: Vec<f32> = (0..len).map(|_| r.f32().abs() * 20.0).collect();
        for zp in [0, 3, 128, 255] {
            for per_channel in [false, true] {
                let m: &[f32] = if per_channel { &mult } else { &[] };
                let mut want = vec![9u8; rows * lda];
                generic::quantize_u8(&x, rows, len, len, lda, inv, m, zp, &mut want);
                for row in 0..rows {
                    for j in 0..len {
                        let v = x[row * len + j];
                        let s = if per_channel { mult[j] } else { inv };
                        let t = if v.is_nan() { 0.0 } else { (v * s).clamp(-300.0, 300.0) };
                        let d = (t.round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8;
                        assert_eq!(want[row * lda + j], d, "x={v} zp={zp}");
                    }
                    assert!(
                        want[row * lda + len..(row + 1) * lda].iter().all(|b| *b == 9),
                        "stride gap written"
                    );
                }
                // The same rows further apart in x (one head of a [seq, heads, d] tensor); the
                // gaps hold values that would change the codes if they were read.
                let ldx = len + 7;
                let mut xw = vec![77.0f32; (rows - 1) * ldx + len];
                for row in 0..rows {
                    xw[row * ldx..row * ldx + len].copy_from_slice(&x[row * len..][..len]);
                }
                let generic_fn: ember_kernels::QuantizeU8Fn = generic::quantize_u8;
                let all = Kernels::quantizers().chain([("quantize_u8_generic", generic_fn)]);
                for (name, f) in all {
                    for (src, ld) in [(&x, len), (&xw, ldx)] {
                        let mut got = vec![9u8; rows * lda];
                        f(src, rows, len, ld, lda, inv, m, zp, &mut got);
                        assert_eq!(
                            got, want,
                            "{name} len {len} ldx {ld} zp {zp} per-ch {per_channel}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn environment_override_picks_the_named_tier() {
    let g = ember_kernels::KernelSet::with_override("generic");
    assert_eq!(g.i8_gemm_name, "i8_gemm_generic");
    assert_eq!(g.quantize_u8_name, "quantize_u8_generic");
    let best = ember_kernels::KernelSet::with_override("");
    assert_eq!(best.i8_gemm_name, Kernels::i8_gemms().next().unwrap().0);
    let mixed = ember_kernels::KernelSet::with_override("quantize_u8=generic");
    assert_eq!(mixed.quantize_u8_name, "quantize_u8_generic");
    assert_eq!(mixed.i8_gemm_name, best.i8_gemm_name);
    // A tier this CPU (or this architecture) cannot run falls back to the generic twin.
    let none = ember_kernels::KernelSet::with_override("i8_gemm=nonexistent");
    assert_eq!(none.i8_gemm_name, "i8_gemm_generic");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512f") {
        let t = ember_kernels::KernelSet::with_override("avx512vnni");
        assert_eq!(t.i8_gemm_name, "i8_gemm_avx512vnni");
        assert_eq!(t.softmax_row_name, "softmax_row_avx512");
        let t = ember_kernels::KernelSet::with_override("avx2");
        assert_eq!((t.i8_gemm_name, t.erf_name), ("i8_gemm_avx2", "erf_avx2"));
    }
}

#[test]
fn registry_lists_the_overlays_this_cpu_can_run() {
    let names: Vec<&str> = Kernels::i8_gemms().map(|(n, _)| n).collect();
    assert_eq!(names.last(), Some(&"i8_gemm_generic"));
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(names.contains(&"i8_gemm_avx2"), std::is_x86_feature_detected!("avx2"));
        assert_eq!(
            names.contains(&"i8_gemm_avx512vnni"),
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni")
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        let i4: Vec<&str> = Kernels::i4_gemms().map(|(n, _)| n).collect();
        let bw = std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni");
        assert_eq!(i4.contains(&"i4_gemm_avx512vnni"), bw);
        let i4m: Vec<&str> = Kernels::i4m_gemms().map(|(n, _)| n).collect();
        assert_eq!(i4m.contains(&"i4m_gemm_avx512vnni"), bw);
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c");
        assert_eq!(i4m.contains(&"i4m_gemm_avx2"), avx2);
        assert_eq!(i4.contains(&"i4_gemm_avx2"), avx2);
    }
    #[cfg(target_arch = "aarch64")]
    {
        assert!(names.contains(&"i8_gemm_neon"));
        let dot = std::arch::is_aarch64_feature_detected!("dotprod");
        assert_eq!(names.contains(&"i8_gemm_dotprod"), dot);
        let i4: Vec<&str> = Kernels::i4_gemms().map(|(n, _)| n).collect();
        assert!(i4.contains(&"i4_gemm_neon"));
        assert_eq!(i4.contains(&"i4_gemm_dotprod"), dot);
        let i4m: Vec<&str> = Kernels::i4m_gemms().map(|(n, _)| n).collect();
        assert!(i4m.contains(&"i4m_gemm_neon"));
        assert_eq!(i4m.contains(&"i4m_gemm_dotprod"), dot);
        assert_eq!(
            names.contains(&"i8_gemm_i8mm"),
            std::arch::is_aarch64_feature_detected!("i8mm")
        );
    }
    eprintln!("i8 gemm variants on this CPU: {names:?}");
    // CI names the variants each emulated CPU must exercise, so a fast path cannot silently
    // drop out of the tests (scripts/test.sh sets this per qemu CPU model).
    if let Ok(expect) = std::env::var("EMBER_EXPECT_KERNELS") {
        let all: Vec<&str> = names
            .iter()
            .copied()
            .chain(Kernels::i4_gemms().map(|(n, _)| n))
            .chain(Kernels::i4m_gemms().map(|(n, _)| n))
            .collect();
        for want in expect.split(',').filter(|s| !s.is_empty()) {
            assert!(all.contains(&want), "{want} expected on this CPU, have {all:?}");
        }
    }
}

#[test]
fn vector_math_matches_libm_and_twins() {
    let mut r = Rng(0xABCD);
    // exp: relative 3e-7 on the normal range, 0 far below, NaN kept.
    for i in 0..20_000 {
        let x = -87.0 + 175.0 * (i as f32 / 20_000.0) + r.f32() * 1e-3;
        let (got, want) = (generic::math::exp(x), libm::exp(x as f64));
        let rel = ((got as f64 - want) / want).abs();
        assert!(rel <= 3e-7, "exp({x}) = {got}, want {want} (rel {rel:e})");
    }
    assert_eq!(generic::math::exp(-1e4), 0.0);
    assert!(generic::math::exp(f32::NAN).is_nan());
    // erf: absolute 5e-7 everywhere (1.5e-7 of the formula plus float rounding).
    for i in 0..20_000 {
        let x = -6.0 + 12.0 * (i as f32 / 20_000.0) + r.f32() * 1e-4;
        let (got, want) = (generic::math::erf(x), libm::erf(x as f64));
        assert!((got as f64 - want).abs() <= 5e-7, "erf({x}) = {got}, want {want}");
        assert!(got.abs() <= 1.0, "erf({x}) = {got} is outside [-1, 1]");
    }
    let erf = generic::math::erf;
    assert_eq!((erf(f32::INFINITY), erf(f32::NEG_INFINITY)), (1.0, -1.0));
    assert_eq!((erf(4.5), erf(-3.95)), (1.0, -1.0));
    assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
    assert!(erf(f32::NAN).is_nan());
    // tanh absolute 5e-7; both GELU forms against their f64 definitions, absolute 1e-6·(1+|x|).
    for i in 0..20_000 {
        let x = -12.0 + 24.0 * (i as f32 / 20_000.0) + r.f32() * 1e-4;
        let xd = x as f64;
        let t = generic::math::tanh(x);
        assert!((t as f64 - xd.tanh()).abs() <= 5e-7, "tanh({x}) = {t}");
        let g = generic::math::gelu(x) as f64;
        let gd = 0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
        assert!((g - gd).abs() <= 1e-6 * (1.0 + xd.abs()), "gelu({x}) = {g}, want {gd}");
        let g = generic::math::gelu_tanh(x) as f64;
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let gd = 0.5 * xd * (1.0 + (c * (xd + 0.044715 * xd * xd * xd)).tanh());
        assert!((g - gd).abs() <= 1e-6 * (1.0 + xd.abs()), "gelu_tanh({x}) = {g}, want {gd}");
    }
    for len in [1usize, 3, 16, 17, 33, 127, 128, 1000] {
        let x: Vec<f32> = (0..len).map(|_| r.f32() * 20.0).collect();
        let mask: Vec<f32> =
            (0..len).map(|i| if i % 3 == 0 { -10_000.0 } else { r.f32() }).collect();
        for (mk, alpha) in [(&[][..], 1.0), (&mask[..], 1.0), (&[][..], 0.17), (&mask[..], 0.35)] {
            let mut want = x.clone();
            generic::math::softmax_row(&mut want, mk, alpha);
            let t: Vec<f64> = (0..len)
                .map(|i| (x[i] * alpha) as f64 + mk.get(i).map(|v| *v as f64).unwrap_or(0.0))
                .collect();
            let m = t.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = t.iter().map(|v| (v - m).exp()).sum();
            for (w, v) in want.iter().zip(&t) {
                let d = (v - m).exp() / sum;
                assert!((*w as f64 - d).abs() <= 2e-6 * d.max(1e-3), "softmax {len}: {w} vs {d}");
            }
            // The scale read with the row gives the bits of a scaling pass before it (what the
            // fused attention relies on to match the plan as written).
            let mut scaled: Vec<f32> = x.iter().map(|v| v * alpha).collect();
            generic::math::softmax_row(&mut scaled, mk, 1.0);
            assert_eq!(scaled, want, "alpha {alpha} at {len}");
            for (name, f) in Kernels::softmaxes() {
                let mut got = x.clone();
                f(&mut got, len, &[mk], alpha);
                softmax_within_bound(name, &got, &want);
                // Every variant: the scale read with the row, bit for bit a scaling pass first.
                let mut pre: Vec<f32> = x.iter().map(|v| v * alpha).collect();
                f(&mut pre, len, &[mk], 1.0);
                assert_eq!(pre, got, "{name}: alpha {alpha} at {len}");
            }
        }
        // Rows with special values: NaN anywhere makes the row NaN, +inf too (inf − inf),
        // −inf (a fully masked key) gives exactly 0, in the vector body and in the tail.
        for (v, nan) in [(f32::NAN, true), (f32::INFINITY, true), (f32::NEG_INFINITY, false)] {
            let mut y: Vec<f32> = (0..len).map(|_| r.f32() * 20.0).collect();
            y[len / 2] = v;
            let mut want = y.clone();
            generic::math::softmax_row(&mut want, &[], 1.0);
            for (name, f) in Kernels::softmaxes() {
                let mut got = y.clone();
                f(&mut got, len, &[&[]], 1.0);
                if nan {
                    assert!(got.iter().all(|g| g.is_nan()), "{name}: {v} at {len}");
                } else {
                    softmax_within_bound(name, &got, &want);
                    // (A row of one −inf has no finite maximum: NaN, as the twin.)
                    assert!(len == 1 || got[len / 2] == 0.0, "{name}: {v} at {len}");
                }
            }
        }
        // Special values in every lane position class (vector body and tail).
        let mut x = x;
        for (i, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, -1e-30, 30.0]
            .into_iter()
            .enumerate()
        {
            if let Some(e) = x.get_mut(i * 5 % len) {
                *e = v;
            }
        }
        let mut want = vec![0f32; len];
        generic::math::erf_slice(&x, &mut want);
        for (name, f) in Kernels::erfs() {
            let mut got = vec![f32::NAN; len];
            f(&x, &mut got);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{name} differs from its twin at {len}");
        }
    }
}

/// The softmax family's bound against the generic twin: each value within 5e-7 of it
/// relatively, plus 1e-37 absolutely for values near the subnormals (the FMA variant stays
/// within 3.2e-7 here; its polynomial's fifth coefficient set to 1/121 gives 6.5e-7); zeros
/// where it has zeros, NaN where it has NaN.
fn softmax_within_bound(name: &str, got: &[f32], want: &[f32]) {
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() || *w == 0.0 {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{name}[{j}]: {g} vs {w}"
            );
        } else {
            assert!((g - w).abs() <= 5e-7 * w.abs() + 1e-37, "{name}[{j}]: {g} vs {w}");
        }
    }
}

/// Several rows per call, as the runtime calls the family: each row as the generic row body
/// computes it alone, for row counts around the AVX-512 kernel's group of four, awkward
/// lengths, masked and unmasked rows mixed in one call, a mask shorter than the row (which
/// limits it, as in the generic body), and the scale.
#[test]
fn softmax_rows_match_the_row_body() {
    let mut r = Rng(0x50F7);
    for n in [1usize, 5, 16, 31, 128, 130] {
        for rows in [1usize, 3, 4, 5, 8, 9] {
            let x: Vec<f32> = (0..rows * n + 7).map(|_| r.f32() * 16.0 - 4.0).collect();
            let masks: Vec<Vec<f32>> = (0..rows)
                .map(|i| match i % 4 {
                    0 | 2 if rows != 4 || i == 0 => vec![],
                    3 => (0..n / 2 + 1).map(|_| r.f32()).collect(),
                    _ => (0..n).map(|j| if j % 5 == 1 { -10_000.0 } else { r.f32() }).collect(),
                })
                .collect();
            let views: Vec<&[f32]> = masks.iter().map(|m| &m[..]).collect();
            // Also every row masked alike, and none masked (the kernel's grouped paths).
            let full: Vec<Vec<f32>> =
                (0..rows).map(|_| (0..n).map(|_| r.f32()).collect()).collect();
            let full: Vec<&[f32]> = full.iter().map(|m| &m[..]).collect();
            let none: Vec<&[f32]> = vec![&[]; rows];
            for ms in [&views, &full, &none] {
                for alpha in [1.0f32, 0.125] {
                    let mut want = x.clone();
                    for (row, m) in want.chunks_exact_mut(n).zip(ms.iter()) {
                        generic::math::softmax_row(row, m, alpha);
                    }
                    for (name, f) in Kernels::softmaxes() {
                        let mut got = x.clone();
                        f(&mut got, n, ms, alpha);
                        softmax_within_bound(name, &got, &want);
                        assert_eq!(got[rows * n..], x[rows * n..], "{name} wrote past its rows");
                    }
                }
            }
        }
    }
}

#[test]
fn layer_norm_matches_definition_and_twins() {
    let mut r = Rng(0x1A7E);
    for d in [1usize, 3, 17, 33, 127, 384, 1000] {
        let x: Vec<f32> = (0..d).map(|_| r.f32() * 4.0 + 1.5).collect();
        let g: Vec<f32> = (0..d).map(|_| r.f32() + 1.0).collect();
        let b: Vec<f32> = (0..d).map(|_| r.f32()).collect();
        for beta in [&b[..], &[][..]] {
            let mut want = vec![0f32; d];
            generic::math::layer_norm_row(&x, &g, beta, 1e-5, &mut want);
            let mean = x.iter().map(|v| *v as f64).sum::<f64>() / d as f64;
            let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let def = (x[j] as f64 - mean) / (var + 1e-5).sqrt() * g[j] as f64
                    + beta.get(j).map(|v| *v as f64).unwrap_or(0.0);
                assert!((want[j] as f64 - def).abs() <= 2e-5 * (1.0 + def.abs()), "ln {d} at {j}");
            }
            for (name, f) in Kernels::layer_norms() {
                let mut got = vec![f32::NAN; d];
                f(&x, &g, beta, 1e-5, &mut got);
                assert_eq!(got, want, "{name} differs from its twin at {d}");
            }
        }
    }
}

#[test]
fn i4_gemm_variants_are_bit_exact_and_generic_matches_definition() {
    let mut r = Rng(0x14_6E77);
    let mut case = 0;
    // Groups of one quad, of the 8 quads an i16 sum holds, and longer; depths past the 64 KB
    // widening buffer of a panel (k > 4096), which LinearI4 keeps.
    let mut shapes = vec![];
    for group in [4usize, 32, 128] {
        for k in [group, 2 * group, 3 * group] {
            for (m, n) in [(1, 1), (3, 17), (9, 33), (17, 3), (8, 16), (1, 100)] {
                shapes.push((group, k, m, n));
            }
        }
    }
    shapes.extend([(256, 512, 7, 20), (64, 4160, 5, 17), (64, 4160, 2, 9)]);
    for (group, k, m, n) in shapes {
        case += 1;
        let lda = k + 4 * (case % 3);
        let ldo = n + case % 4;
        let groups = k / group;
        let a: Vec<u8> = (0..m * lda).map(|_| r.next() as u8).collect();
        let q: Vec<i8> = (0..n * k).map(|_| (r.next() % 16) as i8 - 8).collect();
        let mut bp = vec![0u8; pack::k4n16_i4_len(n, k)];
        pack::pack_k4n16_i4(&q, n, k, &mut bp);
        let sums: Vec<i32> = (0..n * groups)
            .map(|jg| {
                let (j, g) = (jg / groups, jg % groups);
                q[j * k + g * group..j * k + (g + 1) * group].iter().map(|v| *v as i32).sum()
            })
            .collect();
        // Normal f16 scales around 2^-10..2^-1.
        let scales: Vec<u16> = (0..n * groups)
            .map(|_| (((5 + r.next() % 10) as u16) << 10) | (r.next() as u16 & 0x3FF))
            .collect();
        let side = n.div_ceil(16) * 16 * groups;
        let (mut gsum, mut gscale) = (vec![0i32; side], vec![0u16; side]);
        pack::panel_groups(&sums, n, groups, &mut gsum);
        pack::panel_groups(&scales, n, groups, &mut gscale);
        let bias: Vec<f32> = (0..n).map(|_| r.f32()).collect();
        let zp = (r.next() % 256) as i32;
        let xs = 0.0173f32;
        for act in [Act::None, Act::Relu, Act::Gelu] {
            let mut want = vec![f32::NAN; (m - 1) * ldo + n];
            generic::i4_gemm(
                m, k, n, &a, lda, zp, &bp, group, &gsum, &gscale, xs, &bias, act, &mut want, ldo,
            );
            for i in 0..m {
                for j in 0..n {
                    let mut f = 0f32;
                    for g in 0..groups {
                        let dot: i32 = (g * group..(g + 1) * group)
                            .map(|p| (a[i * lda + p] as i32 - zp) * q[j * k + p] as i32)
                            .sum();
                        f += dot as f32 * generic::f16_to_f32(scales[j * groups + g]);
                    }
                    let mut d = f * xs + bias[j];
                    d = match act {
                        Act::Relu => d.max(0.0),
                        Act::Gelu => generic::math::gelu(d),
                        _ => d,
                    };
                    assert_eq!(want[i * ldo + j], d, "generic i4 {m}x{k}x{n} g{group} ({i},{j})");
                }
            }
            for (name, f) in Kernels::i4_gemms() {
                let mut got = vec![f32::NAN; (m - 1) * ldo + n];
                f(m, k, n, &a, lda, zp, &bp, group, &gsum, &gscale, xs, &bias, act, &mut got, ldo);
                for i in 0..m {
                    assert_eq!(
                        got[i * ldo..i * ldo + n],
                        want[i * ldo..i * ldo + n],
                        "{name} {m}x{k}x{n} g{group} row {i}"
                    );
                }
            }
        }
    }
    // f16 conversion: every finite value round-trips through the f32 definition.
    for h in (0u16..0x7C00).step_by(7) {
        let e = (h >> 10) as i32;
        let man = (h & 0x3FF) as f64;
        let want =
            if e == 0 { man * 2f64.powi(-24) } else { (1.0 + man / 1024.0) * 2f64.powi(e - 15) };
        assert_eq!(generic::f16_to_f32(h) as f64, want, "f16 {h:#x}");
        assert_eq!(generic::f16_to_f32(h | 0x8000) as f64, -want);
    }
    assert!(generic::f16_to_f32(0x7C00).is_infinite() && generic::f16_to_f32(0x7E00).is_nan());
}

#[test]
fn i4m_gemm_variants_are_bit_exact_and_generic_matches_definition() {
    use ember_kernels::i4m::I4M_MAX_K;
    let mut r = Rng(0x14_3A11);
    let mut case = 0;
    // Awkward sizes, plus depths where one or two widened panels fill the stack buffer.
    let mut shapes = vec![];
    for group in [4usize, 32, 128] {
        for k in [group, 3 * group, 1024 + group] {
            for (m, n) in [(1, 1), (3, 17), (9, 33), (17, 3), (8, 16), (1, 100), (33, 127)] {
                shapes.push((group, m, k, n));
            }
        }
    }
    shapes.extend([(64, 5, 2048, 40), (128, 3, I4M_MAX_K, 35), (32, 2, 2080, 33)]);
    for (group, m, k, n) in shapes {
        case += 1;
        let lda = k + 4 * (case % 3);
        let ldo = n + case % 4;
        let groups = k / group;
        let a: Vec<u8> = (0..m * lda).map(|_| r.next() as u8).collect();
        let q: Vec<i8> = (0..n * k).map(|_| (r.next() % 16) as i8 - 8).collect();
        // Multipliers 1..=16, with the extremes forced in (−8·16 = −128 must not wrap).
        let mul: Vec<u8> = (0..n * groups)
            .map(|i| if i % 7 == 0 { 16 } else { 1 + (r.next() % 16) as u8 })
            .collect();
        let mut bp = vec![0u8; pack::k4n16_i4_len(n, k)];
        pack::pack_k4n16_i4(&q, n, k, &mut bp);
        let mut gmul = vec![0u8; n.div_ceil(16) * 16 * groups];
        pack::panel_groups(&mul, n, groups, &mut gmul);
        let wsum: Vec<i32> = (0..n)
            .map(|j| (0..k).map(|p| q[j * k + p] as i32 * mul[j * groups + p / group] as i32).sum())
            .collect();
        let scale: Vec<f32> = (0..n).map(|_| 1e-4 + r.f32().abs() * 1e-3).collect();
        let bias: Vec<f32> = (0..n).map(|_| r.f32()).collect();
        let zp = (r.next() % 256) as i32;
        for act in [Act::None, Act::Relu, Act::Gelu] {
            let mut want = vec![f32::NAN; (m - 1) * ldo + n];
            ember_kernels::i4m::i4m_gemm_generic(
                m, k, n, &a, lda, zp, &bp, group, &gmul, &wsum, &scale, &bias, act, &mut want, ldo,
            );
            for i in 0..m {
                for j in (0..n).step_by(1 + n / 9) {
                    let acc: i64 = (0..k)
                        .map(|p| {
                            (a[i * lda + p] as i64 - zp as i64)
                                * (q[j * k + p] as i64 * mul[j * groups + p / group] as i64)
                        })
                        .sum();
                    let mut d = acc as i32 as f32 * scale[j] + bias[j];
                    d = match act {
                        Act::Relu => d.max(0.0),
                        Act::Gelu => generic::math::gelu(d),
                        _ => d,
                    };
                    assert_eq!(want[i * ldo + j], d, "generic i4m {m}x{k}x{n} g{group} ({i},{j})");
                }
            }
            for (name, f) in Kernels::i4m_gemms() {
                let mut got = vec![f32::NAN; (m - 1) * ldo + n];
                f(
                    m, k, n, &a, lda, zp, &bp, group, &gmul, &wsum, &scale, &bias, act, &mut got,
                    ldo,
                );
                for i in 0..m {
                    assert_eq!(
                        got[i * ldo..i * ldo + n],
                        want[i * ldo..i * ldo + n],
                        "{name} {m}x{k}x{n} g{group} row {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn i4_and_i4m_gemm_variants_are_exact_at_the_extremes() {
    // Activations 255 against codes −8 (or 7) and multipliers 16 everywhere: the largest sums a
    // kernel's narrow intermediates (the i16 pair sums of AVX2's `vpmaddubsw`) must hold exactly.
    for (qv, group) in [(-8i8, 128usize), (7, 128), (-8, 32), (7, 4)] {
        for m in [1usize, 2, 5] {
            let (k, n) = (512, 21);
            let groups = k / group;
            let a = vec![255u8; m * k];
            let q = vec![qv; n * k];
            let mul = vec![16u8; n * groups];
            let mut bp = vec![0u8; pack::k4n16_i4_len(n, k)];
            pack::pack_k4n16_i4(&q, n, k, &mut bp);
            let mut gmul = vec![0u8; n.div_ceil(16) * 16 * groups];
            pack::panel_groups(&mul, n, groups, &mut gmul);
            let wsum = vec![qv as i32 * 16 * k as i32; n];
            let (scale, bias) = (vec![1.0f32; n], vec![0.0f32; n]);
            // a_zp 0: the output is the raw sum, 255·k·16·Q.
            let want = 255.0 * k as f32 * 16.0 * qv as f32;
            for (name, f) in Kernels::i4m_gemms() {
                let mut got = vec![f32::NAN; m * n];
                let (s, b) = (&scale, &bias);
                f(m, k, n, &a, k, 0, &bp, group, &gmul, &wsum, s, b, Act::None, &mut got, n);
                assert!(got.iter().all(|v| *v == want), "{name} m {m} Q {qv} g {group}: {got:?}");
            }
            // The f16-scale form: group sums Q·group, scales 16.0 (f16 0x4C00), x_scale 1.
            let gsum = vec![qv as i32 * group as i32; gmul.len()];
            let gscale = vec![0x4C00u16; gmul.len()];
            for (name, f) in Kernels::i4_gemms() {
                let mut got = vec![f32::NAN; m * n];
                let (s, b) = (&gsum, &bias);
                f(m, k, n, &a, k, 0, &bp, group, s, &gscale, 1.0, b, Act::None, &mut got, n);
                assert!(got.iter().all(|v| *v == want), "{name} m {m} Q {qv} g {group}: {got:?}");
            }
        }
    }
}

#[test]
fn i4m_wideners_give_the_same_bytes() {
    use core::mem::MaybeUninit;
    let mut r = Rng(0x51DE_0001);
    for (group, k, n, p0, np) in [
        (4, 4, 16, 0, 1),
        (32, 96, 40, 1, 2),
        (8, 1032, 33, 0, 3),
        (128, 256, 64, 2, 2),
        (4, 12, 100, 3, 4),
    ] {
        let groups = k / group;
        let q: Vec<i8> = (0..n * k).map(|_| (r.next() % 16) as i8 - 8).collect();
        let mul: Vec<u8> = (0..n * groups).map(|_| 1 + (r.next() % 16) as u8).collect();
        let mut bp = vec![0u8; pack::k4n16_i4_len(n, k)];
        pack::pack_k4n16_i4(&q, n, k, &mut bp);
        let mut gmul = vec![0u8; n.div_ceil(16) * 16 * groups];
        pack::panel_groups(&mul, n, groups, &mut gmul);
        let len = np * 16 * pack::k4(k);
        let widen = |f: ember_kernels::i4m::WidenFn| -> Vec<i8> {
            let mut d = vec![MaybeUninit::new(0x55i8); len];
            f(&bp, k, group, &gmul, p0, np, &mut d);
            // SAFETY: every element was initialized above (and overwritten by the widener).
            d.iter().map(|v| unsafe { v.assume_init() }).collect()
        };
        let want = widen(ember_kernels::i4m::widen_portable);
        // The definition: byte (j, p) of the widened panels is Q·M.
        for t in 0..np {
            for c in 0..16 {
                let j = (p0 + t) * 16 + c;
                for p in 0..k {
                    let v = if j < n {
                        q[j * k + p] as i32 * mul[j * groups + p / group] as i32
                    } else {
                        0
                    };
                    let at = t * 16 * pack::k4(k) + pack::k4n16_index(c, p, k);
                    assert_eq!(
                        want[at] as i32,
                        v,
                        "k {k} g {group} panel {} col {c} depth {p}",
                        p0 + t
                    );
                }
            }
        }
        #[allow(unused_mut)]
        let mut fast: Vec<(&str, ember_kernels::i4m::WidenFn)> = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            use ember_kernels::x86_64 as x86;
            if x86::has_avx512vnni_bw() {
                fast.push(("widen_avx512", x86::widen_avx512));
            }
        }
        for (name, f) in fast {
            assert_eq!(widen(f), want, "{name} k {k} g {group}");
        }
    }
}

#[test]
#[should_panic(expected = "deeper than")]
fn i4m_gemm_refuses_depths_beyond_its_buffer() {
    let k = ember_kernels::i4m::I4M_MAX_K + 32;
    let (n, group) = (16, 32);
    let a = vec![0u8; k];
    let bp = vec![0u8; pack::k4n16_i4_len(n, k)];
    let gmul = vec![1u8; 16 * k / group];
    let (s, f) = (vec![0i32; n], vec![0f32; n]);
    let mut out = vec![0f32; n];
    let (_, gemm) = Kernels::i4m_gemms().next().expect("a variant");
    gemm(1, k, n, &a, k, 0, &bp, group, &gmul, &s, &f, &f, Act::None, &mut out, n);
}

#[test]
fn f32_to_f16_rounds_to_nearest_even_everywhere() {
    use generic::mf::f32_to_f16;
    // Every f16 value round-trips, and every midpoint between neighbours goes to the even one.
    for h in 0u16..=0xFFFF {
        let x = generic::f16_to_f32(h);
        if x.is_nan() {
            assert!(generic::f16_to_f32(f32_to_f16(x)).is_nan());
            continue;
        }
        assert_eq!(f32_to_f16(x), h, "{h:#x} {x}");
        let next = h.wrapping_add(1);
        if h & 0x7FFF < 0x7BFF {
            let y = generic::f16_to_f32(next);
            let mid = (x as f64 + y as f64) / 2.0;
            let want = if h & 1 == 0 { h } else { next };
            assert_eq!(f32_to_f16(mid as f32), want, "midpoint of {h:#x}");
            // One f32 step past the midpoint in magnitude goes to `next`, one short of it to `h`.
            let m = (mid as f32).to_bits();
            assert_eq!(f32_to_f16(f32::from_bits(m + 1)), next, "past the midpoint of {h:#x}");
            assert_eq!(f32_to_f16(f32::from_bits(m - 1)), h, "short of the midpoint of {h:#x}");
        }
    }
    assert_eq!(f32_to_f16(1e6), 0x7C00);
    assert_eq!(f32_to_f16(-1e-9), 0x8000);
}

#[test]
fn mf_steps_match_definition_and_twins() {
    let mut r = Rng(0x5eed_f00d);
    // 100..144: either side of the AVX-512 f16 kernel's register form (up to 8 vectors, the
    // last one masked) and its fallback; 250..257: either side of the AVX-512 f32 register
    // form's limit (16 vectors, reloaded past 8).
    for k in [1usize, 3, 8, 15, 16, 17, 33, 64, 100, 127, 128, 129, 144, 250, 256, 257, 1000] {
        for trial in 0..4 {
            let scale = [1.0f32, 1e-3, 30.0, 1e-6][trial];
            let p0: Vec<f32> = (0..k).map(|_| r.f32() * scale).collect();
            let q0: Vec<f32> = (0..k).map(|_| r.f32() * scale).collect();
            let (target, lr, reg) = (r.f32() * 5.0, 0.01 + r.f32().abs() * 0.05, 0.02);
            // f32: the definition in f64 bounds the generic twin; every variant is bit-exact.
            let dot: f64 = p0.iter().zip(&q0).map(|(a, b)| *a as f64 * *b as f64).sum();
            let (mut gp, mut gq) = (p0.clone(), q0.clone());
            let e = generic::mf::mf_step_f32(&mut gp, &mut gq, target, lr, reg);
            let mag: f64 = p0.iter().zip(&q0).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            assert!((e as f64 - (target as f64 - dot)).abs() <= 1e-5 * (mag + target.abs() as f64));
            for j in 0..k {
                let want =
                    p0[j] as f64 + lr as f64 * (e as f64 * q0[j] as f64 - 0.02 * p0[j] as f64);
                let terms = p0[j].abs() as f64
                    + lr as f64 * ((e * q0[j]).abs() as f64 + 0.02 * p0[j].abs() as f64);
                assert!((gp[j] as f64 - want).abs() <= 1e-6 * terms, "k={k} j={j}");
            }
            for (name, f) in Kernels::mf_steps_f32() {
                let (mut p, mut q) = (p0.clone(), q0.clone());
                let ev = f(&mut p, &mut q, target, lr, reg);
                assert_eq!(ev.to_bits(), e.to_bits(), "{name} k={k}");
                assert_eq!(p, gp, "{name} k={k}");
                assert_eq!(q, gq, "{name} k={k}");
            }
            // f16 storage: the generic twin against a scalar restatement, variants bit-exact.
            let h = |v: &[f32]| v.iter().map(|x| generic::mf::f32_to_f16(*x)).collect::<Vec<_>>();
            let (hp0, hq0) = (h(&p0), h(&q0));
            let (mut gp, mut gq, mut glost) = (hp0.clone(), hq0.clone(), 0u32);
            let e = generic::mf::mf_step_f16(&mut gp, &mut gq, target, lr, reg, Some(&mut glost));
            let pf: Vec<f32> = hp0.iter().map(|x| generic::f16_to_f32(*x)).collect();
            let qf: Vec<f32> = hq0.iter().map(|x| generic::f16_to_f32(*x)).collect();
            let (mut wp, mut wq) = (pf.clone(), qf.clone());
            let we = generic::mf::mf_step_f32(&mut wp, &mut wq, target, lr, reg);
            assert_eq!(e.to_bits(), we.to_bits());
            assert_eq!(gp, h(&wp), "k={k}");
            assert_eq!(gq, h(&wq), "k={k}");
            let want_lost = (0..k)
                .map(|j| {
                    ((gp[j] == hp0[j] && wp[j] != pf[j]) as u32)
                        + ((gq[j] == hq0[j] && wq[j] != qf[j]) as u32)
                })
                .sum::<u32>();
            assert_eq!(glost, want_lost, "k={k}");
            if trial == 3 && k >= 64 {
                assert!(glost > 0, "tiny rows lose updates in f16 (k={k})");
            }
            for (name, f) in Kernels::mf_steps_f16() {
                let (mut p, mut q, mut lost) = (hp0.clone(), hq0.clone(), 7u32);
                let ev = f(&mut p, &mut q, target, lr, reg, Some(&mut lost));
                assert_eq!(ev.to_bits(), e.to_bits(), "{name} k={k}");
                assert_eq!((p, q), (gp.clone(), gq.clone()), "{name} k={k}");
                assert_eq!(lost, glost + 7, "{name} k={k}");
                // Without the count: the same error and rows.
                let (mut p, mut q) = (hp0.clone(), hq0.clone());
                let ev = f(&mut p, &mut q, target, lr, reg, None);
                assert_eq!(ev.to_bits(), e.to_bits(), "{name} k={k}, no count");
                assert_eq!((p, q), (gp.clone(), gq.clone()), "{name} k={k}, no count");
            }
        }
    }
}

#[test]
fn mixed_mf_steps_match_the_f32_step_and_twins() {
    let mut r = Rng(0x31ed_5eed);
    // 100..144 and 250..260: either side of the AVX-512 register forms (8 vectors kept, 16
    // loaded twice) and the generic fallback past them.
    for k in [1usize, 3, 8, 15, 16, 17, 33, 64, 100, 127, 128, 129, 144, 250, 256, 257, 1000] {
        for trial in 0..4 {
            let scale = [1.0f32, 1e-3, 30.0, 1e-6][trial];
            let h0: Vec<u16> = (0..k).map(|_| generic::mf::f32_to_f16(r.f32() * scale)).collect();
            let w0: Vec<f32> = (0..k).map(|_| r.f32() * scale).collect();
            let (target, lr, reg) = (r.f32() * 5.0, 0.01 + r.f32().abs() * 0.05, 0.02);
            // The generic twin against the f32 step on the widened row, in either order (the
            // step is symmetric), with the lost count restated.
            let (mut gh, mut gw, mut glost) = (h0.clone(), w0.clone(), 0u32);
            let e = generic::mf::mf_step_mixed(&mut gh, &mut gw, target, lr, reg, Some(&mut glost));
            let hf: Vec<f32> = h0.iter().map(|x| generic::f16_to_f32(*x)).collect();
            for swap in [false, true] {
                let (mut a, mut b) = (hf.clone(), w0.clone());
                let we = if swap {
                    generic::mf::mf_step_f32(&mut b, &mut a, target, lr, reg)
                } else {
                    generic::mf::mf_step_f32(&mut a, &mut b, target, lr, reg)
                };
                assert_eq!(e.to_bits(), we.to_bits(), "k={k} swap={swap}");
                let ha: Vec<u16> = a.iter().map(|x| generic::mf::f32_to_f16(*x)).collect();
                assert_eq!(gh, ha, "k={k}");
                assert_eq!(gw, b, "k={k}");
                let want_lost = (0..k).filter(|&j| gh[j] == h0[j] && a[j] != hf[j]).count() as u32;
                assert_eq!(glost, want_lost, "k={k}");
            }
            if trial == 3 && k >= 64 {
                assert!(glost > 0, "tiny rows lose updates in f16 (k={k})");
            }
            for (name, f) in Kernels::mf_steps_mixed() {
                let (mut h, mut w, mut lost) = (h0.clone(), w0.clone(), 5u32);
                let ev = f(&mut h, &mut w, target, lr, reg, Some(&mut lost));
                assert_eq!(ev.to_bits(), e.to_bits(), "{name} k={k}");
                assert_eq!((&h, &w), (&gh, &gw), "{name} k={k}");
                assert_eq!(lost, glost + 5, "{name} k={k}");
                let (mut h, mut w) = (h0.clone(), w0.clone());
                let ev = f(&mut h, &mut w, target, lr, reg, None);
                assert_eq!(ev.to_bits(), e.to_bits(), "{name} k={k}, no count");
                assert_eq!((h, w), (gh.clone(), gw.clone()), "{name} k={k}, no count");
            }
        }
    }
}

#[test]
fn prefetch_covers_every_line_and_never_faults() {
    use ember_kernels::prefetch::{line_span, prefetch, LINE};
    assert_eq!(line_span(0, 0).1, 0);
    assert_eq!(line_span(64, 64), (64, 1));
    assert_eq!(line_span(65, 64), (64, 2), "an unaligned row spans one line more");
    assert_eq!(line_span(127, 2), (64, 2));
    assert_eq!(line_span(128, 256), (128, 4));
    for addr in [0usize, 1, 63, 64, 100, 4095] {
        for len in [1usize, 2, 63, 64, 65, 256, 513] {
            let (first, n) = line_span(addr, len);
            assert!(first <= addr && first % LINE == 0);
            assert!(first + n * LINE >= addr + len && first + (n - 1) * LINE < addr + len);
        }
    }
    // A hint: null, dangling and unaligned addresses are dropped, never faulted on.
    let v = vec![1u8; 1000];
    prefetch(v.as_ptr().wrapping_add(3), 997);
    prefetch(core::ptr::null(), 4096);
    prefetch((usize::MAX & !4095) as *const u8, 64);
    prefetch(v.as_ptr().wrapping_add(1 << 40), 128);
    assert_eq!(v.iter().map(|x| *x as usize).sum::<usize>(), 1000);
}
