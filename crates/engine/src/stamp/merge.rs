//! The stamp-ordered merge of an instance's input channels.
//!
//! Each channel (upstream instance -> this instance) is FIFO and carries
//! tuples in non-decreasing stamp order plus progress marks ("nothing at or
//! below m will follow"). The merge releases tuples only up to the smallest
//! mark over all channels, in stamp order; tuples sharing a stamp (one input
//! that fanned out) are released sorted by their encoded bytes. The order of
//! processing is then a function of the inputs alone, not of the topology or
//! of timing, so a replay, a recovery or a split reproduces it exactly.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::ops::Range;

use bytes::Bytes;

use super::Stamp;
use crate::error::EngineError;

/// Bytes of a tuple header inside a batch: stamp (u64) and length (u32).
pub const TUPLE_HEADER: usize = 12;

/// Reads the tuple at `pos` of a batch body: its stamp and payload range.
pub fn read_tuple(body: &[u8], pos: usize) -> Result<(Stamp, Range<usize>), EngineError> {
    let header = body
        .get(pos..pos + TUPLE_HEADER)
        .ok_or_else(|| EngineError::Protocol(format!("truncated tuple header at byte {pos}")))?;
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&header[..8]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[8..]);
    let len = u32::from_le_bytes(len) as usize;
    let start = pos + TUPLE_HEADER;
    if body.len() - start < len {
        return Err(EngineError::Protocol(format!(
            "tuple at byte {pos} claims {len} bytes but the batch ends at {}",
            body.len()
        )));
    }
    Ok((Stamp(u64::from_le_bytes(stamp)), start..start + len))
}

/// Appends one tuple to a batch body.
pub fn write_tuple(body: &mut Vec<u8>, stamp: Stamp, payload: &[u8]) {
    let Ok(()) = encode_tuple(body, stamp, |body| {
        body.extend_from_slice(payload);
        Ok::<(), Infallible>(())
    });
}

/// Appends one tuple to a batch body, its payload written by `encode`
/// straight into the body, so that no encoding is made elsewhere and
/// copied in. If `encode` fails, the body is left as it was.
pub fn encode_tuple<E>(
    body: &mut Vec<u8>,
    stamp: Stamp,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = body.len();
    body.extend_from_slice(&stamp.0.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    if let Err(e) = encode(body) {
        body.truncate(start);
        return Err(e);
    }
    let len = (body.len() - start - TUPLE_HEADER) as u32;
    body[start + 8..start + TUPLE_HEADER].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

#[derive(Default)]
struct ChannelQueue {
    /// Batch bodies (tuples only), each with the offset of its next tuple.
    frames: VecDeque<(Bytes, usize)>,
    /// Everything at or below this stamp has arrived on the channel.
    mark: Stamp,
    /// The last stamp accepted, to check the FIFO stamp order.
    last: Stamp,
    /// Its upstream was merged into another: it sends nothing any more.
    retired: bool,
}

impl ChannelQueue {
    fn peek(&mut self) -> Option<(Stamp, Range<usize>)> {
        loop {
            let (body, pos) = self.frames.front()?;
            if *pos < body.len() {
                // Framing was checked when the batch was accepted.
                return read_tuple(body, *pos).ok();
            }
            self.frames.pop_front();
        }
    }

    fn advance(&mut self, to: usize) {
        if let Some((_, pos)) = self.frames.front_mut() {
            *pos = to;
        }
    }

    fn front_body(&self) -> &[u8] {
        self.frames.front().map_or(&[], |(b, _)| b)
    }

    /// The stamp of the tuple after the front one, which ends at `end`:
    /// the next in the front batch, else the first of the next batch.
    fn stamp_after(&self, end: usize) -> Option<Stamp> {
        let (body, pos) = match self.frames.front() {
            Some((body, _)) if end < body.len() => (body, end),
            _ => self.frames.get(1).map(|(body, pos)| (body, *pos))?,
        };
        read_tuple(body, pos).ok().map(|(stamp, _)| stamp)
    }
}

/// Merges input channels into one deterministic, stamp-ordered stream.
pub struct Merge {
    channels: Vec<ChannelQueue>,
    done: Stamp,
    group: Vec<Range<usize>>,
    scratch: Vec<u8>,
}

impl Merge {
    /// A merge over `channels` inputs; tuples at or below `done` (a restored
    /// checkpoint's frontier) are duplicates and will be dropped.
    pub fn new(channels: usize, done: Stamp) -> Self {
        Merge {
            channels: (0..channels).map(|_| ChannelQueue::default()).collect(),
            done,
            group: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Accepts a batch body from `channel` followed by progress `mark`,
    /// checking framing and stamp order so that a bad peer cannot corrupt
    /// the merge.
    pub fn push(
        &mut self,
        channel: usize,
        body: impl Into<Bytes>,
        mark: Stamp,
    ) -> Result<(), EngineError> {
        let body = body.into();
        let done = self.done;
        let queue = self
            .channels
            .get_mut(channel)
            .ok_or_else(|| EngineError::Protocol(format!("no input channel {channel}")))?;
        if queue.retired {
            // In flight when its upstream stopped; the partition it was
            // merged into sends all of it again.
            return Ok(());
        }
        let mut pos = 0;
        let mut last = queue.last;
        while pos < body.len() {
            let (stamp, payload) = read_tuple(&body, pos)?;
            // Stamps at or below `done` are replayed duplicates, dropped on
            // release; anything newer must respect order and the channel's
            // earlier marks.
            if stamp < last || (stamp > done && stamp <= queue.mark) {
                return Err(EngineError::Protocol(format!(
                    "channel {channel} sent stamp {} after stamp {} / mark {}",
                    stamp.0, last.0, queue.mark.0
                )));
            }
            last = stamp;
            pos = payload.end;
        }
        queue.last = last;
        queue.mark = queue.mark.max(mark);
        if !body.is_empty() {
            queue.frames.push_back((body, 0));
        }
        Ok(())
    }

    /// Adds an input channel (a new upstream partition after a split) whose
    /// upstream will send nothing at or below `mark`. Returns its index.
    pub fn add_channel(&mut self, mark: Stamp) -> usize {
        self.channels.push(ChannelQueue {
            mark: mark.max(self.done),
            ..ChannelQueue::default()
        });
        self.channels.len() - 1
    }

    /// Forgets what a channel's previous upstream incarnation sent but was not
    /// yet released: its replacement (restored from a checkpoint) will send
    /// it again, and releasing both would duplicate it.
    pub fn reset_channel(&mut self, channel: usize) {
        if let Some(queue) = self.channels.get_mut(channel) {
            queue.frames.clear();
            queue.last = Stamp::ZERO;
            queue.mark = self.done;
        }
    }

    /// Retires a channel whose upstream was merged into another partition
    /// (a scale in): what it queued is dropped (the merged partition sends
    /// it again, in order with its own), and it no longer holds back the
    /// frontier.
    pub fn retire_channel(&mut self, channel: usize) {
        if let Some(queue) = self.channels.get_mut(channel) {
            queue.frames.clear();
            queue.mark = Stamp::END;
            queue.retired = true;
        }
    }

    /// The stamp up to which every channel is complete.
    pub fn frontier(&self) -> Stamp {
        self.channels
            .iter()
            .map(|c| c.mark)
            .min()
            .unwrap_or(Stamp::END)
    }

    /// The stamp up to which tuples have been released.
    pub fn done(&self) -> Stamp {
        self.done
    }

    /// Number of batches waiting, for queue-length metrics.
    pub fn queued_batches(&self) -> usize {
        self.channels.iter().map(|c| c.frames.len()).sum()
    }

    /// Releases every tuple up to the current frontier to `f`, in order.
    /// Returns the new `done` stamp.
    pub fn drain(
        &mut self,
        f: impl FnMut(Stamp, &[u8]) -> Result<(), EngineError>,
    ) -> Result<Stamp, EngineError> {
        self.drain_until(Stamp::END, f)
    }

    /// As [`Merge::drain`], but never beyond `cap`: an instance brought to
    /// an exact frontier (two partitions about to be merged must stand at
    /// the same one) releases nothing above it.
    pub fn drain_until(
        &mut self,
        cap: Stamp,
        mut f: impl FnMut(Stamp, &[u8]) -> Result<(), EngineError>,
    ) -> Result<Stamp, EngineError> {
        let limit = self.frontier().min(cap);
        loop {
            let mut min: Option<Stamp> = None;
            let mut holders = 0;
            let mut holder = 0;
            for (i, c) in self.channels.iter_mut().enumerate() {
                let Some((s, _)) = c.peek() else { continue };
                if s > limit {
                    continue;
                }
                match min {
                    Some(m) if s > m => {}
                    Some(m) if s == m => holders += 1,
                    _ => {
                        min = Some(s);
                        holders = 1;
                        holder = i;
                    }
                }
            }
            let Some(stamp) = min else { break };
            if stamp <= self.done {
                // A replayed duplicate: drop every copy of this stamp.
                for c in &mut self.channels {
                    while let Some((_, r)) = c.peek().filter(|(s, _)| *s == stamp) {
                        c.advance(r.end);
                    }
                }
                continue;
            }
            if holders == 1 {
                let c = &mut self.channels[holder];
                let (_, range) = c.peek().expect("holder has a tuple");
                // The next tuple may be in the next batch: an upstream
                // flush can split one input's outputs over two.
                let single = c.stamp_after(range.end) != Some(stamp);
                if single {
                    f(stamp, &c.front_body()[range.clone()])?;
                    c.advance(range.end);
                    continue;
                }
            }
            self.release_group(stamp, &mut f)?;
        }
        self.done = self.done.max(limit);
        Ok(self.done)
    }

    /// Releases all tuples carrying `stamp`, sorted by their bytes.
    fn release_group(
        &mut self,
        stamp: Stamp,
        f: &mut impl FnMut(Stamp, &[u8]) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        self.group.clear();
        self.scratch.clear();
        for c in &mut self.channels {
            while let Some((_, r)) = c.peek().filter(|(s, _)| *s == stamp) {
                let start = self.scratch.len();
                self.scratch.extend_from_slice(&c.front_body()[r.clone()]);
                self.group.push(start..self.scratch.len());
                c.advance(r.end);
            }
        }
        let scratch = &self.scratch;
        self.group
            .sort_unstable_by(|a, b| scratch[a.clone()].cmp(&scratch[b.clone()]));
        for r in &self.group {
            f(stamp, &scratch[r.clone()])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy;

    use super::*;

    fn batch(tuples: &[(u64, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (s, p) in tuples {
            write_tuple(&mut b, Stamp(*s), p);
        }
        b
    }

    #[test]
    fn a_tuple_encoded_in_place_reads_back_and_a_failed_one_leaves_nothing() {
        let mut body = batch(&[(3, b"abc")]);
        encode_tuple(&mut body, Stamp(4), |b| {
            b.extend_from_slice(b"de");
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(body, batch(&[(3, b"abc"), (4, b"de")]));
        let (stamp, payload) = read_tuple(&body, 15).unwrap();
        assert_eq!((stamp, &body[payload]), (Stamp(4), &b"de"[..]));
        let failed = encode_tuple(&mut body, Stamp(5), |b| {
            b.extend_from_slice(b"half");
            Err("cannot encode")
        });
        assert_eq!(failed, Err("cannot encode"));
        assert_eq!(body, batch(&[(3, b"abc"), (4, b"de")]));
    }

    fn drain_all(m: &mut Merge) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        m.drain(|s, p| {
            out.push((s.0, p.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn releases_in_stamp_order_up_to_the_frontier() {
        let mut m = Merge::new(2, Stamp::ZERO);
        m.push(0, batch(&[(1, b"a"), (4, b"d")]), Stamp(4)).unwrap();
        m.push(1, batch(&[(2, b"b")]), Stamp(2)).unwrap();
        let out = drain_all(&mut m);
        assert_eq!(out, vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
        m.push(1, Vec::new(), Stamp::END).unwrap();
        assert_eq!(drain_all(&mut m), vec![(4, b"d".to_vec())]);
        assert_eq!(m.done(), Stamp(4));
        m.push(0, Vec::new(), Stamp::END).unwrap();
        assert!(drain_all(&mut m).is_empty());
        assert_eq!(m.done(), Stamp::END);
    }

    #[test]
    fn equal_stamps_are_released_in_byte_order_whatever_the_channel() {
        let mut a = Merge::new(2, Stamp::ZERO);
        a.push(0, batch(&[(5, b"z"), (5, b"b")]), Stamp(5)).unwrap();
        a.push(1, batch(&[(5, b"m")]), Stamp(5)).unwrap();
        let mut b = Merge::new(1, Stamp::ZERO);
        b.push(0, batch(&[(5, b"m"), (5, b"b"), (5, b"z")]), Stamp(5))
            .unwrap();
        assert_eq!(drain_all(&mut a), drain_all(&mut b));
    }

    #[test]
    fn a_stamp_split_across_batches_is_released_in_byte_order() {
        // The same outputs, batched differently by their upstream (a
        // flush in the middle of one input's outputs, or not), must come
        // out in the same order.
        let mut split = Merge::new(1, Stamp::ZERO);
        split.push(0, batch(&[(5, b"z")]), Stamp(4)).unwrap();
        split
            .push(0, batch(&[(5, b"b"), (6, b"a")]), Stamp(6))
            .unwrap();
        let mut whole = Merge::new(1, Stamp::ZERO);
        whole
            .push(0, batch(&[(5, b"z"), (5, b"b"), (6, b"a")]), Stamp(6))
            .unwrap();
        let out = drain_all(&mut split);
        assert_eq!(out, drain_all(&mut whole));
        assert_eq!(
            out,
            vec![(5, b"b".to_vec()), (5, b"z".to_vec()), (6, b"a".to_vec())]
        );
    }

    /// One channel's tuples (stamps ascending), cut into batches.
    type Batches = Vec<Vec<(u64, Vec<u8>)>>;

    /// Channels' tuples, each cut into batches.
    fn channels() -> impl Strategy<Value = Vec<Batches>> {
        let tuple = (1u64..4, proptest::collection::vec(0u8..3, 0..3));
        let channel = proptest::collection::vec(proptest::collection::vec(tuple, 0..5), 0..5)
            .prop_map(|batches| {
                // Steps between stamps, 0 for a repeated stamp.
                let mut stamp = 0;
                batches
                    .into_iter()
                    .map(|batch| {
                        batch
                            .into_iter()
                            .map(|(step, payload)| {
                                stamp += step / 2;
                                (stamp.max(1), payload)
                            })
                            .collect()
                    })
                    .collect()
            });
        proptest::collection::vec(channel, 1..4)
    }

    /// Pushes channel `c`'s next batch, if any is left; its mark is one
    /// below the next batch's first stamp (which may repeat this batch's
    /// last), as an upstream flushing in the middle of one input's outputs
    /// marks it.
    fn push_next(m: &mut Merge, channels: &[Batches], next: &mut [usize], c: usize) -> bool {
        let batches = &channels[c];
        let Some(b) = batches.get(next[c]) else {
            return false;
        };
        next[c] += 1;
        let mark = batches[next[c]..]
            .iter()
            .flatten()
            .next()
            .map_or(Stamp::END, |(s, _)| Stamp(s - 1));
        let tuples: Vec<(u64, &[u8])> = b.iter().map(|(s, p)| (*s, &p[..])).collect();
        m.push(c, batch(&tuples), mark).unwrap();
        true
    }

    proptest::proptest! {
        /// Whatever the batching and the interleaving of channels, the
        /// merge releases every tuple once, by stamp, then by bytes.
        #[test]
        fn releases_by_stamp_then_bytes_whatever_the_batching(
            channels in channels(),
            order in proptest::collection::vec(0usize..4, 0..40),
        ) {
            let mut expected: Vec<(u64, Vec<u8>)> = channels.iter().flatten().flatten().cloned().collect();
            expected.sort();
            let mut m = Merge::new(channels.len(), Stamp::ZERO);
            let mut next = vec![0; channels.len()];
            let mut out = Vec::new();
            for c in order.into_iter().chain(0..channels.len()).chain(0..channels.len()) {
                push_next(&mut m, &channels, &mut next, c % channels.len());
                out.extend(drain_all(&mut m));
            }
            for c in 0..channels.len() {
                while push_next(&mut m, &channels, &mut next, c) {}
                m.push(c, Vec::new(), Stamp::END).unwrap();
            }
            out.extend(drain_all(&mut m));
            proptest::prop_assert_eq!(out, expected);
        }
    }

    #[test]
    fn drops_duplicates_at_or_below_done() {
        let mut m = Merge::new(1, Stamp(3));
        m.push(0, batch(&[(2, b"x"), (3, b"y"), (4, b"z")]), Stamp(4))
            .unwrap();
        assert_eq!(drain_all(&mut m), vec![(4, b"z".to_vec())]);
    }

    #[test]
    fn a_reset_channel_takes_a_replay_without_duplicates() {
        let mut m = Merge::new(2, Stamp::ZERO);
        m.push(0, batch(&[(1, b"a"), (3, b"c")]), Stamp(3)).unwrap();
        m.push(1, batch(&[(2, b"b")]), Stamp(2)).unwrap();
        assert_eq!(drain_all(&mut m).len(), 2);
        // Upstream 0 fails; its replacement replays from stamp 1.
        m.reset_channel(0);
        m.push(0, batch(&[(1, b"a"), (3, b"c"), (4, b"d")]), Stamp(4))
            .unwrap();
        m.push(1, Vec::new(), Stamp(4)).unwrap();
        assert_eq!(
            drain_all(&mut m),
            vec![(3, b"c".to_vec()), (4, b"d".to_vec())]
        );
    }

    #[test]
    fn refuses_out_of_order_and_truncated_batches() {
        let mut m = Merge::new(1, Stamp::ZERO);
        assert!(m.push(0, batch(&[(5, b"a"), (4, b"b")]), Stamp(5)).is_err());
        let mut truncated = batch(&[(1, b"abc")]);
        truncated.pop();
        assert!(m.push(0, truncated, Stamp(1)).is_err());
        assert!(m.push(3, Vec::new(), Stamp(1)).is_err());
    }
}
