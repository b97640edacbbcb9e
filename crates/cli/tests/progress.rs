//! Live progress when stderr is not a terminal (a CI log): every long
//! command writes plain progress lines, then a last line saying it is done.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run_with_timeout, scratch, spate, stderr};

/// Runs `command` with progress lines due every 0.3 s and returns its
/// progress lines (those starting `[   N s]`), after checking that stderr
/// holds no terminal control codes.
fn progress_lines(mut command: Command) -> Vec<String> {
    command.env("SPATE_PROGRESS_SECS", "0.3");
    let result = run_with_timeout(command, Duration::from_secs(300));
    let err = stderr(&result);
    assert!(result.status.success(), "{err}");
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}'),
        "control codes in a log: {err:?}"
    );
    err.lines()
        .filter(|l| l.starts_with('[') && l.contains(" s] "))
        .map(str::to_string)
        .collect()
}

#[test]
fn long_commands_write_progress_lines_to_a_log() {
    let dir = scratch("progress-lines");
    let mut generate = spate();
    generate
        .args(["lrb", "generate", "--duration-secs", "240", "--out"])
        .arg(&dir);
    let lines = progress_lines(generate);
    let last = lines.last().expect("a progress line");
    assert!(
        last.contains("] generating done: simulated second 240 of 240"),
        "{lines:?}"
    );

    let mut run = spate();
    run.args(["lrb", "run", "--speedup", "40", "--scale", "2:forwarder"])
        .arg("--input")
        .arg(dir.join("input.csv"))
        .arg("--tolls")
        .arg(dir.join("historical-tolls.csv"))
        .arg("--out")
        .arg(dir.join("out"));
    let lines = progress_lines(run);
    // A 6-second run: lines while it runs, every one with all its figures.
    let running: Vec<&String> = lines.iter().filter(|l| l.contains("] running ")).collect();
    assert!(running.len() >= 5, "{lines:?}");
    for figure in [
        "%: ",
        "lines (",
        "answers",
        "checkpoints",
        "failures",
        "scale event",
    ] {
        assert!(
            running.iter().any(|l| l.contains(figure)),
            "{figure}: {lines:?}"
        );
    }
    assert!(running.iter().any(|l| l.contains("sim 0:0")), "{lines:?}");
    // The last line has the report's figures.
    let last = running.last().expect("a last line");
    assert!(
        last.contains("running done: ")
            && last.contains("1 scale event")
            && last.contains(" late)"),
        "{last}"
    );
    // The figures are drawn for viewers with and without SVG.
    let png = std::fs::read(dir.join("out/report.png")).expect("report.png");
    assert!(png.starts_with(b"\x89PNG"));

    let mut validate = spate();
    validate
        .args(["lrb", "validate", "--speedup", "40"])
        .arg("--input")
        .arg(dir.join("input.csv"))
        .arg("--tolls")
        .arg(dir.join("historical-tolls.csv"))
        .arg("--out")
        .arg(dir.join("out"));
    let lines = progress_lines(validate);
    let last = lines.last().expect("a progress line");
    assert!(
        last.contains("] validating done: every answer compared"),
        "{lines:?}"
    );
}

#[test]
fn a_generic_job_reports_tuples_in_and_out() {
    let dir = scratch("progress-keycount");
    let input = dir.join("input.txt");
    let words: String = (0..20_000)
        .map(|i| format!("word{} word{}\n", i % 977, i % 13))
        .collect();
    std::fs::write(&input, words).unwrap();
    let mut run = spate();
    run.args(["run", "keycount", "--workers", "2"])
        .arg(format!("--param=input={}", input.display()))
        .arg(format!(
            "--param=output={}",
            dir.join("counts.csv").display()
        ));
    let lines = progress_lines(run);
    let last = lines.last().expect("a progress line");
    assert!(
        last.contains("] finished done: 20.0k tuples in (")
            && last.contains("40.0k out of the sinks")
            && last.contains("0 scale events"),
        "{lines:?}"
    );
}

#[test]
fn a_bench_reports_its_runs_and_its_end() {
    let dir = scratch("progress-bench");
    let mut bench = spate();
    bench
        .args(["lrb", "bench", "--duration-secs", "120", "--speedups", "40"])
        .args(["--bisect", "0", "--out"])
        .arg(&dir);
    let lines = progress_lines(bench);
    // A 3-second run at speed-up 40, then its validation.
    let running = lines
        .iter()
        .filter(|l| l.contains("] speed-up 40 "))
        .count();
    assert!(running >= 3, "{lines:?}");
    let last = lines.last().expect("a progress line");
    assert!(last.contains("] bench done: 1 run"), "{lines:?}");
    let png = std::fs::read(dir.join("bench.png")).expect("bench.png");
    assert!(png.starts_with(b"\x89PNG"));
}
