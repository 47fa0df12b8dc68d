/// Rounds half to even for |x| < 2^22 (callers clamp first), the rounding ONNX Runtime and
/// NumPy use, without libm: adding and removing 1.5·2^23 leaves the nearest even integer.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// One element of [`quantize_u8`]: `clamp(rne(x·mult) + zp, 0, 255)`, NaN to the zero point.
#[inline]
pub fn quantize_one_u8(x: f32, mult: f32, zp: f32) -> u8 {
    const MAGIC: f32 = 12_582_912.0;
    let t = (x * mult).clamp(-300.0, 300.0);
    let t = if t.is_nan() { 0.0 } else { t };
    // rne(t) + zp, clamped, read from the low bits of `v + 1.5·2^23` (no float→int cast, so
    // loops vectorize); v is an integer in [0, 255] after the clamp.
    let v = (round_half_even(t) + zp).clamp(0.0, 255.0);
    (v + MAGIC).to_bits() as u8
}

/// Reference f32 → u8 activation quantizer; see [`crate::set::QuantizeU8Fn`].
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn quantize_u8(
    x: &[f32],
    rows: usize,
    k: usize,
    ldx: usize,
    lda: usize,
    inv_scale: f32,
    mult: &[f32],
    zp: i32,
    q: &mut [u8],
) {
    let zp = zp as f32;
    assert!(ldx >= k, "quantize_u8: row stride {ldx} below the row length {k}");
    for r in 0..rows {
        let xr = &x[r * ldx..r * ldx + k];
        let qr = &mut q[r * lda..r * lda + k];
        if mult.is_empty() {
            for (o, v) in qr.iter_mut().zip(xr) {
                *o = quantize_one_u8(*v, inv_scale, zp);
            }
        } else {
            for ((o, v), m) in qr.iter_mut().zip(xr).zip(&mult[..k]) {
                *o = quantize_one_u8(*v, *m, zp);
            }
        }
    }
}
