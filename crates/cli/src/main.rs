//! `spate`: the command line for the queries that ship with Spate (the
//! examples, Linear Road and Nexmark) and their benchmarks. A binary of
//! your own queries calls [`spate::main`] the same way.

use std::process::ExitCode;

use spate_engine::QueryRegistry;

fn main() -> ExitCode {
    let mut registry = QueryRegistry::new();
    spate_examples::register(&mut registry);
    spate_lrb::register(&mut registry);
    spate_nexmark::register(&mut registry);
    spate::main_with_benchmarks(registry)
}
