//! `ember finetune`: biased matrix factorization by SGD on user and item embedding tables
//! (`ember_runtime::finetune`), from ratings in CSV or npz, with a validation RMSE per epoch and
//! the f16/f32 precision switch. Writes the tables as `.npz` (f32, the training state) or as a
//! servable `.ember` (row-wise INT8 tables, inputs `user`/`item` as dense rows, output `rating`).

use crate::mf_overlay::{
    bytes_f32, bytes_u32, f32_bytes, gather_rows, raw_rows, read_overlay, set_raw_rows,
    table_patches, u32_bytes, MfModel,
};
use crate::progress::Progress;
use crate::ratings::{self, IdMap, RawRatings};
use anyhow::{bail, Context, Result};
use clap::Parser;
use ember_quantize::HostTensor;
use ember_runtime::finetune::{
    rating_stats, Factors, Precision, Rating, Rows, Switch, TrainConfig, Trainer, UserFit,
};
use ember_runtime::{FileBytes, Model, Session};
use serde_json::json;
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
    /// Row storage while training: fp32, fp16 (both tables), or auto (the larger table in f16
    /// and the smaller in f32 first, all f32 once updates are lost or the RMSE plateaus).
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Start from these tables: a matrix-factorization .ember (f32, row-wise INT8 or INT4
    /// tables, as `finetune -o X.ember` writes), or an .npz / .safetensors holding
    /// `user_factors` and `item_factors` [rows, k] (as `finetune -o X.npz` writes; biases, ids
    /// and rating stats may be left out: zeros, row numbers, and the training ratings' stats).
    #[arg(long, conflicts_with = "init")]
    pub model: Option<PathBuf>,
    /// Start from random tables sized by the ids in the ratings.
    #[arg(long)]
    pub init: bool,
    /// Output: .overlay (the trained rows of --model M.ember, re-quantized in the model's own
    /// row encoding; the runtime applies M.ember.overlay when it opens M.ember, which stays as
    /// flashed), .npz or .safetensors (f32 tables, id maps; a --model for later runs) or .ember (servable,
    /// row-wise INT8 tables, inputs `user` and `item` as dense rows, output `rating`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Checkpoint after about this many updates (default: once per epoch). An .overlay output
    /// is itself the checkpoint (servable at every checkpoint); other outputs checkpoint to
    /// OUTPUT.ckpt, removed when the run ends.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Continue from the checkpoint of an interrupted run with the same ratings and settings
    /// (no checkpoint: start from the beginning). --epochs may be raised to train longer.
    #[arg(long)]
    pub resume: bool,
    /// Fit only the users in --ratings, each in closed form against the frozen item rows and
    /// biases of --model M.ember (whatever their encoding), into -o M.ember.overlay: the fast
    /// path for new ratings of a few users. Reports the time per user.
    #[arg(long)]
    pub user_only: bool,
    /// Row-wise bits of the tables of an .ember output: 8 or 4.
    #[arg(long, default_value_t = 8)]
    pub table_bits: u32,
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

/// Tables from an `.npz` or `.safetensors` file: `user_factors` and `item_factors` `[rows, k]`
/// are required; `user_bias` / `item_bias` (default zeros), `user_ids` / `item_ids` (default
/// the row numbers 0..rows, so ratings name rows) and `stats` (mean, min and max rating; default
/// from `ratings`) may be left out, as in tables exported from a training framework; each left
/// out is said on stderr unless `quiet`.
fn load_tables(path: &Path, f16: bool, ratings: &RawRatings, quiet: bool) -> Result<Tables> {
    let m = if is_safetensors(path) {
        ember_quantize::safetensors::read_safetensors(path)?
    } else {
        ember_quantize::npz::read_npz(path)?
    };
    let names = || m.keys().cloned().collect::<Vec<_>>().join(", ");
    let get = |k: &str| {
        m.get(k)
            .with_context(|| format!("{}: no tensor '{k}' (it has: {})", path.display(), names()))
    };
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
    let mut defaulted = vec![];
    let mut opt = |key: &'static str| {
        let t = m.get(key);
        if t.is_none() {
            defaulted.push(key);
        }
        t
    };
    let stats = match opt("stats") {
        Some(t) => t.to_f32_vec(),
        None => {
            let v = &ratings.value;
            let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len().max(1) as f64;
            let (lo, hi) = v
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| (a.min(*x), b.max(*x)));
            vec![mean as f32, lo, hi]
        }
    };
    // min/max may be infinite (predictions not clamped), the mean must be a number.
    if stats.len() != 3 || !stats[0].is_finite() || stats.iter().any(|v| v.is_nan()) {
        bail!("{}: stats must hold mean, min and max rating", path.display());
    }
    let bias =
        |t: Option<&HostTensor>, n: usize| t.map_or_else(|| vec![0.0; n], |t| t.to_f32_vec());
    let ids = |t: Option<&HostTensor>, n: usize| {
        t.map_or_else(|| (0..n as i64).collect(), |t| t.to_i64_vec())
    };
    let (bu, bi) = (bias(opt("user_bias"), users), bias(opt("item_bias"), items));
    let (uid, iid) = (ids(opt("user_ids"), users), ids(opt("item_ids"), items));
    if bu.len() != users || bi.len() != items || uid.len() != users || iid.len() != items {
        bail!("{}: biases and id lists must have one entry per row", path.display());
    }
    for (ids, what) in [(&uid, "user_ids"), (&iid, "item_ids")] {
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        if let Some(d) = ids.iter().find(|i| !seen.insert(**i)) {
            bail!("{}: {what} lists id {d} twice", path.display());
        }
    }
    if !quiet && !defaulted.is_empty() {
        eprintln!(
            "ember: {} has no {}: biases start at zero, ids are row numbers, stats come from the \
             training ratings",
            path.display(),
            defaulted.join(", ")
        );
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

fn is_safetensors(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "safetensors")
}

/// The f32 tables, biases, id lists and rating stats as `.npz` or (by extension) `.safetensors`.
fn save_tables(t: &Tables, path: &Path) -> Result<()> {
    let f = &t.factors;
    let mut a = BTreeMap::new();
    a.insert("user_factors".into(), HostTensor::f32(vec![f.users, f.k], f.p.to_f32()));
    a.insert("item_factors".into(), HostTensor::f32(vec![f.items, f.k], f.q.to_f32()));
    a.insert("user_bias".into(), HostTensor::f32(vec![f.users], f.bu.clone()));
    a.insert("item_bias".into(), HostTensor::f32(vec![f.items], f.bi.clone()));
    a.insert("stats".into(), HostTensor::f32(vec![3], vec![f.mean, f.lo, f.hi]));
    a.insert("user_ids".into(), HostTensor::i64(vec![f.users], t.users.ids.clone()));
    a.insert("item_ids".into(), HostTensor::i64(vec![f.items], t.items.ids.clone()));
    if is_safetensors(path) {
        let bytes = ember_quantize::safetensors::safetensors_bytes(&a);
        return Ok(ember_quantize::atomic::write(path, &bytes)?);
    }
    Ok(ember_quantize::npz::write_npz(path, &a)?)
}

fn save_ember(t: &Tables, train: &[Rating], path: &Path, bits: u32) -> Result<()> {
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
        embedding_bits: Some(bits),
        group: 32.min(f.k),
        batches: vec![1, 64],
        source_name: "ember finetune (matrix factorization)".into(),
        extra_tensors: vec![
            ("user_ids".into(), HostTensor::i64(vec![f.users], t.users.ids.clone())),
            ("item_ids".into(), HostTensor::i64(vec![f.items], t.items.ids.clone())),
            ("rating_range".into(), HostTensor::f32(vec![2], vec![f.lo, f.hi])),
        ],
        ..Default::default()
    };
    let (bytes, _) = ember_quantize::quantize(&onnx, &calib, &opts, &mut |_, _, _| {})?;
    Ok(ember_quantize::atomic::write(path, &bytes)?)
}

/// Where training stands: what a checkpoint keeps besides the rows (blob `finetune.state`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
struct State {
    /// Settings and data the checkpoint is valid for.
    fingerprint: serde_json::Value,
    /// Whole epochs done, and steps done of the next one (each `slices`-th of a round).
    epoch: usize,
    step: usize,
    slices: usize,
    /// The unfinished epoch's squared error, lost updates and training seconds so far.
    sq: f64,
    lost: u64,
    epoch_seconds: f64,
    updates_done: u64,
    train_seconds: f64,
    val_seconds: f64,
    lost_total: u64,
    history: Vec<f64>,
    switched: Option<(usize, String)>,
    f16: bool,
    val_rmse: Option<f64>,
    epoch_log: Vec<serde_json::Value>,
    finished: bool,
}

/// FNV-1a of a byte stream, as hex: names the data a checkpoint belongs to.
fn fnv(bytes: impl Iterator<Item = u8>) -> String {
    let h =
        bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{h:016x}")
}

/// [`fnv`] over the ratings (their rows and values).
fn ratings_hash(r: &[Rating]) -> String {
    fnv(r.iter().flat_map(|x| {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&x.user.to_le_bytes());
        b[4..8].copy_from_slice(&x.item.to_le_bytes());
        b[8..].copy_from_slice(&x.value.to_le_bytes());
        b
    }))
}

/// Sorted distinct rows of `f(r)` over the ratings.
fn touched(train: &[Rating], f: impl Fn(&Rating) -> u32) -> Vec<u32> {
    let mut v: Vec<u32> = train.iter().map(f).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Values `v[r]` for `r` in `ids`, as little-endian bytes.
fn pick(v: &[f32], ids: &[u32]) -> Vec<u8> {
    f32_bytes(&ids.iter().map(|r| v[*r as usize]).collect::<Vec<_>>())
}

/// What a checkpoint or an `.overlay` output is written from.
struct Ckpt<'a> {
    path: PathBuf,
    base: Option<&'a MfModel>,
    users: Vec<u32>,
    items: Vec<u32>,
}

impl Ckpt<'_> {
    /// The overlay: re-quantized patches of the base's tables (when there is a base), the
    /// trained rows as stored and the state as blobs. Written atomically.
    fn write(&self, f: &Factors, st: &State) -> Result<()> {
        let k = f.k;
        let mut ov = ember_runtime::Overlay::default();
        if let Some(b) = self.base {
            ov.base = b.identity;
            let (u, i) = (&self.users, &self.items);
            ov.patches.extend(table_patches(&b.user, u, &gather_rows(&f.p, u, k)));
            ov.patches.extend(table_patches(&b.item, i, &gather_rows(&f.q, i, k)));
            for (name, ids, v) in [("user_bias", u, &f.bu), ("item_bias", i, &f.bi)] {
                ov.patches.push(ember_runtime::Patch {
                    tensor: name.into(),
                    row_bytes: 4,
                    ids: ids.clone(),
                    data: pick(v, ids),
                });
            }
        }
        ov.blobs = vec![
            ("finetune.state".into(), serde_json::to_vec(st)?),
            ("finetune.users".into(), u32_bytes(&self.users)),
            ("finetune.items".into(), u32_bytes(&self.items)),
            ("finetune.p".into(), raw_rows(&f.p, &self.users, k)),
            ("finetune.q".into(), raw_rows(&f.q, &self.items, k)),
            ("finetune.bu".into(), pick(&f.bu, &self.users)),
            ("finetune.bi".into(), pick(&f.bi, &self.items)),
        ];
        Ok(ember_quantize::atomic::write(&self.path, &ov.to_bytes())?)
    }

    /// Reads the checkpoint back into `tr` (built from the same ratings and settings).
    fn restore(&self, tr: &mut Trainer, fingerprint: &serde_json::Value) -> Result<Option<State>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let what = self.path.display();
        let ov = read_overlay(&self.path)?;
        let blob =
            |n: &str| ov.blob(n).with_context(|| format!("{what}: no '{n}' (not a checkpoint)"));
        let st: State = serde_json::from_slice(blob("finetune.state")?)
            .with_context(|| format!("{what}: unreadable training state"))?;
        if &st.fingerprint != fingerprint {
            bail!(
                "{what}: the checkpoint is of another run (settings or ratings differ: it has {}, \
                 this run {}); use the same settings, or start over without --resume",
                st.fingerprint,
                fingerprint
            );
        }
        let (users, items) =
            (bytes_u32(blob("finetune.users")?), bytes_u32(blob("finetune.items")?));
        if users != self.users || items != self.items {
            bail!("{what}: the checkpoint's rows are not this run's");
        }
        let f = &mut tr.factors;
        if !st.f16 {
            f.widen();
        }
        let k = f.k;
        set_raw_rows(&mut f.p, &users, k, blob("finetune.p")?)?;
        set_raw_rows(&mut f.q, &items, k, blob("finetune.q")?)?;
        for (ids, v, n) in [(&users, &mut f.bu, "finetune.bu"), (&items, &mut f.bi, "finetune.bi")]
        {
            let b = bytes_f32(blob(n)?);
            if b.len() != ids.len() {
                bail!("{what}: '{n}' has {} values for {} rows", b.len(), ids.len());
            }
            for (r, x) in ids.iter().zip(b) {
                v[*r as usize] = x;
            }
        }
        let sw = st.switched.clone().map(|(epoch, reason)| Switch { epoch, reason });
        tr.restore(st.epoch, st.history.clone(), sw);
        Ok(Some(st))
    }
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
        bail!(
            "say where the tables start: --model M.ember|TABLES.npz|TABLES.safetensors or --init"
        );
    }
    if a.checkpoint_every == Some(0) {
        bail!("--checkpoint-every must be at least 1 update");
    }
    if a.table_bits != 8 && a.table_bits != 4 {
        bail!("--table-bits {}: expected 8 or 4", a.table_bits);
    }
    let ext = a.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    let from_ember = a.model.as_ref().is_some_and(|m| m.extension().is_some_and(|e| e == "ember"));
    match ext {
        "npz" | "safetensors" | "ember" => {}
        "overlay" if from_ember => {}
        "overlay" => bail!(
            "-o {}: an overlay holds rows of a model: give it with --model M.ember",
            a.output.display()
        ),
        _ => bail!(
            "-o {}: the output must end in .overlay, .npz, .safetensors or .ember",
            a.output.display()
        ),
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
    // --user-only fits against the model's rows exactly as stored: no f16 rounding.
    let f16_start = precision != Precision::Fp32 && !a.user_only;
    let mut base: Option<MfModel> = None;
    let (mut users, mut items, loaded) = match &a.model {
        Some(m) if from_ember => {
            let no = super::OverlayArgs { no_overlay: true, ..Default::default() };
            let model = super::load_opts(m, super::VerifyArg::Full, &no)?;
            let mut b = MfModel::read(&model, m)?;
            // The f32 values move into the trainer's tables (the base keeps names and layout).
            let (p, q) = (std::mem::take(&mut b.user.values), std::mem::take(&mut b.item.values));
            let f = Factors {
                k: b.user.k,
                users: b.user.rows,
                items: b.item.rows,
                mean: b.mean,
                lo: b.range.map_or(f32::NEG_INFINITY, |r| r.0),
                hi: b.range.map_or(f32::INFINITY, |r| r.1),
                p: Rows::from_f32(p, f16_start),
                q: Rows::from_f32(q, f16_start),
                bu: b.user_bias.clone(),
                bi: b.item_bias.clone(),
            };
            let maps = (IdMap::from_ids(b.user_ids.clone()), IdMap::from_ids(b.item_ids.clone()));
            base = Some(b);
            (maps.0, maps.1, Some(f))
        }
        Some(m) => {
            let t = load_tables(m, f16_start, &train_raw, a.quiet || a.json)?;
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
    if train.is_empty() {
        bail!("{}: no ratings left after skipping bad ones", a.ratings.display());
    }
    if a.user_only {
        let Some(b) = base.as_ref().filter(|_| ext == "overlay") else {
            bail!("--user-only fits users against a model's items: --model M.ember -o M.ember.overlay");
        };
        let f = loaded.context("no tables")?;
        return user_only(&a, b, f, &train, &val, t_load.elapsed().as_secs_f64());
    }
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
    let st0 = rating_stats(&train);
    let mut factors = loaded.unwrap_or_else(|| {
        Factors::random(users.len(), items.len(), a.k, st0, cfg.init_std, a.seed, f16_start)
    });
    if !factors.lo.is_finite() {
        (factors.lo, factors.hi) = (st0.1, st0.2);
    }
    cfg.k = factors.k;
    let load_s = t_load.elapsed().as_secs_f64();
    let mut tr = Trainer::new(factors, &train, &cfg)?;
    let ckpt = Ckpt {
        path: if ext == "overlay" {
            a.output.clone()
        } else {
            let mut s = a.output.as_os_str().to_owned();
            s.push(".ckpt");
            s.into()
        },
        base: if ext == "overlay" { base.as_ref() } else { None },
        users: touched(&train, |r| r.user),
        items: touched(&train, |r| r.item),
    };
    let start = match (&a.model, &base) {
        (_, Some(b)) => json!({"ember": [b.identity.0, format!("{:08x}", b.identity.1)]}),
        (Some(m), None) => json!({"npz": fnv(super::read(m)?.into_iter())}),
        (None, _) => json!("init"),
    };
    let fingerprint = json!({
        "k": cfg.k, "lr": cfg.lr, "reg": cfg.reg, "reg_bias": cfg.reg_bias, "seed": cfg.seed,
        "blocks": tr.blocks(), "precision": precision.name(), "start": start,
        "train": ratings_hash(&train), "validate": ratings_hash(&val),
    });
    let quiet = a.quiet || a.json;
    let per_round = train.len().div_ceil(tr.blocks());
    let every = a.checkpoint_every.unwrap_or(train.len() as u64);
    let mut st = State {
        fingerprint: fingerprint.clone(),
        slices: (per_round as u64).div_ceil(every).max(1) as usize,
        f16: tr.factors.is_f16(),
        ..Default::default()
    };
    let mut resumed_from = None;
    if a.resume {
        match ckpt.restore(&mut tr, &fingerprint)? {
            Some(s) => {
                if !quiet {
                    eprintln!(
                        "resuming from {}: epoch {} + {}/{} steps, {} updates done",
                        ckpt.path.display(),
                        s.epoch,
                        s.step,
                        tr.blocks() * s.slices,
                        s.updates_done
                    );
                }
                resumed_from = Some(s.updates_done);
                st = s;
            }
            None if !quiet => {
                eprintln!("no checkpoint at {}: starting from the beginning", ckpt.path.display())
            }
            None => {}
        }
    }
    let mut prog = Progress::new(quiet);
    let mut since = 0u64;
    let mut checkpoints = 0usize;
    let mut ckpt_s = 0.0;
    let steps = tr.blocks() * st.slices;
    while tr.epoch < a.epochs {
        while st.step < steps {
            let n = tr.step_len(st.step, st.slices) as u64;
            let t0 = Instant::now();
            let (s, l) = tr.run_step(st.step, st.slices);
            st.epoch_seconds += t0.elapsed().as_secs_f64();
            (st.sq, st.lost, st.step) = (st.sq + s, st.lost + l, st.step + 1);
            st.updates_done += n;
            since += n;
            let last = st.step == steps && tr.epoch + 1 == a.epochs;
            if since >= every && !last {
                let tc = Instant::now();
                (st.epoch, st.f16) = (tr.epoch, tr.factors.is_f16());
                ckpt.write(&tr.factors, &st)?;
                ckpt_s += tc.elapsed().as_secs_f64();
                checkpoints += 1;
                since = 0;
                if !quiet {
                    eprintln!("checkpoint: {} updates in {}", st.updates_done, ckpt.path.display());
                }
            }
        }
        let stats = tr.finish_epoch(st.sq, st.lost, st.epoch_seconds);
        (st.step, st.sq, st.lost, st.epoch_seconds) = (0, 0.0, 0, 0.0);
        st.train_seconds += stats.seconds;
        // Counted on one rating in `lost_every`: scaled up to an estimate for all of them.
        st.lost_total +=
            (stats.lost as f64 * stats.updates as f64 / stats.sampled.max(1) as f64).round() as u64;
        let tv = Instant::now();
        st.val_rmse = (!val.is_empty()).then(|| tr.factors.rmse(&val, tr.pool()));
        st.val_seconds += tv.elapsed().as_secs_f64();
        let sw = tr.observe(&stats, st.val_rmse);
        if let (Some(s), false) = (&sw, quiet) {
            eprintln!("epoch {}: switched to f32 storage: {}", s.epoch, s.reason);
        }
        (st.epoch, st.history, st.f16) = (tr.epoch, tr.history().to_vec(), tr.factors.is_f16());
        st.switched = tr.switched.as_ref().map(|s| (s.epoch, s.reason.clone()));
        prog.update("epochs", tr.epoch, a.epochs);
        st.epoch_log.push(json!({
            "epoch": stats.epoch, "train_rmse": stats.train_rmse, "val_rmse": st.val_rmse,
            "seconds": stats.seconds, "storage": stats.storage,
            "lost_share": stats.lost_share,
        }));
        if !quiet {
            let v = st.val_rmse.map(|v| format!("{v:.4}")).unwrap_or("-".into());
            eprintln!(
                "epoch {:>3}  train {:.4}  val {v}  {:.3} s  {}  lost {:.2}%",
                stats.epoch,
                stats.train_rmse,
                stats.seconds,
                stats.storage,
                stats.lost_share * 100.0
            );
        }
    }
    prog.finish();
    st.finished = true;
    let k = tr.factors.k;
    let updates = st.updates_done as f64;
    let [kf32, kf16, kmixed] = tr.kernel_names();
    let t_out = Instant::now();
    let mut served_rmse = None;
    if ext == "overlay" {
        ckpt.write(&tr.factors, &st)?;
        if !val.is_empty() {
            let m = super::load_opts(
                a.model.as_deref().unwrap_or(Path::new("")),
                super::VerifyArg::Structure,
                &super::OverlayArgs { overlay: Some(a.output.clone()), no_overlay: false },
            )?;
            served_rmse = Some(served_rmse_of(&m, &val)?);
        }
    }
    let (nu, ni) = (tr.factors.users, tr.factors.items);
    let tables = Tables { factors: tr.factors, users, items };
    match ext {
        "npz" | "safetensors" => save_tables(&tables, &a.output)?,
        "ember" => {
            let kb = a.table_bits;
            save_ember(&tables, &train, &a.output, kb)?;
            if !val.is_empty() {
                served_rmse = Some(served_rmse_of(&super::load(&a.output)?, &val)?);
            }
        }
        _ => {}
    }
    if ext != "overlay" && ckpt.path.exists() {
        std::fs::remove_file(&ckpt.path)
            .with_context(|| format!("cannot remove {}", ckpt.path.display()))?;
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
    let train_s = st.train_seconds;
    let switch = st.switched.clone();
    let rep = json!({
        "train_ratings": train.len(), "val_ratings": val.len(), "users": nu, "items": ni,
        "k": k, "epochs": a.epochs, "threads": tr_threads(a.threads),
        "precision": precision.name(), "val_rmse": st.val_rmse, "served_val_rmse": served_rmse,
        "seconds": train_s, "validate_seconds": st.val_seconds, "load_seconds": load_s,
        "write_seconds": out_s, "checkpoint_seconds": ckpt_s, "checkpoints": checkpoints,
        "resumed_from_update": resumed_from,
        "updates_per_s": updates / train_s.max(1e-9),
        "switch_epoch": switch.as_ref().map(|s| s.0),
        "switch_reason": switch.as_ref().map(|s| s.1.clone()),
        "lost_updates": st.lost_total, "lost_counted_every": cfg.lost_every, "skipped": skipped,
        "kernels": [kf32, kf16, kmixed], "output": a.output.display().to_string(),
        "epoch_log": st.epoch_log,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        let v = st.val_rmse.map(|v| format!("{v:.4}")).unwrap_or("-".into());
        println!(
            "{} ratings, {nu} users x {ni} items, k {k}: validation RMSE {v} after {} epochs in {:.2} s ({:.1} M updates/s, {})",
            train.len(), a.epochs, train_s, updates / train_s.max(1e-9) / 1e6, precision.name()
        );
        if let Some(r) = served_rmse {
            println!("validation RMSE as served (re-quantized rows): {r:.4}");
        }
        if let Some((e, why)) = &switch {
            println!("switched to f32 storage after epoch {e}: {why}");
        }
        for (why, n) in &skipped {
            println!("skipped {n} ratings: {why}");
        }
        println!("wrote {}", a.output.display());
    }
    Ok(())
}

/// RMSE of `model` (a matrix-factorization `.ember`, with its overlay if applied) on `val`,
/// run through the runtime in its largest batch (the last batch padded).
fn served_rmse_of(model: &Model<FileBytes>, val: &[Rating]) -> Result<f64> {
    let batch = *model.batch_sizes().last().context("the model has no plans")?;
    let mut s = Session::new(model, batch)?;
    let pos = |n: &str| model.inputs.iter().position(|i| i.name == n);
    let (Some(pu), Some(pi)) = (pos("user"), pos("item")) else {
        bail!("the model has no inputs 'user' and 'item'")
    };
    let mut sq = 0f64;
    for chunk in val.chunks(batch) {
        let col = |f: &dyn Fn(&Rating) -> u32| -> Vec<u8> {
            (0..batch)
                .flat_map(|j| (f(&chunk[j.min(chunk.len() - 1)]) as i64).to_le_bytes())
                .collect()
        };
        let (u, i) = (col(&|r| r.user), col(&|r| r.item));
        let mut ins: [&[u8]; 2] = [&[], &[]];
        (ins[pu], ins[pi]) = (&u, &i);
        s.run(&ins)?;
        let out = s.output_f32(0).context("the model's output is not f32")?;
        for (r, p) in chunk.iter().zip(out) {
            sq += ((r.value - p) as f64).powi(2);
        }
    }
    Ok((sq / val.len().max(1) as f64).sqrt())
}

/// `--user-only`: each user of `train` fitted alone against the frozen items of `base`.
fn user_only(
    a: &Args,
    base: &MfModel,
    mut f: Factors,
    train: &[Rating],
    val: &[Rating],
    load_s: f64,
) -> Result<()> {
    f.widen();
    let k = f.k;
    let mut by_user: BTreeMap<u32, (Vec<u32>, Vec<f32>)> = BTreeMap::new();
    for r in train {
        let e = by_user.entry(r.user).or_default();
        e.0.push(r.item);
        e.1.push(r.value);
    }
    let most = by_user.values().map(|v| v.0.len()).max().unwrap_or(0);
    let before = (rmse_serial(&f, train), rmse_serial(&f, val));
    let mut fit = UserFit::new(k, most);
    let mut row = vec![0f32; k];
    let mut times = Vec::with_capacity(by_user.len());
    let mut fitted = Vec::with_capacity(by_user.len());
    for (u, (items, values)) in &by_user {
        let t = Instant::now();
        let b = fit.fit(&f, items, values, a.reg, a.reg_bias, &mut row)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        let Rows::F32(p) = &mut f.p else { unreachable!("widened above") };
        p[*u as usize * k..(*u as usize + 1) * k].copy_from_slice(&row);
        f.bu[*u as usize] = b;
        fitted.push(*u);
    }
    let after = (rmse_serial(&f, train), rmse_serial(&f, val));
    let ck = Ckpt { path: a.output.clone(), base: Some(base), users: fitted, items: vec![] };
    let st = State { finished: true, ..Default::default() };
    ck.write(&f, &st)?;
    times.sort_by(f64::total_cmp);
    let n = times.len().max(1);
    let mean = times.iter().sum::<f64>() / n as f64;
    let p99 = times.get((n * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or(0.0);
    let max = times.last().copied().unwrap_or(0.0);
    let val_rmse = (!val.is_empty()).then_some(after.1);
    let rep = json!({
        "users": by_user.len(), "ratings": train.len(), "most_ratings_per_user": most, "k": k,
        "fit_us_mean": mean, "fit_us_p99": p99, "fit_us_max": max,
        "train_rmse_before": before.0, "train_rmse": after.0,
        "val_rmse_before": (!val.is_empty()).then_some(before.1), "val_rmse": val_rmse,
        "load_seconds": load_s, "output": a.output.display().to_string(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "fitted {} users ({} ratings, at most {most} per user, k {k}) in {mean:.1} us per user \
             (p99 {p99:.1}, max {max:.1}); RMSE on their ratings {:.4} -> {:.4}",
            by_user.len(),
            train.len(),
            before.0,
            after.0
        );
        if let Some(v) = val_rmse {
            println!("validation RMSE {:.4} -> {v:.4}", before.1);
        }
        println!("wrote {}", a.output.display());
    }
    Ok(())
}

/// RMSE of `f` on `r` on this thread.
fn rmse_serial(f: &Factors, r: &[Rating]) -> f64 {
    f.rmse(r, &ember_runtime::Serial)
}

fn tr_threads(t: usize) -> usize {
    if t == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        t
    }
}
