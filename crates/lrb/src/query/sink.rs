//! Answer sinks: write one kind of answer, to a file in the column order of
//! the 2004 validator or to a PostgreSQL table (exactly once, see
//! `spate-postgres`), and measure every answer's latency against its
//! deadline.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use smallvec::{smallvec, SmallVec};
use spate_engine::api::sink_file;
use spate_engine::{InstanceContext, OperatorError, Sink};
use spate_postgres::{operator_error, Column, ColumnType, PgError, PgSinkConfig, PgWriter, Value};

use super::feeder::unix_micros;
use super::{stats_dir, LrbParams, FILE_BUFFER_BYTES};
use crate::model::{AnswerKind, Msg};

/// Latency figures of one answer kind, for the run report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkStats {
    /// Answers written.
    pub count: u64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Worst latency, milliseconds.
    pub max_ms: f64,
    /// Answers later than their deadline.
    pub deadline_misses: u64,
}

/// Answers and late answers of one kind at the sink's latest checkpoint,
/// kept beside the run's statistics so that a live display can show them.
#[derive(Serialize, Deserialize)]
struct LiveCounts {
    answers: u64,
    late: u64,
}

fn live_path(out_dir: &Path, kind: AnswerKind) -> PathBuf {
    stats_dir(out_dir).join(format!("{}.live.json", kind.name()))
}

/// Late answers of a run so far, as its sinks counted them at their latest
/// checkpoints; `None` before any sink checkpointed (or with checkpoints off).
pub fn late_answers(out_dir: &Path) -> Option<u64> {
    let counts: Vec<LiveCounts> = AnswerKind::ALL
        .into_iter()
        .filter_map(|kind| std::fs::read(live_path(out_dir, kind)).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().map(|c| c.late).sum())
}

/// Where a sink's output stood at a checkpoint.
#[derive(Serialize, Deserialize)]
struct SinkPosition {
    offset: u64,
    written: u64,
    misses: u64,
    latency_us: Vec<(u64, u64)>,
}

/// Where a sink's answers go.
enum Answers {
    /// `KIND.csv` in the run's output directory.
    File(BufWriter<File>),
    /// The kind's table (see [`table`]); boxed, being large.
    Table(Box<PgWriter>),
}

/// The PostgreSQL table of an answer kind: `lrb_tolls`, `lrb_accidents`,
/// `lrb_balances`, `lrb_expenditures`, `lrb_input_errors`.
pub fn table(kind: AnswerKind) -> String {
    format!("lrb_{}", kind.name().replace('-', "_"))
}

/// An answer kind's columns, in the validator's order after the type.
fn columns(kind: AnswerKind) -> Vec<Column> {
    let names: &[&str] = match kind {
        AnswerKind::Tolls => &["vid", "time", "emit", "lav", "toll"],
        AnswerKind::Accidents => &["time", "emit", "vid", "seg"],
        AnswerKind::Balances => &["time", "emit", "qid", "result_time", "bal"],
        AnswerKind::Expenditures => &["time", "emit", "qid", "bal"],
        AnswerKind::InputErrors => {
            return vec![
                Column::new("line_no", ColumnType::BigInt),
                Column::new("message", ColumnType::Text),
            ]
        }
    };
    names
        .iter()
        .map(|name| Column::new(name, ColumnType::BigInt))
        .collect()
}

/// An answer's columns: at most five, kept inline (the file sink writes
/// one for every answer, and a vector each cost it an allocation).
type Row = SmallVec<[Value; 5]>;

/// Writes the answer's line in its file: the type, then the columns; an
/// input error is its line number and quoted message. Straight into `out`,
/// with no text of its own: the tolls sink writes one for most input lines.
fn write_csv_line(out: &mut impl Write, kind: AnswerKind, row: &[Value]) -> std::io::Result<()> {
    let prefix: &[u8] = match kind {
        AnswerKind::Tolls => b"0,",
        AnswerKind::Accidents => b"1,",
        AnswerKind::Balances => b"2,",
        AnswerKind::Expenditures => b"3,",
        AnswerKind::InputErrors => b"",
    };
    out.write_all(prefix)?;
    let mut digits = itoa::Buffer::new();
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        match value {
            Value::Text(text) => write!(out, "\"{}\"", text.replace('"', "'"))?,
            Value::BigInt(n) => out.write_all(digits.format(*n).as_bytes())?,
            other => write!(out, "{other:?}")?,
        }
    }
    out.write_all(b"\n")
}

/// A column value of a small integer field.
fn int(v: impl Into<i64>) -> Value {
    Value::BigInt(v.into())
}

/// Creates the answer tables at `url` and empties them (and forgets their
/// sinks' progress), so that a run starts from nothing: connects once,
/// so a wrong URL or wrong credentials fail here, before any worker starts.
pub fn prepare_tables(url: &str) -> Result<(), PgError> {
    let mut client = spate_postgres::connect(url)?;
    let tables: Vec<(String, Vec<Column>)> = AnswerKind::ALL
        .into_iter()
        .map(|kind| (table(kind), columns(kind)))
        .collect();
    let refs: Vec<(&str, &[Column])> = tables
        .iter()
        .map(|(name, columns)| (name.as_str(), columns.as_slice()))
        .collect();
    spate_postgres::prepare_tables(&mut client, &refs, true)
}

/// Writes the answer tables at `url` into `dir` as the answer files a run
/// without `--sink` would have written, for the validator; returns the
/// number of answers.
pub fn export_tables(url: &str, dir: &Path) -> Result<u64, PgError> {
    let mut client = spate_postgres::connect(url)?;
    std::fs::create_dir_all(dir).map_err(|e| export_error(dir, e))?;
    let mut answers = 0;
    for kind in AnswerKind::ALL {
        let columns = columns(kind);
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let query = format!(
            "SELECT {} FROM {} ORDER BY spate_instance, spate_seq",
            names.join(", "),
            table(kind)
        );
        let rows = client
            .query(query.as_str(), &[])
            .map_err(|e| PgError::Invalid(format!("reading {}: {e}", table(kind))))?;
        let path = dir.join(format!("{}.csv", kind.name()));
        let mut out = BufWriter::new(File::create(&path).map_err(|e| export_error(&path, e))?);
        for row in &rows {
            let values: Vec<Value> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| match c.kind {
                    ColumnType::Text => Value::Text(row.get(i)),
                    _ => Value::BigInt(row.get(i)),
                })
                .collect();
            write_csv_line(&mut out, kind, &values).map_err(|e| export_error(&path, e))?;
        }
        out.flush().map_err(|e| export_error(&path, e))?;
        if kind != AnswerKind::InputErrors {
            answers += rows.len() as u64;
        }
    }
    Ok(answers)
}

fn export_error(path: &Path, e: std::io::Error) -> PgError {
    PgError::Invalid(format!("writing {}: {e}", path.display()))
}

/// Writes one kind of answer.
pub struct AnswerSink {
    kind: AnswerKind,
    out: Answers,
    latency_us: Histogram<u64>,
    written: u64,
    misses: u64,
    /// Simulation seconds per wall-clock second.
    sim_rate: f64,
    params: LrbParams,
}

impl AnswerSink {
    /// Creates (truncates) the answer file; when restoring, opens it as it
    /// is, for [`Sink::restore`] to cut back to the checkpoint. With
    /// `params.sink`, writes to the kind's table instead.
    pub fn create(
        kind: AnswerKind,
        params: &LrbParams,
        ctx: &InstanceContext,
    ) -> Result<Self, OperatorError> {
        std::fs::create_dir_all(&params.out_dir)?;
        let out = match &params.sink {
            Some(url) => Answers::Table(Box::new(
                PgWriter::new(PgSinkConfig::new(url, &table(kind)), columns(kind), ctx)
                    .map_err(operator_error)?,
            )),
            None => {
                let path = params.out_dir.join(format!("{}.csv", kind.name()));
                let file = sink_file::open(&path, ctx.restoring)?;
                Answers::File(BufWriter::with_capacity(FILE_BUFFER_BYTES, file))
            }
        };
        let latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| OperatorError::new(format!("latency histogram: {e}")))?;
        Ok(AnswerSink {
            kind,
            out,
            latency_us,
            written: 0,
            misses: 0,
            sim_rate: if params.speedup > 0.0 {
                params.speedup
            } else {
                1.0
            },
            params: params.clone(),
        })
    }

    /// Records the latency of an answer and returns its Emit second.
    fn emit_time(&mut self, time: u32, released_us: u64) -> u64 {
        let latency_us = unix_micros().saturating_sub(released_us);
        self.latency_us.saturating_record(latency_us.max(1));
        if latency_us as f64 > self.kind.deadline_secs() * 1e6 {
            self.misses += 1;
        }
        u64::from(time) + (latency_us as f64 / 1e6 * self.sim_rate) as u64
    }

    /// The answer's columns (see [`columns`]), its latency recorded.
    fn row(&mut self, msg: Msg) -> Result<Row, OperatorError> {
        // Emit seconds, balances and line numbers: u64 far below i64::MAX.
        let big = |v: u64| Value::BigInt(v as i64);
        Ok(match msg {
            Msg::Toll {
                vid,
                time,
                lav,
                toll,
                released_us,
            } => {
                let emit = self.emit_time(time, released_us);
                smallvec![int(vid), int(time), big(emit), int(lav), int(toll)]
            }
            Msg::Alert {
                time,
                vid,
                seg,
                released_us,
            } => {
                let emit = self.emit_time(time, released_us);
                smallvec![int(time), big(emit), int(vid), int(seg)]
            }
            Msg::Balance {
                time,
                qid,
                result_time,
                bal,
                released_us,
            } => {
                let emit = self.emit_time(time, released_us);
                smallvec![int(time), big(emit), int(qid), int(result_time), big(bal)]
            }
            Msg::Expenditure {
                time,
                qid,
                bal,
                released_us,
            } => {
                let emit = self.emit_time(time, released_us);
                smallvec![int(time), big(emit), int(qid), int(bal)]
            }
            Msg::InputError { line_no, message } => smallvec![big(line_no), Value::Text(message)],
            other => {
                return Err(OperatorError::new(format!(
                    "the {} sink received an unexpected {other:?}",
                    self.kind.name()
                )))
            }
        })
    }
}

impl Sink for AnswerSink {
    type In = Msg;

    fn write(&mut self, msg: Msg) -> Result<(), OperatorError> {
        let row = self.row(msg)?;
        match &mut self.out {
            Answers::File(out) => write_csv_line(out, self.kind, &row)?,
            Answers::Table(writer) => writer.push(row.into_vec()).map_err(operator_error)?,
        }
        self.written += 1;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        // A file's length or a table's committed rows: where to return to.
        let offset = match &mut self.out {
            Answers::File(out) => {
                out.flush()?;
                out.get_mut().stream_position()?
            }
            Answers::Table(writer) => writer.checkpoint().map_err(operator_error)?,
        };
        let live = LiveCounts {
            answers: self.written,
            late: self.misses,
        };
        // Only a display reads it: a failed write must not fail the sink.
        if let Ok(bytes) = serde_json::to_vec(&live) {
            let _ = std::fs::write(live_path(&self.params.out_dir, self.kind), bytes);
        }
        let state = SinkPosition {
            offset,
            written: self.written,
            misses: self.misses,
            latency_us: self
                .latency_us
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        };
        serde_json::to_vec(&state)
            .map_err(|e| OperatorError::new(format!("encoding the sink position: {e}")))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let state: SinkPosition = serde_json::from_slice(state)
            .map_err(|e| OperatorError::new(format!("decoding the sink position: {e}")))?;
        match &mut self.out {
            Answers::File(out) => {
                let path = self
                    .params
                    .out_dir
                    .join(format!("{}.csv", self.kind.name()));
                sink_file::rewind(out.get_mut(), &path, state.offset)?;
            }
            Answers::Table(writer) => writer.restore(state.offset).map_err(operator_error)?,
        }
        self.written = state.written;
        self.misses = state.misses;
        self.latency_us.reset();
        for (value, count) in state.latency_us {
            self.latency_us
                .record_n(value, count)
                .map_err(|e| OperatorError::new(format!("restoring latencies: {e}")))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        match &mut self.out {
            Answers::File(out) => out.flush()?,
            Answers::Table(writer) => writer.commit().map_err(operator_error)?,
        }
        let h = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let stats = SinkStats {
            count: self.written,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            deadline_misses: self.misses,
        };
        let dir = stats_dir(&self.params.out_dir);
        std::fs::create_dir_all(&dir)?;
        let file = File::create(dir.join(format!("{}.json", self.kind.name())))?;
        serde_json::to_writer(BufWriter::new(file), &stats)
            .map_err(|e| OperatorError::new(format!("writing sink statistics: {e}")))
    }
}
