//! Linear Road across simulated hosts (network namespaces, see the
//! `spate-hosts` crate) with network faults: the answers must be those of
//! the failure-free run on loopback. Skips, saying why, where namespaces
//! cannot be made (not root).

mod common;

use std::time::Duration;

use common::hosts::{hosts_lrb, hosts_report, supported};
use common::lrb::{baseline, difference, SPEEDUP};
use common::{scratch, stderr};

/// Runs the shared input over 6 hosts with `faults`; checks the answers
/// equal the failure-free ones and returns `hosts.json`.
fn unchanged_across_hosts(name: &str, faults: &[&str]) -> serde_json::Value {
    let base = baseline();
    let dir = scratch(name);
    let mut args: Vec<String> = ["--hosts", "6", "--workers", "10", "--pool", "3"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(["--speedup".into(), SPEEDUP.into()]);
    for fault in faults {
        args.extend(["--fault".into(), fault.to_string()]);
    }
    let result = hosts_lrb(&dir, base, &args, Duration::from_secs(600));
    assert!(
        result.status.success(),
        "run failed ({}): {}",
        result.status,
        stderr(&result)
    );
    if let Some(difference) = difference(&base.join("out"), &dir.join("shared").join("answers")) {
        panic!("{difference}");
    }
    hosts_report(&dir)
}

#[test]
fn a_partition_and_a_host_cut_from_its_peers_change_nothing() {
    if !supported() {
        return;
    }
    // The cut from peers is never healed: the coordinator must notice the
    // stalled channels (the coordinator still hears the host), or the run
    // would never end.
    let report = unchanged_across_hosts(
        "hosts-partition-and-cut",
        &[
            "1.5:partition:toll_calculator/1",
            "3.5:heal-all",
            "4:cut-peers:toll_calculator/0",
        ],
    );
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{report}");
    for event in events {
        assert!(event["error"].is_null(), "{event}");
        if event["kind"] != "heal" {
            assert!(
                event["detected_after_ms"].is_u64(),
                "a fault was never detected: {report}"
            );
        }
    }
    // A partition silences the host (its channels stall too, later); a
    // host cut from its peers only, which the coordinator still hears, can
    // be found by its stalled channels alone.
    let found_by: Vec<&str> = events
        .iter()
        .filter_map(|e| e["found_by"].as_str())
        .collect();
    assert!(
        matches!(
            found_by[..],
            ["heartbeats" | "stalled-channels", "stalled-channels"]
        ),
        "{report}"
    );
    assert!(report["validated"].as_bool().unwrap(), "{report}");
}
