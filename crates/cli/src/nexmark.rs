//! `spate nexmark ...`: the Nexmark benchmark's commands: run one query on
//! a local cluster and check its answers, or measure every query's
//! sustained throughput with checkpoints on and off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use spate_engine::cluster::{current_program, run_local};
use spate_engine::coordinator::{JobConfig, JobSummary};
use spate_nexmark::generator::GeneratorConfig;
use spate_nexmark::reference::{self, Difference};
use spate_nexmark::{NexmarkParams, QueryId};

use crate::job_args::{parse_partitions, JobArgs};

/// What to generate and how to lay the query out.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkloadArgs {
    /// Events to generate (1 person, 3 auctions and 46 bids in every 50).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Generator seed: the same seed gives the same events.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Events per second of event time (the specification's event rate;
    /// windows are 10 s of event time).
    #[arg(long, default_value_t = 10_000)]
    pub event_rate: u64,
    /// Instances of each operator after the source.
    #[arg(long, default_value_t = 2)]
    pub parallelism: u32,
    /// Shards of each window's groups in windowed aggregates (q5, q7).
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
}

/// Where the bench runs each query.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchLayout {
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Partitions of an operator, `OPERATOR=N` (repeatable).
    #[arg(long = "partitions", value_name = "OPERATOR=N", value_parser = parse_partitions)]
    pub partitions: Vec<(String, u32)>,
}

/// Nexmark subcommands.
#[derive(Subcommand)]
pub enum NexmarkCommand {
    /// Run one query on a local cluster, then check its answers against
    /// the reference implementation (prints PASSED or what differs).
    Run {
        /// The query: q0, q1, q2, q3, q4, q5, q7 or q8.
        #[arg(long, value_parser = parse_query)]
        query: QueryId,
        /// Source pace, events per wall-clock second (0: as fast as the
        /// job takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Output directory: the answer file qN.csv and report.json.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        workload: WorkloadArgs,
        #[command(flatten)]
        job: Box<JobArgs>,
    },
    /// Measure each query's sustained throughput (unpaced source) with
    /// checkpoints every second and without, validating every run; writes
    /// bench.md and bench.json.
    Bench {
        /// Queries to measure.
        #[arg(long, value_delimiter = ',', value_parser = parse_query,
              default_value = "q0,q1,q2,q3,q4,q5,q7,q8")]
        queries: Vec<QueryId>,
        /// Output directory.
        #[arg(long, default_value = "nexmark-bench")]
        out: PathBuf,
        #[command(flatten)]
        workload: WorkloadArgs,
        #[command(flatten)]
        layout: BenchLayout,
    },
    /// Write the generated events to DIR/events.csv (the columns are in
    /// spate_nexmark::export) and every query's reference answers to
    /// DIR/reference/qN.csv, so other systems can run the same queries over
    /// the same events and check their answers.
    Generate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Events to generate.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Generator seed (as `nexmark run` and `nexmark bench` take it).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Events per second of event time.
        #[arg(long, default_value_t = 10_000)]
        event_rate: u64,
    },
}

fn parse_query(name: &str) -> Result<QueryId, String> {
    QueryId::parse(name)
        .ok_or_else(|| format!("`{name}` is not one of q0, q1, q2, q3, q4, q5, q7, q8"))
}

/// One run's figures.
struct Outcome {
    summary: JobSummary,
    /// Median per-second input rate of the first operator, events/s.
    sustained: f64,
    difference: Difference,
    answers: usize,
}

fn params(workload: &WorkloadArgs, rate: u64, out: &Path) -> NexmarkParams {
    NexmarkParams {
        generator: GeneratorConfig {
            seed: workload.seed,
            events: workload.events,
            event_rate: workload.event_rate,
        },
        rate,
        out: out.to_path_buf(),
        parallelism: workload.parallelism,
        shards: workload.shards,
    }
}

/// Runs `query` as `config` says (its query and parameters set here) and
/// checks the answers.
fn run_checked(query: QueryId, params: &NexmarkParams, mut config: JobConfig) -> Result<Outcome> {
    if config.workers == 0 || config.workers > 256 {
        bail!(
            "--workers must be between 1 and 256, not {}",
            config.workers
        );
    }
    // The workers read the parameters back from JSON: check them as they will.
    NexmarkParams::from_json(&params.to_json())?;
    std::fs::create_dir_all(&params.out)
        .with_context(|| format!("cannot create {}", params.out.display()))?;
    let built = spate_nexmark::queries::build(query, params)?;
    let first = built
        .find("events")
        .and_then(|source| built.edge_targets(source).first().copied())
        .map(|node| built.name(node).to_string())
        .context("the query has no operator after its source")?;
    config.query = query.registered_name();
    config.params = params.to_json();
    let summary = run_local(crate::registry(), &config, &current_program()?)
        .with_context(|| format!("the Nexmark {} run failed", query.name()))?;
    let mut rates: Vec<f64> = summary
        .history
        .iter()
        .filter_map(|p| p.in_rate.get(&first).copied())
        .filter(|r| *r > 0.0)
        .collect();
    // The first and last seconds are partly idle.
    if rates.len() > 2 {
        rates = rates[1..rates.len() - 1].to_vec();
    }
    rates.sort_by(f64::total_cmp);
    let whole_run = params.generator.events as f64 / summary.elapsed.as_secs_f64().max(1e-9);
    let sustained = rates.get(rates.len() / 2).copied().unwrap_or(whole_run);
    let file = query.answer_file(&params.out);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the answers in {}", file.display()))?;
    let mut got: Vec<String> = text.lines().map(str::to_string).collect();
    got.sort_unstable();
    let expected = reference::answers(query, &params.generator);
    Ok(Outcome {
        difference: reference::compare(&expected, &got),
        answers: got.len(),
        summary,
        sustained,
    })
}

pub fn run(command: NexmarkCommand) -> Result<()> {
    match command {
        NexmarkCommand::Run {
            query,
            rate,
            out,
            workload,
            job,
        } => {
            let params = params(&workload, rate, &out);
            let token = crate::control::ClusterToken::for_local_run(&job.token)?;
            let name = query.registered_name();
            let config = job.config(crate::registry(), &name, params.to_json(), &token)?;
            eprintln!(
                "running Nexmark {} ({}) over {} events on {} workers; answers go to {}",
                query.name(),
                query.description(),
                workload.events,
                job.workers,
                out.display()
            );
            let outcome = run_checked(query, &params, config)?;
            let summary = &outcome.summary;
            let report = serde_json::json!({
                "query": query.name(),
                "events": workload.events,
                "elapsed_s": summary.elapsed.as_secs_f64(),
                "sustained_events_per_s": outcome.sustained,
                "answers": outcome.answers,
                "passed": outcome.difference.is_empty(),
                "checkpoints": summary.checkpoints,
                "recoveries": summary.recoveries,
                "scale_events": summary.scale_events,
                "events_log": summary.events,
            });
            let report_path = out.join("report.json");
            std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("cannot write {}", report_path.display()))?;
            println!(
                "{} events in {:.2} s ({:.0} events/s sustained), {} answers, {} recoveries, {} scale events",
                workload.events,
                summary.elapsed.as_secs_f64(),
                outcome.sustained,
                outcome.answers,
                summary.recoveries.len(),
                summary.scale_events.len()
            );
            report_difference(&outcome.difference)
        }
        NexmarkCommand::Bench {
            queries,
            out,
            workload,
            layout,
        } => bench(&queries, &out, &workload, &layout),
        NexmarkCommand::Generate {
            out,
            events,
            seed,
            event_rate,
        } => generate(
            &out,
            &GeneratorConfig {
                seed,
                events,
                event_rate,
            },
        ),
    }
}

fn generate(out: &Path, config: &GeneratorConfig) -> Result<()> {
    let answers = out.join("reference");
    std::fs::create_dir_all(&answers)
        .with_context(|| format!("cannot create {}", answers.display()))?;
    let events = out.join("events.csv");
    let write_events = || -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&events)?);
        spate_nexmark::export::write_csv(config, &mut file)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write_events().with_context(|| format!("cannot write {}", events.display()))?;
    for query in QueryId::ALL {
        let file = query.answer_file(&answers);
        let text: String = reference::answers(query, config)
            .into_iter()
            .map(|line| line + "\n")
            .collect();
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    println!(
        "{} events in {}; reference answers in {}",
        config.events,
        events.display(),
        answers.display()
    );
    Ok(())
}

/// Prints PASSED, or the first differing lines and an error.
fn report_difference(difference: &Difference) -> Result<()> {
    if difference.is_empty() {
        println!("PASSED: the answers are identical to the reference implementation's");
        return Ok(());
    }
    for (what, lines) in [
        ("missing", &difference.missing),
        ("unexpected", &difference.unexpected),
    ] {
        if !lines.is_empty() {
            println!("{} {what} lines, the first:", lines.len());
            for line in lines.iter().take(10) {
                println!("  {line}");
            }
        }
    }
    bail!("FAILED: the answers differ from the reference implementation's (see above)")
}

fn bench(
    queries: &[QueryId],
    out: &Path,
    workload: &WorkloadArgs,
    layout: &BenchLayout,
) -> Result<()> {
    let mut rows = Vec::new();
    let cancel = crate::cancel_on_ctrl_c();
    for &query in queries {
        let mut row = serde_json::json!({ "query": query.name(), "events": workload.events });
        for checkpoint_ms in [1000u64, 0] {
            let dir = out.join(format!("{}-checkpoint-{checkpoint_ms}", query.name()));
            let params = params(workload, 0, &dir);
            let mut config =
                JobConfig::new(query.registered_name(), params.to_json(), layout.workers);
            config.partitions = layout.partitions.iter().cloned().collect();
            config.checkpoint_interval = Duration::from_millis(checkpoint_ms);
            config.cancel = cancel.clone();
            let outcome = run_checked(query, &params, config)?;
            if !outcome.difference.is_empty() {
                report_difference(&outcome.difference)?;
            }
            eprintln!(
                "{} checkpoints {}: {:.0} events/s sustained, {:.2} s, {} answers, validated",
                query.name(),
                if checkpoint_ms > 0 { "on" } else { "off" },
                outcome.sustained,
                outcome.summary.elapsed.as_secs_f64(),
                outcome.answers
            );
            let key = if checkpoint_ms > 0 {
                "checkpoints_on"
            } else {
                "checkpoints_off"
            };
            row[key] = serde_json::json!({
                "sustained_events_per_s": outcome.sustained,
                "elapsed_s": outcome.summary.elapsed.as_secs_f64(),
                "answers": outcome.answers,
            });
            std::fs::remove_file(query.answer_file(&dir)).ok();
        }
        rows.push(row);
    }
    let mut table = String::from(
        "| query | answers | events/s sustained, checkpoints every 1 s | events/s sustained, no checkpoints | on / off | events/s whole run, checkpoints | events/s whole run, none |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let events = workload.events as f64;
    for row in &rows {
        let figure = |key: &str, field: &str| row[key][field].as_f64().unwrap_or(0.0);
        let on = figure("checkpoints_on", "sustained_events_per_s");
        let off = figure("checkpoints_off", "sustained_events_per_s");
        table.push_str(&format!(
            "| {} | {} | {on:.0} | {off:.0} | {:.2} | {:.0} | {:.0} |\n",
            row["query"].as_str().unwrap_or("?"),
            row["checkpoints_on"]["answers"],
            on / off.max(1e-9),
            events / figure("checkpoints_on", "elapsed_s").max(1e-9),
            events / figure("checkpoints_off", "elapsed_s").max(1e-9),
        ));
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("bench.md"), &table)?;
    std::fs::write(out.join("bench.json"), serde_json::to_vec_pretty(&rows)?)?;
    print!("{table}");
    println!(
        "every run validated; table in {}",
        out.join("bench.md").display()
    );
    Ok(())
}
