//! Example queries, small enough to read in one sitting.
//!
//! - `keycount`: running word counts over a text file, the "hello world" of
//!   stateful stream processing. A line source feeds a stateless splitter,
//!   whose words are routed by word to a stateful counter, whose running
//!   counts go to a CSV sink.
//! - `kvstore`: a key-value store fed by generated puts, holding a chosen
//!   amount of state: what measuring a split of large state needs; with a
//!   `latency` sink that records end-to-end latency (`latency`), what
//!   `spate bench state` runs.

pub mod keycount;
pub mod kvstore;
pub mod latency;

use spate_engine::{EngineError, QueryRegistry};

/// Registers every example query.
pub fn register(registry: &mut QueryRegistry) {
    keycount::register(registry);
    kvstore::register(registry);
}

/// The whole-number query parameter `name`, or `default` when absent.
fn param_u32(params: &serde_json::Value, name: &str, default: u32) -> Result<u32, EngineError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| EngineError::InvalidQuery(format!("`{name}` must be a whole number"))),
    }
}
