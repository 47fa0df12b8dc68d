//! The user-only fast path: one user's row and bias fitted in closed form against frozen item
//! rows and biases, for a new user or one whose ratings changed, without touching the tables.
//!
//! With `x_j = [q_{i_j}, 1]` and `y_j = r_j − mean − b_{i_j}` it solves the ridge problem of the
//! SGD objective restricted to the user, `min Σ_j (y_j − x_j·[p, b])² + n·reg·|p|² + n·reg_bias·b²`:
//! `(XᵀX + n·diag(reg…, reg_bias)) [p, b] = Xᵀy`. `XᵀX` is one f32 GEMM of the kernel set,
//! the `(k+1)²` system a Cholesky solve in f64. [`UserFit::new`] allocates for up to
//! `max_ratings`; [`UserFit::fit`] does not allocate.

use super::trainer::{Factors, MfError};
use alloc::vec::Vec;
use ember_kernels::{Act, KernelSet};

/// Scratch for fitting one user at a time; see the module docs.
pub struct UserFit {
    k: usize,
    max: usize,
    xt: Vec<f32>,
    gram: Vec<f32>,
    a: Vec<f64>,
    rhs: Vec<f64>,
    y: Vec<f32>,
    ks: KernelSet,
}

impl UserFit {
    pub fn new(k: usize, max_ratings: usize) -> UserFit {
        let d = k + 1;
        UserFit {
            k,
            max: max_ratings,
            xt: alloc::vec![0.0; d * max_ratings],
            gram: alloc::vec![0.0; d * d],
            a: alloc::vec![0.0; d * d],
            rhs: alloc::vec![0.0; d],
            y: alloc::vec![0.0; max_ratings],
            ks: KernelSet::detect(),
        }
    }

    /// Fits the user's row into `p` (`k` values) and returns the user's bias. `items` are item
    /// rows of `f`, `values` the ratings.
    pub fn fit(
        &mut self,
        f: &Factors,
        items: &[u32],
        values: &[f32],
        reg: f32,
        reg_bias: f32,
        p: &mut [f32],
    ) -> Result<f32, MfError> {
        let (k, n, d) = (self.k, items.len(), self.k + 1);
        if f.k != k || p.len() != k || values.len() != n {
            return Err(MfError::Config(alloc::format!(
                "user fit: k {} (tables {}), {} output values, {} items for {} values",
                k,
                f.k,
                p.len(),
                n,
                values.len()
            )));
        }
        if n == 0 || n > self.max {
            return Err(MfError::Config(alloc::format!(
                "user fit: {n} ratings (1 to {} allowed)",
                self.max
            )));
        }
        for (j, (&i, &v)) in items.iter().zip(values).enumerate() {
            if i as usize >= f.items {
                return Err(MfError::Id { index: j, what: "item", id: i, rows: f.items });
            }
            if !v.is_finite() {
                return Err(MfError::Value { index: j, value: v });
            }
        }
        // Xᵀ, (k+1) × n: item rows as columns, then a row of ones for the bias.
        let xt = &mut self.xt[..d * n];
        let y = &mut self.y[..n];
        for (j, &i) in items.iter().enumerate() {
            f.q.row(i as usize, p); // `p` doubles as the row buffer until the solve
            for (c, v) in p.iter().enumerate() {
                xt[c * n + j] = *v;
            }
            xt[k * n + j] = 1.0;
            y[j] = values[j] - f.mean - f.bi[i as usize];
        }
        // XᵀX is symmetric: GEMMs of BLOCK rows against the rows from the block's first on give
        // the upper triangle (and the diagonal blocks), about half the work of the full square.
        for r0 in (0..d).step_by(BLOCK) {
            let (m, w) = (BLOCK.min(d - r0), d - r0);
            let rows = &xt[r0 * n..(r0 + m) * n];
            let tmp = &mut self.gram[..m * w];
            (self.ks.f32_gemm)(m, n, w, rows, &xt[r0 * n..], &[], Act::None, tmp);
            for (i, row) in tmp.chunks_exact(w).enumerate() {
                for (j, v) in row.iter().enumerate().skip(i) {
                    let (r, c) = (r0 + i, r0 + j);
                    self.a[r * d + c] = *v as f64;
                    self.a[c * d + r] = *v as f64;
                }
            }
        }
        for r in 0..d {
            self.rhs[r] = dot_f32_f64(&xt[r * n..r * n + n], y);
            let lam = if r < k { reg } else { reg_bias };
            self.a[r * d + r] += (lam as f64 * n as f64).max(1e-9);
        }
        cholesky_solve(&mut self.a, &mut self.rhs, d)?;
        for (o, v) in p.iter_mut().zip(&self.rhs) {
            *o = *v as f32;
        }
        Ok(self.rhs[k] as f32)
    }
}

/// Solves `a·x = b` in place (`a` symmetric positive definite, `d × d`; `b` becomes `x`).
fn cholesky_solve(a: &mut [f64], b: &mut [f64], d: usize) -> Result<(), MfError> {
    for j in 0..d {
        let lj = &a[j * d..j * d + j];
        let s = a[j * d + j] - dot_f64(lj, lj);
        if s <= 0.0 || !s.is_finite() {
            return Err(MfError::Config("user fit: the system is not positive definite".into()));
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let s = a[i * d + j] - dot_f64(&a[i * d..i * d + j], &a[j * d..j * d + j]);
            a[i * d + j] = s / l;
        }
    }
    for i in 0..d {
        let s = b[i] - dot_f64(&a[i * d..i * d + i], &b[..i]);
        b[i] = s / a[i * d + i];
    }
    for i in (0..d).rev() {
        let mut s = b[i];
        for t in i + 1..d {
            s -= a[t * d + i] * b[t];
        }
        b[i] = s / a[i * d + i];
    }
    Ok(())
}

/// Rows of XᵀX per GEMM call (the upper triangle is built block by block).
const BLOCK: usize = 16;

/// `a·b` in f64 with eight running sums (independent chains: the sums of a solve need not
/// match any other code's bits, and one chain would wait on every add).
fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// [`dot_f64`] of f32 rows, each product taken in f64.
fn dot_f32_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 =
        ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| *x as f64 * *y as f64).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}
