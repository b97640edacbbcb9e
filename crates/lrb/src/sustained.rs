//! What a long bench run shows beyond its totals: whether latency held
//! over time, and whether memory stopped growing.
//!
//! Both are read after the run from what it left: the answer files (each
//! row's `Emit - Time` is its latency in simulation seconds) and the
//! report's once-a-second resource samples.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::resources::ResourcePoint;

/// Latency of every answer released in one window of the replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyWindow {
    /// Where the window starts, wall-clock seconds into the replay
    /// (`Time / speed-up`).
    pub from_secs: f64,
    /// Answers of all kinds whose Time falls in the window.
    pub answers: u64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Worst latency, milliseconds.
    pub max_ms: f64,
}

/// (file, column of Time, column of Emit) of each answer kind.
const ANSWER_COLUMNS: [(&str, usize, usize); 4] = [
    ("tolls.csv", 2, 3),
    ("accidents.csv", 1, 2),
    ("balances.csv", 1, 2),
    ("expenditures.csv", 1, 2),
];

/// Latency per `window_secs` of wall clock, from a run's answer files at
/// `speedup` (> 0). Emit counts whole simulation seconds, so latencies are
/// multiples of `1000 / speedup` ms: at speed-up 50, of 20 ms.
pub fn latency_over_time(
    out_dir: &Path,
    speedup: f64,
    window_secs: f64,
) -> io::Result<Vec<LatencyWindow>> {
    let sim_per_window = (speedup * window_secs).max(1.0);
    let empty = Histogram::<u64>::new(3).map_err(io::Error::other)?;
    let mut windows: Vec<Histogram<u64>> = Vec::new();
    for (file, time_column, emit_column) in ANSWER_COLUMNS {
        let path = out_dir.join(file);
        let reader = match File::open(&path) {
            Ok(file) => BufReader::with_capacity(1 << 20, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in reader.lines() {
            let line = line?;
            let mut fields = line.split(',').map(|f| f.trim().parse::<u64>());
            let (Some(Ok(time)), Some(Ok(emit))) = (
                fields.nth(time_column),
                fields.nth(emit_column - time_column - 1),
            ) else {
                continue;
            };
            let window = (time as f64 / sim_per_window) as usize;
            if windows.len() <= window {
                windows.resize_with(window + 1, || empty.clone());
            }
            let latency_ms = (emit.saturating_sub(time) as f64 * 1000.0 / speedup) as u64;
            windows[window]
                .record(latency_ms)
                .map_err(io::Error::other)?;
        }
    }
    Ok(windows
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.is_empty())
        .map(|(i, h)| LatencyWindow {
            from_secs: i as f64 * window_secs,
            answers: h.len(),
            p50_ms: h.value_at_quantile(0.5) as f64,
            p99_ms: h.value_at_quantile(0.99) as f64,
            max_ms: h.max() as f64,
        })
        .collect())
}

/// Whether the workers' memory stopped growing, judged between the middle
/// and the last third of a run. Linear Road's state itself grows with the
/// cars seen (every car keeps an account), so on an input whose traffic
/// still rises, memory is judged per key of held state: a leak (buffers
/// never trimmed, a map never pruned) grows faster than the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryTrend {
    /// Mean resident memory of all live workers in the middle third, KiB.
    pub middle_kib: u64,
    /// The same in the last third, KiB.
    pub last_kib: u64,
    /// Mean keys of keyed state, all operators, in the middle third.
    pub middle_keys: u64,
    /// The same in the last third.
    pub last_keys: u64,
    /// Whether memory stayed within [`GROWTH_ALLOWED`] (or 32 MiB, for
    /// small processes) of the middle third, or grew no faster per key of
    /// state than that.
    pub levelled_off: bool,
}

/// How much more memory (per key of state) the last third of a run may
/// hold than the middle third and still count as levelled off.
pub const GROWTH_ALLOWED: f64 = 0.10;

/// Samples needed to judge a trend: a run shorter than this (seconds) says
/// nothing about growth.
pub const MIN_SAMPLES: usize = 60;

/// The trend of a run's worker memory; `None` for a run too short to tell.
pub fn memory_trend(resources: &[ResourcePoint]) -> Option<MemoryTrend> {
    if resources.len() < MIN_SAMPLES {
        return None;
    }
    let third = resources.len() / 3;
    let mean = |points: &[ResourcePoint], of: &dyn Fn(&ResourcePoint) -> u64| {
        points.iter().map(of).sum::<u64>() / points.len().max(1) as u64
    };
    let rss = |p: &ResourcePoint| p.workers_rss_kib;
    let keys = |p: &ResourcePoint| p.state.values().map(|s| s.keys).sum::<u64>();
    let (middle, last) = (&resources[third..2 * third], &resources[2 * third..]);
    let trend = MemoryTrend {
        middle_kib: mean(middle, &rss),
        last_kib: mean(last, &rss),
        middle_keys: mean(middle, &keys),
        last_keys: mean(last, &keys),
        levelled_off: false,
    };
    let allowed = (trend.middle_kib as f64 * GROWTH_ALLOWED).max(32.0 * 1024.0);
    let absolute = trend.last_kib as f64 <= trend.middle_kib as f64 + allowed;
    let per_key = trend.middle_keys > 0
        && trend.last_keys > 0
        && trend.last_kib as f64 / trend.last_keys as f64
            <= trend.middle_kib as f64 / trend.middle_keys as f64 * (1.0 + GROWTH_ALLOWED);
    Some(MemoryTrend {
        levelled_off: absolute || per_key,
        ..trend
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, workers_rss_kib: u64, cars: u64) -> ResourcePoint {
        let mut state = std::collections::BTreeMap::new();
        state.insert(
            "toll_assessment".to_string(),
            crate::resources::StateSize {
                keys: cars,
                bytes: 49 * cars,
            },
        );
        ResourcePoint {
            at_ms,
            workers_rss_kib,
            state,
            ..ResourcePoint::default()
        }
    }

    #[test]
    fn latency_is_windowed_by_release_time() {
        let dir = std::env::temp_dir().join(format!("lrb-sustained-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Speed-up 10, 1 s windows: Time 0..=9 is the first window.
        std::fs::write(
            dir.join("tolls.csv"),
            "0,1,0,0,-1,0\n0,2,5,6,-1,0\n0,3,12,12,40,0\n",
        )
        .unwrap();
        std::fs::write(dir.join("balances.csv"), "2,15,17,1,15,0\n").unwrap();
        let windows = latency_over_time(&dir, 10.0, 1.0).unwrap();
        assert_eq!(windows.len(), 2, "{windows:?}");
        assert_eq!((windows[0].answers, windows[0].max_ms), (2, 100.0));
        assert_eq!(windows[1].from_secs, 1.0);
        assert_eq!((windows[1].answers, windows[1].max_ms), (2, 200.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_that_levels_off_or_follows_the_state_passes_and_a_leak_does_not() {
        let levelling: Vec<_> = (0..90)
            .map(|s| sample(s * 1000, 100_000 + 2_000 * s.min(30), 0))
            .collect();
        assert!(memory_trend(&levelling).unwrap().levelled_off);
        // 40 KiB per car: memory climbs, but no faster than the cars held.
        let with_state: Vec<_> = (0..90)
            .map(|s| sample(s * 1000, 100_000 + 40 * 1000 * s, 1000 * s))
            .collect();
        assert!(memory_trend(&with_state).unwrap().levelled_off);
        let leaking: Vec<_> = (0..90)
            .map(|s| sample(s * 1000, 100_000 + 4_000 * s * s, 1000))
            .collect();
        let trend = memory_trend(&leaking).unwrap();
        assert!(!trend.levelled_off, "{trend:?}");
        assert!(memory_trend(&leaking[..10]).is_none());
    }
}
