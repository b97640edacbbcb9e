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

pub use buffer::{BufferedBatch, OutputBuffer};
pub use chain::{BackupChain, ChainError};
pub use checkpoint::{Checkpoint, CheckpointKind, CheckpointParts, StateEntry};
pub use keyed::KeyedState;
pub use routing::{KeyRange, RoutingTable};
