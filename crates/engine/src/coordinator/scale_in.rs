//! The scale-in protocol: merge two adjacent partitions of an operator into
//! one and return the freed worker to the pool.
//! 1. align: pause both partitions, then let each run to exactly the larger
//!    of the two places they paused at and checkpoint there (with output
//!    buffers); a stateless pair needs no checkpoint and restarts at its
//!    replay floor;
//! 2. merge the two checkpoints: state, key range, output buffers (each
//!    downstream's batches interleaved back into stamp order);
//! 3. restore the merged checkpoint in place of the lower partition (a new
//!    incarnation on its worker);
//! 4. update the plan everywhere: the upper partition stops; upstreams route
//!    its keys to the merged instance and replay both partitions' buffered
//!    inputs above the common frontier in one ordered stream; downstreams
//!    retire the upper partition's channel (the merged instance replays its
//!    outputs, in order with the lower's);
//! 5. the upper partition's worker, if it hosts nothing else, joins the pool.
//!
//! The autoscaling policy (in [`super::scale`]) decides when.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::plan::{InstanceId, MergedInstance};
use crate::stamp::Stamp;
use crate::state::Checkpoint;
use crate::wire::control::{ToCoordinator, ToWorker};

use super::{Job, ScaleEvent};
use crate::plan::InstancePlan;

/// Two partitions' checkpoints at one frontier: (frontier, lower, upper).
type Aligned = (Stamp, Vec<u8>, Vec<u8>);

/// How long one step of the alignment may take before the merge is called
/// off (a partition far behind, or stuck behind a failure).
const ALIGN_TIMEOUT: Duration = Duration::from_secs(10);

impl Job<'_> {
    /// Merges the coldest adjacent pair of `operator`'s partitions (a
    /// command or `--scale-in`).
    pub(super) fn scale_in_operator(
        &mut self,
        operator: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let Some(node) = self.query.find(operator) else {
            self.record("refused", format!("scale in: no operator `{operator}`"));
            return Ok(());
        };
        match self.coldest_pair(node, 0) {
            Some((lower, upper, _)) => self.scale_in(lower, upper, reason),
            None => {
                self.record(
                    "refused",
                    format!("scale in {operator}: it has a single partition"),
                );
                Ok(())
            }
        }
    }

    /// The adjacent pair of `node`'s partitions with the lowest utilisation
    /// together, among those both cold for at least `cold_reports` reports
    /// in a row; with that utilisation.
    pub(super) fn coldest_pair(
        &self,
        node: usize,
        cold_reports: u32,
    ) -> Option<(InstanceId, InstanceId, f64)> {
        let utilization = |id: InstanceId| self.rates.get(&id).map_or(0.0, |r| r.utilization);
        let cold = |id: InstanceId| self.cold.get(&id).copied().unwrap_or(0) >= cold_reports;
        self.plan.nodes[node]
            .instances
            .windows(2)
            .filter(|w| w[0].key_range.join(&w[1].key_range).is_some())
            .filter(|w| cold(w[0].id) && cold(w[1].id))
            .map(|w| {
                (
                    w[0].id,
                    w[1].id,
                    utilization(w[0].id) + utilization(w[1].id),
                )
            })
            .min_by(|a, b| a.2.total_cmp(&b.2))
    }

    /// Merges partition `upper` into `lower`, its neighbour below; refuses
    /// (with an event, not an error) when it cannot.
    pub(super) fn scale_in(
        &mut self,
        lower: InstanceId,
        upper: InstanceId,
        reason: &str,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let decided_ms = self.elapsed_ms();
        let (Some((node, low)), Some((_, high))) = (
            self.plan.instance(lower).map(|(n, p)| (n, p.clone())),
            self.plan.instance(upper).map(|(n, p)| (n, p.clone())),
        ) else {
            return Ok(());
        };
        let operator = self.plan.nodes[node].name.clone();
        if let Some(why) = self.cannot_rescale() {
            self.record("refused", format!("scale in {operator}: {why}"));
            return Ok(());
        }
        let Some(range) = low.key_range.join(&high.key_range) else {
            self.record(
                "refused",
                format!("scale in {operator}: instances {lower} and {upper} are not adjacent"),
            );
            return Ok(());
        };
        let before = self.plan.nodes[node].instances.len();

        // 1. Bring both partitions to one frontier.
        let aligned = match self.query.kind(node) {
            NodeKind::Stateful => self.align(&low, &high)?,
            NodeKind::Stateless => {
                // Both replay from the lower floor: regenerating more is
                // harmless, downstreams drop what they have.
                let floor = self.floor(lower).min(self.floor(upper));
                match (self.restart_point(lower)?, self.restart_point(upper)?) {
                    (Some(a), Some(b)) => Some((floor, a, b)),
                    _ => None,
                }
            }
            NodeKind::Source | NodeKind::Sink => {
                self.record(
                    "refused",
                    format!("scale in {operator}: sources and sinks do not merge"),
                );
                return Ok(());
            }
        };
        let Some((frontier, low_bytes, high_bytes)) = aligned else {
            self.record(
                "refused",
                format!(
                    "scale in {operator}: instances {lower} and {upper} could not be brought to one frontier (one failed or finished)"
                ),
            );
            return Ok(());
        };

        // 2. Merge the checkpoints.
        let (mut low_checkpoint, mut high_checkpoint) = (
            Checkpoint::decode(&low_bytes)?,
            Checkpoint::decode(&high_bytes)?,
        );
        low_checkpoint.frontier = frontier;
        high_checkpoint.frontier = frontier;
        let keys = (low_checkpoint.entries.len(), high_checkpoint.entries.len());
        let merged = Checkpoint::merge(low_checkpoint, high_checkpoint)?.encode()?;

        // 3. New plan: the lower partition takes both ranges, the upper goes.
        self.plan.remove_instance(upper);
        self.plan.reincarnate(lower, low.worker, range);
        self.backups.remove(&lower);
        self.backups.remove(&upper);
        self.copies.remove(&upper);
        self.floors.remove(&upper);
        if self.backed_up(node) {
            self.copies.insert(lower, (frontier, merged.clone()));
        }
        let restore = HashMap::from([(
            low.worker,
            vec![(lower, Some(serde_bytes::ByteBuf::from(merged)))],
        )]);
        self.restore_on(restore, "a merge's restore")?;

        // 4. Rewire everyone; the upper partition's worker stops it.
        self.broadcast(&ToWorker::PlanUpdate {
            plan: self.plan.clone(),
            added: Vec::new(),
            merged: vec![MergedInstance {
                id: upper,
                into: lower,
                frontier,
            }],
        });

        // 5. A worker left with nothing to run is ready for the next split
        // or recovery.
        let idle = !self.plan.instances().any(|(_, i)| i.worker == high.worker);
        if idle && self.alive(high.worker) && !self.pool.contains(&high.worker) {
            self.pool.push_back(high.worker);
        }
        let event = ScaleEvent {
            decided_ms,
            reason: reason.to_string(),
            direction: "in".into(),
            operator: operator.clone(),
            instance: lower,
            new_instance: upper,
            worker: high.worker,
            partitions_before: before,
            partitions_after: before - 1,
            split_at: high.key_range.start,
            keys,
            pause_ms: started.elapsed().as_millis() as u64,
        };
        self.record(
            "scale-in",
            format!(
                "{operator}: {before} -> {} partitions (instance {upper} merged into {lower} at {:#x}, {} + {} keys, worker {} {}) in {} ms; {reason}",
                before - 1,
                high.key_range.start,
                keys.0,
                keys.1,
                high.worker,
                if idle { "back in the pool" } else { "still busy" },
                event.pause_ms
            ),
        );
        self.scale_events.push(event);
        Ok(())
    }

    /// Step 1 for stateful partitions: pauses both, then runs each to the
    /// larger of their pause points and takes its checkpoint there. `None`
    /// (both resumed) when one fails or has finished.
    fn align(
        &mut self,
        low: &InstancePlan,
        high: &InstancePlan,
    ) -> Result<Option<Aligned>, EngineError> {
        let pair = [low, high];
        for p in pair {
            if self
                .send(p.worker, &ToWorker::Pause { instance: p.id })
                .is_err()
            {
                return Ok(self.call_off(&pair));
            }
        }
        let mut paused: HashMap<InstanceId, Stamp> = HashMap::new();
        let deadline = Instant::now() + ALIGN_TIMEOUT;
        while paused.len() < 2 {
            let answer = self.wait_for("a pause for a merge", deadline, |m| {
                matches!(m, ToCoordinator::Paused { instance, incarnation, .. }
                    if pair.iter().any(|p| p.id == *instance && p.incarnation == *incarnation))
            });
            match answer {
                Ok(Some((_, ToCoordinator::Paused { instance, done, .. }))) => {
                    paused.insert(instance, done);
                }
                Ok(_) if pair.iter().all(|p| self.alive(p.worker)) => {}
                Ok(_) | Err(EngineError::Timeout(_)) => return Ok(self.call_off(&pair)),
                Err(e) => return Err(e),
            }
        }
        let frontier = paused.values().copied().max().unwrap_or(Stamp::END);
        if frontier.is_end() {
            return Ok(self.call_off(&pair));
        }
        for p in pair {
            let resume = ToWorker::Resume {
                instance: p.id,
                until: frontier,
            };
            if self.send(p.worker, &resume).is_err() {
                return Ok(self.call_off(&pair));
            }
        }
        let mut checkpoints: HashMap<InstanceId, Vec<u8>> = HashMap::new();
        let deadline = Instant::now() + ALIGN_TIMEOUT;
        while checkpoints.len() < 2 {
            let answer = self.wait_for("checkpoints for a merge", deadline, |m| {
                matches!(m, ToCoordinator::Checkpoint { instance, incarnation, frontier: f, .. }
                    if *f == frontier
                        && pair.iter().any(|p| p.id == *instance && p.incarnation == *incarnation))
            });
            match answer {
                Ok(Some((
                    _,
                    ToCoordinator::Checkpoint {
                        instance, bytes, ..
                    },
                ))) => {
                    checkpoints.insert(instance, bytes);
                }
                Ok(_) if pair.iter().all(|p| self.alive(p.worker)) => {}
                Ok(_) | Err(EngineError::Timeout(_)) => return Ok(self.call_off(&pair)),
                Err(e) => return Err(e),
            }
        }
        match (checkpoints.remove(&low.id), checkpoints.remove(&high.id)) {
            (Some(a), Some(b)) => Ok(Some((frontier, a, b))),
            _ => Ok(self.call_off(&pair)),
        }
    }

    /// Calls a merge off: whichever partitions are still alive run on.
    fn call_off<T>(&mut self, pair: &[&InstancePlan; 2]) -> Option<T> {
        for p in pair {
            if self.alive(p.worker) {
                let resume = ToWorker::Resume {
                    instance: p.id,
                    until: Stamp::END,
                };
                if let Err(e) = self.send(p.worker, &resume) {
                    tracing::warn!(instance = %p.id, "cannot resume after a merge: {e}");
                }
            }
        }
        None
    }
}
