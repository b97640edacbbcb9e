//! Linear Road answers through the PostgreSQL sink, against a server the
//! test starts: kills of a sink's worker during commits, a split upstream
//! and the database restarting mid-run leave every answer in the tables
//! exactly once, the same as a failure-free run's answer files; a wrong URL
//! or wrong credentials stop `lrb run` at once with a clear message.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lrb::{answers, baseline, SPEEDUP, WORKERS};
use common::{run_with_timeout, scratch, spate, stderr};
use spate_postgres::testing::TestServer;

fn lrb_run(dir: &Path, extra: &[&str]) -> Command {
    let mut command = spate();
    command
        .args(["lrb", "run", "--speedup", SPEEDUP, "--workers", WORKERS])
        .arg("--input")
        .arg(dir.join("input.csv"))
        .arg("--tolls")
        .arg(dir.join("historical-tolls.csv"))
        .arg("--out")
        .arg(dir.join("out"))
        .args(extra);
    command
}

/// Tolls committed so far; 0 while the table is unreachable.
fn committed_tolls(url: &str) -> i64 {
    spate_postgres::connect(url)
        .ok()
        .and_then(|mut client| client.query_one("SELECT count(*) FROM lrb_tolls", &[]).ok())
        .map_or(0, |row| row.get(0))
}

#[test]
fn answers_reach_postgres_exactly_once_through_kills_a_split_and_a_restart() {
    let Some(server) = TestServer::start_or_skip("lrb_postgres_sink") else {
        return;
    };
    let base = baseline();
    let dir = scratch("pg-sink");
    for file in ["input.csv", "historical-tolls.csv"] {
        std::fs::copy(base.join(file), dir.join(file)).unwrap();
    }
    let url = server.url();
    // Checkpoints (hence commits) every 100 ms, so that the kills land
    // among commits.
    let mut command = lrb_run(
        &dir,
        &[
            "--sink",
            &url,
            "--checkpoint-ms",
            "100",
            "--pool",
            "3",
            "--kill",
            "3:tolls",
            "--kill",
            "4:balances",
            "--scale",
            "3.5:toll_calculator",
        ],
    );
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    // The database restarts once the tolls sink has committed: it commits
    // again later (tolls come until the input ends), so it must notice.
    let started = Instant::now();
    while committed_tolls(&url) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no toll committed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.restart().unwrap();
    let result = common::wait_with_timeout(child, Duration::from_secs(600));
    let log = stderr(&result);
    assert!(result.status.success(), "run failed: {log}");
    assert!(
        log.contains("reachable again"),
        "no sink noticed the restart: {log}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/report.json")).unwrap())
            .unwrap();
    assert!(
        report["recoveries"].as_array().unwrap().len() >= 2,
        "{report}"
    );
    assert_eq!(report["partitions"]["toll_calculator"], 3, "{report}");
    assert!(!dir.join("out/tolls.csv").exists(), "answers went to files");

    let mut validate = spate();
    validate
        .args(["lrb", "validate", "--speedup", SPEEDUP, "--from", &url])
        .arg("--input")
        .arg(dir.join("input.csv"))
        .arg("--tolls")
        .arg(dir.join("historical-tolls.csv"))
        .arg("--out")
        .arg(dir.join("out"));
    let result = run_with_timeout(validate, Duration::from_secs(600));
    assert!(
        result.status.success(),
        "validation failed:\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        stderr(&result)
    );
    let expected = answers(&base.join("out"));
    let got = answers(&dir.join("out/from-postgres"));
    assert_eq!(expected.len(), got.len(), "answer count changed");
    if let Some(i) = (0..got.len()).find(|&i| expected[i] != got[i]) {
        panic!(
            "answers differ at row {i}: expected {} got {}",
            expected[i], got[i]
        );
    }
}

#[test]
fn wrong_credentials_or_url_stop_the_run_at_once() {
    let Some(server) = TestServer::start_or_skip("lrb_postgres_wrong_credentials") else {
        return;
    };
    let dir = scratch("pg-sink-wrong");
    // Only checked for existence before the sink is.
    for file in ["input.csv", "historical-tolls.csv"] {
        std::fs::write(dir.join(file), "").unwrap();
    }
    let port = server.port();
    for (url, says) in [
        (
            format!("postgres://spate:wrong@127.0.0.1:{port}/postgres"),
            "password authentication failed",
        ),
        (
            format!("postgres://spate@127.0.0.1:{port}:x/postgres"),
            "bad PostgreSQL URL",
        ),
    ] {
        let result = run_with_timeout(lrb_run(&dir, &["--sink", &url]), Duration::from_secs(120));
        let text = stderr(&result);
        assert!(!result.status.success(), "{url}: {text}");
        assert!(
            text.contains("--sink") && text.contains(says),
            "{url}: {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
        assert!(!text.contains("wrong@"), "the password shows: {text}");
    }
}
