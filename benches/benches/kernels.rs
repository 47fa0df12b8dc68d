//! Criterion benches per kernel family, every variant this CPU can run, at the shapes MiniLM-L3
//! uses (sequence 128; batch 1 and 8) plus a GEMV. Throughput is reported in operations
//! (2 per multiply-accumulate for GEMMs, 1 per element otherwise); after the criterion runs, a
//! summary prints each INT8 GEMM's GOP/s and its share of the measured one-core INT8 peak.
//!
//! Run: `cargo bench -p ember-benches` (add `-- i8_gemm` to filter).

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use ember_kernels::{pack, Act, Kernels};
use std::hint::black_box;
use std::time::Instant;

/// (m, k, n, label)
const GEMMS: &[(usize, usize, usize, &str)] = &[
    (1, 384, 1536, "gemv 1x384x1536"),
    (128, 384, 1536, "minilm b1 fc1 128x384x1536"),
    (128, 1536, 384, "minilm b1 fc2 128x1536x384"),
    (1024, 384, 1536, "minilm b8 fc1 1024x384x1536"),
    (1024, 1536, 1024, "large 1024x1536x1024"),
    (128, 32, 128, "minilm attention q.kT 128x32x128"),
    (128, 128, 32, "minilm attention p.v 128x128x32"),
];

struct Gemm {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<u8>,
    bp: Vec<i8>,
    sums: Vec<i32>,
    scale: Vec<f32>,
    bias: Vec<f32>,
    out: Vec<f32>,
}

fn gemm_case(m: usize, k: usize, n: usize) -> Gemm {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let lda = pack::k4(k);
    let a: Vec<u8> = (0..m * lda).map(|_| next() as u8).collect();
    let w: Vec<i8> = (0..n * k).map(|_| next() as i8).collect();
    let mut bp = vec![0i8; pack::k4n16_len(n, k)];
    pack::pack_k4n16(&w, n, k, &mut bp);
    let sums = w.chunks(k).map(|r| r.iter().map(|v| *v as i32).sum()).collect();
    Gemm { m, k, n, a, bp, sums, scale: vec![0.01; n], bias: vec![0.5; n], out: vec![0.0; m * n] }
}

impl Gemm {
    /// `out = a · B` with the INT8 GEMM `f` (activation zero point 128, no activation).
    fn run_i8(&mut self, f: ember_kernels::I8GemmFn) {
        let lda = pack::k4(self.k);
        f(
            self.m,
            self.k,
            self.n,
            &self.a,
            lda,
            128,
            &self.bp,
            &self.sums,
            &self.scale,
            &self.bias,
            Act::None,
            &mut self.out,
            self.n,
        );
    }
}

fn i8_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("i8_gemm");
    for (m, k, n, label) in GEMMS {
        let mut case = gemm_case(*m, *k, *n);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        for (name, f) in Kernels::i8_gemms() {
            if name.ends_with("generic") && m * k * n > 1 << 24 {
                continue; // minutes per sample; the twin tests cover it
            }
            g.bench_with_input(BenchmarkId::new(name, label), &(), |bch, _| {
                bch.iter(|| {
                    case.run_i8(f);
                    black_box(&case.out);
                })
            });
        }
    }
    g.finish();
}

/// INT4 (group-wise) weights for the same shapes.
struct Gemm4 {
    bp: Vec<u8>,
    gsum: Vec<i32>,
    gscale: Vec<u16>,
    gmul: Vec<u8>,
    wsum: Vec<i32>,
}

fn gemm4_case(n: usize, k: usize, group: usize) -> Gemm4 {
    let groups = k / group;
    let q: Vec<i8> = (0..n * k).map(|i| ((i * 7 + i / 13) % 16) as i8 - 8).collect();
    let mut bp = vec![0u8; pack::k4n16_i4_len(n, k)];
    pack::pack_k4n16_i4(&q, n, k, &mut bp);
    let per: Vec<i32> = (0..n * groups)
        .map(|jg| {
            q[(jg / groups) * k + (jg % groups) * group..][..group].iter().map(|v| *v as i32).sum()
        })
        .collect();
    let side = n.div_ceil(16) * 16 * groups;
    let (mut gsum, mut gscale) = (vec![0; side], vec![0u16; side]);
    pack::panel_groups(&per, n, groups, &mut gsum);
    pack::panel_groups(&vec![0x2000u16; n * groups], n, groups, &mut gscale);
    // The same codes with integer group multipliers (INT4M): 1..=16 cycling, column sums of Q·M.
    let mul: Vec<u8> = (0..n * groups).map(|i| 1 + (i % 16) as u8).collect();
    let mut gmul = vec![0u8; side];
    pack::panel_groups(&mul, n, groups, &mut gmul);
    let wsum = (0..n)
        .map(|j| (0..k).map(|p| q[j * k + p] as i32 * mul[j * groups + p / group] as i32).sum())
        .collect();
    Gemm4 { bp, gsum, gscale, gmul, wsum }
}

/// One fast INT4 GEMM variant of either weight form (f16 group scales, or group multipliers).
#[derive(Clone, Copy)]
enum Int4 {
    Group(ember_kernels::I4GemmFn),
    Mult(ember_kernels::I4mGemmFn),
}

impl Int4 {
    /// Every fast INT4 variant this CPU can run, with its name and the form's label.
    fn variants() -> Vec<(&'static str, &'static str, Int4)> {
        let fast = |n: &&str| !n.ends_with("generic");
        let g =
            Kernels::i4_gemms().filter(|(n, _)| fast(n)).map(|(n, f)| (n, "INT4", Int4::Group(f)));
        let m =
            Kernels::i4m_gemms().filter(|(n, _)| fast(n)).map(|(n, f)| (n, "INT4M", Int4::Mult(f)));
        g.chain(m).collect()
    }

    /// `case.out = a · W` with the weights `w` in this variant's form.
    fn run(self, case: &mut Gemm, w: &Gemm4, group: usize) {
        let lda = pack::k4(case.k);
        let (m, k, n, a, b) = (case.m, case.k, case.n, &case.a, &case.bias);
        match self {
            Int4::Group(f) => f(
                m,
                k,
                n,
                a,
                lda,
                128,
                &w.bp,
                group,
                &w.gsum,
                &w.gscale,
                0.01,
                b,
                Act::None,
                &mut case.out,
                n,
            ),
            Int4::Mult(f) => f(
                m,
                k,
                n,
                a,
                lda,
                128,
                &w.bp,
                group,
                &w.gmul,
                &w.wsum,
                &case.scale,
                b,
                Act::None,
                &mut case.out,
                n,
            ),
        }
    }
}

/// Every fast INT4 variant on `case` with weights `w` (groups of `group`), labelled `label`.
fn bench_int4(
    g: &mut BenchmarkGroup<'_, WallTime>,
    case: &mut Gemm,
    w: &Gemm4,
    group: usize,
    label: &str,
) {
    for (name, _, v) in Int4::variants() {
        g.bench_with_input(BenchmarkId::new(format!("{name} g{group}"), label), &(), |bch, _| {
            bch.iter(|| {
                v.run(case, w, group);
                black_box(&case.out);
            })
        });
    }
}

fn i4_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("i4_gemm");
    for (m, k, n, label) in &GEMMS[..3] {
        let mut case = gemm_case(*m, *k, *n);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        for group in [32, 128] {
            bench_int4(&mut g, &mut case, &gemm4_case(*n, *k, group), group, label);
        }
    }
    g.finish();
}

/// Few rows (a batch of short inputs, decoding): where each INT4 form's variants cross over.
fn i4_gemm_rows(c: &mut Criterion) {
    let mut g = c.benchmark_group("i4_gemm_rows");
    let (k, n, group) = (384, 1536, 32);
    let w = gemm4_case(n, k, group);
    for m in [2usize, 3, 4, 6, 8, 16] {
        let mut case = gemm_case(m, k, n);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        bench_int4(&mut g, &mut case, &w, group, &format!("{m}x{k}x{n}"));
    }
    g.finish();
}

/// INT8 against INT4M on one thread's share of MiniLM's batch-1 linears at two threads (64 of
/// the 128 rows): the widening pass INT4M adds is paid once per call whatever the row count.
fn i4m_vs_i8(c: &mut Criterion) {
    let mut g = c.benchmark_group("i4m_vs_i8");
    for (m, k, n) in
        [(64usize, 384usize, 384usize), (64, 384, 1536), (64, 1536, 384), (128, 384, 1536)]
    {
        let label = format!("{m}x{k}x{n}");
        let mut case = gemm_case(m, k, n);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let w = gemm4_case(n, k, 32);
        for (name, _, v) in Int4::variants().into_iter().filter(|(_, f, _)| *f == "INT4M") {
            g.bench_with_input(BenchmarkId::new(name, &label), &(), |bch, _| {
                bch.iter(|| {
                    v.run(&mut case, &w, 32);
                    black_box(&case.out);
                })
            });
        }
        for (name, f) in Kernels::i8_gemms().filter(|(n, _)| !n.ends_with("generic")) {
            g.bench_with_input(BenchmarkId::new(name, &label), &(), |bch, _| {
                bch.iter(|| {
                    case.run_i8(f);
                    black_box(&case.out);
                })
            });
        }
    }
    g.finish();
}

fn f32_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("f32_gemm");
    let (m, k, n) = (128, 384, 384);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut out = vec![0f32; m * n];
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    for (name, f) in Kernels::f32_gemms() {
        g.bench_function(BenchmarkId::new(name, "128x384x384"), |bch| {
            bch.iter(|| {
                f(m, k, n, &a, &b, &[], Act::None, &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

/// One MiniLM attention head (S = 128 keys, D = 32): the scores `q·kᵀ` (f32 GEMM, `k` as
/// `[n, k]`), a softmax per row and `P·v` (f32 matmul), as the fused attention step runs them.
fn attention_head(c: &mut Criterion) {
    let (s, d) = (128usize, 32usize);
    let q: Vec<f32> = (0..s * d).map(|i| ((i * 13) % 17) as f32 * 0.1 - 0.8).collect();
    let k: Vec<f32> = (0..s * d).map(|i| ((i * 7) % 19) as f32 * 0.1 - 0.9).collect();
    let v: Vec<f32> = (0..s * d).map(|i| ((i * 5) % 23) as f32 * 0.1 - 1.1).collect();
    let (mut sc, mut p, mut o) = (vec![0f32; s * s], vec![0f32; s * s], vec![0f32; s * d]);
    let mut g = c.benchmark_group("attention_head");
    g.throughput(Throughput::Elements((2 * s * d * s) as u64));
    for (name, f) in Kernels::f32_gemms() {
        g.bench_function(BenchmarkId::new(name, "scores 128x32x128"), |bch| {
            bch.iter(|| {
                f(s, d, s, &q, &k, &[], Act::None, &mut sc);
                black_box(&sc);
            })
        });
    }
    for (name, f) in Kernels::f32_matmuls() {
        g.bench_function(BenchmarkId::new(name, "p.v 128x128x32"), |bch| {
            bch.iter(|| {
                f(s, s, d, &p, &v, &mut o);
                black_box(&o);
            })
        });
    }
    for (name, f) in Kernels::softmaxes() {
        g.bench_function(BenchmarkId::new(name, "128 rows x 128"), |bch| {
            bch.iter(|| {
                // In place, scaled as the fused attention runs it (the rows' values change
                // from one iteration to the next; the kernel's time does not depend on them).
                for rows in p.chunks_exact_mut(4 * s) {
                    f(rows, s, &[&[][..]; 4], 0.176_776_7);
                }
                black_box(&p);
            })
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let rows = 12 * 128;
    let x: Vec<f32> = (0..rows * 128).map(|i| ((i * 37) % 101) as f32 * 0.05 - 2.5).collect();
    let mut o = vec![0f32; x.len()];
    let mut g = c.benchmark_group("softmax_row");
    g.throughput(Throughput::Elements(x.len() as u64));
    for (name, f) in Kernels::softmaxes() {
        g.bench_function(BenchmarkId::new(name, "1536 rows x 128"), |bch| {
            bch.iter(|| {
                o.copy_from_slice(&x);
                for rows in o.chunks_exact_mut(4 * 128) {
                    f(rows, 128, &[&[][..]; 4], 1.0);
                }
                black_box(&o);
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("erf");
    g.throughput(Throughput::Elements(x.len() as u64));
    for (name, f) in Kernels::erfs() {
        g.bench_function(BenchmarkId::new(name, "196608"), |bch| {
            bch.iter(|| {
                f(&x, &mut o);
                black_box(&o);
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("layer_norm_row");
    let d = 384;
    let gamma = vec![1.1f32; d];
    let beta = vec![0.1f32; d];
    g.throughput(Throughput::Elements((128 * d) as u64));
    for (name, f) in Kernels::layer_norms() {
        g.bench_function(BenchmarkId::new(name, "128 rows x 384"), |bch| {
            bch.iter(|| {
                for (xr, or) in x[..128 * d].chunks_exact(d).zip(o.chunks_exact_mut(d)) {
                    f(xr, &gamma, &beta, 1e-12, or);
                }
                black_box(&o);
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("quantize_u8");
    let (m, k) = (128, 1536);
    let lda = pack::k4(k);
    let mut q = vec![0u8; m * lda];
    g.throughput(Throughput::Elements((m * k) as u64));
    for (name, f) in Kernels::quantizers() {
        g.bench_function(BenchmarkId::new(name, "128x1536"), |bch| {
            bch.iter(|| {
                f(&x[..m * k], m, k, k, lda, 12.5, &[], 130, &mut q);
                black_box(&q);
            })
        });
    }
    g.finish();
    // The attention operands of one MiniLM MatMul pair, as the runtime packs them: 12 heads of
    // K stored [128 keys, 32] (transposed form, for Q·Kᵀ) and of V [128 keys, 32] (for P·V).
    let mut g = c.benchmark_group("quantize_pack");
    let (heads, keys, dim) = (12, 128, 32);
    let mut out = vec![0i8; pack::k4n16_len(keys, dim)];
    let mut sums = vec![0i32; keys];
    g.throughput(Throughput::Elements((2 * heads * keys * dim) as u64));
    for (name, f) in Kernels::quantize_packs() {
        g.bench_function(BenchmarkId::new(name, "12 heads 128x32, both forms"), |bch| {
            bch.iter(|| {
                for h in 0..heads {
                    let b = &x[h * keys * dim..][..keys * dim];
                    f(b, dim, keys, true, dim, 40.0, &mut out, &mut sums);
                    black_box(&out);
                    f(b, keys, dim, false, dim, 40.0, &mut out, &mut sums);
                    black_box(&out);
                }
            })
        });
        // The same heads read in place from the linear's output [128 keys, 12 heads, 32].
        g.bench_function(BenchmarkId::new(name, "12 heads 128x32 in place, both forms"), |bch| {
            bch.iter(|| {
                for h in 0..heads {
                    let b = &x[h * dim..];
                    f(b, dim, keys, true, heads * dim, 40.0, &mut out, &mut sums);
                    black_box(&out);
                    f(b, keys, dim, false, heads * dim, 40.0, &mut out, &mut sums);
                    black_box(&out);
                }
            })
        });
    }
    g.finish();
}

/// Seconds per call of `run`, doubling the call count until one timing lasts 0.3 s.
/// SGD steps (`mf_step_*`, k = 128) over 64 row pairs that stay in L1/L2: the kernel's own
/// throughput, independent steps back to back as in training (the `finetune` bench adds the
/// wait for rows from memory). One element is one step.
fn mf_step(c: &mut Criterion) {
    const K: usize = 128;
    const PAIRS: usize = 64;
    let mut g = c.benchmark_group("mf_step");
    g.throughput(Throughput::Elements(PAIRS as u64));
    let init = |j: usize| 0.05 + (j % 7) as f32 * 0.01;
    let mut p: Vec<f32> = (0..K * PAIRS).map(init).collect();
    let mut q = p.clone();
    for (name, f) in Kernels::mf_steps_f32() {
        g.bench_function(BenchmarkId::new(name, "k128"), |b| {
            b.iter(|| {
                for (pu, qi) in p.chunks_exact_mut(K).zip(q.chunks_exact_mut(K)) {
                    black_box(f(pu, qi, 3.5, 0.01, 0.05));
                }
            })
        });
    }
    let h = |v: &[f32]| -> Vec<u16> {
        v.iter().map(|x| ember_kernels::generic::mf::f32_to_f16(*x)).collect()
    };
    // One f16 row and one f32 row (`auto`'s start: the smaller table in f32).
    let mut hp = h(&p);
    for (name, f) in Kernels::mf_steps_mixed() {
        g.bench_function(BenchmarkId::new(name, "k128"), |b| {
            b.iter(|| {
                for (pu, qi) in hp.chunks_exact_mut(K).zip(q.chunks_exact_mut(K)) {
                    black_box(f(pu, qi, 3.5, 0.01, 0.05, None));
                }
            })
        });
    }
    let (mut p, mut q) = (h(&p), h(&q));
    let mut lost = 0u32;
    for (name, f) in Kernels::mf_steps_f16() {
        // Counting the lost updates (what the trainer does on one rating in 16) and not.
        g.bench_function(BenchmarkId::new(name, "k128-counted"), |b| {
            b.iter(|| {
                for (pu, qi) in p.chunks_exact_mut(K).zip(q.chunks_exact_mut(K)) {
                    black_box(f(pu, qi, 3.5, 0.01, 0.05, Some(&mut lost)));
                }
            })
        });
        g.bench_function(BenchmarkId::new(name, "k128"), |b| {
            b.iter(|| {
                for (pu, qi) in p.chunks_exact_mut(K).zip(q.chunks_exact_mut(K)) {
                    black_box(f(pu, qi, 3.5, 0.01, 0.05, None));
                }
            })
        });
    }
    g.finish();
}

fn seconds_per_call(run: &mut dyn FnMut()) -> f64 {
    // Calls per timing: enough for 0.1 s. Then the least of five timings (the peak is the best
    // of five as well; see `ember_benches::int8_peak_macs_per_s`).
    let mut timed = |iters: u32| {
        let t = Instant::now();
        for _ in 0..iters {
            run();
        }
        t.elapsed().as_secs_f64() / iters as f64
    };
    let mut iters = 1u32;
    loop {
        let s = timed(iters);
        if s * iters as f64 > 0.1 {
            return (0..4).map(|_| timed(iters)).fold(s, f64::min);
        }
        iters *= 2;
    }
}

/// GOP/s of each fast INT8 GEMM on one thread against the measured one-core INT8 peak.
/// The INT8 peaks, measured once for both summaries: one core (MACs/s, how), every core at
/// once (MACs/s), and the core count.
fn peaks() -> (f64, &'static str, f64, usize) {
    static PEAKS: std::sync::OnceLock<(f64, &'static str, f64, usize)> = std::sync::OnceLock::new();
    *PEAKS.get_or_init(|| {
        let (peak, how) = ember_benches::int8_peak_macs_per_s();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (peak, how, ember_benches::int8_peak_all_threads_macs_per_s(cores), cores)
    })
}

fn peak_summary(_: &mut Criterion) {
    let (peak, how, all, cores) = peaks();
    println!(
        "\nINT8 peak, one core: {:.1} GOP/s ({how}); machine, the same loop on all {cores} cores \
         at once: {:.1} GOP/s ({:.2} x one core)",
        2.0 * peak / 1e9,
        2.0 * all / 1e9,
        all / peak.max(f64::MIN_POSITIVE)
    );
    if let Some(exact) = ember_benches::int8_exact_avx2_macs_per_s() {
        println!(
            "exact AVX2 ceiling (vpmaddwd + vpaddd), one core: {:.1} GOP/s ({:.0}% of the peak)",
            2.0 * exact / 1e9,
            100.0 * exact / peak
        );
    }
    for (m, k, n, label) in GEMMS {
        let mut case = gemm_case(*m, *k, *n);
        let w = gemm4_case(*n, *k, 32);
        for (name, form, v) in Int4::variants() {
            let secs = seconds_per_call(&mut || v.run(&mut case, &w, 32));
            println!(
                "  {:<20} {label:<30} {:>8.1} GOP/s  {:.1} us ({form}, group 32)",
                name,
                2.0 * (m * k * n) as f64 / secs / 1e9,
                secs * 1e6
            );
        }
        for (name, f) in Kernels::i8_gemms().filter(|(n, _)| !n.ends_with("generic")) {
            let mut run = || case.run_i8(f);
            run();
            let secs = seconds_per_call(&mut run);
            let ops = 2.0 * (m * k * n) as f64 / secs;
            let share = if peak > 0.0 {
                format!("{:.0}% of one-core peak", 50.0 * ops / peak)
            } else {
                "peak unknown".into()
            };
            println!(
                "  {name:<20} {label:<30} {:>8.1} GOP/s  {:.1} us  {share}",
                ops / 1e9,
                secs * 1e6
            );
        }
    }
}

/// The large GEMM split by rows over every core (one scoped thread per core), against the
/// machine's measured peak (the peak loop on every core at once) and against the one-core peak
/// times the cores.
fn machine_summary(_: &mut Criterion) {
    let (peak, _, all, cores) = peaks();
    let (m, k, n) = (1024, 1536, 1024);
    let case = gemm_case(m, k, n);
    let lda = pack::k4(k);
    let Some((name, f)) = Kernels::i8_gemms().next() else { return };
    let mut out = vec![0f32; m * n];
    let rows = m.div_ceil(cores);
    let mut run = || {
        std::thread::scope(|s| {
            for (t, o) in out.chunks_mut(rows * n).enumerate() {
                let (case, r0) = (&case, t * rows);
                let mr = o.len() / n;
                s.spawn(move || {
                    f(
                        mr,
                        k,
                        n,
                        &case.a[r0 * lda..],
                        lda,
                        128,
                        &case.bp,
                        &case.sums,
                        &case.scale,
                        &case.bias,
                        Act::None,
                        o,
                        n,
                    )
                });
            }
        })
    };
    run();
    let secs = seconds_per_call(&mut run);
    let ops = 2.0 * (m * k * n) as f64 / secs;
    let share = |p: f64| if p > 0.0 { 50.0 * ops / p } else { 0.0 };
    println!(
        "  {name:<20} large 1024x1536x1024 on {cores} threads {:>8.1} GOP/s  {:.0}% of the \
         machine peak (all cores at once), {:.0}% of one-core peak x {cores}",
        ops / 1e9,
        share(all),
        share(peak * cores as f64)
    );
}

criterion_group!(
    benches,
    i8_gemm,
    i4_gemm,
    i4_gemm_rows,
    i4m_vs_i8,
    f32_gemm,
    attention_head,
    elementwise,
    mf_step,
    peak_summary,
    machine_summary
);
criterion_main!(benches);
