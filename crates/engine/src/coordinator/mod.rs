//! The coordinator: gathers workers, deploys a query on them according to a
//! [`Plan`], relays checkpoints to their backup holders, detects
//! failures and drives recovery, and shuts everything down at the end.
//!
//! Each protocol lives in one module:
//! - [`checkpoint`]: checkpoint -> backup on an upstream worker -> trim
//!   (and the replay floors of sources and stateless operators);
//! - [`recovery`]: detect -> restore from backup on a new worker -> rewire
//!   and replay.

mod checkpoint;
mod monitor;

mod recovery;
mod scale;
mod scale_in;
pub mod view;

pub use scale::{ScaleEvent, ScalePolicy};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use crate::api::{Query, QueryRegistry};
use crate::error::EngineError;
use crate::plan::{InstanceId, Plan, WorkerId};
use crate::stamp::Stamp;
use crate::wire::control::{self, InstanceStats, ToCoordinator, ToWorker};

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
    /// Checkpoint interval; zero turns fault tolerance off.
    pub checkpoint_interval: Duration,
    /// A worker silent for this long is declared failed.
    pub heartbeat_timeout: Duration,
    /// Failures to inject.
    pub kills: Vec<KillSpec>,
    /// Restore a failed stateful instance as this many partitions (parallel
    /// recovery), when the pool has enough workers.
    pub recovery_parallelism: u32,
    /// Split hot instances automatically (`None`: only on request).
    pub autoscale: Option<ScalePolicy>,
    /// Scale-outs to force: (after, operator).
    pub scale_at: Vec<(Duration, String)>,
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
            checkpoint_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_millis(500),
            kills: Vec::new(),
            recovery_parallelism: 1,
            autoscale: None,
            scale_at: Vec::new(),
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

/// Starts worker processes and watches them (the local cluster does it with
/// child processes; another provisioner could use ssh or a cloud API).
pub trait Provisioner {
    /// Fails if a worker process is known to have exited; called while
    /// workers are joining.
    fn check(&mut self) -> Result<(), EngineError>;
    /// Starts one more worker that will join the coordinator.
    fn provision(&mut self) -> Result<(), EngineError>;
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
    /// What kind of event (`kill`, `failure`, `restored`, ...).
    pub kind: String,
    /// Human-readable details.
    pub detail: String,
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
    /// Every split.
    pub scale_events: Vec<ScaleEvent>,
}

/// A bound coordinator, ready for workers to connect.
pub struct Coordinator {
    listener: TcpListener,
    addr: SocketAddr,
}

/// The coordinator's end of one worker.
struct WorkerLink {
    stream: TcpStream,
    pid: u32,
    alive: bool,
    /// Milliseconds after [`epoch`] of the last message, kept by the reader
    /// thread so that a busy coordinator never mistakes queued heartbeats
    /// for silence.
    last_heard: Arc<AtomicU64>,
}

/// The coordinator's clock origin for heartbeat bookkeeping.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

enum Event {
    Joined(TcpStream, String, u32, Arc<AtomicU64>),
    Message(WorkerId, ToCoordinator),
    Lost(WorkerId, String),
}

/// A worker declared failed, waiting for its recovery.
struct Failure {
    worker: WorkerId,
    reason: String,
    /// Milliseconds since the job started.
    detected_ms: u64,
}

/// The state of a running job.
struct Job<'a> {
    config: &'a JobConfig,
    provisioner: &'a mut dyn Provisioner,
    /// Instances have been started: a lost worker is now recovered.
    running: bool,
    query: Query,
    plan: Plan,
    links: Vec<WorkerLink>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    deferred: VecDeque<(WorkerId, ToCoordinator)>,
    /// Workers lost and not yet recovered. Recovery runs from the main loop
    /// between reconfigurations, never nested inside one (a scale out or
    /// another recovery), so two never interleave their plans.
    failing: Vec<Failure>,
    started: Instant,
    pool: VecDeque<WorkerId>,
    /// Instance -> (holder worker, frontier) of its latest stored backup.
    backups: HashMap<InstanceId, (WorkerId, Stamp)>,
    /// Instances whose only backup was lost with a failed holder.
    unprotected: HashSet<InstanceId>,
    /// The latest checkpoint of each instance, kept here as a second copy so
    /// that a failure that takes an instance and its holder together (two
    /// workers at once) is still recoverable.
    copies: HashMap<InstanceId, (Stamp, Vec<u8>)>,
    /// Replay floor of each source and stateless instance (see
    /// [`checkpoint`]): the stamp above which it can regenerate its outputs.
    floors: HashMap<InstanceId, Stamp>,
    /// Sources' recent input positions (their checkpoints).
    source_positions: checkpoint::SourcePositions,
    finished: BTreeMap<InstanceId, InstanceReport>,
    timeline: Vec<JobEvent>,
    recoveries: Vec<RecoveryTimeline>,
    kills: Vec<KillSpec>,
    checkpoints: u64,
    /// Restored instances that have not yet reported catching up.
    awaiting_catch_up: HashSet<InstanceId>,
    rates: HashMap<InstanceId, monitor::InstanceRates>,
    /// Consecutive hot reports per instance, for the policy.
    hot: HashMap<InstanceId, u32>,
    /// Consecutive cold reports per instance, for the policy.
    cold: HashMap<InstanceId, u32>,
    last_scale: Option<Instant>,
    scale_events: Vec<ScaleEvent>,
    scale_at: Vec<(Duration, String)>,
    scale_in_at: Vec<(Duration, String)>,
    history: Vec<view::HistoryPoint>,
    last_history: Instant,
    last_publish: Instant,
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

    /// Runs `config` to completion, recovering from worker failures.
    pub fn run(
        &self,
        registry: &QueryRegistry,
        config: &JobConfig,
        provisioner: &mut dyn Provisioner,
    ) -> Result<JobSummary, EngineError> {
        // Build once here so that bad parameters fail before any deployment.
        let query = registry.build(&config.query, &config.params)?;
        for kill in &config.kills {
            if query.find(&kill.operator).is_none() {
                return Err(EngineError::InvalidQuery(format!(
                    "--kill names `{}`, which is not an operator of the query",
                    kill.operator
                )));
            }
        }
        self.listener
            .set_nonblocking(true)
            .map_err(|e| EngineError::io("configuring the coordinator socket", e))?;
        let acceptor = self
            .listener
            .try_clone()
            .map_err(|e| EngineError::io("cloning the coordinator socket", e))?;
        let (events_tx, events) = crossbeam_channel::unbounded();
        spawn_acceptor(
            acceptor,
            events_tx.clone(),
            config.cancel.clone(),
            config.token.clone(),
        )?;
        let mut job = Job {
            config,
            provisioner,
            running: false,
            query,
            plan: Plan {
                workers: Vec::new(),
                nodes: Vec::new(),
            },
            links: Vec::new(),
            events_tx,
            events,
            deferred: VecDeque::new(),
            failing: Vec::new(),
            started: Instant::now(),
            pool: VecDeque::new(),
            backups: HashMap::new(),
            unprotected: HashSet::new(),
            copies: HashMap::new(),
            floors: HashMap::new(),
            source_positions: HashMap::new(),
            finished: BTreeMap::new(),
            timeline: Vec::new(),
            recoveries: Vec::new(),
            kills: config.kills.clone(),
            checkpoints: 0,
            awaiting_catch_up: HashSet::new(),
            rates: HashMap::new(),
            hot: HashMap::new(),
            cold: HashMap::new(),
            last_scale: None,
            scale_events: Vec::new(),
            scale_at: config.scale_at.clone(),
            scale_in_at: config.scale_in_at.clone(),
            history: Vec::new(),
            last_history: Instant::now(),
            last_publish: Instant::now(),
        };
        let result = job.run();
        if let Some(view) = &config.view {
            job.publish(true);
            if let (Err(e), Ok(mut v)) = (&result, view.write()) {
                v.state = "failed".into();
                v.events.push(JobEvent {
                    at_ms: job.elapsed_ms(),
                    kind: "error".into(),
                    detail: e.to_string(),
                });
            }
        }
        for link in job.links.iter().filter(|l| l.alive) {
            // Best effort: a worker that already died cannot be told.
            let _ = control::send(&mut &link.stream, &ToWorker::Shutdown);
        }
        result
    }
}

/// Accepts connections: a worker's control connection (`Register`) or its
/// heartbeat connection (`Beat`), which only refreshes the worker's clock.
fn spawn_acceptor(
    listener: TcpListener,
    events: Sender<Event>,
    cancel: Arc<AtomicBool>,
    token: String,
) -> Result<(), EngineError> {
    let mut clocks: HashMap<String, Arc<AtomicU64>> = HashMap::new();
    thread::Builder::new()
        .name("spate-coord-accept".into())
        .spawn(move || loop {
            if cancel.load(Ordering::SeqCst) {
                return;
            }
            match listener.accept() {
                Ok((stream, _)) => match handshake(stream) {
                    Ok((stream, ToCoordinator::Register { token: t, .. }))
                    | Ok((stream, ToCoordinator::Beat { token: t, .. }))
                        if t != token =>
                    {
                        let peer = stream
                            .peer_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        tracing::warn!("refused a worker at {peer}: wrong cluster token");
                    }
                    Ok((stream, ToCoordinator::Register { data_addr, pid, .. })) => {
                        let clock = Arc::new(AtomicU64::new(now_ms()));
                        clocks.insert(data_addr.clone(), clock.clone());
                        if events
                            .send(Event::Joined(stream, data_addr, pid, clock))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok((stream, ToCoordinator::Beat { data_addr, .. })) => {
                        match clocks.get(&data_addr) {
                            Some(clock) => spawn_heartbeat_reader(stream, clock.clone()),
                            None => tracing::warn!("heartbeats from unknown worker {data_addr}"),
                        }
                    }
                    Ok((_, other)) => {
                        tracing::warn!("refused a connection that opened with {other:?}")
                    }
                    Err(e) => tracing::warn!("refused a connection: {e}"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    tracing::warn!("accepting a worker failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
            if events.is_empty() && cancel.load(Ordering::SeqCst) {
                return;
            }
        })
        .map(|_| ())
        .map_err(|e| EngineError::io("starting the coordinator's accept thread", e))
}

fn spawn_heartbeat_reader(mut stream: TcpStream, clock: Arc<AtomicU64>) {
    let spawned = thread::Builder::new()
        .name("spate-coord-beat".into())
        .spawn(move || {
            while let Ok(Some(ToCoordinator::Heartbeat)) =
                control::recv::<ToCoordinator>(&mut stream)
            {
                clock.store(now_ms(), Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a heartbeat reader: {e}");
    }
}

fn handshake(mut stream: TcpStream) -> Result<(TcpStream, ToCoordinator), EngineError> {
    let configure = |s: &TcpStream| -> std::io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
    };
    configure(&stream).map_err(|e| EngineError::io("configuring a worker connection", e))?;
    control::read_hello(&mut stream)?;
    control::write_hello(&mut stream).map_err(|e| EngineError::io("greeting a worker", e))?;
    match control::recv::<ToCoordinator>(&mut stream)? {
        Some(first) => {
            stream
                .set_read_timeout(None)
                .map_err(|e| EngineError::io("configuring a worker connection", e))?;
            Ok((stream, first))
        }
        None => Err(EngineError::Protocol(
            "a peer connected and closed without a word".into(),
        )),
    }
}

fn spawn_reader(
    worker: WorkerId,
    stream: &TcpStream,
    events: Sender<Event>,
    last_heard: Arc<AtomicU64>,
) -> Result<(), EngineError> {
    let mut stream = stream
        .try_clone()
        .map_err(|e| EngineError::io("cloning a worker connection", e))?;
    thread::Builder::new()
        .name(format!("spate-coord-w{worker}"))
        .spawn(move || loop {
            let event = match control::recv::<ToCoordinator>(&mut stream) {
                Ok(Some(message)) => {
                    last_heard.store(now_ms(), Ordering::Relaxed);
                    Event::Message(worker, message)
                }
                Ok(None) => Event::Lost(worker, "it closed its control connection".into()),
                Err(e) => Event::Lost(worker, e.to_string()),
            };
            let lost = matches!(event, Event::Lost(..));
            if events.send(event).is_err() || lost {
                return;
            }
        })
        .map(|_| ())
        .map_err(|e| EngineError::io("starting a worker reader thread", e))
}

impl Job<'_> {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn record(&mut self, kind: &str, detail: String) {
        tracing::info!(kind, "{detail}");
        let at_ms = self.elapsed_ms();
        self.timeline.push(JobEvent {
            at_ms,
            kind: kind.to_string(),
            detail,
        });
    }

    fn send(&self, worker: WorkerId, message: &ToWorker) -> Result<(), EngineError> {
        let link = &self.links[worker.index()];
        control::send(&mut &link.stream, message)
    }

    fn broadcast(&self, message: &ToWorker) {
        for (w, link) in self.links.iter().enumerate() {
            if link.alive {
                if let Err(e) = self.send(WorkerId(w as u32), message) {
                    tracing::warn!(worker = %w, "cannot reach worker: {e}");
                }
            }
        }
    }

    fn check_cancel(&self) -> Result<(), EngineError> {
        if self.config.cancel.load(Ordering::SeqCst) {
            Err(EngineError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Registers a worker that joined; returns its index.
    fn add_worker(
        &mut self,
        stream: TcpStream,
        data_addr: String,
        pid: u32,
        last_heard: Arc<AtomicU64>,
    ) -> Result<WorkerId, EngineError> {
        let index = WorkerId(self.links.len() as u32);
        tracing::info!(worker = %index, pid, %data_addr, "worker joined");
        last_heard.store(now_ms(), Ordering::Relaxed);
        spawn_reader(index, &stream, self.events_tx.clone(), last_heard.clone())?;
        self.links.push(WorkerLink {
            stream,
            pid,
            alive: true,
            last_heard,
        });
        self.plan.workers.push(data_addr);
        Ok(index)
    }

    fn run(&mut self) -> Result<JobSummary, EngineError> {
        let wanted = self.config.workers + self.config.pool;
        let deadline = Instant::now() + self.config.startup_timeout;
        while self.links.len() < wanted {
            self.check_cancel()?;
            self.provisioner.check()?;
            if Instant::now() > deadline {
                return Err(EngineError::Timeout(format!(
                    "only {} of {wanted} workers joined within {:?}",
                    self.links.len(),
                    self.config.startup_timeout
                )));
            }
            match self.events.recv_timeout(Duration::from_millis(20)) {
                Ok(Event::Joined(stream, addr, pid, clock)) => {
                    self.add_worker(stream, addr, pid, clock)?;
                }
                Ok(Event::Lost(worker, reason)) => {
                    return Err(EngineError::WorkerFailed { worker, reason })
                }
                Ok(Event::Message(..)) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(EngineError::Protocol(
                        "the coordinator's event channel closed".into(),
                    ))
                }
            }
        }
        let workers = std::mem::take(&mut self.plan.workers);
        self.plan = Plan::place(
            &self.query,
            workers,
            self.config.workers,
            &self.config.partitions,
        )?;
        self.pool = (self.config.workers as u32..wanted as u32)
            .map(WorkerId)
            .collect();
        for w in (0..self.links.len() as u32).map(WorkerId) {
            self.deploy(w)?;
        }
        let deploy_deadline = Instant::now() + self.config.startup_timeout;
        let mut deployed = 0;
        while deployed < self.links.len() {
            match self.wait("deployment", deploy_deadline)? {
                Some((_, ToCoordinator::Deployed)) => deployed += 1,
                Some((w, other)) => self.unexpected(w, other)?,
                None => {}
            }
        }
        self.started = Instant::now();
        self.running = true;
        self.broadcast(&ToWorker::Start);
        self.record(
            "start",
            format!(
                "{} workers, {} in the pool",
                self.config.workers, self.config.pool
            ),
        );

        while self.finished.len() < self.plan.instances().count() {
            if !self.failing.is_empty() {
                self.recover()?;
                continue;
            }
            let now = self.started.elapsed();
            if let Some(i) = self.scale_at.iter().position(|(at, _)| *at <= now) {
                let (_, operator) = self.scale_at.remove(i);
                self.scale_operator(&operator, "requested")?;
                continue;
            }
            if let Some(i) = self.scale_in_at.iter().position(|(at, _)| *at <= now) {
                let (_, operator) = self.scale_in_at.remove(i);
                self.scale_in_operator(&operator, "requested")?;
                continue;
            }
            // Wake up for the next forced scale event even if nothing comes.
            let wake = self
                .scale_at
                .iter()
                .chain(&self.scale_in_at)
                .map(|(at, _)| self.started + *at)
                .min()
                .unwrap_or_else(far_future);
            match self.wait("the job", wake) {
                Ok(Some((w, message))) => self.handle(w, message)?,
                Ok(None) | Err(EngineError::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(JobSummary {
            instances: self.finished.values().cloned().collect(),
            elapsed: self.started.elapsed(),
            plan: self.plan.clone(),
            events: std::mem::take(&mut self.timeline),
            recoveries: std::mem::take(&mut self.recoveries),
            checkpoints: self.checkpoints,
            history: std::mem::take(&mut self.history),
            scale_events: std::mem::take(&mut self.scale_events),
        })
    }

    fn deploy(&self, worker: WorkerId) -> Result<(), EngineError> {
        self.send(
            worker,
            &ToWorker::Deploy {
                query: self.config.query.clone(),
                params: self.config.params.to_string(),
                plan: self.plan.clone(),
                worker,
                checkpoint_ms: self.config.checkpoint_interval.as_millis() as u64,
            },
        )
    }

    /// The next worker message, doing the periodic duties meanwhile: fire
    /// injected kills, watch heartbeats, admit new pool workers. `None`: a
    /// worker was lost (queued in `failing` for the main loop to recover);
    /// whoever waits checks whether it still can get what it waits for.
    fn wait(
        &mut self,
        what: &str,
        deadline: Instant,
    ) -> Result<Option<(WorkerId, ToCoordinator)>, EngineError> {
        loop {
            if let Some(deferred) = self.deferred.pop_front() {
                return Ok(Some(deferred));
            }
            self.check_cancel()?;
            if Instant::now() > deadline {
                return Err(EngineError::Timeout(format!(
                    "workers did not complete {what} within {:?}",
                    self.config.startup_timeout
                )));
            }
            self.commands();
            self.fire_kills();
            self.publish(false);
            if let Some(silent) = self.silent_worker().filter(|_| self.running) {
                self.lose(silent, "it missed its heartbeats".into());
                return Ok(None);
            }
            match self.events.recv_timeout(Duration::from_millis(20)) {
                Ok(Event::Message(w, message)) => return Ok(Some((w, message))),
                Ok(Event::Joined(stream, addr, pid, clock)) => {
                    self.join(stream, addr, pid, clock)?
                }
                Ok(Event::Lost(w, reason)) => {
                    if self.alive(w) {
                        if !self.running {
                            return Err(EngineError::WorkerFailed { worker: w, reason });
                        }
                        self.lose(w, reason);
                        return Ok(None);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(EngineError::Protocol(
                        "every worker connection closed".into(),
                    ))
                }
            }
        }
    }

    /// A pool worker joined: deploy the query on it and keep it ready.
    fn join(
        &mut self,
        stream: TcpStream,
        addr: String,
        pid: u32,
        clock: Arc<AtomicU64>,
    ) -> Result<(), EngineError> {
        let w = self.add_worker(stream, addr, pid, clock)?;
        self.deploy(w)?;
        self.pool.push_back(w);
        self.record("pool", format!("worker {w} (pid {pid}) joined the pool"));
        Ok(())
    }

    /// Declares worker `w` failed: it is killed (a hung worker must not come
    /// back and interfere), leaves the pool and waits for recovery.
    fn lose(&mut self, w: WorkerId, reason: String) {
        let link = &mut self.links[w.index()];
        if !link.alive {
            return;
        }
        link.alive = false;
        kill_process(link.pid);
        self.pool.retain(|p| *p != w);
        let detected_ms = self.elapsed_ms();
        self.failing.push(Failure {
            worker: w,
            reason,
            detected_ms,
        });
    }

    /// Whether worker `w` is connected and not declared failed.
    fn alive(&self, w: WorkerId) -> bool {
        self.links.get(w.index()).is_some_and(|l| l.alive)
    }

    fn silent_worker(&self) -> Option<WorkerId> {
        let timeout = self.config.heartbeat_timeout.as_millis() as u64;
        let now = now_ms();
        self.links
            .iter()
            .position(|l| {
                l.alive && now.saturating_sub(l.last_heard.load(Ordering::Relaxed)) > timeout
            })
            .map(|w| WorkerId(w as u32))
    }

    fn fire_kills(&mut self) {
        let now = self.started.elapsed();
        let due: Vec<KillSpec> = self.kills.iter().filter(|k| k.at <= now).cloned().collect();
        self.kills.retain(|k| k.at > now);
        for kill in due {
            let worker = self
                .query
                .find(&kill.operator)
                .and_then(|node| self.plan.nodes[node].instances.get(kill.index as usize))
                .map(|i| i.worker);
            match worker {
                Some(w) if self.alive(w) => {
                    kill_process(self.links[w.index()].pid);
                    self.record(
                        "kill",
                        format!(
                            "killed worker {w} (pid {}) hosting {}[{}]",
                            self.links[w.index()].pid,
                            kill.operator,
                            kill.index
                        ),
                    );
                }
                _ => tracing::warn!(
                    "--kill {}:{}: no such live instance",
                    kill.operator,
                    kill.index
                ),
            }
        }
    }

    fn handle(&mut self, worker: WorkerId, message: ToCoordinator) -> Result<(), EngineError> {
        match message {
            ToCoordinator::Checkpoint {
                instance,
                incarnation,
                frontier,
                bytes,
            } => {
                let current = self.plan.instance(instance).map(|(_, p)| p.incarnation);
                if current != Some(incarnation) {
                    // From an incarnation that was replaced (split or restored).
                    return Ok(());
                }
                self.checkpointed(instance, incarnation, frontier, bytes)
            }
            ToCoordinator::BackupStored {
                instance,
                incarnation,
                frontier,
            } => {
                self.backup_stored(worker, instance, incarnation, frontier);
                Ok(())
            }
            ToCoordinator::InstanceFinished { instance, stats } => {
                let (node, placed) = self.plan.instance(instance).ok_or_else(|| {
                    EngineError::Protocol(format!("unknown instance {instance} finished"))
                })?;
                let operator = self.plan.nodes[node].name.clone();
                tracing::info!(%instance, %operator, "instance finished");
                let report = InstanceReport {
                    operator,
                    instance,
                    worker: placed.worker,
                    stats,
                };
                self.finished.insert(instance, report);
                Ok(())
            }
            ToCoordinator::Metrics(metrics) => {
                self.metrics(metrics);
                self.autoscale()
            }
            ToCoordinator::CaughtUp { instance } => {
                self.caught_up(instance);
                Ok(())
            }
            // Answers to a reconfiguration that already gave up waiting.
            ToCoordinator::Restored { .. }
            | ToCoordinator::Paused { .. }
            | ToCoordinator::Backup { .. }
            | ToCoordinator::Deployed => Ok(()),
            other => self.unexpected(worker, other),
        }
    }

    fn unexpected(&self, worker: WorkerId, message: ToCoordinator) -> Result<(), EngineError> {
        match message {
            ToCoordinator::WorkerFailed { error } => Err(EngineError::WorkerFailed {
                worker,
                reason: error,
            }),
            // The instance's error already names its operator and instance.
            ToCoordinator::InstanceFailed { error, .. } => Err(EngineError::WorkerFailed {
                worker,
                reason: error,
            }),
            other => Err(EngineError::Protocol(format!(
                "worker {worker} sent {other:?} at an unexpected time"
            ))),
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Kills a local worker process at once (SIGKILL), as a crash would.
pub fn kill_process(pid: u32) {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}
