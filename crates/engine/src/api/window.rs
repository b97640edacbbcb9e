//! Event-time windows: tumbling and sliding windows, the progress that
//! closes them, and a windowed aggregate.
//!
//! Event time is a field of the data (milliseconds). Sources promise
//! progress in-band: a [`Timed::Progress`] says no event earlier than its
//! `to` will follow. [`AssignWindows`] (stateless) turns events into
//! per-window items and progress into a `Close` of every window that
//! progress completes, routed like the window's items, so the instance that
//! holds a window's state learns that it is complete from its own input,
//! in stamp order. Nothing depends on wall-clock time or on how the
//! operators are partitioned, so results are the same under kills, splits
//! and merges (see docs/ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::aggregate::Aggregate;
use super::block::{self, Block};
use super::{Operator, OperatorError, Output, StatefulOperator};
use crate::error::EngineError;
use crate::hash::key_hash;

/// A window of event time: `[start, end)` in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// First millisecond in the window.
    pub start: u64,
    /// First millisecond after the window.
    pub end: u64,
}

impl Window {
    /// Whether `time` falls in the window.
    pub fn contains(&self, time: u64) -> bool {
        self.start <= time && time < self.end
    }
}

/// The shape of a query's windows: windows of `size` ms start every `slide`
/// ms from time 0 (tumbling when the two are equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    size: u64,
    slide: u64,
}

impl WindowSpec {
    /// Back-to-back windows of `size_ms`.
    pub fn tumbling(size_ms: u64) -> Result<Self, EngineError> {
        Self::sliding(size_ms, size_ms)
    }

    /// Windows of `size_ms` starting every `slide_ms` (hopping windows); an
    /// event falls in `size_ms / slide_ms` of them.
    pub fn sliding(size_ms: u64, slide_ms: u64) -> Result<Self, EngineError> {
        if size_ms == 0 || slide_ms == 0 || slide_ms > size_ms {
            return Err(EngineError::InvalidQuery(format!(
                "a window of {size_ms} ms sliding by {slide_ms} ms: both must be positive \
                 and the slide at most the size"
            )));
        }
        Ok(WindowSpec {
            size: size_ms,
            slide: slide_ms,
        })
    }

    /// Window length, ms.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn window(&self, k: u64) -> Window {
        let start = k * self.slide;
        Window {
            start,
            end: start + self.size,
        }
    }

    /// The windows holding `time`, earliest first.
    pub fn windows_of(&self, time: u64) -> impl Iterator<Item = Window> + '_ {
        let last = time / self.slide;
        let first = match time.checked_sub(self.size) {
            Some(before) => before / self.slide + 1,
            None => 0,
        };
        (first..=last).map(|k| self.window(k))
    }

    /// The windows whose end is in `(from, to]`: those a source's progress
    /// from `from` to `to` completes.
    pub fn completed_by(&self, from: u64, to: u64) -> impl Iterator<Item = Window> + '_ {
        // end = k * slide + size > from  <=>  k > (from - size) / slide
        let first = match from.checked_sub(self.size) {
            Some(d) => d / self.slide + 1,
            None => 0,
        };
        let last = to.checked_sub(self.size).map(|d| d / self.slide);
        let range = match last {
            Some(last) if last >= first => first..last + 1,
            _ => 0..0,
        };
        range.map(|k| self.window(k))
    }

    /// The windows a source's end completes: every window ending after
    /// `from` (its last progress) that starts at or before `last` (its
    /// last event's time); later ones hold nothing.
    pub fn completed_at_end(&self, from: u64, last: u64) -> impl Iterator<Item = Window> + '_ {
        let first = match from.checked_sub(self.size) {
            Some(d) => d / self.slide + 1,
            None => 0,
        };
        (first..=last / self.slide).map(|k| self.window(k))
    }
}

/// An element of an event-time stream: an event, or a source's promise
/// about the events still to come. Each source instance sends its own
/// progress; its events must be in time order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Timed<T> {
    /// An event at `time` (ms).
    Event {
        /// Event time, ms.
        time: u64,
        /// The event.
        value: T,
    },
    /// No event before `to` will follow; the last progress was `from`.
    Progress {
        /// The previous promise (0 at first).
        from: u64,
        /// The new promise.
        to: u64,
    },
    /// The source has ended: its last progress was `from` and no event
    /// after `last` was sent.
    End {
        /// The last promise.
        from: u64,
        /// Time of the source's last event (or `from` when it sent none).
        last: u64,
    },
}

/// Turns a source's event times into the progress it must send: call
/// [`ProgressClock::observe`] before sending each event, and
/// [`ProgressClock::end`] after the last.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgressClock {
    granularity: u64,
    promised: u64,
    last: u64,
}

impl ProgressClock {
    /// Promises progress in steps of `granularity_ms` (finer closes
    /// windows sooner at the cost of more progress elements).
    pub fn new(granularity_ms: u64) -> Self {
        ProgressClock {
            granularity: granularity_ms.max(1),
            promised: 0,
            last: 0,
        }
    }

    /// The progress to send before an event at `time`, if any. Times must
    /// not decrease.
    pub fn observe<T>(&mut self, time: u64) -> Option<Timed<T>> {
        self.last = self.last.max(time);
        let to = time / self.granularity * self.granularity;
        (to > self.promised).then(|| {
            let from = std::mem::replace(&mut self.promised, to);
            Timed::Progress { from, to }
        })
    }

    /// What to send after the last event.
    pub fn end<T>(&self) -> Timed<T> {
        Timed::End {
            from: self.promised,
            last: self.last.max(self.promised),
        }
    }
}

/// What a windowed operator receives: an item of a window, or the news
/// that one upstream has nothing more for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowInput<T> {
    /// An item of `window`.
    Item {
        /// The window.
        window: Window,
        /// The item.
        value: T,
    },
    /// One upstream has sent everything it had for `window`.
    Close {
        /// The window.
        window: Window,
    },
}

impl<T> WindowInput<T> {
    /// The window this element belongs to.
    pub fn window(&self) -> Window {
        match self {
            WindowInput::Item { window, .. } | WindowInput::Close { window } => *window,
        }
    }
}

/// The state key of a windowed aggregate: a window and one of its shards
/// (groups are spread over shards by hash, so one window's work can be
/// partitioned too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowShard {
    /// The window.
    pub window: Window,
    /// The shard, below the aggregate's shard count.
    pub shard: u32,
}

/// A window item or close, addressed to one shard of a windowed aggregate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sharded<T> {
    /// Where it goes.
    pub to: WindowShard,
    /// An item (`Some`) or a close (`None`).
    pub item: Option<T>,
}

/// Stateless: assigns each event to its windows and the shard of its group,
/// and turns progress into a close of every window it completes, sent to
/// every shard.
pub struct AssignWindows<A> {
    spec: WindowSpec,
    shards: u32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for AssignWindows<A> {
    fn clone(&self) -> Self {
        AssignWindows {
            spec: self.spec,
            shards: self.shards,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> AssignWindows<A> {
    /// Windows of `spec`, groups of `A` spread over `shards` (at least 1).
    pub fn new(spec: WindowSpec, shards: u32) -> Self {
        AssignWindows {
            spec,
            shards: shards.max(1),
            _aggregate: PhantomData,
        }
    }

    /// What one input becomes: an item per window of the event, or closes.
    pub(crate) fn assign(
        &self,
        input: Timed<A::In>,
        emit: &mut dyn FnMut(Sharded<A::In>) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError>
    where
        A::In: Clone,
    {
        let windows: Vec<Window> = match input {
            Timed::Event { time, value } => {
                let shard = (key_hash(&A::group(&value)) % u64::from(self.shards)) as u32;
                for window in self.spec.windows_of(time) {
                    emit(Sharded {
                        to: WindowShard { window, shard },
                        item: Some(value.clone()),
                    })?;
                }
                return Ok(());
            }
            Timed::Progress { from, to } => self.spec.completed_by(from, to).collect(),
            Timed::End { from, last } => self.spec.completed_at_end(from, last).collect(),
        };
        for window in windows {
            for shard in 0..self.shards {
                emit(Sharded {
                    to: WindowShard { window, shard },
                    item: None,
                })?;
            }
        }
        Ok(())
    }
}

impl<A: Aggregate> Operator for AssignWindows<A>
where
    A::In: Clone,
{
    type In = Timed<A::In>;
    type Out = Sharded<A::In>;

    fn process(
        &mut self,
        input: Timed<A::In>,
        out: &mut Output<'_, Sharded<A::In>>,
    ) -> Result<(), OperatorError> {
        self.assign(input, &mut |value| out.emit(value))
    }
}

/// The state of one shard of one window: an accumulator per group, and how
/// many sources have closed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowState<G: Ord, Acc> {
    groups: BTreeMap<G, Acc>,
    closes: u32,
}

impl<G: Ord, Acc> Default for WindowState<G, Acc> {
    fn default() -> Self {
        WindowState {
            groups: BTreeMap::new(),
            closes: 0,
        }
    }
}

/// A windowed aggregate, keyed by window and shard: folds each group's items
/// with `A`, and when every source has closed the window emits one result
/// per group (in group order) and then a close, so that a downstream
/// windowed operator knows this shard is done.
pub struct WindowAggregate<A> {
    sources: u32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for WindowAggregate<A> {
    fn clone(&self) -> Self {
        WindowAggregate {
            sources: self.sources,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> WindowAggregate<A> {
    /// An aggregate fed (through [`AssignWindows`]) by `sources` source
    /// instances: a window is complete when each has closed it.
    pub fn new(sources: u32) -> Self {
        WindowAggregate {
            sources: sources.max(1),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Block for WindowAggregate<A> {
    fn step(
        &mut self,
        input: Sharded<A::In>,
        state: &mut WindowState<A::Group, A::Acc>,
        emit: &mut dyn FnMut(WindowInput<A::Out>) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        let window = input.to.window;
        if state.closes >= self.sources {
            return Err(OperatorError::new(format!(
                "an element of window [{}, {}) arrived after every source closed it: \
                 a source sent an event older than its progress promise",
                window.start, window.end
            )));
        }
        match input.item {
            Some(value) => {
                A::add(state.groups.entry(A::group(&value)).or_default(), value);
            }
            None => {
                state.closes += 1;
                if state.closes == self.sources {
                    for (group, acc) in std::mem::take(&mut state.groups) {
                        emit(WindowInput::Item {
                            window,
                            value: A::result(&group, &acc),
                        })?;
                    }
                    emit(WindowInput::Close { window })?;
                }
            }
        }
        Ok(())
    }
}

impl<A: Aggregate> StatefulOperator for WindowAggregate<A> {
    type In = Sharded<A::In>;
    type Key = WindowShard;
    type State = WindowState<A::Group, A::Acc>;
    type Out = WindowInput<A::Out>;

    fn key(input: &Sharded<A::In>) -> WindowShard {
        input.to
    }

    fn process(
        &mut self,
        input: Self::In,
        state: &mut Self::State,
        out: &mut Output<'_, Self::Out>,
    ) -> Result<(), OperatorError> {
        block::process(self, input, state, out)
    }
}
