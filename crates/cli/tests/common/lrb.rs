//! A shared Linear Road input, its failure-free answers, and runs compared
//! against them: for tests whose runs must not change the answers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::{run_with_timeout, scratch, spate, stderr};

pub const SPEEDUP: &str = "30";
pub const WORKERS: &str = "10";

/// The shared input and the failure-free answers, made once per test binary.
pub fn baseline() -> &'static PathBuf {
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
pub fn run(dir: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
    let mut command = spate();
    command
        .args(["lrb", "run", "--speedup", SPEEDUP, "--workers", WORKERS])
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
pub fn answers(dir: &Path) -> Vec<String> {
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

/// Runs the shared input with `options` and checks that the answers equal
/// the failure-free ones.
pub fn unchanged(name: &str, options: &[&str]) -> serde_json::Value {
    let base = baseline();
    let dir = scratch(name);
    for file in ["input.csv", "historical-tolls.csv"] {
        std::fs::copy(base.join(file), dir.join(file)).unwrap();
    }
    let report = run(&dir, "out", options);
    let expected = answers(&base.join("out"));
    let got = answers(&dir.join("out"));
    assert_eq!(expected.len(), got.len(), "answer count changed");
    if let Some(i) = (0..got.len()).find(|&i| expected[i] != got[i]) {
        panic!(
            "answers differ at row {i}: expected {} got {}",
            expected[i], got[i]
        );
    }
    report
}

/// Runs with `kills` (and `extra` options) and checks the answers are
/// unchanged and that every kill was recovered.
pub fn survives(name: &str, kills: &[&str], extra: &[&str]) -> serde_json::Value {
    let mut options: Vec<&str> = extra.to_vec();
    if !extra.contains(&"--pool") {
        options.extend(["--pool", "2"]);
    }
    for kill in kills {
        options.push("--kill");
        options.push(kill);
    }
    let report = unchanged(name, &options);
    let recoveries = report["recoveries"].as_array().unwrap();
    assert!(!recoveries.is_empty(), "no recovery happened: {report}");
    for r in recoveries {
        let detected = r["detected_ms"].as_u64().unwrap();
        let killed = r["killed_ms"].as_u64().unwrap_or(detected);
        assert!(detected >= killed && detected - killed < 2_000, "{r}");
    }
    report
}
