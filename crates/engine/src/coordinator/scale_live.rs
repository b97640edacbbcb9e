//! Live splits by pre-copy: the steps of [`super::scale`]'s protocol that
//! move a stateful instance's state to its parts while it runs, and the
//! short stop that hands over only what changed since.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::error::EngineError;
use crate::plan::{AddedInstance, Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::KeyRange;
use crate::wire::control::{
    BackupHolder, ReshapedPart, RestoreFrom, StagedJoin, StagedSource, ToCoordinator, ToWorker,
};

use super::checkpoint::answers_backup_of;
use super::events::{Refused, ScaleDirection};
use super::recovery::RestoresByTarget;
use super::scale::{Placed, SplitFrom, Splitting};
use super::Job;

/// Each range staged (by instance and range): its frontier and keys.
pub(super) type StagedRanges = HashMap<(InstanceId, KeyRange), (Stamp, usize)>;

/// A split whose parts are staged on their workers while its instance
/// still runs.
pub(super) struct StagedSplit {
    splitting: Splitting,
    /// Each part's range and key count (at the cut), in key order.
    parts: Vec<(KeyRange, usize)>,
    /// The frontier each part was staged at.
    staged_at: Vec<Stamp>,
}

/// Splits ready to be restored.
pub(super) struct ReadyToSplit {
    /// The live splits, stopped at their last checkpoint.
    pub(super) stopped: Vec<StoppedSplit>,
    /// The splits that could not stage: whole-checkpoint splits.
    pub(super) whole: Vec<Splitting>,
    /// What each of `whole` splits (`None`: its instance failed first).
    pub(super) snapshots: Vec<Option<SplitFrom>>,
    /// From the rescaling's start until every live part was staged.
    pub(super) staged_ms: u64,
    /// When the live splits' instances were told to stop.
    pub(super) stopping: Instant,
}

/// A staged split whose instance stopped at `frontier`, its backup there.
pub(super) struct StoppedSplit {
    pub(super) staged: StagedSplit,
    frontier: Stamp,
    /// The holders of the instance's backup at `frontier`.
    holders: Vec<WorkerId>,
}

/// The backups a live split's or merge's holders make for its instances
/// (cut or merged), to wait for.
pub(super) struct Reshaping {
    instance: InstanceId,
    frontier: Stamp,
    /// Each part's id and incarnation.
    parts: Vec<(InstanceId, Incarnation)>,
}

impl Reshaping {
    /// The backup of `instance` (`incarnation`), merged at `frontier`.
    pub(super) fn merged(instance: InstanceId, incarnation: Incarnation, frontier: Stamp) -> Self {
        Reshaping {
            instance,
            frontier,
            parts: vec![(instance, incarnation)],
        }
    }
}

/// Which worker restores part `i` of a split: the instance's own for the
/// lowest, the pool workers for the others.
fn part_worker(s: &Splitting, i: usize) -> WorkerId {
    if i == 0 {
        s.placed.worker
    } else {
        s.targets[i - 1]
    }
}

/// Why a rescaling was called off before its restores, for its event.
pub(super) const CALLED_OFF: &str =
    "called off, a failure is recovered first (a requested one is made after it)";

impl Job<'_> {
    /// The live holders of `id`'s backup, the newest copy first.
    pub(super) fn live_holders(&self, id: InstanceId) -> Vec<WorkerId> {
        self.backups
            .holders_by_recency(id)
            .into_iter()
            .filter(|h| self.alive(*h))
            .collect()
    }

    /// The same, with the addresses a worker fetches from
    /// ([`Job::holder_at`]).
    pub(super) fn named_live_holders(&self, id: InstanceId) -> Vec<BackupHolder> {
        self.live_holders(id)
            .into_iter()
            .map(|w| self.holder_at(w))
            .collect()
    }

    /// Gets the splits of `splitting` ready to be restored: the live ones
    /// staged and stopped (steps 1 and 2; `started`: when the rescaling
    /// began), a fresh checkpoint of each other one (the whole-checkpoint
    /// split's step 1). `None` when a failure came meanwhile: every split
    /// is then called off, so that the recovery comes first.
    pub(super) fn ready_to_split(
        &mut self,
        splitting: Vec<Splitting>,
        started: Instant,
    ) -> Result<Option<ReadyToSplit>, EngineError> {
        let (staged, whole) = self.stage_splits(splitting)?;
        if self.failure_pending() {
            self.call_off_for_failure(staged, whole);
            return Ok(None);
        }
        let staged_ms = started.elapsed().as_millis() as u64;
        let stopping = Instant::now();
        let stopped = self.stop_staged(staged)?;
        let snapshots = self.snapshots_for_split(&whole)?;
        if self.failure_pending() {
            for s in stopped {
                self.call_off_staged(s.staged);
            }
            self.call_off_for_failure(Vec::new(), whole);
            return Ok(None);
        }
        Ok(Some(ReadyToSplit {
            stopped,
            whole,
            snapshots,
            staged_ms,
            stopping,
        }))
    }

    /// Step 1, no pause: for each backed-up instance with a live holder,
    /// asks the holder where to cut its backup, then has each part's
    /// worker stage its range from the holders. Returns the staged splits
    /// and those to make the whole-checkpoint way (stateless, no holder,
    /// or staging failed).
    fn stage_splits(
        &mut self,
        splitting: Vec<Splitting>,
    ) -> Result<(Vec<StagedSplit>, Vec<Splitting>), EngineError> {
        let mut classic = Vec::new();
        let mut asked: HashMap<InstanceId, (WorkerId, Splitting)> = HashMap::new();
        for s in splitting {
            let id = s.placed.id;
            let cut = ToWorker::CutBackup {
                instance: id,
                parts: s.targets.len() + 1,
            };
            let holder = self
                .live_holders(id)
                .first()
                .copied()
                .filter(|_| self.backed_up(s.node));
            match holder {
                Some(h) if self.send(h, &cut).is_ok() => {
                    asked.insert(id, (h, s));
                }
                _ => classic.push(s),
            }
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        let mut cut = Vec::new();
        while !asked.is_empty() {
            let answer = self.wait_for("cuts for a live split", deadline, |m| {
                matches!(m, ToCoordinator::Cuts { instance, .. } if asked.contains_key(instance))
            });
            match answer {
                Ok(Some((
                    w,
                    ToCoordinator::Cuts {
                        instance, parts, ..
                    },
                ))) => {
                    if asked.get(&instance).is_some_and(|(h, _)| *h == w) {
                        if let Some((_, s)) = asked.remove(&instance) {
                            if parts.len() == s.targets.len() + 1 {
                                cut.push((s, parts));
                            } else {
                                classic.push(s);
                            }
                        }
                    }
                }
                Ok(Some((w, other))) => self.unexpected(w, other)?,
                Ok(None) => {
                    let gone: Vec<InstanceId> = asked
                        .iter()
                        .filter(|(_, (h, _))| !self.alive(*h) || self.failure_pending())
                        .map(|(id, _)| *id)
                        .collect();
                    classic.extend(gone.iter().filter_map(|id| asked.remove(id)).map(|a| a.1));
                }
                Err(EngineError::Timeout(_)) => classic.extend(asked.drain().map(|(_, a)| a.1)),
                Err(e) => return Err(e),
            }
        }
        let (staged, failed) = self.stage_parts(cut)?;
        classic.extend(failed);
        Ok((staged, classic))
    }

    /// Has each part's worker stage its range; the splits all of whose
    /// parts were staged, and the others (their staged parts dropped).
    fn stage_parts(
        &mut self,
        cut: Vec<(Splitting, Vec<(KeyRange, usize)>)>,
    ) -> Result<(Vec<StagedSplit>, Vec<Splitting>), EngineError> {
        let asks: Vec<(WorkerId, InstanceId, KeyRange, Option<StagedJoin>)> = cut
            .iter()
            .flat_map(|(s, parts)| {
                parts
                    .iter()
                    .enumerate()
                    .map(|(i, (range, _))| (part_worker(s, i), s.placed.id, *range, None))
            })
            .collect();
        let (staged_at, failed) = self.stage_ranges(&asks, "a live split's staging")?;
        let mut staged = Vec::new();
        let mut classic = Vec::new();
        for (s, parts) in cut {
            let id = s.placed.id;
            if failed.contains(&id) || !self.runs(id, s.placed.incarnation, s.placed.worker) {
                self.unstage(&s, parts.len());
                classic.push(s);
                continue;
            }
            let at = parts.iter().map(|(r, _)| staged_at[&(id, *r)].0).collect();
            staged.push(StagedSplit {
                splitting: s,
                parts,
                staged_at: at,
            });
        }
        Ok((staged, classic))
    }

    /// Has each worker of `asks` (worker, instance, range, merge) stage
    /// that range of the instance's backup from the instance's live
    /// holders, while it runs, joined with a merge's other partition
    /// (`what`: the rescaling, for the log). Returns the frontier each
    /// range was staged at with its keys, and the instances one of whose
    /// ranges was not.
    pub(super) fn stage_ranges(
        &mut self,
        asks: &[(WorkerId, InstanceId, KeyRange, Option<StagedJoin>)],
        what: &str,
    ) -> Result<(StagedRanges, HashSet<InstanceId>), EngineError> {
        let mut waiting: HashMap<(InstanceId, KeyRange), WorkerId> = HashMap::new();
        let mut failed: HashSet<InstanceId> = HashSet::new();
        for &(worker, id, range, merge) in asks {
            let holders = self.named_live_holders(id);
            let stage = ToWorker::Stage {
                instance: id,
                range,
                holders,
                merge,
            };
            match self.send(worker, &stage) {
                Ok(()) => {
                    waiting.insert((id, range), worker);
                }
                Err(_) => {
                    failed.insert(id);
                }
            }
        }
        let mut staged_at = StagedRanges::new();
        let deadline = Instant::now() + self.config.startup_timeout;
        while !waiting.is_empty() {
            let answer = self.wait_for(what, deadline, |m| {
                matches!(m, ToCoordinator::Staged { instance, range, .. }
                    if waiting.contains_key(&(*instance, *range)))
            });
            match answer {
                Ok(Some((
                    w,
                    ToCoordinator::Staged {
                        instance,
                        range,
                        frontier,
                        keys,
                        reason,
                    },
                ))) => {
                    if waiting.get(&(instance, range)) != Some(&w) {
                        continue;
                    }
                    waiting.remove(&(instance, range));
                    match frontier {
                        Some(at) => {
                            staged_at.insert((instance, range), (at, keys));
                        }
                        None => {
                            tracing::warn!(%instance, worker = %w, "cannot stage {range:?}: {reason}");
                            failed.insert(instance);
                        }
                    }
                }
                Ok(Some((w, other))) => self.unexpected(w, other)?,
                Ok(None) => {
                    let gone: Vec<(InstanceId, KeyRange)> = waiting
                        .iter()
                        .filter(|(_, w)| !self.alive(**w) || self.failure_pending())
                        .map(|(key, _)| *key)
                        .collect();
                    for key in gone {
                        waiting.remove(&key);
                        failed.insert(key.0);
                    }
                }
                Err(EngineError::Timeout(_)) => {
                    failed.extend(waiting.drain().map(|((id, _), _)| id));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((staged_at, failed))
    }

    /// Calls off the splits of a rescaling that a failure interrupted
    /// while they staged (none stopped yet): the failure is recovered
    /// first, and a policy that still wants them decides again after it.
    fn call_off_for_failure(&mut self, staged: Vec<StagedSplit>, splitting: Vec<Splitting>) {
        for s in &staged {
            self.unstage(&s.splitting, s.parts.len());
        }
        for s in staged.iter().map(|s| &s.splitting).chain(&splitting) {
            self.return_targets(s);
            self.retry_requested(s);
            self.refuse(
                Refused::ScaleOut,
                format!("scale {}: {CALLED_OFF}", s.operator),
            );
        }
    }

    /// Makes split `s`, called off for a failure, again after the
    /// recovery if it was requested.
    fn retry_requested(&mut self, s: &Splitting) {
        if s.requested() {
            self.request(ScaleDirection::Out, s.operator.as_str());
        }
    }

    /// Gives the live pool workers reserved for split `s` back, first in
    /// line again.
    pub(super) fn return_targets(&mut self, s: &Splitting) {
        for w in s.targets.iter().rev() {
            if self.alive(*w) {
                self.pool.push_front(*w);
            }
        }
    }

    /// Drops what the `parts` workers of split `s` staged.
    fn unstage(&mut self, s: &Splitting, parts: usize) {
        for i in 0..parts {
            let worker = part_worker(s, i);
            if self.alive(worker) {
                // Best effort: a staged part left behind is memory, not data.
                let _ = self.send(
                    worker,
                    &ToWorker::Unstage {
                        instance: s.placed.id,
                    },
                );
            }
        }
    }

    /// Step 2, the stop: pauses each staged split's instance, runs it to
    /// exactly where it paused, and waits for its checkpoint there at a
    /// holder. A split whose instance fails, finishes or takes no
    /// checkpoint in time is called off (its instance resumes, its pool
    /// workers go back, its staged parts are dropped).
    fn stop_staged(&mut self, staged: Vec<StagedSplit>) -> Result<Vec<StoppedSplit>, EngineError> {
        let mut paused: HashMap<InstanceId, Option<Stamp>> = HashMap::new();
        for s in &staged {
            let p = &s.splitting.placed;
            if self
                .send(p.worker, &ToWorker::Pause { instance: p.id })
                .is_ok()
            {
                paused.insert(p.id, None);
            }
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        while paused.values().any(Option::is_none) {
            let answer = self.wait_for("a pause for a live split", deadline, |m| {
                matches!(m, ToCoordinator::Paused { instance, incarnation, .. }
                    if staged.iter().any(|s| s.splitting.placed.id == *instance
                        && s.splitting.placed.incarnation == *incarnation))
            });
            match answer {
                Ok(Some((_, ToCoordinator::Paused { instance, done, .. }))) => {
                    paused.insert(instance, Some(done));
                }
                Ok(Some((w, other))) => self.unexpected(w, other)?,
                Ok(None) => {
                    let running: Vec<InstanceId> = staged
                        .iter()
                        .map(|s| &s.splitting.placed)
                        .filter(|p| self.runs(p.id, p.incarnation, p.worker))
                        .map(|p| p.id)
                        .collect();
                    paused.retain(|id, _| running.contains(id));
                }
                Err(EngineError::Timeout(_)) => paused.retain(|_, done| done.is_some()),
                Err(e) => return Err(e),
            }
        }
        let mut waiting = HashMap::new();
        let mut stops: HashMap<InstanceId, Stamp> = HashMap::new();
        for s in &staged {
            let p = &s.splitting.placed;
            let Some(Some(done)) = paused.get(&p.id).copied() else {
                continue;
            };
            let resume = ToWorker::Resume {
                instance: p.id,
                until: done,
            };
            if !done.is_end() && self.send(p.worker, &resume).is_ok() {
                waiting.insert(p.id, (p.incarnation, p.worker));
                stops.insert(p.id, done);
            }
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        let stored = self.await_backups(
            "a live split's last checkpoint",
            waiting,
            deadline,
            |id, at| stops.get(&id) == Some(&at),
        )?;
        let mut stopped = Vec::new();
        for s in staged {
            let id = s.splitting.placed.id;
            let holders = stored
                .get(&id)
                .map(|at| self.backups.holders_at(id, *at))
                .unwrap_or_default();
            match stored.get(&id) {
                Some(frontier) if !holders.is_empty() => stopped.push(StoppedSplit {
                    frontier: *frontier,
                    holders,
                    staged: s,
                }),
                _ => self.call_off_staged(s),
            }
        }
        Ok(stopped)
    }

    /// Calls a staged split off: its instance runs on, its pool workers
    /// go back, its staged parts are dropped. With a failure pending, that
    /// is why, and a requested split is made again after the recovery.
    pub(super) fn call_off_staged(&mut self, s: StagedSplit) {
        self.resume_if_alive(&s.splitting.placed, "a split");
        self.unstage(&s.splitting, s.parts.len());
        self.return_targets(&s.splitting);
        let why = if self.failure_pending() {
            self.retry_requested(&s.splitting);
            CALLED_OFF
        } else {
            "could not be stopped for its split (it failed, finished or took no checkpoint in time)"
        };
        self.refuse(
            Refused::ScaleOut,
            format!(
                "scale {}: instance {} {why}",
                s.splitting.operator, s.splitting.placed.id
            ),
        );
    }

    /// Steps 3 and 4 of a live split, but the restores and the plan
    /// update (made once for every split): each part restores from what
    /// its worker staged, caught up from the holders at the instance's
    /// stop; the holders become each part's route, and will cut its
    /// backup from the instance's ([`Job::reshape_backups`]).
    pub(super) fn place_staged(
        &mut self,
        stopped: StoppedSplit,
        by_target: &mut RestoresByTarget,
        added: &mut Vec<AddedInstance>,
    ) -> (Placed, Reshaping) {
        let StoppedSplit {
            staged,
            frontier,
            holders,
        } = stopped;
        let s = &staged.splitting;
        let instance = s.placed.id;
        let named: Vec<BackupHolder> = holders.iter().map(|w| self.holder_at(*w)).collect();
        let route = self.backups.route(instance).to_vec();
        let mut new_ids = Vec::with_capacity(staged.parts.len() - 1);
        let mut reshaping = Reshaping {
            instance,
            frontier,
            parts: Vec::new(),
        };
        for (i, ((range, _), since)) in staged.parts.iter().zip(&staged.staged_at).enumerate() {
            let worker = part_worker(s, i);
            let id = if i == 0 {
                self.plan.reincarnate(instance, worker, *range);
                instance
            } else {
                let id = self.plan.add_instance(s.node, worker, *range).0;
                new_ids.push(id);
                added.push(AddedInstance {
                    id,
                    parent: instance,
                    frontier,
                });
                id
            };
            let eligible: Vec<WorkerId> = route
                .iter()
                .copied()
                .filter(|h| *h != worker && self.alive(*h))
                .collect();
            self.backups.reshaped_at_holders(id, frontier, eligible);
            let incarnation = self
                .plan
                .instance(id)
                .map_or(Incarnation::default(), |(_, p)| p.incarnation);
            reshaping.parts.push((id, incarnation));
            by_target.entry(worker).or_default().push((
                id,
                RestoreFrom::Staged(StagedSource {
                    parent: instance,
                    range: *range,
                    since: *since,
                    holders: named.clone(),
                }),
            ));
        }
        let placed = Placed {
            ranges: staged.parts.iter().map(|(r, _)| *r).collect(),
            keys: staged.parts.iter().map(|(_, k)| *k).collect(),
            new_ids,
            splitting: staged.splitting,
            staged: true,
        };
        (placed, reshaping)
    }

    /// Tells each holder of a live split's instance to cut the parts'
    /// backups (those whose route it is on) from the instance's, once
    /// every part has restored from it.
    pub(super) fn reshape_backups(&mut self, reshaping: &[Reshaping]) {
        for r in reshaping {
            let mut by_holder: HashMap<WorkerId, Vec<ReshapedPart>> = HashMap::new();
            for (id, incarnation) in &r.parts {
                let range = self.plan.instance(*id).map(|(_, p)| p.key_range);
                for h in self.backups.route(*id).to_vec() {
                    if let Some(range) = range {
                        by_holder.entry(h).or_default().push(ReshapedPart {
                            instance: *id,
                            incarnation: *incarnation,
                            range,
                        });
                    }
                }
            }
            for (holder, parts) in by_holder {
                let reshape = ToWorker::ReshapeBackup {
                    instance: r.instance,
                    frontier: r.frontier,
                    parts,
                };
                if let Err(e) = self.send(holder, &reshape) {
                    tracing::warn!(%holder, "cannot reshape a backup: {e}");
                }
            }
        }
    }

    /// Waits until a holder of each live split's part acknowledges its
    /// backup (the one cut for it, or a checkpoint of its own after a
    /// refusal): until then only the instance's backup at its holders
    /// protects the part, so no other reconfiguration may start.
    pub(super) fn await_part_backups(
        &mut self,
        reshaping: &[Reshaping],
    ) -> Result<(), EngineError> {
        let mut waiting: HashMap<InstanceId, (Incarnation, Stamp)> = reshaping
            .iter()
            .flat_map(|r| r.parts.iter().map(|(id, n)| (*id, (*n, r.frontier))))
            .collect();
        let deadline = Instant::now() + self.config.startup_timeout;
        while !waiting.is_empty() {
            let answer = self.wait_for("a live split's part backups", deadline, |m| {
                answers_backup_of(m, &waiting)
            });
            match answer {
                Ok(Some((holder, answer))) => {
                    let Some(ack) = self.take_backup_answer(holder, answer)? else {
                        continue;
                    };
                    let at = waiting.get(&ack.instance).map(|(_, at)| *at);
                    if at.is_some_and(|at| ack.frontier >= at)
                        && self.backups.holder(ack.instance).is_some()
                    {
                        waiting.remove(&ack.instance);
                    }
                }
                // The holders' cut does not need the part's worker: wait
                // while one of them lives.
                Ok(None) => {
                    waiting.retain(|id, _| self.backups.route(*id).iter().any(|h| self.alive(*h)))
                }
                Err(EngineError::Timeout(_)) => {
                    let late: Vec<String> = waiting.keys().map(|id| id.to_string()).collect();
                    tracing::warn!(
                        "no holder acknowledged the backup of split parts {} in time",
                        late.join(", ")
                    );
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
