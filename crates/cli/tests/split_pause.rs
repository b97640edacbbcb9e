//! Opt-in measurement: how long a scale out pauses an instance that holds
//! about 100 MB of state (issue #5 targets under 200 ms), and where the time
//! goes.
//!
//! ```sh
//! cargo test --release -p spate --test split_pause -- --ignored --nocapture
//! ```
//!
//! Environment (all optional): `SPATE_SPLIT_KEYS` (default 1,000,000),
//! `SPATE_SPLIT_VALUE_BYTES` (64: about 108 MB of checkpoint with the
//! default keys), `SPATE_SPLIT_CHECKPOINT_MS` (periodic checkpoint interval,
//! 1000 as deployed), `SPATE_SPLIT_AT_SECS` (when the split is forced, 10: it
//! must come after the load phase).
//!
//! It prints:
//! 1. the phases of a split, timed in this process on the same state through
//!    the engine calls a split makes: snapshot and encode (the instance's
//!    worker), decode, partition and encode of both halves (the
//!    coordinator), decode and restore of a half (each half's worker, the two
//!    in parallel). Moving the bytes (worker -> coordinator -> two workers)
//!    and waiting are not in it;
//! 2. the split of a `kvstore` instance on a local cluster (2 workers and a
//!    pool worker): the pause of its `ScaleEvent` (from the decision until
//!    both halves run and every worker was rewired) and the keys per half.
//!    The pause ends when the halves' threads start: their restores (the
//!    last phase above) run after it, before they process anything.

use std::path::Path;
use std::time::{Duration, Instant};

use spate_engine::cluster::run_local;
use spate_engine::coordinator::JobConfig;
use spate_engine::stamp::Stamp;
use spate_engine::state::{Checkpoint, KeyRange, KeyedState, OutputBuffer};
use spate_engine::QueryRegistry;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// Runs `f`, printing how long it took.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = f();
    println!(
        "  {what:<44} {:>8.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    result
}

/// The phases of splitting a store of `keys` keys, in this process.
fn phases(keys: u64, value_bytes: usize) {
    let mut state: KeyedState<u64, String> = KeyedState::default();
    for key in 0..keys {
        // As `kvstore` fills it: one put per key.
        let letter = char::from(b'a' + (key % 26) as u8);
        *state.get_or_default(key) = letter.to_string().repeat(value_bytes);
    }
    println!("phases of a split of {keys} keys with {value_bytes}-byte values, in one process:");
    let entries = timed("worker: snapshot", || state.snapshot().unwrap());
    let bytes = timed("worker: encode", || {
        Checkpoint {
            operator: "store".into(),
            key_range: KeyRange::FULL,
            frontier: Stamp(1),
            entries,
            output_buffer: OutputBuffer::default(),
            operator_state: Vec::new(),
        }
        .encode()
        .unwrap()
    });
    println!(
        "  checkpoint: {:.1} MB",
        bytes.len() as f64 / (1024.0 * 1024.0)
    );
    let whole = timed("coordinator: decode", || {
        Checkpoint::decode(&bytes).unwrap()
    });
    let halves = {
        let median = whole.entries[whole.entries.len() / 2].hash;
        let (lower, upper) = whole.key_range.split_at(median).unwrap();
        [lower, upper]
    };
    let parts = timed("coordinator: partition", || {
        whole.partition(&halves).unwrap()
    });
    let encoded: Vec<Vec<u8>> = timed("coordinator: encode both halves", || {
        parts.iter().map(|p| p.encode().unwrap()).collect()
    });
    let half = timed("half's worker: decode", || {
        Checkpoint::decode(&encoded[1]).unwrap()
    });
    let restored = timed("half's instance: restore", || {
        KeyedState::<u64, String>::restore(&half.entries, half.key_range).unwrap()
    });
    assert_eq!(restored.len(), parts[1].entries.len());
}

#[test]
#[ignore = "a measurement of a minute or more: run it with --ignored --nocapture"]
fn split_pause_of_100_mb_of_state() {
    let keys = env_or("SPATE_SPLIT_KEYS", 1_000_000);
    let value_bytes = env_or("SPATE_SPLIT_VALUE_BYTES", 64);
    let checkpoint_ms = env_or("SPATE_SPLIT_CHECKPOINT_MS", 1_000);
    let split_at = env_or("SPATE_SPLIT_AT_SECS", 10);
    phases(keys, value_bytes as usize);

    let params = serde_json::json!({
        "keys": keys,
        "value_bytes": value_bytes,
        "hold_secs": split_at + 5,
        "hold_rate": 1_000,
    });
    let mut config = JobConfig::new(spate_examples::kvstore::NAME, params, 2);
    config.pool = 1;
    config.checkpoint_interval = Duration::from_millis(checkpoint_ms);
    config.scale_at = vec![(Duration::from_secs(split_at), "store".into())];
    let mut registry = QueryRegistry::new();
    spate_examples::register(&mut registry);
    let summary = run_local(&registry, &config, Path::new(env!("CARGO_BIN_EXE_spate")))
        .expect("the kvstore job runs");
    let [split] = &summary.scale_events[..] else {
        panic!("expected one split: {:#?}", summary.events);
    };
    assert_eq!(
        (split.keys.0 + split.keys.1) as u64,
        keys,
        "the split came before every key was stored: raise SPATE_SPLIT_AT_SECS"
    );
    println!(
        "local cluster, checkpoints every {checkpoint_ms} ms: split of `store` decided at {} ms, \
         {} + {} keys, pause {} ms",
        split.decided_ms, split.keys.0, split.keys.1, split.pause_ms
    );
}
