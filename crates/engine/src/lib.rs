//! Spate's engine: a distributed stream processor whose operator state is
//! owned by the engine, so that one small set of state primitives
//! (checkpoint, restore, partition) serves both fault tolerance and scale out.
//!
//! The crate is laid out as the architecture:
//! - [`api`]: what a query author writes: operators, keyed state, the query builder;
//! - [`state`]: the state primitives: keyed state, checkpoints, partitioning, routing;
//! - [`stamp`]: logical timestamps, progress marks and the stamp-ordered merge;
//! - [`ids`]: the identities of instances, workers and incarnations;
//! - [`plan`]: the deployment plan and the identities every layer shares;
//! - [`wire`]: the binary frames that move tuples and control messages;
//! - [`worker`]: the process that hosts operator instances;
//! - [`coordinator`]: deployment and supervision of a query on workers;
//! - [`connectors`]: ready-made, checkpointable sources and sinks (files,
//!   directories, generators);
//! - [`cluster`]: a local embedded cluster of worker child processes.

pub mod api;
pub mod cluster;
pub mod connectors;
pub mod coordinator;
pub mod error;
pub mod hash;
pub mod ids;
pub mod plan;
pub mod stamp;
pub mod state;
pub mod wire;
pub mod worker;

pub use api::{
    Data, InstanceContext, Key, Operator, OperatorError, Output, Query, QueryBuilder,
    QueryRegistry, Sink, Source, SourceStep, StatefulOperator, Stream,
};
pub use error::EngineError;
pub use stamp::Stamp;
