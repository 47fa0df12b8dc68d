//! A small SVG line chart (no dependencies): series of (x, y) points with markers, a legend,
//! labelled axes with round ticks, optional horizontal reference lines, linear or log y.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// (label, y) drawn as dashed lines.
    pub hlines: Vec<(String, f64)>,
    pub log_y: bool,
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Round tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = vec![];
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e5) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

impl Chart {
    pub fn to_svg(&self) -> String {
        let (w, h) = (760.0, 460.0);
        let (l, r, t, b) = (80.0, 190.0, 40.0, 60.0);
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let ys = pts.clone().map(|p| p.1).chain(self.hlines.iter().map(|h| h.1));
        let (mut x0, mut x1) =
            pts.clone().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let (mut y0, mut y1) = ys.fold((f64::MAX, f64::MIN), |a, y| (a.0.min(y), a.1.max(y)));
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        x0 = 0.0f64.min(x0);
        let log = self.log_y && y0 > 0.0;
        let (fy0, fy1) = if log {
            (
                10f64.powf(y0.log10().floor()),
                10f64.powf(y1.log10().ceil().max(y0.log10().floor() + 1.0)),
            )
        } else {
            (0.0f64.min(y0), if y1 <= 0.0 { 1.0 } else { y1 * 1.08 })
        };
        let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
        let py = |y: f64| {
            let f = if log {
                (y.max(fy0).log10() - fy0.log10()) / (fy1.log10() - fy0.log10())
            } else {
                (y - fy0) / (fy1 - fy0)
            };
            h - b - f * (h - t - b)
        };
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
            (l + w - r) / 2.0,
            esc(&self.title)
        );
        // Axes, ticks and grid.
        for xt in ticks(x0, x1) {
            let x = px(xt);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                h - b,
                h - b + 16.0,
                fmt_tick(xt)
            );
        }
        let yticks: Vec<f64> = if log {
            let mut v = vec![];
            let mut d = fy0;
            // Many decades: one tick per decade.
            let mults: &[f64] = if fy1 / fy0 > 1e4 { &[1.0] } else { &[1.0, 2.0, 5.0] };
            while d <= fy1 * 1.0001 {
                for &m in mults {
                    if d * m <= fy1 * 1.0001 {
                        v.push(d * m);
                    }
                }
                d *= 10.0;
            }
            v
        } else {
            ticks(fy0, fy1)
        };
        for yt in yticks {
            let y = py(yt);
            let _ = writeln!(
                s,
                r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                w - r,
                l - 6.0,
                y + 4.0,
                fmt_tick(yt)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            w - l - r,
            h - t - b
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (l + w - r) / 2.0,
            h - 18.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
            (t + h - b) / 2.0,
            (t + h - b) / 2.0,
            esc(&self.y_label)
        );
        for (label, y) in &self.hlines {
            let yy = py(*y);
            let _ = writeln!(
                s,
                r##"<line x1="{l}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#555" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" font-size="11" fill="#555">{}</text>"##,
                w - r,
                w - r + 6.0,
                yy + 4.0,
                esc(label)
            );
        }
        for (i, ser) in self.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let path: Vec<String> =
                ser.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for &(x, y) in &ser.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"/>"#,
                    px(x),
                    py(y)
                );
            }
            let ly = t + 20.0 + i as f64 * 20.0;
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                w - r + 10.0,
                w - r + 34.0,
                w - r + 40.0,
                ly + 4.0,
                esc(&ser.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_every_series_and_is_well_formed() {
        let c = Chart {
            title: "p99 <latency>".into(),
            x_label: "offered load (req/s)".into(),
            y_label: "ms".into(),
            series: vec![
                Series { name: "pad".into(), points: vec![(10.0, 1.0), (20.0, 3.0), (30.0, 40.0)] },
                Series { name: "split".into(), points: vec![(10.0, 0.9), (20.0, 2.0)] },
            ],
            hlines: vec![("2 x batch".into(), 25.0)],
            log_y: true,
        };
        let s = c.to_svg();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert_eq!(s.matches("<circle").count(), 5);
        assert!(
            s.contains("p99 &lt;latency&gt;") && s.contains("split") && s.contains("2 x batch")
        );
        assert!(!s.contains("NaN") && !s.contains("inf"));
        assert_eq!(ticks(0.0, 100.0), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        // Degenerate input still draws.
        let e = Chart { series: vec![], hlines: vec![], log_y: false, ..c };
        assert!(!e.to_svg().contains("NaN"));
    }
}
