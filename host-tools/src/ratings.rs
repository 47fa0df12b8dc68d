//! Ratings files for `ember finetune`: CSV (`user,item,rating[,timestamp]`, an optional header
//! line) or `.npz` (arrays `user`, `item`, `rating`), with raw ids mapped to dense table rows.
//!
//! Bad lines (wrong field count, a number that does not parse, a NaN or infinite rating, an id
//! the model does not know) are an error naming the file and line, or, with `skip_bad`, skipped
//! and counted by reason.

use anyhow::{bail, Context, Result};
use ember_runtime::finetune::Rating;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

/// Ratings with their raw ids, as read.
#[derive(Clone, Debug, Default)]
pub struct RawRatings {
    pub user: Vec<i64>,
    pub item: Vec<i64>,
    pub value: Vec<f32>,
    /// Source line (CSV, 1-based) or index (npz) of each rating, for error messages.
    pub line: Vec<usize>,
    /// Lines skipped with `skip_bad`, by reason.
    pub skipped: BTreeMap<String, usize>,
}

impl RawRatings {
    pub fn len(&self) -> usize {
        self.value.len()
    }
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
    fn push(&mut self, u: i64, i: i64, r: f32, line: usize) {
        self.user.push(u);
        self.item.push(i);
        self.value.push(r);
        self.line.push(line);
    }
    /// Splits off a random `frac` of the ratings (seeded) as a second set.
    pub fn split(mut self, frac: f64, seed: u64) -> (RawRatings, RawRatings) {
        let mut rng = ember_runtime::finetune::Rng::new(seed);
        let mut keep =
            RawRatings { skipped: std::mem::take(&mut self.skipped), ..Default::default() };
        let mut held = RawRatings::default();
        for j in 0..self.len() {
            let x = rng.unit();
            let dst = if x < frac { &mut held } else { &mut keep };
            dst.push(self.user[j], self.item[j], self.value[j], self.line[j]);
        }
        (keep, held)
    }
}

/// Reads a CSV or `.npz` ratings file.
pub fn read(path: &Path, skip_bad: bool) -> Result<RawRatings> {
    if !path.exists() {
        bail!("cannot read {}: no such file", path.display());
    }
    if path.extension().is_some_and(|e| e == "npz") {
        return read_npz(path, skip_bad);
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = RawRatings::default();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let lineno = n + 1;
        let line =
            line.with_context(|| format!("{} line {lineno}: cannot read", path.display()))?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = t.split(',').map(str::trim).collect();
        if lineno == 1 && fields.first().is_some_and(|f| f.parse::<f64>().is_err()) {
            continue; // a header
        }
        match parse_line(&fields) {
            Ok((u, i, r)) => out.push(u, i, r, lineno),
            Err(why) if skip_bad => *out.skipped.entry(why.kind.into()).or_default() += 1,
            Err(why) => bail!("{} line {lineno}: {}", path.display(), why.msg),
        }
    }
    Ok(out)
}

struct Bad {
    kind: &'static str,
    msg: String,
}

fn parse_line(f: &[&str]) -> std::result::Result<(i64, i64, f32), Bad> {
    if !(3..=4).contains(&f.len()) {
        return Err(Bad {
            kind: "wrong field count",
            msg: format!("expected user,item,rating[,timestamp], found {} fields", f.len()),
        });
    }
    let id = |s: &str, what: &str| {
        s.parse::<i64>()
            .map_err(|_| Bad { kind: "bad id", msg: format!("{what} id '{s}' is not an integer") })
    };
    let (u, i) = (id(f[0], "user")?, id(f[1], "item")?);
    let r: f32 = f[2].parse().map_err(|_| Bad {
        kind: "bad rating",
        msg: format!("rating '{}' is not a number", f[2]),
    })?;
    if !r.is_finite() {
        return Err(Bad {
            kind: "non-finite rating",
            msg: format!("rating {} is not finite", f[2]),
        });
    }
    Ok((u, i, r))
}

fn read_npz(path: &Path, skip_bad: bool) -> Result<RawRatings> {
    let m = ember_quantize::npz::read_npz(path)?;
    let get = |k: &str| {
        m.get(k).with_context(|| {
            format!("{}: no array '{k}' (needs user, item, rating)", path.display())
        })
    };
    let (u, i, r) =
        (get("user")?.to_i64_vec(), get("item")?.to_i64_vec(), get("rating")?.to_f32_vec());
    if u.len() != i.len() || u.len() != r.len() {
        bail!(
            "{}: user, item and rating differ in length ({}, {}, {})",
            path.display(),
            u.len(),
            i.len(),
            r.len()
        );
    }
    let mut out = RawRatings::default();
    for j in 0..u.len() {
        if !r[j].is_finite() {
            if skip_bad {
                *out.skipped.entry("non-finite rating".into()).or_default() += 1;
                continue;
            }
            bail!("{} rating {j}: value {} is not finite", path.display(), r[j]);
        }
        out.push(u[j], i[j], r[j], j);
    }
    Ok(out)
}

/// Raw ids ↔ dense rows, in order of first appearance.
#[derive(Clone, Debug, Default)]
pub struct IdMap {
    pub ids: Vec<i64>,
    index: HashMap<i64, u32>,
}

impl IdMap {
    pub fn from_ids(ids: Vec<i64>) -> IdMap {
        let index = ids.iter().enumerate().map(|(j, id)| (*id, j as u32)).collect();
        IdMap { ids, index }
    }
    pub fn insert(&mut self, id: i64) -> u32 {
        let n = self.ids.len() as u32;
        *self.index.entry(id).or_insert_with(|| {
            self.ids.push(id);
            n
        })
    }
    pub fn get(&self, id: i64) -> Option<u32> {
        self.index.get(&id).copied()
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Maps raw ratings to dense rows. Unknown ids are an error naming the line, or skipped and
/// counted with `skip_bad`; `grow` adds unknown ids to the maps instead.
pub fn to_rows(
    raw: &RawRatings,
    users: &mut IdMap,
    items: &mut IdMap,
    grow: bool,
    skip_bad: bool,
    what: &str,
) -> Result<(Vec<Rating>, usize)> {
    let mut out = Vec::with_capacity(raw.len());
    let mut skipped = 0;
    for j in 0..raw.len() {
        let (u, i) = if grow {
            (users.insert(raw.user[j]), items.insert(raw.item[j]))
        } else {
            match (users.get(raw.user[j]), items.get(raw.item[j])) {
                (Some(u), Some(i)) => (u, i),
                (u, _) => {
                    if skip_bad {
                        skipped += 1;
                        continue;
                    }
                    let (kind, id) =
                        if u.is_none() { ("user", raw.user[j]) } else { ("item", raw.item[j]) };
                    bail!(
                        "{what} line {}: unknown {kind} id {id} (not in the model's tables)",
                        raw.line[j]
                    );
                }
            }
        };
        out.push(Rating { user: u, item: i, value: raw.value[j] });
    }
    Ok((out, skipped))
}
