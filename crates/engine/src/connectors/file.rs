//! A line-delimited file as a source, restored by byte offset.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::lines::{BadRecords, LinePosition, LineReader, Records};
use super::pace::Pace;
use super::{decode_position, encode_position};
use crate::api::{Data, OperatorError, Source, SourceStep};

/// Reads a file line by line, one record a line, optionally paced. Its
/// checkpoint is the byte offset of the next line (with the line number,
/// for reports), so a restored source goes on exactly where the
/// checkpoint was taken. The file must not change under the job (append
/// files to a [`super::DirectorySource`] instead). Give the source
/// parallelism 1, or a different file to each instance: every instance
/// reads the whole file it opens.
///
/// ```
/// use spate_engine::connectors::{BadRecords, FileSource};
/// use spate_engine::{Source, SourceStep};
///
/// let path = std::env::temp_dir().join(format!("spate-doc-file-{}.txt", std::process::id()));
/// std::fs::write(&path, "1\n2\nnot a number\n3\n").unwrap();
/// let mut numbers = FileSource::parsed(&path, |line| line.parse::<u32>().map_err(|e| e.to_string()))?
///     .on_bad_records(BadRecords::Skip);
/// let mut read = Vec::new();
/// while let SourceStep::Emit(n) = numbers.next()? {
///     read.push(n);
/// }
/// assert_eq!(read, [1, 2, 3]);
/// assert_eq!(numbers.skipped(), 1); // line 3, reported in the log
///
/// // A checkpoint taken after the first line restores to the second.
/// let mut first = FileSource::parsed(&path, |line| line.parse::<u32>().map_err(|e| e.to_string()))?;
/// first.next()?;
/// let position = first.checkpoint()?.expect("a file source has a position");
/// let mut restored = FileSource::parsed(&path, |line| line.parse::<u32>().map_err(|e| e.to_string()))?;
/// restored.restore(&position)?;
/// assert!(matches!(restored.next()?, SourceStep::Emit(2)));
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), spate_engine::OperatorError>(())
/// ```
pub struct FileSource<T> {
    path: PathBuf,
    reader: LineReader,
    records: Records<T>,
    pace: Pace,
    /// Records emitted so far (what pacing counts).
    emitted: u64,
}

/// What a [`FileSource`] checkpoints.
#[derive(Serialize, Deserialize)]
struct FilePosition {
    at: LinePosition,
    emitted: u64,
}

impl FileSource<String> {
    /// Every line of `path` as a `String`, without its line ending.
    pub fn lines(path: impl AsRef<Path>) -> Result<Self, OperatorError> {
        Self::parsed(path, |line| Ok(line.to_string()))
    }
}

impl<T: DeserializeOwned> FileSource<T> {
    /// JSON lines: each line of `path` a JSON value of `T`.
    pub fn json_lines(path: impl AsRef<Path>) -> Result<Self, OperatorError> {
        Self::parsed(path, |line| {
            serde_json::from_str(line).map_err(|e| e.to_string())
        })
    }
}

impl<T> FileSource<T> {
    /// Each line of `path` parsed by `parse`, which says why a line is not
    /// a record; such lines are skipped and reported unless
    /// [`FileSource::on_bad_records`] says to stop.
    pub fn parsed(
        path: impl AsRef<Path>,
        parse: impl FnMut(&str) -> Result<T, String> + Send + 'static,
    ) -> Result<Self, OperatorError> {
        let path = path.as_ref().to_path_buf();
        Ok(FileSource {
            reader: LineReader::open(&path, LinePosition::default())?,
            path,
            records: Records::new(Box::new(parse)),
            pace: Pace::default(),
            emitted: 0,
        })
    }

    /// Skip (the default) or stop on a line that is not a record.
    pub fn on_bad_records(mut self, policy: BadRecords) -> Self {
        self.records.bad = policy;
        self
    }

    /// Emits at most `per_sec` records a second (0: as fast as the job
    /// takes them), so that a job over a small file lasts long enough to
    /// watch, kill and scale.
    pub fn paced(mut self, per_sec: f64) -> Self {
        self.pace = Pace::new(per_sec);
        self
    }

    /// Bad records this instance skipped since it started.
    pub fn skipped(&self) -> u64 {
        self.records.skipped
    }
}

impl<T: Data> Source for FileSource<T> {
    type Out = T;

    fn next(&mut self) -> Result<SourceStep<T>, OperatorError> {
        if let Some(due) = self.pace.wait(self.emitted) {
            return Ok(SourceStep::WaitUntil(due));
        }
        match self.reader.next_record(&mut self.records)? {
            Some(record) => {
                self.emitted += 1;
                Ok(SourceStep::Emit(record))
            }
            None => Ok(SourceStep::Done),
        }
    }

    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        encode_position(&FilePosition {
            at: self.reader.position(),
            emitted: self.emitted,
        })
        .map(Some)
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        let position: FilePosition = decode_position(position)?;
        self.reader = LineReader::open(&self.path, position.at)?;
        self.emitted = position.emitted;
        self.pace.resume_at(position.emitted);
        Ok(())
    }
}
