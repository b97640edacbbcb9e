//! Live merges by pre-copy: the steps of [`super::scale_in`]'s protocol
//! that move both partitions' state to the lower's worker while they run,
//! and the short stop that hands over only what changed since. They reuse
//! the live split's staging and catch-up ([`super::scale_live`]).

use std::collections::HashMap;
use std::time::Instant;

use crate::error::EngineError;
use crate::plan::{Incarnation, InstanceId, InstancePlan, WorkerId};
use crate::stamp::Stamp;
use crate::state::KeyRange;
use crate::wire::control::{
    BackupHolder, ReshapedPart, RestoreFrom, StagedJoin, StagedSource, ToWorker,
};

use super::scale_live::Reshaping;
use super::Job;

/// Both partitions of a merge staged on the lower's worker: the frontier
/// each was staged at, and its keys there.
pub(super) struct StagedMerge {
    since: [Stamp; 2],
    /// Keys staged of the lower and of the upper.
    pub(super) keys: (usize, usize),
}

impl Job<'_> {
    /// Step 1, no pause: the lower partition's worker stages both
    /// partitions' whole ranges from live holders of their backups while
    /// both run. `None` (whatever was staged dropped) when the pair cannot
    /// merge live: an operator without backups, a partition without a live
    /// holder, or a range that could not be staged.
    pub(super) fn stage_merge(
        &mut self,
        node: usize,
        pair: [&InstancePlan; 2],
    ) -> Result<Option<StagedMerge>, EngineError> {
        if !self.backed_up(node) || pair.iter().any(|p| self.live_holders(p.id).is_empty()) {
            return Ok(None);
        }
        let worker = pair[0].worker;
        // The two are joined once both are staged: the larger partition
        // (by its latest metrics) gets room for the smaller's keys.
        let keys: Vec<u64> = pair
            .iter()
            .map(|p| {
                self.autoscaler
                    .rates(p.id)
                    .map_or(0, |r| r.sample.state_keys)
            })
            .collect();
        let larger = usize::from(keys[1] > keys[0]);
        let asks: Vec<_> = pair
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let merge = StagedJoin {
                    with: pair[1 - i].id,
                    room: if i == larger { keys[1 - larger] } else { 0 },
                };
                (worker, p.id, p.key_range, Some(merge))
            })
            .collect();
        let (staged_at, failed) = self.stage_ranges(&asks, "a live merge's staging")?;
        let staged: Vec<(Stamp, usize)> = pair
            .iter()
            .filter_map(|p| staged_at.get(&(p.id, p.key_range)).copied())
            .collect();
        let running = pair
            .iter()
            .all(|p| self.runs(p.id, p.incarnation, p.worker));
        match staged[..] {
            [(low, low_keys), (high, high_keys)] if failed.is_empty() && running => {
                Ok(Some(StagedMerge {
                    since: [low, high],
                    keys: (low_keys, high_keys),
                }))
            }
            _ => {
                self.unstage_merge(pair);
                Ok(None)
            }
        }
    }

    /// Drops what the lower partition's worker staged for a merge.
    pub(super) fn unstage_merge(&mut self, pair: [&InstancePlan; 2]) {
        if self.alive(pair[0].worker) {
            for p in pair {
                // Best effort: a staged part left behind is memory, not data.
                let _ = self.send(pair[0].worker, &ToWorker::Unstage { instance: p.id });
            }
        }
    }

    /// Steps 3 to 5 of a live merge, from a stop at `frontier`: the merged
    /// instance restores in place of the lower partition from what its
    /// worker staged of both, caught up from their holders; everyone is
    /// rewired; the lower's holders merge the two backups into the merged
    /// instance's, which the merge waits for. Returns whether the upper's
    /// worker went back to the pool, and when the merged instance ran
    /// with everyone rewired (the stop's end).
    pub(super) fn install_staged_merge(
        &mut self,
        pair: [&InstancePlan; 2],
        range: KeyRange,
        frontier: Stamp,
        [low_from, high_from]: [StagedSource; 2],
    ) -> Result<(bool, Instant), EngineError> {
        let [low, high] = pair;
        let (lower, upper) = (low.id, high.id);
        let upper_holders = high_from.holders.clone();
        let route: Vec<WorkerId> = self
            .backups
            .route(lower)
            .iter()
            .copied()
            .filter(|h| *h != low.worker && self.alive(*h))
            .collect();
        self.plan.remove_instance(upper);
        self.plan.reincarnate(lower, low.worker, range);
        // Until its holders merged the two backups, nothing may restore the
        // merged instance from the lower's alone: no route yet.
        self.backups
            .reshaped_at_holders(lower, frontier, Vec::new());
        let restore = HashMap::from([(
            low.worker,
            vec![(
                lower,
                RestoreFrom::StagedMerge {
                    lower: low_from,
                    upper: high_from,
                },
            )],
        )]);
        self.restore_on(restore, "a live merge's restore")?;
        self.rewire_merged(upper, lower, frontier);
        let resumed = Instant::now();
        let incarnation = self
            .plan
            .instance(lower)
            .map_or(Incarnation::default(), |(_, p)| p.incarnation);
        let merged = ReshapedPart {
            instance: lower,
            incarnation,
            range,
        };
        if route.is_empty() {
            // No holder of the lower's left to merge at: the merged
            // instance's first checkpoint is full, wherever it goes (best
            // effort: a worker that cannot be told is recovered anyway).
            let _ = self.send(low.worker, &ToWorker::CheckpointFull { instance: lower });
        } else {
            self.merge_backups(&route, upper, frontier, merged, upper_holders);
            self.await_part_backups(&[Reshaping::merged(lower, incarnation, frontier)])?;
        }
        self.backups.forget(upper);
        Ok((self.free_worker(high.worker), resumed))
    }

    /// Step 5: the lower's holders on `route` merge the two partitions'
    /// backups at `frontier` into the merged instance's, and become its
    /// route, so that its increments join what it restored from.
    fn merge_backups(
        &mut self,
        route: &[WorkerId],
        upper: InstanceId,
        frontier: Stamp,
        merged: ReshapedPart,
        upper_holders: Vec<BackupHolder>,
    ) {
        self.backups
            .reshaped_at_holders(merged.instance, frontier, route.to_vec());
        for holder in route {
            let message = ToWorker::MergeBackups {
                upper,
                frontier,
                merged,
                upper_holders: upper_holders.clone(),
            };
            if let Err(e) = self.send(*holder, &message) {
                tracing::warn!(%holder, "cannot merge backups: {e}");
            }
        }
    }

    /// Where the merged instance catches up from after a stop at
    /// `frontier`: each partition's staged part and the live holders of
    /// its backup there; `None` when one has none left.
    pub(super) fn staged_sources(
        &self,
        pair: [&InstancePlan; 2],
        frontier: Stamp,
        staged: &StagedMerge,
    ) -> Option<[StagedSource; 2]> {
        let [low, high] = [0, 1].map(|i| {
            let holders: Vec<BackupHolder> = self
                .backups
                .holders_at(pair[i].id, frontier)
                .into_iter()
                .filter(|h| self.alive(*h))
                .map(|h| self.holder_at(h))
                .collect();
            (!holders.is_empty()).then(|| StagedSource {
                parent: pair[i].id,
                range: pair[i].key_range,
                since: staged.since[i],
                holders,
            })
        });
        Some([low?, high?])
    }
}
