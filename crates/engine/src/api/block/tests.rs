//! Unit and property tests of the ready-made operators: results against
//! brute-force definitions, and unchanged when the state is split and
//! merged (through checkpoint entries) part-way through, mid-window.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::harness::{run, Reshape};
use crate::api::aggregate::{Aggregate, Change, RunningAggregate};
use crate::api::join::{
    IntervalJoin, IntervalJoinSpec, JoinMode, JoinSide, JoinSpec, WindowJoin, WindowJoinSpec,
};
use crate::api::topk::{Ranked, Ranking, TopK};
use crate::api::window::{
    AssignWindows, ProgressClock, Timed, Window, WindowAggregate, WindowInput, WindowSpec,
};

/// Counts items per group: items are `(group, value)`.
struct CountAndSum;

impl Aggregate for CountAndSum {
    type In = (u32, u64);
    type Group = u32;
    type Acc = (u64, u64);
    type Out = (u32, u64, u64);
    fn group(item: &(u32, u64)) -> u32 {
        item.0
    }
    fn add(acc: &mut (u64, u64), item: (u32, u64)) {
        acc.0 += 1;
        acc.1 += item.1;
    }
    fn result(group: &u32, acc: &(u64, u64)) -> (u32, u64, u64) {
        (*group, acc.0, acc.1)
    }
}

/// Ranks `(group, count, sum)` by count, then by lower group.
struct MostItems;

impl Ranking for MostItems {
    type Item = (u32, u64, u64);
    type Rank = (u64, std::cmp::Reverse<u32>);
    fn rank(item: &(u32, u64, u64)) -> Self::Rank {
        (item.1, std::cmp::Reverse(item.0))
    }
}

/// A source's output for events `(time delta, group, value)`: times are
/// the running sum of the deltas, progress as a [`ProgressClock`] makes it.
fn timed(events: &[(u64, u32, u64)], granularity: u64) -> Vec<Timed<(u32, u64)>> {
    let mut clock = ProgressClock::new(granularity);
    let mut time = 0;
    let mut out = Vec::new();
    for &(delta, group, value) in events {
        time += delta;
        if let Some(progress) = clock.observe(time) {
            out.push(progress);
        }
        out.push(Timed::Event {
            time,
            value: (group, value),
        });
    }
    out.push(clock.end());
    out
}

fn events_strategy() -> impl Strategy<Value = Vec<(u64, u32, u64)>> {
    prop::collection::vec((0u64..40, 0u32..12, 0u64..100), 0..200)
}

fn reshapes_strategy(max_after: usize) -> impl Strategy<Value = Vec<Reshape>> {
    prop::collection::vec(
        (any::<bool>(), 0..max_after.max(1), any::<u64>()).prop_map(|(split, after, at)| {
            if split {
                Reshape::Split { after, at }
            } else {
                Reshape::Merge { after, at }
            }
        }),
        0..6,
    )
}

/// Window results of the aggregate, per window and group, by brute force.
fn expected_windows(
    events: &[(u64, u32, u64)],
    spec: WindowSpec,
) -> BTreeMap<Window, BTreeMap<u32, (u64, u64)>> {
    let mut expected: BTreeMap<Window, BTreeMap<u32, (u64, u64)>> = BTreeMap::new();
    let mut time = 0;
    for &(delta, group, value) in events {
        time += delta;
        for window in spec.windows_of(time) {
            let acc = expected
                .entry(window)
                .or_default()
                .entry(group)
                .or_default();
            acc.0 += 1;
            acc.1 += value;
        }
    }
    expected
}

fn assigned(
    events: &[(u64, u32, u64)],
    spec: WindowSpec,
    shards: u32,
    granularity: u64,
) -> Vec<crate::api::window::Sharded<(u32, u64)>> {
    let assign = AssignWindows::<CountAndSum>::new(spec, shards);
    let mut items = Vec::new();
    for input in timed(events, granularity) {
        assign
            .assign(input, &mut |s| {
                items.push(s);
                Ok(())
            })
            .unwrap();
    }
    items
}

#[test]
fn windows_of_a_time_are_those_that_hold_it() {
    let tumbling = WindowSpec::tumbling(10).unwrap();
    assert_eq!(
        tumbling.windows_of(25).collect::<Vec<_>>(),
        vec![Window { start: 20, end: 30 }]
    );
    let sliding = WindowSpec::sliding(10, 4).unwrap();
    assert_eq!(
        sliding.windows_of(9).collect::<Vec<_>>(),
        vec![
            Window { start: 0, end: 10 },
            Window { start: 4, end: 14 },
            Window { start: 8, end: 18 }
        ]
    );
    assert!(WindowSpec::sliding(4, 10).is_err());
    assert!(WindowSpec::tumbling(0).is_err());
}

#[test]
fn a_window_fires_once_every_shard_is_closed_and_not_before() {
    let spec = WindowSpec::tumbling(10).unwrap();
    let items = assigned(&[(1, 1, 5), (2, 1, 7), (20, 2, 1)], spec, 2, 5);
    let out = run(&WindowAggregate::<CountAndSum>::new(1), items, &[]);
    let first = Window { start: 0, end: 10 };
    assert_eq!(
        out[0],
        WindowInput::Item {
            window: first,
            value: (1, 2, 12)
        }
    );
    // Both shards close the first window; the shard without items closes
    // with nothing to report.
    let closes = out
        .iter()
        .filter(|o| **o == WindowInput::Close { window: first })
        .count();
    assert_eq!(closes, 2);
    // An element after every source closed its window is refused.
    let mut agg = WindowAggregate::<CountAndSum>::new(1);
    let mut state = Default::default();
    let close = crate::api::window::Sharded {
        to: crate::api::window::WindowShard {
            window: first,
            shard: 0,
        },
        item: None,
    };
    super::Block::step(&mut agg, close.clone(), &mut state, &mut |_| Ok(())).unwrap();
    assert!(super::Block::step(&mut agg, close, &mut state, &mut |_| Ok(())).is_err());
}

#[test]
fn running_aggregate_emits_only_changes() {
    let inputs = vec![(1, 3), (1, 0), (2, 5)];
    struct Max;
    impl Aggregate for Max {
        type In = (u32, u64);
        type Group = u32;
        type Acc = u64;
        type Out = u64;
        fn group(item: &(u32, u64)) -> u32 {
            item.0
        }
        fn add(acc: &mut u64, item: (u32, u64)) {
            *acc = (*acc).max(item.1);
        }
        fn result(_: &u32, acc: &u64) -> u64 {
            *acc
        }
    }
    let out = run(&RunningAggregate::<Max>::default(), inputs, &[]);
    assert_eq!(
        out,
        vec![Change { old: None, new: 3 }, Change { old: None, new: 5 }]
    );
}

/// Sellers join buyers by id.
struct ById;

impl JoinSpec for ById {
    type Left = (u32, u64);
    type Right = (u32, u64);
    type Key = u32;
    type Out = (u64, u64, u64);
    fn left_key(l: &(u32, u64)) -> u32 {
        l.0
    }
    fn right_key(r: &(u32, u64)) -> u32 {
        r.0
    }
}

impl WindowJoinSpec for ById {
    fn join(window: Window, l: &(u32, u64), r: &(u32, u64)) -> (u64, u64, u64) {
        (window.start, l.1, r.1)
    }
}

/// Left elements accept right ones up to `l.1` ms after their own time,
/// carried in the value as `(key, tag)`: the tag is the left's time.
struct Within;

impl JoinSpec for Within {
    type Left = (u32, u64, u64);
    type Right = (u32, u64);
    type Key = u32;
    type Out = (u64, u64);
    fn left_key(l: &(u32, u64, u64)) -> u32 {
        l.0
    }
    fn right_key(r: &(u32, u64)) -> u32 {
        r.0
    }
}

impl IntervalJoinSpec for Within {
    fn interval(l: &(u32, u64, u64)) -> (u64, u64) {
        (l.1, l.1 + l.2)
    }
    fn join(l: &(u32, u64, u64), r: &(u32, u64)) -> (u64, u64) {
        (l.1, r.1)
    }
}

/// What [`Within`] joins.
type IntervalInput = JoinSide<(u32, u64, u64), (u32, u64)>;

/// Join inputs from `(time delta, left?, key, extra)`: times are the
/// running sum; a right element's value is its time.
fn join_inputs(raw: &[(u64, bool, u32, u64)]) -> Vec<(u64, bool, u32, u64)> {
    let mut time = 0;
    raw.iter()
        .map(|&(delta, left, key, extra)| {
            time += delta;
            (time, left, key, extra)
        })
        .collect()
}

proptest! {
    #[test]
    fn every_window_holding_an_event_is_completed_exactly_once(
        events in events_strategy(),
        granularity in 1u64..30,
        size in 1u64..50,
        slide_div in 1u64..5,
    ) {
        let spec = WindowSpec::sliding(size, (size / slide_div).max(1)).unwrap();
        let mut closed = Vec::new();
        for input in timed(&events, granularity) {
            match input {
                Timed::Progress { from, to } => closed.extend(spec.completed_by(from, to)),
                Timed::End { from, last } => closed.extend(spec.completed_at_end(from, last)),
                Timed::Event { time, .. } => {
                    // No window holding an event was closed before it.
                    for window in spec.windows_of(time) {
                        prop_assert!(!closed.contains(&window), "{window:?} closed before {time}");
                    }
                }
            }
        }
        let unique: BTreeSet<_> = closed.iter().copied().collect();
        prop_assert_eq!(unique.len(), closed.len(), "a window closed twice");
        for window in expected_windows(&events, spec).keys() {
            prop_assert!(unique.contains(window), "{window:?} never closed");
        }
    }

    #[test]
    fn window_aggregate_is_exact_and_unchanged_by_splits_and_merges(
        events in events_strategy(),
        granularity in 1u64..30,
        size in 1u64..50,
        slide_div in 1u64..4,
        shards in 1u32..4,
        reshapes in reshapes_strategy(300),
    ) {
        let spec = WindowSpec::sliding(size, (size / slide_div).max(1)).unwrap();
        let items = assigned(&events, spec, shards, granularity);
        let agg = WindowAggregate::<CountAndSum>::new(1);
        let still = run(&agg, items.clone(), &[]);
        let reshaped = run(&agg, items, &reshapes);
        prop_assert_eq!(&still, &reshaped);
        let mut got: BTreeMap<Window, BTreeMap<u32, (u64, u64)>> = BTreeMap::new();
        for out in &still {
            if let WindowInput::Item { window, value: (g, n, s) } = out {
                prop_assert!(got.entry(*window).or_default().insert(*g, (*n, *s)).is_none());
            }
        }
        prop_assert_eq!(got, expected_windows(&events, spec));

        // Top-2 per window downstream, itself split and merged.
        let top = TopK::<MostItems>::new(2, shards);
        let ranked: Vec<Ranked<(u32, u64, u64)>> = run(&top, still.clone(), &reshapes);
        prop_assert_eq!(&ranked, &run(&top, still, &[]));
        for (window, groups) in expected_windows(&events, spec) {
            let mut best: Vec<_> = groups.iter().map(|(g, (n, s))| (*g, *n, *s)).collect();
            best.sort_by_key(|item| std::cmp::Reverse(MostItems::rank(item)));
            best.truncate(2);
            let got: Vec<_> = ranked.iter().filter(|r| r.window == window).map(|r| r.item).collect();
            prop_assert_eq!(got, best);
        }
    }

    #[test]
    fn window_join_matches_brute_force_under_splits_and_merges(
        raw in prop::collection::vec((0u64..15, any::<bool>(), 0u32..6, 0u64..1000), 0..150),
        size in 1u64..40,
        slide_div in 1u64..3,
        semi in any::<bool>(),
        reshapes in reshapes_strategy(150),
    ) {
        let spec = WindowSpec::sliding(size, (size / slide_div).max(1)).unwrap();
        let mode = if semi { JoinMode::Semi } else { JoinMode::All };
        let elements = join_inputs(&raw);
        let inputs: Vec<JoinSide<(u32, u64), (u32, u64)>> = elements
            .iter()
            .map(|&(time, left, key, extra)| if left {
                JoinSide::Left { time, value: (key, extra) }
            } else {
                JoinSide::Right { time, value: (key, extra) }
            })
            .collect();
        let join = WindowJoin::<ById>::new(spec, mode);
        let still = run(&join, inputs.clone(), &[]);
        prop_assert_eq!(&still, &run(&join, inputs, &reshapes));
        // Brute force: pairs of the same key in a common window.
        let mut expected = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, &(lt, is_left, lk, lv)) in elements.iter().enumerate() {
            if !is_left { continue; }
            for window in spec.windows_of(lt) {
                for (j, &(rt, is_left_r, rk, rv)) in elements.iter().enumerate() {
                    if is_left_r || rk != lk || !window.contains(rt) { continue; }
                    if mode == JoinMode::Semi && !seen.insert((i, window)) { continue; }
                    let _ = j;
                    expected.push((window.start, lv, rv));
                }
            }
        }
        let mut got = still.clone();
        got.sort_unstable();
        expected.sort_unstable();
        if mode == JoinMode::Semi {
            // A semi-join pairs each left with some right of the window.
            let got_lefts: Vec<_> = got.iter().map(|(w, l, _)| (*w, *l)).collect();
            let expected_lefts: Vec<_> = expected.iter().map(|(w, l, _)| (*w, *l)).collect();
            prop_assert_eq!(got_lefts, expected_lefts);
        } else {
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn interval_join_matches_brute_force_under_splits_and_merges(
        raw in prop::collection::vec((0u64..10, any::<bool>(), 0u32..6, 0u64..30), 0..150),
        retention in 0u64..20,
        reshapes in reshapes_strategy(150),
    ) {
        let elements = join_inputs(&raw);
        let inputs: Vec<IntervalInput> = elements
            .iter()
            .map(|&(time, left, key, extra)| if left {
                JoinSide::Left { time, value: (key, time, extra) }
            } else {
                JoinSide::Right { time, value: (key, time) }
            })
            .collect();
        let join = IntervalJoin::<Within>::new(retention);
        let still = run(&join, inputs.clone(), &reshapes);
        prop_assert_eq!(&still, &run(&join, inputs, &[]));
        // Brute force: a right matches an earlier left whose interval holds
        // it, and a later left within the right's retention.
        let mut expected = Vec::new();
        for (j, &(rt, is_left, rk, _)) in elements.iter().enumerate() {
            if is_left { continue; }
            for (i, &(lt, is_left_l, lk, span)) in elements.iter().enumerate() {
                if !is_left_l || lk != rk || rt < lt || rt > lt + span { continue; }
                if i < j || (rt + retention >= lt && retention > 0) {
                    expected.push((lt, rt));
                }
            }
        }
        let mut got = still;
        got.sort_unstable();
        expected.sort_unstable();
        prop_assert_eq!(got, expected);
    }
}
