//! Linear Road across simulated hosts (network namespaces, see the
//! `spate-hosts` crate) with network faults: the answers must be those of
//! the failure-free run on loopback. Skips, saying why, where namespaces
//! cannot be made (not root).

mod common;

use std::time::Duration;

use common::lrb::{answers, baseline, SPEEDUP};
use common::{run_with_timeout, scratch, spate, stderr};
use spate_hosts::{HostsError, HostsOptions, SimulatedHosts};

/// Whether this machine lets us make simulated hosts.
fn hosts_supported() -> bool {
    let dir = scratch("hosts-probe");
    match SimulatedHosts::create(&HostsOptions {
        hosts: 1,
        dir,
        cpu_per_host: None,
    }) {
        Ok(_) => true,
        Err(HostsError::Unsupported(why)) => {
            eprintln!("skipping: cannot make simulated hosts here ({why})");
            false
        }
        Err(e) => panic!("making simulated hosts: {e}"),
    }
}

/// Runs the shared input over 6 hosts with `faults`; checks the answers
/// equal the failure-free ones and returns `hosts.json`.
fn unchanged_across_hosts(name: &str, faults: &[&str]) -> serde_json::Value {
    let base = baseline();
    let dir = scratch(name);
    let mut command = spate();
    command
        .args([
            "hosts",
            "lrb",
            "--hosts",
            "6",
            "--workers",
            "10",
            "--pool",
            "3",
        ])
        .args(["--speedup", SPEEDUP])
        .arg("--data")
        .arg(base)
        .arg("--out")
        .arg(&dir);
    for fault in faults {
        command.args(["--fault", fault]);
    }
    let result = run_with_timeout(command, Duration::from_secs(600));
    assert!(result.status.success(), "run failed: {}", stderr(&result));
    let expected = answers(&base.join("out"));
    let got = answers(&dir.join("shared").join("answers"));
    assert_eq!(expected.len(), got.len(), "answer count changed");
    if let Some(i) = (0..got.len()).find(|&i| expected[i] != got[i]) {
        panic!(
            "answers differ at row {i}: expected {} got {}",
            expected[i], got[i]
        );
    }
    let report = std::fs::read_to_string(dir.join("hosts.json")).unwrap();
    serde_json::from_str(&report).unwrap()
}

#[test]
fn a_partition_and_a_host_cut_from_its_peers_change_nothing() {
    if !hosts_supported() {
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
    assert!(report["validated"].as_bool().unwrap(), "{report}");
}
