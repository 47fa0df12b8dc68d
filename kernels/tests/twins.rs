//! Every kernel variant against its generic twin on random inputs of awkward sizes (integer
//! kernels bit-exact, float kernels within `F32_GEMM_REL`), and the generic twins against
//! their definitions. One list (`Kernels::*`) drives both.

use ember_kernels::{generic, Act, Kernels};

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

#[test]
fn i8_gemm_variants_are_bit_exact_and_generic_matches_definition() {
    let mut r = Rng(0x1234_5678);
    for (m, k, n) in shapes() {
        let a: Vec<i8> = (0..m * k).map(|_| r.i8()).collect();
        let b: Vec<i8> = (0..n * k).map(|_| r.i8()).collect();
        let sums: Vec<i32> = b.chunks(k).map(|row| row.iter().map(|v| *v as i32).sum()).collect();
        let scale: Vec<f32> = (0..n).map(|_| r.f32().abs() * 0.01 + 1e-4).collect();
        let bias: Vec<f32> = (0..n).map(|_| r.f32()).collect();
        let zp = (r.next() % 256) as i32 - 128;
        for act in [Act::None, Act::Relu] {
            let mut want = vec![0f32; m * n];
            generic::i8_gemm(m, k, n, &a, zp, &b, &sums, &scale, &bias, act, &mut want);
            for i in 0..m {
                for j in 0..n {
                    let acc: i64 = (0..k)
                        .map(|p| (a[i * k + p] as i64 - zp as i64) * b[j * k + p] as i64)
                        .sum();
                    let mut d = acc as f32 * scale[j] + bias[j];
                    if act == Act::Relu {
                        d = d.max(0.0);
                    }
                    assert_eq!(want[i * n + j], d, "generic i8_gemm {m}x{k}x{n} at ({i},{j})");
                }
            }
            for (name, f) in Kernels::i8_gemms() {
                let mut got = vec![f32::NAN; m * n];
                f(m, k, n, &a, zp, &b, &sums, &scale, &bias, act, &mut got);
                assert_eq!(got, want, "{name} differs from its twin at {m}x{k}x{n}");
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
        for (name, f) in Kernels::f32_gemms() {
            let mut got = vec![f32::NAN; m * n];
            f(m, k, n, &a, &b, &bias, Act::None, &mut got);
            for i in 0..m {
                for j in 0..n {
                    let mag: f32 = (0..k).map(|p| (a[i * k + p] * b[j * k + p]).abs()).sum::<f32>()
                        + bias[j].abs();
                    let d = (got[i * n + j] - want[i * n + j]).abs();
                    assert!(
                        d <= F32_GEMM_REL * mag.max(1e-30),
                        "{name} {m}x{k}x{n} ({i},{j}): {d}"
                    );
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
        let x: Vec<f32> = (0..len).map(|_| r.f32() * 10.0).collect();
        let inv = 12.7f32;
        for zp in [-128, -3, 0, 127] {
            let mut want = vec![0i8; len];
            generic::quantize_i8(&x, inv, zp, &mut want);
            for (q, v) in want.iter().zip(&x) {
                let t = (v * inv).round_ties_even() + zp as f32;
                assert_eq!(*q, t.clamp(-128.0, 127.0) as i8, "x={v} zp={zp}");
            }
            for (name, f) in Kernels::quantizers() {
                let mut got = vec![0i8; len];
                f(&x, inv, zp, &mut got);
                assert_eq!(got, want, "{name}");
            }
            // The per-channel quantizer with all multipliers equal is the per-tensor one.
            let mult = vec![inv; len];
            for (name, f) in Kernels::channel_quantizers() {
                let mut got = vec![0i8; len];
                f(&x, len, &mult, zp, &mut got);
                assert_eq!(got, want, "{name}");
            }
        }
    }
    let mut q = [0i8; 4];
    generic::quantize_i8(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5], 1.0, 0, &mut q);
    assert_eq!(q, [0, 127, -128, 0], "NaN to the zero point, infinities saturate, ties to even");
}
