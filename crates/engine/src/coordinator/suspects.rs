//! Which hosts the coordinator lately has reason to distrust, and how
//! much: replacements, new backup holders and the victim of a tie between
//! stalled channels are chosen by it. A fault that took a worker (a
//! partition, a crash) often takes its whole host, and may last; a cut has
//! two ends, and either may be the broken one, so the host at the other
//! end of a stalled channel whose worker was recovered is suspect too,
//! though less.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a host stays suspect after the latest reason.
pub(super) const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// How strongly a host is suspected, weakest first: choices prefer the
/// weaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Suspicion {
    /// No reason within [`SUSPECT_FOR`].
    Clear,
    /// It was the other end of a stalled channel whose worker was declared
    /// failed.
    Counterpart,
    /// A worker on it was declared failed.
    Failed,
}

/// When each host last gave each reason for suspicion.
#[derive(Debug, Default)]
pub(super) struct SuspectHosts {
    since: HashMap<(String, Suspicion), Instant>,
}

impl SuspectHosts {
    /// `host` gave reason `level` at `now`.
    pub(super) fn mark(&mut self, host: String, level: Suspicion, now: Instant) {
        if level != Suspicion::Clear {
            self.since.insert((host, level), now);
        }
    }

    /// The strongest suspicion of `host` still in force at `now`.
    pub(super) fn of(&self, host: &str, now: Instant) -> Suspicion {
        [Suspicion::Failed, Suspicion::Counterpart]
            .into_iter()
            .find(|level| {
                self.since
                    .get(&(host.to_string(), *level))
                    .is_some_and(|at| now.saturating_duration_since(*at) < SUSPECT_FOR)
            })
            .unwrap_or(Suspicion::Clear)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strongest_recent_reason_counts_and_every_reason_expires() {
        let start = Instant::now();
        let mut hosts = SuspectHosts::default();
        assert_eq!(hosts.of("a", start), Suspicion::Clear);
        hosts.mark("a".into(), Suspicion::Failed, start);
        hosts.mark("a".into(), Suspicion::Counterpart, start + SUSPECT_FOR / 2);
        hosts.mark("b".into(), Suspicion::Counterpart, start);
        assert_eq!(hosts.of("a", start + SUSPECT_FOR / 2), Suspicion::Failed);
        assert_eq!(hosts.of("b", start), Suspicion::Counterpart);
        assert_eq!(hosts.of("c", start), Suspicion::Clear);
        // The failure expires first; the later, weaker reason stays.
        let later = start + SUSPECT_FOR;
        assert_eq!(hosts.of("a", later), Suspicion::Counterpart);
        assert_eq!(hosts.of("b", later), Suspicion::Clear);
        assert_eq!(hosts.of("a", later + SUSPECT_FOR), Suspicion::Clear);
    }
}
