//! Control messages between the coordinator and its workers: length-prefixed
//! bincode, after a handshake carrying the protocol version.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{MAX_FRAME, PROTOCOL_VERSION};
use crate::coordinator::plan::Plan;
use crate::error::EngineError;

const MAGIC: &[u8; 4] = b"SPTC";

/// Counters an instance reports when it finishes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// Tuples the instance processed (sources: emitted).
    pub tuples_in: u64,
    /// Tuples the instance sent downstream.
    pub tuples_out: u64,
}

/// Worker to coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// A worker joins: where its data listener is.
    Register {
        /// Address other workers connect to for data channels.
        data_addr: String,
        /// OS process id, for `kill` and diagnostics.
        pid: u32,
    },
    /// The worker created its instances and is ready to start.
    Deployed,
    /// An instance reached the end of its input.
    InstanceFinished {
        /// Instance id.
        instance: u32,
        /// Its counters.
        stats: InstanceStats,
    },
    /// The worker could not deploy its share of the plan.
    WorkerFailed {
        /// What went wrong.
        error: String,
    },
    /// An instance stopped on an error.
    InstanceFailed {
        /// Instance id.
        instance: u32,
        /// What went wrong.
        error: String,
    },
}

/// Coordinator to worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Build the query and create this worker's instances.
    Deploy {
        /// The registered query name.
        query: String,
        /// The query's parameters, as JSON text.
        params: String,
        /// Which instance runs where.
        plan: Plan,
        /// The receiving worker's index in the plan.
        worker: u32,
    },
    /// Every worker is deployed: open data channels and start processing.
    Start,
    /// The job is over (or aborted): exit.
    Shutdown,
}

/// Writes the control handshake.
pub fn write_hello(w: &mut impl Write) -> io::Result<()> {
    let mut buf = [0u8; 6];
    buf[..4].copy_from_slice(MAGIC);
    buf[4..].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    w.write_all(&buf)
}

/// Reads and checks the control handshake.
pub fn read_hello(r: &mut impl Read) -> Result<(), EngineError> {
    let mut buf = [0u8; 6];
    r.read_exact(&mut buf)
        .map_err(|e| EngineError::io("reading control handshake", e))?;
    if &buf[..4] != MAGIC {
        return Err(EngineError::Protocol(
            "control handshake has a bad magic number (is this a Spate coordinator?)".into(),
        ));
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != PROTOCOL_VERSION {
        return Err(EngineError::Protocol(format!(
            "peer speaks protocol version {version}, this process {PROTOCOL_VERSION}; run the same spate build everywhere"
        )));
    }
    Ok(())
}

/// Sends one control message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), EngineError> {
    let body = bincode::serialize(msg)
        .map_err(|e| EngineError::Protocol(format!("encoding control message: {e}")))?;
    w.write_all(&(body.len() as u32).to_le_bytes())
        .and_then(|()| w.write_all(&body))
        .and_then(|()| w.flush())
        .map_err(|e| EngineError::io("sending control message", e))
}

/// Receives one control message; `Ok(None)` when the peer closed cleanly.
pub fn recv<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, EngineError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(EngineError::io("receiving control message", e)),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(EngineError::Protocol(format!(
            "control message of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| EngineError::io("receiving control message body", e))?;
    bincode::deserialize(&body)
        .map(Some)
        .map_err(|e| EngineError::Protocol(format!("malformed control message: {e}")))
}
