//! The files of a directory as one source, read in name order as they
//! appear.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::lines::{BadRecords, LinePosition, LineReader, Records};
use super::pace::Pace;
use super::{decode_position, encode_position};
use crate::api::{Data, OperatorError, Source, SourceStep};

/// How long a directory source waits before looking for new files again.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Reads every file of a directory, one record a line, in the order of
/// their names, and waits for more: files that appear later are read when
/// their turn comes. Files must be complete when they appear (write them
/// elsewhere and move them in), and names must increase (e.g. timestamps
/// or sequence numbers): a file named before one already read is ignored
/// with a warning. Names starting with `.` are never read. The source ends
/// once a file named as its end marker (see
/// [`DirectorySource::end_marker`]) exists and every other file is read;
/// without a marker it runs until the job is stopped.
///
/// Its checkpoint is the file being read and the byte offset in it, so a
/// restored source neither reads a file twice nor skips one.
///
/// ```
/// use spate_engine::connectors::DirectorySource;
/// use spate_engine::{Source, SourceStep};
///
/// let dir = std::env::temp_dir().join(format!("spate-doc-dir-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// std::fs::write(dir.join("002.log"), "c\n").unwrap();
/// std::fs::write(dir.join("001.log"), "a\nb\n").unwrap();
/// std::fs::write(dir.join("END"), "").unwrap();
/// let mut source = DirectorySource::lines(&dir).end_marker("END");
/// let mut read = Vec::new();
/// loop {
///     match source.next()? {
///         SourceStep::Emit(line) => read.push(line),
///         SourceStep::WaitUntil(_) => continue,
///         SourceStep::Done => break,
///     }
/// }
/// assert_eq!(read, ["a", "b", "c"]);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), spate_engine::OperatorError>(())
/// ```
pub struct DirectorySource<T> {
    dir: PathBuf,
    end_marker: Option<String>,
    /// The file being read, if any.
    reading: Option<LineReader>,
    at: DirectoryPosition,
    records: Records<T>,
    pace: Pace,
    /// Late files already reported, so that each is reported once.
    ignored: BTreeSet<String>,
}

/// What a [`DirectorySource`] checkpoints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct DirectoryPosition {
    /// The file being read, or the last one read when `finished`.
    file: Option<String>,
    /// Where in `file`.
    at: LinePosition,
    /// `file` has been read to its end.
    finished: bool,
    /// Records emitted so far (what pacing counts).
    emitted: u64,
}

impl DirectorySource<String> {
    /// Every line of every file of `dir` as a `String`.
    pub fn lines(dir: impl AsRef<Path>) -> Self {
        Self::parsed(dir, |line| Ok(line.to_string()))
    }
}

impl<T: DeserializeOwned> DirectorySource<T> {
    /// JSON lines: each line a JSON value of `T`.
    pub fn json_lines(dir: impl AsRef<Path>) -> Self {
        Self::parsed(dir, |line| {
            serde_json::from_str(line).map_err(|e| e.to_string())
        })
    }
}

impl<T> DirectorySource<T> {
    /// Each line of each file of `dir` parsed by `parse`, which says why a
    /// line is not a record; such lines are skipped and reported unless
    /// [`DirectorySource::on_bad_records`] says to stop.
    pub fn parsed(
        dir: impl AsRef<Path>,
        parse: impl FnMut(&str) -> Result<T, String> + Send + 'static,
    ) -> Self {
        DirectorySource {
            dir: dir.as_ref().to_path_buf(),
            end_marker: None,
            reading: None,
            at: DirectoryPosition::default(),
            records: Records::new(Box::new(parse)),
            pace: Pace::default(),
            ignored: BTreeSet::new(),
        }
    }

    /// Ends the source once a file named `name` is in the directory and
    /// every other file has been read; the marker itself is never read.
    pub fn end_marker(mut self, name: &str) -> Self {
        self.end_marker = Some(name.to_string());
        self
    }

    /// Skip (the default) or stop on a line that is not a record.
    pub fn on_bad_records(mut self, policy: BadRecords) -> Self {
        self.records.bad = policy;
        self
    }

    /// Emits at most `per_sec` records a second (0: unpaced).
    pub fn paced(mut self, per_sec: f64) -> Self {
        self.pace = Pace::new(per_sec);
        self
    }

    /// Bad records this instance skipped since it started.
    pub fn skipped(&self) -> u64 {
        self.records.skipped
    }

    /// The first file to read after the current one, and whether the end
    /// marker is there.
    fn next_file(&mut self) -> Result<(Option<String>, bool), OperatorError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            OperatorError::new(format!(
                "cannot list the input directory {}: {e}",
                self.dir.display()
            ))
        })?;
        let mut next: Option<String> = None;
        let mut ended = false;
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            if self.end_marker.as_deref() == Some(name.as_str()) {
                ended = true;
                continue;
            }
            if let Some(current) = &self.at.file {
                if name <= *current {
                    if name != *current && self.ignored.insert(name.clone()) {
                        tracing::warn!(
                            "{}: ignored {name}, which appeared after {current} was read: \
                             name files in increasing order",
                            self.dir.display()
                        );
                    }
                    continue;
                }
            }
            if next.as_ref().is_none_or(|n| name < *n) {
                next = Some(name);
            }
        }
        Ok((next, ended))
    }
}

impl<T: Data> Source for DirectorySource<T> {
    type Out = T;

    fn next(&mut self) -> Result<SourceStep<T>, OperatorError> {
        if let Some(due) = self.pace.wait(self.at.emitted) {
            return Ok(SourceStep::WaitUntil(due));
        }
        loop {
            if let Some(reader) = &mut self.reading {
                let record = reader.next_record(&mut self.records)?;
                self.at.at = reader.position();
                if let Some(record) = record {
                    self.at.emitted += 1;
                    return Ok(SourceStep::Emit(record));
                }
                self.at.finished = true;
                self.reading = None;
            }
            match self.next_file()? {
                (Some(name), _) => {
                    self.reading = Some(LineReader::open(
                        &self.dir.join(&name),
                        LinePosition::default(),
                    )?);
                    self.at.file = Some(name);
                    self.at.at = LinePosition::default();
                    self.at.finished = false;
                }
                (None, true) => return Ok(SourceStep::Done),
                (None, false) => return Ok(SourceStep::WaitUntil(Instant::now() + POLL_EVERY)),
            }
        }
    }

    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        encode_position(&self.at).map(Some)
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        let at: DirectoryPosition = decode_position(position)?;
        self.reading = match (&at.file, at.finished) {
            (Some(file), false) => Some(LineReader::open(&self.dir.join(file), at.at)?),
            _ => None,
        };
        self.pace.resume_at(at.emitted);
        self.at = at;
        Ok(())
    }
}
