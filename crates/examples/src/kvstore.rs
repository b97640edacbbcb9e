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
//! `stores` (parallelism of the store, 1).

use std::time::{Duration, Instant};

use spate_engine::{
    EngineError, OperatorError, Output, QueryBuilder, QueryRegistry, Source, SourceStep,
    StatefulOperator,
};

use crate::param_u32;

/// The query's name in the registry.
pub const NAME: &str = "kvstore";

/// Registers the query.
pub fn register(registry: &mut QueryRegistry) {
    registry.register(
        NAME,
        "a key-value store of generated puts (params: keys, value_bytes, hold_secs, hold_rate, stores)",
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
    let puts = Puts {
        keys: u64::from(keys),
        hold: Duration::from_secs(param_u32(params, "hold_secs", 10)?.into()),
        hold_rate: f64::from(hold_rate),
        sent: 0,
        hold_started: None,
    };
    let value_bytes = param_u32(params, "value_bytes", 64)? as usize;
    let mut q = QueryBuilder::new();
    let stream = q.source("puts", 1, move |_| Ok(puts.clone()));
    q.stateful(
        "store",
        param_u32(params, "stores", 1)?,
        &[stream],
        move |_| Ok(Store { value_bytes }),
    );
    q.build()
}

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
}

impl Source for Puts {
    type Out = u64;
    fn next(&mut self) -> Result<SourceStep<u64>, OperatorError> {
        if self.sent < self.keys {
            self.sent += 1;
            return Ok(SourceStep::Emit(self.sent - 1));
        }
        let started = *self.hold_started.get_or_insert_with(Instant::now);
        let n = self.sent - self.keys;
        let due = Duration::from_secs_f64(n as f64 / self.hold_rate);
        if due >= self.hold {
            return Ok(SourceStep::Done);
        }
        if started.elapsed() < due {
            return Ok(SourceStep::WaitUntil(started + due));
        }
        self.sent += 1;
        // A multiplicative scatter, so that hold-phase load covers every
        // part of the key space (and of the hash space) evenly.
        Ok(SourceStep::Emit(
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.keys,
        ))
    }
}

/// Stores a fresh `value_bytes` value for the key of every put. The store
/// makes the value (from the key alone) rather than receiving it, so that
/// tuples stay small and the load phase is quick.
pub struct Store {
    value_bytes: usize,
}

impl StatefulOperator for Store {
    type In = u64;
    type Key = u64;
    type State = String;
    type Out = ();

    fn key(key: &u64) -> u64 {
        *key
    }

    fn process(
        &mut self,
        key: u64,
        value: &mut String,
        _out: &mut Output<'_, ()>,
    ) -> Result<(), OperatorError> {
        let letter = char::from(b'a' + (key % 26) as u8);
        *value = letter.to_string().repeat(self.value_bytes);
        Ok(())
    }
}
