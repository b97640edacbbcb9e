//! `spate lrb bench`: finds the highest replay speed-up at which the Linear
//! Road query still gives exactly the right answers on time, and records what
//! each run cost.
//!
//! One bench is: generate the input once (or reuse it), then run the real
//! query on a real local cluster ([`crate::driver::run`], the same path as
//! `spate lrb run`) at increasing speed-ups, validating every run with the
//! independent reference validator. A speed-up *passes* when
//! - the answers validate exactly,
//! - no answer missed its deadline (as the run's sinks measured it), and
//! - the feeder kept to its schedule: it released the last line no later than
//!   [`KEEP_UP_TOLERANCE`] after the schedule said (otherwise the query pushed
//!   back and the offered rate was never reached).
//!
//! The sweep stops at the first failing speed-up, then bisects between it and
//! the last passing one. `bench.json` gets every run's figures and
//! `bench.svg` plots them; see `docs/BENCH.md` for how to read them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lrb_reference::generate::{generate, GenerateError, GenerateOptions};
use lrb_reference::validate::{validate_with_progress, BadInput, ValidateError, ValidateOptions};
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use serde::{Deserialize, Serialize};
use spate_engine::coordinator::view::{ClusterView, SharedView};
use spate_engine::coordinator::{JobConfig, DEFAULT_BACKUP_COPIES};
use spate_engine::plan::Placement;
use spate_engine::QueryRegistry;

use crate::driver::{self, RunOptions, RunReport};
use crate::plot;
use crate::query::{LrbParams, SinkStats};
use crate::sustained::{latency_over_time, memory_trend, LatencyWindow, MemoryTrend};

/// How late, as a fraction of the scheduled replay time, the feeder may
/// finish and still count as having kept up. Short runs add
/// [`KEEP_UP_SLACK_SECS`] on top, since one scheduling hiccup is a large
/// fraction of a one-second run.
pub const KEEP_UP_TOLERANCE: f64 = 0.10;
/// Absolute slack on the feeder's schedule, seconds.
pub const KEEP_UP_SLACK_SECS: f64 = 0.1;
/// The input's description, kept next to it to decide whether it can be reused.
pub const INPUT_INFO_FILE: &str = "bench-input.json";

/// What to bench.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Expressways in the generated input (L).
    pub xways: u32,
    /// Simulated seconds of input.
    pub duration_secs: u32,
    /// Generator seed.
    pub seed: u64,
    /// Where the input lives (generated there when absent or different).
    pub data_dir: PathBuf,
    /// Where `bench.json`, `bench.svg` and one directory per run go.
    pub out_dir: PathBuf,
    /// Worker processes per run.
    pub workers: usize,
    /// Partitions per operator.
    pub partitions: BTreeMap<String, u32>,
    /// How instances are spread over the workers.
    pub placement: Placement,
    /// Route on the feeder's thread instead of a forwarder operator.
    pub chain_forwarder: bool,
    /// Checkpoint interval of every instance, milliseconds; 0 measures the
    /// query without fault tolerance, so the two can be compared.
    pub checkpoint_ms: u64,
    /// Workers holding each stateful instance's checkpoints.
    pub backup_copies: usize,
    /// Speed-ups to try, in any order; 0 (as fast as possible) counts as the
    /// highest.
    pub speedups: Vec<f64>,
    /// Bisection steps between the last passing and the first failing
    /// speed-up.
    pub bisect: u32,
    /// Keep the answer files of passing runs (they are deleted after a
    /// successful validation otherwise: a long input's answers are large).
    pub keep_answers: bool,
    /// Set to stop after the current run.
    pub cancel: Arc<AtomicBool>,
    /// Where the bench tells what it is doing, for a live display.
    pub progress: BenchProgress,
}

/// What a bench is doing, published for a live display.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum BenchStage {
    /// Checking options and the input.
    #[default]
    Preparing,
    /// Generating the input: the share done.
    Generating(f64),
    /// Running the query at `speedup`, answers going to `out_dir`.
    Running {
        /// The run's speed-up.
        speedup: f64,
        /// The run's output directory.
        out_dir: PathBuf,
    },
    /// Validating the run at `speedup`: the share of the input read.
    Validating {
        /// The run's speed-up.
        speedup: f64,
        /// Share of the input read.
        fraction: f64,
    },
    /// Every run is done: how many there were.
    Finished(usize),
}

/// Where a bench publishes its progress: its stage, and each run's cluster
/// view (the same view a dashboard reads).
#[derive(Clone, Debug, Default)]
pub struct BenchProgress {
    /// What the bench is doing now.
    pub stage: Arc<Mutex<BenchStage>>,
    /// The current run's cluster, replaced at each run's start.
    pub view: SharedView,
}

impl BenchProgress {
    fn set(&self, stage: BenchStage) {
        *self.stage.lock().unwrap_or_else(|p| p.into_inner()) = stage;
    }
}

/// Why a bench could not be carried out (a failing speed-up is a result, not
/// an error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options cannot describe a bench.
    #[error("{0}")]
    Options(String),
    /// Generating the input failed.
    #[error("generating the input: {0}")]
    Generate(#[from] GenerateError),
    /// A bench file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What the bench was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The input file is not what the generator writes.
    #[error("{0}; delete the data directory to generate the input again")]
    Input(String),
    /// `bench.json` could not be encoded.
    #[error("encoding {what}: {source}")]
    Json {
        /// Which file.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// The engine's default number of backup copies, for summaries written
/// before the bench recorded it.
fn default_backup_copies() -> usize {
    DEFAULT_BACKUP_COPIES
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

/// What the bench knows about its input: the options that produced it (to
/// decide reuse) and its load shape (to turn rates into expressways).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    /// Expressways.
    pub xways: u32,
    /// Generator seed.
    pub seed: u64,
    /// Simulated seconds asked of the generator.
    pub duration_secs: u32,
    /// Size of `input.csv`, to notice a file changed behind the bench's back.
    pub input_bytes: u64,
    /// Lines in `input.csv`.
    pub lines: u64,
    /// The largest Time in the input: the replay schedule lasts
    /// `last_time / speed-up` seconds.
    pub last_time: u32,
    /// Lines of the busiest simulated second, all expressways.
    pub peak_second_lines: u64,
    /// The busiest second divided by the expressways: one expressway's peak
    /// rate at real time (the generator gives every expressway the same load
    /// shape), the unit of the L-equivalent figures.
    pub peak_per_xway: f64,
}

/// Worker CPU time and memory of one run, from `getrusage(RUSAGE_CHILDREN)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// User CPU seconds.
    pub user_secs: f64,
    /// System CPU seconds.
    pub sys_secs: f64,
    /// Largest resident set of any worker process reaped so far, KiB. The
    /// kernel keeps one maximum over all reaped children, so this never goes
    /// down from one run to the next: it bounds this run's workers from above.
    pub max_rss_kib: u64,
}

/// One run of the sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRun {
    /// Replay speed-up (0: as fast as possible).
    pub speedup: f64,
    /// Whether it passed (see the module documentation).
    pub passed: bool,
    /// Why it failed, one reason per check; empty when it passed.
    pub failures: Vec<String>,
    /// The run's directory (answers, `report.json`).
    pub dir: PathBuf,
    /// Input lines the run read.
    pub input_lines: u64,
    /// Seconds the replay schedule lasts; 0 at speed-up 0.
    pub schedule_secs: f64,
    /// Seconds from the feeder's first to its last line.
    pub feeder_secs: f64,
    /// Seconds from the job's start to the last instance finishing.
    pub elapsed_secs: f64,
    /// Mean input rate the schedule asked for, lines/s (0 at speed-up 0).
    pub offered_rate: f64,
    /// Mean input rate achieved: lines / feeder seconds.
    pub achieved_rate: f64,
    /// Highest one-second input rate the feeder measured; only meaningful
    /// when the run lasts many seconds (a 1.5 s run has one full second).
    pub peak_rate: u64,
    /// The input's busiest second replayed at the speed-up the feeder
    /// actually achieved (at most the asked one): the peak rate the run
    /// sustained, without the one-second sampling of `peak_rate`.
    pub sustained_peak_rate: f64,
    /// `sustained_peak_rate` over one expressway's peak rate at real time:
    /// how many expressways a real-time run would need to offer this load.
    pub l_equivalent: f64,
    /// Answers written, all kinds.
    pub answers: u64,
    /// Answers later than their deadline.
    pub deadline_misses: u64,
    /// Checkpoints backed up during the run.
    pub checkpoints: u64,
    /// Latency per answer kind, as the sinks measured it.
    pub latency: BTreeMap<String, SinkStats>,
    /// Whether the answers validated exactly; `None` when the run failed
    /// before there were answers to validate.
    pub valid: Option<bool>,
    /// Worker CPU and memory.
    pub workers_usage: Usage,
    /// Worker CPU per input line, microseconds (user + system).
    pub cpu_us_per_tuple: f64,
    /// CPU of this process (coordinator) during the run, seconds.
    pub coordinator_cpu_secs: f64,
    /// The machine's one-minute load average when the run started (Linux),
    /// to tell a slow run from a busy machine.
    pub load_average: Option<f64>,
    /// The run's largest memory, buffer and state figures (state per key:
    /// how much a car or a segment costs).
    #[serde(default)]
    pub peaks: crate::resources::Peaks,
    /// Latency per 10 s of the replay (paced runs only).
    #[serde(default)]
    pub latency_over_time: Vec<LatencyWindow>,
    /// Whether worker memory stopped growing; `None` for a run shorter
    /// than a minute.
    #[serde(default)]
    pub memory: Option<MemoryTrend>,
}

/// `bench.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchSummary {
    /// The input.
    pub input: InputInfo,
    /// Worker processes per run.
    pub workers: usize,
    /// Partitions per operator as asked (operators not named have 1).
    pub partitions: BTreeMap<String, u32>,
    /// How instances were spread over the workers.
    #[serde(default)]
    pub placement: Placement,
    /// Whether the feeder routed in place of a forwarder operator.
    #[serde(default)]
    pub chain_forwarder: bool,
    /// Checkpoint interval, milliseconds (0: fault tolerance off).
    pub checkpoint_ms: u64,
    /// Workers holding each stateful instance's checkpoints.
    #[serde(default = "default_backup_copies")]
    pub backup_copies: usize,
    /// CPUs this machine offers.
    pub cpus: usize,
    /// Every run, in the order they ran.
    pub runs: Vec<BenchRun>,
    /// Index in `runs` of the highest passing speed-up.
    pub best: Option<usize>,
}

impl BenchSummary {
    /// The highest passing run.
    pub fn best_run(&self) -> Option<&BenchRun> {
        self.best.and_then(|i| self.runs.get(i))
    }
}

/// Runs the bench, writing progress (one table line per speed-up) to `log`.
pub fn run(
    registry: &QueryRegistry,
    program: &Path,
    options: &BenchOptions,
    log: &mut dyn Write,
) -> Result<BenchSummary, BenchError> {
    let mut speedups = check_options(options)?;
    std::fs::create_dir_all(&options.out_dir)
        .map_err(io_error(format!("creating {}", options.out_dir.display())))?;
    let input = prepare_input(options, log)?;
    let mut summary = BenchSummary {
        input,
        workers: options.workers,
        partitions: options.partitions.clone(),
        placement: options.placement,
        chain_forwarder: options.chain_forwarder,
        checkpoint_ms: options.checkpoint_ms,
        backup_copies: options.backup_copies,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        runs: Vec::new(),
        best: None,
    };
    say(log, &table_header())?;
    speedups.reverse();
    let mut lowest_failure: Option<f64> = None;
    let mut bisections = 0;
    while let Some(speedup) = speedups.pop() {
        if options.cancel.load(Ordering::SeqCst) {
            break;
        }
        let run = run_one(registry, program, options, &summary.input, speedup)?;
        say(log, &table_line(&run))?;
        if run.passed {
            if summary
                .best_run()
                .is_none_or(|b| rank(b.speedup) < rank(speedup))
            {
                summary.best = Some(summary.runs.len());
            }
        } else {
            // Everything above a failure would fail too.
            speedups.clear();
            lowest_failure = match lowest_failure {
                Some(f) if rank(f) <= rank(speedup) => Some(f),
                _ => Some(speedup),
            };
        }
        summary.runs.push(run);
        write_outputs(&summary, &options.out_dir)?;
        if speedups.is_empty() && bisections < options.bisect {
            let low = summary.best_run().map(|b| b.speedup);
            if let Some(mid) = low.zip(lowest_failure).and_then(|(l, h)| midpoint(l, h)) {
                bisections += 1;
                speedups.push(mid);
            }
        }
    }
    write_outputs(&summary, &options.out_dir)?;
    options
        .progress
        .set(BenchStage::Finished(summary.runs.len()));
    Ok(summary)
}

/// Orders speed-ups with 0 (as fast as possible) above every other.
fn rank(speedup: f64) -> f64 {
    if speedup == 0.0 {
        f64::INFINITY
    } else {
        speedup
    }
}

/// The speed-up halfway between a passing and a failing one, rounded to a
/// whole number once that is precise enough; `None` when there is nothing
/// left between them worth a run.
fn midpoint(low: f64, high: f64) -> Option<f64> {
    if high == 0.0 {
        return None;
    }
    let mid = (low + high) / 2.0;
    let mid = if mid >= 20.0 { mid.round() } else { mid };
    (mid > low * 1.02 && mid < high / 1.02).then_some(mid)
}

fn check_options(options: &BenchOptions) -> Result<Vec<f64>, BenchError> {
    if options.workers == 0 || options.workers > 256 {
        return Err(BenchError::Options(format!(
            "--workers must be between 1 and 256, not {}",
            options.workers
        )));
    }
    if let Some(bad) = options
        .speedups
        .iter()
        .find(|s| !(**s >= 0.0 && s.is_finite()))
    {
        return Err(BenchError::Options(format!(
            "speed-ups must be non-negative numbers, not {bad}"
        )));
    }
    let mut speedups = options.speedups.clone();
    speedups.sort_by(|a, b| rank(*a).total_cmp(&rank(*b)));
    speedups.dedup();
    if speedups.is_empty() {
        return Err(BenchError::Options(
            "give at least one speed-up, e.g. --speedups 50,100,200".into(),
        ));
    }
    Ok(speedups)
}

fn say(log: &mut dyn Write, line: &str) -> Result<(), BenchError> {
    writeln!(log, "{line}")
        .and_then(|()| log.flush())
        .map_err(io_error("writing the bench's progress"))
}

/// Reuses the input in `data_dir` when it was generated with the same
/// options, else generates it; then measures its load shape (also what
/// `spate lrb scaleout` runs on).
pub fn prepare_input(options: &BenchOptions, log: &mut dyn Write) -> Result<InputInfo, BenchError> {
    let dir = &options.data_dir;
    let input = dir.join("input.csv");
    let tolls = dir.join("historical-tolls.csv");
    let info_path = dir.join(INPUT_INFO_FILE);
    if let Some(info) = std::fs::read_to_string(&info_path)
        .ok()
        .and_then(|text| serde_json::from_str::<InputInfo>(&text).ok())
    {
        let same_options = info.xways == options.xways
            && info.seed == options.seed
            && info.duration_secs == options.duration_secs;
        let same_file = std::fs::metadata(&input).is_ok_and(|m| m.len() == info.input_bytes);
        if same_options && same_file && tolls.is_file() {
            say(
                log,
                &format!(
                    "reusing {} ({} lines, L={}, {} s, seed {})",
                    input.display(),
                    info.lines,
                    info.xways,
                    info.duration_secs,
                    info.seed
                ),
            )?;
            return Ok(info);
        }
    }
    say(
        log,
        &format!(
            "generating the input (L={}, {} s, seed {}) into {}",
            options.xways,
            options.duration_secs,
            options.seed,
            dir.display()
        ),
    )?;
    let started = Instant::now();
    // A stale description must not vouch for a half-written input.
    let _ = std::fs::remove_file(&info_path);
    generate(
        &GenerateOptions {
            xways: options.xways,
            seed: options.seed,
            duration_secs: options.duration_secs,
            out_dir: dir.clone(),
        },
        &mut |p| {
            let done = f64::from(p.sim_second) / f64::from(p.duration_secs.max(1));
            options.progress.set(BenchStage::Generating(done));
        },
    )?;
    let info = measure_input(options, &input)?;
    let text = serde_json::to_string_pretty(&info).map_err(|source| BenchError::Json {
        what: INPUT_INFO_FILE,
        source,
    })?;
    std::fs::write(&info_path, text)
        .map_err(io_error(format!("writing {}", info_path.display())))?;
    say(
        log,
        &format!(
            "generated {} lines in {:.1} s; busiest second {} lines ({:.0} per expressway)",
            info.lines,
            started.elapsed().as_secs_f64(),
            info.peak_second_lines,
            info.peak_per_xway
        ),
    )?;
    Ok(info)
}

/// Counts the input's lines per simulated second.
fn measure_input(options: &BenchOptions, input: &Path) -> Result<InputInfo, BenchError> {
    let file = File::open(input).map_err(io_error(format!("opening {}", input.display())))?;
    let input_bytes = file
        .metadata()
        .map_err(io_error(format!("reading {}", input.display())))?
        .len();
    let mut per_second: Vec<u64> = Vec::new();
    let mut lines = 0u64;
    for (i, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let line = line.map_err(io_error(format!("reading {}", input.display())))?;
        let time = line
            .split(',')
            .nth(1)
            .and_then(|t| t.trim().parse::<usize>().ok())
            .filter(|t| *t < 86_400)
            .ok_or_else(|| {
                BenchError::Input(format!(
                    "{} line {}: no valid Time field",
                    input.display(),
                    i + 1
                ))
            })?;
        if per_second.len() <= time {
            per_second.resize(time + 1, 0);
        }
        per_second[time] += 1;
        lines += 1;
    }
    let peak_second_lines = per_second.iter().copied().max().unwrap_or(0);
    Ok(InputInfo {
        xways: options.xways,
        seed: options.seed,
        duration_secs: options.duration_secs,
        input_bytes,
        lines,
        last_time: per_second.len().saturating_sub(1) as u32,
        peak_second_lines,
        peak_per_xway: peak_second_lines as f64 / f64::from(options.xways.max(1)),
    })
}

/// A directory name for a speed-up that sorts and reads well.
fn run_dir_name(speedup: f64) -> String {
    if speedup == 0.0 {
        "speedup-max".into()
    } else {
        format!("speedup-{speedup}")
    }
}

fn run_one(
    registry: &QueryRegistry,
    program: &Path,
    options: &BenchOptions,
    input: &InputInfo,
    speedup: f64,
) -> Result<BenchRun, BenchError> {
    let dir = options.out_dir.join(run_dir_name(speedup));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
    let params = LrbParams {
        chain_forwarder: options.chain_forwarder,
        ..LrbParams::one_partition_each(&options.data_dir, dir.clone(), speedup)
    };
    // No failures are injected, so no standby worker (the pool stays 0).
    let mut job = JobConfig::new(crate::query::NAME, serde_json::Value::Null, options.workers);
    job.partitions = options.partitions.clone();
    job.placement = options.placement;
    job.checkpoint_interval = std::time::Duration::from_millis(options.checkpoint_ms);
    job.backup_copies = options.backup_copies;
    job.cancel = options.cancel.clone();
    job.view = Some(options.progress.view.clone());
    let run_options = RunOptions {
        params: params.clone(),
        job,
    };
    *options
        .progress
        .view
        .write()
        .unwrap_or_else(|p| p.into_inner()) = ClusterView::default();
    options.progress.set(BenchStage::Running {
        speedup,
        out_dir: dir.clone(),
    });
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok());
    let children_before = usage(Who::Children);
    let self_before = usage(Who::Myself);
    let outcome = driver::run(registry, program, &run_options);
    let workers_usage = usage(Who::Children).since(&children_before);
    let coordinator = usage(Who::Myself).since(&self_before);
    let schedule_secs = if speedup > 0.0 {
        f64::from(input.last_time) / speedup
    } else {
        0.0
    };
    let mut run = BenchRun {
        speedup,
        passed: false,
        failures: Vec::new(),
        dir: dir.clone(),
        input_lines: 0,
        schedule_secs,
        feeder_secs: 0.0,
        elapsed_secs: 0.0,
        offered_rate: if schedule_secs > 0.0 {
            input.lines as f64 / schedule_secs
        } else {
            0.0
        },
        achieved_rate: 0.0,
        peak_rate: 0,
        sustained_peak_rate: 0.0,
        l_equivalent: 0.0,
        answers: 0,
        deadline_misses: 0,
        checkpoints: 0,
        latency: BTreeMap::new(),
        valid: None,
        workers_usage,
        cpu_us_per_tuple: 0.0,
        coordinator_cpu_secs: coordinator.user_secs + coordinator.sys_secs,
        load_average,
        peaks: Default::default(),
        latency_over_time: Vec::new(),
        memory: None,
    };
    match outcome {
        Ok(report) => judge(&mut run, &report, input, &params, options)?,
        Err(e) => run.failures.push(format!("the run failed: {e}")),
    }
    run.passed = run.failures.is_empty();
    Ok(run)
}

/// Fills a run's figures from its report and validation, and notes every
/// check it fails.
fn judge(
    run: &mut BenchRun,
    report: &RunReport,
    input: &InputInfo,
    params: &LrbParams,
    options: &BenchOptions,
) -> Result<(), BenchError> {
    run.input_lines = report.input_lines;
    run.elapsed_secs = report.elapsed_secs;
    run.feeder_secs = if report.input_rate > 0.0 {
        report.input_lines as f64 / report.input_rate
    } else {
        0.0
    };
    run.achieved_rate = if run.feeder_secs > 0.0 {
        report.input_lines as f64 / run.feeder_secs
    } else {
        0.0
    };
    run.peak_rate = report.peak_input_rate;
    let achieved_speedup = if run.feeder_secs > 0.0 {
        f64::from(input.last_time) / run.feeder_secs
    } else {
        0.0
    };
    let achieved_speedup = if run.speedup > 0.0 {
        achieved_speedup.min(run.speedup)
    } else {
        achieved_speedup
    };
    run.sustained_peak_rate = achieved_speedup * input.peak_second_lines as f64;
    run.l_equivalent = run.sustained_peak_rate / input.peak_per_xway.max(1.0);
    run.answers = report.answers;
    run.deadline_misses = report.deadline_misses;
    run.checkpoints = report.checkpoints;
    run.latency = report.latency.clone();
    run.peaks = report.peaks.clone();
    run.memory = memory_trend(&report.resources);
    if let Some(trend) = run.memory.as_ref().filter(|t| !t.levelled_off) {
        run.failures.push(format!(
            "worker memory kept growing faster than the state: {:.0} MiB for {} keys in the \
             run's middle third, {:.0} MiB for {} keys in its last",
            trend.middle_kib as f64 / 1024.0,
            trend.middle_keys,
            trend.last_kib as f64 / 1024.0,
            trend.last_keys
        ));
    }
    let cpu = run.workers_usage.user_secs + run.workers_usage.sys_secs;
    run.cpu_us_per_tuple = cpu * 1e6 / report.input_lines.max(1) as f64;

    if report.input_lines != input.lines {
        run.failures.push(format!(
            "read {} of the input's {} lines",
            report.input_lines, input.lines
        ));
    }
    if report.deadline_misses > 0 {
        run.failures.push(format!(
            "{} answers missed their deadline",
            report.deadline_misses
        ));
    }
    let allowed = run.schedule_secs * (1.0 + KEEP_UP_TOLERANCE) + KEEP_UP_SLACK_SECS;
    if run.speedup > 0.0 && run.feeder_secs > allowed {
        run.failures.push(format!(
            "the feeder fell behind: {:.2} s for a {:.2} s schedule",
            run.feeder_secs, run.schedule_secs
        ));
    }
    let validation = validate_with_progress(
        &ValidateOptions {
            input: params.input.clone(),
            tolls: params.tolls.clone(),
            out_dir: params.out_dir.clone(),
            speedup: if run.speedup > 0.0 { run.speedup } else { 1.0 },
            max_differences: 3,
            bad_input: BadInput::Skip,
        },
        &mut |fraction| {
            options.progress.set(BenchStage::Validating {
                speedup: run.speedup,
                fraction,
            })
        },
    );
    match validation {
        Ok(v) => {
            run.valid = Some(v.passed());
            if !v.passed() {
                let wrong: Vec<String> = v
                    .kinds()
                    .iter()
                    .filter(|(_, k)| k.missing + k.unexpected > 0)
                    .map(|(name, k)| {
                        format!("{name}: {} missing, {} unexpected", k.missing, k.unexpected)
                    })
                    .collect();
                run.failures
                    .push(format!("wrong answers ({})", wrong.join("; ")));
            }
        }
        Err(e @ (ValidateError::MissingOutput { .. } | ValidateError::Read { .. })) => {
            run.failures.push(format!("cannot validate: {e}"));
        }
        Err(e) => return Err(BenchError::Input(e.to_string())),
    }
    if run.speedup > 0.0 {
        run.latency_over_time =
            latency_over_time(&params.out_dir, run.speedup, 10.0).map_err(io_error(format!(
                "reading the answers in {}",
                params.out_dir.display()
            )))?;
    }
    if run.failures.is_empty() && !options.keep_answers {
        remove_answers(&params.out_dir)?;
    }
    Ok(())
}

/// Deletes a validated run's answer files, keeping its `report.json`.
pub fn remove_answers(dir: &Path) -> Result<(), BenchError> {
    let entries = std::fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(io_error(format!("listing {}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "csv") {
            std::fs::remove_file(&path)
                .map_err(io_error(format!("removing {}", path.display())))?;
        }
    }
    Ok(())
}

/// Whose resource use [`usage`] reads.
pub(crate) enum Who {
    /// This process.
    Myself,
    /// Every child process reaped so far.
    Children,
}

impl Usage {
    fn since(&self, before: &Usage) -> Usage {
        Usage {
            user_secs: (self.user_secs - before.user_secs).max(0.0),
            sys_secs: (self.sys_secs - before.sys_secs).max(0.0),
            max_rss_kib: self.max_rss_kib,
        }
    }
}

/// CPU time and peak memory from `getrusage`.
#[cfg(unix)]
pub(crate) fn usage(who: Who) -> Usage {
    let which = match who {
        Who::Myself => libc::RUSAGE_SELF,
        Who::Children => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: an all-zero `rusage` is a valid value, and getrusage only
    // writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage and `which` a valid selector.
    if unsafe { libc::getrusage(which, &mut ru) } != 0 {
        return Usage::default();
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        user_secs: secs(ru.ru_utime),
        sys_secs: secs(ru.ru_stime),
        // Linux reports KiB (macOS bytes; the bench documents Linux figures).
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }
}

/// No `getrusage` here: zeros.
#[cfg(not(unix))]
pub(crate) fn usage(_who: Who) -> Usage {
    Usage::default()
}

/// The progress table's header.
pub fn table_header() -> String {
    format!(
        "{:>8} {:>10} {:>10} {:>9} {:>6} {:>9} {:>9} {:>9} {:>6} {:>5} {:>8} {:>8} {:>5}  verdict",
        "speedup",
        "offered/s",
        "achieved/s",
        "peak/s",
        "L-eq",
        "p99 toll",
        "p99 bal",
        "max ms",
        "late",
        "ckpts",
        "cpu us/t",
        "rss MiB",
        "load",
    )
}

/// One run as a line of the progress table.
pub fn table_line(run: &BenchRun) -> String {
    let p99 = |kind: &str| run.latency.get(kind).map_or(0.0, |s| s.p99_ms);
    let max_ms = run.latency.values().map(|s| s.max_ms).fold(0.0, f64::max);
    let speedup = if run.speedup == 0.0 {
        "max".to_string()
    } else {
        format!("{}", run.speedup)
    };
    let verdict = if run.passed {
        "pass".to_string()
    } else {
        format!("FAIL: {}", run.failures.join("; "))
    };
    format!(
        "{:>8} {:>10.0} {:>10.0} {:>9} {:>6.1} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>5} {:>8.1} {:>8.1} {:>5}  {}",
        speedup,
        run.offered_rate,
        run.achieved_rate,
        run.peak_rate,
        run.l_equivalent,
        p99("tolls"),
        p99("balances"),
        max_ms,
        run.deadline_misses,
        run.checkpoints,
        run.cpu_us_per_tuple,
        run.workers_usage.max_rss_kib as f64 / 1024.0,
        run.load_average.map_or("-".to_string(), |l| format!("{l:.1}")),
        verdict
    )
}

fn write_outputs(summary: &BenchSummary, out_dir: &Path) -> Result<(), BenchError> {
    let json = out_dir.join("bench.json");
    let text = serde_json::to_string_pretty(summary).map_err(|source| BenchError::Json {
        what: "bench.json",
        source,
    })?;
    std::fs::write(&json, text).map_err(io_error(format!("writing {}", json.display())))?;
    let svg = out_dir.join("bench.svg");
    plot::write(&BenchFigure(summary), &svg)
        .map_err(io_error(format!("writing {} and bench.png", svg.display())))
}

/// A point of a chart: x, y, whether the run passed.
type Point = (f64, f64, bool);

/// `bench.svg`: two charts side by side, input rate against speed-up and
/// p99 latency against speed-up; runs at speed-up 0 have no x position and
/// are left out.
pub fn plot(summary: &BenchSummary) -> io::Result<String> {
    plot::svg(&BenchFigure(summary))
}

/// The figure of a bench.
struct BenchFigure<'a>(&'a BenchSummary);

/// The answer kinds whose latency `bench.svg` shows.
const PLOTTED_KINDS: [&str; 4] = ["tolls", "accidents", "balances", "expenditures"];

impl plot::Figure for BenchFigure<'_> {
    const SIZE: (u32, u32) = (1000, 420);

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> plot::Drawn<DB> {
        let summary = self.0;
        root.fill(&WHITE)?;
        let paced: Vec<&BenchRun> = summary.runs.iter().filter(|r| r.speedup > 0.0).collect();
        let points = |y: &dyn Fn(&BenchRun) -> Option<f64>| -> Vec<Point> {
            let mut points: Vec<Point> = paced
                .iter()
                .filter_map(|r| Some((r.speedup, y(r)?, r.passed)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points
        };
        let achieved = points(&|r| Some(r.achieved_rate));
        let offered = points(&|r| Some(r.offered_rate));
        let latency: Vec<Vec<Point>> = PLOTTED_KINDS
            .iter()
            .map(|kind| {
                points(&|r| {
                    let s = r.latency.get(*kind).filter(|s| s.count > 0)?;
                    Some(s.p99_ms.max(0.001))
                })
            })
            .collect();
        let title = format!(
            "Linear Road on Spate: L={} input, {} workers, {} CPUs, {} (green: pass, red: fail)",
            summary.input.xways,
            summary.workers,
            summary.cpus,
            match summary.checkpoint_ms {
                0 => "no checkpoints".to_string(),
                ms => format!("checkpoints every {ms} ms"),
            }
        );
        let (head, body) = root.split_vertically(36);
        let style = plot::anchored(plot::font(14.0, plot::INK), HPos::Center, VPos::Center);
        head.draw(&Text::new(title, (500, 20), style))?;
        let (left, right) = body.split_horizontally(500);
        let x = plot::log_range(paced.iter().map(|r| r.speedup), f64::NAN);
        let mut ticks: Vec<f64> = achieved.iter().map(|p| p.0).collect();
        ticks.dedup();

        let (area, legend_area) = left.split_vertically(340);
        let top = achieved
            .iter()
            .chain(&offered)
            .map(|p| p.1)
            .fold(1.0, f64::max);
        let mut chart = bench_chart(
            &area,
            "input rate, tuples/s",
            (x.clone(), &ticks),
            0.0..top * 1.1,
        )?;
        let offered_stroke = plot::Stroke::dashed(plot::MUTED, 2, 6, 4);
        let line: Vec<(f64, f64)> = offered.iter().map(|(x, y, _)| (*x, *y)).collect();
        offered_stroke.draw(chart.plotting_area(), line)?;
        series(&mut chart, &achieved, plot::SERIES[0])?;
        let achieved_stroke = plot::Stroke::solid(plot::SERIES[0], 3);
        let entries = [("offered", offered_stroke), ("achieved", achieved_stroke)];
        legend_row(&legend_area, &entries)?;

        let (area, legend_area) = right.split_vertically(340);
        let y = plot::log_range(latency.iter().flatten().map(|p| p.1), 5_000.0 * 1.5);
        let mut chart = bench_chart(&area, "p99 latency, ms", (x.clone(), &ticks), y.log_scale())?;
        let deadline = plot::Stroke::dashed(plot::RED, 2, 6, 4);
        deadline.draw(
            chart.plotting_area(),
            vec![(x.start, 5_000.0), (x.end, 5_000.0)],
        )?;
        let style = plot::anchored(plot::font(10.0, plot::RED), HPos::Right, VPos::Bottom);
        let text = Text::new("5 s deadline", (-4, -2), style);
        chart
            .plotting_area()
            .draw(&(EmptyElement::at((x.end, 5_000.0)) + text))?;
        let mut entries = Vec::new();
        for (i, (points, kind)) in latency.iter().zip(PLOTTED_KINDS).enumerate() {
            series(&mut chart, points, plot::SERIES[i])?;
            entries.push((kind, plot::Stroke::solid(plot::SERIES[i], 3)));
        }
        legend_row(&legend_area, &entries)
    }
}

/// A legend in one row under a chart.
fn legend_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(&str, plot::Stroke)],
) -> plot::Drawn<DB> {
    for (i, (name, stroke)) in entries.iter().enumerate() {
        let x = 70 + i as i32 * 105;
        stroke.draw(area, vec![(x, 20), (x + 20, 20)])?;
        let style = plot::anchored(plot::font(11.0, plot::INK), HPos::Left, VPos::Center);
        area.draw(&Text::new(*name, (x + 25, 20), style))?;
    }
    Ok(())
}

/// A chart of a bench: speed-up on a log x axis ticked at the runs'
/// speed-ups, `title` on y.
fn bench_chart<'a, DB, Y>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    x: (std::ops::Range<f64>, &[f64]),
    y: Y,
) -> plot::Chart<'a, DB, WithKeyPoints<LogCoord<f64>>, Y::CoordDescType>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x.0.log_scale().with_key_points(x.1.to_vec()), y)?;
    chart
        .configure_mesh()
        .x_desc("speed-up")
        .y_desc(title)
        .y_labels(6)
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xe6, 0xe6, 0xe6))
        .x_label_formatter(&|v| plot::label(*v))
        .y_label_formatter(&|v| plot::label(*v))
        .label_style(plot::font(10.5, plot::INK))
        .draw()?;
    Ok(chart)
}

/// One series of runs: a line, and a dot per run, green where it passed and
/// red where it failed.
fn series<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<DB, CT>,
    points: &[Point],
    colour: RGBColor,
) -> plot::Drawn<DB> {
    let line = points.iter().map(|(x, y, _)| (*x, *y));
    chart.draw_series(LineSeries::new(line, colour.stroke_width(2)))?;
    chart.draw_series(points.iter().map(|(x, y, passed)| {
        let fill = if *passed { plot::GREEN } else { plot::RED };
        Circle::new((*x, *y), 4, fill.filled())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_at(speedup: f64, passed: bool) -> BenchRun {
        let mut latency = BTreeMap::new();
        latency.insert(
            "tolls".to_string(),
            SinkStats {
                count: 10,
                p50_ms: 2.0,
                p99_ms: 9.0 * speedup,
                max_ms: 20.0,
                deadline_misses: 0,
            },
        );
        BenchRun {
            speedup,
            passed,
            failures: if passed {
                Vec::new()
            } else {
                vec!["late".into()]
            },
            dir: PathBuf::from("x"),
            input_lines: 1000,
            schedule_secs: 10.0 / speedup,
            feeder_secs: 10.0 / speedup,
            elapsed_secs: 11.0 / speedup,
            offered_rate: 100.0 * speedup,
            achieved_rate: 100.0 * speedup,
            peak_rate: 150 * speedup as u64,
            sustained_peak_rate: 150.0 * speedup,
            l_equivalent: speedup,
            answers: 10,
            deadline_misses: 0,
            checkpoints: 3,
            latency,
            valid: Some(passed),
            workers_usage: Usage::default(),
            cpu_us_per_tuple: 3.0,
            coordinator_cpu_secs: 0.1,
            load_average: None,
            peaks: Default::default(),
            latency_over_time: Vec::new(),
            memory: None,
        }
    }

    #[test]
    fn zero_ranks_above_every_speedup() {
        let options = BenchOptions {
            xways: 1,
            duration_secs: 60,
            seed: 0,
            data_dir: PathBuf::from("d"),
            out_dir: PathBuf::from("o"),
            workers: 1,
            partitions: BTreeMap::new(),
            placement: Placement::Spread,
            chain_forwarder: false,
            checkpoint_ms: 1000,
            backup_copies: DEFAULT_BACKUP_COPIES,
            speedups: vec![0.0, 200.0, 50.0, 50.0],
            bisect: 0,
            keep_answers: false,
            cancel: Arc::default(),
            progress: BenchProgress::default(),
        };
        assert_eq!(check_options(&options).unwrap(), vec![50.0, 200.0, 0.0]);
        let bad = BenchOptions {
            speedups: vec![-1.0],
            ..options
        };
        assert!(check_options(&bad).is_err());
    }

    #[test]
    fn midpoints_stop_when_close() {
        assert_eq!(midpoint(100.0, 200.0), Some(150.0));
        assert_eq!(midpoint(100.0, 101.0), None);
        assert_eq!(midpoint(100.0, 0.0), None);
    }

    #[test]
    fn plot_is_an_svg_with_every_paced_run() {
        let summary = BenchSummary {
            input: InputInfo {
                xways: 1,
                seed: 0,
                duration_secs: 60,
                input_bytes: 10,
                lines: 1000,
                last_time: 59,
                peak_second_lines: 30,
                peak_per_xway: 30.0,
            },
            workers: 3,
            partitions: BTreeMap::new(),
            placement: Placement::Spread,
            chain_forwarder: false,
            checkpoint_ms: 1000,
            backup_copies: DEFAULT_BACKUP_COPIES,
            cpus: 2,
            runs: vec![run_at(50.0, true), run_at(100.0, false), run_at(0.0, true)],
            best: Some(0),
        };
        let svg = plot(&summary).expect("drawing the bench");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Two paced runs, each with an achieved-rate and a latency marker.
        assert_eq!(svg.matches("<circle").count(), 4);
        // Each chart's speed-up axis is ticked at the paced runs.
        assert_eq!(svg.matches(">\n50\n</text>").count(), 2);
        assert_eq!(svg.matches(">\n100\n</text>").count(), 2);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert!(table_line(&summary.runs[1]).contains("FAIL: late"));
        assert!(table_line(&summary.runs[2]).trim_start().starts_with("max"));
    }
}
