//! When an instance checkpoints: on the same wall-clock grid as every other
//! instance (the interval's multiples of UNIX time), each operator later the
//! further upstream it is, and an instance whose checkpoint carries its
//! output buffer a little later still, until its downstreams' checkpoints
//! of the same round are backed up.
//!
//! Why: a checkpoint carries the outputs that the downstreams' latest
//! backups do not cover. Checkpointed before those backups are stored, an
//! upstream ships the outputs of a whole interval; checkpointed just after,
//! only those since. At a million tuples a second a fixed offset was not
//! enough: the toll assessment of Linear Road took 60 to 150 ms to encode,
//! ship and have its checkpoint acknowledged, so the toll calculators,
//! 60 ms behind it, shipped 20 to 30 MB each second instead of a few.

use std::time::{Duration, Instant};

use crate::api::Query;

/// Offset between the checkpoints of an operator and of those it feeds: time
/// for the downstream's backup to be stored and its trims to arrive.
const CHECKPOINT_STAGGER: Duration = Duration::from_millis(60);

/// The instance's place on the checkpoint grid.
pub(crate) struct CheckpointSchedule {
    every: Duration,
    offset: Duration,
}

/// One checkpoint of the grid: due at `at`, in the round whose sinks
/// checkpoint at `round_start`; it may wait for trims until `latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GridPoint {
    pub(crate) at: Instant,
    round_start: Instant,
    latest: Instant,
}

impl CheckpointSchedule {
    pub(crate) fn new(every: Duration, query: &Query, node: usize) -> Self {
        Self::at_depth(every, depth(query, node))
    }

    /// The schedule of an operator `steps` operators upstream of the
    /// farthest sink it feeds.
    fn at_depth(every: Duration, steps: usize) -> Self {
        let stagger = CHECKPOINT_STAGGER.min(every / 8);
        CheckpointSchedule {
            every,
            offset: (stagger * steps as u32).min(every / 2),
        }
    }

    /// The next point of this instance's grid.
    pub(crate) fn next(&self) -> GridPoint {
        // The wall clock, which every process (and, closely enough, every
        // machine) shares; before 1970 means a broken clock: no grid.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.point_after(Instant::now(), now)
    }

    /// The first point after `now_us` (UNIX microseconds, read at `now`).
    fn point_after(&self, now: Instant, now_us: u64) -> GridPoint {
        let every = self.every.as_micros().max(1) as u64;
        let offset = self.offset.as_micros() as u64;
        let mut at_us = (now_us / every) * every + offset;
        if at_us <= now_us {
            at_us += every;
        }
        let at = now + Duration::from_micros(at_us - now_us);
        GridPoint {
            at,
            round_start: at.checked_sub(self.offset).unwrap_or(now),
            latest: at + self.every / 4,
        }
    }
}

impl GridPoint {
    /// Whether a checkpoint due at this point waits at `now`, given
    /// `untrimmed(since)`: whether its output buffer still holds batches for
    /// a downstream that has not trimmed them since `since`. It waits for
    /// the round's trims while they are missing, until `latest`: an
    /// interval's quarter bounds the wait for a downstream that does not
    /// checkpoint this round (idle, failing, or with nothing new).
    pub(crate) fn waits(&self, now: Instant, untrimmed: impl FnOnce(Instant) -> bool) -> bool {
        now < self.latest && untrimmed(self.round_start)
    }
}

/// How many operators lie between `node` and the farthest sink it feeds.
fn depth(query: &Query, node: usize) -> usize {
    query
        .edge_targets(node)
        .iter()
        .map(|&t| 1 + depth(query, t))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn upstreams_come_later_on_the_grid_by_a_stagger_per_step() {
        let now = Instant::now();
        // 2.3 s past a whole second of UNIX time.
        let now_us = 1_000_002_300_000;
        let sink = CheckpointSchedule::at_depth(SECOND, 0).point_after(now, now_us);
        let upstream = CheckpointSchedule::at_depth(SECOND, 2).point_after(now, now_us);
        assert_eq!(sink.at - now, Duration::from_millis(700));
        assert_eq!(upstream.at - sink.at, 2 * CHECKPOINT_STAGGER);
        // Both in the round the sink opens.
        assert_eq!(upstream.round_start, sink.at);
        assert_eq!(sink.round_start, sink.at);
    }

    #[test]
    fn short_intervals_shrink_the_stagger_and_the_offset_stays_within_half() {
        let now = Instant::now();
        let every = Duration::from_millis(100);
        let deep = CheckpointSchedule::at_depth(every, 10).point_after(now, 5_000_000);
        assert_eq!(deep.at - deep.round_start, every / 2);
        let one = CheckpointSchedule::at_depth(every, 1).point_after(now, 5_000_000);
        assert_eq!(one.at - one.round_start, every / 8);
    }

    #[test]
    fn a_due_checkpoint_waits_for_its_downstreams_trims_of_the_round_only() {
        let now = Instant::now();
        let point = CheckpointSchedule::at_depth(SECOND, 2).point_after(now, 7_000_000);
        // Batches a downstream has not trimmed since the round began.
        assert!(point.waits(point.at, |since| {
            assert_eq!(since, point.round_start);
            true
        }));
        // Every downstream trimmed (or nothing is buffered): no wait.
        assert!(!point.waits(point.at, |_| false));
        // A downstream that never trims holds it back a quarter interval.
        assert!(point.waits(point.at + SECOND / 4 - Duration::from_millis(1), |_| true));
        assert!(!point.waits(point.at + SECOND / 4, |_| true));
    }
}
