//! The coordinator: gathers workers, deploys a query on them according to a
//! [`Plan`], routes checkpoints to their backup holders, detects failures
//! and drives recovery and rescaling, and shuts everything down at the end.
//!
//! It is built from parts that own their state, each keeping its
//! invariants in one file, and protocols that are step functions over them:
//! - [`links`]: the connections to workers, behind the [`Links`] trait (TCP,
//!   or in memory for the protocol tests);
//! - `backups`: routes to holders, their copies, replay floors, source
//!   positions;
//! - `autoscaler`: the policy, from rates to decisions;
//! - `monitor` and [`view`]: metrics, history and the published view;
//! - `lifecycle`: start-up, the main loop, failures declared;
//! - `checkpoint`: route -> checkpoint shipped to holders -> trim;
//! - `recovery`: detect -> restore from backup on a new worker -> rewire;
//! - `scale` and `scale_in`: split one partition, merge two.

mod autoscaler;
mod awake;
mod backups;
mod checkpoint;
mod config;
mod events;
mod lifecycle;
pub mod links;
mod monitor;
mod recovery;
mod requested;
mod scale;
mod scale_in;
mod scale_in_live;
mod scale_live;
mod standby;
mod suspects;
#[cfg(test)]
mod tests;
pub mod view;

pub use autoscaler::ScaleRates;
pub use config::{JobConfig, KillSpec, DEFAULT_BACKUP_COPIES, MAX_BACKUP_COPIES};
pub use events::{EventKind, FailureCause, JobState, Refused, ScaleDirection};
pub use links::{LinkEvent, Links};
pub use scale::{AddedPart, PolicyKind, ScaleEvent, ScalePolicy};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::{Query, QueryRegistry};
use crate::error::EngineError;
use crate::ids::{Incarnation, InstanceId, WorkerId};
use crate::plan::Plan;
use crate::wire::control::{InstanceStats, ToCoordinator, ToWorker};
use requested::RequestedRescale;

/// Starts, watches and ends worker processes (the local cluster does it
/// with child processes; another provisioner could use ssh or a cloud API).
/// It is the only part that ends a process: the coordinator never signals
/// a pid, since a worker may run on another host.
pub trait Provisioner {
    /// Fails if a worker process is known to have exited; called while
    /// workers are joining.
    fn check(&mut self) -> Result<(), EngineError>;
    /// Starts one more worker that will join the coordinator.
    fn provision(&mut self) -> Result<(), EngineError>;
    /// Ends the worker at once, as a crash would: it was declared failed (a
    /// hung worker must not come back and interfere) or a failure is being
    /// injected. `pid` and `data_addr` are what the worker reported when it
    /// joined; a provisioner acts only on a process it started itself.
    fn stop(&mut self, worker: WorkerId, pid: u32, data_addr: &str) -> Result<(), EngineError>;
}

/// One instance's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceReport {
    /// Operator name.
    pub operator: String,
    /// Instance id.
    pub instance: InstanceId,
    /// Hosting worker.
    pub worker: WorkerId,
    /// Its counters.
    pub stats: InstanceStats,
}

/// Something that happened during the job, for reports and dashboards.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobEvent {
    /// Milliseconds since the job started.
    pub at_ms: u64,
    /// What kind of event.
    pub kind: EventKind,
    /// Human-readable details.
    pub detail: String,
    /// The workers it is about: the one killed, those declared failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerId>,
    /// How a failure was found (the first worker's, as `detail` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<FailureCause>,
    /// What a refusal refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refused>,
}

impl JobEvent {
    /// An event about no worker in particular.
    pub fn new(at_ms: u64, kind: EventKind, detail: impl Into<String>) -> Self {
        JobEvent {
            at_ms,
            kind,
            detail: detail.into(),
            workers: Vec::new(),
            cause: None,
            refused: None,
        }
    }
}

/// The timeline of one recovery, in milliseconds since the job started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecoveryTimeline {
    /// The failed workers.
    pub workers: Vec<WorkerId>,
    /// The instances restored (`operator[index]`).
    pub instances: Vec<String>,
    /// When the failure was injected, if it was.
    pub killed_ms: Option<u64>,
    /// When the coordinator noticed.
    pub detected_ms: u64,
    /// When every instance ran again on its new worker.
    pub restored_ms: u64,
    /// When upstreams were told to reconnect and replay.
    pub rewired_ms: u64,
    /// When every restored instance had worked off its backlog.
    pub caught_up_ms: Option<u64>,
}

/// The outcome of a job that ran to the end of its input.
#[derive(Clone, Debug)]
pub struct JobSummary {
    /// Per instance, in plan order.
    pub instances: Vec<InstanceReport>,
    /// From start to the last instance finishing.
    pub elapsed: Duration,
    /// The plan at the end.
    pub plan: Plan,
    /// Everything notable, in order.
    pub events: Vec<JobEvent>,
    /// One per failure handled.
    pub recoveries: Vec<RecoveryTimeline>,
    /// Checkpoints backed up.
    pub checkpoints: u64,
    /// The cluster second by second: rates, utilisation, partitions, workers.
    pub history: Vec<view::HistoryPoint>,
    /// Every split and merge.
    pub scale_events: Vec<ScaleEvent>,
    /// Seconds of every live worker (pool included) added up: what the run
    /// cost.
    pub worker_secs: f64,
}

/// A bound coordinator, ready for workers to connect.
pub struct Coordinator {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Coordinator {
    /// Listens for workers on `addr` (use port 0 for any free port).
    pub fn bind(addr: &str) -> Result<Self, EngineError> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| EngineError::io(format!("binding the coordinator on {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| EngineError::io("reading the coordinator address", e))?;
        Ok(Coordinator { listener, addr })
    }

    /// The address workers connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `config` to completion over TCP, recovering from worker failures.
    pub fn run(
        &self,
        registry: &QueryRegistry,
        config: &JobConfig,
        provisioner: &mut dyn Provisioner,
    ) -> Result<JobSummary, EngineError> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| EngineError::io("configuring the coordinator socket", e))?;
        let acceptor = self
            .listener
            .try_clone()
            .map_err(|e| EngineError::io("cloning the coordinator socket", e))?;
        let mut links = links::tcp::TcpLinks::start(
            acceptor,
            config.cancel.clone(),
            config.token.clone(),
            config.lease(),
        )?;
        run_job(registry, config, &mut links, provisioner)
    }
}

/// Runs `config` to completion over any [`Links`]: the whole coordinator,
/// whatever carries its messages.
pub fn run_job(
    registry: &QueryRegistry,
    config: &JobConfig,
    links: &mut dyn Links,
    provisioner: &mut dyn Provisioner,
) -> Result<JobSummary, EngineError> {
    // Build once here so that bad parameters fail before any deployment.
    let query = registry.build(&config.query, &config.params)?;
    config.check(&query)?;
    let mut job = Job::new(config, query, links, provisioner);
    let result = job.run().map_err(|e| job.after_own_pause(e));
    job.publish(true);
    if let Err(e) = &result {
        job.publish_failure(e);
    }
    // Best effort: a worker that already died cannot be told.
    job.broadcast(&ToWorker::Shutdown);
    result
}

/// A worker that joined.
struct WorkerEntry {
    /// Its process id as it reported it (shown, never signalled).
    pid: u32,
    /// Not declared failed.
    alive: bool,
    /// Its provisioner already ended it (a killed worker is then declared
    /// failed, which must not run a stop command on its pid again).
    ended: bool,
}

/// A worker reported its data channel to another stalled.
struct Stall {
    reporter: WorkerId,
    /// The worker it could not reach.
    peer: WorkerId,
    /// When the report arrived.
    at: Instant,
}

/// A worker declared failed, waiting for its recovery.
struct Failure {
    worker: WorkerId,
    cause: FailureCause,
    reason: String,
    /// Milliseconds since the job started.
    detected_ms: u64,
}

/// The state of a running job: the parts, and what the protocols share.
struct Job<'a> {
    config: &'a JobConfig,
    provisioner: &'a mut dyn Provisioner,
    links: &'a mut dyn Links,
    /// Every worker that joined, by id.
    workers: Vec<WorkerEntry>,
    /// Instances have been started: a lost worker is now recovered.
    running: bool,
    query: Query,
    plan: Plan,
    /// Messages a reconfiguration set aside, handled once it is over.
    deferred: VecDeque<(WorkerId, ToCoordinator)>,
    /// Workers lost and not yet recovered. Recovery runs from the main loop
    /// between reconfigurations, never nested inside one (a scale out or
    /// another recovery), so two never interleave their plans.
    failing: Vec<Failure>,
    /// Stalled data channels reported and not yet decided on.
    stalls: Vec<Stall>,
    /// Those decided on lately, which still count as evidence (see
    /// `lifecycle::stall_victim`).
    decided_stalls: Vec<Stall>,
    /// Those answered lately by reconnecting the channel, as healed (see
    /// `lifecycle::healed_stalls`).
    rewired: Vec<Stall>,
    /// Hosts lately distrusted: replacements and new backup holders go
    /// elsewhere while it is recent.
    suspects: suspects::SuspectHosts,
    started: Instant,
    pool: VecDeque<WorkerId>,
    /// Since when each pool worker has been idle.
    idle_since: HashMap<WorkerId, Instant>,
    backups: backups::Backups,
    autoscaler: autoscaler::Autoscaler,
    finished: BTreeMap<InstanceId, InstanceReport>,
    timeline: Vec<JobEvent>,
    recoveries: Vec<RecoveryTimeline>,
    kills: Vec<KillSpec>,
    checkpoints: u64,
    /// What the backup routes were last computed for (see
    /// [`Job::routing_fingerprint`]).
    routed_for: u64,
    /// Restored instances that have not yet reported catching up.
    awaiting_catch_up: HashSet<InstanceId>,
    scale_events: Vec<ScaleEvent>,
    /// Rescalings asked for (`--scale`, `--scale-in`, commands, and those
    /// a failure called off), in the order they came.
    requested: Vec<RequestedRescale>,
    monitor: monitor::Monitor,
    /// Warm copies of large instances' state on pool workers.
    standbys: standby::Standbys,
    /// How long the coordinator has run since its latest pause: the
    /// longest silence it can have heard.
    awake: awake::AwakeClock,
}

impl<'a> Job<'a> {
    fn new(
        config: &'a JobConfig,
        query: Query,
        links: &'a mut dyn Links,
        provisioner: &'a mut dyn Provisioner,
    ) -> Self {
        Job {
            config,
            provisioner,
            links,
            workers: Vec::new(),
            running: false,
            query,
            plan: Plan {
                workers: Vec::new(),
                nodes: Vec::new(),
            },
            deferred: VecDeque::new(),
            failing: Vec::new(),
            stalls: Vec::new(),
            decided_stalls: Vec::new(),
            rewired: Vec::new(),
            suspects: suspects::SuspectHosts::default(),
            started: Instant::now(),
            pool: VecDeque::new(),
            idle_since: HashMap::new(),
            backups: backups::Backups::default(),
            autoscaler: autoscaler::Autoscaler::new(config.autoscale.clone(), config.worker_cpu),
            finished: BTreeMap::new(),
            timeline: Vec::new(),
            recoveries: Vec::new(),
            kills: config.kills.clone(),
            checkpoints: 0,
            routed_for: 0,
            awaiting_catch_up: HashSet::new(),
            scale_events: Vec::new(),
            requested: RequestedRescale::from_config(config),
            monitor: monitor::Monitor::default(),
            standbys: standby::Standbys::new(),
            awake: awake::AwakeClock::start(config.heartbeat_timeout / 4),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn record(&mut self, kind: EventKind, detail: String) {
        self.record_about(kind, detail, Vec::new(), None);
    }

    /// Records an event about `workers` (a kill, failures found by `cause`).
    fn record_about(
        &mut self,
        kind: EventKind,
        detail: String,
        workers: Vec<WorkerId>,
        cause: Option<FailureCause>,
    ) {
        let event = JobEvent::new(self.elapsed_ms(), kind, detail);
        self.push_event(JobEvent {
            workers,
            cause,
            ..event
        });
    }

    /// Records that the coordinator refused `what`, and why (`detail`).
    fn refuse(&mut self, what: Refused, detail: String) {
        let event = JobEvent::new(self.elapsed_ms(), EventKind::Refused, detail);
        self.push_event(JobEvent {
            refused: Some(what),
            ..event
        });
    }

    /// Logs `event` and adds it to the job's timeline.
    fn push_event(&mut self, event: JobEvent) {
        tracing::info!(kind = event.kind.as_str(), "{}", event.detail);
        self.timeline.push(event);
    }

    fn send(&mut self, worker: WorkerId, message: &ToWorker) -> Result<(), EngineError> {
        self.links.send(worker, message)
    }

    fn broadcast(&mut self, message: &ToWorker) {
        for w in self.live_workers() {
            if let Err(e) = self.send(w, message) {
                tracing::warn!(worker = %w, "cannot reach worker: {e}");
            }
        }
    }

    /// Whether worker `w` joined and was not declared failed.
    fn alive(&self, w: WorkerId) -> bool {
        self.workers.get(w.index()).is_some_and(|e| e.alive)
    }

    /// Every worker not declared failed.
    /// Whether `incarnation` of `id` is still the one planned, on `worker`
    /// and alive: an answer a reconfiguration waits for can still come.
    fn runs(&self, id: InstanceId, incarnation: Incarnation, worker: WorkerId) -> bool {
        self.alive(worker)
            && self.plan.instance(id).map(|(_, p)| p.incarnation) == Some(incarnation)
    }

    fn live_workers(&self) -> Vec<WorkerId> {
        (0..self.workers.len() as u32)
            .map(WorkerId)
            .filter(|w| self.alive(*w))
            .collect()
    }

    fn check_cancel(&self) -> Result<(), EngineError> {
        if self.config.cancel.load(Ordering::SeqCst) {
            Err(EngineError::Interrupted)
        } else {
            Ok(())
        }
    }
}
