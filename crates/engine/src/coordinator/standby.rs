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
//!   restores, never what it restores.

use std::collections::HashMap;

use crate::api::NodeKind;
use crate::ids::{Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::KeyRange;
use crate::wire::control::{RestoreFrom, StagedSource, ToWorker};

use super::events::EventKind;
use super::Job;

/// A copy of an instance's state kept on a pool worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Standby {
    worker: WorkerId,
    incarnation: Incarnation,
    range: KeyRange,
    /// The frontier staged; `None` while staging.
    staged_at: Option<Stamp>,
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
            let holders = self.named_live_holders(id);
            if holders.is_empty() {
                continue;
            }
            let stage = ToWorker::Stage {
                instance: id,
                range,
                holders,
                merge: None,
            };
            if self.send(worker, &stage).is_ok() {
                tracing::debug!(instance = %id, %worker, "staging a standby");
                self.standbys.insert(
                    id,
                    Standby {
                        worker,
                        incarnation,
                        range,
                        staged_at: None,
                    },
                );
            }
        }
    }

    /// Takes a worker's word that it staged `range` of `instance` (at
    /// `frontier`; `None`: it could not) for a standby; `false` when no
    /// standby waited for it.
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
        if standby.worker != worker || standby.range != range || standby.staged_at.is_some() {
            return false;
        }
        if !self.standby_fits(instance, standby) {
            // Staged for what a reconfiguration replaced since.
            self.drop_standby(instance);
            return true;
        }
        match frontier {
            Some(at) => {
                if let Some(standby) = self.standbys.get_mut(&instance) {
                    standby.staged_at = Some(at);
                }
                self.record(
                    EventKind::Standby,
                    format!(
                        "instance {instance} staged on worker {worker} at stamp {}",
                        at.0
                    ),
                );
            }
            // Staging failed (no holder could give the range): another
            // try comes with the next backup.
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
