//! Inputs held back a moment so that the keyed state they use is fetched
//! in one pass.
//!
//! An instance whose keyed state outgrows the cache misses it on nearly
//! every lookup (Linear Road's toll assessment: one of some 276,000
//! accounts per toll notification). Processed one by one, each input
//! stalls its thread for a memory access, and the operator's work between
//! two lookups is too long for the processor to overlap their misses.
//! Looked up back to back first ([`ProcessLogic::warm`]), the misses of a
//! few inputs overlap, and processing them then finds their state in the
//! cache (docs/BENCH.md, "Keys looked up ahead").
//!
//! Nothing else changes: the inputs are processed in the order the merge
//! released them, each with its own stamp, all before the round flushes
//! its outputs or checkpoints.

use std::ops::Range;

use crate::api::ProcessLogic;
use crate::error::EngineError;
use crate::stamp::Stamp;

/// Inputs released by the merge and not processed yet.
#[derive(Default)]
pub(super) struct Lookahead {
    /// Their payloads, back to back.
    bytes: Vec<u8>,
    /// Each one's stamp and place in `bytes`, in release order.
    held: Vec<(Stamp, Range<usize>)>,
}

impl Lookahead {
    /// Inputs warmed in one pass: enough for their misses to overlap, few
    /// enough that the pass fits the processor's window of instructions
    /// in flight (4 and 8 measured alike, 16 and 32 worse).
    const INPUTS: usize = 8;

    /// Holds the input `payload` stamped `stamp`; once
    /// [`Lookahead::INPUTS`] are held, warms and processes them.
    pub(super) fn push<P>(
        &mut self,
        stamp: Stamp,
        payload: &[u8],
        logic: &mut dyn ProcessLogic,
        process: &mut P,
    ) -> Result<(), EngineError>
    where
        P: FnMut(&mut dyn ProcessLogic, Stamp, &[u8]) -> Result<(), EngineError>,
    {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.held.push((stamp, start..self.bytes.len()));
        if self.held.len() >= Self::INPUTS {
            self.release(logic, process)?;
        }
        Ok(())
    }

    /// Warms the state of every input held, then processes them in order.
    /// Held inputs are gone afterwards even if processing one failed (the
    /// instance fails with it).
    pub(super) fn release<P>(
        &mut self,
        logic: &mut dyn ProcessLogic,
        process: &mut P,
    ) -> Result<(), EngineError>
    where
        P: FnMut(&mut dyn ProcessLogic, Stamp, &[u8]) -> Result<(), EngineError>,
    {
        for (_, range) in &self.held {
            logic.warm(&self.bytes[range.clone()]);
        }
        let processed = self
            .held
            .iter()
            .try_for_each(|(stamp, range)| process(logic, *stamp, &self.bytes[range.clone()]));
        self.held.clear();
        self.bytes.clear();
        processed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Emit, OperatorError};

    /// Records what it is asked to warm (`warm` takes `&self`, hence the
    /// thread's log); processing is the tests' closure.
    struct Recorder;

    impl ProcessLogic for Recorder {
        fn process(&mut self, _: &[u8], _: &mut dyn Emit) -> Result<bool, OperatorError> {
            Ok(true)
        }

        fn warm(&self, payload: &[u8]) {
            WARMED.with(|w| w.borrow_mut().push(payload.to_vec()));
        }
    }

    thread_local! {
        static WARMED: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn record(
        processed: &mut Vec<(Stamp, Vec<u8>, usize)>,
    ) -> impl FnMut(&mut dyn ProcessLogic, Stamp, &[u8]) -> Result<(), EngineError> + '_ {
        move |_, stamp, payload| {
            let warmed = WARMED.with(|w| w.borrow().len());
            processed.push((stamp, payload.to_vec(), warmed));
            Ok(())
        }
    }

    #[test]
    fn a_full_run_is_warmed_before_any_of_it_is_processed_and_order_is_kept() {
        let mut ahead = Lookahead::default();
        let mut logic = Recorder;
        let mut processed = Vec::new();
        let mut process = record(&mut processed);
        for i in 0..Lookahead::INPUTS as u64 + 3 {
            let payload = vec![i as u8; i as usize % 3 + 1];
            ahead
                .push(Stamp(i), &payload, &mut logic, &mut process)
                .unwrap();
        }
        ahead.release(&mut logic, &mut process).unwrap();
        drop(process);
        let stamps: Vec<u64> = processed.iter().map(|(s, _, _)| s.0).collect();
        assert_eq!(
            stamps,
            (0..Lookahead::INPUTS as u64 + 3).collect::<Vec<_>>()
        );
        for (stamp, payload, warmed) in &processed {
            assert_eq!(*payload, vec![stamp.0 as u8; stamp.0 as usize % 3 + 1]);
            // Every input of its run was warmed before it was processed.
            let run_end = if (stamp.0 as usize) < Lookahead::INPUTS {
                Lookahead::INPUTS
            } else {
                Lookahead::INPUTS + 3
            };
            assert_eq!(*warmed, run_end, "input {}", stamp.0);
        }
        let warmed = WARMED.with(|w| w.borrow().clone());
        let payloads: Vec<Vec<u8>> = processed.into_iter().map(|(_, p, _)| p).collect();
        assert_eq!(warmed, payloads, "each input warmed once, in order");
    }

    #[test]
    fn a_failed_input_ends_the_run_and_leaves_nothing_held() {
        let mut ahead = Lookahead::default();
        let mut logic = Recorder;
        let mut seen = Vec::new();
        let mut process = |_: &mut dyn ProcessLogic, stamp: Stamp, _: &[u8]| {
            seen.push(stamp.0);
            if stamp.0 == 1 {
                Err(EngineError::Protocol("bad input".into()))
            } else {
                Ok(())
            }
        };
        for i in 0..3 {
            ahead
                .push(Stamp(i), &[1], &mut logic, &mut process)
                .unwrap();
        }
        assert!(ahead.release(&mut logic, &mut process).is_err());
        ahead.release(&mut logic, &mut process).unwrap();
        assert_eq!(
            seen,
            vec![0, 1],
            "nothing after the failed input, nothing twice"
        );
    }
}
