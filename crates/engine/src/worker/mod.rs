//! The worker process: hosts operator instances, one thread each, and the
//! data channels between them. It joins a coordinator, receives a plan,
//! creates and runs its instances, ships their checkpoints to their
//! holders and holds backups of other workers' instances, and restores
//! instances when the coordinator asks.

pub(crate) mod backup;
mod input;
mod instance;
mod local;
mod lookahead;
pub mod output;
mod schedule;
mod watch;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::api::{InstanceContext, Logic, ProcessLogic, Query, QueryRegistry};
use crate::error::EngineError;
use crate::plan::{AddedInstance, InstanceId, MergedInstance, Plan, WorkerId};
use crate::state::{Checkpoint, KeyRange};
use crate::wire::control::{
    self, BackupShipment, RestoreFrom, ToCoordinator, ToWorker, HEARTBEAT_EVERY,
};
use backup::{CaughtUp, Holdings, Shipper, Staging};
use input::{BackupDesk, ControlEvent, Inboxes};
use instance::{Inputs, Instance, Report};
use local::Locality;
use output::{Outbox, SenderIdentity};
use watch::LinkWatch;

/// How a worker finds its coordinator and where it listens.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Coordinator control address, `host:port`.
    pub coordinator: String,
    /// Address to accept data channels on (`127.0.0.1:0`: loopback, any port).
    pub listen: String,
    /// How long to keep trying to reach the coordinator.
    pub connect_timeout: Duration,
    /// The cluster's shared secret (empty: none).
    pub token: String,
}

impl WorkerOptions {
    /// Loopback data listener, 10 s to reach `coordinator`.
    pub fn new(coordinator: impl Into<String>) -> Self {
        WorkerOptions {
            coordinator: coordinator.into(),
            listen: "127.0.0.1:0".into(),
            connect_timeout: Duration::from_secs(10),
            token: String::new(),
        }
    }
}

type ControlWriter = Arc<Mutex<TcpStream>>;

/// What a deployment gave this worker.
struct Deployment {
    query: Arc<Query>,
    plan: Arc<Plan>,
    checkpoint_every: Option<Duration>,
    /// This worker, as the plan names it.
    worker: WorkerId,
    /// Created at deployment, started by `Start`.
    pending: Vec<Instance>,
}

/// Runs a worker until the coordinator shuts it down or goes away.
pub fn run_worker(registry: &QueryRegistry, options: &WorkerOptions) -> Result<(), EngineError> {
    let (listener, bound) = bind_data_listener(options)?;
    let inboxes = Inboxes::default();
    let (mut control, writer, data_addr) = register(options, bound)?;
    tracing::info!(%data_addr, coordinator = %options.coordinator, "worker registered");
    let holdings = Holdings::default();
    let desk = BackupDesk {
        holdings: holdings.clone(),
        writer: writer.clone(),
    };
    let watch = LinkWatch::start(writer.clone())?;
    input::spawn_acceptor(listener, inboxes.clone(), desk, watch.clone())?;
    spawn_heartbeat(options, data_addr, watch.clone())?;
    let shipper = Shipper::new(watch.clone());
    let reports = spawn_reporter(writer.clone(), shipper.clone())?;
    let mut worker = ControlLoop {
        registry,
        inboxes,
        watch,
        writer,
        reports,
        deployment: None,
        holdings,
        shipper,
        staging: Staging::default(),
    };
    loop {
        let Some(message) = control::recv::<ToWorker>(&mut control)? else {
            return worker.coordinator_closed();
        };
        if worker.handle(message)?.is_break() {
            return Ok(());
        }
    }
}

/// Binds the listener data channels connect to; returns it with the
/// address it is bound to.
fn bind_data_listener(options: &WorkerOptions) -> Result<(TcpListener, SocketAddr), EngineError> {
    let listener = TcpListener::bind(&options.listen).map_err(|e| {
        EngineError::io(
            format!("binding the data listener on {}", options.listen),
            e,
        )
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| EngineError::io("reading the data listener address", e))?;
    Ok((listener, bound))
}

/// Opens the control connection and registers this worker on it; returns
/// the connection to read orders from, the shared handle to write on it,
/// and the data address announced. A listener on every interface
/// (`0.0.0.0`) is announced at the address this host reaches the
/// coordinator from, which is where its peers can reach it too.
fn register(
    options: &WorkerOptions,
    bound: SocketAddr,
) -> Result<(TcpStream, ControlWriter, String), EngineError> {
    let mut control = connect_coordinator(options)?;
    let data_addr = if bound.ip().is_unspecified() {
        let local = control
            .local_addr()
            .map_err(|e| EngineError::io("reading the control connection's address", e))?;
        SocketAddr::new(local.ip(), bound.port()).to_string()
    } else {
        bound.to_string()
    };
    control::write_hello(&mut control)
        .map_err(|e| EngineError::io("greeting the coordinator", e))?;
    control::read_hello(&mut control)?;
    let writer: ControlWriter =
        Arc::new(Mutex::new(control.try_clone().map_err(|e| {
            EngineError::io("cloning the control connection", e)
        })?));
    send(
        &writer,
        &ToCoordinator::Register {
            data_addr: data_addr.to_string(),
            pid: std::process::id(),
            token: options.token.clone(),
        },
    )?;
    Ok((control, writer, data_addr))
}

/// What the worker's control loop reads and changes while it carries out
/// the coordinator's orders, one handler per kind of order.
struct ControlLoop<'r> {
    registry: &'r QueryRegistry,
    inboxes: Inboxes,
    /// Watches outgoing data channels for stalls.
    watch: LinkWatch,
    writer: ControlWriter,
    reports: crossbeam_channel::Sender<Report>,
    deployment: Option<Deployment>,
    /// Other workers' instances' backups.
    holdings: Holdings,
    /// Where this worker's instances' checkpoints go.
    shipper: Shipper,
    /// Parts of other instances' backups staged for live splits.
    staging: Staging,
}

impl ControlLoop<'_> {
    /// The coordinator closed the control connection: the end of the job,
    /// or, before any deployment, a refused registration.
    fn coordinator_closed(&self) -> Result<(), EngineError> {
        if self.deployment.is_none() {
            return Err(EngineError::Protocol(
                "the coordinator closed the connection before deploying anything (is the cluster token right?)".into(),
            ));
        }
        tracing::info!("coordinator closed the control connection; exiting");
        Ok(())
    }

    /// Carries out one order; breaks when the worker is to exit.
    fn handle(&mut self, message: ToWorker) -> Result<ControlFlow<()>, EngineError> {
        match message {
            ToWorker::Deploy {
                query,
                params,
                plan,
                worker,
                checkpoint_ms,
            } => self.deploy(&query, &params, plan, worker, checkpoint_ms),
            ToWorker::Start => self.start()?,
            ToWorker::BackupRoutes { routes } => self.shipper.set_routes(routes),
            ToWorker::DropBackup { instance } => self.holdings.drop_backup(instance),
            ToWorker::Replicate {
                instance,
                incarnation,
                to,
            } => backup::replicate(&self.holdings, &self.watch, instance, incarnation, to),
            ToWorker::FetchBackup { instance } => {
                let bytes = self.holdings.fetch(instance);
                tracing::debug!(%instance, bytes = bytes.as_ref().map(Vec::len), "backup fetched");
                reply(&self.writer, &ToCoordinator::Backup { instance, bytes });
            }
            ToWorker::Trim {
                downstream,
                frontier,
            } => {
                self.inboxes.broadcast(|| ControlEvent::Trim {
                    to: downstream,
                    frontier,
                });
            }
            ToWorker::Restore { instances, plan } => self.restore(instances, plan)?,
            ToWorker::PlanUpdate {
                plan,
                added,
                merged,
            } => self.plan_update(plan, added, merged)?,
            ToWorker::CutBackup { instance, parts } => {
                backup::cut(&self.holdings, &self.writer, instance, parts)
            }
            ToWorker::Stage {
                instance,
                range,
                holders,
                merge,
            } => {
                let logic = self.logic_for(instance, range);
                let (staging, writer) = (&self.staging, &self.writer);
                backup::stage(staging, writer, instance, range, merge, holders, logic)
            }
            ToWorker::Unstage { instance } => self.staging.drop_instance(instance),
            ToWorker::ReshapeBackup {
                instance,
                frontier,
                parts,
            } => backup::reshape(&self.holdings, &self.writer, instance, frontier, parts),
            ToWorker::MergeBackups {
                upper,
                frontier,
                merged,
                upper_holders,
            } => backup::merge_backups(
                &self.holdings,
                &self.writer,
                upper,
                frontier,
                merged,
                upper_holders,
            ),
            ToWorker::Rewire { peer } => self.inboxes.broadcast(|| ControlEvent::Rewire(peer)),
            ToWorker::CheckpointNow => self.inboxes.broadcast(|| ControlEvent::CheckpointNow),
            ToWorker::CheckpointFull { instance } => {
                self.inboxes.control(instance, ControlEvent::CheckpointFull)
            }
            // Leases come on the heartbeat connection (`watch_lease`).
            ToWorker::Lease { .. } => {}
            ToWorker::Pause { instance } => self.inboxes.control(instance, ControlEvent::Pause),
            ToWorker::Resume { instance, until } => {
                self.inboxes.control(instance, ControlEvent::Resume(until))
            }
            ToWorker::Shutdown => {
                tracing::info!("shutdown requested; exiting");
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Builds the query and creates (without starting) the instances the
    /// plan places on `worker`; a failure is the coordinator's to handle,
    /// not a reason to exit.
    fn deploy(
        &mut self,
        query: &str,
        params: &str,
        plan: Plan,
        worker: WorkerId,
        checkpoint_ms: u64,
    ) {
        let deployed = build_deployment(self.registry, query, params, plan, worker, checkpoint_ms)
            .and_then(|mut d| {
                let placed: Vec<InstanceId> = d
                    .plan
                    .instances()
                    .filter(|(_, i)| i.worker == worker)
                    .map(|(_, i)| i.id)
                    .collect();
                for id in placed {
                    let instance = create_instance(&d, id, None, &self.inboxes, &self.reports)?;
                    d.pending.push(instance);
                }
                Ok(d)
            });
        match deployed {
            Ok(d) => {
                self.deployment = Some(d);
                reply(&self.writer, &ToCoordinator::Deployed);
            }
            Err(e) => reply(
                &self.writer,
                &ToCoordinator::WorkerFailed {
                    error: e.to_string(),
                },
            ),
        }
    }

    /// Starts the instances the deployment created.
    fn start(&mut self) -> Result<(), EngineError> {
        let d = deployed(&mut self.deployment, "told to start before any deployment")?;
        for instance in std::mem::take(&mut d.pending) {
            start_instance(instance, d, self.writer.clone(), &self.watch, &self.inboxes)?;
        }
        Ok(())
    }

    /// Restarts each instance from its checkpoint (or empty) under the new
    /// plan, and tells the coordinator how each went. Backups held by other
    /// workers are fetched first, all at once.
    fn restore(
        &mut self,
        instances: Vec<(InstanceId, RestoreFrom)>,
        plan: Plan,
    ) -> Result<(), EngineError> {
        let d = deployed(
            &mut self.deployment,
            "told to restore before any deployment",
        )?;
        d.plan = Arc::new(plan);
        for (id, state) in fetch_states(instances, &self.staging) {
            let state = match state {
                Ok(state) => state,
                Err((holder, e)) => {
                    reply(
                        &self.writer,
                        &ToCoordinator::RestoreUnavailable {
                            instance: id,
                            holder,
                            reason: e.to_string(),
                        },
                    );
                    continue;
                }
            };
            tracing::debug!(%id, "restoring");
            // A split restores the lower half in place of the running
            // instance: the old incarnation stops first.
            self.inboxes.stop(id);
            let restored = state
                .decode()
                .and_then(|(checkpoint, live)| {
                    create_instance(d, id, checkpoint, &self.inboxes, &self.reports)
                        .map(|instance| Instance { live, ..instance })
                })
                .and_then(|instance| {
                    start_instance(instance, d, self.writer.clone(), &self.watch, &self.inboxes)
                });
            match restored {
                Ok(()) => reply(&self.writer, &ToCoordinator::Restored { instance: id }),
                Err(e) => reply(
                    &self.writer,
                    &ToCoordinator::InstanceFailed {
                        instance: id,
                        error: format!("could not restore: {e}"),
                    },
                ),
            }
        }
        Ok(())
    }

    /// What makes a logic of `instance`'s operator for a part of it that
    /// owns `range`, to restore a staged part into off the control thread
    /// (its state is adopted by the part's instance when it restores).
    fn logic_for(
        &self,
        instance: InstanceId,
        range: KeyRange,
    ) -> impl FnOnce() -> Result<Box<dyn ProcessLogic>, EngineError> + Send + 'static {
        let found = self.deployment.as_ref().and_then(|d| {
            let (node, placed) = d.plan.instance(instance)?;
            let ctx = InstanceContext {
                operator: d.query.name(node).to_string(),
                instance: instance.0,
                index: placed.index,
                parallelism: d.plan.nodes[node].instances.len() as u32,
                key_range: range,
                restoring: true,
                incarnation: placed.incarnation,
            };
            Some((d.query.clone(), node, ctx))
        });
        move || {
            let (query, node, ctx) = found.ok_or_else(|| {
                EngineError::Protocol(format!("instance {instance} is not in this worker's plan"))
            })?;
            match query.instantiate(node, &ctx)? {
                Logic::Process(logic) => Ok(logic),
                Logic::Source(_) => Err(EngineError::Protocol(format!(
                    "instance {instance} is a source: it cannot be staged"
                ))),
            }
        }
    }

    /// Adopts a scaled plan: stops the instances merged away and passes the
    /// change to every running instance to rewire itself.
    fn plan_update(
        &mut self,
        plan: Plan,
        added: Vec<AddedInstance>,
        merged: Vec<MergedInstance>,
    ) -> Result<(), EngineError> {
        let d = deployed(&mut self.deployment, "plan update before any deployment")?;
        d.plan = Arc::new(plan);
        // An instance merged into its neighbour stops here.
        for m in &merged {
            self.inboxes.stop(m.id);
        }
        let (added, merged) = (Arc::new(added), Arc::new(merged));
        self.inboxes.broadcast(|| ControlEvent::Replan {
            plan: d.plan.clone(),
            added: added.clone(),
            merged: merged.clone(),
        });
        Ok(())
    }
}

/// A restoring instance's state: encoded (none: it starts empty), or a
/// part of a live split, caught up off this thread.
enum State {
    Encoded(Option<Vec<u8>>),
    Staged(CaughtUp),
}

/// A staged logic whose keyed state a restored instance adopts.
type LiveState = Option<Box<dyn ProcessLogic>>;

impl State {
    /// The checkpoint to restore from, and the live keyed state to adopt
    /// instead of its entries, if any.
    fn decode(self) -> Result<(Option<Checkpoint>, LiveState), EngineError> {
        match self {
            State::Encoded(bytes) => Ok((bytes.map(Checkpoint::decode_owned).transpose()?, None)),
            State::Staged(CaughtUp::Whole(checkpoint)) => Ok((Some(checkpoint), None)),
            State::Staged(CaughtUp::Live(checkpoint, live)) => Ok((Some(checkpoint), Some(live))),
        }
    }
}

/// Each instance's state, fetching those held by other workers (and
/// catching up staged parts) in parallel; an error names the holder that
/// could not give its backup.
type FetchedState = Result<State, (WorkerId, EngineError)>;

fn fetch_states(
    instances: Vec<(InstanceId, RestoreFrom)>,
    staging: &Staging,
) -> Vec<(InstanceId, FetchedState)> {
    thread::scope(|scope| {
        let fetching: Vec<(InstanceId, thread::ScopedJoinHandle<'_, FetchedState>)> = instances
            .into_iter()
            .map(|(id, from)| {
                let fetch = scope.spawn(move || match from {
                    RestoreFrom::Nothing => Ok(State::Encoded(None)),
                    RestoreFrom::Checkpoint(bytes) => Ok(State::Encoded(Some(bytes.into_vec()))),
                    RestoreFrom::Holder(holder) => backup::fetch_from(&holder, id)
                        .map(|bytes| State::Encoded(Some(bytes)))
                        .map_err(|e| (holder.worker, e)),
                    RestoreFrom::Staged(from) => {
                        backup::catch_up(staging, &from).map(State::Staged)
                    }
                    RestoreFrom::StagedMerge { lower, upper } => {
                        backup::catch_up_merge(staging, &lower, &upper).map(State::Staged)
                    }
                });
                (id, fetch)
            })
            .collect();
        fetching
            .into_iter()
            .map(|(id, fetching)| {
                let state = fetching.join().unwrap_or_else(|_| {
                    Err((
                        WorkerId(0),
                        EngineError::Protocol("a backup fetch panicked".into()),
                    ))
                });
                (id, state)
            })
            .collect()
    })
}

/// The deployment an order needs; an order that comes before any is a
/// protocol error, `missing` says which.
fn deployed<'d>(
    deployment: &'d mut Option<Deployment>,
    missing: &str,
) -> Result<&'d mut Deployment, EngineError> {
    deployment
        .as_mut()
        .ok_or_else(|| EngineError::Protocol(missing.into()))
}

fn connect_coordinator(options: &WorkerOptions) -> Result<TcpStream, EngineError> {
    let deadline = Instant::now() + options.connect_timeout;
    loop {
        match TcpStream::connect(&options.coordinator) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(EngineError::io(
                    format!(
                        "cannot reach the coordinator at {} within {:?}; is it running and is the address right?",
                        options.coordinator, options.connect_timeout
                    ),
                    e,
                ))
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Sends from the control loop: when the coordinator is gone there is no one
/// to tell, and the next read ends the loop cleanly.
pub(crate) fn reply(writer: &ControlWriter, message: &ToCoordinator) {
    if let Err(e) = send(writer, message) {
        tracing::debug!("cannot reply to the coordinator: {e}");
    }
}

fn send(writer: &ControlWriter, message: &ToCoordinator) -> Result<(), EngineError> {
    // Encode before taking the lock: a large checkpoint must not hold up
    // heartbeats longer than the write itself.
    let frame = control::encode(message)?;
    let mut stream = writer.lock().unwrap_or_else(|p| p.into_inner());
    control::send_encoded(&mut *stream, &frame)
}

/// The exit status of a worker that stopped because its lease ran out.
pub const FENCED_EXIT_CODE: i32 = 3;

/// Heartbeats go on a connection of their own so that they never wait
/// behind a large checkpoint on the control connection; the coordinator's
/// leases come back on it. Each carries the hosts `watch` heard from lately.
fn spawn_heartbeat(
    options: &WorkerOptions,
    data_addr: String,
    watch: LinkWatch,
) -> Result<(), EngineError> {
    let mut stream = connect_coordinator(options)?;
    control::write_hello(&mut stream)
        .map_err(|e| EngineError::io("greeting the coordinator", e))?;
    control::read_hello(&mut stream)?;
    control::send(
        &mut stream,
        &ToCoordinator::Beat {
            data_addr,
            token: options.token.clone(),
        },
    )?;
    let leases = stream
        .try_clone()
        .map_err(|e| EngineError::io("cloning the heartbeat connection", e))?;
    let first_wait = options.connect_timeout;
    thread::Builder::new()
        .name("spate-lease".into())
        .spawn(move || watch_lease(leases, first_wait))
        .map_err(|e| EngineError::io("starting the lease thread", e))?;
    thread::Builder::new()
        .name("spate-heartbeat".into())
        .spawn(move || {
            let beat = || ToCoordinator::Heartbeat {
                heard: watch.heard_lately(),
            };
            while control::send(&mut stream, &beat()).is_ok() {
                thread::sleep(HEARTBEAT_EVERY);
            }
        })
        .map(|_| ())
        .map_err(|e| EngineError::io("starting the heartbeat thread", e))
}

/// Self-fencing: a worker that hears no lease from the coordinator for a
/// whole lease (the coordinator's failure timeout), or whose heartbeat
/// connection the coordinator closed, may have been declared failed and
/// replaced; it exits at once, so that it never sends, writes or acknowledges
/// anything a replacement also does.
///
/// Until the first lease the coordinator has not admitted this worker: a
/// refusal (a wrong token) is the control loop's to report.
fn watch_lease(mut stream: TcpStream, first_wait: Duration) {
    let mut lease = first_wait;
    let mut leased = false;
    loop {
        if stream.set_read_timeout(Some(lease)).is_err() {
            fence("cannot time the lease");
        }
        match control::recv::<ToWorker>(&mut stream) {
            Ok(Some(ToWorker::Lease { ms })) => {
                leased = true;
                lease = Duration::from_millis(ms.max(1));
            }
            Ok(Some(_)) => {}
            _ if !leased => return,
            Ok(None) => fence("the coordinator closed its heartbeat connection"),
            Err(e) => fence(&format!(
                "no lease from the coordinator for {} ms ({e})",
                lease.as_millis()
            )),
        }
    }
}

fn fence(why: &str) -> ! {
    tracing::warn!("stopping: {why}; this worker may have been declared failed");
    std::process::exit(FENCED_EXIT_CODE)
}

/// Forwards instances' reports off the instances' threads: checkpoints of
/// stateful instances and sinks (which may be large) to their holders, the
/// rest to the coordinator.
fn spawn_reporter(
    writer: ControlWriter,
    shipper: Shipper,
) -> Result<crossbeam_channel::Sender<Report>, EngineError> {
    let (tx, rx) = crossbeam_channel::unbounded::<Report>();
    let mut corrupt = CorruptionInjector::from_env();
    thread::Builder::new()
        .name("spate-reporter".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let batch: Vec<Report> = std::iter::once(first).chain(rx.try_iter()).collect();
                for mut report in backup::latest(batch, superseding) {
                    corrupt.maybe(&mut report);
                    let sent = match report {
                        Report::Checkpoint {
                            instance,
                            incarnation,
                            frontier,
                            bytes,
                            to_holders: true,
                        } => shipper.ship(BackupShipment {
                            instance,
                            incarnation,
                            frontier,
                            bytes,
                        }),
                        other => send(&writer, &to_coordinator(other)),
                    };
                    if let Err(e) = sent {
                        tracing::error!("cannot report to the coordinator: {e}");
                        return;
                    }
                }
            }
        })
        .map_err(|e| EngineError::io("starting the reporter thread", e))?;
    Ok(tx)
}

/// Fault injection for tests: with `SPATE_FAULT_CORRUPT_CHECKPOINTS=N`, every
/// Nth checkpoint this worker ships has one byte flipped, as a bad link or
/// disk would, so that tests can check that corrupt checkpoints are refused
/// and the previous good one is used.
struct CorruptionInjector {
    every: u64,
    seen: u64,
}

impl CorruptionInjector {
    fn from_env() -> Self {
        let every = std::env::var("SPATE_FAULT_CORRUPT_CHECKPOINTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        CorruptionInjector { every, seen: 0 }
    }

    fn maybe(&mut self, report: &mut Report) {
        if let (Report::Checkpoint { bytes, .. }, true) = (report, self.every > 0) {
            self.seen += 1;
            if self.seen.is_multiple_of(self.every) {
                let middle = bytes.len() / 2;
                if let Some(b) = bytes.get_mut(middle) {
                    *b ^= 0x5a;
                }
            }
        }
    }
}

/// Which instance's checkpoint a report is, and whether it is full.
fn superseding(report: &Report) -> Option<(InstanceId, bool)> {
    match report {
        Report::Checkpoint {
            instance, bytes, ..
        } => Some((*instance, backup::is_full(bytes))),
        _ => None,
    }
}

fn to_coordinator(report: Report) -> ToCoordinator {
    match report {
        Report::Checkpoint {
            instance,
            incarnation,
            frontier,
            bytes,
            ..
        } => ToCoordinator::Checkpoint {
            instance,
            incarnation,
            frontier,
            bytes,
        },
        Report::Finished { instance, stats } => ToCoordinator::InstanceFinished { instance, stats },
        Report::CaughtUp { instance } => ToCoordinator::CaughtUp { instance },
        Report::Paused {
            instance,
            incarnation,
            done,
        } => ToCoordinator::Paused {
            instance,
            incarnation,
            done,
        },
        Report::Metrics(metrics) => ToCoordinator::Metrics(metrics),
    }
}

/// Builds the query so that instances can be created from it.
fn build_deployment(
    registry: &QueryRegistry,
    query_name: &str,
    params: &str,
    plan: Plan,
    worker: WorkerId,
    checkpoint_ms: u64,
) -> Result<Deployment, EngineError> {
    let params: serde_json::Value = serde_json::from_str(params)
        .map_err(|e| EngineError::InvalidQuery(format!("query parameters are not JSON: {e}")))?;
    let query = registry.build(query_name, &params)?;
    plan.check_matches(&query)?;
    Ok(Deployment {
        query: Arc::new(query),
        plan: Arc::new(plan),
        checkpoint_every: (checkpoint_ms > 0).then(|| Duration::from_millis(checkpoint_ms)),
        worker,
        pending: Vec::new(),
    })
}

/// Creates instance `id` as placed in the deployment's plan; its inbox
/// exists from here on so that data channels opened early find it.
fn create_instance(
    d: &Deployment,
    id: InstanceId,
    restore: Option<Checkpoint>,
    inboxes: &Inboxes,
    reports: &crossbeam_channel::Sender<Report>,
) -> Result<Instance, EngineError> {
    let (node, placed) = d
        .plan
        .instance(id)
        .ok_or_else(|| EngineError::InvalidQuery(format!("instance {id} is not in the plan")))?;
    let ctx = InstanceContext {
        operator: d.query.name(node).to_string(),
        instance: id.0,
        index: placed.index,
        parallelism: d.plan.nodes[node].instances.len() as u32,
        key_range: placed.key_range,
        restoring: restore.is_some(),
        incarnation: placed.incarnation,
    };
    let logic = d.query.instantiate(node, &ctx)?;
    let inputs = Inputs::new(&d.plan, &d.query, node);
    Ok(Instance {
        me: SenderIdentity {
            instance: id,
            incarnation: placed.incarnation,
        },
        query: d.query.clone(),
        node,
        operator: ctx.operator,
        key_range: placed.key_range,
        logic,
        inputs,
        inbox: inboxes.create(id, placed.incarnation),
        source_slot: placed.source_slot,
        restore,
        live: None,
        checkpoint_every: d.checkpoint_every,
        reports: reports.clone(),
    })
}

/// Opens one channel per downstream instance (in process to those on this
/// worker) and routing tables per edge.
fn connect_outbox(
    d: &Deployment,
    me: SenderIdentity,
    watch: LinkWatch,
    inboxes: Inboxes,
) -> Result<Outbox, EngineError> {
    let (node, _) = d.plan.instance(me.instance).ok_or_else(|| {
        EngineError::InvalidQuery(format!("instance {} is not in the plan", me.instance))
    })?;
    let local = Locality {
        worker: d.worker,
        inboxes,
    };
    let mut outbox = Outbox::new(me, d.checkpoint_every.is_some())
        .with_watch(watch)
        .with_locality(local);
    outbox.reconcile(&d.plan, &d.query, node, &[], &[])?;
    Ok(outbox)
}

fn start_instance(
    instance: Instance,
    d: &Deployment,
    writer: ControlWriter,
    watch: &LinkWatch,
    inboxes: &Inboxes,
) -> Result<(), EngineError> {
    let watch = watch.clone();
    let inboxes = inboxes.clone();
    let name = format!("spate-{}-{}", instance.operator, instance.me.instance);
    let me = instance.me;
    let d = Deployment {
        query: d.query.clone(),
        plan: d.plan.clone(),
        checkpoint_every: d.checkpoint_every,
        worker: d.worker,
        pending: Vec::new(),
    };
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let result =
                connect_outbox(&d, me, watch, inboxes).and_then(|outbox| instance.run(outbox));
            if let Err(e) = result {
                tracing::error!(instance = %me.instance, "instance failed: {e}");
                let failed = ToCoordinator::InstanceFailed {
                    instance: me.instance,
                    error: e.to_string(),
                };
                if let Err(e) = send(&writer, &failed) {
                    tracing::error!(
                        "cannot report instance {} to the coordinator: {e}",
                        me.instance
                    );
                }
            }
        })
        .map(|_| ())
        .map_err(|e| EngineError::io("starting an instance thread", e))
}
