//! The expected answers of `docs/LRB.md`, computed in one pass over the
//! input. Every rule of that page maps to one function or method here, named
//! after the page's own terms (minute, NOV, LAV, stop report, active place,
//! segment entry), so the two can be read side by side.
//!
//! Only the state the rules can still consult is kept: the current minute of
//! each segment plus its last five, each car's last three reports while it
//! reports every 30 s, stop reports of the last 30 s and the places active in
//! the previous minute.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::BufRead;
use std::path::Path;

use super::input::{parse_history, parse_record, Lines, PositionReport, Record};
use super::ValidateError;

/// An expected toll notification `0,VID,Time,Emit,LAV,Toll` (Emit is not
/// compared). Fields are ordered so that sorting puts early answers first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TollRow {
    /// The entering position report's Time.
    pub time: u32,
    /// The car.
    pub vid: i64,
    /// LAV(m) of the entered segment; -1 when it had no reports.
    pub lav: i32,
    /// Toll(m) of the entered segment.
    pub toll: i64,
}

/// An expected accident alert `1,Time,Emit,VID,Seg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlertRow {
    /// The entering position report's Time.
    pub time: u32,
    /// The car.
    pub vid: i64,
    /// Segment of the affecting accident nearest to the car.
    pub seg: u32,
}

/// An account-balance query with every answer the rules accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceQuery {
    /// The query's Time (t).
    pub time: u32,
    /// The car asked about.
    pub vid: i64,
    /// The query's id, which the answer repeats.
    pub qid: i64,
    /// Accepted Bal values, ascending: the tolls notified before t - 30 plus
    /// any input-order prefix of those notified in [t - 30, t].
    pub accepted: Vec<i64>,
}

impl BalanceQuery {
    /// Whether `(result_time, bal)` is an accepted answer; ResultTime may be
    /// anything in [t - 30, t].
    pub fn accepts(&self, result_time: i64, bal: i64) -> bool {
        let t = i64::from(self.time);
        (t - 30..=t).contains(&result_time) && self.accepted.binary_search(&bal).is_ok()
    }
}

/// An expected daily-expenditure answer `3,Time,Emit,QID,Bal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExpenditureRow {
    /// The query's Time.
    pub time: u32,
    /// The query's id.
    pub qid: i64,
    /// The historical toll of (VID, Day, XWay), 0 when the file has none.
    pub bal: i64,
}

/// Everything a correct run must output, in input order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// One per segment entry outside the exit lane.
    pub tolls: Vec<TollRow>,
    /// One per segment entry (outside the exit lane) affected by an accident.
    pub accidents: Vec<AlertRow>,
    /// One per Type 2 line.
    pub balances: Vec<BalanceQuery>,
    /// One per Type 3 line with Day 1..=69.
    pub expenditures: Vec<ExpenditureRow>,
}

/// Computes the expected answers from an input stream and a historical-tolls
/// stream. Errors name the streams `<input>` and `<history>`; `validate`
/// names the real files.
pub fn expected_answers(
    input: impl BufRead,
    history: impl BufRead,
) -> Result<Expected, ValidateError> {
    compute(
        Lines::new(input, Path::new("<input>")),
        Lines::new(history, Path::new("<history>")),
    )
}

/// `expected_answers` on already-labelled readers.
pub(super) fn compute(
    mut input: Lines<impl BufRead>,
    mut history: Lines<impl BufRead>,
) -> Result<Expected, ValidateError> {
    let mut rules = Rules {
        history: load_history(&mut history)?,
        ..Rules::default()
    };
    while let Some((_, text)) = input.next_line()? {
        let record = parse_record(text).map_err(|m| input.error(m))?;
        let time = record.time();
        if let Some(previous) = rules.clock {
            if time < previous {
                return Err(input.error(format!(
                    "Time {time} is before the previous line's Time {previous}: \
                     lines must be in non-decreasing Time order"
                )));
            }
        }
        rules.advance_clock(time);
        match record {
            Record::Position(report) => rules.position_report(&report),
            Record::Balance { time, vid, qid } => rules.pending_balances.push((time, vid, qid)),
            Record::Expenditure {
                time,
                vid,
                xway,
                qid,
                day,
            } => rules.daily_expenditure(time, vid, xway, qid, day),
            Record::TravelTime { .. } => {}
        }
    }
    rules.answer_pending_balances();
    Ok(rules.expected)
}

/// Historical tolls by (VID, Day, XWay).
type History = HashMap<(i64, i64, i64), i64>;

fn load_history(lines: &mut Lines<impl BufRead>) -> Result<History, ValidateError> {
    let mut history = History::new();
    while let Some((_, text)) = lines.next_line()? {
        let h = parse_history(text).map_err(|m| lines.error(m))?;
        if history.insert((h.vid, h.day, h.xway), h.toll).is_some() {
            return Err(lines.error(format!(
                "a second toll for VID {}, Day {}, XWay {}: the file must have one line \
                 per (VID, Day, XWay)",
                h.vid, h.day, h.xway
            )));
        }
    }
    Ok(history)
}

/// minute(t) = t / 60 + 1.
fn minute(t: u32) -> u32 {
    t / 60 + 1
}

/// (XWay, Dir, Seg): the unit of segment statistics.
type SegmentKey = (u32, u32, u32);

/// (XWay, Dir, Lane, Pos): where a car can be stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Place {
    xway: u32,
    dir: u32,
    lane: u32,
    pos: u32,
}

impl Place {
    fn of(r: &PositionReport) -> Place {
        Place {
            xway: r.xway,
            dir: r.dir,
            lane: r.lane,
            pos: r.pos,
        }
    }

    fn seg(&self) -> u32 {
        self.pos / 5280
    }

    /// Whether an accident here affects segment `seg` (same XWay and Dir
    /// already checked): the place is in s..=s+4 for Dir 0, s-4..=s for Dir 1.
    fn affects(&self, seg: u32) -> bool {
        let p = self.seg();
        if self.dir == 0 {
            p >= seg && p <= seg + 4
        } else {
            p <= seg && p + 4 >= seg
        }
    }
}

/// NOV and the minute average A(m') of one finished minute of a segment.
#[derive(Debug, Clone, Copy)]
struct MinuteSummary {
    minute: u32,
    cars: u64,
    average: i64,
}

/// One segment's reports of its latest minute as (VID, Spd), and the
/// summaries of the minutes before it.
#[derive(Debug, Default)]
struct Segment {
    minute: u32,
    reports: Vec<(i64, u32)>,
    finished: VecDeque<MinuteSummary>,
}

impl Segment {
    /// Closes the minutes before `m` and forgets those LAV(m) cannot use.
    fn advance_to(&mut self, m: u32) {
        if self.minute == m {
            return;
        }
        if !self.reports.is_empty() {
            // Group the minute's reports by car: each car's integer mean
            // speed, then A(m') = floor(sum of those means / cars).
            self.reports.sort_unstable();
            let mut cars = 0;
            let mut sum_of_car_means = 0;
            for car in self.reports.chunk_by(|a, b| a.0 == b.0) {
                let speeds: i64 = car.iter().map(|&(_, spd)| i64::from(spd)).sum();
                sum_of_car_means += speeds / car.len() as i64;
                cars += 1;
            }
            self.finished.push_back(MinuteSummary {
                minute: self.minute,
                cars,
                average: sum_of_car_means / cars as i64,
            });
            self.reports.clear();
        }
        self.minute = m;
        while self.finished.front().is_some_and(|s| s.minute + 5 < m) {
            self.finished.pop_front();
        }
    }

    /// NOV(m): distinct cars of minute m - 1 (call `advance_to(m)` first).
    fn nov(&self, m: u32) -> u64 {
        self.finished
            .iter()
            .find(|s| s.minute + 1 == m)
            .map_or(0, |s| s.cars)
    }

    /// LAV(m): floor of the mean of A(m') over the minutes m-5..=m-1 that had
    /// reports, -1 if none (call `advance_to(m)` first, which leaves exactly
    /// those minutes).
    fn lav(&self) -> i64 {
        if self.finished.is_empty() {
            return -1;
        }
        let sum: i64 = self.finished.iter().map(|s| s.average).sum();
        sum / self.finished.len() as i64
    }
}

/// A car's toll account.
#[derive(Debug, Default)]
struct Account {
    /// Sum of all its notified tolls.
    total: i64,
    /// Its notifications of the last 30 s, as (Time, Toll) in input order.
    recent: Vec<(u32, i64)>,
}

#[derive(Default)]
struct Rules {
    history: History,
    /// The Time of the last line read.
    clock: Option<u32>,
    segments: HashMap<SegmentKey, Segment>,
    /// Each car's last three position reports, newest first; dropped once
    /// the car misses a report, since a gap makes its next report a fresh
    /// entry.
    cars: HashMap<i64, [Option<PositionReport>; 3]>,
    accounts: HashMap<i64, Account>,
    /// Stop reports of the last 30 s per place, as (Time, VID).
    stops: HashMap<Place, Vec<(u32, i64)>>,
    /// Active places by minute, for the current minute and the one before.
    active: BTreeMap<u32, HashSet<Place>>,
    /// Balance queries of the current second, answered once every
    /// notification of that second is known.
    pending_balances: Vec<(u32, i64, i64)>,
    expected: Expected,
}

impl Rules {
    /// Moves the clock to `time` (never backwards): answers the balance
    /// queries of earlier seconds and, on a new minute, forgets what no
    /// later rule can consult.
    fn advance_clock(&mut self, time: u32) {
        let Some(previous) = self.clock.replace(time) else {
            return;
        };
        if time == previous {
            return;
        }
        self.answer_pending_balances();
        if minute(time) != minute(previous) {
            self.cars
                .retain(|_, recent| recent[0].is_some_and(|r| r.time + 30 >= time));
            self.stops.retain(|_, stops| {
                stops.retain(|&(t, _)| t + 30 >= time);
                !stops.is_empty()
            });
            let m = minute(time);
            self.active
                .retain(|&active_minute, _| active_minute + 1 >= m);
        }
    }

    fn position_report(&mut self, r: &PositionReport) {
        let m = minute(r.time);
        let recent = self.cars.entry(r.vid).or_insert([None; 3]);
        let previous = *recent;
        *recent = [Some(*r), previous[0], previous[1]];
        if self.is_stop_report(r, &previous) {
            self.record_stop(r);
        }
        let notify = is_segment_entry(r, previous[0].as_ref()) && r.lane != 4;
        let accident = if notify {
            self.affecting_accident(r.xway, r.dir, r.seg, m)
        } else {
            None
        };
        let segment = self.segments.entry((r.xway, r.dir, r.seg)).or_default();
        segment.advance_to(m);
        if notify {
            let nov = segment.nov(m);
            let lav = segment.lav();
            let toll = if accident.is_some() || lav >= 40 || nov <= 50 {
                0
            } else {
                let excess = nov as i64 - 50;
                2 * excess * excess
            };
            self.expected.tolls.push(TollRow {
                time: r.time,
                vid: r.vid,
                // LAV is a mean of speeds in 0..=100, or -1.
                lav: lav as i32,
                toll,
            });
            let account = self.accounts.entry(r.vid).or_default();
            account.total += toll;
            account.recent.retain(|&(t, _)| t + 30 >= r.time);
            account.recent.push((r.time, toll));
            if let Some(seg) = accident {
                self.expected.accidents.push(AlertRow {
                    time: r.time,
                    vid: r.vid,
                    seg,
                });
            }
        }
        // NOV(m) and LAV(m) only use minutes before m, so this report counts
        // from the next minute on.
        segment.reports.push((r.vid, r.spd));
    }

    /// Spd is 0 and the car's three previous reports are at t-30, t-60 and
    /// t-90, all with Spd 0 at the same place.
    fn is_stop_report(&self, r: &PositionReport, previous: &[Option<PositionReport>; 3]) -> bool {
        r.spd == 0
            && previous.iter().zip(1u32..).all(|(p, k)| {
                p.is_some_and(|p| {
                    p.time + 30 * k == r.time && p.spd == 0 && Place::of(&p) == Place::of(r)
                })
            })
    }

    /// Records a stop report; its place becomes active in minute(t) when
    /// another car has a stop report there at a time in [t - 30, t]. Checking
    /// on each arrival covers both orders of two reports of the same second.
    fn record_stop(&mut self, r: &PositionReport) {
        let place = Place::of(r);
        let stops = self.stops.entry(place).or_default();
        stops.retain(|&(t, _)| t + 30 >= r.time);
        let another_car = stops.iter().any(|&(_, vid)| vid != r.vid);
        stops.push((r.time, r.vid));
        if another_car {
            self.active.entry(minute(r.time)).or_default().insert(place);
        }
    }

    /// The segment of the nearest place active in minute m - 1 whose accident
    /// affects (xway, dir, seg), if any.
    fn affecting_accident(&self, xway: u32, dir: u32, seg: u32, m: u32) -> Option<u32> {
        self.active
            .get(&(m - 1))
            .into_iter()
            .flatten()
            .filter(|p| p.xway == xway && p.dir == dir && p.affects(seg))
            .map(Place::seg)
            .min_by_key(|p| p.abs_diff(seg))
    }

    fn daily_expenditure(&mut self, time: u32, vid: i64, xway: u32, qid: i64, day: u32) {
        if day == 0 {
            return;
        }
        let key = (vid, i64::from(day), i64::from(xway));
        self.expected.expenditures.push(ExpenditureRow {
            time,
            qid,
            bal: self.history.get(&key).copied().unwrap_or(0),
        });
    }

    /// Answers the pending balance queries. Called once no line of their
    /// second is left, so the prefixes include every notification at t.
    fn answer_pending_balances(&mut self) {
        for (time, vid, qid) in std::mem::take(&mut self.pending_balances) {
            let mut accepted = vec![0];
            if let Some(account) = self.accounts.get(&vid) {
                let window: Vec<i64> = account
                    .recent
                    .iter()
                    .filter(|&&(t, _)| t + 30 >= time)
                    .map(|&(_, toll)| toll)
                    .collect();
                let mut bal = account.total - window.iter().sum::<i64>();
                accepted = vec![bal];
                for toll in window {
                    bal += toll;
                    accepted.push(bal);
                }
                accepted.sort_unstable();
                accepted.dedup();
            }
            self.expected.balances.push(BalanceQuery {
                time,
                vid,
                qid,
                accepted,
            });
        }
    }
}

/// The car has no previous report, or it is not at t - 30, or it was in
/// another (XWay, Dir, Seg).
fn is_segment_entry(r: &PositionReport, previous: Option<&PositionReport>) -> bool {
    match previous {
        None => true,
        Some(p) => p.time + 30 != r.time || (p.xway, p.dir, p.seg) != (r.xway, r.dir, r.seg),
    }
}
