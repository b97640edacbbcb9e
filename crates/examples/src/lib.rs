//! Example queries.
