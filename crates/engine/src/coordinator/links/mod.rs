//! The coordinator's connections to its workers, behind one narrow trait so
//! that every protocol decision above it runs the same over TCP (`tcp`)
//! or in memory (`memory`, for in-process tests of the protocols).

pub(super) mod tcp;

#[cfg(test)]
pub(super) mod memory;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::view::ControlTraffic;
use crate::error::EngineError;
use crate::ids::WorkerId;
use crate::wire::control::{ToCoordinator, ToWorker};

/// Something a worker connection reported.
#[derive(Debug)]
pub enum LinkEvent {
    /// A worker registered; workers are numbered in the order they join.
    Joined {
        /// Its id from now on.
        worker: WorkerId,
        /// Where its data channels listen.
        data_addr: String,
        /// Its process id, as the worker reported it (for display only:
        /// the coordinator never signals it).
        pid: u32,
    },
    /// A message from a worker.
    Message(WorkerId, ToCoordinator),
    /// A worker's connection broke.
    Lost(WorkerId, String),
}

/// The coordinator's end of every worker connection.
pub trait Links {
    /// Sends `message` to `worker`.
    fn send(&mut self, worker: WorkerId, message: &ToWorker) -> Result<(), EngineError>;
    /// The next event, or `None` once `deadline` passes. An error means no
    /// event can ever come again.
    fn next_event(&mut self, deadline: Instant) -> Result<Option<LinkEvent>, EngineError>;
    /// How long `worker` has been silent (no message, no heartbeat).
    fn silent_for(&self, worker: WorkerId) -> Duration;
    /// The hosts `worker`'s data channels heard from lately (data in,
    /// acknowledgements of data out), each with when it last did, as of its
    /// latest heartbeat: evidence of whom it still reaches.
    fn heard(&self, worker: WorkerId) -> Vec<(String, Instant)>;
    /// The hosts [`Links::heard`] lists at or after `since`.
    fn heard_since(&self, worker: WorkerId, since: Instant) -> BTreeSet<String> {
        self.heard(worker)
            .into_iter()
            .filter(|(_, at)| *at >= since)
            .map(|(host, _)| host)
            .collect()
    }
    /// Stops vouching for `worker`, declared failed: its lease is no longer
    /// renewed and its connections close, so that a worker cut off from the
    /// coordinator, or one that comes back from a partition, stops on its
    /// own.
    fn fence(&mut self, worker: WorkerId);
    /// Bytes of control messages received and sent so far.
    fn traffic(&self) -> ControlTraffic;
}
