//! Linear Road helpers for end-to-end tests: generate an input, run the query,
//! validate a run, and a shared input with its failure-free answers for tests
//! whose runs must not change the answers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::{run_with_timeout, scratch, spate, stderr};

pub const SPEEDUP: &str = "30";
pub const WORKERS: &str = "10";

/// Generates a 1-expressway input of `duration_secs` with `seed` into `dir`.
pub fn generate(dir: &Path, seed: u64, duration_secs: u32) {
    let mut command = spate();
    command
        .args(["lrb", "generate", "--xways", "1"])
        .arg(format!("--seed={seed}"))
        .arg(format!("--duration-secs={duration_secs}"))
        .arg("--out")
        .arg(dir);
    let result = run_with_timeout(command, Duration::from_secs(300));
    assert!(
        result.status.success(),
        "generate failed: {}",
        stderr(&result)
    );
}

/// `spate lrb ARGS` on `dir`'s input and historical tolls, answers in
/// `dir/out`: the shape of every Linear Road command the tests run.
pub fn lrb_command(args: &[&str], dir: &Path, out: &str) -> Command {
    let mut command = spate();
    command
        .arg("lrb")
        .args(args)
        .arg("--input")
        .arg(dir.join("input.csv"))
        .arg("--tolls")
        .arg(dir.join("historical-tolls.csv"))
        .arg("--out")
        .arg(dir.join(out));
    command
}

/// Runs the query on `dir`'s input into `dir/out` with `args` and returns
/// the report.
pub fn run_lrb(dir: &Path, out: &str, args: &[&str]) -> serde_json::Value {
    run_lrb_with(dir, out, args, &[])
}

/// As [`run_lrb`], with environment variables for the run and its workers
/// (fault injection).
pub fn run_lrb_with(
    dir: &Path,
    out: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut command = lrb_command(&["run"], dir, out);
    command.envs(env.iter().copied()).args(args);
    let result = run_with_timeout(command, Duration::from_secs(600));
    assert!(result.status.success(), "run failed: {}", stderr(&result));
    let report = std::fs::read_to_string(dir.join(out).join("report.json")).unwrap();
    serde_json::from_str(&report).unwrap()
}

/// Validates `dir/out` against `dir`'s input; returns the validator's report.
pub fn validate(dir: &Path, out: &str, speedup: &str) -> String {
    let command = lrb_command(&["validate", "--speedup", speedup], dir, out);
    let result = run_with_timeout(command, Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(
        result.status.success(),
        "validation failed:\n{stdout}\n{}",
        stderr(&result)
    );
    stdout
}

/// The shared input and the failure-free answers, made once per test binary.
pub fn baseline() -> &'static PathBuf {
    static BASELINE: OnceLock<PathBuf> = OnceLock::new();
    BASELINE.get_or_init(|| {
        let dir = scratch("ft-baseline");
        generate(&dir, 11, 240);
        run(&dir, "out", &[]);
        validate(&dir, "out", SPEEDUP);
        dir
    })
}

/// Runs the shared input's query at the shared speed-up with one instance
/// per worker, plus `extra` options.
pub fn run(dir: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
    run_with(dir, out, extra, &[])
}

/// As [`run`], with environment variables for the run and its workers.
/// `extra` may set its own `--speedup` (a slower replay gives scheduled
/// scale operations room on a loaded machine) and `--workers`.
pub fn run_with(dir: &Path, out: &str, extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut args = Vec::new();
    if !extra.contains(&"--workers") {
        args.extend(["--workers", WORKERS]);
    }
    if !extra.contains(&"--speedup") {
        args.extend(["--speedup", SPEEDUP]);
    }
    args.extend_from_slice(extra);
    run_lrb_with(dir, out, &args, env)
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
    unchanged_with(name, options, &[])
}

/// As [`unchanged`], with environment variables for the run and its workers.
pub fn unchanged_with(name: &str, options: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let base = baseline();
    let dir = scratch(name);
    for file in ["input.csv", "historical-tolls.csv"] {
        std::fs::copy(base.join(file), dir.join(file)).unwrap();
    }
    let report = run_with(&dir, "out", options, env);
    if let Some(difference) = difference(&base.join("out"), &dir.join("out")) {
        panic!("{difference}");
    }
    report
}

/// How the answers in `got` differ from those in `expected` (see
/// [`answers`]), or `None` when they are identical.
pub fn difference(expected: &Path, got: &Path) -> Option<String> {
    let (expected, got) = (answers(expected), answers(got));
    if expected.len() != got.len() {
        return Some(format!(
            "answer count changed: expected {} got {}",
            expected.len(),
            got.len()
        ));
    }
    (0..got.len()).find(|&i| expected[i] != got[i]).map(|i| {
        format!(
            "answers differ at row {i}: expected {} got {}",
            expected[i], got[i]
        )
    })
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
