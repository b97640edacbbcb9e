//! The generator's output: deterministic, well-formed, and rich enough to
//! exercise every rule (checked with the reference rules themselves).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lrb_reference::generate::{generate, GenerateError, GenerateOptions, GenerateSummary};
use lrb_reference::validate::{expected_answers, BadInput};

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("generate-{name}"));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn run(name: &str, xways: u32, seed: u64, duration_secs: u32) -> (PathBuf, GenerateSummary) {
    let dir = out_dir(name);
    let opts = GenerateOptions {
        xways,
        seed,
        duration_secs,
        out_dir: dir.clone(),
    };
    let summary = generate(&opts, &mut |_| {}).expect("generation succeeds");
    (dir, summary)
}

/// The integers of a line, which must have exactly `N` fields. Hand-rolled
/// and allocation-free: the tests read millions of lines in debug builds.
fn numbers<const N: usize>(line: &str) -> [i64; N] {
    let mut values = [0i64; N];
    let mut count = 0;
    let mut negative = false;
    for &b in line.as_bytes().iter().chain(b",") {
        match b {
            b',' => {
                if negative {
                    values[count] = -values[count];
                }
                negative = false;
                count += 1;
            }
            b'-' => negative = true,
            b'0'..=b'9' => values[count] = values[count] * 10 + i64::from(b - b'0'),
            _ => panic!("not an integer field in {line:?}"),
        }
    }
    assert_eq!(count, N, "{line}");
    values
}

/// A 20-minute, one-expressway run, shared by the tests that inspect it.
struct Run {
    summary: GenerateSummary,
    input: String,
    history: String,
}

fn twenty_minutes() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let (dir, summary) = run("20min", 1, 42, 1_200);
        Run {
            summary,
            input: fs::read_to_string(dir.join("input.csv")).unwrap(),
            history: fs::read_to_string(dir.join("historical-tolls.csv")).unwrap(),
        }
    })
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let read = |dir: &Path| {
        (
            fs::read(dir.join("input.csv")).unwrap(),
            fs::read(dir.join("historical-tolls.csv")).unwrap(),
        )
    };
    let (a, sa) = run("seed-a", 1, 7, 300);
    let (b, sb) = run("seed-b", 1, 7, 300);
    let (c, _) = run("seed-c", 1, 8, 300);
    assert_eq!(sa, sb);
    assert!(read(&a) == read(&b), "same seed gave different files");
    assert!(
        read(&a).0 != read(&c).0,
        "different seeds gave the same input"
    );
    assert!(
        read(&a).1 != read(&c).1,
        "different seeds gave the same history"
    );
}

#[test]
fn lines_are_well_formed_and_in_time_order() {
    let run = twenty_minutes();
    let mut previous_time = 0;
    let mut counts = [0u64; 4];
    let mut next_qid = 0;
    for line in run.input.lines() {
        let v = numbers::<15>(line);
        let (kind, time) = (v[0], v[1]);
        assert!(time >= previous_time && time < 1_200, "{line}");
        previous_time = time;
        counts[kind as usize] += 1;
        match kind {
            0 => {
                let (spd, xway, lane, dir, seg, pos) = (v[3], v[4], v[5], v[6], v[7], v[8]);
                assert!((0..=100).contains(&spd) && xway == 0, "{line}");
                assert!((0..=4).contains(&lane) && (0..=1).contains(&dir), "{line}");
                assert!((0..=527_999).contains(&pos) && seg == pos / 5280, "{line}");
                assert!(v[9..].iter().all(|&f| f == -1), "{line}");
            }
            2 => {
                assert_eq!(v[9], next_qid, "{line}");
                next_qid += 1;
                assert!(v[3..9].iter().chain(&v[10..]).all(|&f| f == -1), "{line}");
            }
            3 => {
                assert_eq!(v[9], next_qid, "{line}");
                next_qid += 1;
                assert_eq!(v[4], 0, "{line}");
                assert!((0..=69).contains(&v[14]), "{line}");
            }
            _ => panic!("unexpected line type: {line}"),
        }
    }
    let s = &run.summary;
    assert_eq!(
        counts,
        [
            s.position_reports,
            0,
            s.balance_queries,
            s.expenditure_queries
        ]
    );
    assert_eq!(s.lines, counts.iter().sum::<u64>());
    let balance_share = s.balance_queries as f64 / s.lines as f64;
    let expenditure_share = s.expenditure_queries as f64 / s.lines as f64;
    assert!((0.004..0.006).contains(&balance_share), "{balance_share}");
    assert!(
        (0.0007..0.0013).contains(&expenditure_share),
        "{expenditure_share}"
    );
    // The load rises to busy traffic: far more reports late than early.
    let early = run
        .input
        .lines()
        .take_while(|l| numbers::<15>(l)[1] < 60)
        .count();
    assert!(
        (150 * 60..300 * 60).contains(&early),
        "{early} lines in the first minute"
    );
    assert!(s.lines > 1_500_000, "{s:?}");
}

/// Last report of a car: (Time, Lane, Dir, Pos).
type Last = (i64, i64, i64, i64);

#[test]
fn cars_enter_drive_and_exit_by_the_rules() {
    let run = twenty_minutes();
    let mut last: HashMap<i64, Last> = HashMap::new();
    let (mut reentries, mut exits, mut stopped) = (0, 0, 0);
    for line in run.input.lines() {
        let v = numbers::<15>(line);
        let (time, vid) = (v[1], v[2]);
        if v[0] != 0 {
            // Queries are about cars that are or were on the road.
            assert!(last.contains_key(&vid), "{line}");
            continue;
        }
        let (spd, lane, dir, pos) = (v[3], v[5], v[6], v[8]);
        match last.get(&vid) {
            None => assert_eq!(lane, 0, "a car's first report is on the ramp: {line}"),
            Some(&(t0, 4, _, _)) => {
                assert!(
                    time - t0 >= 180,
                    "re-entry after only {} s: {line}",
                    time - t0
                );
                assert_eq!(lane, 0, "a re-entry starts on the ramp: {line}");
                reentries += 1;
            }
            Some(&(t0, _, dir0, pos0)) => {
                assert_eq!(time, t0 + 30, "reports every 30 s: {line}");
                assert_eq!(dir, dir0, "{line}");
                assert_ne!(lane, 0, "{line}");
                let moved = if dir == 0 { pos - pos0 } else { pos0 - pos };
                assert!(moved >= 0, "moving backwards: {line}");
                if spd > 0 && lane != 4 {
                    assert_eq!(moved, spd * 44, "moving at its speed: {line}");
                }
                if spd == 0 {
                    stopped += 1;
                }
            }
        }
        if lane == 4 {
            exits += 1;
        }
        last.insert(vid, (time, lane, dir, pos));
    }
    assert_eq!(last.len() as u64, run.summary.cars);
    assert!(
        exits > 1_000 && reentries > 100,
        "{exits} exits, {reentries} re-entries"
    );
    // About 10 % of exits come back (those late in the run have no time to).
    assert!(reentries * 100 > exits * 5 && reentries * 100 < exits * 12);
    assert!(stopped > 20, "{stopped} zero-speed reports");
}

#[test]
fn history_is_modest_unique_and_answers_every_query() {
    let run = twenty_minutes();
    let mut keys = HashSet::new();
    for line in run.history.lines() {
        let v = numbers::<4>(line);
        assert!(
            (1..=69).contains(&v[1]) && v[2] == 0 && (0..=99).contains(&v[3]),
            "{line}"
        );
        assert!(
            keys.insert((v[0], v[1], v[2])),
            "duplicate history line {line}"
        );
    }
    assert_eq!(keys.len() as u64, run.summary.history_lines);
    let per_car = keys.len() as f64 / run.summary.cars as f64;
    assert!(
        (4.0..8.0).contains(&per_car),
        "{per_car} history lines per car"
    );
    let mut day_zero = 0;
    for line in run.input.lines().filter(|l| l.starts_with("3,")) {
        let v = numbers::<15>(line);
        if v[14] == 0 {
            day_zero += 1;
        } else {
            assert!(keys.contains(&(v[2], v[14], v[4])), "no history for {line}");
        }
    }
    assert!(day_zero > 0, "no Day 0 query to drop");
}

#[test]
fn traffic_exercises_tolls_accidents_and_queries() {
    let run = twenty_minutes();
    let e = expected_answers(run.input.as_bytes(), run.history.as_bytes(), BadInput::Stop).unwrap();
    let tolled = e.tolls.iter().filter(|r| r.toll > 0).count();
    let slow = e.tolls.iter().filter(|r| (0..40).contains(&r.lav)).count();
    assert!(tolled > 10_000, "{tolled} tolls > 0");
    assert!(slow > 10_000, "{slow} notifications with LAV < 40");
    assert!(e.tolls.iter().filter(|r| r.lav >= 40).count() > 10_000);
    assert!(e.accidents.len() > 100, "{} alerts", e.accidents.len());
    let minutes: HashSet<u32> = e.accidents.iter().map(|a| a.time / 60).collect();
    assert!(
        minutes.len() >= 4,
        "alerts in only {} minutes",
        minutes.len()
    );
    assert_eq!(e.balances.len() as u64, run.summary.balance_queries);
    assert!(e.balances.iter().any(|q| q.accepted.len() > 1));
    assert!(
        e.balances
            .iter()
            .filter(|q| q.accepted.iter().any(|&(_, bal)| bal > 0))
            .count()
            > 100
    );
    let day_zero = run
        .input
        .lines()
        .filter(|l| l.starts_with("3,") && l.ends_with(",0"))
        .count();
    assert_eq!(
        e.expenditures.len() + day_zero,
        run.summary.expenditure_queries as usize
    );
    assert!(e.expenditures.iter().filter(|r| r.bal > 0).count() > 100);
}

#[test]
fn every_expressway_gets_its_own_cars() {
    let (dir, summary) = run("two-xways", 2, 3, 300);
    let input = fs::read_to_string(dir.join("input.csv")).unwrap();
    let mut xway_of: HashMap<i64, i64> = HashMap::new();
    let mut per_xway = [0u64; 2];
    for line in input.lines().filter(|l| l.starts_with("0,")) {
        let v = numbers::<15>(line);
        per_xway[v[4] as usize] += 1;
        assert_eq!(*xway_of.entry(v[2]).or_insert(v[4]), v[4], "{line}");
    }
    assert_eq!(xway_of.len() as u64, summary.cars);
    // Both expressways carry the same load shape.
    let ratio = per_xway[0] as f64 / per_xway[1] as f64;
    assert!((0.9..1.1).contains(&ratio), "{per_xway:?}");
    let expenditure_xways: HashSet<i64> = input
        .lines()
        .filter(|l| l.starts_with("3,"))
        .map(|l| numbers::<15>(l)[4])
        .collect();
    assert_eq!(expenditure_xways, HashSet::from([0, 1]));
}

#[test]
fn progress_is_reported_every_simulated_minute() {
    let dir = out_dir("progress");
    let mut seen = Vec::new();
    let opts = GenerateOptions {
        duration_secs: 150,
        ..GenerateOptions::new(&dir)
    };
    let summary = generate(&opts, &mut |p| {
        seen.push((p.sim_second, p.duration_secs, p.lines))
    })
    .unwrap();
    let seconds: Vec<u32> = seen.iter().map(|p| p.0).collect();
    assert_eq!(seconds, vec![0, 60, 120, 150]);
    assert!(seen.iter().all(|p| p.1 == 150));
    assert_eq!(seen[0].2, 0);
    assert!(seen[1].2 > 0 && seen[1].2 < seen[2].2);
    assert_eq!(seen[3].2, summary.lines);
}

#[test]
fn an_unwritable_output_directory_is_named() {
    let dir = out_dir("blocked");
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    fs::write(&dir, "a file, not a directory").unwrap();
    let err = generate(&GenerateOptions::new(dir.join("sub")), &mut |_| {}).unwrap_err();
    assert!(matches!(err, GenerateError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("generate-blocked"), "{err}");
    fs::remove_file(&dir).unwrap();
}
