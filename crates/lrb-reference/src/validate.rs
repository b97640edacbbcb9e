//! Independent Linear Road reference validator.
