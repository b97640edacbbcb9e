//! The policies as pure functions: what each decides from given rates, and
//! how the rate policy behaves over many decisions on a simulated load.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::ids::{Incarnation, WorkerId};
use crate::plan::NodePlan;
use crate::state::KeyRange;

/// One operator (node 0) with `partitions` even partitions.
fn plan(partitions: u32) -> Plan {
    let instances = KeyRange::FULL
        .split_even(partitions)
        .into_iter()
        .enumerate()
        .map(|(i, key_range)| InstancePlan {
            id: InstanceId(i as u32),
            index: i as u32,
            worker: WorkerId(i as u32),
            key_range,
            source_slot: 0,
            incarnation: Incarnation::default(),
        })
        .collect();
    Plan {
        workers: Vec::new(),
        nodes: vec![NodePlan {
            name: "op".into(),
            instances,
        }],
    }
}

/// An instance processing `rate` tuples a second at `true_rate` tuples per
/// CPU second, with `offered` offered, seen for `reports` reports in a row
/// at that utilisation (on a whole core).
fn seen(rate: f64, offered: f64, true_rate: f64, reports: u32, policy: &ScalePolicy) -> Observed {
    let cpu = rate / true_rate;
    Observed {
        utilization: cpu,
        rates: Some((rate, cpu, offered)),
        hot: if cpu > policy.threshold { reports } else { 0 },
        cold: if cpu < policy.low_threshold {
            reports
        } else {
            0
        },
        busy: cpu.min(1.0),
        ..Observed::default()
    }
}

fn rate_policy() -> ScalePolicy {
    ScalePolicy {
        kind: PolicyKind::Rate,
        ..ScalePolicy::default()
    }
}

fn threshold_policy() -> ScalePolicy {
    ScalePolicy {
        kind: PolicyKind::Threshold,
        ..ScalePolicy::default()
    }
}

fn decide_on(
    policy: &ScalePolicy,
    plan: &Plan,
    observed: &HashMap<InstanceId, Observed>,
    idle: usize,
) -> Vec<Action> {
    decide(
        policy,
        &Snapshot {
            plan,
            elastic: &[0],
            observed,
            idle_workers: idle,
            capacity: 1.0,
        },
    )
}

fn splits(actions: &[Action]) -> Vec<(InstanceId, usize)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Split {
                instance, parts, ..
            } => Some((*instance, *parts)),
            Action::Merge { .. } => None,
        })
        .collect()
}

#[test]
fn the_rate_policy_splits_an_instance_into_as_many_parts_as_its_offered_rate_needs() {
    let policy = rate_policy();
    let plan = plan(1);
    // 1,000 tuples per CPU second; 5,000 offered: 5 cores at 100 %, so 8
    // partitions at 70 % or less (5 / 0.7 = 7.1).
    let observed = HashMap::from([(InstanceId(0), seen(900.0, 5000.0, 1000.0, 1, &policy))]);
    let actions = decide_on(&policy, &plan, &observed, 16);
    assert_eq!(splits(&actions), vec![(InstanceId(0), 8)]);
    let Action::Split { rates, .. } = &actions[0] else {
        unreachable!()
    };
    assert!((rates.projected - 5.0).abs() < 1e-9, "{rates:?}");
    assert!((rates.true_rate - 1000.0).abs() < 1e-9, "{rates:?}");
}

#[test]
fn the_rate_policy_splits_every_hot_instance_in_one_decision_within_the_pool() {
    let policy = rate_policy();
    let plan = plan(3);
    let observed = HashMap::from([
        (InstanceId(0), seen(800.0, 800.0, 1000.0, 1, &policy)),
        (InstanceId(1), seen(500.0, 500.0, 1000.0, 1, &policy)),
        (InstanceId(2), seen(950.0, 2000.0, 1000.0, 1, &policy)),
    ]);
    // The neediest first: 2.0 needs 3 parts, 0.8 needs 2; 0.5 none.
    assert_eq!(
        splits(&decide_on(&policy, &plan, &observed, 8)),
        vec![(InstanceId(2), 3), (InstanceId(0), 2)]
    );
    // Three idle workers: the neediest gets two, the next one.
    assert_eq!(
        splits(&decide_on(&policy, &plan, &observed, 3)),
        vec![(InstanceId(2), 3), (InstanceId(0), 2)]
    );
    assert_eq!(
        splits(&decide_on(&policy, &plan, &observed, 2)),
        vec![(InstanceId(2), 3)]
    );
    assert!(decide_on(&policy, &plan, &observed, 0).is_empty());
}

#[test]
fn the_rate_policy_respects_the_partition_limit() {
    let policy = ScalePolicy {
        max_partitions: 4,
        ..rate_policy()
    };
    let plan = plan(2);
    let observed = HashMap::from([(InstanceId(0), seen(900.0, 9000.0, 1000.0, 1, &policy))]);
    assert_eq!(
        splits(&decide_on(&policy, &plan, &observed, 16)),
        vec![(InstanceId(0), 3)]
    );
}

#[test]
fn an_instance_without_a_full_window_of_rates_is_not_judged() {
    let policy = rate_policy();
    let plan = plan(1);
    let observed = HashMap::from([(
        InstanceId(0),
        Observed {
            utilization: 1.0,
            rates: None,
            hot: 9,
            ..Observed::default()
        },
    )]);
    assert!(decide_on(&policy, &plan, &observed, 4).is_empty());
}

#[test]
fn the_threshold_policy_splits_the_hottest_in_two_after_enough_reports() {
    let policy = threshold_policy();
    let plan = plan(2);
    let mut observed = HashMap::from([
        (InstanceId(0), seen(800.0, 5000.0, 1000.0, 2, &policy)),
        (InstanceId(1), seen(900.0, 900.0, 1000.0, 2, &policy)),
    ]);
    assert!(decide_on(&policy, &plan, &observed, 4).is_empty());
    observed.get_mut(&InstanceId(0)).unwrap().hot = 3;
    observed.get_mut(&InstanceId(1)).unwrap().hot = 3;
    assert_eq!(
        splits(&decide_on(&policy, &plan, &observed, 4)),
        vec![(InstanceId(1), 2)]
    );
    assert!(decide_on(&policy, &plan, &observed, 0).is_empty());
}

#[test]
fn cold_neighbours_merge_only_when_together_they_stay_cold() {
    let policy = rate_policy();
    let plan = plan(4);
    let observed = HashMap::from([
        (InstanceId(0), seen(50.0, 50.0, 1000.0, 5, &policy)),
        (InstanceId(1), seen(60.0, 60.0, 1000.0, 5, &policy)),
        (InstanceId(2), seen(100.0, 100.0, 1000.0, 5, &policy)),
        (InstanceId(3), seen(100.0, 100.0, 1000.0, 5, &policy)),
    ]);
    let merged: Vec<(InstanceId, InstanceId)> = decide_on(&policy, &plan, &observed, 0)
        .into_iter()
        .map(|a| match a {
            Action::Merge { lower, upper, .. } => (lower, upper),
            other => panic!("expected merges, got {other:?}"),
        })
        .collect();
    // 0.05 + 0.06 fits under 0.15; 0.1 + 0.1 does not, nor 0.06 + 0.1.
    assert_eq!(merged, vec![(InstanceId(0), InstanceId(1))]);
}

#[test]
fn no_merge_while_any_instance_is_silent_blocked_or_saturated() {
    // Behind a stalled instance every other one looks cold: the job must
    // flow before anything merges.
    for policy in [rate_policy(), threshold_policy()] {
        let plan = plan(2);
        let cold = seen(20.0, 20.0, 1000.0, 5, &policy);
        // Instance 9: elsewhere in the job (a source, say), at 30 %.
        let elsewhere = seen(300.0, 300.0, 1000.0, 5, &policy);
        let observe = |other: Observed| {
            HashMap::from([
                (InstanceId(0), cold.clone()),
                (InstanceId(1), cold.clone()),
                (InstanceId(9), other),
            ])
        };
        let merges = |observed: &HashMap<InstanceId, Observed>| {
            decide_on(&policy, &plan, observed, 0)
                .iter()
                .filter(|a| matches!(a, Action::Merge { .. }))
                .count()
        };
        assert_eq!(merges(&observe(elsewhere.clone())), 1, "{policy:?}");
        let silent = Observed {
            stale: true,
            ..elsewhere.clone()
        };
        let blocked = Observed {
            blocked: 0.5,
            busy: 0.3,
            ..elsewhere.clone()
        };
        let saturated = Observed {
            busy: 0.97,
            backlog: true,
            ..elsewhere.clone()
        };
        let unmeasured = Observed {
            rates: None,
            ..elsewhere
        };
        for other in [silent, blocked, saturated, unmeasured] {
            assert_eq!(merges(&observe(other.clone())), 0, "{policy:?}: {other:?}");
        }
    }
}

#[test]
fn a_saturated_instance_is_split_whatever_its_cpu_counter_says() {
    // 30 % of its quota by its own CPU counter (its worker's other threads
    // and the quota's throttling took the rest), busy all the time with
    // input waiting: it needs at least all of its quota, so 2 parts at 70 %.
    let policy = rate_policy();
    let plan = plan(1);
    let counted = seen(300.0, 300.0, 1000.0, 1, &policy);
    let mut observed = HashMap::from([(InstanceId(0), counted.clone())]);
    assert!(decide_on(&policy, &plan, &observed, 4).is_empty());
    // Busy but with nothing waiting: a burst it kept up with.
    observed.insert(
        InstanceId(0),
        Observed {
            busy: 0.95,
            ..counted.clone()
        },
    );
    assert!(decide_on(&policy, &plan, &observed, 4).is_empty());
    observed.insert(
        InstanceId(0),
        Observed {
            busy: 0.95,
            backlog: true,
            ..counted.clone()
        },
    );
    assert_eq!(
        splits(&decide_on(&policy, &plan, &observed, 4)),
        vec![(InstanceId(0), 2)]
    );
    // Its queue growing too: offered 600/s, twice what it takes.
    observed.insert(
        InstanceId(0),
        Observed {
            rates: Some((300.0, 0.3, 600.0)),
            busy: 1.0,
            backlog: true,
            ..counted
        },
    );
    assert_eq!(
        splits(&decide_on(&policy, &plan, &observed, 4)),
        vec![(InstanceId(0), 3)]
    );
}

#[test]
fn the_autoscaler_reads_blocked_and_idle_time_and_notices_silence() {
    let mut autoscaler = Autoscaler::new(Some(rate_policy()), None);
    let start = Instant::now();
    // Each second: 0.1 s of CPU, 0.3 s waiting for input, 0.5 s blocked
    // writing to a downstream.
    let sample = |second: u64| InstanceMetrics {
        instance: InstanceId(0),
        tuples_in: 100 * second,
        cpu_secs: 0.1 * second as f64,
        idle_secs: 0.3 * second as f64,
        blocked_secs: 0.5 * second as f64,
        ..InstanceMetrics::default()
    };
    for second in 0..=WINDOW as u64 {
        autoscaler.observe(sample(second), start + Duration::from_secs(second));
    }
    let now = start + Duration::from_secs(WINDOW as u64);
    let seen = &autoscaler.observed(now)[&InstanceId(0)];
    assert!((seen.blocked - 0.5).abs() < 1e-9, "{seen:?}");
    assert!((seen.busy - 0.2).abs() < 1e-9, "{seen:?}");
    assert!(!seen.stale && !seen.flowing(), "{seen:?}");
    // Three seconds without a report: stale. The next report still extends
    // the window (an instance in long rounds reports only between them),
    // and its rates average over the silence.
    let later = now + Duration::from_secs(3);
    assert!(autoscaler.observed(later)[&InstanceId(0)].stale);
    autoscaler.observe(sample(WINDOW as u64 + 3), later);
    let seen = &autoscaler.observed(later)[&InstanceId(0)];
    assert!(!seen.stale, "{seen:?}");
    let (rate, cpu, _) = seen.rates.expect("a full window");
    assert!(
        (rate - 100.0).abs() < 1e-9 && (cpu - 0.1).abs() < 1e-9,
        "{seen:?}"
    );
    // A finished instance reports no more, and is no stall.
    autoscaler.finished(InstanceId(0));
    assert!(autoscaler.observed(later + STALE_AFTER * 2).is_empty());
}

#[test]
fn a_decision_carried_out_starts_every_window_afresh() {
    let policy = ScalePolicy {
        cooldown: Duration::from_secs(1),
        ..rate_policy()
    };
    let mut autoscaler = Autoscaler::new(Some(policy), None);
    let plan = plan(2);
    let start = Instant::now();
    // Instance 1 at 90 %: split. Instance 0 waited during the split's
    // pause and catches up at 95 %: not a load to split for.
    let sample = |id: u32, second: u64, share: f64| InstanceMetrics {
        instance: InstanceId(id),
        tuples_in: (1000.0 * share) as u64 * second,
        cpu_secs: share * second as f64,
        ..InstanceMetrics::default()
    };
    for second in 0..=WINDOW as u64 {
        let at = start + Duration::from_secs(second);
        autoscaler.observe(sample(0, second, 0.2), at);
        autoscaler.observe(sample(1, second, 0.9), at);
    }
    let now = start + Duration::from_secs(WINDOW as u64);
    let (_, actions) = autoscaler.decide(&plan, &[0], 4, now).unwrap();
    assert_eq!(splits(&actions), vec![(InstanceId(1), 2)]);
    autoscaler.forget(InstanceId(1));
    // A pause of 2 s; for as long again instance 0 catches up at 95 %, and
    // no window starts before: the next decision needs a full one after.
    let done = now + Duration::from_secs(2);
    autoscaler.carried_out(done, Duration::from_secs(2));
    for tenth in 1..20 {
        let at = done + Duration::from_millis(100 * tenth);
        autoscaler.observe(sample(0, 10 + tenth, 0.95), at);
        assert_eq!(autoscaler.decide(&plan, &[0], 4, at), None);
    }
    for second in 2..=(2 + WINDOW as u64) {
        let at = done + Duration::from_secs(second);
        autoscaler.observe(sample(0, 1000 + second, 0.2), at);
        let decided = autoscaler.decide(&plan, &[0], 4, at);
        if second < 2 + WINDOW as u64 {
            assert_eq!(decided, None, "a window of the catch-up");
        } else {
            assert_eq!(decided, None, "0.2 needs no split");
            assert!(autoscaler.observed(at)[&InstanceId(0)].rates.is_some());
        }
    }
}

#[test]
fn the_threshold_policy_merges_the_coldest_pair_however_busy_together() {
    let policy = threshold_policy();
    let plan = plan(3);
    let observed = HashMap::from([
        (InstanceId(0), seen(100.0, 100.0, 1000.0, 5, &policy)),
        (InstanceId(1), seen(140.0, 140.0, 1000.0, 5, &policy)),
        (InstanceId(2), seen(500.0, 500.0, 1000.0, 5, &policy)),
    ]);
    assert!(matches!(
        &decide_on(&policy, &plan, &observed, 0)[..],
        [Action::Merge {
            lower: InstanceId(0),
            upper: InstanceId(1),
            ..
        }]
    ));
}

#[test]
fn the_autoscaler_measures_true_rates_over_its_window_and_numbers_decisions() {
    let policy = ScalePolicy {
        cooldown: Duration::from_secs(5),
        ..rate_policy()
    };
    let mut autoscaler = Autoscaler::new(Some(policy), Some(0.5));
    let plan = plan(1);
    let start = Instant::now();
    // 450 tuples a second at 0.45 CPU seconds: 1,000 per CPU second, 90 %
    // of a half-core worker: 2 parts at 70 %.
    for second in 0..=WINDOW as u64 {
        let metrics = InstanceMetrics {
            instance: InstanceId(0),
            tuples_in: 450 * second,
            cpu_secs: 0.45 * second as f64,
            ..InstanceMetrics::default()
        };
        let at = start + Duration::from_secs(second);
        autoscaler.observe(metrics, at);
        let decided = autoscaler.decide(&plan, &[0], 4, at);
        if second < WINDOW as u64 {
            assert_eq!(decided, None, "decided before a full window");
        } else {
            let (number, actions) = decided.expect("a decision");
            assert_eq!(number, 1);
            assert_eq!(splits(&actions), vec![(InstanceId(0), 2)]);
        }
    }
    assert!((autoscaler.utilization(InstanceId(0)) - 0.9).abs() < 1e-9);
    // The cooldown counts from when the decision was carried out.
    let done = start + Duration::from_secs(10);
    autoscaler.carried_out(done, Duration::ZERO);
    assert_eq!(
        autoscaler.decide(&plan, &[0], 4, done + Duration::from_secs(4)),
        None
    );
}

#[test]
fn a_restarted_incarnation_starts_a_new_window() {
    let mut autoscaler = Autoscaler::new(Some(rate_policy()), None);
    let start = Instant::now();
    for (second, tuples) in [(0, 9000), (1, 10_000), (2, 100), (3, 200)] {
        let metrics = InstanceMetrics {
            instance: InstanceId(0),
            tuples_in: tuples,
            cpu_secs: tuples as f64 / 1000.0,
            ..InstanceMetrics::default()
        };
        autoscaler.observe(metrics, start + Duration::from_secs(second));
    }
    let rates = autoscaler.rates(InstanceId(0)).unwrap();
    assert_eq!(rates.window.len(), 2);
    assert!((rates.in_rate - 100.0).abs() < 1e-9);
}

/// What happened to a simulated operator under a steady load, decision by
/// decision.
#[derive(Debug, Default)]
struct Run {
    /// Partitions after each decision.
    counts: Vec<usize>,
    /// A split came after a merge.
    split_after_merge: bool,
    /// A partition a split made was merged again.
    undid_a_split: bool,
}

/// Partitions own shares of the load; the policy's splits divide a
/// partition's share evenly and merges add two up.
fn simulate(policy: &ScalePolicy, load: f64, start: Vec<f64>, steps: usize) -> Run {
    let true_rate = 1000.0;
    // (share, made by a split)
    let mut parts: Vec<(f64, bool)> = start.into_iter().map(|s| (s, false)).collect();
    let mut run = Run::default();
    let mut merged_before = false;
    for _ in 0..steps {
        let plan = plan(parts.len() as u32);
        let total: f64 = parts.iter().map(|p| p.0).sum();
        let observed: HashMap<InstanceId, Observed> = parts
            .iter()
            .enumerate()
            .map(|(i, (share, _))| {
                let offered = load * share / total;
                // A saturated partition processes at most a core's worth.
                let rate = offered.min(true_rate);
                (
                    InstanceId(i as u32),
                    seen(rate, offered, true_rate, 10, policy),
                )
            })
            .collect();
        let actions = decide_on(policy, &plan, &observed, 1000);
        let mut next: Vec<Vec<(f64, bool)>> = parts.iter().map(|p| vec![*p]).collect();
        for action in actions {
            match action {
                Action::Split {
                    instance, parts: k, ..
                } => {
                    run.split_after_merge |= merged_before;
                    let i = instance.0 as usize;
                    next[i] = vec![(parts[i].0 / k as f64, true); k];
                }
                Action::Merge { lower, upper, .. } => {
                    merged_before = true;
                    let (l, u) = (lower.0 as usize, upper.0 as usize);
                    run.undid_a_split |= parts[l].1 || parts[u].1;
                    next[l] = vec![(parts[l].0 + parts[u].0, false)];
                    next[u].clear();
                }
            }
        }
        parts = next.into_iter().flatten().collect();
        run.counts.push(parts.len());
    }
    run
}

#[test]
fn a_step_to_eight_times_the_load_converges_in_one_decision() {
    // 10 % of a core, then 80 % of eight: the threshold policy needs a
    // split per decision; the rate policy gets there at once.
    let policy = rate_policy();
    assert_eq!(simulate(&policy, 100.0, vec![1.0], 3).counts, vec![1, 1, 1]);
    assert_eq!(
        simulate(&policy, 6400.0, vec![1.0], 3).counts,
        vec![10, 10, 10]
    );
    let threshold = threshold_policy();
    assert_eq!(
        simulate(&threshold, 6400.0, vec![1.0], 4).counts,
        vec![2, 3, 4, 5]
    );
}

proptest! {
    /// Under a steady load, from any partitioning (any shares of the key
    /// space), the rate policy splits at most once, in its first decision,
    /// never splits after it merged, never merges what it split, and
    /// settles.
    #[test]
    fn never_oscillates_on_a_steady_load(
        load in 1.0f64..20_000.0,
        start in prop::collection::vec(0.05f64..1.0, 1..12),
    ) {
        let policy = rate_policy();
        let run = simulate(&policy, load, start.clone(), 12);
        prop_assert!(!run.split_after_merge, "{run:?}");
        prop_assert!(!run.undid_a_split, "{run:?}");
        // Every split is in the first decision.
        prop_assert!(run.counts.windows(2).all(|w| w[1] <= w[0]), "{run:?}");
        let n = run.counts.len();
        prop_assert_eq!(run.counts[n - 1], run.counts[n - 2], "{:?}", run);
    }
}
