//! Elasticity end to end: forced scale outs (splits of each stateful
//! operator, of a stateless one, of an already split partition, and during a
//! recovery) and scale ins (merges back, down to one partition) must leave
//! the answers exactly those of a static run.

mod common;

use common::lrb::unchanged;

fn scale_events(report: &serde_json::Value) -> Vec<(String, u64, u64)> {
    report["scale_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["operator"].as_str().unwrap().to_string(),
                e["from"].as_u64().unwrap(),
                e["to"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// How many events of `kind` the report has whose detail contains `text`.
fn events(report: &serde_json::Value, kind: &str, text: &str) -> usize {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && e["detail"].as_str().unwrap().contains(text))
        .count()
}

#[test]
fn splitting_each_stateful_operator_and_a_split_partition_changes_nothing() {
    let report = unchanged(
        "scale-stateful",
        &[
            "--pool",
            "3",
            "--scale",
            "2:toll_calculator",
            "--scale",
            "3.5:toll_assessment",
            "--scale",
            "5:toll_calculator",
        ],
    );
    assert_eq!(
        scale_events(&report),
        vec![
            ("toll_calculator".to_string(), 2, 3),
            ("toll_assessment".to_string(), 1, 2),
            ("toll_calculator".to_string(), 3, 4),
        ],
        "{report}"
    );
    assert_eq!(report["partitions"]["toll_calculator"], 4);
}

#[test]
fn a_k_way_split_in_one_step_changes_nothing() {
    let report = unchanged(
        "scale-k-way",
        &[
            "--pool",
            "3",
            "--split-parts",
            "4",
            "--scale",
            "2:toll_calculator",
        ],
    );
    assert_eq!(
        scale_events(&report),
        vec![("toll_calculator".to_string(), 2, 5)],
        "{report}"
    );
    let added = report["scale_events"][0]["added"].as_array().unwrap();
    assert_eq!(added.len(), 3, "{report}");
    assert_eq!(report["partitions"]["toll_calculator"], 5);
}

#[test]
fn splitting_a_stateless_operator_changes_nothing() {
    let report = unchanged(
        "scale-stateless",
        &["--pool", "1", "--scale", "3:forwarder"],
    );
    assert_eq!(
        scale_events(&report),
        vec![("forwarder".to_string(), 1, 2)],
        "{report}"
    );
}

#[test]
fn a_scale_out_while_a_failure_is_recovered_changes_nothing() {
    let report = unchanged(
        "scale-during-recovery",
        &[
            "--pool",
            "2",
            "--kill",
            "3:toll_assessment",
            "--scale",
            "3:toll_calculator",
        ],
    );
    // At least one recovery per kill (a worker starved of CPU on a loaded
    // machine may also be declared failed; that recovery must be exact too).
    assert!(
        !report["recoveries"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(scale_events(&report).len(), 1, "{report}");
}

#[test]
fn a_scale_out_without_a_pool_worker_is_refused_not_fatal() {
    let report = unchanged(
        "scale-no-pool",
        &["--pool", "0", "--scale", "2:toll_calculator"],
    );
    assert!(scale_events(&report).is_empty());
    assert_eq!(events(&report, "refused", "pool"), 1, "{report}");
}

#[test]
fn merging_split_partitions_back_changes_nothing_and_frees_a_worker() {
    let report = unchanged(
        "scale-in",
        &[
            // Five operations in a row, each pausing the toll operators: a
            // slower replay (16 s) keeps the last one inside the run on a
            // loaded machine.
            "--speedup",
            "15",
            "--pool",
            "2",
            "--scale",
            "1.5:toll_calculator",
            "--scale",
            "2.5:toll_assessment",
            "--scale-in",
            "4:toll_calculator",
            "--scale-in",
            "5:toll_assessment",
            "--scale-in",
            "6:toll_calculator",
        ],
    );
    assert_eq!(
        scale_events(&report),
        vec![
            ("toll_calculator".to_string(), 2, 3),
            ("toll_assessment".to_string(), 1, 2),
            ("toll_calculator".to_string(), 3, 2),
            ("toll_assessment".to_string(), 2, 1),
            ("toll_calculator".to_string(), 2, 1),
        ],
        "{report}"
    );
    assert_eq!(report["partitions"]["toll_calculator"], 1);
    assert!(
        events(&report, "scale-in", "back in the pool") >= 2,
        "{report}"
    );
    // Stateful partitions with backups merge live: staged while they ran.
    assert_eq!(events(&report, "scale-in", "staged live"), 3, "{report}");
}

#[test]
fn merging_a_stateless_operator_and_a_single_partition_refusal() {
    let report = unchanged(
        "scale-in-stateless",
        &[
            "--pool",
            "1",
            "--scale",
            "2:forwarder",
            "--scale-in",
            "4:forwarder",
            "--scale-in",
            "5:forwarder",
        ],
    );
    assert_eq!(
        scale_events(&report),
        vec![
            ("forwarder".to_string(), 1, 2),
            ("forwarder".to_string(), 2, 1),
        ],
        "{report}"
    );
    assert_eq!(events(&report, "refused", "single"), 1, "{report}");
}

#[test]
fn scaling_without_fault_tolerance_is_refused_not_fatal() {
    let report = unchanged(
        "scale-no-checkpoints",
        &[
            "--checkpoint-ms",
            "0",
            "--pool",
            "1",
            "--scale",
            "2:toll_calculator",
            "--scale-in",
            "3:toll_calculator",
        ],
    );
    assert!(scale_events(&report).is_empty(), "{report}");
    assert_eq!(
        events(&report, "refused", "needs fault tolerance on"),
        2,
        "{report}"
    );
}

#[test]
fn a_merge_right_after_its_partitions_lost_their_only_holder_is_made() {
    // One backup copy, held on the forwarder's worker, which the kill
    // takes: the partitions' first checkpoints after the recovery are the
    // merge's, deltas that their new holder refuses for want of a base.
    // Paused at the merge's frontier, they must checkpoint there in full.
    let report = unchanged(
        "scale-in-new-holder",
        &[
            "--speedup",
            "15",
            "--pool",
            "2",
            "--partitions",
            "toll_calculator=2",
            "--backup-copies",
            "1",
            "--checkpoint-ms",
            "5000",
            "--kill",
            "3:forwarder",
            "--scale-in",
            "3.5:toll_calculator",
        ],
    );
    assert_eq!(
        scale_events(&report),
        vec![("toll_calculator".to_string(), 2, 1)],
        "{report}"
    );
    assert_eq!(events(&report, "refused", "one frontier"), 0, "{report}");
}
