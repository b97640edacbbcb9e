//! `validate()` end to end on a tiny run written to disk.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::Input;
use lrb_reference::validate::{
    validate, BadInput, Rule, ValidateError, ValidateOptions, ValidationReport,
};

const SEG_FEET: u32 = 5280;

/// A fresh directory for one test.
fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("validate-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("out")).unwrap();
    dir
}

/// A run with a toll, an accident, balance queries and expenditures, whose
/// correct output files are written next to it.
fn tiny_run(name: &str) -> ValidateOptions {
    let dir = test_dir(name);
    let mut input = Input::default();
    input.crowd(1, 60, 48, 5, 270);
    let place = 50 * SEG_FEET + 1000;
    input
        .stopped(200, 0, 6, 1, 0, place)
        .stopped(201, 10, 6, 1, 0, place);
    input.report(60, 300, 5, 1, 0, 48 * SEG_FEET + 1); // toll 200
    input.report(90, 300, 5, 1, 0, 49 * SEG_FEET + 1); // no toll: NOV 0
    input.report(120, 301, 5, 1, 0, 48 * SEG_FEET + 1); // alert, toll 0
    input.balance(100, 300, 0).balance(130, 301, 1);
    input
        .expenditure(140, 300, 0, 2, 5)
        .expenditure(140, 300, 0, 3, 0);
    fs::write(dir.join("input.csv"), input.text()).unwrap();
    fs::write(dir.join("history.csv"), "300,5,0,17\n").unwrap();
    // The 60 crowd cars and the two stopped cars entered at t = 0 or 10.
    let mut tolls: Vec<String> = (1..=60).map(|vid| format!("0,{vid},0,1,-1,0")).collect();
    tolls.push("0,200,0,2,-1,0".into());
    tolls.push("0,201,10,12,-1,0".into());
    tolls.push("0,300,60,61,5,200".into());
    tolls.push("0,300,90,91,-1,0".into());
    tolls.push("0,301,120,121,5,0".into());
    tolls.reverse(); // any order is fine
    write_rows(&dir, "tolls.csv", &tolls);
    write_rows(&dir, "accidents.csv", &["1,120,121,301,50"]);
    // Query 0 (car 300 at 100): car 300 was notified at 60 (balance 0
    // before it) and 90 (balance 200, the toll of 60); 90 is the latest in
    // [70, 100], 60 the one before and the earliest in [40, 100], so
    // (60, 0) and (90, 200) are accepted. Query 1 (car 301 at 130): its
    // only notification, at 120: (120, 0).
    write_rows(
        &dir,
        "balances.csv",
        &["2,100,101,0,60,0", "2,130,131,1,120,0"],
    );
    write_rows(&dir, "expenditures.csv", &["3,140,141,2,17"]);
    ValidateOptions {
        input: dir.join("input.csv"),
        tolls: dir.join("history.csv"),
        out_dir: dir.join("out"),
        speedup: 1.0,
        max_differences: 10,
        bad_input: BadInput::Skip,
    }
}

fn write_rows(dir: &Path, file: &str, rows: &[impl AsRef<str>]) {
    let text: String = rows.iter().map(|r| format!("{}\n", r.as_ref())).collect();
    fs::write(dir.join("out").join(file), text).unwrap();
}

fn rewrite(opts: &ValidateOptions, file: &str, edit: impl FnOnce(String) -> String) {
    let path = opts.out_dir.join(file);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, edit(text)).unwrap();
}

fn run(opts: &ValidateOptions) -> ValidationReport {
    validate(opts).expect("validation runs")
}

#[test]
fn the_correct_answers_pass() {
    let report = run(&tiny_run("pass"));
    assert!(report.passed(), "{report}");
    assert_eq!(report.tolls.expected, 65);
    assert_eq!(report.tolls.actual, 65);
    assert_eq!(
        (report.accidents.expected, report.balances.expected),
        (1, 2)
    );
    assert_eq!(report.expenditures.expected, 1);
    assert_eq!(report.tolls.latency.max_secs, Some(2.0));
    assert_eq!(report.tolls.latency.over_deadline, 0);
    let text = report.to_string();
    assert!(text.starts_with("Linear Road validation PASSED"), "{text}");
    assert!(text.contains("tolls"), "{text}");
    assert!(
        text.contains("max 2.000 s, 0 over the 5 s deadline"),
        "{text}"
    );
    // The CLI can print the report as JSON.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tolls"]["expected"], 65);
    assert_eq!(json["expenditures"]["latency"]["deadline_secs"], 10.0);
}

#[test]
fn a_missing_toll_row_fails_and_is_shown() {
    let opts = tiny_run("missing");
    rewrite(&opts, "tolls.csv", |t| t.replace("0,300,60,61,5,200\n", ""));
    let report = run(&opts);
    assert!(!report.passed());
    assert_eq!((report.tolls.missing, report.tolls.unexpected), (1, 0));
    assert_eq!(
        report.tolls.differences,
        vec!["missing toll notification: VID 300, Time 60, LAV 5, Toll 200"]
    );
    let text = report.to_string();
    assert!(text.starts_with("Linear Road validation FAILED"), "{text}");
    assert!(
        text.contains("tolls: missing toll notification: VID 300"),
        "{text}"
    );
}

#[test]
fn an_altered_row_is_both_missing_and_unexpected() {
    let opts = tiny_run("altered");
    rewrite(&opts, "accidents.csv", |t| t.replace("301,50", "301,49"));
    let report = run(&opts);
    assert!(!report.passed());
    assert_eq!(
        (report.accidents.missing, report.accidents.unexpected),
        (1, 1)
    );
    assert_eq!(
        report.accidents.differences,
        vec![
            "unexpected accident alert at accidents.csv line 1: Time 120, VID 301, Seg 49",
            "missing accident alert: Time 120, VID 301, Seg 50",
        ]
    );
    assert!(report.tolls.missing == 0 && report.tolls.unexpected == 0);
}

#[test]
fn a_duplicated_row_is_unexpected() {
    let opts = tiny_run("duplicate");
    rewrite(&opts, "expenditures.csv", |t| t.repeat(2));
    let report = run(&opts);
    assert_eq!(
        (report.expenditures.missing, report.expenditures.unexpected),
        (0, 1)
    );
    assert_eq!(report.expenditures.actual, 2);
}

#[test]
fn balance_answers_inside_the_accepted_set_pass_and_others_fail_by_rule() {
    let opts = tiny_run("balances");
    rewrite(&opts, "balances.csv", |t| {
        t.replace("2,100,101,0,60,0", "2,100,101,0,90,200")
    });
    assert!(run(&opts).passed());
    // The query's own Time is not a notification: the ResultTime rule.
    rewrite(&opts, "balances.csv", |t| {
        t.replace("2,100,101,0,90,200", "2,100,101,0,100,200")
    });
    let report = run(&opts);
    assert_eq!(
        (report.balances.missing, report.balances.unexpected),
        (1, 1)
    );
    let broken = &report.balances.broken_rules;
    assert_eq!(broken.len(), 1);
    assert_eq!((broken[0].rule, broken[0].count), (Rule::ResultTime, 1));
    assert!(
        broken[0].examples[0].contains("accepted (ResultTime, Bal) {(60, 0), (90, 200)}"),
        "{broken:?}"
    );
    // The right ResultTime with the toll of its own notification added:
    // the balance rule.
    rewrite(&opts, "balances.csv", |t| {
        t.replace("2,100,101,0,100,200", "2,100,101,0,60,200")
    });
    let report = run(&opts);
    let broken = &report.balances.broken_rules;
    assert_eq!((broken[0].rule, broken[0].count), (Rule::Balance, 1));
    assert!(
        broken[0].examples[0]
            .starts_with("balances.csv line 1: Time 100, QID 0, ResultTime 60, Bal 200"),
        "{broken:?}"
    );
    let text = report.to_string();
    assert!(
        text.contains("balance as of ResultTime (accountBalanceAnswer.pl): 1 answer(s)"),
        "{text}"
    );
}

#[test]
fn a_wrong_lav_and_a_wrong_toll_are_reported_by_rule() {
    let opts = tiny_run("toll-rules");
    rewrite(&opts, "tolls.csv", |t| {
        t.replace("0,300,60,61,5,200", "0,300,60,61,4,200")
            .replace("0,301,120,121,5,0", "0,301,120,121,5,8")
    });
    let report = run(&opts);
    assert!(!report.passed());
    let rules: Vec<(Rule, u64)> = report
        .tolls
        .broken_rules
        .iter()
        .map(|f| (f.rule, f.count))
        .collect();
    assert_eq!(rules, vec![(Rule::Lav, 1), (Rule::Toll, 1)]);
    let lav = &report.tolls.broken_rules[0].examples[0];
    assert!(
        lav.ends_with("VID 300, Time 60: LAV 4, Toll 200; expected LAV 5, Toll 200"),
        "{lav}"
    );
    let text = report.to_string();
    assert!(text.contains("LAV (extractLavs.pl): 1 answer(s)"), "{text}");
}

#[test]
fn a_balance_answered_twice_or_never_fails() {
    let opts = tiny_run("balance-twice");
    rewrite(&opts, "balances.csv", |t| {
        t.replace("2,130,131,1,120,0", "2,100,101,0,90,200")
    });
    let report = run(&opts);
    assert_eq!(
        (report.balances.missing, report.balances.unexpected),
        (1, 1)
    );
    let d = &report.balances.differences;
    assert!(d[0].contains("already answered"), "{d:?}");
    assert!(
        d[1].starts_with("missing account balance: Time 130, VID 301, QID 1"),
        "{d:?}"
    );
}

#[test]
fn a_malformed_output_row_is_a_difference_with_its_line() {
    let opts = tiny_run("malformed");
    rewrite(&opts, "tolls.csv", |t| {
        format!("{t}0,1,2,3\n0,a,2,3,4,5\n1,1,2,3,4,5\n")
    });
    let report = run(&opts);
    assert_eq!((report.tolls.missing, report.tolls.unexpected), (0, 3));
    let d = &report.tolls.differences;
    assert!(
        d[0].contains("tolls.csv line 66: expected 6 comma-separated fields"),
        "{d:?}"
    );
    assert!(
        d[1].contains("tolls.csv line 67: field 2 (VID) is not an integer"),
        "{d:?}"
    );
    assert!(
        d[2].contains("tolls.csv line 68: the first column (Type) is 1"),
        "{d:?}"
    );
}

#[test]
fn latency_is_scaled_by_the_speedup_and_never_fails_validation() {
    let mut opts = tiny_run("latency");
    rewrite(&opts, "expenditures.csv", |_| "3,140,164,2,17\n".into());
    let report = run(&opts);
    assert!(report.passed());
    assert_eq!(report.expenditures.latency.max_secs, Some(24.0));
    assert_eq!(report.expenditures.latency.over_deadline, 1);
    assert!(report.to_string().contains("1 over the 10 s deadline"));
    opts.speedup = 4.0;
    let report = run(&opts);
    assert_eq!(report.expenditures.latency.max_secs, Some(6.0));
    assert_eq!(report.expenditures.latency.over_deadline, 0);
}

#[test]
fn few_differences_are_kept_but_all_are_counted() {
    let mut opts = tiny_run("limit");
    opts.max_differences = 2;
    fs::write(opts.out_dir.join("tolls.csv"), "").unwrap();
    let report = run(&opts);
    assert_eq!(report.tolls.missing, 65);
    assert_eq!(report.tolls.differences.len(), 2);
    assert!(report.to_string().contains("tolls: ... and 63 more"));
}

#[test]
fn setup_problems_are_errors_that_say_what_to_do() {
    let opts = tiny_run("errors");
    let balances = opts.out_dir.join("balances.csv");
    let kept = fs::read(&balances).unwrap();
    fs::remove_file(&balances).unwrap();
    let err = validate(&opts).unwrap_err();
    assert!(
        matches!(&err, ValidateError::MissingOutput { path } if path.ends_with("balances.csv"))
    );
    assert!(err.to_string().contains("must write tolls.csv"), "{err}");
    fs::write(&balances, kept).unwrap();

    let mut bad = opts.clone();
    bad.speedup = 0.0;
    let err = validate(&bad).unwrap_err();
    assert!(err.to_string().contains("positive number"), "{err}");

    let mut bad = opts.clone();
    bad.input = opts.input.with_file_name("nowhere.csv");
    let err = validate(&bad).unwrap_err();
    assert!(err.to_string().contains("nowhere.csv"), "{err}");

    rewrite_input(&opts, |t| t.replacen("0,0,1,5,", "0,0,1,500,", 1));
    let mut stop = opts.clone();
    stop.bad_input = BadInput::Stop;
    let err = validate(&stop).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("input.csv, line 1: Spd 500"), "{text}");
}

#[test]
fn bad_input_lines_are_skipped_and_listed() {
    let opts = tiny_run("skip-bad-input");
    // Car 1's first report gets a negative speed: the line is skipped, so
    // car 1 first enters at 30 and its notification at 0 is unexpected.
    rewrite_input(&opts, |t| t.replacen("0,0,1,5,", "0,0,1,-1,", 1));
    rewrite(&opts, "tolls.csv", |t| {
        t.replace("0,1,0,1,-1,0\n", "0,1,30,31,-1,0\n")
    });
    let report = run(&opts);
    assert!(report.passed(), "{report}");
    assert_eq!(report.skipped_input.count, 1);
    assert_eq!(report.skipped_input.lines[0].line, 1);
    let text = report.to_string();
    assert!(text.contains("Skipped 1 bad input line(s)"), "{text}");
    assert!(text.contains("line 1: Spd -1 is out of range"), "{text}");
}

fn rewrite_input(opts: &ValidateOptions, edit: impl FnOnce(String) -> String) {
    let text = fs::read_to_string(&opts.input).unwrap();
    fs::write(&opts.input, edit(text)).unwrap();
}
