//! The toll assessment: keyed by car, it keeps each car's account (its
//! recent toll notifications and what it was charged before each) and
//! answers account-balance and daily-expenditure queries.
//!
//! The historical tolls are reference data, not stream state: each instance
//! loads the share of `historical-tolls.csv` whose cars it owns when it
//! starts, and reloads it (rather than checkpointing it) when restored. It
//! loads on a thread of its own, off the critical path of a start, a
//! recovery, a split or a merge: only a daily-expenditure query that comes
//! before the load has ended waits for it. Instances of one process that
//! own the same share of the same file share one load: an instance
//! restored on the worker that kept its warm standby (whose logic loaded
//! the share while staging) finds it loaded.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use spate_engine::state::KeyRange;
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
    /// first, as (Time, toll): those of the last 60 s and the latest one
    /// before them. The balance as of one is `notified` less its toll and
    /// the tolls after it. A car reports every 30 s, so these are a handful,
    /// kept inline and small: every notification looks its account up, and
    /// with hundreds of thousands of accounts each lookup misses the cache;
    /// 48 bytes an account (not 80 with a balance per entry) make the table
    /// a third smaller (docs/BENCH.md, "State that fits the cache").
    recent: SmallVec<[(u32, u32); 4]>,
}

impl Account {
    /// Records a notification at `time` (Times never decrease: inputs come
    /// in input order).
    fn notify(&mut self, time: u32, toll: u32) {
        self.recent.push((time, toll));
        self.notified += u64::from(toll);
        let expired = self
            .recent
            .iter()
            .skip(1)
            .take_while(|&&(t, _)| t + 60 < time)
            .count();
        self.recent.drain(..expired);
    }

    /// The answer (ResultTime, Bal) to a query at `time`: the car's earliest
    /// notification in [time - 60, time], else its latest one before, else
    /// (time, 0). Only notifications of earlier input lines are known here;
    /// one of the same second on a later line cannot change this answer's
    /// acceptance (docs/LRB.md), so it does not depend on timing.
    fn balance(&self, time: u32) -> (u32, u64) {
        let Some(last) = self.recent.len().checked_sub(1) else {
            return (time, 0);
        };
        let named = self
            .recent
            .iter()
            .position(|&(t, _)| t + 60 >= time)
            .unwrap_or(last);
        let since: u64 = self.recent[named..]
            .iter()
            .map(|&(_, toll)| u64::from(toll))
            .sum();
        (self.recent[named].0, self.notified - since)
    }
}

/// The historical tolls of the cars one instance owns, sorted by (VID,
/// Day, XWay) packed in one word: millions of lines (16 M at L=8) load
/// several times faster into a sorted table than into a hash map, and the
/// load is what the first daily-expenditure query waits for.
#[derive(Default)]
struct Tolls(Vec<(u64, u32)>);

impl Tolls {
    fn key(vid: u32, day: u8, xway: u16) -> u64 {
        (u64::from(vid) << 24) | (u64::from(day) << 16) | u64::from(xway)
    }

    /// The toll of `vid` on `day` on `xway`, 0 when the file has none.
    fn get(&self, vid: u32, day: u8, xway: u16) -> u32 {
        let key = Tolls::key(vid, day, xway);
        self.0
            .binary_search_by_key(&key, |&(k, _)| k)
            .map_or(0, |i| self.0[i].1)
    }
}

/// One share of the historical tolls, loading or loaded, shared by the
/// instances of this process that own it.
struct SharedTolls {
    /// The load in progress, until the first query that needs it joins it.
    loading: Mutex<Option<JoinHandle<Result<Tolls, OperatorError>>>>,
    loaded: OnceLock<Result<Tolls, OperatorError>>,
}

impl SharedTolls {
    /// The tolls, waiting for the load on first use.
    fn get(&self) -> Result<&Tolls, OperatorError> {
        let loaded = self.loaded.get_or_init(|| {
            let loading = self
                .loading
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            loading
                .ok_or_else(|| OperatorError::new("the historical tolls were never loaded"))?
                .join()
                .map_err(|_| {
                    OperatorError::new("the thread loading the historical tolls panicked")
                })?
        });
        loaded.as_ref().map_err(Clone::clone)
    }
}

/// The shares of this process, by file and key range, while an instance
/// holds them.
type Shares = Vec<(PathBuf, KeyRange, Weak<SharedTolls>)>;

static SHARES: Mutex<Shares> = Mutex::new(Vec::new());

/// Answers balance and expenditure queries.
pub struct TollAssessment {
    tolls: Arc<SharedTolls>,
}

impl TollAssessment {
    /// Starts loading this instance's share of the historical tolls, or
    /// takes it from another instance of this process that owns the same
    /// share. A file that cannot be opened fails here, at once; a
    /// malformed line fails the first expenditure query, with its line
    /// number.
    pub fn load(path: &Path, ctx: &InstanceContext) -> Result<Self, OperatorError> {
        let mut shares = SHARES.lock().unwrap_or_else(PoisonError::into_inner);
        shares.retain(|(_, _, share)| share.strong_count() > 0);
        let held = shares
            .iter()
            .filter(|(file, range, _)| file == path && *range == ctx.key_range)
            .find_map(|(_, _, share)| share.upgrade());
        if let Some(tolls) = held {
            return Ok(TollAssessment { tolls });
        }
        let file = File::open(path).map_err(|e| {
            OperatorError::new(format!(
                "cannot open historical tolls {}: {e}",
                path.display()
            ))
        })?;
        let range = ctx.key_range;
        let (owned, ctx) = (path.to_path_buf(), ctx.clone());
        let loading = std::thread::Builder::new()
            .name(format!("spate-{}-tolls", ctx.operator))
            .spawn(move || read_tolls(file, &owned, &ctx))
            .map_err(|e| OperatorError::new(format!("cannot start loading the tolls: {e}")))?;
        let tolls = Arc::new(SharedTolls {
            loading: Mutex::new(Some(loading)),
            loaded: OnceLock::new(),
        });
        shares.push((path.to_path_buf(), range, Arc::downgrade(&tolls)));
        Ok(TollAssessment { tolls })
    }

    /// The historical tolls, waiting for the load on first use.
    fn tolls(&self) -> Result<&Tolls, OperatorError> {
        self.tolls.get()
    }
}

/// Reads the lines of `file` (at `path`) whose cars `ctx` owns.
///
/// Every instance of a split reads the whole file, under its worker's
/// quota, and its first expenditure query waits for it: so a line of a car
/// it does not own costs only finding its end and reading its VID, and
/// whether it owns a car is decided once per run of that car's lines (the
/// generator writes them together). A malformed line is reported by the
/// instance owning its VID, hence by exactly one.
fn read_tolls(file: File, path: &Path, ctx: &InstanceContext) -> Result<Tolls, OperatorError> {
    let started = std::time::Instant::now();
    let mut text = Vec::new();
    BufReader::with_capacity(1 << 20, file).read_to_end(&mut text)?;
    let mut rows = Vec::new();
    let bad = |line_no: u64, why: &str| {
        OperatorError::new(format!(
            "{}:{line_no}: {why} (expected VID,Day,XWay,Toll)",
            path.display()
        ))
    };
    let mut owner: Option<(u32, bool)> = None;
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = index as u64 + 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let first = text.split(|&b| b == b',').next().unwrap_or_default();
        let vid = number(first).map_err(|why| bad(line_no, &why))?;
        let vid = u32::try_from(vid).map_err(|_| bad(line_no, "VID out of range"))?;
        let owned = match owner {
            Some((car, owned)) if car == vid => owned,
            _ => {
                let owned = ctx.owns(&vid);
                owner = Some((vid, owned));
                owned
            }
        };
        if !owned {
            continue;
        }
        let [_, day, xway, toll] = history_fields(text).map_err(|why| bad(line_no, &why))?;
        if !(1..=69).contains(&day) || xway > 999 {
            return Err(bad(line_no, "Day must be 1..=69 and XWay 0..=999"));
        }
        let toll = u32::try_from(toll).map_err(|_| bad(line_no, "Toll out of range"))?;
        rows.push((Tolls::key(vid, day as u8, xway as u16), toll, line_no));
    }
    // The generator writes the file in key order, so this sort is one pass.
    rows.sort_unstable();
    if let Some(pair) = rows.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(bad(
            pair[1].2.max(pair[0].2),
            "a second toll for the same VID, Day and XWay; the file must have one line per (VID, Day, XWay)",
        ));
    }
    tracing::debug!(
        instance = ctx.instance,
        tolls = rows.len(),
        secs = started.elapsed().as_secs_f64(),
        "historical tolls loaded"
    );
    Ok(Tolls(
        rows.into_iter().map(|(key, toll, _)| (key, toll)).collect(),
    ))
}

/// The four non-negative integers of a historical-tolls line (spaces
/// around each allowed), or why they are not.
fn history_fields(text: &[u8]) -> Result<[u64; 4], String> {
    let mut values = [0u64; 4];
    let mut n = 0;
    for field in text.split(|&b| b == b',') {
        if n == 4 {
            return Err("more than 4 fields".into());
        }
        values[n] = number(field)?;
        n += 1;
    }
    if n != 4 {
        return Err(format!("{n} fields"));
    }
    Ok(values)
}

/// The non-negative integer of one field (spaces around it allowed), or
/// why it is not one.
fn number(field: &[u8]) -> Result<u64, String> {
    let digits = field.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "`{}` is not a non-negative integer",
            String::from_utf8_lossy(field)
        ));
    }
    Ok(digits
        .iter()
        .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0')))
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
                bal: self.tolls()?.get(vid, day, xway),
                released_us,
            }),
            other => Err(OperatorError::new(format!(
                "toll assessment received an unexpected {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use spate_engine::ids::Incarnation;
    use spate_engine::state::KeyRange;

    use super::*;

    fn load(text: &str) -> Result<Tolls, OperatorError> {
        let path = std::env::temp_dir().join(format!(
            "lrb-tolls-{}-{}.csv",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        let tolls = read_tolls(File::open(&path).unwrap(), &path, &context(KeyRange::FULL));
        std::fs::remove_file(&path).unwrap();
        tolls
    }

    fn context(key_range: KeyRange) -> InstanceContext {
        InstanceContext {
            operator: "toll_assessment".into(),
            instance: 0,
            index: 0,
            parallelism: 1,
            key_range,
            restoring: false,
            incarnation: Incarnation(0),
        }
    }

    #[test]
    fn a_balance_is_the_tolls_before_the_notification_it_names() {
        assert_eq!(Account::default().balance(50), (50, 0));
        let mut account = Account::default();
        for (time, toll) in [(10, 5), (40, 7), (70, 0), (130, 3)] {
            account.notify(time, toll);
        }
        // The one at 10 has expired: 40 is the latest before 130 - 60.
        assert_eq!(account.recent.len(), 3);
        // The earliest notification in [t - 60, t], with the tolls before it.
        assert_eq!(account.balance(135), (130, 12));
        assert_eq!(account.balance(125), (70, 12));
        assert_eq!(account.balance(100), (40, 5));
        assert_eq!(account.balance(90), (40, 5));
        // None in the window: the latest one.
        assert_eq!(account.balance(300), (130, 12));
        // Kept small: every notification's lookup of it misses the cache.
        assert!(std::mem::size_of::<Account>() <= 48);
    }

    #[test]
    fn instances_owning_the_same_share_share_one_load() {
        let path =
            std::env::temp_dir().join(format!("lrb-shared-tolls-{}.csv", std::process::id()));
        std::fs::write(&path, "7,1,1,20\n").unwrap();
        let whole = context(KeyRange::FULL);
        let (first, second) = (
            TollAssessment::load(&path, &whole).unwrap(),
            TollAssessment::load(&path, &whole).unwrap(),
        );
        assert!(Arc::ptr_eq(&first.tolls, &second.tolls));
        let half = context(KeyRange::FULL.split_even(2)[0]);
        let other = TollAssessment::load(&path, &half).unwrap();
        assert!(!Arc::ptr_eq(&first.tolls, &other.tolls));
        assert_eq!(second.tolls().unwrap().get(7, 1, 1), 20);
        // Once no instance holds a share, the next one reads the file again.
        drop((first, second));
        std::fs::write(&path, "7,1,1,30\n").unwrap();
        let again = TollAssessment::load(&path, &whole).unwrap();
        assert_eq!(again.tolls().unwrap().get(7, 1, 1), 30);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn finds_each_toll_in_any_line_order() {
        let tolls = load("7,2,1,30\n 0 , 69 , 999 , 5 \n\n7,1,1,20\r\n7,2,0,10\n").unwrap();
        assert_eq!(tolls.get(7, 1, 1), 20);
        assert_eq!(tolls.get(7, 2, 1), 30);
        assert_eq!(tolls.get(7, 2, 0), 10);
        assert_eq!(tolls.get(0, 69, 999), 5);
        assert_eq!(tolls.get(7, 3, 1), 0, "no line: no toll");
    }

    #[test]
    fn refuses_bad_lines_with_their_number() {
        let error = |text: &str| load(text).err().unwrap().to_string();
        assert!(error("1,2,3\n").contains(":1: 3 fields"));
        assert!(error("1,2,3,4\n1,2,3,-4\n").contains(":2: `-4` is not"));
        assert!(error("1,2,3,4,5\n").contains("more than 4 fields"));
        assert!(error("1,70,3,4\n").contains("Day must be"));
        assert!(error("1,2,3,4\n5,6,7,8\n1,2,3,9\n").contains(":3: a second toll"));
        assert!(error("1,2,3,4\nx,6,7,8\n").contains(":2: `x` is not"));
    }

    #[test]
    fn each_line_is_read_by_the_instance_owning_its_car_only() {
        // Cars 0..200, three lines each, over two halves of the key space:
        // each car's tolls are found by exactly one, and a malformed line
        // (car 7's) only by the one owning car 7.
        let mut text = String::new();
        for vid in 0..200 {
            for day in 1..=3 {
                text.push_str(&format!("{vid},{day},0,{}\n", vid * 10 + day));
            }
        }
        let path = std::env::temp_dir().join(format!("tolls-split-{}.csv", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let halves = KeyRange::FULL.split_even(2);
        let ctx = |key_range| InstanceContext {
            operator: "toll_assessment".into(),
            instance: 0,
            index: 0,
            parallelism: 2,
            key_range,
            restoring: false,
            incarnation: Incarnation(0),
        };
        let loaded: Vec<Tolls> = halves
            .iter()
            .map(|r| read_tolls(File::open(&path).unwrap(), &path, &ctx(*r)).unwrap())
            .collect();
        for vid in 0..200u32 {
            let owners: Vec<usize> = (0..2).filter(|&h| ctx(halves[h]).owns(&vid)).collect();
            assert_eq!(owners.len(), 1);
            for (h, tolls) in loaded.iter().enumerate() {
                let expected = if owners[0] == h { vid * 10 + 2 } else { 0 };
                assert_eq!(tolls.get(vid, 2, 0), expected, "car {vid}, half {h}");
            }
        }
        std::fs::write(&path, text.replace("7,2,0,72\n", "7,2,zero,72\n")).unwrap();
        let failed: Vec<bool> = halves
            .iter()
            .map(|r| read_tolls(File::open(&path).unwrap(), &path, &ctx(*r)).is_err())
            .collect();
        std::fs::remove_file(&path).unwrap();
        let owner = (0..2).find(|&h| ctx(halves[h]).owns(&7u32)).unwrap();
        assert_eq!(failed, [owner == 0, owner == 1]);
    }
}
