//! Matrix-factorization tables in `.ember` files and overlays: reading the user and item tables
//! of a model (f32, row-wise INT8 or row-wise INT4, as `ember finetune -o M.ember` or `quantize`
//! wrote them), re-quantizing trained rows into the model's own row encoding as overlay patches,
//! and the training state that fine-tuning checkpoints keep beside them (overlay blobs).

use anyhow::{bail, Context, Result};
use ember_runtime::finetune::Rows;
use ember_runtime::{DType, FileBytes, Model, Overlay, Patch};
use std::path::Path;

/// How a table is stored in the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Store {
    F32,
    I8,
    I4 { group: usize },
}

/// One table read from a model, in f32.
pub struct Table {
    pub name: String,
    pub store: Store,
    pub rows: usize,
    pub k: usize,
    pub values: Vec<f32>,
}

/// The tables, biases and constants of a matrix-factorization model.
pub struct MfModel {
    pub user: Table,
    pub item: Table,
    pub user_bias: Vec<f32>,
    pub item_bias: Vec<f32>,
    pub mean: f32,
    /// `rating_range` when the model has it (written by `ember finetune`).
    pub range: Option<(f32, f32)>,
    /// Raw ids of the rows (`user_ids`/`item_ids`), or `0..rows` when the model has none.
    pub user_ids: Vec<i64>,
    pub item_ids: Vec<i64>,
    /// `(file_size, table_crc)` of the model, which its overlays bind to.
    pub identity: (u64, u32),
}

fn f16s(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn i64s(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
}

impl MfModel {
    /// Reads the tables of `m` (loaded from `path`, named in errors).
    pub fn read(m: &Model<FileBytes>, path: &Path) -> Result<MfModel> {
        let find = |name: &str| m.tensors.iter().find(|t| t.name == name);
        let bytes = |name: &str| find(name).map(|t| m.tensor_bytes(t));
        let table = |base: &str| -> Result<Table> {
            let side = |n: &str| bytes(&format!("{base}.{n}")).map(|b| f16s(b).collect::<Vec<_>>());
            if let Some(t) = find(&format!("{base}.i8")) {
                let (rows, k) = (t.dims[0], t.dims[1]);
                let (s, b) = (side("row_scale"), side("row_bias"));
                let (Some(s), Some(b)) = (s, b) else { bail!("{base}.i8 has no row scales") };
                let q = m.tensor_bytes(t);
                let values = (0..rows * k).map(|j| q[j] as i8 as f32 * s[j / k] + b[j / k]);
                let values = values.collect();
                return Ok(Table { name: base.into(), store: Store::I8, rows, k, values });
            }
            if let Some(t) = find(&format!("{base}.i4")) {
                let (rows, k) = (t.dims[0], 2 * t.dims[1]);
                let (s, b) = (side("group_scale"), side("group_bias"));
                let (Some(s), Some(b)) = (s, b) else { bail!("{base}.i4 has no group scales") };
                let gpr = s.len() / rows.max(1);
                if gpr == 0 || !k.is_multiple_of(gpr) {
                    bail!("{base}.i4: {} group scales for {rows} rows of {k}", s.len());
                }
                let group = k / gpr;
                let q = m.tensor_bytes(t);
                let code =
                    |j: usize| if j.is_multiple_of(2) { q[j / 2] & 15 } else { q[j / 2] >> 4 };
                let values = (0..rows * k)
                    .map(|j| {
                        let g = (j / k) * gpr + (j % k) / group;
                        code(j) as f32 * s[g] + b[g]
                    })
                    .collect();
                return Ok(Table {
                    name: base.into(),
                    store: Store::I4 { group },
                    rows,
                    k,
                    values,
                });
            }
            match find(base) {
                Some(t) if t.dtype == DType::F32 && t.dims.len() == 2 => Ok(Table {
                    name: base.into(),
                    store: Store::F32,
                    rows: t.dims[0],
                    k: t.dims[1],
                    values: f32s(m.tensor_bytes(t)),
                }),
                _ => bail!(
                    "{}: no table '{base}' (f32, or row-wise INT8/INT4 as {base}.i8 or {base}.i4): \
                     not a matrix-factorization model",
                    path.display()
                ),
            }
        };
        let (user, item) = (table("user_factors")?, table("item_factors")?);
        if user.k != item.k {
            bail!(
                "{}: user and item rows differ in length ({} vs {})",
                path.display(),
                user.k,
                item.k
            );
        }
        let vec_f32 = |name: &str, n: usize| -> Result<Vec<f32>> {
            match find(name) {
                Some(t) if t.dtype == DType::F32 && t.nbytes == 4 * n => {
                    Ok(f32s(m.tensor_bytes(t)))
                }
                _ => bail!("{}: no f32 tensor '{name}' of {n} values", path.display()),
            }
        };
        let ids = |name: &str, n: usize| match find(name) {
            Some(t) if t.dtype == DType::I64 && t.nbytes == 8 * n => i64s(m.tensor_bytes(t)),
            _ => (0..n as i64).collect(),
        };
        let range = match find("rating_range") {
            Some(t) if t.dtype == DType::F32 && t.nbytes == 8 => {
                let v = f32s(m.tensor_bytes(t));
                Some((v[0], v[1]))
            }
            _ => None,
        };
        Ok(MfModel {
            user_bias: vec_f32("user_bias", user.rows)?,
            item_bias: vec_f32("item_bias", item.rows)?,
            mean: vec_f32("mean", 1)?[0],
            range,
            user_ids: ids("user_ids", user.rows),
            item_ids: ids("item_ids", item.rows),
            identity: ember_runtime::overlay::base_identity(m.bytes()),
            user,
            item,
        })
    }
}

/// Overlay patches that put `values` (f32 rows of `k`, one per id of `ids`, ascending) into
/// table `t` in the table's own encoding, re-quantized row by row as `quantize` does.
pub fn table_patches(t: &Table, ids: &[u32], values: &[f32]) -> Vec<Patch> {
    let (n, k) = (ids.len(), t.k);
    let patch = |suffix: &str, row_bytes: usize, data: Vec<u8>| Patch {
        tensor: if suffix.is_empty() { t.name.clone() } else { format!("{}.{suffix}", t.name) },
        row_bytes,
        ids: ids.to_vec(),
        data,
    };
    let le16 = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    match t.store {
        Store::F32 => vec![patch("", 4 * k, values.iter().flat_map(|x| x.to_le_bytes()).collect())],
        Store::I8 => {
            let q = ember_quantize::quant::quantize_rows(values, n, k);
            vec![
                patch("i8", k, q.q.iter().map(|x| *x as u8).collect()),
                patch("row_scale", 2, le16(&q.scale)),
                patch("row_bias", 2, le16(&q.bias)),
            ]
        }
        Store::I4 { group } => {
            let q = ember_quantize::quant::quantize_rows_i4(values, n, k, group);
            let side = 2 * (k / group);
            vec![
                patch("i4", k / 2, q.packed),
                patch("group_scale", side, le16(&q.scale)),
                patch("group_bias", side, le16(&q.bias)),
            ]
        }
    }
}

/// Rows `ids` of `rows` (`k` per row) as f32.
pub fn gather_rows(rows: &Rows, ids: &[u32], k: usize) -> Vec<f32> {
    let mut out = vec![0f32; ids.len() * k];
    for (o, &r) in out.chunks_exact_mut(k).zip(ids) {
        rows.row(r as usize, o);
    }
    out
}

/// Rows `ids` of `rows` as stored (f32 or f16 bits), little-endian.
pub fn raw_rows(rows: &Rows, ids: &[u32], k: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * k * rows.elem_bytes());
    for &r in ids {
        rows.put_row_le(r as usize, k, &mut out);
    }
    out
}

/// Puts rows saved by [`raw_rows`] back.
pub fn set_raw_rows(rows: &mut Rows, ids: &[u32], k: usize, b: &[u8]) -> Result<()> {
    let rb = k * rows.elem_bytes();
    if b.len() != ids.len() * rb {
        bail!("checkpoint rows: {} bytes for {} rows of {rb}", b.len(), ids.len());
    }
    for (&r, c) in ids.iter().zip(b.chunks_exact(rb)) {
        rows.set_row_le(r as usize, k, c);
    }
    Ok(())
}

/// `u32`s as little-endian bytes, and back.
pub fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn bytes_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn bytes_f32(b: &[u8]) -> Vec<f32> {
    f32s(b)
}

/// Reads and checks an overlay file.
pub fn read_overlay(path: &Path) -> Result<Overlay> {
    let b = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Overlay::parse(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
