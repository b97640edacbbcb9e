//! The engine's error type.

use crate::ids::{InstanceId, WorkerId};
use std::io;

/// Everything that can stop a worker, the coordinator or a local cluster.
///
/// Messages are written for the person running the job: they say what went
/// wrong and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A socket or file operation failed; `context` says which one.
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A peer sent bytes that are not a valid frame.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A query name that no registry entry matches.
    #[error("unknown query `{0}`; run `spate queries` to list the queries this binary knows")]
    UnknownQuery(String),
    /// The query graph or its deployment options are inconsistent.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// User operator code reported an error.
    #[error("operator `{operator}` instance {instance}: {message}")]
    Operator {
        /// The operator's name.
        operator: String,
        /// The failing instance.
        instance: InstanceId,
        /// What the operator said.
        message: String,
    },
    /// A checkpoint could not be encoded, decoded, partitioned or restored.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// A worker process exited or lost its connection.
    #[error("worker {worker} failed: {reason}")]
    WorkerFailed {
        /// The worker's index in the cluster.
        worker: WorkerId,
        /// Why the coordinator considers it failed.
        reason: String,
    },
    /// A provisioner was asked to end a worker it did not start.
    #[error("cannot end worker {worker}'s process: {reason}")]
    CannotStop {
        /// The worker.
        worker: WorkerId,
        /// Why, and what to do.
        reason: String,
    },
    /// The job failed soon after the coordinator itself was paused for
    /// longer than the workers' lease, which stops every worker: the pause,
    /// not the workers, is what to look at.
    #[error("{source} (the coordinator itself was paused for {pause_ms} ms, by a machine starved of CPU or a stopped process or virtual machine, longer than the workers' {lease_ms} ms lease, so they stopped; where such pauses happen, raise --heartbeat-timeout-ms: the lease is twice it)")]
    CoordinatorPaused {
        /// How long the coordinator was paused.
        pause_ms: u64,
        /// The workers' lease.
        lease_ms: u64,
        /// How the job failed.
        #[source]
        source: Box<EngineError>,
    },
    /// A deadline passed while waiting for the cluster.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The job was interrupted (Ctrl-C or a termination signal).
    #[error("interrupted")]
    Interrupted,
}

impl EngineError {
    /// Wraps an I/O error with what the engine was doing when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }
}
