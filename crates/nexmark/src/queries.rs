//! Nexmark queries 0, 1, 2, 3, 4, 5, 7 and 8, written with the engine's
//! windows, joins, aggregates and top-k. Each writes its answers, one CSV
//! line each, to `OUT/qN.csv`; [`crate::reference`] computes the same lines
//! without the engine.

use std::cmp::Reverse;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spate_engine::api::aggregate::{Aggregate, Change, RunningAggregate};
use spate_engine::api::join::{
    IntervalJoin, IntervalJoinSpec, JoinMode, JoinSide, JoinSpec, WindowJoin, WindowJoinSpec,
};
use spate_engine::api::topk::{Ranked, Ranking, TopK};
use spate_engine::api::window::{AssignWindows, Timed, Window, WindowAggregate, WindowSpec};
use spate_engine::{
    Data, EngineError, Operator, OperatorError, Output, Query, QueryBuilder, QueryRegistry, Stream,
};

use crate::generator::GeneratorConfig;
use crate::model::{Bid, Event, Person};
use crate::sink::LineSink;
use crate::source::EventSource;

/// A Nexmark query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryId {
    /// Pass-through: every bid.
    Q0,
    /// Currency conversion: bids in euros.
    Q1,
    /// Selection: bids on a few auctions.
    Q2,
    /// Local item suggestion: sellers in OR, ID or CA of category-10 auctions.
    Q3,
    /// Average winning bid per category (a changelog).
    Q4,
    /// Hot items: the auction with most bids per sliding window.
    Q5,
    /// Highest bid per tumbling window.
    Q7,
    /// New users: people who opened an auction in the window they registered in.
    Q8,
}

impl QueryId {
    /// Every query, in order.
    pub const ALL: [QueryId; 8] = [
        QueryId::Q0,
        QueryId::Q1,
        QueryId::Q2,
        QueryId::Q3,
        QueryId::Q4,
        QueryId::Q5,
        QueryId::Q7,
        QueryId::Q8,
    ];

    /// `q0` ... `q8`.
    pub fn name(self) -> &'static str {
        match self {
            QueryId::Q0 => "q0",
            QueryId::Q1 => "q1",
            QueryId::Q2 => "q2",
            QueryId::Q3 => "q3",
            QueryId::Q4 => "q4",
            QueryId::Q5 => "q5",
            QueryId::Q7 => "q7",
            QueryId::Q8 => "q8",
        }
    }

    /// The query called `name` (`q5` or `5`).
    pub fn parse(name: &str) -> Option<QueryId> {
        let name = name.strip_prefix('q').unwrap_or(name);
        QueryId::ALL.into_iter().find(|q| &q.name()[1..] == name)
    }

    /// The name it is registered under: `nexmark-q5`.
    pub fn registered_name(self) -> String {
        format!("nexmark-{}", self.name())
    }

    /// What it computes, in a line.
    pub fn description(self) -> &'static str {
        match self {
            QueryId::Q0 => "pass-through of every bid",
            QueryId::Q1 => "bids with prices converted to euros",
            QueryId::Q2 => "bids on auctions whose id is a multiple of 123",
            QueryId::Q3 => "category-10 auctions of sellers in OR, ID or CA (a join)",
            QueryId::Q4 => {
                "average winning bid per category (an interval join and two running aggregates)"
            }
            QueryId::Q5 => {
                "auction with the most bids per 10 s window sliding by 2 s (window count, top-1)"
            }
            QueryId::Q7 => "highest bid per 10 s tumbling window (window max, top-1)",
            QueryId::Q8 => {
                "people who opened an auction in the 10 s window they registered in (windowed join)"
            }
        }
    }

    /// Its answer file in `out`.
    pub fn answer_file(self, out: &std::path::Path) -> PathBuf {
        out.join(format!("{}.csv", self.name()))
    }
}

/// Registers every query as `nexmark-qN`.
pub fn register(registry: &mut QueryRegistry) {
    for query in QueryId::ALL {
        registry.register(
            &query.registered_name(),
            &format!(
                "Nexmark {}: {} (params: events, seed, event_rate, rate, out, parallelism, shards)",
                query.name(),
                query.description()
            ),
            move |params| build(query, &NexmarkParams::from_json(params)?),
        );
    }
}

/// What a Nexmark run is given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NexmarkParams {
    /// The events.
    pub generator: GeneratorConfig,
    /// Events per wall-clock second (0: as fast as the job takes them).
    pub rate: u64,
    /// Where the answer file goes.
    pub out: PathBuf,
    /// Instances of each operator after the source (change one with
    /// `--partitions`).
    pub parallelism: u32,
    /// Shards of each window's groups in windowed aggregates.
    pub shards: u32,
}

impl NexmarkParams {
    /// These parameters as the JSON every worker builds the query from.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.generator.events,
            "seed": self.generator.seed,
            "event_rate": self.generator.event_rate,
            "rate": self.rate,
            "out": self.out,
            "parallelism": self.parallelism,
            "shards": self.shards,
        })
    }

    /// Reads the JSON parameters; all but `out` have defaults.
    pub fn from_json(params: &serde_json::Value) -> Result<Self, EngineError> {
        let number = |name: &str, default: u64| -> Result<u64, EngineError> {
            match params.get(name) {
                None => Ok(default),
                Some(v) => v.as_u64().ok_or_else(|| {
                    EngineError::InvalidQuery(format!("Nexmark's `{name}` must be a whole number"))
                }),
            }
        };
        let out = params.get("out").and_then(|v| v.as_str()).ok_or_else(|| {
            EngineError::InvalidQuery("Nexmark needs `out`, the answers' directory".into())
        })?;
        let event_rate = number("event_rate", 10_000)?;
        if event_rate == 0 {
            return Err(EngineError::InvalidQuery(
                "Nexmark's `event_rate` must be at least 1".into(),
            ));
        }
        let small = |name: &str, default: u64| -> Result<u32, EngineError> {
            u32::try_from(number(name, default)?)
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| {
                    EngineError::InvalidQuery(format!("Nexmark's `{name}` must be 1 to 1024"))
                })
        };
        Ok(NexmarkParams {
            generator: GeneratorConfig {
                seed: number("seed", 0)?,
                events: number("events", 1_000_000)?,
                event_rate,
            },
            rate: number("rate", 0)?,
            out: PathBuf::from(out),
            parallelism: small("parallelism", 2)?,
            shards: small("shards", 4)?,
        })
    }
}

/// Builds `query` with `params`.
pub fn build(query: QueryId, params: &NexmarkParams) -> Result<Query, EngineError> {
    let mut q = QueryBuilder::new();
    let generator = params.generator;
    let rate = params.rate;
    let events = q.source("events", 1, move |_| Ok(EventSource::new(generator, rate)));
    let n = params.parallelism;
    let shards = params.shards;
    let path = query.answer_file(&params.out);
    match query {
        QueryId::Q0 => {
            let bids = q.operator("pass", n, &[events], |_| Ok(Map(q0_bid)));
            answers(&mut q, &bids, path, bid_line);
        }
        QueryId::Q1 => {
            let euros = q.operator("convert", n, &[events], |_| Ok(Map(q1_convert)));
            answers(&mut q, &euros, path, bid_line);
        }
        QueryId::Q2 => {
            let some = q.operator("select", n, &[events], |_| Ok(Map(q2_select)));
            answers(&mut q, &some, path, q2_line);
        }
        QueryId::Q3 => {
            let sides = q.operator("sides", n, &[events], |_| Ok(Map(q3_sides)));
            let joined = q.stateful("join", n, &[sides], |_| Ok(IntervalJoin::<Q3>::new(0)));
            answers(&mut q, &joined, path, q3_line);
        }
        QueryId::Q4 => {
            let sides = q.operator("sides", n, &[events], |_| Ok(Map(q4_sides)));
            let winning = q.stateful("join", n, &[sides], |_| Ok(IntervalJoin::<Q4>::new(0)));
            let max = q.stateful("max", n, &[winning], |_| {
                Ok(RunningAggregate::<MaxPerAuction>::default())
            });
            let average = q.stateful("average", n, &[max], |_| {
                Ok(RunningAggregate::<CategoryAverage>::default())
            });
            answers(&mut q, &average, path, q4_line);
        }
        QueryId::Q5 => {
            let spec = WindowSpec::sliding(10_000, 2_000)?;
            let auctions = q.operator("bids", n, &[events], |_| Ok(Map(q5_auctions)));
            let assigned = q.operator("assign", n, &[auctions], move |_| {
                Ok(AssignWindows::<BidsPerAuction>::new(spec, shards))
            });
            let counts = q.stateful("count", n, &[assigned], |_| {
                Ok(WindowAggregate::<BidsPerAuction>::new(1))
            });
            let top = q.stateful("top", n, &[counts], move |_| {
                Ok(TopK::<MostBids>::new(1, shards))
            });
            answers(&mut q, &top, path, q5_line);
        }
        QueryId::Q7 => {
            let spec = WindowSpec::tumbling(10_000)?;
            let bids = q.operator("bids", n, &[events], |_| Ok(Map(q7_bids)));
            let assigned = q.operator("assign", n, &[bids], move |_| {
                Ok(AssignWindows::<BestPerAuction>::new(spec, shards))
            });
            let best = q.stateful("max", n, &[assigned], |_| {
                Ok(WindowAggregate::<BestPerAuction>::new(1))
            });
            let top = q.stateful("top", n, &[best], move |_| {
                Ok(TopK::<HighestBid>::new(1, shards))
            });
            answers(&mut q, &top, path, q7_line);
        }
        QueryId::Q8 => {
            let spec = WindowSpec::tumbling(10_000)?;
            let sides = q.operator("sides", n, &[events], |_| Ok(Map(q8_sides)));
            let joined = q.stateful("join", n, &[sides], move |_| {
                Ok(WindowJoin::<Q8>::new(spec, JoinMode::Semi))
            });
            answers(&mut q, &joined, path, q8_line);
        }
    }
    q.build()
}

/// Adds the sink writing `results` to `path`, a line each.
fn answers<T: Data>(
    q: &mut QueryBuilder,
    results: &Stream<T>,
    path: PathBuf,
    format: fn(&T) -> String,
) {
    q.sink("answers", 1, std::slice::from_ref(results), move |ctx| {
        LineSink::create(&path, format, ctx)
    });
}

/// A stateless step: each input becomes at most one output.
struct Map<I, O>(fn(I) -> Option<O>);

impl<I: Data, O: Data> Operator for Map<I, O> {
    type In = I;
    type Out = O;
    fn process(&mut self, input: I, out: &mut Output<'_, O>) -> Result<(), OperatorError> {
        match (self.0)(input) {
            Some(value) => out.emit(value),
            None => Ok(()),
        }
    }
}

fn only_bid(input: Timed<Event>) -> Option<Bid> {
    match input {
        Timed::Event {
            value: Event::Bid(bid),
            ..
        } => Some(bid),
        _ => None,
    }
}

/// The bids of a timed stream, mapped, with its progress kept.
fn timed_bids<T>(input: Timed<Event>, f: impl FnOnce(Bid) -> T) -> Option<Timed<T>> {
    match input {
        Timed::Event {
            time,
            value: Event::Bid(bid),
        } => Some(Timed::Event {
            time,
            value: f(bid),
        }),
        Timed::Event { .. } => None,
        Timed::Progress { from, to } => Some(Timed::Progress { from, to }),
        Timed::End { from, last } => Some(Timed::End { from, last }),
    }
}

fn q0_bid(input: Timed<Event>) -> Option<Bid> {
    only_bid(input)
}

/// Dollars to euros at 0.908, as Flink's Nexmark q1 does, in whole cents.
fn q1_convert(input: Timed<Event>) -> Option<Bid> {
    only_bid(input).map(|bid| Bid {
        price: bid.price * 908 / 1000,
        ..bid
    })
}

fn q2_select(input: Timed<Event>) -> Option<(u64, u64)> {
    only_bid(input)
        .filter(|bid| bid.auction % 123 == 0)
        .map(|bid| (bid.auction, bid.price))
}

fn bid_line(bid: &Bid) -> String {
    format!(
        "{},{},{},{}",
        bid.auction, bid.bidder, bid.price, bid.date_time
    )
}

fn q2_line(&(auction, price): &(u64, u64)) -> String {
    format!("{auction},{price}")
}

/// Q3's sides: people of OR, ID and CA; auctions of category 10.
/// An auction as q3 and q8 join it: `(id, seller)`.
type SellerAuction = (u64, u64);

fn q3_sides(input: Timed<Event>) -> Option<JoinSide<Person, SellerAuction>> {
    match input {
        Timed::Event {
            time,
            value: Event::Person(p),
        } if matches!(p.state.as_str(), "OR" | "ID" | "CA") => {
            Some(JoinSide::Left { time, value: p })
        }
        Timed::Event {
            time,
            value: Event::Auction(a),
        } if a.category == 10 => Some(JoinSide::Right {
            time,
            value: (a.id, a.seller),
        }),
        _ => None,
    }
}

/// Sellers and their auctions: a person accepts auctions from their
/// registration on.
struct Q3;

impl JoinSpec for Q3 {
    type Left = Person;
    type Right = SellerAuction;
    type Key = u64;
    type Out = (String, String, String, u64);
    fn left_key(p: &Person) -> u64 {
        p.id
    }
    fn right_key(a: &SellerAuction) -> u64 {
        a.1
    }
}

impl IntervalJoinSpec for Q3 {
    fn interval(p: &Person) -> (u64, u64) {
        (p.date_time, u64::MAX)
    }
    fn join(p: &Person, a: &SellerAuction) -> Self::Out {
        (p.name.clone(), p.city.clone(), p.state.clone(), a.0)
    }
}

fn q3_line((name, city, state, auction): &(String, String, String, u64)) -> String {
    format!("{name},{city},{state},{auction}")
}

/// An auction as q4 keeps it while open: `(id, category, opened, expires)`.
type OpenAuction = (u64, u64, u64, u64);

/// Q4's sides: auctions, and bids as `(auction, price)`.
fn q4_sides(input: Timed<Event>) -> Option<JoinSide<OpenAuction, (u64, u64)>> {
    match input {
        Timed::Event {
            time,
            value: Event::Auction(a),
        } => Some(JoinSide::Left {
            time,
            value: (a.id, a.category, a.date_time, a.expires),
        }),
        Timed::Event {
            time,
            value: Event::Bid(b),
        } => Some(JoinSide::Right {
            time,
            value: (b.auction, b.price),
        }),
        _ => None,
    }
}

/// A bid on an auction while it was open: `(auction, category, price)`.
type AuctionBid = (u64, u64, u64);

/// Bids join their auction while it is open.
struct Q4;

impl JoinSpec for Q4 {
    type Left = OpenAuction;
    type Right = (u64, u64);
    type Key = u64;
    type Out = AuctionBid;
    fn left_key(a: &OpenAuction) -> u64 {
        a.0
    }
    fn right_key(b: &(u64, u64)) -> u64 {
        b.0
    }
}

impl IntervalJoinSpec for Q4 {
    fn interval(a: &OpenAuction) -> (u64, u64) {
        (a.2, a.3)
    }
    fn join(a: &OpenAuction, b: &(u64, u64)) -> AuctionBid {
        (a.0, a.1, b.1)
    }
}

/// The winning (highest) bid of each auction so far: `(category, price)`.
struct MaxPerAuction;

impl Aggregate for MaxPerAuction {
    type In = AuctionBid;
    type Group = u64;
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn group(bid: &AuctionBid) -> u64 {
        bid.0
    }
    fn add(acc: &mut (u64, u64), (_, category, price): AuctionBid) {
        *acc = (category, acc.1.max(price));
    }
    fn result(_: &u64, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

/// The average of the auctions' winning bids per category: each change of
/// an auction's winning bid retracts the old one.
struct CategoryAverage;

impl Aggregate for CategoryAverage {
    type In = Change<(u64, u64)>;
    type Group = u64;
    /// Sum and count of the winning bids.
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn group(change: &Change<(u64, u64)>) -> u64 {
        change.new.0
    }
    fn add(acc: &mut (u64, u64), change: Change<(u64, u64)>) {
        if let Some((_, old)) = change.old {
            acc.0 -= old;
            acc.1 -= 1;
        }
        acc.0 += change.new.1;
        acc.1 += 1;
    }
    fn result(category: &u64, &(sum, count): &(u64, u64)) -> (u64, u64) {
        (*category, sum / count.max(1))
    }
}

fn q4_line(change: &Change<(u64, u64)>) -> String {
    format!("{},{}", change.new.0, change.new.1)
}

fn q5_auctions(input: Timed<Event>) -> Option<Timed<u64>> {
    timed_bids(input, |bid| bid.auction)
}

/// Bids per auction in a window.
struct BidsPerAuction;

impl Aggregate for BidsPerAuction {
    type In = u64;
    type Group = u64;
    type Acc = u64;
    type Out = (u64, u64);
    fn group(auction: &u64) -> u64 {
        *auction
    }
    fn add(count: &mut u64, _: u64) {
        *count += 1;
    }
    fn result(auction: &u64, count: &u64) -> (u64, u64) {
        (*auction, *count)
    }
}

/// Most bids first; among equals, the lowest auction id.
struct MostBids;

impl Ranking for MostBids {
    type Item = (u64, u64);
    type Rank = (u64, Reverse<u64>);
    fn rank(&(auction, count): &(u64, u64)) -> Self::Rank {
        (count, Reverse(auction))
    }
}

fn q5_line(r: &Ranked<(u64, u64)>) -> String {
    let (auction, count) = r.item;
    format!("{},{},{auction},{count}", r.window.start, r.window.end)
}

/// A bid as q7 ranks it: `(price, auction, bidder, time)`.
type BidPrice = (u64, u64, u64, u64);

fn q7_bids(input: Timed<Event>) -> Option<Timed<BidPrice>> {
    timed_bids(input, |b| (b.price, b.auction, b.bidder, b.date_time))
}

/// The best bid: highest price; among equals the lowest auction, bidder
/// and time.
fn bid_rank(&(price, auction, bidder, time): &BidPrice) -> (u64, Reverse<(u64, u64, u64)>) {
    (price, Reverse((auction, bidder, time)))
}

/// The best bid per auction in a window.
struct BestPerAuction;

impl Aggregate for BestPerAuction {
    type In = BidPrice;
    type Group = u64;
    type Acc = Option<BidPrice>;
    type Out = BidPrice;
    fn group(bid: &BidPrice) -> u64 {
        bid.1
    }
    fn add(best: &mut Option<BidPrice>, bid: BidPrice) {
        if best.is_none_or(|b| bid_rank(&bid) > bid_rank(&b)) {
            *best = Some(bid);
        }
    }
    fn result(_: &u64, best: &Option<BidPrice>) -> BidPrice {
        best.unwrap_or_default()
    }
}

/// The best bid of a window.
struct HighestBid;

impl Ranking for HighestBid {
    type Item = BidPrice;
    type Rank = (u64, Reverse<(u64, u64, u64)>);
    fn rank(bid: &BidPrice) -> Self::Rank {
        bid_rank(bid)
    }
}

fn q7_line(r: &Ranked<BidPrice>) -> String {
    let (price, auction, bidder, time) = r.item;
    format!(
        "{},{},{auction},{bidder},{price},{time}",
        r.window.start, r.window.end
    )
}

/// Q8's sides: people and auctions.
/// Q8's sides: people as `(id, name)` and auctions.
fn q8_sides(input: Timed<Event>) -> Option<JoinSide<(u64, String), SellerAuction>> {
    match input {
        Timed::Event {
            time,
            value: Event::Person(p),
        } => Some(JoinSide::Left {
            time,
            value: (p.id, p.name),
        }),
        Timed::Event {
            time,
            value: Event::Auction(a),
        } => Some(JoinSide::Right {
            time,
            value: (a.id, a.seller),
        }),
        _ => None,
    }
}

/// People and the auctions they opened, in the same window.
struct Q8;

impl JoinSpec for Q8 {
    type Left = (u64, String);
    type Right = SellerAuction;
    type Key = u64;
    type Out = (u64, u64, String);
    fn left_key(p: &(u64, String)) -> u64 {
        p.0
    }
    fn right_key(a: &SellerAuction) -> u64 {
        a.1
    }
}

impl WindowJoinSpec for Q8 {
    fn join(window: Window, p: &(u64, String), _: &SellerAuction) -> Self::Out {
        (window.start, p.0, p.1.clone())
    }
}

fn q8_line((start, id, name): &(u64, u64, String)) -> String {
    format!("{start},{id},{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_builds_and_parameters_are_checked() {
        let params =
            NexmarkParams::from_json(&serde_json::json!({ "out": "x", "events": 10 })).unwrap();
        assert_eq!(NexmarkParams::from_json(&params.to_json()).unwrap(), params);
        for query in QueryId::ALL {
            assert_eq!(QueryId::parse(query.name()), Some(query));
            build(query, &params).unwrap();
        }
        assert!(NexmarkParams::from_json(&serde_json::json!({})).is_err());
        assert!(NexmarkParams::from_json(&serde_json::json!({ "out": "x", "shards": 0 })).is_err());
        assert!(
            NexmarkParams::from_json(&serde_json::json!({ "out": "x", "event_rate": 0 })).is_err()
        );
        assert_eq!(QueryId::parse("q6"), None);
    }
}
