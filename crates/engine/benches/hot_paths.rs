//! Micro-benchmarks of the engine's per-tuple and per-checkpoint hot paths,
//! through the public API only, so that a regression in any of them shows up
//! without running a whole cluster.
//!
//! Run with `cargo bench -p spate-engine` (about two minutes on 2 cores);
//! `docs/BENCH.md` has the figures measured so far.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use spate_engine::hash::key_hash;
use spate_engine::stamp::merge::{encode_tuple, read_tuple, write_tuple, Merge};
use spate_engine::state::{
    Checkpoint, CheckpointParts, KeyRange, KeyedState, OutputBuffer, RoutingTable,
};
use spate_engine::Stamp;

/// Tuples per batch: the unit the per-tuple benchmarks process per iteration,
/// so that timings read as "per batch" and throughput as "per tuple".
const BATCH: usize = 1_000;

/// Shaped like Linear Road's position report as it travels between
/// operators, so that encoding costs are those of the real query.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PositionReport {
    time: u32,
    vid: u32,
    spd: u8,
    xway: u16,
    lane: u8,
    dir: u8,
    seg: u8,
    pos: u32,
    released_us: u64,
}

/// Shaped like a toll calculator's per-segment statistics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SegmentStats {
    minute: u32,
    cars: u32,
    speed_sum: u64,
    reports: u32,
}

/// A cheap deterministic sequence (SplitMix64) so that every run measures
/// the same keys without depending on a random-number crate.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn reports(n: usize) -> Vec<PositionReport> {
    let mut rng = 1;
    (0..n)
        .map(|i| {
            let r = splitmix(&mut rng);
            let pos = (r % 528_000) as u32;
            PositionReport {
                time: i as u32 / 100,
                vid: (r >> 32) as u32 % 100_000,
                spd: (r % 101) as u8,
                xway: 0,
                lane: (r >> 8) as u8 % 5,
                dir: (r >> 16) as u8 % 2,
                seg: (pos / 5_280) as u8,
                pos,
                released_us: 1_700_000_000_000_000 + i as u64,
            }
        })
        .collect()
}

/// Tight settings so the whole suite stays within a couple of minutes on a
/// small machine; the figures are for spotting large changes, not 1 % ones.
fn quick(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("engine");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn tuple_codec(c: &mut Criterion) {
    let input = reports(BATCH);
    let mut body = Vec::new();
    let mut scratch = Vec::new();
    for (i, r) in input.iter().enumerate() {
        scratch.clear();
        bincode::serialize_into(&mut scratch, r).expect("encodes");
        write_tuple(&mut body, Stamp(i as u64 + 1), &scratch);
    }
    let mut g = quick(c);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("tuple encode (bincode into the batch), 1k", |b| {
        let mut out = Vec::with_capacity(body.len());
        b.iter(|| {
            out.clear();
            for (i, r) in input.iter().enumerate() {
                encode_tuple(&mut out, Stamp(i as u64 + 1), |batch| {
                    bincode::serialize_into(batch, r)
                })
                .expect("encodes");
            }
            black_box(out.len())
        })
    });
    g.bench_function("tuple decode (read_tuple + bincode), 1k", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut sum = 0u64;
            while pos < body.len() {
                let (stamp, range) = read_tuple(&body, pos).expect("well framed");
                let r: PositionReport =
                    bincode::deserialize(&body[range.clone()]).expect("decodes");
                sum = sum.wrapping_add(stamp.0 ^ u64::from(r.vid));
                pos = range.end;
            }
            black_box(sum)
        })
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let table = RoutingTable::new(
        KeyRange::FULL
            .split_even(8)
            .into_iter()
            .zip(0u32..)
            .collect(),
    )
    .expect("an even split tiles the hash space");
    let keys: Vec<(u16, u8, u8)> = reports(BATCH)
        .iter()
        .map(|r| (r.xway, r.dir, r.seg))
        .collect();
    let mut g = quick(c);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("route (key_hash + 8 ranges), 1k", |b| {
        b.iter(|| {
            let mut sum = 0u32;
            for k in &keys {
                sum = sum.wrapping_add(*table.route(key_hash(k)));
            }
            black_box(sum)
        })
    });
    g.finish();
}

fn merge(c: &mut Criterion) {
    let mut g = quick(c);
    g.throughput(Throughput::Elements(BATCH as u64));
    // One channel: an operator with one upstream instance, the common case.
    // Four: channel c carries stamps c+1, c+1+4, ...: a round-robin
    // interleaving, the worst case (the minimum moves channel every tuple).
    for channels in [1, 4] {
        let batches = merge_batches(channels);
        let name = format!("merge {channels} channel(s) (push + drain), 1k");
        g.bench_function(name, |b| {
            b.iter_batched(
                || batches.clone(),
                |batches| {
                    let mut m = Merge::new(channels, Stamp::ZERO);
                    for (channel, (body, mark)) in batches.into_iter().enumerate() {
                        m.push(channel, body, mark).expect("valid batch");
                    }
                    let mut n = 0usize;
                    m.drain(|_, p| {
                        n += p.len();
                        Ok(())
                    })
                    .expect("drains");
                    black_box(n)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// [`BATCH`] tuples of 40 bytes dealt round-robin over `channels` batches,
/// each with its last stamp as its mark.
fn merge_batches(channels: usize) -> Vec<(Vec<u8>, Stamp)> {
    let payload = [7u8; 40];
    (0..channels)
        .map(|c| {
            let mut body = Vec::new();
            let mut last = Stamp::ZERO;
            for i in 0..BATCH / channels {
                last = Stamp((i * channels + c + 1) as u64);
                write_tuple(&mut body, last, &payload);
            }
            (body, last)
        })
        .collect()
}

fn keyed_state(c: &mut Criterion) {
    const KEYS: u64 = 100_000;
    let mut state: KeyedState<u64, SegmentStats> = KeyedState::default();
    for k in 0..KEYS {
        state.get_or_default(k).cars = 1;
    }
    let mut rng = 7;
    let keys: Vec<u64> = (0..BATCH).map(|_| splitmix(&mut rng) % KEYS).collect();
    let mut g = quick(c);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("keyed state update (100k keys), 1k", |b| {
        b.iter(|| {
            for &k in &keys {
                let s = state.get_or_default(k);
                s.reports += 1;
                s.speed_sum += k & 63;
            }
        })
    });
    g.finish();
}

/// One hop of a stateful operator whose state is far larger than the
/// cache, each input on a key not touched for long (as the toll
/// assessment's accounts): decode the input, update its key's state,
/// encode an output. One by one, every lookup stalls on a cache miss;
/// warmed eight at a time first ([`KeyedState::warm`] after decoding, as
/// an instance's lookahead does), the misses of the eight overlap.
fn keyed_state_beyond_the_cache(c: &mut Criterion) {
    const KEYS: usize = 1_000_000;
    const WARMED_TOGETHER: usize = 8;
    let mut state: KeyedState<u32, SegmentStats> = KeyedState::default();
    for k in 0..KEYS as u32 {
        state.get_or_default(k).cars = 1;
    }
    let mut rng = 11;
    let (mut body, mut windows, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    for (i, mut r) in reports(KEYS).into_iter().enumerate() {
        if i % BATCH == 0 {
            windows.push(body.len());
        }
        r.vid = (splitmix(&mut rng) % KEYS as u64) as u32;
        scratch.clear();
        bincode::serialize_into(&mut scratch, &r).expect("encodes");
        write_tuple(&mut body, Stamp(i as u64 + 1), &scratch);
    }
    windows.push(body.len());
    // Each iteration takes the next 1,000 inputs, so that their keys are
    // not in the cache from the iteration before.
    let mut window = 0;
    let mut next_window = || {
        window = (window + 1) % (windows.len() - 1);
        windows[window]..windows[window + 1]
    };
    let decode = |range: std::ops::Range<usize>| -> PositionReport {
        bincode::deserialize(&body[range]).expect("decodes")
    };
    let process =
        |state: &mut KeyedState<u32, SegmentStats>, out: &mut Vec<u8>, r: PositionReport| {
            let s = state.get_or_default(r.vid);
            s.reports += 1;
            s.speed_sum += u64::from(r.spd);
            encode_tuple(out, Stamp(u64::from(r.time)), |batch| {
                bincode::serialize_into(batch, &*s)
            })
            .expect("encodes");
        };
    let mut g = quick(c);
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut out = Vec::new();
    for (how, together) in [("one by one", 1), ("warmed 8 at a time", WARMED_TOGETHER)] {
        g.bench_function(format!("stateful hop (1M keys), 1k, {how}"), |b| {
            b.iter_batched(
                &mut next_window,
                |tuples| {
                    out.clear();
                    let mut pos = tuples.start;
                    while pos < tuples.end {
                        let mut run = Vec::with_capacity(together);
                        while run.len() < together && pos < tuples.end {
                            let (_, range) = read_tuple(&body, pos).expect("well framed");
                            pos = range.end;
                            run.push(range);
                        }
                        if together > 1 {
                            for range in &run {
                                state.warm(&decode(range.clone()).vid);
                            }
                        }
                        for range in run {
                            process(&mut state, &mut out, decode(range));
                        }
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn million_key_checkpoint() -> (KeyedState<u64, SegmentStats>, Checkpoint) {
    let mut state: KeyedState<u64, SegmentStats> = KeyedState::default();
    for k in 0..1_000_000u64 {
        let s = state.get_or_default(k);
        s.cars = k as u32 % 200;
        s.speed_sum = k * 3;
    }
    let checkpoint = Checkpoint {
        operator: "toll_assessment".into(),
        key_range: KeyRange::FULL,
        frontier: Stamp(1),
        entries: state.snapshot().expect("snapshot"),
        output_buffer: OutputBuffer::default(),
        operator_state: Vec::new(),
    };
    (state, checkpoint)
}

fn checkpoint(c: &mut Criterion) {
    let (mut state, whole) = million_key_checkpoint();
    let halves = KeyRange::FULL.split_even(2);
    let mut g = quick(c);
    // One iteration takes about a second here: ten of them need more time.
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(state.len() as u64));
    g.bench_function("checkpoint 1M keys (snapshot + encode)", |b| {
        b.iter(|| {
            let checkpoint = Checkpoint {
                operator: whole.operator.clone(),
                key_range: whole.key_range,
                frontier: whole.frontier,
                entries: state.snapshot().expect("snapshot"),
                output_buffer: OutputBuffer::default(),
                operator_state: Vec::new(),
            };
            black_box(checkpoint.encode().expect("encodes").len())
        })
    });
    // An incremental checkpoint after 1,000 updates: what the instance's
    // thread pays per checkpoint when little of a large state changed.
    let mut rng = 11;
    let changed: Vec<u64> = (0..1_000).map(|_| splitmix(&mut rng) % 1_000_000).collect();
    g.bench_function("incremental checkpoint 1M keys, 1k changed", |b| {
        b.iter(|| {
            for &k in &changed {
                state.get_or_default(k).reports += 1;
            }
            let entries = state.snapshot_changes().expect("snapshot");
            let parts = CheckpointParts {
                operator: &whole.operator,
                key_range: whole.key_range,
                frontier: Stamp(2),
                entries: &entries,
                output_buffer: &OutputBuffer::default(),
                operator_state: &[],
            };
            black_box(parts.encode_delta(Stamp(1), None).expect("encodes").len())
        })
    });
    for &k in &changed {
        state.get_or_default(k).reports += 1;
    }
    let delta = Checkpoint {
        frontier: Stamp(2),
        entries: state.snapshot_changes().expect("snapshot"),
        ..whole.clone()
    };
    g.bench_function("fold a 1k-key increment into a 1M-key checkpoint", |b| {
        b.iter(|| {
            black_box(
                whole
                    .clone()
                    .apply(delta.clone())
                    .expect("applies")
                    .entries
                    .len(),
            )
        })
    });
    g.bench_function("partition 1M-key checkpoint into 2", |b| {
        b.iter(|| black_box(whole.partition(&halves).expect("tiles").len()))
    });
    // The rest of a split's path: the coordinator and the new workers decode
    // the parts, and each half's instance rebuilds its state.
    let encoded = whole.encode().expect("encodes");
    g.bench_function("decode 1M-key checkpoint", |b| {
        b.iter(|| black_box(Checkpoint::decode(&encoded).expect("decodes").entries.len()))
    });
    g.bench_function("restore 1M keys from a checkpoint", |b| {
        b.iter(|| {
            let restored: KeyedState<u64, SegmentStats> =
                KeyedState::restore(&whole.entries, whole.key_range).expect("restores");
            black_box(restored.len())
        })
    });
    g.finish();
}

/// Every hot path (what `criterion_group!` would generate, with a doc).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    tuple_codec(&mut c);
    routing(&mut c);
    merge(&mut c);
    keyed_state(&mut c);
    keyed_state_beyond_the_cache(&mut c);
    checkpoint(&mut c);
}

criterion_main!(benches);
