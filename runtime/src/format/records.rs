//! Fixed-size records of the format and a bounds-checked little-endian cursor.

use super::MAX_RANK;
use crate::Error;

/// Bounds-checked little-endian reads over a byte slice. Never panics.
pub(crate) struct Cursor<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
    pub what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Cursor { bytes, pos: 0, what }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end =
            self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(Error::Truncated {
                what: self.what,
                need: self.pos as u64 + n as u64,
                have: self.bytes.len() as u64,
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, Error> {
        let lo = self.u32()? as u64;
        let hi = self.u32()? as u64;
        Ok(lo | (hi << 32))
    }
    pub fn dims(&mut self) -> Result<[u32; MAX_RANK], Error> {
        let mut d = [0u32; MAX_RANK];
        for x in d.iter_mut() {
            *x = self.u32()?;
        }
        Ok(d)
    }
}

/// One tensor (constant) of the TENSORS section. 64 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TensorRecord {
    pub name: u32,
    pub dtype: u32,
    pub rank: u32,
    /// What the tensor is for: see [`TensorRole`].
    pub role: u32,
    pub dims: [u32; MAX_RANK],
    pub offset: u64,
    pub nbytes: u64,
    /// For quantized weights: the tensor holding their scales (or `REF_NONE`).
    pub scale_tensor: u32,
    pub reserved: u32,
}

/// Role of a tensor, for `inspect` and the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum TensorRole {
    Plain = 0,
    /// INT8 weights, symmetric per output channel (axis 0).
    WeightI8PerChannel = 1,
    /// INT8 embedding table, row-wise affine with f16 scale and bias.
    EmbeddingI8Rowwise = 2,
    /// Scales, biases or sums belonging to a quantized tensor.
    QuantParam = 3,
    /// INT4 weights, symmetric per (output channel, group of K), packed two per byte.
    WeightI4Grouped = 4,
    /// INT4 embedding table, affine per (row, group) with f16 scale and bias, two per byte.
    EmbeddingI4Grouped = 5,
}

pub const TENSOR_RECORD_LEN: usize = 64;

impl TensorRecord {
    pub(crate) fn read(c: &mut Cursor) -> Result<Self, Error> {
        Ok(TensorRecord {
            name: c.u32()?,
            dtype: c.u32()?,
            rank: c.u32()?,
            role: c.u32()?,
            dims: c.dims()?,
            offset: c.u64()?,
            nbytes: c.u64()?,
            scale_tensor: c.u32()?,
            reserved: c.u32()?,
        })
    }
    pub fn write(&self, out: &mut alloc::vec::Vec<u8>) {
        for v in [self.name, self.dtype, self.rank, self.role] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for d in self.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.nbytes.to_le_bytes());
        out.extend_from_slice(&self.scale_tensor.to_le_bytes());
        out.extend_from_slice(&self.reserved.to_le_bytes());
    }
}

/// One input or output of the SIGNATURE section. 40 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigRecord {
    pub name: u32,
    pub dtype: u32,
    pub rank: u32,
    /// Per-sample dimensions (after the batch axis).
    pub dims: [u32; MAX_RANK],
    pub reserved: u32,
}

pub const SIG_RECORD_LEN: usize = 40;

impl SigRecord {
    pub(crate) fn read(c: &mut Cursor) -> Result<Self, Error> {
        Ok(SigRecord {
            name: c.u32()?,
            dtype: c.u32()?,
            rank: c.u32()?,
            dims: c.dims()?,
            reserved: c.u32()?,
        })
    }
    pub fn write(&self, out: &mut alloc::vec::Vec<u8>) {
        for v in [self.name, self.dtype, self.rank] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for d in self.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&self.reserved.to_le_bytes());
    }
}

/// Header of a PLAN section. 32 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanHeader {
    pub batch: u32,
    pub n_values: u32,
    pub n_ops: u32,
    pub reserved: u32,
    pub arena_size: u64,
    pub reserved2: u64,
}

pub const PLAN_HEADER_LEN: usize = 32;

impl PlanHeader {
    pub(crate) fn read(c: &mut Cursor) -> Result<Self, Error> {
        Ok(PlanHeader {
            batch: c.u32()?,
            n_values: c.u32()?,
            n_ops: c.u32()?,
            reserved: c.u32()?,
            arena_size: c.u64()?,
            reserved2: c.u64()?,
        })
    }
    pub fn write(&self, out: &mut alloc::vec::Vec<u8>) {
        for v in [self.batch, self.n_values, self.n_ops, self.reserved] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.arena_size.to_le_bytes());
        out.extend_from_slice(&self.reserved2.to_le_bytes());
    }
}

/// One arena value of a plan. 48 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValueRecord {
    pub dtype: u32,
    pub rank: u32,
    pub dims: [u32; MAX_RANK],
    pub offset: u64,
    pub nbytes: u64,
}

pub const VALUE_RECORD_LEN: usize = 48;

impl ValueRecord {
    pub(crate) fn read(c: &mut Cursor) -> Result<Self, Error> {
        Ok(ValueRecord {
            dtype: c.u32()?,
            rank: c.u32()?,
            dims: c.dims()?,
            offset: c.u64()?,
            nbytes: c.u64()?,
        })
    }
    pub fn write(&self, out: &mut alloc::vec::Vec<u8>) {
        out.extend_from_slice(&self.dtype.to_le_bytes());
        out.extend_from_slice(&self.rank.to_le_bytes());
        for d in self.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.nbytes.to_le_bytes());
    }
}

pub const OP_MAX_INPUTS: usize = 8;
pub const OP_PARAMS: usize = 13;

/// One op of a plan. 96 bytes. Inputs are references: a value id, or `REF_TENSOR | tensor id`,
/// or `REF_NONE` for an absent optional input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpRecord {
    pub opcode: u16,
    pub n_inputs: u8,
    pub n_outputs: u8,
    pub inputs: [u32; OP_MAX_INPUTS],
    pub outputs: [u32; 2],
    pub params: [u32; OP_PARAMS],
}

pub const OP_RECORD_LEN: usize = 96;

impl OpRecord {
    pub(crate) fn read(c: &mut Cursor) -> Result<Self, Error> {
        let opcode = c.u16()?;
        let n_inputs = c.u8()?;
        let n_outputs = c.u8()?;
        let mut r = OpRecord { opcode, n_inputs, n_outputs, ..Default::default() };
        for x in r.inputs.iter_mut() {
            *x = c.u32()?;
        }
        for x in r.outputs.iter_mut() {
            *x = c.u32()?;
        }
        for x in r.params.iter_mut() {
            *x = c.u32()?;
        }
        Ok(r)
    }
    pub fn write(&self, out: &mut alloc::vec::Vec<u8>) {
        out.extend_from_slice(&self.opcode.to_le_bytes());
        out.push(self.n_inputs);
        out.push(self.n_outputs);
        for v in self.inputs.iter().chain(self.outputs.iter()).chain(self.params.iter()) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}
