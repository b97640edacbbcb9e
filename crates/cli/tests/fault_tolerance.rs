//! Fault tolerance end to end: Linear Road runs in which worker processes are
//! killed with SIGKILL mid-run must produce exactly the answers of a
//! failure-free run (which itself passes the reference validator).
//!
//! Every instance runs on its own worker (10 workers) so that each test kills
//! exactly the operator it names, with idle pool workers to recover onto.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::{run_with_timeout, scratch, spate, stderr};

const SPEEDUP: &str = "30";
const WORKERS: &str = "10";

/// The shared input and the failure-free answers, made once per test binary.
fn baseline() -> &'static PathBuf {
    static BASELINE: OnceLock<PathBuf> = OnceLock::new();
    BASELINE.get_or_init(|| {
        let dir = scratch("ft-baseline");
        let mut generate = spate();
        generate
            .args([
                "lrb",
                "generate",
                "--xways",
                "1",
                "--seed",
                "11",
                "--duration-secs",
                "240",
            ])
            .arg("--out")
            .arg(&dir);
        let result = run_with_timeout(generate, Duration::from_secs(120));
        assert!(result.status.success(), "{}", stderr(&result));
        run(&dir, "out", &[]);
        let mut validate = spate();
        validate
            .args(["lrb", "validate", "--speedup", SPEEDUP])
            .arg("--input")
            .arg(dir.join("input.csv"))
            .arg("--tolls")
            .arg(dir.join("historical-tolls.csv"))
            .arg("--out")
            .arg(dir.join("out"));
        let result = run_with_timeout(validate, Duration::from_secs(300));
        assert!(
            result.status.success(),
            "the failure-free run does not validate: {}",
            String::from_utf8_lossy(&result.stdout)
        );
        dir
    })
}

/// Runs the query on `dir`'s input into `dir/out` with `extra` options and
/// returns the report.
fn run(dir: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
    let mut command = spate();
    command
        .args([
            "lrb",
            "run",
            "--speedup",
            SPEEDUP,
            "--workers",
            WORKERS,
            "--pool",
            "2",
        ])
        .arg("--input")
        .arg(dir.join("input.csv"))
        .arg("--tolls")
        .arg(dir.join("historical-tolls.csv"))
        .arg("--out")
        .arg(dir.join(out))
        .args(extra);
    let result = run_with_timeout(command, Duration::from_secs(300));
    assert!(result.status.success(), "run failed: {}", stderr(&result));
    let report = std::fs::read_to_string(dir.join(out).join("report.json")).unwrap();
    serde_json::from_str(&report).unwrap()
}

/// The answers of a run, Emit left out, sorted: what must not change.
fn answers(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for (file, emit) in [
        ("tolls.csv", 3),
        ("accidents.csv", 2),
        ("balances.csv", 2),
        ("expenditures.csv", 2),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for line in text.lines() {
            let fields: Vec<&str> = line
                .split(',')
                .enumerate()
                .filter(|(i, _)| *i != emit)
                .map(|(_, f)| f)
                .collect();
            rows.push(fields.join(","));
        }
    }
    rows.sort();
    rows
}

/// Runs with `kills` and checks the answers equal the failure-free ones and
/// that every kill was recovered.
fn survives(name: &str, kills: &[&str], extra: &[&str]) -> serde_json::Value {
    let base = baseline();
    let dir = scratch(name);
    for file in ["input.csv", "historical-tolls.csv"] {
        std::fs::copy(base.join(file), dir.join(file)).unwrap();
    }
    let mut options: Vec<&str> = extra.to_vec();
    for kill in kills {
        options.push("--kill");
        options.push(kill);
    }
    let report = run(&dir, "out", &options);
    let expected = answers(&base.join("out"));
    let got = answers(&dir.join("out"));
    assert_eq!(expected.len(), got.len(), "answer count changed");
    if let Some(i) = (0..got.len()).find(|&i| expected[i] != got[i]) {
        panic!(
            "answers differ at row {i}: expected {} got {}",
            expected[i], got[i]
        );
    }
    let recoveries = report["recoveries"].as_array().unwrap();
    assert!(!recoveries.is_empty(), "no recovery happened: {report}");
    for r in recoveries {
        let detected = r["detected_ms"].as_u64().unwrap();
        let killed = r["killed_ms"].as_u64().unwrap_or(detected);
        assert!(detected >= killed && detected - killed < 2_000, "{r}");
    }
    report
}

#[test]
fn killing_the_toll_calculator_changes_nothing() {
    survives("ft-toll-calculator", &["3:toll_calculator:1"], &[]);
}

#[test]
fn killing_the_toll_assessment_changes_nothing() {
    survives("ft-toll-assessment", &["3:toll_assessment"], &[]);
}

#[test]
fn killing_the_forwarder_changes_nothing() {
    survives("ft-forwarder", &["3:forwarder"], &[]);
}

#[test]
fn killing_the_source_changes_nothing() {
    survives("ft-source", &["3:feeder"], &[]);
}

#[test]
fn killing_a_sink_changes_nothing() {
    survives("ft-sink", &["3:tolls"], &[]);
}

#[test]
fn killing_during_checkpoints_changes_nothing() {
    // With a checkpoint every 20 ms a kill lands during one.
    survives(
        "ft-during-checkpoint",
        &["2.5:toll_calculator:0"],
        &["--checkpoint-ms", "20"],
    );
}

#[test]
fn two_failures_in_a_row_on_one_operator_change_nothing() {
    let report = survives(
        "ft-twice",
        &["2:toll_calculator:0", "5:toll_calculator:0"],
        &[],
    );
    assert_eq!(
        report["recoveries"].as_array().unwrap().len(),
        2,
        "{report}"
    );
}

#[test]
fn two_operators_failing_at_once_change_nothing() {
    survives(
        "ft-together",
        &["3:toll_calculator:0", "3:toll_assessment:0"],
        &[],
    );
}
