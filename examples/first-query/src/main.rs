//! The tutorial query (README, "Write your first query"): the ten most
//! visited pages of every minute of a web server's access log, and a
//! running count of visits per page, on Spate.
//!
//! `top-pages` is a complete Spate binary: it registers one query and hands
//! the command line to `spate::main`, so it has every `spate` command
//! (`run`, `coordinator`, `worker`, `status`, `kill`, `scale`, ...) for it:
//!
//! ```sh
//! top-pages run top-pages --param input=access.log --param top=top.csv \
//!     --param totals=totals.csv --workers 3
//! ```

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};
use spate::engine::api::aggregate::Aggregate;
use spate::engine::api::topk::{Ranked, Ranking, TopK};
use spate::engine::api::window::{AssignWindows, Timed, WindowAggregate, WindowSpec};
use spate::engine::connectors::{CsvSink, EventTime, FileSource};
use spate::engine::{
    EngineError, Operator, OperatorError, Output, Query, QueryBuilder, QueryRegistry,
    StatefulOperator,
};

/// One line of the access log, `TIME_MS PAGE USER`: a tuple is any serde
/// type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    /// When, in milliseconds since the UNIX epoch (the event time).
    pub time_ms: u64,
    /// The page visited.
    pub page: String,
    /// Who visited it.
    pub user: String,
}

impl Visit {
    /// Parses a log line; the error says what is wrong with it (the file
    /// source skips such lines and reports their line numbers).
    pub fn parse(line: &str) -> Result<Visit, String> {
        let mut fields = line.split_whitespace();
        let (Some(time), Some(page), Some(user), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("`{line}` is not TIME_MS PAGE USER"));
        };
        let time_ms = time
            .parse()
            .map_err(|_| format!("`{time}` is not a time in milliseconds"))?;
        Ok(Visit {
            time_ms,
            page: page.to_string(),
            user: user.to_string(),
        })
    }
}

/// A page and its visits in one window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageVisits {
    /// The page.
    pub page: String,
    /// Its visits.
    pub visits: u64,
}

/// Counting visits per page: the fold that [`WindowAggregate`] applies to
/// each window.
pub struct VisitsPerPage;

impl Aggregate for VisitsPerPage {
    type In = Visit;
    type Group = String;
    type Acc = u64;
    type Out = PageVisits;

    fn group(visit: &Visit) -> String {
        visit.page.clone()
    }

    fn add(visits: &mut u64, _visit: Visit) {
        *visits += 1;
    }

    fn result(page: &String, visits: &u64) -> PageVisits {
        PageVisits {
            page: page.clone(),
            visits: *visits,
        }
    }
}

/// Most visits first; pages with as many visits in name order, so that the
/// ranking never depends on arrival order.
pub struct MostVisited;

impl Ranking for MostVisited {
    type Item = PageVisits;
    type Rank = (u64, Reverse<String>);

    fn rank(item: &PageVisits) -> Self::Rank {
        (item.visits, Reverse(item.page.clone()))
    }
}

/// A row of `top.csv`: the minute (its first millisecond), a rank, a page
/// and its visits that minute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopRow {
    /// The window's first millisecond.
    pub minute_ms: u64,
    /// 1 for the most visited.
    pub rank: u32,
    /// The page.
    pub page: String,
    /// Its visits in the minute.
    pub visits: u64,
}

/// A stateless operator: a ranked page becomes a flat CSV row.
pub struct ToRow;

impl Operator for ToRow {
    type In = Ranked<PageVisits>;
    type Out = TopRow;

    fn process(
        &mut self,
        ranked: Ranked<PageVisits>,
        out: &mut Output<'_, TopRow>,
    ) -> Result<(), OperatorError> {
        out.emit(TopRow {
            minute_ms: ranked.window.start,
            rank: ranked.rank,
            page: ranked.item.page,
            visits: ranked.item.visits,
        })
    }
}

/// A stateful operator of our own: the running count of visits of each
/// page. The engine owns the state (one `u64` per page) and hands
/// `process` the count of the input's page, which is what lets it
/// checkpoint, restore and split the counts by page.
pub struct PageTotals;

impl StatefulOperator for PageTotals {
    type In = Timed<Visit>;
    type Key = String;
    type State = u64;
    type Out = (String, u64);

    fn key(input: &Timed<Visit>) -> String {
        match input {
            Timed::Event { value, .. } => value.page.clone(),
            // Never sent here: the graph filters progress out.
            Timed::Progress { .. } | Timed::End { .. } => String::new(),
        }
    }

    fn process(
        &mut self,
        input: Timed<Visit>,
        visits: &mut u64,
        out: &mut Output<'_, (String, u64)>,
    ) -> Result<(), OperatorError> {
        if let Timed::Event { value, .. } = input {
            *visits += 1;
            out.emit((value.page, *visits))?;
        }
        Ok(())
    }
}

/// The query's name.
pub const NAME: &str = "top-pages";

/// A string parameter.
fn text(params: &serde_json::Value, name: &str) -> Result<String, EngineError> {
    params[name].as_str().map(str::to_string).ok_or_else(|| {
        EngineError::InvalidQuery(format!("{NAME} needs the parameter `{name}` (a file path)"))
    })
}

/// A whole-number parameter, or `default`.
fn number(params: &serde_json::Value, name: &str, default: u64) -> Result<u64, EngineError> {
    match &params[name] {
        serde_json::Value::Null => Ok(default),
        value => value
            .as_u64()
            .ok_or_else(|| EngineError::InvalidQuery(format!("`{name}` must be a whole number"))),
    }
}

/// Builds the query from its parameters: `input` (the log), `top` and
/// `totals` (the CSV files to write), `lines_per_sec` (pace the input, 0:
/// as fast as it reads), `shards` (partitions of the windowed count, 2).
pub fn build(params: &serde_json::Value) -> Result<Query, EngineError> {
    let input = text(params, "input")?;
    let (top, totals) = (text(params, "top")?, text(params, "totals")?);
    let lines_per_sec = number(params, "lines_per_sec", 0)? as f64;
    let shards = number(params, "shards", 2)? as u32;
    let minutes = WindowSpec::tumbling(60_000)?;

    let mut q = QueryBuilder::new();
    // The log, with event-time progress every second so windows close.
    let visits = q.source("visits", 1, move |_| {
        let log = FileSource::parsed(&input, Visit::parse)?.paced(lines_per_sec);
        Ok(EventTime::new(log, 1_000, |v: &Visit| v.time_ms))
    });
    // Only events (not progress) count towards the running totals.
    let events = visits.filter(|t| matches!(t, Timed::Event { .. }));
    // Top pages per minute, from the engine's window and top-k blocks.
    let windowed = q.operator("windows", 1, &[visits], move |_| {
        Ok(AssignWindows::<VisitsPerPage>::new(minutes, shards))
    });
    let counts = q.stateful("count", shards, &[windowed], |_| {
        Ok(WindowAggregate::<VisitsPerPage>::new(1))
    });
    let best = q.stateful("top", 1, &[counts], move |_| {
        Ok(TopK::<MostVisited>::new(10, shards))
    });
    let rows = q.operator("rows", 1, &[best], |_| Ok(ToRow));
    q.sink("write-top", 1, &[rows], move |ctx| {
        CsvSink::create(&top, ctx)
    });
    // Running totals per page, from our own stateful operator.
    let running = q.stateful("totals", 2, &[events], |_| Ok(PageTotals));
    q.sink("write-totals", 1, &[running], move |ctx| {
        CsvSink::create(&totals, ctx)
    });
    q.build()
}

fn main() -> std::process::ExitCode {
    let mut registry = QueryRegistry::new();
    registry.register(
        NAME,
        "top 10 pages by visits per minute of an access log (params: input, top, totals, lines_per_sec, shards)",
        build,
    );
    spate::main(registry)
}
