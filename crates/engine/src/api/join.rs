//! Joins of two streams on a key: per event-time window
//! ([`WindowJoin`]) or when the right element's time falls in an interval
//! the left element gives ([`IntervalJoin`]).
//!
//! Both are keyed by the join key and emit a match as soon as its second
//! element arrives (in stamp order), so no window needs to close. State is
//! trimmed when a later element of the same key shows that an interval or
//! window has passed: elements of one key must arrive in time order, as
//! they do from sources that send in time order.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::block::{self, Block};
use super::window::{Window, WindowSpec};
use super::{Data, Key, OperatorError, Output, StatefulOperator};

/// An element of one of the two joined streams, with its event time (ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinSide<L, R> {
    /// From the left stream.
    Left {
        /// Event time, ms.
        time: u64,
        /// The element.
        value: L,
    },
    /// From the right stream.
    Right {
        /// Event time, ms.
        time: u64,
        /// The element.
        value: R,
    },
}

impl<L, R> JoinSide<L, R> {
    fn time(&self) -> u64 {
        match self {
            JoinSide::Left { time, .. } | JoinSide::Right { time, .. } => *time,
        }
    }
}

/// What a join joins: both sides' keys and the joined output.
pub trait JoinSpec: Send + 'static {
    /// Left elements.
    type Left: Data + Clone;
    /// Right elements.
    type Right: Data + Clone;
    /// The join key.
    type Key: Key;
    /// A joined pair.
    type Out: Data;
    /// A left element's key.
    fn left_key(left: &Self::Left) -> Self::Key;
    /// A right element's key.
    fn right_key(right: &Self::Right) -> Self::Key;
}

fn side_key<J: JoinSpec>(input: &JoinSide<J::Left, J::Right>) -> J::Key {
    match input {
        JoinSide::Left { value, .. } => J::left_key(value),
        JoinSide::Right { value, .. } => J::right_key(value),
    }
}

/// A windowed join's pairing rule.
pub trait WindowJoinSpec: JoinSpec {
    /// The output for a left and a right element of the same key in `window`.
    fn join(window: Window, left: &Self::Left, right: &Self::Right) -> Self::Out;
}

/// Which pairs a [`WindowJoin`] emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinMode {
    /// Every matching pair.
    All,
    /// Each left element once per window, with the first right element it
    /// matches (a semi-join, as `WHERE EXISTS` gives).
    Semi,
}

/// The elements of one window of one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSides<L, R> {
    window: Window,
    /// Left elements and whether each has matched yet.
    lefts: Vec<(L, bool)>,
    rights: Vec<R>,
}

/// The open windows of one key of a [`WindowJoin`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowJoinState<L, R> {
    windows: Vec<WindowSides<L, R>>,
}

impl<L, R> Default for WindowJoinState<L, R> {
    fn default() -> Self {
        WindowJoinState {
            windows: Vec::new(),
        }
    }
}

/// Joins left and right elements of the same key that fall in the same
/// window (tumbling or sliding), keyed by the join key.
pub struct WindowJoin<J> {
    spec: WindowSpec,
    mode: JoinMode,
    _join: PhantomData<fn() -> J>,
}

impl<J> Clone for WindowJoin<J> {
    fn clone(&self) -> Self {
        WindowJoin {
            spec: self.spec,
            mode: self.mode,
            _join: PhantomData,
        }
    }
}

impl<J: WindowJoinSpec> WindowJoin<J> {
    /// A join over windows of `spec`, emitting as `mode` says.
    pub fn new(spec: WindowSpec, mode: JoinMode) -> Self {
        WindowJoin {
            spec,
            mode,
            _join: PhantomData,
        }
    }
}

impl<J: WindowJoinSpec> Block for WindowJoin<J> {
    fn step(
        &mut self,
        input: JoinSide<J::Left, J::Right>,
        state: &mut WindowJoinState<J::Left, J::Right>,
        emit: &mut dyn FnMut(J::Out) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        let time = input.time();
        // Windows that ended by this element's time get nothing more.
        state.windows.retain(|w| w.window.end > time);
        for window in self.spec.windows_of(time) {
            let at = match state.windows.iter().position(|w| w.window == window) {
                Some(at) => at,
                None => {
                    state.windows.push(WindowSides {
                        window,
                        lefts: Vec::new(),
                        rights: Vec::new(),
                    });
                    state.windows.len() - 1
                }
            };
            let sides = &mut state.windows[at];
            match &input {
                JoinSide::Left { value, .. } => {
                    let mut matched = false;
                    for right in &sides.rights {
                        emit(J::join(window, value, right))?;
                        matched = true;
                        if self.mode == JoinMode::Semi {
                            break;
                        }
                    }
                    sides.lefts.push((value.clone(), matched));
                }
                JoinSide::Right { value, .. } => {
                    for (left, matched) in &mut sides.lefts {
                        if self.mode == JoinMode::Semi && *matched {
                            continue;
                        }
                        emit(J::join(window, left, value))?;
                        *matched = true;
                    }
                    // A semi-join needs one right element per window to
                    // match later left ones.
                    if self.mode == JoinMode::All || sides.rights.is_empty() {
                        sides.rights.push(value.clone());
                    }
                }
            }
        }
        Ok(())
    }
}

impl<J: WindowJoinSpec> StatefulOperator for WindowJoin<J> {
    type In = JoinSide<J::Left, J::Right>;
    type Key = J::Key;
    type State = WindowJoinState<J::Left, J::Right>;
    type Out = J::Out;

    fn key(input: &Self::In) -> J::Key {
        side_key::<J>(input)
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

/// An interval join's pairing rule.
pub trait IntervalJoinSpec: JoinSpec {
    /// The inclusive event-time interval in which a left element accepts
    /// right elements (e.g. an auction's opening to its expiry).
    fn interval(left: &Self::Left) -> (u64, u64);
    /// The output for a left element and a right element in its interval.
    fn join(left: &Self::Left, right: &Self::Right) -> Self::Out;
}

/// The retained elements of one key of an [`IntervalJoin`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalJoinState<L, R> {
    lefts: Vec<L>,
    rights: Vec<(u64, R)>,
}

impl<L, R> Default for IntervalJoinState<L, R> {
    fn default() -> Self {
        IntervalJoinState {
            lefts: Vec::new(),
            rights: Vec::new(),
        }
    }
}

/// Joins each right element with the left elements of the same key whose
/// interval holds its time. Left elements are kept until their interval
/// has passed; right elements for `right_retention_ms`, for left elements
/// that arrive after them with an interval reaching back.
pub struct IntervalJoin<J> {
    right_retention_ms: u64,
    _join: PhantomData<fn() -> J>,
}

impl<J> Clone for IntervalJoin<J> {
    fn clone(&self) -> Self {
        IntervalJoin {
            right_retention_ms: self.right_retention_ms,
            _join: PhantomData,
        }
    }
}

impl<J: IntervalJoinSpec> IntervalJoin<J> {
    /// A join keeping right elements `right_retention_ms` (0: a right
    /// element only matches left elements that arrived before it).
    pub fn new(right_retention_ms: u64) -> Self {
        IntervalJoin {
            right_retention_ms,
            _join: PhantomData,
        }
    }
}

impl<J: IntervalJoinSpec> Block for IntervalJoin<J> {
    fn step(
        &mut self,
        input: JoinSide<J::Left, J::Right>,
        state: &mut IntervalJoinState<J::Left, J::Right>,
        emit: &mut dyn FnMut(J::Out) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        let now = input.time();
        state.lefts.retain(|l| J::interval(l).1 >= now);
        let retention = self.right_retention_ms;
        state
            .rights
            .retain(|(time, _)| time.saturating_add(retention) >= now);
        match input {
            JoinSide::Left { value, .. } => {
                let (lo, hi) = J::interval(&value);
                for (time, right) in &state.rights {
                    if lo <= *time && *time <= hi {
                        emit(J::join(&value, right))?;
                    }
                }
                if hi >= now {
                    state.lefts.push(value);
                }
            }
            JoinSide::Right { time, value } => {
                for left in &state.lefts {
                    let (lo, hi) = J::interval(left);
                    if lo <= time && time <= hi {
                        emit(J::join(left, &value))?;
                    }
                }
                if retention > 0 {
                    state.rights.push((time, value));
                }
            }
        }
        Ok(())
    }
}

impl<J: IntervalJoinSpec> StatefulOperator for IntervalJoin<J> {
    type In = JoinSide<J::Left, J::Right>;
    type Key = J::Key;
    type State = IntervalJoinState<J::Left, J::Right>;
    type Out = J::Out;

    fn key(input: &Self::In) -> J::Key {
        side_key::<J>(input)
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
