//! Event time for any source: its records as [`Timed`] events, with the
//! progress that closes windows.

use serde::{Deserialize, Serialize};

use super::{decode_position, encode_position};
use crate::api::window::{ProgressClock, Timed};
use crate::api::{OperatorError, Source, SourceStep};

/// The event time (ms) of a record.
type TimeOf<T> = Box<dyn Fn(&T) -> u64 + Send>;

/// Wraps a source whose records carry an event time (in time order), and
/// emits them as [`Timed::Event`]s with the [`Timed::Progress`] and
/// [`Timed::End`] elements that close event-time windows
/// ([`crate::api::window::AssignWindows`]). Its checkpoint is the wrapped
/// source's position with the progress promised so far. A record older
/// than progress already promised stops the job with an error naming its
/// time: sort the input, or coarsen the granularity.
///
/// ```
/// use spate_engine::api::window::Timed;
/// use spate_engine::connectors::{EventTime, Generator};
/// use spate_engine::{Source, SourceStep};
///
/// // An event every 400 ms of event time; progress every second.
/// let ticks = Generator::new(|n| n * 400).limit(4);
/// let mut timed = EventTime::new(ticks, 1_000, |t: &u64| *t);
/// let mut elements = Vec::new();
/// while let SourceStep::Emit(element) = timed.next()? {
///     elements.push(element);
/// }
/// assert_eq!(elements[..3], [
///     Timed::Event { time: 0, value: 0 },
///     Timed::Event { time: 400, value: 400 },
///     Timed::Event { time: 800, value: 800 },
/// ]);
/// assert_eq!(elements[3], Timed::Progress { from: 0, to: 1_000 });
/// assert_eq!(elements[5], Timed::End { from: 1_000, last: 1_200 });
/// # Ok::<(), spate_engine::OperatorError>(())
/// ```
pub struct EventTime<S: Source> {
    source: S,
    time_of: TimeOf<S::Out>,
    at: Position<S::Out>,
}

/// What an [`EventTime`] source adds to its source's position.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Serialize + serde::de::DeserializeOwned")]
struct Position<T> {
    clock: ProgressClock,
    /// The latest progress promised (ms).
    promised: u64,
    /// An event read but not yet sent (it waited for its progress).
    pending: Option<Timed<T>>,
    /// An event was sent: progress before the first event is not sent, as
    /// no window before it holds anything (and a log stamped with UNIX
    /// times would otherwise close every window since 1970).
    sent_event: bool,
    /// The end was sent.
    ended: bool,
}

/// An [`EventTime`] checkpoint: the wrapped source's, and its own.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    source: Vec<u8>,
    own: Vec<u8>,
}

impl<S: Source> EventTime<S> {
    /// `source`'s records, whose event time `time_of` gives, with progress
    /// promised in steps of `granularity_ms` (finer closes windows sooner,
    /// at the cost of more progress elements).
    pub fn new(
        source: S,
        granularity_ms: u64,
        time_of: impl Fn(&S::Out) -> u64 + Send + 'static,
    ) -> Self {
        EventTime {
            source,
            time_of: Box::new(time_of),
            at: Position {
                clock: ProgressClock::new(granularity_ms),
                promised: 0,
                pending: None,
                sent_event: false,
                ended: false,
            },
        }
    }
}

impl<S: Source> Source for EventTime<S> {
    type Out = Timed<S::Out>;

    fn next(&mut self) -> Result<SourceStep<Timed<S::Out>>, OperatorError> {
        if let Some(event) = self.at.pending.take() {
            return Ok(SourceStep::Emit(event));
        }
        if self.at.ended {
            return Ok(SourceStep::Done);
        }
        let value = match self.source.next()? {
            SourceStep::Emit(value) => value,
            SourceStep::WaitUntil(due) => return Ok(SourceStep::WaitUntil(due)),
            SourceStep::Done => {
                self.at.ended = true;
                return Ok(SourceStep::Emit(self.at.clock.end()));
            }
        };
        let time = (self.time_of)(&value);
        if time < self.at.promised {
            return Err(OperatorError::new(format!(
                "an event at {time} ms came after the source promised no event before {} ms: \
                 events must come in time order (sort the input, or coarsen the progress \
                 granularity)",
                self.at.promised
            )));
        }
        let event = Timed::Event { time, value };
        let first = !std::mem::replace(&mut self.at.sent_event, true);
        match self.at.clock.observe(time) {
            Some(Timed::Progress { to, .. }) if first => {
                self.at.promised = to;
                Ok(SourceStep::Emit(event))
            }
            Some(progress) => {
                if let Timed::Progress { to, .. } = progress {
                    self.at.promised = to;
                }
                self.at.pending = Some(event);
                Ok(SourceStep::Emit(progress))
            }
            None => Ok(SourceStep::Emit(event)),
        }
    }

    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        // A source that restarts from the beginning restarts the clock too.
        let Some(source) = self.source.checkpoint()? else {
            return Ok(None);
        };
        let own = encode_position(&self.at)?;
        encode_position(&Checkpoint { source, own }).map(Some)
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        let checkpoint: Checkpoint = decode_position(position)?;
        self.source.restore(&checkpoint.source)?;
        self.at = decode_position(&checkpoint.own)?;
        Ok(())
    }
}
