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
