//! Running word counts: `word,count` for every occurrence of every word.
//!
//! Parameters (JSON object): `input` (text file), `output` (CSV file to
//! write), `splitters` and `counters` (parallelism, default 2 each), and
//! `lines_per_sec` (pace the input at this many lines a second, so that a
//! job lasts long enough to kill and scale; default 0, as fast as it reads).
//!
//! The source checkpoints its position in the file and the sink the length
//! of its output, so a recovered job writes exactly the counts of a
//! failure-free one.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use spate_engine::{
    EngineError, InstanceContext, Operator, OperatorError, Output, QueryBuilder, QueryRegistry,
    Sink, Source, SourceStep, StatefulOperator,
};

use crate::param_u32;

/// The query's name in the registry.
pub const NAME: &str = "keycount";

/// Registers the query.
pub fn register(registry: &mut QueryRegistry) {
    registry.register(
        NAME,
        "running word counts of a text file (params: input, output, splitters, counters, lines_per_sec)",
        build,
    );
}

fn param_str(params: &serde_json::Value, name: &str) -> Result<String, EngineError> {
    params
        .get(name)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            EngineError::InvalidQuery(format!("{NAME} needs the parameter `{name}` (a file path)"))
        })
}

/// Builds the keycount query from its parameters.
pub fn build(params: &serde_json::Value) -> Result<spate_engine::Query, EngineError> {
    let input = param_str(params, "input")?;
    let output = param_str(params, "output")?;
    let lines_per_sec = param_u32(params, "lines_per_sec", 0)?;
    let mut q = QueryBuilder::new();
    let lines = q.source("lines", 1, move |_| LineSource::open(&input, lines_per_sec));
    let words = q.operator(
        "split",
        param_u32(params, "splitters", 2)?,
        &[lines],
        |_| Ok(Splitter),
    );
    let counts = q.stateful("count", param_u32(params, "counters", 2)?, &[words], |_| {
        Ok(Counter)
    });
    q.sink("write", 1, &[counts], move |ctx| {
        CsvSink::create(&output, ctx)
    });
    q.build()
}

/// Reads a text file line by line, paced when asked.
pub struct LineSource {
    reader: BufReader<File>,
    /// Bytes read so far: the position a checkpoint records.
    offset: u64,
    /// Lines emitted so far.
    emitted: u64,
    /// Lines a second; 0: as fast as the file reads.
    lines_per_sec: u32,
    /// When the first line was due, once the first was asked for.
    started: Option<Instant>,
}

impl LineSource {
    fn open(path: &str, lines_per_sec: u32) -> Result<Self, OperatorError> {
        let file = File::open(path)
            .map_err(|e| OperatorError::new(format!("cannot open input {path}: {e}")))?;
        Ok(LineSource {
            reader: BufReader::new(file),
            offset: 0,
            emitted: 0,
            lines_per_sec,
            started: None,
        })
    }

    /// How long after the start the `n`th line is due.
    fn due(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / f64::from(self.lines_per_sec))
    }
}

impl Source for LineSource {
    type Out = String;
    fn next(&mut self) -> Result<SourceStep<String>, OperatorError> {
        if self.lines_per_sec > 0 {
            let started = *self.started.get_or_insert_with(Instant::now);
            let due = started + self.due(self.emitted);
            if Instant::now() < due {
                return Ok(SourceStep::WaitUntil(due));
            }
        }
        let mut line = String::new();
        let read = self.reader.read_line(&mut line)?;
        if read == 0 {
            return Ok(SourceStep::Done);
        }
        self.offset += read as u64;
        self.emitted += 1;
        let len = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(len);
        Ok(SourceStep::Emit(line))
    }

    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        serde_json::to_vec(&(self.offset, self.emitted))
            .map(Some)
            .map_err(|e| OperatorError::new(format!("encoding the input position: {e}")))
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        let (offset, emitted): (u64, u64) = serde_json::from_slice(position)
            .map_err(|e| OperatorError::new(format!("decoding the input position: {e}")))?;
        self.reader.seek(SeekFrom::Start(offset))?;
        self.offset = offset;
        self.emitted = emitted;
        // Go on at the same pace from here rather than catching up.
        let behind = self.due(emitted);
        self.started = Some(
            Instant::now()
                .checked_sub(behind)
                .unwrap_or_else(Instant::now),
        );
        Ok(())
    }
}

/// Splits lines into lower-case words.
pub struct Splitter;

impl Operator for Splitter {
    type In = String;
    type Out = String;
    fn process(&mut self, line: String, out: &mut Output<'_, String>) -> Result<(), OperatorError> {
        for word in line
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            out.emit(word.to_lowercase())?;
        }
        Ok(())
    }
}

/// Counts occurrences per word; its state is one `u64` per word.
pub struct Counter;

impl StatefulOperator for Counter {
    type In = String;
    type Key = String;
    type State = u64;
    type Out = (String, u64);

    fn key(word: &String) -> String {
        word.clone()
    }

    fn process(
        &mut self,
        word: String,
        count: &mut u64,
        out: &mut Output<'_, (String, u64)>,
    ) -> Result<(), OperatorError> {
        *count += 1;
        out.emit((word, *count))
    }
}

/// Writes `word,count` lines.
pub struct CsvSink {
    out: BufWriter<File>,
}

impl CsvSink {
    fn create(path: &str, ctx: &InstanceContext) -> Result<Self, OperatorError> {
        let path = if ctx.parallelism > 1 {
            format!("{path}.{}", ctx.index)
        } else {
            path.to_string()
        };
        // A restored sink keeps what it wrote, for `restore` to trim.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(!ctx.restoring)
            .open(&path)
            .map_err(|e| OperatorError::new(format!("cannot create output {path}: {e}")))?;
        Ok(CsvSink {
            out: BufWriter::new(file),
        })
    }
}

impl Sink for CsvSink {
    type In = (String, u64);
    fn write(&mut self, (word, count): (String, u64)) -> Result<(), OperatorError> {
        writeln!(self.out, "{word},{count}")?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        self.out.flush()?;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        self.out.flush()?;
        let length = self.out.get_mut().stream_position()?;
        Ok(length.to_le_bytes().to_vec())
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        // Empty: restored from the start, before any checkpoint.
        let length = match state {
            [] => 0,
            bytes => u64::from_le_bytes(bytes.try_into().map_err(|_| {
                OperatorError::new("the output length checkpointed is not 8 bytes")
            })?),
        };
        let file = self.out.get_mut();
        file.set_len(length)?;
        file.seek(SeekFrom::Start(length))?;
        Ok(())
    }
}
