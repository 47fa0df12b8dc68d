//! Builds `.ember` bytes. Used by `quantize` and by tests that forge files; the device runtime
//! does not need it.

use super::*;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// A plan to be written: header fields, io value ids, values and ops.
#[derive(Clone, Debug, Default)]
pub struct PlanSpec {
    pub batch: u32,
    pub arena_size: u64,
    pub inputs: Vec<u32>,
    pub outputs: Vec<u32>,
    pub values: Vec<ValueRecord>,
    pub ops: Vec<OpRecord>,
}

/// A signature entry to be written.
#[derive(Clone, Debug)]
pub struct SigSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<u32>,
}

/// Accumulates strings, tensors, a signature, plans and metadata, then lays out the file.
#[derive(Default)]
pub struct Writer {
    strings: Vec<String>,
    tensors: Vec<TensorRecord>,
    data: Vec<u8>,
    inputs: Vec<SigSpec>,
    outputs: Vec<SigSpec>,
    plans: Vec<PlanSpec>,
    metadata: Vec<(u32, u32)>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Interns a string and returns its id.
    pub fn string(&mut self, s: &str) -> u32 {
        if let Some(i) = self.strings.iter().position(|x| x == s) {
            return i as u32;
        }
        self.strings.push(s.to_string());
        (self.strings.len() - 1) as u32
    }

    /// Adds a tensor and returns its reference (`REF_TENSOR | id`).
    pub fn tensor(
        &mut self,
        name: &str,
        dtype: DType,
        dims: &[u32],
        role: TensorRole,
        scale_tensor: u32,
        bytes: &[u8],
    ) -> u32 {
        let name = self.string(name);
        let offset = align_up(self.data.len() as u64);
        self.data.resize(offset as usize, 0);
        self.data.extend_from_slice(bytes);
        let mut d = [0u32; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        self.tensors.push(TensorRecord {
            name,
            dtype: dtype as u32,
            rank: dims.len() as u32,
            role: role as u32,
            dims: d,
            offset,
            nbytes: bytes.len() as u64,
            scale_tensor: if scale_tensor == REF_NONE {
                REF_NONE
            } else {
                scale_tensor & !REF_TENSOR
            },
            reserved: 0,
        });
        REF_TENSOR | (self.tensors.len() as u32 - 1)
    }

    pub fn input(&mut self, s: SigSpec) {
        self.inputs.push(s);
    }
    pub fn output(&mut self, s: SigSpec) {
        self.outputs.push(s);
    }
    pub fn plan(&mut self, p: PlanSpec) {
        self.plans.push(p);
    }
    pub fn meta(&mut self, key: &str, value: &str) {
        let k = self.string(key);
        let v = self.string(value);
        self.metadata.push((k, v));
    }

    /// Lays out and returns the whole file.
    pub fn finish(mut self) -> Vec<u8> {
        // Signature strings must be interned before STRINGS is serialized.
        let sig: Vec<SigRecord> = {
            let all: Vec<SigSpec> =
                self.inputs.iter().chain(self.outputs.iter()).cloned().collect();
            all.iter()
                .map(|s| {
                    let mut d = [0u32; MAX_RANK];
                    d[..s.dims.len()].copy_from_slice(&s.dims);
                    SigRecord {
                        name: self.string(&s.name),
                        dtype: s.dtype as u32,
                        rank: s.dims.len() as u32,
                        dims: d,
                        reserved: 0,
                    }
                })
                .collect()
        };
        let mut sections: Vec<(SectionKind, u32, Vec<u8>)> = Vec::new();

        let mut s = Vec::new();
        s.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
        let mut off = 4 + 8 * self.strings.len();
        for st in &self.strings {
            s.extend_from_slice(&(off as u32).to_le_bytes());
            s.extend_from_slice(&(st.len() as u32).to_le_bytes());
            off += st.len();
        }
        for st in &self.strings {
            s.extend_from_slice(st.as_bytes());
        }
        sections.push((SectionKind::Strings, 0, s));

        let mut t = Vec::new();
        t.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        for r in &self.tensors {
            r.write(&mut t);
        }
        sections.push((SectionKind::Tensors, 0, t));
        sections.push((SectionKind::Data, 0, core::mem::take(&mut self.data)));

        let mut g = Vec::new();
        g.extend_from_slice(&(self.inputs.len() as u32).to_le_bytes());
        g.extend_from_slice(&(self.outputs.len() as u32).to_le_bytes());
        for r in &sig {
            r.write(&mut g);
        }
        sections.push((SectionKind::Signature, 0, g));

        for (i, p) in self.plans.iter().enumerate() {
            let mut b = Vec::new();
            PlanHeader {
                batch: p.batch,
                n_values: p.values.len() as u32,
                n_ops: p.ops.len() as u32,
                reserved: 0,
                arena_size: p.arena_size,
                reserved2: 0,
            }
            .write(&mut b);
            for v in p.inputs.iter().chain(p.outputs.iter()) {
                b.extend_from_slice(&v.to_le_bytes());
            }
            if (p.inputs.len() + p.outputs.len()) % 2 == 1 {
                b.extend_from_slice(&0u32.to_le_bytes());
            }
            for v in &p.values {
                v.write(&mut b);
            }
            for o in &p.ops {
                o.write(&mut b);
            }
            sections.push((SectionKind::Plan, i as u32, b));
        }

        let mut m = Vec::new();
        m.extend_from_slice(&(self.metadata.len() as u32).to_le_bytes());
        for (k, v) in &self.metadata {
            m.extend_from_slice(&k.to_le_bytes());
            m.extend_from_slice(&v.to_le_bytes());
        }
        sections.push((SectionKind::Metadata, 0, m));

        let table_len = sections.len() * SECTION_ENTRY_LEN;
        let mut pos = align_up((HEADER_LEN + table_len) as u64);
        let mut table = Vec::new();
        let mut placed = Vec::new();
        for (kind, index, bytes) in &sections {
            table.extend_from_slice(&(*kind as u32).to_le_bytes());
            table.extend_from_slice(&index.to_le_bytes());
            table.extend_from_slice(&pos.to_le_bytes());
            table.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            table.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            placed.push(pos);
            pos = align_up(pos + bytes.len() as u64);
        }
        let file_size =
            placed.last().zip(sections.last()).map(|(p, s)| p + s.2.len() as u64).unwrap_or(pos);
        let mut out = Vec::with_capacity(file_size as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        out.extend_from_slice(&file_size.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&table).to_le_bytes());
        let hcrc = crc32fast::hash(&out[..28]);
        out.extend_from_slice(&hcrc.to_le_bytes());
        out.resize(HEADER_LEN, 0);
        out.extend_from_slice(&table);
        for ((_, _, bytes), p) in sections.iter().zip(placed) {
            out.resize(p as usize, 0);
            out.extend_from_slice(bytes);
        }
        out
    }
}
