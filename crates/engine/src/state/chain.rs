//! A backup made of incremental checkpoints: the latest full checkpoint of
//! an instance and the deltas taken on it since, kept by whoever holds the
//! instance's backup (its holders).
//!
//! Invariants, kept here and nowhere else:
//! - the chain starts with a full checkpoint, and each delta changes the
//!   checkpoint right before it (its base is the previous frontier);
//! - frontiers only move forward;
//! - every delta covers the key range of the chain's full checkpoint (an
//!   instance that was split or merged starts a new chain);
//! - once the deltas weigh more than half the full checkpoint, they are
//!   folded into it (compaction), so a chain never holds more than about
//!   one and a half times its state, and a restore never folds more;
//! - compaction keeps the deltas after the pinned frontier (where a worker
//!   last staged or caught up a range of the backup), as long as they
//!   weigh at most half the full checkpoint: that worker's next catch-up
//!   then gets deltas, not the range whole. A pin no longer moved is
//!   folded away with the rest at the next compaction.

use std::io::{self, Write};
use std::sync::Arc;

use super::checkpoint::{
    chain_header, chain_parts, decode_delta, decode_shared, delta_run, Checkpoint, CheckpointKind,
    CheckpointParts, CHAIN_HEADER,
};
use super::routing::KeyRange;
use crate::error::EngineError;
use crate::stamp::Stamp;

/// One key range of a backup as a holder gives it
/// ([`BackupChain::range_since`]): `Some(since)` and a run of deltas on
/// `since`, or `None` and the range's full checkpoint.
pub type RangeCut = (Option<Stamp>, Vec<u8>);

/// Where to cut a backup ([`BackupChain::cuts`]): its frontier, and each
/// part's range and key count, in key order.
pub type Cuts = (Stamp, Vec<(KeyRange, usize)>);

/// The backup of one instance: a full checkpoint and the deltas on it.
#[derive(Debug, Clone)]
pub struct BackupChain {
    /// A full checkpoint, then deltas in order, each shared with the
    /// encodings handed out ([`BackupChain::shared`]).
    parts: Vec<Arc<Vec<u8>>>,
    frontier: Stamp,
    delta_bytes: usize,
    /// The frontier a worker last staged a range at ([`BackupChain::pin`]).
    pinned: Option<Stamp>,
}

/// Why a checkpoint could not join a chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A delta whose base is not the chain's latest checkpoint: the holder
    /// needs a full checkpoint (or the whole chain) first.
    #[error("a delta on stamp {base} arrived at a backup whose latest checkpoint is at stamp {latest}: a full checkpoint is needed")]
    Gap {
        /// The delta's base.
        base: u64,
        /// The chain's frontier.
        latest: u64,
    },
    /// A delta of another key range than the chain's: the instance was
    /// split or merged since, and its holder needs a full checkpoint.
    #[error("a delta of key range {delta} arrived at a backup of key range {held}: a full checkpoint is needed")]
    Reshaped {
        /// The delta's key range.
        delta: String,
        /// The chain's key range.
        held: String,
    },
    /// The bytes are not a good checkpoint.
    #[error(transparent)]
    Corrupt(#[from] EngineError),
}

impl BackupChain {
    /// A chain from a full checkpoint or an encoded chain (`bytes`) whose
    /// latest frontier is `frontier`.
    pub fn new(frontier: Stamp, bytes: Vec<u8>) -> Result<Self, ChainError> {
        Checkpoint::verify(&bytes)?;
        match Checkpoint::kind(&bytes)? {
            CheckpointKind::Full => Ok(BackupChain {
                parts: vec![Arc::new(bytes)],
                frontier,
                delta_bytes: 0,
                pinned: None,
            }),
            CheckpointKind::Chain => {
                let parts: Vec<Arc<Vec<u8>>> = chain_parts(&bytes)?
                    .into_iter()
                    .map(|part| Arc::new(part.to_vec()))
                    .collect();
                let delta_bytes = parts[1..].iter().map(|part| part.len()).sum();
                Ok(BackupChain {
                    parts,
                    frontier,
                    delta_bytes,
                    pinned: None,
                })
            }
            CheckpointKind::Delta { base } => Err(ChainError::Gap {
                base: base.0,
                latest: 0,
            }),
        }
    }

    /// Takes the instance's next checkpoint at `frontier`: a full one (or
    /// a chain) replaces the chain, a delta joins it if its base is the
    /// chain's frontier. An older checkpoint than the chain's is ignored.
    pub fn push(&mut self, frontier: Stamp, bytes: Vec<u8>) -> Result<(), ChainError> {
        Checkpoint::verify(&bytes)?;
        if frontier < self.frontier {
            return Ok(());
        }
        let CheckpointKind::Delta { base } = Checkpoint::kind(&bytes)? else {
            *self = BackupChain::new(frontier, bytes)?;
            return Ok(());
        };
        if base != self.frontier {
            return Err(ChainError::Gap {
                base: base.0,
                latest: self.frontier.0,
            });
        }
        let (delta, _) = Checkpoint::range_and_frontier(&bytes)?;
        let (held, _) = Checkpoint::range_and_frontier(&self.parts[0])?;
        if delta != held {
            return Err(ChainError::Reshaped {
                delta: format!("{delta:?}"),
                held: format!("{held:?}"),
            });
        }
        self.delta_bytes += bytes.len();
        self.parts.push(Arc::new(bytes));
        self.frontier = frontier;
        if self.delta_bytes > self.parts[0].len() / 2 {
            self.compact()?;
        }
        Ok(())
    }

    /// The frontier of the latest checkpoint.
    pub fn frontier(&self) -> Stamp {
        self.frontier
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.parts[0].len() + self.delta_bytes
    }

    /// The chain as one restorable encoding: the full checkpoint itself
    /// when there are no deltas, else a chain ([`Checkpoint::decode`]
    /// folds it).
    pub fn encode(&self) -> Vec<u8> {
        self.shared().to_vec()
    }

    /// The same encoding, sharing the chain's bytes instead of copying
    /// them: a holder sends gigabytes to a restoring worker without
    /// holding its lock or a second copy.
    pub fn shared(&self) -> SharedEncoding {
        SharedEncoding(self.parts.clone())
    }

    /// One key range of the backup, for a worker that stages it ahead of a
    /// split (`since: None`) or catches up on it (`since`: the frontier it
    /// staged): with `since` still in the chain (the full checkpoint's
    /// frontier or a delta's), a run of the deltas after it, each cut to
    /// `range` ([`Checkpoint::apply_run`]), and `Some(since)`; otherwise
    /// (nothing staged, or compaction folded `since` away) the full
    /// checkpoint of `range` at the chain's frontier, and `None`. Folds
    /// only what it sends: a catch-up decodes the deltas after `since`,
    /// never the full checkpoint.
    pub fn range_since(
        &self,
        range: KeyRange,
        since: Option<Stamp>,
    ) -> Result<RangeCut, EngineError> {
        if since.is_some_and(|s| s > self.frontier) {
            return Err(EngineError::Checkpoint(format!(
                "this backup is at stamp {}, behind the {} asked from",
                self.frontier.0,
                since.map_or(0, |s| s.0)
            )));
        }
        let frontiers = self
            .parts
            .iter()
            .map(|p| Checkpoint::frontier(p))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(at) = since.and_then(|s| frontiers.iter().position(|f| *f == s)) {
            let deltas = self.parts[at + 1..]
                .iter()
                .map(|part| {
                    let (base, delta) = decode_delta(part)?;
                    let cut = delta.restrict(range)?;
                    CheckpointParts {
                        operator: &cut.operator,
                        key_range: cut.key_range,
                        frontier: cut.frontier,
                        entries: &cut.entries,
                        output_buffer: &cut.output_buffer,
                        operator_state: &cut.operator_state,
                    }
                    .encode_delta(base, None)
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((since, delta_run(&deltas)));
        }
        let deltas = self.parts[1..]
            .iter()
            .map(|part| decode_delta(part).and_then(|(_, delta)| delta.restrict(range)))
            .collect::<Result<Vec<_>, _>>()?;
        let base = decode_shared(Arc::clone(&self.parts[0]))?.restrict(range)?;
        Ok((None, base.apply_all(deltas)?.encode()?))
    }

    /// Where to cut the backup into `parts` by recent load
    /// ([`Checkpoint::split_points`]): the frontier, and each part's range
    /// and key count, in key order. Folds the chain over its own bytes
    /// (no copy of the full checkpoint).
    pub fn cuts(&self, parts: usize) -> Result<Cuts, EngineError> {
        let whole = self.folded()?;
        let ranges = whole.split_points(parts);
        let keys = ranges.iter().map(|r| {
            let below = whole.entries.partition_point(|e| e.hash < r.start);
            whole.entries.partition_point(|e| e.hash <= r.end) - below
        });
        Ok((whole.frontier, ranges.iter().copied().zip(keys).collect()))
    }

    /// Keeps the deltas after the chain's latest frontier through
    /// compactions: a worker staged or caught up a range here, and comes
    /// back for the changes since (a warm standby, a live split's part).
    pub fn pin(&mut self) {
        self.pinned = Some(self.frontier);
    }

    /// Folds the deltas into one full checkpoint, but those after the pin
    /// while they weigh at most half of it.
    fn compact(&mut self) -> Result<(), EngineError> {
        let fold = self.folded_parts()?;
        let kept = self.parts.split_off(fold);
        let full = self.folded()?.encode()?;
        self.delta_bytes = kept.iter().map(|part| part.len()).sum();
        self.parts = std::iter::once(Arc::new(full)).chain(kept).collect();
        Ok(())
    }

    /// The chain folded into one checkpoint over its own bytes: no copy
    /// of the full checkpoint (its parts were verified as they came).
    fn folded(&self) -> Result<Checkpoint, EngineError> {
        let deltas = self.parts[1..]
            .iter()
            .map(|part| decode_delta(part).map(|(_, delta)| delta))
            .collect::<Result<Vec<_>, _>>()?;
        decode_shared(Arc::clone(&self.parts[0]))?.apply_all(deltas)
    }

    /// How many parts, from the first, a compaction folds.
    fn folded_parts(&self) -> Result<usize, EngineError> {
        let all = self.parts.len();
        let Some(pin) = self.pinned else {
            return Ok(all);
        };
        for (at, part) in self.parts.iter().enumerate().skip(1) {
            if Checkpoint::frontier(part)? == pin {
                let after: usize = self.parts[at + 1..].iter().map(|p| p.len()).sum();
                return Ok(if after <= self.parts[0].len() / 2 {
                    at + 1
                } else {
                    all
                });
            }
        }
        Ok(all)
    }
}

/// A backup's encoding ([`BackupChain::encode`]) over the chain's own
/// bytes.
#[derive(Debug, Clone)]
pub struct SharedEncoding(Vec<Arc<Vec<u8>>>);

impl SharedEncoding {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self.0.as_slice() {
            [full] => full.len(),
            parts => CHAIN_HEADER + parts.iter().map(|p| 8 + p.len()).sum::<usize>(),
        }
    }

    /// Whether it is empty (never: a backup holds a full checkpoint).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies it into one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out)
            .expect("writing to a vector cannot fail");
        out
    }

    /// Writes it.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        match self.0.as_slice() {
            [full] => w.write_all(full),
            parts => {
                w.write_all(&chain_header(parts.len()))?;
                for part in parts {
                    w.write_all(&(part.len() as u64).to_le_bytes())?;
                    w.write_all(part)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hash::key_hash;
    use crate::state::testing::{encode_count, encode_count_over};
    use crate::state::{catch_up_steps, KeyedState, StateEntry};

    /// Encodes `state`'s next snapshot at `frontier`: full without a
    /// `base`, else the keys changed since the snapshot at `base`.
    fn snapshot(state: &mut KeyedState<u64, u64>, frontier: u64, base: Option<u64>) -> Vec<u8> {
        let entries = match base {
            Some(_) => state.snapshot_changes(),
            None => state.snapshot(),
        }
        .expect("snapshots");
        encode_count(&entries, frontier, base, &frontier.to_le_bytes())
    }

    /// Ranges cutting the whole range at `cuts`.
    fn ranges(mut cuts: Vec<u64>) -> Vec<KeyRange> {
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        let mut rest = KeyRange::FULL;
        for at in cuts {
            if let Some((low, high)) = rest.split_at(at) {
                out.push(low);
                rest = high;
            }
        }
        out.push(rest);
        out
    }

    proptest! {
        /// A worker that staged a range at one frontier and caught up on
        /// it at a later one holds exactly the part of the backup that a
        /// split at the later frontier would cut, whatever the chain
        /// (full checkpoints, deltas, compactions) in between.
        #[test]
        fn a_staged_range_caught_up_equals_the_partition_of_the_later_backup(
            steps in prop::collection::vec(
                (prop::collection::vec(0u64..400, 0..60), prop::bool::weighted(0.15)),
                1..14,
            ),
            staged_after in 0usize..14,
            cuts in prop::collection::vec(any::<u64>(), 0..5),
        ) {
            let mut state: KeyedState<u64, u64> = KeyedState::default();
            for k in 0..50 {
                *state.get_or_default(k) = k;
            }
            let mut chain = BackupChain::new(Stamp(1), snapshot(&mut state, 1, None)).unwrap();
            let ranges = ranges(cuts);
            let staged_after = staged_after.min(steps.len());
            let mut staged = None;
            for (i, (keys, full)) in steps.into_iter().enumerate() {
                if i == staged_after {
                    staged = Some(stage(&mut chain, &ranges));
                }
                let frontier = i as u64 + 2;
                for k in keys {
                    *state.get_or_default(k) += frontier;
                }
                let base = (!full).then(|| chain.frontier().0);
                chain.push(Stamp(frontier), snapshot(&mut state, frontier, base)).unwrap();
            }
            let staged = staged.unwrap_or_else(|| stage(&mut chain, &ranges));
            let whole = Checkpoint::decode(&chain.encode()).unwrap();
            let expected = whole.partition(&ranges).unwrap();
            for ((range, (at, part)), expected) in ranges.iter().zip(staged).zip(expected) {
                let (since, bytes) = chain.range_since(*range, Some(at)).unwrap();
                let caught_up = match since {
                    Some(since) => {
                        prop_assert_eq!(since, at);
                        // Staged as live state and caught up key by key,
                        // it equals the state restored from the later fold.
                        let mut live: KeyedState<u64, u64> =
                            KeyedState::restore(&part.entries, *range).unwrap();
                        for delta in Checkpoint::decode_run(&bytes, at).unwrap() {
                            live.apply_changes(&[(&delta.entries, *range)]).unwrap();
                        }
                        let mut restored: KeyedState<u64, u64> =
                            KeyedState::restore(&expected.entries, *range).unwrap();
                        prop_assert_eq!(live.encoded_bytes(), restored.encoded_bytes());
                        prop_assert_eq!(live.snapshot().unwrap(), restored.snapshot().unwrap());
                        part.apply_run(&bytes).unwrap()
                    }
                    None => Checkpoint::decode(&bytes).unwrap(),
                };
                prop_assert_eq!(caught_up, expected);
            }
        }
    }

    proptest! {
        /// A live merge's state: each partition staged at one frontier
        /// (the two checkpointing on their own schedules, full or
        /// incremental), the two joined into one map once both are staged
        /// (with room made ahead in either, or neither) and caught up with
        /// each one's changes since then and again at the stop, each time
        /// in the steps of `catch_up_steps`, equals the state restored from
        /// the merge of the two partitions' folded backups at their common
        /// stop in values and sizes; each key's load is the restored one
        /// halved at most once for each step its partition lacked.
        #[test]
        fn two_partitions_staged_joined_and_caught_up_equal_their_merged_backups(
            steps in prop::collection::vec(
                (
                    prop::collection::vec(0u64..400, 0..60),
                    prop::array::uniform2(prop::option::weighted(0.6, prop::bool::weighted(0.15))),
                ),
                1..14,
            ),
            staged_after in prop::array::uniform2(0usize..14),
            cut in any::<u64>(),
            lower_keys in 0u64..200,
            room_in in 0usize..3,
        ) {
            let ranges = ranges(vec![cut]);
            let mut states: Vec<KeyedState<u64, u64>> = ranges
                .iter()
                .enumerate()
                .map(|(i, range)| {
                    let mut state = KeyedState::default();
                    let keys = if i == 0 { 0..lower_keys } else { 0..200 };
                    for k in keys.filter(|k| range.contains(key_hash(k))) {
                        *state.get_or_default(k) = k;
                    }
                    state
                })
                .collect();
            let mut chains: Vec<BackupChain> = states
                .iter_mut()
                .zip(&ranges)
                .map(|(state, range)| {
                    let entries = state.snapshot().expect("snapshots");
                    let bytes = encode_count_over(*range, &entries, 1, None, &[]);
                    BackupChain::new(Stamp(1), bytes).unwrap()
                })
                .collect();
            let last = steps.len() - 1;
            let mut staged: Vec<Option<(Stamp, Checkpoint)>> = vec![None, None];
            let (mut joined, mut frontiers, mut lacks) = (None, [Stamp::ZERO; 2], [0u32; 2]);
            for (i, (keys, checkpoints)) in steps.into_iter().enumerate() {
                for p in 0..2 {
                    if i == staged_after[p].min(last) {
                        staged[p] = Some(stage(&mut chains[p], &ranges[p..=p]).remove(0));
                    }
                }
                if let (None, [Some(low), Some(high)]) = (&joined, &staged[..]) {
                    // The second partition staged joins the two.
                    let [mut lower, mut upper]: [KeyedState<u64, u64>; 2] = [low, high]
                        .map(|(_, part)| KeyedState::restore(&part.entries, part.key_range).unwrap());
                    match room_in {
                        1 => lower.reserve(upper.len()),
                        2 => upper.reserve(lower.len()),
                        _ => {}
                    }
                    lower.absorb(upper);
                    frontiers = [low.0, high.0];
                    catch_up(&mut lower, &chains, &ranges, &mut frontiers, &mut lacks);
                    joined = Some(lower);
                }
                let frontier = i as u64 + 2;
                for k in keys {
                    let p = usize::from(ranges[1].contains(key_hash(&k)));
                    // Hot keys and cold ones: loads that survive halvings.
                    for _ in 0..=k % 40 {
                        *states[p].get_or_default(k) += frontier;
                    }
                }
                for p in 0..2 {
                    // Both checkpoint at the stop, the last step.
                    let Some(full) = checkpoints[p].or((i == last).then_some(false)) else {
                        continue;
                    };
                    let base = (!full).then(|| chains[p].frontier().0);
                    let entries = match base {
                        Some(_) => states[p].snapshot_changes(),
                        None => states[p].snapshot(),
                    }
                    .expect("snapshots");
                    let bytes = encode_count_over(ranges[p], &entries, frontier, base, &[]);
                    chains[p].push(Stamp(frontier), bytes).unwrap();
                }
            }
            // The stop.
            let mut merged = joined.expect("both staged");
            catch_up(&mut merged, &chains, &ranges, &mut frontiers, &mut lacks);
            let folded: Vec<Checkpoint> = chains
                .iter()
                .map(|chain| Checkpoint::decode(&chain.encode()).unwrap())
                .collect();
            let [lower, upper]: [Checkpoint; 2] =
                folded.try_into().unwrap_or_else(|_| unreachable!());
            let whole = lower.merge(upper).unwrap();
            let mut restored: KeyedState<u64, u64> =
                KeyedState::restore(&whole.entries, whole.key_range).unwrap();
            prop_assert_eq!(merged.len(), restored.len());
            prop_assert_eq!(merged.encoded_bytes(), restored.encoded_bytes());
            let (got, expected) = (merged.snapshot().unwrap(), restored.snapshot().unwrap());
            prop_assert_eq!(got.len(), expected.len());
            for (got, expected) in got.iter().zip(&expected) {
                prop_assert_eq!(
                    (got.hash, got.key(), got.value()),
                    (expected.hash, expected.key(), expected.value())
                );
                let lacks = lacks[usize::from(ranges[1].contains(got.hash))];
                prop_assert!(
                    (0..=lacks).any(|k| got.load == expected.load.checked_shr(k).unwrap_or(0)),
                    "load {} where the holders' fold gives {} ({} steps lacking)",
                    got.load,
                    expected.load,
                    lacks
                );
            }
        }
    }

    /// One catch-up of a live merge's joined state: each partition's
    /// changes since `frontiers` (which move on to its backup's) folded in
    /// the steps of [`catch_up_steps`]; adds the steps each lacked to
    /// `lacks`.
    fn catch_up(
        joined: &mut KeyedState<u64, u64>,
        chains: &[BackupChain],
        ranges: &[KeyRange],
        frontiers: &mut [Stamp; 2],
        lacks: &mut [u32; 2],
    ) {
        let runs: Vec<(Vec<Vec<StateEntry>>, KeyRange)> = (0..2)
            .map(|p| {
                let at = frontiers[p];
                let (since, bytes) = chains[p].range_since(ranges[p], Some(at)).unwrap();
                frontiers[p] = chains[p].frontier();
                let run = match since {
                    Some(_) => Checkpoint::decode_run(&bytes, at)
                        .unwrap()
                        .into_iter()
                        .map(|delta| delta.entries)
                        .collect(),
                    None => vec![Checkpoint::decode(&bytes).unwrap().entries],
                };
                (run, ranges[p])
            })
            .collect();
        let steps = runs.iter().map(|(run, _)| run.len()).max().unwrap_or(0);
        for (lack, (run, _)) in lacks.iter_mut().zip(&runs) {
            *lack += (steps - run.len()) as u32;
        }
        for step in catch_up_steps(&runs) {
            joined.apply_changes(&step).unwrap();
        }
    }

    /// Each range of `chain` as a worker stages it (pinning the chain, as
    /// a holder does): its frontier and part.
    fn stage(chain: &mut BackupChain, ranges: &[KeyRange]) -> Vec<(Stamp, Checkpoint)> {
        chain.pin();
        ranges
            .iter()
            .map(|range| {
                let (since, bytes) = chain.range_since(*range, None).unwrap();
                assert_eq!(since, None);
                let part = Checkpoint::decode(&bytes).unwrap();
                (part.frontier, part)
            })
            .collect()
    }

    /// A chain whose deltas since its pin stay small keeps them through
    /// compactions (a standby catching up every so often always gets
    /// deltas), and stays within one and a half times its full checkpoint.
    #[test]
    fn compaction_keeps_the_deltas_after_the_pin() {
        let mut state: KeyedState<u64, u64> = KeyedState::default();
        for k in 0..1_000 {
            *state.get_or_default(k) = k;
        }
        let mut chain = BackupChain::new(Stamp(1), snapshot(&mut state, 1, None)).unwrap();
        let mut staged = Checkpoint::decode(&chain.encode()).unwrap();
        chain.pin();
        for frontier in 2..60u64 {
            for k in (frontier * 40..frontier * 40 + 40).map(|k| k % 1_000) {
                *state.get_or_default(k) += frontier;
            }
            let base = chain.frontier().0;
            chain
                .push(Stamp(frontier), snapshot(&mut state, frontier, Some(base)))
                .unwrap();
            assert!(
                chain.bytes()
                    <= chain.parts[0].len() * 3 / 2
                        + chain.parts[1..].last().map_or(0, |p| p.len())
            );
            if frontier % 3 == 0 {
                // The standby catches up, and the holder pins where it is.
                let (since, run) = chain
                    .range_since(KeyRange::FULL, Some(staged.frontier))
                    .unwrap();
                assert_eq!(since, Some(staged.frontier), "deltas kept since the pin");
                staged = staged.apply_run(&run).unwrap();
                chain.pin();
            }
        }
        let (since, run) = chain
            .range_since(KeyRange::FULL, Some(staged.frontier))
            .unwrap();
        assert_eq!(since, Some(staged.frontier));
        let staged = staged.apply_run(&run).unwrap();
        assert_eq!(staged, Checkpoint::decode(&chain.encode()).unwrap());
    }

    #[test]
    fn a_catch_up_from_beyond_the_backup_is_refused() {
        let mut state: KeyedState<u64, u64> = KeyedState::default();
        *state.get_or_default(1) = 1;
        let chain = BackupChain::new(Stamp(5), snapshot(&mut state, 5, None)).unwrap();
        let error = chain
            .range_since(KeyRange::FULL, Some(Stamp(9)))
            .unwrap_err();
        assert!(error.to_string().contains("behind"), "{error}");
    }
}
