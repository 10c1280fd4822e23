//! A hand-written SVG plot (no plotting crate, no fonts or C libraries): throughput against
//! message size, log–log, one line per contender, from the one-per-call small-message rows
//! and the bulk rows.

use crate::{Fig, Row, COLUMNS};
use std::fmt::Write;

const W: f64 = 960.0;
const H: f64 = 600.0;
const L: f64 = 80.0;
const R: f64 = 230.0;
const T: f64 = 40.0;
const B: f64 = 60.0;
const COLORS: &[&str] = &[
    "#d62728", "#ff7f0e", "#ffbb78", "#1f77b4", "#aec7e8", "#2ca02c", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#000000",
];

/// Renders the plot.
pub fn plot(rows: &[Row]) -> String {
    // (title, column index, points (size, bytes per second))
    type Line<'a> = (&'a str, usize, Vec<(f64, f64)>);
    let mut lines: Vec<Line<'_>> = Vec::new();
    for (ci, (k, title, _)) in COLUMNS.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.bulk || r.case == "small, one per call")
            .filter_map(|r| match r.figs.get(k) {
                Some(Fig::Rate { bytes, .. }) => Some((r.size as f64, *bytes)),
                _ => None,
            })
            .collect();
        if !pts.is_empty() {
            lines.push((title, ci, pts));
        }
    }
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">Throughput vs message size, one message per call, producer and consumer in separate processes</text>
"#,
        (L + W - R) / 2.0
    );
    if all.is_empty() {
        s += "</svg>\n";
        return s;
    }
    let (x0, x1) = (3.0, 27.0); // log2 of 8 B .. 128 MiB
    let ylo = all
        .iter()
        .map(|p| p.1.log10())
        .fold(f64::MAX, f64::min)
        .floor();
    let yhi = all
        .iter()
        .map(|p| p.1.log10())
        .fold(f64::MIN, f64::max)
        .ceil();
    let px = |x: f64| L + (x.log2() - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - (y.log10() - ylo) / (yhi - ylo).max(1.0) * (H - T - B);
    // Grid and axes.
    for e in (ylo as i32)..=(yhi as i32) {
        let y = py(10f64.powi(e));
        let label = match e {
            e if e >= 9 => format!("{} GB/s", 10f64.powi(e - 9)),
            e if e >= 6 => format!("{} MB/s", 10f64.powi(e - 6)),
            e => format!("{} kB/s", 10f64.powi(e - 3)),
        };
        let _ = writeln!(
            s,
            r##"<line x1="{L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0
        );
    }
    for sz in [8usize, 64, 1 << 10, 64 << 10, 1 << 20, 64 << 20] {
        let x = px(sz as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{T}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 18.0,
            crate::size_name(sz)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">message size (log)</text>"#,
        (L + W - R) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        W - L - R,
        H - T - B
    );
    // Lines and legend.
    for (i, (title, ci, pts)) in lines.iter().enumerate() {
        let color = COLORS[ci % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let width = if *ci == 0 { 3 } else { 2 };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}"/>"#,
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = T + 10.0 + i as f64 * 22.0;
        let lx = W - R + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="{width}"/><text x="{}" y="{}">{title}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    s += "</svg>\n";
    s
}
