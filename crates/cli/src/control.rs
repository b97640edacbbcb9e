//! Operating a running job: `--dashboard` on the run commands starts the
//! web dashboard and HTTP API, and `spate status`, `kill`, `checkpoint` and
//! `scale` talk to that API from another terminal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::Receiver;
use serde_json::Value;
use spate_engine::coordinator::view::{ClusterView, InstanceView, JobCommand, SharedView};

/// Serving the dashboard during a run.
#[derive(clap::Args, Clone, Debug)]
pub struct DashboardArgs {
    /// Serve the web dashboard and HTTP API while the job runs, on ADDR
    /// (without a value: 127.0.0.1:0, a free loopback port). Commands
    /// (kill, checkpoint, scale) need the cluster token, which the run
    /// prints; a non-loopback ADDR also needs --dashboard-public.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:0"
    )]
    pub dashboard: Option<String>,
    /// Let --dashboard listen on a non-loopback address: anyone who can
    /// reach it sees the job, and anyone who also has the token controls it.
    #[arg(long, requires = "dashboard")]
    pub dashboard_public: bool,
    /// Keep the dashboard up this many seconds after the job ends, to look
    /// at its final state.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "dashboard")]
    pub linger_secs: u64,
}

/// The cluster's shared secret: workers present it to join, and the HTTP
/// API's commands must carry it.
#[derive(Clone, Debug)]
pub struct ClusterToken {
    value: String,
    /// Made for this run rather than given: the user can only learn it from
    /// what the run prints.
    fresh: bool,
}

/// Bytes of randomness in a fresh token (printed as twice as many hex digits).
const TOKEN_BYTES: usize = 16;

impl ClusterToken {
    /// The token given with `--token` or `SPATE_TOKEN`, possibly empty (a
    /// coordinator whose workers join without one).
    pub fn given(value: &str) -> Self {
        ClusterToken {
            value: value.to_string(),
            fresh: false,
        }
    }

    /// For a local cluster: the token given, or a fresh random one. Making
    /// it here rather than leaving it to the cluster lets the dashboard,
    /// started first, check commands against the workers' token.
    pub fn for_local_run(given: &str) -> Result<Self> {
        if !given.is_empty() {
            return Ok(Self::given(given));
        }
        use std::io::Read;
        let mut bytes = [0u8; TOKEN_BYTES];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context(
                "cannot read /dev/urandom to make the cluster token; give one with --token or SPATE_TOKEN",
            )?;
        Ok(ClusterToken {
            value: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            fresh: true,
        })
    }

    /// The secret itself, for the job's configuration.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// How to use the token, for the line that prints the dashboard's URL.
    /// A token the user gave is not echoed into logs; a fresh one must be.
    fn usage(&self) -> String {
        if self.value.is_empty() {
            "control commands are open to anyone who can reach it: give the cluster a --token"
                .to_string()
        } else if self.fresh {
            format!(
                "control commands need --token {0} or SPATE_TOKEN={0}",
                self.value
            )
        } else {
            "control commands need the token given with --token or SPATE_TOKEN".to_string()
        }
    }
}

impl DashboardArgs {
    /// Fails when the dashboard would listen on a non-loopback address
    /// without --dashboard-public.
    pub fn check(&self) -> Result<()> {
        match &self.dashboard {
            Some(addr) if !self.dashboard_public => refuse_public(addr),
            _ => Ok(()),
        }
    }

    /// Runs `job` with the dashboard attached when one was asked for: `job`
    /// gets the view to publish into and the commands to obey (`None` when
    /// no dashboard runs), and should print its results itself so that they
    /// are on screen while the dashboard lingers. Commands must carry
    /// `token`, which must be the one the job's workers get. The dashboard
    /// stays up `--linger-secs` after the job ends, successful or not (a
    /// failed run is worth looking at too), unless `cancel` is set.
    pub fn around<T>(
        &self,
        cancel: &AtomicBool,
        token: &ClusterToken,
        job: impl FnOnce(Option<SharedView>, Option<Receiver<JobCommand>>) -> Result<T>,
    ) -> Result<T> {
        self.check()?;
        let Some(addr) = &self.dashboard else {
            return job(None, None);
        };
        let view = SharedView::default();
        let (sender, commands) = crossbeam_channel::unbounded();
        let dashboard = spate_dashboard::serve(addr, view.clone(), sender, token.value())
            .context("cannot start the dashboard")?;
        eprintln!("dashboard: {}  ({})", dashboard.url(), token.usage());
        let result = job(Some(view), Some(commands));
        if self.linger_secs > 0 && !cancel.load(Ordering::SeqCst) {
            eprintln!(
                "dashboard: still serving {} for {} s (Ctrl-C to stop)",
                dashboard.url(),
                self.linger_secs
            );
            let until = Instant::now() + Duration::from_secs(self.linger_secs);
            while Instant::now() < until && !cancel.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        drop(dashboard);
        result
    }
}

/// Fails when `addr` names a non-loopback address: exposing a job to the
/// network must be asked for with `--dashboard-public`. An address that
/// does not resolve is left for binding to report.
fn refuse_public(addr: &str) -> Result<()> {
    use std::net::ToSocketAddrs;
    let Ok(resolved) = addr.to_socket_addrs() else {
        return Ok(());
    };
    if let Some(public) = resolved.into_iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "--dashboard {addr} would listen on {}, which is not loopback: anyone who can \
             reach it could watch the job (and, with the token, control it); add \
             --dashboard-public to do that on a trusted network",
            public.ip()
        );
    }
    Ok(())
}

/// Where a running job's dashboard is, and the token its commands need.
#[derive(clap::Args, Clone, Debug)]
pub struct AddrArgs {
    /// The dashboard's address, as printed by `--dashboard` (HOST:PORT or
    /// http://HOST:PORT/).
    #[arg(long, value_name = "HOST:PORT")]
    addr: String,
    /// The cluster token, as printed by the run (kill, checkpoint and scale
    /// need it; status does not).
    #[arg(
        long,
        env = "SPATE_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    token: String,
}

/// `spate kill`.
#[derive(clap::Args, Clone, Debug)]
pub struct KillArgs {
    /// The worker to kill (see `spate status`).
    #[arg(
        value_name = "WORKER",
        required_unless_present = "operator",
        conflicts_with = "operator"
    )]
    worker: Option<u32>,
    /// Kill the worker hosting an instance of this operator instead.
    #[arg(long, value_name = "OP")]
    operator: Option<String>,
    /// Which instance of --operator (default 0).
    #[arg(long, value_name = "I", requires = "operator")]
    index: Option<u32>,
    #[command(flatten)]
    addr: AddrArgs,
}

/// `spate scale`.
#[derive(clap::Args, Clone, Debug)]
pub struct ScaleArgs {
    /// The operator whose busiest instance to split (or, with --in, whose
    /// coldest adjacent pair of partitions to merge).
    #[arg(value_name = "OPERATOR")]
    operator: String,
    /// Scale in: merge two partitions and return a worker to the pool.
    #[arg(long = "in")]
    scale_in: bool,
    #[command(flatten)]
    addr: AddrArgs,
}

/// A blocking client of one dashboard's API.
struct Client {
    base: String,
    agent: ureq::Agent,
    /// Sent with commands; empty: none.
    token: String,
}

impl Client {
    fn new(args: &AddrArgs) -> Result<Self> {
        let addr = args.addr.trim().trim_end_matches('/');
        let base = if let Some(rest) = addr.strip_prefix("http://") {
            format!("http://{rest}")
        } else if addr.contains("://") {
            bail!("--addr {addr}: only plain http:// dashboards are supported");
        } else if addr.is_empty() {
            bail!("--addr is empty; give the HOST:PORT printed by `--dashboard`");
        } else {
            format!("http://{addr}")
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Client {
            base,
            agent,
            token: args.token.clone(),
        })
    }

    /// Sends a request and returns the JSON answer of a 2xx, or the API's
    /// error message as the error.
    fn call(&self, method: &str, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let sent = if method == "POST" {
            let mut request = self.agent.post(&url);
            if !self.token.is_empty() {
                request = request.header("Authorization", format!("Bearer {}", self.token));
            }
            request.send_empty()
        } else {
            self.agent.get(&url).call()
        };
        let mut response =
            sent.map_err(|e| anyhow!("cannot reach the dashboard at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| anyhow!("reading the answer of {url}: {e}"))?;
        let json: Option<Value> = serde_json::from_str(&body).ok();
        if (200..300).contains(&status) {
            return json.ok_or_else(|| {
                anyhow!(
                    "{url} did not answer with JSON; is {} a Spate dashboard?",
                    self.base
                )
            });
        }
        match (status, self.token.is_empty()) {
            (401, true) => bail!(
                "the dashboard at {} needs the cluster token for commands: pass --token TOKEN \
                 or set SPATE_TOKEN (the run printed it when it started)",
                self.base
            ),
            (403, false) => bail!(
                "the dashboard at {} refused the token given with --token or SPATE_TOKEN: \
                 it is not this run's (the run printed its token when it started)",
                self.base
            ),
            _ => {}
        }
        match json.as_ref().and_then(|j| j["error"].as_str()) {
            Some(message) => bail!("{message} (HTTP {status})"),
            None => bail!(
                "{url} answered HTTP {status}; is {} a Spate dashboard?",
                self.base
            ),
        }
    }

    /// Reports what the API accepted.
    fn command(&self, path: &str) -> Result<()> {
        let answer = self.call("POST", path)?;
        let what = answer["message"].as_str().unwrap_or("command");
        println!(
            "accepted: {what} (follow it with `spate status --addr {}`)",
            self.base
        );
        Ok(())
    }
}

/// Percent-encodes a path segment (operator names are usually identifiers,
/// but nothing forces them to be).
fn segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `spate status`: the job, its workers, its instances and recent events.
pub fn status(args: &AddrArgs) -> Result<()> {
    let client = Client::new(args)?;
    let answer = client.call("GET", "/api/view?history=0")?;
    let view: ClusterView = serde_json::from_value(answer).with_context(|| {
        format!(
            "{} did not answer with a cluster view; is it a Spate dashboard?",
            client.base
        )
    })?;
    print!("{}", render_status(&view));
    Ok(())
}

/// `spate kill`.
pub fn kill(args: &KillArgs) -> Result<()> {
    let client = Client::new(&args.addr)?;
    match (&args.operator, args.worker) {
        (Some(operator), _) => client.command(&format!(
            "/api/kill/{}/{}",
            segment(operator),
            args.index.unwrap_or(0)
        )),
        (None, Some(worker)) => client.command(&format!("/api/kill/worker/{worker}")),
        (None, None) => bail!("name a WORKER or an --operator to kill"),
    }
}

/// `spate checkpoint`.
pub fn checkpoint(args: &AddrArgs) -> Result<()> {
    Client::new(args)?.command("/api/checkpoint")
}

/// `spate scale`.
pub fn scale(args: &ScaleArgs) -> Result<()> {
    let route = if args.scale_in { "scale-in" } else { "scale" };
    Client::new(&args.addr)?.command(&format!("/api/{route}/{}", segment(&args.operator)))
}

/// 1234 -> "1.2k": rates at a glance.
fn quantity(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn bytes(v: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut size = v as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

/// The top 16 bits of each end: enough to see how the space is cut.
fn key_range(i: &InstanceView) -> String {
    format!("{:04x}-{:04x}", i.key_start >> 48, i.key_end >> 48)
}

fn key_share(i: &InstanceView) -> f64 {
    if i.key_end < i.key_start {
        return 0.0;
    }
    (u128::from(i.key_end - i.key_start) + 1) as f64 / 2f64.powi(64)
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// How many events `spate status` shows.
const RECENT_EVENTS: usize = 12;

/// The status report as text (separate from printing so it can be tested).
fn render_status(view: &ClusterView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored throughout.
    let _ = writeln!(
        out,
        "query {}  state {}  elapsed {}  checkpoints {}{}  recoveries {}",
        if view.query.is_empty() {
            "-"
        } else {
            &view.query
        },
        view.state.as_str(),
        seconds(view.elapsed_ms),
        view.checkpoints,
        if view.checkpoint_ms > 0 {
            format!(" (every {} ms)", view.checkpoint_ms)
        } else {
            " (fault tolerance off)".to_string()
        },
        view.recoveries.len()
    );

    let _ = writeln!(out, "\nworkers");
    let _ = writeln!(
        out,
        "  {:>6}  {:>8}  {:<22}  {:<5}  instances",
        "worker", "pid", "address", "state"
    );
    for w in &view.workers {
        let hosted: Vec<String> = view
            .operators
            .iter()
            .flat_map(|o| {
                o.instances
                    .iter()
                    .filter(|i| i.worker == w.index)
                    .map(move |i| format!("{}[{}]", o.name, i.index))
            })
            .collect();
        let state = match (w.alive, w.pool) {
            (false, _) => "dead",
            (true, true) => "pool",
            (true, false) => "alive",
        };
        let _ = writeln!(
            out,
            "  {:>6}  {:>8}  {:<22}  {:<5}  {}",
            w.index,
            w.pid,
            w.addr,
            state,
            if hosted.is_empty() {
                "-".to_string()
            } else {
                hosted.join(" ")
            }
        );
    }

    let width = view
        .operators
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(0)
        .max("operator".len());
    let _ = writeln!(out, "\noperators");
    let _ = writeln!(
        out,
        "  {:<width$}  {:>4}  {:>6}  {:<9}  {:>6}  {:>5}  {:>7}  {:>7}  {:>5}  {:>9}  state",
        "operator", "inst", "worker", "keys", "share", "util", "in/s", "out/s", "queue", "buffered",
    );
    for op in &view.operators {
        for i in &op.instances {
            let state = if i.finished {
                "finished".to_string()
            } else if i.incarnation.0 > 0 {
                format!("restarted x{}", i.incarnation)
            } else {
                "running".to_string()
            };
            let _ = writeln!(
                out,
                "  {:<width$}  {:>4}  {:>6}  {:<9}  {:>5.1}%  {:>4.0}%  {:>7}  {:>7}  {:>5}  {:>9}  {}",
                op.name,
                i.index,
                i.worker,
                key_range(i),
                key_share(i) * 100.0,
                i.utilization * 100.0,
                quantity(i.in_rate),
                quantity(i.out_rate),
                i.queued_batches,
                bytes(i.buffered_bytes),
                state
            );
        }
    }

    if !view.recoveries.is_empty() {
        let _ = writeln!(out, "\nrecoveries");
        for r in &view.recoveries {
            let caught_up = r
                .caught_up_ms
                .map_or("not yet".to_string(), |ms| format!("at {}", seconds(ms)));
            let _ = writeln!(
                out,
                "  {} (workers {:?}): detected at {}, restored at {}, caught up {}",
                r.instances.join(", "),
                r.workers,
                seconds(r.detected_ms),
                seconds(r.restored_ms),
                caught_up
            );
        }
    }

    let _ = writeln!(out, "\nrecent events");
    let skip = view.events.len().saturating_sub(RECENT_EVENTS);
    if view.events.is_empty() {
        let _ = writeln!(out, "  (none yet)");
    }
    for e in &view.events[skip..] {
        let _ = writeln!(
            out,
            "  {:>8}  {:<10}  {}",
            seconds(e.at_ms),
            e.kind,
            e.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_engine::coordinator::view::{OperatorView, WorkerView};
    use spate_engine::coordinator::JobEvent;
    use spate_engine::plan::WorkerId;

    #[test]
    fn status_shows_workers_instances_and_events() {
        let view = ClusterView {
            query: "linear_road".into(),
            state: spate_engine::coordinator::JobState::Running,
            elapsed_ms: 1500,
            checkpoint_ms: 1000,
            workers: vec![
                WorkerView {
                    index: WorkerId(0),
                    pid: 42,
                    addr: "127.0.0.1:5000".into(),
                    alive: true,
                    pool: false,
                },
                WorkerView {
                    index: WorkerId(1),
                    pid: 43,
                    addr: "127.0.0.1:5001".into(),
                    alive: true,
                    pool: true,
                },
            ],
            operators: vec![OperatorView {
                name: "toll_calculator".into(),
                kind: "Stateful".into(),
                instances: vec![InstanceView {
                    key_end: u64::MAX / 2,
                    utilization: 0.5,
                    in_rate: 12_345.0,
                    buffered_bytes: 2048,
                    ..InstanceView::default()
                }],
            }],
            events: vec![JobEvent::new(
                1200,
                spate_engine::coordinator::EventKind::Kill,
                "killed worker 2",
            )],
            ..ClusterView::default()
        };
        let text = render_status(&view);
        assert!(text.contains("query linear_road  state running  elapsed 1.5 s"));
        assert!(text.contains("toll_calculator"));
        assert!(text.contains("0000-7fff"), "{text}");
        assert!(text.contains("50.0%"), "{text}");
        assert!(text.contains("12k"), "{text}");
        assert!(text.contains("2.0 KiB"), "{text}");
        assert!(
            text.contains("toll_calculator[0]"),
            "worker 0 hosts it: {text}"
        );
        assert!(text.contains("pool"), "{text}");
        assert!(text.contains("kill        killed worker 2"), "{text}");
    }

    #[test]
    fn fresh_tokens_are_random_and_printed_given_ones_are_not() {
        let a = ClusterToken::for_local_run("").unwrap();
        let b = ClusterToken::for_local_run("").unwrap();
        assert_eq!(a.value().len(), 2 * TOKEN_BYTES);
        assert_ne!(a.value(), b.value());
        assert!(a.usage().contains(&format!("--token {}", a.value())));
        let given = ClusterToken::for_local_run("S3CRET").unwrap();
        assert_eq!(given.value(), "S3CRET");
        assert!(!given.usage().contains("S3CRET"), "{}", given.usage());
        assert!(ClusterToken::given("").usage().contains("open"));
    }

    #[test]
    fn only_loopback_dashboards_go_without_asking() {
        assert!(refuse_public("127.0.0.1:0").is_ok());
        assert!(refuse_public("[::1]:8080").is_ok());
        assert!(refuse_public("localhost:8080").is_ok());
        let refused = refuse_public("0.0.0.0:8080").unwrap_err().to_string();
        assert!(refused.contains("--dashboard-public"), "{refused}");
        assert!(refuse_public("192.0.2.1:8080").is_err());
        // Left for binding to report, with its own error.
        assert!(refuse_public("not an address").is_ok());
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("toll_calculator"), "toll_calculator");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn addresses_become_base_urls() {
        let base = |a: &str| {
            Client::new(&AddrArgs {
                addr: a.into(),
                token: String::new(),
            })
            .map(|c| c.base)
            .map_err(|e| e.to_string())
        };
        assert_eq!(base("127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(base("http://h:1/").unwrap(), "http://h:1");
        assert!(base("https://h:1").is_err());
        assert!(base("").is_err());
    }
}
