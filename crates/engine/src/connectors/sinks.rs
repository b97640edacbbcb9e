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

/// Writes each tuple as a CSV record (no header): a tuple or a struct of
/// numbers, strings and booleans per line, quoted where CSV needs it.
/// Exactly once: a restored sink truncates its file to the length its
/// checkpoint recorded. With parallelism N, instance `i` writes `path.i`.
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
pub struct CsvSink<T> {
    file: OutputFile,
    writer: csv::Writer<File>,
    _type: PhantomData<fn(T)>,
}

impl<T> CsvSink<T> {
    /// A sink writing `path` (see the type's description for parallelism).
    pub fn create(path: impl AsRef<Path>, ctx: &InstanceContext) -> Result<Self, OperatorError> {
        let (file, out) = OutputFile::open(path.as_ref(), ctx)?;
        Ok(CsvSink {
            file,
            writer: csv::WriterBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_writer(out),
            _type: PhantomData,
        })
    }
}

impl<T: Data + Serialize> Sink for CsvSink<T> {
    type In = T;

    fn write(&mut self, record: T) -> Result<(), OperatorError> {
        self.writer.serialize(record).map_err(|e| {
            OperatorError::new(format!(
                "writing a CSV record to {}: {e}",
                self.file.path.display()
            ))
        })
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        Ok(self.writer.flush()?)
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        self.writer.flush()?;
        self.file.length(self.writer.get_ref())
    }

    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), OperatorError> {
        self.file.truncate(self.writer.get_ref(), checkpoint)
    }
}

/// Writes each tuple as one line of JSON. Exactly once, as [`CsvSink`];
/// with parallelism N, instance `i` writes `path.i`.
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
pub struct JsonLinesSink<T> {
    file: OutputFile,
    writer: BufWriter<File>,
    _type: PhantomData<fn(T)>,
}

impl<T> JsonLinesSink<T> {
    /// A sink writing `path` (see the type's description for parallelism).
    pub fn create(path: impl AsRef<Path>, ctx: &InstanceContext) -> Result<Self, OperatorError> {
        let (file, out) = OutputFile::open(path.as_ref(), ctx)?;
        Ok(JsonLinesSink {
            file,
            writer: BufWriter::new(out),
            _type: PhantomData,
        })
    }
}

impl<T: Data> Sink for JsonLinesSink<T> {
    type In = T;

    fn write(&mut self, record: T) -> Result<(), OperatorError> {
        serde_json::to_writer(&mut self.writer, &record).map_err(|e| {
            OperatorError::new(format!(
                "writing a JSON line to {}: {e}",
                self.file.path.display()
            ))
        })?;
        Ok(self.writer.write_all(b"\n")?)
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        Ok(self.writer.flush()?)
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        self.writer.flush()?;
        self.file.length(self.writer.get_ref())
    }

    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), OperatorError> {
        self.file.truncate(self.writer.get_ref(), checkpoint)
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
