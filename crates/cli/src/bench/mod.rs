//! `spate bench ...`: benchmarks of the engine itself. `bench state` runs
//! the `kvstore` query with a chosen amount of keyed state under a steady
//! input rate on a local cluster, then splits the store, merges it back and
//! kills its worker, and reports what each cost: processing pauses and
//! latency around them, recovery time, checkpoint bytes and CPU, peak
//! memory (issue #15; docs/BENCH.md "Large state").
//!
//! Each step is asked for (as `spate scale` and `spate kill` would) once the
//! previous one is over and the job has settled, rather than at times fixed
//! in advance: how long the load and each step take grows with the state.

pub(crate) mod figures;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use spate_engine::cluster::{current_program, run_local};
use spate_engine::coordinator::view::{ClusterView, JobCommand, SharedView};
use spate_engine::coordinator::{
    EventKind, JobConfig, JobState, JobSummary, RecoveryTimeline, Refused, ScaleDirection,
};
use spate_engine::wire::MAX_CONTROL_FRAME;
use spate_examples::latency::{read_windows, LatencyWindow};

use crate::progress::{Progress, Status};
use figures::{
    checkpoint_bytes_for, checkpoint_cpu, coordinator_between, keys_for, latency_between,
    load_averages, process_cpu_secs, status_kib, CheckpointFigures, CoordinatorReading,
    CounterSample, Machine, MemoryFigures, RecoveryFigures, ScaleFigures, StateBenchReport,
};

/// The engine's benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Large keyed state: split, merge and kill a store holding --state-mb
    /// MB under a steady input rate; report pauses, latency, recovery time,
    /// checkpoint cost and peak memory (OUT/state-bench.json).
    State(StateArgs),
}

/// What `bench state` runs.
#[derive(clap::Args, Clone, Debug)]
pub struct StateArgs {
    /// Megabytes (10^6 bytes) of encoded keyed state in the store.
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub state_mb: u64,
    /// Bytes of each value (fewer, larger values load faster).
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub value_bytes: u64,
    /// Puts a second once the state is loaded (the steady input rate).
    #[arg(long, default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// Checkpoint interval, milliseconds.
    #[arg(long, default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub checkpoint_ms: u64,
    /// Seconds to let the job settle after the load and after each step
    /// [default: 5, plus 1 per 100 MB of state].
    #[arg(long)]
    pub settle_secs: Option<f64>,
    /// Keep a warm standby of the store on a pool worker once its backup
    /// holds this many megabytes, and wait for it before the kill, so that
    /// the recovery restores from it (0: no standby).
    #[arg(long, default_value_t = 0)]
    pub standby_mb: u64,
    /// Output directory: state-bench.json and the latency windows.
    #[arg(long, default_value = "state-bench")]
    pub out: PathBuf,
}

/// The store's operator name in the `kvstore` query.
const STORE: &str = "store";
/// How long a worker may go unheard (and without its lease).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the run is observed.
const POLL: Duration = Duration::from_millis(50);
/// Latency counted around an event: from this long before it to the end
/// of the settling time after it (when the next step is asked for), so
/// that the backlog it left is in.
const BEFORE_MS: u64 = 1_000;

/// Runs a `spate bench` command.
pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::State(args) => state(&args),
    }
}

/// The keys `args` make and the settling time, or why `args` cannot run.
fn check(args: &StateArgs) -> Result<(u64, f64)> {
    let keys = keys_for(args.state_mb, args.value_bytes);
    if keys == 0 || keys > u64::from(u32::MAX) {
        bail!(
            "--state-mb {} with --value-bytes {} makes {keys} keys; the store takes 1 to {} keys: change --value-bytes",
            args.state_mb,
            args.value_bytes,
            u32::MAX
        );
    }
    let checkpoint = checkpoint_bytes_for(keys, args.value_bytes);
    if checkpoint > MAX_CONTROL_FRAME as u64 {
        bail!(
            "--state-mb {} makes checkpoints of about {:.0} MB, above the {:.0} MB the engine sends as one message: ask for less state",
            args.state_mb,
            checkpoint as f64 / 1e6,
            MAX_CONTROL_FRAME as f64 / 1e6
        );
    }
    let settle = match args.settle_secs {
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => s,
        Some(s) => {
            bail!("--settle-secs must be a number of seconds above 0 (at most 3600), not {s}")
        }
        None => 5.0 + args.state_mb as f64 / 100.0,
    };
    Ok((keys, settle))
}

/// Runs `bench state`.
fn state(args: &StateArgs) -> Result<()> {
    let (keys, settle) = check(args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output directory {}", args.out.display()))?;
    let out = args
        .out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.out.display()))?;
    let latency_file = out.join("latency.jsonl");
    let stop_file = out.join("stop");
    for file in [&latency_file, &stop_file] {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", file.display()))
            }
            _ => {}
        }
    }
    let params = serde_json::json!({
        "keys": keys,
        "value_bytes": args.value_bytes,
        "hold_rate": args.rate,
        // The stop file ends the hold phase; this only bounds it.
        "hold_secs": 24 * 3600,
        "latency_file": latency_file.to_string_lossy(),
        "stop_file": stop_file.to_string_lossy(),
    });
    let (commands, command_rx) = crossbeam_channel::unbounded();
    let view = SharedView::default();
    let mut config = JobConfig::new(spate_examples::kvstore::NAME, params, 3);
    // One pool worker for the split's new part, one for the recovery.
    config.pool = 2;
    config.checkpoint_interval = Duration::from_millis(args.checkpoint_ms);
    // Moving a gigabyte backup through the coordinator for a split, a merge
    // or a recovery on a loaded machine can hold up its leases for longer
    // than the default 500 ms, and a worker without its lease stops; the
    // kill is detected by its broken connection, whatever this says.
    config.heartbeat_timeout = HEARTBEAT_TIMEOUT;
    config.standby_min_bytes = (args.standby_mb > 0).then_some(args.standby_mb * 1_000_000);
    config.view = Some(view.clone());
    config.commands = Some(command_rx);
    config.cancel = crate::cancel_on_ctrl_c();
    let machine_before =
        load_averages(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
    eprintln!(
        "large-state bench: {keys} keys x {} B (about {} MB) at {} puts/s, settling {settle:.0} s between steps; output in {}",
        args.value_bytes,
        args.state_mb,
        args.rate,
        out.display()
    );
    let cancel = config.cancel.clone();
    let job: JoinHandle<Result<JobSummary>> = std::thread::Builder::new()
        .name("state-bench-job".into())
        .spawn(move || Ok(run_local(crate::registry(), &config, &current_program()?)?))
        .context("cannot start the job's thread")?;
    let mut driver = Driver {
        view,
        commands,
        keys,
        settle: Duration::from_secs_f64(settle),
        state_mb: args.state_mb,
        standby: args.standby_mb > 0,
        observed: Observed::default(),
        progress: Progress::new(),
        stage: "starting".into(),
    };
    let driven = driver.drive(&job, &stop_file);
    if driven.is_err() {
        cancel.store(true, Ordering::SeqCst);
    }
    let summary = job
        .join()
        .map_err(|_| anyhow::anyhow!("the job's thread panicked"))?;
    let observed = driver.finish();
    let (marks, summary) = match (driven, summary) {
        (Ok(marks), Ok(summary)) => (marks, summary),
        (Err(e), _) | (Ok(_), Err(e)) => {
            return Err(e.context("the large-state bench did not complete"))
        }
    };
    write_report(
        args,
        (keys, settle),
        &out,
        &observed,
        &summary,
        marks,
        machine_before,
    )
}

/// Reads the latency windows, computes the figures, writes them to
/// OUT/state-bench.json and prints the table.
fn write_report(
    args: &StateArgs,
    (keys, settle): (u64, f64),
    out: &Path,
    observed: &Observed,
    summary: &JobSummary,
    marks: Marks,
    machine_before: Vec<f64>,
) -> Result<()> {
    let latency_file = out.join("latency.jsonl");
    let windows = read_windows(&latency_file).with_context(|| {
        format!(
            "cannot read the latency windows in {}",
            latency_file.display()
        )
    })?;
    let after_ms = (settle * 1000.0) as u64;
    let mut report = report(observed, summary, marks, &windows, after_ms)?;
    report.state_mb = args.state_mb;
    report.keys = keys;
    report.value_bytes = args.value_bytes;
    report.rate = args.rate;
    report.checkpoint_ms = args.checkpoint_ms;
    report.settle_secs = settle;
    report.standby_mb = args.standby_mb;
    report.machine = Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before: machine_before,
        load_after: load_averages(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default()),
    };
    let path = out.join("state-bench.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    print!("{}", report.table());
    println!("figures in {}", path.display());
    Ok(())
}

/// The run's figures (all but its settings and machine) from what the
/// driver observed, the job's summary and the latency windows.
fn report(
    observed: &Observed,
    summary: &JobSummary,
    marks: Marks,
    windows: &[LatencyWindow],
    after_ms: u64,
) -> Result<StateBenchReport> {
    let start = observed
        .job_start_epoch_ms
        .context("the job never showed itself running")?;
    let latency = |from: u64, to: u64| latency_between(windows, start, from, to);
    let scale = |direction: ScaleDirection| -> Result<ScaleFigures> {
        let e = summary
            .scale_events
            .iter()
            .find(|e| e.direction == direction && e.operator == STORE)
            .with_context(|| format!("the job reports no scale-{direction} of the store"))?;
        Ok(ScaleFigures {
            decided_ms: e.decided_ms,
            pause_ms: e.pause_ms,
            staged_ms: e.staged_ms,
            keys: e.keys,
            latency: latency(
                e.decided_ms.saturating_sub(BEFORE_MS),
                e.decided_ms + e.staged_ms.unwrap_or(0) + e.pause_ms + after_ms,
            ),
        })
    };
    let split = scale(ScaleDirection::Out)?;
    let merge = scale(ScaleDirection::In)?;
    let r = summary
        .recoveries
        .iter()
        .find(|r| is_store_recovery(r) && r.caught_up_ms.is_some())
        .context("the job reports no recovery of the killed store that caught up")?;
    let killed_ms = r.killed_ms.unwrap_or(r.detected_ms);
    let caught_up_ms = r.caught_up_ms.unwrap_or(r.rewired_ms);
    let recovery = RecoveryFigures {
        killed_ms,
        detected_ms: r.detected_ms,
        restored_ms: r.restored_ms,
        caught_up_ms,
        recovery_ms: caught_up_ms.saturating_sub(killed_ms),
        latency: latency(killed_ms.saturating_sub(BEFORE_MS), caught_up_ms + after_ms),
        coordinator: coordinator_between(&observed.coordinator, killed_ms, caught_up_ms + 1000),
    };
    // The steady stretch: every key stored, before the split.
    let (from, to) = (marks.loaded_ms, split.decided_ms.max(marks.loaded_ms));
    let steady: Vec<u64> = observed
        .checkpoints
        .iter()
        .filter(|(at, _)| *at > from && *at <= to)
        .map(|&(_, bytes)| bytes)
        .collect();
    let secs = (to - from) as f64 / 1000.0;
    let per_s = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    let latest = observed.checkpoints.iter().rev().find(|(at, _)| *at <= to);
    let checkpoints = CheckpointFigures {
        bytes: latest.map_or(0, |&(_, bytes)| bytes),
        per_s: per_s(steady.len() as f64),
        bytes_per_s: per_s(steady.iter().sum::<u64>() as f64),
        cpu: checkpoint_cpu(&observed.counters, from, to),
    };
    // The view lags the coordinator by up to its publishing period: the
    // readings of the last second may already hold the split's backup.
    let coordinator_figures = coordinator_between(
        &observed.coordinator,
        from,
        to.saturating_sub(1000).max(from),
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let coordinator = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_kib(&s, "VmHWM"))
        .unwrap_or(0);
    let memory = MemoryFigures {
        largest_worker_mib: mib(observed.peak_kib.values().copied().max().unwrap_or(0)),
        workers_mib: observed
            .peak_kib
            .iter()
            .map(|(&p, &k)| (p, mib(k)))
            .collect(),
        coordinator_mib: mib(coordinator),
    };
    Ok(StateBenchReport {
        job_start_epoch_ms: start,
        state_bytes: marks.state_bytes,
        loaded_ms: marks.loaded_ms,
        steady_latency: latency(from, to),
        split,
        merge,
        recovery,
        checkpoints,
        coordinator: coordinator_figures,
        memory,
        elapsed_s: summary.elapsed.as_secs_f64(),
        ..StateBenchReport::default()
    })
}

/// What the driver noted while running the steps.
#[derive(Clone, Copy, Debug, Default)]
struct Marks {
    /// When every key was stored and checkpointed, ms since the job started.
    loaded_ms: u64,
    /// The store's encoded state then, bytes.
    state_bytes: u64,
}

/// What the driver gathered while the job ran.
#[derive(Default)]
struct Observed {
    /// The smallest (wall clock − the view's elapsed time): the job's start
    /// on the Unix clock, in ms.
    job_start_epoch_ms: Option<u64>,
    /// Peak resident set of each worker process seen, KiB.
    peak_kib: BTreeMap<u32, u64>,
    /// The store instances' CPU counters whenever they changed.
    counters: Vec<CounterSample>,
    /// Each new checkpoint of a store instance: (ms since start, bytes).
    checkpoints: Vec<(u64, u64)>,
    /// The coordinator at each reading.
    coordinator: Vec<CoordinatorReading>,
    /// Latest checkpoint frontier seen per store instance.
    frontiers: BTreeMap<u32, u64>,
}

impl Observed {
    /// Takes in one reading of the view.
    fn take(&mut self, view: &ClusterView) {
        if view.state != JobState::Running {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let start = now_ms.saturating_sub(view.elapsed_ms);
        self.job_start_epoch_ms = Some(self.job_start_epoch_ms.map_or(start, |s| s.min(start)));
        let cpu = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| process_cpu_secs(&s))
            .unwrap_or(0.0);
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| status_kib(&s, "VmRSS"))
            .unwrap_or(0);
        self.coordinator
            .push((view.elapsed_ms, view.control_traffic, cpu, rss));
        for w in view.workers.iter().filter(|w| w.alive && w.pid != 0) {
            let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid));
            if let Some(kib) = status.ok().and_then(|s| status_kib(&s, "VmHWM")) {
                let peak = self.peak_kib.entry(w.pid).or_default();
                *peak = (*peak).max(kib);
            }
        }
        let Some(store) = view.operators.iter().find(|o| o.name == STORE) else {
            return;
        };
        for i in &store.instances {
            let last = self
                .counters
                .iter()
                .rev()
                .find(|c| c.instance == i.id && c.incarnation == i.incarnation);
            if last.is_none_or(|c| c.cpu_secs != i.cpu_secs) {
                self.counters.push(CounterSample {
                    at_ms: view.elapsed_ms,
                    instance: i.id,
                    incarnation: i.incarnation,
                    cpu_secs: i.cpu_secs,
                    checkpoint_cpu_secs: i.checkpoint_cpu_secs,
                });
            }
            if let Some(frontier) = i.checkpoint_frontier {
                let seen = self.frontiers.insert(i.id.0, frontier);
                if seen != Some(frontier) {
                    self.checkpoints
                        .push((view.elapsed_ms, i.last_checkpoint_bytes));
                }
            }
        }
    }
}

/// Runs the steps of the bench against the job through its view and
/// commands.
struct Driver {
    view: SharedView,
    commands: crossbeam_channel::Sender<JobCommand>,
    keys: u64,
    settle: Duration,
    state_mb: u64,
    /// Wait for the store's standby before the kill.
    standby: bool,
    observed: Observed,
    progress: Progress,
    stage: String,
}

impl Driver {
    /// Loads, settles, splits, merges, kills, and ends the hold phase.
    fn drive(&mut self, job: &JoinHandle<Result<JobSummary>>, stop_file: &Path) -> Result<Marks> {
        // Generous bounds: a step that has not happened by then never will.
        let load_limit = Duration::from_secs(120 + self.state_mb);
        let step_limit = Duration::from_secs(120 + self.state_mb / 5);
        let keys = self.keys;
        self.stage = "loading".into();
        self.wait_for(
            job,
            load_limit,
            "every key to be stored and checkpointed",
            |v| store_state(v).0 >= keys,
        )?;
        let marks = Marks {
            loaded_ms: self.elapsed_ms(),
            state_bytes: self.read(store_state).1,
        };
        self.settle(job, "steady")?;
        self.step(
            job,
            step_limit,
            "splitting",
            EventKind::ScaleOut,
            JobCommand::ScaleOut {
                operator: STORE.into(),
            },
        )?;
        self.settle(job, "after the split")?;
        self.step(
            job,
            step_limit,
            "merging",
            EventKind::ScaleIn,
            JobCommand::ScaleIn {
                operator: STORE.into(),
            },
        )?;
        let merged_at = self.read(|v| last_event_ms(v, EventKind::ScaleIn));
        self.settle(job, "after the merge")?;
        if self.standby {
            // The job drops a standby staged for what the merge replaced:
            // one staged since is the merged store's.
            self.stage = "staging a standby".into();
            self.wait_for(job, step_limit, "the merged store's standby", |v| {
                last_event_ms(v, EventKind::Standby) >= merged_at
            })?;
        }
        let recoveries = self.read(|v| v.recoveries.len());
        self.commands
            .send(JobCommand::KillInstance {
                operator: STORE.into(),
                index: 0,
            })
            .context("the job stopped taking commands")?;
        self.stage = "recovering".into();
        self.wait_for(
            job,
            step_limit,
            "the killed store to recover and catch up",
            |v| {
                v.recoveries[recoveries.min(v.recoveries.len())..]
                    .iter()
                    .any(|r| is_store_recovery(r) && r.caught_up_ms.is_some())
            },
        )?;
        self.settle(job, "after the recovery")?;
        std::fs::write(stop_file, b"")
            .with_context(|| format!("cannot create {}", stop_file.display()))?;
        // The store works off whatever backlog it has before the job ends.
        self.stage = "finishing".into();
        self.wait_for(job, load_limit, "the job to finish", |v| {
            v.state == JobState::Finished
        })
        .or_else(|e| if job.is_finished() { Ok(()) } else { Err(e) })?;
        Ok(marks)
    }

    /// Asks for `command` and waits for its `kind` of event; an error if
    /// the job refuses it.
    fn step(
        &mut self,
        job: &JoinHandle<Result<JobSummary>>,
        limit: Duration,
        stage: &str,
        kind: EventKind,
        command: JobCommand,
    ) -> Result<()> {
        let before = self.read(|v| count_events(v, kind));
        let refused = self.read(|v| scale_refusals(v).len());
        self.commands
            .send(command)
            .context("the job stopped taking commands")?;
        self.stage = stage.into();
        self.wait_for(job, limit, stage, |v| {
            count_events(v, kind) > before || scale_refusals(v).len() > refused
        })?;
        if let Some(reason) = self.read(|v| scale_refusals(v).get(refused).cloned()) {
            bail!("the job refused {stage}: {reason}");
        }
        Ok(())
    }

    /// Lets the job run for the settling time, and until every store
    /// instance has a backup at its holders newer than when it began: a
    /// part the coordinator still keeps (after a split or a merge) would
    /// otherwise be what the next step restores from.
    fn settle(&mut self, job: &JoinHandle<Result<JobSummary>>, stage: &str) -> Result<()> {
        self.stage = stage.into();
        let until = Instant::now() + self.settle;
        let before = self.read(store_frontiers);
        let limit = self.settle * 2 + Duration::from_secs(120);
        self.wait_for(job, limit, stage, |v| {
            Instant::now() >= until && backed_up_since(&before, &store_frontiers(v))
        })
    }

    /// Observes the job until `done` holds; an error if the job ends first
    /// or `limit` passes.
    fn wait_for(
        &mut self,
        job: &JoinHandle<Result<JobSummary>>,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&ClusterView) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner()).clone();
            self.observed.take(&view);
            self.show(&view);
            if done(&view) {
                return Ok(());
            }
            if job.is_finished() {
                bail!("the job ended while waiting for {what}");
            }
            if Instant::now() > deadline {
                bail!(
                    "waited {:.0} s for {what}; the job's latest events: {}",
                    limit.as_secs_f64(),
                    self.read(latest_events)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Shows how far the bench got.
    fn show(&mut self, view: &ClusterView) {
        let (keys, bytes) = store_state(view);
        let loaded = store_tuples(view).min(self.keys);
        let fraction = (self.stage == "loading").then(|| loaded as f64 / self.keys.max(1) as f64);
        let status = Status {
            stage: self.stage.clone(),
            fraction,
            detail: format!(
                "{:.0} s: store {keys} keys, {:.1} MB checkpointed; {} partitions",
                view.elapsed_ms as f64 / 1000.0,
                bytes as f64 / 1e6,
                view.operators
                    .iter()
                    .find(|o| o.name == STORE)
                    .map_or(0, |o| o.instances.len())
            ),
        };
        self.progress.show(&status);
    }

    /// Reads the view.
    fn read<T>(&self, f: impl FnOnce(&ClusterView) -> T) -> T {
        f(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn elapsed_ms(&self) -> u64 {
        self.read(|v| v.elapsed_ms)
    }

    /// Ends the progress display and hands over what was observed.
    fn finish(&mut self) -> Observed {
        let progress = std::mem::replace(&mut self.progress, Progress::new());
        progress.finish(&Status {
            stage: self.stage.clone(),
            fraction: None,
            detail: String::new(),
        });
        std::mem::take(&mut self.observed)
    }
}

/// Whether every instance in `now` has a durable frontier above the one
/// it had in `before` (any, for an instance that had none).
fn backed_up_since(before: &BTreeMap<u32, Option<u64>>, now: &BTreeMap<u32, Option<u64>>) -> bool {
    now.iter()
        .all(|(id, at)| match (before.get(id).copied().flatten(), at) {
            (_, None) => false,
            (Some(was), Some(at)) => *at > was,
            (None, Some(_)) => true,
        })
}

/// Each store instance's durable checkpoint frontier (every holder has a
/// backup at or above it), by instance id.
fn store_frontiers(view: &ClusterView) -> BTreeMap<u32, Option<u64>> {
    view.operators
        .iter()
        .filter(|o| o.name == STORE)
        .flat_map(|o| o.instances.iter().map(|i| (i.id.0, i.checkpoint_frontier)))
        .collect()
}

/// Keys and encoded bytes in the store at its instances' latest checkpoints.
fn store_state(view: &ClusterView) -> (u64, u64) {
    view.operators
        .iter()
        .filter(|o| o.name == STORE)
        .flat_map(|o| &o.instances)
        .fold((0, 0), |(k, b), i| (k + i.state_keys, b + i.state_bytes))
}

/// Tuples the store took in so far.
fn store_tuples(view: &ClusterView) -> u64 {
    view.operators
        .iter()
        .filter(|o| o.name == STORE)
        .flat_map(|o| &o.instances)
        .map(|i| i.tuples_in)
        .sum()
}

/// Whether `r` is the recovery of the store from the bench's kill.
fn is_store_recovery(r: &RecoveryTimeline) -> bool {
    r.killed_ms.is_some() && r.instances.iter().any(|i| i.starts_with(STORE))
}

/// Why the job refused each split or merge so far.
fn scale_refusals(view: &ClusterView) -> Vec<String> {
    view.events
        .iter()
        .filter(|e| matches!(e.refused, Some(Refused::ScaleOut | Refused::ScaleIn)))
        .map(|e| e.detail.clone())
        .collect()
}

fn count_events(view: &ClusterView, kind: EventKind) -> usize {
    view.events.iter().filter(|e| e.kind == kind).count()
}

/// When the latest event of `kind` happened (none: `None`, before any).
fn last_event_ms(view: &ClusterView, kind: EventKind) -> Option<u64> {
    view.events
        .iter()
        .rev()
        .find(|e| e.kind == kind)
        .map(|e| e.at_ms)
}

/// The last few events, for an error message.
fn latest_events(view: &ClusterView) -> String {
    let start = view.events.len().saturating_sub(5);
    view.events[start..]
        .iter()
        .map(|e| format!("{} ms {} {}", e.at_ms, e.kind, e.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_waits_for_a_backup_newer_than_its_start_for_every_instance() {
        let at = |pairs: &[(u32, Option<u64>)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        let before = at(&[(1, Some(10)), (3, None)]);
        assert!(!backed_up_since(&before, &at(&[(1, Some(10))])));
        assert!(!backed_up_since(&before, &at(&[(1, Some(11)), (3, None)])));
        assert!(backed_up_since(
            &before,
            &at(&[(1, Some(11)), (3, Some(5))])
        ));
        // A part new since the start needs a backup of its own.
        assert!(!backed_up_since(&before, &at(&[(1, Some(11)), (4, None)])));
        assert!(backed_up_since(
            &before,
            &at(&[(1, Some(11)), (4, Some(1))])
        ));
    }
}
