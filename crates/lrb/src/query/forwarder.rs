//! The forwarder: sends each record the feeder parsed where it is needed,
//! and a stopped car's report to every segment whose accident zone holds
//! it. Stateless, so it can run as many partitions as its load needs, or
//! on the feeder's own thread ([`forward`], `LrbParams::chain_forwarder`).

use spate_engine::{Operator, OperatorError, Output};

use crate::model::Msg;

/// How far upstream of an accident its zone reaches, in segments.
pub const ACCIDENT_ZONE: u8 = 4;

/// Routes parsed input records.
pub struct Forwarder {
    /// Fail on a malformed line instead of reporting and skipping it.
    pub strict: bool,
}

/// The segments whose accident zone contains segment `seg` in direction
/// `dir`: a stopped car in `seg` matters to cars approaching it.
pub fn zone_targets(seg: u8, dir: u8) -> std::ops::RangeInclusive<u8> {
    if dir == 0 {
        seg.saturating_sub(ACCIDENT_ZONE)..=seg
    } else {
        seg..=seg.saturating_add(ACCIDENT_ZONE).min(99)
    }
}

/// Hands `emit` what the forwarder sends for `input`: a stopped car's
/// report once per segment of its accident zone and then as itself, any
/// other record as it is; with `strict`, a skipped line is an error.
pub fn forward(
    input: Msg,
    strict: bool,
    mut emit: impl FnMut(Msg) -> Result<(), OperatorError>,
) -> Result<(), OperatorError> {
    match input {
        Msg::Position {
            report,
            released_us,
        } => {
            if report.spd == 0 {
                for target_seg in zone_targets(report.seg, report.dir) {
                    emit(Msg::Stop {
                        target_seg,
                        report: report.clone(),
                    })?;
                }
            }
            emit(Msg::Position {
                report,
                released_us,
            })
        }
        Msg::InputError { line_no, message } if strict => Err(OperatorError::new(format!(
            "input line {line_no}: {message} (run without --stop-on-bad-input to skip such lines)"
        ))),
        // Queries and skipped lines go on as they are.
        other => emit(other),
    }
}

impl Operator for Forwarder {
    type In = Msg;
    type Out = Msg;

    fn process(&mut self, input: Msg, out: &mut Output<'_, Msg>) -> Result<(), OperatorError> {
        forward(input, self.strict, |m| out.emit(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_reach_upstream_of_the_accident() {
        assert_eq!(zone_targets(10, 0), 6..=10);
        assert_eq!(zone_targets(2, 0), 0..=2);
        assert_eq!(zone_targets(10, 1), 10..=14);
        assert_eq!(zone_targets(97, 1), 97..=99);
    }
}
