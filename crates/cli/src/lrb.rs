//! `spate lrb ...`: the Linear Road benchmark commands.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use lrb_reference::generate::{generate, GenerateOptions, GenerateProgress};
use lrb_reference::validate::{validate_with_progress, ValidateOptions};
use spate_engine::cluster::current_program;
use spate_lrb::driver::{self, RunOptions, RunReport};
use spate_lrb::query::LrbParams;

use crate::progress::{self, LrbGoal, Progress, Status};

/// The files of a Linear Road run: what it reads and where its answers go.
#[derive(clap::Args, Clone, Debug)]
pub struct RunFiles {
    /// Input file (15-field lines in Time order).
    #[arg(long)]
    pub input: PathBuf,
    /// Historical tolls file.
    #[arg(long)]
    pub tolls: PathBuf,
    /// The run's output directory (answer files, report.json, report.svg).
    #[arg(long)]
    pub out: PathBuf,
}

/// Checkpointing, recovery and failure injection.
#[derive(clap::Args, Clone, Debug)]
pub struct FaultToleranceArgs {
    /// Checkpoint interval of every instance, milliseconds; 0 turns fault
    /// tolerance off.
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_ms: u64,
    /// Idle workers kept ready to take over failed ones.
    #[arg(long, default_value_t = 1)]
    pub pool: usize,
    /// Kill the worker hosting an instance with SIGKILL, `AT_SECS:OPERATOR[:INSTANCE]`
    /// (repeatable), to watch it recover.
    #[arg(long, value_name = "AT_SECS:OPERATOR[:INSTANCE]")]
    pub kill: Vec<spate_engine::coordinator::KillSpec>,
    /// Restore a failed stateful instance as this many partitions on as many
    /// pool workers (parallel recovery).
    #[arg(long, default_value_t = 1)]
    pub recovery_parallelism: u32,
    /// Split hot instances onto pool workers automatically.
    #[arg(long)]
    pub autoscale: bool,
    /// Utilisation (CPU share of one core) above which an instance is hot.
    #[arg(long, default_value_t = 0.7)]
    pub scale_threshold: f64,
    /// Consecutive hot one-second reports before a split.
    #[arg(long, default_value_t = 3)]
    pub scale_reports: u32,
    /// Force a scale out of an operator's busiest instance, `AT_SECS:OPERATOR`
    /// (repeatable).
    #[arg(long = "scale", value_name = "AT_SECS:OPERATOR", value_parser = parse_scale)]
    pub scale_at: Vec<(std::time::Duration, String)>,
    /// Force a scale in of an operator: its coldest adjacent pair of
    /// partitions merges, `AT_SECS:OPERATOR` (repeatable).
    #[arg(long = "scale-in", value_name = "AT_SECS:OPERATOR", value_parser = parse_scale)]
    pub scale_in_at: Vec<(std::time::Duration, String)>,
    /// With --autoscale: utilisation below which two adjacent partitions
    /// are cold and merge.
    #[arg(long, default_value_t = 0.15)]
    pub scale_in_threshold: f64,
    /// Limit each worker process to this many cores (a cgroup CPU quota), so
    /// that workers behave like small VMs on one machine.
    #[arg(long)]
    pub worker_cpu: Option<f64>,
}

impl FaultToleranceArgs {
    /// The autoscaling policy these options ask for, if any.
    pub fn policy(&self) -> Option<spate_engine::coordinator::ScalePolicy> {
        self.autoscale
            .then(|| spate_engine::coordinator::ScalePolicy {
                threshold: self.scale_threshold,
                reports: self.scale_reports,
                low_threshold: self.scale_in_threshold,
                ..Default::default()
            })
    }
}

fn parse_scale(s: &str) -> Result<(std::time::Duration, String), String> {
    let (at, operator) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not AT_SECS:OPERATOR"))?;
    let at: f64 = at
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("`{at}` is not a number of seconds"))?;
    Ok((std::time::Duration::from_secs_f64(at), operator.to_string()))
}

/// Linear Road subcommands.
#[derive(Subcommand)]
pub enum LrbCommand {
    /// Generate a deterministic input and historical tolls file.
    Generate {
        /// Number of expressways (L).
        #[arg(long, default_value_t = 1)]
        xways: u32,
        /// Random seed: the same seed gives the same files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Simulated seconds (10800 is the standard 3 hours).
        #[arg(long, default_value_t = 10_800)]
        duration_secs: u32,
        /// Output directory (gets input.csv and historical-tolls.csv).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the query on a local cluster and write the answer files and report.json.
    Run {
        #[command(flatten)]
        files: RunFiles,
        /// Replay S times faster than real time; 0 = as fast as possible.
        #[arg(long, default_value_t = 1.0)]
        speedup: f64,
        /// Worker processes.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Partitions of an operator, `OPERATOR=N` (repeatable). Operators:
        /// forwarder, toll_calculator, toll_assessment.
        #[arg(long = "partitions", value_name = "OPERATOR=N")]
        partitions: Vec<String>,
        /// Stop at the first malformed input line instead of skipping it.
        #[arg(long)]
        stop_on_bad_input: bool,
        #[command(flatten)]
        fault_tolerance: FaultToleranceArgs,
        #[command(flatten)]
        dashboard: crate::control::DashboardArgs,
        #[command(flatten)]
        token: crate::control::LocalTokenArgs,
    },
    /// Check a run's answers against an independent reference implementation.
    Validate {
        #[command(flatten)]
        files: RunFiles,
        /// The run's speed-up, to turn Emit times into wall-clock latency
        /// (use 1 for runs at speed-up 0).
        #[arg(long, default_value_t = 1.0)]
        speedup: f64,
        /// Differences to show per kind.
        #[arg(long, default_value_t = 10)]
        max_differences: usize,
    },
    /// Find the highest speed-up the query sustains: generate (or reuse) an
    /// input, run it at increasing speed-ups, validate every run, and write
    /// bench.json and bench.svg (see docs/BENCH.md).
    Bench {
        /// Number of expressways (L) of the generated input.
        #[arg(long, default_value_t = 1)]
        xways: u32,
        /// Simulated seconds of the generated input (long enough that runs
        /// at high speed-ups still last seconds).
        #[arg(long, default_value_t = 3_600)]
        duration_secs: u32,
        /// Generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Input directory, reused when it holds an input generated with
        /// the same options [default: OUT/input].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Worker processes.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Partitions of an operator, `OPERATOR=N` (repeatable).
        #[arg(long = "partitions", value_name = "OPERATOR=N")]
        partitions: Vec<String>,
        /// Output directory: bench.json, bench.svg and one directory per run.
        #[arg(long, default_value = "lrb-bench")]
        out: PathBuf,
        /// Speed-ups to try, lowest first; 0 = as fast as possible. The
        /// sweep stops at the first failure.
        #[arg(long, value_delimiter = ',', default_value = "50,100,200,400,800,1600")]
        speedups: Vec<f64>,
        /// Bisection steps between the last passing and first failing speed-up.
        #[arg(long, default_value_t = 2)]
        bisect: u32,
        /// Keep the answer files of passing runs.
        #[arg(long)]
        keep_answers: bool,
        /// Checkpoint interval of every instance, milliseconds; 0 benches
        /// without fault tolerance.
        #[arg(long, default_value_t = 1000)]
        checkpoint_ms: u64,
    },
}

pub fn run(command: LrbCommand) -> Result<()> {
    match command {
        LrbCommand::Generate {
            xways,
            seed,
            duration_secs,
            out,
        } => {
            let options = GenerateOptions {
                xways,
                seed,
                duration_secs,
                out_dir: out.clone(),
            };
            let started = Instant::now();
            let mut progress = Progress::new();
            let mut status = Status {
                stage: "generating".into(),
                ..Status::default()
            };
            let summary = generate(&options, &mut |p: GenerateProgress| {
                status.fraction = Some(f64::from(p.sim_second) / f64::from(p.duration_secs.max(1)));
                status.detail = format!(
                    "simulated second {} of {}, {} lines",
                    p.sim_second, p.duration_secs, p.lines
                );
                progress.show(&status);
            })?;
            progress.finish(&status);
            println!(
                "wrote {} lines ({} position reports, {} balance and {} expenditure queries, {} cars) and {} historical tolls to {} in {:.1} s",
                summary.lines,
                summary.position_reports,
                summary.balance_queries,
                summary.expenditure_queries,
                summary.cars,
                summary.history_lines,
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        LrbCommand::Run {
            files: RunFiles { input, tolls, out },
            speedup,
            workers,
            partitions,
            stop_on_bad_input,
            fault_tolerance,
            dashboard,
            token,
        } => {
            if workers == 0 || workers > 256 {
                bail!("--workers must be between 1 and 256, not {workers}");
            }
            for file in [&input, &tolls] {
                if !file.is_file() {
                    bail!(
                        "{} does not exist; create inputs with `spate lrb generate --out DIR`",
                        file.display()
                    );
                }
            }
            let mut partitions = crate::parse_partitions(&partitions)?;
            partitions.entry("toll_calculator".into()).or_insert(2);
            let token = crate::control::ClusterToken::for_local_run(&token.token)?;
            let mut options = RunOptions {
                params: LrbParams {
                    input,
                    tolls,
                    out_dir: out.clone(),
                    speedup,
                    forwarders: 1,
                    toll_calculators: 2,
                    assessors: 1,
                    stop_on_bad_input,
                },
                workers,
                partitions,
                checkpoint_ms: fault_tolerance.checkpoint_ms,
                pool: fault_tolerance.pool,
                recovery_parallelism: fault_tolerance.recovery_parallelism,
                autoscale: fault_tolerance.policy(),
                scale_at: fault_tolerance.scale_at.clone(),
                scale_in_at: fault_tolerance.scale_in_at.clone(),
                worker_cpu: fault_tolerance.worker_cpu,
                kills: fault_tolerance.kill,
                token: token.value().to_string(),
                view: None,
                commands: None,
                cancel: crate::cancel_on_ctrl_c(),
            };
            eprintln!(
                "running Linear Road at speed-up {speedup} on {workers} workers; answers go to {}",
                out.display()
            );
            let cancel = options.cancel.clone();
            dashboard.around(&cancel, &token, |view, commands| {
                // Progress reads the same view a dashboard would.
                let view = view.unwrap_or_default();
                let goal = LrbGoal::of(&options.params.input, speedup, out.clone());
                let watch = progress::watch_lrb_run(view.clone(), goal);
                options.view = Some(view);
                options.commands = commands;
                let report = driver::run(&crate::registry(), &current_program()?, &options)
                    .context("the Linear Road run failed")?;
                watch.finish(progress::lrb_finished(&report));
                print_report(&report);
                println!("report: {}", out.join("report.json").display());
                Ok(())
            })
        }
        LrbCommand::Validate {
            files: RunFiles { input, tolls, out },
            speedup,
            max_differences,
        } => {
            if !(speedup > 0.0 && speedup.is_finite()) {
                bail!("--speedup must be a positive number (use 1 for runs at speed-up 0)");
            }
            let mut progress = Progress::new();
            let mut status = Status {
                stage: "validating".into(),
                detail: "of the input read".into(),
                ..Status::default()
            };
            let report = validate_with_progress(
                &ValidateOptions {
                    input,
                    tolls,
                    out_dir: out,
                    speedup,
                    max_differences,
                },
                &mut |fraction| {
                    status.fraction = Some(fraction);
                    progress.show(&status);
                },
            )?;
            status.detail = "every answer compared".into();
            progress.finish(&status);
            print!("{report}");
            if !report.passed() {
                bail!("the answers differ from the reference (see above)");
            }
            Ok(())
        }
        LrbCommand::Bench {
            xways,
            duration_secs,
            seed,
            data,
            workers,
            partitions,
            out,
            speedups,
            bisect,
            keep_answers,
            checkpoint_ms,
        } => {
            let mut partitions = crate::parse_partitions(&partitions)?;
            partitions.entry("toll_calculator".into()).or_insert(2);
            let progress = spate_lrb::bench::BenchProgress::default();
            let data_dir = data.unwrap_or_else(|| out.join("input"));
            let watch = progress::watch_bench(
                progress.view.clone(),
                progress.stage.clone(),
                data_dir.join("input.csv"),
            );
            let options = spate_lrb::bench::BenchOptions {
                xways,
                duration_secs,
                seed,
                data_dir,
                out_dir: out.clone(),
                workers,
                partitions,
                checkpoint_ms,
                speedups,
                bisect,
                keep_answers,
                cancel: crate::cancel_on_ctrl_c(),
                progress,
            };
            let summary = spate_lrb::bench::run(
                &crate::registry(),
                &current_program()?,
                &options,
                &mut Suspended {
                    watch: &watch,
                    out: std::io::stdout(),
                },
            );
            drop(watch);
            let summary = summary?;
            match summary.best_run() {
                Some(best) => println!(
                    "highest passing speed-up {}: {:.0} tuples/s mean, {:.0}/s at the busiest second \
                     ({}/s measured in one wall-clock second), L-equivalent {:.1}",
                    best.speedup,
                    best.achieved_rate,
                    best.sustained_peak_rate,
                    best.peak_rate,
                    best.l_equivalent
                ),
                None => println!("no speed-up passed"),
            }
            if let Some(best) = summary.best_run() {
                print_state(&best.peaks);
            }
            println!("figures: {}", out.join("bench.json").display());
            Ok(())
        }
    }
}

/// Keyed state per operator: how much a car or a segment costs.
fn print_state(peaks: &spate_lrb::resources::Peaks) {
    for (operator, size) in &peaks.state {
        println!(
            "state of {operator}: {} keys, {:.1} MiB encoded, {:.0} bytes per key",
            size.keys,
            size.bytes as f64 / (1024.0 * 1024.0),
            size.bytes_per_key()
        );
    }
}

fn print_report(r: &RunReport) {
    for e in &r.scale_events {
        println!(
            "scaled {} {} at {} ms: {} -> {} partitions, pause {} ms ({})",
            e.direction,
            e.operator,
            e.decided_ms,
            e.partitions_before,
            e.partitions_after,
            e.pause_ms,
            e.reason
        );
    }
    for rec in &r.recoveries {
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
    println!(
        "{} input lines in {:.1} s ({:.0}/s mean, {}/s peak), {} skipped as malformed; {} answers",
        r.input_lines, r.elapsed_secs, r.input_rate, r.peak_input_rate, r.input_errors, r.answers
    );
    let p = &r.peaks;
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    println!(
        "peaks: worker RSS {} (live workers together {}, coordinator {}); output buffers {} \
         (one instance {}); checkpoints {}; {} batches queued",
        mib(p.worker_rss_kib * 1024),
        mib(p.workers_rss_kib * 1024),
        mib(p.coordinator_rss_kib * 1024),
        mib(p.buffered_bytes),
        mib(p.instance_buffered_bytes),
        mib(p.checkpoint_bytes),
        p.queued_batches
    );
    print_state(p);
    println!(
        "{:<13} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "answers", "count", "p50 ms", "p99 ms", "max ms", "late"
    );
    for (kind, s) in &r.latency {
        println!(
            "{:<13} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>8}",
            kind, s.count, s.p50_ms, s.p99_ms, s.max_ms, s.deadline_misses
        );
    }
}

/// Output written with a progress bar hidden, so that the bar does not
/// draw over it.
struct Suspended<'a, W> {
    watch: &'a progress::Watch,
    out: W,
}

impl<W: Write> Write for Suspended<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let out = &mut self.out;
        self.watch.suspend(|| out.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
