//! Queries registered by name, so that every worker process can build the
//! same query graph (with the same operator code) from a name and parameters.

use std::collections::BTreeMap;

use super::query::Query;
use crate::error::EngineError;

/// Builds a query from its JSON parameters.
pub type QueryFactory = Box<dyn Fn(&serde_json::Value) -> Result<Query, EngineError> + Send + Sync>;

/// The queries this binary can run.
#[derive(Default)]
pub struct QueryRegistry {
    queries: BTreeMap<String, (String, QueryFactory)>,
}

impl QueryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `factory` under `name` with a one-line description.
    pub fn register(
        &mut self,
        name: &str,
        description: &str,
        factory: impl Fn(&serde_json::Value) -> Result<Query, EngineError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.queries.insert(
            name.to_string(),
            (description.to_string(), Box::new(factory)),
        );
        self
    }

    /// Builds the query `name` with `params`.
    pub fn build(&self, name: &str, params: &serde_json::Value) -> Result<Query, EngineError> {
        let (_, factory) = self
            .queries
            .get(name)
            .ok_or_else(|| EngineError::UnknownQuery(name.to_string()))?;
        factory(params)
    }

    /// Names and descriptions, sorted by name.
    pub fn list(&self) -> impl Iterator<Item = (&str, &str)> {
        self.queries
            .iter()
            .map(|(name, (description, _))| (name.as_str(), description.as_str()))
    }
}
