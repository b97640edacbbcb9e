//! The feeder: reads the input file, releases each line at its Time,
//! scaled by the speed-up (or as fast as possible), and parses it as it
//! releases it: what travels on is the parsed record (a third of the
//! line's bytes, no string to allocate and copy), or the reason the line
//! is skipped.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spate_engine::{OperatorError, Source, SourceStep};

use super::{stats_dir, LrbParams};
use crate::model::{line_time, parse_line, Msg, Parsed};

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

/// Reads and paces the input.
pub struct Feeder {
    reader: BufReader<File>,
    params: LrbParams,
    /// Bytes of the input consumed so far.
    offset: u64,
    line_no: u64,
    last_time: u32,
    /// The line last read, reused for every line.
    line: String,
    /// `Some(time)` while `line` waits for its release (its Time, if
    /// readable).
    pending: Option<Option<u32>>,
    start: Option<(Instant, u64)>,
    stats: FeederStats,
}

/// Everything needed to resume the feeder exactly where a checkpoint left it.
#[derive(Serialize, Deserialize)]
struct Position {
    offset: u64,
    line_no: u64,
    last_time: u32,
    pending: Option<(String, Option<u32>)>,
    start_unix_us: Option<u64>,
    stats: FeederStats,
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
            reader: BufReader::with_capacity(1 << 20, file),
            params: params.clone(),
            offset: 0,
            line_no: 0,
            last_time: 0,
            line: String::with_capacity(128),
            pending: None,
            start: None,
            stats: FeederStats::default(),
        })
    }

    /// Reads the next line into `self.line`; its Time, if readable, or
    /// `None` at the end of the input.
    fn read_line(&mut self) -> Result<Option<Option<u32>>, OperatorError> {
        self.line.clear();
        let read = self.reader.read_line(&mut self.line)?;
        if read == 0 {
            return Ok(None);
        }
        self.offset += read as u64;
        self.line_no += 1;
        let len = self.line.trim_end_matches(['\n', '\r']).len();
        self.line.truncate(len);
        Ok(Some(line_time(&self.line)))
    }

    /// The message for the line in `self.line`, released at `released_us`;
    /// `None` for a line with nothing to answer (type 4, blank).
    fn message(&self, released_us: u64) -> Option<Msg> {
        match parse_line(&self.line) {
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

    fn finish(&mut self) -> Result<(), OperatorError> {
        self.stats.lines = self.line_no;
        if let Some((start, _)) = self.start {
            self.stats.elapsed_secs = start.elapsed().as_secs_f64();
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
            pending: self.pending.map(|time| (self.line.clone(), time)),
            start_unix_us: self.start.map(|(_, us)| us),
            stats: self.stats.clone(),
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
        self.pending = p.pending.map(|(line, time)| {
            self.line = line;
            time
        });
        self.stats = p.stats;
        // Keep the original schedule: the run's start is a wall-clock instant.
        self.start = p.start_unix_us.map(|us| {
            let behind = Duration::from_micros(unix_micros().saturating_sub(us));
            (Instant::now() - behind, us)
        });
        Ok(())
    }

    fn next(&mut self) -> Result<SourceStep<Msg>, OperatorError> {
        let (start, start_us) = *self
            .start
            .get_or_insert_with(|| (Instant::now(), unix_micros()));
        loop {
            let time = match self.pending.take() {
                Some(time) => time,
                None => match self.read_line()? {
                    Some(time) => time,
                    None => {
                        self.finish()?;
                        return Ok(SourceStep::Done);
                    }
                },
            };
            let line_no = self.line_no;
            if let Some(t) = time {
                if t < self.last_time {
                    return Ok(SourceStep::Emit(Msg::InputError {
                        line_no,
                        message: format!(
                            "Time {t} goes backwards (an earlier line has Time {}); the input must be in Time order",
                            self.last_time
                        ),
                    }));
                }
                self.last_time = t;
            }
            // One clock reading per line serves both the pacing and the count.
            let elapsed = start.elapsed();
            let released_us = match time {
                Some(t) if self.params.speedup > 0.0 => {
                    let offset = self.params.due(t);
                    if elapsed < offset {
                        self.pending = Some(time);
                        return Ok(SourceStep::WaitUntil(start + offset));
                    }
                    start_us + offset.as_micros() as u64
                }
                _ => start_us + elapsed.as_micros() as u64,
            };
            let second = elapsed.as_secs() as usize;
            if self.stats.per_second.len() <= second {
                self.stats.per_second.resize(second + 1, 0);
            }
            self.stats.per_second[second] += 1;
            if let Some(message) = self.message(released_us) {
                return Ok(SourceStep::Emit(message));
            }
        }
    }
}
