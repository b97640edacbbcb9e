//! Figures drawn with `plotters`: `report.svg` and `report.png`, the picture
//! of one run that `spate lrb run` writes next to `report.json`, and what
//! `bench.svg` and `bench.png` are drawn with; `scaleout` draws the
//! comparison `spate lrb scaleout` writes.
//!
//! Each figure is drawn twice from one description (`Figure`): as SVG for
//! browsers and as PNG for viewers that do not render SVG. PNG text is set
//! in DejaVu Sans, compiled in from the `dejavu` crate and registered with
//! plotters on first use, so no system font or font library is needed.
//! Every number from a report is guarded (non-finite values, empty series),
//! so that a figure never fails a run: a panel without data is drawn as empty
//! axes with a note.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use spate_engine::coordinator::view::HistoryPoint;

use crate::driver::RunReport;
use crate::model::AnswerKind;
use crate::query::SinkStats;

mod scaleout;
pub use scaleout::{write_scaleout_plot, ScaleoutRun};

/// Colours of data series, in order of use; red is kept for failures.
pub(crate) const SERIES: [RGBColor; 9] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x7f, 0x7f, 0x7f),
];
/// Failures, deadlines and failed runs.
pub(crate) const RED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// Passed runs.
pub(crate) const GREEN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
/// Scale-event markers.
const SCALE: RGBColor = RGBColor(0x6a, 0x3d, 0x9a);
/// Text and frames.
pub(crate) const INK: RGBColor = RGBColor(0x33, 0x33, 0x33);
/// Secondary text and offered load.
pub(crate) const MUTED: RGBColor = RGBColor(0x70, 0x70, 0x70);

/// The font family every figure's text is set in.
const FAMILY: &str = "sans-serif";

/// A drawing's outcome on backend `DB`.
pub(crate) type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A chart with axes `X` and `Y` on backend `DB`, or why it could not be
/// set up.
pub(crate) type Chart<'a, DB, X, Y> = Result<
    ChartContext<'a, DB, Cartesian2d<X, Y>>,
    DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>,
>;

/// A figure that can be drawn on any plotters backend.
pub(crate) trait Figure {
    /// Width and height in pixels.
    const SIZE: (u32, u32);

    /// Draws the whole figure on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB>;
}

/// Registers DejaVu Sans as the figures' font, once per process: plotters
/// measures text with it for both backends and draws PNG text with it.
fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // Compiled-in font files that parse; were one refused, drawing would
        // report the missing font as an error.
        let _ = register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font(FAMILY, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn drawing_error(what: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("drawing {}: {e}", what.display()))
}

/// The figure as SVG text.
pub(crate) fn svg<F: Figure>(figure: &F) -> io::Result<String> {
    register_fonts();
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, F::SIZE).into_drawing_area();
        figure
            .draw(&root)
            .and_then(|()| root.present())
            .map_err(|e| drawing_error(Path::new("an SVG figure"), e))?;
    }
    Ok(text)
}

/// Writes the figure to `svg_path` as SVG and beside it, with the extension
/// `.png`, as PNG.
pub(crate) fn write<F: Figure>(figure: &F, svg_path: &Path) -> io::Result<()> {
    std::fs::write(svg_path, svg(figure)?)?;
    let png = svg_path.with_extension("png");
    let root = BitMapBackend::new(&png, F::SIZE).into_drawing_area();
    figure
        .draw(&root)
        .and_then(|()| root.present())
        .map_err(|e| drawing_error(&png, e))
}

/// Text of `px` pixels in `colour`, anchored at its top left.
pub(crate) fn font(px: f64, colour: RGBColor) -> TextStyle<'static> {
    // plotters sizes text by its line height, 1.24 times the font size.
    (FAMILY, px * 1.24).into_font().color(&colour)
}

/// Bold text of `px` pixels in `colour`.
pub(crate) fn bold(px: f64, colour: RGBColor) -> TextStyle<'static> {
    (FAMILY, px * 1.24, FontStyle::Bold)
        .into_font()
        .color(&colour)
}

/// `style` anchored at `h` and `v` instead of its top left.
pub(crate) fn anchored(style: TextStyle<'static>, h: HPos, v: VPos) -> TextStyle<'static> {
    style.pos(Pos::new(h, v))
}

/// Rough width of `text` at `px` pixels, for laying labels out.
fn text_width(text: &str, px: f64) -> f64 {
    text.chars().count() as f64 * px * 0.58
}

/// How a line is stroked.
#[derive(Clone, Copy)]
pub(crate) struct Stroke {
    colour: RGBColor,
    width: u32,
    /// Dash and gap lengths in pixels; solid when `None`.
    dash: Option<(u32, u32)>,
}

impl Stroke {
    /// A solid line.
    pub(crate) const fn solid(colour: RGBColor, width: u32) -> Stroke {
        Stroke {
            colour,
            width,
            dash: None,
        }
    }

    /// Dashes `dash` pixels long, `gap` apart.
    pub(crate) const fn dashed(colour: RGBColor, width: u32, dash: u32, gap: u32) -> Stroke {
        Stroke {
            colour,
            width,
            dash: Some((dash, gap)),
        }
    }

    /// Draws a line through `points` on `area`, in its coordinates.
    pub(crate) fn draw<DB: DrawingBackend, CT: CoordTranslate>(
        &self,
        area: &DrawingArea<DB, CT>,
        points: Vec<CT::From>,
    ) -> Drawn<DB>
    where
        CT::From: Clone + 'static,
    {
        let style = self.colour.stroke_width(self.width);
        match self.dash {
            None => area.draw(&PathElement::new(points, style)),
            Some((dash, gap)) => area.draw(&plotters::element::DashedPathElement::new(
                points, dash, gap, style,
            )),
        }
    }
}

/// A legend at the top left of `area`: a bold title, then one sample line
/// and name per entry.
pub(crate) fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    entries: &[(&str, Stroke)],
) -> Drawn<DB> {
    area.draw(&Text::new(title, (10, 4), bold(11.0, INK)))?;
    for (i, (name, stroke)) in entries.iter().enumerate() {
        let y = 26 + i as i32 * 16;
        stroke.draw(area, vec![(10, y), (30, y)])?;
        let style = anchored(font(11.0, INK), HPos::Left, VPos::Center);
        area.draw(&Text::new(*name, (35, y), style))?;
    }
    Ok(())
}

/// A note in the middle of an empty panel.
fn note<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    text: &str,
) -> Drawn<DB> {
    let (w, h) = area.dim_in_pixel();
    let style = anchored(font(11.0, MUTED), HPos::Center, VPos::Center);
    area.strip_coord_spec()
        .draw(&Text::new(text, (w as i32 / 2, h as i32 / 2), style))
}

/// A range for a logarithmic axis covering the positive finite `values`
/// and `reach`, with room around them.
pub(crate) fn log_range(values: impl Iterator<Item = f64>, reach: f64) -> Range<f64> {
    let (lo, hi) = values
        .chain([reach])
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi > 0.0 {
        lo / 1.5..hi * 1.5
    } else {
        1.0..10.0
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

/// `report.svg`'s size.
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 930;
/// Width of the time-series panels; their legends go right of them.
const PLOT_WIDTH: u32 = 820;
/// Most rows of marker labels stacked at the top of a panel.
const LABEL_ROWS: usize = 3;
/// Marker labels' size, pixels.
const MARK_FONT: f64 = 9.5;

/// Writes `report.svg`, and `report.png` beside it, for a run: the same
/// figures as `report.json`, drawn, so that a run can be judged at a glance.
pub fn write_run_plot(report: &RunReport, path: &Path) -> io::Result<()> {
    write(&RunFigure(report), path)
}

/// The figure of a run, as SVG text: input rate, per-operator rates,
/// utilisation and placement over time with failures and scale events
/// marked, latency per answer kind, and the failures and scale events in
/// words.
pub fn run_plot(report: &RunReport) -> io::Result<String> {
    svg(&RunFigure(report))
}

/// The figure of one run.
struct RunFigure<'a>(&'a RunReport);

impl Figure for RunFigure<'_> {
    const SIZE: (u32, u32) = (WIDTH, HEIGHT);

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        let report = self.0;
        root.fill(&WHITE)?;
        let operators = operators(report);
        let time = TimeScale::of(report);
        let marks = Marks::of(report, &time);
        let (head, rest) = root.split_vertically(60);
        let (input, rest) = rest.split_vertically(150);
        let (rates, rest) = rest.split_vertically(175);
        let (utilisation, rest) = rest.split_vertically(150);
        let (placement, bottom) = rest.split_vertically(180);
        let (latency, events) = bottom.split_horizontally(540);
        header(&head, report)?;
        input_panel(&input, report, &time, &marks)?;
        rate_panel(&rates, report, &operators, &time, &marks)?;
        utilisation_panel(&utilisation, report, &operators, &time, &marks)?;
        placement_panel(&placement, report, &operators, &time, &marks)?;
        latency_panel(&latency, report)?;
        events_panel(&events, report, &time)
    }
}

/// Operator names in query order (the order of the report's instances),
/// then any other name the history or the scale events mention.
fn operators(report: &RunReport) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let history = report.history.iter().flat_map(|p| {
        p.in_rate
            .keys()
            .chain(p.utilization.keys())
            .chain(p.partitions.keys())
    });
    report
        .instances
        .iter()
        .map(|i| &i.operator)
        .chain(report.partitions.keys())
        .chain(history)
        .chain(report.scale_events.iter().map(|s| &s.operator))
        .filter(|name| seen.insert(name.as_str()))
        .cloned()
        .collect()
}

fn colour(index: usize) -> RGBColor {
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
        let recoveries = report.recoveries.iter().flat_map(|r| {
            [
                r.killed_ms,
                Some(r.detected_ms),
                Some(r.restored_ms),
                r.caught_up_ms,
            ]
            .into_iter()
            .flatten()
        });
        let end_ms = [
            report.elapsed_secs * 1000.0,
            report.input_per_second.len() as f64 * 1000.0,
            report.history.last().map_or(0.0, |p| p.at_ms as f64),
        ]
        .into_iter()
        .chain(recoveries.map(|t| t as f64))
        .chain(report.scale_events.iter().map(|s| s.decided_ms as f64))
        .filter(|t| t.is_finite())
        .fold(1000.0, f64::max);
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

    /// A moment as the axis shows it (minutes to one decimal, as seconds
    /// to the millisecond would be noise at that scale).
    fn moment(&self, ms: f64) -> String {
        if self.unit == "min" {
            format!("{:.1} min", self.at(ms))
        } else {
            format!("{} s", plain(self.at(ms)))
        }
    }
}

/// The time-series chart of a panel: titled, time on x, `y` up, its grid
/// drawn, its y labels written by `y_label`; the x axis is described only on
/// the last panel (`x_desc`).
fn time_chart<'a, DB, Y>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    time: &TimeScale,
    y: Y,
    y_label: fn(f64) -> String,
    x_desc: bool,
) -> Chart<'a, DB, RangedCoordf64, Y::CoordDescType>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(title, bold(12.5, INK))
        .margin_right(10)
        .x_label_area_size(if x_desc { 38 } else { 20 })
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..time.end, y)?;
    let desc = format!("time since the job started, {}", time.unit);
    let (y_format, x_format) = (|v: &f64| y_label(*v), |v: &f64| plain(*v));
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE)
        .bold_line_style(RGBColor(0xe6, 0xe6, 0xe6))
        .y_labels(5)
        .y_label_formatter(&y_format)
        .x_label_formatter(&x_format)
        .label_style(font(10.5, INK));
    if x_desc {
        mesh.x_desc(desc);
    }
    mesh.draw()?;
    Ok(chart)
}

/// A vertical line marking a moment on the time-series panels.
struct Mark {
    at: f64,
    label: String,
    stroke: Stroke,
    /// The failure or scale event it belongs to: of a group's marks closer
    /// than a label's width, only the first is labelled (the events panel
    /// has the exact times).
    group: usize,
}

/// A marker label's place: the mark, its row from the chart's top, and
/// whether it is written left of the line (it would run off the chart).
struct Placed<'a> {
    mark: &'a Mark,
    row: usize,
    left: bool,
}

/// Failures and scale events as they are drawn on every time-series panel.
struct Marks {
    lines: Vec<Mark>,
    /// Recovering periods (failure to caught up), shaded.
    bands: Vec<(f64, f64)>,
}

const KILL: Stroke = Stroke::solid(RED, 2);
const PHASE: Stroke = Stroke::dashed(RED, 1, 4, 3);
const CAUGHT_UP: Stroke = Stroke::dashed(RED, 1, 1, 2);
const SCALING: Stroke = Stroke::dashed(SCALE, 2, 6, 3);

impl Marks {
    fn of(report: &RunReport, time: &TimeScale) -> Marks {
        let mut lines = Vec::new();
        let mut bands = Vec::new();
        let mut mark = |ms: u64, label: String, stroke, group| {
            lines.push(Mark {
                at: time.at(ms as f64),
                label,
                stroke,
                group,
            })
        };
        for (group, r) in report.recoveries.iter().enumerate() {
            let ids: Vec<String> = r.workers.iter().map(|w| w.to_string()).collect();
            let workers = match ids.len() {
                1 => format!("worker {}", ids.join("")),
                _ => format!("workers {}", ids.join(",")),
            };
            let failed = r.killed_ms.unwrap_or(r.detected_ms);
            let over = r.caught_up_ms.unwrap_or(r.restored_ms).max(failed);
            bands.push((time.at(failed as f64), time.at(over as f64)));
            let detected = match r.killed_ms {
                Some(k) => {
                    mark(k, format!("kill {workers}"), KILL, group);
                    "detected".into()
                }
                None => format!("{workers} failed"),
            };
            mark(r.detected_ms, detected, PHASE, group);
            mark(r.restored_ms, "restored".into(), PHASE, group);
            if let Some(c) = r.caught_up_ms {
                mark(c, "caught up".into(), CAUGHT_UP, group);
            }
        }
        for (i, s) in report.scale_events.iter().enumerate() {
            let label = format!(
                "{} {} {}→{}",
                s.noun(),
                s.operator,
                s.partitions_before,
                s.partitions_after
            );
            mark(s.decided_ms, label, SCALING, report.recoveries.len() + i);
        }
        lines.sort_by(|a, b| a.at.total_cmp(&b.at));
        Marks { lines, bands }
    }

    /// Shading and lines, under the data, from `y.start` to `y.end`.
    fn draw_under<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
        &self,
        chart: &ChartContext<DB, CT>,
        y: &Range<f64>,
    ) -> Drawn<DB> {
        let area = chart.plotting_area();
        for (from, to) in &self.bands {
            let band = [(*from, y.start), (*to, y.end)];
            area.draw(&Rectangle::new(band, RED.mix(0.1).filled()))?;
        }
        for m in &self.lines {
            m.stroke.draw(area, vec![(m.at, y.start), (m.at, y.end)])?;
        }
        Ok(())
    }

    /// Where each label goes, given each moment's pixel column `x_of` and
    /// the chart's right edge: in rows at the top of the chart so that they
    /// do not overlap (past [`LABEL_ROWS`] rows they may), one per group of
    /// marks closer than a label's width.
    fn place(&self, x_of: impl Fn(f64) -> f64, right: f64) -> Vec<Placed<'_>> {
        let mut placed = Vec::new();
        let mut row_ends: Vec<f64> = Vec::new();
        // Per group, where its last label ends.
        let mut group_ends: BTreeMap<usize, f64> = BTreeMap::new();
        for mark in &self.lines {
            let x = x_of(mark.at);
            let width = text_width(&mark.label, MARK_FONT);
            if group_ends.get(&mark.group).is_some_and(|end| x < *end) {
                continue;
            }
            // Right of the line, unless that runs off the chart.
            let left = x + 3.0 + width > right;
            let start = if left { x - 3.0 - width } else { x };
            group_ends.insert(mark.group, start + width + 6.0);
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
            row_ends[row] = start + width + 6.0;
            placed.push(Placed { mark, row, left });
        }
        placed
    }

    /// Labels, over the data, at the top (`top`) of the chart.
    fn draw_labels<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
        &self,
        chart: &ChartContext<DB, CT>,
        top: f64,
    ) -> Drawn<DB> {
        let area = chart.plotting_area();
        let x_of = |at: f64| f64::from(area.map_coordinate(&(at, top)).0);
        let right = f64::from(area.get_pixel_range().0.end);
        for p in self.place(x_of, right) {
            let h = if p.left { HPos::Right } else { HPos::Left };
            let style = anchored(font(MARK_FONT, p.mark.stroke.colour), h, VPos::Top);
            let dx = if p.left { -3 } else { 3 };
            let at = EmptyElement::at((p.mark.at, top))
                + Text::new(p.mark.label.clone(), (dx, 2 + p.row as i32 * 11), style);
            area.draw(&at)?;
        }
        Ok(())
    }

    /// What the markers mean.
    fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        let entries = [
            ("kill / failure", KILL),
            ("detected, restored", PHASE),
            ("caught up", CAUGHT_UP),
            ("split / merge", SCALING),
        ];
        legend(area, "markers", &entries)?;
        let y = 26 + entries.len() as i32 * 16;
        area.draw(&Rectangle::new(
            [(10, y - 5), (30, y + 5)],
            RED.mix(0.15).filled(),
        ))?;
        let style = anchored(font(11.0, INK), HPos::Left, VPos::Center);
        area.draw(&Text::new("recovering", (35, y), style))
    }
}

/// A series drawn as steps: each value holds until the next point.
fn steps(points: &[(f64, f64)], end: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2 + 1);
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push((p.0, points[i - 1].1));
        }
        out.push(*p);
    }
    if let Some((x, y)) = points.last() {
        out.push((end.max(*x), *y));
    }
    out
}

fn header<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &RunReport) -> Drawn<DB> {
    let input = report.input.file_name().map_or_else(
        || report.input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let speed = if report.speedup > 0.0 {
        format!("replayed {}× faster than real time", plain(report.speedup))
    } else {
        "replayed as fast as possible".to_string()
    };
    let title = format!(
        "Linear Road on Spate: {input}, {speed}, {} workers",
        report.workers
    );
    let checkpoints = match report.checkpoint_ms {
        0 => "fault tolerance off".to_string(),
        ms => format!(
            "{} checkpoints (every {})",
            report.checkpoints,
            duration(ms as f64)
        ),
    };
    let summary = format!(
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
    );
    let middle = WIDTH as i32 / 2;
    let title_style = anchored(bold(17.0, INK), HPos::Center, VPos::Top);
    area.draw(&Text::new(title, (middle, 10), title_style))?;
    let summary_style = anchored(font(12.0, MUTED), HPos::Center, VPos::Top);
    area.draw(&Text::new(summary, (middle, 36), summary_style))
}

/// `n` and a noun, plural unless `n` is one.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The highest finite value of `series`, at least `floor`.
fn highest<'a>(series: impl IntoIterator<Item = &'a (f64, f64)>, floor: f64) -> f64 {
    series
        .into_iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(floor, f64::max)
}

/// Panel 1: the offered load, from the feeder.
fn input_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &RunReport,
    time: &TimeScale,
    marks: &Marks,
) -> Drawn<DB> {
    let (plot, side) = area.split_horizontally(PLOT_WIDTH);
    let points: Vec<(f64, f64)> = report
        .input_per_second
        .iter()
        .enumerate()
        .map(|(i, n)| (time.at(i as f64 * 1000.0), *n as f64))
        .collect();
    let y = 0.0..highest(&points, 1.0) * 1.1;
    let title = "Input rate, lines per second (from the feeder)";
    let mut chart = time_chart(&plot, title, time, y.clone(), label, false)?;
    marks.draw_under(&chart, &y)?;
    if points.is_empty() {
        note(chart.plotting_area(), "no input recorded")?;
    } else {
        let end = time.at(points.len() as f64 * 1000.0);
        let line = steps(&points, end);
        let fill =
            AreaSeries::new(line, 0.0, SERIES[0].mix(0.18)).border_style(SERIES[0].stroke_width(2));
        chart.draw_series(fill)?;
    }
    marks.draw_labels(&chart, y.end)?;
    Marks::legend(&side)
}

/// One value per history point, in time-axis units, finite only.
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

/// One line per operator in its colour, each moved `spread` (in y units)
/// from the next, so that coinciding lines stay apart.
fn draw_series<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<DB, CT>,
    series: &[Vec<(f64, f64)>],
    spread: f64,
) -> Drawn<DB> {
    let middle = series.len().saturating_sub(1) as f64 / 2.0;
    for (i, points) in series.iter().enumerate() {
        let dy = (i as f64 - middle) * spread;
        let moved = points.iter().map(|(x, y)| (*x, y + dy));
        chart.draw_series(LineSeries::new(moved, colour(i).stroke_width(2)))?;
    }
    Ok(())
}

/// Panel 2: tuples in per second per operator, on a log scale since the
/// forwarder sees every line and an accident sink a handful.
fn rate_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &RunReport,
    operators: &[String],
    time: &TimeScale,
    marks: &Marks,
) -> Drawn<DB> {
    let (plot, side) = area.split_horizontally(PLOT_WIDTH);
    let series: Vec<Vec<(f64, f64)>> = operators
        .iter()
        .map(|op| history_series(report, time, |p| Some(p.in_rate.get(op)?.max(1.0))))
        .collect();
    let y = 1.0..(highest(series.iter().flatten(), 0.0) * 1.5).max(10.0);
    let title = "Tuples in per second per operator (all partitions; log scale, 0 drawn at 1)";
    let mut chart = time_chart(&plot, title, time, y.clone().log_scale(), label, false)?;
    marks.draw_under(&chart, &y)?;
    draw_series(&mut chart, &series, 0.0)?;
    if report.history.is_empty() {
        note(chart.plotting_area(), NO_HISTORY)?;
    }
    marks.draw_labels(&chart, y.end)?;
    let strokes: Vec<Stroke> = (0..operators.len())
        .map(|i| Stroke::solid(colour(i), 2))
        .collect();
    let entries: Vec<(&str, Stroke)> = operators.iter().map(String::as_str).zip(strokes).collect();
    legend(&side, "operators", &entries)
}

/// Panel 3: the busiest instance of each operator, in cores.
fn utilisation_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &RunReport,
    operators: &[String],
    time: &TimeScale,
    marks: &Marks,
) -> Drawn<DB> {
    let (plot, _) = area.split_horizontally(PLOT_WIDTH);
    let series: Vec<Vec<(f64, f64)>> = operators
        .iter()
        .map(|op| history_series(report, time, |p| p.utilization.get(op).copied()))
        .collect();
    let y = 0.0..highest(series.iter().flatten(), 0.1) * 1.1;
    let title = "CPU utilisation of each operator's busiest instance (1 = one core)";
    let mut chart = time_chart(&plot, title, time, y.clone(), plain, false)?;
    marks.draw_under(&chart, &y)?;
    draw_series(&mut chart, &series, 0.0)?;
    if report.history.is_empty() {
        note(chart.plotting_area(), NO_HISTORY)?;
    }
    marks.draw_labels(&chart, y.end)
}

/// Panel 4: where the query runs: workers hosting instances, and partitions
/// per operator (drawn a pixel or two apart where they coincide, so that
/// every operator stays visible).
fn placement_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &RunReport,
    operators: &[String],
    time: &TimeScale,
    marks: &Marks,
) -> Drawn<DB> {
    let (plot, side) = area.split_horizontally(PLOT_WIDTH);
    let workers = history_series(report, time, |p| Some(p.workers as f64));
    let series: Vec<Vec<(f64, f64)>> = operators
        .iter()
        .map(|op| history_series(report, time, |p| p.partitions.get(op).map(|n| *n as f64)))
        .collect();
    let y = 0.0..highest(series.iter().flatten().chain(&workers), 1.0).ceil() + 1.0;
    let title = "Workers hosting instances, and partitions per operator";
    let whole = |v: f64| format!("{v:.0}");
    let mut chart = time_chart(&plot, title, time, y.clone(), whole, true)?;
    marks.draw_under(&chart, &y)?;
    let stepped: Vec<Vec<(f64, f64)>> = series.iter().map(|s| steps(s, time.end)).collect();
    let pixel = (y.end - y.start) / f64::from(chart.plotting_area().dim_in_pixel().1.max(1));
    draw_series(&mut chart, &stepped, 1.6 * pixel)?;
    // Name the operators that were ever partitioned at their lines' ends;
    // the others share the band at one partition.
    for (i, (op, points)) in operators.iter().zip(&series).enumerate() {
        let (Some(last), true) = (points.last(), points.iter().any(|p| p.1 > 1.0)) else {
            continue;
        };
        let style = anchored(font(10.0, colour(i)), HPos::Right, VPos::Bottom);
        let text = Text::new(format!("{op}: {}", last.1), (-4, -3), style);
        chart
            .plotting_area()
            .draw(&(EmptyElement::at((time.end, last.1)) + text))?;
    }
    let workers_line = LineSeries::new(steps(&workers, time.end), INK.stroke_width(3));
    chart.draw_series(workers_line)?;
    if report.history.is_empty() {
        note(chart.plotting_area(), NO_HISTORY)?;
    }
    marks.draw_labels(&chart, y.end)?;
    legend(&side, "placement", &[("workers", Stroke::solid(INK, 3))])?;
    let muted = font(11.0, MUTED);
    side.draw(&Text::new("partitions: coloured", (10, 48), muted.clone()))?;
    side.draw(&Text::new("by operator (above)", (10, 62), muted))
}

/// Panel 5: p50, p99 and max answer latency per kind as bars on a log
/// scale, with each kind's deadline.
fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &RunReport,
) -> Drawn<DB> {
    let kinds: Vec<(AnswerKind, Option<&SinkStats>)> = AnswerKind::ALL
        .into_iter()
        .filter(|k| *k != AnswerKind::InputErrors)
        .map(|k| (k, report.latency.get(k.name()).filter(|s| s.count > 0)))
        .collect();
    let values = kinds
        .iter()
        .filter_map(|(_, s)| *s)
        .flat_map(|s| [s.p50_ms, s.p99_ms, s.max_ms]);
    let deadline = kinds
        .iter()
        .map(|(k, _)| k.deadline_secs() * 1000.0)
        .fold(0.0, f64::max);
    let mut y = log_range(values, deadline);
    y.start = y.start.min(1.0);
    y.end *= 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption("Answer latency per kind (log scale)", bold(12.5, INK))
        .margin(10)
        .x_label_area_size(58)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..kinds.len() as f64, y.clone().log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xe6, 0xe6, 0xe6))
        .y_label_formatter(&|v| duration(*v))
        .label_style(font(10.5, INK))
        .draw()?;
    let shades = [
        RGBColor(0x9e, 0xca, 0xe1),
        RGBColor(0x42, 0x92, 0xc6),
        RGBColor(0x08, 0x30, 0x6b),
    ];
    let plotting = chart.plotting_area();
    let under = |x: f64, dy: i32, text: String, style: TextStyle<'static>| {
        let style = anchored(style, HPos::Center, VPos::Top);
        plotting.draw(&(EmptyElement::at((x, y.start)) + Text::new(text, (0, dy), style)))
    };
    for (i, (kind, stats)) in kinds.iter().enumerate() {
        let centre = i as f64 + 0.5;
        under(centre, 6, kind.name().to_string(), font(11.0, INK))?;
        let limit = kind.deadline_secs() * 1000.0;
        PHASE.draw(
            plotting,
            vec![(centre - 0.42, limit), (centre + 0.42, limit)],
        )?;
        let style = anchored(font(9.5, RED), HPos::Right, VPos::Bottom);
        let text = Text::new(format!("deadline {}", duration(limit)), (0, -2), style);
        plotting.draw(&(EmptyElement::at((centre + 0.42, limit)) + text))?;
        let Some(s) = stats else {
            let style = anchored(font(11.0, MUTED), HPos::Center, VPos::Center);
            let middle = (y.start * y.end).sqrt();
            let text = Text::new("no answers", (0, 0), style);
            plotting.draw(&(EmptyElement::at((centre, middle)) + text))?;
            continue;
        };
        let late = if s.deadline_misses > 0 { RED } else { MUTED };
        let counts = format!(
            "{} answers, {} late",
            label(s.count as f64),
            s.deadline_misses
        );
        under(centre, 21, counts, font(9.5, late))?;
        for (j, (v, shade)) in [s.p50_ms, s.p99_ms, s.max_ms]
            .iter()
            .zip(shades)
            .enumerate()
        {
            let v = if v.is_finite() {
                v.clamp(y.start, y.end)
            } else {
                y.start
            };
            let x = centre + (j as f64 - 1.5) * 0.22 + 0.01;
            let bar = [(x, y.start), (x + 0.2, v)];
            plotting.draw(&Rectangle::new(bar, shade.filled()))?;
            let style = anchored(font(8.5, INK), HPos::Center, VPos::Bottom);
            let text = Text::new(compact_duration(v), (0, -2), style);
            plotting.draw(&(EmptyElement::at((x + 0.1, v)) + text))?;
        }
    }
    for (i, (name, shade)) in ["p50", "p99", "max"].into_iter().zip(shades).enumerate() {
        let x = i as i32 * 60;
        let swatch = Rectangle::new([(x, 40), (x + 12, 50)], shade.filled());
        let text = Text::new(
            name,
            (x + 16, 45),
            anchored(font(11.0, INK), HPos::Left, VPos::Center),
        );
        plotting.draw(&(EmptyElement::at((0.0, y.start)) + swatch + text))?;
    }
    Ok(())
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

/// The failures and scale events in words, with their durations: (text,
/// whether it heads an event).
fn event_lines(report: &RunReport, time: &TimeScale) -> Vec<(String, bool)> {
    let mut lines: Vec<(String, bool)> = Vec::new();
    let at = |ms: u64| time.moment(ms as f64);
    let after = |from: u64, to: u64| format!("+{}", duration(to.saturating_sub(from) as f64));
    for (i, r) in report.recoveries.iter().enumerate() {
        let workers: Vec<String> = r.workers.iter().map(|w| w.to_string()).collect();
        let head = format!(
            "Failure {}: worker {} ({})",
            i + 1,
            workers.join(", "),
            r.instances.join(", ")
        );
        lines.push((head, true));
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
        let verb = if s.direction == spate_engine::coordinator::ScaleDirection::In {
            "Merge"
        } else {
            "Split"
        };
        let decision = s
            .decision
            .map_or("requested".into(), |d| format!("decision {d}"));
        let head = format!(
            "{verb} of {}: {} → {} partitions at {} ({decision})",
            s.operator,
            s.partitions_before,
            s.partitions_after,
            at(s.decided_ms),
        );
        lines.push((head, true));
        if let Some(r) = &s.rates {
            let rates = format!(
                "  {} policy: offered {:.0}/s, processed {:.0}/s, {:.0} per CPU second, utilisation {:.2} needs {:.2} (target {:.2})",
                r.policy, r.offered_rate, r.in_rate, r.true_rate, r.utilization, r.projected, r.target
            );
            lines.push((rates, false));
        }
        let detail = format!(
            "  paused {}, keys {} | {}, new instance {} on worker {}{}",
            duration(s.pause_ms as f64),
            s.keys.0,
            s.keys.1,
            s.new_instance,
            s.worker,
            if s.added.len() > 1 {
                format!(" and {} more", s.added.len() - 1)
            } else {
                String::new()
            }
        );
        lines.push((detail, false));
    }
    if lines.is_empty() {
        lines.push(("No failures and no scale events in this run.".into(), false));
    }
    lines
}

/// Panel 6: the failures and scale events in words.
fn events_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &RunReport,
    time: &TimeScale,
) -> Drawn<DB> {
    area.draw(&Text::new(
        "Failures and scale events",
        (10, 12),
        bold(13.0, INK),
    ))?;
    let lines = event_lines(report, time);
    let total = lines.len();
    let mut y = 36;
    for (i, (text, strong)) in lines.into_iter().enumerate() {
        if i + 1 == MAX_LINES && total > MAX_LINES {
            let more = format!("… and {} more lines in report.json", total - i);
            return area.draw(&Text::new(more, (10, y), font(11.0, MUTED)));
        }
        let text = if text.chars().count() > MAX_CHARS {
            let cut: String = text.chars().take(MAX_CHARS - 1).collect();
            format!("{cut}…")
        } else {
            text
        };
        let style = if strong {
            bold(11.0, INK)
        } else {
            font(11.0, MUTED)
        };
        area.draw(&Text::new(text, (10, y), style))?;
        y += if strong { 15 } else { 19 };
    }
    Ok(())
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
            worker_secs: 0.0,
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
            ..ScaleEvent::default()
        });
        report
    }

    /// The text of every `<text>` element, trimmed.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split_once("</text>"))
            .map(|(text, _)| text.trim())
            .collect()
    }

    fn count(texts: &[&str], wanted: &str) -> usize {
        texts.iter().filter(|t| **t == wanted).count()
    }

    #[test]
    fn a_run_with_a_failure_and_a_split_is_drawn_and_marked() {
        let svg = run_plot(&busy_report()).expect("drawing");
        assert_well_formed(&svg);
        let texts = texts(&svg);
        for op in OPERATORS {
            assert!(count(&texts, op) >= 1, "no legend for {op}");
        }
        for label in [
            "kill worker 2",
            "detected",
            "restored",
            "caught up",
            "split toll_calculator 1→2",
        ] {
            // Once on each of the four time-series panels (and "caught up"
            // once more in the markers' legend).
            let legend = usize::from(label == "caught up");
            assert_eq!(count(&texts, label), 4 + legend, "{label}");
        }
        assert_eq!(count(&texts, "deadline 5 s"), 3);
        assert_eq!(count(&texts, "deadline 10 s"), 1);
        assert_eq!(count(&texts, "5k answers, 0 late"), 1);
        assert_eq!(count(&texts, "toll_calculator: 2"), 1);
        assert!(texts.contains(&"Failure 1: worker 2 (toll_calculator[0])"));
        assert!(texts.contains(&"Split of toll_calculator: 1 → 2 partitions at 20 s (requested)"));
        assert!(texts.contains(&"time since the job started, s"));
        // The marker lines on each panel: red for the failure, purple for
        // the split (dashed lines are drawn as many short strokes).
        assert!(svg.matches(r##"stroke="#D62728""##).count() >= 16);
        assert!(svg.matches(r##"stroke="#6A3D9A""##).count() >= 4);
        assert!(!svg.contains(NO_HISTORY));
    }

    #[test]
    fn an_empty_run_still_gives_empty_axes_with_notes() {
        let svg = run_plot(&empty_report()).expect("drawing");
        assert_well_formed(&svg);
        let texts = texts(&svg);
        assert_eq!(count(&texts, "no input recorded"), 1);
        assert_eq!(count(&texts, NO_HISTORY), 3);
        assert_eq!(count(&texts, "no answers"), 4);
        assert!(texts.contains(&"No failures and no scale events in this run."));
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
        let svg = run_plot(&report).expect("drawing");
        assert_well_formed(&svg);
        assert!(svg.contains("&lt;a&amp;b&gt;"));
    }

    #[test]
    fn write_run_plot_writes_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("spate-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("report.svg");
        write_run_plot(&busy_report(), &path).expect("writing the plot");
        let text = std::fs::read_to_string(&path).expect("reading the SVG back");
        let png = std::fs::read(dir.join("report.png")).expect("reading the PNG back");
        let _ = std::fs::remove_dir_all(&dir);
        assert_well_formed(&text);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        // Text is drawn in the PNG too: a blank figure of this size
        // compresses to far less.
        assert!(png.len() > 40_000, "{} bytes", png.len());
    }

    #[test]
    fn long_runs_are_drawn_in_minutes() {
        let mut report = empty_report();
        report.elapsed_secs = 3.0 * 3600.0;
        let time = TimeScale::of(&report);
        assert_eq!(time.unit, "min");
        assert!((time.end - 180.0).abs() < 1e-9);
        assert_eq!(time.moment(5_000_000.0), "83.3 min");
        let svg = run_plot(&report).expect("drawing");
        assert!(texts(&svg).contains(&"time since the job started, min"));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(label(57_300.0), "57.3k");
        assert_eq!(label(1_250_000.0), "1.25M");
        assert_eq!(label(0.0005), "0.0005");
        assert_eq!(label(f64::NAN), "?");
        assert_eq!(duration(1500.0), "1.5 s");
        assert_eq!(duration(0.25), "0.25 ms");
        assert_eq!(compact_duration(1234.0), "1.2s");
        assert_eq!(log_range([f64::NAN, -1.0].into_iter(), f64::NAN), 1.0..10.0);
        assert_eq!(log_range([3.0].into_iter(), 30.0), 2.0..45.0);
    }

    /// The marker labels of a report on a chart as wide as the report's
    /// panels, with their rows.
    fn marker_labels(report: &RunReport) -> Vec<(String, usize)> {
        let time = TimeScale::of(report);
        let marks = Marks::of(report, &time);
        let width = f64::from(PLOT_WIDTH);
        marks
            .place(|at| at / time.end * width, width)
            .into_iter()
            .map(|p| (p.mark.label.clone(), p.row))
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
        let names: Vec<&str> = labels.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["kill worker 1", "split toll_calculator 1→2"]);
        assert_ne!(labels[0].1, labels[1].1, "overlapping labels on one row");
        // Only the legend names the unlabelled phases.
        let svg = run_plot(&report).expect("drawing");
        assert_well_formed(&svg);
        assert_eq!(count(&texts(&svg), "caught up"), 1);
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
        assert!(labels.iter().all(|(_, row)| *row == 0));
    }

    #[test]
    fn a_label_near_the_right_edge_goes_left_of_its_line() {
        let mut report = busy_report();
        report.scale_events[0].decided_ms = 30_400;
        let time = TimeScale::of(&report);
        let marks = Marks::of(&report, &time);
        let width = f64::from(PLOT_WIDTH);
        let placed = marks.place(|at| at / time.end * width, width);
        let split = placed.last().expect("the split's label");
        assert!(split.left && split.mark.label.starts_with("split"));
    }
}
