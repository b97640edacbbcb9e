//! Times the generator and the validator on one run, and prints what the
//! traffic produced, so a change to the traffic model or the rules can be
//! checked for speed and for coverage of every rule.
//!
//! `cargo run --release -p lrb-reference --example timing -- [DURATION_SECS] [XWAYS] [DIR]`
//! (defaults: 10800, 1, a folder under the system's temporary directory).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use lrb_reference::generate::{generate, GenerateOptions};
use lrb_reference::validate::{expected_answers, validate, BadInput, Expected, ValidateOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let duration_secs = args.next().map_or(Ok(10_800), |a| a.parse())?;
    let xways = args.next().map_or(Ok(1), |a| a.parse())?;
    let dir = args.next().map_or_else(
        || std::env::temp_dir().join("lrb-reference-timing"),
        PathBuf::from,
    );

    let opts = GenerateOptions {
        xways,
        seed: 1,
        duration_secs,
        out_dir: dir.clone(),
    };
    let started = Instant::now();
    let summary = generate(&opts, &mut |_| {})?;
    println!(
        "generate: {:.2} s for {} lines ({} reports, {} balance and {} expenditure queries, {} cars, {} history lines)",
        started.elapsed().as_secs_f64(),
        summary.lines,
        summary.position_reports,
        summary.balance_queries,
        summary.expenditure_queries,
        summary.cars,
        summary.history_lines
    );

    let input = dir.join("input.csv");
    let history = dir.join("historical-tolls.csv");
    let started = Instant::now();
    let expected = expected_answers(
        std::io::BufReader::new(File::open(&input)?),
        std::io::BufReader::new(File::open(&history)?),
        BadInput::Skip,
    )?;
    println!("expected answers: {:.2} s", started.elapsed().as_secs_f64());
    print_coverage(&expected);

    let out_dir = dir.join("answers");
    write_answers(&expected, &out_dir)?;
    // So that the peak memory reported for this process is validation's own.
    drop(expected);
    let started = Instant::now();
    let report = validate(&ValidateOptions {
        input,
        tolls: history,
        out_dir,
        speedup: 1.0,
        max_differences: 10,
        bad_input: BadInput::Skip,
    })?;
    println!(
        "validate (expected answers + compare): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    print!("{report}");
    Ok(())
}

/// How much of each rule the traffic exercised.
fn print_coverage(e: &Expected) {
    let tolled = e.tolls.iter().filter(|r| r.toll > 0).count();
    let slow = e.tolls.iter().filter(|r| (0..40).contains(&r.lav)).count();
    let max_toll = e.tolls.iter().map(|r| r.toll).max().unwrap_or(0);
    let nonzero_balances = e
        .balances
        .iter()
        .filter(|q| q.accepted.iter().any(|&(_, b)| b > 0))
        .count();
    let several = e.balances.iter().filter(|q| q.accepted.len() > 1).count();
    println!(
        "tolls: {} notifications, {tolled} with a toll (max {max_toll}), {slow} with LAV < 40; \
         alerts: {}; balance queries: {} ({nonzero_balances} non-zero, {several} with several accepted); \
         expenditures: {} ({} non-zero)",
        e.tolls.len(),
        e.accidents.len(),
        e.balances.len(),
        e.expenditures.len(),
        e.expenditures.iter().filter(|r| r.bal > 0).count()
    );
}

/// Writes the expected answers as a perfect run would (Emit = Time), so
/// that validation does its full work.
fn write_answers(e: &Expected, dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut tolls = BufWriter::new(File::create(dir.join("tolls.csv"))?);
    for r in &e.tolls {
        writeln!(
            tolls,
            "0,{},{},{},{},{}",
            r.vid, r.time, r.time, r.lav, r.toll
        )?;
    }
    let mut alerts = BufWriter::new(File::create(dir.join("accidents.csv"))?);
    for r in &e.accidents {
        writeln!(alerts, "1,{},{},{},{}", r.time, r.time, r.vid, r.seg)?;
    }
    let mut balances = BufWriter::new(File::create(dir.join("balances.csv"))?);
    for q in &e.balances {
        let (result_time, bal) = q.accepted.last().copied().unwrap_or((q.time, 0));
        writeln!(
            balances,
            "2,{},{},{},{result_time},{bal}",
            q.time, q.time, q.qid
        )?;
    }
    let mut spent = BufWriter::new(File::create(dir.join("expenditures.csv"))?);
    for r in &e.expenditures {
        writeln!(spent, "3,{},{},{},{}", r.time, r.time, r.qid, r.bal)?;
    }
    tolls.flush()?;
    alerts.flush()?;
    balances.flush()?;
    spent.flush()
}
