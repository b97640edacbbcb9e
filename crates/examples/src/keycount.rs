//! Running word counts: `word,count` for every occurrence of every word.
//!
//! Parameters (JSON object): `input` (text file), `output` (CSV file to
//! write), `splitters` and `counters` (parallelism, default 2 each).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};

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
        "running word counts of a text file (params: input, output, splitters, counters)",
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
    let mut q = QueryBuilder::new();
    let lines = q.source("lines", 1, move |_| LineSource::open(&input));
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

/// Reads a text file line by line.
pub struct LineSource {
    lines: std::io::Lines<BufReader<File>>,
}

impl LineSource {
    fn open(path: &str) -> Result<Self, OperatorError> {
        let file = File::open(path)
            .map_err(|e| OperatorError::new(format!("cannot open input {path}: {e}")))?;
        Ok(LineSource {
            lines: BufReader::new(file).lines(),
        })
    }
}

impl Source for LineSource {
    type Out = String;
    fn next(&mut self) -> Result<SourceStep<String>, OperatorError> {
        match self.lines.next() {
            Some(line) => Ok(SourceStep::Emit(line?)),
            None => Ok(SourceStep::Done),
        }
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
        let file = File::create(&path)
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
}
