//! Worker links over TCP: an accept thread takes each worker's control
//! connection (`Register`) and its heartbeat connection (`Beat`), and one
//! reader thread per connection turns what arrives into [`LinkEvent`]s.
//! Heartbeats have their own connection so they never queue behind a large
//! checkpoint, and they only refresh the worker's clock (an atomic), so a
//! busy coordinator never mistakes queued heartbeats for silence.
//!
//! The heartbeat connection also carries the coordinator's *lease* the
//! other way: a thread per worker vouches for it every [`HEARTBEAT_EVERY`]
//! until it is fenced (declared failed); a worker that hears nothing for
//! the lease stops on its own (`worker::spawn_heartbeat`). Writes to a
//! worker that make no progress for the lease fail, and its link is then
//! lost: a partitioned worker never blocks the coordinator.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{ControlTraffic, LinkEvent, Links};
use crate::error::EngineError;
use crate::ids::WorkerId;
use crate::wire::control::{self, ToCoordinator, ToWorker, HEARTBEAT_EVERY};

/// The TCP implementation of [`Links`].
pub struct TcpLinks {
    raw_tx: Sender<Event>,
    raw: Receiver<Event>,
    streams: Vec<TcpStream>,
    /// When each worker was last heard, and whether it is fenced.
    liveness: Vec<Arc<Liveness>>,
    /// Bytes received on every control connection (by their readers).
    received: Arc<AtomicU64>,
    sent: u64,
}

/// What the threads of one worker's connections share.
struct Liveness {
    /// Milliseconds after [`epoch`] the worker was last heard, kept by its
    /// reader threads.
    heard: AtomicU64,
    /// The hosts its data channels heard from lately, as of its latest
    /// heartbeat, with when (milliseconds after [`epoch`]).
    peers_heard: Mutex<Vec<(String, u64)>>,
    /// Declared failed: its lease is no longer renewed.
    fenced: AtomicBool,
}

impl TcpLinks {
    /// Starts accepting workers on `listener` (which must be non-blocking);
    /// connections without `token` are refused. Workers hold a lease of
    /// `lease` (`JobConfig::lease`). Stops when `cancel` is set.
    pub fn start(
        listener: TcpListener,
        cancel: Arc<AtomicBool>,
        token: String,
        lease: Duration,
    ) -> Result<Self, EngineError> {
        let (raw_tx, raw) = crossbeam_channel::unbounded();
        spawn_acceptor(listener, raw_tx.clone(), cancel, token, lease)?;
        Ok(TcpLinks {
            raw_tx,
            raw,
            streams: Vec::new(),
            liveness: Vec::new(),
            received: Arc::default(),
            sent: 0,
        })
    }

    /// Registers a worker that joined and starts reading from it.
    fn add(&mut self, stream: TcpStream, liveness: Arc<Liveness>) -> Result<WorkerId, EngineError> {
        let worker = WorkerId(self.streams.len() as u32);
        liveness.heard.store(now_ms(), Ordering::Relaxed);
        spawn_reader(
            worker,
            &stream,
            self.raw_tx.clone(),
            liveness.clone(),
            self.received.clone(),
        )?;
        self.streams.push(stream);
        self.liveness.push(liveness);
        Ok(worker)
    }
}

impl Links for TcpLinks {
    fn send(&mut self, worker: WorkerId, message: &ToWorker) -> Result<(), EngineError> {
        let stream = self
            .streams
            .get(worker.index())
            .ok_or_else(|| EngineError::Protocol(format!("no connection to worker {worker}")))?;
        let frame = control::encode(message)?;
        self.sent += frame.len() as u64;
        let sent = control::send_encoded(&mut &*stream, &frame);
        if let Err(e) = &sent {
            // A write that made no progress for the lease (or failed): the
            // stream may hold half a frame, so the link is lost.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = self
                .raw_tx
                .send(Event::Lost(worker, format!("cannot send to it: {e}")));
        }
        sent
    }

    fn fence(&mut self, worker: WorkerId) {
        if let Some(liveness) = self.liveness.get(worker.index()) {
            liveness.fenced.store(true, Ordering::SeqCst);
        }
        if let Some(stream) = self.streams.get(worker.index()) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn next_event(&mut self, deadline: Instant) -> Result<Option<LinkEvent>, EngineError> {
        match self.raw.recv_deadline(deadline) {
            Ok(Event::Joined(stream, data_addr, pid, liveness)) => {
                let worker = self.add(stream, liveness)?;
                Ok(Some(LinkEvent::Joined {
                    worker,
                    data_addr,
                    pid,
                }))
            }
            Ok(Event::Message(w, message)) => Ok(Some(LinkEvent::Message(w, message))),
            Ok(Event::Lost(w, reason)) => Ok(Some(LinkEvent::Lost(w, reason))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(EngineError::Protocol(
                "every worker connection closed".into(),
            )),
        }
    }

    fn traffic(&self) -> ControlTraffic {
        ControlTraffic {
            received_bytes: self.received.load(Ordering::Relaxed),
            sent_bytes: self.sent,
        }
    }

    fn heard(&self, worker: WorkerId) -> Vec<(String, Instant)> {
        let Some(liveness) = self.liveness.get(worker.index()) else {
            return Vec::new();
        };
        let heard = liveness
            .peers_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        heard
            .iter()
            .map(|(host, at)| (host.clone(), epoch() + Duration::from_millis(*at)))
            .collect()
    }

    fn silent_for(&self, worker: WorkerId) -> Duration {
        let heard = self
            .liveness
            .get(worker.index())
            .map_or(0, |l| l.heard.load(Ordering::Relaxed));
        Duration::from_millis(now_ms().saturating_sub(heard))
    }
}

/// The clock origin for heartbeat bookkeeping.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// What the accept and reader threads report.
enum Event {
    Joined(TcpStream, String, u32, Arc<Liveness>),
    Message(WorkerId, ToCoordinator),
    Lost(WorkerId, String),
}

/// Accepts connections: a worker's control connection (`Register`) or its
/// heartbeat connection (`Beat`), which only refreshes the worker's clock.
fn spawn_acceptor(
    listener: TcpListener,
    events: Sender<Event>,
    cancel: Arc<AtomicBool>,
    token: String,
    lease: Duration,
) -> Result<(), EngineError> {
    let mut workers: HashMap<String, Arc<Liveness>> = HashMap::new();
    // A write that makes no progress for this long fails.
    let write_timeout = lease.max(Duration::from_secs(1));
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
                        let liveness = Arc::new(Liveness {
                            heard: AtomicU64::new(now_ms()),
                            peers_heard: Mutex::default(),
                            fenced: AtomicBool::new(false),
                        });
                        workers.insert(data_addr.clone(), liveness.clone());
                        let _ = stream.set_write_timeout(Some(write_timeout));
                        if events
                            .send(Event::Joined(stream, data_addr, pid, liveness))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok((stream, ToCoordinator::Beat { data_addr, .. })) => {
                        match workers.get(&data_addr) {
                            Some(liveness) => spawn_heartbeat(stream, liveness.clone(), lease),
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

/// Reads a worker's heartbeats into its clock, and renews its lease until
/// it is fenced (then closes the connection, which the worker takes as
/// the end of its lease).
fn spawn_heartbeat(stream: TcpStream, liveness: Arc<Liveness>, lease: Duration) {
    let renew = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot clone a heartbeat connection: {e}");
            return;
        }
    };
    let _ = renew.set_write_timeout(Some(lease));
    let reader = liveness.clone();
    let spawned = thread::Builder::new()
        .name("spate-coord-beat".into())
        .spawn(move || {
            let mut stream = stream;
            while let Ok(Some(ToCoordinator::Heartbeat { heard })) =
                control::recv::<ToCoordinator>(&mut stream)
            {
                let now = now_ms();
                reader.heard.store(now, Ordering::Relaxed);
                *reader.peers_heard.lock().unwrap_or_else(|p| p.into_inner()) = heard
                    .into_iter()
                    .map(|h| (h.host, now.saturating_sub(h.ms_ago)))
                    .collect();
            }
        })
        .and_then(|_| {
            thread::Builder::new()
                .name("spate-coord-lease".into())
                .spawn(move || renew_lease(renew, &liveness, lease))
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a heartbeat thread: {e}");
    }
}

fn renew_lease(mut stream: TcpStream, liveness: &Liveness, lease: Duration) {
    let Ok(frame) = control::encode(&ToWorker::Lease {
        ms: lease.as_millis() as u64,
    }) else {
        return;
    };
    while !liveness.fenced.load(Ordering::SeqCst) {
        if control::send_encoded(&mut stream, &frame).is_err() {
            return;
        }
        thread::sleep(HEARTBEAT_EVERY);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
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

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn spawn_reader(
    worker: WorkerId,
    stream: &TcpStream,
    events: Sender<Event>,
    liveness: Arc<Liveness>,
    received: Arc<AtomicU64>,
) -> Result<(), EngineError> {
    let mut stream = Counted {
        inner: stream
            .try_clone()
            .map_err(|e| EngineError::io("cloning a worker connection", e))?,
        count: received,
    };
    thread::Builder::new()
        .name(format!("spate-coord-w{worker}"))
        .spawn(move || loop {
            let event = match control::recv::<ToCoordinator>(&mut stream) {
                Ok(Some(message)) => {
                    liveness.heard.store(now_ms(), Ordering::Relaxed);
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
