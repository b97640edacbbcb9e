//! Reading and range-checking the input and historical-tolls files, exactly
//! as the "Input" section of `docs/LRB.md` states; anything else is an error
//! that names the file and the 1-based line.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::ValidateError;

/// Input field names, for messages that point at the offending field.
const FIELDS: [&str; 15] = [
    "Type", "Time", "VID", "Spd", "XWay", "Lane", "Dir", "Seg", "Pos", "QID", "Sinit", "Send",
    "DOW", "TOD", "Day",
];

/// The largest Time of a one-day run.
const MAX_TIME: i64 = 86_399;

/// Reads a file line by line into one reused buffer, numbering lines from 1
/// and skipping blank ones, so errors can name the line.
pub(super) struct Lines<R> {
    reader: R,
    path: PathBuf,
    buf: Vec<u8>,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    pub(super) fn new(reader: R, path: &Path) -> Self {
        Lines {
            reader,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(128),
            number: 0,
        }
    }

    /// The 1-based number of the line last returned.
    pub(super) fn number(&self) -> u64 {
        self.number
    }

    /// The next non-blank line without surrounding whitespace, with its
    /// number, or `None` at the end of the file.
    pub(super) fn next_line(&mut self) -> Result<Option<(u64, &str)>, ValidateError> {
        loop {
            self.buf.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| ValidateError::Read {
                    path: self.path.clone(),
                    source,
                })?;
            if read == 0 {
                return Ok(None);
            }
            self.number += 1;
            if !self.buf.trim_ascii().is_empty() {
                break;
            }
        }
        std::str::from_utf8(self.buf.trim_ascii())
            .map(|text| Some((self.number, text)))
            .map_err(|_| ValidateError::Input {
                path: self.path.clone(),
                line: self.number,
                message: "the line is not UTF-8 text".to_string(),
            })
    }

    /// An input error at the line last returned.
    pub(super) fn error(&self, message: String) -> ValidateError {
        ValidateError::Input {
            path: self.path.clone(),
            line: self.number,
            message,
        }
    }
}

/// A Type 0 line, range-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PositionReport {
    pub time: u32,
    pub vid: i64,
    pub spd: u32,
    pub xway: u32,
    pub lane: u32,
    pub dir: u32,
    pub seg: u32,
    pub pos: u32,
}

/// One input line, range-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Record {
    Position(PositionReport),
    Balance {
        time: u32,
        vid: i64,
        qid: i64,
    },
    Expenditure {
        time: u32,
        vid: i64,
        xway: u32,
        qid: i64,
        day: u32,
    },
    TravelTime {
        time: u32,
    },
}

impl Record {
    pub(super) fn time(&self) -> u32 {
        match *self {
            Record::Position(r) => r.time,
            Record::Balance { time, .. }
            | Record::Expenditure { time, .. }
            | Record::TravelTime { time } => time,
        }
    }
}

/// Splits `text` into exactly `names.len()` comma-separated integers, stored
/// into `values` (of the same length); `names` label the fields in messages.
pub(super) fn integers(text: &str, names: &[&str], values: &mut [i64]) -> Result<(), String> {
    let mut count = 0;
    for field in text.as_bytes().split(|&b| b == b',') {
        if let (Some(value), Some(name)) = (values.get_mut(count), names.get(count)) {
            *value = parse_integer(field).ok_or_else(|| {
                let field = String::from_utf8_lossy(field);
                format!("field {} ({name}) is not an integer: {field:?}", count + 1)
            })?;
        }
        count += 1;
    }
    if count != names.len() {
        return Err(format!(
            "expected {} comma-separated fields ({}), found {count}",
            names.len(),
            names.join(",")
        ));
    }
    Ok(())
}

/// A decimal integer with an optional '-', spaces around it allowed; `None`
/// for anything else, including overflow. Hand-written because this runs
/// for every field of tens of millions of lines.
fn parse_integer(field: &[u8]) -> Option<i64> {
    let field = field.trim_ascii();
    let (negative, digits) = match field.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, field),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

/// The Time field (the second) of a line when it is a simulation second
/// (0..=86399), whatever the rest of the line holds: the line order rule
/// counts every line whose Time can be read.
pub(super) fn time_field(text: &str) -> Option<u32> {
    let field = text.as_bytes().split(|&b| b == b',').nth(1)?;
    let time = parse_integer(field)?;
    u32::try_from(time)
        .ok()
        .filter(|&t| i64::from(t) <= MAX_TIME)
}

/// Checks that field `index` lies in `min..=max` and narrows it.
fn in_range(values: &[i64; 15], index: usize, min: i64, max: i64) -> Result<u32, String> {
    let v = values[index];
    if (min..=max).contains(&v) {
        // The range check makes the narrowing lossless.
        Ok(v as u32)
    } else {
        Err(format!(
            "{} {v} is out of range: it must be in {min}..={max}",
            FIELDS[index]
        ))
    }
}

/// Checks that field `index` is not negative.
fn non_negative(values: &[i64; 15], index: usize) -> Result<i64, String> {
    let v = values[index];
    if v >= 0 {
        Ok(v)
    } else {
        Err(format!(
            "{} {v} is out of range: it must be >= 0",
            FIELDS[index]
        ))
    }
}

/// Parses and range-checks one input line (not yet its Time order).
pub(super) fn parse_record(text: &str) -> Result<Record, String> {
    let mut v = [0i64; 15];
    integers(text, &FIELDS, &mut v)?;
    let time = in_range(&v, 1, 0, MAX_TIME)?;
    match v[0] {
        0 => {
            let report = PositionReport {
                time,
                vid: non_negative(&v, 2)?,
                spd: in_range(&v, 3, 0, 100)?,
                xway: in_range(&v, 4, 0, 999)?,
                lane: in_range(&v, 5, 0, 4)?,
                dir: in_range(&v, 6, 0, 1)?,
                seg: in_range(&v, 7, 0, 99)?,
                pos: in_range(&v, 8, 0, 527_999)?,
            };
            if report.seg != report.pos / 5280 {
                return Err(format!(
                    "Seg {} does not match Pos {}: Seg must be Pos / 5280 = {}",
                    report.seg,
                    report.pos,
                    report.pos / 5280
                ));
            }
            Ok(Record::Position(report))
        }
        2 => Ok(Record::Balance {
            time,
            vid: non_negative(&v, 2)?,
            qid: non_negative(&v, 9)?,
        }),
        3 => Ok(Record::Expenditure {
            time,
            vid: non_negative(&v, 2)?,
            xway: in_range(&v, 4, 0, 999)?,
            qid: non_negative(&v, 9)?,
            day: in_range(&v, 14, 0, 69)?,
        }),
        4 => Ok(Record::TravelTime { time }),
        other => Err(format!(
            "Type {other} is not one of 0 (position report), 2 (account balance), \
             3 (daily expenditure) or 4 (travel time)"
        )),
    }
}

/// One line of the historical-tolls file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HistoryLine {
    pub vid: i64,
    pub day: i64,
    pub xway: i64,
    pub toll: i64,
}

/// Parses `VID,Day,XWay,Toll` with Day 1..=69 and Toll >= 0.
pub(super) fn parse_history(text: &str) -> Result<HistoryLine, String> {
    let mut fields = [0i64; 4];
    integers(text, &["VID", "Day", "XWay", "Toll"], &mut fields)?;
    let [vid, day, xway, toll] = fields;
    if !(1..=69).contains(&day) {
        return Err(format!("Day {day} is out of range: it must be in 1..=69"));
    }
    if toll < 0 {
        return Err(format!("Toll {toll} is out of range: it must be >= 0"));
    }
    Ok(HistoryLine {
        vid,
        day,
        xway,
        toll,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_examples() {
        let r = parse_record("0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1").unwrap();
        assert_eq!(
            r,
            Record::Position(PositionReport {
                time: 0,
                vid: 107,
                spd: 32,
                xway: 0,
                lane: 0,
                dir: 0,
                seg: 10,
                pos: 53320
            })
        );
        let r = parse_record("3,10,231,-1,0,-1,-1,-1,-1,0,-1,-1,-1,-1,60").unwrap();
        assert_eq!(
            r,
            Record::Expenditure {
                time: 10,
                vid: 231,
                xway: 0,
                qid: 0,
                day: 60
            }
        );
    }

    #[test]
    fn parses_integers_strictly() {
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b" -17 "), Some(-17));
        assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_integer(b"9223372036854775808"), None);
        for bad in [&b""[..], b"-", b"+1", b"1.5", b"1 2", b"x", b"--1"] {
            assert_eq!(parse_integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn explains_what_is_wrong() {
        let err = parse_record("0,0,107,32,0,0,0,10").unwrap_err();
        assert!(err.contains("expected 15"), "{err}");
        assert!(err.contains("found 8"), "{err}");
        let err = parse_record("0,0,107,fast,0,0,0,10,53320,-1,-1,-1,-1,-1,-1").unwrap_err();
        assert!(err.contains("field 4 (Spd)"), "{err}");
        let err = parse_record("0,0,107,101,0,0,0,10,53320,-1,-1,-1,-1,-1,-1").unwrap_err();
        assert!(err.contains("Spd 101"), "{err}");
        let err = parse_record("0,0,107,32,0,0,0,11,53320,-1,-1,-1,-1,-1,-1").unwrap_err();
        assert!(err.contains("Seg 11 does not match Pos 53320"), "{err}");
        let err = parse_record("1,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1").unwrap_err();
        assert!(err.contains("Type 1"), "{err}");
        let err = parse_record("3,10,231,-1,0,-1,-1,-1,-1,0,-1,-1,-1,-1,70").unwrap_err();
        assert!(err.contains("Day 70"), "{err}");
        let err = parse_record("2,86400,231,-1,-1,-1,-1,-1,-1,0,-1,-1,-1,-1,-1").unwrap_err();
        assert!(err.contains("Time 86400"), "{err}");
        assert!(parse_history("1,0,0,5").unwrap_err().contains("Day 0"));
        assert!(parse_history("1,3,0,-5").unwrap_err().contains("Toll -5"));
    }
}
