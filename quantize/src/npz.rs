//! `.npy` / `.npz` reading and writing (NumPy's formats), for inputs, outputs and calibration.
//!
//! Floats (f2/f4/f8) load as f32; integers and bools as i64. Fortran order, object arrays and
//! big-endian data are rejected with an error naming the array.

use crate::error::{Error, Result};
use crate::tensor::{Data, HostTensor};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

/// Arrays of an `.npz`, by name (without `.npy`), in name order.
pub type Arrays = BTreeMap<String, HostTensor>;

pub fn read_npz(path: &Path) -> Result<Arrays> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
    read_npz_from(f, &path.display().to_string())
}

/// Reads an `.npz` held in memory; `what` names it in errors.
pub fn read_npz_bytes(bytes: &[u8], what: &str) -> Result<Arrays> {
    read_npz_from(std::io::Cursor::new(bytes), what)
}

fn read_npz_from<R: Read + std::io::Seek>(r: R, what: &str) -> Result<Arrays> {
    let mut z = zip::ZipArchive::new(r)
        .map_err(|e| Error::Npz(format!("{what} is not a valid .npz (zip) file: {e}")))?;
    let mut out = Arrays::new();
    for i in 0..z.len() {
        let mut entry =
            z.by_index(i).map_err(|e| Error::Npz(format!("{what}: entry #{i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| Error::Npz(format!("{what}: entry #{i}: {e}")))?
            .trim_end_matches(".npy")
            .to_string();
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| Error::Npz(format!("{what}: array '{name}': {e}")))?;
        let t = parse_npy(&buf).map_err(|m| Error::Npz(format!("{what}: array '{name}': {m}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

pub fn parse_npy(b: &[u8]) -> std::result::Result<HostTensor, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (bad magic)".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = b.get(start..start + hlen).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |k: &str| -> Option<&str> {
        let i = header.find(&format!("'{k}'"))?;
        let rest = header[i + k.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or("header has no descr")?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(
            "Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into()
        );
    }
    let shape_s = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or("header has no shape")?;
    let mut shape = Vec::new();
    for p in shape_s.split(',').map(|s| s.trim()).filter(|s| !s.is_empty()) {
        shape.push(
            p.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad shape entry '{p}'"))?,
        );
    }
    let n = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)).ok_or("shape overflows")?;
    let data = &b[start + hlen..];
    let (endian, kind) = descr.split_at(1);
    if endian == ">" {
        return Err(format!("big-endian dtype '{descr}' is not supported"));
    }
    let width: usize = kind[1..].parse().map_err(|_| format!("unsupported dtype '{descr}'"))?;
    let need = n.checked_mul(width).ok_or("size overflows")?;
    if data.len() < need {
        return Err(format!(
            "data is {} bytes, shape {shape:?} of {descr} needs {need}",
            data.len()
        ));
    }
    let data = &data[..need];
    let t = match (&kind[..1], width) {
        ("f", 4) => HostTensor::f32(
            shape,
            data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        ),
        ("f", 8) => HostTensor::f32(
            shape,
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        ),
        ("f", 2) => HostTensor::f32(
            shape,
            data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        ),
        ("i", 8) => HostTensor::i64(
            shape,
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        ("i", 4) => HostTensor::i64(
            shape,
            data.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        ("i", 2) => HostTensor::i64(
            shape,
            data.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        ),
        ("i", 1) => HostTensor::i64(shape, data.iter().map(|v| *v as i8 as i64).collect()),
        ("u", 1) | ("b", 1) => HostTensor::i64(shape, data.iter().map(|v| *v as i64).collect()),
        ("u", 4) => HostTensor::i64(
            shape,
            data.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        _ => return Err(format!("unsupported dtype '{descr}'")),
    };
    Ok(t)
}

pub fn npy_bytes(t: &HostTensor) -> Vec<u8> {
    let descr = match t.data {
        Data::F32(_) => "<f4",
        Data::I64(_) => "<i8",
    };
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!("({})", t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&t.to_le_bytes());
    out
}

/// `.npz` bytes (stored, uncompressed) holding `arrays`.
pub fn npz_bytes(arrays: &Arrays) -> Result<Vec<u8>> {
    let mut cur = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut cur);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        for (name, t) in arrays {
            z.start_file(format!("{name}.npy"), opts)
                .map_err(|e| Error::Npz(format!("writing '{name}': {e}")))?;
            z.write_all(&npy_bytes(t)).map_err(|e| Error::Npz(format!("writing '{name}': {e}")))?;
        }
        z.finish().map_err(|e| Error::Npz(format!("finishing npz: {e}")))?;
    }
    Ok(cur.into_inner())
}

/// Writes an `.npz` atomically.
pub fn write_npz(path: &Path, arrays: &Arrays) -> Result<()> {
    crate::atomic::write(path, &npz_bytes(arrays)?)
}
