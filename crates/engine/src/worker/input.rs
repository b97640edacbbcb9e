//! The receiving side of a worker: a listener for data channels and one
//! reader thread per channel, feeding the target instance's bounded inbox.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::EngineError;
use crate::stamp::Stamp;
use crate::wire::data::{read_batch, read_hello};

/// Batches an inbox holds before readers block (and TCP pushes back upstream).
pub(crate) const INBOX_BATCHES: usize = 64;

/// What arrives in an instance's inbox.
pub(crate) enum InputEvent {
    /// A batch of tuples from upstream instance `from`, then its mark.
    Batch {
        from: u32,
        body: Vec<u8>,
        mark: Stamp,
    },
    /// The channel from `from` ended; `error` says why if not cleanly.
    Closed { from: u32, error: Option<String> },
}

/// Where readers deliver: instance id -> inbox.
#[derive(Clone, Default)]
pub(crate) struct Inboxes {
    senders: Arc<Mutex<HashMap<u32, Sender<InputEvent>>>>,
}

impl Inboxes {
    /// Creates the inbox of `instance`.
    pub(crate) fn create(&self, instance: u32) -> Receiver<InputEvent> {
        let (tx, rx) = crossbeam_channel::bounded(INBOX_BATCHES);
        self.lock().insert(instance, tx);
        rx
    }

    fn get(&self, instance: u32) -> Option<Sender<InputEvent>> {
        self.lock().get(&instance).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Sender<InputEvent>>> {
        // A poisoned map only means a reader panicked mid-insert; the map is
        // still consistent.
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Accepts data channels until the process exits.
pub(crate) fn spawn_acceptor(listener: TcpListener, inboxes: Inboxes) -> Result<(), EngineError> {
    thread::Builder::new()
        .name("spate-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let inboxes = inboxes.clone();
                        let spawned = thread::Builder::new()
                            .name("spate-reader".into())
                            .spawn(move || read_channel(stream, &inboxes));
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

fn read_channel(mut stream: TcpStream, inboxes: &Inboxes) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    // A peer that connects and says nothing must not hold a thread forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let hello = match read_hello(&mut stream) {
        Ok(hello) => hello,
        Err(e) => {
            tracing::warn!("dropping data connection from {peer}: {e}");
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    let Some(inbox) = inboxes.get(hello.to) else {
        tracing::warn!(
            "dropping data connection from {peer}: no instance {} here",
            hello.to
        );
        return;
    };
    let from = hello.from;
    let mut reader = std::io::BufReader::with_capacity(256 << 10, stream);
    loop {
        let event = match read_batch(&mut reader) {
            Ok(Some((body, mark))) => InputEvent::Batch { from, body, mark },
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
