//! The auction site's events (the Nexmark schema): people register,
//! open auctions and bid. Money is in cents, times in milliseconds of
//! event time.

use serde::{Deserialize, Serialize};

/// A person registering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Person id (from 1000).
    pub id: u64,
    /// First and last name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Credit card number.
    pub credit_card: String,
    /// City.
    pub city: String,
    /// US state code.
    pub state: String,
    /// Registration time, ms.
    pub date_time: u64,
}

/// An auction opening.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auction {
    /// Auction id (from 1000).
    pub id: u64,
    /// The item's name.
    pub item_name: String,
    /// The item's description.
    pub description: String,
    /// Opening bid, cents.
    pub initial_bid: u64,
    /// Reserve price, cents.
    pub reserve: u64,
    /// Opening time, ms.
    pub date_time: u64,
    /// Closing time, ms.
    pub expires: u64,
    /// The seller's person id.
    pub seller: u64,
    /// Category id (10 to 14).
    pub category: u64,
}

/// A bid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// The auction bid on.
    pub auction: u64,
    /// The bidder's person id.
    pub bidder: u64,
    /// Price, cents.
    pub price: u64,
    /// How the bid came in.
    pub channel: String,
    /// The bid page's URL.
    pub url: String,
    /// Bid time, ms.
    pub date_time: u64,
}

/// One event of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A new person.
    Person(Person),
    /// A new auction.
    Auction(Auction),
    /// A bid.
    Bid(Bid),
}

impl Event {
    /// The event's time, ms.
    pub fn date_time(&self) -> u64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}
