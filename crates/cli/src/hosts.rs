//! `spate hosts lrb`: Linear Road across simulated hosts (network
//! namespaces on one machine, see the `spate-hosts` crate) with network
//! faults injected on a schedule: the demo of fault tolerance across
//! machines, and what the hosts tests run.
//!
//! It does what a deployment on real machines does: a coordinator listening
//! on its own address, workers started on the hosts in turn through
//! `--provision-command`'s template (`{host} spate worker ...`, where
//! `{host}` runs a command on a host as `ssh host` would) and ended with
//! `--stop-command`, input and answers on the shared directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lrb_reference::generate::{generate, GenerateOptions};
use lrb_reference::validate::{validate, BadInput, ValidateOptions};
use serde::Serialize;
use spate_engine::cluster::{current_program, CommandProvisioner};
use spate_engine::coordinator::view::SharedView;
use spate_engine::coordinator::{Coordinator, EventKind, FailureCause, JobState, Provisioner};
use spate_hosts::{Fault, HostId, HostsOptions, SimulatedHosts};
use spate_lrb::driver::{self, RunOptions};
use spate_lrb::query::LrbParams;

use crate::job_args::JobArgs;

/// `spate hosts` subcommands.
#[derive(clap::Subcommand)]
pub enum HostsCommand {
    /// Run Linear Road over simulated hosts with scheduled network faults,
    /// then validate the answers (needs root).
    #[command(mut_arg("pool", |pool| pool.default_value("2")))]
    Lrb(LrbArgs),
}

/// What `spate hosts lrb` runs.
#[derive(clap::Args)]
pub struct LrbArgs {
    /// Simulated hosts to start workers on, in turn.
    #[arg(long, default_value_t = 6)]
    hosts: usize,
    /// Each host's CPU quota, in cores.
    #[arg(long, value_name = "CORES")]
    cpu_per_host: Option<f64>,
    /// Where the hosts' disks and the shared directory (input, answers,
    /// report.json, hosts.json) go.
    #[arg(long)]
    out: PathBuf,
    /// A directory holding input.csv and historical-tolls.csv [default:
    /// generate one into the shared directory].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Simulated seconds of a generated input.
    #[arg(long, default_value_t = 240)]
    duration_secs: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Replay S times faster than real time.
    #[arg(long, default_value_t = 30.0)]
    speedup: f64,
    /// A network event, `AT_SECS[+FOR_SECS]:WHAT`, where WHAT is `partition:T`,
    /// `cut:T:T`, `cut-coordinator:T`, `cut-peers:T`, `loss:T:PERCENT`, `bandwidth:T:KBIT`,
    /// `crash:T`, `heal:T` or `heal-all`, and a target T is a host (`h2`)
    /// or the host of an instance when the event fires (`toll_calculator/1`).
    /// A network fault given `+FOR_SECS` is lifted (that fault alone) after
    /// that long. Repeatable.
    #[arg(long = "fault", value_name = "AT_SECS[+FOR_SECS]:WHAT")]
    faults: Vec<Scheduled>,
    #[command(flatten)]
    job: JobArgs,
}

/// Where a network event lands.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Host(HostId),
    /// The host running this operator's instance when the event fires.
    Instance(String, u32),
}

/// What happens to the network.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    Partition(Target),
    Cut(Target, Target),
    CutFromCoordinator(Target),
    CutFromPeers(Target),
    Loss(Target, u8),
    Bandwidth(Target, u32),
    Crash(Target),
    Heal(Target),
    HealAll,
}

/// A network event at a time after the job starts.
#[derive(Clone, Debug, PartialEq)]
struct Scheduled {
    at: Duration,
    action: Action,
    /// How long a network fault lasts before it is lifted (`None`: until a
    /// heal or the end of the run).
    lasts: Option<Duration>,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(host) = s.parse::<HostId>() {
            return Ok(Target::Host(host));
        }
        let (operator, index) = match s.split_once('/') {
            Some((op, i)) => (
                op,
                i.parse()
                    .map_err(|_| format!("`{i}` in `{s}` is not an instance index"))?,
            ),
            None => (s, 0),
        };
        if operator.is_empty() {
            return Err(format!("`{s}` is neither a host (h2) nor an instance"));
        }
        Ok(Target::Instance(operator.to_string(), index))
    }
}

impl std::str::FromStr for Scheduled {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let seconds = |v: &str| -> Result<f64, String> {
            v.parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("`{v}` in `{s}` is not a number of seconds"))
        };
        let (at, lasts) = match parts[0].split_once('+') {
            Some((at, lasts)) => (seconds(at)?, Some(seconds(lasts)?)),
            None => (seconds(parts[0])?, None),
        };
        let target = |i: usize| -> Result<Target, String> {
            parts
                .get(i)
                .ok_or_else(|| format!("`{s}` lacks a target"))?
                .parse()
        };
        let number = |i: usize| -> Result<u32, String> {
            parts
                .get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("`{s}` lacks a number at its end"))
        };
        let action = match parts.get(1).copied() {
            Some("partition") => Action::Partition(target(2)?),
            Some("cut") => Action::Cut(target(2)?, target(3)?),
            Some("cut-coordinator") => Action::CutFromCoordinator(target(2)?),
            Some("cut-peers") => Action::CutFromPeers(target(2)?),
            Some("loss") => Action::Loss(
                target(2)?,
                u8::try_from(number(3)?).map_err(|_| format!("loss in `{s}` is a percentage"))?,
            ),
            Some("bandwidth") => Action::Bandwidth(target(2)?, number(3)?),
            Some("crash") => Action::Crash(target(2)?),
            Some("heal") => Action::Heal(target(2)?),
            Some("heal-all") => Action::HealAll,
            _ => return Err(format!("`{s}` is not AT_SECS:WHAT (see --help)")),
        };
        if lasts.is_some() && matches!(action, Action::Crash(_) | Action::Heal(_) | Action::HealAll)
        {
            return Err(format!(
                "`{s}`: only a network fault lasts (+FOR_SECS); a crash, heal or heal-all is instant"
            ));
        }
        Ok(Scheduled {
            at: Duration::from_secs_f64(at),
            action,
            lasts: lasts.map(Duration::from_secs_f64),
        })
    }
}

/// One network event as it happened, in `hosts.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Injected {
    /// Milliseconds after the job started.
    pub at_ms: u64,
    /// What was done, hosts resolved (`partition h3`).
    pub what: String,
    /// The fault's kind (`partition`, `cut`, ..., `crash`, `heal`).
    pub kind: String,
    /// The hosts it hit.
    pub hosts: Vec<String>,
    /// Why it could not be done, if it could not.
    pub error: Option<String>,
    /// When a fault given a duration was lifted, milliseconds after the job
    /// started.
    pub lifted_at_ms: Option<u64>,
    /// Milliseconds from the event to the first failure the coordinator
    /// declared that it explains (see [`Declared::cause`]), if any.
    pub detected_after_ms: Option<u64>,
    /// Why the coordinator declared that failure, as it said it.
    pub detected_by: Option<String>,
    /// How it found that failure (missed heartbeats, stalled channels, a
    /// broken connection).
    pub found_by: Option<FailureCause>,
}

/// A failure the coordinator declared, in `hosts.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Declared {
    /// When it was detected, milliseconds after the job started.
    pub at_ms: u64,
    /// The workers declared failed.
    pub workers: Vec<u32>,
    /// Their hosts.
    pub hosts: Vec<String>,
    /// Why, as the coordinator said.
    pub reason: String,
    /// How the coordinator found it.
    pub found_by: Option<FailureCause>,
    /// What explains it: `kill` (an injected kill of one of its workers in
    /// the seconds before), the index in `events` of the network fault on
    /// one of its hosts in force then (or lifted or crashed up to
    /// [`EXPLAINS_FOR`] before), or nothing: a failure no fault explains.
    pub cause: Option<Cause>,
}

/// What explains a declared failure.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// An injected `--kill`.
    Kill,
    /// The network event with this index in `events`.
    Fault(usize),
}

/// How long after a fault ends (is lifted or healed, or a crash happens)
/// or a kill fires a failure declared on its hosts is still put down to
/// it: detection takes up to a heartbeat timeout or a stall's second and
/// settling, stretched on a loaded machine.
const EXPLAINS_FOR: Duration = Duration::from_secs(3);

/// `hosts.json`: the hosts, the events, and what the run made of them.
#[derive(Debug, Serialize)]
struct HostsReport {
    hosts: usize,
    /// Worker index -> host.
    workers: Vec<String>,
    events: Vec<Injected>,
    /// Every failure the coordinator declared, with what explains it.
    failures: Vec<Declared>,
    recoveries: usize,
    deadline_misses: u64,
    validated: bool,
}

pub fn run(command: HostsCommand) -> Result<()> {
    match command {
        HostsCommand::Lrb(args) => lrb(args),
    }
}

fn lrb(mut args: LrbArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let hosts = Arc::new(
        SimulatedHosts::create(&HostsOptions {
            hosts: args.hosts,
            dir: args.out.clone(),
            cpu_per_host: args.cpu_per_host,
        })
        .context("cannot make the simulated hosts")?,
    );
    let shared = hosts.shared_dir();
    let data = match &args.data {
        // Workers run in their hosts' disks: a relative path would not
        // name this directory there.
        Some(dir) => {
            std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?
        }
        None => {
            let dir = shared.join("input");
            eprintln!("generating {} s of Linear Road input", args.duration_secs);
            generate(
                &GenerateOptions {
                    xways: 1,
                    seed: args.seed,
                    duration_secs: args.duration_secs,
                    out_dir: dir.clone(),
                },
                &mut |_| {},
            )?;
            dir
        }
    };
    let (input, tolls) = (data.join("input.csv"), data.join("historical-tolls.csv"));
    for file in [&input, &tolls] {
        if !file.is_file() {
            bail!("{} does not exist", file.display());
        }
    }
    let answers = shared.join("answers");
    args.job.default_partitions("toll_calculator", 2);
    let token = crate::control::ClusterToken::for_local_run(&args.job.token)?;
    let params = LrbParams {
        input: input.clone(),
        tolls: tolls.clone(),
        out_dir: answers.clone(),
        speedup: args.speedup,
        forwarders: 1,
        chain_forwarder: false,
        toll_calculators: 2,
        assessors: 1,
        stop_on_bad_input: false,
        speedup_step: None,
        sink: None,
    };
    let json = serde_json::to_value(&params)?;
    let mut config = args
        .job
        .config(crate::registry(), spate_lrb::query::NAME, json, &token)?;
    let view = SharedView::default();
    config.view = Some(view.clone());

    let ip = hosts.coordinator_ip();
    let coordinator =
        hosts.in_coordinator_namespace(|| Coordinator::bind(&format!("{ip}:0")))??;
    let addr = coordinator.addr().to_string();
    let program = current_program()?;
    let template = format!(
        "{{host}} {} worker --coordinator {{coordinator}} --listen 0.0.0.0:0",
        program.display()
    );
    let launchers: Vec<String> = hosts
        .all()
        .map(|h| hosts.launcher(h).display().to_string())
        .collect();
    let mut provisioner = CommandProvisioner::new(&template, &addr, &config.token)
        .with_hosts(launchers)
        .with_stop_command("kill -9 {pid}");
    eprintln!(
        "{} hosts ({}), coordinator at {addr}; starting {} workers with `{template}`",
        args.hosts,
        hosts
            .all()
            .map(|h| format!("{h} {}", hosts.ip(h)))
            .collect::<Vec<_>>()
            .join(", "),
        config.workers + config.pool,
    );
    for _ in 0..config.workers + config.pool {
        provisioner.provision()?;
    }

    let done = Arc::new(AtomicBool::new(false));
    let injector = {
        let (hosts, view, done) = (hosts.clone(), view.clone(), done.clone());
        let mut schedule = args.faults.clone();
        schedule.sort_by_key(|s| s.at);
        std::thread::spawn(move || inject_on_schedule(&hosts, &view, &schedule, &done))
    };
    let options = RunOptions {
        params,
        job: config,
    };
    let registry = crate::registry();
    let mut worker_addrs = Vec::new();
    let report = driver::run_with(&options, |config| {
        let summary = coordinator.run(registry, config, &mut provisioner)?;
        worker_addrs = summary.plan.workers.clone();
        Ok(summary)
    });
    done.store(true, Ordering::SeqCst);
    let mut events = injector
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let _ = hosts.heal_all();
    let report = report.context("the Linear Road run across hosts failed")?;
    let failures = declared_failures(&mut events, &report, &worker_addrs, &hosts);
    let workers: Vec<String> = worker_addrs
        .iter()
        .map(|a| host_of_addr(&hosts, a).map_or_else(|| a.clone(), |h| h.to_string()))
        .collect();
    crate::lrb::print_report(&report);
    for e in &events {
        println!(
            "at {} ms: {}{}{}",
            e.at_ms,
            e.what,
            e.detected_after_ms.map_or(String::new(), |d| format!(
                ", failure declared {d} ms later ({})",
                e.detected_by.as_deref().unwrap_or_default()
            )),
            e.error
                .as_ref()
                .map_or(String::new(), |e| format!(" (not done: {e})"))
        );
    }
    for f in failures.iter().filter(|f| f.cause.is_none()) {
        println!(
            "at {} ms: workers {:?} on {} declared failed ({}), explained by no fault or kill",
            f.at_ms,
            f.workers,
            f.hosts.join(", "),
            f.reason
        );
    }
    let validation = validate(&ValidateOptions {
        input,
        tolls,
        out_dir: answers.clone(),
        speedup: args.speedup,
        max_differences: 10,
        bad_input: BadInput::Skip,
    })?;
    print!("{validation}");
    let summary = HostsReport {
        hosts: args.hosts,
        workers,
        events,
        failures,
        recoveries: report.recoveries.len(),
        deadline_misses: report.deadline_misses,
        validated: validation.passed(),
    };
    let path = args.out.join("hosts.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("answers: {}; report: {}", answers.display(), path.display());
    if !validation.passed() {
        bail!("the answers differ from the reference (see above)");
    }
    Ok(())
}

/// Fires `schedule`, timed from the job's start, and lifts the faults
/// that last a while when their time is up, until all is done or the run
/// ends.
fn inject_on_schedule(
    hosts: &SimulatedHosts,
    view: &SharedView,
    schedule: &[Scheduled],
    done: &AtomicBool,
) -> Vec<Injected> {
    let mut fired = Vec::new();
    while !done.load(Ordering::SeqCst) && view.read().is_ok_and(|v| v.state == JobState::Starting) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The first view published as running was published within the last
    // poll: the job started its elapsed time before now.
    let elapsed = view.read().map_or(0, |v| v.elapsed_ms);
    let started = Instant::now()
        .checked_sub(Duration::from_millis(elapsed))
        .unwrap_or_else(Instant::now);
    // Faults to lift: when, which, and the index in `fired` of its event.
    let mut lifts: Vec<(Duration, Fault, usize)> = Vec::new();
    let mut next = 0;
    loop {
        let lift = (0..lifts.len()).min_by_key(|i| lifts[*i].0);
        let due = match (schedule.get(next), lift) {
            (Some(event), Some(i)) => event.at.min(lifts[i].0),
            (Some(event), None) => event.at,
            (None, Some(i)) => lifts[i].0,
            (None, None) => return fired,
        };
        while started.elapsed() < due {
            if done.load(Ordering::SeqCst) {
                return fired;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let at_ms = started.elapsed().as_millis() as u64;
        let injected = match lift.filter(|i| lifts[*i].0 == due) {
            Some(i) => {
                let (_, fault, cause) = lifts.swap_remove(i);
                fired[cause].lifted_at_ms = Some(at_ms);
                Injected {
                    at_ms,
                    what: format!("lift {fault}"),
                    kind: "heal".into(),
                    hosts: fault.hosts().iter().map(|h| h.to_string()).collect(),
                    error: hosts.lift(fault).err().map(|e| e.to_string()),
                    lifted_at_ms: None,
                    detected_after_ms: None,
                    detected_by: None,
                    found_by: None,
                }
            }
            None => {
                let event = &schedule[next];
                next += 1;
                let (injected, fault) = fire(hosts, view, &event.action, at_ms);
                if let (Some(lasts), Some(fault), None) = (event.lasts, fault, &injected.error) {
                    lifts.push((started.elapsed() + lasts, fault, fired.len()));
                }
                injected
            }
        };
        tracing::info!(at_ms, "network event: {}", injected.what);
        fired.push(injected);
    }
}

/// Carries out one event at `at_ms`; returns what happened and the
/// network fault it injected, if it did.
fn fire(
    hosts: &SimulatedHosts,
    view: &SharedView,
    action: &Action,
    at_ms: u64,
) -> (Injected, Option<Fault>) {
    let record =
        |what: String, kind: &str, touched: &[HostId], result: Result<(), String>| Injected {
            at_ms,
            what,
            kind: kind.to_string(),
            hosts: touched.iter().map(|h| h.to_string()).collect(),
            error: result.err(),
            lifted_at_ms: None,
            detected_after_ms: None,
            detected_by: None,
            found_by: None,
        };
    let resolve = |t: &Target| -> Result<HostId, String> {
        match t {
            Target::Host(h) => Ok(*h),
            Target::Instance(op, index) => host_of_instance(hosts, view, op, *index),
        }
    };
    let fault = |make: &dyn Fn() -> Result<Fault, String>| match make() {
        Ok(fault) => {
            let result = hosts.inject(fault).map_err(|e| e.to_string());
            let injected = result.is_ok().then_some(fault);
            let event = record(fault.to_string(), fault.kind(), &fault.hosts(), result);
            (event, injected)
        }
        Err(e) => (
            record(format!("{action:?}"), "unresolved", &[], Err(e)),
            None,
        ),
    };
    let on_host =
        |t: &Target, kind: &str, f: &dyn Fn(HostId) -> Result<(), String>| match resolve(t) {
            Ok(h) => (record(format!("{kind} {h}"), kind, &[h], f(h)), None),
            Err(e) => (record(format!("{kind} {t:?}"), kind, &[], Err(e)), None),
        };
    match action {
        Action::Partition(t) => fault(&|| Ok(Fault::Partition(resolve(t)?))),
        Action::Cut(a, b) => fault(&|| Ok(Fault::Cut(resolve(a)?, resolve(b)?))),
        Action::CutFromCoordinator(t) => fault(&|| Ok(Fault::CutFromCoordinator(resolve(t)?))),
        Action::CutFromPeers(t) => fault(&|| Ok(Fault::CutFromPeers(resolve(t)?))),
        Action::Loss(t, p) => fault(&|| Ok(Fault::Loss(resolve(t)?, *p))),
        Action::Bandwidth(t, kbit) => fault(&|| Ok(Fault::Bandwidth(resolve(t)?, *kbit))),
        Action::Crash(t) => on_host(t, "crash", &|h| {
            hosts.crash(h).map(|_| ()).map_err(|e| e.to_string())
        }),
        Action::Heal(t) => on_host(t, "heal", &|h| hosts.heal(h).map_err(|e| e.to_string())),
        Action::HealAll => (
            record(
                "heal every host".into(),
                "heal",
                &hosts.all().collect::<Vec<_>>(),
                hosts.heal_all().map_err(|e| e.to_string()),
            ),
            None,
        ),
    }
}

/// The host running `operator`'s instance `index` now, from the view.
fn host_of_instance(
    hosts: &SimulatedHosts,
    view: &SharedView,
    operator: &str,
    index: u32,
) -> Result<HostId, String> {
    let view = view
        .read()
        .map_err(|_| "the view is poisoned".to_string())?;
    let worker = view
        .operators
        .iter()
        .find(|o| o.name == operator)
        .and_then(|o| o.instances.iter().find(|i| i.index == index))
        .map(|i| i.worker)
        .ok_or_else(|| format!("no instance {operator}/{index}"))?;
    let addr = view
        .workers
        .iter()
        .find(|w| w.index == worker)
        .map(|w| w.addr.clone())
        .ok_or_else(|| format!("no worker {worker}"))?;
    host_of_addr(hosts, &addr).ok_or_else(|| format!("worker {worker} at {addr} is on no host"))
}

fn host_of_addr(hosts: &SimulatedHosts, addr: &str) -> Option<HostId> {
    let ip: std::net::SocketAddr = addr.parse().ok()?;
    match ip.ip() {
        std::net::IpAddr::V4(v4) => hosts.host_of(v4),
        std::net::IpAddr::V6(_) => None,
    }
}

/// Every failure the coordinator declared (its `failure` events; the
/// detection time from the recovery it started, when it started one), each
/// put down to what explains it; and for every fault event, how long until
/// the first failure it explains.
fn declared_failures(
    events: &mut [Injected],
    report: &spate_lrb::driver::RunReport,
    worker_addrs: &[String],
    hosts: &SimulatedHosts,
) -> Vec<Declared> {
    let host_of_worker = |w: u32| {
        worker_addrs
            .get(w as usize)
            .and_then(|a| host_of_addr(hosts, a))
            .map(|h| h.to_string())
    };
    let kills: Vec<(u64, u32)> = report
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Kill)
        .flat_map(|e| e.workers.iter().map(|w| (e.at_ms, w.0)))
        .collect();
    let ends: Vec<Option<u64>> = (0..events.len()).map(|i| fault_end(events, i)).collect();
    let explains_ms = EXPLAINS_FOR.as_millis() as u64;
    let mut recoveries = report.recoveries.iter().peekable();
    let mut declared = Vec::new();
    for event in report
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Failure)
    {
        let workers: Vec<u32> = event.workers.iter().map(|w| w.0).collect();
        let reason = event
            .detail
            .split_once("failed: ")
            .map_or(event.detail.as_str(), |(_, r)| r)
            .to_string();
        let at_ms = match recoveries.peek() {
            Some(r) if r.workers.iter().map(|w| w.0).eq(workers.iter().copied()) => {
                recoveries.next().map_or(event.at_ms, |r| r.detected_ms)
            }
            _ => event.at_ms,
        };
        let mut hit: Vec<String> = workers.iter().filter_map(|w| host_of_worker(*w)).collect();
        hit.sort();
        hit.dedup();
        let killed = kills
            .iter()
            .any(|(k, w)| workers.contains(w) && *k <= at_ms && at_ms <= k + explains_ms);
        let fault = (0..events.len())
            .filter(|i| {
                let e = &events[*i];
                !matches!(e.kind.as_str(), "heal" | "unresolved")
                    && e.error.is_none()
                    && e.hosts.iter().any(|h| hit.contains(h))
                    && e.at_ms <= at_ms + CLOCK_SLACK_MS
                    && ends[*i].is_none_or(|end| at_ms <= end + explains_ms)
            })
            // A fault that cuts explains a failure better than loss or a
            // cap that only slows; then the latest.
            .max_by_key(|i| {
                let e = &events[*i];
                (!matches!(e.kind.as_str(), "loss" | "bandwidth"), e.at_ms)
            });
        let cause = if killed {
            Some(Cause::Kill)
        } else {
            fault.map(Cause::Fault)
        };
        declared.push(Declared {
            at_ms,
            workers,
            hosts: hit,
            reason,
            found_by: event.cause,
            cause,
        });
    }
    for (i, e) in events.iter_mut().enumerate() {
        if let Some(d) = declared
            .iter()
            .filter(|d| d.cause == Some(Cause::Fault(i)))
            .min_by_key(|d| d.at_ms)
        {
            e.detected_after_ms = Some(d.at_ms.saturating_sub(e.at_ms));
            e.detected_by = Some(d.reason.clone());
            e.found_by = d.found_by;
        }
    }
    declared
}

/// How far the injector's clock (started from the published view) may run
/// ahead of the coordinator's, in milliseconds.
const CLOCK_SLACK_MS: u64 = 100;

/// When fault event `i` stopped: a crash at once; a fault given a duration
/// when it was lifted; else at the first later heal of one of its hosts
/// (`None`: in force to the end).
fn fault_end(events: &[Injected], i: usize) -> Option<u64> {
    let e = &events[i];
    if e.kind == "crash" {
        return Some(e.at_ms);
    }
    e.lifted_at_ms.or_else(|| {
        events[i + 1..]
            .iter()
            .find(|h| {
                h.kind == "heal"
                    && !h.what.starts_with("lift ")
                    && h.hosts.iter().any(|x| e.hosts.contains(x))
            })
            .map(|h| h.at_ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_may_last_a_while_and_an_instant_event_may_not() {
        let s: Scheduled = "2.5+1.5:partition:toll_calculator/1".parse().unwrap();
        assert_eq!(s.at, Duration::from_millis(2_500));
        assert_eq!(s.lasts, Some(Duration::from_millis(1_500)));
        assert_eq!(
            s.action,
            Action::Partition(Target::Instance("toll_calculator".into(), 1))
        );
        let s: Scheduled = "3:loss:h2:2".parse().unwrap();
        assert_eq!(s.lasts, None);
        assert!("3+1:crash:h2".parse::<Scheduled>().is_err());
        assert!("3+1:heal-all".parse::<Scheduled>().is_err());
        assert!("3+x:cut-peers:h2".parse::<Scheduled>().is_err());
    }

    fn event(at_ms: u64, kind: &str, what: &str, hosts: &[&str]) -> Injected {
        Injected {
            at_ms,
            what: what.into(),
            kind: kind.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            error: None,
            lifted_at_ms: None,
            detected_after_ms: None,
            detected_by: None,
            found_by: None,
        }
    }

    #[test]
    fn a_fault_ends_when_lifted_healed_or_at_once_for_a_crash() {
        let mut lifted = event(1_000, "partition", "partition h1", &["h1"]);
        lifted.lifted_at_ms = Some(2_000);
        let events = vec![
            lifted,
            event(1_500, "cut", "cut h2 from h3", &["h2", "h3"]),
            event(1_600, "crash", "crash h4", &["h4"]),
            event(1_700, "loss", "2 % loss on h5", &["h5"]),
            event(2_000, "heal", "lift partition h1", &["h1"]),
            event(3_000, "heal", "heal h3", &["h3"]),
        ];
        assert_eq!(fault_end(&events, 0), Some(2_000));
        assert_eq!(fault_end(&events, 1), Some(3_000));
        assert_eq!(fault_end(&events, 2), Some(1_600));
        assert_eq!(fault_end(&events, 3), None);
    }
}
