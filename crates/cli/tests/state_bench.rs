//! `spate bench state` end to end at a tiny size: the store of a few MB is
//! loaded, split, merged, killed and recovered in one run, and
//! state-bench.json reports each with plausible figures. Nothing here is
//! timed: the bench waits for each step to happen, however loaded the
//! machine.

mod common;

use std::time::Duration;

use common::{run_with_timeout, scratch, spate};

/// Runs the bench on a tiny store (2 MB of 100-byte values, 500 puts/s,
/// checkpoints every 300 ms, 1 s to settle) with `extra` flags into the
/// scratch directory `name`; returns what it printed and its JSON report.
fn bench(name: &str, extra: &[&str]) -> (String, std::path::PathBuf, serde_json::Value) {
    let out = scratch(name);
    let mut command = spate();
    command
        .args(["bench", "state", "--state-mb", "2", "--value-bytes", "100"])
        .args([
            "--rate",
            "500",
            "--checkpoint-ms",
            "300",
            "--settle-secs",
            "1",
        ])
        .args(extra)
        .arg("--out")
        .arg(&out);
    let output = run_with_timeout(command, Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        common::stderr(&output)
    );
    let report =
        serde_json::from_slice(&std::fs::read(out.join("state-bench.json")).unwrap()).unwrap();
    (stdout, out, report)
}

#[test]
fn the_state_bench_reports_a_split_a_merge_and_a_recovery() {
    let (stdout, out, report) = bench("state-bench", &[]);
    for line in [
        "split",
        "merge",
        "recovery (kill->caught up)",
        "checkpoint:",
    ] {
        assert!(stdout.contains(line), "no `{line}` in the table:\n{stdout}");
    }
    let n = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    let keys = n(&report["keys"]);
    // 100-byte values: 1 byte of length, keys below 65,536: 3 bytes each.
    assert_eq!(keys, (2_000_000 / (100 + 1 + 3)) as f64);
    // Every key was loaded before the split: the state is what was asked.
    let state_mb = n(&report["state_bytes"]) / 1e6;
    assert!((1.9..=2.0).contains(&state_mb), "{state_mb} MB");
    for (step, name) in [("split", "split"), ("merge", "merge")] {
        let figures = &report[step];
        let parts = n(&figures["keys"][0]) + n(&figures["keys"][1]);
        assert_eq!(parts, keys, "the {name} covers every key: {figures}");
        assert!(n(&figures["pause_ms"]) > 0.0, "{name}: {figures}");
        assert!(
            n(&figures["decided_ms"]) >= n(&report["loaded_ms"]),
            "{name} after the load: {report}"
        );
        assert_latency(&figures["latency"], name);
    }
    assert!(n(&report["merge"]["decided_ms"]) > n(&report["split"]["decided_ms"]));
    let recovery = &report["recovery"];
    assert!(n(&recovery["killed_ms"]) > n(&report["merge"]["decided_ms"]));
    assert!(n(&recovery["detected_ms"]) >= n(&recovery["killed_ms"]));
    assert!(n(&recovery["restored_ms"]) >= n(&recovery["detected_ms"]));
    assert!(n(&recovery["caught_up_ms"]) >= n(&recovery["restored_ms"]));
    assert_eq!(
        n(&recovery["recovery_ms"]),
        n(&recovery["caught_up_ms"]) - n(&recovery["killed_ms"])
    );
    assert_latency(&recovery["latency"], "recovery");
    assert_latency(&report["steady_latency"], "steady");
    let checkpoints = &report["checkpoints"];
    // A checkpoint as sent holds the keys changed since the one before (or
    // every key) and a little framing: some bytes, at most about the state.
    let bytes = n(&checkpoints["bytes"]);
    assert!(
        bytes > 0.0 && bytes <= 1.2 * n(&report["state_bytes"]) + 4096.0,
        "{checkpoints}"
    );
    // How many checkpoints, and their CPU, land in the short steady
    // stretch depends on the machine's load: only their ranges are sure.
    assert!(n(&checkpoints["per_s"]) >= 0.0, "{checkpoints}");
    for share in ["share_of_time", "share_of_cpu"] {
        let share = n(&checkpoints["cpu"][share]);
        assert!((0.0..=1.0).contains(&share), "{checkpoints}");
    }
    // Five workers (three and two in the pool) each hold a few MiB at least.
    let memory = &report["memory"];
    assert!(n(&memory["largest_worker_mib"]) > 1.0, "{memory}");
    assert!(
        memory["workers_mib"].as_object().unwrap().len() >= 4,
        "{memory}"
    );
    assert!(n(&memory["coordinator_mib"]) > 1.0, "{memory}");
    let windows = std::fs::read_to_string(out.join("latency.jsonl")).unwrap();
    assert!(windows.lines().count() > 5);
}

#[test]
fn with_a_standby_the_killed_store_recovers_from_it() {
    let (stdout, _, report) = bench("state-bench-standby", &["--standby-mb", "1"]);
    assert!(
        stdout.contains("recovery, from a standby"),
        "no standby recovery in the table:\n{stdout}"
    );
    assert_eq!(report["standby_mb"], 1, "{report}");
    let recovery = &report["recovery"];
    assert!(recovery["caught_up_ms"].as_f64().is_some(), "{recovery}");
    assert_latency(&recovery["latency"], "recovery");
}

/// Latency figures that measured something, in order.
fn assert_latency(latency: &serde_json::Value, what: &str) {
    let n = |k: &str| latency[k].as_f64().unwrap_or(-1.0);
    assert!(n("count") > 0.0, "{what}: {latency}");
    assert!(n("p50_ms") >= 0.0, "{what}: {latency}");
    assert!(
        n("p50_ms") <= n("p99_ms") && n("p99_ms") <= n("max_ms"),
        "{what}: {latency}"
    );
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    let out = scratch("state-bench-flags");
    for (args, expected) in [
        (&["--state-mb", "0"][..], "--state-mb"),
        (&["--checkpoint-ms", "10"][..], "--checkpoint-ms"),
        (&["--settle-secs=0"][..], "--settle-secs"),
        (
            &["--state-mb", "100000", "--value-bytes", "1"][..],
            "--value-bytes",
        ),
    ] {
        let mut command = spate();
        command
            .args(["bench", "state", "--out"])
            .arg(&out)
            .args(args);
        let output = run_with_timeout(command, Duration::from_secs(30));
        let stderr = common::stderr(&output);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
