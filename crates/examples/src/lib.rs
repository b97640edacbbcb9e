//! Example queries, small enough to read in one sitting.
//!
//! - `keycount`: running word counts over a text file, the "hello world" of
//!   stateful stream processing. A line source feeds a stateless splitter,
//!   whose words are routed by word to a stateful counter, whose running
//!   counts go to a CSV sink.

pub mod keycount;

use spate_engine::QueryRegistry;

/// Registers every example query.
pub fn register(registry: &mut QueryRegistry) {
    keycount::register(registry);
}
