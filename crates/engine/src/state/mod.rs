//! The state primitives: the engine owns every stateful operator's keyed
//! state, and these functions checkpoint, restore and partition it.
//!
//! - [`KeyedState`]: the live `key -> value` map an instance's operator works on;
//! - [`Checkpoint`]: a self-contained snapshot of an instance (processing
//!   state, input frontier, output buffer), encodable for backup;
//! - [`Checkpoint::partition`]: split a checkpoint by key-hash ranges;
//! - [`Checkpoint::apply`] and [`BackupChain`]: incremental checkpoints
//!   (the keys changed since the last one) and the backups made of them;
//! - [`RoutingTable`]: which instance owns which key-hash range.

mod buffer;
mod chain;
mod checkpoint;
mod keyed;
mod routing;

pub use buffer::{BufferEncoding, BufferMark, BufferedBatch, OutputBuffer};
pub use chain::{BackupChain, ChainError, Cuts, RangeCut, SharedEncoding};
pub use checkpoint::{Checkpoint, CheckpointKind, CheckpointParts, StateEntry};
pub use keyed::{catch_up_steps, KeyedState};
pub use routing::{KeyRange, RoutingTable};

/// Checkpoints made for tests of what holds and moves them.
#[cfg(test)]
pub(crate) mod testing {
    use super::{CheckpointParts, KeyRange, KeyedState, OutputBuffer, StateEntry};
    use crate::stamp::Stamp;

    /// An encoded checkpoint of operator `count` over the whole key range
    /// at `frontier` with `keys`, full or (with a `base`) incremental.
    pub(crate) fn encoded(frontier: u64, keys: &[u64], base: Option<u64>) -> Vec<u8> {
        let mut state: KeyedState<u64, u64> = KeyedState::default();
        for k in keys {
            *state.get_or_default(*k) = frontier;
        }
        let entries = state.snapshot().expect("snapshots");
        encode_count(&entries, frontier, base, &[])
    }

    /// A checkpoint of operator `count` over the whole key range at
    /// `frontier` holding `entries`, full or (with a `base`) incremental.
    pub(crate) fn encode_count(
        entries: &[StateEntry],
        frontier: u64,
        base: Option<u64>,
        operator_state: &[u8],
    ) -> Vec<u8> {
        encode_count_over(KeyRange::FULL, entries, frontier, base, operator_state)
    }

    /// The same, of a partition owning `key_range`.
    pub(crate) fn encode_count_over(
        key_range: KeyRange,
        entries: &[StateEntry],
        frontier: u64,
        base: Option<u64>,
        operator_state: &[u8],
    ) -> Vec<u8> {
        let parts = CheckpointParts {
            operator: "count",
            key_range,
            frontier: Stamp(frontier),
            entries,
            output_buffer: &OutputBuffer::default(),
            operator_state,
        };
        match base {
            Some(base) => parts.encode_delta(Stamp(base), None),
            None => parts.encode(),
        }
        .expect("encodes")
    }
}
