//! The scale-out protocol: split one instance in two.
//! 1. checkpoint the instance (a fresh checkpoint is requested; a stateless
//!    one has nothing to checkpoint and restarts at its replay floor);
//! 2. choose the split point (where the recent load of the checkpoint's keys
//!    halves; the median key without load counts, the middle of the range
//!    when it has too few keys) and partition the checkpoint there;
//! 3. restore the lower half in place of the instance (a new incarnation on
//!    the same worker) and the upper half, a new instance, on a pool worker;
//! 4. update the plan everywhere: upstreams route by the new ranges, replay
//!    their buffers to both halves (each keeps what it owns) and downstreams
//!    accept the new instance as an input that inherits the parent's
//!    frontier;
//! 5. refill the pool.
//!
//! The autoscaling policy decides when, from the monitor's utilisation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::plan::InstancePlan;
use crate::plan::{AddedInstance, Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::{Checkpoint, KeyRange};
use crate::wire::control::{ToCoordinator, ToWorker};

use super::autoscaler::Decision;
use super::events::{EventKind, ScaleDirection};
use super::Job;

/// When to scale out on its own.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePolicy {
    /// Utilisation (CPU seconds per second of an instance's thread) above
    /// which an instance is hot.
    pub threshold: f64,
    /// Consecutive hot reports (one a second) before a split.
    pub reports: u32,
    /// Minimum time between two splits.
    pub cooldown: Duration,
    /// Never split an operator beyond this many partitions.
    pub max_partitions: usize,
    /// Utilisation below which an instance is cold: two adjacent cold
    /// partitions merge (scale in), returning a worker to the pool.
    pub low_threshold: f64,
    /// Consecutive cold reports of both partitions before a merge.
    pub low_reports: u32,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        ScalePolicy {
            threshold: 0.7,
            reports: 3,
            cooldown: Duration::from_secs(5),
            max_partitions: 16,
            low_threshold: 0.15,
            low_reports: 5,
        }
    }
}

/// One split or merge, for reports and the dashboard.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// When it was decided, milliseconds since the job started.
    pub decided_ms: u64,
    /// Why (`policy: utilisation 0.93` or `requested`).
    pub reason: String,
    /// A split or a merge.
    #[serde(default)]
    pub direction: ScaleDirection,
    /// The operator.
    pub operator: String,
    /// The instance split (or merged into).
    pub instance: InstanceId,
    /// The new instance (upper half), or the one merged away.
    pub new_instance: InstanceId,
    /// The worker the new instance runs on, or the one a merge freed.
    pub worker: WorkerId,
    /// Partitions before and after.
    pub partitions_before: usize,
    /// Partitions after.
    pub partitions_after: usize,
    /// First key hash of the upper half (or of the partition merged away).
    pub split_at: u64,
    /// Keys in the checkpoint split (lower, upper), or in the two merged.
    pub keys: (usize, usize),
    /// From the decision until both halves run and everyone was rewired.
    pub pause_ms: u64,
}

impl ScaleEvent {
    /// What happened, as a noun: `split` or `merge`.
    pub fn noun(&self) -> &'static str {
        if self.direction == ScaleDirection::In {
            "merge"
        } else {
            "split"
        }
    }
}

/// Where to cut an instance's range: between the keys of its checkpoint
/// (sorted by hash) where the cumulative recent load reaches half, so that
/// each half gets about as much work even when a few keys are hot; among
/// equally balanced cuts, the one nearest the median key (so the halves also
/// hold similar state). Without load information (no key was accessed since
/// the counters decayed) that is the median key; with fewer than two keys, the
/// middle of the range.
fn split_point(checkpoint: &Checkpoint) -> (KeyRange, KeyRange) {
    let range = checkpoint.key_range;
    let entries = &checkpoint.entries;
    let total: u64 = entries.iter().map(|e| u64::from(e.load)).sum();
    // Cutting before entry `i` leaves `below` (the load of entries[..i]) in
    // the lower half; `i` runs over 1..len so neither half is empty.
    let cut = entries
        .iter()
        .scan(0u64, |below, e| {
            *below += u64::from(e.load);
            Some(*below)
        })
        .zip(1..entries.len())
        .min_by_key(|&(below, i)| ((2 * below).abs_diff(total), i.abs_diff(entries.len() / 2)))
        .map(|(_, i)| entries[i].hash);
    cut.and_then(|at| range.split_at(at))
        .or_else(|| range.split_at(range.midpoint()))
        .unwrap_or((range, range))
}

impl Job<'_> {
    /// Splits `instance` in two; refuses (with an event, not an error) when it
    /// cannot: no pool worker, a source or sink, a range too small.
    pub(super) fn scale_out(
        &mut self,
        instance: InstanceId,
        reason: &str,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let decided_ms = self.elapsed_ms();
        let Some((node, placed)) = self.plan.instance(instance).map(|(n, p)| (n, p.clone())) else {
            return Ok(());
        };
        let operator = self.plan.nodes[node].name.clone();
        if let Some(why) = self.cannot_split(node, &placed) {
            self.record(EventKind::Refused, format!("scale {operator}: {why}"));
            return Ok(());
        }
        let Some(target) = self.pool.pop_front() else {
            self.record(
                EventKind::Refused,
                format!("scale {operator}: no idle worker in the pool (start with --pool N)"),
            );
            return Ok(());
        };
        // 1. A fresh checkpoint of the instance (a stateless one restarts
        // empty at its replay floor). If its worker fails meanwhile, the
        // recovery comes first and the split is dropped.
        let Some((frontier, bytes)) = self.snapshot_for_split(node, &placed)? else {
            self.pool.push_front(target);
            self.record(
                EventKind::Refused,
                format!("scale {operator}: instance {instance} failed before it could be split"),
            );
            return Ok(());
        };
        // 2. Choose the split point and partition the checkpoint there.
        let checkpoint = Checkpoint::decode(&bytes)?;
        let (lower, upper) = split_point(&checkpoint);
        let parts = checkpoint.partition(&[lower, upper])?;
        let keys = (parts[0].entries.len(), parts[1].entries.len());
        let halves = [(lower, parts[0].encode()?), (upper, parts[1].encode()?)];
        // 3-4. Restore both halves and rewire everyone.
        let before = self.plan.nodes[node].instances.len();
        let new_id = self.install_halves(node, &placed, target, frontier, halves)?;
        // The pause is over: both halves run and everyone was rewired.
        let event = ScaleEvent {
            decided_ms,
            reason: reason.to_string(),
            direction: ScaleDirection::Out,
            operator,
            instance,
            new_instance: new_id,
            worker: target,
            partitions_before: before,
            partitions_after: before + 1,
            split_at: upper.start,
            keys,
            pause_ms: started.elapsed().as_millis() as u64,
        };
        self.record_split(event);
        // 5. Refill the pool (in the background: a new worker joins later).
        if self.config.pool > 0 {
            self.provisioner.provision()?;
        }
        Ok(())
    }

    /// Why `placed` (an instance of `node`) cannot be split, if so.
    fn cannot_split(&self, node: usize, placed: &InstancePlan) -> Option<String> {
        if let Some(why) = self.cannot_rescale() {
            return Some(why.to_string());
        }
        if !matches!(
            self.query.kind(node),
            NodeKind::Stateful | NodeKind::Stateless
        ) {
            return Some("sources and sinks do not split".into());
        }
        let range = placed.key_range;
        range
            .split_at(range.midpoint())
            .is_none()
            .then(|| format!("instance {}'s range is too small", placed.id))
    }

    /// The checkpoint to split: a fresh one for a backed-up instance, the
    /// replay floor for a stateless one. `None`: the instance failed first.
    fn snapshot_for_split(
        &mut self,
        node: usize,
        placed: &InstancePlan,
    ) -> Result<Option<(Stamp, Vec<u8>)>, EngineError> {
        if self.backed_up(node) {
            return self.split_checkpoint(placed.id, placed.incarnation, placed.worker);
        }
        let floor = self.backups.floor(placed.id);
        Ok(self.restart_point(placed.id)?.map(|bytes| (floor, bytes)))
    }

    /// Steps 3 and 4: the lower half restarts in place of the instance (a
    /// new incarnation on its worker), the upper half as a new instance on
    /// `target`; then every worker learns the new plan. Returns the new id.
    fn install_halves(
        &mut self,
        node: usize,
        placed: &InstancePlan,
        target: WorkerId,
        frontier: Stamp,
        [(lower, low_bytes), (upper, high_bytes)]: [(KeyRange, Vec<u8>); 2],
    ) -> Result<InstanceId, EngineError> {
        let instance = placed.id;
        self.plan.reincarnate(instance, placed.worker, lower);
        let (new_id, _) = self.plan.add_instance(node, target, upper);
        if self.backed_up(node) {
            self.backups
                .reshaped(instance, (frontier, low_bytes.clone()));
            self.backups
                .reshaped(new_id, (frontier, high_bytes.clone()));
        } else {
            self.backups.raise_floor(new_id, frontier);
        }
        let mut by_target: HashMap<WorkerId, Vec<_>> = HashMap::new();
        for (worker, id, part) in [
            (placed.worker, instance, low_bytes),
            (target, new_id, high_bytes),
        ] {
            by_target
                .entry(worker)
                .or_default()
                .push((id, Some(serde_bytes::ByteBuf::from(part))));
        }
        self.restore_on(by_target, "a split's restores")?;
        let update = ToWorker::PlanUpdate {
            plan: self.plan.clone(),
            added: vec![AddedInstance {
                id: new_id,
                parent: instance,
                frontier,
            }],
            merged: Vec::new(),
        };
        self.broadcast(&update);
        Ok(new_id)
    }

    /// Records a finished split.
    fn record_split(&mut self, event: ScaleEvent) {
        self.record(
            EventKind::ScaleOut,
            format!(
                "{}: {} -> {} partitions (instance {} split at {:#x}, {} + {} keys, new instance {} on worker {}) in {} ms; {}",
                event.operator,
                event.partitions_before,
                event.partitions_after,
                event.instance,
                event.split_at,
                event.keys.0,
                event.keys.1,
                event.new_instance,
                event.worker,
                event.pause_ms,
                event.reason
            ),
        );
        self.scale_events.push(event);
    }

    /// Why no partition can be split or merged now, if so: both restore
    /// from checkpoints and replay the inputs upstreams buffered.
    pub(super) fn cannot_rescale(&self) -> Option<&'static str> {
        self.config.checkpoint_interval.is_zero().then_some(
            "scaling needs fault tolerance on (--checkpoint-ms above 0): it restores partitions from checkpoints and replays buffered inputs",
        )
    }

    /// Asks `instance` for a fresh checkpoint and waits for it; `None` when
    /// the instance fails (or is replaced) before it arrives.
    fn split_checkpoint(
        &mut self,
        instance: InstanceId,
        incarnation: Incarnation,
        worker: WorkerId,
    ) -> Result<Option<(Stamp, Vec<u8>)>, EngineError> {
        let alive = |job: &Self| {
            job.alive(worker)
                && job.plan.instance(instance).map(|(_, p)| p.incarnation) == Some(incarnation)
        };
        if !alive(self) || self.send(worker, &ToWorker::CheckpointNow).is_err() {
            return Ok(None);
        }
        let give_up = Instant::now() + self.config.startup_timeout;
        while Instant::now() < give_up {
            let step = Instant::now() + Duration::from_millis(200);
            match self.wait_for("a checkpoint for a split", step, |m| {
                matches!(m, ToCoordinator::Checkpoint { instance: i, incarnation: n, .. } if i == &instance && n == &incarnation)
            }) {
                Ok(Some((_, ToCoordinator::Checkpoint { frontier, bytes, .. }))) => {
                    return Ok(Some((frontier, bytes)))
                }
                Ok(_) | Err(EngineError::Timeout(_)) => {
                    if !alive(self) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Scales out `operator`'s busiest instance (a command or `--scale`).
    pub(super) fn scale_operator(
        &mut self,
        operator: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let Some(node) = self.query.find(operator) else {
            self.record(
                EventKind::Refused,
                format!("scale: no operator `{operator}`"),
            );
            return Ok(());
        };
        match self.autoscaler.busiest(&self.plan.nodes[node].instances) {
            Some(id) => self.scale_out(id, reason),
            None => Ok(()),
        }
    }

    /// Carries out what the policy decides, if anything.
    pub(super) fn autoscale(&mut self) -> Result<(), EngineError> {
        let elastic: Vec<usize> = (0..self.plan.nodes.len())
            .filter(|&n| matches!(self.query.kind(n), NodeKind::Stateful | NodeKind::Stateless))
            .collect();
        let pool_free = !self.pool.is_empty();
        match self
            .autoscaler
            .decide(&self.plan, &elastic, pool_free, Instant::now())
        {
            Some(Decision::Split(id, reason)) => self.scale_out(id, &reason),
            Some(Decision::Merge(lower, upper, reason)) => self.scale_in(lower, upper, &reason),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::hash::key_hash;
    use crate::stamp::Stamp;
    use crate::state::{KeyedState, OutputBuffer};

    /// A checkpoint of `key -> recent load`.
    fn checkpoint(loads: &BTreeMap<u64, u32>) -> Checkpoint {
        let mut state: KeyedState<u64, u64> = KeyedState::default();
        for &k in loads.keys() {
            *state.get_or_default(k) = k;
        }
        let mut entries = state.snapshot().unwrap();
        let by_hash: HashMap<u64, u32> = loads.iter().map(|(k, l)| (key_hash(k), *l)).collect();
        for e in &mut entries {
            e.load = by_hash[&e.hash];
        }
        Checkpoint {
            operator: "op".into(),
            key_range: KeyRange::FULL,
            frontier: Stamp(1),
            entries,
            output_buffer: OutputBuffer::default(),
            operator_state: Vec::new(),
        }
    }

    /// Splits where [`split_point`] says and restores both halves: (load,
    /// state) of each.
    fn split(c: &Checkpoint) -> Vec<(u64, KeyedState<u64, u64>)> {
        let (lower, upper) = split_point(c);
        c.partition(&[lower, upper])
            .unwrap()
            .iter()
            .map(|part| {
                let load = part.entries.iter().map(|e| u64::from(e.load)).sum();
                (
                    load,
                    KeyedState::restore(&part.entries, part.key_range).unwrap(),
                )
            })
            .collect()
    }

    fn keys_with_load(n: u64, load: u32) -> BTreeMap<u64, u32> {
        (0..n).map(|k| (k, load)).collect()
    }

    #[test]
    fn evenly_loaded_keys_split_at_the_median_key() {
        let halves = split(&checkpoint(&keys_with_load(101, 3)));
        assert_eq!((halves[0].1.len(), halves[1].1.len()), (50, 51));
    }

    #[test]
    fn without_load_counts_it_splits_at_the_median_key() {
        let halves = split(&checkpoint(&keys_with_load(101, 0)));
        assert_eq!((halves[0].1.len(), halves[1].1.len()), (50, 51));
    }

    #[test]
    fn hot_keys_get_a_half_of_their_own() {
        // The 10 lowest-hash keys of 100 carry 100 accesses each, the rest 1:
        // a median split would give the lower half 1,040 of 1,090.
        let mut loads = keys_with_load(100, 1);
        let mut by_hash: Vec<u64> = loads.keys().copied().collect();
        by_hash.sort_by_key(key_hash);
        for k in &by_hash[..10] {
            loads.insert(*k, 100);
        }
        let halves = split(&checkpoint(&loads));
        assert!(halves[0].0.abs_diff(halves[1].0) <= 100, "{halves:?}");
        assert!(halves[0].1.len() < 10, "{halves:?}");
    }

    #[test]
    fn falls_back_to_the_middle_of_the_range_without_keys() {
        let (lower, upper) = split_point(&checkpoint(&keys_with_load(1, 5)));
        assert_eq!(upper.start, KeyRange::FULL.midpoint());
        assert_eq!(lower.end + 1, upper.start);
    }

    proptest! {
        #[test]
        fn halves_carry_about_half_the_load_and_every_key(
            loads in prop::collection::btree_map(
                any::<u64>(),
                prop_oneof![3 => 0u32..10, 1 => 0u32..10_000],
                2..300,
            )
        ) {
            let c = checkpoint(&loads);
            let halves = split(&c);
            // No cut between keys can do better than within one key's load.
            let hottest = u64::from(*loads.values().max().unwrap());
            prop_assert!(halves[0].0.abs_diff(halves[1].0) <= hottest);
            prop_assert!(halves.iter().all(|(_, state)| !state.is_empty()));
            prop_assert_eq!(halves[0].1.len() + halves[1].1.len(), loads.len());
            for k in loads.keys() {
                let found = halves.iter().filter_map(|(_, s)| s.get(k)).collect::<Vec<_>>();
                prop_assert_eq!(found, vec![k]);
            }
        }
    }
}
