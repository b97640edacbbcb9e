//! Sinks: CSV and JSON-lines files, exactly once, and stdout for debugging.

use std::fmt::Debug;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::api::{Data, InstanceContext, OperatorError, Sink};

/// An output file that a checkpoint measures and a restore truncates back
/// to that length, which makes a file sink exactly once: what a failed
/// instance wrote after its last checkpoint is cut, and its replacement
/// writes it again from the replayed input.
struct OutputFile {
    path: PathBuf,
}

impl OutputFile {
    /// Opens the file of instance `ctx` of a sink writing `path`: `path`
    /// itself for a sink of one instance, `path.N` for instance N of
    /// several. A fresh instance starts the file empty; a restored one keeps
    /// it for [`OutputFile::truncate`].
    fn open(path: &Path, ctx: &InstanceContext) -> Result<(Self, File), OperatorError> {
        let path = if ctx.parallelism > 1 {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{}", ctx.index));
            PathBuf::from(name)
        } else {
            path.to_path_buf()
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(!ctx.restoring)
            .open(&path)
            .map_err(|e| {
                OperatorError::new(format!("cannot create the output {}: {e}", path.display()))
            })?;
        Ok((OutputFile { path }, file))
    }

    /// The checkpoint of `file`, flushed: its length.
    fn length(&self, mut file: &File) -> Result<Vec<u8>, OperatorError> {
        file.sync_data().map_err(|e| self.error("syncing", e))?;
        let length = file
            .stream_position()
            .map_err(|e| self.error("measuring", e))?;
        Ok(length.to_le_bytes().to_vec())
    }

    /// Cuts `file` back to the length in `checkpoint` (empty: a restore
    /// from before any checkpoint, so everything goes).
    fn truncate(&self, mut file: &File, checkpoint: &[u8]) -> Result<(), OperatorError> {
        let length = match checkpoint {
            [] => 0,
            bytes => u64::from_le_bytes(bytes.try_into().map_err(|_| {
                OperatorError::new(format!(
                    "the checkpointed length of {} is not 8 bytes",
                    self.path.display()
                ))
            })?),
        };
        file.set_len(length)
            .and_then(|()| file.seek(SeekFrom::Start(length)).map(drop))
            .map_err(|e| self.error("truncating", e))
    }

    fn error(&self, doing: &str, e: std::io::Error) -> OperatorError {
        OperatorError::new(format!("{doing} the output {}: {e}", self.path.display()))
    }
}

/// A file written exactly once: a restored sink truncates its file to the
/// length its checkpoint recorded, and its replacement writes the rest
/// again from the replayed input. With parallelism N, instance `i` writes
/// `path.i`. `F` writes the records: [`CsvSink`] and [`JsonLinesSink`] are
/// the two formats.
pub struct FileSink<T, F> {
    file: OutputFile,
    records: F,
    _type: PhantomData<fn(T)>,
}

/// A buffered writer of one format of records over a [`FileSink`]'s file.
pub trait RecordFormat<T>: Sized + Send + 'static {
    /// What one record is, for errors ("a CSV record").
    const RECORD: &'static str;

    /// Writes records into `file`.
    fn over(file: File) -> Self;

    /// Buffers one record.
    fn write(&mut self, record: &T) -> Result<(), String>;

    /// Writes out what is buffered.
    fn flush(&mut self) -> std::io::Result<()>;

    /// The file written into.
    fn file(&self) -> &File;
}

impl<T, F: RecordFormat<T>> FileSink<T, F> {
    /// A sink writing `path` (see the type's description for parallelism).
    pub fn create(path: impl AsRef<Path>, ctx: &InstanceContext) -> Result<Self, OperatorError> {
        let (file, out) = OutputFile::open(path.as_ref(), ctx)?;
        Ok(FileSink {
            file,
            records: F::over(out),
            _type: PhantomData,
        })
    }
}

impl<T: Data, F: RecordFormat<T>> Sink for FileSink<T, F> {
    type In = T;

    fn write(&mut self, record: T) -> Result<(), OperatorError> {
        self.records.write(&record).map_err(|e| {
            OperatorError::new(format!(
                "writing {} to {}: {e}",
                F::RECORD,
                self.file.path.display()
            ))
        })
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        Ok(self.records.flush()?)
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        self.records.flush()?;
        self.file.length(self.records.file())
    }

    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), OperatorError> {
        self.file.truncate(self.records.file(), checkpoint)
    }
}

/// Writes each tuple as a CSV record (no header): a tuple or a struct of
/// numbers, strings and booleans per line, quoted where CSV needs it.
/// Exactly once, as every [`FileSink`].
///
/// ```
/// use spate_engine::connectors::CsvSink;
/// use spate_engine::{QueryBuilder, connectors::Generator};
///
/// let mut q = QueryBuilder::new();
/// let pairs = q.source("pairs", 1, |_| Ok(Generator::new(|n| (format!("key {n}"), n)).limit(3)));
/// q.sink("write", 1, &[pairs], |ctx| CsvSink::create("pairs.csv", ctx));
/// let query = q.build()?;
/// # Ok::<(), spate_engine::EngineError>(())
/// ```
pub type CsvSink<T> = FileSink<T, Csv>;

/// CSV records, one per line, without a header.
pub struct Csv(csv::Writer<File>);

impl<T: Serialize> RecordFormat<T> for Csv {
    const RECORD: &'static str = "a CSV record";

    fn over(file: File) -> Self {
        Csv(csv::WriterBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_writer(file))
    }

    fn write(&mut self, record: &T) -> Result<(), String> {
        self.0.serialize(record).map_err(|e| e.to_string())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }

    fn file(&self) -> &File {
        self.0.get_ref()
    }
}

/// Writes each tuple as one line of JSON. Exactly once, as every
/// [`FileSink`].
///
/// ```
/// use spate_engine::connectors::{Generator, JsonLinesSink};
/// use spate_engine::QueryBuilder;
///
/// let mut q = QueryBuilder::new();
/// let numbers = q.source("numbers", 1, |_| Ok(Generator::new(|n| vec![n; 2]).limit(3)));
/// q.sink("write", 1, &[numbers], |ctx| JsonLinesSink::create("numbers.jsonl", ctx));
/// let query = q.build()?;
/// # Ok::<(), spate_engine::EngineError>(())
/// ```
pub type JsonLinesSink<T> = FileSink<T, JsonLines>;

/// One JSON value per line.
pub struct JsonLines(BufWriter<File>);

impl<T: Serialize> RecordFormat<T> for JsonLines {
    const RECORD: &'static str = "a JSON line";

    fn over(file: File) -> Self {
        JsonLines(BufWriter::new(file))
    }

    fn write(&mut self, record: &T) -> Result<(), String> {
        serde_json::to_writer(&mut self.0, record).map_err(|e| e.to_string())?;
        self.0.write_all(b"\n").map_err(|e| e.to_string())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }

    fn file(&self) -> &File {
        self.0.get_ref()
    }
}

/// Prints each tuple (`{:?}`) on the worker's standard output, prefixed
/// with the instance (`write[0] ...`): for watching a query while writing
/// it. At least once: a recovered instance prints again what its
/// predecessor printed after its last checkpoint.
///
/// ```
/// use spate_engine::connectors::{Generator, StdoutSink};
/// use spate_engine::QueryBuilder;
///
/// let mut q = QueryBuilder::new();
/// let numbers = q.source("numbers", 1, |_| Ok(Generator::new(|n| n).limit(3)));
/// q.sink("print", 1, &[numbers], |ctx| Ok(StdoutSink::new(ctx)));
/// let query = q.build()?;
/// # Ok::<(), spate_engine::EngineError>(())
/// ```
pub struct StdoutSink<T> {
    prefix: String,
    _type: PhantomData<fn(T)>,
}

impl<T> StdoutSink<T> {
    /// A sink printing with instance `ctx`'s name as the prefix.
    pub fn new(ctx: &InstanceContext) -> Self {
        StdoutSink {
            prefix: format!("{}[{}]", ctx.operator, ctx.index),
            _type: PhantomData,
        }
    }
}

impl<T: Data + Debug> Sink for StdoutSink<T> {
    type In = T;

    fn write(&mut self, record: T) -> Result<(), OperatorError> {
        let mut out = std::io::stdout().lock();
        Ok(writeln!(out, "{} {record:?}", self.prefix)?)
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        std::io::stdout().flush()?;
        Ok(Vec::new())
    }
}
