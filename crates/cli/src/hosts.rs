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
use spate_engine::coordinator::{Coordinator, JobState, Provisioner};
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
    /// A network event, `AT_SECS:WHAT`, where WHAT is `partition:T`,
    /// `cut:T:T`, `cut-coordinator:T`, `cut-peers:T`, `loss:T:PERCENT`, `bandwidth:T:KBIT`,
    /// `crash:T`, `heal:T` or `heal-all`, and a target T is a host (`h2`)
    /// or the host of an instance when the event fires (`toll_calculator/1`).
    /// Repeatable.
    #[arg(long = "fault", value_name = "AT_SECS:WHAT")]
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
        let at: f64 = parts[0]
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("`{}` in `{s}` is not a number of seconds", parts[0]))?;
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
        Ok(Scheduled {
            at: Duration::from_secs_f64(at),
            action,
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
    /// Milliseconds from the event to the first failure the coordinator
    /// declared on one of its hosts, if any.
    pub detected_after_ms: Option<u64>,
}

/// `hosts.json`: the hosts, the events, and what the run made of them.
#[derive(Debug, Serialize)]
struct HostsReport {
    hosts: usize,
    /// Worker index -> host.
    workers: Vec<String>,
    events: Vec<Injected>,
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
        Some(dir) => dir.clone(),
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
    attribute_detections(&mut events, &report, &worker_addrs, &hosts);
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
                ", failure declared {d} ms later"
            )),
            e.error
                .as_ref()
                .map_or(String::new(), |e| format!(" (not done: {e})"))
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

/// Fires `schedule`, timed from the job's start, until it is done or the
/// run ends.
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
    for event in schedule {
        while started.elapsed() < event.at {
            if done.load(Ordering::SeqCst) {
                return fired;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let at_ms = started.elapsed().as_millis() as u64;
        let (what, kind, touched, result) = fire(hosts, view, &event.action);
        tracing::info!(at_ms, "network event: {what}");
        fired.push(Injected {
            at_ms,
            what,
            kind,
            hosts: touched.iter().map(|h| h.to_string()).collect(),
            error: result.err(),
            detected_after_ms: None,
        });
    }
    fired
}

/// Carries out one event; returns what it was, its kind, the hosts it hit
/// and whether it could be done.
fn fire(
    hosts: &SimulatedHosts,
    view: &SharedView,
    action: &Action,
) -> (String, String, Vec<HostId>, Result<(), String>) {
    let resolve = |t: &Target| -> Result<HostId, String> {
        match t {
            Target::Host(h) => Ok(*h),
            Target::Instance(op, index) => host_of_instance(hosts, view, op, *index),
        }
    };
    let fault = |make: &dyn Fn() -> Result<Fault, String>| -> (String, String, Vec<HostId>, Result<(), String>) {
        match make() {
            Ok(fault) => (
                fault.to_string(),
                fault.kind().to_string(),
                fault.hosts(),
                hosts.inject(fault).map_err(|e| e.to_string()),
            ),
            Err(e) => (format!("{action:?}"), "unresolved".into(), Vec::new(), Err(e)),
        }
    };
    let on_host =
        |t: &Target, kind: &str, f: &dyn Fn(HostId) -> Result<(), String>| match resolve(t) {
            Ok(h) => (format!("{kind} {h}"), kind.to_string(), vec![h], f(h)),
            Err(e) => (
                format!("{kind} {t:?}"),
                kind.to_string(),
                Vec::new(),
                Err(e),
            ),
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
            "heal every host".into(),
            "heal".into(),
            hosts.all().collect(),
            hosts.heal_all().map_err(|e| e.to_string()),
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

/// For every fault event, how long until the coordinator declared a
/// worker on one of its hosts failed (the first recovery at or after it).
fn attribute_detections(
    events: &mut [Injected],
    report: &spate_lrb::driver::RunReport,
    worker_addrs: &[String],
    hosts: &SimulatedHosts,
) {
    for e in events.iter_mut().filter(|e| e.kind != "heal") {
        e.detected_after_ms = report
            .recoveries
            .iter()
            .filter(|r| r.detected_ms >= e.at_ms)
            .filter(|r| {
                r.workers.iter().any(|w| {
                    worker_addrs
                        .get(w.index())
                        .and_then(|a| host_of_addr(hosts, a))
                        .is_some_and(|h| e.hosts.contains(&h.to_string()))
                })
            })
            .map(|r| r.detected_ms - e.at_ms)
            .min();
    }
}
