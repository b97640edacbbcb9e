//! `spate demo`: the main job in one command. Generates a Linear Road input
//! (or reuses one made with the same options), runs the query on a local
//! cluster of worker processes, validates every answer against the reference
//! implementation and prints the run report.

use std::path::PathBuf;

use anyhow::Result;

use crate::job_args::JobArgs;
use crate::lrb::{self, LrbCommand};

/// Options of the demo run.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Number of expressways (L).
    #[arg(long, default_value_t = 1)]
    xways: u32,
    /// Simulated seconds (10800: the standard 3 hours).
    #[arg(long, default_value_t = 10_800)]
    duration_secs: u32,
    /// Replay speed-up (100: three hours in under two minutes; 0: as fast as possible).
    #[arg(long, default_value_t = 100.0)]
    speedup: f64,
    /// Where inputs and outputs go.
    #[arg(long, default_value = "lrb-data")]
    dir: PathBuf,
    #[command(flatten)]
    pub(crate) job: JobArgs,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let input_dir = args.dir.join(format!(
        "input-l{}-{}s-seed0",
        args.xways, args.duration_secs
    ));
    let input = input_dir.join("input.csv");
    let tolls = input_dir.join("historical-tolls.csv");
    if input.is_file() && tolls.is_file() {
        println!("reusing the input in {}", input_dir.display());
    } else {
        lrb::run(LrbCommand::Generate {
            xways: args.xways,
            seed: 0,
            duration_secs: args.duration_secs,
            out: input_dir.clone(),
        })?;
    }
    let out = args.dir.join("run");
    let files = lrb::RunFiles { input, tolls, out };
    lrb::run(LrbCommand::Run {
        files: files.clone(),
        speedup: args.speedup,
        step: None,
        stop_on_bad_input: false,
        chain_forwarder: false,
        sink: None,
        job: Box::new(args.job),
    })?;
    lrb::run(LrbCommand::Validate {
        files,
        speedup: if args.speedup > 0.0 {
            args.speedup
        } else {
            1.0
        },
        max_differences: 10,
        stop_on_bad_input: false,
        from: None,
    })
}
