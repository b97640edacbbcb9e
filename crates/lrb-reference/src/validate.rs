//! Independent Linear Road reference validator.
//!
//! A deliberately plain, single-threaded reading of `docs/LRB.md`: compute
//! the expected answers from the input and historical tolls
//! ([`expected_answers`]), then compare a run's four output files with them
//! exactly as the page's "Validation" section says. It shares no code with
//! the engine or the query, so agreeing with it means two independent
//! implementations agree.

mod input;
mod output;
mod rules;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

pub use rules::{expected_answers, AlertRow, BalanceQuery, Expected, ExpenditureRow, TollRow};

use input::Lines;
use output::{read_output, BalanceAnswer, OutputFile, OutputKind};

/// Deadline for tolls, accident alerts and account balances, in seconds.
pub const DEADLINE_SECS: f64 = 5.0;
/// Deadline for daily expenditures, in seconds.
pub const EXPENDITURE_DEADLINE_SECS: f64 = 10.0;

/// What to validate.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidateOptions {
    /// The run's `input.csv`.
    pub input: PathBuf,
    /// The run's `historical-tolls.csv`.
    pub tolls: PathBuf,
    /// Holds the run's `tolls.csv`, `accidents.csv`, `balances.csv` and
    /// `expenditures.csv`.
    pub out_dir: PathBuf,
    /// The run's speed-up S (> 0): Emit counts simulation seconds, so
    /// (Emit - Time) / S is the wall-clock latency the deadlines apply to.
    pub speedup: f64,
    /// Differences kept per kind; the counts are always complete.
    pub max_differences: usize,
}

/// Latency of one kind of answer against its deadline; reported, never a
/// reason to fail, since correctness and speed are judged separately.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Latency {
    /// The deadline in wall-clock seconds.
    pub deadline_secs: f64,
    /// The largest (Emit - Time) / speed-up over the rows read; `None` when
    /// the file had no row.
    pub max_secs: Option<f64>,
    /// Rows with (Emit - Time) / speed-up above the deadline.
    pub over_deadline: u64,
}

impl Latency {
    fn new(deadline_secs: f64) -> Self {
        Latency {
            deadline_secs,
            max_secs: None,
            over_deadline: 0,
        }
    }

    fn record(&mut self, time: i64, emit: i64, speedup: f64) {
        // In floating point: rows come from the run and may hold any i64.
        let secs = (emit as f64 - time as f64) / speedup;
        self.max_secs = Some(self.max_secs.map_or(secs, |m| m.max(secs)));
        if secs > self.deadline_secs {
            self.over_deadline += 1;
        }
    }
}

/// The comparison of one output file with its expected answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KindReport {
    /// Answers the rules require.
    pub expected: u64,
    /// Rows in the file, malformed ones included.
    pub actual: u64,
    /// Required answers absent from the file (for balances: queries with no
    /// accepted answer).
    pub missing: u64,
    /// Rows that match no required answer, malformed ones included.
    pub unexpected: u64,
    /// The first differences, earliest Time first after malformed rows.
    pub differences: Vec<String>,
    /// Emit latency against the deadline.
    pub latency: Latency,
}

impl KindReport {
    /// Starts a kind's report with its counts, malformed rows and latency.
    fn new<K>(expected: usize, file: &OutputFile<K>, limit: usize) -> Self {
        let mut report = KindReport {
            expected: expected as u64,
            actual: (file.rows.len() + file.malformed.len()) as u64,
            missing: 0,
            unexpected: 0,
            differences: Vec::new(),
            latency: file.latency.clone(),
        };
        for m in &file.malformed {
            report.unexpected(limit, || format!("malformed row at {m}"));
        }
        report
    }

    fn note(&mut self, limit: usize, difference: impl FnOnce() -> String) {
        if self.differences.len() < limit {
            self.differences.push(difference());
        }
    }

    fn missing(&mut self, limit: usize, difference: impl FnOnce() -> String) {
        self.missing += 1;
        self.note(limit, difference);
    }

    fn unexpected(&mut self, limit: usize, difference: impl FnOnce() -> String) {
        self.unexpected += 1;
        self.note(limit, difference);
    }

    fn is_exact(&self) -> bool {
        self.missing == 0 && self.unexpected == 0
    }
}

/// The outcome of a validation: per kind, counts, first differences and
/// latency.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ValidationReport {
    /// The speed-up the latencies were scaled by.
    pub speedup: f64,
    /// `tolls.csv`.
    pub tolls: KindReport,
    /// `accidents.csv`.
    pub accidents: KindReport,
    /// `balances.csv`.
    pub balances: KindReport,
    /// `expenditures.csv`.
    pub expenditures: KindReport,
}

impl ValidationReport {
    /// True iff every kind matches exactly; deadline misses are reported but
    /// do not fail validation.
    pub fn passed(&self) -> bool {
        self.kinds().iter().all(|(_, k)| k.is_exact())
    }

    /// The four kinds with their file names, in output-Type order.
    pub fn kinds(&self) -> [(&'static str, &KindReport); 4] {
        [
            ("tolls", &self.tolls),
            ("accidents", &self.accidents),
            ("balances", &self.balances),
            ("expenditures", &self.expenditures),
        ]
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        writeln!(f, "Linear Road validation {verdict}")?;
        writeln!(
            f,
            "  {:<13} {:>12} {:>12} {:>10} {:>10}",
            "kind", "expected", "actual", "missing", "unexpected"
        )?;
        for (name, k) in self.kinds() {
            writeln!(
                f,
                "  {:<13} {:>12} {:>12} {:>10} {:>10}",
                name, k.expected, k.actual, k.missing, k.unexpected
            )?;
        }
        if !self.passed() {
            writeln!(f, "First differences:")?;
            for (name, k) in self.kinds() {
                for d in &k.differences {
                    writeln!(f, "  {name}: {d}")?;
                }
                let more = (k.missing + k.unexpected).saturating_sub(k.differences.len() as u64);
                if more > 0 {
                    writeln!(f, "  {name}: ... and {more} more")?;
                }
            }
        }
        writeln!(
            f,
            "Latency, (Emit - Time) / speed-up {} in seconds:",
            self.speedup
        )?;
        for (name, k) in self.kinds() {
            let l = &k.latency;
            match l.max_secs {
                Some(max) => writeln!(
                    f,
                    "  {name:<13} max {max:.3} s, {} over the {} s deadline",
                    l.over_deadline, l.deadline_secs
                )?,
                None => writeln!(f, "  {name:<13} no answers")?,
            }
        }
        Ok(())
    }
}

/// Why validation could not be carried out (as opposed to finding
/// differences, which the report holds).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The input or historical-tolls file breaks the rules of
    /// `docs/LRB.md`'s "Input" section.
    #[error("{}, line {line}: {message}; fix or regenerate the file (docs/LRB.md, \"Input\", lists the accepted values)", .path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A file could not be opened or read.
    #[error("cannot read {}: {source}; check the path and its permissions", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// One of the four output files does not exist.
    #[error(
        "output file {} is missing: the run must write tolls.csv, accidents.csv, balances.csv \
         and expenditures.csv into the output directory (empty when it has no answer of that \
         kind); check that the run finished and that the output directory is the right one",
        .path.display()
    )]
    MissingOutput {
        /// The expected file.
        path: PathBuf,
    },
    /// The speed-up is zero, negative or not a number.
    #[error("the speed-up must be a positive number (got {0}); pass the speed-up the run used, 1 for a real-time run")]
    BadSpeedup(f64),
}

/// Validates a run: computes the expected answers, reads the four output
/// files and compares them. `Err` means the validation could not be done;
/// a wrong run is an `Ok` report whose [`ValidationReport::passed`] is false.
pub fn validate(opts: &ValidateOptions) -> Result<ValidationReport, ValidateError> {
    validate_with_progress(opts, &mut |_| {})
}

/// [`validate`], calling `progress` with the fraction of the input read so
/// far (about every megabyte), so that a long validation can show it is alive.
pub fn validate_with_progress(
    opts: &ValidateOptions,
    progress: &mut dyn FnMut(f64),
) -> Result<ValidationReport, ValidateError> {
    if !(opts.speedup > 0.0 && opts.speedup.is_finite()) {
        return Err(ValidateError::BadSpeedup(opts.speedup));
    }
    // Checked first: computing the expected answers can take minutes.
    for file in [
        TollRow::FILE,
        AlertRow::FILE,
        BalanceAnswer::FILE,
        ExpenditureRow::FILE,
    ] {
        let path = opts.out_dir.join(file);
        if !path.is_file() {
            return Err(ValidateError::MissingOutput { path });
        }
    }
    let input = File::open(&opts.input).map_err(|source| ValidateError::Read {
        path: opts.input.clone(),
        source,
    })?;
    let total = input.metadata().map_or(0, |m| m.len()).max(1);
    let counted = Counted {
        inner: input,
        read: 0,
        reported: 0,
        total,
        progress,
    };
    let input = Lines::new(BufReader::with_capacity(1 << 20, counted), &opts.input);
    let expected = rules::compute(input, open_lines(&opts.tolls)?)?;
    let limit = opts.max_differences;
    let s = opts.speedup;
    Ok(ValidationReport {
        speedup: s,
        tolls: compare_multiset(
            expected.tolls,
            read_output(&opts.out_dir, s)?,
            limit,
            "toll notification",
            |r: &TollRow| {
                format!(
                    "VID {}, Time {}, LAV {}, Toll {}",
                    r.vid, r.time, r.lav, r.toll
                )
            },
        ),
        accidents: compare_multiset(
            expected.accidents,
            read_output(&opts.out_dir, s)?,
            limit,
            "accident alert",
            |r: &AlertRow| format!("Time {}, VID {}, Seg {}", r.time, r.vid, r.seg),
        ),
        balances: compare_balances(&expected.balances, read_output(&opts.out_dir, s)?, limit),
        expenditures: compare_multiset(
            expected.expenditures,
            read_output(&opts.out_dir, s)?,
            limit,
            "daily expenditure",
            |r: &ExpenditureRow| format!("Time {}, QID {}, Bal {}", r.time, r.qid, r.bal),
        ),
    })
}

/// A reader that reports how far through its file it is.
struct Counted<'a, R> {
    inner: R,
    read: u64,
    reported: u64,
    total: u64,
    progress: &'a mut dyn FnMut(f64),
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read - self.reported >= 1 << 20 || n == 0 {
            self.reported = self.read;
            (self.progress)((self.read as f64 / self.total as f64).min(1.0));
        }
        Ok(n)
    }
}

fn open_lines(path: &Path) -> Result<Lines<BufReader<File>>, ValidateError> {
    let file = File::open(path).map_err(|source| ValidateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Lines::new(BufReader::with_capacity(1 << 20, file), path))
}

/// Compares the rows with the expected multiset: each expected row must
/// appear exactly as often as expected, in any order. Both sides are sorted
/// and walked together, so differences come out earliest Time first.
fn compare_multiset<K: OutputKind + Ord>(
    mut expected: Vec<K>,
    file: OutputFile<K>,
    limit: usize,
    what: &str,
    describe: impl Fn(&K) -> String,
) -> KindReport {
    let mut report = KindReport::new(expected.len(), &file, limit);
    let mut actual = file.rows;
    expected.sort_unstable();
    actual.sort_unstable();
    let (mut i, mut j) = (0, 0);
    while i < expected.len() || j < actual.len() {
        let order = match (expected.get(i), actual.get(j)) {
            (Some(x), Some((y, _))) => x.cmp(y),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Equal => {
                i += 1;
                j += 1;
            }
            Ordering::Less => {
                let x = &expected[i];
                report.missing(limit, || format!("missing {what}: {}", describe(x)));
                i += 1;
            }
            Ordering::Greater => {
                let (y, line) = &actual[j];
                report.unexpected(limit, || {
                    format!(
                        "unexpected {what} at {} line {line}: {}",
                        K::FILE,
                        describe(y)
                    )
                });
                j += 1;
            }
        }
    }
    report
}

/// Every balance query must be answered exactly once, with its Time and
/// QID, an accepted Bal and a ResultTime in [Time - 30, Time].
fn compare_balances(
    queries: &[BalanceQuery],
    file: OutputFile<BalanceAnswer>,
    limit: usize,
) -> KindReport {
    let mut report = KindReport::new(queries.len(), &file, limit);
    let mut by_qid: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, q) in queries.iter().enumerate() {
        by_qid.entry(q.qid).or_default().push(i);
    }
    let mut answered = vec![false; queries.len()];
    for (a, line) in &file.rows {
        let candidates = by_qid.get(&a.qid).map_or(&[][..], Vec::as_slice);
        let accepted = candidates.iter().copied().find(|&i| {
            !answered[i]
                && i64::from(queries[i].time) == a.time
                && queries[i].accepts(a.result_time, a.bal)
        });
        match accepted {
            Some(i) => answered[i] = true,
            None => report.unexpected(limit, || {
                let why = reject_reason(queries, candidates, &answered, a);
                format!(
                    "unexpected account balance at balances.csv line {line}: Time {}, QID {}, ResultTime {}, Bal {}: {why}",
                    a.time, a.qid, a.result_time, a.bal
                )
            }),
        }
    }
    for (q, _) in queries.iter().zip(&answered).filter(|(_, &done)| !done) {
        report.missing(limit, || {
            format!(
                "missing account balance: Time {}, VID {}, QID {}, accepted Bal {}",
                q.time,
                q.vid,
                q.qid,
                list_values(&q.accepted)
            )
        });
    }
    report
}

/// Why no query accepts balance answer `a`.
fn reject_reason(
    queries: &[BalanceQuery],
    candidates: &[usize],
    answered: &[bool],
    a: &BalanceAnswer,
) -> String {
    let Some(&first) = candidates.first() else {
        return "no balance query has this QID".to_string();
    };
    let same_time = candidates
        .iter()
        .copied()
        .find(|&i| i64::from(queries[i].time) == a.time);
    let Some(i) = same_time else {
        return format!("the query with this QID has Time {}", queries[first].time);
    };
    let q = &queries[i];
    let t = i64::from(q.time);
    if answered[i] {
        "this query was already answered".to_string()
    } else if !(t - 30..=t).contains(&a.result_time) {
        format!("ResultTime must be in {}..={t}", t - 30)
    } else {
        format!("accepted Bal {}", list_values(&q.accepted))
    }
}

/// At most five values, for readable messages.
fn list_values(values: &[i64]) -> String {
    let shown: Vec<String> = values.iter().take(5).map(i64::to_string).collect();
    let more = if values.len() > 5 { ", ..." } else { "" };
    format!("{{{}{more}}}", shown.join(", "))
}
