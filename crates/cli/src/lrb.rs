//! `spate lrb ...`: the Linear Road benchmark commands.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use lrb_reference::generate::{generate, GenerateOptions, GenerateProgress};
use lrb_reference::validate::{validate_with_progress, BadInput, ValidateOptions};
use spate_engine::cluster::current_program;
use spate_lrb::driver::{self, RunOptions, RunReport};
use spate_lrb::query::LrbParams;

use crate::job_args::{parse_partitions, JobArgs};
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
    ///
    /// Its operators: feeder, forwarder (unless --chain-forwarder),
    /// toll_calculator (2 partitions unless --partitions says otherwise),
    /// toll_assessment, and the answer sinks.
    #[command(mut_arg("pool", |pool| pool.default_value("1")))]
    Run {
        #[command(flatten)]
        files: RunFiles,
        /// Replay S times faster than real time; 0 = as fast as possible.
        #[arg(long, default_value_t = 1.0)]
        speedup: f64,
        /// A sudden step of load: from simulated second AT on, replay at
        /// SPEEDUP instead (to watch the autoscaler answer it).
        #[arg(long, value_name = "AT:SPEEDUP", value_parser = parse_step)]
        step: Option<(u32, f64)>,
        /// Stop at the first malformed input line instead of skipping it.
        #[arg(long)]
        stop_on_bad_input: bool,
        /// Route on the feeder's thread what the forwarder would (as Flink
        /// chains it): one hop and one thread fewer, and no forwarder
        /// operator to kill or scale.
        #[arg(long)]
        chain_forwarder: bool,
        /// Write the answers exactly once to PostgreSQL tables (lrb_tolls,
        /// lrb_accidents, lrb_balances, lrb_expenditures, lrb_input_errors;
        /// emptied first) instead of answer files in --out:
        /// postgres://USER:PASSWORD@HOST:PORT/DATABASE.
        #[arg(long, value_name = "URL")]
        sink: Option<String>,
        #[command(flatten)]
        job: Box<JobArgs>,
    },
    /// Check a run's answers against an independent reference implementation.
    Validate {
        #[command(flatten)]
        files: RunFiles,
        /// The run's speed-up, to turn Emit times into wall-clock latency
        /// (use 1 for runs at speed-up 0).
        #[arg(long, default_value_t = 1.0)]
        speedup: f64,
        /// Differences to show per kind (and examples per broken rule).
        #[arg(long, default_value_t = 10)]
        max_differences: usize,
        /// Stop at the first malformed input line instead of skipping it
        /// (skipped lines are listed by number, as `lrb run` skips them).
        #[arg(long)]
        stop_on_bad_input: bool,
        /// Read the answers from the PostgreSQL tables of `lrb run --sink
        /// URL` (copied into OUT/from-postgres as answer files first).
        #[arg(long, value_name = "URL")]
        from: Option<String>,
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
        #[arg(long = "partitions", value_name = "OPERATOR=N", value_parser = parse_partitions)]
        partitions: Vec<(String, u32)>,
        /// How instances are spread over the workers (see `lrb run --help`).
        #[arg(long, default_value = "spread", value_name = "spread|pipelines")]
        placement: spate_engine::plan::Placement,
        /// Route on the feeder's thread instead of a forwarder operator (see
        /// `lrb run --help`).
        #[arg(long)]
        chain_forwarder: bool,
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
        /// Workers holding each stateful instance's checkpoints (see
        /// `lrb run --help`).
        #[arg(
            long,
            default_value_t = spate_engine::coordinator::DEFAULT_BACKUP_COPIES as u32,
            value_parser = clap::value_parser!(u32)
                .range(1..=spate_engine::coordinator::MAX_BACKUP_COPIES as i64)
        )]
        backup_copies: u32,
    },
    /// SEEP's scale-out experiment: Linear Road from one partition per
    /// operator under a rising load on small workers (a CPU quota each),
    /// once per autoscaling policy on the same input; writes
    /// scaleout.json, scaleout.svg and scaleout.png (see docs/BENCH.md).
    Scaleout(crate::scaleout::ScaleoutArgs),
    /// Run Linear Road in one plain thread with no engine (the COST
    /// baseline) and print its rate: the figure Spate's throughput is
    /// divided by. Check its answers with `spate lrb validate --speedup 1`.
    Baseline {
        #[command(flatten)]
        files: RunFiles,
        /// Read and parse on a second thread, handing parsed lines to the
        /// query's thread in batches: the best a two-stage pipeline written
        /// by hand does on two cores.
        #[arg(long)]
        parse_thread: bool,
    },
}

/// Parses `AT:SPEEDUP` (simulated second, positive speed-up).
fn parse_step(spec: &str) -> Result<(u32, f64), String> {
    let bad = || format!("`{spec}` is not AT:SPEEDUP (a simulated second, a positive speed-up)");
    let (at, speedup) = spec.split_once(':').ok_or_else(bad)?;
    let at = at.parse().map_err(|_| bad())?;
    let speedup: f64 = speedup.parse().map_err(|_| bad())?;
    if !(speedup > 0.0 && speedup.is_finite()) {
        return Err(bad());
    }
    Ok((at, speedup))
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
            step,
            stop_on_bad_input,
            chain_forwarder,
            sink,
            mut job,
        } => {
            for file in [&input, &tolls] {
                if !file.is_file() {
                    bail!(
                        "{} does not exist; create inputs with `spate lrb generate --out DIR`",
                        file.display()
                    );
                }
            }
            if let Some(url) = &sink {
                spate_lrb::query::prepare_tables(url)
                    .context("cannot write the answers to PostgreSQL (--sink)")?;
            }
            job.default_partitions("toll_calculator", 2);
            let token = crate::control::ClusterToken::for_local_run(&job.token)?;
            let params = LrbParams {
                input,
                tolls,
                out_dir: out.clone(),
                speedup,
                speedup_step: step,
                forwarders: 1,
                chain_forwarder,
                toll_calculators: 2,
                assessors: 1,
                stop_on_bad_input,
                sink: sink.clone(),
            };
            let json = serde_json::to_value(&params).context("encoding the run's parameters")?;
            let config = job.config(crate::registry(), spate_lrb::query::NAME, json, &token)?;
            let mut options = RunOptions {
                params,
                job: config,
            };
            let answers_to = match sink {
                Some(_) => "PostgreSQL tables lrb_*".to_string(),
                None => out.display().to_string(),
            };
            eprintln!(
                "running Linear Road at speed-up {speedup} on {} workers; answers go to {answers_to}",
                job.workers,
            );
            let cancel = options.job.cancel.clone();
            job.dashboard.around(&cancel, &token, |view, commands| {
                // Progress reads the same view a dashboard would.
                let view = view.unwrap_or_default();
                let goal = LrbGoal::of(&options.params.input, speedup, out.clone());
                let watch = progress::watch_lrb_run(view.clone(), goal);
                options.job.view = Some(view);
                options.job.commands = commands;
                let report = driver::run(crate::registry(), &current_program()?, &options)
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
            stop_on_bad_input,
            from,
        } => {
            if !(speedup > 0.0 && speedup.is_finite()) {
                bail!("--speedup must be a positive number (use 1 for runs at speed-up 0)");
            }
            let out = match from {
                Some(url) => {
                    let dir = out.join("from-postgres");
                    let answers = spate_lrb::query::export_tables(&url, &dir)
                        .context("cannot read the answers from PostgreSQL (--from)")?;
                    eprintln!(
                        "read {answers} answers from PostgreSQL into {}",
                        dir.display()
                    );
                    dir
                }
                None => out,
            };
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
                    bad_input: if stop_on_bad_input {
                        BadInput::Stop
                    } else {
                        BadInput::Skip
                    },
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
            placement,
            chain_forwarder,
            out,
            speedups,
            bisect,
            keep_answers,
            checkpoint_ms,
            backup_copies,
        } => {
            let mut partitions: std::collections::BTreeMap<_, _> = partitions.into_iter().collect();
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
                placement,
                chain_forwarder,
                checkpoint_ms,
                backup_copies: backup_copies as usize,
                speedups,
                bisect,
                keep_answers,
                cancel: crate::cancel_on_ctrl_c(),
                progress,
            };
            let summary = spate_lrb::bench::run(
                crate::registry(),
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
                print_over_time(best);
            }
            println!("figures: {}", out.join("bench.json").display());
            Ok(())
        }
        LrbCommand::Scaleout(args) => crate::scaleout::run(&args),
        LrbCommand::Baseline {
            files,
            parse_thread,
        } => baseline(files, parse_thread),
    }
}

fn baseline(RunFiles { input, tolls, out }: RunFiles, parse_thread: bool) -> Result<()> {
    let size = std::fs::metadata(&input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .len()
        .max(1);
    let mut progress = Progress::new();
    let mut status = Status {
        stage: "baseline".into(),
        detail: if parse_thread {
            "of the input read, parsing on a second thread"
        } else {
            "of the input read, one thread"
        }
        .into(),
        ..Status::default()
    };
    let summary = lrb_baseline::run(
        &lrb_baseline::BaselineOptions {
            input,
            tolls,
            out_dir: out.clone(),
            parse_thread,
        },
        &mut |bytes| {
            status.fraction = Some(bytes as f64 / size as f64);
            progress.show(&status);
        },
    )?;
    status.detail = "done".into();
    progress.finish(&status);
    println!(
        "{} input tuples in {:.2} s, {} skipped as malformed; {} tolls, {} alerts, {} balances, {} expenditures",
        summary.tuples,
        summary.seconds,
        summary.skipped,
        summary.tolls,
        summary.alerts,
        summary.balances,
        summary.expenditures
    );
    println!("{:.0} tuples/s", summary.tuples_per_sec());
    println!("answers: {}", out.display());
    Ok(())
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

/// What a long run shows beyond its totals: the worst 10 s of latency and
/// whether worker memory levelled off.
fn print_over_time(run: &spate_lrb::bench::BenchRun) {
    if let Some(worst) = run
        .latency_over_time
        .iter()
        .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
    {
        println!(
            "latency over {} windows of 10 s: worst p99 {:.0} ms (at {:.0} s), worst max {:.0} ms",
            run.latency_over_time.len(),
            worst.p99_ms,
            worst.from_secs,
            run.latency_over_time
                .iter()
                .map(|w| w.max_ms)
                .fold(0.0, f64::max)
        );
    }
    if let Some(memory) = &run.memory {
        println!(
            "worker memory {}: {:.0} MiB for {} keys of state in the run's middle third, \
             {:.0} MiB for {} keys in its last",
            if memory.levelled_off {
                "levelled off"
            } else {
                "kept growing faster than the state"
            },
            memory.middle_kib as f64 / 1024.0,
            memory.middle_keys,
            memory.last_kib as f64 / 1024.0,
            memory.last_keys
        );
    }
}

pub(crate) fn print_report(r: &RunReport) {
    crate::print_changes(&r.scale_events, &r.recoveries);
    println!(
        "{} input lines in {:.1} s ({:.0}/s mean, {}/s peak), {} skipped as malformed; {} answers",
        r.input_lines, r.elapsed_secs, r.input_rate, r.peak_input_rate, r.input_errors, r.answers
    );
    let p = &r.peaks;
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    println!(
        "peaks: worker RSS {} (live workers together {}, coordinator {}); output buffers {} \
         (one instance {}); checkpoints held {}, as sent {}; {} batches queued",
        mib(p.worker_rss_kib * 1024),
        mib(p.workers_rss_kib * 1024),
        mib(p.coordinator_rss_kib * 1024),
        mib(p.buffered_bytes),
        mib(p.instance_buffered_bytes),
        mib(p.checkpoint_bytes),
        mib(p.sent_checkpoint_bytes),
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
