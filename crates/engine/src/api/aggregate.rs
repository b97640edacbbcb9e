//! Aggregates: how items of a group fold into a result, used per window
//! ([`super::window::WindowAggregate`]) or as a running result that emits
//! every change ([`RunningAggregate`]).

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::block::{self, Block};
use super::{Data, Key, OperatorError, Output, StatefulOperator};

/// How to fold items into one result per group. Folding must not depend on
/// the order of items that carry the same stamp (one input's outputs), which
/// holds for any commutative fold.
pub trait Aggregate: Send + 'static {
    /// An item.
    type In: Data;
    /// The group an item belongs to.
    type Group: Key + Ord;
    /// The running accumulator of a group (engine-owned state).
    type Acc: Data + Default;
    /// A group's result.
    type Out: Data;
    /// The group of an item.
    fn group(item: &Self::In) -> Self::Group;
    /// Folds an item into its group's accumulator.
    fn add(acc: &mut Self::Acc, item: Self::In);
    /// The group's result so far.
    fn result(group: &Self::Group, acc: &Self::Acc) -> Self::Out;
}

/// A change of a running result: what it was (if anything) and what it is
/// now, so that a downstream aggregate can retract the old value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<T> {
    /// The result before (`None` for a group's first result).
    pub old: Option<T>,
    /// The result now.
    pub new: T,
}

/// A group's running state: its accumulator and the last result emitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningState<Acc, Out> {
    acc: Acc,
    last: Option<Out>,
}

impl<Acc: Default, Out> Default for RunningState<Acc, Out> {
    fn default() -> Self {
        RunningState {
            acc: Acc::default(),
            last: None,
        }
    }
}

/// An unwindowed aggregate keyed by group: after each item it emits the
/// group's result if it changed, as a [`Change`] (a changelog, as a
/// continuous SQL `GROUP BY` produces).
pub struct RunningAggregate<A> {
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for RunningAggregate<A> {
    fn clone(&self) -> Self {
        RunningAggregate {
            _aggregate: PhantomData,
        }
    }
}

impl<A> Default for RunningAggregate<A> {
    fn default() -> Self {
        RunningAggregate {
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Block for RunningAggregate<A>
where
    A::Out: Clone + PartialEq,
{
    fn step(
        &mut self,
        item: A::In,
        state: &mut RunningState<A::Acc, A::Out>,
        emit: &mut dyn FnMut(Change<A::Out>) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        let group = A::group(&item);
        A::add(&mut state.acc, item);
        let new = A::result(&group, &state.acc);
        if state.last.as_ref() == Some(&new) {
            return Ok(());
        }
        let old = state.last.replace(new.clone());
        emit(Change { old, new })
    }
}

impl<A: Aggregate> StatefulOperator for RunningAggregate<A>
where
    A::Out: Clone + PartialEq,
{
    type In = A::In;
    type Key = A::Group;
    type State = RunningState<A::Acc, A::Out>;
    type Out = Change<A::Out>;

    fn key(item: &A::In) -> A::Group {
        A::group(item)
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
