//! Output buffers: what an instance has sent downstream and must keep for
//! replay until the downstream's checkpoint covers it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::stamp::Stamp;

/// One encoded output tuple kept for replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferedTuple {
    /// The tuple's stamp.
    pub stamp: Stamp,
    /// The tuple's encoded value.
    pub payload: Vec<u8>,
}

/// Per downstream instance, the tuples sent to it in stamp order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputBuffer {
    channels: BTreeMap<u32, VecDeque<BufferedTuple>>,
}

impl OutputBuffer {
    /// Records a tuple sent to downstream instance `to`.
    pub fn push(&mut self, to: u32, stamp: Stamp, payload: &[u8]) {
        self.channels
            .entry(to)
            .or_default()
            .push_back(BufferedTuple {
                stamp,
                payload: payload.to_vec(),
            });
    }

    /// Drops the tuples to `to` that its checkpoint at `frontier` covers.
    pub fn trim(&mut self, to: u32, frontier: Stamp) {
        if let Some(queue) = self.channels.get_mut(&to) {
            while queue.front().is_some_and(|t| t.stamp <= frontier) {
                queue.pop_front();
            }
        }
    }

    /// The tuples to resend to `to` after it restored a checkpoint at `frontier`.
    pub fn replay(&self, to: u32, frontier: Stamp) -> impl Iterator<Item = &BufferedTuple> {
        self.channels
            .get(&to)
            .into_iter()
            .flat_map(move |q| q.iter().filter(move |t| t.stamp > frontier))
    }

    /// Number of tuples held over all channels.
    pub fn len(&self) -> usize {
        self.channels.values().map(VecDeque::len).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload bytes held, for metrics and bounds.
    pub fn bytes(&self) -> usize {
        self.channels
            .values()
            .flat_map(|q| q.iter())
            .map(|t| t.payload.len() + 8)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_and_replay_follow_stamps() {
        let mut b = OutputBuffer::default();
        for s in 1..=5 {
            b.push(7, Stamp(s), &[s as u8]);
        }
        b.push(8, Stamp(3), &[0]);
        b.trim(7, Stamp(2));
        let replayed: Vec<u64> = b.replay(7, Stamp(3)).map(|t| t.stamp.0).collect();
        assert_eq!(replayed, vec![4, 5]);
        assert_eq!(b.len(), 4);
        assert_eq!(b.replay(9, Stamp(0)).count(), 0);
    }
}
