//! The scale-out protocol: split one instance into k partitions.
//!
//! A stateful instance with a live backup holder splits *live*, by
//! pre-copy (as a VM's live migration moves memory): the bulk of its state
//! moves to the parts' workers while it keeps processing every key, and it
//! stops only to hand over what changed since (steps in `scale_live`).
//! 1. stage (no pause): a holder of the instance's backup says where to cut
//!    it into k parts by recent load (`ToWorker::CutBackup`; the cuts are
//!    computed where the state is, by `Checkpoint::split_points`); each
//!    part's worker (the instance's own for the lowest part, a pool worker
//!    for each other) fetches only its range from a holder, decodes it off
//!    its control thread and keeps it (`ToWorker::Stage`, answered with
//!    `Staged` and the staged frontier);
//! 2. stop: the instance pauses, runs to exactly where it paused and
//!    checkpoints there (incrementally), then stops releasing tuples; the
//!    coordinator waits for a holder's acknowledgement of that checkpoint;
//! 3. catch up: each part restores from what it staged plus the deltas of
//!    its range since (`RestoreFrom::Staged`: the holder cuts the deltas
//!    after the staged frontier to the range, or sends the range whole when
//!    compaction folded them away), the lowest in place of the instance (a
//!    new incarnation on its worker, which keeps the whole output buffer
//!    and replays it, as for any split);
//! 4. the plan is updated everywhere, as below; the holders of the
//!    instance's backup cut each part's backup from it
//!    (`ToWorker::ReshapeBackup`) and become the part's route, so that the
//!    parts' increments join what they restored from instead of a full
//!    checkpoint; the split waits until each part's backup is acknowledged
//!    (until then only the instance's backup at those holders protects it).
//!
//! Its pause is the stop alone: the last increment, the catch-ups (the
//! deltas since staging), the restores and the rewiring. A split that
//! cannot stage (a stateless instance, no live holder, a holder or part
//! worker lost, a part that could not be fetched) falls back to the
//! whole-checkpoint split below; one whose instance fails or cannot stop is
//! called off (the instance resumes, its staged parts are dropped) and the
//! failure recovered after it, like any other. So is every split of the
//! rescaling when any worker is declared failed while they stage or stop,
//! or while a whole-checkpoint split waits for its checkpoint: the failed
//! worker's instances are recovered first, not after the rescaling.
//!
//! The whole-checkpoint split:
//! 1. checkpoint the instance (a fresh checkpoint is requested; a stateless
//!    one has nothing to checkpoint and restarts at its replay floor);
//! 2. choose the k-1 cuts (where the recent load of the checkpoint's keys
//!    reaches each k-th; the median keys without load counts, even ranges
//!    when it has too few keys) and partition the checkpoint there;
//! 3. restore the lowest part in place of the instance (a new incarnation on
//!    the same worker) and each other part, a new instance, on a pool worker;
//! 4. update the plan everywhere: upstreams route by the new ranges, replay
//!    their buffers to every part (each keeps what it owns) and downstreams
//!    accept the new instances as inputs that inherit the parent's frontier;
//! 5. refill the pool, up to the policy's maximum of workers.
//!
//! All the splits of one decision are one reconfiguration: one stop or
//! checkpoint round, one round of restores, one plan update. The
//! autoscaling policy decides when and into how many parts, from the
//! autoscaler's rates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::plan::InstancePlan;
use crate::plan::{AddedInstance, Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::{Checkpoint, KeyRange};
use crate::wire::control::{RestoreFrom, ToWorker};

use super::autoscaler::{Action, ScaleRates};
use super::events::{EventKind, Refused, ScaleDirection};
use super::recovery::RestoresByTarget;
use super::scale_live::ReadyToSplit;
use super::Job;

/// Which policy decides when to scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Rates, not thresholds (DS2): every instance whose offered rate needs
    /// more than the target utilisation is split into as many parts as it
    /// needs, all in one decision.
    #[default]
    Rate,
    /// An instance hot for `reports` reports in a row is split in two, one
    /// split per decision (the policy Spate had first, kept to compare).
    Threshold,
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rate" => Ok(PolicyKind::Rate),
            "threshold" => Ok(PolicyKind::Threshold),
            _ => Err(format!("`{s}` is not a policy: use rate or threshold")),
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            PolicyKind::Rate => "rate",
            PolicyKind::Threshold => "threshold",
        })
    }
}

/// When to scale out and in on its own, and what it may cost.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePolicy {
    /// Which policy decides.
    pub kind: PolicyKind,
    /// Target utilisation (CPU seconds per second of an instance's thread,
    /// as a share of its worker's allowance): the threshold policy splits
    /// above it, the rate policy keeps every partition under it.
    pub threshold: f64,
    /// Consecutive hot reports (one a second) before a threshold split.
    pub reports: u32,
    /// Minimum time from the end of one decision to the next.
    pub cooldown: Duration,
    /// Never split an operator beyond this many partitions.
    pub max_partitions: usize,
    /// Scale in: the threshold policy merges two adjacent partitions each
    /// below it; the rate policy two whose utilisations together stay
    /// below it (so that it never undoes a split under a steady load).
    pub low_threshold: f64,
    /// Consecutive cold reports of both partitions before a merge.
    pub low_reports: u32,
    /// Never run more workers than this (pool included): splits wait and
    /// the pool is not refilled beyond it.
    pub max_workers: Option<usize>,
    /// How long an idle worker beyond the pool's size is kept before it is
    /// returned (ended through its provisioner); `None`: kept to the end.
    pub keep_idle: Option<Duration>,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        ScalePolicy {
            kind: PolicyKind::default(),
            threshold: 0.7,
            reports: 3,
            cooldown: Duration::from_secs(5),
            max_partitions: 64,
            low_threshold: 0.15,
            low_reports: 5,
            max_workers: None,
            keep_idle: None,
        }
    }
}

/// One split or merge, for reports and the dashboard.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// When it was decided, milliseconds since the job started.
    pub decided_ms: u64,
    /// Why (`policy: ...` or `requested`).
    pub reason: String,
    /// The policy's decision it belongs to (one decision may split or merge
    /// several partitions); `None` when requested.
    #[serde(default)]
    pub decision: Option<u32>,
    /// The rates that justified it, when the policy decided.
    #[serde(default)]
    pub rates: Option<ScaleRates>,
    /// A split or a merge.
    #[serde(default)]
    pub direction: ScaleDirection,
    /// The operator.
    pub operator: String,
    /// The instance split (or merged into).
    pub instance: InstanceId,
    /// The first new instance (the part above the instance's), or the one
    /// merged away.
    pub new_instance: InstanceId,
    /// The worker the first new instance runs on, or the one a merge freed.
    pub worker: WorkerId,
    /// The operator's partitions before.
    #[serde(rename = "from", alias = "partitions_before")]
    pub partitions_before: usize,
    /// The operator's partitions after.
    #[serde(rename = "to", alias = "partitions_after")]
    pub partitions_after: usize,
    /// First key hash of the first new part (or of the partition merged
    /// away).
    pub split_at: u64,
    /// Keys in the checkpoint split (the part kept, the others together),
    /// or in the two merged (a live merge: as staged).
    pub keys: (usize, usize),
    /// Every new part of a split: instance, worker, first key hash, keys.
    #[serde(default)]
    pub added: Vec<AddedPart>,
    /// A live split or merge: from the decision until every part was
    /// staged, the instances running all along (`None`: not staged).
    #[serde(default)]
    pub staged_ms: Option<u64>,
    /// How long the instance stopped processing: a live split's or
    /// merge's stop (the last checkpoints, catching up and restoring, the
    /// rewiring); otherwise from the decision until every part runs and
    /// everyone was rewired.
    pub pause_ms: u64,
}

/// A new partition a split made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedPart {
    /// The new instance.
    pub instance: InstanceId,
    /// The pool worker it runs on.
    pub worker: WorkerId,
    /// First key hash it owns.
    pub key_start: u64,
    /// Keys of the checkpoint it got.
    pub keys: usize,
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

/// The parts of a split checkpoint, in key order: their key ranges, key
/// counts and encodings.
type Parts = (Vec<KeyRange>, Vec<usize>, Vec<Vec<u8>>);

/// Cuts an encoded checkpoint into `parts` by key load.
fn partition_checkpoint(bytes: &[u8], parts: usize) -> Result<Parts, EngineError> {
    let checkpoint = Checkpoint::decode(bytes)?;
    let ranges = checkpoint.split_points(parts);
    let split = checkpoint.partition(&ranges)?;
    let keys = split.iter().map(|p| p.entries.len()).collect();
    let encoded = split
        .iter()
        .map(Checkpoint::encode)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ranges, keys, encoded))
}

/// What the report says of each new part of a split: every part but the
/// first, which stays on the parent's instance.
fn added_parts(
    new_ids: &[InstanceId],
    targets: &[WorkerId],
    ranges: &[KeyRange],
    keys: &[usize],
) -> Vec<AddedPart> {
    new_ids
        .iter()
        .zip(targets)
        .zip(ranges.iter().skip(1).zip(keys.iter().skip(1)))
        .map(|((id, worker), (range, keys))| AddedPart {
            instance: *id,
            worker: *worker,
            key_start: range.start,
            keys: *keys,
        })
        .collect()
}

/// What a split partitions: a checkpoint's frontier and its encoding.
pub(super) type SplitFrom = (Stamp, Vec<u8>);

/// A split to carry out: which instance, into how many parts, and why.
pub(super) struct SplitOrder {
    /// The instance to split.
    pub(super) instance: InstanceId,
    /// Into how many parts (fewer when the pool has fewer idle workers).
    pub(super) parts: usize,
    /// Why, for the event.
    pub(super) reason: String,
    /// The policy's decision and rates, if it decided.
    pub(super) decided: Option<(u32, ScaleRates)>,
}

/// A split under way, between its checks and its restores.
pub(super) struct Splitting {
    order: SplitOrder,
    pub(super) node: usize,
    pub(super) placed: InstancePlan,
    pub(super) operator: String,
    /// The pool workers its new parts go to.
    pub(super) targets: Vec<WorkerId>,
    /// The operator's partitions before.
    before: usize,
}

impl Splitting {
    /// Whether the split was asked for (`--scale`, a command) rather than
    /// decided by the autoscaling policy, which decides again by itself.
    pub(super) fn requested(&self) -> bool {
        self.order.decided.is_none()
    }
}

/// A split whose parts are placed, waiting for the restores.
pub(super) struct Placed {
    pub(super) splitting: Splitting,
    pub(super) ranges: Vec<KeyRange>,
    pub(super) keys: Vec<usize>,
    pub(super) new_ids: Vec<InstanceId>,
    /// Whether its parts were staged while the instance ran (a live
    /// split): its pause is then only the stop.
    pub(super) staged: bool,
}

impl Job<'_> {
    /// Carries out `orders` as one reconfiguration: one fresh checkpoint of
    /// each instance, all requested at once; every part of every split
    /// restored at once; one plan update. A split that cannot be made (no
    /// pool worker, a source or sink, a range too small, its instance
    /// failed first) is refused with an event, not an error, and the others
    /// go on.
    pub(super) fn scale_out(&mut self, orders: Vec<SplitOrder>) -> Result<(), EngineError> {
        let started = Instant::now();
        let decided_ms = self.elapsed_ms();
        let splitting: Vec<Splitting> = orders
            .into_iter()
            .filter_map(|order| self.prepare_split(order))
            .collect();
        if splitting.is_empty() {
            return Ok(());
        }
        // Live splits: stage every part while the instance runs, then stop
        // it for its last checkpoint (see the module's doc). The others: a
        // fresh checkpoint of each instance (a stateless one restarts
        // empty at its replay floor).
        let Some(ReadyToSplit {
            stopped,
            whole: splitting,
            snapshots,
            staged_ms,
            stopping,
        }) = self.ready_to_split(splitting, started)?
        else {
            return Ok(());
        };
        let mut placed = Vec::with_capacity(splitting.len() + stopped.len());
        let mut by_target: RestoresByTarget = HashMap::new();
        let mut added = Vec::new();
        let mut reshaping = Vec::with_capacity(stopped.len());
        for s in stopped {
            let (p, r) = self.place_staged(s, &mut by_target, &mut added);
            placed.push(p);
            reshaping.push(r);
        }
        placed.extend(self.place_whole(splitting, snapshots, &mut by_target, &mut added)?);
        if placed.is_empty() {
            return Ok(());
        }
        // 3-4. Restore every part and rewire everyone, once for them all;
        // the holders of live splits' instances cut the parts' backups.
        self.restore_on(by_target, "a split's restores")?;
        self.reshape_backups(&reshaping);
        let update = ToWorker::PlanUpdate {
            plan: self.plan.clone(),
            added,
            merged: Vec::new(),
        };
        self.broadcast(&update);
        // The pause is over: every part runs and everyone was rewired. A
        // live split's instance ran until its stop.
        let pause_ms = started.elapsed().as_millis() as u64;
        let stop_ms = stopping.elapsed().as_millis() as u64;
        let mut provisions = 0;
        for p in placed {
            provisions += p.new_ids.len();
            let timing = if p.staged {
                (Some(staged_ms), stop_ms)
            } else {
                (None, pause_ms)
            };
            self.record_placed(p, decided_ms, timing);
        }
        // No other reconfiguration before a live split's parts are backed
        // up.
        self.await_part_backups(&reshaping)?;
        // 5. Refill the pool (in the background: new workers join later).
        if self.config.pool > 0 {
            for _ in 0..provisions {
                if self.below_max_workers() {
                    self.provisioner.provision()?;
                }
            }
        }
        Ok(())
    }

    /// Steps 2 and 3 of the whole-checkpoint splits: each instance's
    /// checkpoint cut by load and partitioned, and its parts placed
    /// (an instance that failed before its checkpoint is not split, and
    /// gives its pool workers back).
    fn place_whole(
        &mut self,
        splitting: Vec<Splitting>,
        snapshots: Vec<Option<SplitFrom>>,
        by_target: &mut RestoresByTarget,
        added: &mut Vec<AddedInstance>,
    ) -> Result<Vec<Placed>, EngineError> {
        let mut placed = Vec::with_capacity(splitting.len());
        for (s, snapshot) in splitting.into_iter().zip(snapshots) {
            let Some((frontier, bytes)) = snapshot else {
                self.return_targets(&s);
                self.refuse(
                    Refused::ScaleOut,
                    format!(
                        "scale {}: instance {} failed before it could be split",
                        s.operator, s.placed.id
                    ),
                );
                continue;
            };
            // 2. Choose the cuts and partition the checkpoint there.
            let (ranges, keys, encoded) = partition_checkpoint(&bytes, s.targets.len() + 1)?;
            let parts = ranges.iter().copied().zip(encoded).collect();
            let new_ids = self.place_parts(&s, frontier, parts, by_target, added);
            placed.push(Placed {
                splitting: s,
                ranges,
                keys,
                new_ids,
                staged: false,
            });
        }
        Ok(placed)
    }

    /// Checks a split and reserves its pool workers; `None` (with an
    /// event) when it cannot be made.
    fn prepare_split(&mut self, order: SplitOrder) -> Option<Splitting> {
        let (node, placed) = self
            .plan
            .instance(order.instance)
            .map(|(n, p)| (n, p.clone()))?;
        let operator = self.plan.nodes[node].name.clone();
        if let Some(why) = self.cannot_split(node, &placed) {
            self.refuse(Refused::ScaleOut, format!("scale {operator}: {why}"));
            return None;
        }
        let extra = (order.parts.max(2) - 1).min(self.pool.len());
        if extra == 0 {
            self.refuse(
                Refused::ScaleOut,
                format!("scale {operator}: no idle worker in the pool (start with --pool N)"),
            );
            return None;
        }
        Some(Splitting {
            targets: self.pool.drain(..extra).collect(),
            before: self.plan.nodes[node].instances.len(),
            order,
            node,
            placed,
            operator,
        })
    }

    /// Records a split whose parts all run, with how long its parts were
    /// staged while the instance ran and how long it paused.
    fn record_placed(
        &mut self,
        p: Placed,
        decided_ms: u64,
        (staged_ms, pause_ms): (Option<u64>, u64),
    ) {
        let Placed {
            splitting: s,
            ranges,
            keys,
            new_ids,
            ..
        } = p;
        for id in std::iter::once(s.placed.id).chain(new_ids.iter().copied()) {
            self.autoscaler.forget(id);
        }
        let (decision, rates) = s.order.decided.unzip();
        let event = ScaleEvent {
            decided_ms,
            reason: s.order.reason,
            decision,
            rates,
            direction: ScaleDirection::Out,
            operator: s.operator,
            instance: s.placed.id,
            new_instance: new_ids[0],
            worker: s.targets[0],
            partitions_before: s.before,
            partitions_after: s.before + new_ids.len(),
            split_at: ranges[1].start,
            keys: (keys[0], keys[1..].iter().sum()),
            added: added_parts(&new_ids, &s.targets, &ranges, &keys),
            staged_ms,
            pause_ms,
        };
        self.record_split(event);
    }

    /// Whether the policy's maximum of workers allows one more.
    fn below_max_workers(&self) -> bool {
        let max = self.autoscaler.policy().and_then(|p| p.max_workers);
        max.is_none_or(|max| self.live_workers().len() < max)
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

    /// The checkpoint to split each instance from: a fresh one for a
    /// backed-up instance, the replay floor for a stateless one. `None`:
    /// the instance failed first.
    pub(super) fn snapshots_for_split(
        &mut self,
        splitting: &[Splitting],
    ) -> Result<Vec<Option<SplitFrom>>, EngineError> {
        let fresh: Vec<&InstancePlan> = splitting
            .iter()
            .filter(|s| self.backed_up(s.node))
            .map(|s| &s.placed)
            .collect();
        let mut checkpoints = self.split_checkpoints(&fresh)?;
        splitting
            .iter()
            .map(|s| {
                if self.backed_up(s.node) {
                    return Ok(checkpoints.remove(&s.placed.id));
                }
                let floor = self.backups.floor(s.placed.id);
                Ok(self.restart_point(s.placed.id)?.map(|bytes| (floor, bytes)))
            })
            .collect()
    }

    /// Steps 3 and 4 of one split, but the restores and the plan update,
    /// which the caller makes once for every split: the first part restarts
    /// in place of the instance (a new incarnation on its worker), each
    /// other part as a new instance on its target. Adds the restores to
    /// `by_target` and the new instances to `added`; returns the new ids,
    /// in key order.
    fn place_parts(
        &mut self,
        s: &Splitting,
        frontier: Stamp,
        parts: Vec<(KeyRange, Vec<u8>)>,
        by_target: &mut RestoresByTarget,
        added: &mut Vec<AddedInstance>,
    ) -> Vec<InstanceId> {
        let instance = s.placed.id;
        let mut new_ids = Vec::with_capacity(parts.len() - 1);
        for (i, (range, bytes)) in parts.into_iter().enumerate() {
            let (id, worker) = if i == 0 {
                self.plan.reincarnate(instance, s.placed.worker, range);
                (instance, s.placed.worker)
            } else {
                let worker = s.targets[i - 1];
                let id = self.plan.add_instance(s.node, worker, range).0;
                new_ids.push(id);
                added.push(AddedInstance {
                    id,
                    parent: instance,
                    frontier,
                });
                (id, worker)
            };
            if self.backed_up(s.node) {
                self.backups.reshaped(id, (frontier, bytes.clone()));
            } else if id != instance {
                self.backups.raise_floor(id, frontier);
            }
            by_target
                .entry(worker)
                .or_default()
                .push((id, RestoreFrom::Checkpoint(bytes.into())));
        }
        new_ids
    }

    /// Records a finished split.
    fn record_split(&mut self, event: ScaleEvent) {
        let parts: Vec<String> = event
            .added
            .iter()
            .map(|p| format!("{} on worker {}", p.instance, p.worker))
            .collect();
        self.record(
            EventKind::ScaleOut,
            format!(
                "{}: {} -> {} partitions (instance {} split at {:#x}, {} + {} keys, new instances {}) in {} ms{}; {}",
                event.operator,
                event.partitions_before,
                event.partitions_after,
                event.instance,
                event.split_at,
                event.keys.0,
                event.keys.1,
                parts.join(", "),
                event.pause_ms,
                event
                    .staged_ms
                    .map_or_else(String::new, |ms| format!(" after {ms} ms staged live")),
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

    /// Asks each of `instances` for a fresh checkpoint, all at once, waits
    /// until their holders have them, and fetches them whole. One that
    /// takes none in time (it had nothing new) is split from its latest
    /// backup; one that fails (or is replaced) first has none in the
    /// answer.
    fn split_checkpoints(
        &mut self,
        instances: &[&InstancePlan],
    ) -> Result<HashMap<InstanceId, SplitFrom>, EngineError> {
        let mut waiting: HashMap<InstanceId, (Incarnation, WorkerId)> = HashMap::new();
        let mut asked: Vec<WorkerId> = Vec::new();
        let mut before: HashMap<InstanceId, Stamp> = HashMap::new();
        for p in instances {
            if !self.runs(p.id, p.incarnation, p.worker) {
                continue;
            }
            if !asked.contains(&p.worker) {
                if self.send(p.worker, &ToWorker::CheckpointNow).is_err() {
                    continue;
                }
                asked.push(p.worker);
            }
            waiting.insert(p.id, (p.incarnation, p.worker));
            before.insert(p.id, self.backups.durable(p.id));
        }
        let ids: Vec<InstanceId> = waiting.keys().copied().collect();
        // An instance with nothing new since its latest backup takes no
        // checkpoint: when every one has a backup, the wait is short.
        let patience = if ids.iter().all(|id| self.backups.holder(*id).is_some()) {
            (self.config.checkpoint_interval * 4)
                .max(Duration::from_secs(2))
                .min(self.config.startup_timeout)
        } else {
            self.config.startup_timeout
        };
        self.await_backups(
            "checkpoints for a split",
            waiting,
            Instant::now() + patience,
            |id, at| at >= before[&id],
        )?;
        if self.failure_pending() {
            // The split is called off: the recovery comes first.
            return Ok(HashMap::new());
        }
        let current: Vec<InstanceId> = instances
            .iter()
            .filter(|p| ids.contains(&p.id) && self.runs(p.id, p.incarnation, p.worker))
            .map(|p| p.id)
            .collect();
        Ok(self
            .fetch_backups(&current)?
            .into_iter()
            .filter_map(|(id, state)| state.map(|state| (id, state)))
            .collect())
    }

    /// The node of `operator`, or a refusal of the command (`what`)
    /// recorded when the query has no such operator.
    pub(super) fn operator_node(&mut self, operator: &str, what: Refused) -> Option<usize> {
        let node = self.query.find(operator);
        if node.is_none() {
            self.refuse(what, format!("{what}: no operator `{operator}`"));
        }
        node
    }

    /// Scales out `operator`'s busiest instance into the configured number
    /// of parts (a command or `--scale`).
    pub(super) fn scale_operator(
        &mut self,
        operator: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let Some(node) = self.operator_node(operator, Refused::ScaleOut) else {
            return Ok(());
        };
        match self.autoscaler.busiest(&self.plan.nodes[node].instances) {
            Some(instance) => self.scale_out(vec![SplitOrder {
                instance,
                parts: self.config.split_parts,
                reason: reason.to_string(),
                decided: None,
            }]),
            None => Ok(()),
        }
    }

    /// Carries out what the policy decides, if anything: every split of
    /// one decision in one reconfiguration, then its merges; then returns
    /// workers idle for longer than the policy keeps them.
    pub(super) fn autoscale(&mut self) -> Result<(), EngineError> {
        let elastic: Vec<usize> = (0..self.plan.nodes.len())
            .filter(|&n| matches!(self.query.kind(n), NodeKind::Stateful | NodeKind::Stateless))
            .collect();
        let decided = self
            .autoscaler
            .decide(&self.plan, &elastic, self.pool.len(), Instant::now());
        if let Some((decision, actions)) = decided {
            let started = Instant::now();
            let mut splits = Vec::new();
            let mut merges = Vec::new();
            for action in actions {
                match action {
                    Action::Split {
                        instance,
                        parts,
                        rates,
                    } => splits.push(SplitOrder {
                        instance,
                        parts,
                        reason: format!(
                            "policy {} decision {decision}: offered {:.0}/s at {:.0} tuples per CPU second needs utilisation {:.2} (target {:.2}), {parts} parts",
                            rates.policy, rates.offered_rate, rates.true_rate, rates.projected, rates.target
                        ),
                        decided: Some((decision, rates)),
                    }),
                    Action::Merge {
                        lower,
                        upper,
                        rates,
                    } => merges.push((lower, upper, rates)),
                }
            }
            // Every split of the decision in one reconfiguration; merges
            // (two partitions each, aligned) one after the other.
            self.scale_out(splits)?;
            for (lower, upper, rates) in merges {
                let reason = format!(
                    "policy {} decision {decision}: utilisation {:.2} for two partitions (scale in below {:.2})",
                    rates.policy,
                    rates.projected,
                    self.autoscaler.policy().map_or(0.0, |p| p.low_threshold)
                );
                self.scale_in(lower, upper, &reason, Some((decision, rates)))?;
            }
            self.autoscaler
                .carried_out(Instant::now(), started.elapsed());
        }
        self.return_idle_workers();
        Ok(())
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

    /// Splits where [`Checkpoint::split_points`] says into `k` parts and restores each:
    /// (load, state) of each.
    fn split_k(c: &Checkpoint, k: usize) -> Vec<(u64, KeyedState<u64, u64>)> {
        c.partition(&c.split_points(k))
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

    fn split(c: &Checkpoint) -> Vec<(u64, KeyedState<u64, u64>)> {
        split_k(c, 2)
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
        let ranges = checkpoint(&keys_with_load(1, 5)).split_points(2);
        assert_eq!(ranges, KeyRange::FULL.split_even(2));
    }

    #[test]
    fn a_k_way_split_gives_each_part_a_kth_of_the_load() {
        let parts = split_k(&checkpoint(&keys_with_load(800, 2)), 8);
        assert_eq!(parts.len(), 8);
        assert!(parts
            .iter()
            .all(|(load, state)| *load == 200 && state.len() == 100));
    }

    #[test]
    fn fewer_keys_than_parts_split_the_range_evenly() {
        let ranges = checkpoint(&keys_with_load(3, 1)).split_points(5);
        assert_eq!(ranges, KeyRange::FULL.split_even(5));
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

        #[test]
        fn k_parts_lose_no_key_balance_the_load_and_merge_back(
            loads in prop::collection::btree_map(
                any::<u64>(),
                prop_oneof![3 => 0u32..10, 1 => 0u32..10_000],
                1..300,
            ),
            k in 2usize..12,
        ) {
            let c = checkpoint(&loads);
            let ranges = c.split_points(k);
            let parts = c.partition(&ranges).unwrap();
            prop_assert_eq!(parts.len(), k);
            // Every key in exactly one part, the part owning its hash.
            prop_assert_eq!(parts.iter().map(|p| p.entries.len()).sum::<usize>(), loads.len());
            for p in &parts {
                prop_assert!(p.entries.iter().all(|e| p.key_range.contains(e.hash)));
            }
            // With at least k keys, no part is empty and none carries more
            // than its share plus the hottest key, twice over (each cut is
            // within one key of its ideal place).
            if loads.len() >= k {
                let total: u64 = loads.values().map(|l| u64::from(*l)).sum();
                let hottest = u64::from(*loads.values().max().unwrap());
                for p in &parts {
                    prop_assert!(!p.entries.is_empty());
                    let load: u64 = p.entries.iter().map(|e| u64::from(e.load)).sum();
                    prop_assert!(load <= total / k as u64 + 2 * hottest + 1, "{load} of {total}");
                }
            }
            // Merging the parts back in order gives the checkpoint split.
            let merged = parts
                .into_iter()
                .reduce(|lower, upper| lower.merge(upper).unwrap())
                .unwrap();
            prop_assert_eq!(merged, c);
        }
    }
}
