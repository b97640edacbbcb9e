//! The job flags every run command shares (`spate run`, `spate coordinator`,
//! `spate lrb run`, `spate demo`): workers, partitions, fault tolerance,
//! elasticity, the cluster token and the dashboard. They become the
//! engine's [`JobConfig`] in one place, [`JobArgs::config`], so every query
//! gets every engine feature with the same flags and the same checks.
//!
//! The same settings can come from a job file (`--job FILE`, TOML, see
//! [`JobFile`]) to keep in version control; a flag given on the command
//! line overrides the file's setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::{Deserialize, Deserializer};
use spate_engine::coordinator::{
    JobConfig, KillSpec, PolicyKind, ScalePolicy, DEFAULT_BACKUP_COPIES, MAX_BACKUP_COPIES,
};
use spate_engine::plan::Placement;
use spate_engine::wire::control::HEARTBEAT_EVERY;
use spate_engine::{Query, QueryRegistry};

use crate::control::{ClusterToken, DashboardArgs};

/// The most workers a job may ask for.
const MAX_WORKERS: usize = 256;

/// How a job runs, whatever its query.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Cluster")]
pub struct JobArgs {
    /// Read the query, its parameters and the job's settings from this
    /// TOML file (see examples/jobs/); flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub job: Option<PathBuf>,
    /// Worker processes that run the query's instances.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Idle workers kept ready to take over failed ones and to receive
    /// split partitions.
    #[arg(long, default_value_t = 0)]
    pub pool: usize,
    /// Partitions of an operator, `OPERATOR=N` (repeatable).
    #[arg(long = "partitions", value_name = "OPERATOR=N", value_parser = parse_partitions)]
    pub partitions: Vec<(String, u32)>,
    /// How instances are spread over the workers: `spread` puts instance
    /// after instance on worker after worker; `pipelines` puts instance i
    /// of every operator on worker i, so that a partition's operators pass
    /// tuples in process (faster when the workers share a few cores; a
    /// worker's failure then takes its whole pipeline).
    #[arg(long, default_value = "spread", value_name = "spread|pipelines")]
    pub placement: Placement,
    /// The cluster's shared secret, which workers present to join and the
    /// dashboard's commands must carry [default: a local run makes a fresh
    /// one and prints it with the dashboard's address; a coordinator
    /// without one admits any worker].
    #[arg(
        long,
        env = "SPATE_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub token: String,
    #[command(flatten, next_help_heading = "Fault tolerance")]
    pub fault_tolerance: FaultToleranceArgs,
    #[command(flatten, next_help_heading = "Elasticity")]
    pub elasticity: ElasticityArgs,
    #[command(flatten, next_help_heading = "Dashboard")]
    pub dashboard: DashboardArgs,
}

/// Checkpointing, failure detection, recovery and failure injection.
#[derive(clap::Args, Clone, Debug)]
pub struct FaultToleranceArgs {
    /// Checkpoint interval of every instance, milliseconds; 0 turns fault
    /// tolerance off.
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_ms: u64,
    /// Workers (other than its own) that hold each stateful instance's
    /// checkpoints: 2 keep a copy when an instance's worker and one holder
    /// fail together; 1 (SEEP's upstream backup) ships and holds half as
    /// much.
    #[arg(
        long,
        default_value_t = DEFAULT_BACKUP_COPIES as u32,
        value_parser = clap::value_parser!(u32).range(1..=MAX_BACKUP_COPIES as i64)
    )]
    pub backup_copies: u32,
    /// End the worker hosting an instance, as a crash would,
    /// `AT_SECS:OPERATOR[:INSTANCE]` (repeatable), to watch it recover.
    #[arg(long, value_name = "AT_SECS:OPERATOR[:INSTANCE]")]
    pub kill: Vec<KillSpec>,
    /// Restore a failed stateful instance as this many partitions on as many
    /// pool workers (parallel recovery).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub recovery_parallelism: u32,
    /// Keep a warm copy of each stateful instance whose backup holds at
    /// least this many megabytes on a pool worker, so that it recovers
    /// there without rebuilding its state; 0 keeps none.
    #[arg(long, default_value_t = 0.0)]
    pub standby_mb: f64,
    /// A worker silent this many milliseconds is declared failed (workers
    /// send a heartbeat every 100 ms); a worker that hears nothing from
    /// the coordinator for twice this stops itself.
    #[arg(long, default_value_t = 500)]
    pub heartbeat_timeout_ms: u64,
    /// Seconds workers have to join, deploy and restore before the job
    /// fails.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub startup_timeout_secs: u64,
}

/// Scaling out and in, by policy or at given times, and the workers' size.
#[derive(clap::Args, Clone, Debug)]
pub struct ElasticityArgs {
    /// Split hot instances onto pool workers, and merge cold adjacent
    /// partitions, automatically.
    #[arg(long)]
    pub autoscale: bool,
    /// With --autoscale: `rate` splits every instance whose offered rate
    /// needs more than the target utilisation into as many parts as it
    /// needs, all in one decision (DS2); `threshold` splits the hottest
    /// instance in two after --scale-reports hot reports.
    #[arg(long, default_value = "rate", value_name = "rate|threshold")]
    pub autoscale_policy: PolicyKind,
    /// With --autoscale: never run more workers than this, pool included.
    #[arg(long, value_name = "N")]
    pub max_workers: Option<usize>,
    /// With --autoscale: return (end) a worker idle for this many seconds,
    /// beyond the --pool workers kept ready.
    #[arg(long, value_name = "SECS")]
    pub idle_worker_secs: Option<f64>,
    /// With --autoscale: target utilisation (CPU share of a worker's
    /// allowance): the rate policy keeps every partition under it, the
    /// threshold policy splits above it.
    #[arg(long, default_value_t = 0.7)]
    pub scale_threshold: f64,
    /// With --autoscale: consecutive hot one-second reports before a split.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub scale_reports: u32,
    /// With --autoscale: utilisation below which two adjacent partitions
    /// are cold and merge (the rate policy: both together).
    #[arg(long, default_value_t = 0.15)]
    pub scale_in_threshold: f64,
    /// Force a scale out of an operator's busiest instance, `AT_SECS:OPERATOR`
    /// (repeatable).
    #[arg(long = "scale", value_name = "AT_SECS:OPERATOR", value_parser = parse_scale)]
    pub scale_at: Vec<(Duration, String)>,
    /// Partitions a forced --scale (or a scale command) splits the busiest
    /// instance into, in one step.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..=64))]
    pub split_parts: u64,
    /// Force a scale in of an operator: its coldest adjacent pair of
    /// partitions merges, `AT_SECS:OPERATOR` (repeatable).
    #[arg(long = "scale-in", value_name = "AT_SECS:OPERATOR", value_parser = parse_scale)]
    pub scale_in_at: Vec<(Duration, String)>,
    /// Each worker's CPU allowance, in cores: a local run puts every worker
    /// under a cgroup quota of this many cores (so that workers behave like
    /// small VMs on one machine); a coordinator measures --autoscale's
    /// utilisation against it.
    #[arg(long, value_name = "CORES")]
    pub worker_cpu: Option<f64>,
}

impl JobArgs {
    /// The engine's configuration for running `query` with `params`, after
    /// checking the flags against each other and against the query's
    /// operators (built here, so that mistakes fail before any worker
    /// starts). Workers must present `token`; Ctrl-C cancels the job.
    pub fn config(
        &self,
        registry: &QueryRegistry,
        query: &str,
        params: serde_json::Value,
        token: &ClusterToken,
    ) -> Result<JobConfig> {
        self.check_flags()?;
        let built = registry.build(query, &params)?;
        self.check_operators(query, &built)?;
        let ft = &self.fault_tolerance;
        let mut config = JobConfig::new(query, params, self.workers);
        config.pool = self.pool;
        config.partitions = self.partitions.iter().cloned().collect::<BTreeMap<_, _>>();
        config.placement = self.placement;
        config.checkpoint_interval = Duration::from_millis(ft.checkpoint_ms);
        config.backup_copies = ft.backup_copies as usize;
        config.heartbeat_timeout = Duration::from_millis(ft.heartbeat_timeout_ms);
        config.startup_timeout = Duration::from_secs(ft.startup_timeout_secs);
        config.kills = ft.kill.clone();
        config.recovery_parallelism = ft.recovery_parallelism;
        config.standby_min_bytes = (ft.standby_mb > 0.0).then_some((ft.standby_mb * 1e6) as u64);
        config.autoscale = self.elasticity.policy();
        config.scale_at = self.elasticity.scale_at.clone();
        config.split_parts = self.elasticity.split_parts as usize;
        config.scale_in_at = self.elasticity.scale_in_at.clone();
        config.worker_cpu = self.elasticity.worker_cpu;
        config.token = token.value().to_string();
        config.cancel = crate::cancel_on_ctrl_c();
        Ok(config)
    }

    /// Flags that contradict each other or make no sense on their own.
    fn check_flags(&self) -> Result<()> {
        self.dashboard.check()?;
        let (ft, el) = (&self.fault_tolerance, &self.elasticity);
        if self.workers == 0 || self.workers > MAX_WORKERS {
            bail!(
                "--workers must be between 1 and {MAX_WORKERS}, not {}",
                self.workers
            );
        }
        if !(ft.standby_mb >= 0.0 && ft.standby_mb.is_finite()) {
            bail!(
                "--standby-mb must be a size in megabytes, 0 for no standby, not {}",
                ft.standby_mb
            );
        }
        if ft.checkpoint_ms == 0 {
            if el.autoscale {
                bail!(
                    "--autoscale needs fault tolerance on: scaling restores partitions from \
                     checkpoints and replays buffered inputs; give --checkpoint-ms above 0"
                );
            }
            if let Some(kill) = ft.kill.first() {
                bail!(
                    "--kill {} with --checkpoint-ms 0 would fail the job: nothing could be \
                     recovered without checkpoints; give --checkpoint-ms above 0",
                    kill.operator
                );
            }
        }
        let min_timeout = 2 * HEARTBEAT_EVERY.as_millis() as u64;
        if ft.heartbeat_timeout_ms < min_timeout {
            bail!(
                "--heartbeat-timeout-ms {} is too short: workers send a heartbeat every {} ms, \
                 so give at least {min_timeout}",
                ft.heartbeat_timeout_ms,
                HEARTBEAT_EVERY.as_millis()
            );
        }
        let fraction = |v: f64| v.is_finite() && v >= 0.0;
        if !fraction(el.scale_threshold) || !fraction(el.scale_in_threshold) {
            bail!("--scale-threshold and --scale-in-threshold must be utilisations of 0 or more");
        }
        if el.autoscale && el.scale_in_threshold >= el.scale_threshold {
            bail!(
                "--scale-in-threshold {} must be below --scale-threshold {}, or merged \
                 partitions would split again at once",
                el.scale_in_threshold,
                el.scale_threshold
            );
        }
        if el
            .idle_worker_secs
            .is_some_and(|s| !(s.is_finite() && s >= 0.0))
        {
            bail!("--idle-worker-secs must be a number of seconds of 0 or more");
        }
        if el.max_workers.is_some_and(|m| m < self.workers + self.pool) {
            bail!(
                "--max-workers must allow at least the --workers and --pool the job starts with ({})",
                self.workers + self.pool
            );
        }
        if let Some(cores) = el.worker_cpu {
            if !(cores.is_finite() && cores > 0.0) {
                bail!("--worker-cpu must be a positive number of cores, not {cores}");
            }
        }
        Ok(())
    }

    /// Every operator a flag names must be one of `query`'s.
    fn check_operators(&self, name: &str, query: &Query) -> Result<()> {
        let (ft, el) = (&self.fault_tolerance, &self.elasticity);
        let named = ft
            .kill
            .iter()
            .map(|k| ("--kill", &k.operator))
            .chain(el.scale_at.iter().map(|(_, op)| ("--scale", op)))
            .chain(el.scale_in_at.iter().map(|(_, op)| ("--scale-in", op)))
            .chain(self.partitions.iter().map(|(op, _)| ("--partitions", op)));
        for (flag, operator) in named {
            if query.find(operator).is_none() {
                let operators: Vec<&str> = (0..query.len()).map(|n| query.name(n)).collect();
                bail!(
                    "{flag} names `{operator}`, which is not an operator of `{name}`; its \
                     operators are {}",
                    operators.join(", ")
                );
            }
        }
        Ok(())
    }

    /// Gives `operator` `n` partitions unless --partitions names it: a
    /// command's own default parallelism.
    pub fn default_partitions(&mut self, operator: &str, n: u32) {
        if !self.partitions.iter().any(|(op, _)| op == operator) {
            self.partitions.push((operator.to_string(), n));
        }
    }
}

impl ElasticityArgs {
    /// The autoscaling policy these options ask for, if any.
    fn policy(&self) -> Option<ScalePolicy> {
        self.autoscale.then(|| ScalePolicy {
            kind: self.autoscale_policy,
            max_workers: self.max_workers,
            keep_idle: self.idle_worker_secs.map(Duration::from_secs_f64),
            threshold: self.scale_threshold,
            reports: self.scale_reports,
            low_threshold: self.scale_in_threshold,
            ..Default::default()
        })
    }
}

/// A job file: what `--job FILE` reads. Every key is optional and named
/// as its flag (with `_` for `-`); an unknown key is an error naming it
/// and its line.
///
/// ```toml
/// query = "keycount"
/// workers = 3
/// pool = 2
/// [params]
/// input = "words.txt"
/// [partitions]
/// count = 2
/// [fault_tolerance]
/// checkpoint_ms = 100
/// kill = ["1:count:1"]
/// [elasticity]
/// scale = ["1.8:count"]
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// The registered query to run.
    query: Option<String>,
    /// The query's parameters (under --params-file and --param).
    params: Option<toml::Table>,
    workers: Option<usize>,
    pool: Option<usize>,
    placement: Option<Placement>,
    /// Partitions per operator (a --partitions flag overrides its
    /// operator's).
    partitions: Option<BTreeMap<String, u32>>,
    #[serde(default)]
    fault_tolerance: FaultToleranceFile,
    #[serde(default)]
    elasticity: ElasticityFile,
}

/// The `[fault_tolerance]` table of a job file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultToleranceFile {
    checkpoint_ms: Option<u64>,
    backup_copies: Option<u32>,
    #[serde(default, deserialize_with = "parsed_list")]
    kill: Option<Vec<KillSpec>>,
    recovery_parallelism: Option<u32>,
    standby_mb: Option<f64>,
    heartbeat_timeout_ms: Option<u64>,
    startup_timeout_secs: Option<u64>,
}

/// The `[elasticity]` table of a job file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElasticityFile {
    autoscale: Option<bool>,
    autoscale_policy: Option<PolicyKind>,
    max_workers: Option<usize>,
    idle_worker_secs: Option<f64>,
    split_parts: Option<u64>,
    scale_threshold: Option<f64>,
    scale_reports: Option<u32>,
    scale_in_threshold: Option<f64>,
    #[serde(default, deserialize_with = "scale_list")]
    scale: Option<Vec<(Duration, String)>>,
    #[serde(default, deserialize_with = "scale_list")]
    scale_in: Option<Vec<(Duration, String)>>,
    worker_cpu: Option<f64>,
}

/// A list of strings each parsed as its flag would be, so that a bad one
/// is an error at its line.
fn parsed_list<'de, D: Deserializer<'de>, T: FromStr<Err: std::fmt::Display>>(
    de: D,
) -> Result<Option<Vec<T>>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .iter()
        .map(|t| t.parse().map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}

/// A list of `AT_SECS:OPERATOR` strings.
fn scale_list<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Vec<(Duration, String)>>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .iter()
        .map(|t| parse_scale(t).map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}

/// What a job file says about the query, for the command to use where
/// its own arguments do not name one.
#[derive(Clone, Debug, Default)]
pub struct FileQuery {
    /// The job file.
    file: PathBuf,
    /// The query's name.
    pub query: Option<String>,
    /// Its parameters, a JSON object.
    pub params: Option<serde_json::Value>,
}

impl FileQuery {
    /// Fails when the file names a query or parameters for a command that
    /// runs a query of its own (`lrb run`, `demo`, `nexmark run`).
    pub fn refuse(&self, command: &str) -> Result<()> {
        if self.query.is_some() || self.params.is_some() {
            bail!(
                "{}: `{command}` runs its own query with its own flags: remove `query` and \
                 [params] from the job file",
                self.file.display()
            );
        }
        Ok(())
    }
}

impl JobFile {
    /// Reads and checks the job file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the job file {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))
    }
}

impl JobArgs {
    /// Reads `--job` if given: every setting of the file that was not given
    /// on the command line (as `given`, the matches of this command, says)
    /// replaces this one's; the file's query and parameters are returned
    /// for the command to use.
    pub fn apply_job_file(&mut self, given: &ArgMatches) -> Result<FileQuery> {
        let Some(path) = &self.job else {
            return Ok(FileQuery::default());
        };
        let file = JobFile::read(path)?;
        let flagged = |id: &str| {
            matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        fn take<T>(to: &mut T, from: Option<T>, flagged: bool) {
            if let (Some(value), false) = (from, flagged) {
                *to = value;
            }
        }
        take(&mut self.workers, file.workers, flagged("workers"));
        take(&mut self.pool, file.pool, flagged("pool"));
        take(&mut self.placement, file.placement, flagged("placement"));
        if let Some(partitions) = file.partitions {
            // The file's, then each flag's over them.
            let mut merged: BTreeMap<String, u32> = partitions;
            merged.extend(self.partitions.drain(..));
            self.partitions = merged.into_iter().collect();
        }
        let (ft, el) = (file.fault_tolerance, file.elasticity);
        let own = &mut self.fault_tolerance;
        take(
            &mut own.checkpoint_ms,
            ft.checkpoint_ms,
            flagged("checkpoint_ms"),
        );
        take(
            &mut own.backup_copies,
            ft.backup_copies,
            flagged("backup_copies"),
        );
        if !(1..=MAX_BACKUP_COPIES as u32).contains(&own.backup_copies) {
            bail!(
                "{}: `backup_copies` must be in 1..={MAX_BACKUP_COPIES}",
                path.display()
            );
        }
        take(&mut own.kill, ft.kill, flagged("kill"));
        take(
            &mut own.recovery_parallelism,
            ft.recovery_parallelism,
            flagged("recovery_parallelism"),
        );
        take(&mut own.standby_mb, ft.standby_mb, flagged("standby_mb"));
        take(
            &mut own.heartbeat_timeout_ms,
            ft.heartbeat_timeout_ms,
            flagged("heartbeat_timeout_ms"),
        );
        take(
            &mut own.startup_timeout_secs,
            ft.startup_timeout_secs,
            flagged("startup_timeout_secs"),
        );
        let own = &mut self.elasticity;
        take(&mut own.autoscale, el.autoscale, flagged("autoscale"));
        take(
            &mut own.autoscale_policy,
            el.autoscale_policy,
            flagged("autoscale_policy"),
        );
        take(&mut own.split_parts, el.split_parts, flagged("split_parts"));
        if !(2..=64).contains(&own.split_parts) {
            bail!("{}: `split_parts` must be in 2..=64", path.display());
        }
        if !flagged("max_workers") && el.max_workers.is_some() {
            own.max_workers = el.max_workers;
        }
        if !flagged("idle_worker_secs") && el.idle_worker_secs.is_some() {
            own.idle_worker_secs = el.idle_worker_secs;
        }
        take(
            &mut own.scale_threshold,
            el.scale_threshold,
            flagged("scale_threshold"),
        );
        take(
            &mut own.scale_reports,
            el.scale_reports,
            flagged("scale_reports"),
        );
        take(
            &mut own.scale_in_threshold,
            el.scale_in_threshold,
            flagged("scale_in_threshold"),
        );
        take(&mut own.scale_at, el.scale, flagged("scale_at"));
        take(&mut own.scale_in_at, el.scale_in, flagged("scale_in_at"));
        if !flagged("worker_cpu") && el.worker_cpu.is_some() {
            own.worker_cpu = el.worker_cpu;
        }
        for (key, value) in [
            (
                "recovery_parallelism",
                self.fault_tolerance.recovery_parallelism,
            ),
            ("scale_reports", self.elasticity.scale_reports),
            (
                "startup_timeout_secs",
                self.fault_tolerance.startup_timeout_secs as u32,
            ),
        ] {
            if value == 0 {
                bail!("{}: `{key}` must be at least 1", path.display());
            }
        }
        Ok(FileQuery {
            file: path.clone(),
            query: file.query,
            params: file
                .params
                .map(serde_json::to_value)
                .transpose()
                .context("the job file's [params] do not convert to JSON")?,
        })
    }
}

/// Parses `OPERATOR=N`.
pub fn parse_partitions(spec: &str) -> Result<(String, u32), String> {
    let (name, n) = spec
        .split_once('=')
        .ok_or_else(|| format!("`{spec}` is not OPERATOR=N"))?;
    let n: u32 = n
        .parse()
        .map_err(|_| format!("`{n}` in `{spec}` is not a number of partitions"))?;
    Ok((name.to_string(), n))
}

/// Parses `AT_SECS:OPERATOR`.
fn parse_scale(spec: &str) -> Result<(Duration, String), String> {
    let (at, operator) = spec
        .split_once(':')
        .ok_or_else(|| format!("`{spec}` is not AT_SECS:OPERATOR"))?;
    let at: f64 = at
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("`{at}` in `{spec}` is not a number of seconds"))?;
    Ok((Duration::from_secs_f64(at), operator.to_string()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{BenchmarkCommand, Cli, Command, SpateCommand};

    /// Parses `spate run keycount ARGS` and returns its job flags.
    fn job_args(args: &[&str]) -> JobArgs {
        let line = ["spate", "run", "keycount"].iter().chain(args);
        match Cli::try_parse_from(line).expect("the flags parse").command {
            SpateCommand::Job(Command::Run { job, .. }) => job,
            _ => unreachable!("parsed `spate run`"),
        }
    }

    /// The queries the flags are checked against: the examples'.
    fn registry() -> QueryRegistry {
        let mut registry = QueryRegistry::new();
        spate_examples::register(&mut registry);
        registry
    }

    fn config(args: &[&str]) -> Result<JobConfig> {
        let params = serde_json::json!({"input": "in.txt", "output": "out.csv"});
        job_args(args).config(
            &registry(),
            "keycount",
            params,
            &ClusterToken::given("secret"),
        )
    }

    fn error(args: &[&str]) -> String {
        format!("{:#}", config(args).expect_err("the flags are refused"))
    }

    #[test]
    fn every_flag_reaches_the_job_config() {
        let c = config(&[
            "--workers=2",
            "--pool=3",
            "--partitions=count=3",
            "--checkpoint-ms=50",
            "--backup-copies=1",
            "--kill=1.5:count:1",
            "--recovery-parallelism=2",
            "--heartbeat-timeout-ms=300",
            "--startup-timeout-secs=9",
            "--autoscale",
            "--scale-threshold=0.8",
            "--scale-reports=2",
            "--scale-in-threshold=0.1",
            "--scale=2:count",
            "--scale-in=3.5:split",
            "--worker-cpu=0.5",
        ])
        .unwrap();
        assert_eq!((c.query.as_str(), c.workers, c.pool), ("keycount", 2, 3));
        assert_eq!(c.params["input"], "in.txt");
        assert_eq!(c.partitions, BTreeMap::from([("count".to_string(), 3)]));
        assert_eq!(c.checkpoint_interval, Duration::from_millis(50));
        assert_eq!(c.backup_copies, 1);
        assert_eq!(c.kills, vec!["1.5:count:1".parse::<KillSpec>().unwrap()]);
        assert_eq!(c.recovery_parallelism, 2);
        assert_eq!(c.heartbeat_timeout, Duration::from_millis(300));
        assert_eq!(c.startup_timeout, Duration::from_secs(9));
        let policy = c.autoscale.expect("--autoscale sets a policy");
        assert_eq!(
            (policy.threshold, policy.reports, policy.low_threshold),
            (0.8, 2, 0.1)
        );
        assert_eq!(c.scale_at, vec![(Duration::from_secs(2), "count".into())]);
        assert_eq!(
            c.scale_in_at,
            vec![(Duration::from_millis(3500), "split".into())]
        );
        assert_eq!(c.worker_cpu, Some(0.5));
        assert_eq!(c.token, "secret");
    }

    #[test]
    fn defaults_are_the_engines() {
        let c = config(&[]).unwrap();
        let engine = JobConfig::new("keycount", serde_json::Value::Null, 3);
        assert_eq!(c.workers, engine.workers);
        assert_eq!(c.pool, engine.pool);
        assert_eq!(c.checkpoint_interval, engine.checkpoint_interval);
        assert_eq!(c.backup_copies, engine.backup_copies);
        assert_eq!(c.heartbeat_timeout, engine.heartbeat_timeout);
        assert_eq!(c.startup_timeout, engine.startup_timeout);
        assert_eq!(c.recovery_parallelism, engine.recovery_parallelism);
        assert_eq!(c.autoscale, None);
        assert!(c.kills.is_empty() && c.scale_at.is_empty() && c.scale_in_at.is_empty());
        assert_eq!(c.worker_cpu, None);
        // An enabled policy keeps the engine's cooldown and merge settings.
        let policy = config(&["--autoscale"]).unwrap().autoscale.unwrap();
        assert_eq!(policy, ScalePolicy::default());
    }

    #[test]
    fn linear_road_keeps_a_pool_of_one_by_default() {
        let parsed = Cli::try_parse_from([
            "spate", "lrb", "run", "--input", "i", "--tolls", "t", "--out", "o",
        ])
        .unwrap();
        let SpateCommand::Benchmark(BenchmarkCommand::Lrb(crate::lrb::LrbCommand::Run {
            job, ..
        })) = parsed.command
        else {
            unreachable!("parsed `spate lrb run`");
        };
        assert_eq!(job.pool, 1);
        assert_eq!(job_args(&[]).pool, 0);
    }

    #[test]
    fn operators_a_flag_names_must_exist() {
        for flag in [
            "--kill=1:counter",
            "--scale=1:counter",
            "--scale-in=1:counter",
            "--partitions=counter=2",
        ] {
            let err = error(&[flag]);
            let name = flag.split('=').next().unwrap();
            assert!(
                err.contains(&format!(
                    "{name} names `counter`, which is not an operator of `keycount`"
                )),
                "{err}"
            );
            assert!(err.contains("lines, split, count, write"), "{err}");
        }
    }

    #[test]
    fn contradictory_flags_are_refused() {
        let cases: [(&[&str], &str); 7] = [
            (
                &["--autoscale", "--checkpoint-ms=0"],
                "--autoscale needs fault tolerance on",
            ),
            (
                &["--kill=1:count", "--checkpoint-ms=0"],
                "nothing could be recovered",
            ),
            (
                &["--heartbeat-timeout-ms=150"],
                "workers send a heartbeat every 100 ms",
            ),
            (
                &["--autoscale", "--scale-in-threshold=0.8"],
                "must be below --scale-threshold",
            ),
            (&["--scale-threshold=NaN"], "utilisations of 0 or more"),
            (
                &["--worker-cpu=0"],
                "--worker-cpu must be a positive number",
            ),
            (
                &["--workers=0"],
                "--workers must be between 1 and 256, not 0",
            ),
        ];
        for (args, message) in cases {
            let err = error(args);
            assert!(err.contains(message), "{args:?}: {err}");
        }
        // Forced scaling without checkpoints stays a refusal the job records.
        config(&["--checkpoint-ms=0", "--scale=1:count"]).unwrap();
    }

    /// Parses `ARGS` as the `spate` binary does and applies the job file
    /// `text` (given with --job); returns the command.
    fn with_job_file(text: &str, args: &[&str]) -> Result<SpateCommand> {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "spate-job-{}-{}.toml",
            std::process::id(),
            FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        let job = format!("--job={}", path.display());
        let line: Vec<&str> = args.iter().copied().chain([job.as_str()]).collect();
        let matches = <Cli as clap::CommandFactory>::command()
            .try_get_matches_from(line)
            .unwrap();
        let mut command = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
            .unwrap()
            .command;
        let loaded = crate::load_job_file(&mut command, &matches);
        std::fs::remove_file(&path).unwrap();
        loaded.map(|()| command)
    }

    const KEYCOUNT_JOB: &str = include_str!("../../../examples/jobs/keycount.toml");

    #[test]
    fn a_job_file_sets_the_query_and_flags_override_it() {
        let command = with_job_file(
            KEYCOUNT_JOB,
            &[
                "spate",
                "run",
                "--workers=5",
                "--partitions=count=3",
                "--param=output=elsewhere.csv",
                "--kill=2:split",
            ],
        )
        .unwrap();
        let SpateCommand::Job(Command::Run { query, job }) = command else {
            unreachable!("parsed `spate run`");
        };
        assert_eq!(query.name().unwrap(), "keycount");
        let params = query.params().unwrap();
        assert_eq!(params["input"], "words.txt");
        assert_eq!(params["output"], "elsewhere.csv");
        assert_eq!(params["lines_per_sec"], 4000);
        let c = job
            .config(&registry(), "keycount", params, &ClusterToken::given(""))
            .unwrap();
        // From the flags:
        assert_eq!(c.workers, 5);
        assert_eq!(c.kills, vec!["2:split".parse::<KillSpec>().unwrap()]);
        // From the file, under a flag for another operator:
        assert_eq!(
            c.partitions,
            BTreeMap::from([("count".to_string(), 3), ("split".to_string(), 1)])
        );
        assert_eq!(c.pool, 4);
        assert_eq!(c.checkpoint_interval, Duration::from_millis(100));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(1));
        assert_eq!(c.startup_timeout, Duration::from_secs(60));
        assert_eq!(
            c.scale_at,
            vec![(Duration::from_millis(1800), "count".into())]
        );
        assert_eq!(
            c.scale_in_at,
            vec![(Duration::from_millis(3500), "count".into())]
        );
        assert_eq!(c.worker_cpu, Some(1.0));
    }

    #[test]
    fn the_linear_road_job_file_sets_the_cluster_of_lrb_run() {
        let command = with_job_file(
            include_str!("../../../examples/jobs/linear-road.toml"),
            &["spate", "lrb", "run", "--input=i", "--tolls=t", "--out=o"],
        )
        .unwrap();
        let SpateCommand::Benchmark(BenchmarkCommand::Lrb(crate::lrb::LrbCommand::Run {
            job, ..
        })) = command
        else {
            unreachable!("parsed `spate lrb run`");
        };
        assert_eq!((job.workers, job.pool), (3, 2));
        assert!(job.elasticity.autoscale);
        assert_eq!(job.partitions, [("toll_calculator".to_string(), 2)]);
    }

    #[test]
    fn a_job_file_places_pipelines_unless_the_flag_says_otherwise() {
        let lrb_run = ["spate", "lrb", "run", "--input=i", "--tolls=t", "--out=o"];
        let placement = |args: &[&str]| {
            let command = with_job_file("placement = \"pipelines\"\n", args).unwrap();
            let SpateCommand::Benchmark(BenchmarkCommand::Lrb(crate::lrb::LrbCommand::Run {
                job,
                ..
            })) = command
            else {
                unreachable!("parsed `spate lrb run`");
            };
            job.placement
        };
        assert_eq!(placement(&lrb_run), Placement::Pipelines);
        let flagged: Vec<&str> = lrb_run
            .iter()
            .copied()
            .chain(["--placement=spread"])
            .collect();
        assert_eq!(placement(&flagged), Placement::Spread);
        let err = format!(
            "{:#}",
            with_job_file("placement = \"pipeline\"\n", &lrb_run)
                .err()
                .expect("refused")
        );
        assert!(err.contains("line 1") && err.contains("pipelines"), "{err}");
    }

    #[test]
    fn job_file_mistakes_name_the_key_and_its_line() {
        let cases: [(&str, &[&str], &str); 6] = [
            (
                "query = \"keycount\"\nwokers = 3\n",
                &["spate", "run"],
                "line 2",
            ),
            (
                "[fault_tolerance]\ncheckpoint_ms = 100\nkill = [\"soon:count\"]\n",
                &["spate", "run", "keycount"],
                "line 3",
            ),
            (
                "[fault_tolerance]\nbackup_copies = 0\n",
                &["spate", "run", "keycount"],
                "`backup_copies` must be in 1..=8",
            ),
            (
                "[elasticity]\nscale_reports = 0\n",
                &["spate", "run", "keycount"],
                "`scale_reports` must be at least 1",
            ),
            (
                "query = \"keycount\"\n",
                &["spate", "lrb", "run", "--input=i", "--tolls=t", "--out=o"],
                "remove `query`",
            ),
            (
                "workers = \"three\"\n",
                &["spate", "run", "keycount"],
                "line 1",
            ),
        ];
        for (text, args, message) in cases {
            let err = format!("{:#}", with_job_file(text, args).err().expect("refused"));
            assert!(err.contains(message), "{text}: {err}");
            assert!(err.contains("spate-job-"), "names the file: {err}");
        }
        let err = format!(
            "{:#}",
            with_job_file("query = \"keycount\"\nwokers = 3\n", &["spate", "run"])
                .err()
                .unwrap()
        );
        assert!(err.contains("unknown field `wokers`"), "{err}");
    }

    #[test]
    fn malformed_flags_are_parse_errors() {
        for args in [
            ["spate", "run", "q", "--partitions", "count"],
            ["spate", "run", "q", "--partitions", "count=x"],
            ["spate", "run", "q", "--scale", "count"],
            ["spate", "run", "q", "--scale", "-1:count"],
            ["spate", "run", "q", "--kill", "x:count"],
            ["spate", "run", "q", "--recovery-parallelism", "0"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
