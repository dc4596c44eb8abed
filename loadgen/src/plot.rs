//! SVG plots with plotters. Text is written as SVG `<text>` elements (plotters' built-in
//! size estimate, no font files), so rendering needs no fonts on this machine; the
//! viewer's default sans-serif font draws them.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::RunReport;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A colour per series label, stable across panels.
fn color(labels: &[String], label: &str) -> RGBColor {
    let i = labels.iter().position(|l| l == label).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// `-log10(1 − q)`: 0 at the median's left end, 1 at 90%, 2 at 99% …
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-6).log10()
}

fn nines_label(x: &f64) -> String {
    match x.round() as i32 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        3 => "99.9%".into(),
        4 => "99.99%".into(),
        5 => "99.999%".into(),
        _ => String::new(),
    }
}

fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    series: &[(String, &RunReport)],
    labels: &[String],
) -> Result<(), String> {
    let points: Vec<(&String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(label, r)| {
            let pts = r
                .latency_curve
                .iter()
                .filter(|[p, _]| *p < 100.0)
                .map(|[p, ms]| (nines(*p), ms.max(0.001)))
                .collect::<Vec<_>>();
            (label, pts)
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    let (lo, hi) = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if points.is_empty() { (0.01, 1.0) } else { (lo * 0.8, hi * 1.25) };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .margin_right(30)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..5f64, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&nines_label)
        .y_label_formatter(&|y| if *y >= 10.0 { format!("{y:.0}") } else { format!("{y:.2}") })
        .x_desc("percentile")
        .y_desc("latency, ms")
        .draw()
        .map_err(err)?;
    for (label, pts) in points {
        let c = color(labels, label);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One latency-percentile chart with a curve per run.
pub fn latency_svg(title: &str, series: &[(String, &RunReport)]) -> Result<String, String> {
    let labels: Vec<String> = series.iter().map(|(l, _)| l.clone()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        latency_panel(&root, title, series, &labels)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A grid of latency charts: one panel per (title, runs).
pub fn latency_grid_svg(panels: &[(String, Vec<(String, &RunReport)>)], labels: &[String]) -> Result<String, String> {
    let cols = if panels.len() > 1 { 2 } else { 1 };
    let rows = panels.len().div_ceil(cols).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (600 * cols as u32, 400 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let areas = root.split_evenly((rows, cols));
        for ((title, series), area) in panels.iter().zip(areas.iter()) {
            latency_panel(area, title, series, labels)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A panel of a throughput plot: one line per setting over the payload sizes.
pub struct ThroughputPanel {
    /// Panel title.
    pub title: String,
    /// y-axis description.
    pub y_desc: String,
    /// (setting, [(payload bytes, value)]).
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Values per payload size, one line per setting, log-log, one panel each.
pub fn throughput_svg(panels: &[ThroughputPanel], labels: &[String]) -> Result<String, String> {
    let cols = if panels.len() > 1 { 2 } else { 1 };
    let rows = panels.len().div_ceil(cols).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (600 * cols as u32, 400 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        for (panel, area) in panels.iter().zip(root.split_evenly((rows, cols)).iter()) {
            let xs = panel.series.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x));
            let mut payloads: Vec<f64> = xs.clone().collect();
            payloads.sort_by(f64::total_cmp);
            payloads.dedup();
            let ys = panel.series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y)).filter(|y| *y > 0.0);
            let (x_lo, x_hi) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
            let (y_lo, y_hi) = ys.fold((f64::MAX, 0f64), |(a, b), y| (a.min(y), b.max(y)));
            let (x_lo, x_hi) = if x_hi > 0.0 { (x_lo / 1.5, x_hi * 1.5) } else { (16.0, 65536.0) };
            let (y_lo, y_hi) = if y_hi > 0.0 { (y_lo / 2.0, y_hi * 2.0) } else { (1.0, 10.0) };
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(
                    (x_lo..x_hi).log_scale().with_key_points(payloads.clone()),
                    (y_lo..y_hi).log_scale(),
                )
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_label_formatter(&|x| crate::cli::format_size(*x as u64).replace(' ', ""))
                .y_label_formatter(&|y| short(*y))
                .x_desc("payload")
                .y_desc(panel.y_desc.as_str())
                .draw()
                .map_err(err)?;
            for (label, pts) in &panel.series {
                let c = color(labels, label);
                let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|&(_, y)| y > 0.0).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
            }
            chart
                .configure_series_labels()
                // Throughput falls to the right, latency rises: keep the legend off the lines.
                .position(if panel.y_desc.contains("latency") {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::LowerLeft
                })
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// 1234567 → "1.2M".
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
