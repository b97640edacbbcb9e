//! End to end: generate a Linear Road input, run the query on a local
//! multi-process cluster with a partitioned toll calculator, and check the
//! answers with the independent reference validator.

mod common;

use std::path::Path;
use std::time::Duration;

use common::lrb::{answers, generate, lrb_command, run_lrb, validate};
use common::{run_with_timeout, scratch, stderr};

fn run(dir: &Path, out: &str, speedup: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--workers", "3", "--speedup", speedup];
    args.extend_from_slice(extra);
    run_lrb(dir, out, &args)
}

#[test]
fn twenty_minutes_of_one_expressway_validate_with_a_partitioned_toll_calculator() {
    let dir = scratch("lrb-20min");
    generate(&dir, 7, 1200);
    let report = run(
        &dir,
        "out",
        "0",
        &[
            "--partitions",
            "toll_calculator=3",
            "--partitions",
            "toll_assessment=2",
            "--partitions",
            "forwarder=2",
        ],
    );
    assert_eq!(report["partitions"]["toll_calculator"], 3);
    assert_eq!(report["input_errors"], 0);
    let tolls = report["latency"]["tolls"]["count"].as_u64().unwrap();
    assert!(tolls > 100_000, "{report}");
    let stdout = validate(&dir, "out", "1");
    assert!(stdout.contains("PASSED"), "{stdout}");
    // The traffic exercised every rule: non-zero tolls and accidents.
    let tolls = std::fs::read_to_string(dir.join("out/tolls.csv")).unwrap();
    assert!(tolls.lines().any(|l| !l.ends_with(",0")));
    assert!(report["latency"]["accidents"]["count"].as_u64().unwrap() > 0);
    // The baseline, one thread or parsing on a second, gives the same
    // answers and prints its rate.
    for (mode, out) in [(None, "baseline"), (Some("--parse-thread"), "baseline-two")] {
        let args: Vec<&str> = std::iter::once("baseline").chain(mode).collect();
        let result = run_with_timeout(lrb_command(&args, &dir, out), Duration::from_secs(300));
        let stdout = String::from_utf8_lossy(&result.stdout);
        assert!(result.status.success(), "{}", stderr(&result));
        assert!(stdout.contains(" tuples/s"), "{stdout}");
        assert!(
            answers(&dir.join(out)) == answers(&dir.join("out")),
            "the answers of `lrb baseline {}` differ from the query's",
            mode.unwrap_or("")
        );
    }
}

#[test]
fn a_paced_run_meets_its_deadlines_and_validates() {
    let dir = scratch("lrb-paced");
    generate(&dir, 7, 120);
    let report = run(&dir, "out", "10", &[]);
    assert_eq!(report["deadline_misses"], 0, "{report}");
    // 120 simulated seconds at 10x take about 12 s of wall clock.
    let elapsed = report["elapsed_secs"].as_f64().unwrap();
    assert!((11.0..60.0).contains(&elapsed), "{elapsed}");
    let stdout = validate(&dir, "out", "10");
    assert!(stdout.contains("PASSED"), "{stdout}");
}

#[test]
fn malformed_input_lines_are_reported_with_line_numbers_and_skipped() {
    let dir = scratch("lrb-bad-input");
    let lines = [
        "0,0,1,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "0,0,2,50,0,1,0,10,53001",
        "0,1,3,150,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "0,2,4,50,0,1,0,12,53000,-1,-1,-1,-1,-1,-1",
        "0,3,5,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "0,1,6,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "zero,3,7,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "2,4,1,-1,-1,-1,-1,-1,-1,9,-1,-1,-1,-1,-1",
    ];
    std::fs::write(dir.join("input.csv"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("historical-tolls.csv"), "1,1,0,5\n").unwrap();
    let report = run(&dir, "out", "0", &[]);
    assert_eq!(report["input_lines"], 8);
    assert_eq!(report["input_errors"], 5, "{report}");
    let errors = std::fs::read_to_string(dir.join("out/input-errors.csv")).unwrap();
    let numbers: Vec<&str> = errors
        .lines()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let mut numbers = numbers;
    numbers.sort();
    assert_eq!(numbers, ["2", "3", "4", "6", "7"], "{errors}");
    assert!(errors.contains("goes backwards"), "{errors}");
    assert!(errors.contains("Spd"), "{errors}");
    // The good lines were still answered.
    let tolls = std::fs::read_to_string(dir.join("out/tolls.csv")).unwrap();
    assert_eq!(tolls.lines().count(), 2, "{tolls}");
    let balances = std::fs::read_to_string(dir.join("out/balances.csv")).unwrap();
    assert!(balances.starts_with("2,4,"), "{balances}");
    // The validator skips the same lines and lists them.
    let (passed, stdout) = validation(&dir);
    assert!(passed, "{stdout}");
    assert!(stdout.contains("Skipped 5 bad input line(s)"), "{stdout}");
    for line in [
        "line 2:",
        "line 3: Spd 150",
        "line 4:",
        "line 6: Time 1",
        "line 7:",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    // With --stop-on-bad-input it stops at the first, as the run would.
    let command = lrb_command(&["validate", "--stop-on-bad-input"], &dir, "out");
    let result = run_with_timeout(command, Duration::from_secs(60));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("input.csv, line 2:"), "{err}");
}

#[test]
fn stop_on_bad_input_fails_the_run_at_the_first_bad_line() {
    let dir = scratch("lrb-bad-input-stop");
    let lines = [
        "0,0,1,50,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
        "0,1,3,150,0,1,0,10,53000,-1,-1,-1,-1,-1,-1",
    ];
    std::fs::write(dir.join("input.csv"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("historical-tolls.csv"), "1,1,0,5\n").unwrap();
    let command = lrb_command(
        &["run", "--speedup", "0", "--stop-on-bad-input"],
        &dir,
        "out",
    );
    let result = run_with_timeout(command, Duration::from_secs(60));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("input line 2: Spd = 150"), "{err}");
}

/// The hand-made inputs of the reference validator's tests.
#[path = "../../lrb-reference/tests/common/mod.rs"]
mod hand_made;

/// Runs the query on a hand-made input with partitioned keyed operators and
/// returns the run's directory (answers in `out`).
fn run_hand_made(name: &str, input: &hand_made::Input) -> std::path::PathBuf {
    let dir = scratch(name);
    std::fs::write(dir.join("input.csv"), input.text()).unwrap();
    std::fs::write(dir.join("historical-tolls.csv"), "").unwrap();
    run(
        &dir,
        "out",
        "0",
        &[
            "--partitions",
            "toll_calculator=2",
            "--partitions",
            "toll_assessment=2",
        ],
    );
    dir
}

/// The rows of `dir/out/file` with the Emit column (index `emit`) left out.
fn rows_without_emit(dir: &Path, file: &str, emit: usize) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("out").join(file)).unwrap();
    text.lines()
        .map(|l| {
            let mut fields: Vec<&str> = l.split(',').collect();
            fields.remove(emit);
            fields.join(",")
        })
        .collect()
}

/// `spate lrb validate` on `dir/out`: whether it passed, and what it printed.
fn validation(dir: &Path) -> (bool, String) {
    let command = lrb_command(&["validate"], dir, "out");
    let result = run_with_timeout(command, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    (result.status.success(), stdout)
}

#[test]
fn the_query_computes_lav_exactly_and_the_validator_rejects_floored_means() {
    // LAV(6) = trunc((39.5 + 39.75 + 40 + 39.75 + 40) / 5) = trunc(39.8) =
    // 39, NOV(6) = 60: toll 2 * (60 - 50)^2 = 200. The minute with one car:
    // car 2 entering at 60 sees LAV(2) = trunc(A(1)) = trunc(39.5) = 39.
    let dir = run_hand_made("lrb-lav-39-8", &hand_made::scenario::lav_at_39_8());
    let tolls = rows_without_emit(&dir, "tolls.csv", 3);
    assert!(tolls.contains(&"0,500,300,39,200".to_string()), "{tolls:?}");
    assert!(tolls.contains(&"0,2,60,39,0".to_string()), "{tolls:?}");
    assert!(validation(&dir).0);

    // Minutes 1 and 4 have reports in 1..=5: LAV(6) = trunc((30.5 + 49) / 2)
    // = 39; LAV(7) over 2..=6 = trunc((49 + 20) / 2) = 34. NOV <= 50: no toll.
    let dir = run_hand_made(
        "lrb-lav-empty-minutes",
        &hand_made::scenario::lav_with_empty_minutes(),
    );
    let tolls = rows_without_emit(&dir, "tolls.csv", 3);
    assert!(tolls.contains(&"0,500,300,39,0".to_string()), "{tolls:?}");
    assert!(tolls.contains(&"0,501,360,34,0".to_string()), "{tolls:?}");
    assert!(validation(&dir).0);

    // LAV(3) = trunc((39.5 + 40.5) / 2) = 40: no toll despite 60 cars.
    let dir = run_hand_made("lrb-lav-40", &hand_made::scenario::lav_at_40());
    let tolls = rows_without_emit(&dir, "tolls.csv", 3);
    assert!(tolls.contains(&"0,500,120,40,0".to_string()), "{tolls:?}");
    let (passed, stdout) = validation(&dir);
    assert!(passed, "{stdout}");

    // The old rule floored each mean: (39 + 40) / 2 -> LAV 39, toll 200.
    let path = dir.join("out/tolls.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let old: String = text
        .lines()
        .map(|l| match l.strip_suffix(",40,0") {
            Some(head) if l.starts_with("0,500,120,") => format!("{head},39,200\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    assert_ne!(old, text);
    std::fs::write(&path, old).unwrap();
    let (passed, stdout) = validation(&dir);
    assert!(!passed, "{stdout}");
    assert!(
        stdout.contains("LAV (extractLavs.pl): 1 answer(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("toll (from LAV and NOV): 1 answer(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("LAV 39, Toll 200; expected LAV 40, Toll 0"),
        "{stdout}"
    );
}

#[test]
fn the_query_answers_balances_as_of_a_notification_and_the_validator_rejects_the_old_rule() {
    let dir = run_hand_made("lrb-balances", &hand_made::scenario::balances());
    // Car 7's notifications, 200 each (60 cars at 10 mph): N1 at 60, N2 at
    // 120, N3 at 150, and N4 at 400 when it re-enters after exiting on lane 4.
    let tolls = rows_without_emit(&dir, "tolls.csv", 3);
    let car7: Vec<&String> = tolls.iter().filter(|r| r.starts_with("0,7,")).collect();
    assert_eq!(
        car7,
        [
            "0,7,60,10,200",
            "0,7,120,10,200",
            "0,7,150,10,200",
            "0,7,400,10,200"
        ]
    );
    // The query answers with the earliest notification in [t - 60, t] it
    // has seen, else the latest before, else (t, 0); the balance is the sum
    // of the tolls before that notification. (QID, ResultTime, Bal):
    let mut balances: Vec<String> = rows_without_emit(&dir, "balances.csv", 2)
        .iter()
        .map(|r| r.splitn(3, ',').nth(2).unwrap().to_string())
        .collect();
    balances.sort();
    assert_eq!(
        balances,
        [
            "1,50,0",    // t = 50: no notification yet
            "2,120,200", // t = 130, 10 s after N2: N2, after N1's 200
            "3,120,200", // t = 150, same second as N3: N2 is the earliest in [90, 150]
            "4,200,0",   // t = 200 before car 8's first notification's line
            "5,200,0",   // t = 200 after it: that notification, nothing before
            "6,150,400", // t = 300, 150 s after N3: N3, after 400
            "7,150,400", // t = 400 before N4's line: N3
        ]
    );
    let (passed, stdout) = validation(&dir);
    assert!(passed, "{stdout}");

    // The old rule: ResultTime = t and every toll of earlier lines, the
    // current segment's included. Q2 (130, 400) and Q6 (300, 600) name no
    // notification; Q3 (150, 600) and Q5 (200, 200) count the toll of the
    // notification they name. Q1, Q4 and Q7 (400, 600) happen to be accepted.
    let old = [
        (50, 1, 50, 0),
        (130, 2, 130, 400),
        (150, 3, 150, 600),
        (200, 4, 200, 0),
        (200, 5, 200, 200),
        (300, 6, 300, 600),
        (400, 7, 400, 600),
    ];
    let text: String = old
        .iter()
        .map(|(t, qid, rt, bal)| format!("2,{t},{t},{qid},{rt},{bal}\n"))
        .collect();
    std::fs::write(dir.join("out/balances.csv"), text).unwrap();
    let (passed, stdout) = validation(&dir);
    assert!(!passed, "{stdout}");
    assert!(
        stdout.contains("ResultTime (accountBalanceAnswer.pl): 2 answer(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("balance as of ResultTime (accountBalanceAnswer.pl): 2 answer(s)"),
        "{stdout}"
    );
}
