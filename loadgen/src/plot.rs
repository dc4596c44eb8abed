//! SVG plots with plotters. Text is written as SVG `<text>` elements (plotters' built-in
//! size estimate, no font files), so rendering needs no fonts on this machine; the
//! viewer's default sans-serif font draws them.
//!
//! Every figure has one legend, in a band above its panels: a series keeps its colour in
//! every panel, so one legend serves them all, and a legend outside the plotting areas
//! can never hide a line.

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// The reference line of the offered-load plot ("delivered = offered").
const IDEAL: RGBColor = RGBColor(150, 150, 150);

const LEGEND_FONT: u32 = 16;
const LEGEND_ROW: u32 = 24;
const LEGEND_MARGIN: u32 = 16;
const SWATCH: u32 = 24;

/// A colour per series label, stable across panels.
fn color(labels: &[String], label: &str) -> RGBColor {
    let i = labels.iter().position(|l| l == label).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One legend entry.
#[derive(Debug, Clone)]
struct Entry {
    label: String,
    color: RGBColor,
    dashed: bool,
}

fn entries(labels: &[String]) -> Vec<Entry> {
    labels.iter().map(|l| Entry { label: l.clone(), color: color(labels, l), dashed: false }).collect()
}

/// Width of an entry: swatch, gap, text (a generous 0.62 em per character, since the
/// viewer's font is not known), spacing to the next entry.
fn entry_width(label: &str) -> u32 {
    SWATCH + 6 + (label.chars().count() as u32 * LEGEND_FONT * 62).div_ceil(100) + 22
}

/// (row, x) of each entry in a band `width` pixels wide: left to right, wrapping.
fn legend_layout(labels: &[&str], width: u32) -> Vec<(u32, u32)> {
    let (mut row, mut x) = (0, LEGEND_MARGIN);
    labels
        .iter()
        .map(|label| {
            let w = entry_width(label);
            if x > LEGEND_MARGIN && x + w > width.saturating_sub(LEGEND_MARGIN) {
                row += 1;
                x = LEGEND_MARGIN;
            }
            let at = (row, x);
            x += w;
            at
        })
        .collect()
}

fn legend_height(labels: &[&str], width: u32) -> u32 {
    let rows = legend_layout(labels, width).last().map_or(0, |&(row, _)| row + 1);
    rows * LEGEND_ROW + 12
}

/// Draws the legend in a band at the top of `root` and returns the area below it.
fn with_legend<'a>(root: &Area<'a>, entries: &[Entry]) -> Result<Area<'a>, String> {
    let width = root.dim_in_pixel().0;
    let labels: Vec<&str> = entries.iter().map(|e| e.label.as_str()).collect();
    let (band, rest) = root.split_vertically(legend_height(&labels, width));
    for (entry, (row, x)) in entries.iter().zip(legend_layout(&labels, width)) {
        let y = (8 + row * LEGEND_ROW + LEGEND_ROW / 2) as i32;
        let (x, swatch) = (x as i32, SWATCH as i32);
        let style = entry.color.stroke_width(3);
        if entry.dashed {
            band.draw(&DashedPathElement::new(vec![(x, y), (x + swatch, y)], 5, 3, style)).map_err(err)?;
        } else {
            band.draw(&PathElement::new(vec![(x, y), (x + swatch, y)], style)).map_err(err)?;
        }
        let font = TextStyle::from(("sans-serif", LEGEND_FONT).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        band.draw(&Text::new(entry.label.clone(), (x + swatch + 6, y), font)).map_err(err)?;
    }
    Ok(rest)
}

/// A figure of `panels` panels, two columns when there are several.
fn grid(panels: usize) -> (usize, usize) {
    let cols = if panels > 1 { 2 } else { 1 };
    (panels.div_ceil(cols).max(1), cols)
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
    area: &Area<'_>,
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
        .x_label_area_size(36)
        .y_label_area_size(60)
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
        chart.draw_series(LineSeries::new(pts, color(labels, label).stroke_width(2))).map_err(err)?;
    }
    Ok(())
}

/// One latency-percentile chart with a curve per run.
pub fn latency_svg(title: &str, series: &[(String, &RunReport)]) -> Result<String, String> {
    let labels: Vec<String> = series.iter().map(|(l, _)| l.clone()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let area = with_legend(&root, &entries(&labels))?;
        latency_panel(&area, title, series, &labels)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A grid of latency charts: one panel per (title, runs).
pub fn latency_grid_svg(panels: &[(String, Vec<(String, &RunReport)>)], labels: &[String]) -> Result<String, String> {
    let (rows, cols) = grid(panels.len());
    let width = 600 * cols as u32;
    let band = legend_height(&labels.iter().map(String::as_str).collect::<Vec<_>>(), width);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 400 * rows as u32 + band)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let area = with_legend(&root, &entries(labels))?;
        for ((title, series), panel) in panels.iter().zip(area.split_evenly((rows, cols)).iter()) {
            latency_panel(panel, title, series, labels)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A panel with a line per series over x values, both axes logarithmic.
pub struct Panel {
    /// Panel title.
    pub title: String,
    /// x-axis description.
    pub x_desc: String,
    /// y-axis description.
    pub y_desc: String,
    /// (series label, [(x, y)]).
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Draw the dashed y = x line (delivered = offered).
    pub ideal: bool,
    /// x is a payload size, labelled "64B", "1KiB" (else "50k", "1.2M").
    pub payload_axis: bool,
}

fn panel(area: &Area<'_>, panel: &Panel, labels: &[String]) -> Result<(), String> {
    let xs = panel.series.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x)).filter(|x| *x > 0.0);
    let mut key_points: Vec<f64> = xs.clone().collect();
    key_points.sort_by(f64::total_cmp);
    key_points.dedup();
    let ys = panel.series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y)).filter(|y| *y > 0.0);
    let (x_lo, x_hi) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (mut y_lo, mut y_hi) = ys.fold((f64::MAX, 0f64), |(a, b), y| (a.min(y), b.max(y)));
    if panel.ideal && x_hi > 0.0 {
        (y_lo, y_hi) = (y_lo.min(x_lo), y_hi.max(x_hi));
    }
    let (x_lo, x_hi) = if x_hi > 0.0 { (x_lo / 1.3, x_hi * 1.3) } else { (1.0, 10.0) };
    let (y_lo, y_hi) = if y_hi > 0.0 { (y_lo / 1.6, y_hi * 1.6) } else { (1.0, 10.0) };
    // Ticks at the measured x values: the payloads, or the offered rates.
    let x_range = (x_lo..x_hi).log_scale().with_key_points(key_points);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(8)
        .margin_right(24)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, (y_lo..y_hi).log_scale().with_key_points(log_ticks(y_lo, y_hi)))
        .map_err(err)?;
    let payload_axis = panel.payload_axis;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| {
            if payload_axis { crate::cli::format_size(*x as u64).replace(' ', "") } else { short(*x) }
        })
        .y_label_formatter(&|y| short(*y))
        .x_desc(panel.x_desc.as_str())
        .y_desc(panel.y_desc.as_str())
        .draw()
        .map_err(err)?;
    if panel.ideal {
        chart
            .draw_series(DashedLineSeries::new([(x_lo, x_lo), (x_hi, x_hi)], 6, 4, IDEAL.stroke_width(2)))
            .map_err(err)?;
    }
    for (label, pts) in &panel.series {
        let c = color(labels, label);
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|&(x, y)| x > 0.0 && y > 0.0).collect();
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2))).map_err(err)?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    Ok(())
}

/// A figure of panels (two columns), one legend above them all.
pub fn panels_svg(panels: &[Panel], labels: &[String]) -> Result<String, String> {
    let (rows, cols) = grid(panels.len());
    let width = 600 * cols as u32;
    let mut legend = entries(labels);
    if panels.iter().any(|p| p.ideal) {
        legend.push(Entry { label: "delivered = offered".into(), color: IDEAL, dashed: true });
    }
    let band = legend_height(&legend.iter().map(|e| e.label.as_str()).collect::<Vec<_>>(), width);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 400 * rows as u32 + band)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let area = with_legend(&root, &legend)?;
        for (p, a) in panels.iter().zip(area.split_evenly((rows, cols)).iter()) {
            panel(a, p, labels)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Tick values for a logarithmic axis from `lo` to `hi`: 1, 2 and 5 times the powers of
/// ten; every digit when the range is too narrow for three of those; at least its ends
/// (plotters alone labels only the powers of ten, which leaves a narrow range bare).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let ticks = |mantissas: &[f64]| -> Vec<f64> {
        let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (first..=last)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let coarse = ticks(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        return coarse;
    }
    let fine = ticks(&[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    if fine.len() >= 2 { fine } else { vec![lo, hi] }
}

/// 1234567 → "1.2M".
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legend_entries_wrap_inside_the_band_without_overlapping() {
        let labels = [
            "ringcast split off",
            "ringcast split 1 KiB",
            "ringcast split 4 KiB",
            "ringcast split 16 KiB",
            "tokio-tungstenite",
            "fastwebsockets",
        ];
        let width = 1200;
        let layout = legend_layout(&labels, width);
        assert!(layout.iter().any(|&(row, _)| row > 0), "six long labels need a second row at {width} px");
        for (i, (&(row, x), label)) in layout.iter().zip(labels).enumerate() {
            assert!(x + entry_width(label) <= width, "{label} runs off the figure");
            if let Some(&(next_row, next_x)) = layout.get(i + 1)
                && next_row == row
            {
                assert!(x + entry_width(label) <= next_x, "{label} overlaps the next entry");
            }
        }
        let rows = layout.last().unwrap().0 + 1;
        assert_eq!(legend_height(&labels, width), rows * LEGEND_ROW + 12);
    }

    #[test]
    fn the_legend_sits_above_every_panel() {
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let panels: Vec<Panel> = (0..3)
            .map(|i| Panel {
                title: format!("panel {i}"),
                x_desc: "offered".into(),
                y_desc: "delivered".into(),
                series: labels.iter().map(|l| (l.clone(), vec![(1e4, 1e4), (1e5, 9e4)])).collect(),
                ideal: i == 0,
                payload_axis: false,
            })
            .collect();
        let svg = panels_svg(&panels, &labels).unwrap();
        let band = legend_height(&["a", "b", "delivered = offered"], 1200) as f64;
        // Every legend label is drawn in the band; every panel title below it.
        for label in ["a", "b", "delivered = offered"] {
            assert!(text_y(&svg, label) < band, "legend entry {label}");
        }
        for i in 0..3 {
            assert!(text_y(&svg, &format!("panel {i}")) > band, "panel {i}");
        }
        // The dashed reference line: grey dashes in the legend and in the first panel.
        assert!(svg.matches(r##"stroke="#969696""##).count() > 10, "the dashed ideal line");
    }

    #[test]
    fn a_log_axis_gets_labels_however_narrow_its_range() {
        assert_eq!(log_ticks(0.8, 120.0), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(log_ticks(20.0, 60.0), [20.0, 30.0, 40.0, 50.0, 60.0]);
        assert_eq!(log_ticks(31.0, 38.0), [31.0, 38.0], "no two digits inside: the ends");
    }

    /// The y coordinate of the `<text>` element whose content is exactly `content`.
    fn text_y(svg: &str, content: &str) -> f64 {
        let element = svg
            .split("<text")
            .skip(1)
            .find(|e| {
                e.split_once('>').and_then(|(_, rest)| rest.split_once("</text>")).map(|(t, _)| t.trim())
                    == Some(content)
            })
            .unwrap_or_else(|| panic!("no text {content:?}"));
        let y = element.split(" y=\"").nth(1).unwrap();
        y[..y.find('"').unwrap()].parse().unwrap()
    }
}
