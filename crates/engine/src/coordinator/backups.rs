//! What the coordinator knows about checkpoints, in one place with its
//! invariants. It holds no checkpoint of a stateful instance: those go from
//! the instance's worker to its holders directly (`worker::backup`), and the
//! coordinator keeps what the holders acknowledge.
//! - `routes`: each backed-up instance's holders, at most
//!   `JobConfig::backup_copies` workers other than its own; a route keeps its holders for
//!   as long as they live and host nothing of the instance, so that their
//!   increments keep fitting;
//! - `copies`: for each instance, the holders that acknowledged a backup
//!   and its frontier. Every copy recorded is at or above `trimmed`, the
//!   frontier upstreams were told they may trim to, so any live copy can
//!   be restored and replayed from. `trimmed` is the lowest frontier among
//!   the copies of every holder of the route: with two holders, upstreams
//!   keep what either may need;
//! - `pending`: a whole backup the coordinator keeps while a reshaped
//!   instance has no copy at its holders: the state a split, merge or
//!   parallel recovery gave it, kept until every holder of its route
//!   acknowledges a backup at or above it (the only state the coordinator
//!   holds, and only until the next checkpoints). An instance that lost a
//!   holder gets its copy back holder to holder instead;
//! - `unprotected`: instances whose every copy died with its holders and
//!   that have no pending state: recovering them is an error, not a silent
//!   restart from the beginning;
//! - `floors`: the replay floor of each source and stateless instance, the
//!   stamp above which it can regenerate its outputs; monotone;
//! - `positions`: each source's recent input positions, oldest first, kept
//!   until a newer one is at or below its floor.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::error::EngineError;
use crate::hash::mix64;
use crate::ids::{Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;

/// The coordinator's record of every instance's backups.
#[derive(Debug, Default)]
pub(super) struct Backups {
    routes: HashMap<InstanceId, Vec<WorkerId>>,
    /// The worker and incarnation each instance's route was last sent to:
    /// a restored instance must be told its route anew.
    routed_to: HashMap<InstanceId, (WorkerId, Incarnation)>,
    /// Former holders of each instance whose copies are void (dropped from
    /// its route, or it was reshaped or merged away): they are told to
    /// drop them, so that long elastic runs leave no stale backups.
    void: HashMap<InstanceId, Vec<WorkerId>>,
    copies: HashMap<InstanceId, Vec<(WorkerId, Stamp)>>,
    trimmed: HashMap<InstanceId, Stamp>,
    pending: HashMap<InstanceId, (Stamp, Vec<u8>)>,
    /// Bytes of each instance's latest checkpoint as it arrived at a
    /// holder, and of the whole backup held there.
    sizes: HashMap<InstanceId, (u64, u64)>,
    unprotected: HashSet<InstanceId>,
    floors: HashMap<InstanceId, Stamp>,
    positions: HashMap<InstanceId, VecDeque<(Stamp, Vec<u8>)>>,
}

impl Backups {
    /// `id`'s holders, the preferred first.
    pub(super) fn route(&self, id: InstanceId) -> &[WorkerId] {
        self.routes.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Routes the checkpoints of `id`, running as `on` (its worker and
    /// incarnation), to `holders` from now on; returns whether its worker
    /// must be told (the holders changed, or it runs anew). A holder
    /// dropped from the route no longer counts: its copy stops moving
    /// forward.
    pub(super) fn set_route(
        &mut self,
        id: InstanceId,
        on: (WorkerId, Incarnation),
        holders: Vec<WorkerId>,
    ) -> bool {
        let moved = self.routed_to.insert(id, on) != Some(on);
        if self.route(id) == holders.as_slice() {
            return moved;
        }
        if let Some(copies) = self.copies.get_mut(&id) {
            copies.retain(|(h, _)| holders.contains(h));
        }
        let former = self.routes.insert(id, holders.clone()).unwrap_or_default();
        let void = self.void.entry(id).or_default();
        void.extend(former);
        void.retain(|h| !holders.contains(h));
        true
    }

    /// Takes the (holder, instance) copies that became void: each holder
    /// may drop its copy.
    pub(super) fn take_void(&mut self) -> Vec<(WorkerId, InstanceId)> {
        let mut void: Vec<(WorkerId, InstanceId)> = self
            .void
            .drain()
            .flat_map(|(id, holders)| holders.into_iter().map(move |h| (h, id)))
            .collect();
        void.sort_unstable();
        void.dedup();
        void
    }

    /// Holder `holder` acknowledged `id`'s backup at `frontier`, `sizes`
    /// (arrived, held) bytes. Returns the frontier upstreams may now trim
    /// to, if it rose.
    pub(super) fn stored(
        &mut self,
        id: InstanceId,
        holder: WorkerId,
        frontier: Stamp,
        sizes: (u64, u64),
    ) -> Option<Stamp> {
        let trimmed = self.durable(id);
        if !self.route(id).contains(&holder) || frontier < trimmed {
            // A holder since replaced, or an acknowledgement overtaken.
            return None;
        }
        self.sizes.insert(id, sizes);
        self.unprotected.remove(&id);
        let copies = self.copies.entry(id).or_default();
        match copies.iter_mut().find(|(h, _)| *h == holder) {
            Some((_, at)) => *at = (*at).max(frontier),
            None => copies.push((holder, frontier)),
        }
        // Every holder of the route must have it before anything is trimmed.
        let lowest = self.routes[&id]
            .iter()
            .map(|h| copies.iter().find(|(c, _)| c == h).map(|(_, at)| *at))
            .collect::<Option<Vec<Stamp>>>()?
            .into_iter()
            .min()?;
        if self.pending.get(&id).is_some_and(|(at, _)| lowest >= *at) {
            self.pending.remove(&id);
        }
        (lowest > trimmed).then(|| {
            self.trimmed.insert(id, lowest);
            lowest
        })
    }

    /// The workers in `failed` died: the copies they held are gone, and
    /// routes through them must be replaced. Returns the instances that
    /// lost a copy and still have one (a surviving holder should send its
    /// copy to their new holders, lest a second failure take the last),
    /// and those that lost their last with no pending state kept here
    /// (one failure from unrecoverable until their next checkpoint is
    /// stored).
    pub(super) fn holders_failed(
        &mut self,
        failed: &[WorkerId],
    ) -> (Vec<InstanceId>, Vec<InstanceId>) {
        for holders in self.routes.values_mut() {
            holders.retain(|h| !failed.contains(h));
        }
        let (mut degraded, mut bared) = (Vec::new(), Vec::new());
        let ids: Vec<InstanceId> = self.copies.keys().copied().collect();
        for id in ids {
            let before = self.copies.get(&id).map_or(0, Vec::len);
            for &holder in failed {
                self.holder_lost(id, holder);
            }
            let after = self.copies.get(&id).map_or(0, Vec::len);
            if after > 0 && after < before {
                degraded.push(id);
            } else if after == 0 && before > 0 && !self.pending.contains_key(&id) {
                bared.push(id);
            }
        }
        degraded.sort_unstable();
        bared.sort_unstable();
        (degraded, bared)
    }

    /// The coordinator keeps `state` (a backup of `id`, whole) until every
    /// holder of its route has a copy at or above it, unless it already
    /// keeps a newer one.
    pub(super) fn keep_pending(&mut self, id: InstanceId, state: (Stamp, Vec<u8>)) {
        if self.pending.get(&id).is_some_and(|(at, _)| *at >= state.0) {
            return;
        }
        self.unprotected.remove(&id);
        self.pending.insert(id, state);
    }

    /// `holder`'s copy of `id` is gone (it died, or it answered without a
    /// good one).
    pub(super) fn holder_lost(&mut self, id: InstanceId, holder: WorkerId) {
        let Some(copies) = self.copies.get_mut(&id) else {
            return;
        };
        copies.retain(|(h, _)| *h != holder);
        if copies.is_empty() {
            self.copies.remove(&id);
            if !self.pending.contains_key(&id) {
                self.unprotected.insert(id);
            }
        }
    }

    /// The holders of `id`'s copies, the newest first: where to fetch it
    /// from, in order.
    pub(super) fn holders_by_recency(&self, id: InstanceId) -> Vec<WorkerId> {
        self.copies_by_recency(id)
            .into_iter()
            .map(|(h, _)| h)
            .collect()
    }

    /// `id`'s copies, each holder with its copy's frontier, the newest
    /// first.
    pub(super) fn copies_by_recency(&self, id: InstanceId) -> Vec<(WorkerId, Stamp)> {
        let mut copies = self.copies.get(&id).cloned().unwrap_or_default();
        copies.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
        copies
    }

    /// The holder of `id`'s newest copy.
    pub(super) fn holder(&self, id: InstanceId) -> Option<WorkerId> {
        self.holders_by_recency(id).first().copied()
    }

    /// The frontier `id` has made durable: upstreams trimmed up to it
    /// (zero: none yet).
    pub(super) fn durable(&self, id: InstanceId) -> Stamp {
        self.trimmed.get(&id).copied().unwrap_or(Stamp::ZERO)
    }

    /// `id` restarts owning a different key range (a split, a merge, a
    /// parallel recovery) from `state`: every earlier backup of it is void,
    /// and `state` protects it until its new holders acknowledge one.
    pub(super) fn reshaped(&mut self, id: InstanceId, state: (Stamp, Vec<u8>)) {
        self.retire_route(id);
        self.routed_to.remove(&id);
        self.copies.remove(&id);
        self.unprotected.remove(&id);
        self.trimmed.insert(id, state.0);
        self.pending.insert(id, state);
    }

    /// `id` restarts owning a different key range (a part of a live
    /// split) at `frontier`, from a part of its parent's backup that
    /// `holders` (the parent's) cut for it: they become its route, so that
    /// their acknowledgements of the part count and its increments join
    /// what they hold. Until one acknowledges, nothing protects it but the
    /// parent's backup at those holders; the split waits for them.
    pub(super) fn reshaped_at_holders(
        &mut self,
        id: InstanceId,
        frontier: Stamp,
        holders: Vec<WorkerId>,
    ) {
        self.retire_route(id);
        self.routed_to.remove(&id);
        self.copies.remove(&id);
        self.pending.remove(&id);
        self.unprotected.remove(&id);
        self.trimmed.insert(id, frontier);
        if let Some(void) = self.void.get_mut(&id) {
            void.retain(|h| !holders.contains(h));
        }
        self.routes.insert(id, holders);
    }

    /// The holders whose copy of `id` is at `frontier` exactly.
    pub(super) fn holders_at(&self, id: InstanceId, frontier: Stamp) -> Vec<WorkerId> {
        self.copies
            .get(&id)
            .map(|copies| {
                copies
                    .iter()
                    .filter(|(_, at)| *at == frontier)
                    .map(|(h, _)| *h)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `id` no longer exists (merged into a neighbour).
    pub(super) fn forget(&mut self, id: InstanceId) {
        self.retire_route(id);
        self.routed_to.remove(&id);
        self.copies.remove(&id);
        self.trimmed.remove(&id);
        self.pending.remove(&id);
        self.sizes.remove(&id);
        self.unprotected.remove(&id);
        self.floors.remove(&id);
        self.positions.remove(&id);
    }

    /// Drops `id`'s route; its holders' copies are void.
    fn retire_route(&mut self, id: InstanceId) {
        if let Some(former) = self.routes.remove(&id) {
            self.void.entry(id).or_default().extend(former);
        }
    }

    /// What `id` restarts from when no holder can give a copy: its pending
    /// state and its frontier (none: it never checkpointed and restarts
    /// from the beginning, which its upstreams can replay since they never
    /// trimmed for it).
    pub(super) fn fallback(&self, id: InstanceId) -> Result<Option<(Stamp, Vec<u8>)>, EngineError> {
        match self.pending.get(&id) {
            Some(state) => Ok(Some(state.clone())),
            None if self.unprotected.contains(&id) || self.durable(id) > Stamp::ZERO => {
                Err(EngineError::Checkpoint(format!(
                    "cannot recover instance {id}: every copy of its latest checkpoint was lost with its backup holders"
                )))
            }
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
        self.sizes.get(&id).map_or(0, |(arrived, _)| *arrived)
    }

    /// Bytes of `id`'s backup as its holder keeps it (the latest full
    /// checkpoint and the increments since), or of a source's latest
    /// position (for the cluster view).
    pub(super) fn checkpoint_bytes(&self, id: InstanceId) -> u64 {
        match self.sizes.get(&id) {
            Some((_, held)) => *held,
            None => self
                .positions
                .get(&id)
                .and_then(|p| p.back())
                .map_or(0, |(_, b)| b.len() as u64),
        }
    }

    /// The frontier to show for `id`: its durable backup, else its floor.
    pub(super) fn shown_frontier(&self, id: InstanceId) -> Option<Stamp> {
        self.trimmed
            .get(&id)
            .or_else(|| self.floors.get(&id))
            .copied()
    }
}

/// Where an instance's checkpoints go: its `current` holders that are
/// still eligible (alive, and not its `own` worker, so one failure cannot
/// take the instance and every copy; nor on its worker's host while
/// another host has a candidate to take its place, as after the instance
/// was restored next to its holder), completed up to `copies` with
/// other live workers, one at a time: first those on a host (`host` says
/// which) with neither the instance nor a holder chosen so far, then those
/// on the least suspect hosts (`suspicion`: a holder on a host lately at
/// either end of a failure may be the next one lost, or unreachable
/// already), then those
/// hosting its upstreams (`upstream_hosts`), each pick a stable hash of
/// the instance so that instances spread over the candidates.
#[allow(clippy::too_many_arguments)]
pub(super) fn choose_holders<H: PartialEq, S: Ord>(
    instance: InstanceId,
    own: WorkerId,
    current: &[WorkerId],
    upstream_hosts: &[WorkerId],
    live: &[WorkerId],
    copies: usize,
    host: impl Fn(WorkerId) -> H,
    suspicion: impl Fn(WorkerId) -> S,
) -> Vec<WorkerId> {
    let eligible = |w: &WorkerId| *w != own && live.contains(w);
    let own_host = host(own);
    let elsewhere = |w: &WorkerId| host(*w) != own_host;
    let some_elsewhere = live
        .iter()
        .any(|w| eligible(w) && elsewhere(w) && !current.contains(w));
    let mut holders: Vec<WorkerId> = current
        .iter()
        .copied()
        .filter(|w| eligible(w) && (elsewhere(w) || !some_elsewhere))
        .collect();
    holders.truncate(copies);
    let mut candidates: Vec<WorkerId> = live.iter().copied().filter(eligible).collect();
    candidates.sort_unstable();
    candidates.dedup();
    let n = candidates.len();
    let offset = (mix64(u64::from(instance.0)) % n.max(1) as u64) as usize;
    while holders.len() < copies {
        let taken: Vec<H> = std::iter::once(own)
            .chain(holders.iter().copied())
            .map(&host)
            .collect();
        let next = candidates
            .iter()
            .enumerate()
            .filter(|(_, w)| !holders.contains(w))
            .min_by_key(|&(i, w)| {
                (
                    taken.contains(&host(*w)),
                    suspicion(*w),
                    !upstream_hosts.contains(w),
                    (i + n - offset) % n,
                )
            });
        match next {
            Some((_, w)) => holders.push(*w),
            None => break,
        }
    }
    holders
}
