//! The machine's measured INT8 peak, against which the kernel benches report their share.
//!
//! Peak = the rate of the widest INT8 multiply-accumulate this CPU has (x86: AVX-512 VNNI
//! `vpdpbusd` on zmm; else AVX2's u8×i8→i32 sequence `vpmaddubsw`, `vpmaddwd` by ones,
//! `vpaddd`, which is what ONNX Runtime's AVX2 kernels run, though `vpmaddubsw` saturates;
//! aarch64: `sdot`), issued back to back into independent register accumulators (no loads, no
//! dependency stalls) on one core, the best of five runs of about 0.1 s; the benches compare
//! one-thread kernels with this one-core figure. The machine's peak is the same loop run on
//! every core at once ([`int8_peak_all_threads_macs_per_s`]), not the one-core figure times
//! the cores: on a virtual machine two vCPUs may be one physical core's two hardware threads.
//! On AVX2 the exact form (`vpmaddwd` on i16, then `vpaddd`: what Ember's AVX2 kernel runs) has
//! a lower ceiling, measured by [`int8_exact_avx2_macs_per_s`].

use std::time::Instant;

/// `f(rounds)`: runs an INT8 multiply-accumulate loop, returns the MACs performed.
type PeakLoop = fn(u64) -> u64;

/// The widest INT8 multiply-accumulate loop this CPU has (a function of the round count that
/// returns the MACs it performed) and its description; `None` without one.
fn peak_loop() -> Option<(PeakLoop, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512f") {
        return Some((
            // SAFETY: the features were detected just above.
            |n| unsafe { x86::vnni_macs(n) },
            "vpdpbusd zmm x16 accumulators",
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return Some((
            // SAFETY: the feature was detected just above.
            |n| unsafe { x86::ubsw_macs(n) },
            "vpmaddubsw + vpmaddwd + vpaddd ymm x12 accumulators",
        ));
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        return Some((
            // SAFETY: the feature was detected just above.
            |n| unsafe { arm::sdot_macs(n) },
            "sdot q x16 accumulators",
        ));
    }
    None
}

/// Measured single-core INT8 peak in multiply-accumulates per second, and what was measured.
pub fn int8_peak_macs_per_s() -> (f64, &'static str) {
    match peak_loop() {
        Some((f, how)) => (time(f), how),
        None => (0.0, "no INT8 dot-product instruction measured on this CPU"),
    }
}

/// The same loop on `threads` threads at once (started together, timed until the last one
/// ends), in MACs per second for them all: the machine's measured peak. On a virtual machine
/// whose vCPUs share physical cores (SMT siblings on the host), this is less than the one-core
/// figure times the core count. The best of five runs of about 0.1 s per thread; 0 without
/// an INT8 dot-product loop.
pub fn int8_peak_all_threads_macs_per_s(threads: usize) -> f64 {
    peak_loop().map_or(0.0, |(f, _)| time_on(threads, f))
}

/// The ceiling of an exact AVX2 INT8 GEMM (`vpmaddwd` on i16 operands, then `vpaddd`), in
/// multiply-accumulates per second on one core; `None` without AVX2.
pub fn int8_exact_avx2_macs_per_s() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the feature was detected just above.
        return Some(time(|n| unsafe { x86::madd_macs(n) }));
    }
    None
}

/// Runs `f(n)` (which performs and returns a MAC count) with growing n until one call takes
/// 0.1 s, then four more calls of that size; the best rate of the five. On a shared or virtual
/// machine a slow spell only lowers some calls, so the best is the machine's own rate (the
/// GEMM summaries take the best of five too, so shares of the peak compare like with like).
fn time(f: impl Fn(u64) -> u64 + Sync) -> f64 {
    time_on(1, f)
}

/// [`time`] with `f(n)` run on `threads` threads at once (started together, timed until the
/// last one ends), in MACs per second for them all.
fn time_on(threads: usize, f: impl Fn(u64) -> u64 + Sync) -> f64 {
    let rate = |n: u64| {
        let (macs, s) = if threads <= 1 {
            let t = Instant::now();
            let macs = f(n);
            (macs, t.elapsed().as_secs_f64())
        } else {
            let start = std::sync::Barrier::new(threads + 1);
            std::thread::scope(|sc| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        sc.spawn(|| {
                            start.wait();
                            f(n)
                        })
                    })
                    .collect();
                start.wait();
                let t = Instant::now();
                let macs: u64 = workers.into_iter().map(|w| w.join().expect("peak thread")).sum();
                (macs, t.elapsed().as_secs_f64())
            })
        };
        (macs as f64 / s, s)
    };
    let mut n = 1u64 << 16;
    loop {
        let (r, s) = rate(n);
        if s > 0.1 {
            return (0..4).map(|_| rate(n).0).fold(r, f64::max);
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

    /// `n` rounds of 12 independent `vpmaddubsw` + `vpmaddwd` (by ones) + `vpaddd` (32 MACs
    /// each); returns the MAC count.
    #[target_feature(enable = "avx2")]
    pub unsafe fn ubsw_macs(n: u64) -> u64 {
        let (a, b, ones) = (_mm256_set1_epi8(3), _mm256_set1_epi8(-2), _mm256_set1_epi16(1));
        let mut acc = [_mm256_setzero_si256(); 12];
        for _ in 0..n {
            for x in acc.iter_mut() {
                // SAFETY: register-only instructions; AVX2 is enabled for this function.
                unsafe {
                    std::arch::asm!(
                        "vpmaddubsw {t}, {a}, {b}",
                        "vpmaddwd {t}, {t}, {o}",
                        "vpaddd {d}, {d}, {t}",
                        d = inout(ymm_reg) *x, a = in(ymm_reg) a, b = in(ymm_reg) b,
                        o = in(ymm_reg) ones, t = out(ymm_reg) _,
                        options(pure, nomem, nostack)
                    );
                }
            }
        }
        std::hint::black_box(acc);
        n * 12 * 32
    }

    /// `n` rounds of 12 independent `vpmaddwd` + `vpaddd` (16 MACs each); returns the MAC count.
    #[target_feature(enable = "avx2")]
    pub unsafe fn madd_macs(n: u64) -> u64 {
        let (a, b) = (_mm256_set1_epi16(3), _mm256_set1_epi16(-2));
        let mut acc = [_mm256_setzero_si256(); 12];
        for _ in 0..n {
            for x in acc.iter_mut() {
                // SAFETY: register-only instructions; AVX2 is enabled for this function.
                unsafe {
                    std::arch::asm!(
                        "vpmaddwd {t}, {a}, {b}",
                        "vpaddd {d}, {d}, {t}",
                        d = inout(ymm_reg) *x, a = in(ymm_reg) a, b = in(ymm_reg) b,
                        t = out(ymm_reg) _,
                        options(pure, nomem, nostack)
                    );
                }
            }
        }
        std::hint::black_box(acc);
        n * 12 * 16
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
