//! `ember finetune`: biased matrix factorization by SGD on user and item embedding tables
//! (`ember_runtime::finetune`), from ratings in CSV or npz, with a validation RMSE per epoch and
//! the f16/f32 precision switch. Writes the tables as `.npz` (f32, the training state) or as a
//! servable `.ember` (row-wise INT8 tables, inputs `user`/`item` as dense rows, output `rating`).

use crate::progress::Progress;
use crate::ratings::{self, IdMap, RawRatings};
use anyhow::{bail, Context, Result};
use clap::Parser;
use ember_quantize::HostTensor;
use ember_runtime::finetune::{
    rating_stats, Factors, Precision, Rating, Rows, TrainConfig, Trainer,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Fine-tune user and item embedding tables (biased matrix factorization, SGD).
#[derive(Parser, Debug)]
pub struct Args {
    /// Training ratings: CSV `user,item,rating[,timestamp]` (header optional) or .npz with
    /// arrays user, item, rating.
    #[arg(long)]
    pub ratings: PathBuf,
    /// Validation ratings (same formats); RMSE is reported after every epoch.
    #[arg(long)]
    pub validate: Option<PathBuf>,
    /// Without --validate: hold out this random share of --ratings for validation (seeded).
    #[arg(long)]
    pub holdout: Option<f64>,
    /// Factors per row (with --init).
    #[arg(long, default_value_t = 64)]
    pub k: usize,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    /// L2 regularization of the factor rows.
    #[arg(long, default_value_t = 0.05)]
    pub reg: f32,
    /// L2 regularization of the biases.
    #[arg(long, default_value_t = 0.01)]
    pub reg_bias: f32,
    /// Threads in all (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Row storage while training: fp32, fp16, or auto (f16 first, f32 once updates are lost).
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Start from these tables (.npz written by `finetune -o X.npz`).
    #[arg(long, conflicts_with = "init")]
    pub model: Option<PathBuf>,
    /// Start from random tables sized by the ids in the ratings.
    #[arg(long)]
    pub init: bool,
    /// Output: .npz (f32 tables, id maps; a --model for later runs) or .ember (servable,
    /// row-wise INT8 tables, inputs `user` and `item` as dense rows, output `rating`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Skip bad lines and unknown ids (counted in the report) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
}

/// Tables plus their id maps.
struct Tables {
    factors: Factors,
    users: IdMap,
    items: IdMap,
}

fn load_npz(path: &Path, f16: bool) -> Result<Tables> {
    let m = ember_quantize::npz::read_npz(path)?;
    let get = |k: &str| m.get(k).with_context(|| format!("{}: no array '{k}'", path.display()));
    let (p, q) = (get("user_factors")?, get("item_factors")?);
    if p.shape.len() != 2 || q.shape.len() != 2 || p.shape[1] != q.shape[1] || p.shape[1] == 0 {
        bail!(
            "{}: user_factors {:?} and item_factors {:?} must be [rows, k] with one k",
            path.display(),
            p.shape,
            q.shape
        );
    }
    let (users, items, k) = (p.shape[0], q.shape[0], p.shape[1]);
    let stats = get("stats")?.to_f32_vec();
    if stats.len() != 3 {
        bail!("{}: stats must hold mean, min and max rating", path.display());
    }
    let (bu, bi) = (get("user_bias")?.to_f32_vec(), get("item_bias")?.to_f32_vec());
    let (uid, iid) = (get("user_ids")?.to_i64_vec(), get("item_ids")?.to_i64_vec());
    if bu.len() != users || bi.len() != items || uid.len() != users || iid.len() != items {
        bail!("{}: biases and id lists must have one entry per row", path.display());
    }
    let factors = Factors {
        k,
        users,
        items,
        mean: stats[0],
        lo: stats[1],
        hi: stats[2],
        p: Rows::from_f32(p.to_f32_vec(), f16),
        q: Rows::from_f32(q.to_f32_vec(), f16),
        bu,
        bi,
    };
    Ok(Tables { factors, users: IdMap::from_ids(uid), items: IdMap::from_ids(iid) })
}

fn save_npz(t: &Tables, path: &Path) -> Result<()> {
    let f = &t.factors;
    let mut a = BTreeMap::new();
    a.insert("user_factors".into(), HostTensor::f32(vec![f.users, f.k], f.p.to_f32()));
    a.insert("item_factors".into(), HostTensor::f32(vec![f.items, f.k], f.q.to_f32()));
    a.insert("user_bias".into(), HostTensor::f32(vec![f.users], f.bu.clone()));
    a.insert("item_bias".into(), HostTensor::f32(vec![f.items], f.bi.clone()));
    a.insert("stats".into(), HostTensor::f32(vec![3], vec![f.mean, f.lo, f.hi]));
    a.insert("user_ids".into(), HostTensor::i64(vec![f.users], t.users.ids.clone()));
    a.insert("item_ids".into(), HostTensor::i64(vec![f.items], t.items.ids.clone()));
    Ok(ember_quantize::npz::write_npz(path, &a)?)
}

fn save_ember(t: &Tables, train: &[Rating], path: &Path) -> Result<()> {
    let f = &t.factors;
    let onnx = crate::mf_model::onnx_bytes(
        f.k,
        &f.p.to_f32(),
        &f.q.to_f32(),
        &f.bu,
        &f.bi,
        (f.mean, f.lo, f.hi),
    );
    let n = train.len().min(256);
    let step = (train.len() / n.max(1)).max(1);
    let pick: Vec<&Rating> = train.iter().step_by(step).take(n).collect();
    let mut calib = BTreeMap::new();
    calib.insert(
        "user".to_string(),
        HostTensor::i64(vec![pick.len()], pick.iter().map(|r| r.user as i64).collect()),
    );
    calib.insert(
        "item".to_string(),
        HostTensor::i64(vec![pick.len()], pick.iter().map(|r| r.item as i64).collect()),
    );
    let opts = ember_quantize::Options {
        bits: 8,
        batches: vec![1, 64],
        source_name: "ember finetune (matrix factorization)".into(),
        extra_tensors: vec![
            ("user_ids".into(), HostTensor::i64(vec![f.users], t.users.ids.clone())),
            ("item_ids".into(), HostTensor::i64(vec![f.items], t.items.ids.clone())),
        ],
        ..Default::default()
    };
    let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {})?;
    Ok(ember_quantize::atomic::write(path, &bytes)?)
}

pub fn run(a: Args) -> Result<()> {
    let precision = Precision::parse(&a.precision)
        .with_context(|| format!("--precision {}: expected fp32, fp16 or auto", a.precision))?;
    if a.k == 0 || a.epochs == 0 {
        bail!("--k and --epochs must be at least 1");
    }
    let sane = a.lr > 0.0 && a.lr.is_finite() && a.reg >= 0.0 && a.reg_bias >= 0.0;
    if !sane {
        bail!("--lr must be positive, --reg and --reg-bias non-negative");
    }
    if a.model.is_none() && !a.init {
        bail!("say where the tables start: --model TABLES.npz or --init");
    }
    let ext = a.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "npz" && ext != "ember" {
        bail!("-o {}: the output must end in .npz or .ember", a.output.display());
    }
    let t_load = Instant::now();
    let train_raw = ratings::read(&a.ratings, a.skip_bad)?;
    let (train_raw, val_raw): (RawRatings, Option<RawRatings>) = match (&a.validate, a.holdout) {
        (Some(v), _) => (train_raw, Some(ratings::read(v, a.skip_bad)?)),
        (None, Some(h)) if (0.0..1.0).contains(&h) => {
            let (t, v) = train_raw.split(h, a.seed);
            (t, Some(v))
        }
        (None, Some(h)) => bail!("--holdout {h}: expected a share in [0, 1)"),
        (None, None) => (train_raw, None),
    };
    if train_raw.is_empty() {
        bail!("{}: no ratings", a.ratings.display());
    }
    let f16_start = precision != Precision::Fp32;
    let (mut users, mut items, loaded) = match &a.model {
        Some(m) => {
            let t = load_npz(m, f16_start)?;
            (t.users, t.items, Some(t.factors))
        }
        None => (IdMap::default(), IdMap::default(), None),
    };
    let grow = loaded.is_none();
    let what = a.ratings.display().to_string();
    let (train, skipped_train) =
        ratings::to_rows(&train_raw, &mut users, &mut items, grow, a.skip_bad, &what)?;
    let vwhat = a.validate.as_ref().unwrap_or(&a.ratings).display().to_string();
    let (val, skipped_val) = match &val_raw {
        Some(v) => ratings::to_rows(v, &mut users, &mut items, grow, a.skip_bad, &vwhat)?,
        None => (vec![], 0),
    };
    let mut cfg = TrainConfig {
        k: a.k,
        lr: a.lr,
        reg: a.reg,
        reg_bias: a.reg_bias,
        threads: a.threads,
        precision,
        seed: a.seed,
        ..Default::default()
    };
    let factors = loaded.unwrap_or_else(|| {
        let st = rating_stats(&train);
        Factors::random(users.len(), items.len(), a.k, st, cfg.init_std, a.seed, f16_start)
    });
    cfg.k = factors.k;
    let load_s = t_load.elapsed().as_secs_f64();
    let mut tr = Trainer::new(factors, &train, &cfg)?;
    let mut prog = Progress::new(a.quiet || a.json);
    let mut epochs = vec![];
    let (mut train_s, mut val_s) = (0.0, 0.0);
    let mut val_rmse = None;
    let mut lost_total = 0u64;
    for e in 0..a.epochs {
        let st = tr.run_epoch();
        train_s += st.seconds;
        lost_total += st.lost;
        let tv = Instant::now();
        val_rmse = (!val.is_empty()).then(|| tr.factors.rmse(&val, tr.pool()));
        val_s += tv.elapsed().as_secs_f64();
        let sw = tr.observe(&st, val_rmse);
        if let (Some(s), false) = (&sw, a.json || a.quiet) {
            eprintln!("epoch {}: switched to f32 storage: {}", s.epoch, s.reason);
        }
        prog.update("epochs", e + 1, a.epochs);
        epochs.push(serde_json::json!({
            "epoch": st.epoch, "train_rmse": st.train_rmse, "val_rmse": val_rmse,
            "seconds": st.seconds, "storage": if st.f16 { "f16" } else { "f32" },
            "lost_share": st.lost_share,
        }));
        if !a.json && !a.quiet {
            let v = val_rmse.map(|v| format!("{v:.4}")).unwrap_or("-".into());
            eprintln!(
                "epoch {:>3}  train {:.4}  val {v}  {:.3} s  {}  lost {:.2}%",
                st.epoch,
                st.train_rmse,
                st.seconds,
                if st.f16 { "f16" } else { "f32" },
                st.lost_share * 100.0
            );
        }
    }
    prog.finish();
    let k = tr.factors.k;
    let updates = (train.len() * a.epochs) as f64;
    let switch = tr.switched.clone();
    let (kf32, kf16) = tr.kernel_names();
    let tables = Tables { factors: tr.factors, users, items };
    let t_out = Instant::now();
    if ext == "npz" {
        save_npz(&tables, &a.output)?;
    } else {
        save_ember(&tables, &train, &a.output)?;
    }
    let out_s = t_out.elapsed().as_secs_f64();
    let mut skipped: BTreeMap<String, usize> = train_raw.skipped.clone();
    if let Some(v) = &val_raw {
        for (k, n) in &v.skipped {
            *skipped.entry(k.clone()).or_default() += n;
        }
    }
    if skipped_train + skipped_val > 0 {
        skipped.insert("unknown id".into(), skipped_train + skipped_val);
    }
    let rep = serde_json::json!({
        "train_ratings": train.len(), "val_ratings": val.len(), "users": tables.factors.users,
        "items": tables.factors.items, "k": k, "epochs": a.epochs, "threads": tr_threads(a.threads),
        "precision": precision.name(), "val_rmse": val_rmse, "seconds": train_s,
        "validate_seconds": val_s, "load_seconds": load_s, "write_seconds": out_s,
        "updates_per_s": updates / train_s.max(1e-9),
        "switch_epoch": switch.as_ref().map(|s| s.epoch),
        "switch_reason": switch.as_ref().map(|s| s.reason.clone()),
        "lost_updates": lost_total, "skipped": skipped,
        "kernels": [kf32, kf16], "output": a.output.display().to_string(), "epoch_log": epochs,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        let v = val_rmse.map(|v| format!("{v:.4}")).unwrap_or("-".into());
        println!(
            "{} ratings, {} users x {} items, k {k}: validation RMSE {v} after {} epochs in {:.2} s ({:.1} M updates/s, {})",
            train.len(), tables.factors.users, tables.factors.items, a.epochs, train_s,
            updates / train_s.max(1e-9) / 1e6, precision.name()
        );
        if let Some(s) = &switch {
            println!("switched to f32 storage after epoch {}: {}", s.epoch, s.reason);
        }
        for (why, n) in &skipped {
            println!("skipped {n} ratings: {why}");
        }
        println!("wrote {}", a.output.display());
    }
    Ok(())
}

fn tr_threads(t: usize) -> usize {
    if t == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        t
    }
}
