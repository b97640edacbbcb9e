//! Reading line-delimited files from a byte offset, and turning lines into
//! records under a [`BadRecords`] policy: what the file and directory
//! sources share.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::OperatorError;

/// What a source does with a line that is not a valid record (it does not
/// parse, or is not UTF-8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BadRecords {
    /// Skip it, and report its file and line number in the worker's log
    /// (a warning), so that one bad line does not stop a long job.
    #[default]
    Skip,
    /// Stop the job with an error naming the file and line.
    Stop,
}

/// Where a reader stands in a file: what a checkpoint records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LinePosition {
    /// Bytes before the next line.
    pub offset: u64,
    /// Lines read so far (the next line's number is one more).
    pub line: u64,
}

/// A file read line by line from a position.
pub(super) struct LineReader {
    path: PathBuf,
    reader: BufReader<File>,
    at: LinePosition,
    buffer: Vec<u8>,
}

impl LineReader {
    /// Opens `path` and moves to `at`.
    pub(super) fn open(path: &Path, at: LinePosition) -> Result<Self, OperatorError> {
        let mut file = File::open(path).map_err(|e| {
            OperatorError::new(format!(
                "cannot open the input file {}: {e}",
                path.display()
            ))
        })?;
        file.seek(SeekFrom::Start(at.offset))?;
        Ok(LineReader {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            at,
            buffer: Vec::new(),
        })
    }

    /// Where the reader stands.
    pub(super) fn position(&self) -> LinePosition {
        self.at
    }

    /// The next record of the file, past any bad lines `records` skips;
    /// `None` at the end of the file. A last line without a newline counts
    /// as a line.
    pub(super) fn next_record<T>(
        &mut self,
        records: &mut Records<T>,
    ) -> Result<Option<T>, OperatorError> {
        loop {
            self.buffer.clear();
            let read = self.reader.read_until(b'\n', &mut self.buffer)?;
            if read == 0 {
                return Ok(None);
            }
            self.at.offset += read as u64;
            self.at.line += 1;
            let mut end = self.buffer.len();
            while end > 0 && matches!(self.buffer[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            if let Some(record) = records.record(&self.path, self.at.line, &self.buffer[..end])? {
                return Ok(Some(record));
            }
        }
    }
}

/// Turns a line into a record, or says why it is not one.
pub(super) type Parser<T> = Box<dyn FnMut(&str) -> Result<T, String> + Send>;

/// Parses lines into records, skipping or refusing bad ones.
pub(super) struct Records<T> {
    parse: Parser<T>,
    pub(super) bad: BadRecords,
    /// Bad records skipped by this instance since it started.
    pub(super) skipped: u64,
}

impl<T> Records<T> {
    pub(super) fn new(parse: Parser<T>) -> Self {
        Records {
            parse,
            bad: BadRecords::default(),
            skipped: 0,
        }
    }

    /// The record line `number` of `path` holds; `None` when it is bad and
    /// skipped.
    pub(super) fn record(
        &mut self,
        path: &Path,
        number: u64,
        line: &[u8],
    ) -> Result<Option<T>, OperatorError> {
        let parsed = match std::str::from_utf8(line) {
            Ok(text) => (self.parse)(text),
            Err(e) => Err(format!("not UTF-8 ({e})")),
        };
        match parsed {
            Ok(record) => Ok(Some(record)),
            Err(reason) => match self.bad {
                BadRecords::Skip => {
                    self.skipped += 1;
                    tracing::warn!(
                        "{} line {number}: skipped a bad record: {reason}",
                        path.display()
                    );
                    Ok(None)
                }
                BadRecords::Stop => Err(OperatorError::new(format!(
                    "{} line {number}: bad record: {reason} (fix the line, or let the \
                     source skip bad records)",
                    path.display()
                ))),
            },
        }
    }
}
