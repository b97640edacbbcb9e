//! Linear Road in one plain thread, with no engine.
//!
//! The COST baseline ("Scalability! But at what COST?", McSherry et al.):
//! parse the input, compute the four answer kinds of docs/LRB.md and write
//! them, with no processes, channels, checkpoints or partitioning. Spate's
//! throughput on a machine is judged against this program's on the same
//! input. With [`BaselineOptions::parse_thread`] a second thread reads and
//! parses while the first computes the answers: what a pipeline written
//! by hand makes of two cores, with no engine either. It shares no code
//! with the query (`spate-lrb`) or the reference validator (`lrb-reference`), which checks its answers like any run's.
//!
//! Answers are written as a run writes them, with Emit = Time: the program
//! reads as fast as it can, so simulation time has no wall-clock meaning.
//!
//! ```no_run
//! use lrb_baseline::{run, BaselineOptions};
//!
//! let summary = run(
//!     &BaselineOptions {
//!         input: "lrb/input.csv".into(),
//!         tolls: "lrb/historical-tolls.csv".into(),
//!         out_dir: "lrb/baseline".into(),
//!         parse_thread: false,
//!     },
//!     &mut |_bytes| {},
//! )?;
//! println!("{:.0} tuples/s", summary.tuples_per_sec());
//! # Ok::<(), lrb_baseline::BaselineError>(())
//! ```

mod parse;
mod segments;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use parse::{Position, Record};
use segments::Segment;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineOptions {
    /// The input (`input.csv` of `spate lrb generate`).
    pub input: PathBuf,
    /// The historical tolls (`historical-tolls.csv`).
    pub tolls: PathBuf,
    /// Where `tolls.csv`, `accidents.csv`, `balances.csv`,
    /// `expenditures.csv` and `input-errors.csv` go (created if missing).
    pub out_dir: PathBuf,
    /// Read and parse the input on a thread of its own, handing parsed
    /// lines to the query's thread in batches: the best a two-stage
    /// pipeline written by hand does on two cores, against which an
    /// engine that parses apart from the query can be judged too.
    pub parse_thread: bool,
}

/// What a run did and how fast, for the throughput ratio.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Input tuples read (non-blank lines, bad ones included).
    pub tuples: u64,
    /// Bad input lines skipped (listed in `input-errors.csv`).
    pub skipped: u64,
    /// Toll notifications written.
    pub tolls: u64,
    /// Accident alerts written.
    pub alerts: u64,
    /// Account balances written.
    pub balances: u64,
    /// Daily expenditures written.
    pub expenditures: u64,
    /// Wall-clock seconds from opening the input to the last answer
    /// flushed (loading the historical tolls excluded, as a run loads them
    /// before its clock starts).
    pub seconds: f64,
}

impl Summary {
    /// Input tuples per wall-clock second: the baseline's figure.
    pub fn tuples_per_sec(&self) -> f64 {
        self.tuples as f64 / self.seconds.max(1e-9)
    }
}

/// Why the baseline could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An answer file could not be written.
    #[error("cannot write {path}: {source} (check the output directory and free space)")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The historical-tolls file has a wrong line.
    #[error("{path}, line {line}: {message}")]
    Tolls {
        /// The file.
        path: PathBuf,
        /// Its 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A segment's exact means no longer fit 128-bit arithmetic.
    #[error(
        "input line {line}: the exact speed means of its segment do not fit 128-bit arithmetic \
         (cars with too many different report counts in one minute); Linear Road cars report every 30 s"
    )]
    TooLarge {
        /// The 1-based input line.
        line: u64,
    },
}

/// Runs Linear Road on `options.input` into `options.out_dir`, calling
/// `progress` with the input bytes read so far (about every 16 MB).
pub fn run(
    options: &BaselineOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, BaselineError> {
    let history = load_history(&options.tolls)?;
    std::fs::create_dir_all(&options.out_dir).map_err(|source| BaselineError::Write {
        path: options.out_dir.clone(),
        source,
    })?;
    let mut road = Road {
        history,
        answers: Answers::create(&options.out_dir)?,
        segments: Vec::new(),
        cars: Cars::default(),
        stops: FxHashMap::default(),
        minute: 0,
        skipped: 0,
    };
    let started = Instant::now();
    let file = File::open(&options.input).map_err(|source| BaselineError::Read {
        path: options.input.clone(),
        source,
    })?;
    let reader = BufReader::with_capacity(INPUT_BUFFER_BYTES, file);
    let mut every = ProgressEvery { progress, next: 0 };
    let (tuples, bytes) = if options.parse_thread {
        parse_apart(reader, &options.input, &mut road, &mut every)?
    } else {
        read_lines(reader, &options.input, |line, bytes, record| {
            every.report(bytes);
            road.take(line, record).map(|()| ControlFlow::Continue(()))
        })?
    };
    (every.progress)(bytes);
    let skipped = road.skipped;
    let answers = road.answers.finish()?;
    Ok(Summary {
        tuples,
        skipped,
        tolls: answers[0],
        alerts: answers[1],
        balances: answers[2],
        expenditures: answers[3],
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Progress is reported about every this many input bytes.
const PROGRESS_BYTES: u64 = 16 << 20;

/// The input reader's buffer: the size Spate's feeder reads with, so that
/// the two programs read alike (a 1 MiB buffer measured no faster here).
const INPUT_BUFFER_BYTES: usize = 64 << 10;

/// `progress`, called with the input bytes read about every
/// [`PROGRESS_BYTES`].
struct ProgressEvery<'a> {
    progress: &'a mut dyn FnMut(u64),
    /// The bytes read at which it is called next.
    next: u64,
}

impl ProgressEvery<'_> {
    fn report(&mut self, bytes: u64) {
        if bytes >= self.next {
            (self.progress)(bytes);
            self.next = bytes + PROGRESS_BYTES;
        }
    }
}

/// A parsed input line, by its 1-based number, or why it is skipped.
type ParsedLine = (u64, Result<Record, &'static str>);

/// Reads and parses the input line by line, handing `take` each non-blank
/// line's number, the input bytes read up to its end, and its record or
/// why it is skipped, until the input ends or `take` breaks off. Returns
/// the tuples (non-blank lines) and bytes read.
fn read_lines(
    mut reader: BufReader<File>,
    path: &Path,
    mut take: impl FnMut(
        u64,
        u64,
        Result<Record, &'static str>,
    ) -> Result<ControlFlow<()>, BaselineError>,
) -> Result<(u64, u64), BaselineError> {
    let mut buf = Vec::with_capacity(256);
    let (mut line, mut tuples, mut bytes) = (0u64, 0u64, 0u64);
    // The largest Time of any earlier line that reads as one (the order rule).
    let mut latest: Option<u32> = None;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| BaselineError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if read == 0 {
            break;
        }
        line += 1;
        bytes += read as u64;
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        tuples += 1;
        let fields = parse::split(text);
        let record = match (fields.time, latest) {
            (Some(time), Some(previous)) if time < previous => {
                Err("Time is before an earlier line's Time")
            }
            _ => {
                latest = fields.time.max(latest);
                fields.record()
            }
        };
        if take(line, bytes, record)?.is_break() {
            break;
        }
    }
    Ok((tuples, bytes))
}

/// Parsed lines handed from the parsing thread to the query's at once.
const LINES_PER_BATCH: usize = 1024;

/// Batches on their way to the query's thread: enough to ride out a
/// hiccup of either thread, few enough to stay in cache.
const BATCHES_IN_FLIGHT: usize = 16;

/// Parsed lines on their way to the query's thread, with the input bytes
/// read up to the last of them.
struct Batch {
    lines: Vec<ParsedLine>,
    bytes: u64,
}

/// Reads and parses the input on a thread of its own while this thread
/// applies its lines to `road`, in input order. Returns the tuples and
/// bytes read.
fn parse_apart(
    reader: BufReader<File>,
    path: &Path,
    road: &mut Road,
    progress: &mut ProgressEvery<'_>,
) -> Result<(u64, u64), BaselineError> {
    std::thread::scope(|scope| {
        let (to_query, batches) = mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT);
        // Emptied batches go back, so that the parser allocates none after
        // the first few.
        let (to_parser, emptied) = mpsc::channel::<Vec<ParsedLine>>();
        let parser = scope.spawn(move || {
            let mut batch = Vec::with_capacity(LINES_PER_BATCH);
            let send = |batch: &mut Vec<ParsedLine>, bytes| {
                let spare = emptied
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(LINES_PER_BATCH));
                let full = Batch {
                    lines: std::mem::replace(batch, spare),
                    bytes,
                };
                // A failed send means the query's thread stopped on an
                // error of its own, which is the one to report.
                match to_query.send(full) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            };
            let (tuples, bytes) = read_lines(reader, path, |line, bytes, record| {
                batch.push((line, record));
                Ok(if batch.len() == LINES_PER_BATCH {
                    send(&mut batch, bytes)
                } else {
                    ControlFlow::Continue(())
                })
            })?;
            if !batch.is_empty() {
                // The last batch: nothing is left to stop if it is refused.
                let _ = send(&mut batch, bytes);
            }
            Ok((tuples, bytes))
        });
        for mut batch in batches {
            for (line, record) in batch.lines.drain(..) {
                road.take(line, record)?;
            }
            progress.report(batch.bytes);
            // The parser may have finished and gone: then nothing needs it.
            let _ = to_parser.send(batch.lines);
        }
        parser
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Historical tolls as ((VID, Day, XWay), Toll), sorted by key: millions
/// of lines load faster into a sorted table than into a hash map, and the
/// few expenditure queries search it.
struct History(Vec<((i64, i64, i64), i64)>);

impl History {
    fn toll(&self, key: (i64, i64, i64)) -> i64 {
        self.0
            .binary_search_by_key(&key, |&(k, _)| k)
            .map_or(0, |i| self.0[i].1)
    }
}

fn load_history(path: &Path) -> Result<History, BaselineError> {
    let read_error = |source| BaselineError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(read_error)?);
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(read_error)? == 0 {
            break;
        }
        line += 1;
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let (vid, day, xway, toll) =
            parse::history(text).map_err(|message| BaselineError::Tolls {
                path: path.to_path_buf(),
                line,
                message: message.to_string(),
            })?;
        rows.push(((vid, day, xway), toll, line));
    }
    rows.sort_unstable();
    if let Some(pair) = rows.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        let (vid, day, xway) = pair[0].0;
        return Err(BaselineError::Tolls {
            path: path.to_path_buf(),
            line: pair[0].2.max(pair[1].2),
            message: format!(
                "a second toll for VID {vid}, Day {day}, XWay {xway}: the file must have one line per (VID, Day, XWay)"
            ),
        });
    }
    Ok(History(
        rows.into_iter().map(|(key, toll, _)| (key, toll)).collect(),
    ))
}

/// minute(t) = t / 60 + 1.
fn minute(t: u32) -> u32 {
    t / 60 + 1
}

/// What one car's answers depend on.
#[derive(Debug, Default)]
struct Car {
    last: Option<Position>,
    /// Reports in a row, ending with the last, with Spd 0 at one place 30 s
    /// apart (at most 4: a stop report needs 4).
    stopped: u8,
    /// The minute of `here`.
    minute: u32,
    /// (segment index, reports, speed sum) of this car in `minute`.
    here: Vec<(usize, u32, u64)>,
    /// Notifications a balance query can still name, oldest first, as
    /// (Time, sum of the tolls notified before): the last 60 s and the
    /// latest one before them.
    notifications: VecDeque<(u32, i64)>,
    /// The sum of all its tolls.
    total: i64,
}

impl Car {
    /// A toll charged when the car leaves the segment: it counts in the
    /// balance as of every later notification.
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

    /// (ResultTime, Bal) for a query at `t`: the earliest notification in
    /// [t - 60, t], else the latest before, else (t, 0).
    fn balance(&self, t: u32) -> (u32, i64) {
        let n = &self.notifications;
        match n.iter().find(|&&(time, _)| time + 60 >= t) {
            Some(&answer) => answer,
            None => n.back().copied().unwrap_or((t, 0)),
        }
    }
}

/// Cars by VID: Linear Road numbers its cars from 0, so a table indexed
/// by VID (no hashing, one memory access) holds them, and a map the rare
/// VID too large for the table.
#[derive(Default)]
struct Cars {
    dense: Vec<Car>,
    sparse: FxHashMap<i64, Car>,
}

impl Cars {
    /// VIDs below this go to the table (64 M cars at most).
    const DENSE: i64 = 1 << 26;

    fn entry(&mut self, vid: i64) -> &mut Car {
        if (0..Self::DENSE).contains(&vid) {
            let i = vid as usize;
            if self.dense.len() <= i {
                self.dense
                    .resize_with((i + 1).max(self.dense.len() * 2), Car::default);
            }
            &mut self.dense[i]
        } else {
            self.sparse.entry(vid).or_default()
        }
    }

    fn get(&self, vid: i64) -> Option<&Car> {
        if (0..Self::DENSE).contains(&vid) {
            self.dense.get(vid as usize)
        } else {
            self.sparse.get(&vid)
        }
    }
}

/// The place of a stopped car, packed: (XWay, Dir, Lane, Pos).
fn place(p: &Position) -> u64 {
    (u64::from(p.xway) << 24)
        | (u64::from(p.dir) << 23)
        | (u64::from(p.lane) << 20)
        | u64::from(p.pos)
}

/// The index of (XWay, Dir, Seg) in the segment table.
fn segment_index(xway: u32, dir: u32, seg: u32) -> usize {
    ((xway as usize * 2 + dir as usize) * 100) + seg as usize
}

/// Everything the answers depend on, in one thread.
struct Road {
    history: History,
    answers: Answers,
    segments: Vec<Segment>,
    cars: Cars,
    /// Stop reports of the last 30 s per place, as (Time, VID).
    stops: FxHashMap<u64, Vec<(u32, i64)>>,
    /// The minute of the latest position report.
    minute: u32,
    /// Bad input lines skipped.
    skipped: u64,
}

impl Road {
    /// Answers input line `line`, or lists why it is skipped.
    fn take(
        &mut self,
        line: u64,
        record: Result<Record, &'static str>,
    ) -> Result<(), BaselineError> {
        match record {
            Ok(record) => self.apply(record, line),
            Err(reason) => {
                self.skipped += 1;
                self.answers.errors.error(line, reason)
            }
        }
    }

    fn apply(&mut self, record: Record, line: u64) -> Result<(), BaselineError> {
        match record {
            Record::Position(p) => self.position(&p, line)?,
            Record::Balance { time, vid, qid } => {
                let (result_time, bal) = self
                    .cars
                    .get(vid)
                    .map_or((time, 0), |car| car.balance(time));
                let t = i64::from(time);
                self.answers
                    .balances
                    .row(&[2, t, t, qid, i64::from(result_time), bal])?;
            }
            Record::Expenditure {
                time,
                vid,
                xway,
                qid,
                day,
            } if day > 0 => {
                let bal = self.history.toll((vid, i64::from(day), i64::from(xway)));
                let t = i64::from(time);
                self.answers.expenditures.row(&[3, t, t, qid, bal])?;
            }
            Record::Expenditure { .. } | Record::TravelTime { .. } => {}
        }
        Ok(())
    }

    fn position(&mut self, p: &Position, line: u64) -> Result<(), BaselineError> {
        let too_large = |_| BaselineError::TooLarge { line };
        let m = minute(p.time);
        if m != self.minute {
            // Once a minute: stop reports older than 30 s no longer count.
            self.minute = m;
            self.stops
                .retain(|_, stops| stops.last().is_some_and(|&(t, _)| t + 30 >= p.time));
        }
        let index = segment_index(p.xway, p.dir, p.seg);
        if self.segments.len() <= index {
            let xways = p.xway as usize + 1;
            self.segments.resize_with(xways * 200, Segment::default);
        }
        let car = self.cars.entry(p.vid);
        let previous = car.last.replace(*p);
        let chained = p.spd == 0
            && previous
                .is_some_and(|q| q.time + 30 == p.time && q.spd == 0 && place(&q) == place(p));
        car.stopped = if chained {
            (car.stopped + 1).min(4)
        } else {
            u8::from(p.spd == 0)
        };
        if car.stopped >= 4 {
            let stops = self.stops.entry(place(p)).or_default();
            stops.retain(|&(t, _)| t + 30 >= p.time);
            let another_car = stops.iter().any(|&(_, vid)| vid != p.vid);
            stops.push((p.time, p.vid));
            if another_car {
                self.segments[index].mark_active(m);
            }
        }
        let entry = previous.is_none_or(|q| {
            q.time + 30 != p.time || (q.xway, q.dir, q.seg) != (p.xway, p.dir, p.seg)
        });
        let segment = &mut self.segments[index];
        segment.advance_to(m).map_err(too_large)?;
        if entry && p.lane != 4 {
            let nov = i64::from(segment.nov());
            let lav = segment.lav().map_err(too_large)?;
            let accident = affecting_accident(&self.segments, p, m);
            let toll = if accident.is_some() || lav >= 40 || nov <= 50 {
                0
            } else {
                2 * (nov - 50) * (nov - 50)
            };
            let (vid, t) = (p.vid, i64::from(p.time));
            self.answers.tolls.row(&[0, vid, t, t, lav, toll])?;
            car.notify(p.time, toll);
            if let Some(seg) = accident {
                self.answers.alerts.row(&[1, t, t, vid, i64::from(seg)])?;
            }
        }
        if car.minute != m {
            car.minute = m;
            car.here.clear();
        }
        let segment = &mut self.segments[index];
        match car.here.iter_mut().find(|(i, _, _)| *i == index) {
            Some((_, count, sum)) => {
                segment.add(*count, *sum, p.spd);
                *count += 1;
                *sum += u64::from(p.spd);
            }
            None => {
                segment.add(0, 0, p.spd);
                car.here.push((index, 1, u64::from(p.spd)));
            }
        }
        Ok(())
    }
}

/// The segment of the nearest place active in minute m - 1 whose accident
/// affects the report's segment: places in s..=s+4 downstream for Dir 0,
/// s-4..=s for Dir 1.
fn affecting_accident(segments: &[Segment], p: &Position, m: u32) -> Option<u32> {
    (0..=4u32).find_map(|distance| {
        let seg = if p.dir == 0 {
            p.seg + distance
        } else {
            p.seg.checked_sub(distance)?
        };
        (seg <= 99 && segments[segment_index(p.xway, p.dir, seg)].was_active(m - 1)).then_some(seg)
    })
}

/// One answer file and its row count.
struct AnswerFile {
    path: PathBuf,
    out: BufWriter<File>,
    rows: u64,
}

impl AnswerFile {
    fn create(dir: &Path, name: &str) -> Result<AnswerFile, BaselineError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(|source| BaselineError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(AnswerFile {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            rows: 0,
        })
    }

    fn write_error(&self, source: io::Error) -> BaselineError {
        BaselineError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn row(&mut self, fields: &[i64]) -> Result<(), BaselineError> {
        let mut digits = itoa::Buffer::new();
        let mut write = || -> io::Result<()> {
            for (i, &field) in fields.iter().enumerate() {
                if i > 0 {
                    self.out.write_all(b",")?;
                }
                self.out.write_all(digits.format(field).as_bytes())?;
            }
            self.out.write_all(b"\n")
        };
        write().map_err(|e| self.write_error(e))?;
        self.rows += 1;
        Ok(())
    }

    fn error(&mut self, line: u64, reason: &str) -> Result<(), BaselineError> {
        writeln!(self.out, "{line},\"{reason}\"").map_err(|e| self.write_error(e))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<u64, BaselineError> {
        self.out.flush().map_err(|e| self.write_error(e))?;
        Ok(self.rows)
    }
}

/// The answer files of a run.
struct Answers {
    tolls: AnswerFile,
    alerts: AnswerFile,
    balances: AnswerFile,
    expenditures: AnswerFile,
    errors: AnswerFile,
}

impl Answers {
    fn create(dir: &Path) -> Result<Answers, BaselineError> {
        Ok(Answers {
            tolls: AnswerFile::create(dir, "tolls.csv")?,
            alerts: AnswerFile::create(dir, "accidents.csv")?,
            balances: AnswerFile::create(dir, "balances.csv")?,
            expenditures: AnswerFile::create(dir, "expenditures.csv")?,
            errors: AnswerFile::create(dir, "input-errors.csv")?,
        })
    }

    /// Flushes every file; the row counts of tolls, alerts, balances and
    /// expenditures.
    fn finish(self) -> Result<[u64; 4], BaselineError> {
        self.errors.finish()?;
        Ok([
            self.tolls.finish()?,
            self.alerts.finish()?,
            self.balances.finish()?,
            self.expenditures.finish()?,
        ])
    }
}
