//! The tutorial's query end to end, as its README section runs it: on a
//! local cluster of `top-pages` worker processes, once without failures
//! and once with two workers killed and the running totals split, and
//! the answers of both compared with each other and with the top pages
//! computed here directly.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Pages of the generated log; visits favour the first ones.
const PAGES: [&str; 14] = [
    "/",
    "/docs",
    "/blog",
    "/pricing",
    "/about",
    "/docs/install",
    "/docs/api",
    "/blog/1",
    "/blog/2",
    "/careers",
    "/login",
    "/signup",
    "/faq",
    "/contact",
];

/// Lines of the log: 12,000 visits 25 ms of event time apart (five
/// minutes), with a few bad lines the source must skip.
fn log() -> String {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = String::new();
    for n in 0..12_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Skewed: page i with weight about 1/(i+1).
        let page =
            PAGES[((x % 1_000) as usize * (x % 1_000) as usize / 1_000 * PAGES.len()) / 1_000];
        let time = 1_764_000_000_000 + n * 25;
        out.push_str(&format!("{time} {page} user{}\n", (x >> 20) % 50));
        if n % 4_000 == 1_234 {
            out.push_str("this line is not a visit\n");
        }
    }
    out
}

/// The expected `top.csv`: per minute, the ten most visited pages (most
/// visits first, then by name).
fn expected_top(log: &str) -> String {
    let mut minutes: BTreeMap<u64, BTreeMap<&str, u64>> = BTreeMap::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Ok(time) = fields[0].parse::<u64>() else {
            continue;
        };
        *minutes
            .entry(time / 60_000 * 60_000)
            .or_default()
            .entry(fields[1])
            .or_default() += 1;
    }
    let mut out = String::new();
    for (minute, pages) in minutes {
        let mut ranked: Vec<(&str, u64)> = pages.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (rank, (page, visits)) in ranked.into_iter().take(10).enumerate() {
            out.push_str(&format!("{minute},{},{page},{visits}\n", rank + 1));
        }
    }
    out
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `top-pages run top-pages` on `input` with `flags`, writing into
/// `dir`; ends it and fails after `limit`.
fn run(input: &Path, dir: &Path, flags: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_top-pages"))
        .args(["run", "top-pages"])
        .arg(format!("--param=input={}", input.display()))
        .arg(format!("--param=top={}", dir.join("top.csv").display()))
        .arg(format!(
            "--param=totals={}",
            dir.join("totals.csv").display()
        ))
        .arg("--param=lines_per_sec=2000")
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start top-pages");
    // Read both pipes while it runs, so a chatty run cannot block on them.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        stdout.read_to_end(&mut text).map(|_| text)
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        stderr.read_to_end(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("top-pages did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap(),
        stderr: err.join().unwrap().unwrap(),
    }
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_tutorial_query_gives_the_same_answers_through_kills_and_a_split() {
    let dir = scratch("first-query");
    let input = dir.join("access.log");
    let log = log();
    std::fs::write(&input, &log).unwrap();
    let limit = Duration::from_secs(240);

    let clean_dir = dir.join("clean");
    std::fs::create_dir_all(&clean_dir).unwrap();
    let clean = run(&input, &clean_dir, &["--workers=2"], limit);
    let stderr = String::from_utf8_lossy(&clean.stderr);
    assert!(clean.status.success(), "{stderr}");
    // The four bad lines were skipped, each reported with its line number.
    assert!(
        stderr.contains("access.log line 1236: skipped a bad record"),
        "{stderr}"
    );
    let top = read(clean_dir.join("top.csv"));
    assert_eq!(top, expected_top(&log));
    let totals = read(clean_dir.join("totals.csv"));
    assert_eq!(totals.lines().count(), 12_000);

    // The paced input lasts six seconds at least, whatever the load, so
    // every kill and the split fall inside the run.
    let faulty_dir = dir.join("faulty");
    std::fs::create_dir_all(&faulty_dir).unwrap();
    let faulty = run(
        &input,
        &faulty_dir,
        &[
            "--workers=3",
            "--pool=3",
            "--checkpoint-ms=100",
            "--heartbeat-timeout-ms=1000",
            "--startup-timeout-secs=60",
            "--kill=1:count:0",
            "--scale=2:totals",
            "--kill=3:write-top",
        ],
        limit,
    );
    let stdout = String::from_utf8_lossy(&faulty.stdout);
    assert!(
        faulty.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&faulty.stderr)
    );
    let lines = |prefix: &str| stdout.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(lines("recovered "), 2, "{stdout}");
    assert_eq!(lines("scaled out totals"), 1, "{stdout}");
    assert_eq!(read(faulty_dir.join("top.csv")), top);
    assert_eq!(read(faulty_dir.join("totals.csv")), totals);
}
