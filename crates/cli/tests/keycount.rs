//! End to end: the keycount example on a local cluster of worker processes,
//! and the clear failures a user gets from bad input.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{free_port, run_with_timeout, scratch, spate, stderr};

const WORDS: [&str; 7] = ["river", "stone", "Spate", "flow", "state", "key", "tide"];

/// Deterministic text with uneven word frequencies and some empty lines.
fn text(lines: usize) -> String {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out = String::new();
    for _ in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (x % 6) as usize;
        let words: Vec<&str> = (0..n)
            .map(|i| WORDS[((x >> (8 * i)) % (i as u64 + 3)) as usize % WORDS.len()])
            .collect();
        out.push_str(&words.join(" , "));
        out.push('\n');
    }
    out
}

fn expected(text: &str) -> Vec<String> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut lines = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_lowercase();
        let n = counts.entry(word.clone()).or_default();
        *n += 1;
        lines.push(format!("{word},{n}"));
    }
    lines.sort();
    lines
}

#[test]
fn keycount_runs_on_three_workers_with_exact_results() {
    let dir = scratch("keycount-e2e");
    let input = dir.join("input.txt");
    let output = dir.join("counts.csv");
    let text = text(30_000);
    std::fs::write(&input, &text).unwrap();

    let mut command = spate();
    command
        .args(["run", "keycount", "--workers", "3"])
        .args(["--partitions", "count=3", "--partitions", "split=2"])
        .arg(format!("--param=input={}", input.display()))
        .arg(format!("--param=output={}", output.display()));
    let result = run_with_timeout(command, Duration::from_secs(120));
    assert!(result.status.success(), "spate failed: {}", stderr(&result));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.contains("job finished"), "{stdout}");

    let mut got: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    assert_eq!(got, expected(&text));
    // Every partition of the counter did some of the work.
    let counters = stdout.lines().filter(|l| l.starts_with("count ")).count();
    assert_eq!(counters, 3, "{stdout}");
}

#[test]
fn a_missing_input_file_is_one_clear_error() {
    let dir = scratch("keycount-missing");
    let mut command = spate();
    command
        .args(["run", "keycount", "--workers", "2"])
        .arg(format!("--param=input={}", dir.join("nope.txt").display()))
        .arg(format!("--param=output={}", dir.join("out.csv").display()));
    let result = run_with_timeout(command, Duration::from_secs(60));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("cannot open input"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_malformed_parameters_file_is_refused() {
    let dir = scratch("keycount-badconfig");
    let config = dir.join("params.json");
    std::fs::write(&config, "{ not json").unwrap();
    let mut command = spate();
    command
        .args(["run", "keycount", "--params-file"])
        .arg(&config);
    let result = run_with_timeout(command, Duration::from_secs(30));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("is not valid JSON"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn an_unknown_query_is_refused() {
    let mut command = spate();
    command.args(["run", "no-such-query"]);
    let result = run_with_timeout(command, Duration::from_secs(30));
    assert!(!result.status.success());
    assert!(stderr(&result).contains("unknown query `no-such-query`"));
}

#[test]
fn an_unreachable_coordinator_is_a_clear_error() {
    let port = free_port();
    let mut command = spate();
    command
        .args(["worker", "--connect-timeout-secs", "1", "--coordinator"])
        .arg(format!("127.0.0.1:{port}"));
    let result = run_with_timeout(command, Duration::from_secs(30));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("cannot reach the coordinator"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_worker_that_dies_at_start_fails_the_job() {
    let dir = scratch("keycount-worker-dies");
    std::fs::write(dir.join("in.txt"), "a b c\n").unwrap();
    let port = free_port();
    let mut coordinator = spate();
    coordinator
        .args(["coordinator", "keycount", "--workers", "2", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("--param=input={}", dir.join("in.txt").display()))
        .arg(format!("--param=output={}", dir.join("out.csv").display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let coordinator = coordinator.spawn().unwrap();
    let mut worker = spate()
        .args(["worker", "--coordinator"])
        .arg(format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    // Let it register, then kill it before the second worker ever comes.
    std::thread::sleep(Duration::from_millis(700));
    worker.kill().unwrap();
    worker.wait().unwrap();
    let result = common::wait_with_timeout(coordinator, Duration::from_secs(30));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("worker 0 failed"), "{err}");
}

#[test]
fn a_worker_with_the_wrong_token_is_refused() {
    let dir = scratch("keycount-token");
    std::fs::write(dir.join("in.txt"), "a b c\n").unwrap();
    let port = free_port();
    let mut coordinator = spate()
        .args([
            "coordinator",
            "keycount",
            "--workers",
            "1",
            "--token",
            "right",
        ])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--param=input={}", dir.join("in.txt").display()))
        .arg(format!("--param=output={}", dir.join("out.csv").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut worker = spate();
    worker
        .args(["worker", "--token", "wrong", "--coordinator"])
        .arg(format!("127.0.0.1:{port}"));
    let result = run_with_timeout(worker, Duration::from_secs(30));
    coordinator.kill().unwrap();
    let coordinator = coordinator.wait_with_output().unwrap();
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("cluster token"),
        "{}",
        stderr(&result)
    );
    let log = String::from_utf8_lossy(&coordinator.stderr);
    assert!(log.contains("wrong cluster token"), "{log}");
}

#[test]
fn a_coordinator_starts_its_workers_with_a_provision_command() {
    let dir = scratch("keycount-provision");
    let text = text(2_000);
    std::fs::write(dir.join("in.txt"), &text).unwrap();
    let template = format!(
        "{} worker --coordinator {{coordinator}}",
        env!("CARGO_BIN_EXE_spate")
    );
    let mut command = spate();
    command
        .args(["coordinator", "keycount", "--workers", "2", "--pool", "1"])
        .arg(format!("--listen=127.0.0.1:{}", free_port()))
        .arg(format!("--provision-command={template}"))
        .arg(format!("--param=input={}", dir.join("in.txt").display()))
        .arg(format!("--param=output={}", dir.join("out.csv").display()));
    let result = run_with_timeout(command, Duration::from_secs(60));
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(
        stderr(&result).contains("starting 3 workers with"),
        "{}",
        stderr(&result)
    );
    let mut got: Vec<String> = std::fs::read_to_string(dir.join("out.csv"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    assert_eq!(got, expected(&text));
}
