//! Worker links in memory, for tests of the coordinator's protocols: the
//! test plays every worker through a [`Network`], the coordinator talks to
//! a [`MemoryLinks`] exactly as it would over TCP.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{ControlTraffic, LinkEvent, Links};
use crate::error::EngineError;
use crate::ids::WorkerId;
use crate::wire::control::{self, ToCoordinator, ToWorker};

/// The coordinator's end.
pub(crate) struct MemoryLinks {
    events: Receiver<LinkEvent>,
    sent: Sender<(WorkerId, ToWorker)>,
    state: Arc<Mutex<Shared>>,
    /// Messages counted at their encoded size, as over TCP.
    traffic: ControlTraffic,
}

/// What both ends see: which workers are cut off or silent.
#[derive(Default)]
struct Shared {
    /// Connections that broke: sending to them fails.
    broken: HashSet<WorkerId>,
    /// Workers whose heartbeats stopped.
    silent: HashSet<WorkerId>,
    /// Workers the coordinator fenced.
    fenced: HashSet<WorkerId>,
    /// The hosts each worker's data channels heard from, and when.
    heard: HashMap<WorkerId, Vec<(String, Instant)>>,
}

/// The workers' end, driven by a test.
#[derive(Clone)]
pub(crate) struct Network {
    events: Sender<LinkEvent>,
    /// Everything the coordinator sent, in order.
    pub(crate) sent: Receiver<(WorkerId, ToWorker)>,
    state: Arc<Mutex<Shared>>,
    next: Arc<AtomicU32>,
    hosts: Hosts,
}

/// How a network's workers are spread over hosts.
#[derive(Clone, Copy)]
enum Hosts {
    /// All on one.
    One,
    /// Each on a host of its own.
    Each,
    /// Worker `w` on host `w % n`.
    RoundRobin(u32),
}

/// A connected pair of ends, every worker on one host.
pub(crate) fn pair() -> (MemoryLinks, Network) {
    pair_on_hosts(Hosts::One)
}

/// A connected pair of ends, each worker on a host of its own (what
/// stalled channels between hosts are judged by).
pub(crate) fn pair_one_host_each() -> (MemoryLinks, Network) {
    pair_on_hosts(Hosts::Each)
}

/// A connected pair of ends, worker `w` on host `w % hosts` (hosts with
/// more than one worker each).
pub(crate) fn pair_over_hosts(hosts: u32) -> (MemoryLinks, Network) {
    pair_on_hosts(Hosts::RoundRobin(hosts))
}

fn pair_on_hosts(hosts: Hosts) -> (MemoryLinks, Network) {
    let (events_tx, events) = crossbeam_channel::unbounded();
    let (sent_tx, sent) = crossbeam_channel::unbounded();
    let state = Arc::new(Mutex::new(Shared::default()));
    (
        MemoryLinks {
            events,
            sent: sent_tx,
            state: state.clone(),
            traffic: ControlTraffic::default(),
        },
        Network {
            events: events_tx,
            sent,
            state,
            next: Arc::new(AtomicU32::new(0)),
            hosts,
        },
    )
}

impl Network {
    /// A new worker joins; returns its id.
    pub(crate) fn join(&self) -> WorkerId {
        let worker = WorkerId(self.next.fetch_add(1, Ordering::SeqCst));
        let joined = LinkEvent::Joined {
            worker,
            data_addr: self.addr(worker),
            pid: 10_000 + worker.0,
        };
        let _ = self.events.send(joined);
        worker
    }

    /// `worker`'s data address.
    pub(crate) fn addr(&self, worker: WorkerId) -> String {
        match self.hosts {
            Hosts::One => format!("memory:{worker}"),
            Hosts::Each => format!("host{}:{worker}", worker.0),
            Hosts::RoundRobin(n) => format!("host{}:{worker}", worker.0 % n),
        }
    }

    /// The host part of `worker`'s data address.
    pub(crate) fn host(&self, worker: WorkerId) -> String {
        crate::wire::host_part(&self.addr(worker)).to_string()
    }

    /// `worker` says `message`.
    pub(crate) fn say(&self, worker: WorkerId, message: ToCoordinator) {
        let _ = self.events.send(LinkEvent::Message(worker, message));
    }

    /// `worker`'s connection breaks (it crashed or was ended).
    pub(crate) fn break_link(&self, worker: WorkerId) {
        let fresh = self.lock().broken.insert(worker);
        if fresh {
            let _ = self
                .events
                .send(LinkEvent::Lost(worker, "its connection broke".into()));
        }
    }

    /// `worker` stops sending heartbeats but stays connected.
    pub(crate) fn silence(&self, worker: WorkerId) {
        self.lock().silent.insert(worker);
    }

    /// `worker`'s data channels heard from `host` just now, as its next
    /// heartbeat says.
    pub(crate) fn hear(&self, worker: WorkerId, host: &str) {
        self.lock()
            .heard
            .entry(worker)
            .or_default()
            .push((host.to_string(), Instant::now()));
    }

    /// Whether the coordinator fenced `worker`.
    pub(crate) fn is_fenced(&self, worker: WorkerId) -> bool {
        self.lock().fenced.contains(&worker)
    }

    /// Whether `worker`'s connection broke.
    pub(crate) fn is_broken(&self, worker: WorkerId) -> bool {
        self.lock().broken.contains(&worker)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Links for MemoryLinks {
    fn send(&mut self, worker: WorkerId, message: &ToWorker) -> Result<(), EngineError> {
        if self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .broken
            .contains(&worker)
        {
            return Err(EngineError::Protocol(format!(
                "worker {worker}'s connection is broken"
            )));
        }
        self.traffic.sent_bytes += control::encode(message).map_or(0, |f| f.len() as u64);
        self.sent
            .send((worker, message.clone()))
            .map_err(|_| EngineError::Protocol("the test network is gone".into()))
    }

    fn next_event(&mut self, deadline: Instant) -> Result<Option<LinkEvent>, EngineError> {
        match self.events.recv_deadline(deadline) {
            Ok(event) => {
                if let LinkEvent::Message(_, message) = &event {
                    self.traffic.received_bytes +=
                        control::encode(message).map_or(0, |f| f.len() as u64);
                }
                Ok(Some(event))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(EngineError::Protocol("the test network is gone".into()))
            }
        }
    }

    fn fence(&mut self, worker: WorkerId) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fenced
            .insert(worker);
    }

    fn traffic(&self) -> ControlTraffic {
        self.traffic
    }

    fn heard(&self, worker: WorkerId) -> Vec<(String, Instant)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.heard.get(&worker).cloned().unwrap_or_default()
    }

    fn silent_for(&self, worker: WorkerId) -> Duration {
        let silent = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .silent
            .contains(&worker);
        if silent {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        }
    }
}
