//! The Linear Road query, written with the engine's public API.
//!
//! ```text
//! feeder -> forwarder -+-> toll_calculator (key: xway, dir, segment) -+-> tolls, accidents sinks
//!                      |                                              |
//!                      +-> toll_assessment (key: car) <--- tolls -----+
//!                              +-> balances, expenditures sinks
//! forwarder -> input-errors sink (skipped lines)
//! ```

mod feeder;
mod forwarder;
mod sink;
mod toll_assessment;
mod toll_calculator;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spate_engine::{EngineError, Query, QueryBuilder, QueryRegistry};

use crate::model::{AnswerKind, Msg};
pub use feeder::{Feeder, FeederStats};
pub use forwarder::Forwarder;
pub use sink::{export_tables, late_answers, prepare_tables, table, AnswerSink, SinkStats};
pub use toll_assessment::TollAssessment;
pub use toll_calculator::TollCalculator;

/// The query's name in the registry.
pub const NAME: &str = "linear-road";

/// Buffer size of the feeder's input reader and the answer files' writers.
/// Small enough to stay in a core's L2 cache beside the operator's own data:
/// with 1 MiB buffers, on two cores shared by four busy threads, the
/// kernel's copy into the feeder's buffer took a third of its thread
/// (docs/BENCH.md, "The feeder's read buffer, and larger batches shared
/// not copied").
const FILE_BUFFER_BYTES: usize = 64 << 10;

/// Parameters of the Linear Road query.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LrbParams {
    /// The input file (15-field lines in Time order).
    pub input: PathBuf,
    /// The historical tolls file (`VID,Day,XWay,Toll`).
    pub tolls: PathBuf,
    /// Where the answer files and statistics go.
    pub out_dir: PathBuf,
    /// Replay speed: S times real time; 0 replays as fast as possible.
    pub speedup: f64,
    /// A sudden change of load: from this simulated second on, replay at
    /// this speed-up instead (a step, to watch the autoscaler answer it).
    #[serde(default)]
    pub speedup_step: Option<(u32, f64)>,
    /// Parallelism of the forwarder.
    #[serde(default = "one")]
    pub forwarders: u32,
    /// Run the forwarder's routing on the feeder's thread instead of as an
    /// operator of its own (as Flink chains it): one hop, one thread and
    /// one output buffer fewer, but no forwarder to scale or recover alone.
    #[serde(default)]
    pub chain_forwarder: bool,
    /// Parallelism of the toll calculator.
    #[serde(default = "one")]
    pub toll_calculators: u32,
    /// Parallelism of the toll assessment.
    #[serde(default = "one")]
    pub assessors: u32,
    /// Stop the run at the first malformed input line instead of skipping it
    /// (skipped lines are listed in `input-errors.csv`).
    #[serde(default)]
    pub stop_on_bad_input: bool,
    /// Write the answers to PostgreSQL at this URL (one table per kind,
    /// exactly once) instead of answer files.
    #[serde(default)]
    pub sink: Option<String>,
}

fn one() -> u32 {
    1
}

impl LrbParams {
    /// The query over `data_dir`'s `input.csv` and `historical-tolls.csv`
    /// with one partition per operator and answers in `out_dir`: where
    /// benchmarks start (elasticity adds partitions from there).
    pub fn one_partition_each(data_dir: &Path, out_dir: PathBuf, speedup: f64) -> Self {
        LrbParams {
            input: data_dir.join("input.csv"),
            tolls: data_dir.join("historical-tolls.csv"),
            out_dir,
            speedup,
            speedup_step: None,
            forwarders: 1,
            chain_forwarder: false,
            toll_calculators: 1,
            assessors: 1,
            stop_on_bad_input: false,
            sink: None,
        }
    }

    /// When, after the replay starts, the line of simulated second `time`
    /// is due: `time / speedup`, at the step's speed-up after the step.
    pub fn due(&self, time: u32) -> Duration {
        match self.speedup_step {
            Some((at, after)) if time > at => {
                Duration::from_secs_f64(f64::from(at) / self.speedup + f64::from(time - at) / after)
            }
            _ => Duration::from_secs_f64(f64::from(time) / self.speedup),
        }
    }
}

/// Where the query keeps per-run statistics inside `out_dir`.
pub fn stats_dir(out_dir: &std::path::Path) -> PathBuf {
    out_dir.join(".spate")
}

/// Registers the Linear Road query.
pub fn register(registry: &mut QueryRegistry) {
    registry.register(
        NAME,
        "the Linear Road benchmark (use `spate lrb run`)",
        |params| {
            let params: LrbParams = serde_json::from_value(params.clone()).map_err(|e| {
                EngineError::InvalidQuery(format!("bad Linear Road parameters: {e}"))
            })?;
            build(&params)
        },
    );
}

/// Builds the query.
pub fn build(params: &LrbParams) -> Result<Query, EngineError> {
    if !(params.speedup >= 0.0 && params.speedup.is_finite()) {
        return Err(EngineError::InvalidQuery(format!(
            "speed-up must be a non-negative number, not {}",
            params.speedup
        )));
    }
    if let Some((at, after)) = params.speedup_step {
        if !(after > 0.0 && after.is_finite() && params.speedup > 0.0) {
            return Err(EngineError::InvalidQuery(format!(
                "the speed-up step at second {at} needs positive speed-ups before and after it, not {} and {after}",
                params.speedup
            )));
        }
    }
    let mut q = QueryBuilder::new();
    let p = params.clone();
    let lines = q.source("feeder", 1, move |_| Feeder::open(&p));
    let strict = params.stop_on_bad_input;
    let parsed = if params.chain_forwarder {
        lines
    } else {
        q.operator("forwarder", params.forwarders, &[lines], move |_| {
            Ok(Forwarder { strict })
        })
    };
    let reports = parsed.filter(|m| matches!(m, Msg::Position { .. } | Msg::Stop { .. }));
    let calculated = q.stateful(
        "toll_calculator",
        params.toll_calculators,
        &[reports],
        |_| Ok(TollCalculator),
    );
    // Every notification, tolled or not: balances are answered as of one.
    let notifications = calculated.filter(|m| matches!(m, Msg::Toll { .. }));
    let queries =
        parsed.filter(|m| matches!(m, Msg::BalanceQuery { .. } | Msg::ExpenditureQuery { .. }));
    let tolls = params.tolls.clone();
    let answers = q.stateful(
        "toll_assessment",
        params.assessors,
        &[queries, notifications],
        move |ctx| TollAssessment::load(&tolls, ctx),
    );
    for kind in AnswerKind::ALL {
        let from = match kind {
            AnswerKind::Tolls | AnswerKind::Accidents => &calculated,
            AnswerKind::Balances | AnswerKind::Expenditures => &answers,
            AnswerKind::InputErrors => &parsed,
        };
        let p = params.clone();
        q.sink(
            kind.name(),
            1,
            &[from.filter(move |m| kind.accepts(m))],
            move |ctx| AnswerSink::create(kind, &p, ctx),
        );
    }
    q.build()
}
