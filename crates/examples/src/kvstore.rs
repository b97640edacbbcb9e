//! A key-value store fed by generated puts, to give an instance a known
//! amount of state: `keys` distinct keys each get a `value_bytes` value as
//! fast as the cluster takes them (the load phase); then puts to keys spread
//! over the whole key space go on at `hold_rate` per second for `hold_secs`
//! seconds (the hold phase), so that the job keeps running, and taking
//! checkpoints, with state of a fixed size.
//!
//! A checkpoint of the store takes about `keys × (value_bytes + 44)` bytes:
//! 108 MB for a million keys with 64-byte values, the state that
//! `crates/cli/tests/split_pause.rs` splits.
//!
//! Parameters (JSON object, all optional): `keys` (default 100,000),
//! `value_bytes` (64), `hold_secs` (10), `hold_rate` (1,000 puts a second),
//! `stores` (parallelism of the store, 1), and for `spate bench state`:
//! `latency_file` (a path: the store then emits the emission time of every
//! hold-phase put to a `latency` sink that writes latency histograms there,
//! see [`crate::latency`]) and `stop_file` (a path: the hold phase ends as
//! soon as it exists, `hold_secs` at the latest).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spate_engine::{
    EngineError, OperatorError, Output, QueryBuilder, QueryRegistry, Source, SourceStep,
    StatefulOperator,
};

use crate::latency::{now_us, LatencySink};
use crate::param_u32;

/// The query's name in the registry.
pub const NAME: &str = "kvstore";

/// Registers the query.
pub fn register(registry: &mut QueryRegistry) {
    registry.register(
        NAME,
        "a key-value store of generated puts (params: keys, value_bytes, hold_secs, hold_rate, stores, latency_file, stop_file)",
        build,
    );
}

/// Builds the kvstore query from its parameters.
pub fn build(params: &serde_json::Value) -> Result<spate_engine::Query, EngineError> {
    let keys = param_u32(params, "keys", 100_000)?;
    let hold_rate = param_u32(params, "hold_rate", 1_000)?;
    if keys == 0 || hold_rate == 0 {
        return Err(EngineError::InvalidQuery(
            "`keys` and `hold_rate` must be at least 1".into(),
        ));
    }
    let latency_file = param_path(params, "latency_file")?;
    let puts = Puts {
        keys: u64::from(keys),
        hold: Duration::from_secs(param_u32(params, "hold_secs", 10)?.into()),
        hold_rate: f64::from(hold_rate),
        sent: 0,
        hold_started: None,
        stop_file: param_path(params, "stop_file")?,
        next_stop_check: None,
    };
    let value_bytes = param_u32(params, "value_bytes", 64)? as usize;
    let measure = latency_file.is_some();
    let mut q = QueryBuilder::new();
    let stream = q.source("puts", 1, move |_| Ok(puts.clone()));
    let stored = q.stateful(
        "store",
        param_u32(params, "stores", 1)?,
        &[stream],
        move |_| {
            Ok(Store {
                value_bytes,
                measure,
            })
        },
    );
    if let Some(path) = latency_file {
        q.sink("latency", 1, &[stored], move |_| LatencySink::create(&path));
    }
    q.build()
}

/// The path parameter `name`, if given.
fn param_path(params: &serde_json::Value, name: &str) -> Result<Option<PathBuf>, EngineError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .filter(|s| !s.is_empty())
            .map(|s| Some(PathBuf::from(s)))
            .ok_or_else(|| EngineError::InvalidQuery(format!("`{name}` must be a file path"))),
    }
}

/// One put: the key, and when the source emitted it (microseconds since
/// the Unix epoch; 0 in the load phase, which is not measured).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Put {
    /// The key written.
    pub key: u64,
    /// Emission time, microseconds since the Unix epoch, or 0.
    pub emitted_us: u64,
}

/// How often the hold phase looks for the stop file.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Emits the key of every put: each key once, then paced puts to spread-out
/// keys until the hold phase ends.
#[derive(Clone)]
pub struct Puts {
    keys: u64,
    hold: Duration,
    /// Puts a second in the hold phase.
    hold_rate: f64,
    /// Puts emitted so far.
    sent: u64,
    /// When the load phase ended.
    hold_started: Option<Instant>,
    /// Ends the hold phase early once it exists.
    stop_file: Option<PathBuf>,
    /// When to look for the stop file next.
    next_stop_check: Option<Instant>,
}

impl Puts {
    /// Whether the stop file has appeared (looked for every
    /// [`STOP_CHECK_EVERY`]).
    fn stop_requested(&mut self) -> bool {
        let Some(file) = &self.stop_file else {
            return false;
        };
        let now = Instant::now();
        if self.next_stop_check.is_some_and(|at| now < at) {
            return false;
        }
        self.next_stop_check = Some(now + STOP_CHECK_EVERY);
        file.exists()
    }
}

impl Source for Puts {
    type Out = Put;
    fn next(&mut self) -> Result<SourceStep<Put>, OperatorError> {
        if self.sent < self.keys {
            self.sent += 1;
            return Ok(SourceStep::Emit(Put {
                key: self.sent - 1,
                emitted_us: 0,
            }));
        }
        let started = *self.hold_started.get_or_insert_with(Instant::now);
        let n = self.sent - self.keys;
        let due = Duration::from_secs_f64(n as f64 / self.hold_rate);
        if due >= self.hold || self.stop_requested() {
            return Ok(SourceStep::Done);
        }
        if started.elapsed() < due {
            return Ok(SourceStep::WaitUntil(started + due));
        }
        self.sent += 1;
        Ok(SourceStep::Emit(Put {
            // A multiplicative scatter, so that hold-phase load covers every
            // part of the key space (and of the hash space) evenly.
            key: n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.keys,
            emitted_us: now_us(),
        }))
    }
}

/// Stores a fresh `value_bytes` value for the key of every put. The store
/// makes the value (from the key alone) rather than receiving it, so that
/// tuples stay small and the load phase is quick. When `measure`, it emits
/// the emission time of every hold-phase put it stored.
pub struct Store {
    value_bytes: usize,
    measure: bool,
}

impl StatefulOperator for Store {
    type In = Put;
    type Key = u64;
    type State = String;
    type Out = u64;

    fn key(put: &Put) -> u64 {
        put.key
    }

    fn process(
        &mut self,
        put: Put,
        value: &mut String,
        out: &mut Output<'_, u64>,
    ) -> Result<(), OperatorError> {
        let letter = char::from(b'a' + (put.key % 26) as u8);
        *value = letter.to_string().repeat(self.value_bytes);
        if self.measure && put.emitted_us > 0 {
            out.emit(put.emitted_us)?;
        }
        Ok(())
    }
}
