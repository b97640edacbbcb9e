//! Answer sinks: write one answer file in the column order of the 2004
//! validator, and measure every answer's latency against its deadline.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use spate_engine::api::sink_file;
use spate_engine::{InstanceContext, OperatorError, Sink};

use super::feeder::unix_micros;
use super::{stats_dir, LrbParams};
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

/// Writes one kind of answer.
pub struct AnswerSink {
    kind: AnswerKind,
    out: BufWriter<File>,
    latency_us: Histogram<u64>,
    written: u64,
    misses: u64,
    /// Simulation seconds per wall-clock second.
    sim_rate: f64,
    params: LrbParams,
}

impl AnswerSink {
    /// Creates (truncates) the answer file; when restoring, opens it as it
    /// is, for [`Sink::restore`] to cut back to the checkpoint.
    pub fn create(
        kind: AnswerKind,
        params: &LrbParams,
        ctx: &InstanceContext,
    ) -> Result<Self, OperatorError> {
        let path = params.out_dir.join(format!("{}.csv", kind.name()));
        let file = sink_file::open(&path, ctx.restoring)?;
        let latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| OperatorError::new(format!("latency histogram: {e}")))?;
        Ok(AnswerSink {
            kind,
            out: BufWriter::with_capacity(1 << 20, file),
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
}

impl Sink for AnswerSink {
    type In = Msg;

    fn write(&mut self, msg: Msg) -> Result<(), OperatorError> {
        match msg {
            Msg::Toll {
                vid,
                time,
                lav,
                toll,
                released_us,
            } => {
                let emit = self.emit_time(time, released_us);
                writeln!(self.out, "0,{vid},{time},{emit},{lav},{toll}")?;
            }
            Msg::Alert {
                time,
                vid,
                seg,
                released_us,
            } => {
                let emit = self.emit_time(time, released_us);
                writeln!(self.out, "1,{time},{emit},{vid},{seg}")?;
            }
            Msg::Balance {
                time,
                qid,
                result_time,
                bal,
                released_us,
            } => {
                let emit = self.emit_time(time, released_us);
                writeln!(self.out, "2,{time},{emit},{qid},{result_time},{bal}")?;
            }
            Msg::Expenditure {
                time,
                qid,
                bal,
                released_us,
            } => {
                let emit = self.emit_time(time, released_us);
                writeln!(self.out, "3,{time},{emit},{qid},{bal}")?;
            }
            Msg::InputError { line_no, message } => {
                writeln!(self.out, "{line_no},\"{}\"", message.replace('"', "'"))?;
            }
            other => {
                return Err(OperatorError::new(format!(
                    "the {} sink received an unexpected {other:?}",
                    self.kind.name()
                )))
            }
        }
        self.written += 1;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        self.out.flush()?;
        let live = LiveCounts {
            answers: self.written,
            late: self.misses,
        };
        // Only a display reads it: a failed write must not fail the sink.
        if let Ok(bytes) = serde_json::to_vec(&live) {
            let _ = std::fs::write(live_path(&self.params.out_dir, self.kind), bytes);
        }
        let state = SinkPosition {
            offset: self.out.get_mut().stream_position()?,
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
        let path = self
            .params
            .out_dir
            .join(format!("{}.csv", self.kind.name()));
        sink_file::rewind(self.out.get_mut(), &path, state.offset)?;
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
        self.out.flush()?;
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
