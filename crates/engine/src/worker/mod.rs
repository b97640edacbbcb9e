//! The worker process: hosts operator instances, one thread each, and the
//! data channels between them. It joins a coordinator, receives a plan,
//! creates its instances, and runs them until told to shut down.

mod input;
mod instance;
pub mod output;

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::api::{InstanceContext, Query, QueryRegistry};
use crate::coordinator::plan::Plan;
use crate::error::EngineError;
use crate::wire::control::{self, ToCoordinator, ToWorker};
use input::Inboxes;
use instance::Instance;
use output::{ChannelWriter, Outbox};

/// How a worker finds its coordinator and where it listens.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Coordinator control address, `host:port`.
    pub coordinator: String,
    /// Address to accept data channels on (`127.0.0.1:0`: loopback, any port).
    pub listen: String,
    /// How long to keep trying to reach the coordinator.
    pub connect_timeout: Duration,
}

impl WorkerOptions {
    /// Loopback data listener, 10 s to reach `coordinator`.
    pub fn new(coordinator: impl Into<String>) -> Self {
        WorkerOptions {
            coordinator: coordinator.into(),
            listen: "127.0.0.1:0".into(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

type ControlWriter = Arc<Mutex<TcpStream>>;

/// This worker's share of a deployed plan, waiting for `Start`.
struct Deployment {
    query: Arc<Query>,
    plan: Arc<Plan>,
    instances: Vec<Instance>,
}

/// Runs a worker until the coordinator shuts it down or goes away.
pub fn run_worker(registry: &QueryRegistry, options: &WorkerOptions) -> Result<(), EngineError> {
    let listener = TcpListener::bind(&options.listen).map_err(|e| {
        EngineError::io(
            format!("binding the data listener on {}", options.listen),
            e,
        )
    })?;
    let data_addr = listener
        .local_addr()
        .map_err(|e| EngineError::io("reading the data listener address", e))?
        .to_string();
    let inboxes = Inboxes::default();
    input::spawn_acceptor(listener, inboxes.clone())?;

    let mut control = connect_coordinator(options)?;
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
            data_addr: data_addr.clone(),
            pid: std::process::id(),
        },
    )?;
    tracing::info!(%data_addr, coordinator = %options.coordinator, "worker registered");

    let mut deployment: Option<Deployment> = None;
    loop {
        let Some(message) = control::recv::<ToWorker>(&mut control)? else {
            tracing::info!("coordinator closed the control connection; exiting");
            return Ok(());
        };
        match message {
            ToWorker::Deploy {
                query,
                params,
                plan,
                worker,
            } => match deploy(registry, &query, &params, plan, worker, &inboxes) {
                Ok(deployed) => {
                    deployment = Some(deployed);
                    send(&writer, &ToCoordinator::Deployed)?;
                }
                Err(e) => send(
                    &writer,
                    &ToCoordinator::WorkerFailed {
                        error: e.to_string(),
                    },
                )?,
            },
            ToWorker::Start => {
                let Some(Deployment {
                    query,
                    plan,
                    instances,
                }) = deployment.take()
                else {
                    return Err(EngineError::Protocol(
                        "told to start before any deployment".into(),
                    ));
                };
                for instance in instances {
                    start_instance(instance, query.clone(), plan.clone(), writer.clone())?;
                }
            }
            ToWorker::Shutdown => {
                tracing::info!("shutdown requested; exiting");
                return Ok(());
            }
        }
    }
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

fn send(writer: &ControlWriter, message: &ToCoordinator) -> Result<(), EngineError> {
    let mut stream = writer.lock().unwrap_or_else(|p| p.into_inner());
    control::send(&mut *stream, message)
}

/// Builds the query and this worker's instances; inboxes exist from here on
/// so that data channels opened by faster workers find their target.
fn deploy(
    registry: &QueryRegistry,
    query_name: &str,
    params: &str,
    plan: Plan,
    worker: u32,
    inboxes: &Inboxes,
) -> Result<Deployment, EngineError> {
    let params: serde_json::Value = serde_json::from_str(params)
        .map_err(|e| EngineError::InvalidQuery(format!("query parameters are not JSON: {e}")))?;
    let query = registry.build(query_name, &params)?;
    plan.check_matches(&query)?;
    let mut instances = Vec::new();
    for (node, placed) in plan.instances().filter(|(_, i)| i.worker == worker) {
        let ctx = InstanceContext {
            operator: query.name(node).to_string(),
            instance: placed.id,
            index: placed.index,
            parallelism: plan.nodes[node].instances.len() as u32,
            key_range: placed.key_range,
        };
        let logic = query.instantiate(node, &ctx)?;
        let inputs: HashMap<u32, usize> = plan
            .upstream_instances(&query, node)
            .into_iter()
            .enumerate()
            .map(|(channel, id)| (id, channel))
            .collect();
        instances.push(Instance {
            id: placed.id,
            operator: ctx.operator,
            logic,
            inputs,
            inbox: inboxes.create(placed.id),
            source_slot: placed.source_slot,
        });
    }
    Ok(Deployment {
        query: Arc::new(query),
        plan: Arc::new(plan),
        instances,
    })
}

/// Opens one channel per downstream instance and routing tables per edge.
fn connect_outbox(query: &Query, plan: &Plan, from: u32) -> Result<Outbox, EngineError> {
    let (node, _) = plan
        .instance(from)
        .ok_or_else(|| EngineError::InvalidQuery(format!("instance {from} is not in the plan")))?;
    let mut channel_of: HashMap<u32, usize> = HashMap::new();
    let mut channels = Vec::new();
    let mut ports = Vec::new();
    for &target in query.edge_targets(node) {
        let table = plan.routing(target)?;
        for (_, to) in table.entries() {
            if channel_of.contains_key(to) {
                continue;
            }
            let (_, placed) = plan.instance(*to).ok_or_else(|| {
                EngineError::InvalidQuery(format!("instance {to} is not in the plan"))
            })?;
            let addr = &plan.workers[placed.worker as usize];
            channel_of.insert(*to, channels.len());
            channels.push(ChannelWriter::connect(from, *to, addr)?);
        }
        ports.push(table.map(|to| channel_of[to]));
    }
    Ok(Outbox::new(ports, channels))
}

fn start_instance(
    instance: Instance,
    query: Arc<Query>,
    plan: Arc<Plan>,
    writer: ControlWriter,
) -> Result<(), EngineError> {
    let name = format!("spate-{}-{}", instance.operator, instance.id);
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let id = instance.id;
            let result = connect_outbox(&query, &plan, id).and_then(|outbox| instance.run(outbox));
            let report = match result {
                Ok(stats) => ToCoordinator::InstanceFinished {
                    instance: id,
                    stats,
                },
                Err(e) => {
                    tracing::error!(instance = id, "instance failed: {e}");
                    ToCoordinator::InstanceFailed {
                        instance: id,
                        error: e.to_string(),
                    }
                }
            };
            if let Err(e) = send(&writer, &report) {
                tracing::error!("cannot report instance {id} to the coordinator: {e}");
            }
        })
        .map(|_| ())
        .map_err(|e| EngineError::io("starting an instance thread", e))
}
