//! Output buffers: what an instance has sent downstream and must keep for
//! replay until the downstream's checkpoint covers it.
//!
//! The buffer keeps whole batches exactly as they were sent (one copy per
//! batch, none per tuple). Trimming drops the batches whose every tuple is
//! covered by the downstream's checkpoint; a replay resends the rest, and
//! the receiver drops what it has already processed by stamp.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::stamp::Stamp;

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
}
