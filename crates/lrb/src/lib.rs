//! The Linear Road benchmark on Spate.
//!
//! - [`model`]: the tuples that flow through the query;
//! - [`query`]: the query, written with the engine's public API as a user
//!   would: feeder source (reads, paces and parses), forwarder, toll
//!   calculator (keyed by segment), toll assessment (keyed by car), answer
//!   sinks;
//! - [`driver`]: `spate lrb run`: runs the query on a local cluster and writes
//!   the answer files and `report.json`;
//! - [`resources`]: the run's memory and buffers, sampled each second, and
//!   their peaks (in `report.json`, checked by the soak test);
//! - [`sustained`]: latency over time and the memory trend of a long bench
//!   run.
//!
//! The input generator and the reference validator live in the separate
//! `lrb-reference` crate, which shares no code with this one.

pub mod bench;
pub mod driver;
pub mod model;
pub mod plot;
pub mod query;
pub mod resources;
pub mod sustained;

pub use query::register;
