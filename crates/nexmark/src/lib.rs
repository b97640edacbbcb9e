//! The Nexmark benchmark on Spate: an online auction's people, auctions
//! and bids ([`generator`]), queries 0, 1, 2, 3, 4, 5, 7 and 8 written with
//! the engine's windows, joins and aggregates ([`queries`]), and a
//! single-threaded reference implementation without engine code that
//! checks their answers ([`reference`](mod@reference)).

pub mod export;
pub mod generator;
pub mod model;
pub mod queries;
pub mod reference;
pub mod sink;
pub mod source;

pub use queries::{register, NexmarkParams, QueryId};
