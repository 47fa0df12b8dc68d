//! The machine's measured INT8 peak, against which the kernel benches report their share.
//!
//! Peak = the rate of the widest INT8 multiply-accumulate instruction this CPU has (x86:
//! AVX-512 VNNI `vpdpbusd` on zmm, else AVX2 `vpmaddwd`; aarch64: `sdot`), issued back to back
//! into 16 independent register accumulators (no loads, no dependency stalls) on one core, for
//! about 0.2 s. Multiply by the number of cores for the machine; the benches compare one-thread
//! kernels with the one-core figure.

use std::time::Instant;

/// Measured single-core INT8 peak in multiply-accumulates per second, and what was measured.
pub fn int8_peak_macs_per_s() -> (f64, &'static str) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the features were detected just above.
        return (time(|n| unsafe { x86::vnni_macs(n) }), "vpdpbusd zmm x16 accumulators");
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        // SAFETY: the feature was detected just above.
        return (time(|n| unsafe { arm::sdot_macs(n) }), "sdot q x16 accumulators");
    }
    (0.0, "no INT8 dot-product instruction measured on this CPU")
}

/// Runs `f(n)` (which performs and returns a MAC count) with growing n until it takes 0.2 s.
fn time(f: impl Fn(u64) -> u64) -> f64 {
    let mut n = 1u64 << 16;
    loop {
        let t = Instant::now();
        let macs = f(n);
        let s = t.elapsed().as_secs_f64();
        if s > 0.2 {
            return macs as f64 / s;
        }
        n *= 4;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `n` rounds of 16 independent `vpdpbusd` (64 MACs each); returns the MAC count.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn vnni_macs(n: u64) -> u64 {
        let a = _mm512_set1_epi8(3);
        let b = _mm512_set1_epi8(-2);
        let mut acc = [_mm512_setzero_si512(); 16];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for x in acc {
            s = _mm512_add_epi32(s, x);
        }
        std::hint::black_box(s);
        n * 16 * 64
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;
    use std::arch::asm;

    /// `n` rounds of 16 independent `sdot` (16 MACs each); returns the MAC count.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn sdot_macs(n: u64) -> u64 {
        let a = vdupq_n_s8(3);
        let b = vdupq_n_s8(-2);
        let mut acc = [vdupq_n_s32(0); 16];
        for _ in 0..n {
            for x in acc.iter_mut() {
                // SAFETY: register-only instruction; dotprod is enabled for this function.
                unsafe {
                    asm!("sdot {d:v}.4s, {a:v}.16b, {b:v}.16b", d = inout(vreg) *x, a = in(vreg) a, b = in(vreg) b, options(pure, nomem, nostack));
                }
            }
        }
        let mut s = vdupq_n_s32(0);
        for x in acc {
            s = vaddq_s32(s, x);
        }
        std::hint::black_box(s);
        n * 16 * 16
    }
}
