//! End to end: generate a Linear Road input, run the query on a local
//! multi-process cluster with a partitioned toll calculator, and check the
//! answers with the independent reference validator.

mod common;

use std::path::Path;
use std::time::Duration;

use common::lrb::{generate, run_lrb, validate};
use common::{run_with_timeout, scratch, spate, stderr};

fn run(dir: &Path, out: &str, speedup: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--workers", "3", "--speedup", speedup];
    args.extend_from_slice(extra);
    run_lrb(dir, out, &args)
}

#[test]
fn twenty_minutes_of_one_expressway_validate_with_a_partitioned_toll_calculator() {
    let dir = scratch("lrb-20min");
    generate(&dir, 7, 1200);
    let report = run(
        &dir,
        "out",
        "0",
        &[
            "--partitions",
            "toll_calculator=3",
            "--partitions",
            "toll_assessment=2",
            "--partitions",
            "forwarder=2",
        ],
    );
    assert_eq!(report["partitions"]["toll_calculator"], 3);
    assert_eq!(report["input_errors"], 0);
    let tolls = report["latency"]["tolls"]["count"].as_u64().unwrap();
    assert!(tolls > 100_000, "{report}");
    let stdout = validate(&dir, "out", "1");
    assert!(stdout.contains("PASSED"), "{stdout}");
    // The traffic exercised every rule: non-zero tolls and accidents.
    let answers = std::fs::read_to_string(dir.join("out/tolls.csv")).unwrap();
    assert!(answers.lines().any(|l| !l.ends_with(",0")));
    assert!(report["latency"]["accidents"]["count"].as_u64().unwrap() > 0);
}

#[test]
fn a_paced_run_meets_its_deadlines_and_validates() {
    let dir = scratch("lrb-paced");
    generate(&dir, 7, 120);
    let report = run(&dir, "out", "10", &[]);
    assert_eq!(report["deadline_misses"], 0, "{report}");
    // 120 simulated seconds at 10x take about 12 s of wall clock.
    let elapsed = report["elapsed_secs"].as_f64().unwrap();
    assert!((11.0..60.0).contains(&elapsed), "{elapsed}");
    let stdout = validate(&dir, "out", "10");
    assert!(stdout.contains("PASSED"), "{stdout}");
}

#[test]
fn malformed_input_lines_are_reported_with_line_numbers_and_skipped() {
    let dir = scratch("lrb-bad-input");
    let lines = [
        "0,0,1,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "0,0,2,50,0,1,0,10,53001",
        "0,1,3,150,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "0,2,4,50,0,1,0,12,53000,-1,-1,-1,-1,-1,-1",
        "0,3,5,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "0,1,6,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "zero,3,7,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "2,4,1,-1,-1,-1,-1,-1,-1,9,-1,-1,-1,-1,-1",
    ];
    std::fs::write(dir.join("input.csv"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("historical-tolls.csv"), "1,1,0,5\n").unwrap();
    let report = run(&dir, "out", "0", &[]);
    assert_eq!(report["input_lines"], 8);
    assert_eq!(report["input_errors"], 5, "{report}");
    let errors = std::fs::read_to_string(dir.join("out/input-errors.csv")).unwrap();
    let numbers: Vec<&str> = errors
        .lines()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let mut numbers = numbers;
    numbers.sort();
    assert_eq!(numbers, ["2", "3", "4", "6", "7"], "{errors}");
    assert!(errors.contains("goes backwards"), "{errors}");
    assert!(errors.contains("Spd"), "{errors}");
    // The good lines were still answered.
    let tolls = std::fs::read_to_string(dir.join("out/tolls.csv")).unwrap();
    assert_eq!(tolls.lines().count(), 2, "{tolls}");
    let balances = std::fs::read_to_string(dir.join("out/balances.csv")).unwrap();
    assert!(balances.starts_with("2,4,"), "{balances}");
}

#[test]
fn stop_on_bad_input_fails_the_run_at_the_first_bad_line() {
    let dir = scratch("lrb-bad-input-stop");
    let lines = [
        "0,0,1,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "0,1,3,150,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
    ];
    std::fs::write(dir.join("input.csv"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("historical-tolls.csv"), "1,1,0,5\n").unwrap();
    let mut command = spate();
    command
        .args(["lrb", "run", "--speedup", "0", "--stop-on-bad-input"])
        .arg("--input")
        .arg(dir.join("input.csv"))
        .arg("--tolls")
        .arg(dir.join("historical-tolls.csv"))
        .arg("--out")
        .arg(dir.join("out"));
    let result = run_with_timeout(command, Duration::from_secs(60));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("input line 2: Spd = 150"), "{err}");
}
