//! Ready-made sources and sinks, each checkpointable, so that a query over
//! files or generated data is exactly once without connector code of its
//! own:
//!
//! - [`FileSource`]: a line-delimited file, restored by byte offset;
//! - [`DirectorySource`]: the files of a directory, in name order, as they
//!   appear;
//! - [`Generator`]: tuples made from their sequence number, at a rate;
//! - [`EventTime`]: wraps a source to send event-time progress, for
//!   windows (`crate::api::window`);
//! - [`CsvSink`], [`JsonLinesSink`]: files truncated to the checkpointed
//!   length on restore, so that a recovered job writes exactly the output
//!   of a failure-free one;
//! - [`StdoutSink`]: prints tuples, for debugging (at least once).
//!
//! Sources that parse their lines take a [`BadRecords`] policy: skip a
//! record that does not parse and report it with its line number (the
//! default), or stop the job.

mod directory;
mod event_time;
mod file;
mod generator;
mod lines;
mod pace;
mod sinks;

pub use directory::DirectorySource;
pub use event_time::EventTime;
pub use file::FileSource;
pub use generator::Generator;
pub use lines::BadRecords;
pub use sinks::{Csv, CsvSink, FileSink, JsonLines, JsonLinesSink, RecordFormat, StdoutSink};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::OperatorError;

/// Encodes a connector's position for a checkpoint.
fn encode_position<P: Serialize>(position: &P) -> Result<Vec<u8>, OperatorError> {
    bincode::serialize(position)
        .map_err(|e| OperatorError::new(format!("encoding the connector's position: {e}")))
}

/// Decodes a position written by [`encode_position`].
fn decode_position<P: DeserializeOwned>(bytes: &[u8]) -> Result<P, OperatorError> {
    bincode::deserialize(bytes).map_err(|e| {
        OperatorError::new(format!(
            "the checkpointed connector position does not decode ({e}): was the query changed \
             between the checkpoint and the restore?"
        ))
    })
}

#[cfg(test)]
mod tests;
