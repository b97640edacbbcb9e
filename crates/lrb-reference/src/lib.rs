//! Linear Road reference tools: an input generator and an independent validator.
//!
//! This crate deliberately depends on nothing in the engine or the Linear Road
//! query, so that the validator is a second, independent reading of the
//! benchmark's rules (see `docs/LRB.md`).

pub mod generate;
pub mod validate;
