//! What the coordinator knows about checkpoints, in one place with its
//! invariants:
//! - `held`: for each backed-up instance, the worker holding its latest
//!   acknowledged backup and that backup's frontier; it only moves forward,
//!   and it is dropped whenever the instance's key range changes (a backup
//!   of a whole range must never be restored into a half, nor a half's into
//!   a merged range);
//! - `replicas`: the coordinator's own copy of each instance's latest
//!   checkpoint (a [`BackupChain`]: the latest full one and the incremental
//!   ones since), so that a failure taking an instance and its holder
//!   together is still recoverable, and so that a holder that lacks the
//!   base of an incremental checkpoint can be sent the whole backup;
//! - `shipped`: the holder each instance's latest checkpoint went to and
//!   its frontier: an incremental checkpoint goes to that holder alone only
//!   if its base is that frontier, else the holder gets the whole chain;
//! - `unprotected`: instances whose only backup died with its holder and
//!   that have no replica: recovering them is an error, not a silent restart
//!   from the beginning;
//! - `floors`: the replay floor of each source and stateless instance, the
//!   stamp above which it can regenerate its outputs; monotone;
//! - `positions`: each source's recent input positions, oldest first, kept
//!   until a newer one is at or below its floor.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::error::EngineError;
use crate::hash::mix64;
use crate::ids::{InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::{BackupChain, ChainError, Checkpoint, CheckpointKind};

/// The coordinator's record of every instance's checkpoints.
#[derive(Debug, Default)]
pub(super) struct Backups {
    held: HashMap<InstanceId, (WorkerId, Stamp)>,
    replicas: HashMap<InstanceId, BackupChain>,
    /// Bytes of each instance's latest checkpoint as it arrived (an
    /// increment, or full).
    latest: HashMap<InstanceId, u64>,
    shipped: HashMap<InstanceId, (WorkerId, Stamp)>,
    unprotected: HashSet<InstanceId>,
    floors: HashMap<InstanceId, Stamp>,
    positions: HashMap<InstanceId, VecDeque<(Stamp, Vec<u8>)>>,
}

impl Backups {
    /// Keeps the coordinator's copy of a checkpoint about to be shipped: a
    /// full one replaces the replica, an incremental one joins it. Refused
    /// (the replica unchanged) when corrupt, or when incremental on a
    /// checkpoint the replica does not end with: the instance must then
    /// checkpoint in full.
    pub(super) fn keep_replica(
        &mut self,
        id: InstanceId,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) -> Result<(), ChainError> {
        self.latest.insert(id, bytes.len() as u64);
        match self.replicas.get_mut(&id) {
            Some(chain) => chain.push(frontier, bytes),
            None => {
                self.replicas.insert(id, BackupChain::new(frontier, bytes)?);
                Ok(())
            }
        }
    }

    /// What to send `holder` for `id`'s checkpoint `bytes` at `frontier`
    /// (already kept in the replica): the checkpoint itself when it is full
    /// or changes what the holder was last sent, else the whole backup.
    /// Records it as shipped.
    pub(super) fn shipment(
        &mut self,
        id: InstanceId,
        holder: WorkerId,
        frontier: Stamp,
        bytes: Vec<u8>,
    ) -> Vec<u8> {
        let on_what_it_holds = match Checkpoint::kind(&bytes) {
            Ok(CheckpointKind::Delta { base }) => self.shipped.get(&id) == Some(&(holder, base)),
            _ => true,
        };
        self.shipped.insert(id, (holder, frontier));
        match (on_what_it_holds, self.replicas.get(&id)) {
            (false, Some(chain)) => chain.encode(),
            _ => bytes,
        }
    }

    /// A holder refused `id`'s backup: it gets the whole backup next.
    pub(super) fn refused(&mut self, id: InstanceId) {
        self.shipped.remove(&id);
    }

    /// A holder acknowledged a backup. Returns whether it is newer than the
    /// one known (only then may upstreams trim).
    pub(super) fn stored(&mut self, id: InstanceId, holder: WorkerId, frontier: Stamp) -> bool {
        if self
            .held
            .get(&id)
            .is_some_and(|(_, known)| *known > frontier)
        {
            return false;
        }
        self.held.insert(id, (holder, frontier));
        self.unprotected.remove(&id);
        true
    }

    /// The workers in `failed` died: the backups they held are gone, and
    /// the instances they protected depend on their replicas.
    pub(super) fn holders_failed(&mut self, failed: &[WorkerId]) {
        let lost: Vec<InstanceId> = self
            .held
            .iter()
            .filter(|(_, (holder, _))| failed.contains(holder))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.held.remove(&id);
            self.shipped.remove(&id);
            if !self.replicas.contains_key(&id) {
                self.unprotected.insert(id);
            }
        }
    }

    /// A holder asked for `id`'s backup died before answering.
    pub(super) fn holder_lost(&mut self, id: InstanceId) {
        self.held.remove(&id);
        self.shipped.remove(&id);
    }

    /// The worker holding `id`'s latest backup.
    pub(super) fn holder(&self, id: InstanceId) -> Option<WorkerId> {
        self.held.get(&id).map(|(w, _)| *w)
    }

    /// The frontier `id` has made durable (zero: none yet).
    pub(super) fn durable(&self, id: InstanceId) -> Stamp {
        self.held.get(&id).map_or(Stamp::ZERO, |(_, f)| *f)
    }

    /// `id` restarts owning a different key range (a split, a merge, a
    /// parallel recovery) from `replica`: every earlier backup of it is void.
    pub(super) fn reshaped(&mut self, id: InstanceId, replica: (Stamp, Vec<u8>)) {
        self.held.remove(&id);
        self.shipped.remove(&id);
        let (frontier, bytes) = replica;
        match BackupChain::new(frontier, bytes) {
            Ok(chain) => {
                self.replicas.insert(id, chain);
            }
            Err(e) => {
                tracing::warn!(%id, "no replica of a reshaped instance: {e}");
                self.replicas.remove(&id);
            }
        }
    }

    /// `id` restarts from `bytes` (a recovery in place): its incremental
    /// checkpoints build on them from now on, so the replica becomes them.
    pub(super) fn restarted(&mut self, id: InstanceId, bytes: &[u8]) {
        let Ok(frontier) = Checkpoint::frontier(bytes) else {
            return;
        };
        if self.shipped.get(&id).is_some_and(|(_, f)| *f != frontier) {
            self.shipped.remove(&id);
        }
        // Usually the replica is that checkpoint already: copying and
        // verifying it again cost 0.43 s of a recovery at 100 MB.
        if self
            .replicas
            .get(&id)
            .is_some_and(|c| c.frontier() == frontier)
        {
            return;
        }
        if let Ok(chain) = BackupChain::new(frontier, bytes.to_vec()) {
            self.replicas.insert(id, chain);
        }
    }

    /// `id` no longer exists (merged into a neighbour).
    pub(super) fn forget(&mut self, id: InstanceId) {
        self.held.remove(&id);
        self.replicas.remove(&id);
        self.latest.remove(&id);
        self.shipped.remove(&id);
        self.unprotected.remove(&id);
        self.floors.remove(&id);
        self.positions.remove(&id);
    }

    /// The coordinator's replica of `id`'s latest checkpoint (none: it never
    /// checkpointed and restarts from the beginning, which its upstreams can
    /// replay since they never trimmed for it).
    pub(super) fn replica(&self, id: InstanceId) -> Result<Option<Vec<u8>>, EngineError> {
        match self.replicas.get(&id) {
            Some(chain) => Ok(Some(chain.encode())),
            None if self.unprotected.contains(&id) => Err(EngineError::Checkpoint(format!(
                "cannot recover instance {id}: its latest checkpoint was lost with its backup holder"
            ))),
            None => Ok(None),
        }
    }

    /// The replay floor of a source or stateless instance.
    pub(super) fn floor(&self, id: InstanceId) -> Stamp {
        self.floors.get(&id).copied().unwrap_or(Stamp::ZERO)
    }

    /// Raises `id`'s floor to `floor` if that is higher (floors never fall:
    /// a new instance inherits a frontier at or above the floor announced),
    /// and forgets source positions it will never restart at. Returns
    /// whether it rose, so upstreams can trim.
    pub(super) fn raise_floor(&mut self, id: InstanceId, floor: Stamp) -> bool {
        if self.floors.get(&id).is_some_and(|known| *known >= floor) {
            return false;
        }
        self.floors.insert(id, floor);
        if let Some(positions) = self.positions.get_mut(&id) {
            while positions.get(1).is_some_and(|(at, _)| *at <= floor) {
                positions.pop_front();
            }
        }
        true
    }

    /// A source checkpointed its input position.
    pub(super) fn add_position(&mut self, id: InstanceId, frontier: Stamp, bytes: Vec<u8>) {
        self.positions
            .entry(id)
            .or_default()
            .push_back((frontier, bytes));
    }

    /// Where a failed source restarts: its latest position at or below its
    /// floor (none: from the beginning).
    pub(super) fn restart_position(&self, id: InstanceId) -> Option<Vec<u8>> {
        let floor = self.floor(id);
        self.positions.get(&id).and_then(|positions| {
            positions
                .iter()
                .rev()
                .find(|(at, _)| *at <= floor)
                .map(|(_, bytes)| bytes.clone())
        })
    }

    /// Bytes of `id`'s latest checkpoint as it arrived: what checkpointing
    /// moves (for the cluster view).
    pub(super) fn latest_bytes(&self, id: InstanceId) -> u64 {
        self.latest.get(&id).copied().unwrap_or(0)
    }

    /// Bytes of `id`'s backup (the latest full checkpoint and the
    /// increments since), or of a source's latest position (for the
    /// cluster view).
    pub(super) fn checkpoint_bytes(&self, id: InstanceId) -> u64 {
        match self.replicas.get(&id) {
            Some(chain) => chain.bytes() as u64,
            None => self
                .positions
                .get(&id)
                .and_then(|p| p.back())
                .map_or(0, |(_, b)| b.len() as u64),
        }
    }

    /// The frontier to show for `id`: its durable backup, else its floor.
    pub(super) fn shown_frontier(&self, id: InstanceId) -> Option<Stamp> {
        self.held
            .get(&id)
            .map(|(_, f)| *f)
            .or_else(|| self.floors.get(&id).copied())
    }
}

/// Where an instance's checkpoints go: one of `upstream_hosts` (workers
/// hosting its upstreams) if any is alive, else any other live worker; never
/// its `own` worker, so one failure cannot take both. The pick is a stable
/// hash of the instance, spreading instances over the candidates.
pub(super) fn choose_holder(
    instance: InstanceId,
    own: WorkerId,
    upstream_hosts: impl IntoIterator<Item = WorkerId>,
    live: &[WorkerId],
) -> Option<WorkerId> {
    let eligible = |w: &WorkerId| *w != own && live.contains(w);
    let mut candidates: Vec<WorkerId> = upstream_hosts.into_iter().filter(eligible).collect();
    if candidates.is_empty() {
        candidates = live.iter().copied().filter(eligible).collect();
    }
    candidates.sort_unstable();
    candidates.dedup();
    if candidates.is_empty() {
        return None;
    }
    let pick = mix64(u64::from(instance.0)) % candidates.len() as u64;
    Some(candidates[pick as usize])
}
