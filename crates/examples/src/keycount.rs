//! Running word counts: `word,count` for every occurrence of every word.
//!
//! Parameters (JSON object): `input` (text file), `output` (CSV file to
//! write), `splitters` and `counters` (parallelism, default 2 each), and
//! `lines_per_sec` (pace the input at this many lines a second, so that a
//! job lasts long enough to kill and scale; default 0, as fast as it reads).
//!
//! The engine's file source checkpoints its position in the file and its
//! CSV sink the length of its output (`spate_engine::connectors`), so a
//! recovered job writes exactly the counts of a failure-free one.

use spate_engine::connectors::{CsvSink, FileSource};
use spate_engine::{
    EngineError, Operator, OperatorError, Output, QueryBuilder, QueryRegistry, StatefulOperator,
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
    let lines = q.source("lines", 1, move |_| {
        Ok(FileSource::lines(&input)?.paced(f64::from(lines_per_sec)))
    });
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
