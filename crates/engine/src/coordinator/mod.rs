//! The coordinator: gathers workers, deploys a query on them according to a
//! [`plan::Plan`], supervises the run and shuts everything down.

pub mod plan;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::api::QueryRegistry;
use crate::error::EngineError;
use crate::wire::control::{self, InstanceStats, ToCoordinator, ToWorker};
use plan::Plan;

/// What to run and on how many workers.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Registered query name.
    pub query: String,
    /// Parameters handed to the query builder on every process.
    pub params: serde_json::Value,
    /// Number of workers to wait for.
    pub workers: usize,
    /// Parallelism overrides per operator name.
    pub partitions: BTreeMap<String, u32>,
    /// How long workers have to join and deploy.
    pub startup_timeout: Duration,
    /// Set (e.g. by a Ctrl-C handler) to abort the job.
    pub cancel: Arc<AtomicBool>,
}

impl JobConfig {
    /// A job with default timeouts and no overrides.
    pub fn new(query: impl Into<String>, params: serde_json::Value, workers: usize) -> Self {
        JobConfig {
            query: query.into(),
            params,
            workers,
            partitions: BTreeMap::new(),
            startup_timeout: Duration::from_secs(30),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// One instance's outcome.
#[derive(Clone, Debug)]
pub struct InstanceReport {
    /// Operator name.
    pub operator: String,
    /// Instance id.
    pub instance: u32,
    /// Hosting worker.
    pub worker: u32,
    /// Its counters.
    pub stats: InstanceStats,
}

/// The outcome of a job that ran to the end of its input.
#[derive(Clone, Debug)]
pub struct JobSummary {
    /// Per instance, in plan order.
    pub instances: Vec<InstanceReport>,
    /// From start to the last instance finishing.
    pub elapsed: Duration,
    /// The plan that ran.
    pub plan: Plan,
}

/// A bound coordinator, ready for workers to connect.
pub struct Coordinator {
    listener: TcpListener,
    addr: SocketAddr,
}

struct WorkerLink {
    stream: TcpStream,
}

enum Event {
    Message(u32, ToCoordinator),
    Lost(u32, String),
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

    /// Runs `config` to completion. `supervise` is called a few times a
    /// second and may fail the job (e.g. when a local worker process died).
    pub fn run(
        &self,
        registry: &QueryRegistry,
        config: &JobConfig,
        supervise: &mut dyn FnMut() -> Result<(), EngineError>,
    ) -> Result<JobSummary, EngineError> {
        // Build once here so that bad parameters fail before any deployment.
        let query = registry.build(&config.query, &config.params)?;
        let (events_tx, events) = crossbeam_channel::unbounded();
        let (links, data_addrs) = self.gather(config, &events_tx, &events, supervise)?;
        let result = (|| {
            let plan = Plan::place(&query, data_addrs, &config.partitions)?;
            let params = config.params.to_string();
            for (w, link) in links.iter().enumerate() {
                send(
                    link,
                    &ToWorker::Deploy {
                        query: config.query.clone(),
                        params: params.clone(),
                        plan: plan.clone(),
                        worker: w as u32,
                    },
                )?;
            }
            let deadline = Instant::now() + config.startup_timeout;
            let mut deployed = 0;
            while deployed < links.len() {
                match next_event(&events, config, supervise, Some(deadline), "deployment")? {
                    (_, ToCoordinator::Deployed) => deployed += 1,
                    (w, other) => unexpected(w, other, &plan)?,
                }
            }
            let started = Instant::now();
            for link in &links {
                send(link, &ToWorker::Start)?;
            }
            tracing::info!(workers = links.len(), "job started");
            let total = plan.instances().count();
            let mut reports: BTreeMap<u32, InstanceReport> = BTreeMap::new();
            while reports.len() < total {
                match next_event(&events, config, supervise, None, "the job")? {
                    (_, ToCoordinator::InstanceFinished { instance, stats }) => {
                        let (node, placed) = plan.instance(instance).ok_or_else(|| {
                            EngineError::Protocol(format!("unknown instance {instance} finished"))
                        })?;
                        tracing::info!(instance, operator = %plan.nodes[node].name, "instance finished");
                        reports.insert(
                            instance,
                            InstanceReport {
                                operator: plan.nodes[node].name.clone(),
                                instance,
                                worker: placed.worker,
                                stats,
                            },
                        );
                    }
                    (w, other) => unexpected(w, other, &plan)?,
                }
            }
            Ok(JobSummary {
                instances: reports.into_values().collect(),
                elapsed: started.elapsed(),
                plan,
            })
        })();
        for link in &links {
            // Best effort: a worker that already died cannot be told.
            let _ = send(link, &ToWorker::Shutdown);
        }
        result
    }

    /// Waits for `config.workers` workers to connect and register.
    fn gather(
        &self,
        config: &JobConfig,
        events_tx: &Sender<Event>,
        events: &Receiver<Event>,
        supervise: &mut dyn FnMut() -> Result<(), EngineError>,
    ) -> Result<(Vec<WorkerLink>, Vec<String>), EngineError> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| EngineError::io("configuring the coordinator socket", e))?;
        let deadline = Instant::now() + config.startup_timeout;
        let mut links = Vec::new();
        let mut addrs = Vec::new();
        while links.len() < config.workers {
            check_cancel(config)?;
            supervise()?;
            if let Ok(Event::Lost(worker, reason)) = events.try_recv() {
                return Err(EngineError::WorkerFailed { worker, reason });
            }
            if Instant::now() > deadline {
                return Err(EngineError::Timeout(format!(
                    "only {} of {} workers joined within {:?}",
                    links.len(),
                    config.workers,
                    config.startup_timeout
                )));
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(EngineError::io("accepting a worker", e)),
            };
            match handshake(stream) {
                Ok((stream, data_addr, pid)) => {
                    let index = links.len() as u32;
                    tracing::info!(worker = index, pid, %data_addr, "worker joined");
                    spawn_reader(index, &stream, events_tx.clone())?;
                    links.push(WorkerLink { stream });
                    addrs.push(data_addr);
                }
                Err(e) => tracing::warn!("refused a connection: {e}"),
            }
        }
        Ok((links, addrs))
    }
}

fn handshake(mut stream: TcpStream) -> Result<(TcpStream, String, u32), EngineError> {
    let configure = |s: &TcpStream| -> std::io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
    };
    configure(&stream).map_err(|e| EngineError::io("configuring a worker connection", e))?;
    control::read_hello(&mut stream)?;
    control::write_hello(&mut stream).map_err(|e| EngineError::io("greeting a worker", e))?;
    match control::recv::<ToCoordinator>(&mut stream)? {
        Some(ToCoordinator::Register { data_addr, pid }) => {
            stream
                .set_read_timeout(None)
                .map_err(|e| EngineError::io("configuring a worker connection", e))?;
            Ok((stream, data_addr, pid))
        }
        other => Err(EngineError::Protocol(format!(
            "expected a worker registration, got {other:?}"
        ))),
    }
}

fn spawn_reader(worker: u32, stream: &TcpStream, events: Sender<Event>) -> Result<(), EngineError> {
    let mut stream = stream
        .try_clone()
        .map_err(|e| EngineError::io("cloning a worker connection", e))?;
    thread::Builder::new()
        .name(format!("spate-coord-w{worker}"))
        .spawn(move || loop {
            let event = match control::recv::<ToCoordinator>(&mut stream) {
                Ok(Some(message)) => Event::Message(worker, message),
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

fn send(link: &WorkerLink, message: &ToWorker) -> Result<(), EngineError> {
    control::send(&mut &link.stream, message)
}

fn check_cancel(config: &JobConfig) -> Result<(), EngineError> {
    if config.cancel.load(Ordering::SeqCst) {
        Err(EngineError::Interrupted)
    } else {
        Ok(())
    }
}

fn next_event(
    events: &Receiver<Event>,
    config: &JobConfig,
    supervise: &mut dyn FnMut() -> Result<(), EngineError>,
    deadline: Option<Instant>,
    what: &str,
) -> Result<(u32, ToCoordinator), EngineError> {
    loop {
        check_cancel(config)?;
        supervise()?;
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(EngineError::Timeout(format!(
                "workers did not complete {what} within {:?}",
                config.startup_timeout
            )));
        }
        match events.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Message(w, message)) => return Ok((w, message)),
            Ok(Event::Lost(worker, reason)) => {
                return Err(EngineError::WorkerFailed { worker, reason })
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

fn unexpected(worker: u32, message: ToCoordinator, plan: &Plan) -> Result<(), EngineError> {
    match message {
        ToCoordinator::WorkerFailed { error } => Err(EngineError::WorkerFailed {
            worker,
            reason: error,
        }),
        ToCoordinator::InstanceFailed { error, instance } => {
            tracing::error!(worker, instance, ?plan.workers, "instance failed");
            // The instance's error already names its operator and instance.
            Err(EngineError::WorkerFailed {
                worker,
                reason: error,
            })
        }
        other => Err(EngineError::Protocol(format!(
            "worker {worker} sent {other:?} at an unexpected time"
        ))),
    }
}
