//! The toll assessment: keyed by car, it keeps each car's balance (the sum
//! of its tolls) and answers account-balance and daily-expenditure queries.
//!
//! The historical tolls are reference data, not stream state: each instance
//! loads the share of `historical-tolls.csv` whose cars it owns when it
//! starts, and reloads it (rather than checkpointing it) when restored.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use spate_engine::{InstanceContext, OperatorError, Output, StatefulOperator};

use crate::model::Msg;

/// Answers balance and expenditure queries.
pub struct TollAssessment {
    /// (VID, Day, XWay) -> toll, for the cars this instance owns.
    history: HashMap<(u32, u8, u16), u32>,
}

impl TollAssessment {
    /// Loads this instance's share of the historical tolls.
    pub fn load(path: &Path, ctx: &InstanceContext) -> Result<Self, OperatorError> {
        let file = File::open(path).map_err(|e| {
            OperatorError::new(format!(
                "cannot open historical tolls {}: {e}",
                path.display()
            ))
        })?;
        let mut history = HashMap::new();
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
        Ok(TollAssessment { history })
    }
}

impl StatefulOperator for TollAssessment {
    type In = Msg;
    type Key = u32;
    type State = u64;
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
        balance: &mut u64,
        out: &mut Output<'_, Msg>,
    ) -> Result<(), OperatorError> {
        match input {
            Msg::Toll { toll, .. } => {
                *balance += u64::from(toll);
                Ok(())
            }
            Msg::BalanceQuery {
                time,
                qid,
                released_us,
                ..
            } => out.emit(Msg::Balance {
                time,
                qid,
                result_time: time,
                bal: *balance,
                released_us,
            }),
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
                bal: self.history.get(&(vid, day, xway)).copied().unwrap_or(0),
                released_us,
            }),
            other => Err(OperatorError::new(format!(
                "toll assessment received an unexpected {other:?}"
            ))),
        }
    }
}
