//! Input lines on bytes, checked exactly as docs/LRB.md ("Input") says: a
//! line that breaks a rule is bad and skipped, with a short reason.

/// The largest Time of a one-day run.
const MAX_TIME: i64 = 86_399;

/// A range-checked position report (Type 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub time: u32,
    pub vid: i64,
    pub spd: u32,
    pub xway: u32,
    pub lane: u32,
    pub dir: u32,
    pub seg: u32,
    pub pos: u32,
}

/// One range-checked input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    Position(Position),
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

/// A line split into integer fields: the first 15 values, how many fields
/// there were, the first field that is not an integer, and the Time field
/// when it reads as a simulation second (the order rule counts every such
/// line, even a bad one).
pub(crate) struct Fields {
    values: [i64; 15],
    count: usize,
    first_bad: Option<usize>,
    pub time: Option<u32>,
}

/// A decimal integer with an optional '-', ASCII whitespace around it
/// allowed; `None` for anything else, including overflow.
fn integer(field: &[u8]) -> Option<i64> {
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
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(digit))?;
    }
    Some(if negative { -value } else { value })
}

/// Splits a (trimmed, non-empty) line at its commas.
pub(crate) fn split(line: &[u8]) -> Fields {
    split_plain(line).unwrap_or_else(|| split_any(line))
}

/// The hot path, one pass over the bytes: exactly 15 fields of at most
/// 18 digits with an optional leading '-' and no whitespace, as every
/// generated line is. `None` sends anything else to [`split_any`].
fn split_plain(line: &[u8]) -> Option<Fields> {
    let mut values = [0i64; 15];
    let mut index = 0;
    let (mut value, mut digits, mut negative) = (0u64, 0u32, false);
    let mut finish = |index: usize, value: u64, digits: u32, negative: bool| {
        if digits == 0 || digits > 18 || index >= 15 {
            return None;
        }
        // At most 18 digits: no overflow.
        values[index] = if negative {
            -(value as i64)
        } else {
            value as i64
        };
        Some(())
    };
    for &b in line {
        match b {
            b'0'..=b'9' => {
                value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                digits += 1;
            }
            b',' => {
                finish(index, value, digits, negative)?;
                index += 1;
                (value, digits, negative) = (0, 0, false);
            }
            b'-' if digits == 0 && !negative => negative = true,
            _ => return None,
        }
    }
    finish(index, value, digits, negative)?;
    if index != 14 {
        return None;
    }
    Some(Fields {
        time: (0..=MAX_TIME)
            .contains(&values[1])
            .then_some(values[1] as u32),
        values,
        count: 15,
        first_bad: None,
    })
}

/// Any line: fields split at commas, each trimmed and parsed on its own.
fn split_any(line: &[u8]) -> Fields {
    let mut fields = Fields {
        values: [0; 15],
        count: 0,
        first_bad: None,
        time: None,
    };
    for field in line.split(|&b| b == b',') {
        let index = fields.count;
        fields.count += 1;
        if index >= 15 {
            continue;
        }
        match integer(field) {
            Some(value) => {
                fields.values[index] = value;
                if index == 1 && (0..=MAX_TIME).contains(&value) {
                    fields.time = Some(value as u32);
                }
            }
            None => {
                fields.first_bad.get_or_insert(index);
            }
        }
    }
    fields
}

impl Fields {
    fn in_range(&self, index: usize, min: i64, max: i64) -> Result<u32, &'static str> {
        let v = self.values[index];
        if (min..=max).contains(&v) {
            // The range check makes the narrowing lossless.
            Ok(v as u32)
        } else {
            Err(OUT_OF_RANGE[index])
        }
    }

    fn non_negative(&self, index: usize) -> Result<i64, &'static str> {
        let v = self.values[index];
        if v >= 0 {
            Ok(v)
        } else {
            Err(OUT_OF_RANGE[index])
        }
    }

    /// The record the fields make, or why the line is bad.
    pub(crate) fn record(&self) -> Result<Record, &'static str> {
        if self.count != 15 {
            return Err("the line does not have 15 comma-separated fields");
        }
        if self.first_bad.is_some() {
            return Err("a field is not a decimal integer");
        }
        let time = self.in_range(1, 0, MAX_TIME)?;
        match self.values[0] {
            0 => {
                let p = Position {
                    time,
                    vid: self.non_negative(2)?,
                    spd: self.in_range(3, 0, 100)?,
                    xway: self.in_range(4, 0, 999)?,
                    lane: self.in_range(5, 0, 4)?,
                    dir: self.in_range(6, 0, 1)?,
                    seg: self.in_range(7, 0, 99)?,
                    pos: self.in_range(8, 0, 527_999)?,
                };
                if p.seg != p.pos / 5280 {
                    return Err("Seg is not Pos / 5280");
                }
                Ok(Record::Position(p))
            }
            2 => Ok(Record::Balance {
                time,
                vid: self.non_negative(2)?,
                qid: self.non_negative(9)?,
            }),
            3 => Ok(Record::Expenditure {
                time,
                vid: self.non_negative(2)?,
                xway: self.in_range(4, 0, 999)?,
                qid: self.non_negative(9)?,
                day: self.in_range(14, 0, 69)?,
            }),
            4 => Ok(Record::TravelTime { time }),
            _ => Err("Type is not 0, 2, 3 or 4"),
        }
    }
}

/// Why a field is out of range, by field index.
const OUT_OF_RANGE: [&str; 15] = [
    "Type is out of range",
    "Time is out of range 0..=86399",
    "VID is negative",
    "Spd is out of range 0..=100",
    "XWay is out of range 0..=999",
    "Lane is out of range 0..=4",
    "Dir is out of range 0..=1",
    "Seg is out of range 0..=99",
    "Pos is out of range 0..=527999",
    "QID is negative",
    "Sinit is out of range",
    "Send is out of range",
    "DOW is out of range",
    "TOD is out of range",
    "Day is out of range 0..=69",
];

/// One historical toll `VID,Day,XWay,Toll`, or why the line is wrong.
pub(crate) fn history(line: &[u8]) -> Result<(i64, i64, i64, i64), &'static str> {
    let mut values = [0i64; 4];
    let mut count = 0;
    for field in line.split(|&b| b == b',') {
        if count < 4 {
            values[count] = integer(field).ok_or("a field is not a decimal integer")?;
        }
        count += 1;
    }
    let [vid, day, xway, toll] = values;
    if count != 4 {
        Err("expected 4 comma-separated fields: VID,Day,XWay,Toll")
    } else if !(1..=69).contains(&day) {
        Err("Day is out of range 1..=69")
    } else if toll < 0 {
        Err("Toll is negative")
    } else {
        Ok((vid, day, xway, toll))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_specification_examples() {
        let fields = split(b"0,0,107,32,0,0,0,10,53320,-1,-1,-1,-1,-1,-1");
        assert_eq!(fields.time, Some(0));
        assert_eq!(
            fields.record(),
            Ok(Record::Position(Position {
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
            split(b"3,10,231,-1,0,-1,-1,-1,-1,0,-1,-1,-1,-1,60").record(),
            Ok(Record::Expenditure {
                time: 10,
                vid: 231,
                xway: 0,
                qid: 0,
                day: 60
            })
        );
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(integer(b" -17 "), Some(-17));
        assert_eq!(integer(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"1.5",
            b"1 2",
            b"x",
            b"--1",
            b"9223372036854775808",
        ] {
            assert_eq!(integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_lines_say_why_and_keep_their_time() {
        let short = split(b"0,5,107,32");
        assert_eq!(short.time, Some(5));
        assert!(short.record().unwrap_err().contains("15"));
        let fast = split(b"0,0,107,101,0,0,0,10,53320,-1,-1,-1,-1,-1,-1");
        assert!(fast.record().unwrap_err().contains("Spd"));
        let misplaced = split(b"0,0,107,32,0,0,0,11,53320,-1,-1,-1,-1,-1,-1");
        assert!(misplaced.record().unwrap_err().contains("Seg"));
        assert!(split(b"1,0,1,0,0,0,0,0,0,0,0,0,0,0,0")
            .record()
            .unwrap_err()
            .contains("Type"));
        assert_eq!(
            split(b"2,86400,1,-1,-1,-1,-1,-1,-1,0,-1,-1,-1,-1,-1").time,
            None
        );
        assert!(history(b"1,0,0,5").unwrap_err().contains("Day"));
        assert_eq!(history(b"1,3,0,5"), Ok((1, 3, 0, 5)));
    }
}
