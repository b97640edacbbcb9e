//! Property tests of the primitives a scale in stands on: merging two
//! partitions' checkpoints undoes their partition (no key lost or doubled,
//! output buffers back in stamp order), and a merge can be brought to an
//! exact frontier and retire a channel.

use proptest::prelude::*;
use spate_engine::stamp::merge::{read_tuple, write_tuple, Merge};
use spate_engine::stamp::Stamp;
use spate_engine::state::{Checkpoint, KeyRange, KeyedState, OutputBuffer};

/// The tuples (stamp, payload) of every batch kept for `to`, in order.
fn tuples(buffer: &OutputBuffer, to: u32) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for batch in buffer.replay(to) {
        let mut pos = 0;
        while pos < batch.body.len() {
            let (stamp, payload) = read_tuple(&batch.body, pos).unwrap();
            out.push((stamp.0, batch.body[payload.clone()].to_vec()));
            pos = payload.end;
        }
    }
    out
}

/// A buffer holding, for downstream 9, one batch per run of `stamps`.
fn buffer_of(stamps: &[u64], tag: u8) -> OutputBuffer {
    let mut buffer = OutputBuffer::default();
    for run in stamps.chunks(3) {
        let mut body = Vec::new();
        for &s in run {
            write_tuple(&mut body, Stamp(s), &[tag]);
        }
        buffer.push(9, Stamp(*run.last().unwrap()), body);
    }
    buffer
}

fn sorted_stamps() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::btree_set(1u64..1_000, 0..40).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #[test]
    fn merging_the_parts_of_a_checkpoint_gives_it_back(
        keys in prop::collection::btree_map(any::<u64>(), any::<i32>(), 0..200),
        cut in 1u64..u64::MAX,
        low_stamps in sorted_stamps(),
        high_stamps in sorted_stamps(),
    ) {
        let mut state: KeyedState<u64, i32> = KeyedState::default();
        for (k, v) in &keys {
            *state.get_or_default(*k) = *v;
        }
        let whole = Checkpoint {
            operator: "op".into(),
            key_range: KeyRange::FULL,
            frontier: Stamp(5),
            entries: state.snapshot().unwrap(),
            output_buffer: OutputBuffer::default(),
            operator_state: Vec::new(),
        };
        let (lower, upper) = KeyRange::FULL.split_at(cut).unwrap();
        let mut parts = whole.partition(&[lower, upper]).unwrap().into_iter();
        let (mut low, mut high) = (parts.next().unwrap(), parts.next().unwrap());
        low.output_buffer = buffer_of(&low_stamps, 1);
        high.output_buffer = buffer_of(&high_stamps, 2);
        let merged = low.merge(high).unwrap();

        prop_assert_eq!(merged.key_range, KeyRange::FULL);
        let restored: KeyedState<u64, i32> =
            KeyedState::restore(&merged.entries, merged.key_range).unwrap();
        prop_assert_eq!(restored.len(), keys.len());
        for (k, v) in &keys {
            prop_assert_eq!(restored.get(k), Some(v));
        }

        // Both buffers, interleaved in stamp order, nothing lost.
        let got = tuples(&merged.output_buffer, 9);
        prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0));
        let mut want: Vec<(u64, Vec<u8>)> = low_stamps.iter().map(|s| (*s, vec![1]))
            .chain(high_stamps.iter().map(|s| (*s, vec![2])))
            .collect();
        want.sort();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        prop_assert_eq!(got_sorted, want);
        let held: usize = merged.output_buffer.replay(9).map(|b| b.body.len()).sum();
        prop_assert_eq!(merged.output_buffer.bytes(), held);
    }

    #[test]
    fn absorbing_a_merged_channel_keeps_what_is_above_the_frontier(
        into_stamps in sorted_stamps(),
        from_stamps in sorted_stamps(),
        frontier in 0u64..1_000,
    ) {
        let mut buffer = buffer_of(&into_stamps, 1);
        for batch in buffer_of(&from_stamps, 2).replay(9) {
            buffer.push(4, batch.last, batch.body.clone());
        }
        buffer.absorb(4, 9, Stamp(frontier)).unwrap();
        prop_assert_eq!(buffer.replay(4).count(), 0);
        let got = tuples(&buffer, 9);
        prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0));
        let expected = into_stamps.iter().chain(&from_stamps).filter(|s| **s > frontier).count();
        prop_assert_eq!(got.len(), expected);
    }
}

/// One batch body of `tuples` (stamp, payload byte).
fn body(tuples: &[(u64, u8)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (stamp, byte) in tuples {
        write_tuple(&mut body, Stamp(*stamp), &[*byte]);
    }
    body
}

#[test]
fn a_merge_right_after_a_split_replays_what_the_split_copied_once() {
    // Sent to partition 3 before its split was known upstream, for both
    // of its future halves; two identical outputs of one input included.
    let mut b = OutputBuffer::default();
    b.push(3, Stamp(12), body(&[(10, 1), (11, 2), (11, 2), (12, 3)]));
    // The split: part 10 inherits a copy, then each gets its own.
    b.copy(3, 10);
    b.push(3, Stamp(13), body(&[(13, 4)]));
    b.push(10, Stamp(14), body(&[(14, 5)]));
    // Merged back at stamp 10, before either part got past the copy.
    b.absorb(10, 3, Stamp(10)).unwrap();
    assert_eq!(
        tuples(&b, 3),
        vec![
            (11, vec![2]),
            (11, vec![2]),
            (12, vec![3]),
            (13, vec![4]),
            (14, vec![5])
        ]
    );
    assert!(!b.holds(10));
    assert_eq!(b.bytes(), b.replay(3).map(|t| t.body.len()).sum::<usize>());
}

#[test]
fn merging_refuses_different_frontiers_and_gaps() {
    let part = |start, end, frontier| Checkpoint {
        operator: "op".into(),
        key_range: KeyRange { start, end },
        frontier: Stamp(frontier),
        entries: Vec::new(),
        output_buffer: OutputBuffer::default(),
        operator_state: Vec::new(),
    };
    let err = part(0, 9, 1).merge(part(10, 20, 2)).unwrap_err();
    assert!(err.to_string().contains("frontiers"), "{err}");
    let err = part(0, 9, 1).merge(part(11, 20, 1)).unwrap_err();
    assert!(err.to_string().contains("not adjacent"), "{err}");
    assert!(part(0, 9, 1).merge(part(10, 20, 1)).is_ok());
}

#[test]
fn a_capped_drain_stops_at_exactly_the_cap_and_a_retired_channel_stops_holding_back() {
    let batch = |stamps: &[u64]| {
        let mut body = Vec::new();
        for &s in stamps {
            write_tuple(&mut body, Stamp(s), b"x");
        }
        body
    };
    let mut merge = Merge::new(2, Stamp::ZERO);
    merge.push(0, batch(&[1, 3, 5, 7]), Stamp(8)).unwrap();
    merge.push(1, batch(&[2, 4]), Stamp(4)).unwrap();
    let mut seen = Vec::new();
    let done = merge
        .drain_until(Stamp(3), |s, _| {
            seen.push(s.0);
            Ok(())
        })
        .unwrap();
    assert_eq!((done, seen.clone()), (Stamp(3), vec![1, 2, 3]));
    // Channel 1 retires: its queued tuple 4 is dropped, and it no longer
    // holds the frontier at 4.
    merge.retire_channel(1);
    merge.push(1, batch(&[6]), Stamp(9)).unwrap();
    let done = merge
        .drain(|s, _| {
            seen.push(s.0);
            Ok(())
        })
        .unwrap();
    assert_eq!((done, seen), (Stamp(8), vec![1, 2, 3, 5, 7]));
}
