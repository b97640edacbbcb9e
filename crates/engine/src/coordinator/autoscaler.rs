//! The autoscaling policy as a part: it observes every instance's metrics,
//! turns them into rates and utilisation, counts how long each instance has
//! been hot or cold, and decides what to split or merge. It owns no I/O: the
//! coordinator carries its decisions out with the scale protocols.
//!
//! Two policies decide, both as the pure function [`decide`] over what was
//! observed:
//! - `threshold`: an instance above the threshold for `reports` reports in a
//!   row is split in two; one split per decision.
//! - `rate` (after DS2, OSDI 2018): per instance, its *true* processing rate
//!   (tuples per CPU second of busy time) and the rate offered to it give
//!   the utilisation it would have at the offered rate; an instance that
//!   would exceed the target is split into as many parts as keep each under
//!   it, every such instance of every operator in one decision. Two adjacent
//!   partitions merge only when together they stay under the (lower) scale-in
//!   threshold, so a steady load never makes the policy oscillate: a split
//!   leaves each adjacent pair above the target, hence above that threshold.
//!
//! Both read what the instances report each second, and a report says
//! nothing while the pipeline is stalled: an instance blocked writing to a
//! saturated downstream reports late (between rounds) or shows the time as
//! blocked, and the instances behind the stall look idle. So the policies
//! merge only while the whole job flows (every instance reported lately,
//! none blocked on output, none saturated), a decision's rates are taken
//! only after it was carried out (not from the backlog its pause built up),
//! and an instance busy all the time with input waiting counts as
//! saturated whatever its CPU counter says (under a quota of hundredths of
//! a core, its worker's other threads and the quota's throttling take time
//! that counter does not show).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ids::InstanceId;
use crate::plan::{InstancePlan, Plan};
use crate::wire::control::InstanceMetrics;

use super::scale::{PolicyKind, ScalePolicy};

/// One-second samples the rate policy's rates span: enough to smooth a
/// scheduling hiccup, short enough to answer a step in a few seconds.
const WINDOW: usize = 3;

/// An instance that has not reported for this long is stuck (blocked
/// writing, or its worker held off the CPU): what it last said is stale.
const STALE_AFTER: Duration = Duration::from_millis(2500);

/// Share of its time an instance may spend blocked on output while the job
/// still counts as flowing.
const FLOWING_BLOCKED: f64 = 0.05;

/// Share of wall-clock time busy (neither waiting for input nor blocked on
/// output) from which an instance with input waiting is saturated.
const SATURATED_BUSY: f64 = 0.9;

/// The latest samples of an instance and what they say.
#[derive(Clone, Debug, Default)]
pub(super) struct InstanceRates {
    pub(super) sample: InstanceMetrics,
    /// Samples of the current incarnation, oldest first (at most
    /// `WINDOW + 1`).
    window: VecDeque<(Instant, InstanceMetrics)>,
    /// CPU seconds per second over the last interval, as a share of the
    /// worker's CPU allowance.
    pub(super) utilization: f64,
    pub(super) in_rate: f64,
    pub(super) out_rate: f64,
    /// It reached the end of its input: it reports no more, and that is no
    /// stall.
    finished: bool,
}

/// What one instance's full window of samples says.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Window {
    /// Tuples processed per second.
    rate: f64,
    /// CPU seconds per second.
    cpu: f64,
    /// Tuples offered per second.
    offered: f64,
    /// Share of wall-clock time neither waiting for input nor blocked on
    /// output.
    busy: f64,
    /// Share of wall-clock time blocked writing to downstreams.
    blocked: f64,
}

impl InstanceRates {
    /// The rates over the full window; `None` until it is full.
    fn windowed(&self) -> Option<Window> {
        if self.window.len() <= WINDOW {
            return None;
        }
        let ((t0, first), (t1, last)) = (self.window.front()?, self.window.back()?);
        let dt = t1.duration_since(*t0).as_secs_f64().max(1e-3);
        let tuples = last.tuples_in.saturating_sub(first.tuples_in) as f64;
        let cpu = (last.cpu_secs - first.cpu_secs).max(0.0) / dt;
        // What arrived and was not processed waits in the queue: its growth
        // is offered load the instance could not take (tuples per batch
        // estimated from what it processed).
        let queued = last.queued_batches as f64 - first.queued_batches as f64;
        let per_batch = last.tuples_in as f64 / last.batches_in.max(1) as f64;
        let offered = (tuples + (queued * per_batch).max(0.0)) / dt;
        let share = |of: fn(&InstanceMetrics) -> f64| ((of(last) - of(first)) / dt).clamp(0.0, 1.0);
        let idle = share(|m| m.idle_secs);
        let blocked = share(|m| m.blocked_secs);
        Some(Window {
            rate: tuples / dt,
            cpu,
            offered,
            busy: (1.0 - idle - blocked).max(0.0),
            blocked,
        })
    }
}

/// One instance as the policy sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Observed {
    /// CPU share of the worker's allowance over the last report.
    pub(super) utilization: f64,
    /// Over the rate window (`None` until it is full): tuples processed per
    /// second, CPU seconds per second, tuples offered per second.
    pub(super) rates: Option<(f64, f64, f64)>,
    /// Consecutive reports above the scale-out threshold.
    pub(super) hot: u32,
    /// Consecutive reports below the scale-in threshold.
    pub(super) cold: u32,
    /// Over the rate window: share of wall-clock time busy (neither waiting
    /// for input nor blocked on output), and share blocked on output.
    pub(super) busy: f64,
    pub(super) blocked: f64,
    /// Input was waiting at its latest report.
    pub(super) backlog: bool,
    /// It has not reported lately (see [`STALE_AFTER`]).
    pub(super) stale: bool,
}

impl Observed {
    /// Busy all the time with input waiting: at its limit, whatever its CPU
    /// counter says.
    fn saturated(&self) -> bool {
        self.rates.is_some() && self.backlog && self.busy >= SATURATED_BUSY
    }

    /// Reporting, with a full window, neither blocked on output nor
    /// saturated: nothing about it says the job is stalled.
    fn flowing(&self) -> bool {
        !self.stale && self.rates.is_some() && self.blocked < FLOWING_BLOCKED && !self.saturated()
    }
}

/// The rates that justified a decision, for reports: per instance split, or
/// summed over the two partitions merged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleRates {
    /// The policy that decided.
    pub policy: PolicyKind,
    /// Tuples processed per second.
    pub in_rate: f64,
    /// Tuples offered per second: processed plus the growth of its queue.
    pub offered_rate: f64,
    /// Tuples per CPU second of busy time (the rate one partition could
    /// sustain on a whole core).
    pub true_rate: f64,
    /// CPU share of the worker's allowance it used.
    pub utilization: f64,
    /// The utilisation one partition would need for the offered rate
    /// (above 1: more than a worker).
    pub projected: f64,
    /// The target utilisation per partition.
    pub target: f64,
}

/// What the policy wants done.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Action {
    /// Split this instance into `parts` partitions.
    Split {
        /// The instance.
        instance: InstanceId,
        /// Partitions it becomes (at least 2).
        parts: usize,
        /// Why.
        rates: ScaleRates,
    },
    /// Merge the upper partition into the lower one.
    Merge {
        /// The partition that stays.
        lower: InstanceId,
        /// Its neighbour above, merged away.
        upper: InstanceId,
        /// Why (summed over both).
        rates: ScaleRates,
    },
}

/// What a decision is made from.
pub(super) struct Snapshot<'a> {
    /// The current placement.
    pub(super) plan: &'a Plan,
    /// Operators that may be rescaled, as node indices of `plan`.
    pub(super) elastic: &'a [usize],
    /// What was observed of each instance.
    pub(super) observed: &'a HashMap<InstanceId, Observed>,
    /// Idle workers a split may use now.
    pub(super) idle_workers: usize,
    /// CPU an instance may use, in cores.
    pub(super) capacity: f64,
}

/// The policy's decision over `snapshot`: nothing, splits, or merges.
pub(super) fn decide(policy: &ScalePolicy, snapshot: &Snapshot<'_>) -> Vec<Action> {
    let splits = match policy.kind {
        PolicyKind::Threshold => threshold_split(policy, snapshot),
        PolicyKind::Rate => rate_splits(policy, snapshot),
    };
    if !splits.is_empty() {
        return splits;
    }
    merges(policy, snapshot)
}

/// The threshold policy's split: the hottest instance hot for `reports`
/// reports in a row, in two, when a worker is idle.
fn threshold_split(policy: &ScalePolicy, s: &Snapshot<'_>) -> Vec<Action> {
    if s.idle_workers == 0 {
        return Vec::new();
    }
    let observed = |id: &InstanceId| s.observed.get(id).cloned().unwrap_or_default();
    s.elastic
        .iter()
        .filter(|&&n| s.plan.nodes[n].instances.len() < policy.max_partitions)
        .flat_map(|&n| s.plan.nodes[n].instances.iter())
        .map(|i| (i.id, observed(&i.id)))
        .filter(|(_, o)| o.hot >= policy.reports)
        .max_by(|a, b| a.1.utilization.total_cmp(&b.1.utilization))
        .map(|(instance, o)| Action::Split {
            instance,
            parts: 2,
            rates: rates_of(policy, &o, s.capacity),
        })
        .into_iter()
        .collect()
}

/// The rates of one observation, for a decision's record.
fn rates_of(policy: &ScalePolicy, o: &Observed, capacity: f64) -> ScaleRates {
    let (in_rate, cpu, offered) = o.rates.unwrap_or((0.0, o.utilization * capacity, 0.0));
    let true_rate = if cpu > 0.0 { in_rate / cpu } else { 0.0 };
    let mut projected = if true_rate > 0.0 {
        offered / true_rate / capacity
    } else {
        o.utilization
    };
    if o.saturated() && in_rate > 0.0 {
        // All the time it gets is not enough: it needs at least that time,
        // more as its queue grows.
        projected = projected.max(o.busy * offered / in_rate);
    }
    ScaleRates {
        policy: policy.kind,
        in_rate,
        offered_rate: offered,
        true_rate,
        utilization: o.utilization,
        projected,
        target: policy.threshold,
    }
}

/// The rate policy's splits: every instance whose offered rate would need
/// more than the target utilisation, into as many parts as bring each under
/// it, the neediest first while idle workers and `max_partitions` allow.
fn rate_splits(policy: &ScalePolicy, s: &Snapshot<'_>) -> Vec<Action> {
    let mut wanted: Vec<(usize, InstanceId, usize, ScaleRates)> = Vec::new();
    for &n in s.elastic {
        for i in &s.plan.nodes[n].instances {
            let Some(o) = s.observed.get(&i.id).filter(|o| o.rates.is_some()) else {
                continue;
            };
            let rates = rates_of(policy, o, s.capacity);
            if rates.true_rate > 0.0 && rates.projected > policy.threshold {
                let parts = (rates.projected / policy.threshold).ceil() as usize;
                wanted.push((n, i.id, parts.max(2), rates));
            }
        }
    }
    wanted.sort_by(|a, b| b.3.projected.total_cmp(&a.3.projected));
    let mut idle = s.idle_workers;
    let mut room: HashMap<usize, usize> = HashMap::new();
    let mut actions = Vec::new();
    for (node, instance, parts, rates) in wanted {
        let room = room.entry(node).or_insert_with(|| {
            policy
                .max_partitions
                .saturating_sub(s.plan.nodes[node].instances.len())
        });
        let extra = (parts - 1).min(idle).min(*room);
        if extra == 0 {
            continue;
        }
        idle -= extra;
        *room -= extra;
        actions.push(Action::Split {
            instance,
            parts: extra + 1,
            rates,
        });
    }
    actions
}

/// Merges of adjacent partitions cold for `low_reports` reports in a row,
/// only while the whole job flows (an instance looks cold behind a stall).
/// The threshold policy merges the coldest such pair; the rate policy every
/// disjoint pair (coldest first) whose rates together stay under the
/// scale-in threshold.
fn merges(policy: &ScalePolicy, s: &Snapshot<'_>) -> Vec<Action> {
    if !s.observed.values().all(Observed::flowing) {
        return Vec::new();
    }
    let mut pairs: Vec<(InstanceId, InstanceId, ScaleRates)> = s
        .elastic
        .iter()
        .flat_map(|&n| cold_pairs(policy, s, &s.plan.nodes[n].instances))
        .collect();
    pairs.sort_by(|a, b| a.2.projected.total_cmp(&b.2.projected));
    if policy.kind == PolicyKind::Threshold {
        pairs.truncate(1);
    }
    let mut taken: Vec<InstanceId> = Vec::new();
    let mut actions = Vec::new();
    for (lower, upper, rates) in pairs {
        if taken.contains(&lower) || taken.contains(&upper) {
            continue;
        }
        taken.extend([lower, upper]);
        actions.push(Action::Merge {
            lower,
            upper,
            rates,
        });
    }
    actions
}

/// The adjacent pairs of `instances` that may merge, with their rates
/// summed.
fn cold_pairs(
    policy: &ScalePolicy,
    s: &Snapshot<'_>,
    instances: &[InstancePlan],
) -> Vec<(InstanceId, InstanceId, ScaleRates)> {
    let cold = |id: InstanceId| {
        s.observed
            .get(&id)
            .filter(|o| o.cold >= policy.low_reports)
            .filter(|o| policy.kind == PolicyKind::Threshold || o.rates.is_some())
    };
    instances
        .windows(2)
        .filter(|w| w[0].key_range.join(&w[1].key_range).is_some())
        .filter_map(|w| {
            let (a, b) = (cold(w[0].id)?, cold(w[1].id)?);
            let (ra, rb) = (
                rates_of(policy, a, s.capacity),
                rates_of(policy, b, s.capacity),
            );
            let rates = ScaleRates {
                in_rate: ra.in_rate + rb.in_rate,
                offered_rate: ra.offered_rate + rb.offered_rate,
                true_rate: ra.true_rate.min(rb.true_rate),
                utilization: ra.utilization + rb.utilization,
                projected: ra.projected + rb.projected,
                ..ra
            };
            let fits =
                policy.kind == PolicyKind::Threshold || rates.projected <= policy.low_threshold;
            fits.then_some((w[0].id, w[1].id, rates))
        })
        .collect()
}

/// Rates, streaks and the policy that reads them.
#[derive(Debug)]
pub(super) struct Autoscaler {
    policy: Option<ScalePolicy>,
    /// CPU a worker may use, in cores (utilisation is relative to it).
    capacity: f64,
    rates: HashMap<InstanceId, InstanceRates>,
    /// Consecutive hot reports per instance.
    hot: HashMap<InstanceId, u32>,
    /// Consecutive cold reports per instance.
    cold: HashMap<InstanceId, u32>,
    /// When the last decision was carried out.
    last_scale: Option<Instant>,
    /// Until when samples only say how the job catches up after the last
    /// decision's pause: no window starts before.
    settling_until: Option<Instant>,
    /// Decisions made so far.
    decisions: u32,
}

impl Autoscaler {
    /// A policy (none: only measure) for workers of `worker_cpu` cores.
    pub(super) fn new(policy: Option<ScalePolicy>, worker_cpu: Option<f64>) -> Self {
        Autoscaler {
            policy,
            capacity: worker_cpu.map_or(1.0, |c| c.min(1.0)),
            rates: HashMap::new(),
            hot: HashMap::new(),
            cold: HashMap::new(),
            last_scale: None,
            settling_until: None,
            decisions: 0,
        }
    }

    /// The policy, if the job has one.
    pub(super) fn policy(&self) -> Option<&ScalePolicy> {
        self.policy.as_ref()
    }

    /// Records a metrics sample taken `now`.
    pub(super) fn observe(&mut self, m: InstanceMetrics, now: Instant) {
        let rates = self.rates.entry(m.instance).or_default();
        // Counters that went back: a new incarnation (restored, split or
        // merged) counts from zero, so its window starts over.
        let restarted = m.tuples_in < rates.sample.tuples_in || m.cpu_secs < rates.sample.cpu_secs;
        // A window spanning a silence still averages right: an instance in
        // long rounds (saturated under a small quota, it reports only
        // between them) must still be judged on it.
        let settling = self.settling_until.is_some_and(|until| now < until);
        if restarted || settling {
            rates.window.clear();
        }
        if let Some((at, last)) = rates.window.back().filter(|_| !restarted) {
            let dt = now.duration_since(*at).as_secs_f64().max(1e-3);
            // Relative to what the instance's worker may use: a worker capped
            // at a quarter core is saturated at 0.25 CPU seconds per second.
            rates.utilization = (m.cpu_secs - last.cpu_secs).max(0.0) / dt / self.capacity;
            rates.in_rate = m.tuples_in.saturating_sub(last.tuples_in) as f64 / dt;
            rates.out_rate = m.tuples_out.saturating_sub(last.tuples_out) as f64 / dt;
        }
        // While the job catches up after a pause, no window starts: the
        // first sample after it is the first of the next window.
        if !settling {
            rates.window.push_back((now, m.clone()));
            if rates.window.len() > WINDOW + 1 {
                rates.window.pop_front();
            }
        }
        rates.sample = m;
        let (threshold, low) = self
            .policy
            .as_ref()
            .map_or((f64::INFINITY, f64::NEG_INFINITY), |p| {
                (p.threshold, p.low_threshold)
            });
        let (instance, utilization) = (rates.sample.instance, rates.utilization);
        let count = |streak: &mut u32, now: bool| *streak = if now { *streak + 1 } else { 0 };
        count(
            self.hot.entry(instance).or_default(),
            utilization > threshold,
        );
        count(self.cold.entry(instance).or_default(), utilization < low);
    }

    /// `id` reached the end of its input: it reports no more, and its
    /// silence says nothing of the job.
    pub(super) fn finished(&mut self, id: InstanceId) {
        self.rates.entry(id).or_default().finished = true;
    }

    /// Forgets what was observed of `id`: it was reshaped (split, merged or
    /// removed), so its rates say nothing of its new range.
    pub(super) fn forget(&mut self, id: InstanceId) {
        self.rates.remove(&id);
        self.hot.remove(&id);
        self.cold.remove(&id);
    }

    /// The latest rates of `id`.
    pub(super) fn rates(&self, id: InstanceId) -> Option<&InstanceRates> {
        self.rates.get(&id)
    }

    /// The utilisation of `id` over its last interval (0 when unknown).
    pub(super) fn utilization(&self, id: InstanceId) -> f64 {
        self.rates.get(&id).map_or(0.0, |r| r.utilization)
    }

    /// What the policy sees, at `now`, of every instance observed that has
    /// not finished.
    fn observed(&self, now: Instant) -> HashMap<InstanceId, Observed> {
        self.rates
            .iter()
            .filter(|(_, r)| !r.finished)
            .map(|(id, r)| {
                let streak = |m: &HashMap<InstanceId, u32>| m.get(id).copied().unwrap_or(0);
                let window = r.windowed();
                let observed = Observed {
                    utilization: r.utilization,
                    rates: window.map(|w| (w.rate, w.cpu, w.offered)),
                    hot: streak(&self.hot),
                    cold: streak(&self.cold),
                    busy: window.map_or(0.0, |w| w.busy),
                    blocked: window.map_or(0.0, |w| w.blocked),
                    backlog: r.sample.queued_batches > 0,
                    stale: r
                        .window
                        .back()
                        .is_none_or(|(at, _)| now.duration_since(*at) > STALE_AFTER),
                };
                (*id, observed)
            })
            .collect()
    }

    /// The policy's decision now, numbered, if it wants anything done and
    /// its cooldown since the last decision was carried out is over.
    /// `elastic` are the operators that may be rescaled, as node indices of
    /// `plan`; `idle_workers` the workers a split may use.
    pub(super) fn decide(
        &mut self,
        plan: &Plan,
        elastic: &[usize],
        idle_workers: usize,
        now: Instant,
    ) -> Option<(u32, Vec<Action>)> {
        let policy = self.policy.as_ref()?;
        if self
            .last_scale
            .is_some_and(|t| now.duration_since(t) < policy.cooldown)
        {
            return None;
        }
        let observed = self.observed(now);
        let snapshot = Snapshot {
            plan,
            elastic,
            observed: &observed,
            idle_workers,
            capacity: self.capacity,
        };
        let actions = decide(policy, &snapshot);
        if actions.is_empty() {
            return None;
        }
        self.hot.clear();
        self.cold.clear();
        self.decisions += 1;
        self.last_scale = Some(now);
        Some((self.decisions, actions))
    }

    /// A decision was carried out at `now`, after a pause of `pause`: the
    /// cooldown counts from here, and every window starts afresh once as
    /// long again has passed, so that the next decision sees rates of the
    /// new partitioning, not the catching up on the backlog its pause built
    /// (every instance upstream of a paused one waited, then sent it all).
    pub(super) fn carried_out(&mut self, now: Instant, pause: Duration) {
        self.last_scale = Some(now);
        self.settling_until = Some(now + pause);
        for rates in self.rates.values_mut() {
            rates.window.clear();
        }
    }

    /// The busiest of `instances` (ties: the widest range), to split on a
    /// request.
    pub(super) fn busiest(&self, instances: &[InstancePlan]) -> Option<InstanceId> {
        instances
            .iter()
            .max_by(|a, b| {
                let width = |i: &InstancePlan| i.key_range.end - i.key_range.start;
                self.utilization(a.id)
                    .total_cmp(&self.utilization(b.id))
                    .then(width(b).cmp(&width(a)).reverse())
            })
            .map(|i| i.id)
    }

    /// The adjacent pair of `instances` (in key-range order) with the lowest
    /// utilisation together, to merge on a request.
    pub(super) fn coldest_pair(
        &self,
        instances: &[InstancePlan],
    ) -> Option<(InstanceId, InstanceId)> {
        instances
            .windows(2)
            .filter(|w| w[0].key_range.join(&w[1].key_range).is_some())
            .min_by(|a, b| {
                let together =
                    |w: &[InstancePlan]| self.utilization(w[0].id) + self.utilization(w[1].id);
                together(a).total_cmp(&together(b))
            })
            .map(|w| (w[0].id, w[1].id))
    }
}

#[cfg(test)]
mod tests;
