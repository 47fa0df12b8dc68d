//! Parsing and validation of a whole `.ember` file into a [`Model`].

use crate::error::corrupt;
use crate::format::*;
use crate::ops::{self, Op, RefInfo};
use crate::Error;
use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;

/// A constant tensor of the file, validated: its bytes are `file[offset..offset + nbytes]`.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub role: TensorRole,
    /// Absolute offset in the file.
    pub offset: usize,
    pub nbytes: usize,
    pub scale_tensor: Option<u32>,
}

/// An arena value of a plan, validated to lie inside the arena.
#[derive(Clone, Debug)]
pub struct ValueInfo {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub offset: usize,
    pub nbytes: usize,
}

/// A model input or output: name, dtype, per-sample shape (batch axis excluded).
#[derive(Clone, Debug)]
pub struct SigEntry {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
}

/// One validated execution plan for one fixed batch size.
#[derive(Clone, Debug)]
pub struct Plan {
    pub batch: usize,
    pub arena_size: usize,
    pub inputs: Vec<u32>,
    pub outputs: Vec<u32>,
    pub values: Vec<ValueInfo>,
    pub records: Vec<OpRecord>,
    pub(crate) ops: Vec<Op>,
    /// What the CPU runs: `ops` with the attention head shuffles folded into the matmuls
    /// ([`crate::ops::fuse`]).
    pub(crate) cpu: crate::ops::fuse::Schedule,
    /// Per op, the step that absorbed it ([`Plan::absorbed_on_cpu`]; `usize::MAX`: none).
    cpu_absorbed_by: Vec<usize>,
    /// The values with the offsets of the CPU schedule's own arena ([`Plan::cpu_arena_size`]
    /// bytes; the file's `values` and `arena_size` are the plan as written).
    pub(crate) cpu_values: Vec<ValueInfo>,
    pub cpu_arena_size: usize,
    /// Scratch the plan's integer ops need (either schedule): i8, i32 and f32 elements.
    pub scratch: (usize, usize, usize),
}

impl Plan {
    /// Whether op `i` does not run on the CPU because a matmul took its work over (an
    /// attention head shuffle read or written in place; see [`crate::Session::run_as_written`]).
    pub fn folded_on_cpu(&self, i: usize) -> bool {
        self.cpu.get(i).is_some_and(Option::is_none)
    }

    /// Whether op `i` writes over its own input on the CPU (a softmax over attention scores
    /// that nothing else reads; see [`crate::Session::run_as_written`]).
    pub fn in_place_on_cpu(&self, i: usize) -> bool {
        matches!(self.cpu.get(i), Some(Some(crate::ops::fuse::Step { op: Op::Softmax { x, .. }, out })) if x == out)
    }

    /// Whether op `i` is a matmul that reads or writes attention heads in place on the CPU.
    pub fn heads_in_place(&self, i: usize) -> bool {
        match self.cpu.get(i) {
            Some(Some(crate::ops::fuse::Step { op: Op::MatMulI8 { la, lb, lo, .. }, .. })) => {
                !(la.is_dense() && lb.is_dense() && lo.is_dense())
            }
            Some(Some(crate::ops::fuse::Step {
                op: Op::AttentionF32 { lq, lk, lv, lo, .. },
                ..
            })) => !(lq.is_dense() && lk.is_dense() && lv.is_dense() && lo.is_dense()),
            _ => false,
        }
    }

    /// Whether quantized linear op `i` hands its output over on the CPU as the u8 codes of
    /// the next linear (first), and whether it reads such codes (second).
    pub fn handoff_on_cpu(&self, i: usize) -> (bool, bool) {
        match self.cpu.get(i) {
            Some(Some(step)) => match crate::ops::static_linear(&step.op) {
                Some(l) => (l.hand.out_q.is_some(), l.hand.x_codes),
                None => (false, false),
            },
            _ => (false, false),
        }
    }

    /// The step of the CPU schedule that does op `i`'s work when a fused step took it over
    /// (then op `i` itself does not run): the scores MatMul and the Softmax of a fused
    /// attention, the Add of an add-and-norm.
    pub fn absorbed_on_cpu(&self, i: usize) -> Option<usize> {
        self.cpu_absorbed_by.get(i).copied().filter(|j| *j != usize::MAX)
    }

    /// Whether op `i` is a LayerNorm that forms the residual sum it normalizes itself on the
    /// CPU, or the Add whose sum it forms (which then does not run).
    pub fn add_norm_on_cpu(&self, i: usize) -> bool {
        let j = self.absorbed_on_cpu(i).unwrap_or(i);
        matches!(
            self.cpu.get(j),
            Some(Some(crate::ops::fuse::Step { op: Op::AddLayerNorm { .. }, .. }))
        )
    }

    /// Whether op `i` is the scores MatMul or the Softmax of an attention that runs fused on
    /// the CPU (they do not run; the step [`Plan::attention_on_cpu`] names does their work).
    pub fn in_attention_on_cpu(&self, i: usize) -> bool {
        self.absorbed_on_cpu(i).is_some_and(|j| self.attention_on_cpu(j))
    }

    /// Whether op `i` (a float P·V MatMul) runs the whole attention of its heads on the CPU:
    /// the scores MatMul and the Softmax before it fold into it, and the scores stay in a
    /// per-thread slot instead of the arena.
    pub fn attention_on_cpu(&self, i: usize) -> bool {
        matches!(
            self.cpu.get(i),
            Some(Some(crate::ops::fuse::Step { op: Op::AttentionF32 { .. }, .. }))
        )
    }
}

/// A validated `.ember` model over its bytes `B` (a slice, a memory map, an aligned buffer).
/// How much of a file [`Model::parse_with`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Verify {
    /// Every byte: all section checksums (weights included), then the structure.
    #[default]
    Full,
    /// Everything but the checksum of the DATA section (the weights): header, section table,
    /// strings, tensors, signature, plans and metadata are checksummed and validated as with
    /// `Full`, so running the model stays memory-safe; a flipped weight bit changes results
    /// instead of failing the load. For start-up-critical loads of files whose weights were
    /// verified once (after flashing: `ember inspect` does a full check). Skipping the pass over
    /// the weights also leaves their pages to be mapped by the first run.
    Structure,
}

pub struct Model<B: AsRef<[u8]>> {
    bytes: B,
    pub strings: Vec<String>,
    pub tensors: Vec<TensorInfo>,
    pub inputs: Vec<SigEntry>,
    pub outputs: Vec<SigEntry>,
    pub plans: Vec<Plan>,
    pub metadata: Vec<(String, String)>,
    /// Rows replaced by an overlay ([`Model::apply_overlay`]); empty without one.
    pub(crate) patches: Vec<crate::overlay::RowPatch>,
}

struct Section {
    kind: SectionKind,
    index: u32,
    start: usize,
    len: usize,
}

impl<B: AsRef<[u8]>> Model<B> {
    /// Validates `bytes` as an `.ember` file. The buffer must be 8-byte aligned (a memory map, an
    /// [`crate::AlignedBuf`], or a `#[repr(align(8))]` static in flash).
    pub fn parse(bytes: B) -> Result<Self, Error> {
        Self::parse_with(bytes, Verify::Full)
    }

    /// [`Model::parse`] with a choice of how much to check; see [`Verify`].
    pub fn parse_with(bytes: B, verify: Verify) -> Result<Self, Error> {
        Self::parse_with_crc(bytes, verify, crc32fast::hash)
    }

    /// [`Model::parse_with`] computing each section's CRC-32 with `crc` (same result as
    /// `crc32fast::hash`; the std loader spreads large sections over threads).
    pub(crate) fn parse_with_crc(
        bytes: B,
        verify: Verify,
        crc: fn(&[u8]) -> u32,
    ) -> Result<Self, Error> {
        let parsed = parse_all(bytes.as_ref(), verify, crc)?;
        let (strings, tensors, inputs, outputs, plans, metadata) = parsed;
        Ok(Model { bytes, strings, tensors, inputs, outputs, plans, metadata, patches: Vec::new() })
    }

    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The plan compiled for `batch`, if any.
    pub fn plan_index(&self, batch: usize) -> Option<usize> {
        self.plans.iter().position(|p| p.batch == batch)
    }

    /// Batch sizes compiled into the file, ascending.
    pub fn batch_sizes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.plans.iter().map(|p| p.batch).collect();
        v.sort_unstable();
        v
    }

    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes.as_ref()[t.offset..t.offset + t.nbytes]
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The graph node each op of the plan for `batch` came from (metadata written by the
    /// quantizer under [`op_names_key`]); empty when the file has none.
    pub fn op_names(&self, batch: usize) -> Vec<&str> {
        self.meta(&op_names_key(batch)).map(|s| s.lines().collect()).unwrap_or_default()
    }
}

/// Metadata key of the op names of the plan for `batch` (one node name per line, in op order).
pub fn op_names_key(batch: usize) -> String {
    alloc::format!("op_names.b{batch}")
}

type Parsed =
    (Vec<String>, Vec<TensorInfo>, Vec<SigEntry>, Vec<SigEntry>, Vec<Plan>, Vec<(String, String)>);

fn parse_all(file: &[u8], verify: Verify, crc: fn(&[u8]) -> u32) -> Result<Parsed, Error> {
    if file.len() < HEADER_LEN {
        return Err(Error::Truncated {
            what: "header",
            need: HEADER_LEN as u64,
            have: file.len() as u64,
        });
    }
    if file[..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    if !(file.as_ptr() as usize).is_multiple_of(8) {
        return Err(corrupt!(
            "model buffer is not 8-byte aligned; load it with load_file or AlignedBuf"
        ));
    }
    let mut c = Cursor::new(file, "header");
    c.take(8)?;
    let version = c.u32()?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let n_sections = c.u32()?;
    let file_size = c.u64()?;
    let table_crc = c.u32()?;
    let header_crc = c.u32()?;
    if crc32fast::hash(&file[..28]) != header_crc {
        return Err(Error::Checksum { section: "header", index: 0 });
    }
    if file[32..HEADER_LEN].iter().any(|b| *b != 0) {
        return Err(corrupt!("reserved header bytes 32..64 are not zero"));
    }
    if file_size != file.len() as u64 {
        return Err(Error::Truncated {
            what: "file (header's file_size)",
            need: file_size,
            have: file.len() as u64,
        });
    }
    if n_sections == 0 || n_sections > MAX_SECTIONS {
        return Err(corrupt!("section count {n_sections} outside 1..={MAX_SECTIONS}"));
    }
    let table_end = HEADER_LEN + n_sections as usize * SECTION_ENTRY_LEN;
    if table_end > file.len() {
        return Err(Error::Truncated {
            what: "section table",
            need: table_end as u64,
            have: file.len() as u64,
        });
    }
    let table = &file[HEADER_LEN..table_end];
    if crc32fast::hash(table) != table_crc {
        return Err(Error::Checksum { section: "section table", index: 0 });
    }
    let mut c = Cursor::new(table, "section table");
    let mut sections = Vec::new();
    for i in 0..n_sections {
        let kind_raw = c.u32()?;
        let index = c.u32()?;
        let offset = c.u64()?;
        let len = c.u64()?;
        let want = c.u32()?;
        c.u32()?;
        let kind = SectionKind::from_u32(kind_raw)
            .ok_or_else(|| corrupt!("section #{i} has unknown kind {kind_raw}"))?;
        if offset % ALIGN as u64 != 0 {
            return Err(corrupt!(
                "{} section #{i} offset {offset} is not 64-byte aligned",
                kind.name()
            ));
        }
        let end = offset.checked_add(len).filter(|e| *e <= file.len() as u64).ok_or(
            Error::Truncated {
                what: kind.name(),
                need: offset.saturating_add(len),
                have: file.len() as u64,
            },
        )?;
        if offset < table_end as u64 {
            return Err(corrupt!("{} section #{i} overlaps the header", kind.name()));
        }
        let (start, end) = (offset as usize, end as usize);
        let skip = verify == Verify::Structure && kind == SectionKind::Data;
        if !skip && crc(&file[start..end]) != want {
            return Err(Error::Checksum { section: kind.name(), index: i });
        }
        sections.push(Section { kind, index, start, len: end - start });
    }
    let mut by_offset: Vec<&Section> = sections.iter().collect();
    by_offset.sort_by_key(|s| s.start);
    for w in by_offset.windows(2) {
        if w[0].start + w[0].len > w[1].start {
            return Err(corrupt!("{} and {} sections overlap", w[0].kind.name(), w[1].kind.name()));
        }
    }
    // Bytes outside the header, the table and the sections (alignment padding) must be zero, so
    // that no byte of the file escapes validation.
    let mut pos = table_end;
    for s in &by_offset {
        if file[pos.min(s.start)..s.start].iter().any(|b| *b != 0) {
            return Err(corrupt!("non-zero padding before the {} section", s.kind.name()));
        }
        pos = pos.max(s.start + s.len);
    }
    if file[pos.min(file.len())..].iter().any(|b| *b != 0) {
        return Err(corrupt!("non-zero bytes after the last section"));
    }
    let one = |k: SectionKind| -> Result<&[u8], Error> {
        let mut it = sections.iter().filter(|s| s.kind == k);
        let s = it.next().ok_or_else(|| corrupt!("missing {} section", k.name()))?;
        if it.next().is_some() {
            return Err(corrupt!("more than one {} section", k.name()));
        }
        Ok(&file[s.start..s.start + s.len])
    };
    let strings = parse_strings(one(SectionKind::Strings)?)?;
    let data = one(SectionKind::Data)?;
    let data_start = data.as_ptr() as usize - file.as_ptr() as usize;
    let tensors = parse_tensors(one(SectionKind::Tensors)?, data.len(), data_start, &strings)?;
    let (inputs, outputs) = parse_signature(one(SectionKind::Signature)?, &strings)?;
    let metadata = parse_metadata(one(SectionKind::Metadata)?, &strings)?;
    let mut plan_secs: Vec<&Section> =
        sections.iter().filter(|s| s.kind == SectionKind::Plan).collect();
    if plan_secs.is_empty() || plan_secs.len() > MAX_PLANS {
        return Err(corrupt!("{} PLAN sections, expected 1..={MAX_PLANS}", plan_secs.len()));
    }
    plan_secs.sort_by_key(|s| s.index);
    let mut plans: Vec<Plan> = Vec::new();
    for s in plan_secs {
        let p = parse_plan(&file[s.start..s.start + s.len], s.index, &tensors, &inputs, &outputs)?;
        if plans.iter().any(|q| q.batch == p.batch) {
            return Err(corrupt!("two plans for batch size {}", p.batch));
        }
        plans.push(p);
    }
    Ok((strings, tensors, inputs, outputs, plans, metadata))
}

fn string_at(strings: &[String], id: u32, what: &str) -> Result<String, Error> {
    strings.get(id as usize).cloned().ok_or_else(|| corrupt!("{what}: string id {id} out of range"))
}

fn parse_strings(sec: &[u8]) -> Result<Vec<String>, Error> {
    let mut c = Cursor::new(sec, "STRINGS");
    let n = c.u32()?;
    if n > MAX_STRINGS || 4 + n as usize * 8 > sec.len() {
        return Err(corrupt!("string count {n} does not fit the STRINGS section"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let off = c.u32()? as usize;
        let len = c.u32()? as usize;
        let b = off.checked_add(len).and_then(|e| sec.get(off..e)).ok_or_else(|| {
            corrupt!("string #{i} (offset {off}, length {len}) lies outside STRINGS")
        })?;
        let s = core::str::from_utf8(b).map_err(|_| corrupt!("string #{i} is not UTF-8"))?;
        out.push(String::from(s));
    }
    Ok(out)
}

/// Checks a shape and returns (dims, byte length).
fn shape(
    dtype: DType,
    rank: u32,
    dims: &[u32; MAX_RANK],
    what: &str,
) -> Result<(Vec<usize>, usize), Error> {
    if rank as usize > MAX_RANK {
        return Err(corrupt!("{what}: rank {rank} exceeds {MAX_RANK}"));
    }
    let d: Vec<usize> = dims[..rank as usize].iter().map(|x| *x as usize).collect();
    let mut n: usize = dtype.size();
    for x in &d {
        n = n
            .checked_mul(*x)
            .filter(|n| (*n as u64) <= MAX_ARENA)
            .ok_or_else(|| corrupt!("{what}: shape {d:?} is absurdly large"))?;
    }
    Ok((d, n))
}

fn parse_tensors(
    sec: &[u8],
    data_len: usize,
    data_start: usize,
    strings: &[String],
) -> Result<Vec<TensorInfo>, Error> {
    let mut c = Cursor::new(sec, "TENSORS");
    let n = c.u32()?;
    c.u32()?;
    if n > MAX_TENSORS || 8 + n as usize * TENSOR_RECORD_LEN > sec.len() {
        return Err(corrupt!("tensor count {n} does not fit the TENSORS section"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let r = TensorRecord::read(&mut c)?;
        let name = string_at(strings, r.name, "tensor name")?;
        let what = alloc::format!("tensor #{i} '{name}'");
        let dtype = DType::from_u32(r.dtype)
            .ok_or_else(|| corrupt!("{what}: unknown dtype {}", r.dtype))?;
        let (dims, nbytes) = shape(dtype, r.rank, &r.dims, &what)?;
        if r.nbytes != nbytes as u64 {
            return Err(corrupt!(
                "{what}: byte length {} does not match its shape {dims:?} ({nbytes})",
                r.nbytes
            ));
        }
        if r.offset % ALIGN as u64 != 0 {
            return Err(corrupt!("{what}: data offset {} is not 64-byte aligned", r.offset));
        }
        if r.offset.checked_add(r.nbytes).is_none_or(|e| e > data_len as u64) {
            return Err(corrupt!(
                "{what}: data [{}, +{}) lies outside DATA ({data_len} bytes)",
                r.offset,
                r.nbytes
            ));
        }
        let role = match r.role {
            0 => TensorRole::Plain,
            1 => TensorRole::WeightI8PerChannel,
            2 => TensorRole::EmbeddingI8Rowwise,
            3 => TensorRole::QuantParam,
            4 => TensorRole::WeightI4Grouped,
            5 => TensorRole::EmbeddingI4Grouped,
            x => return Err(corrupt!("{what}: unknown role {x}")),
        };
        let scale_tensor = if r.scale_tensor == REF_NONE {
            None
        } else if r.scale_tensor < n {
            Some(r.scale_tensor)
        } else {
            return Err(corrupt!("{what}: scale tensor {} out of range", r.scale_tensor));
        };
        out.push(TensorInfo {
            name,
            dtype,
            dims,
            role,
            offset: data_start + r.offset as usize,
            nbytes,
            scale_tensor,
        });
    }
    let mut spans: Vec<(usize, usize, usize)> = out
        .iter()
        .enumerate()
        .filter(|(_, t)| t.nbytes > 0)
        .map(|(i, t)| (t.offset, t.nbytes, i))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(corrupt!(
                "tensors '{}' and '{}' overlap in DATA",
                out[w[0].2].name,
                out[w[1].2].name
            ));
        }
    }
    Ok(out)
}

fn parse_signature(
    sec: &[u8],
    strings: &[String],
) -> Result<(Vec<SigEntry>, Vec<SigEntry>), Error> {
    let mut c = Cursor::new(sec, "SIGNATURE");
    let n_in = c.u32()?;
    let n_out = c.u32()?;
    if n_in == 0 || n_out == 0 || n_in > MAX_IO || n_out > MAX_IO {
        return Err(corrupt!(
            "signature has {n_in} inputs and {n_out} outputs (each must be 1..={MAX_IO})"
        ));
    }
    let mut all = Vec::new();
    for i in 0..n_in + n_out {
        let r = SigRecord::read(&mut c)?;
        let name = string_at(strings, r.name, "signature name")?;
        let dtype = DType::from_u32(r.dtype)
            .ok_or_else(|| corrupt!("signature '{name}': unknown dtype {}", r.dtype))?;
        if r.rank as usize >= MAX_RANK {
            return Err(corrupt!("signature entry #{i} '{name}': rank {} too large", r.rank));
        }
        let (dims, _) = shape(dtype, r.rank, &r.dims, &name)?;
        all.push(SigEntry { name, dtype, dims });
    }
    let outputs = all.split_off(n_in as usize);
    Ok((all, outputs))
}

fn parse_metadata(sec: &[u8], strings: &[String]) -> Result<Vec<(String, String)>, Error> {
    let mut c = Cursor::new(sec, "METADATA");
    let n = c.u32()?;
    if 4 + n as u64 * 8 > sec.len() as u64 {
        return Err(corrupt!("metadata count {n} does not fit its section"));
    }
    (0..n)
        .map(|_| {
            Ok((
                string_at(strings, c.u32()?, "metadata key")?,
                string_at(strings, c.u32()?, "metadata value")?,
            ))
        })
        .collect()
}

fn parse_plan(
    sec: &[u8],
    index: u32,
    tensors: &[TensorInfo],
    sig_in: &[SigEntry],
    sig_out: &[SigEntry],
) -> Result<Plan, Error> {
    let mut c = Cursor::new(sec, "PLAN");
    let h = PlanHeader::read(&mut c)?;
    let p = alloc::format!("plan #{index} (batch {})", h.batch);
    if h.batch == 0 || h.batch > 1 << 20 {
        return Err(corrupt!("{p}: batch size {} outside 1..=2^20", h.batch));
    }
    if h.n_values > MAX_VALUES || h.n_ops > MAX_OPS || h.n_ops == 0 {
        return Err(corrupt!("{p}: {} values and {} ops exceed the caps", h.n_values, h.n_ops));
    }
    if h.arena_size > MAX_ARENA {
        return Err(corrupt!(
            "{p}: arena of {} bytes exceeds the cap of {MAX_ARENA}",
            h.arena_size
        ));
    }
    let n_io = sig_in.len() + sig_out.len();
    let need = PLAN_HEADER_LEN as u64
        + (n_io as u64 * 4).next_multiple_of(8)
        + h.n_values as u64 * VALUE_RECORD_LEN as u64
        + h.n_ops as u64 * OP_RECORD_LEN as u64;
    if need != sec.len() as u64 {
        return Err(corrupt!("{p}: section is {} bytes but its counts need {need}", sec.len()));
    }
    let mut io = Vec::with_capacity(n_io);
    for _ in 0..n_io {
        io.push(c.u32()?);
    }
    if n_io % 2 == 1 {
        c.u32()?;
    }
    let mut values = Vec::with_capacity(h.n_values as usize);
    for i in 0..h.n_values {
        let r = ValueRecord::read(&mut c)?;
        let dtype = DType::from_u32(r.dtype)
            .ok_or_else(|| corrupt!("{p}: value #{i}: unknown dtype {}", r.dtype))?;
        let (dims, nbytes) = shape(dtype, r.rank, &r.dims, &alloc::format!("{p}: value #{i}"))?;
        if r.nbytes != nbytes as u64
            || r.offset % ALIGN as u64 != 0
            || r.offset + r.nbytes > h.arena_size
        {
            return Err(corrupt!(
                "{p}: value #{i} (offset {}, {} bytes, shape {dims:?}) is misaligned, mis-sized or overruns the arena of {} bytes",
                r.offset, r.nbytes, h.arena_size
            ));
        }
        values.push(ValueInfo { dtype, dims, offset: r.offset as usize, nbytes });
    }
    let outputs = io.split_off(sig_in.len());
    let inputs = io;
    for (ids, sig, kind) in [(&inputs, sig_in, "input"), (&outputs, sig_out, "output")] {
        for (id, s) in ids.iter().zip(sig) {
            let v = values.get(*id as usize).ok_or_else(|| {
                corrupt!("{p}: {kind} '{}' names value {id}, out of range", s.name)
            })?;
            let mut want = vec![h.batch as usize];
            want.extend_from_slice(&s.dims);
            if v.dtype != s.dtype || v.dims != want {
                return Err(corrupt!(
                    "{p}: {kind} '{}' value has {} {:?}, signature says {} {:?}",
                    s.name,
                    v.dtype.name(),
                    v.dims,
                    s.dtype.name(),
                    want
                ));
            }
        }
    }
    // Records, SSA order and liveness.
    let nv = values.len();
    let mut def_at: Vec<i64> = vec![i64::MAX; nv];
    for (k, id) in inputs.iter().enumerate() {
        if def_at[*id as usize] != i64::MAX {
            return Err(corrupt!("{p}: input #{k} reuses value {id}"));
        }
        def_at[*id as usize] = -1;
    }
    let mut records = Vec::with_capacity(h.n_ops as usize);
    let mut last_use: Vec<i64> = vec![-1; nv];
    for i in 0..h.n_ops as usize {
        let r = OpRecord::read(&mut c)?;
        if r.n_inputs as usize > OP_MAX_INPUTS || r.n_outputs != 1 {
            return Err(corrupt!(
                "{p}: op #{i} has {} inputs and {} outputs",
                r.n_inputs,
                r.n_outputs
            ));
        }
        for &x in &r.inputs[..r.n_inputs as usize] {
            if x == REF_NONE {
                continue;
            }
            if x & REF_TENSOR != 0 {
                if (x & !REF_TENSOR) as usize >= tensors.len() {
                    return Err(corrupt!(
                        "{p}: op #{i} reads tensor {} which does not exist",
                        x & !REF_TENSOR
                    ));
                }
            } else if (x as usize) >= nv || def_at[x as usize] >= i as i64 {
                return Err(corrupt!(
                    "{p}: op #{i} reads value {x} before it is defined (or a cycle)"
                ));
            } else {
                last_use[x as usize] = i as i64;
            }
        }
        let o = r.outputs[0] as usize;
        if o >= nv || def_at[o] != i64::MAX {
            return Err(corrupt!(
                "{p}: op #{i} writes value {o}, which is out of range or already defined"
            ));
        }
        def_at[o] = i as i64;
        records.push(r);
    }
    for id in &outputs {
        if def_at[*id as usize] == i64::MAX {
            return Err(corrupt!("{p}: output value {id} is never computed"));
        }
        last_use[*id as usize] = h.n_ops as i64;
    }
    check_liveness(&p, &values, &def_at, &last_use, &records)?;
    let mut ops_v = Vec::with_capacity(records.len());
    let mut scratch = (0usize, 0usize, 0usize);
    for (i, r) in records.iter().enumerate() {
        let info = |x: u32| -> RefInfo {
            if x & REF_TENSOR != 0 {
                let t = &tensors[(x & !REF_TENSOR) as usize];
                RefInfo { dtype: t.dtype, dims: &t.dims, is_tensor: true }
            } else {
                let v = &values[x as usize];
                RefInfo { dtype: v.dtype, dims: &v.dims, is_tensor: false }
            }
        };
        let op = ops::prepare(r, &info).map_err(|m| {
            corrupt!(
                "{p}: op #{i} ({}): {m}",
                OpCode::from_u16(r.opcode).map(|o| o.name()).unwrap_or("unknown")
            )
        })?;
        let (a, b, c) = op.scratch();
        scratch = (scratch.0.max(a), scratch.1.max(b), scratch.2.max(c));
        ops_v.push(op);
    }
    let cpu = crate::ops::fuse::schedule(&crate::ops::fuse::Facts {
        records: &records,
        ops: &ops_v,
        values: &values,
        def_at: &def_at,
        last_use: &last_use,
        outputs: &outputs,
    });
    // The schedule's own arena: its values' lifetimes differ from the file's (folded copies
    // never written, sources read later), so their slots are placed again, and checked as the
    // file's were.
    let mut sized = values.clone();
    for &(v, bytes) in &cpu.resized {
        sized[v as usize].nbytes = bytes;
    }
    let (cpu_values, cpu_arena_size) = place_values(&sized, &cpu.def_at, &cpu.last_use);
    if cpu_arena_size as u64 > MAX_ARENA {
        return Err(corrupt!("{p}: the CPU schedule's arena of {cpu_arena_size} bytes exceeds the cap of {MAX_ARENA}"));
    }
    check_liveness(
        &alloc::format!("{p} (CPU schedule)"),
        &cpu_values,
        &cpu.def_at,
        &cpu.last_use,
        &records,
    )?;
    for step in cpu.steps.iter().flatten() {
        let (a, b, c) = step.op.scratch();
        scratch = (scratch.0.max(a), scratch.1.max(b), scratch.2.max(c));
    }
    Ok(Plan {
        batch: h.batch as usize,
        arena_size: h.arena_size as usize,
        inputs,
        outputs,
        values,
        records,
        ops: ops_v,
        cpu: cpu.steps,
        cpu_absorbed_by: cpu.absorbed_by,
        cpu_values,
        cpu_arena_size,
        scratch,
    })
}

/// The CPU schedule's values with offsets placed by [`first_fit`] in the order they are written
/// (`def_at`, `last_use` as the loader's liveness check reads them; `i64::MAX`: never written),
/// and the arena's size.
fn place_values(values: &[ValueInfo], def_at: &[i64], last_use: &[i64]) -> (Vec<ValueInfo>, usize) {
    let mut order: Vec<(i64, usize)> =
        def_at.iter().enumerate().filter(|(_, d)| **d != i64::MAX).map(|(v, d)| (*d, v)).collect();
    order.sort_unstable();
    let order: Vec<usize> = order.into_iter().map(|(_, v)| v).collect();
    let nbytes: Vec<usize> = values.iter().map(|v| v.nbytes).collect();
    let (offsets, arena) = first_fit(&nbytes, def_at, last_use, &order);
    let mut out = values.to_vec();
    for (v, o) in out.iter_mut().zip(offsets) {
        v.offset = o;
    }
    (out, arena)
}

/// First-fit arena placement, how `quantize` plans a file's arena and the loader the CPU
/// schedule's: the values of `order` (by the op that writes them, `def_at`; -1 for inputs) each
/// go to the lowest 64-aligned offset free of every value placed before and still live when it
/// is written; a value's slot stays taken through op `max(def_at, last_use, 0)`. Returns each
/// value's offset (0 when it is not in `order` or has no bytes) and the arena's size.
pub fn first_fit(
    nbytes: &[usize],
    def_at: &[i64],
    last_use: &[i64],
    order: &[usize],
) -> (Vec<usize>, usize) {
    let align = |x: usize| x.next_multiple_of(ALIGN);
    let mut offsets = vec![0usize; nbytes.len()];
    // Live slots (start, end, value), sorted by start.
    let mut live: Vec<(usize, usize, usize)> = Vec::new();
    let mut arena = 0usize;
    for &v in order {
        let d = def_at[v];
        // (An unread input keeps its slot through op 0, as the liveness check sees it.)
        live.retain(|(_, _, u)| last_use[*u].max(def_at[*u]).max(0) >= d);
        let size = align(nbytes[v]);
        if size == 0 {
            continue;
        }
        let mut cand = 0usize;
        let mut pos = live.len();
        for (j, (s, e, _)) in live.iter().enumerate() {
            if cand + size <= *s {
                pos = j;
                break;
            }
            cand = cand.max(align(*e));
        }
        offsets[v] = cand;
        arena = arena.max(cand + size);
        live.insert(pos, (cand, cand + nbytes[v], v));
    }
    (offsets, arena)
}

/// No op may write over a value that is still to be read: live arena ranges never overlap.
fn check_liveness(
    p: &str,
    values: &[ValueInfo],
    def_at: &[i64],
    last_use: &[i64],
    records: &[OpRecord],
) -> Result<(), Error> {
    let mut live: BTreeMap<usize, (usize, usize)> = BTreeMap::new(); // start -> (end, value)
    let mut deaths: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    let insert =
        |live: &mut BTreeMap<usize, (usize, usize)>, v: usize, at: i64| -> Result<(), Error> {
            let info = &values[v];
            if info.nbytes == 0 {
                return Ok(());
            }
            let (s, e) = (info.offset, info.offset + info.nbytes);
            if let Some((_, (pe, pv))) = live.range(..=s).next_back() {
                if *pe > s {
                    return Err(corrupt!(
                        "{p}: value {v} (defined by op #{at}) overwrites live value {pv}"
                    ));
                }
            }
            if let Some((_, (_, nv))) = live.range(s..e).next() {
                return Err(corrupt!(
                    "{p}: value {v} (defined by op #{at}) overwrites live value {nv}"
                ));
            }
            live.insert(s, (e, v));
            Ok(())
        };
    for (v, d) in def_at.iter().enumerate() {
        if *d == -1 {
            insert(&mut live, v, -1)?;
            deaths.push(Reverse((last_use[v].max(-1), v)));
        }
    }
    let mut by_def: Vec<(i64, usize)> = def_at
        .iter()
        .enumerate()
        .filter(|(_, d)| **d >= 0 && **d != i64::MAX)
        .map(|(v, d)| (*d, v))
        .collect();
    by_def.sort_unstable();
    let mut next_def = 0;
    for i in 0..records.len() as i64 {
        // Inputs read by op i are still live while it writes its output.
        while next_def < by_def.len() && by_def[next_def].0 == i {
            let v = by_def[next_def].1;
            insert(&mut live, v, i)?;
            deaths.push(Reverse((last_use[v].max(i), v)));
            next_def += 1;
        }
        while let Some(Reverse((d, v))) = deaths.peek().copied() {
            if d > i {
                break;
            }
            deaths.pop();
            let info = &values[v];
            if info.nbytes > 0 && live.get(&info.offset).is_some_and(|(_, lv)| *lv == v) {
                live.remove(&info.offset);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_fit;
    use alloc::vec::Vec;

    /// Random lifetimes and sizes: no two values whose slots are taken at a common op overlap,
    /// every slot is 64-aligned and inside the arena, and slots get reused (the arena is smaller
    /// than all values together).
    #[test]
    fn first_fit_never_overlaps_live_values() {
        let mut x = 0x2545_f491_u32;
        let mut next = |m: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % m
        };
        let mut reused = 0;
        for _ in 0..50 {
            let (n_in, n_ops) = (1 + next(3) as usize, 1 + next(40) as usize);
            let nv = n_in + n_ops;
            let nbytes: Vec<usize> = (0..nv).map(|_| next(5000) as usize).collect();
            let mut def: Vec<i64> = (0..nv).map(|v| v as i64 - n_in as i64).collect();
            def.iter_mut().take(n_in).for_each(|d| *d = -1);
            let last: Vec<i64> =
                def.iter().map(|d| if next(4) == 0 { -1 } else { d + next(6) as i64 }).collect();
            let order: Vec<usize> = (0..nv).collect();
            let (off, arena) = first_fit(&nbytes, &def, &last, &order);
            let end = |v: usize| last[v].max(def[v]).max(0);
            for a in 0..nv {
                assert!(off[a] % 64 == 0 && off[a] + nbytes[a] <= arena);
                for b in a + 1..nv {
                    let live_together = def[a] <= end(b) && def[b] <= end(a);
                    let apart = off[a] + nbytes[a] <= off[b] || off[b] + nbytes[b] <= off[a];
                    let empty = nbytes[a] == 0 || nbytes[b] == 0;
                    assert!(!live_together || apart || empty, "values {a} and {b} overlap");
                }
            }
            reused += (arena < nbytes.iter().map(|b| b.next_multiple_of(64)).sum()) as usize;
        }
        assert!(reused > 25, "slots reused in only {reused} of 50 plans");
    }
}
