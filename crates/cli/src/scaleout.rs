//! `spate lrb scaleout`: SEEP's scale-out experiment (issue #14). Linear
//! Road starts with one partition per operator under a load that rises (the
//! generator's ramp, L expressways, a speed-up) on small workers, each under
//! a CPU quota; the same input runs once per autoscaling policy, one after
//! the other, and `scaleout.json` and `scaleout.svg`/`.png` compare them:
//! the highest load held with no late answer, the workers it took, the
//! decisions, the cost in worker-seconds, whether the answers validate, and
//! what the coordinator spent per metrics report and per decision.
//!
//! A command of its own rather than a mode of `lrb bench`: the bench sweeps
//! speed-ups on a fixed cluster and judges each run pass or fail, while this
//! runs one rising load per policy on an elastic one and follows it over
//! time. Both share the input (`spate_lrb::bench::prepare_input`) and the
//! reference validator.
//!
//! Quotas: the feeder cannot be split, and in Spate it costs about a third of
//! what the whole query does per line, so under the same quota as the rest
//! it would cap the load long before tens of workers. The worker hosting it
//! (with the tolls and input-errors sinks) therefore gets its own, larger
//! quota, as SEEP's sources and sinks had machines of their own; every other
//! worker, pool included, gets the small one. Quotas are applied here, per
//! worker, as workers appear in the job's view.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lrb_reference::validate::{validate_with_progress, BadInput, ValidateOptions};
use serde::{Deserialize, Serialize};
use spate_engine::cluster::{current_program, CpuLimit, LocalCluster};
use spate_engine::coordinator::view::{ClusterView, SharedView};
use spate_engine::coordinator::{
    Coordinator, JobConfig, JobSummary, PolicyKind, ScaleDirection, ScalePolicy,
};
use spate_engine::plan::Placement;
use spate_engine::EngineError;
use spate_lrb::bench::{BenchOptions, BenchProgress, InputInfo};
use spate_lrb::driver::{self, RunOptions, RunReport};
use spate_lrb::plot::{write_scaleout_plot, ScaleoutRun};
use spate_lrb::query::{LrbParams, NAME};
use spate_lrb::sustained::{latency_over_time, LatencyWindow};

use crate::bench::figures::{load_averages, Machine};
use crate::progress::{self, LrbGoal};

/// What `spate lrb scaleout` runs.
#[derive(clap::Args, Clone, Debug)]
pub struct ScaleoutArgs {
    /// Expressways (L) of the generated input. The defaults are the run
    /// docs/BENCH.md shows: tens of workers on a 2-core machine.
    #[arg(long, default_value_t = 2)]
    pub xways: u32,
    /// Simulated seconds of the generated input: the generator's load rises
    /// for about the first 2,100 and then holds.
    #[arg(long, default_value_t = 2_400)]
    pub duration_secs: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Input directory, reused when it holds an input generated with the
    /// same options [default: OUT/input].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Replay speed-up.
    #[arg(long, default_value_t = 24.0)]
    pub speedup: f64,
    /// Workers the query starts on (its instances round-robin over them:
    /// with 4, the feeder and two sinks on the first, each other operator
    /// on one of the others).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Idle workers kept ready for splits (refilled after each).
    #[arg(long, default_value_t = 8)]
    pub pool: usize,
    /// The most workers a run may have, pool included.
    #[arg(long, default_value_t = 48)]
    pub max_workers: usize,
    /// CPU quota of every worker but the feeder's, in cores.
    #[arg(long, default_value_t = 0.05)]
    pub worker_cpu: f64,
    /// CPU quota of the worker hosting the feeder (which cannot be split),
    /// in cores.
    #[arg(long, default_value_t = 0.5)]
    pub io_worker_cpu: f64,
    /// Target utilisation of a partition (of --worker-cpu): low, so that a
    /// partition absorbs the load's rise and a split's pause (the catching
    /// up after it) before the next decision.
    #[arg(long, default_value_t = 0.3)]
    pub scale_threshold: f64,
    /// Utilisation below which two adjacent partitions merge.
    #[arg(long, default_value_t = 0.15)]
    pub scale_in_threshold: f64,
    /// The policies to run, in order, each on the same input.
    #[arg(long, value_delimiter = ',', default_value = "rate,threshold")]
    pub policies: Vec<PolicyKind>,
    /// Checkpoint interval of every instance, milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_ms: u64,
    /// A worker silent this long is declared failed: longer than a run's
    /// default, since a worker under a quota of hundredths of a core can be
    /// held off the CPU for a while on a busy machine.
    #[arg(long, default_value_t = 2_000)]
    pub heartbeat_timeout_ms: u64,
    /// Output directory: scaleout.json, scaleout.svg, scaleout.png and one
    /// directory per policy.
    #[arg(long, default_value = "lrb-scaleout")]
    pub out: PathBuf,
    /// Keep the answer files (deleted after validation otherwise).
    #[arg(long)]
    pub keep_answers: bool,
}

/// `scaleout.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleoutReport {
    /// The input and its load shape.
    pub input: InputInfo,
    /// Replay speed-up.
    pub speedup: f64,
    /// Workers the query started on.
    pub workers: usize,
    /// Idle workers kept ready.
    pub pool: usize,
    /// The most workers a run may have.
    pub max_workers: usize,
    /// Quota of every worker but the feeder's, cores.
    pub worker_cpu: f64,
    /// Quota of the feeder's worker, cores.
    pub io_worker_cpu: f64,
    /// Target utilisation of a partition.
    pub scale_threshold: f64,
    /// Checkpoint interval, milliseconds.
    pub checkpoint_ms: u64,
    /// Why workers ran without quotas, if they did.
    pub quotas_failed: Option<String>,
    /// Cores and load before and after all the runs.
    pub machine: Machine,
    /// One run per policy, in the order they ran.
    pub runs: Vec<PolicyRun>,
}

/// One policy's run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyRun {
    /// The policy.
    pub policy: PolicyKind,
    /// The run's directory (`report.json`, `report.svg`).
    pub dir: PathBuf,
    /// Seconds from the job's start to its end.
    pub elapsed_secs: f64,
    /// Input lines read.
    pub input_lines: u64,
    /// The highest input rate (mean over 5 s) before the first late answer,
    /// lines per second: the load the run held.
    pub held_rate: f64,
    /// `held_rate` over one expressway's peak rate at real time.
    pub held_l_equivalent: f64,
    /// When it was held, seconds into the replay.
    pub held_at_secs: f64,
    /// Workers hosting instances then.
    pub workers_at_held: usize,
    /// L-equivalent held per worker hosting instances.
    pub l_per_worker: f64,
    /// L-equivalent held per core of quota of the workers hosting instances.
    pub l_per_core: f64,
    /// Where the first window with a late answer starts, seconds into the
    /// replay; `None`: no answer was late.
    pub first_late_secs: Option<f64>,
    /// The most workers hosting instances at once.
    pub peak_workers: usize,
    /// The most partitions of all operators at once.
    pub peak_partitions: usize,
    /// Policy decisions carried out.
    pub decisions: usize,
    /// Splits (one per instance split) and merges.
    pub splits: usize,
    /// Merges.
    pub merges: usize,
    /// Seconds of every live worker, pool included.
    pub worker_secs: f64,
    /// Answers written.
    pub answers: u64,
    /// Answers later than their deadline.
    pub late_answers: u64,
    /// Whether the answers matched the reference exactly.
    pub valid: bool,
    /// The load average when the run started and ended.
    pub load: (f64, f64),
    /// What the coordinator spent.
    pub coordinator: CoordinatorCost,
    /// Latency per 5 s of the replay.
    pub latency: Vec<LatencyWindow>,
}

/// The coordinator's CPU: its threads (main loop, one reader per worker,
/// heartbeats, leases, accepting) read from `/proc/self/task` ten times a
/// second.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CoordinatorCost {
    /// CPU seconds of every coordinator thread while the job ran.
    pub cpu_secs: f64,
    /// CPU seconds of its main loop (the one thread every decision, report
    /// and backup acknowledgement goes through).
    pub loop_cpu_secs: f64,
    /// Seconds of steady running (no reconfiguration) with at least 30
    /// workers alive, pool included, that the figures below are from.
    pub steady_secs_at_30: f64,
    /// Mean workers alive then.
    pub workers_at_30: f64,
    /// CPU per second then, all threads, milliseconds.
    pub ms_per_sec_at_30: Option<f64>,
    /// CPU per instance metrics report then (each instance reports once a
    /// second; heartbeats and backup acknowledgements included),
    /// microseconds.
    pub us_per_report_at_30: Option<f64>,
    /// The main loop's share of one core then.
    pub loop_share_at_30: Option<f64>,
    /// Main-loop CPU per worker-second then, microseconds.
    pub loop_us_per_worker_sec_at_30: Option<f64>,
    /// Workers at which the main loop would use a whole core, at that cost.
    pub loop_saturates_at_workers: Option<f64>,
    /// CPU per decision above the steady rate, all threads, milliseconds:
    /// mean and most.
    pub ms_per_decision: Option<(f64, f64)>,
    /// Of which the main loop's, milliseconds: mean and most.
    pub loop_ms_per_decision: Option<(f64, f64)>,
    /// Decisions carried out with at least 30 workers alive.
    pub decisions_at_30: usize,
}

/// One reading of the coordinator's threads.
#[derive(Clone, Copy, Debug)]
struct CpuSample {
    /// Milliseconds on this watcher's clock.
    at_ms: f64,
    /// Milliseconds since the job started, as last published.
    job_ms: Option<u64>,
    /// CPU nanoseconds of every coordinator thread.
    cpu_ns: u64,
    /// CPU nanoseconds of the main loop's thread.
    loop_ns: u64,
    /// Workers alive (pool included).
    workers: usize,
    /// Instances deployed (each reports once a second).
    instances: usize,
}

/// The thread the job (hence the coordinator's main loop) runs on; other
/// coordinator threads are named `spate-coord-*` by the engine.
const LOOP_THREAD: &str = "spate-coord-job";
/// How often the watcher reads the view and the threads.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// The width of the latency windows, seconds of the replay.
const WINDOW_SECS: f64 = 5.0;
/// The deadline of tolls and balances, the kinds with the tightest one.
const DEADLINE_MS: f64 = 5_000.0;
/// Workers from which the coordinator's cost is reported.
const MANY_WORKERS: usize = 30;

/// Runs the experiment.
pub fn run(args: &ScaleoutArgs) -> Result<()> {
    check(args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let cancel = crate::cancel_on_ctrl_c();
    let data_dir = args.data.clone().unwrap_or_else(|| args.out.join("input"));
    let options = BenchOptions {
        xways: args.xways,
        duration_secs: args.duration_secs,
        seed: args.seed,
        data_dir: data_dir.clone(),
        out_dir: args.out.clone(),
        workers: args.workers,
        partitions: BTreeMap::new(),
        placement: Placement::Spread,
        chain_forwarder: false,
        checkpoint_ms: args.checkpoint_ms,
        backup_copies: spate_engine::coordinator::DEFAULT_BACKUP_COPIES,
        speedups: vec![args.speedup],
        bisect: 0,
        keep_answers: args.keep_answers,
        cancel: cancel.clone(),
        progress: BenchProgress::default(),
    };
    let input = spate_lrb::bench::prepare_input(&options, &mut std::io::stderr())?;
    let loadavg = || load_averages(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
    let load_before = loadavg();
    let mut runs = Vec::new();
    let mut reports = Vec::new();
    let mut quotas_failed = None;
    for policy in &args.policies {
        if cancel.load(Ordering::SeqCst) {
            bail!("cancelled");
        }
        let (run, report, failed) = run_policy(args, &data_dir, &input, *policy, &cancel)?;
        print_run(&run);
        quotas_failed = quotas_failed.or(failed);
        runs.push(run);
        reports.push(report);
    }
    let report = ScaleoutReport {
        input,
        speedup: args.speedup,
        workers: args.workers,
        pool: args.pool,
        max_workers: args.max_workers,
        worker_cpu: args.worker_cpu,
        io_worker_cpu: args.io_worker_cpu,
        scale_threshold: args.scale_threshold,
        checkpoint_ms: args.checkpoint_ms,
        quotas_failed,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_before,
            load_after: loadavg(),
        },
        runs,
    };
    let json = args.out.join("scaleout.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let figure = args.out.join("scaleout.svg");
    let drawn: Vec<ScaleoutRun<'_>> = report
        .runs
        .iter()
        .zip(&reports)
        .map(|(run, r)| ScaleoutRun {
            name: run.policy.to_string(),
            report: r,
            latency: &run.latency,
        })
        .collect();
    let title = format!(
        "Linear Road scale out: L={}, {} s at speed-up {}, workers of {} cores (feeder's {})",
        report.input.xways,
        report.input.last_time,
        args.speedup,
        args.worker_cpu,
        args.io_worker_cpu
    );
    write_scaleout_plot(&title, &drawn, &figure)
        .with_context(|| format!("cannot write {}", figure.display()))?;
    print!("{}", table(&report));
    if let Some(why) = &report.quotas_failed {
        println!("warning: workers ran without CPU quotas ({why}): the figures say little");
    }
    println!("figures: {} and {}", json.display(), figure.display());
    Ok(())
}

/// Options that cannot make an experiment.
fn check(args: &ScaleoutArgs) -> Result<()> {
    if !(args.speedup > 0.0 && args.speedup.is_finite()) {
        bail!("--speedup must be a positive number: the load rises with the input's Time");
    }
    for (flag, cores) in [
        ("--worker-cpu", args.worker_cpu),
        ("--io-worker-cpu", args.io_worker_cpu),
    ] {
        if !(cores > 0.0 && cores.is_finite()) {
            bail!("{flag} must be a positive number of cores, not {cores}");
        }
    }
    if args.workers == 0 || args.max_workers < args.workers + args.pool {
        bail!(
            "--max-workers ({}) must allow the --workers ({}, at least 1) and --pool ({}) the runs start with",
            args.max_workers,
            args.workers,
            args.pool
        );
    }
    if !(0.0..1.0).contains(&args.scale_in_threshold)
        || !(args.scale_in_threshold..=1.0).contains(&args.scale_threshold)
        || args.scale_threshold == args.scale_in_threshold
    {
        bail!("give 0 <= --scale-in-threshold < --scale-threshold <= 1");
    }
    if args.policies.is_empty() {
        bail!("give at least one policy: --policies rate,threshold");
    }
    Ok(())
}

/// Runs the query once under `policy`; returns its figures, its report and
/// why quotas could not be applied, if so.
fn run_policy(
    args: &ScaleoutArgs,
    data_dir: &Path,
    input: &InputInfo,
    policy: PolicyKind,
    cancel: &Arc<AtomicBool>,
) -> Result<(PolicyRun, RunReport, Option<String>)> {
    let dir = args.out.join(policy.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let params = LrbParams::one_partition_each(data_dir, dir.clone(), args.speedup);
    let token = crate::control::ClusterToken::for_local_run("")?;
    let mut job = JobConfig::new(NAME, serde_json::Value::Null, args.workers);
    job.pool = args.pool;
    job.checkpoint_interval = Duration::from_millis(args.checkpoint_ms);
    job.heartbeat_timeout = Duration::from_millis(args.heartbeat_timeout_ms);
    // Tens of workers start (and deploy) at once on a loaded machine.
    job.startup_timeout = Duration::from_secs(120);
    job.autoscale = Some(ScalePolicy {
        kind: policy,
        max_workers: Some(args.max_workers),
        threshold: args.scale_threshold,
        low_threshold: args.scale_in_threshold,
        ..ScalePolicy::default()
    });
    job.worker_cpu = Some(args.worker_cpu);
    job.token = token.value().to_string();
    job.cancel = cancel.clone();
    let view = SharedView::default();
    job.view = Some(view.clone());
    let options = RunOptions {
        params: params.clone(),
        job,
    };
    let load = || load_averages(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
    let load_before = load().first().copied().unwrap_or(0.0);
    eprintln!(
        "scale out under the {policy} policy: {} workers of {} cores (the feeder's {}), pool {}, at most {}; answers in {}",
        args.workers,
        args.worker_cpu,
        args.io_worker_cpu,
        args.pool,
        args.max_workers,
        dir.display()
    );
    let watcher = Watcher::start(view.clone(), args.worker_cpu, args.io_worker_cpu)?;
    let watch =
        progress::watch_lrb_run(view, LrbGoal::of(&params.input, args.speedup, dir.clone()));
    let program = current_program()?;
    let outcome = std::thread::Builder::new()
        .name(LOOP_THREAD.into())
        .spawn(move || driver::run_with(&options, |config| launch(config, &program)))
        .context("cannot start the job's thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the job's thread panicked"));
    let (samples, quotas_failed) = watcher.finish();
    let report = match outcome.and_then(|r| r.context("the Linear Road run failed")) {
        Ok(report) => report,
        Err(e) => {
            drop(watch);
            return Err(e);
        }
    };
    watch.finish(progress::lrb_finished(&report));
    let valid = validate(&params)?;
    let latency = latency_over_time(&dir, args.speedup, WINDOW_SECS)
        .with_context(|| format!("cannot read the answers in {}", dir.display()))?;
    if !args.keep_answers {
        spate_lrb::bench::remove_answers(&dir)?;
    }
    let load_after = load().first().copied().unwrap_or(0.0);
    let run = figures(
        args,
        input,
        policy,
        &report,
        latency,
        valid,
        &samples,
        (load_before, load_after),
    );
    Ok((run, report, quotas_failed))
}

/// Starts the job's workers without quotas (the watcher gives each its own)
/// and runs the coordinator on this thread.
fn launch(config: &JobConfig, program: &Path) -> Result<JobSummary, EngineError> {
    let coordinator = Coordinator::bind("127.0.0.1:0")?;
    let mut cluster = LocalCluster::spawn(
        config.workers + config.pool,
        program,
        &coordinator.addr().to_string(),
        None,
        &config.token,
    )?;
    let result = coordinator.run(crate::registry(), config, &mut cluster);
    cluster.shutdown(Duration::from_secs(5));
    result
}

/// Checks the run's answers against the reference implementation.
fn validate(params: &LrbParams) -> Result<bool> {
    let report = validate_with_progress(
        &ValidateOptions {
            input: params.input.clone(),
            tolls: params.tolls.clone(),
            out_dir: params.out_dir.clone(),
            speedup: params.speedup,
            max_differences: 3,
            bad_input: BadInput::Skip,
        },
        &mut |_| {},
    )?;
    if !report.passed() {
        eprint!("{report}");
    }
    Ok(report.passed())
}

/// Gives each worker its quota as it appears, and reads the coordinator's
/// threads, until the job ends.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<CpuSample>, Option<String>)>,
}

impl Watcher {
    fn start(view: SharedView, worker_cpu: f64, io_worker_cpu: f64) -> Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("scaleout-watch".into())
            .spawn(move || {
                let started = Instant::now();
                let mut limits: BTreeMap<u32, CpuLimit> = BTreeMap::new();
                let mut failed: Option<String> = None;
                let mut samples = Vec::new();
                while !stopped.load(Ordering::SeqCst) {
                    let seen = Seen::of(&view.read().unwrap_or_else(|p| p.into_inner()));
                    if let (Some(feeder), None) = (seen.feeder_worker, &failed) {
                        for (index, pid) in &seen.workers {
                            if limits.contains_key(pid) {
                                continue;
                            }
                            let cores = if *index == feeder {
                                io_worker_cpu
                            } else {
                                worker_cpu
                            };
                            match CpuLimit::apply(*pid, cores) {
                                Ok(limit) => {
                                    limits.insert(*pid, limit);
                                }
                                Err(why) => {
                                    tracing::warn!(
                                        "cannot limit workers' CPU ({why}); they run unlimited"
                                    );
                                    failed = Some(why);
                                }
                            }
                        }
                    }
                    let (cpu_ns, loop_ns) = coordinator_cpu();
                    samples.push(CpuSample {
                        at_ms: started.elapsed().as_secs_f64() * 1000.0,
                        job_ms: seen.job_ms,
                        cpu_ns,
                        loop_ns,
                        workers: seen.workers.len(),
                        instances: seen.instances,
                    });
                    std::thread::sleep(WATCH_EVERY);
                }
                // The limits go (their cgroups are removed) once the
                // workers have exited.
                drop(limits);
                (samples, failed)
            })
            .context("cannot start the quota watcher")?;
        Ok(Watcher { stop, thread })
    }

    /// Stops watching: the samples, and why quotas failed, if they did.
    fn finish(self) -> (Vec<CpuSample>, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| (Vec::new(), Some("the quota watcher panicked".into())))
    }
}

/// What the watcher needs of the view.
struct Seen {
    /// Live workers: (index, pid).
    workers: Vec<(u32, u32)>,
    /// The worker hosting the feeder, once deployed.
    feeder_worker: Option<u32>,
    /// Instances deployed.
    instances: usize,
    /// Milliseconds since the job started, while it runs.
    job_ms: Option<u64>,
}

impl Seen {
    fn of(view: &ClusterView) -> Seen {
        let feeder_worker = view
            .operators
            .iter()
            .find(|o| o.kind == "Source")
            .and_then(|o| o.instances.first())
            .map(|i| i.worker.0);
        Seen {
            workers: view
                .workers
                .iter()
                .filter(|w| w.alive)
                .map(|w| (w.index.0, w.pid))
                .collect(),
            feeder_worker,
            instances: view.operators.iter().map(|o| o.instances.len()).sum(),
            job_ms: (view.state == spate_engine::coordinator::JobState::Running)
                .then_some(view.elapsed_ms),
        }
    }
}

/// CPU nanoseconds of this process's coordinator threads, and of its main
/// loop's (`/proc/self/task/*/schedstat`: time on a CPU, in ns).
fn coordinator_cpu() -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    let (mut all, mut main) = (0, 0);
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let name = name.trim_end();
        if !name.starts_with("spate-coord") {
            continue;
        }
        let ns: u64 = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        all += ns;
        if name == LOOP_THREAD {
            main += ns;
        }
    }
    (all, main)
}

/// The run's figures from its report, answers and samples.
#[allow(clippy::too_many_arguments)]
fn figures(
    args: &ScaleoutArgs,
    input: &InputInfo,
    policy: PolicyKind,
    report: &RunReport,
    latency: Vec<LatencyWindow>,
    valid: bool,
    samples: &[CpuSample],
    load: (f64, f64),
) -> PolicyRun {
    let first_late_secs = latency
        .iter()
        .find(|w| w.max_ms > DEADLINE_MS)
        .map(|w| w.from_secs);
    let (held_at_secs, held_rate) = held(&report.input_per_second, first_late_secs);
    let workers_at = |secs: f64| {
        report
            .history
            .iter()
            .min_by_key(|p| (p.at_ms as f64 - secs * 1000.0).abs() as u64)
            .map_or(0, |p| p.workers)
    };
    let workers_at_held = workers_at(held_at_secs);
    let held_l_equivalent = held_rate / input.peak_per_xway.max(1.0);
    let cores = args.io_worker_cpu + workers_at_held.saturating_sub(1) as f64 * args.worker_cpu;
    let mut decisions: Vec<u32> = report
        .scale_events
        .iter()
        .filter_map(|e| e.decision)
        .collect();
    decisions.dedup();
    let splits = report
        .scale_events
        .iter()
        .filter(|e| e.direction == ScaleDirection::Out)
        .map(|e| e.partitions_after.saturating_sub(e.partitions_before))
        .sum();
    PolicyRun {
        policy,
        dir: args.out.join(policy.to_string()),
        elapsed_secs: report.elapsed_secs,
        input_lines: report.input_lines,
        held_rate,
        held_l_equivalent,
        held_at_secs,
        workers_at_held,
        l_per_worker: held_l_equivalent / workers_at_held.max(1) as f64,
        l_per_core: held_l_equivalent / cores,
        first_late_secs,
        peak_workers: report.history.iter().map(|p| p.workers).max().unwrap_or(0),
        peak_partitions: report
            .history
            .iter()
            .map(|p| p.partitions.values().sum::<usize>())
            .max()
            .unwrap_or(0),
        decisions: decisions.len(),
        splits,
        merges: report
            .scale_events
            .iter()
            .filter(|e| e.direction == ScaleDirection::In)
            .count(),
        worker_secs: report.worker_secs,
        answers: report.answers,
        late_answers: report.deadline_misses,
        valid,
        load,
        coordinator: coordinator_cost(samples, report),
        latency,
    }
}

/// The highest 5-second mean of the input rate among the seconds before
/// `until` (all of them when `None`): (where that stretch ends, its rate).
fn held(per_second: &[u64], until: Option<f64>) -> (f64, f64) {
    let end = until.map_or(per_second.len(), |t| {
        (t.max(0.0) as usize).min(per_second.len())
    });
    let span = (WINDOW_SECS as usize).max(1);
    (span..=end)
        .map(|to| {
            let sum: u64 = per_second[to - span..to].iter().sum();
            (to as f64, sum as f64 / span as f64)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0.0, 0.0))
}

/// What the coordinator spent, from the watcher's samples and the run's
/// decisions.
fn coordinator_cost(samples: &[CpuSample], report: &RunReport) -> CoordinatorCost {
    // The job's clock on the watcher's: the published elapsed time is at
    // most as late as the reading, so the smallest difference is closest.
    let Some(offset) = samples
        .iter()
        .filter_map(|s| Some(s.at_ms - s.job_ms? as f64))
        .min_by(f64::total_cmp)
    else {
        return CoordinatorCost::default();
    };
    let running: Vec<(f64, &CpuSample)> = samples
        .iter()
        .filter(|s| s.job_ms.is_some())
        .map(|s| (s.at_ms - offset, s))
        .collect();
    let (Some(first), Some(last)) = (running.first(), running.last()) else {
        return CoordinatorCost::default();
    };
    let secs = |ns: u64| ns as f64 / 1e9;
    // Each decision from its start until its last part runs, plus a second
    // for the checkpoints and replays that follow.
    let mut windows: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
    for e in &report.scale_events {
        let Some(d) = e.decision else { continue };
        let (from, to) = (
            e.decided_ms as f64,
            (e.decided_ms + e.pause_ms) as f64 + 1000.0,
        );
        let w = windows.entry(d).or_insert((from, to));
        *w = (w.0.min(from), w.1.max(to));
    }
    let busy = |t: f64| windows.values().any(|(a, b)| t >= *a - 1000.0 && t <= *b);
    // Steady seconds with many workers: (seconds, cpu, loop cpu, workers,
    // report-seconds).
    let mut steady = (0.0, 0.0, 0.0, 0.0, 0.0);
    for pair in running.windows(2) {
        let ((t0, a), (t1, b)) = (pair[0], pair[1]);
        let dt = (t1 - t0) / 1000.0;
        if b.workers < MANY_WORKERS || busy(t0) || busy(t1) || dt <= 0.0 {
            continue;
        }
        steady.0 += dt;
        steady.1 += secs(b.cpu_ns.saturating_sub(a.cpu_ns));
        steady.2 += secs(b.loop_ns.saturating_sub(a.loop_ns));
        steady.3 += b.workers as f64 * dt;
        steady.4 += b.instances as f64 * dt;
    }
    let (steady_secs, cpu, loop_cpu, worker_secs, reports) = steady;
    let some = |v: f64| (steady_secs >= 1.0).then_some(v);
    let loop_per_worker_sec = some(loop_cpu / worker_secs.max(1e-9));
    // CPU at a moment of the job, interpolated between readings.
    let at = |t: f64, pick: fn(&CpuSample) -> u64| -> f64 {
        let i = running.partition_point(|(s, _)| *s < t);
        match (running.get(i.wrapping_sub(1)), running.get(i)) {
            (Some((t0, a)), Some((t1, b))) if t1 > t0 => {
                let f = (t - t0) / (t1 - t0);
                secs(pick(a)) + f * (secs(pick(b)) - secs(pick(a)))
            }
            (_, Some((_, b))) => secs(pick(b)),
            (Some((_, a)), None) => secs(pick(a)),
            (None, None) => 0.0,
        }
    };
    let mut per_decision = Vec::new();
    let mut decisions_at_30 = 0;
    for (from, to) in windows.values() {
        let before = from - 2000.0;
        let rate = |pick: fn(&CpuSample) -> u64| (at(*from, pick) - at(before, pick)) / 2.0;
        let excess = |pick: fn(&CpuSample) -> u64| {
            let spent = at(*to, pick) - at(*from, pick);
            (spent - rate(pick) * (to - from) / 1000.0).max(0.0) * 1000.0
        };
        per_decision.push((excess(|s| s.cpu_ns), excess(|s| s.loop_ns)));
        let workers = running
            .iter()
            .find(|(t, _)| t >= from)
            .map_or(0, |(_, s)| s.workers);
        decisions_at_30 += usize::from(workers >= MANY_WORKERS);
    }
    let mean_max = |values: Vec<f64>| {
        (!values.is_empty()).then(|| {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            (mean, values.iter().copied().fold(0.0, f64::max))
        })
    };
    CoordinatorCost {
        cpu_secs: secs(last.1.cpu_ns.saturating_sub(first.1.cpu_ns)),
        loop_cpu_secs: secs(last.1.loop_ns.saturating_sub(first.1.loop_ns)),
        steady_secs_at_30: steady_secs,
        workers_at_30: worker_secs / steady_secs.max(1e-9),
        ms_per_sec_at_30: some(cpu * 1000.0 / steady_secs.max(1e-9)),
        us_per_report_at_30: some(cpu * 1e6 / reports.max(1e-9)),
        loop_share_at_30: some(loop_cpu / steady_secs.max(1e-9)),
        loop_us_per_worker_sec_at_30: loop_per_worker_sec.map(|v| v * 1e6),
        loop_saturates_at_workers: loop_per_worker_sec.filter(|v| *v > 0.0).map(|v| 1.0 / v),
        ms_per_decision: mean_max(per_decision.iter().map(|d| d.0).collect()),
        loop_ms_per_decision: mean_max(per_decision.iter().map(|d| d.1).collect()),
        decisions_at_30,
    }
}

/// One line per finished run, as it finishes.
fn print_run(run: &PolicyRun) {
    println!(
        "{}: held {:.0} lines/s (L-equivalent {:.1}) on {} workers; peak {} workers, {} decisions, {} late answers, answers {}",
        run.policy,
        run.held_rate,
        run.held_l_equivalent,
        run.workers_at_held,
        run.peak_workers,
        run.decisions,
        run.late_answers,
        if run.valid { "valid" } else { "WRONG" }
    );
}

/// One figure of the comparison: its label and how to read it off a run.
type TableRow<'a> = (&'static str, Box<dyn Fn(&PolicyRun) -> String + 'a>);

/// The comparison as a table, one row per figure, one column per policy.
fn table(report: &ScaleoutReport) -> String {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let pair =
        |v: Option<(f64, f64)>| v.map_or("-".to_string(), |(m, x)| format!("{m:.1} / {x:.1}"));
    let rows: Vec<TableRow> = vec![
        (
            "highest load held, lines/s",
            Box::new(|r| format!("{:.0}", r.held_rate)),
        ),
        (
            "  as L-equivalent",
            Box::new(|r| format!("{:.1}", r.held_l_equivalent)),
        ),
        (
            "  at, s into the replay",
            Box::new(|r| format!("{:.0}", r.held_at_secs)),
        ),
        ("  on workers", Box::new(|r| r.workers_at_held.to_string())),
        (
            "  L per worker (SEEP: 7 per VM)",
            Box::new(|r| format!("{:.2}", r.l_per_worker)),
        ),
        (
            "  L per core of quota",
            Box::new(|r| format!("{:.1}", r.l_per_core)),
        ),
        (
            "first late answer, s",
            Box::new(|r| opt(r.first_late_secs, 0)),
        ),
        (
            "workers hosting, peak",
            Box::new(|r| r.peak_workers.to_string()),
        ),
        (
            "partitions, peak",
            Box::new(|r| r.peak_partitions.to_string()),
        ),
        ("decisions", Box::new(|r| r.decisions.to_string())),
        (
            "  partitions added / merges",
            Box::new(|r| format!("{} / {}", r.splits, r.merges)),
        ),
        (
            "worker-seconds",
            Box::new(|r| format!("{:.0}", r.worker_secs)),
        ),
        (
            "answers late / all",
            Box::new(|r| format!("{} / {}", r.late_answers, r.answers)),
        ),
        (
            "answers validate",
            Box::new(|r| (if r.valid { "yes" } else { "NO" }).to_string()),
        ),
        ("run, s", Box::new(|r| format!("{:.0}", r.elapsed_secs))),
        (
            "load average start / end",
            Box::new(|r| format!("{:.1} / {:.1}", r.load.0, r.load.1)),
        ),
        (
            "coordinator CPU s (main loop)",
            Box::new(|r| {
                format!(
                    "{:.1} ({:.1})",
                    r.coordinator.cpu_secs, r.coordinator.loop_cpu_secs
                )
            }),
        ),
        (
            "  steady s at 30+ workers (mean)",
            Box::new(|r| {
                format!(
                    "{:.0} ({:.0})",
                    r.coordinator.steady_secs_at_30, r.coordinator.workers_at_30
                )
            }),
        ),
        (
            "  ms CPU per s there",
            Box::new(|r| opt(r.coordinator.ms_per_sec_at_30, 1)),
        ),
        (
            "  us per metrics report there",
            Box::new(|r| opt(r.coordinator.us_per_report_at_30, 0)),
        ),
        (
            "  main loop, share of a core",
            Box::new(|r| opt(r.coordinator.loop_share_at_30, 3)),
        ),
        (
            "  main loop saturates at workers",
            Box::new(|r| opt(r.coordinator.loop_saturates_at_workers, 0)),
        ),
        (
            "  ms per decision, mean / most",
            Box::new(|r| pair(r.coordinator.ms_per_decision)),
        ),
        (
            "  of it main loop, mean / most",
            Box::new(|r| pair(r.coordinator.loop_ms_per_decision)),
        ),
        (
            "  decisions at 30+ workers",
            Box::new(|r| r.coordinator.decisions_at_30.to_string()),
        ),
    ];
    let mut out = format!(
        "\nLinear Road scale out: L={}, {} simulated s at speed-up {} ({} lines; one expressway's peak {:.0}/s);\n\
         workers of {} cores, the feeder's {}; target utilisation {}; {} cores, load {:?} before, {:?} after\n",
        report.input.xways,
        report.input.last_time,
        report.speedup,
        report.input.lines,
        report.input.peak_per_xway,
        report.worker_cpu,
        report.io_worker_cpu,
        report.scale_threshold,
        report.machine.cpus,
        report.machine.load_before,
        report.machine.load_after,
    );
    out += &format!("{:<34}", "");
    for run in &report.runs {
        out += &format!(" {:>16}", run.policy.to_string());
    }
    out.push('\n');
    for (name, value) in rows {
        out += &format!("{name:<34}");
        for run in &report.runs {
            out += &format!(" {:>16}", value(run));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_held_is_the_best_five_seconds_before_the_first_late_answer() {
        let per_second = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        // No late answer: the last five seconds.
        assert_eq!(held(&per_second, None), (10.0, 80.0));
        // Late from second 7 on: seconds 2 to 6.
        assert_eq!(held(&per_second, Some(7.0)), (7.0, 50.0));
        // Late before five seconds passed: nothing was held.
        assert_eq!(held(&per_second, Some(3.0)), (0.0, 0.0));
    }
}
