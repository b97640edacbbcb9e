//! Segment statistics (NOV, LAV) kept exactly, and where accidents are.
//!
//! Each car's reports of one minute are folded into its segment as they
//! arrive: the segment keeps, per report count k, the sum of the speeds of
//! its cars with exactly k reports so far, so the minute average A(m) =
//! mean over cars of (their speed sum / k) is exact when the minute closes.

use num_integer::Integer;

/// A non-negative rational in lowest terms: means stay exact and LAV is
/// truncated once (docs/LRB.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ratio {
    num: u128,
    den: u128,
}

impl Ratio {
    fn new(num: u128, den: u128) -> Ratio {
        let g = num.gcd(&den).max(1);
        Ratio {
            num: num / g,
            den: den / g,
        }
    }

    fn add(self, other: Ratio) -> Option<Ratio> {
        let g = self.den.gcd(&other.den);
        let den = (self.den / g).checked_mul(other.den)?;
        let num = self
            .num
            .checked_mul(den / self.den)?
            .checked_add(other.num.checked_mul(den / other.den)?)?;
        Some(Ratio::new(num, den))
    }

    fn divided_by(self, n: u128) -> Option<Ratio> {
        Some(Ratio::new(self.num, self.den.checked_mul(n)?))
    }
}

/// A closed minute of a segment: NOV and A(m).
#[derive(Debug, Clone, Copy)]
struct Closed {
    minute: u32,
    cars: u32,
    average: Ratio,
}

/// The statistics of one (XWay, Dir, Seg).
#[derive(Debug, Default)]
pub(crate) struct Segment {
    /// The minute being filled.
    minute: u32,
    /// Distinct cars of `minute`.
    cars: u32,
    /// (report count k, speed sum of the cars with k reports) of `minute`.
    by_count: Vec<(u32, u64)>,
    /// The closed minutes LAV of the current minute can use, oldest first.
    closed: Vec<Closed>,
    /// LAV of `minute`, once computed.
    lav: Option<i64>,
    /// The latest two minutes in which a place in this segment was active
    /// (0: none), newest first.
    active: [u32; 2],
}

/// Why the exact statistics could not be kept: only for input far from
/// Linear Road's (cars with dozens of report counts in one minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

impl Segment {
    /// Closes the filled minute when `m` is a later one.
    pub(crate) fn advance_to(&mut self, m: u32) -> Result<(), TooLarge> {
        if self.minute == m {
            return Ok(());
        }
        if self.cars > 0 {
            let mut sum = Ratio::new(0, 1);
            for &(k, speeds) in &self.by_count {
                sum = sum
                    .add(Ratio::new(u128::from(speeds), u128::from(k)))
                    .ok_or(TooLarge)?;
            }
            self.closed.push(Closed {
                minute: self.minute,
                cars: self.cars,
                average: sum.divided_by(u128::from(self.cars)).ok_or(TooLarge)?,
            });
        }
        self.minute = m;
        self.cars = 0;
        self.by_count.clear();
        self.lav = None;
        self.closed.retain(|c| c.minute + 5 >= m);
        Ok(())
    }

    /// Counts a report of speed `spd` by a car that had `before` reports
    /// with speed sum `sum_before` here this minute (0 and 0 for its first).
    pub(crate) fn add(&mut self, before: u32, sum_before: u64, spd: u32) {
        if before == 0 {
            self.cars += 1;
        } else {
            self.bucket(before).1 -= sum_before;
        }
        self.bucket(before + 1).1 += sum_before + u64::from(spd);
    }

    fn bucket(&mut self, k: u32) -> &mut (u32, u64) {
        let i = match self.by_count.iter().position(|&(count, _)| count == k) {
            Some(i) => i,
            None => {
                self.by_count.push((k, 0));
                self.by_count.len() - 1
            }
        };
        &mut self.by_count[i]
    }

    /// NOV of the filled minute m: distinct cars in minute m - 1.
    pub(crate) fn nov(&self) -> u32 {
        self.closed
            .last()
            .filter(|c| c.minute + 1 == self.minute)
            .map_or(0, |c| c.cars)
    }

    /// LAV of the filled minute: the exact mean of the closed minutes'
    /// averages, truncated; -1 when there is none.
    pub(crate) fn lav(&mut self) -> Result<i64, TooLarge> {
        if let Some(lav) = self.lav {
            return Ok(lav);
        }
        let lav = if self.closed.is_empty() {
            -1
        } else {
            let mut sum = Ratio::new(0, 1);
            for c in &self.closed {
                sum = sum.add(c.average).ok_or(TooLarge)?;
            }
            let mean = sum.divided_by(self.closed.len() as u128).ok_or(TooLarge)?;
            // A mean of speeds in 0..=100.
            (mean.num / mean.den) as i64
        };
        self.lav = Some(lav);
        Ok(lav)
    }

    /// A place in this segment is active in minute `m`.
    pub(crate) fn mark_active(&mut self, m: u32) {
        if self.active[0] != m {
            self.active = [m, self.active[0]];
        }
    }

    /// Whether a place in this segment was active in minute `m`.
    pub(crate) fn was_active(&self, m: u32) -> bool {
        m != 0 && self.active.contains(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_are_exact_and_truncated_once() {
        let mut s = Segment::default();
        s.advance_to(1).unwrap();
        // Car A: 40 and 41 (mean 40.5); car B: 39 (mean 39). A = 39.75.
        s.add(0, 0, 40);
        s.add(1, 40, 41);
        s.add(0, 0, 39);
        s.advance_to(2).unwrap();
        assert_eq!(s.nov(), 2);
        assert_eq!(s.lav(), Ok(39));
        // Minute 2: one car, 41 and 42 (mean 41.5).
        s.add(0, 0, 41);
        s.add(1, 41, 42);
        s.advance_to(3).unwrap();
        // (39.75 + 41.5) / 2 = 40.625.
        assert_eq!(s.lav(), Ok(40));
        assert_eq!(s.nov(), 1);
    }

    #[test]
    fn lav_uses_the_five_minutes_before() {
        let mut s = Segment::default();
        for m in 1..=7 {
            s.advance_to(m).unwrap();
            s.add(0, 0, if m == 1 { 0 } else { 60 });
        }
        s.advance_to(8).unwrap();
        // Minutes 3..=7 only: minute 1 (speed 0) has dropped out.
        assert_eq!(s.lav(), Ok(60));
        s.advance_to(20).unwrap();
        assert_eq!(s.lav(), Ok(-1));
        assert_eq!(s.nov(), 0);
    }

    #[test]
    fn activity_is_remembered_for_two_minutes() {
        let mut s = Segment::default();
        assert!(!s.was_active(0));
        s.mark_active(3);
        s.mark_active(3);
        s.mark_active(4);
        assert!(s.was_active(3) && s.was_active(4) && !s.was_active(2));
    }
}
