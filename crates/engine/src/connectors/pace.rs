//! Pacing a source at a rate of tuples a second of wall-clock time.

use std::time::{Duration, Instant};

/// When each tuple of a paced source is due: the `n`th at `n / rate`
/// seconds after the first was asked for.
#[derive(Clone, Debug, Default)]
pub(super) struct Pace {
    /// Tuples a second; `None`: as fast as the job takes them.
    rate: Option<f64>,
    /// When tuple 0 was (or would have been) due.
    started: Option<Instant>,
}

impl Pace {
    /// `per_sec` tuples a second; 0 or less: unpaced.
    pub(super) fn new(per_sec: f64) -> Self {
        Pace {
            rate: (per_sec.is_finite() && per_sec > 0.0).then_some(per_sec),
            started: None,
        }
    }

    /// `None` when tuple `n` is due now, or the instant it is due.
    pub(super) fn wait(&mut self, n: u64) -> Option<Instant> {
        let rate = self.rate?;
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        (Instant::now() < due).then_some(due)
    }

    /// After a restore at tuple `n`: go on at the same pace from here rather
    /// than catching up on the time the failure took.
    pub(super) fn resume_at(&mut self, n: u64) {
        if let Some(rate) = self.rate {
            let behind = Duration::from_secs_f64(n as f64 / rate);
            self.started = Some(
                Instant::now()
                    .checked_sub(behind)
                    .unwrap_or_else(Instant::now),
            );
        }
    }
}
