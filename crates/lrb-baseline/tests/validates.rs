//! The baseline's answers must pass the independent reference validator,
//! exactly as a run's do.

use std::path::{Path, PathBuf};

use lrb_baseline::{run, BaselineError, BaselineOptions, Summary};
use lrb_reference::validate::BadInput;
use lrb_reference::{generate, validate, GenerateOptions, ValidateOptions};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lrb-baseline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The answer files of both modes, the first and then the second's
/// directory.
const OUT: [&str; 2] = ["out", "out-parse-thread"];

/// Runs the baseline on `dir`'s input into `dir/out` with one thread, or
/// into `dir/out-parse-thread` with parsing on a thread of its own.
fn baseline(dir: &Path, parse_thread: bool) -> Summary {
    run(
        &BaselineOptions {
            input: dir.join("input.csv"),
            tolls: dir.join("historical-tolls.csv"),
            out_dir: dir.join(OUT[usize::from(parse_thread)]),
            parse_thread,
        },
        &mut |_| {},
    )
    .unwrap()
}

/// Runs both modes: the same summary (but for the time) and the same
/// answer files, byte for byte.
fn baseline_both_ways(dir: &Path) -> Summary {
    let one = baseline(dir, false);
    let two = baseline(dir, true);
    assert_eq!(
        Summary {
            seconds: 0.0,
            ..one.clone()
        },
        Summary {
            seconds: 0.0,
            ..two
        }
    );
    for file in [
        "tolls.csv",
        "accidents.csv",
        "balances.csv",
        "expenditures.csv",
        "input-errors.csv",
    ] {
        let read = |out: &str| std::fs::read(dir.join(out).join(file)).unwrap();
        assert!(
            read(OUT[0]) == read(OUT[1]),
            "{file} differs between the modes"
        );
    }
    one
}

fn assert_validates(dir: &Path) {
    let report = validate(&ValidateOptions {
        input: dir.join("input.csv"),
        tolls: dir.join("historical-tolls.csv"),
        out_dir: dir.join(OUT[0]),
        speedup: 1.0,
        max_differences: 10,
        bad_input: BadInput::Skip,
    })
    .unwrap();
    assert!(report.passed(), "{report}");
}

#[test]
fn generated_input_validates_with_accidents_and_tolls() {
    let dir = scratch("generated");
    let mut options = GenerateOptions::new(&dir);
    options.xways = 2;
    options.seed = 5;
    options.duration_secs = 1_500;
    generate(&options, &mut |_| {}).unwrap();
    let summary = baseline_both_ways(&dir);
    assert!(summary.tuples > 10_000, "{summary:?}");
    assert!(summary.alerts > 0, "no accident alert: {summary:?}");
    assert!(
        summary.balances > 0 && summary.expenditures > 0,
        "{summary:?}"
    );
    let charged = std::fs::read_to_string(dir.join("out/tolls.csv"))
        .unwrap()
        .lines()
        .filter(|row| !row.ends_with(",0"))
        .count();
    assert!(charged > 0, "no toll was charged: {summary:?}");
    assert_validates(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_lines_are_skipped_as_the_validator_skips_them() {
    let dir = scratch("bad-lines");
    let input = [
        "0,0,1,30,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
        "0,0,2,30,0,1,0,10,53320,-1,-1,-1,-1,-1,-1",
        "0,30,1,101,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
        "0,60,1,30,0,0,0,11,53320,-1,-1,-1,-1,-1,-1",
        "garbage",
        "",
        "2,61,1,-1,-1,-1,-1,-1,-1,7,-1,-1,-1,-1,-1",
        "2,40,1,-1,-1,-1,-1,-1,-1,8,-1,-1,-1,-1,-1",
        "3,62,1,-1,0,-1,-1,-1,-1,9,-1,-1,-1,-1,3",
        "3,62,1,-1,0,-1,-1,-1,-1,10,-1,-1,-1,-1,0",
        "0,90,1,30,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
    ];
    std::fs::write(dir.join("input.csv"), input.join("\n")).unwrap();
    std::fs::write(dir.join("historical-tolls.csv"), "1,3,0,17\n").unwrap();
    let summary = baseline_both_ways(&dir);
    assert_eq!(summary.tuples, 10);
    assert_eq!(summary.skipped, 4, "{summary:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("out/expenditures.csv")).unwrap(),
        "3,62,62,9,17\n"
    );
    assert_validates(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_tolls_file_names_its_line() {
    let dir = scratch("wrong-tolls");
    std::fs::write(dir.join("input.csv"), "").unwrap();
    std::fs::write(dir.join("historical-tolls.csv"), "1,3,0,17\n1,3,0,18\n").unwrap();
    let err = run(
        &BaselineOptions {
            input: dir.join("input.csv"),
            tolls: dir.join("historical-tolls.csv"),
            out_dir: dir.join("out"),
            parse_thread: false,
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_input_that_cannot_be_read_is_reported_by_either_mode() {
    let dir = scratch("unreadable");
    // A directory opens as a file but fails the first read.
    std::fs::create_dir(dir.join("input.csv")).unwrap();
    std::fs::write(dir.join("historical-tolls.csv"), "").unwrap();
    for parse_thread in [false, true] {
        let err = run(
            &BaselineOptions {
                input: dir.join("input.csv"),
                tolls: dir.join("historical-tolls.csv"),
                out_dir: dir.join("out"),
                parse_thread,
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, BaselineError::Read { ref path, .. } if path.ends_with("input.csv")),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
