//! `spate lrb ...`: the Linear Road benchmark commands.

use anyhow::Result;
use clap::Subcommand;

/// Linear Road subcommands.
#[derive(Subcommand)]
pub enum LrbCommand {}

pub fn run(command: LrbCommand) -> Result<()> {
    match command {}
}
