//! Key-hash ranges and routing tables.

use serde::{Deserialize, Serialize};

/// A contiguous, inclusive range of key hashes: the keys one instance owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    /// First hash in the range.
    pub start: u64,
    /// Last hash in the range (inclusive, so the full range is representable).
    pub end: u64,
}

impl KeyRange {
    /// Every hash.
    pub const FULL: KeyRange = KeyRange {
        start: 0,
        end: u64::MAX,
    };

    /// Whether `hash` falls in this range.
    pub fn contains(&self, hash: u64) -> bool {
        self.start <= hash && hash <= self.end
    }

    /// This range and `upper`, the range right above it, as one (what two
    /// merged partitions own); `None` when they are not adjacent.
    pub fn join(&self, upper: &KeyRange) -> Option<KeyRange> {
        (self.end.checked_add(1) == Some(upper.start)).then_some(KeyRange {
            start: self.start,
            end: upper.end,
        })
    }

    /// The `n` equal, adjacent ranges that cover this one (the last takes the
    /// rounding remainder). `n` must be at least 1.
    pub fn split_even(&self, n: u32) -> Vec<KeyRange> {
        let n = u128::from(n.max(1));
        let width = u128::from(self.end - self.start) + 1;
        (0..n)
            .map(|i| {
                let start = u128::from(self.start) + width * i / n;
                let end = u128::from(self.start) + width * (i + 1) / n - 1;
                KeyRange {
                    start: start as u64,
                    end: end as u64,
                }
            })
            .collect()
    }

    /// Cuts the range in two at `at` (the first hash of the upper half).
    /// Returns `None` when `at` would leave one half empty.
    pub fn split_at(&self, at: u64) -> Option<(KeyRange, KeyRange)> {
        if at <= self.start || at > self.end {
            return None;
        }
        Some((
            KeyRange {
                start: self.start,
                end: at - 1,
            },
            KeyRange {
                start: at,
                end: self.end,
            },
        ))
    }

    /// The middle hash, the default split point.
    pub fn midpoint(&self) -> u64 {
        self.start + (self.end - self.start) / 2 + 1
    }
}

/// For one downstream operator: which target owns which key-hash range.
///
/// Ranges are kept sorted and cover the whole hash space, so routing is a
/// binary search and a split replaces one entry by two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable<T> {
    entries: Vec<(KeyRange, T)>,
}

impl<T: Clone> RoutingTable<T> {
    /// Builds a table from ranges that must tile the whole hash space.
    pub fn new(mut entries: Vec<(KeyRange, T)>) -> Result<Self, String> {
        entries.sort_by_key(|(r, _)| r.start);
        let mut next = 0u64;
        for (i, (range, _)) in entries.iter().enumerate() {
            if range.start != next || range.end < range.start {
                return Err(format!(
                    "routing ranges do not tile the hash space at {next:#x}"
                ));
            }
            if range.end == u64::MAX {
                if i + 1 != entries.len() {
                    return Err("routing ranges overlap at the end of the hash space".into());
                }
            } else {
                next = range.end + 1;
            }
        }
        match entries.last() {
            Some((r, _)) if r.end == u64::MAX => Ok(RoutingTable { entries }),
            _ => Err("routing ranges do not reach the end of the hash space".into()),
        }
    }

    /// The target owning `hash`.
    pub fn route(&self, hash: u64) -> &T {
        let i = self.entries.partition_point(|(r, _)| r.end < hash);
        &self.entries[i].1
    }

    /// The ranges and their targets, in hash order.
    pub fn entries(&self) -> &[(KeyRange, T)] {
        &self.entries
    }

    /// Replaces the owner of `range` (which must be an entry) by two owners
    /// split at `at`: the scale-out step "cut one range in two".
    pub fn split(&mut self, range: KeyRange, at: u64, lower: T, upper: T) -> Result<(), String> {
        let i = self
            .entries
            .iter()
            .position(|(r, _)| *r == range)
            .ok_or_else(|| format!("no routing entry for range {range:?}"))?;
        let (lo, hi) = range
            .split_at(at)
            .ok_or_else(|| format!("split point {at:#x} is outside {range:?}"))?;
        self.entries[i] = (lo, lower);
        self.entries.insert(i + 1, (hi, upper));
        Ok(())
    }

    /// Maps every target (e.g. instance ids to channel indices).
    pub fn map<U: Clone>(&self, mut f: impl FnMut(&T) -> U) -> RoutingTable<U> {
        RoutingTable {
            entries: self.entries.iter().map(|(r, t)| (*r, f(t))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_tiles_the_space() {
        for n in 1..9 {
            let parts = KeyRange::FULL.split_even(n);
            let table = RoutingTable::new(parts.iter().copied().zip(0..n).collect()).unwrap();
            assert_eq!(*table.route(0), 0);
            assert_eq!(*table.route(u64::MAX), n - 1);
        }
    }

    #[test]
    fn rejects_gaps_and_partial_cover() {
        let gap = vec![
            (KeyRange { start: 0, end: 9 }, 0),
            (
                KeyRange {
                    start: 11,
                    end: u64::MAX,
                },
                1,
            ),
        ];
        assert!(RoutingTable::new(gap).is_err());
        assert!(RoutingTable::new(vec![(KeyRange { start: 0, end: 9 }, 0)]).is_err());
    }

    #[test]
    fn split_routes_both_halves() {
        let mut t = RoutingTable::new(vec![(KeyRange::FULL, 'a')]).unwrap();
        t.split(KeyRange::FULL, 100, 'a', 'b').unwrap();
        assert_eq!(*t.route(99), 'a');
        assert_eq!(*t.route(100), 'b');
        assert!(t.split(KeyRange::FULL, 5, 'x', 'y').is_err());
    }
}
