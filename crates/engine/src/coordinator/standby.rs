//! Warm standbys for large state: a pool worker keeps a live copy of a
//! large stateful instance's state, staged from its backup while the
//! instance runs (as a live split's part is: `ToWorker::Stage`), so that
//! when the instance's worker fails it restores there from that copy and
//! the changes since (`RestoreFrom::Staged`), instead of rebuilding
//! gigabytes of keyed state from a checkpoint while its input waits.
//!
//! - an instance whose backup holds at least
//!   [`super::JobConfig::standby_min_bytes`] (if set) gets a standby on a pool
//!   worker that holds none (one per pool worker: each holds a copy);
//! - a standby belongs to one incarnation and key range of its instance,
//!   and to a worker still in the pool: once a split, merge or recovery
//!   changed the instance, or its worker left the pool, it is dropped
//!   (`ToWorker::Unstage`) and the instance gets another;
//! - a recovery places an instance that has a staged standby on the
//!   standby's worker. That worker folds the changes since the staged
//!   frontier, which a holder cuts from the backup, into the copy; when
//!   the copy is gone or the holders folded those changes away, it
//!   restores the range whole. A standby so changes how fast an instance
//!   restores, never what it restores;
//! - a staged standby catches up with its instance's backup every
//!   [`STANDBY_REFRESH`] (the same `ToWorker::Stage`, which a worker that
//!   staged the range before answers by folding in the changes since, in
//!   place), so that a recovery folds in at most about that much; the
//!   holder keeps those changes as deltas through its compactions (its
//!   chain is pinned where the standby last caught up).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::NodeKind;
use crate::ids::{Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::KeyRange;
use crate::wire::control::{RestoreFrom, StagedSource, ToWorker};

use super::events::EventKind;
use super::Job;

/// How often a staged standby catches up with its instance's backup.
const STANDBY_REFRESH: Duration = Duration::from_secs(1);

/// A copy of an instance's state kept on a pool worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Standby {
    worker: WorkerId,
    incarnation: Incarnation,
    range: KeyRange,
    /// The frontier staged; `None` while staging.
    staged_at: Option<Stamp>,
    /// Whether it is catching up, asked when it was last staged or caught up.
    refreshing: bool,
    /// When it was last staged or caught up.
    updated: Instant,
}

/// Each instance's standby, if it has one.
pub(super) type Standbys = HashMap<InstanceId, Standby>;

impl Job<'_> {
    /// Drops the standbys that no longer fit their instance or worker, and
    /// stages one for each large instance without one, while the pool has
    /// a worker to spare.
    pub(super) fn keep_standbys(&mut self) {
        let Some(min_bytes) = self.config.standby_min_bytes else {
            return;
        };
        let stale: Vec<InstanceId> = self
            .standbys
            .iter()
            .filter(|(id, s)| !self.standby_fits(**id, s))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.drop_standby(id);
        }
        self.refresh_standbys();
        let large: Vec<(InstanceId, Incarnation, KeyRange)> = self
            .plan
            .nodes
            .iter()
            .enumerate()
            .filter(|(node, _)| self.query.kind(*node) == NodeKind::Stateful)
            .flat_map(|(_, n)| n.instances.iter())
            .filter(|p| {
                !self.standbys.contains_key(&p.id)
                    && self.backups.checkpoint_bytes(p.id) >= min_bytes
            })
            .map(|p| (p.id, p.incarnation, p.key_range))
            .collect();
        for (id, incarnation, range) in large {
            let Some(worker) = self
                .pool
                .iter()
                .copied()
                .find(|w| self.alive(*w) && !self.standbys.values().any(|s| s.worker == *w))
            else {
                return;
            };
            if self.stage_on(worker, id, range) {
                tracing::debug!(instance = %id, %worker, "staging a standby");
                self.standbys.insert(
                    id,
                    Standby {
                        worker,
                        incarnation,
                        range,
                        staged_at: None,
                        refreshing: false,
                        updated: Instant::now(),
                    },
                );
            }
        }
    }

    /// Asks each staged standby last brought up to date
    /// [`STANDBY_REFRESH`] ago or more to catch up.
    fn refresh_standbys(&mut self) {
        let due: Vec<InstanceId> = self
            .standbys
            .iter()
            .filter(|(_, s)| {
                s.staged_at.is_some() && !s.refreshing && s.updated.elapsed() >= STANDBY_REFRESH
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(&Standby { worker, range, .. }) = self.standbys.get(&id) else {
                continue;
            };
            if self.stage_on(worker, id, range) {
                if let Some(standby) = self.standbys.get_mut(&id) {
                    standby.refreshing = true;
                }
            }
        }
    }

    /// Asks `worker` to stage `range` of `id` from its live holders (or
    /// to catch up what it staged); `false` when there is none to stage
    /// from or the order could not be sent.
    fn stage_on(&mut self, worker: WorkerId, id: InstanceId, range: KeyRange) -> bool {
        let holders = self.named_live_holders(id);
        if holders.is_empty() {
            return false;
        }
        let stage = ToWorker::Stage {
            instance: id,
            range,
            holders,
            merge: None,
        };
        self.send(worker, &stage).is_ok()
    }

    /// Takes a worker's word that it staged `range` of `instance` (at
    /// `frontier`; `None`: it could not) for a standby, or caught it up;
    /// `false` when no standby waited for it.
    pub(super) fn standby_staged(
        &mut self,
        worker: WorkerId,
        instance: InstanceId,
        range: KeyRange,
        frontier: Option<Stamp>,
    ) -> bool {
        let Some(standby) = self.standbys.get(&instance) else {
            return false;
        };
        let waited = standby.staged_at.is_none() || standby.refreshing;
        if standby.worker != worker || standby.range != range || !waited {
            return false;
        }
        if !self.standby_fits(instance, standby) {
            // Staged for what a reconfiguration replaced since.
            self.drop_standby(instance);
            return true;
        }
        match frontier {
            Some(at) => {
                let Some(standby) = self.standbys.get_mut(&instance) else {
                    return true;
                };
                let first = !standby.refreshing;
                standby.staged_at = Some(at);
                standby.refreshing = false;
                standby.updated = Instant::now();
                if !first {
                    tracing::debug!(%instance, %worker, at = at.0, "standby caught up");
                    return true;
                }
                self.record(
                    EventKind::Standby,
                    format!(
                        "instance {instance} staged on worker {worker} at stamp {}",
                        at.0
                    ),
                );
            }
            // Staging or catching up failed (no holder could give the
            // range, or the changes since): another try comes with the
            // next backup.
            None => {
                self.standbys.remove(&instance);
            }
        }
        true
    }

    /// For a failed instance with a staged standby that still fits it: the
    /// standby's worker, taken out of the pool, and where the instance
    /// restores from there.
    pub(super) fn take_standby(&mut self, id: InstanceId) -> Option<(WorkerId, RestoreFrom)> {
        let standby = self.standbys.remove(&id)?;
        let since = standby.staged_at?;
        if !self.standby_fits(id, &standby) {
            let _ = self.send(standby.worker, &ToWorker::Unstage { instance: id });
            return None;
        }
        self.pool.retain(|w| *w != standby.worker);
        let holders = self.named_live_holders(id);
        Some((
            standby.worker,
            RestoreFrom::Staged(StagedSource {
                parent: id,
                range: standby.range,
                since,
                holders,
            }),
        ))
    }

    /// Whether `standby` is still a copy of `id` as it runs, on a worker
    /// still waiting in the pool.
    fn standby_fits(&self, id: InstanceId, standby: &Standby) -> bool {
        let instance = self
            .plan
            .instance(id)
            .map(|(_, p)| (p.incarnation, p.key_range));
        instance == Some((standby.incarnation, standby.range))
            && self.alive(standby.worker)
            && self.pool.contains(&standby.worker)
    }

    fn drop_standby(&mut self, id: InstanceId) {
        if let Some(standby) = self.standbys.remove(&id) {
            tracing::debug!(instance = %id, worker = %standby.worker, "dropping a standby");
            if self.alive(standby.worker) {
                // Best effort: a copy left behind is memory, not data.
                let _ = self.send(standby.worker, &ToWorker::Unstage { instance: id });
            }
        }
    }
}
