//! A minimal host tensor (f32 or i64, row-major) used for constants, calibration data and I/O.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        HostTensor { shape, data: Data::F32(v) }
    }
    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        HostTensor { shape, data: Data::I64(v) }
    }
    pub fn zeros(dtype: ember_runtime::DType, shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        match dtype {
            ember_runtime::DType::I64 | ember_runtime::DType::I32 => Self::i64(shape, vec![0; n]),
            _ => Self::f32(shape, vec![0.0; n]),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn dtype(&self) -> ember_runtime::DType {
        match self.data {
            Data::F32(_) => ember_runtime::DType::F32,
            Data::I64(_) => ember_runtime::DType::I64,
        }
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }
    /// Values as f32 whatever the dtype (for metrics).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|x| *x as f32).collect(),
        }
    }
    /// Values as i64 (for shape-like constants).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|x| *x as i64).collect(),
            Data::I64(v) => v.clone(),
        }
    }
    /// Little-endian bytes, as the runtime takes them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::F32(v) => bytemuck::cast_slice(v).to_vec(),
            Data::I64(v) => bytemuck::cast_slice(v).to_vec(),
        }
    }
    pub fn from_le_bytes(dtype: ember_runtime::DType, shape: Vec<usize>, b: &[u8]) -> Result<Self> {
        let n: usize = shape.iter().product();
        match dtype {
            ember_runtime::DType::F32 if b.len() == n * 4 => Ok(Self::f32(
                shape,
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            )),
            ember_runtime::DType::I64 if b.len() == n * 8 => Ok(Self::i64(
                shape,
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            )),
            d => Err(Error::Input(format!(
                "cannot decode {} bytes as {} {:?}",
                b.len(),
                d.name(),
                shape
            ))),
        }
    }
    /// Rows `start..start+count` along axis 0 (the sample axis).
    pub fn slice_rows(&self, start: usize, count: usize) -> HostTensor {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = count;
        match &self.data {
            Data::F32(v) => Self::f32(shape, v[start * row..(start + count) * row].to_vec()),
            Data::I64(v) => Self::i64(shape, v[start * row..(start + count) * row].to_vec()),
        }
    }
    /// Rows of `self` gathered by index (used to pad a last partial batch).
    pub fn take_rows(&self, rows: &[usize]) -> HostTensor {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        match &self.data {
            Data::F32(v) => Self::f32(
                shape,
                rows.iter().flat_map(|r| v[r * row..(r + 1) * row].iter().copied()).collect(),
            ),
            Data::I64(v) => Self::i64(
                shape,
                rows.iter().flat_map(|r| v[r * row..(r + 1) * row].iter().copied()).collect(),
            ),
        }
    }
    /// Concatenates along axis 0.
    pub fn concat_rows(parts: &[HostTensor]) -> HostTensor {
        let mut shape = parts[0].shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        match &parts[0].data {
            Data::F32(_) => Self::f32(
                shape,
                parts.iter().flat_map(|p| p.as_f32().unwrap_or(&[]).iter().copied()).collect(),
            ),
            Data::I64(_) => Self::i64(
                shape,
                parts.iter().flat_map(|p| p.as_i64().unwrap_or(&[]).iter().copied()).collect(),
            ),
        }
    }
}
