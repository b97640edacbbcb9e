//! The Nexmark event generator, after the specification's generator (as in
//! Apache Beam's and Flink's Nexmark suites): of every 50 events, 1 is a
//! person, 3 are auctions and 46 are bids; sellers, bidders and auctions
//! are drawn from recent ones with hot ones favoured; prices are
//! log-uniform between $0.01 and $1,000,000.
//!
//! Event `n` depends only on the seed and `n` (each event has its own
//! random stream), so any part of the stream can be produced on its own and
//! every run of the same configuration sees the same events.
//!
//! Departures from the specification: the `extra` padding fields are left
//! out (events are smaller than the specification's 200/500/100 bytes), and
//! a seller or bidder is always a person already registered (the
//! specification lets a few refer to the next ten people), so joins see a
//! person before that person's auctions.

use serde::{Deserialize, Serialize};

use crate::model::{Auction, Bid, Event, Person};

/// Events per proportion cycle: 1 person, 3 auctions, 46 bids.
pub const CYCLE: u64 = 50;
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
/// The first person id.
pub const FIRST_PERSON_ID: u64 = 1000;
/// The first auction id.
pub const FIRST_AUCTION_ID: u64 = 1000;
/// The first category id; there are [`CATEGORIES`].
pub const FIRST_CATEGORY_ID: u64 = 10;
/// Number of categories.
pub const CATEGORIES: u64 = 5;
/// Hot ids are multiples of this among recent ones.
const HOT_RATIO: u64 = 100;
/// One bid in this many goes to a random recent auction; the rest to a hot one.
const HOT_AUCTION_ODDS: u64 = 2;
/// One seller in this many is a random recent person; the rest a hot one.
const HOT_SELLER_ODDS: u64 = 4;
/// One bidder in this many is a random recent person; the rest a hot one.
const HOT_BIDDER_ODDS: u64 = 4;
/// Recent people sellers and bidders are drawn from.
const ACTIVE_PEOPLE: u64 = 1000;
/// Recent auctions bids are drawn from.
const IN_FLIGHT_AUCTIONS: u64 = 100;

const FIRST_NAMES: &[&str] = &[
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: &[&str] = &[
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: &[&str] = &[
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    /// Random seed.
    pub seed: u64,
    /// Number of events.
    pub events: u64,
    /// Events per second of event time (the specification's first event
    /// rate): event `n` happens at `n * 1000 / event_rate` ms.
    pub event_rate: u64,
}

impl GeneratorConfig {
    /// Event time of event `n`, ms.
    pub fn time_of(&self, n: u64) -> u64 {
        (u128::from(n) * 1000 / u128::from(self.event_rate.max(1))) as u64
    }

    /// Event `n` (from 0).
    pub fn event(&self, n: u64) -> Event {
        let mut rng = Rng::new(self.seed, n);
        let time = self.time_of(n);
        let epoch = n / CYCLE;
        let offset = n % CYCLE;
        if offset < PERSON_PROPORTION {
            Event::Person(self.person(&mut rng, epoch, time))
        } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
            let id = epoch * AUCTION_PROPORTION + offset - PERSON_PROPORTION;
            Event::Auction(self.auction(&mut rng, n, id, time))
        } else {
            Event::Bid(self.bid(&mut rng, n, time))
        }
    }

    /// All events, in order.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        (0..self.events).map(|n| self.event(n))
    }

    fn person(&self, rng: &mut Rng, base0: u64, time: u64) -> Person {
        let first = rng.pick(FIRST_NAMES);
        let last = rng.pick(LAST_NAMES);
        Person {
            id: FIRST_PERSON_ID + base0,
            name: format!("{first} {last}"),
            email: format!("{}@{}.com", rng.word(7), rng.word(5)),
            credit_card: (0..4)
                .map(|_| format!("{:04}", rng.below(10_000)))
                .collect::<Vec<_>>()
                .join(" "),
            city: rng.pick(US_CITIES).to_string(),
            state: rng.pick(US_STATES).to_string(),
            date_time: time,
        }
    }

    fn auction(&self, rng: &mut Rng, n: u64, base0: u64, time: u64) -> Auction {
        let people = last_person(n) + 1;
        let seller = if rng.below(HOT_SELLER_ODDS) > 0 {
            (people - 1) / HOT_RATIO * HOT_RATIO
        } else {
            recent(rng, people, ACTIVE_PEOPLE)
        };
        let initial_bid = price(rng);
        // The specification keeps about IN_FLIGHT_AUCTIONS auctions open:
        // an auction lasts on average as long as that many auctions take to
        // be opened.
        let events_in_flight = IN_FLIGHT_AUCTIONS * CYCLE / AUCTION_PROPORTION;
        let horizon = self.time_of(n + events_in_flight) - time;
        Auction {
            id: FIRST_AUCTION_ID + base0,
            item_name: rng.word(8),
            description: rng.word(20),
            initial_bid,
            reserve: initial_bid + price(rng),
            date_time: time,
            expires: time + 1 + rng.below(2 * horizon.max(1)),
            seller: FIRST_PERSON_ID + seller,
            category: FIRST_CATEGORY_ID + rng.below(CATEGORIES),
        }
    }

    fn bid(&self, rng: &mut Rng, n: u64, time: u64) -> Bid {
        let auctions = last_auction(n) + 1;
        let auction = if rng.below(HOT_AUCTION_ODDS) > 0 {
            (auctions - 1) / HOT_RATIO * HOT_RATIO
        } else {
            recent(rng, auctions, IN_FLIGHT_AUCTIONS)
        };
        let people = last_person(n) + 1;
        let bidder = if rng.below(HOT_BIDDER_ODDS) > 0 {
            (people - 1) / HOT_RATIO * HOT_RATIO
        } else {
            recent(rng, people, ACTIVE_PEOPLE)
        };
        let channel = rng.below(CHANNELS.len() as u64 + 1);
        let (channel, url) = match CHANNELS.get(channel as usize) {
            Some(name) => (
                name.to_string(),
                format!("https://www.nexmark.com/{}/item.htm?query=1", rng.word(5)),
            ),
            None => {
                let id = rng.below(100);
                (
                    format!("channel-{id}"),
                    format!("https://www.nexmark.com/item.htm?query=1&channel_id={id}"),
                )
            }
        };
        Bid {
            auction: FIRST_AUCTION_ID + auction,
            bidder: FIRST_PERSON_ID + bidder,
            price: price(rng),
            channel,
            url,
            date_time: time,
        }
    }
}

/// The base-0 id of the last person registered at or before event `n`.
fn last_person(n: u64) -> u64 {
    n / CYCLE
}

/// The base-0 id of the last auction opened at or before event `n` (a bid
/// comes after its cycle's auctions, so one always exists).
fn last_auction(n: u64) -> u64 {
    let epoch = n / CYCLE;
    let offset = n % CYCLE;
    if offset < PERSON_PROPORTION {
        (epoch * AUCTION_PROPORTION).saturating_sub(1)
    } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
        epoch * AUCTION_PROPORTION + offset - PERSON_PROPORTION
    } else {
        epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
    }
}

/// A base-0 id among the `window` most recent of `count` ids.
fn recent(rng: &mut Rng, count: u64, window: u64) -> u64 {
    let window = window.min(count);
    count - window + rng.below(window)
}

/// A log-uniform price between 1 cent and $1,000,000.
fn price(rng: &mut Rng) -> u64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as u64
}

/// A small random stream (SplitMix64), one per event.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, n: u64) -> Self {
        Rng(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED_0F4E_7A2C)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` at least 1).
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound.max(1))) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GeneratorConfig {
        GeneratorConfig {
            seed: 7,
            events: 10_000,
            event_rate: 1_000,
        }
    }

    #[test]
    fn the_mix_is_1_3_46_and_times_do_not_decrease() {
        let config = config();
        let (mut persons, mut auctions, mut bids) = (0, 0, 0);
        let mut last = 0;
        for event in config.events() {
            assert!(event.date_time() >= last);
            last = event.date_time();
            match event {
                Event::Person(_) => persons += 1,
                Event::Auction(_) => auctions += 1,
                Event::Bid(_) => bids += 1,
            }
        }
        assert_eq!((persons, auctions, bids), (200, 600, 9_200));
        assert_eq!(last, 9_999);
    }

    #[test]
    fn ids_are_dense_and_references_point_back() {
        let config = config();
        let (mut next_person, mut next_auction) = (FIRST_PERSON_ID, FIRST_AUCTION_ID);
        for event in config.events() {
            match event {
                Event::Person(p) => {
                    assert_eq!(p.id, next_person);
                    next_person += 1;
                }
                Event::Auction(a) => {
                    assert_eq!(a.id, next_auction);
                    next_auction += 1;
                    assert!(a.seller < next_person && a.seller >= FIRST_PERSON_ID);
                    assert!(a.expires > a.date_time);
                    assert!(
                        (FIRST_CATEGORY_ID..FIRST_CATEGORY_ID + CATEGORIES).contains(&a.category)
                    );
                }
                Event::Bid(b) => {
                    assert!(b.auction < next_auction && b.auction >= FIRST_AUCTION_ID);
                    assert!(b.bidder < next_person);
                    assert!((1..=100_000_000).contains(&b.price));
                }
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_events_and_another_seed_others() {
        let a = config();
        let b = GeneratorConfig { seed: 8, ..a };
        assert_eq!(a.event(4_321), a.event(4_321));
        assert_ne!(a.event(4_321), b.event(4_321));
    }
}
