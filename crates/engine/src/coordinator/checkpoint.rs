//! The checkpoint protocol, coordinator side:
//! 1. an instance checkpoints (every interval) and its worker sends it here;
//! 2. the coordinator sends it to a backup holder: a worker hosting one of
//!    the instance's upstreams (chosen by a stable hash), never the
//!    instance's own worker, so one failure cannot take both;
//! 3. when the holder acknowledges, the backup is durable: the upstreams are
//!    told to trim their output buffers up to the checkpoint's frontier.
//!
//! The coordinator also keeps the latest checkpoint of each instance, a second
//! replica for failures that take an instance and its holder at once.

use crate::error::EngineError;
use crate::hash::mix64;
use crate::stamp::Stamp;
use crate::wire::control::ToWorker;

use super::Job;

impl Job<'_> {
    /// Step 2: ships a checkpoint to its holder.
    pub(super) fn back_up(
        &mut self,
        instance: u32,
        incarnation: u32,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) -> Result<(), EngineError> {
        self.copies.insert(instance, (frontier, bytes.clone()));
        let Some(holder) = self.backup_holder(instance) else {
            tracing::warn!(instance, "no other live worker to hold its backup");
            return Ok(());
        };
        if let Err(e) = self.send(
            holder,
            &ToWorker::StoreBackup {
                instance,
                incarnation,
                frontier,
                bytes,
            },
        ) {
            // The holder is failing; the next checkpoint picks another one.
            tracing::warn!(instance, holder, "cannot ship a backup: {e}");
        }
        Ok(())
    }

    /// Step 3: the backup is durable; upstreams may trim.
    pub(super) fn backup_stored(
        &mut self,
        holder: u32,
        instance: u32,
        incarnation: u32,
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
        let newer = self
            .backups
            .get(&instance)
            .is_none_or(|(_, known)| *known <= frontier);
        if !newer {
            return;
        }
        self.backups.insert(instance, (holder, frontier));
        self.unprotected.remove(&instance);
        self.checkpoints += 1;
        self.broadcast(&ToWorker::Trim {
            downstream: instance,
            frontier,
        });
    }

    /// Where `instance`'s checkpoints go: a live worker hosting one of its
    /// upstreams, else any other live worker; never its own.
    fn backup_holder(&self, instance: u32) -> Option<u32> {
        let (node, placed) = self.plan.instance(instance)?;
        let own = placed.worker;
        let alive = |w: &u32| *w != own && self.alive(*w);
        let mut candidates: Vec<u32> = self
            .plan
            .upstream_instances(&self.query, node)
            .into_iter()
            .filter_map(|up| self.plan.instance(up).map(|(_, p)| p.worker))
            .filter(alive)
            .collect();
        if candidates.is_empty() {
            candidates = (0..self.links.len() as u32).filter(alive).collect();
        }
        candidates.sort_unstable();
        candidates.dedup();
        if candidates.is_empty() {
            return None;
        }
        let pick = mix64(u64::from(instance)) % candidates.len() as u64;
        Some(candidates[pick as usize])
    }
}
