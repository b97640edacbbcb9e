//! Linear Road on Spate.
