//! Spate's command line as a library: a binary that registers its own
//! queries and calls [`main`] gets every `spate` command for them (`run`,
//! `coordinator`, `worker`, `queries`, `status`, `kill`, `checkpoint`,
//! `scale`, the dashboard and job flags), with the same flags and exit
//! codes, in the spirit of timely's `execute_from_args`. Workers that a
//! local run or a provisioner starts run that same binary, so they know the
//! same queries.
//!
//! ```no_run
//! use spate::engine::{OperatorError, Output, QueryBuilder, QueryRegistry, StatefulOperator};
//! use spate::engine::connectors::{CsvSink, FileSource};
//!
//! /// Counts each distinct line.
//! struct CountLines;
//!
//! impl StatefulOperator for CountLines {
//!     type In = String;
//!     type Key = String;
//!     type State = u64;
//!     type Out = (String, u64);
//!     fn key(line: &String) -> String {
//!         line.clone()
//!     }
//!     fn process(
//!         &mut self,
//!         line: String,
//!         count: &mut u64,
//!         out: &mut Output<'_, (String, u64)>,
//!     ) -> Result<(), OperatorError> {
//!         *count += 1;
//!         out.emit((line, *count))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let mut registry = QueryRegistry::new();
//!     registry.register("count-lines", "running counts of each line", |params| {
//!         let input = params["input"].as_str().unwrap_or("input.txt").to_string();
//!         let mut q = QueryBuilder::new();
//!         let lines = q.source("lines", 1, move |_| FileSource::lines(&input));
//!         let counts = q.stateful("count", 2, &[lines], |_| Ok(CountLines));
//!         q.sink("write", 1, &[counts], |ctx| CsvSink::create("counts.csv", ctx));
//!         q.build()
//!     });
//!     // `my-binary run count-lines --workers 3 --param input=log.txt`, ...
//!     spate::main(registry)
//! }
//! ```

mod bench;
mod control;
mod demo;
mod hosts;
mod job_args;
mod lrb;
mod nexmark;
mod progress;
mod scaleout;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use job_args::JobArgs;
use spate_engine::cluster::{current_program, run_local, CommandProvisioner, ExternalWorkers};
use spate_engine::coordinator::{
    Coordinator, JobSummary, Provisioner, RecoveryTimeline, ScaleEvent,
};
use spate_engine::worker::{run_worker, WorkerOptions};
use spate_engine::QueryRegistry;

/// The engine, re-exported so that a binary built on Spate needs one
/// dependency to write its queries and to run them.
pub use spate_engine as engine;

/// The README's Rust snippets, compiled and run as doctests so that they
/// stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The command line of a binary built on Spate: the job commands.
#[derive(Parser)]
#[command(version, about = "Spate: elastic, fault-tolerant stream processing")]
struct JobCli {
    #[command(subcommand)]
    command: Command,
}

/// The `spate` binary's command line: the job commands and the benchmarks.
#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "Spate: elastic, fault-tolerant stream processing"
)]
struct Cli {
    #[command(subcommand)]
    command: SpateCommand,
}

/// Every command of the `spate` binary.
#[derive(Subcommand)]
enum SpateCommand {
    #[command(flatten)]
    Job(Command),
    #[command(flatten)]
    Benchmark(BenchmarkCommand),
}

/// Which query to run, and its parameters.
#[derive(clap::Args, Clone)]
struct QueryArgs {
    /// Registered query name (see `spate queries`) [default: the job
    /// file's `query`].
    query: Option<String>,
    /// A query parameter, `key=value` (value parsed as JSON when it can be).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// A JSON file of query parameters (merged under --param).
    #[arg(long, value_name = "FILE")]
    params_file: Option<PathBuf>,
    /// The job file's query and parameters (under all of the above).
    #[arg(skip)]
    job_file: job_args::FileQuery,
}

impl QueryArgs {
    /// The query to run: the one named, or the job file's.
    fn name(&self) -> Result<&str> {
        self.query
            .as_deref()
            .or(self.job_file.query.as_deref())
            .context("name the query to run (see `queries`), or give a job file with `query = ...`")
    }

    /// The query's parameters: the job file's, then the parameters file's
    /// over them, then each --param over those.
    fn params(&self) -> Result<serde_json::Value> {
        let mut params = self
            .job_file
            .params
            .clone()
            .unwrap_or_else(|| serde_json::json!({}));
        let from_file = match &self.params_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the parameters file {}", path.display())
                })?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", path.display()))?;
                if !value.is_object() {
                    bail!("{} must hold a JSON object of parameters", path.display());
                }
                value
            }
            None => serde_json::json!({}),
        };
        if let serde_json::Value::Object(values) = from_file {
            for (key, value) in values {
                params[key] = value;
            }
        }
        for pair in &self.params {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--param `{pair}` is not KEY=VALUE"))?;
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
            params[key] = value;
        }
        Ok(params)
    }
}

/// The commands every binary built on Spate has: running jobs and
/// operating them.
#[derive(Subcommand)]
enum Command {
    /// Run a query on a local embedded cluster (coordinator here, workers as
    /// child processes) until the end of its input.
    Run {
        #[command(flatten)]
        query: QueryArgs,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Run a coordinator that waits for `--workers` workers started elsewhere.
    Coordinator {
        #[command(flatten)]
        query: QueryArgs,
        /// Address to listen on for workers.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        /// Start every worker (and pool refills) with this shell command;
        /// `{coordinator}` becomes the coordinator's address, e.g.
        /// `ssh host spate worker --coordinator {coordinator}`.
        #[arg(long, value_name = "TEMPLATE")]
        provision_command: Option<String>,
        /// End a failed or killed worker with this shell command; `{pid}`
        /// and `{addr}` become the worker's process id and data address
        /// (as it reported them), e.g. `ssh host kill -9 {pid}`. Without it
        /// a failed worker is only ordered to exit, and `--kill` is refused.
        #[arg(long, value_name = "TEMPLATE", requires = "provision_command")]
        stop_command: Option<String>,
        /// Hosts `{host}` in --provision-command becomes, in turn, one per
        /// worker started (comma-separated).
        #[arg(long, value_delimiter = ',', requires = "provision_command")]
        hosts: Vec<String>,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Run a worker that joins a coordinator.
    Worker {
        /// The coordinator's address.
        #[arg(long)]
        coordinator: String,
        /// Address to accept data channels on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Seconds to keep trying to reach the coordinator.
        #[arg(long, default_value_t = 10)]
        connect_timeout_secs: u64,
        /// The cluster's shared secret, as given to the coordinator.
        #[arg(long, env = "SPATE_TOKEN", hide_env_values = true, default_value = "")]
        token: String,
    },
    /// List the queries this binary can run.
    Queries,
    /// Show a running job's workers, instances and recent events (the job
    /// must run with `--dashboard`).
    Status(control::AddrArgs),
    /// End a worker of a running job (as a crash would), to watch it recover.
    Kill(control::KillArgs),
    /// Ask a running job to checkpoint every instance now.
    Checkpoint(control::AddrArgs),
    /// Ask a running job to split an operator's busiest instance.
    Scale(control::ScaleArgs),
}

/// The benchmarks, which only the `spate` binary has: they run the Linear
/// Road and Nexmark queries, which its registry holds.
#[derive(Subcommand)]
enum BenchmarkCommand {
    /// The main job: generate a Linear Road input, run it on a local cluster,
    /// validate every answer and print the report.
    #[command(mut_arg("pool", |pool| pool.default_value("1")))]
    Demo(demo::DemoArgs),
    /// The Linear Road benchmark.
    #[command(subcommand)]
    Lrb(lrb::LrbCommand),
    /// The Nexmark benchmark (online auctions): run a query, or bench them.
    #[command(subcommand)]
    Nexmark(nexmark::NexmarkCommand),
    /// Linear Road across simulated hosts with network faults (needs root).
    #[command(subcommand)]
    Hosts(hosts::HostsCommand),
    /// Benchmarks of the engine itself (`bench state`: large keyed state).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// The queries this process runs: installed once by [`main`], and the same
/// in every worker because workers run the same binary.
static REGISTRY: OnceLock<QueryRegistry> = OnceLock::new();

/// Runs the command line of a binary built on Spate: parses the arguments,
/// runs the command (`run`, `coordinator`, `worker`, `queries`, `status`,
/// `kill`, `checkpoint`, `scale`) with `registry`'s queries, and returns
/// the exit code to return from `main` (failure after printing the error).
/// Local runs and provisioners start workers as this same executable with
/// the `worker` command, so call it from `main` with the arguments
/// untouched, and register the same queries every time.
pub fn main(registry: QueryRegistry) -> ExitCode {
    start(registry, || {
        let matches = JobCli::command().try_get_matches()?;
        let cli = JobCli::from_arg_matches(&matches)?;
        Ok((SpateCommand::Job(cli.command), matches))
    })
}

/// The `spate` binary: [`main`]'s commands and the benchmarks (`demo`,
/// `lrb`, `nexmark`, `bench`), whose queries `registry` must hold
/// (`spate_lrb::register`, `spate_nexmark::register`,
/// `spate_examples::register`).
pub fn main_with_benchmarks(registry: QueryRegistry) -> ExitCode {
    start(registry, || {
        let matches = Cli::command().try_get_matches()?;
        let cli = Cli::from_arg_matches(&matches)?;
        Ok((cli.command, matches))
    })
}

/// Sets up logging and the registry, parses with `parse` (the command and
/// the matches it came from) and runs.
fn start(
    registry: QueryRegistry,
    parse: impl FnOnce() -> Result<(SpateCommand, ArgMatches), clap::Error>,
) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let (mut command, matches) = match parse() {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    if REGISTRY.set(registry).is_err() {
        eprintln!("error: spate::main was called twice in one process; call it once, from main");
        return ExitCode::FAILURE;
    }
    match load_job_file(&mut command, &matches).and_then(|()| run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Applies the job file of a command that runs a job (`--job`): its
/// settings where no flag was given, and its query where the command
/// takes one. `matches` are the whole command line's.
fn load_job_file(command: &mut SpateCommand, matches: &ArgMatches) -> Result<()> {
    let mut given = matches;
    while let Some((_, sub)) = given.subcommand() {
        given = sub;
    }
    match command {
        SpateCommand::Job(Command::Run { query, job })
        | SpateCommand::Job(Command::Coordinator { query, job, .. }) => {
            query.job_file = job.apply_job_file(given)?;
        }
        SpateCommand::Benchmark(BenchmarkCommand::Demo(args)) => {
            args.job.apply_job_file(given)?.refuse("demo")?;
        }
        SpateCommand::Benchmark(BenchmarkCommand::Lrb(lrb::LrbCommand::Run { job, .. })) => {
            job.apply_job_file(given)?.refuse("lrb run")?;
        }
        SpateCommand::Benchmark(BenchmarkCommand::Nexmark(nexmark::NexmarkCommand::Run {
            job,
            ..
        })) => {
            job.apply_job_file(given)?.refuse("nexmark run")?;
        }
        _ => {}
    }
    Ok(())
}

/// Every query this binary knows, so any worker can build any of them.
pub(crate) fn registry() -> &'static QueryRegistry {
    REGISTRY
        .get()
        .expect("spate::main installs the query registry before running a command")
}

/// Turns Ctrl-C into a cancellation the coordinator notices.
pub(crate) fn cancel_on_ctrl_c() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    cancel
}

fn run(command: SpateCommand) -> Result<()> {
    let command = match command {
        SpateCommand::Job(command) => command,
        SpateCommand::Benchmark(BenchmarkCommand::Demo(args)) => return demo::run(args),
        SpateCommand::Benchmark(BenchmarkCommand::Lrb(command)) => return lrb::run(command),
        SpateCommand::Benchmark(BenchmarkCommand::Nexmark(command)) => {
            return nexmark::run(command)
        }
        SpateCommand::Benchmark(BenchmarkCommand::Hosts(command)) => return hosts::run(command),
        SpateCommand::Benchmark(BenchmarkCommand::Bench(command)) => return bench::run(command),
    };
    match command {
        Command::Run { query, job } => {
            let token = control::ClusterToken::for_local_run(&job.token)?;
            let mut config = job.config(registry(), query.name()?, query.params()?, &token)?;
            let cancel = config.cancel.clone();
            job.dashboard.around(&cancel, &token, |view, commands| {
                let view = view.unwrap_or_default();
                let watch = progress::watch_job(view.clone());
                config.view = Some(view.clone());
                config.commands = commands;
                let summary = run_local(registry(), &config, &current_program()?)?;
                watch.finish(progress::job_finished(&view, &summary));
                print_summary(&summary);
                Ok(())
            })
        }
        Command::Coordinator {
            query,
            listen,
            provision_command,
            stop_command,
            hosts,
            job,
        } => {
            let token = control::ClusterToken::given(&job.token);
            let mut config = job.config(registry(), query.name()?, query.params()?, &token)?;
            let coordinator = Coordinator::bind(&listen)?;
            let addr = coordinator.addr().to_string();
            let mut provisioner: Box<dyn Provisioner> = match &provision_command {
                Some(template) => {
                    let mut p =
                        CommandProvisioner::new(template, &addr, &config.token).with_hosts(hosts);
                    if let Some(stop) = &stop_command {
                        p = p.with_stop_command(stop);
                    }
                    eprintln!(
                        "coordinator listening on {addr}; starting {} workers with `{}`",
                        config.workers + config.pool,
                        p.command_line()
                    );
                    for _ in 0..config.workers + config.pool {
                        p.provision()?;
                    }
                    Box::new(p)
                }
                None => {
                    eprintln!(
                        "coordinator listening on {addr}; start {} workers with `{} worker --coordinator {addr}`",
                        config.workers + config.pool,
                        program_name()
                    );
                    Box::new(ExternalWorkers)
                }
            };
            let cancel = config.cancel.clone();
            job.dashboard.around(&cancel, &token, |view, commands| {
                let view = view.unwrap_or_default();
                let watch = progress::watch_job(view.clone());
                config.view = Some(view.clone());
                config.commands = commands;
                let summary = coordinator.run(registry(), &config, provisioner.as_mut())?;
                watch.finish(progress::job_finished(&view, &summary));
                print_summary(&summary);
                Ok(())
            })
        }
        Command::Worker {
            coordinator,
            listen,
            connect_timeout_secs,
            token,
        } => {
            let options = WorkerOptions {
                listen,
                connect_timeout: std::time::Duration::from_secs(connect_timeout_secs),
                token,
                ..WorkerOptions::new(coordinator)
            };
            Ok(run_worker(registry(), &options)?)
        }
        Command::Queries => {
            for (name, description) in registry().list() {
                println!("{name:<12} {description}");
            }
            Ok(())
        }
        Command::Status(args) => control::status(&args),
        Command::Kill(args) => control::kill(&args),
        Command::Checkpoint(args) => control::checkpoint(&args),
        Command::Scale(args) => control::scale(&args),
    }
}

/// This executable's file name, for the commands it tells the user to run.
fn program_name() -> String {
    current_program()
        .ok()
        .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "spate".to_string())
}

fn print_summary(summary: &JobSummary) {
    print_changes(&summary.scale_events, &summary.recoveries);
    println!(
        "job finished in {:.2} s on {} workers",
        summary.elapsed.as_secs_f64(),
        summary.plan.workers.len()
    );
    println!(
        "{:<20} {:>8} {:>6} {:>12} {:>12}",
        "operator", "instance", "worker", "tuples in", "tuples out"
    );
    for i in &summary.instances {
        println!(
            "{:<20} {:>8} {:>6} {:>12} {:>12}",
            i.operator, i.instance, i.worker, i.stats.tuples_in, i.stats.tuples_out
        );
    }
}

/// Prints what changed the job while it ran: every split and merge with its
/// pause, and every recovery's timeline.
pub(crate) fn print_changes(scale_events: &[ScaleEvent], recoveries: &[RecoveryTimeline]) {
    for e in scale_events {
        let decision = e
            .decision
            .map_or(String::new(), |d| format!(" (decision {d})"));
        println!(
            "scaled {} {} at {} ms{decision}: {} -> {} partitions, pause {} ms ({})",
            e.direction,
            e.operator,
            e.decided_ms,
            e.partitions_before,
            e.partitions_after,
            e.pause_ms,
            e.reason
        );
    }
    for rec in recoveries {
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        println!(
            "recovered {} (workers {:?}): killed {}, detected {} ms, restored {} ms, rewired {} ms, caught up {}",
            rec.instances.join(", "),
            rec.workers,
            ms(rec.killed_ms),
            rec.detected_ms,
            rec.restored_ms,
            rec.rewired_ms,
            ms(rec.caught_up_ms)
        );
    }
}
