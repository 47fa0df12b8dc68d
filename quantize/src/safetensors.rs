//! `.safetensors` files (Hugging Face's tensor container): an 8-byte little-endian header
//! length, a JSON header naming each tensor's dtype, shape and byte range, then the raw
//! little-endian data. Read into the same [`Arrays`] as `.npz`: floating dtypes (F64, F32, F16,
//! BF16) become f32, integer dtypes (I64, I32, I16, I8, U8, U16, U32, BOOL) become i64.

use crate::npz::Arrays;
use crate::{Error, HostTensor, Result};
use std::path::Path;

/// Largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// Reads every tensor of a `.safetensors` file.
pub fn read_safetensors(path: &Path) -> Result<Arrays> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
    read_safetensors_bytes(&bytes, &path.display().to_string())
}

/// [`read_safetensors`] on bytes in memory; `what` names them in errors.
pub fn read_safetensors_bytes(bytes: &[u8], what: &str) -> Result<Arrays> {
    let bad = |m: String| Error::Npz(format!("{what} is not a valid .safetensors file: {m}"));
    let head: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        bad(format!("{} bytes, shorter than the 8-byte header length", bytes.len()))
    })?;
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
        return Err(bad(format!("header length {n} exceeds the file ({} bytes)", bytes.len())));
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n as usize])
        .map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let entries = header.as_object().ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data = &bytes[8 + n as usize..];
    let mut out = Arrays::new();
    for (name, v) in entries {
        if name == "__metadata__" {
            continue;
        }
        let ctx = |m: &str| Error::Npz(format!("{what}: tensor '{name}': {m}"));
        let dtype = v["dtype"].as_str().ok_or_else(|| ctx("no dtype"))?;
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .ok_or_else(|| ctx("no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| ctx("shape must be a list of non-negative integers"))?;
        let offs: Vec<u64> = v["data_offsets"]
            .as_array()
            .and_then(|a| a.iter().map(|o| o.as_u64()).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| ctx("data_offsets must be [begin, end]"))?;
        let size = match dtype {
            "F64" | "I64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" => 1,
            other => return Err(ctx(&format!("dtype {other} is not supported"))),
        };
        let numel = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        let want = numel.and_then(|c| c.checked_mul(size)).ok_or_else(|| ctx("shape overflows"))?;
        let (b, e) = (offs[0], offs[1]);
        if b > e || e > data.len() as u64 {
            return Err(ctx(&format!(
                "data_offsets [{b}, {e}] outside the {} data bytes",
                data.len()
            )));
        }
        if e - b != want as u64 {
            return Err(ctx(&format!(
                "{} bytes of data for {dtype} {shape:?}, expected {want}",
                e - b
            )));
        }
        let raw = &data[b as usize..e as usize];
        let w = |i: usize| &raw[i * size..(i + 1) * size];
        let count = want / size;
        let t = match dtype {
            "F64" => HostTensor::f32(
                shape,
                (0..count).map(|i| f64::from_le_bytes(w(i).try_into().unwrap()) as f32).collect(),
            ),
            "F32" => HostTensor::f32(
                shape,
                (0..count).map(|i| f32::from_le_bytes(w(i).try_into().unwrap())).collect(),
            ),
            "F16" => HostTensor::f32(
                shape,
                (0..count)
                    .map(|i| half::f16::from_le_bytes(w(i).try_into().unwrap()).to_f32())
                    .collect(),
            ),
            "BF16" => HostTensor::f32(
                shape,
                (0..count)
                    .map(|i| half::bf16::from_le_bytes(w(i).try_into().unwrap()).to_f32())
                    .collect(),
            ),
            _ => HostTensor::i64(
                shape,
                (0..count)
                    .map(|i| {
                        let x = w(i);
                        match dtype {
                            "I64" => i64::from_le_bytes(x.try_into().unwrap()),
                            "I32" => i32::from_le_bytes(x.try_into().unwrap()) as i64,
                            "U32" => u32::from_le_bytes(x.try_into().unwrap()) as i64,
                            "I16" => i16::from_le_bytes(x.try_into().unwrap()) as i64,
                            "U16" => u16::from_le_bytes(x.try_into().unwrap()) as i64,
                            "I8" => x[0] as i8 as i64,
                            _ => x[0] as i64,
                        }
                    })
                    .collect(),
            ),
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// The bytes of a `.safetensors` file holding `arrays` (f32 as F32, i64 as I64), in name order.
pub fn safetensors_bytes(arrays: &Arrays) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in arrays {
        let (dtype, bytes): (&str, Vec<u8>) = match &t.data {
            crate::Data::F32(v) => ("F32", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            crate::Data::I64(v) => ("I64", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        let b = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [b, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    // Data starts 8-byte aligned, as writers conventionally pad the header with spaces.
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_narrow_dtypes() {
        let mut a = Arrays::new();
        a.insert("w".into(), HostTensor::f32(vec![2, 3], vec![1.0, -2.5, 3.0, 0.0, 1e-3, 7.0]));
        a.insert("ids".into(), HostTensor::i64(vec![3], vec![5, -1, 1 << 40]));
        a.insert("empty".into(), HostTensor::f32(vec![0, 4], vec![]));
        let b = safetensors_bytes(&a);
        let r = read_safetensors_bytes(&b, "t").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r["w"].shape, vec![2, 3]);
        assert_eq!(r["w"].to_f32_vec(), a["w"].to_f32_vec());
        assert_eq!(r["ids"].to_i64_vec(), vec![5, -1, 1 << 40]);
        // F16 / BF16 / I32 written by hand.
        let h = br#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]},"c":{"dtype":"I32","shape":[1],"data_offsets":[6,10]},"__metadata__":{"format":"pt"}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend(half::f16::from_f32(1.5).to_le_bytes());
        f.extend(half::f16::from_f32(-2.0).to_le_bytes());
        f.extend(half::bf16::from_f32(0.25).to_le_bytes());
        f.extend((-7i32).to_le_bytes());
        let r = read_safetensors_bytes(&f, "t").unwrap();
        assert_eq!(r["a"].to_f32_vec(), vec![1.5, -2.0]);
        assert_eq!(r["b"].to_f32_vec(), vec![0.25]);
        assert_eq!(r["c"].to_i64_vec(), vec![-7]);
    }

    #[test]
    fn malformed_files_are_named_errors() {
        let err = |b: &[u8]| read_safetensors_bytes(b, "x.safetensors").unwrap_err().to_string();
        assert!(err(b"abc").contains("shorter than the 8-byte header"), "{}", err(b"abc"));
        let mut big = (1u64 << 40).to_le_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert!(err(&big).contains("exceeds the file"));
        let with = |h: &str, data: &[u8]| {
            let mut f = (h.len() as u64).to_le_bytes().to_vec();
            f.extend_from_slice(h.as_bytes());
            f.extend_from_slice(data);
            f
        };
        assert!(err(&with("not json", &[])).contains("not JSON"));
        assert!(err(&with("[1]", &[])).contains("not a JSON object"));
        let e = err(&with(r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, &[0; 8]));
        assert!(e.contains("tensor 't'") && e.contains("expected 8"), "{e}");
        let e = err(&with(r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, &[0; 8]));
        assert!(e.contains("outside the 8 data bytes"), "{e}");
        let e = err(&with(r#"{"t":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#, &[0; 8]));
        assert!(e.contains("dtype C64 is not supported"), "{e}");
        let e = err(&with(r#"{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, &[0; 4]));
        assert!(e.contains("shape must be"), "{e}");
    }
}
