//! The expected answers of `docs/LRB.md`, computed in one pass over the
//! input. Every rule of that page maps to one function or method here, named
//! after the page's own terms (minute, NOV, LAV, stop report, active place,
//! segment entry), so the two can be read side by side.
//!
//! Only the state the rules can still consult is kept: the current minute of
//! each segment plus its last five, each car's last three reports while it
//! reports every 30 s, stop reports of the last 30 s, the places active in
//! the previous minute, and each car's toll total with the notifications a
//! balance query can still name (the last 60 s and the latest before).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::BufRead;
use std::path::Path;

use super::input::{parse_history, parse_record, time_field, Lines, PositionReport, Record};
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
    /// Accepted (ResultTime, Bal) pairs, ascending (accountBalanceAnswer.pl):
    /// each is a notification of the car and the sum of the tolls of its
    /// notifications before that one, for the latest notification in
    /// [t - 30, t], the one before it, the earliest in [t - 60, t], and,
    /// when [t - 60, t] has none, the latest before t - 60. A car with no
    /// notification up to t has only (t, 0).
    pub accepted: Vec<(u32, i64)>,
}

impl BalanceQuery {
    /// Whether `(result_time, bal)` is an accepted answer.
    pub fn accepts(&self, result_time: i64, bal: i64) -> bool {
        self.accepted
            .iter()
            .any(|&(t, b)| i64::from(t) == result_time && b == bal)
    }

    /// Whether `result_time` is the ResultTime of some accepted answer.
    pub fn accepts_result_time(&self, result_time: i64) -> bool {
        self.accepted
            .iter()
            .any(|&(t, _)| i64::from(t) == result_time)
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
    /// Input lines skipped as bad, in input order (all of them; with
    /// [`BadInput::Stop`] the first is an error instead).
    pub skipped: Vec<SkippedLine>,
}

/// An input line that breaks the "Input" rules of `docs/LRB.md` and was left
/// out, as the query leaves it out (and lists it in `input-errors.csv`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedLine {
    /// 1-based line number in the input file.
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// What to do with an input line that breaks the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BadInput {
    /// Leave it out and list it in [`Expected::skipped`], as `spate lrb run`
    /// does by default.
    #[default]
    Skip,
    /// Fail with [`ValidateError::Input`] at the first one, as `spate lrb
    /// run --stop-on-bad-input` does.
    Stop,
}

/// Computes the expected answers from an input stream and a historical-tolls
/// stream, skipping bad input lines or stopping at the first. Errors name the
/// streams `<input>` and `<history>`; `validate` names the real files.
pub fn expected_answers(
    input: impl BufRead,
    history: impl BufRead,
    bad_input: BadInput,
) -> Result<Expected, ValidateError> {
    compute(
        Lines::new(input, Path::new("<input>")),
        Lines::new(history, Path::new("<history>")),
        bad_input,
    )
}

/// `expected_answers` on already-labelled readers.
pub(super) fn compute(
    mut input: Lines<impl BufRead>,
    mut history: Lines<impl BufRead>,
    bad_input: BadInput,
) -> Result<Expected, ValidateError> {
    let mut rules = Rules {
        history: load_history(&mut history)?,
        ..Rules::default()
    };
    // The largest valid Time of any earlier line, skipped or not: the order
    // rule of docs/LRB.md ("Input").
    let mut latest: Option<u32> = None;
    while let Some((line, text)) = input.next_line()? {
        let time = time_field(text);
        let checked = match (time, latest) {
            (Some(time), Some(previous)) if time < previous => Err(format!(
                "Time {time} is before an earlier line's Time {previous}: \
                 lines must be in non-decreasing Time order"
            )),
            _ => {
                latest = time.max(latest);
                parse_record(text)
            }
        };
        let record = match checked {
            Ok(record) => record,
            Err(message) if bad_input == BadInput::Stop => return Err(input.error(message)),
            Err(message) => {
                rules.expected.skipped.push(SkippedLine { line, message });
                continue;
            }
        };
        rules.advance_clock(record.time());
        match record {
            Record::Position(report) => {
                rules.position_report(&report).map_err(|m| input.error(m))?
            }
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

/// A non-negative rational number in lowest terms. Means of speeds are
/// kept exact so that LAV is truncated once, at the end (extractLavs.pl
/// takes real means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exact {
    num: u128,
    den: u128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Exact {
    const ZERO: Exact = Exact { num: 0, den: 1 };

    /// num / den, reduced (den > 0).
    fn ratio(num: u128, den: u128) -> Exact {
        let g = gcd(num, den);
        Exact {
            num: num / g,
            den: den / g,
        }
    }

    /// The exact sum; `None` if it does not fit 128 bits.
    fn plus(self, other: Exact) -> Option<Exact> {
        let g = gcd(self.den, other.den);
        let den = (self.den / g).checked_mul(other.den)?;
        let num = self
            .num
            .checked_mul(den / self.den)?
            .checked_add(other.num.checked_mul(den / other.den)?)?;
        Some(Exact::ratio(num, den))
    }

    /// The exact quotient by a positive integer.
    fn over(self, count: u128) -> Option<Exact> {
        Some(Exact::ratio(self.num, self.den.checked_mul(count)?))
    }

    fn truncated(self) -> u128 {
        self.num / self.den
    }
}

/// NOV and the minute average A(m') of one finished minute of a segment.
#[derive(Debug, Clone, Copy)]
struct MinuteSummary {
    minute: u32,
    cars: u64,
    /// The exact mean over the minute's cars of each car's exact mean speed.
    average: Exact,
}

/// One segment's reports of its latest minute as (VID, Spd), and the
/// summaries of the minutes before it.
#[derive(Debug, Default)]
struct Segment {
    minute: u32,
    reports: Vec<(i64, u32)>,
    finished: VecDeque<MinuteSummary>,
}

/// Why an exact mean could not be computed.
fn too_large(what: &str, minute: u32) -> String {
    format!(
        "the exact {what} of this segment in minute {minute} does not fit 128-bit arithmetic \
         (cars reported with too many different report counts); Linear Road input has each car \
         report every 30 s"
    )
}

impl Segment {
    /// Closes the minutes before `m` and forgets those LAV(m) cannot use.
    fn advance_to(&mut self, m: u32) -> Result<(), String> {
        if self.minute == m {
            return Ok(());
        }
        if !self.reports.is_empty() {
            // Group the minute's reports by car: each car's exact mean speed,
            // then A(m') = the exact mean of those means.
            self.reports.sort_unstable();
            let mut cars = 0;
            let mut sum_of_car_means = Exact::ZERO;
            for car in self.reports.chunk_by(|a, b| a.0 == b.0) {
                let speeds: u128 = car.iter().map(|&(_, spd)| u128::from(spd)).sum();
                let mean = Exact::ratio(speeds, car.len() as u128);
                sum_of_car_means = sum_of_car_means
                    .plus(mean)
                    .ok_or_else(|| too_large("average speed", self.minute))?;
                cars += 1;
            }
            self.finished.push_back(MinuteSummary {
                minute: self.minute,
                cars,
                average: sum_of_car_means
                    .over(u128::from(cars))
                    .ok_or_else(|| too_large("average speed", self.minute))?,
            });
            self.reports.clear();
        }
        self.minute = m;
        while self.finished.front().is_some_and(|s| s.minute + 5 < m) {
            self.finished.pop_front();
        }
        Ok(())
    }

    /// NOV(m): distinct cars of minute m - 1 (call `advance_to(m)` first).
    fn nov(&self, m: u32) -> u64 {
        self.finished
            .iter()
            .find(|s| s.minute + 1 == m)
            .map_or(0, |s| s.cars)
    }

    /// LAV(m): the exact mean of A(m') over the minutes m-5..=m-1 that had
    /// reports, truncated once; -1 if none (call `advance_to(m)` first,
    /// which leaves exactly those minutes).
    fn lav(&self) -> Result<i64, String> {
        if self.finished.is_empty() {
            return Ok(-1);
        }
        let mut sum = Exact::ZERO;
        for s in &self.finished {
            sum = sum
                .plus(s.average)
                .ok_or_else(|| too_large("LAV", self.minute))?;
        }
        let mean = sum
            .over(self.finished.len() as u128)
            .ok_or_else(|| too_large("LAV", self.minute))?;
        // A mean of speeds in 0..=100.
        Ok(mean.truncated() as i64)
    }
}

/// A car's toll account.
#[derive(Debug, Default)]
struct Account {
    /// Sum of the tolls of all its notifications.
    total: i64,
    /// The notifications a later balance query can still name, oldest
    /// first, as (Time, sum of the tolls notified before it): those of the
    /// last 60 s and the latest one before them.
    notifications: VecDeque<(u32, i64)>,
}

impl Account {
    /// A notification at `time` charging `toll`: the toll counts in the
    /// balance as of every later notification (accountBalanceAnswer.pl
    /// charges a segment's toll when the car leaves it).
    fn notify(&mut self, time: u32, toll: i64) {
        self.notifications.push_back((time, self.total));
        self.total += toll;
        while self
            .notifications
            .get(1)
            .is_some_and(|&(t, _)| t + 60 < time)
        {
            self.notifications.pop_front();
        }
    }

    /// The accepted (ResultTime, Bal) answers to a query at `t`, given every
    /// notification up to `t`: the latest in [t - 30, t], the one before it,
    /// the earliest in [t - 60, t] or, if there is none, the latest before.
    fn answers(&self, t: u32) -> Vec<(u32, i64)> {
        let n = &self.notifications;
        let mut accepted = Vec::new();
        if let Some(i) = n.iter().rposition(|&(time, _)| time + 30 >= t) {
            accepted.push(n[i]);
            if i > 0 {
                accepted.push(n[i - 1]);
            }
        }
        match n.iter().find(|&&(time, _)| time + 60 >= t) {
            Some(&earliest) => accepted.push(earliest),
            None => accepted.extend(n.back().copied()),
        }
        accepted.sort_unstable();
        accepted.dedup();
        accepted
    }
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

    fn position_report(&mut self, r: &PositionReport) -> Result<(), String> {
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
        segment.advance_to(m)?;
        if notify {
            let nov = segment.nov(m);
            let lav = segment.lav()?;
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
            self.accounts.entry(r.vid).or_default().notify(r.time, toll);
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
        Ok(())
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
    /// second is left, so every notification up to t is known. A car with
    /// no notification yet has the balance 0 as of t.
    fn answer_pending_balances(&mut self) {
        for (time, vid, qid) in std::mem::take(&mut self.pending_balances) {
            let accepted = match self.accounts.get(&vid) {
                Some(account) => account.answers(time),
                None => vec![(time, 0)],
            };
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
