//! The scale-in protocol: merge two adjacent partitions of an operator into
//! one and return the freed worker to the pool.
//!
//! Two stateful partitions with live backup holders merge *live*, by
//! pre-copy, as a split does (steps in `scale_in_live`, reusing the live
//! split's staging and catch-up of `scale_live`):
//! 1. stage (no pause): the lower partition's worker fetches each
//!    partition's whole range from a live holder of its backup, decodes it
//!    off its control thread and keeps it as live keyed state of the
//!    operator (`ToWorker::Stage`, once per partition, answered with
//!    `Staged`, the staged frontier and keys), while both run; the
//!    partition staged second joins the two into one map before it
//!    answers (`Stage { merge }`, `KeyedState::absorb`: the smaller's
//!    keys move into the larger's map, staged with room for them), so
//!    that no key moves at the stop, then catches that map up with both
//!    partitions' changes since they were staged (as in step 3), so that
//!    the stop folds in only what changed after;
//! 2. stop: both pause, run to exactly the larger of the two places they
//!    paused at and checkpoint there (incrementally), then stop releasing
//!    tuples; the coordinator waits for a holder's acknowledgement of each
//!    checkpoint, never for the state itself;
//! 3. catch up: the merged instance restores in place of the lower (a new
//!    incarnation on its worker) from what was staged
//!    (`RestoreFrom::StagedMerge`): the joined map caught up with each
//!    partition's increments since the frontier it was caught up to while
//!    staged (at or after the `since` the coordinator names), fetched from
//!    its holders at once (or its range whole when compaction folded them
//!    away); the ranges are disjoint, so each partition's changes apply to
//!    the joined map directly. In each catch-up (while staged, and here)
//!    the two runs go in lockstep, aligned at their ends
//!    (`state::catch_up_steps`: the last increment of each in the last
//!    step, each step one epoch of load decay). Values and sizes are
//!    exactly those of restoring the merged backups; a key's load is the
//!    holders' halved at most once per increment its partition lacked
//!    against the other's in a catch-up, so exact when both took as many
//!    (the holders halve each partition's loads once per its own
//!    checkpoint, the joined map has one clock; loads only steer split
//!    points). The output
//!    buffers travel the same way, inside the two partitions' checkpoints
//!    from their holders, and are merged on that worker exactly as a whole
//!    merge merges them (`Checkpoint::merge`: each downstream's batches
//!    interleaved back into stamp order). Until the holders merged the
//!    backups (step 5) the merged instance has no route, so that no
//!    fallback restores it from the lower's backup alone: if every holder
//!    named fails during the catch-up, the job fails rather than lose keys;
//! 4. update the plan everywhere, as below;
//! 5. the lower's live holders merge the two backups at the stop into the
//!    merged instance's (`ToWorker::MergeBackups`; one that does not hold
//!    the upper's fetches it from the upper's holders) and become its
//!    route, so that its increments join what it restored from; they hold
//!    back its checkpoints that arrive meanwhile and join them after. The
//!    merge ends once a holder acknowledges the merged backup (one that
//!    cannot merge refuses, and the instance checkpoints in full); then
//!    the upper's backup goes.
//!
//! Its pause is the stop alone: the last increments, the catch-up of the
//! changes since staging and the rewiring. A
//! merge that cannot stage (a stateless operator, no live holder, a range
//! that could not be staged) goes the whole-checkpoint way below; one
//! whose partition fails, finishes or takes no checkpoint while stopped is
//! called off (both run on, what was staged is dropped) and the failure
//! recovered after it.
//!
//! The whole-checkpoint merge:
//! 1. align: pause both partitions, then let each run to exactly the larger
//!    of the two places they paused at and checkpoint there (with output
//!    buffers); a stateless pair needs no checkpoint and restarts at its
//!    replay floor;
//! 2. merge the two checkpoints, fetched from their holders: state, key
//!    range, output buffers (each downstream's batches interleaved back
//!    into stamp order);
//! 3. restore the merged checkpoint in place of the lower partition (a new
//!    incarnation on its worker);
//! 4. update the plan everywhere: the upper partition stops; upstreams route
//!    its keys to the merged instance and replay both partitions' buffered
//!    inputs above the common frontier in one ordered stream; downstreams
//!    retire the upper partition's channel (the merged instance replays its
//!    outputs, in order with the lower's);
//! 5. the upper partition's worker, if it hosts nothing else, joins the pool.
//!
//! The autoscaling policy (in [`super::scale`]) decides when. Workers idle
//! beyond the pool's size for longer than the policy keeps them are
//! returned: ended through their provisioner, so that they cost nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::plan::{InstanceId, InstancePlan, MergedInstance, WorkerId};
use crate::stamp::Stamp;
use crate::state::{Checkpoint, KeyRange};
use crate::wire::control::{RestoreFrom, ToCoordinator, ToWorker};

use super::autoscaler::ScaleRates;
use super::events::{EventKind, Refused, ScaleDirection};
use super::scale_in_live::StagedMerge;
use super::scale_live::CALLED_OFF;
use super::{Job, ScaleEvent};

/// Two partitions' checkpoints at one frontier: (frontier, lower, upper).
type Aligned = (Stamp, Vec<u8>, Vec<u8>);

/// A merge made: the keys of each partition, whether the upper's worker
/// went back to the pool, and when the merged instance ran with everyone
/// rewired.
type Merged = ((usize, usize), bool, Instant);

/// How long one step of the alignment may take before the merge is called
/// off (a partition far behind, or stuck behind a failure).
pub(super) const ALIGN_TIMEOUT: Duration = Duration::from_secs(10);

impl Job<'_> {
    /// Merges the coldest adjacent pair of `operator`'s partitions (a
    /// command or `--scale-in`).
    pub(super) fn scale_in_operator(
        &mut self,
        operator: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let Some(node) = self.operator_node(operator, Refused::ScaleIn) else {
            return Ok(());
        };
        match self
            .autoscaler
            .coldest_pair(&self.plan.nodes[node].instances)
        {
            Some((lower, upper)) => self.scale_in(lower, upper, reason, None),
            None => {
                self.refuse(
                    Refused::ScaleIn,
                    format!("scale in {operator}: it has a single partition"),
                );
                Ok(())
            }
        }
    }

    /// Merges partition `upper` into `lower`, its neighbour below; refuses
    /// (with an event, not an error) when it cannot. `decided`: the
    /// policy's decision and rates, if it decided.
    pub(super) fn scale_in(
        &mut self,
        lower: InstanceId,
        upper: InstanceId,
        reason: &str,
        decided: Option<(u32, ScaleRates)>,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let decided_ms = self.elapsed_ms();
        let Some((node, low, high, range)) = self.mergeable(lower, upper) else {
            return Ok(());
        };
        let operator = self.plan.nodes[node].name.clone();
        let before = self.plan.nodes[node].instances.len();
        let staged = match self.query.kind(node) {
            NodeKind::Stateful => self.stage_merge(node, [&low, &high])?,
            _ => None,
        };
        if self.failure_pending() {
            if staged.is_some() {
                self.unstage_merge([&low, &high]);
            }
            self.merge_not_made(&operator, [lower, upper], decided.is_none());
            return Ok(());
        }
        let staged_ms = staged
            .as_ref()
            .map(|_| started.elapsed().as_millis() as u64);
        let stopped = Instant::now();
        let merged = match staged {
            Some(staged) => self.merge_live([&low, &high], range, staged)?,
            None => self.merge_whole(node, &low, &high, range)?,
        };
        let Some((keys, idle, resumed)) = merged else {
            self.merge_not_made(&operator, [lower, upper], decided.is_none());
            return Ok(());
        };
        self.autoscaler.forget(lower);
        self.autoscaler.forget(upper);
        let (decision, rates) = decided.unzip();
        let event = ScaleEvent {
            decided_ms,
            reason: reason.to_string(),
            decision,
            rates,
            direction: ScaleDirection::In,
            operator,
            instance: lower,
            new_instance: upper,
            worker: high.worker,
            partitions_before: before,
            partitions_after: before - 1,
            split_at: high.key_range.start,
            keys,
            added: Vec::new(),
            // A live merge pauses for its stop; otherwise from the decision.
            pause_ms: resumed
                .duration_since(if staged_ms.is_some() {
                    stopped
                } else {
                    started
                })
                .as_millis() as u64,
            staged_ms,
        };
        self.record_merge(event, idle);
        Ok(())
    }

    /// Records why a merge of `pair` (partitions of `operator`) was not
    /// made. With a failure pending, that is why, and a `requested` merge
    /// is made again after the recovery.
    fn merge_not_made(&mut self, operator: &str, pair: [InstanceId; 2], requested: bool) {
        let why = if self.failure_pending() {
            if requested {
                self.request(ScaleDirection::In, operator);
            }
            CALLED_OFF.to_string()
        } else {
            let [lower, upper] = pair;
            format!(
                "instances {lower} and {upper} could not be brought to one frontier (one failed or finished)"
            )
        };
        self.refuse(Refused::ScaleIn, format!("scale in {operator}: {why}"));
    }

    /// A live merge from its staging on: the stop (both partitions
    /// aligned, each taking an incremental checkpoint there that a live
    /// holder acknowledges), then steps 3 to 5. `None` when it was called
    /// off (both partitions run on, what was staged is dropped).
    fn merge_live(
        &mut self,
        pair: [&InstancePlan; 2],
        range: KeyRange,
        staged: StagedMerge,
    ) -> Result<Option<Merged>, EngineError> {
        let stopping = Instant::now();
        let ms = |since: Instant| since.elapsed().as_millis();
        let paused = self.pause_pair(&pair)?;
        let aligned_ms = ms(stopping);
        tracing::debug!(?paused, aligned_ms, "live merge: paused");
        let stopped_at = match paused {
            Some(frontier) if self.await_aligned(&pair, frontier)? => self
                .staged_sources(pair, frontier, &staged)
                .map(|sources| (frontier, sources)),
            _ => None,
        };
        let Some((frontier, sources)) = stopped_at else {
            self.unstage_merge(pair);
            return Ok(self.call_off(&pair));
        };
        let stored_ms = ms(stopping);
        let (idle, resumed) = self.install_staged_merge(pair, range, frontier, sources)?;
        tracing::info!(
            lower = %pair[0].id,
            upper = %pair[1].id,
            "live merge stop: aligned after {aligned_ms} ms, checkpoints stored after {stored_ms} ms, restored and rewired after {} ms",
            resumed.duration_since(stopping).as_millis()
        );
        Ok(Some((staged.keys, idle, resumed)))
    }

    /// A merge the whole-checkpoint way: both partitions' checkpoints at
    /// one frontier, fetched and merged here, and restored. `None` when it
    /// was called off.
    fn merge_whole(
        &mut self,
        node: usize,
        low: &InstancePlan,
        high: &InstancePlan,
        range: KeyRange,
    ) -> Result<Option<Merged>, EngineError> {
        // 1. Bring both partitions to one frontier.
        let Some((frontier, low_bytes, high_bytes)) = self.aligned(node, low, high)? else {
            return Ok(None);
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
        // 3-5. Restore, rewire, free the worker.
        let idle = self.install_merged(node, low, high, range, frontier, merged)?;
        Ok(Some((keys, idle, Instant::now())))
    }

    /// The two partitions and the range they will own together, if they can
    /// merge; else the refusal is recorded.
    fn mergeable(
        &mut self,
        lower: InstanceId,
        upper: InstanceId,
    ) -> Option<(usize, InstancePlan, InstancePlan, KeyRange)> {
        let (node, low) = self.plan.instance(lower).map(|(n, p)| (n, p.clone()))?;
        let (_, high) = self.plan.instance(upper).map(|(n, p)| (n, p.clone()))?;
        let operator = self.plan.nodes[node].name.clone();
        let refusal = if let Some(why) = self.cannot_rescale() {
            why.to_string()
        } else if !matches!(
            self.query.kind(node),
            NodeKind::Stateful | NodeKind::Stateless
        ) {
            "sources and sinks do not merge".to_string()
        } else if let Some(range) = low.key_range.join(&high.key_range) {
            return Some((node, low, high, range));
        } else {
            format!("instances {lower} and {upper} are not adjacent")
        };
        self.refuse(Refused::ScaleIn, format!("scale in {operator}: {refusal}"));
        None
    }

    /// Step 1: both partitions' checkpoints at one frontier. Stateless ones
    /// both replay from the lower floor (regenerating more is harmless,
    /// downstreams drop what they have).
    fn aligned(
        &mut self,
        node: usize,
        low: &InstancePlan,
        high: &InstancePlan,
    ) -> Result<Option<Aligned>, EngineError> {
        if self.query.kind(node) == NodeKind::Stateful {
            return self.align(low, high);
        }
        let floor = self.backups.floor(low.id).min(self.backups.floor(high.id));
        match (self.restart_point(low.id)?, self.restart_point(high.id)?) {
            (Some(a), Some(b)) => Ok(Some((floor, a, b))),
            _ => Ok(None),
        }
    }

    /// Steps 3 to 5: the lower partition restarts owning both ranges, the
    /// upper one goes, everyone is rewired, and the upper's worker returns
    /// to the pool if nothing else runs there (returned).
    fn install_merged(
        &mut self,
        node: usize,
        low: &InstancePlan,
        high: &InstancePlan,
        range: KeyRange,
        frontier: Stamp,
        merged: Vec<u8>,
    ) -> Result<bool, EngineError> {
        let (lower, upper) = (low.id, high.id);
        self.plan.remove_instance(upper);
        self.plan.reincarnate(lower, low.worker, range);
        self.backups.forget(upper);
        if self.backed_up(node) {
            self.backups.reshaped(lower, (frontier, merged.clone()));
        }
        let restore = HashMap::from([(
            low.worker,
            vec![(lower, RestoreFrom::Checkpoint(merged.into()))],
        )]);
        self.restore_on(restore, "a merge's restore")?;
        self.rewire_merged(upper, lower, frontier);
        Ok(self.free_worker(high.worker))
    }

    /// Step 4: tells everyone of the plan in which `upper` merged into
    /// `lower` at `frontier`.
    pub(super) fn rewire_merged(&mut self, upper: InstanceId, lower: InstanceId, frontier: Stamp) {
        self.broadcast(&ToWorker::PlanUpdate {
            plan: self.plan.clone(),
            added: Vec::new(),
            merged: vec![MergedInstance {
                id: upper,
                into: lower,
                frontier,
            }],
        });
    }

    /// The last step: `worker`, the upper partition's, joins the pool if it hosts
    /// nothing else (returned).
    pub(super) fn free_worker(&mut self, worker: WorkerId) -> bool {
        let idle = !self.plan.instances().any(|(_, i)| i.worker == worker);
        if idle && self.alive(worker) && !self.pool.contains(&worker) {
            self.pool.push_back(worker);
        }
        idle
    }

    /// Records a finished merge.
    fn record_merge(&mut self, event: ScaleEvent, idle: bool) {
        self.record(
            EventKind::ScaleIn,
            format!(
                "{}: {} -> {} partitions (instance {} merged into {} at {:#x}, {} + {} keys, worker {} {}) in {} ms{}; {}",
                event.operator,
                event.partitions_before,
                event.partitions_after,
                event.new_instance,
                event.instance,
                event.split_at,
                event.keys.0,
                event.keys.1,
                event.worker,
                if idle { "back in the pool" } else { "still busy" },
                event.pause_ms,
                event
                    .staged_ms
                    .map_or_else(String::new, |ms| format!(" after {ms} ms staged live")),
                event.reason
            ),
        );
        self.scale_events.push(event);
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
        let Some(frontier) = self.pause_pair(&pair)? else {
            return Ok(self.call_off(&pair));
        };
        let mut checkpoints = self.aligned_checkpoints(&pair, frontier)?;
        match (checkpoints.remove(&low.id), checkpoints.remove(&high.id)) {
            (Some(a), Some(b)) => Ok(Some((frontier, a, b))),
            _ => Ok(self.call_off(&pair)),
        }
    }

    /// Pauses both partitions and resumes each until the larger of their
    /// pause points, which it returns; `None` when one fails, is gone or has
    /// finished.
    pub(super) fn pause_pair(
        &mut self,
        pair: &[&InstancePlan; 2],
    ) -> Result<Option<Stamp>, EngineError> {
        for p in pair {
            if self
                .send(p.worker, &ToWorker::Pause { instance: p.id })
                .is_err()
            {
                return Ok(None);
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
                Ok(_) | Err(EngineError::Timeout(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let frontier = paused.values().copied().max().unwrap_or(Stamp::END);
        if frontier.is_end() {
            return Ok(None);
        }
        for p in pair {
            let resume = ToWorker::Resume {
                instance: p.id,
                until: frontier,
            };
            if self.send(p.worker, &resume).is_err() {
                return Ok(None);
            }
        }
        Ok(Some(frontier))
    }

    /// Whether both partitions' checkpoints at `frontier` are stored at a
    /// holder; `false` when one fails or times out.
    pub(super) fn await_aligned(
        &mut self,
        pair: &[&InstancePlan; 2],
        frontier: Stamp,
    ) -> Result<bool, EngineError> {
        let waiting = pair
            .iter()
            .map(|p| (p.id, (p.incarnation, p.worker)))
            .collect();
        let deadline = Instant::now() + ALIGN_TIMEOUT;
        let stored =
            self.await_backups("checkpoints for a merge", waiting, deadline, |_, at| {
                at == frontier
            })?;
        Ok(stored.len() == 2)
    }

    /// The pair's whole checkpoints at `frontier`, fetched from their
    /// holders once they hold them; fewer than two when one fails, times
    /// out or cannot be fetched at that frontier.
    fn aligned_checkpoints(
        &mut self,
        pair: &[&InstancePlan; 2],
        frontier: Stamp,
    ) -> Result<HashMap<InstanceId, Vec<u8>>, EngineError> {
        if !self.await_aligned(pair, frontier)? {
            return Ok(HashMap::new());
        }
        let ids: Vec<InstanceId> = pair.iter().map(|p| p.id).collect();
        Ok(self
            .fetch_backups(&ids)?
            .into_iter()
            .filter_map(|(id, state)| {
                state
                    .filter(|(at, _)| *at == frontier)
                    .map(|(_, bytes)| (id, bytes))
            })
            .collect())
    }

    /// Lets a paused instance run on after a rescaling was called off,
    /// if its worker still lives (`what`: the rescaling, for the log).
    pub(super) fn resume_if_alive(&mut self, p: &InstancePlan, what: &str) {
        if self.alive(p.worker) {
            let resume = ToWorker::Resume {
                instance: p.id,
                until: Stamp::END,
            };
            if let Err(e) = self.send(p.worker, &resume) {
                tracing::warn!(instance = %p.id, "cannot resume after {what}: {e}");
            }
        }
    }

    /// Calls a merge off: whichever partitions are still alive run on.
    pub(super) fn call_off<T>(&mut self, pair: &[&InstancePlan; 2]) -> Option<T> {
        for p in pair {
            self.resume_if_alive(p, "a merge");
        }
        None
    }

    /// Returns the workers that have been idle in the pool, beyond its
    /// configured size, for longer than the policy keeps them: each is told
    /// to exit and ended through its provisioner (not a failure: nothing
    /// runs there).
    pub(super) fn return_idle_workers(&mut self) {
        let now = Instant::now();
        let pool = self.pool.clone();
        self.idle_since.retain(|w, _| pool.contains(w));
        for w in &pool {
            self.idle_since.entry(*w).or_insert(now);
        }
        let Some(keep) = self.autoscaler.policy().and_then(|p| p.keep_idle) else {
            return;
        };
        // The oldest idle workers go first; the pool keeps its size.
        let spare = self.pool.len().saturating_sub(self.config.pool);
        let mut idle: Vec<(Instant, WorkerId)> = self
            .idle_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= keep)
            .map(|(w, since)| (*since, *w))
            .collect();
        idle.sort_unstable();
        for (since, w) in idle.into_iter().take(spare) {
            self.pool.retain(|p| *p != w);
            self.idle_since.remove(&w);
            self.workers[w.index()].alive = false;
            let (degraded, _) = self.backups.holders_failed(&[w]);
            self.replicate(&degraded);
            // Best effort: it is ended through its provisioner anyway.
            let _ = self.links.send(w, &ToWorker::Shutdown);
            self.end_process(w);
            self.record(
                EventKind::Released,
                format!(
                    "worker {w} returned after {:.1} s idle",
                    now.duration_since(since).as_secs_f64()
                ),
            );
        }
    }
}
