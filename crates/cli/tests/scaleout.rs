//! `spate lrb scaleout` end to end at a tiny size: a minute of Linear Road
//! replayed under each policy in turn, both runs' answers validated, and
//! scaleout.json and the figure written. Nothing here is timed and nothing
//! depends on how many splits the load causes on a busy machine.

mod common;

use std::time::Duration;

use common::{run_with_timeout, scratch, spate};

#[test]
fn both_policies_run_on_one_input_and_their_answers_validate() {
    let out = scratch("scaleout");
    let mut command = spate();
    command
        .args(["lrb", "scaleout", "--xways", "1", "--duration-secs", "60"])
        .args(["--speedup", "6", "--workers", "4", "--pool", "2"])
        .args([
            "--max-workers",
            "8",
            "--worker-cpu",
            "0.2",
            "--io-worker-cpu",
            "0.5",
        ])
        .arg("--out")
        .arg(&out);
    let output = run_with_timeout(command, Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        common::stderr(&output)
    );
    for row in ["highest load held", "answers validate", "worker-seconds"] {
        assert!(stdout.contains(row), "no `{row}` in the table:\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("scaleout.json")).unwrap()).unwrap();
    let runs = report["runs"].as_array().expect("runs");
    let policies: Vec<&str> = runs.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["rate", "threshold"]);
    let lines = report["input"]["lines"].as_u64().unwrap();
    for run in runs {
        assert_eq!(run["valid"], true, "{run}");
        assert_eq!(run["input_lines"].as_u64(), Some(lines), "{run}");
        assert!(run["worker_secs"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["peak_workers"].as_u64().unwrap() >= 4, "{run}");
        assert!(
            run["coordinator"]["cpu_secs"].as_f64().unwrap() > 0.0,
            "{run}"
        );
        let dir = out.join(run["policy"].as_str().unwrap());
        assert!(dir.join("report.json").is_file(), "{}", dir.display());
    }
    let svg = std::fs::read_to_string(out.join("scaleout.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("threshold"), "{svg}");
    assert!(out.join("scaleout.png").is_file());
}
