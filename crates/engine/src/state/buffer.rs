//! Output buffers: what an instance has sent downstream and must keep for
//! replay until the downstream's checkpoint covers it.
//!
//! The buffer keeps whole batches exactly as they were sent (one copy per
//! batch, none per tuple). Trimming drops the batches whose every tuple is
//! covered by the downstream's checkpoint; a replay resends the rest, and
//! the receiver drops what it has already processed by stamp.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::stamp::merge::read_tuple;
use crate::stamp::Stamp;

/// Size of the batches that merged buffers are cut into again.
const INTERLEAVED_BATCH_BYTES: usize = 64 * 1024;

/// One batch body kept for replay, with the highest stamp in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferedBatch {
    /// The highest stamp in `body`.
    pub last: Stamp,
    /// Encoded tuples, as sent.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Per downstream instance, the batches sent to it, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputBuffer {
    channels: BTreeMap<u32, VecDeque<BufferedBatch>>,
    bytes: usize,
}

impl OutputBuffer {
    /// Records a batch sent to downstream instance `to`.
    pub fn push(&mut self, to: u32, last: Stamp, body: &[u8]) {
        self.bytes += body.len();
        self.channels
            .entry(to)
            .or_default()
            .push_back(BufferedBatch {
                last,
                body: body.to_vec(),
            });
    }

    /// Drops the batches to `to` that its checkpoint at `frontier` covers.
    pub fn trim(&mut self, to: u32, frontier: Stamp) {
        if let Some(queue) = self.channels.get_mut(&to) {
            while queue.front().is_some_and(|b| b.last <= frontier) {
                if let Some(batch) = queue.pop_front() {
                    self.bytes -= batch.body.len();
                }
            }
        }
    }

    /// Moves what is kept for `from` into what is kept for `into`, in stamp
    /// order, keeping only tuples above `above`: a scale in merged `from`
    /// into `into`, which starts at `above` and must be replayed both
    /// partitions' inputs in one ordered stream.
    pub fn absorb(&mut self, from: u32, into: u32, above: Stamp) -> Result<(), EngineError> {
        let queues: Vec<VecDeque<BufferedBatch>> = [into, from]
            .iter()
            .filter_map(|c| self.channels.remove(c))
            .collect();
        self.insert_interleaved(into, queues, above)
    }

    /// Adds `other`'s batches to this buffer's, each downstream's in stamp
    /// order: the buffers of two partitions merged by a scale in.
    pub fn merge(&mut self, other: OutputBuffer) -> Result<(), EngineError> {
        // Counted here until interleaving re-counts them.
        self.bytes += other.bytes;
        for (to, queue) in other.channels {
            let mine = self.channels.remove(&to).unwrap_or_default();
            self.insert_interleaved(to, vec![mine, queue], Stamp::ZERO)?;
        }
        Ok(())
    }

    /// Keeps for `to` the tuples of `queues` above `above`, interleaved in
    /// stamp order and cut into batches again.
    fn insert_interleaved(
        &mut self,
        to: u32,
        queues: Vec<VecDeque<BufferedBatch>>,
        above: Stamp,
    ) -> Result<(), EngineError> {
        for batch in queues.iter().flatten() {
            self.bytes -= batch.body.len();
        }
        let mut tuples: Vec<(Stamp, &[u8])> = Vec::new();
        for batch in queues.iter().flatten() {
            let mut pos = 0;
            while pos < batch.body.len() {
                let (stamp, payload) = read_tuple(&batch.body, pos)?;
                if stamp > above {
                    tuples.push((stamp, &batch.body[pos..payload.end]));
                }
                pos = payload.end;
            }
        }
        // Stable: tuples that share a stamp keep their order (the receiver
        // sorts those by bytes anyway).
        tuples.sort_by_key(|(stamp, _)| *stamp);
        let mut merged = VecDeque::new();
        let mut body = Vec::new();
        let mut last = Stamp::ZERO;
        for (stamp, tuple) in tuples {
            body.extend_from_slice(tuple);
            last = stamp;
            if body.len() >= INTERLEAVED_BATCH_BYTES {
                self.bytes += body.len();
                merged.push_back(BufferedBatch {
                    last,
                    body: std::mem::take(&mut body),
                });
            }
        }
        if !body.is_empty() {
            self.bytes += body.len();
            merged.push_back(BufferedBatch { last, body });
        }
        if !merged.is_empty() {
            self.channels.insert(to, merged);
        }
        Ok(())
    }

    /// Whether anything is kept for `to`, even if trimmed to nothing: a
    /// downstream this buffer has never heard of has no entry.
    pub fn holds(&self, to: u32) -> bool {
        self.channels.contains_key(&to)
    }

    /// Keeps for `to` a copy of what is kept for `from` (a downstream split
    /// from `from` takes over its part of those batches), creating the
    /// entry even when there is nothing to copy.
    pub fn copy(&mut self, from: u32, to: u32) {
        let batches = self.channels.get(&from).cloned().unwrap_or_default();
        self.bytes += batches.iter().map(|b| b.body.len()).sum::<usize>();
        self.channels.entry(to).or_default().extend(batches);
    }

    /// The batches to resend to `to`, oldest first.
    pub fn replay(&self, to: u32) -> impl Iterator<Item = &BufferedBatch> {
        self.channels.get(&to).into_iter().flatten()
    }

    /// Number of batches held over all channels.
    pub fn len(&self) -> usize {
        self.channels.values().map(VecDeque::len).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, for metrics and bounds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_batches_not_fully_covered() {
        let mut b = OutputBuffer::default();
        b.push(7, Stamp(2), &[1, 2]);
        b.push(7, Stamp(5), &[3]);
        b.push(8, Stamp(3), &[0]);
        b.trim(7, Stamp(4));
        let left: Vec<u64> = b.replay(7).map(|t| t.last.0).collect();
        assert_eq!(left, vec![5]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.bytes(), 2);
        assert_eq!(b.replay(9).count(), 0);
    }

    #[test]
    fn a_copy_holds_the_same_batches_even_when_there_are_none() {
        let mut b = OutputBuffer::default();
        b.push(7, Stamp(2), &[1, 2]);
        b.copy(7, 8);
        b.copy(5, 6);
        assert_eq!(
            b.replay(8).collect::<Vec<_>>(),
            b.replay(7).collect::<Vec<_>>()
        );
        assert!(b.holds(6) && b.replay(6).next().is_none() && !b.holds(5));
        assert_eq!(b.bytes(), 4);
        b.trim(8, Stamp(2));
        assert_eq!((b.len(), b.bytes()), (1, 2));
    }
}
