//! Builders for hand-made Linear Road inputs.

#![allow(dead_code)] // Each test binary uses a different subset.

use lrb_reference::validate::{expected_answers, BadInput, Expected, ValidateError};

/// Input lines collected in any order and emitted in Time order (stable, so
/// lines of one second keep the order they were added in).
#[derive(Default)]
pub struct Input {
    lines: Vec<(u32, String)>,
}

impl Input {
    /// A position report; Seg is derived from Pos.
    pub fn report(
        &mut self,
        t: u32,
        vid: u32,
        spd: u32,
        lane: u32,
        dir: u32,
        pos: u32,
    ) -> &mut Self {
        self.report_on(t, vid, spd, 0, lane, dir, pos)
    }

    /// A position report on expressway `xway`.
    #[allow(clippy::too_many_arguments)]
    pub fn report_on(
        &mut self,
        t: u32,
        vid: u32,
        spd: u32,
        xway: u32,
        lane: u32,
        dir: u32,
        pos: u32,
    ) -> &mut Self {
        let seg = pos / 5280;
        self.lines.push((
            t,
            format!("0,{t},{vid},{spd},{xway},{lane},{dir},{seg},{pos},-1,-1,-1,-1,-1,-1"),
        ));
        self
    }

    pub fn balance(&mut self, t: u32, vid: u32, qid: u32) -> &mut Self {
        self.lines.push((
            t,
            format!("2,{t},{vid},-1,-1,-1,-1,-1,-1,{qid},-1,-1,-1,-1,-1"),
        ));
        self
    }

    pub fn expenditure(&mut self, t: u32, vid: u32, xway: u32, qid: u32, day: u32) -> &mut Self {
        self.lines.push((
            t,
            format!("3,{t},{vid},-1,{xway},-1,-1,-1,-1,{qid},-1,-1,-1,-1,{day}"),
        ));
        self
    }

    /// `count` cars (VIDs from `first_vid`) that each report at t = 0, 30,
    /// ... up to `until` in segment `seg`, lane 1, Dir 0, at speed `spd`,
    /// creeping forward but never leaving the segment.
    pub fn crowd(
        &mut self,
        first_vid: u32,
        count: u32,
        seg: u32,
        spd: u32,
        until: u32,
    ) -> &mut Self {
        for vid in first_vid..first_vid + count {
            for (k, t) in (0..=until).step_by(30).enumerate() {
                let pos = seg * 5280 + 10 * k as u32 + vid % 7;
                self.report(t, vid, spd, 1, 0, pos);
            }
        }
        self
    }

    /// A car standing still at `pos` (lane `lane`, Dir `dir`) for `reports`
    /// reports from `start`, every 30 s.
    pub fn stopped(
        &mut self,
        vid: u32,
        start: u32,
        reports: u32,
        lane: u32,
        dir: u32,
        pos: u32,
    ) -> &mut Self {
        for k in 0..reports {
            self.report(start + 30 * k, vid, 0, lane, dir, pos);
        }
        self
    }

    pub fn text(&self) -> String {
        let mut lines = self.lines.clone();
        lines.sort_by_key(|(t, _)| *t);
        lines.into_iter().map(|(_, l)| l + "\n").collect()
    }

    pub fn expected(&self, history: &str) -> Expected {
        try_expected(&self.text(), history).expect("hand-made input is valid")
    }
}

/// The expected answers, stopping at the first bad input line.
pub fn try_expected(input: &str, history: &str) -> Result<Expected, ValidateError> {
    expected_answers(input.as_bytes(), history.as_bytes(), BadInput::Stop)
}

/// The expected answers, skipping bad input lines.
pub fn skipping_bad_lines(input: &str) -> Expected {
    expected_answers(input.as_bytes(), &b""[..], BadInput::Skip).expect("skips bad lines")
}

/// (Time, LAV, Toll) of every toll notification of `vid`.
pub fn tolls_of(e: &Expected, vid: i64) -> Vec<(u32, i32, i64)> {
    e.tolls
        .iter()
        .filter(|r| r.vid == vid)
        .map(|r| (r.time, r.lav, r.toll))
        .collect()
}

/// (Time, VID, Seg) of every accident alert.
pub fn alerts(e: &Expected) -> Vec<(u32, i64, u32)> {
    e.accidents.iter().map(|r| (r.time, r.vid, r.seg)).collect()
}

/// Hand-made inputs whose answers the tests work out by hand, shared by the
/// validator's tests and the query's end-to-end tests.
pub mod scenario {
    use super::Input;

    const SEG_FEET: u32 = 5280;

    /// Segment 20 with minute averages A(1..=5) = 39.5, 39.75, 40, 39.75, 40
    /// (exact means of per-car means; minute 5 has 60 cars), and car 500
    /// entering at 300.
    pub fn lav_at_39_8() -> Input {
        let mut input = Input::default();
        let seg = 20 * SEG_FEET;
        // A(1) = 39.5 (one car: 39, 40).
        input
            .report(0, 1, 39, 1, 0, seg)
            .report(30, 1, 40, 1, 0, seg + 1);
        // A(2) = (40.5 + 39) / 2 = 39.75.
        input
            .report(60, 2, 40, 1, 0, seg)
            .report(90, 2, 41, 1, 0, seg + 1);
        input
            .report(60, 3, 39, 1, 0, seg)
            .report(90, 3, 39, 1, 0, seg + 1);
        // A(3) = 40 (one car).
        input
            .report(120, 4, 40, 1, 0, seg)
            .report(150, 4, 40, 1, 0, seg + 1);
        // A(4) = (40 + 39.5) / 2 = 39.75.
        input
            .report(180, 5, 40, 1, 0, seg)
            .report(210, 5, 40, 1, 0, seg + 1);
        input
            .report(180, 6, 39, 1, 0, seg)
            .report(210, 6, 40, 1, 0, seg + 1);
        // A(5) = 40: 60 cars at 40 and 40, so NOV(6) = 60.
        for vid in 100..160 {
            input.report(240, vid, 40, 1, 0, seg + 2);
            input.report(270, vid, 40, 1, 0, seg + 3);
        }
        input.report(300, 500, 40, 1, 0, seg + 4);
        input
    }

    /// Segment 10 with A(1) = 39.5 (one car) and A(2) = 40.5 (60 cars), and
    /// car 500 entering at 120.
    pub fn lav_at_40() -> Input {
        let mut input = Input::default();
        let seg = 10 * SEG_FEET;
        // A(1) = 39.5: one car at 39 and 40.
        input
            .report(0, 1, 39, 1, 0, seg)
            .report(30, 1, 40, 1, 0, seg + 1);
        // A(2) = 40.5: 60 cars at 40 and 41, so NOV(3) = 60.
        for vid in 100..160 {
            input.report(60, vid, 40, 1, 0, seg + 2);
            input.report(90, vid, 41, 1, 0, seg + 3);
        }
        input.report(120, 500, 40, 1, 0, seg + 4);
        input
    }

    /// Segment 30 with reports in minutes 1 (A = 30.5), 4 (49) and 6 (20)
    /// only; cars 500 and 501 enter at 300 and 360.
    pub fn lav_with_empty_minutes() -> Input {
        let mut input = Input::default();
        let seg = 30 * SEG_FEET;
        input
            .report(0, 1, 30, 1, 0, seg)
            .report(30, 1, 31, 1, 0, seg + 1); // A(1) = 30.5
        input.report(180, 2, 49, 1, 0, seg); // A(4) = 49; minutes 2, 3, 5 empty
        input.report(300, 500, 20, 1, 0, seg + 5); // A(6) = 20
        input.report(360, 501, 20, 1, 0, seg + 6);
        input
    }

    /// Car 7 drives through three congested segments (60 cars at 10 mph each,
    /// every minute), exits on lane 4 and comes back; car 8 enters at 200.
    pub fn balances() -> Input {
        let mut input = Input::default();
        input
            .crowd(1000, 60, 10, 10, 600)
            .crowd(2000, 60, 11, 10, 600)
            .crowd(3000, 60, 12, 10, 600);
        input.balance(50, 7, 1);
        input.report(60, 7, 10, 0, 0, 10 * SEG_FEET + 100); // N1
        input.report(90, 7, 10, 1, 0, 10 * SEG_FEET + 2000);
        input.report(120, 7, 10, 1, 0, 11 * SEG_FEET + 100); // N2
        input.balance(130, 7, 2);
        input.report(150, 7, 10, 1, 0, 12 * SEG_FEET + 100); // N3
        input.balance(150, 7, 3);
        input.report(180, 7, 10, 4, 0, 13 * SEG_FEET + 100); // exit lane: none
        input.balance(200, 8, 4);
        input.report(200, 8, 10, 0, 0, 10 * SEG_FEET + 300);
        input.balance(200, 8, 5);
        input.balance(300, 7, 6);
        input.balance(400, 7, 7);
        input.report(400, 7, 10, 0, 0, 11 * SEG_FEET + 300); // N4: re-entry
        input.report(430, 7, 10, 1, 0, 11 * SEG_FEET + 2000);
        input
    }
}
