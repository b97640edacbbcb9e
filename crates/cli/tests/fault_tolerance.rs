//! Fault tolerance end to end: Linear Road runs in which worker processes are
//! killed with SIGKILL mid-run must produce exactly the answers of a
//! failure-free run (which itself passes the reference validator).
//!
//! Every instance runs on its own worker (10 workers) so that each test kills
//! exactly the operator it names, with idle pool workers to recover onto.

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::lrb::{baseline, difference, lrb_command, survives, unchanged_with, SPEEDUP, WORKERS};

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
fn one_backup_copy_recovers_the_same_answers() {
    // Each stateful instance's checkpoints go to one holder only (SEEP's
    // upstream backup): a failure restores from that copy.
    survives(
        "ft-one-copy",
        &["3:toll_assessment", "5:toll_calculator:1"],
        &["--backup-copies", "1"],
    );
}

#[test]
fn losing_a_worker_that_runs_a_whole_pipeline_changes_nothing() {
    // Placed by pipelines on two workers, worker 0 runs the first instance
    // of every operator, passing tuples between them in process: its loss
    // takes the source, the forwarder, a toll calculator, the toll
    // assessment and every sink at once, and the other toll calculator
    // then fails too.
    let report = survives(
        "ft-pipeline",
        &["3:toll_assessment", "5:toll_calculator:1"],
        &["--workers", "2", "--placement", "pipelines"],
    );
    let recovered: Vec<&str> = report["recoveries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["instances"].as_array().unwrap())
        .filter_map(|i| i.as_str())
        .collect();
    for operator in [
        "feeder[0]",
        "toll_assessment[0]",
        "tolls[0]",
        "toll_calculator[1]",
    ] {
        assert!(
            recovered.contains(&operator),
            "{operator} not recovered: {report}"
        );
    }
}

#[test]
fn a_forwarder_chained_to_the_feeder_recovers_with_it() {
    // With a checkpoint every 20 ms some fall between a stopped car's
    // zone copies, which the feeder's checkpoint then carries.
    survives(
        "ft-chained",
        &["3:feeder"],
        &["--chain-forwarder", "--checkpoint-ms", "20"],
    );
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
    // At least one recovery per kill (a worker starved of CPU on a loaded
    // machine may also be declared failed; that recovery must be exact too).
    assert!(
        report["recoveries"].as_array().unwrap().len() >= 2,
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

#[test]
fn parallel_recovery_onto_two_workers_changes_nothing() {
    let report = survives(
        "ft-parallel",
        &["3:toll_assessment"],
        &["--recovery-parallelism", "2", "--pool", "3"],
    );
    assert_eq!(report["partitions"]["toll_assessment"], 2, "{report}");
}

#[test]
fn corrupt_checkpoints_are_refused_and_the_previous_good_one_restores() {
    // Every third checkpoint a worker ships has a byte flipped on the way.
    let report = unchanged_with(
        "corrupt-checkpoints",
        &[
            "--checkpoint-ms",
            "200",
            "--pool",
            "2",
            "--kill",
            "3:toll_calculator",
            "--kill",
            "4.5:toll_assessment",
        ],
        &[("SPATE_FAULT_CORRUPT_CHECKPOINTS", "3")],
    );
    let refused = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "refused")
        .filter(|e| e["detail"].as_str().unwrap().contains("corrupted"))
        .count();
    assert!(refused > 0, "no corrupt checkpoint was refused: {report}");
    assert!(
        report["recoveries"].as_array().unwrap().len() >= 2,
        "{report}"
    );
}

#[test]
fn recovering_on_a_warm_standby_changes_nothing() {
    // Every stateful instance is large enough for a standby here.
    let report = survives(
        "ft-standby",
        &["4:toll_assessment"],
        &["--standby-mb", "0.000001", "--pool", "4"],
    );
    let events = report["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "standby"),
        "no standby was staged: {report}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "restored"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("toll_assessment[0] from a standby"))),
        "the toll assessment did not restore from its standby: {report}"
    );
}

#[test]
fn a_coordinator_paused_for_longer_than_the_heartbeat_timeout_changes_nothing() {
    // The coordinator stops for 800 ms mid-run, longer than the 500 ms
    // heartbeat timeout but within the workers' lease (twice it). No
    // worker may stop for want of a lease, and the coordinator, back, may
    // not blame the workers for heartbeats it did not read: no failure,
    // the same answers.
    let (dir, output) = run_with_the_coordinator_paused("ft-coordinator-paused", 800);
    assert!(
        output.status.success(),
        "run failed: {}",
        common::stderr(&output)
    );
    if let Some(difference) = difference(&baseline().join("out"), &dir.join("out")) {
        panic!("{difference}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/report.json")).unwrap())
            .unwrap();
    let failures: Vec<&serde_json::Value> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "failure")
        .collect();
    assert!(failures.is_empty(), "workers declared failed: {failures:?}");
}

#[test]
fn a_coordinator_paused_past_the_lease_fails_the_run_and_says_why() {
    // Paused for 1.5 s, past the workers' 1 s lease: every worker stops,
    // as it must when it may have been declared failed, and the run fails
    // with what happened and what to change.
    let (_, output) = run_with_the_coordinator_paused("ft-coordinator-paused-long", 1_500);
    assert!(!output.status.success(), "the run did not fail");
    let stderr = common::stderr(&output);
    assert!(
        stderr.contains("the coordinator itself was paused for")
            && stderr.contains("raise --heartbeat-timeout-ms"),
        "{stderr}"
    );
}

/// Runs the shared input and stops the coordinator (SIGSTOP, as a
/// starved machine or a paused virtual machine would) for `pause_ms`,
/// 3 s into the run; returns the run's directory and its output.
fn run_with_the_coordinator_paused(name: &str, pause_ms: u64) -> (PathBuf, Output) {
    let base = baseline();
    let dir = common::scratch(name);
    for file in ["input.csv", "historical-tolls.csv"] {
        std::fs::copy(base.join(file), dir.join(file)).unwrap();
    }
    let mut command = lrb_command(&["run"], &dir, "out");
    command
        .args(["--workers", WORKERS, "--pool", "2", "--speedup", SPEEDUP])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("start spate");
    let pid = child.id() as libc::pid_t;
    let signal = |sig| {
        // SAFETY: kill only sends a signal to the process this test started.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "cannot signal the run");
    };
    std::thread::sleep(Duration::from_secs(3));
    signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(pause_ms));
    signal(libc::SIGCONT);
    let output = common::wait_with_timeout(child, Duration::from_secs(600));
    (dir, output)
}
