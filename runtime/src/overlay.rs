//! Overlay files: rows of a model's tables replaced without rewriting the model.
//!
//! `ember finetune --model M.ember -o M.ember.overlay` writes the rows it trained here; the
//! runtime maps the model and applies the overlay ([`Model::apply_overlay`]), so a flashed model
//! stays byte-for-byte as flashed and a bad overlay is dropped by deleting one file.
//!
//! Layout (little-endian; version 1):
//!
//! ```text
//! offset 0   header, 64 bytes
//!   0  magic        [u8; 8] = "EMBROVL1"
//!   8  version      u32 = 1
//!   12 entries      u32, at most MAX_ENTRIES
//!   16 base_size    u64, file_size of the model this overlay was made for
//!   24 base_crc     u32, table_crc of that model (its section table, which holds every
//!                   section's CRC: the weights included)
//!   28 reserved     u32, zero
//!   32 body_len     u64, bytes after the header (the file is exactly 64 + body_len bytes)
//!   40 body_crc     u32, CRC-32 of the body
//!   44 header_crc   u32, CRC-32 of bytes 0..44
//!   48 reserved     [u8; 16], zero
//! offset 64  entries, each 8-aligned:
//!   kind u32 (1 = row patch, 2 = blob), name_len u32, row_bytes u64, count u64,
//!   name (UTF-8, padded to 8)
//!   row patch: count × u32 row ids (strictly ascending, padded to 8),
//!              count × row_bytes bytes (the rows, in the tensor's own encoding, padded to 8)
//!   blob:      count bytes (padded to 8); row_bytes is 1. Blobs are for tools (a fine-tuning
//!              run keeps its training state there); the runtime checks and ignores them.
//! ```
//!
//! A row patch names a constant tensor of the model and replaces whole rows of its first axis.
//! Only tensors that the model reads row by row may be patched (the tables of `Gather` on axis 0
//! and of the row-wise INT8/INT4 gathers, with their per-row scales and offsets); the runtime
//! refuses a patch on any other tensor, on a different model, or with rows of the wrong size.

use crate::format::{OpCode, REF_TENSOR};
use crate::ops::Op;
use crate::{Error, Model};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

pub const OVERLAY_MAGIC: [u8; 8] = *b"EMBROVL1";
pub const OVERLAY_VERSION: u32 = 1;
/// Most entries an overlay may hold.
pub const MAX_ENTRIES: u32 = 4096;
const HEADER: usize = 64;
const KIND_PATCH: u32 = 1;
const KIND_BLOB: u32 = 2;

/// Rows of one tensor: `data[j·row_bytes..]` replaces row `ids[j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    pub tensor: String,
    pub row_bytes: usize,
    /// Strictly ascending.
    pub ids: Vec<u32>,
    pub data: Vec<u8>,
}

impl Patch {
    /// The replacement of row `r`, if this patch has one.
    #[inline]
    pub fn row(&self, r: usize) -> Option<&[u8]> {
        let j = self.ids.binary_search(&u32::try_from(r).ok()?).ok()?;
        Some(&self.data[j * self.row_bytes..(j + 1) * self.row_bytes])
    }
}

/// A parsed overlay; see the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overlay {
    /// `file_size` and `table_crc` of the model it applies to.
    pub base: (u64, u32),
    pub patches: Vec<Patch>,
    pub blobs: Vec<(String, Vec<u8>)>,
}

/// The identity of a model file an overlay binds to: its `file_size` and `table_crc` header
/// fields (read as stored; [`Model::parse`] checks them).
pub fn base_identity(model_bytes: &[u8]) -> (u64, u32) {
    let rd = |o: usize, n: usize| -> u64 {
        model_bytes.get(o..o + n).map_or(0, |b| {
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    (rd(16, 8), rd(24, 4) as u32)
}

fn bad(m: String) -> Error {
    Error::Overlay(m)
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or_else(|| {
            bad(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.at,
                self.b.len()
            ))
        })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn padded(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        let s = self.take(n, what)?;
        self.take(pad8(n) - n, what)?;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    /// `count · size` bytes that must fit in what is left.
    fn sized(&self, count: u64, size: u64, what: &str) -> Result<usize, Error> {
        count
            .checked_mul(size)
            .filter(|n| *n <= (self.b.len() - self.at) as u64)
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("{what}: {count} × {size} bytes do not fit in the file")))
    }
}

impl Overlay {
    /// Parses and checks an overlay file: header and body checksums, every count against the
    /// bytes present, row ids strictly ascending.
    pub fn parse(b: &[u8]) -> Result<Overlay, Error> {
        let mut r = Rd { b, at: 0 };
        let magic = r.take(8, "header")?;
        if magic != OVERLAY_MAGIC {
            return Err(bad("not an overlay file (bad magic bytes)".into()));
        }
        let version = r.u32("header")?;
        if version != OVERLAY_VERSION {
            return Err(bad(format!(
                "unsupported overlay version {version} (this reader knows 1)"
            )));
        }
        let entries = r.u32("header")?;
        let base = (r.u64("header")?, r.u32("header")?);
        r.u32("header")?;
        let body_len = r.u64("header")?;
        let body_crc = r.u32("header")?;
        let header_crc = r.u32("header")?;
        r.take(16, "header")?;
        if crc32fast::hash(&b[..44]) != header_crc {
            return Err(bad("header checksum mismatch".into()));
        }
        if b[28..32].iter().chain(&b[48..HEADER]).any(|x| *x != 0) {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        if body_len != (b.len() - HEADER) as u64 {
            return Err(bad(format!(
                "the header says {} body bytes, the file has {} (truncated or appended to)",
                body_len,
                b.len() - HEADER
            )));
        }
        if crc32fast::hash(&b[HEADER..]) != body_crc {
            return Err(bad("body checksum mismatch (the rows are corrupt)".into()));
        }
        if entries > MAX_ENTRIES {
            return Err(bad(format!("{entries} entries (at most {MAX_ENTRIES})")));
        }
        let mut ov = Overlay { base, ..Default::default() };
        for e in 0..entries {
            let what = format!("entry {e}");
            let kind = r.u32(&what)?;
            let name_len = r.u32(&what)? as u64;
            let row_bytes = r.u64(&what)?;
            let count = r.u64(&what)?;
            let n = r.sized(name_len, 1, &what)?;
            let name = core::str::from_utf8(r.padded(n, &what)?)
                .map_err(|_| bad(format!("{what}: the name is not UTF-8")))?
                .to_string();
            let what = format!("entry {e} ('{name}')");
            match kind {
                KIND_PATCH => {
                    if row_bytes == 0 {
                        return Err(bad(format!("{what}: rows of 0 bytes")));
                    }
                    let n = r.sized(count, 4, &what)?;
                    let ids: Vec<u32> = r
                        .padded(n, &what)?
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    if ids.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(bad(format!("{what}: row ids are not strictly ascending")));
                    }
                    let n = r.sized(count, row_bytes, &what)?;
                    let data = r.padded(n, &what)?.to_vec();
                    ov.patches.push(Patch {
                        tensor: name,
                        row_bytes: row_bytes as usize,
                        ids,
                        data,
                    });
                }
                KIND_BLOB => {
                    let n = r.sized(count, 1, &what)?;
                    ov.blobs.push((name, r.padded(n, &what)?.to_vec()));
                }
                k => return Err(bad(format!("{what}: unknown entry kind {k}"))),
            }
        }
        if r.at != b.len() {
            return Err(bad(format!("{} bytes after the last entry", b.len() - r.at)));
        }
        Ok(ov)
    }

    /// The file bytes of this overlay (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let put = |body: &mut Vec<u8>, bytes: &[u8]| {
            body.extend_from_slice(bytes);
            body.resize(pad8(body.len()), 0);
        };
        let head = |body: &mut Vec<u8>, kind: u32, name: &str, row_bytes: u64, count: u64| {
            body.extend_from_slice(&kind.to_le_bytes());
            body.extend_from_slice(&(name.len() as u32).to_le_bytes());
            body.extend_from_slice(&row_bytes.to_le_bytes());
            body.extend_from_slice(&count.to_le_bytes());
            put(body, name.as_bytes());
        };
        for p in &self.patches {
            head(&mut body, KIND_PATCH, &p.tensor, p.row_bytes as u64, p.ids.len() as u64);
            let ids: Vec<u8> = p.ids.iter().flat_map(|i| i.to_le_bytes()).collect();
            put(&mut body, &ids);
            put(&mut body, &p.data);
        }
        for (name, data) in &self.blobs {
            head(&mut body, KIND_BLOB, name, 1, data.len() as u64);
            put(&mut body, data);
        }
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&OVERLAY_MAGIC);
        out.extend_from_slice(&OVERLAY_VERSION.to_le_bytes());
        out.extend_from_slice(&((self.patches.len() + self.blobs.len()) as u32).to_le_bytes());
        out.extend_from_slice(&self.base.0.to_le_bytes());
        out.extend_from_slice(&self.base.1.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        let hc = crc32fast::hash(&out[..44]);
        out.extend_from_slice(&hc.to_le_bytes());
        out.resize(HEADER, 0);
        out.extend_from_slice(&body);
        out
    }

    /// The blob named `name`, if any.
    pub fn blob(&self, name: &str) -> Option<&[u8]> {
        self.blobs.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice())
    }
}

/// A patch bound to a tensor of a model (see [`Model::apply_overlay`]).
#[derive(Clone, Debug)]
pub(crate) struct RowPatch {
    pub tensor: u32,
    pub patch: Patch,
}

/// The patch of constant `r` (a `REF_TENSOR` reference), if it has one.
#[inline]
pub(crate) fn patch_of(patches: &[RowPatch], r: u32) -> Option<&Patch> {
    if r & REF_TENSOR == 0 || patches.is_empty() {
        return None;
    }
    let t = r & !REF_TENSOR;
    patches.iter().find(|p| p.tensor == t).map(|p| &p.patch)
}

impl<B: AsRef<[u8]>> Model<B> {
    /// Applies `ov` to this model: from now on every session created from it reads the
    /// overlay's rows in place of the file's. Checks that the overlay was made for this model
    /// (size and section-table CRC), that each patch names a tensor read only row by row (see
    /// the module docs), and that its rows have that tensor's row size and exist in it.
    /// Replaces any overlay applied before. Takes the overlay's rows without copying them.
    pub fn apply_overlay(&mut self, ov: Overlay) -> Result<(), Error> {
        let id = base_identity(self.bytes());
        if ov.base != id {
            return Err(bad(format!(
                "made for another model (size {} and table CRC {:08x}; this model: {} and {:08x})",
                ov.base.0, ov.base.1, id.0, id.1
            )));
        }
        let mut bound = Vec::with_capacity(ov.patches.len());
        for p in ov.patches {
            let what = format!("patch of '{}'", p.tensor);
            let ti = self
                .tensors
                .iter()
                .position(|t| t.name == p.tensor)
                .ok_or_else(|| bad(format!("{what}: the model has no tensor of that name")))?;
            if bound.iter().any(|b: &RowPatch| b.tensor == ti as u32) {
                return Err(bad(format!("{what}: the tensor is patched twice")));
            }
            let t = &self.tensors[ti];
            let rows = t.dims.first().copied().unwrap_or(1);
            let row_bytes = t.nbytes.checked_div(rows).unwrap_or(0);
            if t.dims.is_empty() || row_bytes != p.row_bytes {
                return Err(bad(format!(
                    "{what}: rows of {} bytes, the tensor {:?} {} has rows of {row_bytes}",
                    p.row_bytes,
                    t.dims,
                    t.dtype.name()
                )));
            }
            if let Some(last) = p.ids.last().filter(|l| **l as usize >= rows) {
                return Err(bad(format!("{what}: row {last} is outside the tensor's {rows} rows")));
            }
            if p.data.len() != p.ids.len() * p.row_bytes {
                return Err(bad(format!("{what}: data does not match its row count")));
            }
            self.check_row_reads(ti as u32, &what)?;
            bound.push(RowPatch { tensor: ti as u32, patch: p });
        }
        self.patches = bound;
        Ok(())
    }

    /// Drops an applied overlay.
    pub fn clear_overlay(&mut self) {
        self.patches.clear();
    }

    /// Rows replaced by the applied overlay, per tensor name.
    pub fn overlay_rows(&self) -> Vec<(&str, usize)> {
        let name = |t: u32| self.tensors[t as usize].name.as_str();
        self.patches.iter().map(|p| (name(p.tensor), p.patch.ids.len())).collect()
    }

    /// Every op of every plan that reads tensor `ti` must read it row by row.
    fn check_row_reads(&self, ti: u32, what: &str) -> Result<(), Error> {
        let r = REF_TENSOR | ti;
        for plan in &self.plans {
            for (i, (op, rec)) in plan.ops.iter().zip(&plan.records).enumerate() {
                let ins = &rec.inputs[..rec.n_inputs as usize];
                let Some(pos) = ins.iter().position(|x| *x == r) else { continue };
                let ok = match op {
                    Op::Gather { outer, .. } => pos == 0 && *outer == 1,
                    Op::GatherRowsI8 { .. } | Op::GatherRowsI4 { .. } => pos < 3,
                    _ => false,
                };
                if !ok || ins[pos + 1..].contains(&r) {
                    let code = OpCode::from_u16(rec.opcode).map_or("?", |c| c.name());
                    return Err(bad(format!(
                        "{what}: op #{i} ({code}) of the batch-{} plan reads the tensor as a \
                         whole, not by rows",
                        plan.batch
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Overlay {
        Overlay {
            base: (12345, 0xdead_beef),
            patches: vec![Patch {
                tensor: "t.i8".into(),
                row_bytes: 3,
                ids: vec![1, 4, 9],
                data: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
            }],
            blobs: vec![("state".into(), b"{\"a\":1}".to_vec()), ("empty".into(), vec![])],
        }
    }

    #[test]
    fn round_trips_and_finds_rows() {
        let ov = sample();
        let b = ov.to_bytes();
        assert_eq!(b.len() % 8, 0);
        let back = Overlay::parse(&b).unwrap();
        assert_eq!(back, ov);
        let p = &back.patches[0];
        assert_eq!(p.row(4), Some(&[4u8, 5, 6][..]));
        assert_eq!((p.row(0), p.row(5), p.row(usize::MAX)), (None, None, None));
        assert_eq!(back.blob("state"), Some(&b"{\"a\":1}"[..]));
        assert_eq!(back.blob("empty"), Some(&[][..]));
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_an_error() {
        let b = sample().to_bytes();
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(Overlay::parse(&c).is_err(), "flip at {i} accepted");
        }
        for n in 0..b.len() {
            let e = Overlay::parse(&b[..n]).unwrap_err().to_string();
            assert!(e.starts_with("bad overlay:"), "{e}");
        }
    }

    /// Re-seals the header after an edit of the body (as a buggy writer would produce).
    fn reseal(b: &mut [u8]) {
        let body = crc32fast::hash(&b[HEADER..]);
        b[40..44].copy_from_slice(&body.to_le_bytes());
        let h = crc32fast::hash(&b[..44]);
        b[44..48].copy_from_slice(&h.to_le_bytes());
    }

    #[test]
    fn sealed_but_malformed_bodies_are_named() {
        let mut ov = sample();
        ov.patches[0].ids = vec![4, 4, 9];
        let e = Overlay::parse(&ov.to_bytes()).unwrap_err().to_string();
        assert!(e.contains("strictly ascending"), "{e}");
        // A row count that overflows the file.
        let mut b = sample().to_bytes();
        b[HEADER + 16..HEADER + 24].copy_from_slice(&u64::MAX.to_le_bytes());
        reseal(&mut b);
        let e = Overlay::parse(&b).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
        // An unknown entry kind.
        let mut b = sample().to_bytes();
        b[HEADER] = 7;
        reseal(&mut b);
        let e = Overlay::parse(&b).unwrap_err().to_string();
        assert!(e.contains("unknown entry kind 7"), "{e}");
    }
}
