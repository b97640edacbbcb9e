//! One running instance: the loop that merges inputs in stamp order, runs the
//! operator and flushes outputs with progress marks (or, for a source, polls
//! the source and paces it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::input::InputEvent;
use super::output::Outbox;
use crate::api::{Logic, OperatorError, ProcessLogic, SourceLogic, SourcePoll};
use crate::error::EngineError;
use crate::stamp::merge::Merge;
use crate::stamp::Stamp;
use crate::wire::control::InstanceStats;

/// A source flushes at least this often while it is producing.
const SOURCE_FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Inbox events taken per round before running the operator.
const EVENTS_PER_ROUND: usize = 256;

/// An instance ready to run on its own thread.
pub(crate) struct Instance {
    pub(crate) id: u32,
    pub(crate) operator: String,
    pub(crate) logic: Logic,
    /// Upstream instance id -> input channel index.
    pub(crate) inputs: HashMap<u32, usize>,
    pub(crate) inbox: Receiver<InputEvent>,
    /// Source instances: their slot in the stamp space.
    pub(crate) source_slot: u32,
}

impl Instance {
    /// Runs to the end of the input.
    pub(crate) fn run(self, outbox: Outbox) -> Result<InstanceStats, EngineError> {
        let Instance {
            id,
            operator,
            logic,
            inputs,
            inbox,
            source_slot,
        } = self;
        let fail = |e: OperatorError| EngineError::Operator {
            operator: operator.clone(),
            instance: id,
            message: e.0,
        };
        match logic {
            Logic::Source(source) => run_source(source, source_slot, outbox, fail),
            Logic::Process(process) => run_process(process, &inputs, &inbox, outbox, fail),
        }
    }
}

fn run_source(
    mut source: Box<dyn SourceLogic>,
    slot: u32,
    mut outbox: Outbox,
    fail: impl Fn(OperatorError) -> EngineError,
) -> Result<InstanceStats, EngineError> {
    let mut seq = 0u64;
    let mut last_flush = Instant::now();
    loop {
        let next = Stamp::for_source(seq + 1, slot);
        // Nothing at or below the stamp just before our next one will come.
        let mark = Stamp(next.0 - 1);
        outbox.set_stamp(next);
        outbox.set_mark_floor(mark);
        match source.poll(&mut outbox).map_err(&fail)? {
            SourcePoll::Emitted => {
                seq += 1;
                if last_flush.elapsed() >= SOURCE_FLUSH_EVERY {
                    outbox.flush(next)?;
                    last_flush = Instant::now();
                }
            }
            SourcePoll::WaitUntil(at) => {
                outbox.flush(mark)?;
                last_flush = Instant::now();
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
            }
            SourcePoll::Done => {
                outbox.flush(Stamp::END)?;
                return Ok(InstanceStats {
                    tuples_in: seq,
                    tuples_out: outbox.tuples_out(),
                });
            }
        }
    }
}

fn run_process(
    mut logic: Box<dyn ProcessLogic>,
    inputs: &HashMap<u32, usize>,
    inbox: &Receiver<InputEvent>,
    mut outbox: Outbox,
    fail: impl Fn(OperatorError) -> EngineError,
) -> Result<InstanceStats, EngineError> {
    let mut merge = Merge::new(inputs.len(), Stamp::ZERO);
    let mut tuples_in = 0u64;
    loop {
        let first = inbox.recv().map_err(|_| {
            EngineError::Protocol("all input channels closed before the end of the stream".into())
        })?;
        accept(&mut merge, inputs, first)?;
        for event in inbox.try_iter().take(EVENTS_PER_ROUND) {
            accept(&mut merge, inputs, event)?;
        }
        if merge.frontier() <= merge.done() {
            continue;
        }
        outbox.set_mark_floor(merge.done());
        let done = merge.drain(|stamp, payload| {
            outbox.set_stamp(stamp);
            tuples_in += 1;
            logic.process(payload, &mut outbox).map_err(&fail)
        })?;
        outbox.flush(done)?;
        if done.is_end() {
            logic.finish().map_err(&fail)?;
            return Ok(InstanceStats {
                tuples_in,
                tuples_out: outbox.tuples_out(),
            });
        }
    }
}

fn accept(
    merge: &mut Merge,
    inputs: &HashMap<u32, usize>,
    event: InputEvent,
) -> Result<(), EngineError> {
    match event {
        InputEvent::Batch { from, body, mark } => {
            let channel = *inputs.get(&from).ok_or_else(|| {
                EngineError::Protocol(format!("batch from instance {from}, which is not an input"))
            })?;
            merge.push(channel, body, mark)
        }
        InputEvent::Closed { from, error } => {
            let channel = inputs.get(&from).copied();
            match error {
                // A clean close after the end mark is how a channel ends.
                None if channel.is_some_and(|c| merge.mark(c).is_end()) => Ok(()),
                None => Err(EngineError::Protocol(format!(
                    "upstream instance {from} closed its channel before the end of its stream (did its worker die?)"
                ))),
                Some(e) => Err(EngineError::Protocol(format!(
                    "input channel from instance {from} broke: {e}"
                ))),
            }
        }
    }
}
