//! The feeder: reads the input file, parses each line once, and releases
//! it at its Time, scaled by the speed-up (or as fast as possible). What
//! travels on is the parsed record (about 30 bytes encoded against 70 for
//! the line's text, and no string to allocate, copy and decode downstream)
//! or the reason the line is skipped; a line with nothing to answer (type
//! 4, blank) sends nothing. With the forwarder chained, what goes out is
//! what the forwarder would send for each record.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spate_engine::{OperatorError, Source, SourceStep};

use super::forwarder::forward;
use super::{stats_dir, LrbParams, FILE_BUFFER_BYTES};
use crate::model::{line_time, parse_line, Msg, Parsed};

/// Lines with nothing to answer that one call reads past before it yields
/// to the engine, so that a long run of them (a hostile input) cannot hold
/// off a stop or a checkpoint.
const SKIPPED_PER_CALL: u32 = 1024;

/// Lines released between two readings of the clock when no line's
/// release needs one: the per-second counts and an unpaced run's release
/// instants are then at most this many lines stale.
const LINES_PER_CLOCK_READING: u32 = 64;

/// Input counters the run report needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FeederStats {
    /// Lines read, including skipped ones.
    pub lines: u64,
    /// Lines released in each wall-clock second of the run.
    pub per_second: Vec<u64>,
    /// Wall-clock seconds from the first to the last line.
    pub elapsed_secs: f64,
}

/// When a line of Time `t` is due, from `last` (the Time and due instant
/// of the line before) when it has the same Time.
fn due(last: &mut Option<(u32, Duration)>, params: &LrbParams, t: u32) -> Duration {
    match *last {
        Some((time, offset)) if time == t => offset,
        _ => {
            let offset = params.due(t);
            *last = Some((t, offset));
            offset
        }
    }
}

/// Reads and paces the input.
pub struct Feeder {
    reader: BufReader<File>,
    params: LrbParams,
    /// Bytes of the input consumed so far.
    offset: u64,
    line_no: u64,
    last_time: u32,
    /// The bytes of the line last read, one buffer reused for every line;
    /// a checkpoint taken while that line waits for its release records it.
    line: Vec<u8>,
    /// The line last read, while it waits for its release.
    pending: Option<ParsedLine>,
    /// The run's clock, from the first line on.
    clock: Option<RunClock>,
    /// The Time of the line last released, and when it was due: lines come
    /// in Time order, so one computation serves a whole simulated second.
    due: Option<(u32, Duration)>,
    stats: FeederStats,
    /// With the forwarder chained, the messages it made of the last record
    /// that are still to go out, oldest first.
    forwarded: VecDeque<Msg>,
}

/// The run's elapsed time as last read. Reading the clock for every line
/// cost the feeder, which parses every input line on one thread, as much as
/// a fifth of its parsing; it is read when a line is due later than the
/// last reading, and every [`LINES_PER_CLOCK_READING`] lines.
#[derive(Clone, Copy)]
struct RunClock {
    start: Instant,
    /// The start as a UNIX instant, microseconds: release instants are
    /// wall-clock times that other processes compare with their own.
    start_us: u64,
    elapsed: Duration,
    lines_since_reading: u32,
}

impl RunClock {
    fn starting_at(start: Instant, start_us: u64) -> Self {
        RunClock {
            start,
            start_us,
            elapsed: start.elapsed(),
            lines_since_reading: 0,
        }
    }

    /// Reads the clock.
    fn read(&mut self) -> Duration {
        self.elapsed = self.start.elapsed();
        self.lines_since_reading = 0;
        self.elapsed
    }

    /// The elapsed time for one more line: the last reading, unless it is
    /// [`LINES_PER_CLOCK_READING`] lines old.
    fn recent(&mut self) -> Duration {
        self.lines_since_reading += 1;
        if self.lines_since_reading >= LINES_PER_CLOCK_READING {
            self.read()
        } else {
            self.elapsed
        }
    }
}

/// Everything needed to resume the feeder exactly where a checkpoint left it.
#[derive(Serialize, Deserialize)]
struct Position {
    offset: u64,
    line_no: u64,
    last_time: u32,
    /// The bytes of the line waiting for its release; parsed again on
    /// restore.
    pending: Option<Vec<u8>>,
    start_unix_us: Option<u64>,
    stats: FeederStats,
    /// What the chained forwarder made of a line and is not sent yet.
    #[serde(default)]
    forwarded: Vec<Msg>,
}

/// A line read and parsed once: its Time paces it and orders the input.
struct ParsedLine {
    /// Its Time when readable, on a bad line too (docs/LRB.md, "Input").
    time: Option<u32>,
    /// The record, or why the line is skipped.
    parsed: Result<Parsed, String>,
}

impl ParsedLine {
    fn parse(line: &[u8]) -> Self {
        let parsed = parse_line(line);
        // Only lines without a record need the Time read on its own.
        let time = parsed
            .as_ref()
            .ok()
            .and_then(Parsed::time)
            .or_else(|| line_time(line));
        ParsedLine { time, parsed }
    }
}

/// Microseconds since the UNIX epoch, the clock all processes share.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Feeder {
    /// Opens the input file.
    pub fn open(params: &LrbParams) -> Result<Self, OperatorError> {
        let file = File::open(&params.input).map_err(|e| {
            OperatorError::new(format!("cannot open input {}: {e}", params.input.display()))
        })?;
        Ok(Feeder {
            reader: BufReader::with_capacity(FILE_BUFFER_BYTES, file),
            params: params.clone(),
            offset: 0,
            line_no: 0,
            last_time: 0,
            line: Vec::with_capacity(128),
            pending: None,
            clock: None,
            due: None,
            stats: FeederStats::default(),
            forwarded: VecDeque::new(),
        })
    }

    /// Reads and parses the next line (its text stays in `self.line`);
    /// `None` at the end of the input.
    fn read_line(&mut self) -> Result<Option<ParsedLine>, OperatorError> {
        self.line.clear();
        let read = self.reader.read_until(b'\n', &mut self.line)?;
        if read == 0 {
            return Ok(None);
        }
        self.offset += read as u64;
        self.line_no += 1;
        Ok(Some(ParsedLine::parse(&self.line)))
    }

    /// The message for line `self.line_no`, released at `released_us`;
    /// `None` for a line with nothing to answer (type 4, blank).
    fn message(&self, parsed: Result<Parsed, String>, released_us: u64) -> Option<Msg> {
        match parsed {
            Ok(Parsed::Position(report)) => Some(Msg::Position {
                report,
                released_us,
            }),
            Ok(Parsed::Balance { time, vid, qid }) => Some(Msg::BalanceQuery {
                time,
                vid,
                qid,
                released_us,
            }),
            Ok(Parsed::Expenditure {
                time,
                vid,
                xway,
                qid,
                day,
            }) => Some(Msg::ExpenditureQuery {
                time,
                vid,
                xway,
                qid,
                day,
                released_us,
            }),
            Ok(Parsed::Ignored) => None,
            Err(message) => Some(Msg::InputError {
                line_no: self.line_no,
                message,
            }),
        }
    }

    /// Sends `message`, through the forwarder when it is chained here. The
    /// first message the forwarder makes goes out at once and only the rest
    /// (a stopped car's zone copies) wait in `forwarded`: most lines make
    /// one, which then never passes through the queue.
    fn send(&mut self, message: Msg) -> Result<SourceStep<Msg>, OperatorError> {
        if !self.params.chain_forwarder {
            return Ok(SourceStep::Emit(message));
        }
        let mut first = None;
        let forwarded = &mut self.forwarded;
        forward(message, self.params.stop_on_bad_input, |m| {
            match first {
                None => first = Some(m),
                Some(_) => forwarded.push_back(m),
            }
            Ok(())
        })?;
        Ok(match first {
            Some(first) => SourceStep::Emit(first),
            None => SourceStep::WaitUntil(Instant::now()),
        })
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        self.stats.lines = self.line_no;
        if let Some(clock) = &mut self.clock {
            self.stats.elapsed_secs = clock.read().as_secs_f64();
        }
        let dir = stats_dir(&self.params.out_dir);
        std::fs::create_dir_all(&dir)?;
        let file = BufWriter::new(File::create(dir.join("feeder.json"))?);
        serde_json::to_writer(file, &self.stats)
            .map_err(|e| OperatorError::new(format!("writing feeder statistics: {e}")))
    }
}

impl Source for Feeder {
    type Out = Msg;

    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        let position = Position {
            offset: self.offset,
            line_no: self.line_no,
            last_time: self.last_time,
            pending: self.pending.as_ref().map(|_| self.line.clone()),
            start_unix_us: self.clock.map(|c| c.start_us),
            stats: self.stats.clone(),
            forwarded: self.forwarded.iter().cloned().collect(),
        };
        serde_json::to_vec(&position)
            .map(Some)
            .map_err(|e| OperatorError::new(format!("encoding the feeder position: {e}")))
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        let p: Position = serde_json::from_slice(position)
            .map_err(|e| OperatorError::new(format!("decoding the feeder position: {e}")))?;
        self.reader.seek(SeekFrom::Start(p.offset))?;
        self.offset = p.offset;
        self.line_no = p.line_no;
        self.last_time = p.last_time;
        self.pending = p.pending.map(|line| {
            let read = ParsedLine::parse(&line);
            self.line = line;
            read
        });
        self.stats = p.stats;
        self.forwarded = p.forwarded.into();
        // Keep the original schedule: the run's start is a wall-clock instant.
        self.clock = p.start_unix_us.map(|us| {
            let behind = Duration::from_micros(unix_micros().saturating_sub(us));
            RunClock::starting_at(Instant::now() - behind, us)
        });
        Ok(())
    }

    fn next(&mut self) -> Result<SourceStep<Msg>, OperatorError> {
        if let Some(message) = self.forwarded.pop_front() {
            return Ok(SourceStep::Emit(message));
        }
        // A line with nothing to answer is read past, not sent.
        for _ in 0..SKIPPED_PER_CALL {
            let read = match self.pending.take() {
                Some(read) => read,
                None => match self.read_line()? {
                    Some(read) => read,
                    None => {
                        self.finish()?;
                        return Ok(SourceStep::Done);
                    }
                },
            };
            if let Some(t) = read.time {
                if t < self.last_time {
                    return self.send(Msg::InputError {
                        line_no: self.line_no,
                        message: format!(
                            "Time {t} goes backwards (an earlier line has Time {}); the input must be in Time order",
                            self.last_time
                        ),
                    });
                }
                self.last_time = t;
            }
            let clock = self
                .clock
                .get_or_insert_with(|| RunClock::starting_at(Instant::now(), unix_micros()));
            let recent = clock.recent();
            let released_us = match read.time {
                Some(t) if self.params.speedup > 0.0 => {
                    let offset = due(&mut self.due, &self.params, t);
                    if recent < offset && clock.read() < offset {
                        self.pending = Some(read);
                        return Ok(SourceStep::WaitUntil(clock.start + offset));
                    }
                    clock.start_us + offset.as_micros() as u64
                }
                _ => clock.start_us + recent.as_micros() as u64,
            };
            let second = clock.elapsed.as_secs() as usize;
            if self.stats.per_second.len() <= second {
                self.stats.per_second.resize(second + 1, 0);
            }
            self.stats.per_second[second] += 1;
            if let Some(message) = self.message(read.parsed, released_us) {
                return self.send(message);
            }
        }
        Ok(SourceStep::WaitUntil(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A feeder over `input`, in a directory of its own that the caller
    /// removes.
    fn feeder(name: &str, input: &str, speedup: f64) -> (Feeder, PathBuf) {
        let dir = std::env::temp_dir().join(format!("spate-feeder-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("input.csv"), input).unwrap();
        let params = LrbParams::one_partition_each(&dir, dir.join("out"), speedup);
        (Feeder::open(&params).unwrap(), dir)
    }

    fn emit(feeder: &mut Feeder) -> Msg {
        match feeder.next().unwrap() {
            SourceStep::Emit(msg) => msg,
            SourceStep::WaitUntil(_) => panic!("the feeder waited"),
            SourceStep::Done => panic!("the feeder stopped"),
        }
    }

    #[test]
    fn sends_records_and_bad_lines_but_nothing_for_lines_without_an_answer() {
        let input = "0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1\n\
                     4,1,5,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1\n\
                     \n\
                     2,3,9,-1,-1,-1,-1,-1,-1,4,-1,-1,-1,-1,-1\n\
                     0,4,107,320,0,0,0,10,53320,-1,-1,-1,-1,-1,-1\n\
                     2,2,9,-1,-1,-1,-1,-1,-1,5,-1,-1,-1,-1,-1\n";
        let (mut feeder, dir) = feeder("kinds", input, 0.0);
        assert!(matches!(emit(&mut feeder), Msg::Position { report, .. } if report.vid == 107));
        // Lines 2 (type 4) and 3 (blank) send nothing.
        assert!(matches!(
            emit(&mut feeder),
            Msg::BalanceQuery {
                time: 3,
                qid: 4,
                ..
            }
        ));
        assert!(matches!(
            emit(&mut feeder),
            Msg::InputError { line_no: 5, message } if message.contains("Spd")
        ));
        // The bad line's Time 4 still orders the input.
        assert!(matches!(
            emit(&mut feeder),
            Msg::InputError { line_no: 6, message } if message.contains("goes backwards")
        ));
        assert!(matches!(feeder.next().unwrap(), SourceStep::Done));
        assert_eq!(feeder.stats.lines, 6);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_long_run_of_lines_without_an_answer_yields_to_the_engine() {
        let blank = "\n".repeat(SKIPPED_PER_CALL as usize + 10);
        let input = format!("{blank}0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1\n");
        let (mut feeder, dir) = feeder("skipped", &input, 0.0);
        assert!(matches!(feeder.next().unwrap(), SourceStep::WaitUntil(_)));
        assert!(matches!(emit(&mut feeder), Msg::Position { report, .. } if report.vid == 107));
        assert!(matches!(feeder.next().unwrap(), SourceStep::Done));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_line_waiting_for_its_release_survives_a_checkpoint() {
        let input = "0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1\n\
                     0,100,108,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1\n";
        // At speed-up 1, Time 100 is due 100 s into the run.
        let (mut feeder, dir) = feeder("pending", input, 1.0);
        assert!(matches!(emit(&mut feeder), Msg::Position { report, .. } if report.time == 0));
        assert!(matches!(feeder.next().unwrap(), SourceStep::WaitUntil(_)));
        let position = feeder.checkpoint().unwrap().unwrap();

        // Restored as if the run had started those 100 s earlier: the
        // waiting line is due now, released at its scheduled instant.
        let mut position: Position = serde_json::from_slice(&position).unwrap();
        let start_us = position.start_unix_us.unwrap() - 100_000_000;
        position.start_unix_us = Some(start_us);
        let mut restored = Feeder::open(&feeder.params).unwrap();
        restored
            .restore(&serde_json::to_vec(&position).unwrap())
            .unwrap();
        match emit(&mut restored) {
            Msg::Position {
                report,
                released_us,
            } => {
                assert_eq!(report.vid, 108);
                assert_eq!(released_us, start_us + 100_000_000);
            }
            other => panic!("expected the waiting report, got {other:?}"),
        }
        assert!(matches!(restored.next().unwrap(), SourceStep::Done));
        assert_eq!(restored.stats.lines, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Every message `feeder` sends, up to the end of its input.
    fn drain(feeder: &mut Feeder) -> Vec<Msg> {
        let mut sent = Vec::new();
        loop {
            match feeder.next().unwrap() {
                SourceStep::Emit(msg) => sent.push(msg),
                SourceStep::WaitUntil(_) => {}
                SourceStep::Done => return sent,
            }
        }
    }

    #[test]
    fn a_chained_forwarder_sends_what_the_forwarder_would_even_across_a_checkpoint() {
        // A stopped car (speed 0), a moving one, a balance query, a bad line.
        let input = "0,0,107,0,0,0,0,10,53320,-1,-1,-1,-1,-1,-1
                     0,1,108,55,0,1,1,12,63360,-1,-1,-1,-1,-1,-1
                     2,2,5,-1,-1,-1,-1,-1,-1,7,-1,-1,-1,-1,-1
                     0,3,x,0,0,0,0,10,53320,-1,-1,-1,-1,-1,-1
";
        let (mut plain, dir) = feeder("unchained", input, 0.0);
        let mut expected = Vec::new();
        for msg in drain(&mut plain) {
            forward(msg, false, |m| {
                expected.push(m);
                Ok(())
            })
            .unwrap();
        }
        // The stop's five zone copies, then the five records.
        assert_eq!(expected.len(), 9);

        let chained_params = LrbParams {
            chain_forwarder: true,
            ..plain.params.clone()
        };
        let mut chained = Feeder::open(&chained_params).unwrap();
        // A checkpoint after the first zone copy holds the other four.
        let first = emit(&mut chained);
        let position = chained.checkpoint().unwrap().unwrap();
        let mut restored = Feeder::open(&chained_params).unwrap();
        restored.restore(&position).unwrap();
        let mut sent = vec![first];
        sent.extend(drain(&mut restored));
        // Release instants are wall-clock readings: compare the rest.
        let unreleased = |mut m: Msg| {
            if let Msg::Position { released_us, .. } | Msg::BalanceQuery { released_us, .. } =
                &mut m
            {
                *released_us = 0;
            }
            m
        };
        let sent: Vec<Msg> = sent.into_iter().map(unreleased).collect();
        let expected: Vec<Msg> = expected.into_iter().map(unreleased).collect();
        assert_eq!(sent, expected);

        // Strict, the bad line stops the chained feeder as it stops the
        // forwarder.
        let strict = LrbParams {
            stop_on_bad_input: true,
            ..chained_params
        };
        let mut strict = Feeder::open(&strict).unwrap();
        let error = loop {
            match strict.next() {
                Ok(SourceStep::Done) => panic!("the bad line went through"),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        assert!(error.contains("input line 4"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
