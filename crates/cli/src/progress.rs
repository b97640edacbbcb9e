//! Live progress of long commands on stderr: a bar (a spinner while the end
//! is unknown) on a terminal, drawn with indicatif, and a plain line every
//! few seconds otherwise, so that a CI log shows that a long command is
//! alive and how far it got.
//!
//! Jobs are watched through the coordinator's published view (the one the
//! dashboard reads), from a thread of their own: nothing in the engine
//! knows about this display.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use spate_engine::coordinator::view::{ClusterView, SharedView};
use spate_engine::coordinator::{EventKind, JobState, JobSummary};
use spate_lrb::bench::BenchStage;
use spate_lrb::driver::RunReport;

/// Environment variable: seconds between plain progress lines when stderr
/// is not a terminal (default [`PLAIN_EVERY`]).
pub const INTERVAL_ENV: &str = "SPATE_PROGRESS_SECS";
/// Seconds between plain progress lines by default.
const PLAIN_EVERY: f64 = 5.0;
/// How often a watched job's view is read.
const POLL: Duration = Duration::from_millis(200);

/// What a progress display shows at one moment.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// What is being done: "generating", "running", "validating".
    pub stage: String,
    /// How much of it is done, 0 to 1, when that is known.
    pub fraction: Option<f64>,
    /// The figures so far.
    pub detail: String,
}

/// How progress reaches the user.
enum Output {
    /// A bar redrawn in place; `spinning` while the fraction is unknown.
    /// Its elapsed time and ETA start again with each stage.
    Bar {
        bar: ProgressBar,
        spinning: bool,
        stage: String,
    },
    /// A line every `every`, for logs.
    Lines { every: Duration, last: Instant },
}

/// A progress display on stderr.
pub struct Progress {
    started: Instant,
    output: Output,
}

impl Progress {
    /// A bar if stderr is a terminal, periodic lines otherwise.
    pub fn new() -> Progress {
        let output = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(1000);
            bar.set_style(style(false));
            bar.enable_steady_tick(Duration::from_millis(200));
            Output::Bar {
                bar,
                spinning: false,
                stage: String::new(),
            }
        } else {
            Output::Lines {
                every: plain_interval(),
                last: Instant::now(),
            }
        };
        Progress {
            started: Instant::now(),
            output,
        }
    }

    /// Shows `status`: redraws the bar, or writes a line if one is due.
    pub fn show(&mut self, status: &Status) {
        match &mut self.output {
            Output::Bar {
                bar,
                spinning,
                stage,
            } => {
                if *spinning != status.fraction.is_none() {
                    *spinning = status.fraction.is_none();
                    bar.set_style(style(*spinning));
                }
                if *stage != status.stage {
                    stage.clone_from(&status.stage);
                    bar.reset();
                    bar.set_prefix(status.stage.clone());
                }
                if let Some(f) = status.fraction {
                    bar.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
                }
                bar.set_message(status.detail.clone());
            }
            Output::Lines { every, last } => {
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    eprintln!("{}", line(status, self.started.elapsed(), false));
                }
            }
        }
    }

    /// Ends the display with a last line: what was reached, in how long.
    pub fn finish(self, status: &Status) {
        if let Output::Bar { bar, .. } = &self.output {
            bar.finish_and_clear();
        }
        eprintln!("{}", line(status, self.started.elapsed(), true));
    }

    /// The bar, to hide it while other output goes to the terminal.
    fn bar(&self) -> Option<ProgressBar> {
        match &self.output {
            Output::Bar { bar, .. } => Some(bar.clone()),
            Output::Lines { .. } => None,
        }
    }
}

/// The bar's look: with a bar and an ETA when the end is known.
fn style(spinning: bool) -> ProgressStyle {
    let template = if spinning {
        "{spinner} {prefix} {elapsed}\n  {wide_msg}"
    } else {
        "{spinner} {prefix} [{bar:30}] {percent:>3}% {elapsed} (ETA {eta})\n  {wide_msg}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The interval between plain lines, from [`INTERVAL_ENV`] if it is a
/// positive number of seconds.
fn plain_interval() -> Duration {
    let secs = std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(PLAIN_EVERY);
    Duration::from_secs_f64(secs)
}

/// A plain progress line: `[  12 s] running 34.5%: figures`, or `done`
/// for the share once `finished`.
fn line(status: &Status, elapsed: Duration, finished: bool) -> String {
    let done = match status.fraction {
        _ if finished => " done".to_string(),
        Some(f) => format!(" {:.1}%", f.clamp(0.0, 1.0) * 100.0),
        None => String::new(),
    };
    format!(
        "[{:>5.0} s] {}{done}: {}",
        elapsed.as_secs_f64(),
        status.stage,
        status.detail
    )
}

/// A display fed from a thread that asks for the status every [`POLL`];
/// the last status is written when it is dropped.
pub struct Watch {
    stop: Arc<AtomicBool>,
    /// The last status to write instead of asking once more.
    last: Arc<Mutex<Option<Status>>>,
    bar: Option<ProgressBar>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts showing what `status` says.
    pub fn start(mut status: impl FnMut() -> Status + Send + 'static) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let last: Arc<Mutex<Option<Status>>> = Arc::default();
        let mut progress = Progress::new();
        let bar = progress.bar();
        let (flag, given) = (stop.clone(), last.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
                progress.show(&status());
            }
            let given = given.lock().ok().and_then(|mut l| l.take());
            progress.finish(&given.unwrap_or_else(status));
        });
        Watch {
            stop,
            last,
            bar,
            thread: Some(thread),
        }
    }

    /// Ends the display with `last`, the figures of a finished job (the
    /// view may not have caught up with its end).
    pub fn finish(self, last: Status) {
        if let Ok(mut slot) = self.last.lock() {
            *slot = Some(last);
        }
    }

    /// Runs `f` with the bar hidden, so that what `f` prints to the
    /// terminal is not drawn over.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A job's figures so far, from the coordinator's view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFigures {
    /// Where the job is in its life.
    pub state: JobState,
    /// Tuples the sources have sent.
    pub inputs: u64,
    /// Tuples per second out of the sources now.
    pub input_rate: f64,
    /// Tuples the sinks have received.
    pub outputs: u64,
    /// Checkpoints backed up.
    pub checkpoints: u64,
    /// Worker failures detected.
    pub failures: usize,
    /// Splits and merges.
    pub scale_events: usize,
}

impl JobFigures {
    /// The figures in `view`.
    pub fn of(view: &ClusterView) -> JobFigures {
        let sum = |kind: &'static str| {
            view.operators
                .iter()
                .filter(move |o| o.kind == kind)
                .flat_map(|o| &o.instances)
        };
        let events = |kinds: &[EventKind]| {
            view.events
                .iter()
                .filter(|e| kinds.contains(&e.kind))
                .count()
        };
        JobFigures {
            state: view.state,
            inputs: sum("Source").map(|i| i.tuples_out).sum(),
            input_rate: sum("Source").map(|i| i.out_rate).sum(),
            outputs: sum("Sink").map(|i| i.tuples_in).sum(),
            checkpoints: view.checkpoints,
            failures: events(&[EventKind::Failure]),
            scale_events: events(&[EventKind::ScaleOut, EventKind::ScaleIn]),
        }
    }

    /// Reads the figures from a shared view into these, the figures seen
    /// so far: counts never go down (the view a job publishes last no
    /// longer lists its events), rates and state are the latest.
    pub fn update(&mut self, view: &SharedView) {
        let now = JobFigures::of(&view.read().unwrap_or_else(|p| p.into_inner()));
        *self = JobFigures {
            inputs: now.inputs.max(self.inputs),
            outputs: now.outputs.max(self.outputs),
            checkpoints: now.checkpoints.max(self.checkpoints),
            failures: now.failures.max(self.failures),
            scale_events: now.scale_events.max(self.scale_events),
            ..now
        };
    }

    /// The figures in words; `late` is the count of late answers where it
    /// is known.
    pub fn describe(&self, inputs: &str, outputs: &str, late: Option<u64>) -> String {
        let late = late.map(|n| format!(" ({n} late)")).unwrap_or_default();
        format!(
            "{} {inputs} ({}/s), {} {outputs}{late}, {} checkpoints, {}, {}",
            count(self.inputs),
            count(self.input_rate.round() as u64),
            count(self.outputs),
            self.checkpoints,
            counted(self.failures, "failure"),
            counted(self.scale_events, "scale event"),
        )
    }
}

/// A count with k and M for thousands and millions.
fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

/// `n` and a noun, plural unless `n` is one.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The last status of a job that ran to its end, from its summary; the
/// view tells which operators are sources and sinks.
pub fn job_finished(view: &SharedView, summary: &JobSummary) -> Status {
    let kinds: BTreeMap<String, String> = view
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .operators
        .iter()
        .map(|o| (o.name.clone(), o.kind.clone()))
        .collect();
    let kinds = &kinds;
    let of = |kind: &'static str| {
        summary
            .instances
            .iter()
            .filter(move |i| kinds.get(&i.operator).is_some_and(|k| k == kind))
    };
    let inputs = of("Source").map(|i| i.stats.tuples_out).sum();
    let figures = JobFigures {
        state: JobState::Finished,
        inputs,
        input_rate: inputs as f64 / summary.elapsed.as_secs_f64().max(1e-3),
        outputs: of("Sink").map(|i| i.stats.tuples_in).sum(),
        checkpoints: summary.checkpoints,
        failures: summary.recoveries.len(),
        scale_events: summary.scale_events.len(),
    };
    Status {
        stage: "finished".into(),
        fraction: None,
        detail: figures.describe("tuples in", "out of the sinks", None),
    }
}

/// The last status of a Linear Road run, from its report.
pub fn lrb_finished(report: &RunReport) -> Status {
    let figures = JobFigures {
        state: JobState::Finished,
        inputs: report.input_lines,
        input_rate: report.input_rate,
        outputs: report.answers,
        checkpoints: report.checkpoints,
        failures: report.recoveries.len(),
        scale_events: report.scale_events.len(),
    };
    Status {
        stage: "running".into(),
        fraction: Some(1.0),
        detail: figures.describe("lines", "answers", Some(report.deadline_misses)),
    }
}

/// Seconds as `h:mm:ss`.
fn clock(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Watches any job: tuples in and out, checkpoints, failures and scale
/// events, with no known end.
pub fn watch_job(view: SharedView) -> Watch {
    let mut figures = JobFigures::default();
    Watch::start(move || {
        figures.update(&view);
        Status {
            stage: figures.state.to_string(),
            fraction: None,
            detail: figures.describe("tuples in", "out of the sinks", None),
        }
    })
}

/// What a Linear Road run's progress is measured against.
#[derive(Clone, Debug)]
pub struct LrbGoal {
    /// The input's simulated seconds, if its last line could be read.
    pub sim_secs: Option<u64>,
    /// The input's lines, estimated.
    pub lines: u64,
    /// Replay speed-up (0: as fast as possible).
    pub speedup: f64,
    /// The run's output directory, where the sinks count late answers.
    pub out_dir: PathBuf,
}

impl LrbGoal {
    /// The goal of replaying `input` at `speedup` into `out_dir`.
    pub fn of(input: &std::path::Path, speedup: f64, out_dir: PathBuf) -> LrbGoal {
        LrbGoal {
            sim_secs: last_time(input),
            lines: estimate_lines(input),
            speedup,
            out_dir,
        }
    }
}

/// Follows one Linear Road run: simulated time (while the feeder keeps
/// pace, wall time since its first line times the speed-up) or lines read
/// against the input's, and the job's figures.
struct LrbRun {
    goal: LrbGoal,
    first_input: Option<Instant>,
    figures: JobFigures,
}

impl LrbRun {
    fn new(goal: LrbGoal) -> LrbRun {
        LrbRun {
            goal,
            first_input: None,
            figures: JobFigures::default(),
        }
    }

    fn status(&mut self, view: &SharedView, stage: &str) -> Status {
        self.figures.update(view);
        let figures = &self.figures;
        if figures.inputs > 0 && self.first_input.is_none() {
            self.first_input = Some(Instant::now());
        }
        let late = spate_lrb::query::late_answers(&self.goal.out_dir);
        let mut detail = figures.describe("lines", "answers", late);
        let fraction = match (self.goal.sim_secs, self.first_input) {
            (Some(total), Some(first)) if self.goal.speedup > 0.0 => {
                let sim = (first.elapsed().as_secs_f64() * self.goal.speedup) as u64;
                // Once every instance finished, the whole input was replayed.
                let sim = if figures.state == JobState::Finished {
                    total
                } else {
                    sim.min(total)
                };
                detail = format!("sim {} of {}, {detail}", clock(sim), clock(total));
                sim as f64 / total.max(1) as f64
            }
            _ => figures.inputs as f64 / self.goal.lines.max(figures.inputs).max(1) as f64,
        };
        Status {
            stage: stage.to_string(),
            fraction: Some(fraction),
            detail,
        }
    }
}

/// Watches a Linear Road run.
pub fn watch_lrb_run(view: SharedView, goal: LrbGoal) -> Watch {
    let mut run = LrbRun::new(goal);
    Watch::start(move || run.status(&view, "running"))
}

/// Watches a bench: its stage, and the current run through `view`.
pub fn watch_bench(view: SharedView, stage: Arc<Mutex<BenchStage>>, input: PathBuf) -> Watch {
    let mut run: Option<(f64, LrbRun)> = None;
    Watch::start(move || {
        let now = stage.lock().map(|s| s.clone()).unwrap_or_default();
        match now {
            BenchStage::Preparing => Status {
                stage: "preparing".into(),
                ..Status::default()
            },
            BenchStage::Generating(fraction) => Status {
                stage: "generating the input".into(),
                fraction: Some(fraction),
                detail: String::new(),
            },
            BenchStage::Running { speedup, out_dir } => {
                if run.as_ref().is_none_or(|(s, _)| *s != speedup) {
                    let goal = LrbGoal::of(&input, speedup, out_dir);
                    run = Some((speedup, LrbRun::new(goal)));
                }
                match &mut run {
                    Some((_, follow)) => follow.status(&view, &format!("speed-up {speedup}")),
                    None => Status::default(),
                }
            }
            BenchStage::Validating { speedup, fraction } => Status {
                stage: format!("validating speed-up {speedup}"),
                fraction: Some(fraction),
                detail: "of the input read".into(),
            },
            BenchStage::Finished(runs) => Status {
                stage: "bench".into(),
                fraction: Some(1.0),
                detail: counted(runs, "run"),
            },
        }
    })
}

/// The Time field of the last line of a Linear Road input, if it ends with
/// a whole line.
fn last_time(input: &std::path::Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(input).ok()?;
    let size = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(size.saturating_sub(4096))).ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    let last = tail.lines().rev().find(|l| !l.trim().is_empty())?;
    last.split(',').nth(1)?.trim().parse().ok()
}

/// Lines in a file, estimated from its size and its first lines' length.
fn estimate_lines(path: &std::path::Path) -> u64 {
    use std::io::Read;
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut head = vec![0u8; 1 << 16];
    let read = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let lines = head[..read].iter().filter(|b| **b == b'\n').count().max(1);
    size * lines as u64 / read.max(1) as u64
}

#[cfg(test)]
mod tests {
    use spate_engine::coordinator::view::{InstanceView, OperatorView};
    use spate_engine::coordinator::JobEvent;

    use super::*;

    fn operator(kind: &str, tuples: u64, rate: f64) -> OperatorView {
        OperatorView {
            name: kind.to_lowercase(),
            kind: kind.into(),
            instances: vec![
                InstanceView {
                    tuples_in: tuples,
                    in_rate: rate,
                    tuples_out: tuples,
                    out_rate: rate,
                    ..InstanceView::default()
                };
                2
            ],
        }
    }

    fn event(kind: EventKind) -> JobEvent {
        JobEvent::new(0, kind, "")
    }

    #[test]
    fn figures_add_up_sources_sinks_and_events() {
        let view = ClusterView {
            state: JobState::Running,
            operators: vec![
                operator("Source", 6000, 500.0),
                operator("Stateful", 99, 9.0),
                operator("Sink", 20, 1.0),
            ],
            events: [
                EventKind::Kill,
                EventKind::Failure,
                EventKind::Restored,
                EventKind::ScaleOut,
                EventKind::ScaleIn,
            ]
            .into_iter()
            .map(event)
            .collect(),
            checkpoints: 7,
            ..ClusterView::default()
        };
        let figures = JobFigures::of(&view);
        assert_eq!(
            figures,
            JobFigures {
                state: JobState::Running,
                inputs: 12_000,
                input_rate: 1000.0,
                outputs: 40,
                checkpoints: 7,
                failures: 1,
                scale_events: 2,
            }
        );
        assert_eq!(
            figures.describe("lines", "answers", Some(3)),
            "12.0k lines (1000/s), 40 answers (3 late), 7 checkpoints, 1 failure, 2 scale events"
        );
    }

    #[test]
    fn plain_lines_say_stage_share_and_figures() {
        let status = Status {
            stage: "running".into(),
            fraction: Some(0.345),
            detail: "12 lines".into(),
        };
        assert_eq!(
            line(&status, Duration::from_secs(12), false),
            "[   12 s] running 34.5%: 12 lines"
        );
        assert_eq!(
            line(&status, Duration::from_secs(13), true),
            "[   13 s] running done: 12 lines"
        );
        assert_eq!(clock(3 * 3600 + 61), "3:01:01");
        assert_eq!(count(1_234_567), "1.23M");
    }

    #[test]
    fn the_last_line_gives_the_simulated_duration() {
        let dir = std::env::temp_dir().join(format!("spate-progress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let input = dir.join("input.csv");
        let lines: String = (0..500)
            .map(|t| format!("0,{t},1,30,0,0,0,10,52800,-1,-1,-1,-1,-1,-1\n"))
            .collect();
        std::fs::write(&input, lines).expect("writing an input");
        let goal = LrbGoal::of(&input, 10.0, dir.clone());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(goal.sim_secs, Some(499));
        assert!((450..=550).contains(&goal.lines), "{}", goal.lines);
    }
}
