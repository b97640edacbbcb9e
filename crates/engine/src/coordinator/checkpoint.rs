//! The checkpoint protocol, coordinator side:
//! 1. an instance checkpoints (every interval) and its worker sends it here;
//! 2. the coordinator sends it to a backup holder: a worker hosting one of
//!    the instance's upstreams (chosen by a stable hash), never the
//!    instance's own worker, so one failure cannot take both; it keeps a copy
//!    too, a second replica for failures that take an instance and its holder
//!    at once;
//! 3. when the holder acknowledges, the checkpoint is durable, and the
//!    instances' *restart points* may advance: upstreams are told to trim
//!    their output buffers up to them, holders to drop older backups.
//!
//! # Restart points
//!
//! Periodic checkpoints carry an instance's state, not its output buffer
//! (in a busy operator the buffer is most of the bytes). An instance
//! therefore does not restart from its latest checkpoint but from its
//! *restart point*: the latest durable checkpoint old enough that replaying
//! from it regenerates every output its downstreams may still need, i.e.
//! at or below the restart points of every instance it feeds. Upstreams
//! keep (and replay) everything above it; downstreams drop by stamp what
//! they already processed.
//! - A sink feeds nothing: it restarts from its latest durable checkpoint.
//! - A stateless instance keeps no checkpoint: it restarts empty exactly at
//!   the lowest restart point among what it feeds.
//! - A source checkpoints its input position only (kept here) and re-reads
//!   its input from the position of its restart point.
//! - A split's checkpoint does carry the output buffer, which the halves
//!   inherit: it covers outputs from below its frontier, so it is a restart
//!   point at once.

use std::collections::{HashMap, VecDeque};

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::hash::mix64;
use crate::stamp::Stamp;
use crate::state::{CheckpointParts, OutputBuffer};
use crate::wire::control::ToWorker;

use super::Job;

/// One checkpoint of an instance, kept while it may be restarted from.
pub(super) struct Saved {
    /// Its frontier: the state is that after every input at or below it.
    pub(super) frontier: Stamp,
    /// Every output above this stamp can be regenerated from it: its
    /// frontier, or lower for a checkpoint that carries its output buffer.
    pub(super) covers_from: Stamp,
    /// The encoded checkpoint (the coordinator's replica).
    pub(super) bytes: Vec<u8>,
    /// The worker holding its backup, once it acknowledged; `None` for a
    /// checkpoint only the coordinator keeps (a source's position, a
    /// split's halves), durable as soon as it is here.
    pub(super) holder: Option<u32>,
    /// Stored somewhere its instance's failure cannot take.
    pub(super) durable: bool,
}

/// What the coordinator knows of every instance's checkpoints.
#[derive(Default)]
pub(super) struct Backups {
    /// Checkpoints of each instance, oldest first, from its restart point on.
    saved: HashMap<u32, VecDeque<Saved>>,
    /// Each instance's restart point as announced (upstreams trimmed to it);
    /// it only ever rises.
    restart: HashMap<u32, Stamp>,
}

impl Backups {
    /// `instance`'s announced restart point (`ZERO`: the beginning).
    pub(super) fn restart(&self, instance: u32) -> Stamp {
        self.restart.get(&instance).copied().unwrap_or(Stamp::ZERO)
    }

    /// The checkpoint `instance` restarts from, if it has one.
    pub(super) fn restart_checkpoint(&self, instance: u32) -> Option<&Saved> {
        let at = self.restart(instance);
        self.saved.get(&instance)?.iter().find(|s| s.frontier == at)
    }

    /// The newest checkpoint of `instance`, durable or not.
    pub(super) fn latest(&self, instance: u32) -> Option<&Saved> {
        self.saved.get(&instance)?.back()
    }

    /// Replaces everything known of `instance` by one checkpoint the
    /// coordinator made (a split's half, a part of a parallel recovery),
    /// durable at once; the instance restarts from it.
    pub(super) fn replace(
        &mut self,
        instance: u32,
        frontier: Stamp,
        covers_from: Stamp,
        bytes: Option<Vec<u8>>,
    ) {
        match bytes {
            Some(bytes) => {
                self.saved.insert(
                    instance,
                    VecDeque::from([Saved {
                        frontier,
                        covers_from,
                        bytes,
                        holder: None,
                        durable: true,
                    }]),
                );
            }
            None => {
                self.saved.remove(&instance);
            }
        }
        self.restart.insert(instance, frontier);
    }
}

impl Job<'_> {
    /// Step 1 done: a checkpoint arrived from the current incarnation of
    /// `instance`.
    pub(super) fn checkpointed(
        &mut self,
        instance: u32,
        incarnation: u32,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) -> Result<(), EngineError> {
        let Some((node, _)) = self.plan.instance(instance) else {
            return Ok(());
        };
        match self.query.kind(node) {
            NodeKind::Source => {
                self.save(instance, frontier, bytes, None);
                self.checkpoints += 1;
                self.advance_restarts();
            }
            NodeKind::Stateful | NodeKind::Sink => {
                let holder = self.backup_holder(instance);
                if let Some(holder) = holder {
                    let message = ToWorker::StoreBackup {
                        instance,
                        incarnation,
                        frontier,
                        bytes: bytes.clone(),
                    };
                    if let Err(e) = self.send(holder, &message) {
                        // The holder is failing; the next checkpoint picks
                        // another one.
                        tracing::warn!(instance, holder, "cannot ship a backup: {e}");
                    }
                } else {
                    tracing::warn!(instance, "no other live worker to hold its backup");
                }
                self.save(instance, frontier, bytes, holder);
            }
            // Nothing to keep: it restarts empty at its restart point.
            NodeKind::Stateless => {}
        }
        Ok(())
    }

    /// Keeps a checkpoint (durable at once when no holder is involved).
    fn save(&mut self, instance: u32, frontier: Stamp, bytes: Vec<u8>, holder: Option<u32>) {
        let saved = self.backups.saved.entry(instance).or_default();
        if saved.back().is_some_and(|s| s.frontier >= frontier) {
            return;
        }
        saved.push_back(Saved {
            frontier,
            covers_from: frontier,
            bytes,
            durable: holder.is_none(),
            holder,
        });
    }

    /// Step 3: a holder stored a backup; restart points may advance.
    pub(super) fn backup_stored(
        &mut self,
        holder: u32,
        instance: u32,
        incarnation: u32,
        frontier: Stamp,
    ) {
        if !self.alive(holder)
            || self.plan.instance(instance).map(|(_, p)| p.incarnation) != Some(incarnation)
        {
            // A backup of a replaced incarnation (e.g. the whole range of an
            // instance since split) must never be restored.
            return;
        }
        let stored = self.backups.saved.get_mut(&instance).and_then(|saved| {
            saved
                .iter_mut()
                .find(|s| s.frontier == frontier && s.holder == Some(holder) && !s.durable)
        });
        if let Some(saved) = stored {
            saved.durable = true;
            self.checkpoints += 1;
            self.advance_restarts();
        }
    }

    /// Whether `node`'s instances keep checkpoints (stateless ones do not).
    pub(super) fn keeps_checkpoints(&self, node: usize) -> bool {
        self.query.kind(node) != NodeKind::Stateless
    }

    /// The lowest announced restart point among the instances `node` feeds:
    /// what a checkpoint carrying `node`'s output buffer covers from.
    pub(super) fn announced_need(&self, node: usize) -> Stamp {
        self.query
            .edge_targets(node)
            .iter()
            .flat_map(|&t| self.plan.nodes[t].instances.iter())
            .map(|i| self.backups.restart(i.id))
            .min()
            .unwrap_or(Stamp::END)
    }

    /// The restart point `instance` could have now (at least its announced
    /// one), memoised over one pass.
    fn restart_candidate(&self, instance: u32, memo: &mut HashMap<u32, Stamp>) -> Stamp {
        if let Some(known) = memo.get(&instance) {
            return *known;
        }
        let announced = self.backups.restart(instance);
        let Some((node, _)) = self.plan.instance(instance) else {
            return announced;
        };
        let need = self
            .query
            .edge_targets(node)
            .iter()
            .flat_map(|&t| self.plan.nodes[t].instances.iter())
            .map(|i| self.restart_candidate(i.id, memo))
            .min()
            .unwrap_or(Stamp::END);
        let candidate = if self.keeps_checkpoints(node) {
            self.backups
                .saved
                .get(&instance)
                .and_then(|saved| {
                    saved
                        .iter()
                        .rev()
                        .find(|s| s.durable && s.covers_from <= need)
                })
                .map_or(Stamp::ZERO, |s| s.frontier)
        } else if need.is_end() {
            // Feeds nothing: nothing to regenerate.
            Stamp::END
        } else {
            need
        };
        let restart = candidate.max(announced);
        memo.insert(instance, restart);
        restart
    }

    /// Raises every restart point that can rise: upstreams may then trim
    /// what will never be replayed, and holders (and this coordinator) drop
    /// checkpoints older than the restart points.
    pub(super) fn advance_restarts(&mut self) {
        let mut memo = HashMap::new();
        let ids: Vec<u32> = self.plan.instances().map(|(_, i)| i.id).collect();
        for id in ids {
            let restart = self.restart_candidate(id, &mut memo);
            if restart <= self.backups.restart(id) {
                continue;
            }
            self.backups.restart.insert(id, restart);
            if let Some(saved) = self.backups.saved.get_mut(&id) {
                while saved.front().is_some_and(|s| s.frontier < restart) {
                    saved.pop_front();
                }
            }
            self.broadcast(&ToWorker::Trim {
                downstream: id,
                frontier: restart,
            });
        }
    }

    /// The encoded checkpoint a failed `instance` restarts from, and the
    /// live holder to fetch it from if it has one (else the coordinator's
    /// copy is used). `None`: from the beginning. A stateless instance gets
    /// an empty checkpoint at its restart point.
    pub(super) fn restart_from(
        &self,
        instance: u32,
    ) -> Result<(Option<u32>, Option<Vec<u8>>), EngineError> {
        let Some((node, placed)) = self.plan.instance(instance) else {
            return Ok((None, None));
        };
        let at = self.backups.restart(instance);
        if !self.keeps_checkpoints(node) {
            let bytes = CheckpointParts {
                operator: &self.plan.nodes[node].name,
                key_range: placed.key_range,
                frontier: at,
                entries: &[],
                output_buffer: &OutputBuffer::default(),
                operator_state: &[],
            }
            .encode()?;
            return Ok((None, Some(bytes)));
        }
        match self.backups.restart_checkpoint(instance) {
            Some(saved) => Ok((
                saved.holder.filter(|h| self.alive(*h)),
                Some(saved.bytes.clone()),
            )),
            None if at == Stamp::ZERO => Ok((None, None)),
            None => Err(EngineError::Checkpoint(format!(
                "instance {instance}'s restart checkpoint at {at:?} is missing; this is a bug, please report it"
            ))),
        }
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
