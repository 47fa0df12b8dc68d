//! `ember finetune`'s trainer beside LIBMF (the `libmf` crate, which bundles LIBMF's C++) on the
//! same split, k, epochs and threads, printing test RMSE, training seconds and the ratios.
//!
//! cargo bench -p ember-benches --bench finetune -- [--data ml-latest-small | --synthetic NAME]
//!     [--k 128] [--epochs 50] [--threads 2] [--repeat 3] [--precisions fp32,fp16,auto]
//!     [--lr 0.01] [--reg 0.05] [--no-libmf] [--curve]
//!
//! Ember's seconds are the trainer's set-up (shuffle, block layout) plus its epochs; the
//! validation RMSE after each epoch (for the curve, the time to target, and `auto`'s switch
//! decision) is timed apart and reported as `val s`. LIBMF's seconds are its `fit`.
//! Time to target: the training seconds (set-up included) until the validation RMSE first comes
//! within 0.002 of fp32's best validation RMSE (the median over repeats of fp32's best; with
//! little regularization fp32 overfits, and its best epoch is the model one keeps), the median
//! over repeats, and its ratio to fp32's (median of the per-repeat ratios). Synthetic sets
//! (`ml-10m`, `netflix`, `tiny`) have a known floor (the noise).

use ember_runtime::finetune::synth::{split, SynthSpec};
use ember_runtime::finetune::{
    rating_stats, Factors, Precision, Rating, TrainConfig, Trainer, UserFit,
};
use std::collections::HashMap;
use std::time::Instant;

struct Opts {
    data: String,
    synthetic: Option<String>,
    k: usize,
    epochs: usize,
    threads: usize,
    repeat: usize,
    precisions: Vec<Precision>,
    lr: f32,
    reg: f32,
    libmf: bool,
    curve: bool,
    prefetch: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        data: concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/ml-latest-small/ratings.csv")
            .into(),
        synthetic: None,
        k: 128,
        epochs: 50,
        threads: 2,
        repeat: 3,
        precisions: vec![Precision::Fp32, Precision::Fp16, Precision::Auto],
        lr: 0.01,
        reg: 0.05,
        libmf: true,
        curve: false,
        prefetch: TrainConfig::default().prefetch,
    };
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--data" => o.data = val(),
            "--synthetic" => o.synthetic = Some(val()),
            "--k" => o.k = val().parse().expect("--k"),
            "--epochs" => o.epochs = val().parse().expect("--epochs"),
            "--threads" => o.threads = val().parse().expect("--threads"),
            "--repeat" => o.repeat = val().parse().expect("--repeat"),
            "--lr" => o.lr = val().parse().expect("--lr"),
            "--reg" => o.reg = val().parse().expect("--reg"),
            "--precisions" => {
                o.precisions =
                    val().split(',').map(|p| Precision::parse(p).expect("fp32|fp16|auto")).collect()
            }
            "--no-libmf" => o.libmf = false,
            "--curve" => o.curve = true,
            "--prefetch" => o.prefetch = val().parse().expect("--prefetch"),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// MovieLens CSV → dense ratings (ids in order of appearance).
fn read_csv(path: &str) -> Vec<Rating> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut um, mut im) = (HashMap::new(), HashMap::new());
    let mut out = vec![];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let n = um.len() as u32;
        let u = *um.entry(f[0].to_string()).or_insert(n);
        let n = im.len() as u32;
        let i = *im.entry(f[1].to_string()).or_insert(n);
        out.push(Rating { user: u, item: i, value: f[2].parse().expect("rating") });
    }
    out
}

struct Run {
    rmse: f64,
    seconds: f64,
    val_seconds: f64,
    curve: Vec<(f64, f64)>,
    lost: Vec<f64>,
    switch: Option<usize>,
}

fn ember(o: &Opts, train: &[Rating], test: &[Rating], p: Precision, dims: (usize, usize)) -> Run {
    let stats = rating_stats(train);
    let cfg = TrainConfig {
        k: o.k,
        lr: o.lr,
        reg: o.reg,
        threads: o.threads,
        precision: p,
        prefetch: o.prefetch,
        ..Default::default()
    };
    let t0 = Instant::now();
    let f =
        Factors::random(dims.0, dims.1, o.k, stats, cfg.init_std, cfg.seed, p != Precision::Fp32);
    let mut tr = Trainer::new(f, train, &cfg).expect("trainer");
    let mut seconds = t0.elapsed().as_secs_f64();
    let (mut val_seconds, mut curve, mut rmse, mut lost) = (0.0, vec![], 0.0, vec![]);
    for _ in 0..o.epochs {
        let t = Instant::now();
        let st = tr.run_epoch();
        seconds += t.elapsed().as_secs_f64();
        let tv = Instant::now();
        rmse = tr.factors.rmse(test, tr.pool());
        val_seconds += tv.elapsed().as_secs_f64();
        let t = Instant::now();
        tr.observe(&st, Some(rmse));
        seconds += t.elapsed().as_secs_f64();
        curve.push((seconds, rmse));
        lost.push(st.lost_share);
    }
    Run { rmse, seconds, val_seconds, curve, lost, switch: tr.switched.map(|s| s.epoch) }
}

#[cfg(target_arch = "x86_64")]
fn libmf(o: &Opts, train: &[Rating], test: &[Rating]) -> (f64, f64) {
    let (mut a, mut b) = (libmf::Matrix::new(), libmf::Matrix::new());
    for r in train {
        a.push(r.user as i32, r.item as i32, r.value);
    }
    for r in test {
        b.push(r.user as i32, r.item as i32, r.value);
    }
    let t = Instant::now();
    let m = libmf::Model::params()
        .factors(o.k as i32)
        .iterations(o.epochs as i32)
        .threads(o.threads as i32)
        .quiet(true)
        .fit(&a)
        .expect("libmf fit");
    let s = t.elapsed().as_secs_f64();
    (m.rmse(&b).expect("libmf rmse"), s)
}

#[cfg(not(target_arch = "x86_64"))]
fn libmf(_: &Opts, _: &[Rating], _: &[Rating]) -> (f64, f64) {
    (f64::NAN, f64::NAN)
}

/// Memory bandwidth: `threads` threads each stream a 256 MiB buffer into another (read + write
/// bytes per second, best of 3), the figure the trainer's bytes per second are set against.
fn bandwidth(threads: usize) -> f64 {
    const N: usize = 32 << 20; // f64s: 256 MiB per buffer
    let mut bufs: Vec<(Vec<f64>, Vec<f64>)> =
        (0..threads).map(|_| (vec![1.0; N], vec![0.0; N])).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (a, b) in bufs.iter_mut() {
                s.spawn(move || b.copy_from_slice(a));
            }
        });
        best = best.max((threads * N * 16) as f64 / t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&bufs);
    best
}

/// Bytes an update moves: both rows read and written (`f16_tables` of them 2 bytes a value,
/// the others 4), the rating record, both biases.
fn bytes_per_update(k: usize, f16_tables: usize) -> f64 {
    (2 * k * (2 * f16_tables + 4 * (2 - f16_tables)) + 12 + 16) as f64
}

/// The user-only fast path: one user with 500 ratings (or all the user has) fitted against
/// frozen item rows, median of 200 fits.
fn user_fit_timing(o: &Opts, train: &[Rating], dims: (usize, usize)) {
    let f = Factors::random(dims.0, dims.1, o.k, (3.5, 0.5, 5.0), 0.1, 1, false);
    let n = 500.min(train.len());
    let items: Vec<u32> = train[..n].iter().map(|r| r.item).collect();
    let values: Vec<f32> = train[..n].iter().map(|r| r.value).collect();
    let mut uf = UserFit::new(o.k, 500);
    let mut row = vec![0f32; o.k];
    let t: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            uf.fit(&f, &items, &values, o.reg, 0.01, &mut row).expect("user fit");
            t.elapsed().as_secs_f64()
        })
        .collect();
    println!("user-only fit: {n} ratings, k {}: median {:.0} us", o.k, median(t) * 1e6);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = opts();
    let (all, name, floor) = match &o.synthetic {
        Some(s) => {
            let spec = SynthSpec::named(s).unwrap_or_else(|| panic!("unknown synthetic set {s}"));
            let t = Instant::now();
            let r = spec.generate();
            eprintln!("generated {} ratings in {:.1} s", r.len(), t.elapsed().as_secs_f64());
            (r, format!("synthetic {s}"), Some(spec.noise))
        }
        None => (read_csv(&o.data), o.data.clone(), None),
    };
    let users = all.iter().map(|r| r.user).max().map_or(0, |m| m as usize + 1);
    let items = all.iter().map(|r| r.item).max().map_or(0, |m| m as usize + 1);
    let (train, test) = split(&all, 0.1, 7);
    println!(
        "{name}: {} train / {} test ratings, {users} users x {items} items, k {}, {} epochs, {} threads, lr {} reg {}{}",
        train.len(), test.len(), o.k, o.epochs, o.threads, o.lr, o.reg,
        floor.map(|f| format!(", floor RMSE {f}")).unwrap_or_default()
    );
    // Interleaved: each repeat runs LIBMF and then every precision, so that the VM's load drifts
    // over all of them alike; times are medians, ratios the median of per-repeat ratios.
    let with_lib = o.libmf && cfg!(target_arch = "x86_64");
    let mut lib_runs = vec![];
    let mut all_runs: Vec<Vec<Run>> = o.precisions.iter().map(|_| vec![]).collect();
    for _ in 0..o.repeat {
        if with_lib {
            lib_runs.push(libmf(&o, &train, &test));
        }
        for (n, &p) in o.precisions.iter().enumerate() {
            all_runs[n].push(ember(&o, &train, &test, p, (users, items)));
        }
    }
    let lib = (!lib_runs.is_empty()).then(|| {
        let (r, s) = (lib_runs[0].0, median(lib_runs.iter().map(|x| x.1).collect()));
        println!("{:<8} test RMSE {r:.4}  {s:>8.3} s  (median of {})", "LIBMF", o.repeat);
        (r, s)
    });
    user_fit_timing(&o, &train, (users, items));
    let bw = bandwidth(o.threads);
    println!("memory bandwidth (copy, {} threads): {:.1} GB/s", o.threads, bw / 1e9);
    let best = |r: &Run| r.curve.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    let target = o.precisions.iter().position(|p| *p == Precision::Fp32).map(|n| {
        let b = median(all_runs[n].iter().map(best).collect());
        println!("target: fp32's best validation RMSE {b:.4} + 0.002");
        b + 0.002
    });
    let reach =
        |r: &Run| target.and_then(|t| r.curve.iter().find(|(_, v)| *v <= t).map(|(s, _)| *s));
    let fp32_reach: Option<Vec<Option<f64>>> = o
        .precisions
        .iter()
        .position(|p| *p == Precision::Fp32)
        .map(|n| all_runs[n].iter().map(reach).collect());
    for (&p, runs) in o.precisions.iter().zip(&all_runs) {
        let s = median(runs.iter().map(|r| r.seconds).collect());
        let r = &runs[0];
        let reached: Vec<f64> = runs.iter().filter_map(reach).collect();
        let ttt = (reached.len() == runs.len()).then(|| median(reached.clone()));
        let ttt_ratio = fp32_reach.as_ref().and_then(|f| {
            let v: Option<Vec<f64>> =
                runs.iter().zip(f).map(|(r, f)| Some(reach(r)? / (*f)?)).collect();
            v.map(median)
        });
        let s_ratio = o.precisions.iter().position(|p| *p == Precision::Fp32).map(|n| {
            median(runs.iter().zip(&all_runs[n]).map(|(r, f)| r.seconds / f.seconds).collect())
        });
        let upd = (train.len() * o.epochs) as f64 / s;
        // Auto runs its f16 epochs with the smaller table in f32.
        let (f16_epochs, f16_tables) = match p {
            Precision::Fp16 => (o.epochs, 2),
            Precision::Fp32 => (0, 0),
            Precision::Auto => (r.switch.unwrap_or(o.epochs), 1),
        };
        let bytes = train.len() as f64
            * (f16_epochs as f64 * bytes_per_update(o.k, f16_tables)
                + (o.epochs - f16_epochs) as f64 * bytes_per_update(o.k, 0));
        let mut line = format!(
            "{:<8} test RMSE {:.4}  {s:>8.3} s  {:.1} M updates/s  {:.1} GB/s ({:.0}% of copy)  val s {:.3}",
            format!("ember {}", p.name()),
            r.rmse,
            upd / 1e6,
            bytes / s / 1e9,
            bytes / s / bw * 100.0,
            r.val_seconds
        );
        if let Some(x) = s_ratio.filter(|_| p != Precision::Fp32) {
            line += &format!("  total x{x:.2} of fp32");
        }
        match (ttt, ttt_ratio) {
            (Some(t), Some(x)) => line += &format!("  to target: {t:.3} s (x{x:.2} of fp32)"),
            (Some(t), None) => line += &format!("  to target: {t:.3} s"),
            _ if target.is_some() => line += "  to target: not reached",
            _ => {}
        }
        if let Some(e) = r.switch {
            line += &format!("  switched after epoch {e}");
        }
        if let Some((lr, ls)) = lib {
            let _ = ls;
            let ratio = median(runs.iter().zip(&lib_runs).map(|(r, l)| r.seconds / l.1).collect());
            line += &format!("  | vs LIBMF: RMSE {:+.4}, time x{ratio:.2}", r.rmse - lr);
        }
        println!("{line}");
        if o.curve {
            for (e, ((s, v), l)) in r.curve.iter().zip(&r.lost).enumerate() {
                println!("    epoch {:>3} {s:>8.3} s  RMSE {v:.4}  lost {:.2}%", e + 1, l * 100.0);
            }
        }
    }
}
