//! The large-state bench's figures: pure functions from what the run
//! observed (latency windows, instance counters, `/proc` lines) to the
//! report, and the report's table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spate_engine::coordinator::view::ControlTraffic;
use spate_engine::plan::{Incarnation, InstanceId};
use spate_examples::latency::{new_histogram, LatencyWindow};

/// Latency of the outputs that arrived in a stretch of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Outputs measured.
    pub count: u64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
}

/// The latency of the outputs that arrived from `from_ms` (inclusive) to
/// `to_ms` (exclusive), in milliseconds since the job started, given the
/// windows (whose starts are milliseconds since the Unix epoch) and when the
/// job started on that clock. `None` when no output arrived then.
pub fn latency_between(
    windows: &[LatencyWindow],
    job_start_epoch_ms: u64,
    from_ms: u64,
    to_ms: u64,
) -> Option<LatencyStats> {
    let mut merged = new_histogram();
    for w in windows {
        let Some(at) = w.start_ms.checked_sub(job_start_epoch_ms) else {
            continue;
        };
        if at >= from_ms && at < to_ms {
            merged.add(&w.histogram).ok()?;
        }
    }
    if merged.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some(LatencyStats {
        count: merged.len(),
        p50_ms: ms(merged.value_at_quantile(0.5)),
        p99_ms: ms(merged.value_at_quantile(0.99)),
        max_ms: ms(merged.max()),
    })
}

/// One reading of a stateful instance's cumulative CPU counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterSample {
    /// When it was read, milliseconds since the job started.
    pub at_ms: u64,
    /// The instance.
    pub instance: InstanceId,
    /// Its incarnation: counters start again at 0 with each.
    pub incarnation: Incarnation,
    /// CPU seconds its thread used.
    pub cpu_secs: f64,
    /// CPU seconds of those spent checkpointing.
    pub checkpoint_cpu_secs: f64,
}

/// What checkpointing cost the instances over a stretch of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointCpu {
    /// Checkpointing CPU seconds per second of an instance's life: the
    /// share of its time the instance spends checkpointing instead of
    /// processing.
    pub share_of_time: f64,
    /// Checkpointing CPU seconds per CPU second the instance used.
    pub share_of_cpu: f64,
    /// Instance-seconds measured.
    pub instance_secs: f64,
}

/// The checkpoint CPU share over `from_ms..to_ms`, from consecutive
/// readings of the same incarnation of each instance that both fall in it.
pub fn checkpoint_cpu(samples: &[CounterSample], from_ms: u64, to_ms: u64) -> CheckpointCpu {
    let mut series: BTreeMap<(InstanceId, Incarnation), Vec<&CounterSample>> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.at_ms >= from_ms && s.at_ms <= to_ms)
    {
        series
            .entry((s.instance, s.incarnation))
            .or_default()
            .push(s);
    }
    let (mut checkpoint, mut cpu, mut secs) = (0.0, 0.0, 0.0);
    for readings in series.values() {
        for pair in readings.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.at_ms <= a.at_ms || b.cpu_secs < a.cpu_secs {
                continue;
            }
            checkpoint += (b.checkpoint_cpu_secs - a.checkpoint_cpu_secs).max(0.0);
            cpu += b.cpu_secs - a.cpu_secs;
            // Readings are timed when seen, and an instance busy with a
            // long checkpoint reports late: one thread cannot have used
            // more CPU than the time that passed.
            secs += ((b.at_ms - a.at_ms) as f64 / 1000.0).max(b.cpu_secs - a.cpu_secs);
        }
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    CheckpointCpu {
        share_of_time: ratio(checkpoint, secs),
        share_of_cpu: ratio(checkpoint, cpu),
        instance_secs: secs,
    }
}

/// The `NAME:  1234 kB` line of a `/proc/PID/status` text, in KiB (`VmHWM`
/// is the peak resident set, `VmRSS` the current one).
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(name))?;
    line.split_once(':')?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU seconds this process has used (user and system), from the text of
/// `/proc/self/stat` (clock ticks of 1/100 s, as Linux reports them).
pub fn process_cpu_secs(stat: &str) -> Option<f64> {
    // The command name may hold spaces; the fields after it are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Keys of `value_bytes` each that make `state_mb` megabytes (10^6 bytes)
/// of encoded state: each key costs its value, the value's length and the
/// key (numbered from 0), in the engine's variable-length integers.
pub fn keys_for(state_mb: u64, value_bytes: u64) -> u64 {
    let bytes = state_mb * 1_000_000;
    // The key's own size depends on how many there are: settle it.
    let mut keys = bytes / (value_bytes + 1);
    for _ in 0..3 {
        keys = bytes / (value_bytes + state_bytes_per_key(keys, value_bytes));
    }
    keys
}

/// Encoded bytes of a kvstore key beside its value's characters: the
/// value's length and the key, the largest of `keys` keys numbered from 0.
pub fn state_bytes_per_key(keys: u64, value_bytes: u64) -> u64 {
    varint_bytes(value_bytes) + varint_bytes(keys.saturating_sub(1))
}

/// Bytes of `n` as a variable-length integer, as bincode's default
/// options (the engine's encoding of keyed state) write it.
fn varint_bytes(n: u64) -> u64 {
    match n {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

/// What a checkpoint adds per key to its encoded key and value (its hash
/// and where the two lie), measured: 110.3 MB for 100 MB of state in
/// 367,647 keys.
pub const CHECKPOINT_BYTES_PER_ENTRY: u64 = 28;

/// About how large a checkpoint of `keys` kvstore keys is.
pub fn checkpoint_bytes_for(keys: u64, value_bytes: u64) -> u64 {
    keys * (value_bytes + state_bytes_per_key(keys, value_bytes) + CHECKPOINT_BYTES_PER_ENTRY)
}

/// Figures of one split or merge.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleFigures {
    /// When it was decided, ms since the job started.
    pub decided_ms: u64,
    /// The processing pause, ms: a live split's stop (from pausing the
    /// store until every part ran and every worker was rewired); otherwise
    /// from the decision until then.
    pub pause_ms: u64,
    /// A live split: from the decision until every part was staged, the
    /// store processing all along, ms (`None`: not staged).
    #[serde(default)]
    pub staged_ms: Option<u64>,
    /// Keys on each side (the two parts of a split; the two merged).
    pub keys: (usize, usize),
    /// Latency from a second before the decision to the end of the
    /// settling time after the pause.
    pub latency: Option<LatencyStats>,
}

/// Figures of the recovery from the kill.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryFigures {
    /// When the store's worker was killed, ms since the job started.
    pub killed_ms: u64,
    /// When the coordinator noticed.
    pub detected_ms: u64,
    /// When the store ran again, restored from its checkpoint.
    pub restored_ms: u64,
    /// When it had worked off the backlog the failure built up.
    pub caught_up_ms: u64,
    /// Kill to caught up, ms.
    pub recovery_ms: u64,
    /// Latency from a second before the kill to the end of the settling
    /// time after it caught up.
    pub latency: Option<LatencyStats>,
    /// What the coordinator moved and held from the kill to the store
    /// caught up: a recovery that restores from a holder directly moves
    /// no state through it.
    #[serde(default)]
    pub coordinator: CoordinatorFigures,
}

/// Checkpoints of the store in the steady stretch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFigures {
    /// Size of the store's latest checkpoint before the split as it was
    /// sent (an increment, or full), bytes.
    pub bytes: u64,
    /// Checkpoints of the store backed up per second.
    pub per_s: f64,
    /// Checkpoint bytes sent per second.
    pub bytes_per_s: f64,
    /// What taking them cost the store's thread.
    pub cpu: CheckpointCpu,
}

/// What the coordinator spent in the steady stretch: with checkpoints going
/// from workers to holders directly, none of it grows with state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorFigures {
    /// Bytes a second it received on control connections.
    pub received_bytes_per_s: f64,
    /// Bytes a second it sent on them.
    pub sent_bytes_per_s: f64,
    /// Bytes it received on control connections in the stretch.
    #[serde(default)]
    pub received_bytes: u64,
    /// Bytes it sent on them in the stretch.
    #[serde(default)]
    pub sent_bytes: u64,
    /// CPU seconds a second of the process hosting it (this one).
    pub cpu_per_s: f64,
    /// The largest resident set of that process in the stretch, MiB
    /// (`VmRSS` at each reading; its peak over the whole run, with the
    /// backups a split, merge or recovery moves through it, is in
    /// [`MemoryFigures`]).
    pub rss_mib: f64,
}

/// One reading of the coordinator: ms since start, its control traffic,
/// this process's CPU seconds and resident set (KiB).
pub type CoordinatorReading = (u64, ControlTraffic, f64, u64);

/// The coordinator's rates and memory between `from_ms` and `to_ms`.
pub fn coordinator_between(
    readings: &[CoordinatorReading],
    from_ms: u64,
    to_ms: u64,
) -> CoordinatorFigures {
    let first = readings.iter().find(|(at, ..)| *at >= from_ms);
    let last = readings.iter().rev().find(|(at, ..)| *at <= to_ms);
    let (Some((t0, a, cpu0, _)), Some((t1, b, cpu1, _))) = (first, last) else {
        return CoordinatorFigures::default();
    };
    if t1 <= t0 {
        return CoordinatorFigures::default();
    }
    let secs = (t1 - t0) as f64 / 1000.0;
    let rss_kib = readings
        .iter()
        .filter(|(at, ..)| (from_ms..=to_ms).contains(at))
        .map(|(.., rss)| *rss)
        .max()
        .unwrap_or(0);
    let received_bytes = b.received_bytes.saturating_sub(a.received_bytes);
    let sent_bytes = b.sent_bytes.saturating_sub(a.sent_bytes);
    CoordinatorFigures {
        received_bytes_per_s: received_bytes as f64 / secs,
        sent_bytes_per_s: sent_bytes as f64 / secs,
        received_bytes,
        sent_bytes,
        cpu_per_s: (cpu1 - cpu0) / secs,
        rss_mib: rss_kib as f64 / 1024.0,
    }
}

/// Peak resident sets, MiB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryFigures {
    /// The largest worker's peak (`VmHWM`, read every 50 ms while it lived).
    pub largest_worker_mib: f64,
    /// Each worker's peak, by process id.
    pub workers_mib: BTreeMap<u32, f64>,
    /// This process (the coordinator).
    pub coordinator_mib: f64,
}

/// What `spate bench state` writes to `state-bench.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateBenchReport {
    /// State asked for, MB.
    pub state_mb: u64,
    /// Keys stored.
    pub keys: u64,
    /// Bytes of each value.
    pub value_bytes: u64,
    /// Encoded state the store reported once loaded, bytes.
    pub state_bytes: u64,
    /// Puts a second in the hold phase.
    pub rate: u64,
    /// Checkpoint interval, ms.
    pub checkpoint_ms: u64,
    /// Seconds each step was given to settle before the next.
    pub settle_secs: f64,
    /// Backup size from which the store kept a warm standby, MB (0: none;
    /// with one, the kill waited for it).
    #[serde(default)]
    pub standby_mb: u64,
    /// When the job started, ms since the Unix epoch: the latency windows'
    /// clock, to look at `latency.jsonl` against the figures.
    pub job_start_epoch_ms: u64,
    /// Cores and load average (1, 5, 15 min) before and after the run.
    pub machine: Machine,
    /// From the job's start until every key was stored and checkpointed, ms.
    pub loaded_ms: u64,
    /// Latency in the steady stretch between the load and the split.
    pub steady_latency: Option<LatencyStats>,
    /// The split.
    pub split: ScaleFigures,
    /// The merge.
    pub merge: ScaleFigures,
    /// The kill and recovery.
    pub recovery: RecoveryFigures,
    /// Checkpoints in the steady stretch.
    pub checkpoints: CheckpointFigures,
    /// The coordinator in the steady stretch.
    #[serde(default)]
    pub coordinator: CoordinatorFigures,
    /// Peak memory.
    pub memory: MemoryFigures,
    /// The whole run, s.
    pub elapsed_s: f64,
}

/// The machine the figures come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Cores available to this process.
    pub cpus: usize,
    /// `/proc/loadavg`'s three averages before the run.
    pub load_before: Vec<f64>,
    /// And after it.
    pub load_after: Vec<f64>,
}

/// The three load averages of a `/proc/loadavg` text.
pub fn load_averages(text: &str) -> Vec<f64> {
    text.split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

impl StateBenchReport {
    /// The report as a table, one figure a line, in the same order and
    /// units every run, so that two runs compare line by line.
    pub fn table(&self) -> String {
        let mb = |b: f64| b / 1e6;
        let lat = |l: &Option<LatencyStats>| match l {
            Some(l) => format!("{:>9.1} {:>9.1} {:>9.1}", l.p50_ms, l.p99_ms, l.max_ms),
            None => format!("{:>9} {:>9} {:>9}", "-", "-", "-"),
        };
        let c = &self.checkpoints;
        let m = &self.memory;
        let mut t = format!(
            "large state: {} MB asked, {:.1} MB stored ({} keys x {} B), {} puts/s, checkpoints every {} ms\n\
             machine: {} cores, load {:?} before, {:?} after\n\
             loaded in {:.1} s\n\
             {:<26} {:>9} {:>9} {:>9} {:>9}\n",
            self.state_mb,
            mb(self.state_bytes as f64),
            self.keys,
            self.value_bytes,
            self.rate,
            self.checkpoint_ms,
            self.machine.cpus,
            self.machine.load_before,
            self.machine.load_after,
            self.loaded_ms as f64 / 1000.0,
            "",
            "pause ms",
            "p50 ms",
            "p99 ms",
            "max ms",
        );
        t += &format!(
            "{:<26} {:>9} {}\n",
            "steady",
            "-",
            lat(&self.steady_latency)
        );
        t += &format!(
            "{:<26} {:>9} {}\n",
            "split",
            self.split.pause_ms,
            lat(&self.split.latency)
        );
        let staged = |name: &str, scale: &ScaleFigures| {
            scale.staged_ms.map_or_else(String::new, |ms| {
                format!("{name:<26} {ms:>9} (staged while the store ran)\n")
            })
        };
        t += &staged("split: staged live", &self.split);
        t += &format!(
            "{:<26} {:>9} {}\n",
            "merge",
            self.merge.pause_ms,
            lat(&self.merge.latency)
        );
        t += &staged("merge: staged live", &self.merge);
        t += &format!(
            "{:<26} {:>9} {}\n",
            if self.standby_mb > 0 {
                "recovery, from a standby"
            } else {
                "recovery (kill->caught up)"
            },
            self.recovery.recovery_ms,
            lat(&self.recovery.latency)
        );
        t += &format!(
            "checkpoint: {:.1} MB each, {:.2} a second, {:.1} MB/s; CPU {:.1} % of the store's time ({:.1} % of its CPU)\n",
            mb(c.bytes as f64),
            c.per_s,
            mb(c.bytes_per_s),
            c.cpu.share_of_time * 100.0,
            c.cpu.share_of_cpu * 100.0,
        );
        t += &format!(
            "coordinator (steady): {:.3} MB/s in, {:.3} MB/s out, {:.3} CPU s/s, RSS {:.0} MiB\n",
            mb(self.coordinator.received_bytes_per_s),
            mb(self.coordinator.sent_bytes_per_s),
            self.coordinator.cpu_per_s,
            self.coordinator.rss_mib,
        );
        let during = &self.recovery.coordinator;
        t += &format!(
            "coordinator (recovery): {:.1} MB in, {:.1} MB out, RSS up to {:.0} MiB\n",
            mb(during.received_bytes as f64),
            mb(during.sent_bytes as f64),
            during.rss_mib,
        );
        t += &format!(
            "peak RSS: largest worker {:.0} MiB, coordinator {:.0} MiB\n",
            m.largest_worker_mib, m.coordinator_mib
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_rates_come_from_the_readings_inside_the_stretch() {
        let traffic = |received_bytes, sent_bytes| ControlTraffic {
            received_bytes,
            sent_bytes,
        };
        let readings = [
            (500, traffic(0, 0), 0.0, 9_999),
            (1_000, traffic(1_000, 100), 1.0, 1_024),
            (3_000, traffic(5_000, 300), 1.5, 2_048),
            (9_000, traffic(90_000, 900), 9.0, 99_999),
        ];
        let figures = coordinator_between(&readings, 1_000, 4_000);
        assert_eq!(figures.received_bytes_per_s, 2_000.0);
        assert_eq!(figures.sent_bytes_per_s, 100.0);
        assert_eq!((figures.received_bytes, figures.sent_bytes), (4_000, 200));
        assert_eq!(figures.cpu_per_s, 0.25);
        assert_eq!(figures.rss_mib, 2.0);
        assert_eq!(
            coordinator_between(&readings, 2_000, 2_500),
            CoordinatorFigures::default()
        );
    }

    #[test]
    fn process_cpu_is_read_past_a_command_name_with_spaces() {
        let stat = "42 (spate bench) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(process_cpu_secs(stat), Some(3.0));
        assert_eq!(process_cpu_secs("garbage"), None);
    }

    fn window(start_ms: u64, latencies_us: &[u64]) -> LatencyWindow {
        let mut histogram = new_histogram();
        for &l in latencies_us {
            histogram.record(l).unwrap();
        }
        LatencyWindow {
            start_ms,
            histogram,
        }
    }

    #[test]
    fn latency_merges_the_windows_in_the_stretch_only() {
        let start = 1_700_000_000_000;
        let windows = [
            window(start + 900, &[50_000]),
            window(start + 1_000, &[1_000; 98]),
            window(start + 1_100, &[2_000, 300_000]),
            window(start + 2_000, &[900_000]),
        ];
        let stats = latency_between(&windows, start, 1_000, 2_000).unwrap();
        assert_eq!(stats.count, 100);
        assert_eq!(stats.p50_ms, 1.0);
        assert!((1.99..2.01).contains(&stats.p99_ms), "{stats:?}");
        assert!((299.0..301.0).contains(&stats.max_ms), "{stats:?}");
        assert_eq!(latency_between(&windows, start, 3_000, 4_000), None);
        // Windows before the job started are not in any stretch.
        assert_eq!(latency_between(&windows, start + 5_000, 0, 10_000), None);
    }

    fn reading(at_ms: u64, id: u32, inc: u32, cpu: f64, ckpt: f64) -> CounterSample {
        CounterSample {
            at_ms,
            instance: InstanceId(id),
            incarnation: Incarnation(inc),
            cpu_secs: cpu,
            checkpoint_cpu_secs: ckpt,
        }
    }

    #[test]
    fn checkpoint_share_counts_each_incarnation_separately() {
        let samples = [
            reading(1_000, 1, 0, 1.0, 0.1),
            reading(2_000, 1, 0, 1.5, 0.3),
            reading(3_000, 1, 0, 2.0, 0.5),
            // A new incarnation starts its counters again at 0.
            reading(3_500, 1, 1, 0.1, 0.0),
            reading(4_500, 1, 1, 0.6, 0.2),
            // Outside the stretch.
            reading(9_000, 1, 1, 5.0, 4.0),
        ];
        let cost = checkpoint_cpu(&samples, 0, 5_000);
        assert!((cost.instance_secs - 3.0).abs() < 1e-9);
        assert!((cost.share_of_time - 0.6 / 3.0).abs() < 1e-9, "{cost:?}");
        assert!((cost.share_of_cpu - 0.6 / 1.5).abs() < 1e-9, "{cost:?}");
        assert_eq!(checkpoint_cpu(&[], 0, 1).share_of_time, 0.0);
        // Seen 1 s apart, but the thread used 3 CPU seconds: 3 s passed.
        let late = [reading(0, 2, 0, 1.0, 0.5), reading(1_000, 2, 0, 4.0, 3.5)];
        let cost = checkpoint_cpu(&late, 0, 1_000);
        assert!((cost.share_of_time - 1.0).abs() < 1e-9, "{cost:?}");
    }

    #[test]
    fn proc_status_lines_and_load_averages_are_parsed() {
        let status = "Name:\tspate\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(
            load_averages("0.52 1.10 2.00 1/345 6789\n"),
            [0.52, 1.10, 2.00]
        );
    }

    #[test]
    fn keys_make_the_state_asked_for() {
        // 256-byte values: 3 bytes of length, keys from 65,536 on: 5 bytes.
        assert_eq!(keys_for(100, 256), 100_000_000 / (256 + 3 + 5));
        let keys = keys_for(1_000, 64);
        let bytes = keys * (64 + state_bytes_per_key(keys, 64));
        assert!(bytes <= 1_000_000_000 && bytes > 999_999_000);
        // 1,000 MB in 256-byte values checkpoints as about 1.1 GB.
        let checkpoint = checkpoint_bytes_for(keys_for(1_000, 256), 256);
        assert!((1_090_000_000..1_110_000_000).contains(&checkpoint));
    }

    #[test]
    fn the_table_shows_every_figure() {
        let report = StateBenchReport {
            state_mb: 100,
            split: ScaleFigures {
                pause_ms: 1234,
                latency: Some(LatencyStats {
                    count: 10,
                    p50_ms: 1.0,
                    p99_ms: 250.5,
                    max_ms: 1300.0,
                }),
                ..ScaleFigures::default()
            },
            ..StateBenchReport::default()
        };
        let table = report.table();
        let split = table.lines().find(|l| l.starts_with("split")).unwrap();
        assert!(split.contains("1234") && split.contains("250.5") && split.contains("1300.0"));
        assert!(table.lines().any(|l| l.starts_with("merge")));
        assert!(table.lines().any(|l| l.starts_with("recovery")));
        assert!(table.contains("checkpoint:") && table.contains("peak RSS"));
    }
}
