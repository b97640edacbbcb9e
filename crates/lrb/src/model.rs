//! The tuples of the Linear Road query, and parsing of input lines.
//!
//! One message type for the whole query keeps operators connectable; edges
//! filter by variant so each operator only receives what it needs.

use serde::{Deserialize, Serialize};

/// A segment of one direction of one expressway: the toll calculator's key.
pub type SegmentKey = (u16, u8, u8);

/// A position report, as parsed from the input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Simulation second.
    pub time: u32,
    /// Car id.
    pub vid: u32,
    /// Speed, mph.
    pub spd: u8,
    /// Expressway.
    pub xway: u16,
    /// Lane: 0 entrance ramp, 1..3 travel, 4 exit ramp.
    pub lane: u8,
    /// Direction: 0 east, 1 west.
    pub dir: u8,
    /// Segment 0..99.
    pub seg: u8,
    /// Position in feet.
    pub pos: u32,
}

/// A message of the Linear Road query. `released_us` is the wall-clock
/// instant (UNIX microseconds) at which the input line causing it was due,
/// so sinks can measure each answer's latency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A position report for its own segment's statistics and tolls.
    Position {
        /// The report.
        report: Position,
        /// Release instant.
        released_us: u64,
    },
    /// A zero-speed report, sent to every segment whose accident zone
    /// contains the report's place.
    Stop {
        /// The segment this copy is for.
        target_seg: u8,
        /// The report.
        report: Position,
    },
    /// Type 2 query.
    BalanceQuery {
        /// Simulation second.
        time: u32,
        /// Car.
        vid: u32,
        /// Query id.
        qid: u32,
        /// Release instant.
        released_us: u64,
    },
    /// Type 3 query (Day 1..69).
    ExpenditureQuery {
        /// Simulation second.
        time: u32,
        /// Car.
        vid: u32,
        /// Expressway.
        xway: u16,
        /// Query id.
        qid: u32,
        /// Day, 1 = yesterday.
        day: u8,
        /// Release instant.
        released_us: u64,
    },
    /// Output type 0, also the charge to the car's account.
    Toll {
        /// Car.
        vid: u32,
        /// Input Time.
        time: u32,
        /// Latest average velocity.
        lav: i32,
        /// Toll charged.
        toll: u32,
        /// Release instant.
        released_us: u64,
    },
    /// Output type 1.
    Alert {
        /// Input Time.
        time: u32,
        /// Car.
        vid: u32,
        /// Segment of the accident.
        seg: u8,
        /// Release instant.
        released_us: u64,
    },
    /// Output type 2.
    Balance {
        /// Input Time.
        time: u32,
        /// Query id.
        qid: u32,
        /// Time the balance is as of.
        result_time: u32,
        /// Balance.
        bal: u64,
        /// Release instant.
        released_us: u64,
    },
    /// Output type 3.
    Expenditure {
        /// Input Time.
        time: u32,
        /// Query id.
        qid: u32,
        /// Historical toll.
        bal: u32,
        /// Release instant.
        released_us: u64,
    },
    /// An input line that was skipped.
    InputError {
        /// 1-based line number.
        line_no: u64,
        /// What is wrong with it.
        message: String,
    },
}

/// The answer files and what each holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnswerKind {
    /// `tolls.csv`.
    Tolls,
    /// `accidents.csv`.
    Accidents,
    /// `balances.csv`.
    Balances,
    /// `expenditures.csv`.
    Expenditures,
    /// `input-errors.csv`: skipped input lines.
    InputErrors,
}

impl AnswerKind {
    /// All kinds, in report order.
    pub const ALL: [AnswerKind; 5] = [
        AnswerKind::Tolls,
        AnswerKind::Accidents,
        AnswerKind::Balances,
        AnswerKind::Expenditures,
        AnswerKind::InputErrors,
    ];

    /// Short name, used for sink operators and report keys.
    pub fn name(self) -> &'static str {
        match self {
            AnswerKind::Tolls => "tolls",
            AnswerKind::Accidents => "accidents",
            AnswerKind::Balances => "balances",
            AnswerKind::Expenditures => "expenditures",
            AnswerKind::InputErrors => "input-errors",
        }
    }

    /// The deadline of an answer of this kind, seconds.
    pub fn deadline_secs(self) -> f64 {
        match self {
            AnswerKind::Expenditures => 10.0,
            _ => 5.0,
        }
    }

    /// Whether `msg` belongs in this kind's file.
    pub fn accepts(self, msg: &Msg) -> bool {
        matches!(
            (self, msg),
            (AnswerKind::Tolls, Msg::Toll { .. })
                | (AnswerKind::Accidents, Msg::Alert { .. })
                | (AnswerKind::Balances, Msg::Balance { .. })
                | (AnswerKind::Expenditures, Msg::Expenditure { .. })
                | (AnswerKind::InputErrors, Msg::InputError { .. })
        )
    }
}

/// What the feeder makes of one input line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Type 0.
    Position(Position),
    /// Type 2.
    Balance {
        /// When it was asked, seconds.
        time: u32,
        /// The car asking.
        vid: u32,
        /// The query's id, echoed in the answer.
        qid: u32,
    },
    /// Type 3.
    Expenditure {
        /// When it was asked, seconds.
        time: u32,
        /// The car asking.
        vid: u32,
        /// The expressway asked about.
        xway: u16,
        /// The query's id, echoed in the answer.
        qid: u32,
        /// Days ago (1-69).
        day: u8,
    },
    /// Type 4, or a Day 0 expenditure query: nothing to answer.
    Ignored,
}

impl Parsed {
    /// The Time of a record, so that the feeder need not read it again;
    /// `None` for an ignored line, whose Time [`line_time`] reads.
    pub fn time(&self) -> Option<u32> {
        match self {
            Parsed::Position(report) => Some(report.time),
            Parsed::Balance { time, .. } | Parsed::Expenditure { time, .. } => Some(*time),
            Parsed::Ignored => None,
        }
    }
}

fn field<T: TryFrom<i64>>(
    fields: &[i64; 15],
    i: usize,
    name: &str,
    lo: i64,
    hi: i64,
) -> Result<T, String> {
    let v = fields[i];
    if v < lo || v > hi {
        return Err(format!("{name} = {v} is out of range {lo}..={hi}"));
    }
    T::try_from(v).map_err(|_| format!("{name} = {v} does not fit"))
}

/// The largest Time of a one-day run.
const MAX_TIME: i64 = 86_399;

/// A decimal integer, optionally negative, spaces around it allowed (no `+`:
/// the reference validator reads fields the same way).
fn integer(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.starts_with('+') {
        return None;
    }
    text.parse().ok()
}

/// The fields of a line as every generated line is written: exactly 15
/// integers of at most 18 digits, an optional leading `-`, nothing else.
/// One pass over the bytes, with no text to validate or trim: the feeder
/// parses every input line, so this is its hot path. `None` sends the line
/// to [`general_fields`], which accepts what else is allowed and explains
/// what is not.
fn plain_fields(line: &[u8]) -> Option<[i64; 15]> {
    let mut fields = [0i64; 15];
    let mut bytes = line.iter().copied();
    for (i, slot) in fields.iter_mut().enumerate() {
        let mut first = bytes.next()?;
        let negative = first == b'-';
        if negative {
            first = bytes.next()?;
        }
        if !first.is_ascii_digit() {
            return None;
        }
        let (mut value, mut digits) = (i64::from(first - b'0'), 1);
        loop {
            match bytes.next() {
                Some(b',') if i < 14 => break,
                None if i == 14 => break,
                // At most 18 digits: no overflow.
                Some(b) if b.is_ascii_digit() && digits < 18 => {
                    value = value * 10 + i64::from(b - b'0');
                    digits += 1;
                }
                _ => return None,
            }
        }
        *slot = if negative { -value } else { value };
    }
    Some(fields)
}

/// The fields of any line that is not plain: spaces around fields, long
/// numbers, and the reasons a line has no 15 integer fields.
fn general_fields(text: &str) -> Result<[i64; 15], String> {
    let mut fields = [0i64; 15];
    let mut n = 0;
    for part in text.split(',') {
        if n == 15 {
            return Err("more than 15 fields".into());
        }
        fields[n] =
            integer(part).ok_or_else(|| format!("field {} (`{part}`) is not an integer", n + 1))?;
        n += 1;
    }
    if n != 15 {
        return Err(format!("{n} fields, expected 15"));
    }
    Ok(fields)
}

/// Parses one input line (a `&str` or the raw bytes the feeder reads, with
/// or without its line ending): 15 comma-separated integers. A blank line
/// is ignored.
pub fn parse_line(line: impl AsRef<[u8]>) -> Result<Parsed, String> {
    let line = line.as_ref().trim_ascii_end();
    let fields = match plain_fields(line) {
        Some(fields) => fields,
        None => {
            let text = String::from_utf8_lossy(line);
            if text.trim().is_empty() {
                return Ok(Parsed::Ignored);
            }
            general_fields(&text)?
        }
    };
    let time = field(&fields, 1, "Time", 0, MAX_TIME)?;
    let vid = field(&fields, 2, "VID", 0, i64::from(u32::MAX))?;
    match fields[0] {
        0 => {
            let report = Position {
                time,
                vid,
                spd: field(&fields, 3, "Spd", 0, 100)?,
                xway: field(&fields, 4, "XWay", 0, 999)?,
                lane: field(&fields, 5, "Lane", 0, 4)?,
                dir: field(&fields, 6, "Dir", 0, 1)?,
                seg: field(&fields, 7, "Seg", 0, 99)?,
                pos: field(&fields, 8, "Pos", 0, 527_999)?,
            };
            if u32::from(report.seg) != report.pos / 5280 {
                return Err(format!(
                    "Seg = {} does not match Pos = {} (expected {})",
                    report.seg,
                    report.pos,
                    report.pos / 5280
                ));
            }
            Ok(Parsed::Position(report))
        }
        2 => Ok(Parsed::Balance {
            time,
            vid,
            qid: field(&fields, 9, "QID", 0, i64::from(u32::MAX))?,
        }),
        3 => {
            let day: u8 = field(&fields, 14, "Day", 0, 69)?;
            if day == 0 {
                return Ok(Parsed::Ignored);
            }
            Ok(Parsed::Expenditure {
                time,
                vid,
                xway: field(&fields, 4, "XWay", 0, 999)?,
                qid: field(&fields, 9, "QID", 0, i64::from(u32::MAX))?,
                day,
            })
        }
        4 => Ok(Parsed::Ignored),
        t => Err(format!("Type = {t} is not 0, 2, 3 or 4")),
    }
}

/// The Time field of a line when it is a simulation second, without parsing
/// the rest: the feeder paces by it and checks the Time order with it, on
/// every line whose Time it can read, bad or not (docs/LRB.md, "Input").
pub fn line_time(line: &[u8]) -> Option<u32> {
    let field = line.split(|&b| b == b',').nth(1)?;
    let time = integer(std::str::from_utf8(field).ok()?)?;
    u32::try_from(time)
        .ok()
        .filter(|&t| i64::from(t) <= MAX_TIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_type() {
        assert_eq!(
            parse_line("0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1"),
            Ok(Parsed::Position(Position {
                time: 0,
                vid: 107,
                spd: 32,
                xway: 0,
                lane: 0,
                dir: 0,
                seg: 10,
                pos: 53320
            }))
        );
        assert_eq!(
            parse_line("3,10,231,-1,0,-1,-1,-1,-1,0,-1,-1,-1,-1,60"),
            Ok(Parsed::Expenditure {
                time: 10,
                vid: 231,
                xway: 0,
                qid: 0,
                day: 60
            })
        );
        assert_eq!(
            parse_line("2,5,9,-1,-1,-1,-1,-1,-1,4,-1,-1,-1,-1,-1"),
            Ok(Parsed::Balance {
                time: 5,
                vid: 9,
                qid: 4
            })
        );
        assert_eq!(
            parse_line("3,10,231,-1,0,-1,-1,-1,-1,0,-1,-1,-1,-1,0"),
            Ok(Parsed::Ignored)
        );
    }

    #[test]
    fn explains_bad_lines() {
        assert!(parse_line("0,0,1").unwrap_err().contains("3 fields"));
        assert!(parse_line("0,0,107,320,0,0,0,10,53320,-1,-1,-1,-1,-1,-1")
            .unwrap_err()
            .contains("Spd"));
        assert!(parse_line("0,0,107,32,0,0,0,11,53320,-1,-1,-1,-1,-1,-1")
            .unwrap_err()
            .contains("does not match"));
        assert!(parse_line("x,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1")
            .unwrap_err()
            .contains("not an integer"));
        assert!(parse_line("7,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1")
            .unwrap_err()
            .contains("Type"));
    }

    /// The fields as the general path reads them, for lines on either side
    /// of the plain path's limits.
    fn general(line: &str) -> Result<[i64; 15], String> {
        general_fields(line.trim_end())
    }

    #[test]
    fn odd_lines_take_the_general_path_and_read_the_same() {
        let plain = "0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1";
        assert_eq!(plain_fields(plain.as_bytes()), general(plain).ok());
        for odd in [
            " 0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
            "0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1, -1",
            "0,0,1234567890123456789,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
            "0,0,+107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
            "0,0,--107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
            "0,0,-,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
            "0,0,,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1",
            "0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1",
            "0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1,",
            "0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1,7",
        ] {
            assert_eq!(plain_fields(odd.as_bytes()), None, "{odd}");
        }
        assert_eq!(
            parse_line(" 0, 0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1 \r\n"),
            parse_line(plain)
        );
        assert_eq!(parse_line("  \r\n"), Ok(Parsed::Ignored));
        assert!(
            parse_line(b"0,0,1\xff7,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1")
                .unwrap_err()
                .contains("field 3")
        );
    }

    proptest::proptest! {
        /// Every line of 15 integers reads the same on the plain path as on
        /// the general one, whatever their signs and lengths.
        #[test]
        fn the_plain_path_reads_what_the_general_one_reads(
            fields in proptest::collection::vec(-999_999_999_999_999_999i64..=999_999_999_999_999_999, 15),
        ) {
            let line = fields.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let expected: [i64; 15] = fields.clone().try_into().unwrap();
            proptest::prop_assert_eq!(plain_fields(line.as_bytes()), Some(expected));
            proptest::prop_assert_eq!(general(&line), Ok(expected));
        }
    }
}
