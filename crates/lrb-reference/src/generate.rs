//! Deterministic Linear Road input generator.
//!
//! The original generators need a traffic simulator or a JVM and are not
//! reproducible byte for byte; this one is a small, seeded traffic model whose
//! only goals are the benchmark's load shape and traffic that exercises every
//! rule of `docs/LRB.md`: congestion tolls, accidents, exit-lane reports,
//! re-entering cars and both kinds of queries.
//!
//! The model, per expressway and direction: cars enter at a random segment on
//! the entrance ramp (lane 0), drive in lanes 1..=3 at a speed that falls with
//! the number of cars in their segment, and leave from the exit ramp (lane 4)
//! of their exit segment. Every car reports every 30 s; cars are kept in 30
//! "phase" buckets (one per second of the 30-second cycle) so that each second
//! only the cars of one bucket report, and the number of cars entering tops up
//! each bucket to the target load of that second.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The standard run length: the benchmark simulates 3 hours.
pub const DEFAULT_DURATION_SECS: u32 = 10_800;
/// The longest run the input format allows (Time is at most 86399).
pub const MAX_DURATION_SECS: u32 = 86_400;
/// XWay is at most 999 in the input format.
pub const MAX_XWAYS: u32 = 1_000;

/// Seconds between two reports of one car.
const REPORT_INTERVAL: u32 = 30;
/// Segment length in feet.
const SEGMENT_FEET: u32 = 5_280;
/// Segments per direction.
const SEGMENTS: u32 = 100;
/// Feet travelled in one report interval per mph: 5280 / 3600 * 30.
const FEET_PER_MPH_INTERVAL: u32 = 44;
/// Probability, per million report lines, that an account-balance query
/// follows the report (0.5 % of lines).
const BALANCE_QUERY_PPM: u32 = 5_000;
/// Probability, per million report lines, of a daily-expenditure query
/// (0.1 % of lines).
const EXPENDITURE_QUERY_PPM: u32 = 1_000;
/// Share, per million, of daily-expenditure queries asking for Day 0, which
/// the rules say must be dropped.
const DAY_ZERO_PPM: u32 = 25_000;
/// Share, per million, of queries about the car that just reported; the
/// others ask about a random car that is or was on the road.
const QUERY_REPORTER_PPM: u32 = 750_000;
/// Chance, per million reports, that a driving car changes lanes.
const LANE_CHANGE_PPM: u32 = 100_000;
/// Share, per million, of exiting cars that come back later.
const REENTRY_PPM: u32 = 100_000;
/// Off-road time of a re-entering car: at least this many seconds...
const REENTRY_MIN_GAP: u32 = 180;
/// ...plus up to this many more.
const REENTRY_EXTRA_GAP: u32 = 420;
/// Longest trip, in segments.
const MAX_TRIP_SEGMENTS: u32 = 40;
/// Historical-toll lines per car, before adding the days its queries ask for.
const HISTORY_DAYS_MIN: u32 = 3;
const HISTORY_DAYS_EXTRA: u32 = 5;
/// The latest day in the historical-tolls file (1 is yesterday).
const HISTORY_LAST_DAY: u32 = 69;
/// An accident stops each of its two cars for this many reports at least...
const ACCIDENT_MIN_REPORTS: u32 = 5;
/// ...plus up to this many more.
const ACCIDENT_EXTRA_REPORTS: u32 = 15;
/// Seconds between accidents on one expressway: at least...
const ACCIDENT_MIN_GAP: u32 = 240;
/// ...plus up to this many more.
const ACCIDENT_EXTRA_GAP: u32 = 360;
/// The second stopped car is picked among cars at most this far upstream.
const ACCIDENT_REACH_FEET: u32 = 3_000;

/// The load shape of one expressway, as (fraction of the run, reports per
/// second) points joined by straight lines. It follows the later Java
/// generator: quiet at first, a peak at 60-70 % of the run, then a decline.
const LOAD_SHAPE: [(f64, f64); 5] = [
    (0.0, 200.0),
    (0.1, 260.0),
    (0.6, 2_800.0),
    (0.7, 2_800.0),
    (1.0, 2_300.0),
];

/// What to generate and where to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Number of expressways (L); the load scales linearly with it.
    pub xways: u32,
    /// The only source of randomness: one seed always gives the same bytes.
    pub seed: u64,
    /// Simulated seconds; shorter runs compress the whole load shape so that
    /// even a 20-minute run reaches congested traffic.
    pub duration_secs: u32,
    /// Receives `input.csv` and `historical-tolls.csv`; created if missing.
    pub out_dir: PathBuf,
}

impl GenerateOptions {
    /// One expressway, seed 0, the standard 3-hour run.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        GenerateOptions {
            xways: 1,
            seed: 0,
            duration_secs: DEFAULT_DURATION_SECS,
            out_dir: out_dir.into(),
        }
    }
}

/// Counts of what was written, so callers can report them without rereading
/// the (large) files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GenerateSummary {
    /// Lines in `input.csv`.
    pub lines: u64,
    /// Type 0 lines.
    pub position_reports: u64,
    /// Type 2 lines.
    pub balance_queries: u64,
    /// Type 3 lines (including the Day 0 ones that must be dropped).
    pub expenditure_queries: u64,
    /// Distinct VIDs; a re-entering car counts once.
    pub cars: u64,
    /// Lines in `historical-tolls.csv`.
    pub history_lines: u64,
}

/// Progress of a long generation, so a CLI can show that it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateProgress {
    /// Simulated seconds completed.
    pub sim_second: u32,
    /// The run's length, for a percentage.
    pub duration_secs: u32,
    /// Lines of `input.csv` written so far.
    pub lines: u64,
}

/// Why generation failed; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The expressway count is outside what the input format can express.
    #[error(
        "the number of expressways must be between 1 and {MAX_XWAYS} (got {0}); \
         pass 1 for a single-expressway run"
    )]
    BadXways(u32),
    /// The duration is zero or longer than one day.
    #[error(
        "the duration must be between 1 and {MAX_DURATION_SECS} simulated seconds (got {0}); \
         pass {DEFAULT_DURATION_SECS} for the standard 3-hour run"
    )]
    BadDuration(u32),
    /// The output directory could not be created.
    #[error("cannot create the output directory {}: {source}; pass a directory you can write to", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file could not be created or written.
    #[error("cannot write {}: {source}; check the disk space and permissions", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Writes `input.csv` and `historical-tolls.csv` into `opts.out_dir`.
///
/// `progress` is called about once per simulated minute and once at the end.
pub fn generate(
    opts: &GenerateOptions,
    progress: &mut dyn FnMut(GenerateProgress),
) -> Result<GenerateSummary, GenerateError> {
    if opts.xways == 0 || opts.xways > MAX_XWAYS {
        return Err(GenerateError::BadXways(opts.xways));
    }
    if opts.duration_secs == 0 || opts.duration_secs > MAX_DURATION_SECS {
        return Err(GenerateError::BadDuration(opts.duration_secs));
    }
    fs::create_dir_all(&opts.out_dir).map_err(|source| GenerateError::CreateDir {
        path: opts.out_dir.clone(),
        source,
    })?;
    let input = CsvFile::create(&opts.out_dir.join("input.csv"))?;
    let mut sim = Simulation::new(opts, input);
    for t in 0..opts.duration_secs {
        if t % 60 == 0 {
            progress(GenerateProgress {
                sim_second: t,
                duration_secs: opts.duration_secs,
                lines: sim.traffic.summary.lines,
            });
        }
        sim.second(t)?;
    }
    sim.traffic.input.finish()?;
    progress(GenerateProgress {
        sim_second: opts.duration_secs,
        duration_secs: opts.duration_secs,
        lines: sim.traffic.summary.lines,
    });
    let mut history = CsvFile::create(&opts.out_dir.join("historical-tolls.csv"))?;
    sim.traffic.write_history(&mut history)?;
    history.finish()?;
    sim.traffic.summary.cars = u64::from(sim.traffic.next_vid);
    Ok(sim.traffic.summary)
}

/// splitmix64: tiny, fast and good enough for traffic noise; hand-written so
/// the output never changes with a dependency's version.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by multiply-shift.
    fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// True with probability `per_million` / 1,000,000.
    fn chance(&mut self, per_million: u32) -> bool {
        self.below(1_000_000) < per_million
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A car's planned stop for an accident.
#[derive(Clone, Copy)]
struct Stop {
    pos: u32,
    lane: u8,
    /// Zero-speed reports still to send.
    reports_left: u32,
}

#[derive(Clone, Copy)]
struct Car {
    vid: u32,
    pos: u32,
    dir: u8,
    lane: u8,
    speed: u32,
    exit_seg: u32,
    /// Per-driver speed preference in mph, added to the congestion speed.
    pref: i32,
    /// True until the car's entrance-ramp report has been written.
    entering: bool,
    stop: Option<Stop>,
}

impl Car {
    fn seg(&self) -> u32 {
        self.pos / SEGMENT_FEET
    }
}

/// Cars slow down upstream of an accident until it is cleared.
struct SlowZone {
    dir: u8,
    seg: u32,
    until: u32,
}

impl SlowZone {
    /// The accident segment and the two segments before it.
    fn covers(&self, dir: u8, seg: u32) -> bool {
        dir == self.dir
            && if dir == 0 {
                seg <= self.seg && seg + 2 >= self.seg
            } else {
                seg >= self.seg && seg <= self.seg + 2
            }
    }
}

struct Expressway {
    xway: u32,
    /// Cars by report phase: bucket `t % 30` reports at second `t`.
    buckets: Vec<Vec<Car>>,
    /// Cars currently in each (direction, segment), for their speed.
    counts: [[u32; SEGMENTS as usize]; 2],
    zones: Vec<SlowZone>,
    next_accident: u32,
}

/// A car that left and will come back on the same expressway.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Reentry {
    time: u32,
    xway: u32,
    vid: u32,
}

/// Everything but the expressways, so that one expressway can be borrowed
/// mutably next to it.
struct Traffic {
    rng: Rng,
    xway_count: u32,
    reentries: BinaryHeap<Reverse<Reentry>>,
    next_vid: u32,
    next_qid: u64,
    /// (VID, Day, XWay) of every Day >= 1 expenditure query, so the
    /// historical file answers each of them.
    queried_days: Vec<(u32, u32, u32)>,
    input: CsvFile,
    summary: GenerateSummary,
}

struct Simulation {
    duration: u32,
    xways: Vec<Expressway>,
    traffic: Traffic,
}

impl Simulation {
    fn new(opts: &GenerateOptions, input: CsvFile) -> Self {
        let mut rng = Rng(opts.seed);
        let xways = (0..opts.xways)
            .map(|xway| Expressway {
                xway,
                buckets: (0..REPORT_INTERVAL).map(|_| Vec::new()).collect(),
                counts: [[0; SEGMENTS as usize]; 2],
                zones: Vec::new(),
                next_accident: first_accident_time(&mut rng, opts.duration_secs),
            })
            .collect();
        Simulation {
            duration: opts.duration_secs,
            xways,
            traffic: Traffic {
                rng,
                xway_count: opts.xways,
                reentries: BinaryHeap::new(),
                next_vid: 0,
                next_qid: 0,
                queried_days: Vec::new(),
                input,
                summary: GenerateSummary::default(),
            },
        }
    }

    /// Simulates second `t` on every expressway.
    fn second(&mut self, t: u32) -> Result<(), GenerateError> {
        let phase = (t % REPORT_INTERVAL) as usize;
        let traffic = &mut self.traffic;
        while traffic.reentries.peek().is_some_and(|r| r.0.time <= t) {
            if let Some(Reverse(back)) = traffic.reentries.pop() {
                let car = new_car(&mut traffic.rng, back.vid);
                self.xways[back.xway as usize].buckets[phase].push(car);
            }
        }
        let target = reports_per_second(t, self.duration);
        for xw in &mut self.xways {
            xw.zones.retain(|z| z.until >= t);
            if t >= xw.next_accident {
                xw.next_accident = if start_accident(xw, &mut traffic.rng, t) {
                    t + ACCIDENT_MIN_GAP + traffic.rng.below(ACCIDENT_EXTRA_GAP + 1)
                } else {
                    t + 1
                };
            }
            let mut bucket = std::mem::take(&mut xw.buckets[phase]);
            let result = traffic.run_bucket(xw, &mut bucket, t, target);
            xw.buckets[phase] = bucket;
            result?;
        }
        Ok(())
    }
}

impl Traffic {
    /// Reports every car of one phase bucket, then lets new cars enter until
    /// this second's report count reaches the target.
    fn run_bucket(
        &mut self,
        xw: &mut Expressway,
        bucket: &mut Vec<Car>,
        t: u32,
        target: f64,
    ) -> Result<(), GenerateError> {
        let mut reports = 0u32;
        let mut i = 0;
        while i < bucket.len() {
            let exited = self.report(xw, &mut bucket[i], t)?;
            reports += 1;
            if exited {
                let car = bucket.swap_remove(i);
                if self.rng.chance(REENTRY_PPM) {
                    let time = t + REENTRY_MIN_GAP + self.rng.below(REENTRY_EXTRA_GAP + 1);
                    self.reentries.push(Reverse(Reentry {
                        time,
                        xway: xw.xway,
                        vid: car.vid,
                    }));
                }
            } else {
                i += 1;
            }
        }
        let noisy = target * (0.95 + 0.1 * self.rng.unit());
        let wanted = noisy as u32 + u32::from(self.rng.unit() < noisy.fract());
        for _ in reports..wanted {
            let vid = self.next_vid;
            self.next_vid += 1;
            let mut car = new_car(&mut self.rng, vid);
            // A new car's first report can never be its exit.
            self.report(xw, &mut car, t)?;
            bucket.push(car);
        }
        Ok(())
    }

    /// Moves one car by one report interval and writes its report (and maybe
    /// a query). Returns true when this was the car's exit-ramp report.
    fn report(
        &mut self,
        xw: &mut Expressway,
        car: &mut Car,
        t: u32,
    ) -> Result<bool, GenerateError> {
        let dir = usize::from(car.dir);
        let old_seg = car.seg();
        let mut exited = false;
        if car.entering {
            car.entering = false;
            let n = xw.counts[dir][old_seg as usize];
            car.speed = clamp_speed(congestion_speed(n) / 2 + car.pref);
            xw.counts[dir][old_seg as usize] += 1;
        } else if let Some(mut stop) = car.stop {
            car.pos = stop.pos;
            car.lane = stop.lane;
            car.speed = 0;
            stop.reports_left -= 1;
            car.stop = (stop.reports_left > 0).then_some(stop);
            move_count(&mut xw.counts[dir], old_seg, car.seg());
        } else {
            let n = xw.counts[dir][old_seg as usize];
            let mut speed = congestion_speed(n) + car.pref + self.rng.below(7) as i32 - 3;
            if xw.zones.iter().any(|z| z.covers(car.dir, old_seg)) {
                speed /= 3;
            }
            let speed = clamp_speed(speed);
            let step = speed * FEET_PER_MPH_INTERVAL;
            let (new_pos, reached_exit) = if car.dir == 0 {
                let last = car.exit_seg * SEGMENT_FEET + SEGMENT_FEET - 1;
                let p = car.pos + step;
                (p.min(last), p / SEGMENT_FEET >= car.exit_seg)
            } else {
                let first = car.exit_seg * SEGMENT_FEET;
                let p = car.pos.saturating_sub(step);
                (p.max(first), p / SEGMENT_FEET <= car.exit_seg)
            };
            car.speed = (new_pos.abs_diff(car.pos) / FEET_PER_MPH_INTERVAL).max(1);
            car.pos = new_pos;
            if reached_exit {
                car.lane = 4;
                exited = true;
                xw.counts[dir][old_seg as usize] -= 1;
            } else {
                if car.lane == 0 || self.rng.chance(LANE_CHANGE_PPM) {
                    car.lane = 1 + self.rng.below(3) as u8;
                }
                move_count(&mut xw.counts[dir], old_seg, car.seg());
            }
        }
        self.input.position(t, car, xw.xway)?;
        self.summary.lines += 1;
        self.summary.position_reports += 1;
        self.maybe_query(t, car.vid)?;
        Ok(exited)
    }

    /// After a report line, maybe writes a balance or expenditure query, for
    /// the reporting car or an earlier one.
    fn maybe_query(&mut self, t: u32, reporter: u32) -> Result<(), GenerateError> {
        let draw = self.rng.below(1_000_000);
        if draw >= BALANCE_QUERY_PPM + EXPENDITURE_QUERY_PPM {
            return Ok(());
        }
        let vid = if self.rng.chance(QUERY_REPORTER_PPM) {
            reporter
        } else {
            self.rng.below(self.next_vid)
        };
        let qid = self.next_qid;
        self.next_qid += 1;
        if draw < BALANCE_QUERY_PPM {
            self.input.balance_query(t, vid, qid)?;
            self.summary.balance_queries += 1;
        } else {
            let xway = self.rng.below(self.xway_count);
            let day = if self.rng.chance(DAY_ZERO_PPM) {
                0
            } else {
                1 + self.rng.below(HISTORY_LAST_DAY)
            };
            if day > 0 {
                self.queried_days.push((vid, day, xway));
            }
            self.input.expenditure_query(t, vid, xway, qid, day)?;
            self.summary.expenditure_queries += 1;
        }
        self.summary.lines += 1;
        Ok(())
    }

    /// A handful of random (Day, XWay) tolls per car plus every (Day, XWay)
    /// a query asked about, one line each, ordered by VID, Day and XWay.
    fn write_history(&mut self, out: &mut CsvFile) -> Result<(), GenerateError> {
        self.queried_days.sort_unstable();
        self.queried_days.dedup();
        let xways = self.xway_count;
        let mut queried = self.queried_days.iter().peekable();
        let mut days: Vec<(u32, u32)> = Vec::new();
        for vid in 0..self.next_vid {
            days.clear();
            for _ in 0..HISTORY_DAYS_MIN + self.rng.below(HISTORY_DAYS_EXTRA + 1) {
                days.push((1 + self.rng.below(HISTORY_LAST_DAY), self.rng.below(xways)));
            }
            while let Some(&(_, day, xway)) = queried.next_if(|q| q.0 == vid) {
                days.push((day, xway));
            }
            days.sort_unstable();
            days.dedup();
            for &(day, xway) in &days {
                out.history(vid, day, xway, self.rng.below(100))?;
                self.summary.history_lines += 1;
            }
        }
        Ok(())
    }
}

/// The first accident comes early enough that short runs have several.
fn first_accident_time(rng: &mut Rng, duration: u32) -> u32 {
    let latest = (duration / 10).clamp(60, ACCIDENT_MIN_GAP);
    60 + rng.below(latest)
}

/// Target reports per second on one expressway at second `t`.
fn reports_per_second(t: u32, duration: u32) -> f64 {
    let f = f64::from(t) / f64::from(duration);
    LOAD_SHAPE
        .windows(2)
        .find(|w| f <= w[1].0)
        .map_or(LOAD_SHAPE[LOAD_SHAPE.len() - 1].1, |w| {
            let (f0, r0) = w[0];
            let (f1, r1) = w[1];
            r0 + (r1 - r0) * (f - f0) / (f1 - f0)
        })
}

/// Speed falls with the number of cars in the segment: 90 mph when empty,
/// 40 mph around 450 cars, 20 mph around 1260. Cars times speed keeps rising
/// with the count, so a busy segment still drains and traffic does not lock
/// up into an ever-growing jam.
fn congestion_speed(cars_in_segment: u32) -> i32 {
    let cars = i64::from(cars_in_segment);
    // The quotient is at most 90, so the narrowing is lossless.
    (32_400 / (360 + cars)).clamp(10, 90) as i32
}

/// Moving cars never report 0 (that would look like a stop) or above 100.
fn clamp_speed(speed: i32) -> u32 {
    speed.clamp(5, 100) as u32
}

fn move_count(counts: &mut [u32; SEGMENTS as usize], from: u32, to: u32) {
    counts[from as usize] -= 1;
    counts[to as usize] += 1;
}

/// A car about to enter at a random segment and direction, with a trip of
/// 1..=40 segments that ends inside the expressway.
fn new_car(rng: &mut Rng, vid: u32) -> Car {
    let dir = rng.below(2) as u8;
    let length = 1 + rng.below(MAX_TRIP_SEGMENTS);
    let (entry, exit_seg) = if dir == 0 {
        let entry = rng.below(SEGMENTS - 1);
        (entry, (entry + length).min(SEGMENTS - 1))
    } else {
        let entry = 1 + rng.below(SEGMENTS - 1);
        (entry, entry.saturating_sub(length))
    };
    Car {
        vid,
        pos: entry * SEGMENT_FEET + rng.below(SEGMENT_FEET),
        dir,
        lane: 0,
        speed: 0,
        exit_seg,
        pref: rng.below(21) as i32 - 10,
        entering: true,
        stop: None,
    }
}

/// Tries to start an accident at second `t`: a car reporting now (A) stops a
/// little ahead, and a car just upstream that reports within the next 29 s
/// (B) stops at exactly the same lane and position. Both stay stopped for
/// 5..=20 reports, which yields the four-report stop reports of the rules.
/// Returns false when no suitable pair exists right now.
fn start_accident(xw: &mut Expressway, rng: &mut Rng, t: u32) -> bool {
    let phase = (t % REPORT_INTERVAL) as usize;
    let bucket = &xw.buckets[phase];
    if bucket.is_empty() {
        return false;
    }
    let start = rng.below(bucket.len() as u32) as usize;
    let first = (0..bucket.len())
        .map(|k| (start + k) % bucket.len())
        .find_map(|i| accident_place(&bucket[i]).map(|place| (i, place)));
    let Some((a, (pos, seg))) = first else {
        return false;
    };
    let dir = bucket[a].dir;
    let lane = bucket[a].lane;
    let follower = (1..REPORT_INTERVAL as usize).find_map(|k| {
        let b = (phase + k) % REPORT_INTERVAL as usize;
        xw.buckets[b]
            .iter()
            .position(|c| can_follow(c, dir, pos, seg))
            .map(|i| (b, i))
    });
    let Some((b, i)) = follower else {
        return false;
    };
    let a_reports = ACCIDENT_MIN_REPORTS + rng.below(ACCIDENT_EXTRA_REPORTS + 1);
    let b_reports = ACCIDENT_MIN_REPORTS + rng.below(ACCIDENT_EXTRA_REPORTS + 1);
    xw.buckets[phase][a].stop = Some(Stop {
        pos,
        lane,
        reports_left: a_reports,
    });
    xw.buckets[b][i].stop = Some(Stop {
        pos,
        lane,
        reports_left: b_reports,
    });
    xw.zones.push(SlowZone {
        dir,
        seg,
        until: t + REPORT_INTERVAL * (a_reports.max(b_reports) + 2),
    });
    true
}

/// Where car A would stop (position, segment), if it can be an accident's
/// first car: driving in a travel lane, not already stopping, and with its
/// exit at least two segments beyond the stop.
fn accident_place(car: &Car) -> Option<(u32, u32)> {
    if car.entering || car.stop.is_some() || !(1..=3).contains(&car.lane) || car.speed < 10 {
        return None;
    }
    let step = car.speed * FEET_PER_MPH_INTERVAL / 2;
    let pos = if car.dir == 0 {
        car.pos + step
    } else {
        car.pos.checked_sub(step)?
    };
    let seg = pos / SEGMENT_FEET;
    let room = if car.dir == 0 {
        car.exit_seg >= seg + 2
    } else {
        seg >= car.exit_seg + 2
    };
    room.then_some((pos, seg))
}

/// Whether `car` can reach the accident place at its next report: same
/// direction, on the road, upstream within reach, exiting beyond it.
fn can_follow(car: &Car, dir: u8, pos: u32, seg: u32) -> bool {
    if car.dir != dir || car.entering || car.stop.is_some() || car.lane == 0 {
        return false;
    }
    if dir == 0 {
        car.pos < pos && pos - car.pos <= ACCIDENT_REACH_FEET && car.exit_seg >= seg + 2
    } else {
        car.pos > pos && car.pos - pos <= ACCIDENT_REACH_FEET && seg >= car.exit_seg + 2
    }
}

/// A buffered CSV file written with hand-rolled integer formatting: the
/// generator writes tens of millions of lines, so no line allocates.
struct CsvFile {
    path: PathBuf,
    out: BufWriter<File>,
    line: Vec<u8>,
}

impl CsvFile {
    fn create(path: &Path) -> Result<Self, GenerateError> {
        let file = File::create(path).map_err(|source| GenerateError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(CsvFile {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 22, file),
            line: Vec::with_capacity(128),
        })
    }

    fn num(&mut self, value: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = value;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.line.extend_from_slice(&digits[i..]);
    }

    /// Appends `value` followed by a comma.
    fn field(&mut self, value: u64) {
        self.num(value);
        self.line.push(b',');
    }

    fn flush_line(&mut self) -> Result<(), GenerateError> {
        self.line.push(b'\n');
        let result = self.out.write_all(&self.line);
        self.line.clear();
        result.map_err(|source| GenerateError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// `0,Time,VID,Spd,XWay,Lane,Dir,Seg,Pos,-1,-1,-1,-1,-1,-1`
    fn position(&mut self, t: u32, car: &Car, xway: u32) -> Result<(), GenerateError> {
        self.line.extend_from_slice(b"0,");
        self.field(u64::from(t));
        self.field(u64::from(car.vid));
        self.field(u64::from(car.speed));
        self.field(u64::from(xway));
        self.field(u64::from(car.lane));
        self.field(u64::from(car.dir));
        self.field(u64::from(car.seg()));
        self.num(u64::from(car.pos));
        self.line.extend_from_slice(b",-1,-1,-1,-1,-1,-1");
        self.flush_line()
    }

    /// `2,Time,VID,-1,-1,-1,-1,-1,-1,QID,-1,-1,-1,-1,-1`
    fn balance_query(&mut self, t: u32, vid: u32, qid: u64) -> Result<(), GenerateError> {
        self.line.extend_from_slice(b"2,");
        self.field(u64::from(t));
        self.field(u64::from(vid));
        self.line.extend_from_slice(b"-1,-1,-1,-1,-1,-1,");
        self.num(qid);
        self.line.extend_from_slice(b",-1,-1,-1,-1,-1");
        self.flush_line()
    }

    /// `3,Time,VID,-1,XWay,-1,-1,-1,-1,QID,-1,-1,-1,-1,Day`
    fn expenditure_query(
        &mut self,
        t: u32,
        vid: u32,
        xway: u32,
        qid: u64,
        day: u32,
    ) -> Result<(), GenerateError> {
        self.line.extend_from_slice(b"3,");
        self.field(u64::from(t));
        self.field(u64::from(vid));
        self.line.extend_from_slice(b"-1,");
        self.field(u64::from(xway));
        self.line.extend_from_slice(b"-1,-1,-1,-1,");
        self.field(qid);
        self.line.extend_from_slice(b"-1,-1,-1,-1,");
        self.num(u64::from(day));
        self.flush_line()
    }

    /// `VID,Day,XWay,Toll`
    fn history(&mut self, vid: u32, day: u32, xway: u32, toll: u32) -> Result<(), GenerateError> {
        self.field(u64::from(vid));
        self.field(u64::from(day));
        self.field(u64::from(xway));
        self.num(u64::from(toll));
        self.flush_line()
    }

    fn finish(&mut self) -> Result<(), GenerateError> {
        self.out.flush().map_err(|source| GenerateError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_shape_is_quiet_then_peaks_then_declines() {
        assert_eq!(reports_per_second(0, 10_800), 200.0);
        assert_eq!(reports_per_second(540, 10_800), 230.0);
        assert_eq!(reports_per_second(7_000, 10_800), 2_800.0);
        assert_eq!(reports_per_second(10_800, 10_800), 2_300.0);
        // A 20-minute run has the same shape, compressed.
        assert_eq!(reports_per_second(720, 1_200), 2_800.0);
    }

    #[test]
    fn congestion_slows_cars_below_the_toll_threshold() {
        assert_eq!(congestion_speed(0), 90);
        assert_eq!(congestion_speed(450), 40);
        assert_eq!(congestion_speed(1_260), 20);
        assert_eq!(congestion_speed(10_000), 10);
    }

    #[test]
    fn rng_below_stays_in_range_and_covers_it() {
        let mut rng = Rng(7);
        let mut seen = [false; 5];
        for _ in 0..1_000 {
            let v = rng.below(5) as usize;
            seen[v] = true;
        }
        assert_eq!(seen, [true; 5]);
    }

    #[test]
    fn integers_are_formatted_like_display() {
        let dir = std::env::temp_dir().join(format!("lrb-ref-fmt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut file = CsvFile::create(&dir.join("x.csv")).unwrap();
        for v in [0u64, 7, 10, 99, 527_999, u64::MAX] {
            file.num(v);
            assert_eq!(file.line, v.to_string().into_bytes());
            file.line.clear();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_options_are_refused_with_a_hint() {
        let mut opts = GenerateOptions::new(std::env::temp_dir().join("unused"));
        opts.xways = 0;
        let err = generate(&opts, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("pass 1"), "{err}");
        opts.xways = 1;
        opts.duration_secs = 86_401;
        let err = generate(&opts, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("pass 10800"), "{err}");
        opts.duration_secs = 0;
        assert!(matches!(
            generate(&opts, &mut |_| {}),
            Err(GenerateError::BadDuration(0))
        ));
    }
}
