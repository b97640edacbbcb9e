//! The toll assessment: keyed by car, it keeps each car's account (its
//! recent toll notifications and what it was charged before each) and
//! answers account-balance and daily-expenditure queries.
//!
//! The historical tolls are reference data, not stream state: each instance
//! loads the share of `historical-tolls.csv` whose cars it owns when it
//! starts, and reloads it (rather than checkpointing it) when restored. It
//! loads on a thread of its own, off the critical path of a start, a
//! recovery, a split or a merge: only a daily-expenditure query that comes
//! before the load has ended waits for it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use spate_engine::{InstanceContext, OperatorError, Output, StatefulOperator};

use crate::model::Msg;

/// A car's account: a segment's toll is charged when the car leaves the
/// segment, so the balance as of a notification is the sum of the tolls of
/// the car's earlier notifications (accountBalanceAnswer.pl).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The sum of the tolls of all its notifications so far.
    notified: u64,
    /// The notifications a later query can still answer with, oldest
    /// first, as (Time, balance as of it): those of the last 60 s and the
    /// latest one before them.
    recent: VecDeque<(u32, u64)>,
}

impl Account {
    /// Records a notification at `time` (Times never decrease: inputs come
    /// in input order).
    fn notify(&mut self, time: u32, toll: u32) {
        self.recent.push_back((time, self.notified));
        self.notified += u64::from(toll);
        while self.recent.get(1).is_some_and(|&(t, _)| t + 60 < time) {
            self.recent.pop_front();
        }
    }

    /// The answer (ResultTime, Bal) to a query at `time`: the car's earliest
    /// notification in [time - 60, time], else its latest one before, else
    /// (time, 0). Only notifications of earlier input lines are known here;
    /// one of the same second on a later line cannot change this answer's
    /// acceptance (docs/LRB.md), so it does not depend on timing.
    fn balance(&self, time: u32) -> (u32, u64) {
        self.recent
            .iter()
            .find(|&&(t, _)| t + 60 >= time)
            .or(self.recent.back())
            .copied()
            .unwrap_or((time, 0))
    }
}

/// (VID, Day, XWay) -> toll, for the cars one instance owns.
type Tolls = HashMap<(u32, u8, u16), u32>;

/// Answers balance and expenditure queries.
pub struct TollAssessment {
    /// The load in progress, until the first query that needs it joins it.
    loading: Option<JoinHandle<Result<Tolls, OperatorError>>>,
    tolls: Tolls,
}

impl TollAssessment {
    /// Starts loading this instance's share of the historical tolls. A file
    /// that cannot be opened fails here, at once; a malformed line fails the
    /// first expenditure query, with its line number.
    pub fn load(path: &Path, ctx: &InstanceContext) -> Result<Self, OperatorError> {
        let file = File::open(path).map_err(|e| {
            OperatorError::new(format!(
                "cannot open historical tolls {}: {e}",
                path.display()
            ))
        })?;
        let (path, ctx) = (path.to_path_buf(), ctx.clone());
        let loading = std::thread::Builder::new()
            .name(format!("spate-{}-tolls", ctx.operator))
            .spawn(move || read_tolls(file, &path, &ctx))
            .map_err(|e| OperatorError::new(format!("cannot start loading the tolls: {e}")))?;
        Ok(TollAssessment {
            loading: Some(loading),
            tolls: Tolls::new(),
        })
    }

    /// The historical tolls, waiting for the load on first use.
    fn tolls(&mut self) -> Result<&Tolls, OperatorError> {
        if let Some(loading) = self.loading.take() {
            self.tolls = loading.join().map_err(|_| {
                OperatorError::new("the thread loading the historical tolls panicked")
            })??;
        }
        Ok(&self.tolls)
    }
}

/// Reads the lines of `file` (at `path`) whose cars `ctx` owns.
fn read_tolls(file: File, path: &Path, ctx: &InstanceContext) -> Result<Tolls, OperatorError> {
    let mut history = Tolls::new();
    for (i, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let line = line?;
        let bad = |why: &str| {
            OperatorError::new(format!(
                "{}:{}: {why} (expected VID,Day,XWay,Toll)",
                path.display(),
                i + 1
            ))
        };
        let fields: Vec<&str> = line.trim().split(',').collect();
        if fields.len() != 4 {
            return Err(bad(&format!("{} fields", fields.len())));
        }
        let num = |j: usize| -> Result<u64, OperatorError> {
            fields[j]
                .trim()
                .parse()
                .map_err(|_| bad(&format!("`{}` is not a non-negative integer", fields[j])))
        };
        let (vid, day, xway, toll) = (num(0)?, num(1)?, num(2)?, num(3)?);
        let vid = u32::try_from(vid).map_err(|_| bad("VID out of range"))?;
        if !ctx.owns(&vid) {
            continue;
        }
        if !(1..=69).contains(&day) || xway > 999 {
            return Err(bad("Day must be 1..=69 and XWay 0..=999"));
        }
        let toll = u32::try_from(toll).map_err(|_| bad("Toll out of range"))?;
        history.insert((vid, day as u8, xway as u16), toll);
    }
    Ok(history)
}

impl StatefulOperator for TollAssessment {
    type In = Msg;
    type Key = u32;
    type State = Account;
    type Out = Msg;

    fn key(input: &Msg) -> u32 {
        match input {
            Msg::BalanceQuery { vid, .. }
            | Msg::ExpenditureQuery { vid, .. }
            | Msg::Toll { vid, .. } => *vid,
            _ => 0,
        }
    }

    fn process(
        &mut self,
        input: Msg,
        account: &mut Account,
        out: &mut Output<'_, Msg>,
    ) -> Result<(), OperatorError> {
        match input {
            Msg::Toll { time, toll, .. } => {
                account.notify(time, toll);
                Ok(())
            }
            Msg::BalanceQuery {
                time,
                qid,
                released_us,
                ..
            } => {
                let (result_time, bal) = account.balance(time);
                out.emit(Msg::Balance {
                    time,
                    qid,
                    result_time,
                    bal,
                    released_us,
                })
            }
            Msg::ExpenditureQuery {
                time,
                vid,
                xway,
                qid,
                day,
                released_us,
            } => out.emit(Msg::Expenditure {
                time,
                qid,
                bal: self.tolls()?.get(&(vid, day, xway)).copied().unwrap_or(0),
                released_us,
            }),
            other => Err(OperatorError::new(format!(
                "toll assessment received an unexpected {other:?}"
            ))),
        }
    }
}
