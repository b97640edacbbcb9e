//! The toll calculator: keyed by (xway, dir, segment), it keeps the
//! segment's per-minute statistics, detects accidents in the segment's zone,
//! and answers each car entering the segment with its toll (and an accident
//! alert when one affects the segment). Rules: `docs/LRB.md`.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use spate_engine::{OperatorError, Output, StatefulOperator};

use crate::model::{Msg, Position, SegmentKey};

/// Minutes of history that LAV averages over.
const LAV_MINUTES: u32 = 5;

/// A stopping place inside one xway and direction: (lane, pos).
type Place = (u8, u32);

/// One finished minute of a segment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MinuteStats {
    minute: u32,
    /// Distinct cars.
    nov: u32,
    /// The minute's average speed, exactly: the mean over its cars of each
    /// car's mean speed, as a fraction in lowest terms.
    avg: Fraction,
}

/// A non-negative fraction `num / den` in lowest terms. Averages stay exact
/// until LAV is truncated, as extractLavs.pl (which takes real means) has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Fraction {
    num: u128,
    den: u128,
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The least common multiple, `None` past 128 bits.
fn lcm(a: u128, b: u128) -> Option<u128> {
    (a / gcd(a, b)).checked_mul(b)
}

impl Fraction {
    fn new(num: u128, den: u128) -> Fraction {
        let g = gcd(num, den).max(1);
        Fraction {
            num: num / g,
            den: den / g,
        }
    }

    /// The exact mean of `parts`, `None` if a common denominator would pass
    /// 128 bits.
    fn mean(parts: impl Iterator<Item = Fraction> + Clone) -> Option<Fraction> {
        let den = parts.clone().try_fold(1u128, |d, p| lcm(d, p.den))?;
        let (mut num, mut count) = (0u128, 0u128);
        for p in parts {
            num = num.checked_add(p.num.checked_mul(den / p.den)?)?;
            count += 1;
        }
        Some(Fraction::new(num, den.checked_mul(count)?))
    }
}

/// The error for averages whose exact fractions do not fit 128 bits.
fn inexact(minute: u32) -> OperatorError {
    OperatorError::new(format!(
        "the exact average speed of a segment in minute {minute} does not fit 128-bit \
         arithmetic (its cars have too many different report counts); Linear Road input \
         has each car report every 30 s"
    ))
}

/// A car's run of zero-speed reports at one place.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StopRun {
    place: Place,
    last: u32,
    count: u32,
}

/// Everything the calculator keeps for one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentState {
    /// The minute being accumulated (0 before the first report).
    minute: u32,
    /// Per car in `minute`: (sum of speeds, reports).
    cars: HashMap<u32, (u32, u32)>,
    /// Finished minutes within the LAV window, oldest first.
    history: VecDeque<MinuteStats>,
    /// LAV(minute), computed when `minute` began.
    lav: i32,
    /// Per car, the Time of its latest report in this segment.
    last_seen: HashMap<u32, u32>,
    /// Per car, its current run of zero-speed reports in the zone.
    runs: HashMap<u32, StopRun>,
    /// Per place in the zone, per car, the Time of its latest stop report.
    stop_reports: HashMap<Place, HashMap<u32, u32>>,
    /// Per place in the zone, the minutes in which it was active.
    active: HashMap<Place, Vec<u32>>,
}

fn minute_of(time: u32) -> u32 {
    time / 60 + 1
}

impl SegmentState {
    /// Closes the accumulated minute when a report of a later one arrives,
    /// computes the new minute's LAV, and forgets what no later rule can
    /// need.
    fn roll(&mut self, minute: u32, time: u32) -> Result<(), OperatorError> {
        if minute <= self.minute {
            return Ok(());
        }
        if !self.cars.is_empty() {
            let per_car = self
                .cars
                .values()
                .map(|&(sum, reports)| Fraction::new(u128::from(sum), u128::from(reports)));
            self.history.push_back(MinuteStats {
                minute: self.minute,
                nov: self.cars.len() as u32,
                avg: Fraction::mean(per_car).ok_or_else(|| inexact(self.minute))?,
            });
            self.cars.clear();
        }
        self.minute = minute;
        while self
            .history
            .front()
            .is_some_and(|h| h.minute + LAV_MINUTES < minute)
        {
            self.history.pop_front();
        }
        self.lav = self.lav_of(minute)?;
        let horizon = time.saturating_sub(30);
        self.last_seen.retain(|_, t| *t >= horizon);
        self.runs.retain(|_, r| r.last >= horizon);
        self.stop_reports.retain(|_, cars| {
            cars.retain(|_, t| *t >= horizon);
            !cars.is_empty()
        });
        self.active.retain(|_, minutes| {
            minutes.retain(|m| m + 1 >= minute);
            !minutes.is_empty()
        });
        Ok(())
    }

    /// LAV(minute): the exact mean of the minute averages of minutes
    /// minute-5..=minute-1 that had reports, truncated; -1 if none had.
    fn lav_of(&self, minute: u32) -> Result<i32, OperatorError> {
        let window = self
            .history
            .iter()
            .filter(|h| h.minute + LAV_MINUTES >= minute && h.minute < minute)
            .map(|h| h.avg);
        if window.clone().next().is_none() {
            return Ok(-1);
        }
        let mean = Fraction::mean(window).ok_or_else(|| inexact(minute))?;
        // A mean of speeds in 0..=100.
        Ok((mean.num / mean.den) as i32)
    }

    fn nov(&self, minute: u32) -> u32 {
        self.history
            .iter()
            .find(|h| h.minute + 1 == minute)
            .map_or(0, |h| h.nov)
    }

    /// The segment of the accident affecting `seg` in `minute` nearest to it.
    fn accident(&self, seg: u8, minute: u32) -> Option<u8> {
        self.active
            .iter()
            .filter(|(_, minutes)| minutes.contains(&(minute - 1)))
            .map(|((_, pos), _)| (pos / 5280) as u8)
            .min_by_key(|s| s.abs_diff(seg))
    }

    /// A zero-speed report of a place in this segment's zone.
    fn stop(&mut self, report: &Position) -> Result<(), OperatorError> {
        let place = (report.lane, report.pos);
        let t = report.time;
        self.roll(minute_of(t).max(self.minute), t)?;
        let run = self.runs.entry(report.vid).or_default();
        if run.count > 0 && run.place == place && run.last + 30 == t {
            run.count += 1;
        } else {
            run.place = place;
            run.count = 1;
        }
        run.last = t;
        if run.count < 4 {
            return Ok(());
        }
        let reports = self.stop_reports.entry(place).or_default();
        let other = reports
            .iter()
            .any(|(vid, seen)| *vid != report.vid && seen + 30 >= t);
        reports.insert(report.vid, t);
        if other {
            let minutes = self.active.entry(place).or_default();
            if !minutes.contains(&minute_of(t)) {
                minutes.push(minute_of(t));
            }
        }
        Ok(())
    }
}

/// The toll calculator operator.
pub struct TollCalculator;

impl StatefulOperator for TollCalculator {
    type In = Msg;
    type Key = SegmentKey;
    type State = SegmentState;
    type Out = Msg;

    fn key(input: &Msg) -> SegmentKey {
        match input {
            Msg::Position { report, .. } => (report.xway, report.dir, report.seg),
            Msg::Stop { target_seg, report } => (report.xway, report.dir, *target_seg),
            _ => (0, 0, 0),
        }
    }

    fn process(
        &mut self,
        input: Msg,
        state: &mut SegmentState,
        out: &mut Output<'_, Msg>,
    ) -> Result<(), OperatorError> {
        let (report, released_us) = match input {
            Msg::Position {
                report,
                released_us,
            } => (report, released_us),
            Msg::Stop { report, .. } => return state.stop(&report),
            other => {
                return Err(OperatorError::new(format!(
                    "toll calculator received an unexpected {other:?}"
                )))
            }
        };
        let t = report.time;
        let minute = minute_of(t);
        state.roll(minute, t)?;
        let entered = t < 30 || state.last_seen.get(&report.vid) != Some(&(t - 30));
        if entered && report.lane != 4 {
            let lav = state.lav;
            let nov = state.nov(minute);
            let accident = state.accident(report.seg, minute);
            let toll = if accident.is_some() || lav >= 40 || nov <= 50 {
                0
            } else {
                2 * (nov - 50) * (nov - 50)
            };
            out.emit(Msg::Toll {
                vid: report.vid,
                time: t,
                lav,
                toll,
                released_us,
            })?;
            if let Some(seg) = accident {
                out.emit(Msg::Alert {
                    time: t,
                    vid: report.vid,
                    seg,
                    released_us,
                })?;
            }
        }
        state.last_seen.insert(report.vid, t);
        let car = state.cars.entry(report.vid).or_default();
        car.0 += u32::from(report.spd);
        car.1 += 1;
        Ok(())
    }
}
