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

/// The answer to a car entering a segment: its toll notification, and an
/// accident alert when `accident` names the affecting segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Notice {
    lav: i32,
    toll: u32,
    accident: Option<u8>,
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

    /// A position report of this segment: adds it to the statistics and,
    /// when it is the car's entry into the segment off the exit ramp, says
    /// what to answer it with. Kept apart from the engine's `Output` so that
    /// the per-report work can be replayed and measured on its own.
    fn position(&mut self, report: &Position) -> Result<Option<Notice>, OperatorError> {
        let t = report.time;
        let minute = minute_of(t);
        self.roll(minute, t)?;
        let entered = t < 30 || self.last_seen.get(&report.vid) != Some(&(t - 30));
        let notice = (entered && report.lane != 4).then(|| {
            let lav = self.lav;
            let nov = self.nov(minute);
            let accident = self.accident(report.seg, minute);
            let toll = if accident.is_some() || lav >= 40 || nov <= 50 {
                0
            } else {
                2 * (nov - 50) * (nov - 50)
            };
            Notice {
                lav,
                toll,
                accident,
            }
        });
        self.last_seen.insert(report.vid, t);
        let car = self.cars.entry(report.vid).or_default();
        car.0 += u32::from(report.spd);
        car.1 += 1;
        Ok(notice)
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
        if let Some(notice) = state.position(&report)? {
            out.emit(Msg::Toll {
                vid: report.vid,
                time: report.time,
                lav: notice.lav,
                toll: notice.toll,
                released_us,
            })?;
            if let Some(seg) = notice.accident {
                out.emit(Msg::Alert {
                    time: report.time,
                    vid: report.vid,
                    seg,
                    released_us,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;
    use std::time::Instant;

    use super::*;
    use crate::model::{parse_line, Parsed};
    use crate::query::forwarder::zone_targets;

    /// What a replay answered: counts and a digest of every answer in order,
    /// so that two builds can be compared on the same input.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Answers {
        tolls: u64,
        toll_sum: u64,
        alerts: u64,
        digest: u64,
    }

    /// The calculator's inputs for an input file's position reports, as the
    /// forwarder sends them.
    fn inputs(text: &str) -> Vec<Msg> {
        let mut inputs = Vec::new();
        for line in text.lines() {
            let Ok(Parsed::Position(report)) = parse_line(line) else {
                continue;
            };
            if report.spd == 0 {
                for target_seg in zone_targets(report.seg, report.dir) {
                    inputs.push(Msg::Stop {
                        target_seg,
                        report: report.clone(),
                    });
                }
            }
            inputs.push(Msg::Position {
                report,
                released_us: 0,
            });
        }
        inputs
    }

    /// Runs every input through its segment's state, as the engine does
    /// without the encoding of outputs. States sit in a vector by segment and
    /// answers fold into a cheap digest, so that nearly all the work measured
    /// is the calculator's.
    #[inline(never)]
    fn replay(inputs: &[Msg]) -> Answers {
        let mut states: Vec<SegmentState> = Vec::new();
        let mut answers = Answers::default();
        for input in inputs {
            let (xway, dir, seg) = TollCalculator::key(input);
            let index = (usize::from(xway) * 2 + usize::from(dir)) * 100 + usize::from(seg);
            if index >= states.len() {
                states.resize_with(index + 1, SegmentState::default);
            }
            let state = &mut states[index];
            match input {
                Msg::Position { report, .. } => {
                    if let Some(notice) = state.position(report).unwrap() {
                        answers.tolls += 1;
                        answers.toll_sum += u64::from(notice.toll);
                        answers.alerts += u64::from(notice.accident.is_some());
                        for value in [
                            u64::from(report.vid),
                            u64::from(report.time),
                            notice.lav as u64,
                            u64::from(notice.toll),
                            notice.accident.map_or(u64::MAX, u64::from),
                        ] {
                            answers.digest = answers
                                .digest
                                .rotate_left(7)
                                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                                ^ value;
                        }
                    }
                }
                Msg::Stop { report, .. } => state.stop(report).unwrap(),
                other => panic!("not a calculator input: {other:?}"),
            }
        }
        black_box(states);
        answers
    }

    /// Replays the input file named by `SPATE_TC_REPLAY` and prints what it
    /// answered and how long the calculator took: a load-independent measure
    /// of its per-report work under `valgrind --tool=callgrind
    /// --toggle-collect='*tests::replay'`, with the answers to compare
    /// between builds.
    #[test]
    #[ignore = "a measurement: needs SPATE_TC_REPLAY=<input.csv>"]
    fn replay_file() {
        let path = std::env::var("SPATE_TC_REPLAY").expect("SPATE_TC_REPLAY=<input.csv>");
        let inputs = inputs(&std::fs::read_to_string(path).unwrap());
        let start = Instant::now();
        let answers = replay(&inputs);
        println!(
            "{} inputs in {:?}: {answers:?}",
            inputs.len(),
            start.elapsed()
        );
    }
}
