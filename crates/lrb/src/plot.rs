//! Hand-written SVG figures: `report.svg`, the picture of one run that
//! `spate lrb run` writes next to `report.json`, and the primitives
//! `bench.svg` is drawn with.
//!
//! The SVG is written as text: the crate needs no plotting dependency, and
//! one writer keeps every figure alike. Every number from a report is
//! guarded (non-finite values, empty series), so a figure never fails a run:
//! a panel without data is drawn as empty axes with a note.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::path::Path;

use spate_engine::coordinator::view::HistoryPoint;

use crate::driver::RunReport;
use crate::model::AnswerKind;
use crate::query::SinkStats;

/// Colours of data series, in order of use; red is kept for failures.
pub(crate) const SERIES: [&str; 9] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f",
];
/// Failures, deadlines and failed runs.
pub(crate) const RED: &str = "#d62728";
/// Passed runs.
pub(crate) const GREEN: &str = "#2ca02c";
/// Scale-out markers.
const SCALE: &str = "#6a3d9a";
/// Text and frames.
const INK: &str = "#333333";
/// Secondary text.
const MUTED: &str = "#707070";
/// Grid lines.
const GRID: &str = "#e6e6e6";

/// A coordinate as written into the SVG: one decimal, and never `NaN` or
/// `inf` (which would make the whole document invalid), whatever the data.
struct N(f64);

impl fmt::Display for N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.0.is_finite() { self.0 } else { 0.0 };
        write!(f, "{v:.1}")
    }
}

/// Escapes text for SVG content and attribute values, so that operator
/// names and paths cannot break the markup.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Where a text is anchored horizontally.
#[derive(Clone, Copy)]
pub(crate) enum Anchor {
    Start,
    Middle,
    End,
}

/// How a text is written.
#[derive(Clone, Copy)]
pub(crate) struct Font {
    size: f64,
    fill: &'static str,
    anchor: Anchor,
    bold: bool,
    halo: bool,
}

impl Font {
    /// Dark text of `size` pixels, anchored at its start.
    pub(crate) const fn new(size: f64) -> Font {
        Font {
            size,
            fill: INK,
            anchor: Anchor::Start,
            bold: false,
            halo: false,
        }
    }

    pub(crate) const fn fill(self, fill: &'static str) -> Font {
        Font { fill, ..self }
    }

    pub(crate) const fn anchor(self, anchor: Anchor) -> Font {
        Font { anchor, ..self }
    }

    pub(crate) const fn bold(self) -> Font {
        Font { bold: true, ..self }
    }

    /// A white outline, so that a label stays readable over data.
    const fn halo(self) -> Font {
        Font { halo: true, ..self }
    }

    /// Rough width of `text` in this font, for laying labels out.
    fn width(&self, text: &str) -> f64 {
        text.chars().count() as f64 * self.size * 0.58
    }
}

/// How a line is stroked.
#[derive(Clone, Copy)]
pub(crate) struct Pen {
    colour: &'static str,
    width: f64,
    dash: Option<&'static str>,
    opacity: f64,
}

impl Pen {
    /// A solid, opaque line.
    pub(crate) const fn new(colour: &'static str, width: f64) -> Pen {
        Pen {
            colour,
            width,
            dash: None,
            opacity: 1.0,
        }
    }

    /// Dashed with an SVG `stroke-dasharray` pattern.
    pub(crate) const fn dashed(self, pattern: &'static str) -> Pen {
        Pen {
            dash: Some(pattern),
            ..self
        }
    }

    const fn opacity(self, opacity: f64) -> Pen {
        Pen { opacity, ..self }
    }

    fn attributes(&self) -> String {
        let mut a = format!(
            r#"fill="none" stroke="{}" stroke-width="{}""#,
            self.colour, self.width
        );
        if let Some(dash) = self.dash {
            let _ = write!(a, r#" stroke-dasharray="{dash}""#);
        }
        if self.opacity < 1.0 {
            let _ = write!(a, r#" stroke-opacity="{}""#, self.opacity);
        }
        a
    }
}

/// An SVG document being written.
pub(crate) struct Svg {
    text: String,
}

impl Svg {
    /// A blank white page of `width` x `height` pixels.
    pub(crate) fn new(width: f64, height: f64) -> Svg {
        let mut text = String::new();
        let _ = writeln!(
            text,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#,
            w = N(width),
            h = N(height)
        );
        let _ = writeln!(
            text,
            r#"<rect width="{}" height="{}" fill="white"/>"#,
            N(width),
            N(height)
        );
        Svg { text }
    }

    /// The finished document.
    pub(crate) fn finish(mut self) -> String {
        self.text.push_str("</svg>\n");
        self.text
    }

    pub(crate) fn text(&mut self, at: (f64, f64), font: Font, content: &str) {
        let anchor = match font.anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let weight = if font.bold {
            r#" font-weight="bold""#
        } else {
            ""
        };
        let halo = if font.halo {
            r#" stroke="white" stroke-width="3" stroke-linejoin="round" paint-order="stroke""#
        } else {
            ""
        };
        let _ = writeln!(
            self.text,
            r#"<text x="{}" y="{}" text-anchor="{anchor}" font-size="{}" fill="{}"{weight}{halo}>{}</text>"#,
            N(at.0),
            N(at.1),
            font.size,
            font.fill,
            escape(content)
        );
    }

    pub(crate) fn line(&mut self, from: (f64, f64), to: (f64, f64), pen: Pen) {
        let _ = writeln!(
            self.text,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" {}/>"#,
            N(from.0),
            N(from.1),
            N(to.0),
            N(to.1),
            pen.attributes()
        );
    }

    pub(crate) fn polyline(&mut self, points: &[(f64, f64)], pen: Pen) {
        if points.is_empty() {
            return;
        }
        let _ = writeln!(
            self.text,
            r#"<polyline points="{}" stroke-linejoin="round" {}/>"#,
            coordinates(&thin(points)),
            pen.attributes()
        );
    }

    fn polygon(&mut self, points: &[(f64, f64)], fill: &'static str, opacity: f64) {
        if points.is_empty() {
            return;
        }
        let _ = writeln!(
            self.text,
            r#"<polygon points="{}" fill="{fill}" fill-opacity="{opacity}" stroke="none"/>"#,
            coordinates(points),
        );
    }

    /// A filled rectangle without outline.
    fn fill(&mut self, at: (f64, f64), size: (f64, f64), fill: &'static str, opacity: f64) {
        let _ = writeln!(
            self.text,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{fill}" fill-opacity="{opacity}"/>"#,
            N(at.0),
            N(at.1),
            N(size.0.max(0.0)),
            N(size.1.max(0.0))
        );
    }

    /// An outlined, unfilled rectangle.
    fn outline(&mut self, at: (f64, f64), size: (f64, f64), pen: Pen) {
        let _ = writeln!(
            self.text,
            r#"<rect x="{}" y="{}" width="{}" height="{}" {}/>"#,
            N(at.0),
            N(at.1),
            N(size.0.max(0.0)),
            N(size.1.max(0.0)),
            pen.attributes()
        );
    }

    pub(crate) fn circle(&mut self, centre: (f64, f64), r: f64, fill: &str, stroke: &str) {
        let _ = writeln!(
            self.text,
            r#"<circle cx="{}" cy="{}" r="{}" fill="{fill}" stroke="{stroke}"/>"#,
            N(centre.0),
            N(centre.1),
            N(r)
        );
    }
}

/// Keeps at most four points of a line per pixel column (the first, the
/// lowest, the highest and the last), which draws the same line: a run of
/// hours has thousands of points per series, and the file stays small.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for column in points.chunk_by(|a, b| a.0.floor() == b.0.floor()) {
        let by_y = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let extremes = [column.iter().min_by(by_y), column.iter().max_by(by_y)];
        let mut kept: Vec<usize> = vec![0, column.len().saturating_sub(1)];
        for extreme in extremes.into_iter().flatten() {
            if let Some(i) = column.iter().position(|p| std::ptr::eq(p, extreme)) {
                kept.push(i);
            }
        }
        kept.sort_unstable();
        kept.dedup();
        out.extend(kept.into_iter().filter_map(|i| column.get(i).copied()));
    }
    out
}

fn coordinates(points: &[(f64, f64)]) -> String {
    let mut s = String::new();
    for (i, (x, y)) in points.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{},{}", N(*x), N(*y));
    }
    s
}

/// A line entry of a legend: a short stroke in `colour`, then `name`.
pub(crate) fn legend_entry(svg: &mut Svg, at: (f64, f64), name: &str, pen: Pen) {
    let (x, y) = at;
    svg.line((x, y), (x + 18.0, y), Pen { width: 3.0, ..pen });
    svg.text((x + 23.0, y + 4.0), Font::new(11.0), name);
}

/// One axis of a chart, linear or logarithmic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Axis {
    min: f64,
    max: f64,
    log: bool,
    /// Ticks only at whole numbers (counts).
    whole: bool,
}

impl Axis {
    /// A linear axis from `min` to `max`; an empty or invalid range becomes
    /// a usable one.
    pub(crate) fn linear(min: f64, max: f64) -> Axis {
        let min = if min.is_finite() { min } else { 0.0 };
        let max = if max.is_finite() && max > min {
            max
        } else {
            min + 1.0
        };
        Axis {
            min,
            max,
            log: false,
            whole: false,
        }
    }

    /// A logarithmic axis from `min` to `max`, both made positive.
    pub(crate) fn logarithmic(min: f64, max: f64) -> Axis {
        let min = if min.is_finite() && min > 0.0 {
            min
        } else {
            1.0
        };
        let max = if max.is_finite() && max > min {
            max
        } else {
            min * 10.0
        };
        Axis {
            min,
            max,
            log: true,
            whole: false,
        }
    }

    /// Fits `values`: a linear axis from 0 to a little above the highest, or
    /// a log axis padded by half a step on both sides; without any usable
    /// value, a default range so that empty axes still draw.
    pub(crate) fn fit(values: impl IntoIterator<Item = f64>, log: bool) -> Axis {
        let (lo, hi) = values
            .into_iter()
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        match (lo.is_finite(), log) {
            (false, true) => Axis::logarithmic(1.0, 10.0),
            (false, false) => Axis::linear(0.0, 10.0),
            (true, true) => Axis::logarithmic(lo / 1.5, hi * 1.5),
            (true, false) => Axis::linear(0.0, if hi > 0.0 { hi * 1.1 } else { 1.0 }),
        }
    }

    /// The same axis, extended so that `value` is on it.
    pub(crate) fn reaching(self, value: f64) -> Axis {
        if value.is_finite() && value > self.max {
            Axis { max: value, ..self }
        } else {
            self
        }
    }

    /// The same axis with ticks at whole numbers only.
    fn whole(self) -> Axis {
        Axis {
            whole: true,
            ..self
        }
    }

    /// Position of `v` along the axis, 0..=1 (values off the axis are drawn
    /// at its ends).
    fn at(&self, v: f64) -> f64 {
        let p = if self.log {
            (v.max(self.min).ln() - self.min.ln()) / (self.max.ln() - self.min.ln())
        } else {
            (v - self.min) / (self.max - self.min)
        };
        if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Tick values: 1-2-5 steps for log axes (decades only when they span
    /// more than three), about six round steps otherwise.
    pub(crate) fn ticks(&self) -> Vec<f64> {
        let mut ticks = Vec::new();
        if self.log {
            let multiples: &[f64] = if self.max / self.min > 1e3 {
                &[1.0]
            } else {
                &[1.0, 2.0, 5.0]
            };
            // Powers of ten computed, not accumulated, so ticks stay round.
            let first = self.min.log10().floor() as i32;
            let last = self.max.log10().ceil() as i32;
            for exponent in first..=last {
                for m in multiples {
                    let v = 10f64.powi(exponent) * m;
                    if v >= self.min && v <= self.max {
                        ticks.push(v);
                    }
                }
            }
        } else {
            let raw = (self.max - self.min) / 6.0;
            let magnitude = 10f64.powf(raw.log10().floor());
            let mut step = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * magnitude)
                .find(|s| *s >= raw)
                .unwrap_or(raw);
            if self.whole {
                step = step.max(1.0).round();
            }
            if !(step.is_finite() && step > 0.0) {
                return ticks;
            }
            // Counted, not accumulated, so ticks stay round numbers.
            let first = (self.min / step).ceil() as i64;
            let last = (self.max / step + 1e-9).floor() as i64;
            ticks.extend((first..=last).map(|i| i as f64 * step));
        }
        ticks
    }
}

/// A number for a tick or a label: at most about four significant digits,
/// with k and M for thousands and millions.
pub(crate) fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", plain(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", plain(v / 1e3))
    } else {
        plain(v)
    }
}

/// `v` with trailing zeros trimmed.
fn plain(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let decimals = if v == 0.0 {
        0
    } else {
        (2 - v.abs().log10().floor() as i64).clamp(0, 6) as usize
    };
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// A duration given in milliseconds, in ms or s.
fn duration(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", plain(ms / 1000.0))
    } else {
        format!("{} ms", plain(ms))
    }
}

/// A rectangular plot area with its two axes.
pub(crate) struct Chart {
    pub(crate) left: f64,
    pub(crate) top: f64,
    pub(crate) width: f64,
    pub(crate) height: f64,
    pub(crate) x: Axis,
    pub(crate) y: Axis,
}

impl Chart {
    /// Pixel position of a data point.
    pub(crate) fn px(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.left + self.x.at(x) * self.width,
            self.top + (1.0 - self.y.at(y)) * self.height,
        )
    }

    fn bottom(&self) -> f64 {
        self.top + self.height
    }

    fn right(&self) -> f64 {
        self.left + self.width
    }

    /// Outline, title, tick labels and grid, numbers written with [`label`].
    pub(crate) fn frame(&self, svg: &mut Svg, title: &str, x_label: &str) {
        self.outline(svg, title);
        self.x_ticks(svg, label);
        self.y_ticks(svg, label);
        if !x_label.is_empty() {
            svg.text(
                (self.left + self.width / 2.0, self.bottom() + 34.0),
                Font::new(12.0).anchor(Anchor::Middle),
                x_label,
            );
        }
    }

    /// The border and a title above it.
    fn outline(&self, svg: &mut Svg, title: &str) {
        svg.outline(
            (self.left, self.top),
            (self.width, self.height),
            Pen::new(INK, 1.0),
        );
        svg.text(
            (self.left + self.width / 2.0, self.top - 8.0),
            Font::new(13.0).anchor(Anchor::Middle).bold(),
            title,
        );
    }

    fn x_ticks(&self, svg: &mut Svg, format: fn(f64) -> String) {
        for v in self.x.ticks() {
            let (x, _) = self.px(v, self.y.min);
            svg.line((x, self.top), (x, self.bottom()), Pen::new(GRID, 1.0));
            svg.line(
                (x, self.bottom()),
                (x, self.bottom() + 4.0),
                Pen::new(INK, 1.0),
            );
            svg.text(
                (x, self.bottom() + 16.0),
                Font::new(11.0).anchor(Anchor::Middle),
                &format(v),
            );
        }
    }

    fn y_ticks(&self, svg: &mut Svg, format: fn(f64) -> String) {
        for v in self.y.ticks() {
            let (_, y) = self.px(self.x.min, v);
            svg.line((self.left, y), (self.right(), y), Pen::new(GRID, 1.0));
            svg.line((self.left - 4.0, y), (self.left, y), Pen::new(INK, 1.0));
            svg.text(
                (self.left - 7.0, y + 4.0),
                Font::new(11.0).anchor(Anchor::End),
                &format(v),
            );
        }
    }

    /// Pixel positions of data points.
    fn pixels(&self, points: &[(f64, f64)]) -> Vec<(f64, f64)> {
        points.iter().map(|(x, y)| self.px(*x, *y)).collect()
    }

    /// A line through data points.
    pub(crate) fn line(&self, svg: &mut Svg, points: &[(f64, f64)], pen: Pen) {
        svg.polyline(&self.pixels(points), pen);
    }

    /// A horizontal reference line across the chart, labelled at its right.
    pub(crate) fn hline(&self, svg: &mut Svg, value: f64, text: &str) {
        let (_, y) = self.px(self.x.min, value);
        svg.line(
            (self.left, y),
            (self.right(), y),
            Pen::new(RED, 1.0).dashed("4 3"),
        );
        svg.text(
            (self.right() - 4.0, y - 4.0),
            Font::new(12.0).fill(RED).anchor(Anchor::End),
            text,
        );
    }

    /// A grey note in the middle of the chart, for a panel without data.
    fn note(&self, svg: &mut Svg, text: &str) {
        svg.text(
            (
                self.left + self.width / 2.0,
                self.top + self.height / 2.0 + 4.0,
            ),
            Font::new(12.0).fill(MUTED).anchor(Anchor::Middle),
            text,
        );
    }
}

/// `report.svg`'s size.
const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 930.0;
/// Left edge and width of the time-series plot areas; legends go right of
/// them.
const PLOT_LEFT: f64 = 75.0;
const PLOT_WIDTH: f64 = 735.0;
/// Left edge of the legends.
const LEGEND_LEFT: f64 = 830.0;
/// Most rows of marker labels stacked at the top of a panel.
const LABEL_ROWS: usize = 3;

/// Writes `report.svg` for a run: the same figures as `report.json`, drawn,
/// so that a run can be judged at a glance.
pub fn write_run_plot(report: &RunReport, path: &Path) -> std::io::Result<()> {
    std::fs::write(path, run_plot(report))
}

/// The figure of a run, as SVG text: input rate, per-operator rates,
/// utilisation and placement over time with failures and scale-outs marked,
/// latency per answer kind, and the failures and splits in words.
pub fn run_plot(report: &RunReport) -> String {
    let operators = operators(report);
    let time = TimeScale::of(report);
    let marks = Marks::of(report, &time);
    let mut svg = Svg::new(WIDTH, HEIGHT);
    header(&mut svg, report);
    input_panel(&mut svg, report, &time, &marks);
    rate_panel(&mut svg, report, &operators, &time, &marks);
    utilisation_panel(&mut svg, report, &operators, &time, &marks);
    placement_panel(&mut svg, report, &operators, &time, &marks);
    latency_panel(&mut svg, report);
    events_panel(&mut svg, report, &time);
    svg.finish()
}

/// Operator names in query order (the order of the report's instances),
/// then any other name the history or the splits mention.
fn operators(report: &RunReport) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let history = report.history.iter().flat_map(|p| {
        p.in_rate
            .keys()
            .chain(p.utilization.keys())
            .chain(p.partitions.keys())
    });
    let all = report
        .instances
        .iter()
        .map(|i| &i.operator)
        .chain(report.partitions.keys())
        .chain(history)
        .chain(report.scale_events.iter().map(|s| &s.operator));
    for name in all {
        if seen.insert(name.clone()) {
            names.push(name.clone());
        }
    }
    names
}

fn colour(index: usize) -> &'static str {
    SERIES[index % SERIES.len()]
}

/// Converts the report's milliseconds to the time axis' unit: seconds, or
/// minutes for long runs.
struct TimeScale {
    /// Milliseconds per unit.
    per_unit: f64,
    unit: &'static str,
    /// The end of the axis, in units.
    end: f64,
}

impl TimeScale {
    fn of(report: &RunReport) -> TimeScale {
        let mut end_ms = report.elapsed_secs * 1000.0;
        end_ms = end_ms.max(report.input_per_second.len() as f64 * 1000.0);
        if let Some(p) = report.history.last() {
            end_ms = end_ms.max(p.at_ms as f64);
        }
        for r in &report.recoveries {
            let times = [
                r.killed_ms,
                Some(r.detected_ms),
                Some(r.restored_ms),
                r.caught_up_ms,
            ];
            for t in times.into_iter().flatten() {
                end_ms = end_ms.max(t as f64);
            }
        }
        for s in &report.scale_events {
            end_ms = end_ms.max(s.decided_ms as f64);
        }
        if !end_ms.is_finite() || end_ms < 1000.0 {
            end_ms = 1000.0;
        }
        let (per_unit, unit) = if end_ms > 20.0 * 60_000.0 {
            (60_000.0, "min")
        } else {
            (1000.0, "s")
        };
        TimeScale {
            per_unit,
            unit,
            end: end_ms / per_unit,
        }
    }

    fn at(&self, ms: f64) -> f64 {
        ms / self.per_unit
    }

    fn axis(&self) -> Axis {
        Axis::linear(0.0, self.end)
    }

    /// A moment as the axis shows it (minutes to one decimal, as seconds
    /// to the millisecond would be noise at that scale).
    fn moment(&self, ms: f64) -> String {
        if self.unit == "min" {
            format!("{:.1} min", self.at(ms))
        } else {
            format!("{} s", plain(self.at(ms)))
        }
    }

    /// A time-series plot area at `top`, `height` high.
    fn chart(&self, top: f64, height: f64, y: Axis) -> Chart {
        Chart {
            left: PLOT_LEFT,
            top,
            width: PLOT_WIDTH,
            height,
            x: self.axis(),
            y,
        }
    }
}

/// A vertical line marking a moment on the time-series panels.
struct Mark {
    at: f64,
    label: String,
    pen: Pen,
    /// The failure or split it belongs to: of a group's marks closer than a
    /// label's width, only the first is labelled (the events panel has the
    /// exact times).
    group: usize,
}

/// Failures and scale-outs as they are drawn on every time-series panel.
struct Marks {
    lines: Vec<Mark>,
    /// Recovering periods (failure to caught up), shaded.
    bands: Vec<(f64, f64)>,
}

impl Marks {
    fn of(report: &RunReport, time: &TimeScale) -> Marks {
        let mut lines = Vec::new();
        let mut bands = Vec::new();
        for (group, r) in report.recoveries.iter().enumerate() {
            let ids: Vec<String> = r.workers.iter().map(|w| w.to_string()).collect();
            let workers = match ids.len() {
                1 => format!("worker {}", ids.join("")),
                _ => format!("workers {}", ids.join(",")),
            };
            let failed = r.killed_ms.unwrap_or(r.detected_ms);
            let over = r.caught_up_ms.unwrap_or(r.restored_ms).max(failed);
            bands.push((time.at(failed as f64), time.at(over as f64)));
            if let Some(k) = r.killed_ms {
                lines.push(Mark {
                    at: time.at(k as f64),
                    label: format!("kill {workers}"),
                    pen: Pen::new(RED, 1.5),
                    group,
                });
            }
            lines.push(Mark {
                at: time.at(r.detected_ms as f64),
                label: if r.killed_ms.is_some() {
                    "detected".into()
                } else {
                    format!("{workers} failed")
                },
                pen: Pen::new(RED, 1.0).dashed("4 3"),
                group,
            });
            lines.push(Mark {
                at: time.at(r.restored_ms as f64),
                label: "restored".into(),
                pen: Pen::new(RED, 1.0).dashed("4 3"),
                group,
            });
            if let Some(c) = r.caught_up_ms {
                lines.push(Mark {
                    at: time.at(c as f64),
                    label: "caught up".into(),
                    pen: Pen::new(RED, 1.0).dashed("1 2"),
                    group,
                });
            }
        }
        for (i, s) in report.scale_events.iter().enumerate() {
            lines.push(Mark {
                at: time.at(s.decided_ms as f64),
                label: format!(
                    "{} {} {}→{}",
                    s.noun(),
                    s.operator,
                    s.partitions_before,
                    s.partitions_after
                ),
                pen: Pen::new(SCALE, 1.5).dashed("6 3"),
                group: report.recoveries.len() + i,
            });
        }
        lines.sort_by(|a, b| a.at.total_cmp(&b.at));
        Marks { lines, bands }
    }

    /// Shading and lines, under the data.
    fn draw_under(&self, svg: &mut Svg, chart: &Chart) {
        for (from, to) in &self.bands {
            let (x0, _) = chart.px(*from, chart.y.min);
            let (x1, _) = chart.px(*to, chart.y.min);
            svg.fill(
                (x0, chart.top),
                ((x1 - x0).max(2.0), chart.height),
                RED,
                0.08,
            );
        }
        for m in &self.lines {
            let (x, _) = chart.px(m.at, chart.y.min);
            svg.line((x, chart.top), (x, chart.bottom()), m.pen.opacity(0.8));
        }
    }

    /// Labels, over the data, in rows at the top of the chart so that they
    /// do not overlap (past [`LABEL_ROWS`] rows they may).
    fn draw_labels(&self, svg: &mut Svg, chart: &Chart) {
        let font = Font::new(9.5).halo();
        let mut row_ends: Vec<f64> = Vec::new();
        // Per group, where its last label ends.
        let mut group_ends: BTreeMap<usize, f64> = BTreeMap::new();
        for m in &self.lines {
            let (x, _) = chart.px(m.at, chart.y.min);
            let width = font.width(&m.label);
            if group_ends.get(&m.group).is_some_and(|end| x < *end) {
                continue;
            }
            // Right of the line, unless that runs off the chart.
            let (start, anchor, text_x) = if x + 3.0 + width <= chart.right() {
                (x, Anchor::Start, x + 3.0)
            } else {
                (x - 3.0 - width, Anchor::End, x - 3.0)
            };
            group_ends.insert(m.group, start + width + 6.0);
            let row = match row_ends.iter().position(|end| *end <= start) {
                Some(row) => row,
                None if row_ends.len() < LABEL_ROWS => {
                    row_ends.push(f64::NEG_INFINITY);
                    row_ends.len() - 1
                }
                None => row_ends
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(row, _)| row),
            };
            if let Some(end) = row_ends.get_mut(row) {
                *end = start + width + 6.0;
            }
            svg.text(
                (text_x, chart.top + 11.0 + row as f64 * 11.0),
                font.fill(m.pen.colour).anchor(anchor),
                &m.label,
            );
        }
    }
}

/// A series drawn as steps: each value holds until the next point.
fn steps(points: &[(f64, f64)], end: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2 + 1);
    let mut previous = None;
    for (x, y) in points {
        if let Some(p) = previous {
            out.push((*x, p));
        }
        out.push((*x, *y));
        previous = Some(*y);
    }
    if let Some((x, y)) = points.last() {
        out.push((end.max(*x), *y));
    }
    out
}

fn header(svg: &mut Svg, report: &RunReport) {
    let input = report.input.file_name().map_or_else(
        || report.input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let speed = if report.speedup > 0.0 {
        format!("replayed {}× faster than real time", plain(report.speedup))
    } else {
        "replayed as fast as possible".to_string()
    };
    svg.text(
        (WIDTH / 2.0, 24.0),
        Font::new(17.0).anchor(Anchor::Middle).bold(),
        &format!(
            "Linear Road on Spate: {input}, {speed}, {} workers",
            report.workers
        ),
    );
    let checkpoints = match report.checkpoint_ms {
        0 => "fault tolerance off".to_string(),
        ms => format!(
            "{} checkpoints (every {})",
            report.checkpoints,
            duration(ms as f64)
        ),
    };
    svg.text(
        (WIDTH / 2.0, 44.0),
        Font::new(12.0).fill(MUTED).anchor(Anchor::Middle),
        &format!(
            "{} input lines in {} s (mean {}/s, peak {}/s) · {} answers, {} late · {} · {} · {}",
            label(report.input_lines as f64),
            plain(report.elapsed_secs),
            label(report.input_rate.round()),
            label(report.peak_input_rate as f64),
            label(report.answers as f64),
            report.deadline_misses,
            checkpoints,
            counted(report.recoveries.len(), "failure"),
            counted(report.scale_events.len(), "scale event"),
        ),
    );
}

/// `n` and a noun, plural unless `n` is one.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Panel 1: the offered load, from the feeder.
fn input_panel(svg: &mut Svg, report: &RunReport, time: &TimeScale, marks: &Marks) {
    let points: Vec<(f64, f64)> = report
        .input_per_second
        .iter()
        .enumerate()
        .map(|(i, n)| (time.at(i as f64 * 1000.0), *n as f64))
        .collect();
    let y = Axis::fit(points.iter().map(|p| p.1), false);
    let chart = time.chart(88.0, 100.0, y);
    marks.draw_under(svg, &chart);
    chart.frame(svg, "Input rate, lines per second (from the feeder)", "");
    if points.is_empty() {
        chart.note(svg, "no input recorded");
    } else {
        let end = time.at(points.len() as f64 * 1000.0);
        let line = steps(&points, end);
        let mut area = chart.pixels(&line);
        let (x_end, base) = chart.px(end, 0.0);
        let (x_start, _) = chart.px(0.0, 0.0);
        area.push((x_end, base));
        area.push((x_start, base));
        svg.polygon(&area, SERIES[0], 0.18);
        chart.line(svg, &line, Pen::new(SERIES[0], 1.5));
    }
    marks.draw_labels(svg, &chart);
    // What the markers mean, once, beside the first panel.
    let mut y = chart.top + 10.0;
    svg.text((LEGEND_LEFT, y), Font::new(11.0).bold(), "markers");
    for (name, pen) in [
        ("kill / failure", Pen::new(RED, 1.5)),
        ("detected, restored", Pen::new(RED, 1.0).dashed("4 3")),
        ("caught up", Pen::new(RED, 1.0).dashed("1 2")),
        ("scale-out (split)", Pen::new(SCALE, 1.5).dashed("6 3")),
    ] {
        y += 16.0;
        legend_entry(svg, (LEGEND_LEFT, y), name, pen);
    }
    svg.fill((LEGEND_LEFT, y + 10.0), (18.0, 10.0), RED, 0.15);
    svg.text(
        (LEGEND_LEFT + 23.0, y + 19.0),
        Font::new(11.0),
        "recovering",
    );
}

/// One series per operator from the per-second history.
fn history_series(
    report: &RunReport,
    time: &TimeScale,
    value: impl Fn(&HistoryPoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    report
        .history
        .iter()
        .filter_map(|p| Some((time.at(p.at_ms as f64), value(p)?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

const NO_HISTORY: &str = "no per-second history (the run was shorter than a second)";

/// Panel 2: tuples in per second per operator, on a log scale since the
/// forwarder sees every line and an accident sink a handful.
fn rate_panel(
    svg: &mut Svg,
    report: &RunReport,
    operators: &[String],
    time: &TimeScale,
    marks: &Marks,
) {
    let series: Vec<Vec<(f64, f64)>> = operators
        .iter()
        .map(|op| history_series(report, time, |p| p.in_rate.get(op).copied()))
        .collect();
    let hi = series.iter().flatten().map(|p| p.1).fold(0.0, f64::max);
    let y = Axis::logarithmic(1.0, (hi * 1.5).max(10.0));
    let chart = time.chart(238.0, 130.0, y);
    marks.draw_under(svg, &chart);
    chart.frame(
        svg,
        "Tuples in per second per operator (all partitions; log scale, 0 drawn at 1)",
        "",
    );
    draw_series(svg, &chart, &series, 0.0);
    if report.history.is_empty() {
        chart.note(svg, NO_HISTORY);
    }
    marks.draw_labels(svg, &chart);
    let mut y = chart.top + 10.0;
    svg.text((LEGEND_LEFT, y), Font::new(11.0).bold(), "operators");
    for (i, op) in operators.iter().enumerate() {
        y += 16.0;
        legend_entry(svg, (LEGEND_LEFT, y), op, Pen::new(colour(i), 2.0));
    }
}

/// Panel 3: the busiest instance of each operator, in cores.
fn utilisation_panel(
    svg: &mut Svg,
    report: &RunReport,
    operators: &[String],
    time: &TimeScale,
    marks: &Marks,
) {
    let series: Vec<Vec<(f64, f64)>> = operators
        .iter()
        .map(|op| history_series(report, time, |p| p.utilization.get(op).copied()))
        .collect();
    let y = Axis::fit(series.iter().flatten().map(|p| p.1), false).reaching(0.1);
    let chart = time.chart(418.0, 100.0, y);
    marks.draw_under(svg, &chart);
    chart.frame(
        svg,
        "CPU utilisation of each operator's busiest instance (1 = one core)",
        "",
    );
    draw_series(svg, &chart, &series, 0.0);
    if report.history.is_empty() {
        chart.note(svg, NO_HISTORY);
    }
    marks.draw_labels(svg, &chart);
}

/// Panel 4: where the query runs: workers hosting instances, and partitions
/// per operator (drawn a pixel or two apart where they coincide, so that
/// every operator stays visible).
fn placement_panel(
    svg: &mut Svg,
    report: &RunReport,
    operators: &[String],
    time: &TimeScale,
    marks: &Marks,
) {
    let workers = history_series(report, time, |p| Some(p.workers as f64));
    let series: Vec<Vec<(f64, f64)>> = operators
        .iter()
        .map(|op| history_series(report, time, |p| p.partitions.get(op).map(|n| *n as f64)))
        .collect();
    let hi = series
        .iter()
        .flatten()
        .chain(&workers)
        .map(|p| p.1)
        .fold(1.0, f64::max);
    let y = Axis::linear(0.0, hi + 1.0).whole();
    let chart = time.chart(568.0, 100.0, y);
    marks.draw_under(svg, &chart);
    chart.frame(
        svg,
        "Workers hosting instances, and partitions per operator",
        &format!("time since the job started, {}", time.unit),
    );
    let stepped: Vec<Vec<(f64, f64)>> = series.iter().map(|s| steps(s, time.end)).collect();
    draw_series(svg, &chart, &stepped, 1.6);
    // Name the operators that were ever partitioned at their lines' ends;
    // the others share the band at one partition.
    for (i, (op, points)) in operators.iter().zip(&series).enumerate() {
        let (Some(last), true) = (points.last(), points.iter().any(|p| p.1 > 1.0)) else {
            continue;
        };
        let (_, y) = chart.px(time.end, last.1);
        svg.text(
            (chart.right() - 4.0, y - 5.0),
            Font::new(10.0).fill(colour(i)).anchor(Anchor::End).halo(),
            &format!("{op}: {}", last.1),
        );
    }
    chart.line(svg, &steps(&workers, time.end), Pen::new(INK, 2.5));
    if report.history.is_empty() {
        chart.note(svg, NO_HISTORY);
    }
    marks.draw_labels(svg, &chart);
    legend_entry(
        svg,
        (LEGEND_LEFT, chart.top + 10.0),
        "workers",
        Pen::new(INK, 3.0),
    );
    svg.text(
        (LEGEND_LEFT, chart.top + 30.0),
        Font::new(11.0).fill(MUTED),
        "partitions: coloured",
    );
    svg.text(
        (LEGEND_LEFT, chart.top + 44.0),
        Font::new(11.0).fill(MUTED),
        "by operator (above)",
    );
}

/// One line per operator in its colour; `spread` pixels apart vertically
/// around the true position, to tell coinciding lines apart.
fn draw_series(svg: &mut Svg, chart: &Chart, series: &[Vec<(f64, f64)>], spread: f64) {
    let middle = series.len().saturating_sub(1) as f64 / 2.0;
    for (i, points) in series.iter().enumerate() {
        let dy = (i as f64 - middle) * spread;
        let pixels: Vec<(f64, f64)> = chart
            .pixels(points)
            .into_iter()
            .map(|(x, y)| (x, y + dy))
            .collect();
        svg.polyline(&pixels, Pen::new(colour(i), 1.8));
    }
}

/// Panel 5: p50, p99 and max answer latency per kind as bars on a log
/// scale, with each kind's deadline.
fn latency_panel(svg: &mut Svg, report: &RunReport) {
    let kinds: Vec<(AnswerKind, Option<&SinkStats>)> = AnswerKind::ALL
        .into_iter()
        .filter(|k| *k != AnswerKind::InputErrors)
        .map(|k| (k, report.latency.get(k.name()).filter(|s| s.count > 0)))
        .collect();
    let values = kinds
        .iter()
        .filter_map(|(_, s)| *s)
        .flat_map(|s| [s.p50_ms, s.p99_ms, s.max_ms])
        .filter(|v| v.is_finite() && *v > 0.0);
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(0.0, f64::max);
    let deadline = kinds
        .iter()
        .map(|(k, _)| k.deadline_secs() * 1000.0)
        .fold(0.0, f64::max);
    let lo = if lo.is_finite() { lo / 2.0 } else { 1.0 };
    let y = Axis::logarithmic(lo.min(1.0), hi.max(deadline) * 3.0);
    let chart = Chart {
        left: PLOT_LEFT,
        top: 748.0,
        width: 430.0,
        height: 120.0,
        x: Axis::linear(0.0, kinds.len() as f64),
        y,
    };
    chart.outline(svg, "Answer latency per kind (log scale)");
    chart.y_ticks(svg, duration);
    let shades = ["#9ecae1", "#4292c6", "#08306b"];
    let group = chart.width / kinds.len().max(1) as f64;
    let bar = (group / 4.5).min(26.0);
    for (i, (kind, stats)) in kinds.iter().enumerate() {
        let centre = chart.left + (i as f64 + 0.5) * group;
        let name_font = Font::new(11.0).anchor(Anchor::Middle);
        svg.text((centre, chart.bottom() + 15.0), name_font, kind.name());
        let limit = kind.deadline_secs() * 1000.0;
        let (_, y) = chart.px(0.0, limit);
        let half = group * 0.42;
        svg.line(
            (centre - half, y),
            (centre + half, y),
            Pen::new(RED, 1.5).dashed("5 3"),
        );
        svg.text(
            (centre + half, y - 3.0),
            Font::new(9.5).fill(RED).anchor(Anchor::End),
            &format!("deadline {}", duration(limit)),
        );
        let Some(s) = stats else {
            svg.text(
                (centre, chart.top + chart.height / 2.0),
                Font::new(11.0).fill(MUTED).anchor(Anchor::Middle),
                "no answers",
            );
            continue;
        };
        let late = if s.deadline_misses > 0 { RED } else { MUTED };
        svg.text(
            (centre, chart.bottom() + 28.0),
            Font::new(9.5).fill(late).anchor(Anchor::Middle),
            &format!(
                "{} answers, {} late",
                label(s.count as f64),
                s.deadline_misses
            ),
        );
        for (j, (v, shade)) in [s.p50_ms, s.p99_ms, s.max_ms]
            .iter()
            .zip(shades)
            .enumerate()
        {
            let x = centre + (j as f64 - 1.5) * (bar + 2.0) + 1.0;
            let (_, top) = chart.px(0.0, *v);
            svg.fill((x, top), (bar, chart.bottom() - top), shade, 1.0);
            svg.text(
                (x + bar / 2.0, top - 3.0),
                Font::new(8.5).anchor(Anchor::Middle).halo(),
                &compact_duration(*v),
            );
        }
    }
    let mut x = chart.left;
    for (name, shade) in ["p50", "p99", "max"].into_iter().zip(shades) {
        svg.fill((x, chart.bottom() + 40.0), (12.0, 10.0), shade, 1.0);
        svg.text((x + 16.0, chart.bottom() + 49.0), Font::new(11.0), name);
        x += 60.0;
    }
}

/// A latency short enough to fit above a bar: two or three digits.
fn compact_duration(ms: f64) -> String {
    if !ms.is_finite() {
        "?".into()
    } else if ms.round() >= 1000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{}ms", ms.round())
    } else {
        format!("{ms:.1}ms")
    }
}

/// Lines of text the events panel has room for.
const MAX_LINES: usize = 10;
/// Characters per line of the events panel.
const MAX_CHARS: usize = 72;

/// Panel 6: the failures and splits in words, with their durations.
fn events_panel(svg: &mut Svg, report: &RunReport, time: &TimeScale) {
    let left = 570.0;
    let mut lines: Vec<(String, bool)> = Vec::new();
    let at = |ms: u64| time.moment(ms as f64);
    let after = |from: u64, to: u64| format!("+{}", duration(to.saturating_sub(from) as f64));
    for (i, r) in report.recoveries.iter().enumerate() {
        let workers: Vec<String> = r.workers.iter().map(|w| w.to_string()).collect();
        lines.push((
            format!(
                "Failure {}: worker {} ({})",
                i + 1,
                workers.join(", "),
                r.instances.join(", ")
            ),
            true,
        ));
        let start = r.killed_ms.unwrap_or(r.detected_ms);
        let mut phases = Vec::new();
        if let Some(k) = r.killed_ms {
            phases.push(format!("killed at {}", at(k)));
            phases.push(format!("detected {}", after(start, r.detected_ms)));
        } else {
            phases.push(format!("detected at {}", at(r.detected_ms)));
        }
        phases.push(format!("restored {}", after(start, r.restored_ms)));
        match r.caught_up_ms {
            Some(c) => phases.push(format!("caught up {}", after(start, c))),
            None => phases.push("never caught up".into()),
        }
        lines.push((format!("  {}", phases.join(", ")), false));
    }
    for s in &report.scale_events {
        lines.push((
            format!(
                "{} of {}: {} → {} partitions at {} ({})",
                if s.direction == spate_engine::coordinator::ScaleDirection::In {
                    "Merge"
                } else {
                    "Split"
                },
                s.operator,
                s.partitions_before,
                s.partitions_after,
                at(s.decided_ms),
                s.reason
            ),
            true,
        ));
        lines.push((
            format!(
                "  paused {}, keys {} | {}, new instance {} on worker {}",
                duration(s.pause_ms as f64),
                s.keys.0,
                s.keys.1,
                s.new_instance,
                s.worker
            ),
            false,
        ));
    }
    if lines.is_empty() {
        lines.push(("No failures and no scale-outs in this run.".into(), false));
    }
    svg.text(
        (left, 740.0),
        Font::new(13.0).bold(),
        "Failures and scale-outs",
    );
    let total = lines.len();
    let mut y = 762.0;
    for (i, (text, strong)) in lines.into_iter().enumerate() {
        if i + 1 == MAX_LINES && total > MAX_LINES {
            let more = format!("… and {} more lines in report.json", total - i);
            svg.text((left, y), Font::new(11.0).fill(MUTED), &more);
            break;
        }
        let text = if text.chars().count() > MAX_CHARS {
            let cut: String = text.chars().take(MAX_CHARS - 1).collect();
            format!("{cut}…")
        } else {
            text
        };
        let font = if strong {
            Font::new(11.5).bold()
        } else {
            Font::new(11.0).fill(MUTED)
        };
        svg.text((left, y), font, &text);
        y += if strong { 15.0 } else { 19.0 };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use spate_engine::coordinator::{RecoveryTimeline, ScaleEvent};

    use super::*;
    use crate::driver::InstanceLine;

    /// Checks that `svg` is one well-formed element: every tag closed in
    /// order, attribute values quoted, no stray `<` or `&` in text.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<String> = Vec::new();
        let mut rest = svg.trim();
        let mut roots = 0;
        while !rest.is_empty() {
            let Some(start) = rest.find('<') else {
                assert!(!open.is_empty(), "text after the root: {rest:?}");
                check_text(rest);
                break;
            };
            check_text(&rest[..start]);
            assert!(
                !open.is_empty() || rest[..start].trim().is_empty(),
                "text outside the root"
            );
            rest = &rest[start + 1..];
            let mut quoted = false;
            let mut end = None;
            for (i, c) in rest.char_indices() {
                match c {
                    '"' => quoted = !quoted,
                    '>' if !quoted => {
                        end = Some(i);
                        break;
                    }
                    '<' if !quoted => panic!("'<' inside a tag: {rest:.60}"),
                    _ => {}
                }
            }
            let end = end.expect("a tag is never closed");
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    open.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
                continue;
            }
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(!name.is_empty(), "a tag without a name: <{tag}>");
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes: <{tag}>"
            );
            if open.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "never closed: {open:?}");
        assert_eq!(roots, 1, "not exactly one root element");
        assert!(svg.starts_with("<svg"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    fn check_text(text: &str) {
        let mut rest = text;
        while let Some(i) = rest.find('&') {
            rest = &rest[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| rest.starts_with(e)),
                "stray '&' in {text:?}"
            );
            rest = &rest[1..];
        }
    }

    fn empty_report() -> RunReport {
        RunReport {
            input: PathBuf::from("data/input.csv"),
            speedup: 20.0,
            workers: 3,
            elapsed_secs: 0.4,
            input_lines: 0,
            input_errors: 0,
            input_rate: 0.0,
            peak_input_rate: 0,
            input_per_second: Vec::new(),
            answers: 0,
            latency: BTreeMap::new(),
            deadline_misses: 0,
            partitions: BTreeMap::new(),
            instances: Vec::new(),
            checkpoint_ms: 0,
            checkpoints: 0,
            recoveries: Vec::new(),
            events: Vec::new(),
            history: Vec::new(),
            scale_events: Vec::new(),
            peaks: Default::default(),
            resources: Vec::new(),
        }
    }

    const OPERATORS: [&str; 4] = ["feeder", "forwarder", "toll_calculator", "tolls"];

    /// A 30-second run with a failure at 6 s, recovered in steps a few
    /// seconds apart, and a split at 20 s.
    fn busy_report() -> RunReport {
        let mut report = empty_report();
        report.elapsed_secs = 30.5;
        report.input_per_second = (0..30).map(|s| 1000 + s * 100).collect();
        report.input_lines = report.input_per_second.iter().sum();
        report.checkpoint_ms = 1000;
        report.checkpoints = 28;
        report.instances = OPERATORS
            .iter()
            .enumerate()
            .map(|(i, op)| InstanceLine {
                operator: op.to_string(),
                instance: i as u32,
                worker: 0,
                tuples_in: 10,
                tuples_out: 10,
            })
            .collect();
        report.history = (1..=30)
            .map(|s| {
                let split = usize::from(s >= 21);
                let mut p = HistoryPoint {
                    at_ms: s * 1000,
                    workers: 3 + split,
                    ..HistoryPoint::default()
                };
                for (i, op) in OPERATORS.iter().enumerate() {
                    p.in_rate.insert(op.to_string(), 1000.0 / (i + 1) as f64);
                    p.utilization.insert(op.to_string(), 0.1 * i as f64);
                    let n = if *op == "toll_calculator" {
                        1 + split
                    } else {
                        1
                    };
                    p.partitions.insert(op.to_string(), n);
                }
                p
            })
            .collect();
        report.latency.insert(
            "tolls".into(),
            SinkStats {
                count: 5000,
                p50_ms: 2.0,
                p99_ms: 40.0,
                max_ms: 900.0,
                deadline_misses: 0,
            },
        );
        report.recoveries.push(RecoveryTimeline {
            workers: vec![spate_engine::plan::WorkerId(2)],
            instances: vec!["toll_calculator[0]".into()],
            killed_ms: Some(6000),
            detected_ms: 10_000,
            restored_ms: 13_000,
            rewired_ms: 13_050,
            caught_up_ms: Some(16_000),
        });
        report.scale_events.push(ScaleEvent {
            decided_ms: 20_000,
            reason: "requested".into(),
            direction: spate_engine::coordinator::ScaleDirection::Out,
            operator: "toll_calculator".into(),
            instance: spate_engine::plan::InstanceId(2),
            new_instance: spate_engine::plan::InstanceId(9),
            worker: spate_engine::plan::WorkerId(3),
            partitions_before: 1,
            partitions_after: 2,
            split_at: 1 << 63,
            keys: (40, 38),
            pause_ms: 120,
        });
        report
    }

    #[test]
    fn a_run_with_a_failure_and_a_split_is_drawn_and_marked() {
        let svg = run_plot(&busy_report());
        assert_well_formed(&svg);
        for op in OPERATORS {
            assert!(svg.contains(&format!(">{op}</text>")), "no legend for {op}");
        }
        for label in [
            "kill worker 2",
            "detected",
            "restored",
            "caught up",
            "split toll_calculator 1→2",
        ] {
            // Once on each of the four time-series panels.
            let drawn = format!(r#"paint-order="stroke">{label}</text>"#);
            assert_eq!(svg.matches(&drawn).count(), 4, "{label}");
        }
        assert!(svg.contains("deadline 5 s") && svg.contains("deadline 10 s"));
        assert!(svg.contains("Failure 1: worker 2 (toll_calculator[0])"));
        assert!(svg.contains("Split of toll_calculator: 1 → 2 partitions at 20 s"));
        assert!(svg.contains("time since the job started, s"));
        // The four marker lines per panel, drawn from the panel's top.
        assert!(svg.matches(r##"stroke="#d62728""##).count() >= 16);
        assert!(svg.matches(r##"stroke="#6a3d9a""##).count() >= 4);
        assert!(!svg.contains("no per-second history"));
    }

    #[test]
    fn an_empty_run_still_gives_empty_axes_with_notes() {
        let svg = run_plot(&empty_report());
        assert_well_formed(&svg);
        assert!(svg.contains("no input recorded"));
        assert_eq!(svg.matches(NO_HISTORY).count(), 3);
        assert_eq!(svg.matches(">no answers</text>").count(), 4);
        assert!(svg.contains("No failures and no scale-outs"));
    }

    #[test]
    fn names_are_escaped_and_bad_numbers_do_not_leak() {
        let mut report = busy_report();
        for p in &mut report.history {
            p.in_rate.insert("<a&b>".into(), f64::NAN);
            p.utilization.insert("<a&b>".into(), f64::INFINITY);
        }
        report.elapsed_secs = f64::NAN;
        report.latency.insert(
            "balances".into(),
            SinkStats {
                count: 1,
                p50_ms: f64::NAN,
                p99_ms: 0.0,
                max_ms: -1.0,
                deadline_misses: 1,
            },
        );
        let svg = run_plot(&report);
        assert_well_formed(&svg);
        assert!(svg.contains("&lt;a&amp;b&gt;"));
    }

    #[test]
    fn write_run_plot_writes_the_file() {
        let path = std::env::temp_dir().join(format!("spate-plot-{}.svg", std::process::id()));
        write_run_plot(&busy_report(), &path).expect("writing the plot");
        let text = std::fs::read_to_string(&path).expect("reading it back");
        let _ = std::fs::remove_file(&path);
        assert_well_formed(&text);
    }

    #[test]
    fn thinning_keeps_each_pixel_columns_extremes_in_order() {
        let line = [(0.1, 5.0), (0.5, 1.0), (0.7, 9.0), (0.9, 4.0), (1.2, 3.0)];
        assert_eq!(
            thin(&line),
            [(0.1, 5.0), (0.5, 1.0), (0.7, 9.0), (0.9, 4.0), (1.2, 3.0)]
        );
        let many: Vec<(f64, f64)> = (0..1000)
            .map(|i| (i as f64 / 100.0, (i % 7) as f64))
            .collect();
        let thinned = thin(&many);
        assert!(thinned.len() <= 40, "{}", thinned.len());
        assert!(thinned.iter().any(|p| p.1 == 6.0) && thinned.iter().any(|p| p.1 == 0.0));
        assert!(thinned.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn long_runs_are_drawn_in_minutes() {
        let mut report = empty_report();
        report.elapsed_secs = 3.0 * 3600.0;
        let time = TimeScale::of(&report);
        assert_eq!(time.unit, "min");
        assert!((time.end - 180.0).abs() < 1e-9);
        assert_eq!(time.moment(5_000_000.0), "83.3 min");
        let svg = run_plot(&report);
        assert!(svg.contains("time since the job started, min"));
    }

    #[test]
    fn ticks_are_round_and_inside_the_axis() {
        let labels: Vec<String> = Axis::linear(0.0, 1.8)
            .ticks()
            .into_iter()
            .map(label)
            .collect();
        assert_eq!(labels, ["0", "0.5", "1", "1.5"]);
        let labels: Vec<String> = Axis::linear(0.0, 2.2)
            .whole()
            .ticks()
            .into_iter()
            .map(label)
            .collect();
        assert_eq!(labels, ["0", "1", "2"]);
        let log = Axis::logarithmic(0.5, 20_000.0);
        assert_eq!(log.ticks(), [1.0, 10.0, 100.0, 1000.0, 10_000.0]);
        assert_eq!(
            Axis::logarithmic(3.0, 60.0).ticks(),
            [5.0, 10.0, 20.0, 50.0]
        );
        assert!(Axis::fit([f64::NAN], false).ticks().len() > 2);
        assert_eq!(label(57_300.0), "57.3k");
        assert_eq!(label(1_250_000.0), "1.25M");
        assert_eq!(label(0.0005), "0.0005");
        assert_eq!(duration(1500.0), "1.5 s");
        assert_eq!(duration(0.25), "0.25 ms");
    }

    /// The marker labels drawn on a time-series chart, with their rows (y).
    fn marker_labels(report: &RunReport) -> Vec<(String, String)> {
        let time = TimeScale::of(report);
        let marks = Marks::of(report, &time);
        let chart = time.chart(100.0, 100.0, Axis::linear(0.0, 1.0));
        let mut svg = Svg::new(100.0, 100.0);
        marks.draw_labels(&mut svg, &chart);
        svg.finish()
            .lines()
            .filter(|l| l.starts_with("<text"))
            .filter_map(|l| {
                let y = l.split('"').nth(3)?;
                let text = l.split('>').nth(1)?.strip_suffix("</text")?;
                Some((text.to_string(), y.to_string()))
            })
            .collect()
    }

    #[test]
    fn a_quick_recovery_gets_one_label_and_a_nearby_split_another_row() {
        let mut report = busy_report();
        report.recoveries[0] = RecoveryTimeline {
            workers: vec![spate_engine::plan::WorkerId(1)],
            instances: vec!["tolls[0]".into()],
            killed_ms: Some(8000),
            detected_ms: 8002,
            restored_ms: 8040,
            rewired_ms: 8040,
            caught_up_ms: Some(8050),
        };
        report.scale_events[0].decided_ms = 8300;
        let labels = marker_labels(&report);
        let texts: Vec<&str> = labels.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["kill worker 1", "split toll_calculator 1→2"]);
        assert_ne!(labels[0].1, labels[1].1, "overlapping labels on one row");
        // Every phase still has its line.
        let svg = run_plot(&report);
        assert_well_formed(&svg);
        assert!(svg.matches(r#"stroke-dasharray="1 2""#).count() >= 4);
    }

    #[test]
    fn spread_out_phases_are_each_labelled_on_one_row() {
        let labels = marker_labels(&busy_report());
        let texts: Vec<&str> = labels.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "kill worker 2",
                "detected",
                "restored",
                "caught up",
                "split toll_calculator 1→2"
            ]
        );
        assert!(labels.iter().all(|(_, y)| *y == labels[0].1));
    }
}
