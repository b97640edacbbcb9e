//! The autoscaling policy as a part: it observes every instance's metrics,
//! turns them into rates and utilisation, counts how long each instance has
//! been hot or cold, and decides what to split or merge. It owns no I/O: the
//! coordinator carries its decisions out with the scale protocols.

use std::collections::HashMap;
use std::time::Instant;

use crate::ids::InstanceId;
use crate::plan::{InstancePlan, Plan};
use crate::wire::control::InstanceMetrics;

use super::scale::ScalePolicy;

/// The latest sample of an instance and what it says about the last interval.
#[derive(Clone, Debug, Default)]
pub(super) struct InstanceRates {
    pub(super) sample: InstanceMetrics,
    at: Option<Instant>,
    /// CPU seconds per second over the last interval, as a share of the
    /// worker's CPU allowance.
    pub(super) utilization: f64,
    pub(super) in_rate: f64,
    pub(super) out_rate: f64,
}

/// What the policy wants done.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Decision {
    /// Split this instance, for this reason.
    Split(InstanceId, String),
    /// Merge the upper partition into the lower one, for this reason.
    Merge(InstanceId, InstanceId, String),
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
    last_scale: Option<Instant>,
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
        }
    }

    /// Records a metrics sample taken `now`.
    pub(super) fn observe(&mut self, m: InstanceMetrics, now: Instant) {
        let rates = self.rates.entry(m.instance).or_default();
        if let Some(at) = rates.at {
            let dt = now.duration_since(at).as_secs_f64().max(1e-3);
            // Relative to what the instance's worker may use: a worker capped
            // at a quarter core is saturated at 0.25 CPU seconds per second.
            rates.utilization = (m.cpu_secs - rates.sample.cpu_secs).max(0.0) / dt / self.capacity;
            rates.in_rate = m.tuples_in.saturating_sub(rates.sample.tuples_in) as f64 / dt;
            rates.out_rate = m.tuples_out.saturating_sub(rates.sample.tuples_out) as f64 / dt;
        }
        rates.sample = m;
        rates.at = Some(now);
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

    /// The latest rates of `id`.
    pub(super) fn rates(&self, id: InstanceId) -> Option<&InstanceRates> {
        self.rates.get(&id)
    }

    /// The utilisation of `id` over its last interval (0 when unknown).
    pub(super) fn utilization(&self, id: InstanceId) -> f64 {
        self.rates.get(&id).map_or(0.0, |r| r.utilization)
    }

    /// The policy's decision now, if any: split the hottest instance hot for
    /// long enough (when `pool_free`); else merge the coldest adjacent pair
    /// cold for long enough. `elastic` are the operators that may be
    /// rescaled, as node indices of `plan`.
    pub(super) fn decide(
        &mut self,
        plan: &Plan,
        elastic: &[usize],
        pool_free: bool,
        now: Instant,
    ) -> Option<Decision> {
        let policy = self.policy.clone()?;
        if self
            .last_scale
            .is_some_and(|t| now.duration_since(t) < policy.cooldown)
        {
            return None;
        }
        let streak = |counts: &HashMap<InstanceId, u32>, id| counts.get(&id).copied().unwrap_or(0);
        let hot = elastic
            .iter()
            .filter(|&&n| plan.nodes[n].instances.len() < policy.max_partitions)
            .flat_map(|&n| plan.nodes[n].instances.iter())
            .filter(|i| streak(&self.hot, i.id) >= policy.reports)
            .max_by(|a, b| self.utilization(a.id).total_cmp(&self.utilization(b.id)))
            .map(|i| i.id)
            .filter(|_| pool_free);
        let decision = if let Some(id) = hot {
            let reason = format!("policy: utilisation {:.2}", self.utilization(id));
            self.hot.clear();
            Decision::Split(id, reason)
        } else {
            let (lower, upper, together) = elastic
                .iter()
                .filter_map(|&n| self.coldest_pair(&plan.nodes[n].instances, policy.low_reports))
                .min_by(|a, b| a.2.total_cmp(&b.2))?;
            self.cold.clear();
            Decision::Merge(
                lower,
                upper,
                format!("policy: utilisation {together:.2} for two partitions"),
            )
        };
        self.last_scale = Some(now);
        Some(decision)
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
    /// utilisation together, among those both cold for at least
    /// `cold_reports` reports in a row; with that utilisation.
    pub(super) fn coldest_pair(
        &self,
        instances: &[InstancePlan],
        cold_reports: u32,
    ) -> Option<(InstanceId, InstanceId, f64)> {
        let cold = |id: InstanceId| self.cold.get(&id).copied().unwrap_or(0) >= cold_reports;
        instances
            .windows(2)
            .filter(|w| w[0].key_range.join(&w[1].key_range).is_some())
            .filter(|w| cold(w[0].id) && cold(w[1].id))
            .map(|w| {
                (
                    w[0].id,
                    w[1].id,
                    self.utilization(w[0].id) + self.utilization(w[1].id),
                )
            })
            .min_by(|a, b| a.2.total_cmp(&b.2))
    }
}
