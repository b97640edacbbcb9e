//! What a job is asked to do: the query, its placement, fault tolerance,
//! injected failures and elasticity. One set of options for every query.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::scale::ScalePolicy;
use super::view;
use crate::plan::Placement;

/// Backup copies of a job that does not say (`JobConfig::backup_copies`).
pub const DEFAULT_BACKUP_COPIES: usize = 2;
/// The most backup copies a job may ask for: each one ships and holds
/// every checkpoint once more.
pub const MAX_BACKUP_COPIES: usize = 8;

/// An injected failure: kill the worker hosting `operator`'s instance
/// `index` at `at` after the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillSpec {
    /// When, after the job starts.
    pub at: Duration,
    /// Operator name.
    pub operator: String,
    /// Instance index within the operator.
    pub index: u32,
}

impl std::str::FromStr for KillSpec {
    type Err = String;

    /// Parses `AT_SECS:OPERATOR[:INSTANCE]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let (Some(at), Some(operator)) = (parts.next(), parts.next()) else {
            return Err(format!("`{s}` is not AT_SECS:OPERATOR[:INSTANCE]"));
        };
        let at: f64 = at
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("`{at}` in `{s}` is not a number of seconds"))?;
        let index = match parts.next() {
            Some(i) => i
                .parse()
                .map_err(|_| format!("`{i}` in `{s}` is not an instance index"))?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(format!("`{s}` is not AT_SECS:OPERATOR[:INSTANCE]"));
        }
        Ok(KillSpec {
            at: Duration::from_secs_f64(at),
            operator: operator.to_string(),
            index,
        })
    }
}

/// What to run and on how many workers.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Registered query name.
    pub query: String,
    /// Parameters handed to the query builder on every process.
    pub params: serde_json::Value,
    /// Number of workers to place instances on.
    pub workers: usize,
    /// Idle workers kept ready for recovery.
    pub pool: usize,
    /// Parallelism overrides per operator name.
    pub partitions: BTreeMap<String, u32>,
    /// How instances are spread over the workers.
    pub placement: Placement,
    /// Checkpoint interval; zero turns fault tolerance off.
    pub checkpoint_interval: Duration,
    /// How many workers other than its own hold each stateful instance's
    /// checkpoints, where that many live: two (the default) keep a copy
    /// through the loss of an instance's worker together with one holder
    /// (one host with both); one is SEEP's upstream backup, and halves
    /// what checkpoints cost to ship and to hold.
    pub backup_copies: usize,
    /// A worker silent for this long is declared failed.
    pub heartbeat_timeout: Duration,
    /// Failures to inject.
    pub kills: Vec<KillSpec>,
    /// Restore a failed stateful instance as this many partitions (parallel
    /// recovery), when the pool has enough workers.
    pub recovery_parallelism: u32,
    /// Keep a warm copy of each stateful instance whose backup holds at
    /// least this many bytes on a pool worker, so that it recovers there
    /// without rebuilding its state (`None`: never). Off by default:
    /// staging a copy costs a holder and the pool worker a restore's work,
    /// which on a small machine competes with the job and its
    /// reconfigurations.
    pub standby_min_bytes: Option<u64>,
    /// Split hot instances automatically (`None`: only on request).
    pub autoscale: Option<ScalePolicy>,
    /// Scale-outs to force: (after, operator).
    pub scale_at: Vec<(Duration, String)>,
    /// Partitions a forced scale-out splits the busiest instance into.
    pub split_parts: usize,
    /// Scale-ins to force: (after, operator); the coldest adjacent pair of
    /// its partitions merges.
    pub scale_in_at: Vec<(Duration, String)>,
    /// CPU quota per local worker process, in cores (emulated small VMs).
    pub worker_cpu: Option<f64>,
    /// The cluster's shared secret that workers must present (empty: none).
    pub token: String,
    /// How long workers have to join, deploy and restore.
    pub startup_timeout: Duration,
    /// Set (e.g. by a Ctrl-C handler) to abort the job.
    pub cancel: Arc<AtomicBool>,
    /// Where to publish the cluster's state (for an HTTP API), if anywhere.
    pub view: Option<view::SharedView>,
    /// Commands from outside (HTTP API, CLI), if any.
    pub commands: Option<crossbeam_channel::Receiver<view::JobCommand>>,
}

impl JobConfig {
    /// A job with checkpoints every second and default timeouts.
    pub fn new(query: impl Into<String>, params: serde_json::Value, workers: usize) -> Self {
        JobConfig {
            query: query.into(),
            params,
            workers,
            pool: 0,
            partitions: BTreeMap::new(),
            placement: Placement::default(),
            checkpoint_interval: Duration::from_secs(1),
            backup_copies: DEFAULT_BACKUP_COPIES,
            heartbeat_timeout: Duration::from_millis(500),
            kills: Vec::new(),
            recovery_parallelism: 1,
            standby_min_bytes: None,
            autoscale: None,
            scale_at: Vec::new(),
            split_parts: 2,
            scale_in_at: Vec::new(),
            worker_cpu: None,
            token: String::new(),
            startup_timeout: Duration::from_secs(30),
            cancel: Arc::new(AtomicBool::new(false)),
            view: None,
            commands: None,
        }
    }
}

impl JobConfig {
    /// How long a worker runs on without hearing the coordinator's lease
    /// before it stops itself: twice the heartbeat timeout, so that a
    /// coordinator paused for longer than the timeout (a starved machine,
    /// a paused virtual machine) does not stop every worker at once, while
    /// a worker it declared failed still stops soon after.
    pub fn lease(&self) -> Duration {
        self.heartbeat_timeout * 2
    }

    /// Refuses options that name what `query` does not have, and a job
    /// that checkpoints without anywhere to keep the checkpoints.
    pub(super) fn check(&self, query: &crate::api::Query) -> Result<(), crate::EngineError> {
        if self.backup_copies == 0 && !self.checkpoint_interval.is_zero() {
            return Err(crate::EngineError::InvalidQuery(
                "backup copies must be at least 1 (or turn checkpoints off)".into(),
            ));
        }
        for kill in &self.kills {
            if query.find(&kill.operator).is_none() {
                return Err(crate::EngineError::InvalidQuery(format!(
                    "--kill names `{}`, which is not an operator of the query",
                    kill.operator
                )));
            }
        }
        Ok(())
    }
}
