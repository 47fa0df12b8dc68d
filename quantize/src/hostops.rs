//! Host implementations of the index and shape-manipulation ops (Gather, Shape, Slice, Expand,
//! Equal, Where, ConstantOfShape, Range), with NumPy broadcasting. Booleans are i64 0/1.

use crate::tensor::{Data, HostTensor};

/// NumPy broadcast of several shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = *d;
            } else if *d != 1 && *d != *o {
                return Err(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    Ok(out)
}

/// Source element index of every output element when `from` is broadcast to `to`.
fn broadcast_index(from: &[usize], to: &[usize]) -> Vec<usize> {
    let n: usize = to.iter().product();
    let off = to.len() - from.len();
    let mut strides = vec![0usize; to.len()];
    let mut acc = 1;
    for i in (0..from.len()).rev() {
        strides[off + i] = if from[i] == 1 { 0 } else { acc };
        acc *= from[i];
    }
    let mut idx = vec![0usize; to.len()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(idx.iter().zip(&strides).map(|(a, b)| a * b).sum());
        for a in (0..to.len()).rev() {
            idx[a] += 1;
            if idx[a] < to[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

pub fn expand(t: &HostTensor, shape: &[usize]) -> Result<HostTensor, String> {
    let to = broadcast_shapes(&[&t.shape, shape])?;
    let ix = broadcast_index(&t.shape, &to);
    Ok(match &t.data {
        Data::F32(v) => HostTensor::f32(to, ix.iter().map(|i| v[*i]).collect()),
        Data::I64(v) => HostTensor::i64(to, ix.iter().map(|i| v[*i]).collect()),
    })
}

pub fn equal(a: &HostTensor, b: &HostTensor) -> Result<HostTensor, String> {
    let to = broadcast_shapes(&[&a.shape, &b.shape])?;
    let (ia, ib) = (broadcast_index(&a.shape, &to), broadcast_index(&b.shape, &to));
    let (va, vb) = (a.to_f32_vec(), b.to_f32_vec());
    let (xa, xb) = (a.to_i64_vec(), b.to_i64_vec());
    let float = a.as_f32().is_some() || b.as_f32().is_some();
    let v = ia
        .iter()
        .zip(&ib)
        .map(|(i, j)| if float { (va[*i] == vb[*j]) as i64 } else { (xa[*i] == xb[*j]) as i64 })
        .collect();
    Ok(HostTensor::i64(to, v))
}

pub fn where_(c: &HostTensor, x: &HostTensor, y: &HostTensor) -> Result<HostTensor, String> {
    let to = broadcast_shapes(&[&c.shape, &x.shape, &y.shape])?;
    let (ic, ix, iy) = (
        broadcast_index(&c.shape, &to),
        broadcast_index(&x.shape, &to),
        broadcast_index(&y.shape, &to),
    );
    let cv = c.to_i64_vec();
    Ok(match (&x.data, &y.data) {
        (Data::F32(a), Data::F32(b)) => HostTensor::f32(
            to,
            (0..ic.len()).map(|k| if cv[ic[k]] != 0 { a[ix[k]] } else { b[iy[k]] }).collect(),
        ),
        (Data::I64(a), Data::I64(b)) => HostTensor::i64(
            to,
            (0..ic.len()).map(|k| if cv[ic[k]] != 0 { a[ix[k]] } else { b[iy[k]] }).collect(),
        ),
        _ => return Err("Where branches have different dtypes".into()),
    })
}

/// ONNX Slice with optional axes and steps (negative steps included).
pub fn slice(
    t: &HostTensor,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<HostTensor, String> {
    let r = t.shape.len();
    let mut lo = vec![0i64; r];
    let mut step = vec![1i64; r];
    let mut count: Vec<usize> = t.shape.clone();
    for (k, s) in starts.iter().enumerate() {
        let a = axes.map(|a| a[k]).unwrap_or(k as i64);
        let a = if a < 0 { a + r as i64 } else { a };
        if a < 0 || a as usize >= r {
            return Err(format!("slice axis {a} out of range"));
        }
        let a = a as usize;
        let d = t.shape[a] as i64;
        let st = steps.map(|s| s[k]).unwrap_or(1);
        if st == 0 {
            return Err("slice step 0".into());
        }
        let norm = |v: i64| if v < 0 { v + d } else { v };
        let e = *ends.get(k).ok_or("ends shorter than starts")?;
        let (b, e) = if st > 0 {
            (norm(*s).clamp(0, d), norm(e).clamp(0, d))
        } else {
            (norm(*s).clamp(-1, d - 1), norm(e).clamp(-1, d - 1))
        };
        let n = if st > 0 { (e - b + st - 1).max(0) / st } else { (b - e - st - 1).max(0) / -st };
        lo[a] = b;
        step[a] = st;
        count[a] = n as usize;
    }
    let total: usize = count.iter().product();
    let mut strides = vec![1usize; r];
    for a in (0..r.saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * t.shape[a + 1];
    }
    let mut idx = vec![0usize; r];
    let mut src = Vec::with_capacity(total);
    for _ in 0..total {
        src.push(
            (0..r).map(|a| (lo[a] + idx[a] as i64 * step[a]) as usize * strides[a]).sum::<usize>(),
        );
        for a in (0..r).rev() {
            idx[a] += 1;
            if idx[a] < count[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Ok(match &t.data {
        Data::F32(v) => HostTensor::f32(count, src.iter().map(|i| v[*i]).collect()),
        Data::I64(v) => HostTensor::i64(count, src.iter().map(|i| v[*i]).collect()),
    })
}

pub fn range(
    start: &HostTensor,
    limit: &HostTensor,
    delta: &HostTensor,
) -> Result<HostTensor, String> {
    if start.as_f32().is_some() {
        let (s, l, d) = (start.to_f32_vec()[0], limit.to_f32_vec()[0], delta.to_f32_vec()[0]);
        if d == 0.0 {
            return Err("Range delta is 0".into());
        }
        let n = (((l - s) / d).ceil().max(0.0)) as usize;
        Ok(HostTensor::f32(vec![n], (0..n).map(|i| s + i as f32 * d).collect()))
    } else {
        let (s, l, d) = (start.to_i64_vec()[0], limit.to_i64_vec()[0], delta.to_i64_vec()[0]);
        if d == 0 {
            return Err("Range delta is 0".into());
        }
        let n = ((l - s + d - d.signum()) / d).max(0) as usize;
        Ok(HostTensor::i64(vec![n], (0..n as i64).map(|i| s + i * d).collect()))
    }
}

/// ONNX Shape of a tensor with dims `dims`: the dims from `start` to `end` (attributes of
/// opset 15+, negative values counted from the end, clamped), as an i64 vector.
pub fn shape_of(dims: &[usize], start: Option<i64>, end: Option<i64>) -> HostTensor {
    let r = dims.len() as i64;
    let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (st, en) = (clampi(start.unwrap_or(0)), clampi(end.unwrap_or(r)));
    let d: Vec<i64> = dims[st..en.max(st)].iter().map(|v| *v as i64).collect();
    HostTensor::i64(vec![d.len()], d)
}

/// ONNX Gather along `axis`, negative indices counted from the end; out-of-range is an error.
pub fn gather(
    data: &HostTensor,
    idx: &HostTensor,
    axis: usize,
) -> std::result::Result<HostTensor, String> {
    let d = &data.shape;
    let dim = d[axis];
    let outer: usize = d[..axis].iter().product();
    let inner: usize = d[axis + 1..].iter().product();
    let ids = idx.to_i64_vec();
    let mut rows = Vec::with_capacity(ids.len());
    for v in &ids {
        let r = if *v < 0 { v + dim as i64 } else { *v };
        if r < 0 || r >= dim as i64 {
            return Err(format!("index {v} out of range for axis {axis} of size {dim}"));
        }
        rows.push(r as usize);
    }
    let mut shape: Vec<usize> = d[..axis].to_vec();
    shape.extend_from_slice(&idx.shape);
    shape.extend_from_slice(&d[axis + 1..]);
    macro_rules! g {
        ($v:expr, $ctor:path) => {{
            let mut o = Vec::with_capacity(outer * rows.len() * inner);
            for a in 0..outer {
                for r in &rows {
                    let s = (a * dim + r) * inner;
                    o.extend_from_slice(&$v[s..s + inner]);
                }
            }
            $ctor(shape, o)
        }};
    }
    Ok(match &data.data {
        Data::F32(v) => g!(v, HostTensor::f32),
        Data::I64(v) => g!(v, HostTensor::i64),
    })
}
