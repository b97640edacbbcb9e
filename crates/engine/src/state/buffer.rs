//! Output buffers: what an instance has sent downstream and must keep for
//! replay until the downstream's checkpoint covers it.
//!
//! The buffer keeps whole batches exactly as they were sent: a full batch's
//! very bytes, shared with an in-process downstream that reads them, a
//! small batch copied once, never a copy per tuple. Trimming drops the
//! batches whose every tuple is covered by the downstream's checkpoint; a
//! replay resends the rest, and the receiver drops what it has already
//! processed by stamp.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

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
    /// Encoded tuples, as sent: the very bytes an in-process channel
    /// handed downstream, shared rather than copied.
    pub body: Bytes,
}

/// Per downstream instance, the batches sent to it, oldest first.
///
/// A buffer only grows at the back and shrinks at the front between
/// reshapes (a restore, a split's copy, a merge's interleaving), so what
/// changed since a checkpoint is, per downstream, the frontier trimmed to
/// and the batches pushed since: [`OutputBuffer::since`] marks a point and
/// an incremental checkpoint carries only those changes
/// ([`BufferEncoding`]). Without that, every checkpoint of an instance
/// whose downstream lags carried its whole backlog of outputs again.
#[derive(Clone, Debug, Deserialize)]
pub struct OutputBuffer {
    channels: BTreeMap<u32, VecDeque<BufferedBatch>>,
    bytes: usize,
    /// `Some` in a decoded incremental checkpoint: `channels` then hold
    /// only the batches pushed since its base, and the base's batches to
    /// each downstream at or below its trim frontier here are gone
    /// ([`OutputBuffer::then`] folds it).
    trims: Option<BTreeMap<u32, Stamp>>,
    /// Per downstream, batches ever pushed and the highest frontier ever
    /// trimmed to, for [`OutputBuffer::since`].
    #[serde(skip)]
    tally: BTreeMap<u32, (u64, Stamp)>,
    /// Which buffer this is, and how many times it changed other than by
    /// a push or a trim: a mark from another buffer, or from before a
    /// reshape, does not describe this one.
    #[serde(skip, default = "Lineage::fresh")]
    lineage: Lineage,
}

/// See [`OutputBuffer::lineage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lineage {
    buffer: u64,
    reshapes: u64,
}

impl Lineage {
    fn fresh() -> Lineage {
        static BUFFERS: AtomicU64 = AtomicU64::new(0);
        Lineage {
            buffer: BUFFERS.fetch_add(1, Ordering::Relaxed),
            reshapes: 0,
        }
    }
}

impl Default for OutputBuffer {
    fn default() -> Self {
        OutputBuffer {
            channels: BTreeMap::new(),
            bytes: 0,
            trims: None,
            tally: BTreeMap::new(),
            lineage: Lineage::fresh(),
        }
    }
}

/// Where an output buffer stood at a checkpoint, so that the next one can
/// carry only what changed since ([`OutputBuffer::since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferMark {
    pushed: BTreeMap<u32, u64>,
    lineage: Lineage,
}

impl PartialEq for OutputBuffer {
    /// Equal batches and trims; the bookkeeping of how they came to be
    /// does not count.
    fn eq(&self, other: &Self) -> bool {
        (&self.channels, self.bytes, &self.trims) == (&other.channels, other.bytes, &other.trims)
    }
}

impl Eq for OutputBuffer {}

impl OutputBuffer {
    /// Records a batch sent to downstream instance `to`.
    pub fn push(&mut self, to: u32, last: Stamp, body: impl Into<Bytes>) {
        let body = body.into();
        self.bytes += body.len();
        self.tally.entry(to).or_default().0 += 1;
        self.channels
            .entry(to)
            .or_default()
            .push_back(BufferedBatch { last, body });
    }

    /// Drops the batches to `to` that its checkpoint at `frontier` covers.
    pub fn trim(&mut self, to: u32, frontier: Stamp) {
        if let Some(queue) = self.channels.get_mut(&to) {
            let trimmed = &mut self.tally.entry(to).or_default().1;
            *trimmed = (*trimmed).max(frontier);
            while queue.front().is_some_and(|b| b.last <= frontier) {
                if let Some(batch) = queue.pop_front() {
                    self.bytes -= batch.body.len();
                }
            }
        }
    }

    /// Records a change other than a push or a trim: the next checkpoint
    /// takes the buffer whole, and trims count again from here (a copy may
    /// add batches below an earlier trim).
    fn reshaped(&mut self) {
        self.lineage.reshapes += 1;
        for (_, trimmed) in self.tally.values_mut() {
            *trimmed = Stamp::ZERO;
        }
    }

    /// Where the buffer stands now: the base of the next checkpoint's
    /// changes.
    pub fn mark(&self) -> BufferMark {
        BufferMark {
            pushed: self.tally.iter().map(|(to, (n, _))| (*to, *n)).collect(),
            lineage: self.lineage,
        }
    }

    /// How to encode this buffer in a checkpoint on the one taken at
    /// `mark`: only its changes since, unless it was reshaped since (or
    /// there is no mark), then whole.
    pub fn since<'a>(&'a self, mark: Option<&'a BufferMark>) -> BufferEncoding<'a> {
        BufferEncoding {
            buffer: self,
            since: mark.filter(|m| m.lineage == self.lineage && self.trims.is_none()),
        }
    }

    /// This buffer (a base's) with `changes` (a later checkpoint's buffer)
    /// folded in: the changes' trims applied, then their batches added; a
    /// whole buffer simply replaces this one.
    pub fn then(mut self, changes: OutputBuffer) -> OutputBuffer {
        let Some(trims) = changes.trims else {
            return changes;
        };
        for (to, frontier) in trims {
            self.trim(to, frontier);
        }
        for (to, batches) in changes.channels {
            self.bytes += batches.iter().map(|b| b.body.len()).sum::<usize>();
            self.channels.entry(to).or_default().extend(batches);
        }
        self
    }

    /// Moves what is kept for `from` into what is kept for `into`, in stamp
    /// order, keeping only tuples above `above`: a scale in merged `from`
    /// into `into`, which starts at `above` and must be replayed both
    /// partitions' inputs in one ordered stream. `from` may still hold the
    /// copy it took of `into`'s batches when it split off (`copy`), with
    /// tuples above `above` when the merge came before the parts had
    /// worked through it: those are kept once.
    pub fn absorb(&mut self, from: u32, into: u32, above: Stamp) -> Result<(), EngineError> {
        self.reshaped();
        let queues = [into, from].map(|c| self.channels.remove(&c).unwrap_or_default());
        self.insert_interleaved(into, queues, above, Combine::Copies)
    }

    /// Adds `other`'s batches to this buffer's, each downstream's in stamp
    /// order: the buffers of two partitions merged by a scale in.
    pub fn merge(&mut self, other: OutputBuffer) -> Result<(), EngineError> {
        self.reshaped();
        // Counted here until interleaving re-counts them.
        self.bytes += other.bytes;
        for (to, queue) in other.channels {
            let mine = self.channels.remove(&to).unwrap_or_default();
            self.insert_interleaved(to, [mine, queue], Stamp::ZERO, Combine::Both)?;
        }
        Ok(())
    }

    /// Keeps for `to` the tuples of `queues` above `above`, combined as
    /// `combine` says, interleaved in stamp order and cut into batches
    /// again.
    fn insert_interleaved(
        &mut self,
        to: u32,
        queues: [VecDeque<BufferedBatch>; 2],
        above: Stamp,
        combine: Combine,
    ) -> Result<(), EngineError> {
        for batch in queues.iter().flatten() {
            self.bytes -= batch.body.len();
        }
        let [first, second] = [&queues[0], &queues[1]].map(|q| tuples_above(q, above));
        let tuples = match combine {
            Combine::Both => {
                let mut tuples = first?;
                tuples.extend(second?);
                // Stable: tuples that share a stamp keep their order (the
                // receiver sorts those by bytes anyway).
                tuples.sort_by_key(|(stamp, _)| *stamp);
                tuples
            }
            Combine::Copies => union_of_copies(&first?, &second?),
        };
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
                    body: std::mem::take(&mut body).into(),
                });
            }
        }
        if !body.is_empty() {
            self.bytes += body.len();
            merged.push_back(BufferedBatch {
                last,
                body: body.into(),
            });
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
        self.reshaped();
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

/// How the tuples two queues keep for one downstream combine into one.
enum Combine {
    /// Every tuple of both: two partitions' own outputs.
    Both,
    /// One queue began as a copy of the other's batches (a partition split
    /// off and took over its parent's), so a tuple both hold is one tuple:
    /// each is kept as often as the queue holding it more often holds it.
    /// An upstream routes each output to one partition, so outside the
    /// copy no tuple is in both.
    Copies,
}

/// The tuples of `queue` above `above` with their stamps, in order.
fn tuples_above(
    queue: &VecDeque<BufferedBatch>,
    above: Stamp,
) -> Result<Vec<(Stamp, &[u8])>, EngineError> {
    let mut tuples = Vec::new();
    for batch in queue {
        let mut pos = 0;
        while pos < batch.body.len() {
            let (stamp, payload) = read_tuple(&batch.body, pos)?;
            if stamp > above {
                tuples.push((stamp, &batch.body[pos..payload.end]));
            }
            pos = payload.end;
        }
    }
    Ok(tuples)
}

/// `a` and `b` (each in stamp order) as one, in stamp order, a tuple in
/// both kept as often as the one holding it more often does
/// ([`Combine::Copies`]).
fn union_of_copies<'a>(a: &[(Stamp, &'a [u8])], b: &[(Stamp, &'a [u8])]) -> Vec<(Stamp, &'a [u8])> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while let Some(stamp) = [a.get(i), b.get(j)]
        .into_iter()
        .flatten()
        .map(|t| t.0)
        .min()
    {
        let a_end = i + a[i..].iter().take_while(|t| t.0 == stamp).count();
        let b_end = j + b[j..].iter().take_while(|t| t.0 == stamp).count();
        out.extend_from_slice(&a[i..a_end]);
        let mut unmatched: Vec<&[u8]> = a[i..a_end].iter().map(|t| t.1).collect();
        for tuple in &b[j..b_end] {
            match unmatched.iter().position(|u| *u == tuple.1) {
                Some(k) => {
                    unmatched.swap_remove(k);
                }
                None => out.push(*tuple),
            }
        }
        (i, j) = (a_end, b_end);
    }
    out
}

/// How an [`OutputBuffer`] goes into a checkpoint
/// ([`OutputBuffer::since`]): whole, or only its changes since a mark.
/// Either way it decodes as an `OutputBuffer` (with `trims` set for
/// changes).
pub struct BufferEncoding<'a> {
    buffer: &'a OutputBuffer,
    since: Option<&'a BufferMark>,
}

impl BufferEncoding<'_> {
    /// Per downstream, how many batches at the back of its queue to write
    /// (every downstream is listed, so that a fold knows of each one, even
    /// with nothing for it: [`OutputBuffer::holds`]).
    fn written(&self) -> impl Iterator<Item = (u32, &VecDeque<BufferedBatch>, usize)> + '_ {
        self.buffer.channels.iter().map(move |(to, queue)| {
            let n = match self.since {
                None => queue.len(),
                Some(mark) => {
                    let pushed = self.buffer.tally.get(to).map_or(0, |t| t.0);
                    let new = pushed - mark.pushed.get(to).copied().unwrap_or(0);
                    queue.len().min(usize::try_from(new).unwrap_or(usize::MAX))
                }
            };
            (*to, queue, n)
        })
    }
}

impl Serialize for BufferEncoding<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The last `.1` batches of a queue, as a sequence.
        struct Tail<'q>(&'q VecDeque<BufferedBatch>, usize);
        impl Serialize for Tail<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().skip(self.0.len() - self.1))
            }
        }
        struct Channels<'e>(&'e BufferEncoding<'e>);
        impl Serialize for Channels<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let written: Vec<_> = self.0.written().collect();
                let mut map = serializer.serialize_map(Some(written.len()))?;
                for (to, queue, n) in written {
                    map.serialize_entry(&to, &Tail(queue, n))?;
                }
                map.end()
            }
        }
        let (bytes, trims) = match self.since {
            None => (self.buffer.bytes, self.buffer.trims.clone()),
            Some(_) => (
                self.written()
                    .map(|(_, q, n)| {
                        q.iter()
                            .skip(q.len() - n)
                            .map(|b| b.body.len())
                            .sum::<usize>()
                    })
                    .sum(),
                Some(
                    self.buffer
                        .tally
                        .iter()
                        .filter(|(_, (_, trimmed))| *trimmed > Stamp::ZERO)
                        .map(|(to, (_, trimmed))| (*to, *trimmed))
                        .collect(),
                ),
            ),
        };
        let mut s = serializer.serialize_struct("OutputBuffer", 3)?;
        s.serialize_field("channels", &Channels(self))?;
        s.serialize_field("bytes", &bytes)?;
        s.serialize_field("trims", &trims)?;
        s.end()
    }
}

impl Serialize for OutputBuffer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.since(None).serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_batches_not_fully_covered() {
        let mut b = OutputBuffer::default();
        b.push(7, Stamp(2), vec![1, 2]);
        b.push(7, Stamp(5), vec![3]);
        b.push(8, Stamp(3), vec![0]);
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
        b.push(7, Stamp(2), vec![1, 2]);
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
