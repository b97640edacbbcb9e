//! Reading a run's four output files. A row that does not parse is not an
//! error: it is one more difference to report, with its file and line.

use std::fs::File;
use std::io::{BufReader, ErrorKind};
use std::path::Path;

use super::input::{integers, Lines};
use super::rules::{AlertRow, ExpenditureRow, TollRow};
use super::{Latency, ValidateError, DEADLINE_SECS, EXPENDITURE_DEADLINE_SECS};

/// An account-balance answer `2,Time,Emit,QID,ResultTime,Bal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BalanceAnswer {
    pub time: i64,
    pub qid: i64,
    pub result_time: i64,
    pub bal: i64,
}

/// One output file: its rows with their line numbers, the rows that did not
/// parse (as messages), and the latency of the rows that did.
pub(super) struct OutputFile<K> {
    pub rows: Vec<(K, u64)>,
    pub malformed: Vec<String>,
    pub latency: Latency,
}

/// How one kind of output row is laid out.
pub(super) trait OutputKind: Sized {
    /// The file name inside the output directory.
    const FILE: &'static str;
    /// The Type value in the first column.
    const TYPE: i64;
    /// The answer's deadline in wall-clock seconds.
    const DEADLINE_SECS: f64;
    /// Column names (at most 6), for messages.
    const NAMES: &'static [&'static str];
    /// Builds the row from its columns (as many integers as `NAMES`);
    /// returns (row, Time, Emit) or why a value is out of range.
    fn from_columns(c: &[i64]) -> Result<(Self, i64, i64), String>;
}

fn time_u32(time: i64) -> Result<u32, String> {
    u32::try_from(time).map_err(|_| format!("Time {time} is not a simulation second"))
}

impl OutputKind for TollRow {
    const FILE: &'static str = "tolls.csv";
    const TYPE: i64 = 0;
    const DEADLINE_SECS: f64 = DEADLINE_SECS;
    const NAMES: &'static [&'static str] = &["Type", "VID", "Time", "Emit", "LAV", "Toll"];
    fn from_columns(c: &[i64]) -> Result<(Self, i64, i64), String> {
        let lav = i32::try_from(c[4]).map_err(|_| format!("LAV {} is not a speed", c[4]))?;
        let row = TollRow {
            time: time_u32(c[2])?,
            vid: c[1],
            lav,
            toll: c[5],
        };
        Ok((row, c[2], c[3]))
    }
}

impl OutputKind for AlertRow {
    const FILE: &'static str = "accidents.csv";
    const TYPE: i64 = 1;
    const DEADLINE_SECS: f64 = DEADLINE_SECS;
    const NAMES: &'static [&'static str] = &["Type", "Time", "Emit", "VID", "Seg"];
    fn from_columns(c: &[i64]) -> Result<(Self, i64, i64), String> {
        let seg = u32::try_from(c[4]).map_err(|_| format!("Seg {} is not a segment", c[4]))?;
        let row = AlertRow {
            time: time_u32(c[1])?,
            vid: c[3],
            seg,
        };
        Ok((row, c[1], c[2]))
    }
}

impl OutputKind for BalanceAnswer {
    const FILE: &'static str = "balances.csv";
    const TYPE: i64 = 2;
    const DEADLINE_SECS: f64 = DEADLINE_SECS;
    const NAMES: &'static [&'static str] = &["Type", "Time", "Emit", "QID", "ResultTime", "Bal"];
    fn from_columns(c: &[i64]) -> Result<(Self, i64, i64), String> {
        let row = BalanceAnswer {
            time: c[1],
            qid: c[3],
            result_time: c[4],
            bal: c[5],
        };
        Ok((row, c[1], c[2]))
    }
}

impl OutputKind for ExpenditureRow {
    const FILE: &'static str = "expenditures.csv";
    const TYPE: i64 = 3;
    const DEADLINE_SECS: f64 = EXPENDITURE_DEADLINE_SECS;
    const NAMES: &'static [&'static str] = &["Type", "Time", "Emit", "QID", "Bal"];
    fn from_columns(c: &[i64]) -> Result<(Self, i64, i64), String> {
        let row = ExpenditureRow {
            time: time_u32(c[1])?,
            qid: c[3],
            bal: c[4],
        };
        Ok((row, c[1], c[2]))
    }
}

/// Splits a row into its integer columns and checks its Type column.
fn parse_row<K: OutputKind>(text: &str) -> Result<(K, i64, i64), String> {
    let mut buf = [0i64; 6];
    let columns = &mut buf[..K::NAMES.len()];
    integers(text, K::NAMES, columns)?;
    if columns[0] != K::TYPE {
        return Err(format!(
            "the first column (Type) is {} but every row of {} must start with {}",
            columns[0],
            K::FILE,
            K::TYPE
        ));
    }
    K::from_columns(columns)
}

/// Reads `dir/K::FILE`, recording each row's latency at speed-up `speedup`.
/// A missing file is an error (the run did not finish or wrote elsewhere);
/// malformed rows are collected as messages.
pub(super) fn read_output<K: OutputKind>(
    dir: &Path,
    speedup: f64,
) -> Result<OutputFile<K>, ValidateError> {
    let path = dir.join(K::FILE);
    let file = File::open(&path).map_err(|source| {
        if source.kind() == ErrorKind::NotFound {
            ValidateError::MissingOutput { path: path.clone() }
        } else {
            ValidateError::Read {
                path: path.clone(),
                source,
            }
        }
    })?;
    let mut lines = Lines::new(BufReader::with_capacity(1 << 20, file), &path);
    let mut out = OutputFile {
        rows: Vec::new(),
        malformed: Vec::new(),
        latency: Latency::new(K::DEADLINE_SECS),
    };
    loop {
        // A line that is not UTF-8 is just another malformed row.
        let (line, text) = match lines.next_line() {
            Ok(Some(numbered)) => numbered,
            Ok(None) => break,
            Err(ValidateError::Input { message, .. }) => {
                out.malformed
                    .push(format!("{} line {}: {message}", K::FILE, lines.number()));
                continue;
            }
            Err(other) => return Err(other),
        };
        match parse_row::<K>(text) {
            Ok((key, time, emit)) => {
                out.latency.record(time, emit, speedup);
                out.rows.push((key, line));
            }
            Err(why) => {
                let message = format!("{} line {line}: {why}: {text:?}", K::FILE);
                out.malformed.push(message);
            }
        }
    }
    Ok(out)
}
