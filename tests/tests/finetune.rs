//! The matrix-factorization trainer: convergence toward the planted floor of a synthetic set in
//! every precision and thread count, the f16 → f32 switch, and bad input.

use ember_runtime::finetune::synth::{split, SynthSpec};
use ember_runtime::finetune::{
    check_ratings, Factors, MfError, Precision, Rating, Rows, TrainConfig, Trainer,
};

fn tiny() -> (Vec<Rating>, Vec<Rating>, SynthSpec) {
    let spec = SynthSpec::named("tiny").unwrap();
    let all = spec.generate();
    let (a, b) = split(&all, 0.1, 3);
    (a, b, spec)
}

fn train(p: Precision, threads: usize, epochs: usize) -> (Trainer, Vec<f64>) {
    let (tr, va, spec) = tiny();
    let cfg = TrainConfig { k: 16, threads, precision: p, lr: 0.02, ..Default::default() };
    let f = Factors::random(
        spec.users,
        spec.items,
        16,
        (3.5, -10.0, 20.0),
        0.1,
        1,
        p != Precision::Fp32,
    );
    let mut t = Trainer::new(f, &tr, &cfg).unwrap();
    let mut curve = vec![];
    for _ in 0..epochs {
        let st = t.run_epoch();
        assert_eq!(st.updates, tr.len() as u64);
        assert!(st.train_rmse.is_finite());
        let v = t.factors.rmse(&va, t.pool());
        t.observe(&st, Some(v));
        curve.push(v);
    }
    (t, curve)
}

#[test]
fn sgd_approaches_the_planted_floor_in_every_precision_and_thread_count() {
    // Baseline: predicting the mean scores about sqrt(noise² + signal² + biases²) ≈ 1.07.
    let (_, va, spec) = tiny();
    let mean = 3.5f64;
    let base =
        (va.iter().map(|r| (r.value as f64 - mean).powi(2)).sum::<f64>() / va.len() as f64).sqrt();
    for p in [Precision::Fp32, Precision::Fp16, Precision::Auto] {
        for threads in [1, 2, 3] {
            let (t, curve) = train(p, threads, 40);
            let last = *curve.last().unwrap();
            assert!(last < base - 0.12, "{p:?} x{threads}: {last} vs mean-only {base}");
            assert!(
                last < spec.noise as f64 + 0.15,
                "{p:?} x{threads}: {last} vs floor {}",
                spec.noise
            );
            assert_eq!(
                t.factors.is_f16(),
                p == Precision::Fp16 || (p == Precision::Auto && t.switched.is_none())
            );
        }
    }
}

#[test]
fn sampled_lost_count_estimates_the_full_count_and_changes_no_bits() {
    let (tr, _, spec) = tiny();
    let run = |every: usize| {
        let cfg = TrainConfig {
            k: 8,
            threads: 2,
            precision: Precision::Fp16,
            lr: 0.002,
            lost_every: every,
            ..Default::default()
        };
        let f = Factors::random(spec.users, spec.items, 8, (3.5, 0.0, 9.0), 0.1, 1, true);
        let mut t = Trainer::new(f, &tr, &cfg).unwrap();
        let st = (0..3).map(|_| t.run_epoch()).last().unwrap();
        (st, t.factors.p.to_f32(), t.factors.q.to_f32())
    };
    let (all, p1, q1) = run(1);
    let (some, p16, q16) = run(16);
    assert_eq!((p1, q1), (p16, q16), "counting changes no update");
    assert_eq!(all.sampled, all.updates);
    assert_eq!(some.sampled, all.updates.div_ceil(16));
    assert!(some.lost < all.lost && some.lost > 0, "{} of {}", some.lost, all.lost);
    assert!(all.lost_share > 0.01, "small steps lose updates: {}", all.lost_share);
    let rel = (some.lost_share - all.lost_share).abs() / all.lost_share;
    assert!(rel < 0.1, "estimate {} vs {}", some.lost_share, all.lost_share);
}

#[test]
fn auto_switches_once_names_why_and_keeps_the_values() {
    let (tr, _, spec) = tiny();
    // A zero limit forces the switch after the first epoch (some update is always lost).
    let cfg = TrainConfig {
        k: 8,
        threads: 2,
        precision: Precision::Auto,
        lost_limit: 0.0,
        ..Default::default()
    };
    let f = Factors::random(spec.users, spec.items, 8, (3.5, 0.0, 9.0), 0.1, 1, true);
    let mut t = Trainer::new(f, &tr, &cfg).unwrap();
    let st = t.run_epoch();
    assert!(st.f16 && st.lost > 0 && st.lost_share > 0.0);
    let before = match &t.factors.p {
        Rows::F16(v) => {
            v.iter().map(|h| ember_kernels::generic::f16_to_f32(*h)).collect::<Vec<f32>>()
        }
        _ => panic!("auto starts in f16"),
    };
    let s = t.observe(&st, None).expect("switch");
    assert_eq!(s.epoch, 1);
    assert!(s.reason.contains("lost in f16"), "{}", s.reason);
    match &t.factors.p {
        Rows::F32(v) => assert_eq!(&v[..], &before[..]),
        _ => panic!("rows are f32 after the switch"),
    }
    assert!(!t.factors.is_f16());
    let st2 = t.run_epoch();
    assert!(!st2.f16 && st2.lost == 0);
    assert!(t.observe(&st2, None).is_none(), "switches once");

    // The plateau rule: a monitored RMSE that stops improving.
    let cfg = TrainConfig {
        k: 8,
        threads: 1,
        precision: Precision::Auto,
        lost_limit: 1.0,
        plateau: 0.01,
        ..Default::default()
    };
    let f = Factors::random(spec.users, spec.items, 8, (3.5, 0.0, 9.0), 0.1, 1, true);
    let mut t = Trainer::new(f, &tr, &cfg).unwrap();
    let st = t.run_epoch();
    assert!(t.observe(&st, Some(0.9)).is_none());
    assert!(t.observe(&st, Some(0.85)).is_none());
    assert!(t.observe(&st, Some(0.80)).is_none(), "6% better than before the last two");
    assert!(t.observe(&st, Some(0.81)).is_none(), "the best of the last two still improves");
    let s = t.observe(&st, Some(0.799)).expect("plateau");
    assert!(s.reason.contains("validation RMSE"), "{}", s.reason);

    // fp16 and fp32 never switch.
    for p in [Precision::Fp16, Precision::Fp32] {
        let cfg =
            TrainConfig { k: 8, threads: 1, precision: p, lost_limit: 0.0, ..Default::default() };
        let f = Factors::random(
            spec.users,
            spec.items,
            8,
            (3.5, 0.0, 9.0),
            0.1,
            1,
            p == Precision::Fp16,
        );
        let mut t = Trainer::new(f, &tr, &cfg).unwrap();
        let st = t.run_epoch();
        assert!(t.observe(&st, Some(1.0)).is_none());
    }
}

#[test]
fn bad_ratings_and_settings_are_named() {
    let ok = Rating { user: 1, item: 2, value: 4.0 };
    assert_eq!(check_ratings(&[ok], 2, 3), Ok(()));
    let e = check_ratings(&[ok, Rating { user: 5, ..ok }], 2, 3).unwrap_err();
    assert_eq!(e, MfError::Id { index: 1, what: "user", id: 5, rows: 2 });
    assert!(e.to_string().contains("rating 1: user 5 is outside the table of 2 rows"), "{e}");
    let e = check_ratings(&[Rating { item: 3, ..ok }], 2, 3).unwrap_err();
    assert!(e.to_string().contains("item 3"), "{e}");
    let e = check_ratings(&[Rating { value: f32::NAN, ..ok }], 2, 3).unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
    let f = Factors::random(2, 3, 4, (3.0, 1.0, 5.0), 0.1, 1, false);
    let cfg = TrainConfig { k: 4, threads: 1, ..Default::default() };
    assert!(Trainer::new(f.clone(), &[], &cfg).is_err());
    assert!(Trainer::new(f.clone(), &[ok], &TrainConfig { k: 5, ..cfg.clone() }).is_err());
    assert!(Trainer::new(f, &[Rating { user: 2, ..ok }], &cfg).is_err());
}

#[test]
fn predictions_are_clamped_and_match_the_formula() {
    let mut f = Factors::random(2, 2, 3, (3.0, 1.0, 5.0), 0.5, 9, false);
    f.bu = vec![0.25, -0.5];
    f.bi = vec![0.125, 10.0];
    let (mut a, mut b) = (vec![0f32; 3], vec![0f32; 3]);
    let (mut p, mut q) = (vec![0f32; 3], vec![0f32; 3]);
    f.p.row(0, &mut p);
    f.q.row(0, &mut q);
    let want = 3.0 + 0.25 + 0.125 + p.iter().zip(&q).map(|(x, y)| x * y).sum::<f32>();
    assert!((f.predict_with(0, 0, &mut a, &mut b) - want.clamp(1.0, 5.0)).abs() < 1e-6);
    assert_eq!(f.predict_with(0, 1, &mut a, &mut b), 5.0, "clamped to the top of the range");
}

#[test]
fn user_fit_recovers_a_planted_user_and_names_bad_input() {
    use ember_runtime::finetune::UserFit;
    for (k, n, f16) in
        [(1usize, 1usize, false), (17, 40, false), (128, 500, true), (33, 300, false)]
    {
        let mut f = Factors::random(3, 700, k, (3.5, -100.0, 100.0), 0.3, k as u64, f16);
        for (j, b) in f.bi.iter_mut().enumerate() {
            *b = (j % 7) as f32 * 0.1 - 0.3;
        }
        let truth: Vec<f32> = (0..k).map(|j| ((j * 37 % 11) as f32 - 5.0) * 0.1).collect();
        let bias = 0.4f32;
        let items: Vec<u32> = (0..n as u32).map(|j| j * 13 % 700).collect();
        let (mut row, mut qr) = (vec![0f32; k], vec![0f32; k]);
        let values: Vec<f32> = items
            .iter()
            .map(|&i| {
                f.q.row(i as usize, &mut qr);
                f.mean
                    + bias
                    + f.bi[i as usize]
                    + truth.iter().zip(&qr).map(|(a, b)| a * b).sum::<f32>()
            })
            .collect();
        let mut uf = UserFit::new(k, 500);
        let b = uf.fit(&f, &items, &values, 1e-7, 1e-7, &mut row).unwrap();
        if n > k {
            // Noise-free, well-determined: the plant comes back.
            assert!((b - bias).abs() < 2e-3, "k={k}: bias {b}");
            for (g, t) in row.iter().zip(&truth) {
                assert!((g - t).abs() < 2e-3, "k={k}: {g} vs {t}");
            }
        }
        // Heavier regularization shrinks toward zero but still fits.
        let b2 = uf.fit(&f, &items, &values, 0.5, 0.5, &mut row).unwrap();
        assert!(b2.abs() < bias.abs() + 1e-3 && row.iter().all(|v| v.is_finite()));
    }
    let f = Factors::random(3, 10, 4, (3.5, 0.0, 5.0), 0.3, 1, false);
    let mut uf = UserFit::new(4, 8);
    let mut row = vec![0f32; 4];
    assert!(uf
        .fit(&f, &[], &[], 0.1, 0.1, &mut row)
        .unwrap_err()
        .to_string()
        .contains("0 ratings"));
    assert!(uf
        .fit(&f, &[1; 9], &[3.0; 9], 0.1, 0.1, &mut row)
        .unwrap_err()
        .to_string()
        .contains("9 ratings"));
    assert!(uf
        .fit(&f, &[10], &[3.0], 0.1, 0.1, &mut row)
        .unwrap_err()
        .to_string()
        .contains("item 10"));
    assert!(uf
        .fit(&f, &[1], &[f32::NAN], 0.1, 0.1, &mut row)
        .unwrap_err()
        .to_string()
        .contains("not finite"));
    assert!(uf.fit(&f, &[1], &[3.0], 0.1, 0.1, &mut row[..3]).is_err());
}

#[test]
fn prefetching_rows_ahead_changes_no_bit() {
    // The prefetch distance is a hint to the memory system: tables, errors and lost-update
    // counts must come out the same for every distance, in both storages.
    let (tr, _, spec) = tiny();
    for f16 in [false, true] {
        let run = |ahead: usize| {
            let cfg = TrainConfig {
                k: 24,
                threads: 2,
                precision: if f16 { Precision::Fp16 } else { Precision::Fp32 },
                prefetch: ahead,
                ..Default::default()
            };
            let f = Factors::random(spec.users, spec.items, 24, (3.5, -10.0, 20.0), 0.1, 5, f16);
            let mut t = Trainer::new(f, &tr, &cfg).unwrap();
            let stats: Vec<(u64, u64)> = (0..3)
                .map(|_| {
                    let st = t.run_epoch();
                    (st.train_rmse.to_bits(), st.lost)
                })
                .collect();
            (t.factors.p.to_f32(), t.factors.q.to_f32(), t.factors.bu.clone(), stats)
        };
        let base = run(0);
        for ahead in [1, 8, 1000] {
            assert!(run(ahead) == base, "prefetch {ahead} changed the result (f16 {f16})");
        }
    }
}

#[test]
fn rmse_through_the_kernels_has_the_bits_of_the_formula() {
    // `Factors::rmse` predicts with the SGD kernels (a step of learning rate 0); it must give
    // exactly what `predict_with` (the generic formula) gives, chunked as `rmse` chunks.
    let (_, va, spec) = tiny();
    // f16: 0 none, 1 both tables, 2 users only, 3 items only.
    for (k, f16) in [(16, 0), (16, 1), (37, 0), (37, 1), (16, 2), (37, 3), (128, 2), (128, 3)] {
        let mut f = Factors::random(spec.users, spec.items, k, (3.5, 1.0, 5.0), 0.3, 9, f16 > 0);
        match f16 {
            2 => f.q = Rows::from_f32(f.q.to_f32(), false),
            3 => f.p = Rows::from_f32(f.p.to_f32(), false),
            _ => {}
        }
        let pool = ember_runtime::Serial;
        let (tasks, n) = (4, va.len());
        let chunk = n.div_ceil(tasks);
        let (mut a, mut b) = (vec![0f32; k], vec![0f32; k]);
        let mut sum = 0f64;
        for t in 0..tasks {
            let mut s = 0f64;
            for r in va.iter().skip(t * chunk).take(chunk) {
                let e = r.value - f.predict_with(r.user as usize, r.item as usize, &mut a, &mut b);
                s += (e as f64) * (e as f64);
            }
            sum += s;
        }
        let want = (sum / n as f64).sqrt();
        assert_eq!(f.rmse(&va, &pool).to_bits(), want.to_bits(), "k {k} f16 {f16}");
    }
}

#[test]
fn auto_keeps_the_smaller_table_in_f32_either_way_round() {
    let (tr, _, spec) = tiny();
    let cfg = TrainConfig {
        k: 24,
        threads: 1,
        precision: Precision::Auto,
        lost_limit: 2.0,
        plateau: -1.0,
        lost_every: 1,
        ..Default::default()
    };
    let f = Factors::random(spec.users, spec.items, 24, (3.5, -10.0, 20.0), 0.1, 7, true);
    let mut fs = f.clone();
    (fs.users, fs.items) = (f.items, f.users);
    (fs.p, fs.q) = (f.q.clone(), f.p.clone());
    (fs.bu, fs.bi) = (f.bi.clone(), f.bu.clone());
    // Tables that do not match their sizes are refused (the trainer writes through raw rows).
    let mut bad = fs.clone();
    bad.bu.pop();
    assert!(matches!(Trainer::new(bad, &tr, &cfg), Err(MfError::Config(_))));
    let run = |f: Factors, ratings: &[Rating]| {
        let (p0, q0) = (f.p.to_f32(), f.q.to_f32());
        let mut t = Trainer::new(f, ratings, &cfg).unwrap();
        // The smaller table was widened from its f16 values, the larger one left as it was.
        assert_eq!((t.factors.p.to_f32(), t.factors.q.to_f32()), (p0, q0));
        let st = t.run_epoch();
        assert!(st.f16 && st.lost > 0, "the f16 table loses some updates");
        // Only the f16 table's k elements per rating can be lost.
        assert!(st.lost <= 24 * st.sampled, "{} lost of {}", st.lost, 24 * st.sampled);
        (t, st)
    };
    let (t, st) = run(f, &tr);
    let want =
        if spec.users < spec.items { "f32 users, f16 items" } else { "f16 users, f32 items" };
    assert_eq!(st.storage, want);
    // The same ratings with users and items swapped: the other table is the f32 one, the other
    // arm of the trainer runs, and the tables come out the same (to the rounding of the bias
    // sum, which adds the two biases in the other order).
    let swapped: Vec<Rating> =
        tr.iter().map(|r| Rating { user: r.item, item: r.user, value: r.value }).collect();
    let (ts, sts) = run(fs, &swapped);
    assert_ne!(sts.storage, st.storage);
    for (a, b) in [
        (t.factors.p.to_f32(), ts.factors.q.to_f32()),
        (t.factors.q.to_f32(), ts.factors.p.to_f32()),
    ] {
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let mean =
            a.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() / a.len() as f64;
        assert!(worst < 2e-2 && mean < 1e-4, "worst {worst}, mean {mean}");
    }
    assert!((st.train_rmse - sts.train_rmse).abs() < 1e-4);
}
