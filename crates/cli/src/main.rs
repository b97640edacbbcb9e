//! `spate`: the one entry point. Runs local clusters, workers and
//! coordinators, and the Linear Road benchmark.

mod control;
mod demo;
mod hosts;
mod job_args;
mod lrb;
mod nexmark;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use job_args::JobArgs;
use spate_engine::cluster::{current_program, run_local, CommandProvisioner, ExternalWorkers};
use spate_engine::coordinator::{
    Coordinator, JobSummary, Provisioner, RecoveryTimeline, ScaleEvent,
};
use spate_engine::worker::{run_worker, WorkerOptions};
use spate_engine::QueryRegistry;

#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "Spate: elastic, fault-tolerant stream processing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which query to run, and its parameters.
#[derive(clap::Args, Clone)]
struct QueryArgs {
    /// Registered query name (see `spate queries`).
    query: String,
    /// A query parameter, `key=value` (value parsed as JSON when it can be).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// A JSON file of query parameters (merged under --param).
    #[arg(long, value_name = "FILE")]
    params_file: Option<PathBuf>,
}

impl QueryArgs {
    /// The query's parameters: the file's, then each --param over them.
    fn params(&self) -> Result<serde_json::Value> {
        let mut params = match &self.params_file {
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
    /// The main job: generate a Linear Road input, run it on a local cluster,
    /// validate every answer and print the report.
    #[command(mut_arg("pool", |pool| pool.default_value("1")))]
    Demo(demo::DemoArgs),
    /// List the queries this binary can run.
    Queries,
    /// The Linear Road benchmark.
    #[command(subcommand)]
    Lrb(lrb::LrbCommand),
    /// Linear Road across simulated hosts with network faults (needs root).
    #[command(subcommand)]
    Hosts(hosts::HostsCommand),
    /// The Nexmark benchmark (online auctions): run a query, or bench them.
    #[command(subcommand)]
    Nexmark(nexmark::NexmarkCommand),
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every query this binary knows, so any worker can build any of them.
pub(crate) fn registry() -> QueryRegistry {
    let mut registry = QueryRegistry::new();
    spate_examples::register(&mut registry);
    spate_lrb::register(&mut registry);
    spate_nexmark::register(&mut registry);
    registry
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { query, job } => {
            let token = control::ClusterToken::for_local_run(&job.token)?;
            let mut config = job.config(&registry(), &query.query, query.params()?, &token)?;
            let cancel = config.cancel.clone();
            job.dashboard.around(&cancel, &token, |view, commands| {
                let view = view.unwrap_or_default();
                let watch = progress::watch_job(view.clone());
                config.view = Some(view.clone());
                config.commands = commands;
                let summary = run_local(&registry(), &config, &current_program()?)?;
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
            let mut config = job.config(&registry(), &query.query, query.params()?, &token)?;
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
                        "coordinator listening on {addr}; start {} workers with `spate worker --coordinator {addr}`",
                        config.workers + config.pool
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
                let summary = coordinator.run(&registry(), &config, provisioner.as_mut())?;
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
            Ok(run_worker(&registry(), &options)?)
        }
        Command::Queries => {
            for (name, description) in registry().list() {
                println!("{name:<12} {description}");
            }
            Ok(())
        }
        Command::Demo(args) => demo::run(args),
        Command::Lrb(command) => lrb::run(command),
        Command::Nexmark(command) => nexmark::run(command),
        Command::Hosts(command) => hosts::run(command),
        Command::Status(args) => control::status(&args),
        Command::Kill(args) => control::kill(&args),
        Command::Checkpoint(args) => control::checkpoint(&args),
        Command::Scale(args) => control::scale(&args),
    }
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
