//! The accuracy report: per layer and per op, what precision it runs in and how close it stays
//! to float; per output, the final metrics. Written as JSON (`--report`) and printed as a table.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub node: String,
    pub kind: String,
    /// "int8", "int8-dynamic" (activations quantized per row at run time), "int4" or "f32".
    pub precision: String,
    pub scheme: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub act_range: Option<[f32; 2]>,
    pub act_scale: Option<f32>,
    pub act_zero_point: Option<i32>,
    pub weight_sqnr_db: Option<f32>,
    /// Cosine between this layer's output in the `.ember` model and in the float reference,
    /// measured on calibration samples (errors of earlier layers included).
    pub cosine_to_float: Option<f64>,
    pub sqnr_db_to_float: Option<f64>,
    /// Why the layer is not INT8, when it is not.
    pub reason: Option<String>,
}

impl LayerReport {
    #[allow(clippy::too_many_arguments)]
    pub fn linear_i8(
        node: &str,
        m: usize,
        k: usize,
        n: usize,
        c: &crate::quant::LinearChoice,
    ) -> Self {
        let r = c.range;
        let scheme = if c.smooth.is_some() {
            format!(
                "W8 per output channel, A8 static per tensor after SmoothQuant migration (simulated {:.1} dB vs {:.1} dB without)",
                c.sqnr_db, c.other_sqnr_db
            )
        } else {
            format!(
                "W8 per output channel, A8 static per tensor (simulated {:.1} dB; {:.1} dB with SmoothQuant)",
                c.sqnr_db, c.other_sqnr_db
            )
        };
        LayerReport {
            node: node.into(),
            kind: "linear".into(),
            precision: "int8".into(),
            scheme,
            m,
            k,
            n,
            act_range: Some([r.min, r.max]),
            act_scale: Some(c.act_scale),
            act_zero_point: Some(c.zp),
            weight_sqnr_db: Some(c.weights.sqnr_db),
            cosine_to_float: None,
            sqnr_db_to_float: None,
            reason: None,
        }
    }
    pub fn linear_i8_dynamic(node: &str, m: usize, k: usize, n: usize, w_sqnr: f32) -> Self {
        LayerReport {
            node: node.into(),
            kind: "linear".into(),
            precision: "int8-dynamic".into(),
            scheme: "W8 per output channel, A8 dynamic per row (symmetric, scale from each row's largest |x| at run time)".into(),
            m,
            k,
            n,
            act_range: None,
            act_scale: None,
            act_zero_point: None,
            weight_sqnr_db: Some(w_sqnr),
            cosine_to_float: None,
            sqnr_db_to_float: None,
            reason: None,
        }
    }
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_i8(
        node: &str,
        m: usize,
        k: usize,
        n: usize,
        ra: crate::calibrate::Range,
        rb: crate::calibrate::Range,
        sa: f32,
        zpa: i32,
        sb: f32,
    ) -> Self {
        LayerReport {
            node: node.into(),
            kind: "matmul".into(),
            precision: "int8".into(),
            scheme: format!(
                "activation x activation: A8 static affine [{:.3}, {:.3}], B8 static symmetric ±{:.3} (scale {sb:.3e}), i32 accumulation",
                ra.min,
                ra.max,
                rb.min.abs().max(rb.max.abs())
            ),
            m,
            k,
            n,
            act_range: Some([ra.min, ra.max]),
            act_scale: Some(sa),
            act_zero_point: Some(zpa),
            weight_sqnr_db: None,
            cosine_to_float: None,
            sqnr_db_to_float: None,
            reason: None,
        }
    }
    #[allow(clippy::too_many_arguments)]
    pub fn linear_i4(
        node: &str,
        m: usize,
        k: usize,
        n: usize,
        c: &crate::quant::LinearChoice,
        w_sqnr: f32,
        sim_db: f32,
        group: usize,
    ) -> Self {
        let mut r = Self::linear_i8(node, m, k, n, c);
        r.precision = "int4".into();
        r.scheme = format!(
            "W4 symmetric per (channel, group of {group}) with f16 scales, clipping searched on activation-weighted error; A8 static per tensor{} (simulated {sim_db:.1} dB)",
            if c.smooth.is_some() { " after SmoothQuant migration" } else { "" }
        );
        r.weight_sqnr_db = Some(w_sqnr);
        r
    }
    pub fn embedding_i4(
        node: &str,
        table: &str,
        rows: usize,
        d: usize,
        group: usize,
        sqnr: f32,
    ) -> Self {
        let mut r = Self::embedding_i8(node, table, rows, d, sqnr);
        r.precision = "int4".into();
        r.scheme = format!(
            "row-wise INT4 in groups of {group}, f16 scale and offset per group (range searched)"
        );
        r
    }
    pub fn embedding_i8(node: &str, table: &str, rows: usize, d: usize, sqnr: f32) -> Self {
        LayerReport {
            node: node.into(),
            kind: format!("embedding ({table})"),
            precision: "int8".into(),
            scheme: "row-wise INT8 with f16 scale and bias per row".into(),
            m: rows,
            k: d,
            n: d,
            act_range: None,
            act_scale: None,
            act_zero_point: None,
            weight_sqnr_db: Some(sqnr),
            cosine_to_float: None,
            sqnr_db_to_float: None,
            reason: None,
        }
    }
    pub fn float(node: &str, kind: &str, m: usize, k: usize, n: usize) -> Self {
        LayerReport {
            node: node.into(),
            kind: kind.into(),
            precision: "f32".into(),
            scheme: "float".into(),
            m,
            k,
            n,
            act_range: None,
            act_scale: None,
            act_zero_point: None,
            weight_sqnr_db: None,
            cosine_to_float: None,
            sqnr_db_to_float: None,
            reason: Some(if kind == "matmul" {
                "activation x activation MatMul kept in float (pass --act-matmul int8 to quantize it)"
                    .into()
            } else {
                "--bits 32: no quantization requested".into()
            }),
        }
    }
}

/// One op of the first plan: which node it came from and its precision ("int8", "f32" for float
/// arithmetic, "data" for pure data movement).
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    pub node: String,
    pub op: String,
    pub precision: String,
}

/// Closeness of one output to the float reference.
#[derive(Clone, Debug, Serialize)]
pub struct OutputMetrics {
    pub name: String,
    pub cosine: f64,
    pub pearson: f64,
    pub max_abs_err: f64,
    pub rel_l2_err: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub source: String,
    pub bits: u32,
    pub method: String,
    pub batches: Vec<usize>,
    pub calib_samples: usize,
    pub file_bytes: usize,
    pub float_weight_bytes: usize,
    pub layers: Vec<LayerReport>,
    pub ops: Vec<OpReport>,
    /// Ops that do float arithmetic inside a quantized model (nothing falls back silently).
    pub float_ops: Vec<OpReport>,
    /// Output metrics against the float reference, measured on (up to 256) calibration samples.
    pub outputs: Vec<OutputMetrics>,
    /// The accuracy budget (`--max-cos-drop`), if one was given.
    pub max_cos_drop: Option<f64>,
    /// Measured drop of mean per-sample output cosine on the calibration samples used for the
    /// budget (worst output), after any fallback.
    pub cos_drop: Option<f64>,
    /// Layers kept in float to meet the budget, most sensitive first.
    pub fell_back: Vec<String>,
    /// CUDA kernels: per requested SM, whether PTX was embedded (or why not).
    pub cuda: Vec<String>,
}

impl Report {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{} → .ember: {} bits, {} calibration ({} samples), batches {:?}, {} bytes (float weights {} bytes)\n",
            self.source, self.bits, self.method, self.calib_samples, self.batches, self.file_bytes, self.float_weight_bytes
        ));
        s.push_str(&format!(
            "{:<28} {:<22} {:<6} {:>16} {:>10} {:>10}\n",
            "layer", "kind", "prec", "M x K x N", "w SQNR dB", "cos float"
        ));
        for l in &self.layers {
            s.push_str(&format!(
                "{:<28} {:<22} {:<6} {:>16} {:>10} {:>10}\n",
                trunc(&l.node, 28),
                trunc(&l.kind, 22),
                l.precision,
                format!("{}x{}x{}", l.m, l.k, l.n),
                l.weight_sqnr_db.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
                l.cosine_to_float.map(|v| format!("{v:.5}")).unwrap_or("-".into()),
            ));
        }
        if !self.float_ops.is_empty() {
            let names: Vec<String> =
                self.float_ops.iter().map(|o| format!("{} ({})", o.node, o.op)).collect();
            s.push_str(&format!("ops computing in float: {}\n", names.join(", ")));
        }
        if let (Some(b), Some(d)) = (self.max_cos_drop, self.cos_drop) {
            s.push_str(&format!(
                "accuracy budget: cosine drop {d:.2e} <= {b:.2e}; layers widened (see each one's reason): {}\n",
                if self.fell_back.is_empty() {
                    "none".to_string()
                } else {
                    self.fell_back.join(", ")
                }
            ));
        }
        for c in &self.cuda {
            s.push_str(&format!("cuda {c}\n"));
        }
        for o in &self.outputs {
            s.push_str(&format!(
                "output '{}': cosine {:.6}, pearson {:.6}, max abs err {:.3e}, rel L2 err {:.3e}\n",
                o.name, o.cosine, o.pearson, o.max_abs_err, o.rel_l2_err
            ));
        }
        s
    }
}

fn trunc(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}

/// Cosine, Pearson correlation, max abs error and relative L2 error of `got` against `want`.
pub fn metrics(name: &str, got: &[f32], want: &[f32]) -> OutputMetrics {
    let n = got.len().min(want.len()).max(1) as f64;
    let (mut dot, mut ng, mut nw, mut diff, mut maxe) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let mg = got.iter().map(|v| *v as f64).sum::<f64>() / n;
    let mw = want.iter().map(|v| *v as f64).sum::<f64>() / n;
    let (mut cov, mut vg, mut vw) = (0f64, 0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (*g as f64, *w as f64);
        dot += g * w;
        ng += g * g;
        nw += w * w;
        diff += (g - w) * (g - w);
        maxe = maxe.max((g - w).abs());
        cov += (g - mg) * (w - mw);
        vg += (g - mg) * (g - mg);
        vw += (w - mw) * (w - mw);
    }
    let cosine = if ng == 0.0 && nw == 0.0 {
        1.0
    } else {
        dot / (ng.sqrt() * nw.sqrt()).max(f64::MIN_POSITIVE)
    };
    let pearson = if vg == 0.0 && vw == 0.0 {
        1.0
    } else {
        cov / (vg.sqrt() * vw.sqrt()).max(f64::MIN_POSITIVE)
    };
    let rel = if nw == 0.0 { diff.sqrt() } else { (diff / nw).sqrt() };
    OutputMetrics { name: name.into(), cosine, pearson, max_abs_err: maxe, rel_l2_err: rel }
}
