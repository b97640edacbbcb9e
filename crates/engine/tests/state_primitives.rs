//! Property tests of the state primitives: checkpoint, restore, partition and
//! routing after a split.

use std::collections::BTreeMap;

use proptest::prelude::*;
use spate_engine::hash::key_hash;
use spate_engine::stamp::Stamp;
use spate_engine::state::{
    BackupChain, Checkpoint, CheckpointParts, KeyRange, KeyedState, OutputBuffer, RoutingTable,
    StateEntry,
};

fn state_of(pairs: &BTreeMap<u64, (String, i64)>) -> KeyedState<u64, (String, i64)> {
    let mut state = KeyedState::default();
    for (k, v) in pairs {
        *state.get_or_default(*k) = v.clone();
    }
    state
}

fn checkpoint_of(pairs: &BTreeMap<u64, (String, i64)>, range: KeyRange) -> Checkpoint {
    Checkpoint {
        operator: "op".into(),
        key_range: range,
        frontier: Stamp(77),
        entries: state_of(pairs).snapshot().unwrap(),
        output_buffer: OutputBuffer::default(),
        operator_state: vec![1, 2, 3],
    }
}

/// Sorted, distinct split points strictly inside the full range.
fn cuts() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::btree_set(1u64..u64::MAX, 0..6).prop_map(|s| s.into_iter().collect())
}

fn ranges_from_cuts(cuts: &[u64]) -> Vec<KeyRange> {
    let mut ranges = Vec::new();
    let mut start = 0u64;
    for &cut in cuts {
        ranges.push(KeyRange {
            start,
            end: cut - 1,
        });
        start = cut;
    }
    ranges.push(KeyRange {
        start,
        end: u64::MAX,
    });
    ranges
}

proptest! {
    #[test]
    fn checkpoint_encode_restore_round_trips(
        pairs in prop::collection::btree_map(any::<u64>(), (".{0,8}", any::<i64>()), 0..200)
    ) {
        let checkpoint = checkpoint_of(&pairs, KeyRange::FULL);
        let decoded = Checkpoint::decode(&checkpoint.encode().unwrap()).unwrap();
        prop_assert_eq!(&decoded, &checkpoint);
        let restored: KeyedState<u64, (String, i64)> =
            KeyedState::restore(&decoded.entries, KeyRange::FULL).unwrap();
        prop_assert_eq!(restored.len(), pairs.len());
        for (k, v) in &pairs {
            prop_assert_eq!(restored.get(k), Some(v));
        }
    }

    #[test]
    fn partition_then_restore_loses_and_duplicates_nothing(
        pairs in prop::collection::btree_map(any::<u64>(), (".{0,8}", any::<i64>()), 0..300),
        cuts in cuts(),
    ) {
        let ranges = ranges_from_cuts(&cuts);
        let checkpoint = checkpoint_of(&pairs, KeyRange::FULL);
        let parts = checkpoint.partition(&ranges).unwrap();
        prop_assert_eq!(parts.len(), ranges.len());
        let mut seen = BTreeMap::new();
        for part in &parts {
            prop_assert_eq!(part.frontier, checkpoint.frontier);
            let restored: KeyedState<u64, (String, i64)> =
                KeyedState::restore(&part.entries, part.key_range).unwrap();
            prop_assert_eq!(restored.len(), part.entries.len());
            for (k, v) in &pairs {
                if let Some(found) = restored.get(k) {
                    prop_assert!(seen.insert(*k, found.clone()).is_none(), "key {} twice", k);
                    prop_assert_eq!(found, v);
                }
            }
        }
        prop_assert_eq!(seen, pairs);
    }

    #[test]
    fn routing_after_a_split_reaches_the_part_holding_the_key(
        keys in prop::collection::btree_set(any::<u64>(), 1..200),
        cuts in cuts(),
        extra_cut in any::<u64>(),
    ) {
        let ranges = ranges_from_cuts(&cuts);
        let mut table = RoutingTable::new(ranges.iter().copied().zip(0usize..).collect()).unwrap();
        // Split one more range where possible, as a scale out would.
        let mut parts_ranges = ranges.clone();
        let victim = ranges[(extra_cut as usize) % ranges.len()];
        if let Some((lo, hi)) = victim.split_at(victim.midpoint()) {
            let new_id = ranges.len();
            let old_id = *table.route(victim.start);
            table.split(victim, hi.start, old_id, new_id).unwrap();
            let i = parts_ranges.iter().position(|r| *r == victim).unwrap();
            parts_ranges[i] = lo;
            parts_ranges.insert(i + 1, hi);
        }
        let pairs: BTreeMap<u64, (String, i64)> =
            keys.iter().map(|k| (*k, (String::new(), *k as i64))).collect();
        let parts = checkpoint_of(&pairs, KeyRange::FULL).partition(&parts_ranges).unwrap();
        for key in &keys {
            let owner = *table.route(key_hash(key));
            let owner_range = table.entries().iter().find(|(_, t)| *t == owner).unwrap().0;
            let holder = parts.iter().find(|p| p.key_range == owner_range).unwrap();
            prop_assert!(holder.entries.iter().any(|e| e.hash == key_hash(key)));
        }
    }
}

#[test]
fn partition_refuses_ranges_that_do_not_tile() {
    let checkpoint = checkpoint_of(&BTreeMap::new(), KeyRange::FULL);
    let gap = [
        KeyRange { start: 0, end: 10 },
        KeyRange {
            start: 12,
            end: u64::MAX,
        },
    ];
    assert!(checkpoint.partition(&gap).is_err());
    assert!(checkpoint.partition(&[]).is_err());
}

#[test]
fn restore_refuses_keys_outside_the_range() {
    let pairs: BTreeMap<u64, (String, i64)> = (0..50).map(|k| (k, (String::new(), 0))).collect();
    let checkpoint = checkpoint_of(&pairs, KeyRange::FULL);
    let half = KeyRange {
        start: 0,
        end: u64::MAX / 2,
    };
    assert!(KeyedState::<u64, (String, i64)>::restore(&checkpoint.entries, half).is_err());
}

#[test]
fn decode_refuses_garbage_and_other_versions() {
    assert!(Checkpoint::decode(b"nope").is_err());
    let mut bytes = checkpoint_of(&BTreeMap::new(), KeyRange::FULL)
        .encode()
        .unwrap();
    bytes[4] = 99;
    assert!(Checkpoint::decode(&bytes).is_err());
    // Version 2, before entries carried their load, is refused by name.
    bytes[4] = 2;
    let err = Checkpoint::decode(&bytes).unwrap_err().to_string();
    assert!(err.contains("version 2 was written by an older"), "{err}");
}

#[test]
fn accesses_count_as_load_halved_at_each_snapshot_and_kept_by_restore() {
    let mut state: KeyedState<u64, u64> = KeyedState::default();
    for _ in 0..5 {
        *state.get_or_default(1) += 1;
    }
    *state.get_or_default(2) += 1;
    assert_eq!(state.get(&2), Some(&1), "inspection is not load");
    let load = |entries: &[StateEntry], key: u64| {
        entries
            .iter()
            .find(|e| e.hash == key_hash(&key))
            .map(|e| e.load)
    };
    let first = state.snapshot().unwrap();
    assert_eq!((load(&first, 1), load(&first, 2)), (Some(5), Some(1)));
    *state.get_or_default(2) += 1;
    let second = state.snapshot().unwrap();
    assert_eq!((load(&second, 1), load(&second, 2)), (Some(2), Some(1)));
    // A restored state goes on as the original would have.
    let mut restored: KeyedState<u64, u64> = KeyedState::restore(&second, KeyRange::FULL).unwrap();
    *state.get_or_default(1) += 1;
    *restored.get_or_default(1) += 1;
    assert_eq!(restored.snapshot().unwrap(), state.snapshot().unwrap());
}

/// A checkpoint of `entries` at `frontier`, encoded in full or on `base`.
fn encode(entries: &[StateEntry], frontier: u64, base: Option<u64>) -> Vec<u8> {
    let parts = CheckpointParts {
        operator: "op",
        key_range: KeyRange::FULL,
        frontier: Stamp(frontier),
        entries,
        output_buffer: &OutputBuffer::default(),
        operator_state: &frontier.to_le_bytes(),
    };
    match base {
        Some(base) => parts.encode_delta(Stamp(base), None).unwrap(),
        None => parts.encode().unwrap(),
    }
}

/// One interval of work: the keys updated, then whether the checkpoint is
/// taken in full.
fn intervals() -> impl Strategy<Value = Vec<(Vec<(u16, i64)>, bool)>> {
    prop::collection::vec(
        (
            prop::collection::vec((0u16..64, any::<i64>()), 0..40),
            prop::bool::weighted(0.2),
        ),
        1..12,
    )
}

proptest! {
    /// Incremental checkpoints, folded, equal the full checkpoints taken at
    /// the same points (values and loads), through the chain a holder
    /// keeps (compactions included) and through a restore in between.
    #[test]
    fn incremental_checkpoints_fold_to_the_full_ones(intervals in intervals()) {
        let mut incremental: KeyedState<u16, i64> = KeyedState::default();
        let mut full: KeyedState<u16, i64> = KeyedState::default();
        let mut chain: Option<BackupChain> = None;
        for (i, (updates, take_full)) in intervals.iter().enumerate() {
            let frontier = 10 * (i as u64 + 1);
            for (key, value) in updates {
                let add = |v: &mut i64| *v = v.wrapping_add(*value);
                add(incremental.get_or_default(*key));
                add(full.get_or_default(*key));
            }
            let expected = Checkpoint::decode(&encode(&full.snapshot().unwrap(), frontier, None)).unwrap();
            let bytes = match &chain {
                Some(c) if !take_full => encode(&incremental.snapshot_changes().unwrap(), frontier, Some(c.frontier().0)),
                _ => encode(&incremental.snapshot().unwrap(), frontier, None),
            };
            match &mut chain {
                Some(c) => c.push(Stamp(frontier), bytes).unwrap(),
                None => chain = Some(BackupChain::new(Stamp(frontier), bytes).unwrap()),
            }
            let held = chain.as_ref().unwrap();
            let folded = Checkpoint::decode(&held.encode()).unwrap();
            prop_assert_eq!(&folded, &expected);
            // What a holder sends a restoring worker (its bytes shared, not
            // copied) is the same encoding, and decodes the same in place.
            let mut sent = Vec::new();
            held.shared().write_to(&mut sent).unwrap();
            prop_assert_eq!(sent.len(), held.shared().len());
            prop_assert_eq!(&sent, &held.encode());
            prop_assert_eq!(&Checkpoint::decode_owned(sent).unwrap(), &expected);
            // A holder given the whole chain holds the same.
            let copy = BackupChain::new(held.frontier(), held.encode()).unwrap();
            prop_assert_eq!(Checkpoint::decode(&copy.encode()).unwrap(), folded.clone());
            if i == intervals.len() / 2 {
                // Restored from the fold, the state goes on as before.
                incremental = KeyedState::restore(&folded.entries, KeyRange::FULL).unwrap();
                full = KeyedState::restore(&expected.entries, KeyRange::FULL).unwrap();
                chain = Some(BackupChain::new(Stamp(frontier), folded.encode().unwrap()).unwrap());
            }
        }
    }
}

/// What happens to an output buffer between two checkpoints.
#[derive(Clone, Debug)]
enum BufferStep {
    /// A batch of `len` bytes to downstream `to`.
    Push { to: u32, len: usize },
    /// Downstream `to` made its input durable up to `back` batches ago.
    Trim { to: u32, back: u64 },
    /// A downstream split: `to + 1` takes a copy of what `to` holds.
    Copy { to: u32 },
}

/// Intervals of buffer steps, each ended by a checkpoint (in full when
/// its flag is set).
fn buffer_intervals() -> impl Strategy<Value = Vec<(Vec<BufferStep>, bool)>> {
    let step = prop_oneof![
        6 => (0u32..3, 1usize..40).prop_map(|(to, len)| BufferStep::Push { to, len }),
        3 => (0u32..3, 0u64..6).prop_map(|(to, back)| BufferStep::Trim { to, back }),
        1 => (0u32..3).prop_map(|to| BufferStep::Copy { to }),
    ];
    prop::collection::vec(
        (
            prop::collection::vec(step, 0..30),
            prop::bool::weighted(0.15),
        ),
        1..10,
    )
}

proptest! {
    /// Incremental checkpoints carry only an output buffer's changes since
    /// the previous checkpoint, and the chain a holder keeps folds them back
    /// to the buffer the instance holds, whatever was pushed, trimmed or
    /// copied in between.
    #[test]
    fn buffer_changes_fold_to_the_live_buffer(intervals in buffer_intervals()) {
        let mut live = OutputBuffer::default();
        let mut stamp = 0u64;
        let mut mark = None;
        let mut chain: Option<BackupChain> = None;
        for (i, (steps, take_full)) in intervals.iter().enumerate() {
            for step in steps {
                match *step {
                    BufferStep::Push { to, len } => {
                        stamp += 1;
                        live.push(to, Stamp(stamp), vec![to as u8; len]);
                    }
                    BufferStep::Trim { to, back } => live.trim(to, Stamp(stamp.saturating_sub(back))),
                    BufferStep::Copy { to } => live.copy(to, to + 1),
                }
            }
            let frontier = 1000 * (i as u64 + 1);
            let parts = CheckpointParts {
                operator: "op",
                key_range: KeyRange::FULL,
                frontier: Stamp(frontier),
                entries: &[],
                output_buffer: &live,
                operator_state: &[],
            };
            let bytes = match &chain {
                Some(c) if !take_full => parts.encode_delta(c.frontier(), mark.as_ref()).unwrap(),
                _ => parts.encode().unwrap(),
            };
            mark = Some(live.mark());
            match &mut chain {
                Some(c) => c.push(Stamp(frontier), bytes).unwrap(),
                None => chain = Some(BackupChain::new(Stamp(frontier), bytes).unwrap()),
            }
            let folded = Checkpoint::decode(&chain.as_ref().unwrap().encode()).unwrap();
            prop_assert_eq!(&folded.output_buffer, &live);
            prop_assert_eq!(folded.output_buffer.bytes(), live.bytes());
        }
    }
}

#[test]
fn a_delta_carries_only_the_buffer_pushed_since_its_base() {
    let mut buffer = OutputBuffer::default();
    for s in 1..=100 {
        buffer.push(3, Stamp(s), vec![0; 1000]);
    }
    fn parts(buffer: &OutputBuffer) -> CheckpointParts<'_> {
        CheckpointParts {
            operator: "op",
            key_range: KeyRange::FULL,
            frontier: Stamp(100),
            entries: &[],
            output_buffer: buffer,
            operator_state: &[],
        }
    }
    let full = parts(&buffer).encode().unwrap();
    let mark = buffer.mark();
    buffer.push(3, Stamp(101), vec![0; 1000]);
    buffer.trim(3, Stamp(50));
    let delta = parts(&buffer)
        .encode_delta(Stamp(100), Some(&mark))
        .unwrap();
    assert!(
        full.len() > 100_000 && delta.len() < 1_200,
        "{} then {}",
        full.len(),
        delta.len()
    );
    // A reshaped buffer goes whole.
    let mark = buffer.mark();
    buffer.copy(3, 4);
    let whole = parts(&buffer)
        .encode_delta(Stamp(100), Some(&mark))
        .unwrap();
    assert!(whole.len() > 100_000, "{}", whole.len());
}

#[test]
fn a_delta_alone_or_on_the_wrong_base_is_refused() {
    let mut state: KeyedState<u64, u64> = KeyedState::default();
    *state.get_or_default(1) = 1;
    let full = encode(&state.snapshot().unwrap(), 10, None);
    *state.get_or_default(2) = 2;
    let delta = encode(&state.snapshot_changes().unwrap(), 20, Some(10));
    let err = Checkpoint::decode(&delta).unwrap_err().to_string();
    assert!(err.contains("cannot be restored alone"), "{err}");
    let mut chain = BackupChain::new(Stamp(10), full).unwrap();
    let wrong = encode(&[], 30, Some(15));
    let err = chain.push(Stamp(30), wrong).unwrap_err().to_string();
    assert!(err.contains("a full checkpoint is needed"), "{err}");
    chain.push(Stamp(20), delta.clone()).unwrap();
    assert_eq!(Checkpoint::frontier(&chain.encode()).unwrap(), Stamp(20));
    let mut corrupt = delta;
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(Checkpoint::verify(&corrupt).is_err());
}

#[test]
fn an_incremental_snapshot_lists_only_the_changed_keys() {
    let mut state: KeyedState<u64, u64> = KeyedState::default();
    for k in 0..1000 {
        *state.get_or_default(k) = k;
    }
    state.snapshot().unwrap();
    *state.get_or_default(7) += 1;
    *state.get_or_default(7) += 1;
    *state.get_or_default(9) += 1;
    let changes = state.snapshot_changes().unwrap();
    assert_eq!(changes.len(), 2);
    assert!(state.snapshot_changes().unwrap().is_empty());
}

#[test]
fn warming_a_key_is_neither_load_nor_a_change_and_pays_only_for_large_state() {
    let mut state: KeyedState<u64, u64> = KeyedState::default();
    *state.get_or_default(1) += 1;
    state.snapshot().unwrap();
    state.warm(&1);
    state.warm(&2);
    assert_eq!(state.changed(), 0, "warming changes nothing");
    assert_eq!(state.len(), 1, "warming creates no key");
    let loads: Vec<u32> = state.snapshot().unwrap().iter().map(|e| e.load).collect();
    assert_eq!(loads, vec![0], "the one access halved, nothing added");
    assert!(!state.outgrows_cache());
    for k in 0..100_000 {
        *state.get_or_default(k) = k;
    }
    assert!(
        state.outgrows_cache(),
        "100,000 keys of 32 bytes exceed 1 MiB"
    );
}
