//! The connectors driven directly: what they read and write, and that a
//! checkpoint taken anywhere restores to exactly the same continuation.

use std::path::PathBuf;
use std::time::Instant;

use super::*;
use crate::api::window::Timed;
use crate::api::{InstanceContext, Sink, Source, SourceStep};
use crate::state::KeyRange;

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-connectors-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn context(parallelism: u32, index: u32, restoring: bool) -> InstanceContext {
    InstanceContext {
        operator: "write".into(),
        instance: index,
        index,
        parallelism,
        key_range: KeyRange::FULL,
        restoring,
        incarnation: crate::ids::Incarnation::default(),
    }
}

/// Everything `source` emits until it is done, waiting when it asks to.
fn drain<S: Source>(source: &mut S) -> Vec<S::Out> {
    let mut out = Vec::new();
    loop {
        match source.next().unwrap() {
            SourceStep::Emit(value) => out.push(value),
            SourceStep::WaitUntil(due) => {
                std::thread::sleep(due.saturating_duration_since(Instant::now()))
            }
            SourceStep::Done => return out,
        }
    }
}

/// Takes `taken` tuples from `make()`, checkpoints, restores a fresh
/// source there and checks it emits the rest of a full run.
fn restores_everywhere<S: Source>(make: impl Fn() -> S)
where
    S::Out: PartialEq + std::fmt::Debug,
{
    let full = drain(&mut make());
    for taken in 0..=full.len() {
        let mut first = make();
        let mut got = Vec::new();
        while got.len() < taken {
            match first.next().unwrap() {
                SourceStep::Emit(value) => got.push(value),
                SourceStep::WaitUntil(_) => {}
                SourceStep::Done => break,
            }
        }
        let position = first.checkpoint().unwrap().expect("a position");
        let mut restored = make();
        restored.restore(&position).unwrap();
        got.extend(drain(&mut restored));
        assert_eq!(got, full, "restored after {taken} tuples");
    }
}

fn number(line: &str) -> Result<u32, String> {
    line.trim().parse().map_err(|e| format!("`{line}`: {e}"))
}

#[test]
fn a_file_source_reads_every_line_and_restores_by_offset() {
    let dir = scratch("file");
    let path = dir.join("in.txt");
    std::fs::write(&path, "one\r\ntwo\n\nthree").unwrap();
    assert_eq!(
        drain(&mut FileSource::lines(&path).unwrap()),
        ["one", "two", "", "three"]
    );
    restores_everywhere(|| FileSource::lines(&path).unwrap());
}

#[test]
fn bad_records_are_skipped_and_counted_or_stop_the_job_with_their_line() {
    let dir = scratch("bad");
    let path = dir.join("in.txt");
    std::fs::write(&path, b"1\nx\n2\n\xff\xfe\n3\n").unwrap();
    let mut skipping = FileSource::parsed(&path, number).unwrap();
    assert_eq!(drain(&mut skipping), [1, 2, 3]);
    assert_eq!(skipping.skipped(), 2);
    restores_everywhere(|| FileSource::parsed(&path, number).unwrap());

    let mut stopping = FileSource::parsed(&path, number)
        .unwrap()
        .on_bad_records(BadRecords::Stop);
    assert!(matches!(stopping.next().unwrap(), SourceStep::Emit(1)));
    let err = stopping.next().err().expect("line 2 stops the source");
    assert!(err.0.contains("in.txt line 2: bad record: `x`"), "{err}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = FileSource::lines("/nonexistent/spate/input.txt")
        .err()
        .expect("no such file");
    assert!(err
        .0
        .contains("cannot open the input file /nonexistent/spate/input.txt"));
}

#[test]
fn json_lines_round_trip_through_the_sink_and_the_source() {
    let dir = scratch("json");
    let path = dir.join("out.jsonl");
    let mut sink = JsonLinesSink::create(&path, &context(1, 0, false)).unwrap();
    for pair in [("a".to_string(), 1u32), ("b, \"c\"".to_string(), 2)] {
        sink.write(pair).unwrap();
    }
    sink.finish().unwrap();
    let back: Vec<(String, u32)> = drain(&mut FileSource::json_lines(&path).unwrap());
    assert_eq!(back, [("a".into(), 1), ("b, \"c\"".into(), 2)]);
}

#[test]
fn a_directory_source_reads_files_in_name_order_as_they_appear() {
    let dir = scratch("dir");
    std::fs::write(dir.join("b.log"), "3\n4\n").unwrap();
    std::fs::write(dir.join("a.log"), "1\nbad\n2\n").unwrap();
    std::fs::write(dir.join(".partial"), "99\n").unwrap();
    let mut source = DirectorySource::parsed(&dir, number).end_marker("END");
    let mut got = Vec::new();
    while got.len() < 4 {
        match source.next().unwrap() {
            SourceStep::Emit(n) => got.push(n),
            step => panic!(
                "four records are there: {}",
                matches!(step, SourceStep::Done)
            ),
        }
    }
    // Nothing more yet: the source waits for files rather than ending.
    assert!(matches!(source.next().unwrap(), SourceStep::WaitUntil(_)));
    std::fs::write(dir.join("c.log"), "5\n").unwrap();
    // Too late: named before a file already read.
    std::fs::write(dir.join("a0.log"), "100\n").unwrap();
    std::fs::write(dir.join("END"), "").unwrap();
    got.extend(drain(&mut source));
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert_eq!(source.skipped(), 1);
    std::fs::remove_file(dir.join("a0.log")).unwrap();
    restores_everywhere(|| DirectorySource::parsed(&dir, number).end_marker("END"));
}

#[test]
fn a_generator_is_paced_and_restores_by_sequence_number() {
    let started = Instant::now();
    let made = drain(&mut Generator::new(|n| n * 2).rate(200.0).limit(40));
    assert_eq!(made, (0..40).map(|n| n * 2).collect::<Vec<u64>>());
    // The 40th tuple is due 39/200 s after the first: pacing is a floor.
    assert!(started.elapsed().as_secs_f64() >= 39.0 / 200.0);
    restores_everywhere(|| Generator::new(|n| n * 2).limit(20));
}

#[test]
fn event_time_sends_progress_and_restores_with_its_clock() {
    let times = || Generator::new(|n| n * 300 + n % 2).limit(12);
    let timed = drain(&mut EventTime::new(times(), 1_000, |t: &u64| *t));
    let events: Vec<u64> = timed
        .iter()
        .filter_map(|e| match e {
            Timed::Event { time, .. } => Some(*time),
            _ => None,
        })
        .collect();
    assert_eq!(events, drain(&mut times()));
    let progress: Vec<(u64, u64)> = timed
        .iter()
        .filter_map(|e| match e {
            Timed::Progress { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(progress, [(0, 1_000), (1_000, 2_000), (2_000, 3_000)]);
    assert_eq!(
        timed.last(),
        Some(&Timed::End {
            from: 3_000,
            last: 3_301
        })
    );
    restores_everywhere(|| EventTime::new(times(), 1_000, |t: &u64| *t));
}

#[test]
fn event_time_promises_nothing_before_the_first_event() {
    let unix = Generator::new(|n| 1_764_000_000_000 + n * 700).limit(3);
    let timed = drain(&mut EventTime::new(unix, 1_000, |t: &u64| *t));
    let start = 1_764_000_000_000;
    assert_eq!(
        timed,
        [
            Timed::Event {
                time: start,
                value: start
            },
            Timed::Event {
                time: start + 700,
                value: start + 700
            },
            Timed::Progress {
                from: start,
                to: start + 1_000
            },
            Timed::Event {
                time: start + 1_400,
                value: start + 1_400
            },
            Timed::End {
                from: start + 1_000,
                last: start + 1_400
            },
        ]
    );
}

#[test]
fn an_event_older_than_the_progress_promised_is_an_error() {
    let backwards = Generator::new(|n| [0u64, 1_500, 900][n as usize]).limit(3);
    let mut timed = EventTime::new(backwards, 1_000, |t: &u64| *t);
    for _ in 0..3 {
        timed.next().unwrap();
    }
    let err = timed.next().err().expect("900 ms after promising 1000 ms");
    assert!(err.0.contains("an event at 900 ms came after"), "{err}");
}

/// Writes `records` through a sink made by `make`, with a checkpoint after
/// `at`, and a failure after `crash`; a restored sink then writes the rest.
/// The file must hold exactly the records, once each.
fn sink_is_exactly_once<S: Sink<In = (String, u64)>>(
    make: impl Fn(&InstanceContext) -> S,
    records: &[(String, u64)],
    at: usize,
    crash: usize,
) {
    let mut sink = make(&context(1, 0, false));
    for record in &records[..at] {
        sink.write(record.clone()).unwrap();
    }
    let checkpoint = sink.checkpoint().unwrap();
    for record in &records[at..crash] {
        sink.write(record.clone()).unwrap();
    }
    // The crash: what was written after the checkpoint may or may not
    // have reached the file.
    drop(sink);
    let mut restored = make(&context(1, 0, true));
    restored.restore(&checkpoint).unwrap();
    for record in &records[at..] {
        restored.write(record.clone()).unwrap();
    }
    restored.finish().unwrap();
}

#[test]
fn file_sinks_truncate_to_their_checkpoint_on_restore() {
    let dir = scratch("sinks");
    let records: Vec<(String, u64)> = (0..50)
        .map(|n| (format!("word {n}, \"quoted\""), n))
        .collect();
    let csv = dir.join("out.csv");
    let jsonl = dir.join("out.jsonl");
    let clean_csv: String = records
        .iter()
        .map(|(w, n)| format!("\"{}\",{n}\n", w.replace('"', "\"\"")))
        .collect();
    let clean_jsonl: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    for (at, crash) in [(0, 0), (0, 30), (20, 20), (20, 50), (50, 50)] {
        sink_is_exactly_once(
            |ctx| CsvSink::create(&csv, ctx).unwrap(),
            &records,
            at,
            crash,
        );
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), clean_csv);
        sink_is_exactly_once(
            |ctx| JsonLinesSink::create(&jsonl, ctx).unwrap(),
            &records,
            at,
            crash,
        );
        assert_eq!(std::fs::read_to_string(&jsonl).unwrap(), clean_jsonl);
    }
    // A restore from before any checkpoint starts the file again.
    let mut restored = CsvSink::<(String, u64)>::create(&csv, &context(1, 0, true)).unwrap();
    restored.restore(&[]).unwrap();
    restored.finish().unwrap();
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "");
}

#[test]
fn a_sink_of_several_instances_writes_one_file_each() {
    let dir = scratch("parallel");
    let path = dir.join("out.csv");
    for index in 0..2 {
        let mut sink = CsvSink::create(&path, &context(2, index, false)).unwrap();
        sink.write((index, "x".to_string())).unwrap();
        sink.finish().unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("out.csv.0")).unwrap(),
        "0,x\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out.csv.1")).unwrap(),
        "1,x\n"
    );
}

#[test]
fn the_stdout_sink_checkpoints_nothing_to_restore() {
    let mut sink = StdoutSink::new(&context(1, 0, false));
    sink.write(7u32).unwrap();
    assert_eq!(sink.checkpoint().unwrap(), Vec::<u8>::new());
}
