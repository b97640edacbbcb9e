//! The soak test (opt-in, slow): one long Linear Road run at a steady
//! speed-up, with a worker killed every few seconds (each time hosting a
//! different operator: feeder, forwarder, toll calculator, toll assessment,
//! sinks) and a few scale outs and ins along the way. It passes when the answers are
//! valid, identical to a failure-free run, every kill was recovered, and
//! memory and buffers stayed bounded: what fails only after hours (a leak, a
//! buffer that is never trimmed, a pool that is never refilled) shows up here.
//!
//! ```sh
//! SPATE_SOAK_SECS=3600 cargo test --release -p spate --test soak -- --ignored --nocapture
//! ```
//!
//! Settings (environment):
//!
//! - `SPATE_SOAK_SECS` (3600): wall-clock length of the faulted run;
//! - `SPATE_SOAK_SPEEDUP` (20): replay speed-up; the input lasts
//!   `SECS * SPEEDUP` simulated seconds (at most a day);
//! - `SPATE_SOAK_KILL_EVERY` (SECS / 10, between 10 and 60): seconds between kills;
//! - `SPATE_SOAK_RSS_MIB` (4096): the most one worker may hold.
//!
//! The input is kept in the target directory and reused by later soaks of
//! the same length (about 1.9 MB per second of soak at 20x).

mod common;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{spate, wait_with_timeout};
use serde_json::Value;

/// The kill targets, in turn: every operator kind, and both toll
/// calculator partitions.
const TARGETS: [&str; 8] = [
    "toll_calculator:0",
    "toll_assessment",
    "forwarder",
    "feeder",
    "tolls",
    "toll_calculator:1",
    "balances",
    "accidents",
];

/// Operators split once each, a quarter, half and three quarters in.
const SPLITS: [&str; 3] = ["toll_calculator", "toll_assessment", "forwarder"];

/// How much the output buffers may grow, for the same load, between the
/// first and the last quarter of the run.
const BUFFER_GROWTH: f64 = 2.0;

fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number")),
        Err(_) => default,
    }
}

/// Runs `spate args`, its output into `log` (a pipe could fill up over an
/// hour), failing with the log's tail if it fails or outlasts `limit`.
fn spate_logged(args: &[String], log: &Path, limit: Duration) {
    let file = std::fs::File::create(log).expect("create the log");
    let child = spate()
        .args(args)
        .stdout(file.try_clone().expect("log handle"))
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("start spate");
    let result = wait_with_timeout(child, limit);
    if !result.status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        panic!(
            "spate {} failed ({}); last lines of {}:\n{}",
            args.join(" "),
            result.status,
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

/// An input of `duration_secs` simulated seconds, generated once.
fn input(duration_secs: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-input-{duration_secs}s"));
    let done = dir.join("generated");
    if done.is_file() {
        println!("reusing the input in {}", dir.display());
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the input directory");
    let started = Instant::now();
    spate_logged(
        &[
            "lrb".into(),
            "generate".into(),
            format!("--duration-secs={duration_secs}"),
            "--out".into(),
            dir.display().to_string(),
        ],
        &dir.join("generate.log"),
        Duration::from_secs(600 + duration_secs / 10),
    );
    std::fs::write(&done, "").expect("mark the input complete");
    println!(
        "generated {duration_secs} s of input in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    dir
}

/// `spate lrb run` on `input` into `out` with `extra` options; its report.
fn run(input: &Path, out: &Path, extra: &[String], limit: Duration) -> Value {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).expect("create the run directory");
    let mut args: Vec<String> = ["lrb", "run", "--workers", "3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (flag, file) in [
        ("--input", "input.csv"),
        ("--tolls", "historical-tolls.csv"),
    ] {
        args.push(flag.into());
        args.push(input.join(file).display().to_string());
    }
    args.push("--out".into());
    args.push(out.display().to_string());
    args.extend_from_slice(extra);
    spate_logged(&args, &out.with_extension("log"), limit);
    let report = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    serde_json::from_str(&report).expect("report.json is JSON")
}

/// Per answer file: rows, and an order-independent digest of the rows with
/// Emit (the only field that depends on timing) left out. Streaming keeps an
/// hour's answers (tens of millions of rows) out of memory.
fn fingerprint(dir: &Path) -> BTreeMap<&'static str, (u64, u128)> {
    let mut prints = BTreeMap::new();
    for (file, emit) in [
        ("tolls.csv", 3),
        ("accidents.csv", 2),
        ("balances.csv", 2),
        ("expenditures.csv", 2),
    ] {
        let path = dir.join(file);
        let reader = std::io::BufReader::new(
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        );
        let (mut rows, mut digest) = (0u64, 0u128);
        for line in reader.lines() {
            let line = line.expect("read an answer");
            let kept: Vec<&str> = line
                .split(',')
                .enumerate()
                .filter(|(i, _)| *i != emit)
                .map(|(_, f)| f)
                .collect();
            let halves = [0u8, 1].map(|salt| {
                let mut h = std::hash::DefaultHasher::new();
                (salt, &kept).hash(&mut h);
                h.finish()
            });
            digest = digest.wrapping_add(u128::from(halves[0]) << 64 | u128::from(halves[1]));
            rows += 1;
        }
        prints.insert(file, (rows, digest));
    }
    prints
}

fn u64_at(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{key}` in {value}"))
}

/// One quarter of the run, from the report's per-second resources.
#[derive(Debug, Default)]
struct Quarter {
    samples: usize,
    mean_input_rate: f64,
    peak_buffered: u64,
    peak_checkpoint: u64,
    peak_workers_rss_kib: u64,
    peak_coordinator_rss_kib: u64,
}

impl Quarter {
    /// Peak buffered bytes per tuple per second of input: what the buffers
    /// hold for the load (Linear Road's input rate rises tenfold over a run,
    /// and buffers rightly grow with it; they must not grow beyond it).
    fn buffered_per_rate(&self) -> f64 {
        self.peak_buffered as f64 / self.mean_input_rate.max(1.0)
    }
}

fn quarters(resources: &[Value]) -> [Quarter; 4] {
    let end = resources.last().map_or(1, |p| u64_at(p, "at_ms").max(1));
    let mut quarters: [Quarter; 4] = Default::default();
    for p in resources {
        let q = &mut quarters[((u64_at(p, "at_ms") * 4 / end) as usize).min(3)];
        q.samples += 1;
        q.mean_input_rate += p["input_rate"].as_f64().unwrap_or(0.0);
        q.peak_buffered = q.peak_buffered.max(u64_at(p, "buffered_bytes"));
        q.peak_checkpoint = q.peak_checkpoint.max(u64_at(p, "checkpoint_bytes"));
        q.peak_workers_rss_kib = q.peak_workers_rss_kib.max(u64_at(p, "workers_rss_kib"));
        q.peak_coordinator_rss_kib = q
            .peak_coordinator_rss_kib
            .max(u64_at(p, "coordinator_rss_kib"));
    }
    for q in &mut quarters {
        q.mean_input_rate /= q.samples.max(1) as f64;
    }
    quarters
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[test]
#[ignore = "slow (an hour by default): set SPATE_SOAK_SECS and run with --ignored --nocapture"]
fn a_long_run_with_kills_and_splits_stays_exact_and_bounded() {
    let secs = setting("SPATE_SOAK_SECS", 3600);
    let speedup = setting("SPATE_SOAK_SPEEDUP", 20);
    let kill_every = setting("SPATE_SOAK_KILL_EVERY", (secs / 10).clamp(10, 60));
    let rss_cap_mib = setting("SPATE_SOAK_RSS_MIB", 4096);
    let duration = secs * speedup;
    assert!(
        secs >= 4 * kill_every && kill_every > 0,
        "SPATE_SOAK_SECS={secs} is too short for a kill every {kill_every} s"
    );
    assert!(
        (1..=86_400).contains(&duration),
        "the input would last {duration} simulated seconds (SPATE_SOAK_SECS x SPATE_SOAK_SPEEDUP); \
         the generator makes at most a day: lower one of them"
    );
    let started = Instant::now();
    let input = input(duration);
    let work = common::scratch("soak");

    // Kills every `kill_every` seconds, taking the targets in turn and
    // stopping a period before the end; splits halfway between two kills.
    let mut options: Vec<String> = [
        "--speedup".to_string(),
        speedup.to_string(),
        "--pool".into(),
        "3".into(),
    ]
    .into();
    let kills: Vec<String> = (1..secs / kill_every)
        .zip(TARGETS.iter().cycle())
        .map(|(n, target)| format!("{}:{target}", n * kill_every))
        .collect();
    let splits: Vec<String> = SPLITS
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let near = secs * (i as u64 + 1) / 4;
            format!("{}:{op}", near / kill_every * kill_every + kill_every / 2)
        })
        .collect();
    for kill in &kills {
        options.extend(["--kill".into(), kill.clone()]);
    }
    // Each split is merged back (a scale in) one kill period later.
    let merges: Vec<String> = SPLITS
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let near = secs * (i as u64 + 1) / 4;
            format!(
                "{}:{op}",
                near / kill_every * kill_every + kill_every * 3 / 2
            )
        })
        .collect();
    for split in &splits {
        options.extend(["--scale".into(), split.clone()]);
    }
    for merge in &merges {
        options.extend(["--scale-in".into(), merge.clone()]);
    }
    println!(
        "soak: {secs} s at {speedup}x ({duration} s of input), {} kills (every {kill_every} s), splits {splits:?}, merges {merges:?}",
        kills.len()
    );
    let soak_out = work.join("soak");
    let report = run(
        &input,
        &soak_out,
        &options,
        Duration::from_secs(3 * secs + 600),
    );

    let validation = work.join("validate.log");
    spate_logged(
        &[
            "lrb".into(),
            "validate".into(),
            "--speedup".into(),
            speedup.to_string(),
            "--input".into(),
            input.join("input.csv").display().to_string(),
            "--tolls".into(),
            input.join("historical-tolls.csv").display().to_string(),
            "--out".into(),
            soak_out.display().to_string(),
        ],
        &validation,
        Duration::from_secs(600 + duration / 10),
    );

    // The same input without failures, as fast as it goes: the answers
    // (Emit aside) depend on the input alone.
    let baseline_out = work.join("baseline");
    run(
        &input,
        &baseline_out,
        &["--speedup".into(), "0".into()],
        Duration::from_secs(3 * secs + 600),
    );
    let expected = fingerprint(&baseline_out);
    let got = fingerprint(&soak_out);
    assert_eq!(
        expected,
        got,
        "the answers differ from the failure-free run's (rows, digest) per file; \
         compare {} and {}",
        baseline_out.display(),
        soak_out.display()
    );

    // Every kill happened and was recovered; every split happened.
    let events = report["events"].as_array().expect("events");
    let killed = events.iter().filter(|e| e["kind"] == "kill").count();
    let recoveries = report["recoveries"].as_array().expect("recoveries");
    let scale_events = report["scale_events"].as_array().expect("scale events");
    let splits_done = scale_events
        .iter()
        .filter(|e| e["direction"] == "out")
        .count();
    let merges_done = scale_events
        .iter()
        .filter(|e| e["direction"] == "in")
        .count();
    assert_eq!(killed, kills.len(), "not every kill fired: {events:?}");
    assert!(
        recoveries.len() >= killed,
        "{killed} kills but {} recoveries",
        recoveries.len()
    );
    assert!(
        recoveries.iter().all(|r| r["caught_up_ms"].is_u64()),
        "a recovery never caught up: {recoveries:?}"
    );
    assert_eq!(splits_done, splits.len(), "not every split happened");
    // A merge is called off (and says so) when a kill hits one of its two
    // partitions while they align; most must happen.
    assert!(
        merges_done * 2 >= merges.len(),
        "{merges_done} of {} merges happened",
        merges.len()
    );

    // Memory and buffers stayed bounded.
    let peaks = &report["peaks"];
    let resources = report["resources"].as_array().expect("resources");
    let q = quarters(resources);
    assert!(
        q.iter().all(|q| q.samples > 0),
        "too few resource samples: {q:?}"
    );
    let worker_rss = u64_at(peaks, "worker_rss_kib");
    println!(
        "soak passed in {:.0} s: {} input lines, {} answers ({} late), {killed} kills, {} recoveries, {splits_done} splits",
        started.elapsed().as_secs_f64(),
        u64_at(&report, "input_lines"),
        u64_at(&report, "answers"),
        u64_at(&report, "deadline_misses"),
        recoveries.len()
    );
    println!(
        "peaks: worker RSS {} (live workers together {}, coordinator {}), output buffers {} \
         (one instance {}), checkpoints {}, {} batches queued",
        mib(worker_rss * 1024),
        mib(u64_at(peaks, "workers_rss_kib") * 1024),
        mib(u64_at(peaks, "coordinator_rss_kib") * 1024),
        mib(u64_at(peaks, "buffered_bytes")),
        mib(u64_at(peaks, "instance_buffered_bytes")),
        mib(u64_at(peaks, "checkpoint_bytes")),
        u64_at(peaks, "queued_batches"),
    );
    println!(
        "{:>7} {:>8} {:>10} {:>13} {:>12} {:>12} {:>12} {:>12}",
        "quarter",
        "samples",
        "input/s",
        "buffers peak",
        "per input/s",
        "checkpoints",
        "workers RSS",
        "coord. RSS"
    );
    for (i, q) in q.iter().enumerate() {
        println!(
            "{:>7} {:>8} {:>10.0} {:>13} {:>10.0} B {:>12} {:>12} {:>12}",
            i + 1,
            q.samples,
            q.mean_input_rate,
            mib(q.peak_buffered),
            q.buffered_per_rate(),
            mib(q.peak_checkpoint),
            mib(q.peak_workers_rss_kib * 1024),
            mib(q.peak_coordinator_rss_kib * 1024),
        );
    }
    assert!(
        worker_rss <= rss_cap_mib * 1024,
        "a worker reached {} (cap SPATE_SOAK_RSS_MIB={rss_cap_mib})",
        mib(worker_rss * 1024)
    );
    assert!(
        q[3].buffered_per_rate() <= BUFFER_GROWTH * q[0].buffered_per_rate(),
        "the output buffers grew faster than the load: {:.0} bytes per input tuple/s \
         in the last quarter, {:.0} in the first",
        q[3].buffered_per_rate(),
        q[0].buffered_per_rate()
    );
    println!(
        "report: {}; answers: {}",
        soak_out.join("report.json").display(),
        soak_out.display()
    );
}
