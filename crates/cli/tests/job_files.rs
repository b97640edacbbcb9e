//! The example job files in examples/jobs/ run end to end: keycount with
//! the file's kills, split and merge (exact counts), and Linear Road
//! (every answer validated).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{run_with_timeout, scratch, spate, stderr};

/// An example job file.
fn job(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/jobs")
        .join(name)
}

#[test]
fn the_keycount_job_file_runs_with_its_kills_and_scaling() {
    let dir = scratch("job-keycount");
    let input = dir.join("words.txt");
    let words = ["spate", "river", "state", "tide", "flow"];
    let text: String = (0..24_000usize)
        .map(|n| format!("{} {}\n", words[n % 5], words[n * n % 5]))
        .collect();
    std::fs::write(&input, &text).unwrap();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut expected: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let n = counts.entry(word).or_default();
        *n += 1;
        expected.push(format!("{word},{n}"));
    }
    expected.sort();

    let output = dir.join("counts.csv");
    let mut command = spate();
    command
        .args(["run", "--job"])
        .arg(job("keycount.toml"))
        .arg(format!("--param=input={}", input.display()))
        .arg(format!("--param=output={}", output.display()))
        .arg("--token=job-file-test");
    let result = run_with_timeout(command, Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{stdout}{}", stderr(&result));
    // The file's two kills, split and merge all happened (the input is
    // paced to last six seconds, whatever the load).
    let lines = |prefix: &str| stdout.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(lines("recovered "), 2, "{stdout}");
    assert_eq!(lines("scaled out count"), 1, "{stdout}");
    assert_eq!(lines("scaled in count"), 1, "{stdout}");
    let mut got: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn the_linear_road_job_file_runs_and_validates() {
    let dir = scratch("job-linear-road");
    common::lrb::generate(&dir, 5, 120);
    let mut command = spate();
    command
        .args(["lrb", "run", "--job"])
        .arg(job("linear-road.toml"))
        .arg("--input")
        .arg(dir.join("input.csv"))
        .arg("--tolls")
        .arg(dir.join("historical-tolls.csv"))
        .arg("--out")
        .arg(dir.join("out"))
        .args(["--speedup", "30"]);
    let result = run_with_timeout(command, Duration::from_secs(300));
    assert!(result.status.success(), "{}", stderr(&result));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/report.json")).unwrap())
            .unwrap();
    // The file's partitions: two toll calculators at the start.
    let calculators = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["operator"] == "toll_calculator")
        .count();
    assert!(calculators >= 2, "{report}");
    common::lrb::validate(&dir, "out", "30");
}
