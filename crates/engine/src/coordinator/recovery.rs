//! The recovery protocol: when workers fail,
//! 1. detect: a broken control connection, an exited process or missed
//!    heartbeats (gathering failures that happen together);
//! 2. choose where each failed instance's state comes from: a stateful
//!    instance's latest backup, which its new worker fetches from a live
//!    holder itself, so that the state moves once and never through the
//!    coordinator (the coordinator fetches it only to partition it for a
//!    parallel recovery, or when no holder is left and it kept a copy).
//!    A source or stateless instance restarts at its replay floor;
//! 3. restore the instances on a pool worker (or the least loaded live
//!    worker when the pool is empty), as a new incarnation; with a recovery
//!    parallelism k, a stateful instance is restored as k partitions of its
//!    checkpoint on k pool workers (a split folded into the recovery). A
//!    holder that cannot give a backup is passed over for the next copy;
//! 4. rewire: every worker reconnects to the moved instances, and upstreams
//!    replay their output buffers; downstreams drop duplicates by stamp;
//! 5. re-replicate: an instance that lost a holder (with the failed
//!    workers, or because it now runs on it) gets a copy of its backup sent
//!    from a surviving holder to its new one;
//! 6. refill the pool; each restored instance reports when it caught up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::plan::{AddedInstance, InstanceId, InstancePlan, Plan, WorkerId};
use crate::stamp::Stamp;
use crate::state::{Checkpoint, KeyRange};
use crate::wire::control::{RestoreFrom, ToCoordinator, ToWorker};

use super::events::{EventKind, FailureCause};
use super::suspects::Suspicion;
use super::{Job, RecoveryTimeline};

/// Per target worker, the instances it restores and where each one's state
/// comes from: what one round of restores sends.
pub(super) type RestoresByTarget = HashMap<WorkerId, Vec<(InstanceId, RestoreFrom)>>;

/// What a recovery restores where.
#[derive(Default)]
struct Restores {
    /// Per target worker, the instances it restores and their states.
    by_target: RestoresByTarget,
    /// Instances a parallel recovery added.
    added: Vec<AddedInstance>,
    /// `operator[index]` of everything restored, for the timeline.
    names: Vec<String>,
    /// Those of them restored from a standby.
    from_standby: Vec<String>,
}

impl Restores {
    /// Restores `id` on `worker` from `from` as a new incarnation over
    /// `range`.
    fn place(
        &mut self,
        plan: &mut Plan,
        id: InstanceId,
        worker: WorkerId,
        range: KeyRange,
        from: RestoreFrom,
    ) {
        plan.reincarnate(id, worker, range);
        self.by_target.entry(worker).or_default().push((id, from));
    }

    /// What the timeline says was restored where.
    fn describe(&self) -> String {
        let mut hosts: Vec<WorkerId> = self.by_target.keys().copied().collect();
        hosts.sort_unstable();
        let standbys = if self.from_standby.is_empty() {
            String::new()
        } else {
            format!(" ({} from a standby)", self.from_standby.join(", "))
        };
        format!("{} on workers {hosts:?}{standbys}", self.names.join(", "))
    }
}

/// Failures this close together are recovered as one: gathering ends
/// once no other came for [`GATHER_QUIET`], or after this at most.
const GATHER_FAILURES: Duration = Duration::from_millis(30);

/// A failure gathered waits this long for another before its recovery
/// starts (the processes of one machine end within a few milliseconds).
const GATHER_QUIET: Duration = Duration::from_millis(5);

impl Job<'_> {
    /// Recovers from the failures queued in `failing` (and from any that
    /// come with them). Runs from the main loop only: a failure during a
    /// reconfiguration is recovered once that reconfiguration is over.
    pub(super) fn recover(&mut self) -> Result<(), EngineError> {
        // 1. Detect, and gather failures that come together.
        let Some((workers, reason, detected_ms)) = self.gather_failures()? else {
            return Ok(());
        };
        let (degraded, bared) = self.backups.holders_failed(&workers);
        if !bared.is_empty() {
            tracing::warn!(
                ?bared,
                ?workers,
                "every copy of these instances' checkpoints was held by the failed workers: \
                 they are one failure from unrecoverable until their next checkpoint is stored"
            );
        }
        if self.config.pool > 0 {
            for _ in &workers {
                self.provisioner.provision()?;
            }
        }
        tracing::debug!(
            elapsed_ms = self.elapsed_ms(),
            "recovery: failures gathered, pool refill started"
        );
        let failed: Vec<InstanceId> = self
            .plan
            .instances()
            .filter(|(_, i)| workers.contains(&i.worker))
            .map(|(_, i)| i.id)
            .collect();
        if failed.is_empty() {
            // Instances that run on but lost a holder: their surviving copy
            // goes to their new holders.
            self.replicate(&degraded);
            return Ok(());
        }
        if self.config.checkpoint_interval.is_zero() {
            return Err(EngineError::WorkerFailed {
                worker: workers[0],
                reason: format!("{reason}; fault tolerance is off (checkpoint interval 0)"),
            });
        }
        // 2-3. Where each failed instance's state comes from, and where it
        // restores.
        let restores = self.plan_recovery(&workers, &failed, &reason)?;
        let restored = restores.describe();
        self.restore_on(restores.by_target, "a restore")?;
        let restored_ms = self.elapsed_ms();
        self.record(EventKind::Restored, restored);
        // 4. Rewire upstreams and downstreams; replay follows.
        let new_instances: Vec<InstanceId> = restores.added.iter().map(|a| a.id).collect();
        self.broadcast(&ToWorker::PlanUpdate {
            plan: self.plan.clone(),
            added: restores.added,
            merged: Vec::new(),
        });
        let rewired_ms = self.elapsed_ms();
        self.recoveries.push(RecoveryTimeline {
            workers,
            instances: restores.names,
            killed_ms: self.kill_before(detected_ms),
            detected_ms,
            restored_ms,
            rewired_ms,
            caught_up_ms: None,
        });
        // 5. Instances that lost a holder, or were restored on one, get
        // their copies back holder to holder.
        let mut replicate = degraded;
        replicate.extend(&failed);
        self.replicate(&replicate);
        self.awaiting_catch_up.extend(failed);
        self.awaiting_catch_up.extend(new_instances);
        Ok(())
    }

    /// Steps 2 and 3 of a recovery: where each failed instance's state
    /// comes from, and on which worker it restores (its standby's, else a
    /// replacement for its failed worker), with the plan updated to match.
    fn plan_recovery(
        &mut self,
        workers: &[WorkerId],
        failed: &[InstanceId],
        reason: &str,
    ) -> Result<Restores, EngineError> {
        let standbys = self.standbys_for(failed);
        let from_backups: Vec<InstanceId> = failed
            .iter()
            .copied()
            .filter(|id| !standbys.contains_key(id))
            .collect();
        let replaced: Vec<WorkerId> = workers
            .iter()
            .copied()
            .filter(|w| {
                from_backups
                    .iter()
                    .any(|id| self.plan.instance(*id).is_some_and(|(_, p)| p.worker == *w))
            })
            .collect();
        let targets = self.replacements(&replaced, reason)?;
        let sources = self.restore_sources(&from_backups)?;
        tracing::debug!(elapsed_ms = self.elapsed_ms(), "recovery: sources chosen");
        let mut restores = self.plan_restores(sources, &targets)?;
        for (id, (worker, from)) in standbys {
            if let Some((node, placed)) = self.plan.instance(id).map(|(n, p)| (n, p.clone())) {
                let name = self.instance_name(node, placed.index);
                restores.names.push(name.clone());
                restores.from_standby.push(name);
                restores.place(&mut self.plan, id, worker, placed.key_range, from);
            }
        }
        tracing::debug!(elapsed_ms = self.elapsed_ms(), "recovery: restores planned");
        Ok(restores)
    }

    /// The failures queued and those that come with them: the failed
    /// workers, the first one's reason and when it was detected (none
    /// queued: `None`). Records the failure.
    fn gather_failures(&mut self) -> Result<Option<(Vec<WorkerId>, String, u64)>, EngineError> {
        let started = Instant::now();
        let mut quiet_until = started + GATHER_QUIET;
        while let Some(event) = self
            .links
            .next_event(quiet_until.min(started + GATHER_FAILURES))?
        {
            let failures = self.failing.len();
            self.absorb(event)?;
            if self.failing.len() > failures {
                quiet_until = Instant::now() + GATHER_QUIET;
            }
        }
        let failing = std::mem::take(&mut self.failing);
        let Some(first) = failing.first() else {
            return Ok(None);
        };
        let (reason, cause, detected_ms) = (first.reason.clone(), first.cause, first.detected_ms);
        let workers: Vec<WorkerId> = failing.iter().map(|f| f.worker).collect();
        self.record_about(
            EventKind::Failure,
            format!("workers {workers:?} failed: {reason}"),
            workers.clone(),
            Some(cause),
        );
        Ok(Some((workers, reason, detected_ms)))
    }

    /// When the latest injected kill at or before `detected_ms` fired.
    fn kill_before(&self, detected_ms: u64) -> Option<u64> {
        self.timeline
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Kill && e.at_ms <= detected_ms)
            .map(|e| e.at_ms)
    }

    /// A worker to restore on for each failed one: a pool worker, else the
    /// least loaded live worker.
    fn replacements(
        &mut self,
        failed: &[WorkerId],
        reason: &str,
    ) -> Result<HashMap<WorkerId, WorkerId>, EngineError> {
        let mut targets = HashMap::new();
        for &w in failed {
            let target = match self.pool_worker_away_from(w) {
                Some(p) => p,
                None => self
                    .least_loaded_worker()
                    .ok_or_else(|| EngineError::WorkerFailed {
                        worker: w,
                        reason: format!("{reason}; no live worker is left to recover on"),
                    })?,
            };
            targets.insert(w, target);
        }
        Ok(targets)
    }

    /// Takes a pool worker for `failed`'s instances: one on the least
    /// suspect host (the address part of a worker's data address; see
    /// `coordinator::suspects`), another host than `failed`'s first among
    /// equals, the longest waiting first after that.
    fn pool_worker_away_from(&mut self, failed: WorkerId) -> Option<WorkerId> {
        let failed_host = self.host_of(failed);
        let (away, _) = self
            .pool
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| (self.suspicion(**p), self.host_of(**p) == failed_host))?;
        self.pool.remove(away)
    }

    /// How suspect `w`'s host is now.
    pub(super) fn suspicion(&self, w: WorkerId) -> Suspicion {
        self.suspects.of(&self.host_of(w), Instant::now())
    }

    /// `w`'s host gave reason `level` for suspicion just now.
    pub(super) fn suspect_host_of(&mut self, w: WorkerId, level: Suspicion) {
        let host = self.host_of(w);
        self.suspects.mark(host, level, Instant::now());
    }

    /// Moves each failed instance to its replacement worker in the plan (as
    /// several partitions with a recovery parallelism above 1) and says what
    /// each target restores.
    fn plan_restores(
        &mut self,
        sources: Vec<(InstanceId, RestoreFrom)>,
        targets: &HashMap<WorkerId, WorkerId>,
    ) -> Result<Restores, EngineError> {
        let mut restores = Restores::default();
        for (id, from) in sources {
            let Some((node, placed)) = self.plan.instance(id).map(|(n, p)| (n, p.clone())) else {
                continue;
            };
            restores.names.push(self.instance_name(node, placed.index));
            let target = targets[&placed.worker];
            let (range, from) = match from {
                RestoreFrom::Checkpoint(encoded) if self.parallel_recovery(node) => {
                    self.split_restore(node, id, &placed, &encoded, &mut restores)?
                }
                other => (placed.key_range, other),
            };
            restores.place(&mut self.plan, id, target, range, from);
        }
        Ok(restores)
    }

    /// `operator[index]`, as timelines name an instance.
    fn instance_name(&self, node: usize, index: u32) -> String {
        format!("{}[{index}]", self.plan.nodes[node].name)
    }

    /// The failed instances that restore on their standbys' workers
    /// (those restored whole: a parallel recovery partitions instead), and
    /// from what.
    fn standbys_for(
        &mut self,
        failed: &[InstanceId],
    ) -> HashMap<InstanceId, (WorkerId, RestoreFrom)> {
        let whole: Vec<InstanceId> = failed
            .iter()
            .copied()
            .filter(|id| {
                self.plan
                    .instance(*id)
                    .is_some_and(|(node, _)| !self.parallel_recovery(node))
            })
            .collect();
        whole
            .into_iter()
            .filter_map(|id| self.take_standby(id).map(|s| (id, s)))
            .collect()
    }

    /// Whether a failed instance of `node` is restored as several
    /// partitions: a recovery parallelism above 1, a splittable operator and
    /// enough pool workers.
    fn parallel_recovery(&self, node: usize) -> bool {
        let k = self.config.recovery_parallelism.max(1);
        let splittable = matches!(
            self.query.kind(node),
            NodeKind::Stateful | NodeKind::Stateless
        );
        k > 1 && splittable && self.pool.len() + 1 >= k as usize
    }

    /// Parallel recovery: partitions `encoded` k ways, exactly as a split
    /// would; the first part restores in place of the instance (its range
    /// and checkpoint are returned), the others as new instances on pool
    /// workers.
    fn split_restore(
        &mut self,
        node: usize,
        id: InstanceId,
        placed: &InstancePlan,
        encoded: &[u8],
        restores: &mut Restores,
    ) -> Result<(KeyRange, RestoreFrom), EngineError> {
        let k = self.config.recovery_parallelism.max(1);
        let checkpoint = Checkpoint::decode(encoded)?;
        let ranges = placed.key_range.split_even(k);
        let parts = checkpoint.partition(&ranges)?;
        let first = parts[0].encode()?;
        self.backups
            .reshaped(id, (checkpoint.frontier, first.clone()));
        for (part, part_range) in parts.iter().zip(&ranges).skip(1) {
            let worker = self.pool.pop_front().ok_or_else(|| {
                EngineError::Protocol("the pool emptied during a recovery".into())
            })?;
            let (new_id, index) = self.plan.add_instance(node, worker, *part_range);
            let encoded = part.encode()?;
            self.backups
                .reshaped(new_id, (checkpoint.frontier, encoded.clone()));
            restores
                .by_target
                .entry(worker)
                .or_default()
                .push((new_id, RestoreFrom::Checkpoint(encoded.into())));
            restores.added.push(AddedInstance {
                id: new_id,
                parent: id,
                frontier: checkpoint.frontier,
            });
            restores.names.push(self.instance_name(node, index));
        }
        Ok((ranges[0], RestoreFrom::Checkpoint(first.into())))
    }

    /// Where each failed instance's state comes from. A backed-up one
    /// restores from its latest backup: fetched by its new worker from a
    /// live holder, or, to be partitioned (parallel recovery) or with no
    /// live copy, by the coordinator, which keeps it until the instance's
    /// holders have a copy again (none: it never completed a backup and
    /// restarts from the beginning, which its upstreams can replay since
    /// they never trimmed for it). The others restart at their restart
    /// points.
    fn restore_sources(
        &mut self,
        failed: &[InstanceId],
    ) -> Result<Vec<(InstanceId, RestoreFrom)>, EngineError> {
        let mut sources = Vec::new();
        let mut via_coordinator = Vec::new();
        for &id in failed {
            let Some((node, _)) = self.plan.instance(id) else {
                continue;
            };
            if !self.backed_up(node) {
                sources.push((id, encoded_or_nothing(self.restart_point(id)?)));
                continue;
            }
            let direct = !self.parallel_recovery(node);
            match direct.then(|| self.live_holder(id)).flatten() {
                Some(holder) => sources.push((id, RestoreFrom::Holder(self.holder_at(holder)))),
                None => via_coordinator.push(id),
            }
        }
        let mut fetched = self.fetch_backups(&via_coordinator)?;
        self.keep_until_copied(&fetched);
        sources.extend(via_coordinator.into_iter().map(|id| {
            let state = fetched.remove(&id).flatten();
            (id, encoded_or_nothing(state.map(|(_, bytes)| bytes)))
        }));
        Ok(sources)
    }

    /// The live holder of `id`'s newest copy. Among holders of copies as
    /// new, the one with the latest news from a host other than its own: a
    /// holder cut off from its peers (whose heartbeats may still come)
    /// holds the restoring worker up for a connect timeout, by when the
    /// other holder may be gone too.
    fn live_holder(&self, id: InstanceId) -> Option<WorkerId> {
        let live: Vec<(WorkerId, Stamp)> = self
            .backups
            .copies_by_recency(id)
            .into_iter()
            .filter(|(h, _)| self.alive(*h))
            .collect();
        let newest = live.first()?.1;
        // The first among equals, as the copies are ordered, on a tie.
        live.into_iter()
            .filter(|(_, at)| *at == newest)
            .rev()
            .max_by_key(|(h, _)| self.latest_news_from_peers(*h))
            .map(|(h, _)| h)
    }

    /// When `w` last heard from a host other than its own.
    fn latest_news_from_peers(&self, w: WorkerId) -> Option<Instant> {
        let own = self.host_of(w);
        self.links
            .heard(w)
            .into_iter()
            .filter(|(host, _)| *host != own)
            .map(|(_, at)| at)
            .max()
    }

    /// Where `id` restores from now that its holder `holder` could not
    /// give its backup to the restoring worker. A holder that still lives
    /// may only be out of that worker's reach (a cut between them), so
    /// the coordinator fetches the backup itself, from the newest live
    /// copy on, and passes it on: a copy counts as lost only when its
    /// holder died or has no good one. With `holder` dead, the next live
    /// copy, else what the coordinator keeps of it.
    fn next_source(
        &mut self,
        id: InstanceId,
        holder: WorkerId,
    ) -> Result<RestoreFrom, EngineError> {
        if self.alive(holder) {
            let mut fetched = self.fetch_backups(&[id])?;
            let state = fetched.remove(&id).flatten();
            return Ok(encoded_or_nothing(state.map(|(_, bytes)| bytes)));
        }
        self.backups.holder_lost(id, holder);
        if let Some(next) = self.live_holder(id) {
            return Ok(RestoreFrom::Holder(self.holder_at(next)));
        }
        let state = self.backups.fallback(id)?;
        Ok(encoded_or_nothing(state.map(|(_, bytes)| bytes)))
    }

    /// Sends each target worker its instances to restore and waits until all
    /// run (shared by recovery and scale out). A target that fails meanwhile
    /// is not waited for: its instances are recovered next, like any other.
    pub(super) fn restore_on(
        &mut self,
        by_target: RestoresByTarget,
        what: &str,
    ) -> Result<(), EngineError> {
        // Instance -> the worker restoring it.
        let mut waiting: HashMap<InstanceId, WorkerId> = HashMap::new();
        for (target, instances) in by_target {
            let ids: Vec<InstanceId> = instances.iter().map(|(id, _)| *id).collect();
            let message = ToWorker::Restore {
                instances,
                plan: self.plan.clone(),
            };
            match self.send(target, &message) {
                Ok(()) => waiting.extend(ids.into_iter().map(|id| (id, target))),
                Err(e) => self.lose(
                    target,
                    FailureCause::Connection,
                    format!("cannot send it {what}: {e}"),
                ),
            }
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        while !waiting.is_empty() {
            match self.wait_for(what, deadline, |m| match m {
                ToCoordinator::Restored { instance }
                | ToCoordinator::RestoreUnavailable { instance, .. } => {
                    waiting.contains_key(instance)
                }
                ToCoordinator::InstanceFailed { .. } => true,
                _ => false,
            })? {
                Some((_, ToCoordinator::Restored { instance })) => {
                    waiting.remove(&instance);
                }
                Some((
                    target,
                    ToCoordinator::RestoreUnavailable {
                        instance,
                        holder,
                        reason,
                    },
                )) => {
                    if waiting.get(&instance) != Some(&target) {
                        continue;
                    }
                    tracing::warn!(%instance, %holder, "restoring from the next copy: {reason}");
                    let from = self.next_source(instance, holder)?;
                    let message = ToWorker::Restore {
                        instances: vec![(instance, from)],
                        plan: self.plan.clone(),
                    };
                    if let Err(e) = self.send(target, &message) {
                        self.lose(
                            target,
                            FailureCause::Connection,
                            format!("cannot send it {what}: {e}"),
                        );
                    }
                }
                Some((w, other)) => self.unexpected(w, other)?,
                None => waiting.retain(|_, target| self.workers[target.index()].alive),
            }
        }
        Ok(())
    }

    /// Waits for a message `want` accepts, deferring everything else until
    /// the reconfiguration is over. `None`: a worker failed meanwhile; the
    /// caller checks whether what it waits for can still come.
    pub(super) fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        want: impl Fn(&ToCoordinator) -> bool,
    ) -> Result<Option<(WorkerId, ToCoordinator)>, EngineError> {
        let mut deferred = Vec::new();
        let result = loop {
            match self.wait(what, deadline) {
                Ok(Some((w, message))) if want(&message) => break Ok(Some((w, message))),
                Ok(Some(other)) => deferred.push(other),
                Ok(None) => break Ok(None),
                Err(e) => break Err(e),
            }
        };
        for item in deferred.into_iter().rev() {
            self.deferred.push_front(item);
        }
        result
    }

    fn least_loaded_worker(&self) -> Option<WorkerId> {
        let mut load: HashMap<WorkerId, usize> = HashMap::new();
        for (_, i) in self.plan.instances() {
            *load.entry(i.worker).or_default() += 1;
        }
        self.live_workers()
            .into_iter()
            .min_by_key(|w| load.get(w).copied().unwrap_or(0))
    }

    /// Step 5: a restored instance worked off its backlog.
    pub(super) fn caught_up(&mut self, instance: InstanceId) {
        self.awaiting_catch_up.remove(&instance);
        if self.awaiting_catch_up.is_empty() {
            let now = self.elapsed_ms();
            if let Some(last) = self
                .recoveries
                .last_mut()
                .filter(|r| r.caught_up_ms.is_none())
            {
                last.caught_up_ms = Some(now);
                let detail = format!("recovery of {:?} caught up", last.instances);
                self.record(EventKind::CaughtUp, detail);
            }
        }
    }
}

/// A restore from `encoded`, or from nothing.
fn encoded_or_nothing(encoded: Option<Vec<u8>>) -> RestoreFrom {
    encoded.map_or(RestoreFrom::Nothing, |bytes| {
        RestoreFrom::Checkpoint(bytes.into())
    })
}
