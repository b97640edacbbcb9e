//! What a query author writes: operators, sinks and sources, and the
//! [`QueryBuilder`] that connects them.
//!
//! Stateful operators never own their state: they declare a key and a state
//! type, and the engine hands them `&mut State` for the key of each input.
//! That is what lets the engine checkpoint, restore and partition state.

pub mod aggregate;
mod block;
pub mod join;
mod query;
mod registry;
pub mod sink_file;
pub mod topk;
pub mod window;

use std::hash::Hash;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use query::{Edge, NodeKind, Query, QueryBuilder, Stream};
pub(crate) use query::{Logic, ProcessLogic, SourceLogic, SourcePoll};
pub use registry::{QueryFactory, QueryRegistry};

use crate::hash::key_hash;
use crate::stamp::Stamp;
use crate::state::KeyRange;

/// A value that can travel between workers: any serde type.
pub trait Data: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Data for T {}

/// A key of a stateful operator: hashed (stably) for routing and partitioning.
pub trait Key: Data + Hash + Eq + Clone {}
impl<T: Data + Hash + Eq + Clone> Key for T {}

/// An error raised by user operator code; it stops the job with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OperatorError(pub String);

impl OperatorError {
    /// An error with a message for the user.
    pub fn new(message: impl Into<String>) -> Self {
        OperatorError(message.into())
    }
}

impl From<std::io::Error> for OperatorError {
    fn from(e: std::io::Error) -> Self {
        OperatorError(e.to_string())
    }
}

/// What a source did when asked for its next tuple.
pub enum SourceStep<T> {
    /// A tuple to send.
    Emit(T),
    /// Nothing is due before this instant (a paced source); the engine flushes
    /// what it holds and asks again then.
    WaitUntil(Instant),
    /// The input is exhausted.
    Done,
}

/// A source of tuples: reads a file, a socket or a generator. The
/// engine's [`crate::connectors`] hold ready-made ones; write your own for
/// other inputs. A source that checkpoints its position and restores it
/// makes recovery re-read only what the checkpoint had not seen.
///
/// ```
/// use spate_engine::{OperatorError, Source, SourceStep};
///
/// /// Counts down from `from` to 1.
/// struct Countdown {
///     next: u32,
/// }
///
/// impl Source for Countdown {
///     type Out = u32;
///     fn next(&mut self) -> Result<SourceStep<u32>, OperatorError> {
///         if self.next == 0 {
///             return Ok(SourceStep::Done);
///         }
///         self.next -= 1;
///         Ok(SourceStep::Emit(self.next + 1))
///     }
///     fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
///         Ok(Some(self.next.to_le_bytes().to_vec()))
///     }
///     fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
///         let bytes = position.try_into().map_err(|_| OperatorError::new("not a position"))?;
///         self.next = u32::from_le_bytes(bytes);
///         Ok(())
///     }
/// }
///
/// let mut first = Countdown { next: 3 };
/// assert!(matches!(first.next()?, SourceStep::Emit(3)));
/// let position = first.checkpoint()?.unwrap();
/// let mut restored = Countdown { next: 3 };
/// restored.restore(&position)?;
/// assert!(matches!(restored.next()?, SourceStep::Emit(2)));
/// # Ok::<(), OperatorError>(())
/// ```
pub trait Source: Send + 'static {
    /// The type of tuples it produces.
    type Out: Data;
    /// Produces the next step.
    fn next(&mut self) -> Result<SourceStep<Self::Out>, OperatorError>;

    /// The source's position, for a checkpoint: restoring it must make the
    /// source produce exactly what it would have produced next. `None` (the
    /// default) means "restart from the beginning on recovery", which is
    /// correct for a deterministic source (replayed tuples are dropped by
    /// stamp downstream), only slower.
    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        Ok(None)
    }

    /// Moves the source to a position returned by [`Source::checkpoint`].
    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        let _ = position;
        Err(OperatorError::new(
            "this source returned a checkpoint position but cannot restore one",
        ))
    }
}

/// A stateless operator: each input yields zero or more outputs.
pub trait Operator: Send + 'static {
    /// Input type.
    type In: Data;
    /// Output type.
    type Out: Data;
    /// Processes one input.
    fn process(
        &mut self,
        input: Self::In,
        out: &mut Output<'_, Self::Out>,
    ) -> Result<(), OperatorError>;
}

/// A stateful operator whose keyed state the engine owns: it names the
/// key of each input, and `process` gets `&mut State` for that key. Owning
/// the state is what lets the engine checkpoint it, restore it after a
/// failure and split it by key range when scaling out, without operator
/// code of its own.
///
/// ```
/// use spate_engine::{OperatorError, Output, StatefulOperator};
///
/// /// The running sum of the numbers of each remainder modulo 3.
/// struct SumByRemainder;
///
/// impl StatefulOperator for SumByRemainder {
///     type In = u64;
///     type Key = u64;
///     type State = u64; // a new key starts at 0
///     type Out = (u64, u64);
///
///     fn key(n: &u64) -> u64 {
///         n % 3
///     }
///
///     fn process(
///         &mut self,
///         n: u64,
///         sum: &mut u64,
///         out: &mut Output<'_, (u64, u64)>,
///     ) -> Result<(), OperatorError> {
///         *sum += n;
///         out.emit((n % 3, *sum))
///     }
/// }
///
/// assert_eq!(SumByRemainder::key(&7), 1);
/// ```
pub trait StatefulOperator: Send + 'static {
    /// Input type.
    type In: Data;
    /// The partitioning key of an input.
    type Key: Key;
    /// The state kept per key; a new key starts from `Default`.
    type State: Data + Default;
    /// Output type.
    type Out: Data;
    /// The key an input belongs to. Upstreams call this to route, so it must
    /// depend on the input alone.
    fn key(input: &Self::In) -> Self::Key;
    /// Processes one input with mutable access to its key's state.
    fn process(
        &mut self,
        input: Self::In,
        state: &mut Self::State,
        out: &mut Output<'_, Self::Out>,
    ) -> Result<(), OperatorError>;
}

/// The end of a query: writes results somewhere. For exactly-once output
/// a sink's checkpoint records how far its output goes, and its restore
/// cuts what came after (as the file sinks of [`crate::connectors`] do).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use spate_engine::{OperatorError, Sink};
///
/// /// Collects lines in memory; the checkpoint is how many there are.
/// struct Lines(Arc<Mutex<Vec<String>>>);
///
/// impl Sink for Lines {
///     type In = String;
///     fn write(&mut self, line: String) -> Result<(), OperatorError> {
///         self.0.lock().unwrap().push(line);
///         Ok(())
///     }
///     fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
///         Ok((self.0.lock().unwrap().len() as u64).to_le_bytes().to_vec())
///     }
///     fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
///         let kept = state.try_into().map(u64::from_le_bytes).unwrap_or(0);
///         self.0.lock().unwrap().truncate(kept as usize);
///         Ok(())
///     }
/// }
///
/// let output = Arc::new(Mutex::new(Vec::new()));
/// let mut sink = Lines(output.clone());
/// sink.write("a".into())?;
/// let checkpoint = sink.checkpoint()?;
/// sink.write("b".into())?; // lost in a failure: the replay writes it again
/// sink.restore(&checkpoint)?;
/// assert_eq!(*output.lock().unwrap(), ["a"]);
/// # Ok::<(), OperatorError>(())
/// ```
pub trait Sink: Send + 'static {
    /// Input type.
    type In: Data;
    /// Consumes one input.
    fn write(&mut self, input: Self::In) -> Result<(), OperatorError>;
    /// Called once when every input has ended: flush files here.
    fn finish(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }

    /// Makes everything written so far durable and returns what is needed to
    /// return to this point (e.g. a file length). With the defaults a
    /// recovered sink writes again what it wrote after its last checkpoint
    /// (at-least-once); implement both methods for exactly-once output.
    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        Ok(Vec::new())
    }

    /// Returns the output to the point of a [`Sink::checkpoint`] (e.g.
    /// truncates a file). Called on a sink created with
    /// [`InstanceContext::restoring`] set.
    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let _ = state;
        Ok(())
    }
}

/// Where an instance runs: handed to operator factories.
#[derive(Clone, Debug)]
pub struct InstanceContext {
    /// The operator's name.
    pub operator: String,
    /// Globally unique instance id.
    pub instance: u32,
    /// Index among the operator's instances (0-based).
    pub index: u32,
    /// Number of instances of the operator at deployment.
    pub parallelism: u32,
    /// Key-hash range this instance owns (stateful operators).
    pub key_range: KeyRange,
    /// The instance is being restored from a checkpoint (after a failure):
    /// a sink must then keep its existing output for `restore` to trim.
    pub restoring: bool,
    /// Which version of the instance this is: a sink that writes outside
    /// the engine fences older incarnations (zombies) with it.
    pub incarnation: crate::ids::Incarnation,
}

impl InstanceContext {
    /// Whether `key` is routed to this instance: lets an operator load only
    /// its share of reference data.
    pub fn owns<K: Hash + ?Sized>(&self, key: &K) -> bool {
        self.key_range.contains(key_hash(key))
    }
}

/// Where an operator's outputs go. The worker's outbox implements it, so
/// this layer never depends on the worker that hosts the operator.
pub(crate) trait Emit {
    /// The stamp of the input being processed.
    fn stamp(&self) -> Stamp;
    /// Sends an output on output edge `port`, to the instance owning
    /// `hash`: `encode` writes it straight into that channel's batch.
    fn send_with(
        &mut self,
        port: usize,
        hash: u64,
        encode: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError>;
}

/// The handle through which an operator emits its outputs. Every output
/// carries the stamp of the input being processed.
pub struct Output<'a, T> {
    edges: &'a [Edge<T>],
    outbox: &'a mut dyn Emit,
}

impl<'a, T: Data> Output<'a, T> {
    pub(crate) fn new(edges: &'a [Edge<T>], outbox: &'a mut dyn Emit) -> Self {
        Output { edges, outbox }
    }

    /// Sends `value` along every outgoing edge whose filter accepts it,
    /// encoded straight into each edge's batch (a second edge encodes it
    /// again rather than copy a first encoding).
    pub fn emit(&mut self, value: T) -> Result<(), OperatorError> {
        for (i, edge) in self.edges.iter().enumerate() {
            if !edge.accepts(&value) {
                continue;
            }
            let hash = edge.route_hash(&value, self.outbox.stamp());
            self.outbox.send_with(i, hash, &mut |batch| {
                bincode::serialize_into(batch, &value)
                    .map_err(|e| OperatorError(format!("encoding output: {e}")))
            })?;
        }
        Ok(())
    }

    /// The stamp of the input being processed.
    pub fn stamp(&self) -> Stamp {
        self.outbox.stamp()
    }
}
