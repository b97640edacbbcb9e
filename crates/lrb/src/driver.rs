//! `spate lrb run`: runs the Linear Road query on a local cluster, then
//! gathers the sinks' and the feeder's statistics into `report.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spate_engine::cluster::run_local;
use spate_engine::coordinator::view::{HistoryPoint, SharedView};
use spate_engine::coordinator::{JobConfig, JobEvent, JobSummary, RecoveryTimeline, ScaleEvent};
use spate_engine::{EngineError, QueryRegistry};

use crate::bench::{usage, Who};
use crate::model::AnswerKind;
use crate::query::{stats_dir, LrbParams, SinkStats, NAME};
use crate::resources::{Peaks, ResourcePoint, Sampler};

/// What `spate lrb run` was asked to do: Linear Road's own parameters,
/// and how the engine runs the job.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Query parameters (files, speed-up, default parallelism).
    pub params: LrbParams,
    /// Workers, partitions, fault tolerance, elasticity, token, dashboard.
    /// Its query and parameters are replaced by Linear Road's, made from
    /// `params`. Without a view the run makes its own (it samples memory
    /// and buffers from it).
    pub job: JobConfig,
}

/// Per instance counters in the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceLine {
    /// Operator name.
    pub operator: String,
    /// Instance id.
    pub instance: u32,
    /// Hosting worker.
    pub worker: u32,
    /// Tuples processed.
    pub tuples_in: u64,
    /// Tuples sent.
    pub tuples_out: u64,
}

/// `report.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// Input file.
    pub input: PathBuf,
    /// Replay speed-up (0: as fast as possible).
    pub speedup: f64,
    /// Worker processes.
    pub workers: usize,
    /// Wall-clock seconds from start to the last instance finishing.
    pub elapsed_secs: f64,
    /// Input lines read.
    pub input_lines: u64,
    /// Input lines skipped as malformed (see `input-errors.csv`).
    pub input_errors: u64,
    /// Mean input rate over the run, lines per second.
    pub input_rate: f64,
    /// Highest one-second input rate.
    pub peak_input_rate: u64,
    /// Input lines released in each wall-clock second.
    pub input_per_second: Vec<u64>,
    /// Tuples out of all answer sinks.
    pub answers: u64,
    /// Latency and deadline misses per answer kind.
    pub latency: BTreeMap<String, SinkStats>,
    /// Answers later than their deadline, all kinds.
    pub deadline_misses: u64,
    /// Partitions per operator.
    pub partitions: BTreeMap<String, usize>,
    /// Per instance counters.
    pub instances: Vec<InstanceLine>,
    /// Checkpoint interval, milliseconds (0: fault tolerance off).
    pub checkpoint_ms: u64,
    /// Checkpoints backed up during the run.
    pub checkpoints: u64,
    /// One timeline per failure recovered.
    pub recoveries: Vec<RecoveryTimeline>,
    /// Everything notable the coordinator did, in order.
    pub events: Vec<JobEvent>,
    /// The cluster second by second: rates, utilisation, partitions, workers.
    pub history: Vec<HistoryPoint>,
    /// Every split and merge, with the rates that justified it and its
    /// pause.
    pub scale_events: Vec<ScaleEvent>,
    /// Seconds of every live worker (pool included) added up: the run's
    /// cost.
    #[serde(default)]
    pub worker_secs: f64,
    /// The largest memory and buffer figures of the run.
    #[serde(default)]
    pub peaks: Peaks,
    /// Memory and buffers, sampled once a second.
    #[serde(default)]
    pub resources: Vec<ResourcePoint>,
}

/// Runs the query on a local cluster and writes `report.json` into the
/// output directory.
pub fn run(
    registry: &QueryRegistry,
    program: &Path,
    options: &RunOptions,
) -> Result<RunReport, EngineError> {
    run_with(options, |config| run_local(registry, config, program))
}

/// As [`run`], with the job run by `launch` (a coordinator with its own
/// provisioner, e.g. workers on other hosts) on the job's final config.
pub fn run_with(
    options: &RunOptions,
    launch: impl FnOnce(&JobConfig) -> Result<JobSummary, EngineError>,
) -> Result<RunReport, EngineError> {
    let params = &options.params;
    let stats = stats_dir(&params.out_dir);
    let _ = std::fs::remove_dir_all(&stats);
    std::fs::create_dir_all(&stats)
        .map_err(|e| EngineError::io(format!("creating {}", stats.display()), e))?;
    let json = serde_json::to_value(params)
        .map_err(|e| EngineError::InvalidQuery(format!("encoding parameters: {e}")))?;
    let mut config = options.job.clone();
    config.query = NAME.to_string();
    config.params = json;
    let view = config.view.get_or_insert_with(SharedView::default).clone();
    let sampler = Sampler::start(view)?;
    let summary = launch(&config)?;
    let resources = sampler.finish();
    // Every worker has been reaped by now, killed ones included.
    let peaks = Peaks::of(&resources, usage(Who::Children).max_rss_kib);

    let feeder: crate::query::FeederStats = read_json(&stats.join("feeder.json"))?;
    let mut latency = BTreeMap::new();
    for kind in AnswerKind::ALL {
        let s: SinkStats = read_json(&stats.join(format!("{}.json", kind.name())))?;
        latency.insert(kind.name().to_string(), s);
    }
    let input_errors = latency
        .remove(AnswerKind::InputErrors.name())
        .map_or(0, |s| s.count);
    let mut partitions = BTreeMap::new();
    for node in &summary.plan.nodes {
        partitions.insert(node.name.clone(), node.instances.len());
    }
    let report = RunReport {
        input: params.input.clone(),
        speedup: params.speedup,
        workers: config.workers,
        elapsed_secs: summary.elapsed.as_secs_f64(),
        input_lines: feeder.lines,
        input_errors,
        input_rate: feeder.lines as f64 / feeder.elapsed_secs.max(1e-9),
        peak_input_rate: feeder.per_second.iter().copied().max().unwrap_or(0),
        input_per_second: feeder.per_second,
        answers: latency.values().map(|s| s.count).sum(),
        deadline_misses: latency.values().map(|s| s.deadline_misses).sum(),
        latency,
        partitions,
        instances: summary
            .instances
            .iter()
            .map(|i| InstanceLine {
                operator: i.operator.clone(),
                instance: i.instance.0,
                worker: i.worker.0,
                tuples_in: i.stats.tuples_in,
                tuples_out: i.stats.tuples_out,
            })
            .collect(),
        checkpoint_ms: config.checkpoint_interval.as_millis() as u64,
        checkpoints: summary.checkpoints,
        recoveries: summary.recoveries,
        events: summary.events,
        history: summary.history,
        scale_events: summary.scale_events,
        worker_secs: summary.worker_secs,
        peaks,
        resources,
    };
    let path = params.out_dir.join("report.json");
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| EngineError::InvalidQuery(format!("encoding the report: {e}")))?;
    std::fs::write(&path, text)
        .map_err(|e| EngineError::io(format!("writing {}", path.display()), e))?;
    let svg = params.out_dir.join("report.svg");
    crate::plot::write_run_plot(&report, &svg)
        .map_err(|e| EngineError::io(format!("writing {}", svg.display()), e))?;
    Ok(report)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::io(format!("reading run statistics {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| {
        EngineError::Protocol(format!("{} is not valid statistics: {e}", path.display()))
    })
}
