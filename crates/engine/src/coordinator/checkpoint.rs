//! The checkpoint protocol, coordinator side:
//! 1. an instance checkpoints (every interval) and its worker sends it here:
//!    in full, or incrementally (the keys changed since its previous one);
//! 2. the coordinator folds it into its replica and sends it to a backup
//!    holder: a worker hosting one of the instance's upstreams (chosen by a
//!    stable hash), never the instance's own worker, so one failure cannot
//!    take both. A holder that was not sent the previous checkpoint gets
//!    the whole backup (the replica's chain) instead of the increment; an
//!    increment the replica cannot take (its base was refused) makes the
//!    instance checkpoint in full next;
//! 3. when the holder acknowledges, the backup is durable: the upstreams are
//!    told to trim their output buffers up to the checkpoint's frontier.
//!
//! The coordinator also keeps the latest checkpoint of each instance, a second
//! replica for failures that take an instance and its holder at once.
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

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::ids::{Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::{ChainError, Checkpoint, CheckpointParts, OutputBuffer};
use crate::wire::control::ToWorker;

use super::backups::choose_holder;
use super::events::EventKind;
use super::Job;

impl Job<'_> {
    /// Step 1 done: a checkpoint arrived from the current incarnation of
    /// `instance`.
    pub(super) fn checkpointed(
        &mut self,
        instance: InstanceId,
        incarnation: Incarnation,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) -> Result<(), EngineError> {
        let Some((node, _)) = self.plan.instance(instance) else {
            return Ok(());
        };
        let refuse = |job: &mut Self, e: &dyn std::fmt::Display| {
            job.record(
                EventKind::Refused,
                format!(
                    "checkpoint of instance {instance} at stamp {}: {e}; its previous checkpoint stays the one to restore",
                    frontier.0
                ),
            );
        };
        match self.query.kind(node) {
            NodeKind::Source => {
                if let Err(e) = Checkpoint::verify(&bytes) {
                    refuse(self, &e);
                    return Ok(());
                }
                self.backups.add_position(instance, frontier, bytes);
                self.checkpoints += 1;
                self.raise_floors();
                Ok(())
            }
            NodeKind::Stateful | NodeKind::Sink => {
                if let Err(e) = self.keep_checkpoint(instance, frontier, bytes.clone()) {
                    refuse(self, &e);
                    return Ok(());
                }
                self.back_up(instance, incarnation, frontier, bytes);
                Ok(())
            }
            // Nothing to keep: it restarts empty at its replay floor.
            NodeKind::Stateless => Ok(()),
        }
    }

    /// Folds a checkpoint of `instance` into the coordinator's replica;
    /// when an incremental one does not fit (the one it changes was
    /// refused), asks the instance for a full checkpoint.
    pub(super) fn keep_checkpoint(
        &mut self,
        instance: InstanceId,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) -> Result<(), ChainError> {
        let kept = self.backups.keep_replica(instance, frontier, bytes);
        if let Err(ChainError::Gap { .. }) = kept {
            if let Some((_, placed)) = self.plan.instance(instance) {
                let worker = placed.worker;
                if let Err(e) = self.send(worker, &ToWorker::CheckpointFull { instance }) {
                    tracing::warn!(%instance, "cannot ask for a full checkpoint: {e}");
                }
            }
        }
        kept
    }

    /// Keeps a checkpoint taken for a reconfiguration and returns the whole
    /// state it completes: an incremental checkpoint is whole only with the
    /// replica it changes. `Ok(None)` when the instance keeps no replica.
    pub(super) fn keep_whole_checkpoint(
        &mut self,
        instance: InstanceId,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, ChainError> {
        self.keep_checkpoint(instance, frontier, bytes)?;
        Ok(self.backups.replica(instance)?)
    }

    /// Step 2: ships a checkpoint (already in the replica) to its holder.
    fn back_up(
        &mut self,
        instance: InstanceId,
        incarnation: Incarnation,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) {
        let Some(holder) = self.backup_holder(instance) else {
            tracing::warn!(%instance, "no other live worker to hold its backup");
            return;
        };
        let message = ToWorker::StoreBackup {
            instance,
            incarnation,
            frontier,
            bytes: self.backups.shipment(instance, holder, frontier, bytes),
        };
        if let Err(e) = self.send(holder, &message) {
            // The holder is failing; the next checkpoint picks another one.
            tracing::warn!(%instance, %holder, "cannot ship a backup: {e}");
            self.backups.refused(instance);
        }
    }

    /// Step 3: the backup is durable; upstreams may trim.
    pub(super) fn backup_stored(
        &mut self,
        holder: WorkerId,
        instance: InstanceId,
        incarnation: Incarnation,
        frontier: Stamp,
    ) {
        if !self.alive(holder) {
            return;
        }
        if self.plan.instance(instance).map(|(_, p)| p.incarnation) != Some(incarnation) {
            // A backup of a replaced incarnation (e.g. the whole range of an
            // instance since split) must never be restored.
            return;
        }
        if !self.backups.stored(instance, holder, frontier) {
            return;
        }
        self.checkpoints += 1;
        self.broadcast(&ToWorker::Trim {
            downstream: instance,
            frontier,
        });
        self.raise_floors();
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

    /// Where `instance`'s checkpoints go (see [`choose_holder`]).
    fn backup_holder(&self, instance: InstanceId) -> Option<WorkerId> {
        let (node, placed) = self.plan.instance(instance)?;
        let upstream_hosts = self
            .plan
            .upstream_instances(&self.query, node)
            .into_iter()
            .filter_map(|up| self.plan.instance(up).map(|(_, p)| p.worker));
        choose_holder(
            instance,
            placed.worker,
            upstream_hosts,
            &self.live_workers(),
        )
    }
}
