//! Top-k per window: the k best items of each window, once it is complete.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::block::{self, Block};
use super::window::{Window, WindowInput};
use super::{Data, OperatorError, Output, StatefulOperator};

/// How items rank. Ranks must be distinct between distinct items (break
/// ties with an id), so the top k do not depend on arrival order.
pub trait Ranking: Send + 'static {
    /// The items ranked.
    type Item: Data;
    /// The rank of an item: higher is better.
    type Rank: Ord;
    /// An item's rank.
    fn rank(item: &Self::Item) -> Self::Rank;
}

/// One of a window's top items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranked<T> {
    /// The window.
    pub window: Window,
    /// 1 for the best.
    pub rank: u32,
    /// The item.
    pub item: T,
}

/// A window's best items so far, best first, and how many upstreams have
/// closed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopState<T> {
    best: Vec<T>,
    closes: u32,
}

impl<T> Default for TopState<T> {
    fn default() -> Self {
        TopState {
            best: Vec::new(),
            closes: 0,
        }
    }
}

/// Keeps the `k` best items of each window (keyed by window) and emits
/// them, best first, when all `upstreams` have closed the window (for a
/// [`super::window::WindowAggregate`] upstream: its shard count).
pub struct TopK<R> {
    k: usize,
    upstreams: u32,
    _ranking: PhantomData<fn() -> R>,
}

impl<R> Clone for TopK<R> {
    fn clone(&self) -> Self {
        TopK {
            k: self.k,
            upstreams: self.upstreams,
            _ranking: PhantomData,
        }
    }
}

impl<R: Ranking> TopK<R> {
    /// The best `k` (at least 1) of each window closed by `upstreams` closes.
    pub fn new(k: usize, upstreams: u32) -> Self {
        TopK {
            k: k.max(1),
            upstreams: upstreams.max(1),
            _ranking: PhantomData,
        }
    }
}

impl<R: Ranking> Block for TopK<R> {
    fn step(
        &mut self,
        input: WindowInput<R::Item>,
        state: &mut TopState<R::Item>,
        emit: &mut dyn FnMut(Ranked<R::Item>) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        let window = input.window();
        if state.closes >= self.upstreams {
            return Err(OperatorError::new(format!(
                "an element of window [{}, {}) arrived after every upstream closed it",
                window.start, window.end
            )));
        }
        match input {
            WindowInput::Item { value, .. } => {
                let rank = R::rank(&value);
                let at = state.best.partition_point(|b| R::rank(b) > rank);
                if at < self.k {
                    state.best.insert(at, value);
                    state.best.truncate(self.k);
                }
            }
            WindowInput::Close { .. } => {
                state.closes += 1;
                if state.closes == self.upstreams {
                    for (i, item) in std::mem::take(&mut state.best).into_iter().enumerate() {
                        emit(Ranked {
                            window,
                            rank: i as u32 + 1,
                            item,
                        })?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Ranking> StatefulOperator for TopK<R> {
    type In = WindowInput<R::Item>;
    type Key = Window;
    type State = TopState<R::Item>;
    type Out = Ranked<R::Item>;

    fn key(input: &Self::In) -> Window {
        input.window()
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
