//! The toll calculator: keyed by (xway, dir, segment), it keeps the
//! segment's per-minute statistics, detects accidents in the segment's zone,
//! and answers each car entering the segment with its toll (and an accident
//! alert when one affects the segment). Rules: `docs/LRB.md`.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;

use num_integer::Integer;
use rustc_hash::FxHashMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
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

/// The least common multiple, `None` past 128 bits. The gcd is
/// `num_integer`'s binary one (Stein's), which needs no `u128` division,
/// a library call on x86-64.
fn lcm(a: u128, b: u128) -> Option<u128> {
    (a / a.gcd(&b)).checked_mul(b)
}

impl Fraction {
    fn new(num: u128, den: u128) -> Fraction {
        let g = num.gcd(&den).max(1);
        Fraction {
            num: num / g,
            den: den / g,
        }
    }

    /// The exact sum of `parts` divided by `count`, `None` if their common
    /// denominator, the sum over it or its product with `count` would pass
    /// 128 bits.
    fn mean(parts: impl Iterator<Item = Fraction> + Clone, count: u128) -> Option<Fraction> {
        let den = parts.clone().try_fold(1u128, |d, p| lcm(d, p.den))?;
        let mut num = 0u128;
        for p in parts {
            num = num.checked_add(p.num.checked_mul(den / p.den)?)?;
        }
        Some(Fraction::new(num, den.checked_mul(count)?))
    }
}

/// A minute's per-car mean speeds, added up per denominator in lowest
/// terms. Linear Road cars report every 30 s, so a minute has one or two
/// denominators, and the 128-bit arithmetic of the exact average runs once
/// per denominator instead of once per car. The common denominator and the
/// sum over it are those of the cars' fractions taken one by one, so the
/// average fails to fit 128 bits exactly when theirs would.
#[derive(Default)]
struct MinuteSpeeds {
    /// Cars added.
    cars: u32,
    /// Per denominator, the sum of the numerators; `None` past 128 bits.
    sums: SmallVec<[(u32, Option<u128>); 2]>,
}

impl MinuteSpeeds {
    /// Adds a car's mean speed `speed_sum / reports` (`reports` > 0).
    fn add(&mut self, speed_sum: u32, reports: u32) {
        let g = speed_sum.gcd(&reports);
        let (num, den) = (u128::from(speed_sum / g), reports / g);
        match self.sums.iter_mut().find(|(d, _)| *d == den) {
            Some((_, sum)) => *sum = sum.and_then(|s| s.checked_add(num)),
            None => self.sums.push((den, Some(num))),
        }
        self.cars += 1;
    }

    /// The exact mean of the cars' mean speeds, `None` past 128 bits.
    fn average(&self) -> Option<Fraction> {
        let parts = self
            .sums
            .iter()
            .map(|&(den, sum)| {
                Some(Fraction {
                    num: sum?,
                    den: u128::from(den),
                })
            })
            .collect::<Option<SmallVec<[Fraction; 2]>>>()?;
        Fraction::mean(parts.iter().copied(), u128::from(self.cars))
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

/// What a segment keeps of one car: one entry, so that each report looks
/// the car up once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Car {
    /// The Time of its latest report in the segment.
    last: u32,
    /// The sum of its speeds in the minute being accumulated.
    speed_sum: u32,
    /// Its reports in the minute being accumulated; 0 for a car only kept
    /// for `last`.
    reports: u32,
}

/// Everything the calculator keeps for one segment. The maps are keyed by
/// car ids or places and private to one segment, so a fixed fast hasher
/// serves; no answer depends on their iteration order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentState {
    /// The minute being accumulated (0 before the first report).
    minute: u32,
    /// Per car with a report in `minute` or at most 30 s before the latest
    /// minute boundary.
    cars: FxHashMap<u32, Car>,
    /// Finished minutes within the LAV window, oldest first.
    history: VecDeque<MinuteStats>,
    /// LAV(minute), computed when `minute` began.
    lav: i32,
    /// Per car, its current run of zero-speed reports in the zone.
    runs: FxHashMap<u32, StopRun>,
    /// Per place in the zone, per car, the Time of its latest stop report.
    stop_reports: FxHashMap<Place, FxHashMap<u32, u32>>,
    /// Per place in the zone, the minutes in which it was active.
    active: FxHashMap<Place, Vec<u32>>,
}

fn minute_of(time: u32) -> u32 {
    time / 60 + 1
}

impl SegmentState {
    /// Moves on to `minute` when a report of a later one arrives: a check
    /// that every report makes, apart from the work once a minute.
    fn roll(&mut self, minute: u32, time: u32) -> Result<(), OperatorError> {
        if minute > self.minute {
            self.begin(minute, time)
        } else {
            Ok(())
        }
    }

    /// Closes the accumulated minute, computes LAV(`minute`), and forgets
    /// what no later rule can need. Out of line, so that the check in
    /// `roll` inlines into the handling of every report.
    #[inline(never)]
    fn begin(&mut self, minute: u32, time: u32) -> Result<(), OperatorError> {
        let horizon = time.saturating_sub(30);
        let mut speeds = MinuteSpeeds::default();
        self.cars.retain(|_, car| {
            if car.reports > 0 {
                speeds.add(car.speed_sum, car.reports);
            }
            car.speed_sum = 0;
            car.reports = 0;
            car.last >= horizon
        });
        // A table keeps the capacity of its busiest minute; in a long run
        // the segments' tables then add up to several times the cars they
        // hold, and each report's lookup misses the cache (docs/BENCH.md,
        // "State that fits the cache").
        self.cars.shrink_to_fit();
        if speeds.cars > 0 {
            self.history.push_back(MinuteStats {
                minute: self.minute,
                nov: speeds.cars,
                avg: speeds.average().ok_or_else(|| inexact(self.minute))?,
            });
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
        let count = window.clone().count();
        if count == 0 {
            return Ok(-1);
        }
        let mean = Fraction::mean(window, count as u128).ok_or_else(|| inexact(minute))?;
        // A mean of speeds in 0..=100.
        Ok((mean.num / mean.den) as i32)
    }

    /// NOV(minute); the minute before is the latest in the history but
    /// for reports that arrive late.
    fn nov(&self, minute: u32) -> u32 {
        self.history
            .iter()
            .rev()
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
        let car = self.cars.entry(report.vid);
        let entered = match &car {
            Entry::Occupied(seen) => t < 30 || seen.get().last != t - 30,
            Entry::Vacant(_) => true,
        };
        let car = car.or_default();
        car.last = t;
        car.speed_sum += u32::from(report.spd);
        car.reports += 1;
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

    fn report(time: u32, vid: u32, spd: u8) -> Position {
        Position {
            time,
            vid,
            spd,
            xway: 0,
            lane: 1,
            dir: 0,
            seg: 10,
            pos: 10 * 5280,
        }
    }

    /// The exact average of a minute's cars, each car's mean speed taken on
    /// its own, `None` past 128 bits: what `MinuteSpeeds` must match.
    fn car_by_car(cars: &[(u32, u32)]) -> Option<Fraction> {
        let per_car = cars
            .iter()
            .map(|&(sum, reports)| Fraction::new(u128::from(sum), u128::from(reports)));
        Fraction::mean(per_car, cars.len() as u128)
    }

    #[test]
    fn minute_averages_are_those_of_the_cars_one_by_one() {
        let primes: Vec<u32> = (2..=103u32)
            .filter(|n| (2..*n).all(|d| n % d != 0))
            .collect();
        let minutes: [Vec<(u32, u32)>; 4] = [
            vec![(55, 1), (110, 2), (71, 2), (0, 1), (0, 2)],
            vec![(30, 2), (41, 1), (7, 3), (200, 2)],
            // Denominators whose common multiple passes 128 bits.
            primes.iter().map(|&p| (1, p)).collect(),
            // The same counts, all reducing to whole speeds.
            primes.iter().map(|&p| (3 * p, p)).collect(),
        ];
        assert_eq!(car_by_car(&minutes[2]), None);
        for cars in minutes {
            let mut speeds = MinuteSpeeds::default();
            for &(sum, reports) in &cars {
                speeds.add(sum, reports);
            }
            assert_eq!(speeds.average(), car_by_car(&cars), "{cars:?}");
        }
    }

    #[test]
    fn states_round_trip_through_serde() {
        let mut state = SegmentState::default();
        for (time, vid, spd) in [(0, 1, 50), (30, 1, 40), (30, 2, 0), (65, 3, 60)] {
            state.position(&report(time, vid, spd)).unwrap();
        }
        let mut stopped = report(60, 2, 0);
        for time in [60, 90, 120] {
            stopped.time = time;
            state.stop(&stopped).unwrap();
        }
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<SegmentState>(&json).unwrap(), state);
    }

    #[test]
    fn a_car_reporting_every_30_s_enters_once() {
        let mut state = SegmentState::default();
        let answered: Vec<bool> = [0, 30, 60, 120]
            .into_iter()
            .map(|time| state.position(&report(time, 7, 50)).unwrap().is_some())
            .collect();
        // A gap of 60 s is a new entry.
        assert_eq!(answered, [true, false, false, true]);
        // A new car at Time 30 enters although no report was at Time 0.
        let mut state = SegmentState::default();
        assert!(state.position(&report(30, 8, 50)).unwrap().is_some());
    }

    #[test]
    fn a_new_minute_gives_back_the_car_table_of_a_busy_one() {
        let mut state = SegmentState::default();
        for vid in 0..4096 {
            state.position(&report(0, vid, 50)).unwrap();
        }
        let busy = state.cars.capacity();
        // Minute 3 keeps only the car that reported in its last 30 s.
        state.position(&report(100, 1, 50)).unwrap();
        state.position(&report(130, 2, 50)).unwrap();
        assert_eq!(state.cars.len(), 2);
        assert!(
            state.cars.capacity() < busy / 100,
            "{} of {busy} slots kept",
            state.cars.capacity()
        );
    }

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
