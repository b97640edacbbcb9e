//! What the ready-made operators ([`super::window`], [`super::join`],
//! [`super::topk`], [`super::aggregate`]) share: each is a
//! [`StatefulOperator`] whose work is one pure step over an input and its
//! key's state, so that tests can drive it (and split or merge its state)
//! without a worker.

use super::{OperatorError, Output, StatefulOperator};

/// One step of a ready-made operator: the input, its key's engine-owned
/// state, and where the outputs go.
pub(crate) trait Block: StatefulOperator {
    /// Processes `input`, passing every output to `emit` in order.
    fn step(
        &mut self,
        input: Self::In,
        state: &mut Self::State,
        emit: &mut dyn FnMut(Self::Out) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError>;
}

/// [`StatefulOperator::process`] for a [`Block`]: its step, emitting as it goes.
pub(crate) fn process<B: Block>(
    block: &mut B,
    input: B::In,
    state: &mut B::State,
    out: &mut Output<'_, B::Out>,
) -> Result<(), OperatorError> {
    block.step(input, state, &mut |value| out.emit(value))
}

/// Runs blocks over inputs as the engine would, on partitions whose state is
/// split and merged through checkpoint entries part-way through.
#[cfg(test)]
pub(crate) mod harness {
    use super::Block;
    use crate::api::StatefulOperator;
    use crate::hash::key_hash;
    use crate::state::{KeyRange, KeyedState};

    /// One partition: its range, its state and its operator.
    type Part<B> = (
        KeyRange,
        KeyedState<<B as StatefulOperator>::Key, <B as StatefulOperator>::State>,
        B,
    );

    /// A change of partitioning after a number of inputs.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Reshape {
        /// Split the partition owning hash `at` there (ignored when `at`
        /// would leave a half empty).
        Split { after: usize, at: u64 },
        /// Merge the partition owning hash `at` with the one above it, if any.
        Merge { after: usize, at: u64 },
    }

    /// Feeds `inputs` to partitions of `block` (one at first), reshaping
    /// them as asked: each partition's state goes through a snapshot and a
    /// restore, as in a checkpointed split or merge. Returns the outputs in
    /// input order, which is what the engine's stamp order gives.
    pub(crate) fn run<B: Block + Clone>(
        block: &B,
        inputs: Vec<B::In>,
        reshapes: &[Reshape],
    ) -> Vec<B::Out> {
        let mut parts: Vec<Part<B>> = vec![(KeyRange::FULL, KeyedState::default(), block.clone())];
        let mut outputs = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            for reshape in reshapes {
                match *reshape {
                    Reshape::Split { after, at } if after == i => split(&mut parts, at),
                    Reshape::Merge { after, at } if after == i => merge(&mut parts, at),
                    _ => {}
                }
            }
            let key = B::key(&input);
            let hash = key_hash(&key);
            let (_, state, op) = parts
                .iter_mut()
                .find(|(range, _, _)| range.contains(hash))
                .expect("partitions cover every hash");
            op.step(input, state.get_or_default(key), &mut |out| {
                outputs.push(out);
                Ok(())
            })
            .expect("step");
        }
        outputs
    }

    fn split<B: Block + Clone>(parts: &mut Vec<Part<B>>, at: u64) {
        let Some(i) = parts.iter().position(|(r, _, _)| r.contains(at)) else {
            return;
        };
        let Some((lower, upper)) = parts[i].0.split_at(at) else {
            return;
        };
        let entries = parts[i].1.snapshot().expect("snapshot");
        let (low, high): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|e| lower.contains(e.hash));
        let op = parts[i].2.clone();
        parts[i] = (
            lower,
            KeyedState::restore(&low, lower).expect("restore"),
            op.clone(),
        );
        parts.insert(
            i + 1,
            (
                upper,
                KeyedState::restore(&high, upper).expect("restore"),
                op,
            ),
        );
    }

    fn merge<B: Block + Clone>(parts: &mut Vec<Part<B>>, at: u64) {
        let Some(i) = parts.iter().position(|(r, _, _)| r.contains(at)) else {
            return;
        };
        if i + 1 >= parts.len() {
            return;
        }
        let joined = parts[i].0.join(&parts[i + 1].0).expect("adjacent");
        let mut entries = parts[i].1.snapshot().expect("snapshot");
        entries.extend(parts[i + 1].1.snapshot().expect("snapshot"));
        let op = parts[i].2.clone();
        parts.remove(i + 1);
        parts[i] = (
            joined,
            KeyedState::restore(&entries, joined).expect("restore"),
            op,
        );
    }
}

#[cfg(test)]
mod tests;
