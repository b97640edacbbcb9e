//! Linear Road reference tools: an input generator and an independent validator.
//!
//! This crate deliberately depends on nothing in the engine or the Linear Road
//! query, so that the validator is a second, independent reading of the
//! benchmark's rules (see `docs/LRB.md`), and the generator gives every run
//! the same, reproducible input.

pub mod generate;
pub mod validate;

pub use generate::{generate, GenerateError, GenerateOptions, GenerateProgress, GenerateSummary};
pub use validate::{
    expected_answers, validate, Expected, ValidateError, ValidateOptions, ValidationReport,
};
