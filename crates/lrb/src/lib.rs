//! Linear Road on Spate.

use spate_engine::QueryRegistry;

/// Registers the Linear Road query.
pub fn register(_registry: &mut QueryRegistry) {}
