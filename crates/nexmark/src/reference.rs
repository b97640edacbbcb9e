//! A single-threaded reference implementation of each query, with no
//! engine code: plain loops over the generated events in order. Its lines
//! are what a run's answer file must hold (in any order).

use std::collections::{BTreeMap, HashMap};

use crate::generator::GeneratorConfig;
use crate::model::Event;
use crate::queries::QueryId;

/// The answer lines of `query` over `config`'s events, sorted.
pub fn answers(query: QueryId, config: &GeneratorConfig) -> Vec<String> {
    let events = config.events();
    let mut lines = match query {
        QueryId::Q0 => bids(events, |b| {
            Some(format!(
                "{},{},{},{}",
                b.auction, b.bidder, b.price, b.date_time
            ))
        }),
        QueryId::Q1 => bids(events, |b| {
            Some(format!(
                "{},{},{},{}",
                b.auction,
                b.bidder,
                b.price * 908 / 1000,
                b.date_time
            ))
        }),
        QueryId::Q2 => bids(events, |b| {
            (b.auction % 123 == 0).then(|| format!("{},{}", b.auction, b.price))
        }),
        QueryId::Q3 => q3(events),
        QueryId::Q4 => q4(events),
        QueryId::Q5 => q5(events),
        QueryId::Q7 => q7(events),
        QueryId::Q8 => q8(events),
    };
    lines.sort_unstable();
    lines
}

fn bids(
    events: impl Iterator<Item = Event>,
    f: impl Fn(&crate::model::Bid) -> Option<String>,
) -> Vec<String> {
    events
        .filter_map(|e| match e {
            Event::Bid(b) => f(&b),
            _ => None,
        })
        .collect()
}

/// Category-10 auctions whose seller registered earlier in OR, ID or CA.
fn q3(events: impl Iterator<Item = Event>) -> Vec<String> {
    let mut sellers = HashMap::new();
    let mut lines = Vec::new();
    for event in events {
        match event {
            Event::Person(p) if ["OR", "ID", "CA"].contains(&p.state.as_str()) => {
                sellers.insert(p.id, format!("{},{},{}", p.name, p.city, p.state));
            }
            Event::Auction(a) if a.category == 10 => {
                if let Some(seller) = sellers.get(&a.seller) {
                    lines.push(format!("{seller},{}", a.id));
                }
            }
            _ => {}
        }
    }
    lines
}

/// Every change of a category's average winning bid: a bid wins while it
/// is its auction's highest within the auction's opening and expiry.
fn q4(events: impl Iterator<Item = Event>) -> Vec<String> {
    let mut auctions = HashMap::new();
    let mut winning: HashMap<u64, u64> = HashMap::new();
    let mut totals: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut averages: HashMap<u64, u64> = HashMap::new();
    let mut lines = Vec::new();
    for event in events {
        match event {
            Event::Auction(a) => {
                auctions.insert(a.id, (a.category, a.date_time, a.expires));
            }
            Event::Bid(b) => {
                let Some(&(category, opened, expires)) = auctions.get(&b.auction) else {
                    continue;
                };
                if b.date_time < opened || b.date_time > expires {
                    continue;
                }
                let total = totals.entry(category).or_default();
                match winning.get(&b.auction) {
                    Some(&best) if b.price <= best => continue,
                    Some(&best) => total.0 -= best,
                    None => total.1 += 1,
                }
                winning.insert(b.auction, b.price);
                total.0 += b.price;
                let average = total.0 / total.1;
                if averages.insert(category, average) != Some(average) {
                    lines.push(format!("{category},{average}"));
                }
            }
            Event::Person(_) => {}
        }
    }
    lines
}

/// Window starts (every `slide` ms) of windows of `size` ms holding `time`.
fn window_starts(time: u64, size: u64, slide: u64) -> impl Iterator<Item = u64> {
    let first = if time >= size {
        (time - size) / slide + 1
    } else {
        0
    };
    (first..=time / slide).map(move |k| k * slide)
}

/// The auction with most bids per 10 s window every 2 s (lowest id among equals).
fn q5(events: impl Iterator<Item = Event>) -> Vec<String> {
    let mut counts: BTreeMap<u64, HashMap<u64, u64>> = BTreeMap::new();
    for event in events {
        if let Event::Bid(b) = event {
            for start in window_starts(b.date_time, 10_000, 2_000) {
                *counts
                    .entry(start)
                    .or_default()
                    .entry(b.auction)
                    .or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .filter_map(|(start, auctions)| {
            let (auction, count) = auctions
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
            Some(format!("{start},{},{auction},{count}", start + 10_000))
        })
        .collect()
}

/// The highest bid per 10 s window (lowest auction, bidder, time among equals).
fn q7(events: impl Iterator<Item = Event>) -> Vec<String> {
    let mut best: BTreeMap<u64, (u64, u64, u64, u64)> = BTreeMap::new();
    for event in events {
        if let Event::Bid(b) = event {
            let start = b.date_time / 10_000 * 10_000;
            let candidate = (b.price, b.auction, b.bidder, b.date_time);
            let better = |old: &(u64, u64, u64, u64)| {
                candidate.0 > old.0
                    || (candidate.0 == old.0
                        && (candidate.1, candidate.2, candidate.3) < (old.1, old.2, old.3))
            };
            match best.get(&start) {
                Some(old) if !better(old) => {}
                _ => {
                    best.insert(start, candidate);
                }
            }
        }
    }
    best.into_iter()
        .map(|(start, (price, auction, bidder, time))| {
            format!(
                "{start},{},{auction},{bidder},{price},{time}",
                start + 10_000
            )
        })
        .collect()
}

/// People who opened an auction in the 10 s window they registered in.
fn q8(events: impl Iterator<Item = Event>) -> Vec<String> {
    let mut registered: HashMap<(u64, u64), String> = HashMap::new();
    let mut sellers: HashMap<(u64, u64), ()> = HashMap::new();
    for event in events {
        match event {
            Event::Person(p) => {
                registered.insert((p.date_time / 10_000, p.id), p.name);
            }
            Event::Auction(a) => {
                sellers.insert((a.date_time / 10_000, a.seller), ());
            }
            Event::Bid(_) => {}
        }
    }
    registered
        .into_iter()
        .filter(|(key, _)| sellers.contains_key(key))
        .map(|((window, id), name)| format!("{},{id},{name}", window * 10_000))
        .collect()
}

/// How a run's answers differ from the reference's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Difference {
    /// Lines the reference has that the run lacks (or has fewer times).
    pub missing: Vec<String>,
    /// Lines the run has that the reference lacks (or has fewer times).
    pub unexpected: Vec<String>,
}

impl Difference {
    /// Whether the answers are identical.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// Compares two sorted lists of lines as multisets.
pub fn compare(expected: &[String], got: &[String]) -> Difference {
    let mut difference = Difference::default();
    let (mut i, mut j) = (0, 0);
    while i < expected.len() || j < got.len() {
        match (expected.get(i), got.get(j)) {
            (Some(e), Some(g)) if e == g => {
                i += 1;
                j += 1;
            }
            (Some(e), Some(g)) if e < g => {
                difference.missing.push(e.clone());
                i += 1;
            }
            (Some(e), None) => {
                difference.missing.push(e.clone());
                i += 1;
            }
            (_, Some(g)) => {
                difference.unexpected.push(g.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    difference
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn compare_counts_repeated_lines() {
        let expected = lines(&["a", "b", "b", "c"]);
        assert!(compare(&expected, &expected).is_empty());
        let difference = compare(&expected, &lines(&["a", "b", "d"]));
        assert_eq!(difference.missing, lines(&["b", "c"]));
        assert_eq!(difference.unexpected, lines(&["d"]));
    }

    #[test]
    fn windowed_queries_report_every_window() {
        // 25 s of event time: 3 tumbling windows, 13 sliding ones.
        let config = GeneratorConfig {
            seed: 1,
            events: 100_000,
            event_rate: 4_000,
        };
        assert_eq!(answers(QueryId::Q7, &config).len(), 3);
        assert_eq!(answers(QueryId::Q5, &config).len(), 13);
        assert!(!answers(QueryId::Q8, &config).is_empty());
        assert!(!answers(QueryId::Q3, &config).is_empty());
    }
}
