//! `scaleout.svg` and `scaleout.png`: the runs of `spate lrb scaleout` side
//! by side on one time axis, one colour per autoscaling policy: the input
//! rate, the workers hosting instances and the partitions, and the answers'
//! latency against their deadline.

use std::io;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{
    anchored, bold, font, highest, history_series, label, legend, log_range, note, plain, steps,
    time_chart, write, Drawn, Figure, Stroke, TimeScale, INK, MUTED, NO_HISTORY, PHASE, SERIES,
    WIDTH,
};
use crate::driver::RunReport;
use crate::sustained::LatencyWindow;

/// One policy's run, as the figure draws it.
pub struct ScaleoutRun<'a> {
    /// The policy's name, for the legend.
    pub name: String,
    /// The run's report (input rate, history, scale events).
    pub report: &'a RunReport,
    /// Latency per window of the replay.
    pub latency: &'a [LatencyWindow],
}

/// Writes the figure of `runs` to `path` (SVG) and beside it as PNG.
pub fn write_scaleout_plot(title: &str, runs: &[ScaleoutRun<'_>], path: &Path) -> io::Result<()> {
    write(&ScaleoutFigure { title, runs }, path)
}

struct ScaleoutFigure<'a> {
    title: &'a str,
    runs: &'a [ScaleoutRun<'a>],
}

/// Height of the figure.
const HEIGHT: u32 = 760;
/// Width of the charts; the legend goes right of them.
const PLOT_WIDTH: u32 = 820;
/// The deadline of tolls and balances, the kinds with the tightest one.
const DEADLINE_MS: f64 = 5_000.0;

impl Figure for ScaleoutFigure<'_> {
    const SIZE: (u32, u32) = (WIDTH, HEIGHT);

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let (head, rest) = root.split_vertically(40);
        let (plots, side) = rest.split_horizontally(PLOT_WIDTH);
        let (input, rest) = plots.split_vertically(220);
        let (placement, latency) = rest.split_vertically(240);
        let middle = WIDTH as i32 / 2;
        let style = anchored(bold(16.0, INK), HPos::Center, VPos::Top);
        head.draw(&Text::new(self.title, (middle, 10), style))?;
        // One time axis for all: the longest run's.
        let longest = self
            .runs
            .iter()
            .map(|r| r.report)
            .max_by(|a, b| a.elapsed_secs.total_cmp(&b.elapsed_secs));
        let Some(longest) = longest else {
            return note(root, "no runs");
        };
        let time = TimeScale::of(longest);
        self.input_panel(&input, &time)?;
        self.placement_panel(&placement, &time)?;
        self.latency_panel(&latency, &time)?;
        let names: Vec<(&str, Stroke)> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), Stroke::solid(SERIES[i % SERIES.len()], 2)))
            .collect();
        legend(&side, "policies", &names)?;
        let muted = font(11.0, MUTED);
        let y = 40 + names.len() as i32 * 16;
        for (i, line) in [
            "solid: workers hosting",
            "instances; p99 latency",
            "dashed: partitions of all",
            "operators; max latency",
        ]
        .iter()
        .enumerate()
        {
            side.draw(&Text::new(*line, (10, y + i as i32 * 14), muted.clone()))?;
        }
        Ok(())
    }
}

impl ScaleoutFigure<'_> {
    fn colour(i: usize) -> RGBColor {
        SERIES[i % SERIES.len()]
    }

    /// The feeder's lines per second, each run's.
    fn input_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        time: &TimeScale,
    ) -> Drawn<DB> {
        let series: Vec<Vec<(f64, f64)>> = self
            .runs
            .iter()
            .map(|r| {
                r.report
                    .input_per_second
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (time.at(i as f64 * 1000.0), *n as f64))
                    .collect()
            })
            .collect();
        let y = 0.0..highest(series.iter().flatten(), 1.0) * 1.1;
        let title = "Input rate, lines per second (from the feeder)";
        let mut chart = time_chart(area, title, time, y, label, false)?;
        for (i, points) in series.iter().enumerate() {
            let line = steps(points, time.at(points.len() as f64 * 1000.0));
            chart.draw_series(LineSeries::new(line, Self::colour(i).stroke_width(2)))?;
        }
        Ok(())
    }

    /// Workers hosting instances (solid) and partitions of every operator
    /// (dashed), each run's.
    fn placement_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        time: &TimeScale,
    ) -> Drawn<DB> {
        let workers: Vec<Vec<(f64, f64)>> = self
            .runs
            .iter()
            .map(|r| history_series(r.report, time, |p| Some(p.workers as f64)))
            .collect();
        let partitions: Vec<Vec<(f64, f64)>> = self
            .runs
            .iter()
            .map(|r| {
                history_series(r.report, time, |p| {
                    Some(p.partitions.values().sum::<usize>() as f64)
                })
            })
            .collect();
        let top = highest(workers.iter().chain(&partitions).flatten(), 1.0);
        let y = 0.0..(top * 1.1).ceil() + 1.0;
        let title = "Workers hosting instances, and partitions of all operators";
        let whole = |v: f64| format!("{v:.0}");
        let mut chart = time_chart(area, title, time, y, whole, false)?;
        for (i, (w, p)) in workers.iter().zip(&partitions).enumerate() {
            let colour = Self::colour(i);
            chart.draw_series(LineSeries::new(steps(w, time.end), colour.stroke_width(2)))?;
            Stroke::dashed(colour, 2, 6, 4).draw(chart.plotting_area(), steps(p, time.end))?;
        }
        if self.runs.iter().all(|r| r.report.history.is_empty()) {
            note(chart.plotting_area(), NO_HISTORY)?;
        }
        Ok(())
    }

    /// p99 (solid) and max (dashed) latency per window of the replay, on
    /// a log scale, with the 5 s deadline.
    fn latency_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        time: &TimeScale,
    ) -> Drawn<DB> {
        let windows = |r: &ScaleoutRun<'_>, value: fn(&LatencyWindow) -> f64| -> Vec<(f64, f64)> {
            r.latency
                .iter()
                .filter(|w| w.answers > 0)
                .map(|w| (time.at(w.from_secs * 1000.0), value(w).max(1.0)))
                .collect()
        };
        let values = self
            .runs
            .iter()
            .flat_map(|r| r.latency.iter().map(|w| w.max_ms.max(1.0)));
        let mut y = log_range(values, DEADLINE_MS);
        y.start = y.start.min(1.0);
        let title = "Answer latency per window of the replay, ms (log scale; deadline 5 s)";
        let mut chart = time_chart(area, title, time, y.log_scale(), label, true)?;
        PHASE.draw(
            chart.plotting_area(),
            vec![(0.0, DEADLINE_MS), (time.end, DEADLINE_MS)],
        )?;
        for (i, run) in self.runs.iter().enumerate() {
            let colour = Self::colour(i);
            let p99 = windows(run, |w| w.p99_ms);
            chart.draw_series(LineSeries::new(p99, colour.stroke_width(2)))?;
            Stroke::dashed(colour, 1, 4, 3)
                .draw(chart.plotting_area(), windows(run, |w| w.max_ms))?;
        }
        let area = chart.plotting_area();
        if self.runs.iter().all(|r| r.latency.is_empty()) {
            note(area, "no answers")?;
        }
        let style = anchored(font(9.5, MUTED), HPos::Right, VPos::Bottom);
        let text = format!("deadline {} s", plain(DEADLINE_MS / 1000.0));
        area.draw(&(EmptyElement::at((time.end, DEADLINE_MS)) + Text::new(text, (-4, -2), style)))
    }
}
