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

pub use rules::{
    expected_answers, AlertRow, BadInput, BalanceQuery, Expected, ExpenditureRow, SkippedLine,
    TollRow,
};

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
    /// Differences kept per kind (and examples per broken rule, and bad
    /// input lines shown); the counts are always complete.
    pub max_differences: usize,
    /// Skip bad input lines (and list them) or stop at the first one.
    pub bad_input: BadInput,
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
    /// Per rule of the 2004 validator, the answers that break it.
    pub broken_rules: Vec<RuleFailures>,
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
            broken_rules: Vec::new(),
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

    /// Counts one answer breaking `rule`, keeping the first examples.
    fn broke(&mut self, rule: Rule, limit: usize, example: impl FnOnce() -> String) {
        let at = match self.broken_rules.iter().position(|f| f.rule == rule) {
            Some(at) => at,
            None => {
                self.broken_rules.push(RuleFailures {
                    rule,
                    count: 0,
                    examples: Vec::new(),
                });
                self.broken_rules.len() - 1
            }
        };
        let failures = &mut self.broken_rules[at];
        failures.count += 1;
        if failures.examples.len() < limit {
            failures.examples.push(example());
        }
    }

    fn is_exact(&self) -> bool {
        self.missing == 0 && self.unexpected == 0
    }
}

/// A rule of the 2004 validator that an answer can break, for reports that
/// say *why* answers differ, not only that they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Rule {
    /// A toll notification's LAV (extractLavs.pl).
    Lav,
    /// A toll notification's Toll, given the segment's LAV and car count.
    Toll,
    /// A balance answer's ResultTime is not one of the notifications
    /// accountBalanceAnswer.pl accepts.
    ResultTime,
    /// A balance answer's Bal is not the balance as of its ResultTime
    /// (accountBalanceAnswer.pl).
    Balance,
}

impl Rule {
    /// The rule and where the 2004 validator states it, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Lav => "LAV (extractLavs.pl)",
            Rule::Toll => "toll (from LAV and NOV)",
            Rule::ResultTime => "ResultTime (accountBalanceAnswer.pl)",
            Rule::Balance => "balance as of ResultTime (accountBalanceAnswer.pl)",
        }
    }
}

/// The answers breaking one rule: how many, and the first few.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleFailures {
    /// The rule.
    pub rule: Rule,
    /// Answers breaking it.
    pub count: u64,
    /// The first of them, with their file line and the expected values.
    pub examples: Vec<String>,
}

/// The input lines the validation left out as bad.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SkippedInput {
    /// All of them.
    pub count: u64,
    /// The first ones.
    pub lines: Vec<SkippedLine>,
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
    /// Bad input lines that were skipped (the run skips the same ones).
    pub skipped_input: SkippedInput,
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
        let skipped = &self.skipped_input;
        if skipped.count > 0 {
            writeln!(
                f,
                "Skipped {} bad input line(s), as `spate lrb run` does (--stop-on-bad-input stops at the first):",
                skipped.count
            )?;
            for s in &skipped.lines {
                writeln!(f, "  line {}: {}", s.line, s.message)?;
            }
            if skipped.count > skipped.lines.len() as u64 {
                writeln!(
                    f,
                    "  ... and {} more",
                    skipped.count - skipped.lines.len() as u64
                )?;
            }
        }
        let broken: Vec<&RuleFailures> = self
            .kinds()
            .into_iter()
            .flat_map(|(_, k)| &k.broken_rules)
            .collect();
        if !broken.is_empty() {
            writeln!(f, "Broken rules:")?;
            for failures in broken {
                writeln!(
                    f,
                    "  {}: {} answer(s), e.g.",
                    failures.rule.describe(),
                    failures.count
                )?;
                for example in &failures.examples {
                    writeln!(f, "    {example}")?;
                }
            }
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
    let expected = rules::compute(input, open_lines(&opts.tolls)?, opts.bad_input)?;
    let limit = opts.max_differences;
    let s = opts.speedup;
    let (mut tolls, diff) = compare_multiset(
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
    );
    classify_tolls(&mut tolls, diff, limit);
    Ok(ValidationReport {
        speedup: s,
        tolls,
        accidents: compare_multiset(
            expected.accidents,
            read_output(&opts.out_dir, s)?,
            limit,
            "accident alert",
            |r: &AlertRow| format!("Time {}, VID {}, Seg {}", r.time, r.vid, r.seg),
        )
        .0,
        balances: compare_balances(&expected.balances, read_output(&opts.out_dir, s)?, limit),
        expenditures: compare_multiset(
            expected.expenditures,
            read_output(&opts.out_dir, s)?,
            limit,
            "daily expenditure",
            |r: &ExpenditureRow| format!("Time {}, QID {}, Bal {}", r.time, r.qid, r.bal),
        )
        .0,
        skipped_input: SkippedInput {
            count: expected.skipped.len() as u64,
            lines: expected.skipped.into_iter().take(limit).collect(),
        },
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

/// The rows a multiset comparison could not pair: expected ones absent from
/// the file, and the file's rows (with their line) that were not expected.
struct Unpaired<K> {
    missing: Vec<K>,
    unexpected: Vec<(K, u64)>,
}

/// Compares the rows with the expected multiset: each expected row must
/// appear exactly as often as expected, in any order. Both sides are sorted
/// and walked together, so differences come out earliest Time first.
fn compare_multiset<K: OutputKind + Ord + Clone>(
    mut expected: Vec<K>,
    file: OutputFile<K>,
    limit: usize,
    what: &str,
    describe: impl Fn(&K) -> String,
) -> (KindReport, Unpaired<K>) {
    let mut unpaired = Unpaired {
        missing: Vec::new(),
        unexpected: Vec::new(),
    };
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
                unpaired.missing.push(x.clone());
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
                unpaired.unexpected.push((y.clone(), *line));
                j += 1;
            }
        }
    }
    (report, unpaired)
}

/// Pairs each unexpected toll notification with the missing one of the same
/// car and Time, and counts which rule it breaks: a wrong LAV, a wrong Toll
/// or both. Unpaired rows are notifications for entries the rules do not
/// have (or lack), already counted as missing or unexpected.
fn classify_tolls(report: &mut KindReport, unpaired: Unpaired<TollRow>, limit: usize) {
    let mut missing: HashMap<(u32, i64), Vec<TollRow>> = HashMap::new();
    for row in unpaired.missing {
        missing.entry((row.time, row.vid)).or_default().push(row);
    }
    for (actual, line) in unpaired.unexpected {
        let Some(expected) = missing
            .get_mut(&(actual.time, actual.vid))
            .and_then(Vec::pop)
        else {
            continue;
        };
        let example = || {
            format!(
                "tolls.csv line {line}: VID {}, Time {}: LAV {}, Toll {}; expected LAV {}, Toll {}",
                actual.vid, actual.time, actual.lav, actual.toll, expected.lav, expected.toll
            )
        };
        if actual.lav != expected.lav {
            report.broke(Rule::Lav, limit, example);
        }
        if actual.toll != expected.toll {
            report.broke(Rule::Toll, limit, example);
        }
    }
}

/// Every balance query must be answered exactly once, with its Time and
/// QID and an accepted (ResultTime, Bal).
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
            None => {
                let (rule, why) = reject_reason(queries, candidates, &answered, a);
                let example = format!(
                    "balances.csv line {line}: Time {}, QID {}, ResultTime {}, Bal {}: {why}",
                    a.time, a.qid, a.result_time, a.bal
                );
                if let Some(rule) = rule {
                    report.broke(rule, limit, || example.clone());
                }
                report.unexpected(limit, || format!("unexpected account balance at {example}"));
            }
        }
    }
    for (q, _) in queries.iter().zip(&answered).filter(|(_, &done)| !done) {
        report.missing(limit, || {
            format!(
                "missing account balance: Time {}, VID {}, QID {}, accepted (ResultTime, Bal) {}",
                q.time,
                q.vid,
                q.qid,
                list_answers(&q.accepted)
            )
        });
    }
    report
}

/// Why no query accepts balance answer `a`, and the rule it breaks when
/// its query is known and not yet answered.
fn reject_reason(
    queries: &[BalanceQuery],
    candidates: &[usize],
    answered: &[bool],
    a: &BalanceAnswer,
) -> (Option<Rule>, String) {
    let Some(&first) = candidates.first() else {
        return (None, "no balance query has this QID".to_string());
    };
    let same_time = candidates
        .iter()
        .copied()
        .find(|&i| i64::from(queries[i].time) == a.time);
    let Some(i) = same_time else {
        let why = format!("the query with this QID has Time {}", queries[first].time);
        return (None, why);
    };
    let q = &queries[i];
    let accepted = list_answers(&q.accepted);
    if answered[i] {
        (None, "this query was already answered".to_string())
    } else if q.accepts_result_time(a.result_time) {
        let why = format!("wrong Bal for this ResultTime; accepted (ResultTime, Bal) {accepted}");
        (Some(Rule::Balance), why)
    } else {
        let why = format!(
            "ResultTime {} is not an accepted notification time; accepted (ResultTime, Bal) {accepted}",
            a.result_time
        );
        (Some(Rule::ResultTime), why)
    }
}

/// The accepted answers of a query (at most four), for messages.
fn list_answers(answers: &[(u32, i64)]) -> String {
    let shown: Vec<String> = answers
        .iter()
        .map(|(t, bal)| format!("({t}, {bal})"))
        .collect();
    format!("{{{}}}", shown.join(", "))
}
