//! Nexmark end to end: q4, q5, q7 and q8 on a local cluster, with a
//! worker killed, an operator split and another merged during the run,
//! give exactly the answers of the reference implementation (which a
//! failure-free run gives too: `spate nexmark run` checks that).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{run_with_timeout, scratch, spate};

/// What a run gave: its report, its sorted answer lines and its log (the
/// coordinator's at debug level, so that a rescaling that was not made
/// says why).
struct Run {
    report: serde_json::Value,
    answers: Vec<String>,
    log: String,
}

/// Runs `query` over a small paced input with `extra` options, after
/// checking it PASSED.
fn run(name: &str, query: &str, extra: &[&str]) -> Run {
    let out = scratch(name);
    let mut command = spate();
    command.env(
        "RUST_LOG",
        "spate_engine=info,spate_engine::coordinator=debug",
    );
    command.args(["nexmark", "run", "--query", query, "--events", "200000"]);
    command.args(["--event-rate", "4000", "--rate", "50000", "--workers", "2"]);
    command
        .args(["--checkpoint-ms", "200", "--out"])
        .arg(&out)
        .args(extra);
    let output = run_with_timeout(command, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("PASSED"),
        "{query} {extra:?}: {stdout}\n{}",
        common::stderr(&output)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    Run {
        report,
        answers: answers(&out, query),
        log: common::stderr(&output),
    }
}

fn answers(out: &Path, query: &str) -> Vec<String> {
    let text = std::fs::read_to_string(out.join(format!("{query}.csv"))).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort_unstable();
    lines
}

/// A kill of `killed`'s worker, a split of `split` and a merge of `merged`.
fn faults(query: &str, killed: &str, split: &str, merged: &str) {
    let kill = format!("1.2:{killed}");
    let scale = format!("2:{split}");
    let scale_in = format!("2.8:{merged}");
    let faulty = run(
        &format!("nexmark-{query}-faults"),
        query,
        &[
            "--pool",
            "2",
            "--kill",
            &kill,
            "--scale",
            &scale,
            "--scale-in",
            &scale_in,
        ],
    );
    let report = &faulty.report;
    assert!(!faulty.answers.is_empty(), "{query} gave no answers");
    assert!(
        !report["recoveries"].as_array().unwrap().is_empty(),
        "no recovery: {report}"
    );
    let directions: Vec<&str> = report["scale_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["direction"].as_str().unwrap())
        .collect();
    assert!(
        directions.contains(&"out") && directions.contains(&"in"),
        "expected a split and a merge: {report}\n{}",
        faulty.log
    );
    let clean = run(&format!("nexmark-{query}-clean"), query, &[]);
    assert_eq!(
        faulty.answers, clean.answers,
        "{query}: answers differ from a failure-free run"
    );
}

#[test]
fn q4_average_price_per_category_survives_a_kill_a_split_and_a_merge() {
    faults("q4", "max", "join", "average");
}

#[test]
fn q5_hot_items_survive_a_kill_a_split_and_a_merge() {
    faults("q5", "count", "top", "count");
}

#[test]
fn q7_highest_bid_survives_a_kill_a_split_and_a_merge() {
    faults("q7", "top", "max", "max");
}

#[test]
fn q8_new_users_survive_a_kill_a_split_and_a_merge() {
    faults("q8", "join", "join", "join");
}

/// `nexmark generate` writes the events other systems read and the
/// reference answers they are checked against: q0's answers are exactly
/// the file's bids, and q2's are those of its bids whose auction is a
/// multiple of 123.
#[test]
fn generate_writes_the_events_and_their_reference_answers() {
    let out = scratch("nexmark-generate");
    let mut command = spate();
    command.args([
        "nexmark", "generate", "--events", "5000", "--seed", "4", "--out",
    ]);
    command.arg(&out);
    let output = run_with_timeout(command, Duration::from_secs(60));
    assert!(output.status.success(), "{}", common::stderr(&output));
    let events = std::fs::read_to_string(out.join("events.csv")).unwrap();
    assert_eq!(events.lines().count(), 5000);
    let bids: Vec<Vec<&str>> = events
        .lines()
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|cells| cells[0] == "2")
        .collect();
    let sorted = |mut lines: Vec<String>| {
        lines.sort_unstable();
        lines
    };
    let q0 = sorted(
        bids.iter()
            .map(|c| format!("{},{},{},{}", c[16], c[17], c[18], c[1]))
            .collect(),
    );
    assert_eq!(answers(&out.join("reference"), "q0"), q0);
    let q2 = sorted(
        bids.iter()
            .filter(|c| c[16].parse::<u64>().unwrap() % 123 == 0)
            .map(|c| format!("{},{}", c[16], c[18]))
            .collect(),
    );
    assert!(!q2.is_empty());
    assert_eq!(answers(&out.join("reference"), "q2"), q2);
    for query in ["q1", "q3", "q4", "q5", "q7", "q8"] {
        assert!(out.join("reference").join(format!("{query}.csv")).exists());
    }
    std::fs::remove_dir_all(&out).ok();
}
