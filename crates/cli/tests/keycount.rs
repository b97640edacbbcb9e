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

    assert_eq!(counts(&output), expected(&text));
    // Every partition of the counter did some of the work.
    let counters = stdout.lines().filter(|l| l.starts_with("count ")).count();
    assert_eq!(counters, 3, "{stdout}");
}

/// Sorted `word,count` lines of a job's output file.
fn counts(path: &std::path::Path) -> Vec<String> {
    let mut got: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    got
}

/// Fault-tolerance and elasticity flags for a keycount job paced to last
/// about five seconds. Instances are placed round-robin (lines, split,
/// count 0, count 1, write on workers 0, 1, 2, 0, 1), so the first kill
/// also takes the source and the second the splitter with the sink.
const FAULTS_AND_SCALING: [&str; 19] = [
    "--workers=3",
    "--partitions=split=1",
    "--partitions=count=2",
    "--pool=4",
    "--checkpoint-ms=100",
    "--heartbeat-timeout-ms=1000",
    "--recovery-parallelism=1",
    "--startup-timeout-secs=60",
    "--kill",
    "1:count:1",
    "--scale",
    "1.8:count",
    "--kill",
    "2.6:write",
    "--scale-in",
    "3.5:count",
    "--param=lines_per_sec=4000",
    "--token=keycount-test",
    "--worker-cpu=1",
];

/// The job's printout shows both recoveries, the split and the merge.
fn assert_faults_and_scaling(stdout: &str) {
    let lines =
        |prefix: &str| -> Vec<&str> { stdout.lines().filter(|l| l.starts_with(prefix)).collect() };
    let recovered = lines("recovered ");
    assert_eq!(recovered.len(), 2, "{stdout}");
    assert!(recovered[0].contains("count[1]"), "{stdout}");
    assert!(recovered[1].contains("write[0]"), "{stdout}");
    assert_eq!(lines("scaled out count").len(), 1, "{stdout}");
    assert_eq!(lines("scaled in count").len(), 1, "{stdout}");
}

#[test]
fn spate_run_takes_the_fault_tolerance_and_elasticity_flags() {
    let dir = scratch("keycount-run-faults");
    let (input, output) = (dir.join("input.txt"), dir.join("counts.csv"));
    let text = text(20_000);
    std::fs::write(&input, &text).unwrap();
    let mut command = spate();
    command
        .args(["run", "keycount"])
        .args(FAULTS_AND_SCALING)
        .arg(format!("--param=input={}", input.display()))
        .arg(format!("--param=output={}", output.display()));
    let result = run_with_timeout(command, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{stdout}\n{}", stderr(&result));
    assert_faults_and_scaling(&stdout);
    assert_eq!(counts(&output), expected(&text));
}

#[test]
fn spate_coordinator_takes_the_fault_tolerance_and_elasticity_flags() {
    let dir = scratch("keycount-coordinator-faults");
    let (input, output) = (dir.join("input.txt"), dir.join("counts.csv"));
    let text = text(20_000);
    std::fs::write(&input, &text).unwrap();
    let template = format!(
        "{} worker --coordinator {{coordinator}}",
        env!("CARGO_BIN_EXE_spate")
    );
    let mut command = spate();
    command
        .args(["coordinator", "keycount"])
        .args(FAULTS_AND_SCALING)
        .arg(format!("--listen=127.0.0.1:{}", free_port()))
        .arg(format!("--provision-command={template}"))
        // The workers run on this host, so the stop command can be a kill.
        .arg("--stop-command=kill -9 {pid}")
        .arg(format!("--param=input={}", input.display()))
        .arg(format!("--param=output={}", output.display()));
    let result = run_with_timeout(command, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{stdout}\n{}", stderr(&result));
    assert_faults_and_scaling(&stdout);
    assert_eq!(counts(&output), expected(&text));
}

#[test]
fn run_and_coordinator_help_list_the_job_flags() {
    for command in ["run", "coordinator"] {
        let result = run_with_timeout(
            {
                let mut c = spate();
                c.args([command, "--help"]);
                c
            },
            Duration::from_secs(30),
        );
        assert!(result.status.success());
        let help = String::from_utf8_lossy(&result.stdout);
        for flag in [
            "--workers",
            "--pool",
            "--partitions",
            "--token",
            "--checkpoint-ms",
            "--kill",
            "--recovery-parallelism",
            "--heartbeat-timeout-ms",
            "--startup-timeout-secs",
            "--autoscale",
            "--scale-threshold",
            "--scale-reports",
            "--scale-in-threshold",
            "--scale ",
            "--scale-in ",
            "--worker-cpu",
            "--dashboard",
            "--linger-secs",
        ] {
            assert!(
                help.contains(flag),
                "`spate {command} --help` lacks {flag}:\n{help}"
            );
        }
    }
}

#[test]
fn a_kill_of_an_unknown_operator_is_refused_before_any_worker_starts() {
    let dir = scratch("keycount-unknown-kill");
    let mut command = spate();
    command
        .args(["run", "keycount", "--kill", "1:counter"])
        .arg(format!("--param=input={}", dir.join("in.txt").display()))
        .arg(format!("--param=output={}", dir.join("out.csv").display()));
    let result = run_with_timeout(command, Duration::from_secs(30));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--kill names `counter`, which is not an operator of `keycount`; its operators are lines, split, count, write"),
        "{err}"
    );
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
    assert!(err.contains("cannot open the input file"), "{err}");
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
    assert_eq!(counts(&dir.join("out.csv")), expected(&text));
}
