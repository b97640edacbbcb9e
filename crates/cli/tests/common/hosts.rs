//! Helpers for tests across simulated hosts (`spate hosts lrb`, network
//! namespaces; root only).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use spate_hosts::{HostsError, HostsOptions, SimulatedHosts};

use super::{scratch, spate, wait_with_timeout};

/// Whether this machine lets us make simulated hosts; says why not.
pub fn supported() -> bool {
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

/// `spate hosts lrb --data DATA --out DIR ARGS` (faults and job options),
/// ended and failed after `limit`. The answers land in
/// `DIR/shared/answers`, the events in `DIR/hosts.json`; its output (and
/// its workers', however long) goes to `DIR/stdout.txt` and
/// `DIR/stderr.txt`, and comes back in the result. The engine logs at
/// `info` unless `RUST_LOG` says otherwise, so that a run that fails or
/// hangs leaves the coordinator's decisions (failures declared, instances
/// restored) beside its warnings.
pub fn hosts_lrb(dir: &Path, data: &Path, args: &[String], limit: Duration) -> Output {
    let file = |name: &str| std::fs::File::create(dir.join(name)).expect("create an output file");
    let mut command = spate();
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "spate_engine=info");
    }
    command
        .args(["hosts", "lrb", "--data"])
        .arg(data)
        .arg("--out")
        .arg(dir)
        .args(args)
        .stdout(file("stdout.txt"))
        .stderr(file("stderr.txt"));
    let mut output = wait_with_timeout(command.spawn().expect("start spate"), limit);
    output.stdout = std::fs::read(dir.join("stdout.txt")).unwrap_or_default();
    output.stderr = std::fs::read(dir.join("stderr.txt")).unwrap_or_default();
    output
}

/// `DIR/hosts.json` of a `spate hosts lrb` run.
pub fn hosts_report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("hosts.json")).expect("read hosts.json");
    serde_json::from_str(&text).expect("parse hosts.json")
}
