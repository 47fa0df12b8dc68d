/// Rounds half to even for |x| < 2^22 (callers clamp first), the rounding ONNX Runtime and
/// NumPy use, without libm: adding and removing 1.5·2^23 leaves the nearest even integer.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Reference f32 → i8 affine quantizer; see [`crate::set::QuantizeI8Fn`].
pub fn quantize_i8(x: &[f32], inv_scale: f32, zp: i32, q: &mut [i8]) {
    let zp = zp as f32;
    for (o, v) in q.iter_mut().zip(x) {
        // NaN compares false both ways and lands on the zero point's side via clamp below.
        let mut t = *v * inv_scale;
        t = t.clamp(-300.0, 300.0);
        if t.is_nan() {
            t = 0.0;
        }
        let r = round_half_even(t) + zp;
        *o = r.clamp(-128.0, 127.0) as i8;
    }
}

/// Reference per-channel f32 → i8 quantizer over rows of `k`:
/// `q[r·k + j] = clamp(round_half_even(x[r·k + j] · mult[j]) + zp, -128, 127)`.
/// `mult` folds the activation scale and a per-channel smoothing factor.
pub fn quantize_i8_channels(x: &[f32], k: usize, mult: &[f32], zp: i32, q: &mut [i8]) {
    let zpf = zp as f32;
    for (xr, qr) in x.chunks_exact(k).zip(q.chunks_exact_mut(k)) {
        for ((o, v), m) in qr.iter_mut().zip(xr).zip(&mult[..k]) {
            let mut t = (*v * *m).clamp(-300.0, 300.0);
            if t.is_nan() {
                t = 0.0;
            }
            *o = (round_half_even(t) + zpf).clamp(-128.0, 127.0) as i8;
        }
    }
}
