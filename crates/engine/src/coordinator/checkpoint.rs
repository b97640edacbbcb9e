//! The checkpoint protocol, coordinator side. The coordinator is off the
//! data path: it routes, and keeps what holders acknowledge.
//! 1. the coordinator routes each stateful instance's checkpoints to its
//!    holders ([`choose_holders`]): up to `JobConfig::backup_copies` (two
//!    by default) workers other than its own,
//!    on other hosts first, then on hosts not lately suspect, then
//!    workers hosting its upstreams, each pick
//!    a stable hash of the instance. A route changes only when a holder
//!    dies or comes to host the instance;
//! 2. an instance checkpoints (every interval), in full or incrementally
//!    (the keys changed since its previous one), and its worker ships the
//!    checkpoint to each holder directly (`worker::backup`). A holder that
//!    cannot join an increment to what it holds (a new holder) refuses it,
//!    and the instance checkpoints in full next;
//! 3. when a holder acknowledges, the coordinator records its copy; once
//!    every holder of the route has a copy at or above a frontier, the
//!    upstreams are told to trim their output buffers up to it. Any
//!    recorded copy can then be restored, so a failure taking an instance
//!    and one holder together leaves the other.
//!
//! To repartition (a split, a merge) or restore an instance, the
//! coordinator fetches its backup from a holder, the newest copy first.
//!
//! Only stateful operators and sinks are backed up this way. Sources and
//! stateless operators keep no backups of their outputs (nor, for stateless
//! ones, of anything): after a failure they regenerate the outputs their
//! downstreams may still need, which are those above their *replay floor*,
//! the lowest frontier any of their downstreams has backed up. So:
//! - their upstreams trim up to that floor (raised as backups complete);
//! - a failed stateless instance restarts empty at its floor and its
//!   upstreams replay what is above;
//! - a source checkpoints its input position only (a few bytes, kept here),
//!   and restarts from its latest position at or below its floor.
//!
//! Checkpoints then carry operator state and the outputs of stateful
//! operators only, never the raw input: that is most of what they cost.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::ids::{Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::{Checkpoint, CheckpointParts, OutputBuffer};
use crate::wire::control::{
    BackupAck, BackupHolder, BackupRoute, Refusal, ToCoordinator, ToWorker,
};

use super::backups::choose_holders;
use super::events::Refused;
use super::{Job, LinkEvent};

/// Whole backups fetched from holders, by instance: each with its frontier,
/// or `None` for an instance that never checkpointed.
pub(super) type Fetched = HashMap<InstanceId, Option<(Stamp, Vec<u8>)>>;

/// How long the coordinator waits for a worker about to be fenced to hand
/// over the last copies it holds (`Job::salvage_last_copies`): the stall
/// decision, and so the recovery, waits that much longer at most.
const SALVAGE_WAIT: Duration = Duration::from_secs(1);

/// A backup a holder sent, with its frontier, if it is whole and sound.
fn good_backup(bytes: Option<Vec<u8>>) -> Option<(Stamp, Vec<u8>)> {
    bytes
        .filter(|b| Checkpoint::verify(b).is_ok())
        .and_then(|b| Checkpoint::frontier(&b).ok().map(|frontier| (frontier, b)))
}

impl Job<'_> {
    /// A source's position checkpoint arrived from its current
    /// incarnation (stateful instances' checkpoints go to their holders).
    pub(super) fn checkpointed(
        &mut self,
        instance: InstanceId,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) -> Result<(), EngineError> {
        let Some((node, _)) = self.plan.instance(instance) else {
            return Ok(());
        };
        if self.query.kind(node) != NodeKind::Source {
            return Err(EngineError::Protocol(format!(
                "instance {instance} sent its checkpoint to the coordinator, not to its holders; run the same spate build everywhere"
            )));
        }
        if let Err(e) = Checkpoint::verify(&bytes) {
            self.refuse(
                Refused::Checkpoint,
                format!(
                    "checkpoint of instance {instance} at stamp {}: {e}; its previous checkpoint stays the one to restore",
                    frontier.0
                ),
            );
            return Ok(());
        }
        self.backups.add_position(instance, frontier, bytes);
        self.checkpoints += 1;
        self.raise_floors();
        Ok(())
    }

    /// Step 1: routes every backed-up instance whose holders changed (a
    /// new instance, a holder that died or now hosts it), and tells each
    /// instance's worker; former holders drop their void copies.
    pub(super) fn refresh_routes(&mut self) {
        let live = self.live_workers();
        let mut changed: HashMap<WorkerId, Vec<BackupRoute>> = HashMap::new();
        let backed_up: Vec<(usize, InstanceId, WorkerId, Incarnation)> = self
            .plan
            .instances()
            .filter(|(node, _)| self.backed_up(*node))
            .map(|(node, p)| (node, p.id, p.worker, p.incarnation))
            .collect();
        for (node, id, own, incarnation) in backed_up {
            let upstream_hosts: Vec<WorkerId> = self
                .plan
                .upstream_instances(&self.query, node)
                .into_iter()
                .filter_map(|up| self.plan.instance(up).map(|(_, p)| p.worker))
                .collect();
            let holders = choose_holders(
                id,
                own,
                self.backups.route(id),
                &upstream_hosts,
                &live,
                self.config.backup_copies,
                |w| self.host_of(w),
                |w| self.suspicion(w),
            );
            if holders.is_empty() && self.backups.route(id).is_empty() {
                continue;
            }
            if self
                .backups
                .set_route(id, (own, incarnation), holders.clone())
            {
                tracing::debug!(%id, worker = %own, ?holders, "backup route");
                let holders = holders.into_iter().map(|w| self.holder_at(w)).collect();
                changed.entry(own).or_default().push(BackupRoute {
                    instance: id,
                    holders,
                });
            }
        }
        for (worker, routes) in changed {
            if let Err(e) = self.send(worker, &ToWorker::BackupRoutes { routes }) {
                // It is failing: its instances are recovered and routed anew.
                tracing::warn!(%worker, "cannot send backup routes: {e}");
            }
        }
        for (holder, instance) in self.backups.take_void() {
            if self.alive(holder) {
                // Best effort: a copy kept by mistake is memory, not data.
                let _ = self.send(holder, &ToWorker::DropBackup { instance });
            }
        }
    }

    /// A hash of what routes depend on (where each instance runs, its
    /// incarnation, which workers live): when it changes, routes may.
    pub(super) fn routing_fingerprint(&self) -> u64 {
        let mut hasher = rustc_hash::FxHasher::default();
        for (_, p) in self.plan.instances() {
            (p.id, p.worker, p.incarnation).hash(&mut hasher);
        }
        self.live_workers().hash(&mut hasher);
        hasher.finish()
    }

    /// Step 3: `holder` holds a backup (`ack`); upstreams may trim if
    /// every holder now has it.
    pub(super) fn backup_stored(&mut self, holder: WorkerId, ack: BackupAck) {
        let BackupAck {
            instance,
            incarnation,
            frontier,
            arrived_bytes,
            held_bytes,
        } = ack;
        if !self.alive(holder) {
            return;
        }
        if self.plan.instance(instance).map(|(_, p)| p.incarnation) != Some(incarnation) {
            // A backup of a replaced incarnation (e.g. the whole range of an
            // instance since split) must never be restored.
            return;
        }
        self.checkpoints += 1;
        let sizes = (arrived_bytes, held_bytes);
        let Some(trim_to) = self.backups.stored(instance, holder, frontier, sizes) else {
            return;
        };
        self.broadcast(&ToWorker::Trim {
            downstream: instance,
            frontier: trim_to,
        });
        self.raise_floors();
    }

    /// A holder refused `instance`'s checkpoint: corrupt on the way (an
    /// event for the user), or an increment on a checkpoint it lacks (a
    /// new holder: routine). Either way the instance checkpoints in full
    /// next; a replaced incarnation's is nobody's concern.
    pub(super) fn backup_refused(
        &mut self,
        holder: WorkerId,
        instance: InstanceId,
        refusal: Refusal,
        reason: &str,
    ) {
        match refusal {
            Refusal::Replaced => return,
            Refusal::Corrupt => self.refuse(
                Refused::Backup,
                format!("backup of instance {instance} on worker {holder}: {reason}; its previous checkpoint stays the one to restore, and it checkpoints in full next"),
            ),
            Refusal::NotItsBase => {
                tracing::debug!(%instance, %holder, "backup refused: {reason}; asking for a full checkpoint");
            }
        }
        if let Some((_, placed)) = self.plan.instance(instance) {
            let worker = placed.worker;
            if let Err(e) = self.send(worker, &ToWorker::CheckpointFull { instance }) {
                tracing::warn!(%instance, "cannot ask for a full checkpoint: {e}");
            }
        }
    }

    /// Waits until each of `waiting` (an instance, its incarnation and its
    /// worker) has a backup acknowledged that `wanted` accepts (given its
    /// frontier), or `deadline` passes, or any worker is declared failed
    /// (one of these, acknowledged or not, or another): the waits are
    /// rescalings', which a failure calls off, so that its recovery does
    /// not wait. A holder's refusal of one of them is answered at once
    /// (the instance checkpoints in full), not after the wait: the
    /// checkpoint waited for may be the refused one. Returns the frontier
    /// of each one acknowledged.
    pub(super) fn await_backups(
        &mut self,
        what: &str,
        mut waiting: HashMap<InstanceId, (Incarnation, WorkerId)>,
        deadline: Instant,
        wanted: impl Fn(InstanceId, Stamp) -> bool,
    ) -> Result<HashMap<InstanceId, Stamp>, EngineError> {
        let mut got = HashMap::new();
        let all = waiting.clone();
        while !waiting.is_empty() && Instant::now() < deadline {
            let step = (Instant::now() + std::time::Duration::from_millis(200)).min(deadline);
            let answer = self.wait_for(what, step, |m| answers_backup_of(m, &waiting));
            match answer {
                Ok(Some((holder, answer))) => {
                    let stored = self.take_backup_answer(holder, answer)?;
                    if let Some(ack) = stored.filter(|a| wanted(a.instance, a.frontier)) {
                        waiting.remove(&ack.instance);
                        got.insert(ack.instance, ack.frontier);
                    }
                }
                Ok(None) | Err(EngineError::Timeout(_)) => {
                    let one_failed = all.iter().any(|(id, (n, w))| !self.runs(*id, *n, *w));
                    if one_failed || self.failure_pending() {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// Takes a holder's answer to a checkpoint, as [`answers_backup_of`]
    /// picks them: the acknowledgement of one stored (recorded, and
    /// returned), or a refusal (answered at once: the instance checkpoints
    /// in full).
    pub(super) fn take_backup_answer(
        &mut self,
        holder: WorkerId,
        answer: ToCoordinator,
    ) -> Result<Option<BackupAck>, EngineError> {
        match answer {
            ToCoordinator::BackupStored(ack) => {
                self.backup_stored(holder, ack);
                Ok(Some(ack))
            }
            ToCoordinator::BackupRefused {
                instance,
                refusal,
                reason,
            } => {
                self.backup_refused(holder, instance, refusal, &reason);
                Ok(None)
            }
            other => self.unexpected(holder, other).map(|()| None),
        }
    }

    /// Fetches the whole backup of each of `ids`, with its frontier, from
    /// its holders, the newest copy first, falling back on the next holder
    /// when one fails or has no good copy, and at last on its pending state
    /// (see `Backups::fallback`). `None`: it never checkpointed.
    pub(super) fn fetch_backups(&mut self, ids: &[InstanceId]) -> Result<Fetched, EngineError> {
        let mut fetched = Fetched::new();
        // Instance -> the holder asked for its backup.
        let mut asked: HashMap<InstanceId, WorkerId> = HashMap::new();
        for &id in ids {
            self.ask_holder(id, &mut asked, &mut fetched)?;
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        while !asked.is_empty() {
            match self.wait_for("a backup transfer", deadline, |m| {
                matches!(m, ToCoordinator::Backup { instance, .. } if asked.contains_key(instance))
            })? {
                Some((holder, ToCoordinator::Backup { instance, bytes })) => {
                    if asked.get(&instance) != Some(&holder) {
                        continue;
                    }
                    asked.remove(&instance);
                    match good_backup(bytes) {
                        Some(state) => {
                            fetched.insert(instance, Some(state));
                        }
                        None => {
                            tracing::warn!(%instance, %holder, "its holder has no good backup; trying the next copy");
                            self.backups.holder_lost(instance, holder);
                            self.ask_holder(instance, &mut asked, &mut fetched)?;
                        }
                    }
                }
                Some(_) => {}
                None => {
                    let orphaned: Vec<(InstanceId, WorkerId)> = asked
                        .iter()
                        .filter(|(_, holder)| !self.alive(**holder))
                        .map(|(id, holder)| (*id, *holder))
                        .collect();
                    for (id, holder) in orphaned {
                        asked.remove(&id);
                        self.backups.holder_lost(id, holder);
                        self.ask_holder(id, &mut asked, &mut fetched)?;
                    }
                }
            }
        }
        Ok(fetched)
    }

    /// Before `worker`, which still answers the coordinator, is declared
    /// failed for its stalled channels: fetches the backups of which it
    /// holds the last live copy and keeps them until copied, so that a
    /// failure of those instances before their next checkpoints finds a
    /// copy instead of none (a host cut from its peers while a partition
    /// took the other holder lost one that way). Waits at most
    /// [`SALVAGE_WAIT`], handling what else arrives as a recovery gathering
    /// failures does (`Job::absorb`): no stall is decided meanwhile.
    pub(super) fn salvage_last_copies(&mut self, worker: WorkerId) -> Result<(), EngineError> {
        let last_copies: Vec<InstanceId> = self
            .plan
            .instances()
            .map(|(_, instance)| instance.id)
            .filter(|id| {
                let mut live = self
                    .backups
                    .holders_by_recency(*id)
                    .into_iter()
                    .filter(|h| self.alive(*h));
                live.next() == Some(worker) && live.next().is_none()
            })
            .collect();
        let mut asked: Vec<InstanceId> = last_copies
            .into_iter()
            .filter(|id| {
                self.send(worker, &ToWorker::FetchBackup { instance: *id })
                    .is_ok()
            })
            .collect();
        let deadline = Instant::now() + SALVAGE_WAIT;
        while !asked.is_empty() && self.alive(worker) {
            match self.links.next_event(deadline)? {
                Some(LinkEvent::Message(from, ToCoordinator::Backup { instance, bytes }))
                    if from == worker && asked.contains(&instance) =>
                {
                    asked.retain(|id| *id != instance);
                    if let Some(state) = good_backup(bytes) {
                        tracing::info!(%worker, %instance, frontier = state.0 .0, "the last copy of a backup taken before its holder is fenced");
                        self.backups.keep_pending(instance, state);
                    }
                }
                Some(event) => self.absorb(event)?,
                None => {
                    tracing::warn!(%worker, instances = ?asked, "the last copies of these backups did not arrive in time");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Keeps each backup in `fetched` until its instance's holders have a
    /// copy at or above it (see `Backups::keep_pending`).
    pub(super) fn keep_until_copied(&mut self, fetched: &Fetched) {
        for (id, state) in fetched {
            if let Some(state) = state {
                self.backups.keep_pending(*id, state.clone());
            }
        }
    }

    /// Has the newest live copy of each of `ids` (instances that lost a
    /// holder, or were restored on one) sent, holder to holder, to the
    /// holders of its route that lack one: a second failure before their
    /// next checkpoints must not take the last copy. Routes are brought up
    /// to date first. Best effort: a copy that does not arrive is replaced
    /// by the instance's next full checkpoint.
    pub(super) fn replicate(&mut self, ids: &[InstanceId]) {
        if ids.is_empty() {
            return;
        }
        self.refresh_routes();
        for &id in ids {
            let Some(incarnation) = self.plan.instance(id).map(|(_, p)| p.incarnation) else {
                continue;
            };
            let held = self.backups.holders_by_recency(id);
            let Some(&source) = held.iter().find(|h| self.alive(**h)) else {
                continue;
            };
            let lacking: Vec<WorkerId> = self
                .backups
                .route(id)
                .iter()
                .filter(|h| !held.contains(h))
                .copied()
                .collect();
            for holder in lacking {
                let order = ToWorker::Replicate {
                    instance: id,
                    incarnation,
                    to: self.holder_at(holder),
                };
                if let Err(e) = self.send(source, &order) {
                    tracing::warn!(%id, %source, "cannot have a backup replicated: {e}");
                }
            }
        }
    }

    /// Asks `id`'s live holder with the newest copy for it; with none
    /// left, settles on its fallback.
    fn ask_holder(
        &mut self,
        id: InstanceId,
        asked: &mut HashMap<InstanceId, WorkerId>,
        fetched: &mut Fetched,
    ) -> Result<(), EngineError> {
        for holder in self.backups.holders_by_recency(id) {
            if self.alive(holder)
                && self
                    .send(holder, &ToWorker::FetchBackup { instance: id })
                    .is_ok()
            {
                asked.insert(id, holder);
                return Ok(());
            }
            self.backups.holder_lost(id, holder);
        }
        fetched.insert(id, self.backups.fallback(id)?);
        Ok(())
    }

    /// Holder `worker` and where its peers reach it.
    pub(super) fn holder_at(&self, worker: WorkerId) -> BackupHolder {
        BackupHolder {
            worker,
            addr: self.plan.workers[worker.index()].clone(),
        }
    }

    /// Whether `node`'s instances are backed up (the others regenerate).
    pub(super) fn backed_up(&self, node: usize) -> bool {
        matches!(self.query.kind(node), NodeKind::Stateful | NodeKind::Sink)
    }

    /// The replay floor of `node` (a source or stateless operator): the
    /// lowest backed-up frontier among the instances it feeds, through
    /// stateless operators. `END` when it feeds nothing.
    fn floor_of(&self, node: usize) -> Stamp {
        self.query
            .edge_targets(node)
            .iter()
            .map(|&target| {
                if self.backed_up(target) {
                    self.plan.nodes[target]
                        .instances
                        .iter()
                        .map(|i| self.backups.durable(i.id))
                        .min()
                        .unwrap_or(Stamp::END)
                } else {
                    self.floor_of(target)
                }
            })
            .min()
            .unwrap_or(Stamp::END)
    }

    /// Raises the replay floors after a backup completed: upstreams may
    /// trim what a source or stateless instance will never have to
    /// regenerate, and sources forget positions they will never restart at.
    fn raise_floors(&mut self) {
        let regenerating: Vec<usize> = (0..self.query.len())
            .filter(|&n| !self.backed_up(n))
            .collect();
        for node in regenerating {
            let floor = self.floor_of(node);
            let ids: Vec<InstanceId> = self.plan.nodes[node]
                .instances
                .iter()
                .map(|i| i.id)
                .collect();
            for id in ids {
                if self.backups.raise_floor(id, floor) {
                    self.broadcast(&ToWorker::Trim {
                        downstream: id,
                        frontier: floor,
                    });
                }
            }
        }
    }

    /// Where a failed source or stateless instance restarts: a stateless
    /// one empty at its floor; a source at its latest position at or below
    /// its floor (none: from the beginning).
    pub(super) fn restart_point(
        &self,
        instance: InstanceId,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let Some((node, placed)) = self.plan.instance(instance) else {
            return Ok(None);
        };
        if self.query.kind(node) == NodeKind::Source {
            return Ok(self.backups.restart_position(instance));
        }
        CheckpointParts {
            operator: &self.plan.nodes[node].name,
            key_range: placed.key_range,
            frontier: self.backups.floor(instance),
            entries: &[],
            output_buffer: &OutputBuffer::default(),
            operator_state: &[],
        }
        .encode()
        .map(Some)
    }
}

/// Whether `m` is a holder's answer to a checkpoint of one of `waiting`
/// (by its incarnation, where the answer names it): stored or refused.
pub(super) fn answers_backup_of<T>(
    m: &ToCoordinator,
    waiting: &HashMap<InstanceId, (Incarnation, T)>,
) -> bool {
    match m {
        ToCoordinator::BackupStored(ack) => waiting
            .get(&ack.instance)
            .is_some_and(|(n, _)| *n == ack.incarnation),
        ToCoordinator::BackupRefused { instance, .. } => waiting.contains_key(instance),
        _ => false,
    }
}
