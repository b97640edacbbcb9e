//! Rescalings asked for rather than decided by the policy: `--scale` and
//! `--scale-in` at set times, commands from the dashboard, and those that a
//! failure called off while they staged or stopped. The main loop makes
//! each once it is due, never inside another reconfiguration.

use std::time::{Duration, Instant};

use crate::error::EngineError;

use super::config::JobConfig;
use super::events::ScaleDirection;
use super::Job;

/// One rescaling asked for: split or merge partitions of `operator` once
/// `at` has passed since the job started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RequestedRescale {
    at: Duration,
    direction: ScaleDirection,
    operator: String,
}

impl RequestedRescale {
    /// The configuration's forced rescalings, splits before merges.
    pub(super) fn from_config(config: &JobConfig) -> Vec<Self> {
        let splits = config
            .scale_at
            .iter()
            .map(|(at, op)| (at, ScaleDirection::Out, op));
        let merges = config
            .scale_in_at
            .iter()
            .map(|(at, op)| (at, ScaleDirection::In, op));
        splits
            .chain(merges)
            .map(|(at, direction, operator)| RequestedRescale {
                at: *at,
                direction,
                operator: operator.clone(),
            })
            .collect()
    }
}

impl Job<'_> {
    /// Asks for a rescaling of `operator` now: a command, or a requested
    /// rescaling that a failure called off, made again since whoever asked
    /// for it still wants it (the policy's own decisions are not: it
    /// decides again). The main loop recovers pending failures before it
    /// makes any.
    pub(super) fn request(&mut self, direction: ScaleDirection, operator: impl Into<String>) {
        self.requested.push(RequestedRescale {
            at: Duration::ZERO,
            direction,
            operator: operator.into(),
        });
    }

    /// Makes the first requested rescaling that is due, if any; `None`
    /// when none is.
    pub(super) fn make_due_request(&mut self) -> Option<Result<(), EngineError>> {
        let now = self.started.elapsed();
        let i = self.requested.iter().position(|r| r.at <= now)?;
        let r = self.requested.remove(i);
        Some(match r.direction {
            ScaleDirection::Out => self.scale_operator(&r.operator, "requested"),
            ScaleDirection::In => self.scale_in_operator(&r.operator, "requested"),
        })
    }

    /// When the next requested rescaling falls due, if any is queued.
    pub(super) fn next_request_at(&self) -> Option<Instant> {
        self.requested.iter().map(|r| self.started + r.at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_s_splits_come_before_its_merges() {
        let mut config = JobConfig::new("q", serde_json::Value::Null, 1);
        config.scale_in_at = vec![(Duration::from_millis(10), "count".into())];
        config.scale_at = vec![(Duration::from_millis(20), "sum".into())];
        let queued = RequestedRescale::from_config(&config);
        let kinds: Vec<(ScaleDirection, &str)> = queued
            .iter()
            .map(|r| (r.direction, r.operator.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [(ScaleDirection::Out, "sum"), (ScaleDirection::In, "count")]
        );
    }
}
