//! The receiving side of a worker: a listener for data channels and one
//! reader thread per channel, feeding the target instance's bounded inbox.
//! Backup connections from other workers come to the same listener and
//! are told apart by their handshake.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::error::EngineError;
use crate::plan::{AddedInstance, Incarnation, InstanceId, MergedInstance, Plan, WorkerId};
use crate::stamp::Stamp;
use crate::wire::control;
use crate::wire::data::{read_batch, read_hello};

use super::backup::{self, Holdings};
use super::output::OpenedLink;
use super::watch::{LinkWatch, WatchedStream};
use super::ControlWriter;

/// Batches an inbox holds before readers block (and TCP pushes back upstream).
pub(crate) const INBOX_BATCHES: usize = 64;

/// Data for an instance, from its upstreams' channels.
pub(crate) enum InputEvent {
    /// A batch of tuples from incarnation `incarnation` of upstream instance
    /// `from`, on its connection number `connection`, then its mark.
    Batch {
        from: InstanceId,
        incarnation: Incarnation,
        connection: u32,
        body: Bytes,
        mark: Stamp,
    },
    /// The channel from `from` ended; `error` says why if not cleanly.
    Closed {
        from: InstanceId,
        error: Option<String>,
    },
}

/// Control for an instance, from the coordinator through its worker. It has
/// its own unbounded queue: the worker must never block on a busy instance.
pub(crate) enum ControlEvent {
    /// Downstream `to` checkpointed at `frontier`: trim the output buffer.
    Trim { to: InstanceId, frontier: Stamp },
    /// The plan changed (a recovery or a split): reconnect to restored
    /// downstreams, connect to added ones, accept added upstreams.
    Replan {
        plan: Arc<Plan>,
        added: Arc<Vec<AddedInstance>>,
        merged: Arc<Vec<MergedInstance>>,
    },
    /// Reconnect and replay every channel to an instance on this worker
    /// (`ToWorker::Rewire`).
    Rewire(WorkerId),
    /// A newer incarnation of this instance replaces it here: stop.
    Stop,
    /// Checkpoint at the next opportunity.
    CheckpointNow,
    /// Checkpoint in full at the next opportunity: the backup lost track
    /// of this instance's incremental checkpoints.
    CheckpointFull,
    /// Stop processing where you are (a merge is coming) and say where.
    Pause,
    /// Process up to exactly this stamp, checkpoint there (unless it is
    /// the end: the merge was called off) and stay paused.
    Resume(Stamp),
    /// A data channel this instance asked for is open (or failed to open).
    LinkOpened(OpenedLink),
}

/// The receiving ends of an instance's queues.
pub(crate) struct Inbox {
    pub(crate) data: Receiver<InputEvent>,
    pub(crate) control: Receiver<ControlEvent>,
}

#[derive(Clone)]
struct InboxSenders {
    /// The incarnation of the instance these queues feed.
    incarnation: Incarnation,
    data: Sender<InputEvent>,
    control: Sender<ControlEvent>,
}

/// Where events are delivered: instance id -> queues.
#[derive(Clone, Default)]
pub(crate) struct Inboxes {
    senders: Arc<Mutex<HashMap<InstanceId, InboxSenders>>>,
}

impl Inboxes {
    /// Tells a running instance to stop (it is being replaced here).
    pub(crate) fn stop(&self, instance: InstanceId) {
        self.control(instance, ControlEvent::Stop);
    }

    /// Creates the queues of `incarnation` of `instance` (replacing any
    /// earlier ones).
    pub(crate) fn create(&self, instance: InstanceId, incarnation: Incarnation) -> Inbox {
        let (data_tx, data) = crossbeam_channel::bounded(INBOX_BATCHES);
        let (control_tx, control) = crossbeam_channel::unbounded();
        self.lock().insert(
            instance,
            InboxSenders {
                incarnation,
                data: data_tx,
                control: control_tx,
            },
        );
        Inbox { data, control }
    }

    /// Sends `event` to every instance on this worker.
    pub(crate) fn broadcast(&self, event: impl Fn() -> ControlEvent) {
        for senders in self.lock().values() {
            let _ = senders.control.send(event());
        }
    }

    /// Sends `event` to `instance`, if it runs here.
    pub(crate) fn control(&self, instance: InstanceId, event: ControlEvent) {
        if let Some(senders) = self.lock().get(&instance) {
            let _ = senders.control.send(event);
        }
    }

    /// The data queue of `instance`, if it runs here as `incarnation` or a
    /// later one.
    fn data(&self, instance: InstanceId, incarnation: Incarnation) -> Option<Sender<InputEvent>> {
        self.lock()
            .get(&instance)
            .filter(|s| s.incarnation >= incarnation)
            .map(|s| s.data.clone())
    }

    /// Waits a little for the inbox of `incarnation` of `instance`: during a
    /// deployment, a recovery or a split an upstream may connect before the
    /// instance is created, or while the incarnation it replaces still runs.
    pub(super) fn wait_for(
        &self,
        instance: InstanceId,
        incarnation: Incarnation,
    ) -> Option<Sender<InputEvent>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(inbox) = self.data(instance, incarnation) {
                return Some(inbox);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, InboxSenders>> {
        // A poisoned map only means a thread panicked mid-insert; the map is
        // still consistent.
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a backup connection needs: where backups are kept, and the
/// connection to acknowledge them to the coordinator on.
#[derive(Clone)]
pub(crate) struct BackupDesk {
    pub(crate) holdings: Holdings,
    pub(crate) writer: ControlWriter,
}

/// Accepts data channels and backup connections until the process exits;
/// `watch` notes when each last brought data.
pub(crate) fn spawn_acceptor(
    listener: TcpListener,
    inboxes: Inboxes,
    desk: BackupDesk,
    watch: LinkWatch,
) -> Result<(), EngineError> {
    thread::Builder::new()
        .name("spate-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let (inboxes, desk, watch) = (inboxes.clone(), desk.clone(), watch.clone());
                        let spawned = thread::Builder::new()
                            .name("spate-reader".into())
                            .spawn(move || read_connection(stream, &inboxes, &desk, &watch));
                        if let Err(e) = spawned {
                            tracing::error!("cannot start a channel reader: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("accepting a data channel failed: {e}"),
                }
            }
        })
        .map(|_| ())
        .map_err(|e| EngineError::io("starting the data listener thread", e))
}

/// Serves an accepted connection: a data channel, or backups when it
/// opens with the control handshake.
fn read_connection(stream: TcpStream, inboxes: &Inboxes, desk: &BackupDesk, watch: &LinkWatch) {
    // A peer that connects and says nothing must not hold a thread forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    match peek_magic(&stream) {
        Ok(magic) if &magic == control::MAGIC => {
            backup::serve(watch.watch_incoming(stream), &desk.holdings, &desk.writer)
        }
        Ok(_) => read_channel(watch.watch_incoming(stream), inboxes),
        Err(e) => tracing::warn!("dropping a connection that sent no handshake: {e}"),
    }
}

/// The first four bytes of a connection, left unread.
fn peek_magic(stream: &TcpStream) -> std::io::Result<[u8; 4]> {
    let mut magic = [0u8; 4];
    loop {
        match stream.peek(&mut magic)? {
            4 => return Ok(magic),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn read_channel(mut stream: WatchedStream, inboxes: &Inboxes) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let hello = match read_hello(&mut stream) {
        Ok(hello) => hello,
        Err(e) => {
            tracing::warn!("dropping data connection from {peer}: {e}");
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    let Some(inbox) = inboxes.wait_for(hello.to, hello.to_incarnation) else {
        tracing::warn!(
            "dropping data connection from {peer}: no instance {} here",
            hello.to
        );
        return;
    };
    let from = hello.from;
    let incarnation = hello.incarnation;
    let connection = hello.connection;
    let mut reader = std::io::BufReader::with_capacity(256 << 10, stream);
    loop {
        let event = match read_batch(&mut reader) {
            Ok(Some((body, mark))) => InputEvent::Batch {
                from,
                incarnation,
                connection,
                body: body.into(),
                mark,
            },
            Ok(None) => InputEvent::Closed { from, error: None },
            Err(e) => InputEvent::Closed {
                from,
                error: Some(e.to_string()),
            },
        };
        let last = matches!(event, InputEvent::Closed { .. });
        if inbox.send(event).is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_to_a_new_incarnation_waits_for_it_rather_than_feed_the_old_one() {
        // The lower part of a split is restored in its parent's place; an
        // upstream part of the same decision may connect first.
        let inboxes = Inboxes::default();
        let to = InstanceId(4);
        let old = inboxes.create(to, Incarnation(1));
        assert!(inboxes.data(to, Incarnation(1)).is_some());
        assert!(inboxes.data(to, Incarnation(2)).is_none());
        let waiting = {
            let inboxes = inboxes.clone();
            thread::spawn(move || inboxes.wait_for(to, Incarnation(2)))
        };
        let new = inboxes.create(to, Incarnation(2));
        let channel = waiting
            .join()
            .unwrap()
            .expect("the new incarnation's inbox");
        channel
            .send(InputEvent::Closed {
                from: InstanceId(1),
                error: None,
            })
            .unwrap();
        assert!(matches!(
            new.data.try_recv(),
            Ok(InputEvent::Closed {
                from: InstanceId(1),
                ..
            })
        ));
        assert!(old.data.try_recv().is_err());
        // An upstream whose plan is older than this worker's joins the
        // newer incarnation (it is rewired when its plan catches up).
        assert!(inboxes.data(to, Incarnation(1)).is_some());
    }
}
