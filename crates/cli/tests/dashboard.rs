//! The dashboard and the control commands against a live Linear Road run:
//! the HTTP API and metrics show the running operators, `spate status`
//! prints them, `spate kill` is refused without the run's token and with a
//! wrong one, and with it kills a worker that then recovers, `spate scale`
//! splits an operator, and the run still finishes. An opt-in test
//! (`-- --ignored`) loads the page in headless Chromium and saves
//! docs/dashboard.png.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_with_timeout, scratch, spate, stderr};
use serde_json::Value;

/// A generated two-minute input in a fresh scratch directory.
fn input(name: &str) -> PathBuf {
    let dir = scratch(name);
    let mut generate = spate();
    generate
        .args(["lrb", "generate", "--duration-secs", "120", "--out"])
        .arg(&dir);
    let result = run_with_timeout(generate, Duration::from_secs(60));
    assert!(result.status.success(), "{}", stderr(&result));
    dir
}

/// A `spate lrb run --dashboard` in the background, killed if the test ends
/// before it does.
struct Run {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    stdout: Option<std::thread::JoinHandle<String>>,
    addr: String,
    /// The cluster token the run printed with the dashboard's address.
    token: String,
}

/// The address and token in the line a run prints when its dashboard
/// starts: `dashboard: http://ADDR/  (control commands need --token TOKEN
/// or SPATE_TOKEN=TOKEN)`.
fn dashboard_line(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("dashboard: http://")?;
    let (url, usage) = rest.split_once(' ')?;
    let token = usage.split("--token ").nth(1)?.split_whitespace().next()?;
    Some((url.trim_end_matches('/').to_string(), token.to_string()))
}

impl Run {
    /// Starts the run and reads its stderr until it prints the dashboard's
    /// address (and keeps reading, so the pipe never fills).
    fn start(dir: &Path, extra: &[&str]) -> Run {
        let mut command = spate();
        command
            .args([
                "lrb",
                "run",
                "--speedup",
                "10",
                "--workers",
                "3",
                "--pool",
                "1",
            ])
            .args(["--dashboard", "127.0.0.1:0"])
            .arg("--input")
            .arg(dir.join("input.csv"))
            .arg("--tolls")
            .arg(dir.join("historical-tolls.csv"))
            .arg("--out")
            .arg(dir.join("out"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start spate lrb run");
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (found, address) = mpsc::channel();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(found_line) = dashboard_line(&line) {
                    let _ = found.send(found_line);
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut run = Run {
            child: Some(child),
            stderr,
            stdout: Some(stdout),
            addr: String::new(),
            token: String::new(),
        };
        match address.recv_timeout(Duration::from_secs(20)) {
            Ok((addr, token)) => (run.addr, run.token) = (addr, token),
            Err(_) => panic!(
                "no dashboard address and token printed; stderr:\n{}",
                run.stderr()
            ),
        }
        run
    }

    /// POSTs a command with the run's token.
    fn post(&self, path: &str) -> u16 {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .post(format!("http://{}{path}", self.addr))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_empty()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
            .status()
            .as_u16()
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut response = agent
            .get(format!("http://{}{path}", self.addr))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.stderr()));
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().expect("body"))
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Polls `path` until `ok` holds, failing after `limit`.
    fn wait_for(&self, path: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.json(path);
            if ok(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never got there: {value:#}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the run to end; returns its status, stdout and stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        let mut child = self.child.take().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll the run") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the run did not finish in {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (status, stdout, self.stderr())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn events_of(view: &Value) -> Vec<(String, String)> {
    view["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap_or("").to_string(),
                        e["detail"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The worker hosting `operator`'s instance 0 in a view.
fn worker_of(view: &Value, operator: &str) -> u64 {
    view["operators"]
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["name"] == operator))
        .and_then(|o| o["instances"][0]["worker"].as_u64())
        .unwrap_or_else(|| panic!("no {operator} in {view:#}"))
}

fn is_running_with(view: &Value, operator: &str) -> bool {
    view["state"] == "running"
        && view["operators"]
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o["name"] == operator))
}

#[test]
fn dashboard_api_status_and_kill_on_a_live_run() {
    let started = Instant::now();
    let dir = input("dashboard-e2e");
    let run = Run::start(&dir, &[]);

    // The API shows the live query.
    let view = run.wait_for("/api/view?history=0", Duration::from_secs(15), |v| {
        is_running_with(v, "toll_calculator")
    });
    assert_eq!(view["query"], "linear-road");
    let graph = run.json("/api/graph");
    assert!(graph["edges"].as_array().is_some_and(|e| !e.is_empty()));
    let (status, metrics) = run.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("spate_instance_utilization{operator=\"toll_calculator\",instance=\"1\""),
        "{metrics}"
    );
    assert!(metrics.contains("spate_pool_size 1"), "{metrics}");
    assert!(metrics.contains("# TYPE spate_instance_tuples_in_total counter"));

    // `spate status` prints the tables.
    let mut status = spate();
    status.args(["status", "--addr", &run.addr]);
    let result = run_with_timeout(status, Duration::from_secs(15));
    assert!(result.status.success(), "{}", stderr(&result));
    let table = String::from_utf8_lossy(&result.stdout);
    for expected in [
        "query linear-road  state running",
        "workers",
        "operators",
        "toll_calculator",
        "0000-7fff",
        "recent events",
        "pool",
    ] {
        assert!(table.contains(expected), "missing `{expected}`:\n{table}");
    }

    // Kill the worker hosting toll_calculator[0]; it must be recovered.
    // Without the run's token, or with another, `spate kill` is refused in
    // one line that says what to do.
    let worker = worker_of(&view, "toll_calculator");
    let kill_with = |token: Option<&str>| {
        let mut kill = spate();
        kill.args(["kill", &worker.to_string(), "--addr", &run.addr])
            .env_remove("SPATE_TOKEN");
        if let Some(token) = token {
            kill.args(["--token", token]);
        }
        run_with_timeout(kill, Duration::from_secs(15))
    };
    for (token, expected) in [
        (
            None,
            "needs the cluster token for commands: pass --token TOKEN or set SPATE_TOKEN",
        ),
        (
            Some("not-the-token"),
            "refused the token given with --token or SPATE_TOKEN",
        ),
    ] {
        let result = kill_with(token);
        assert!(!result.status.success(), "{token:?}: the kill was accepted");
        let text = stderr(&result);
        assert_eq!(text.lines().count(), 1, "{token:?}: {text}");
        assert!(
            text.starts_with("error: the dashboard at http://"),
            "{text}"
        );
        assert!(text.contains(expected), "{token:?}: {text}");
    }
    assert!(
        events_of(&run.json("/api/events"))
            .iter()
            .all(|(k, _)| k != "kill"),
        "a refused command was carried out"
    );
    let result = kill_with(Some(&run.token));
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(String::from_utf8_lossy(&result.stdout).contains("accepted: kill worker"));
    let events = run.wait_for("/api/events", Duration::from_secs(15), |v| {
        let kinds: Vec<String> = events_of(v).into_iter().map(|(k, _)| k).collect();
        kinds.iter().any(|k| k == "kill") && kinds.iter().any(|k| k == "restored")
    });
    let killed = events_of(&events)
        .into_iter()
        .find(|(k, _)| k == "kill")
        .map(|(_, d)| d)
        .unwrap_or_default();
    assert!(killed.contains(&format!("worker {worker}")), "{killed}");
    let recovered = &events["recoveries"][0];
    assert!(
        recovered["instances"]
            .as_array()
            .is_some_and(|i| i.iter().any(|n| n == "toll_calculator[0]")),
        "{events:#}"
    );

    // Once the pool is refilled, `spate scale` splits toll_calculator.
    run.wait_for("/api/view?history=0", Duration::from_secs(15), |v| {
        v["workers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["alive"] == true && w["pool"] == true))
    });
    let mut scale = spate();
    scale
        .args(["scale", "toll_calculator", "--addr", &run.addr])
        .env("SPATE_TOKEN", &run.token);
    let result = run_with_timeout(scale, Duration::from_secs(15));
    assert!(result.status.success(), "{}", stderr(&result));
    run.wait_for("/api/view?history=0", Duration::from_secs(15), |v| {
        events_of(v).iter().any(|(k, _)| k == "scale-out")
            && v["operators"]
                .as_array()
                .and_then(|ops| ops.iter().find(|o| o["name"] == "toll_calculator"))
                .and_then(|o| o["instances"].as_array())
                .is_some_and(|i| i.len() == 3)
    });

    // The run still finishes, with the recovery and the split in its report.
    let (exit, stdout, log) = run.finish(Duration::from_secs(40));
    assert!(exit.success(), "the run failed:\n{log}");
    assert!(stdout.contains("recovered"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["recoveries"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["scale_events"].as_array().map(Vec::len), Some(1));
    eprintln!("end to end in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn control_commands_fail_in_one_line_without_a_dashboard() {
    // A port nothing listens on: bind one, note it, free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    for args in [
        vec!["status", "--addr", &addr],
        vec!["kill", "1", "--addr", &addr],
        vec![
            "kill",
            "--operator",
            "forwarder",
            "--index",
            "0",
            "--addr",
            &addr,
        ],
        vec!["checkpoint", "--addr", &addr],
        vec!["scale", "toll_calculator", "--addr", &addr],
    ] {
        let mut command = spate();
        command.args(&args);
        let result = run_with_timeout(command, Duration::from_secs(15));
        assert!(!result.status.success(), "{args:?} succeeded");
        let text = stderr(&result);
        assert_eq!(text.lines().count(), 1, "{args:?}: {text}");
        assert!(
            text.starts_with("error: cannot reach the dashboard"),
            "{text}"
        );
    }
    let mut command = spate();
    command.args(["kill", "--addr", &addr]);
    let result = run_with_timeout(command, Duration::from_secs(15));
    assert!(!result.status.success(), "kill needs a target");
}

#[test]
fn a_dashboard_off_loopback_must_be_asked_for() {
    let mut command = spate();
    command.args(["run", "keycount", "--dashboard", "0.0.0.0:0"]);
    let result = run_with_timeout(command, Duration::from_secs(15));
    assert!(!result.status.success(), "it listened on every interface");
    let text = stderr(&result);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("not loopback") && text.contains("--dashboard-public"),
        "{text}"
    );
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `extra` arguments; its stdout.
fn chromium(url: &str, extra: &[String], profile: &Path) -> String {
    let mut command = std::process::Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null());
    let result = run_with_timeout(command, Duration::from_secs(60));
    assert!(result.status.success(), "chromium: {}", stderr(&result));
    String::from_utf8_lossy(&result.stdout).into_owned()
}

#[test]
#[ignore = "needs /usr/bin/chromium; run with `cargo test -p spate --test dashboard -- --ignored`"]
fn the_page_shows_the_run_in_a_browser() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is not installed (apt-get install chromium)");
        return;
    }
    let dir = input("dashboard-browser");
    let profile = dir.join("chromium-profile");
    let run = Run::start(&dir, &["--linger-secs", "60"]);
    let url = format!("http://{}/", run.addr);
    run.wait_for("/api/view?history=0", Duration::from_secs(15), |v| {
        is_running_with(v, "toll_calculator")
    });

    let dom = chromium(
        &url,
        &["--virtual-time-budget=4000".into(), "--dump-dom".into()],
        &profile,
    );
    assert!(
        dom.contains("toll_calculator"),
        "the graph is drawn:\n{dom}"
    );
    assert!(dom.contains("class=\"op\""), "{dom}");

    assert_eq!(run.post("/api/kill/toll_calculator/0"), 202);
    run.wait_for("/api/view?history=0", Duration::from_secs(15), |v| {
        events_of(v).iter().any(|(k, _)| k == "caught-up")
            && v["workers"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["alive"] == true && w["pool"] == true))
    });
    // A scale out too, so the page has every kind of event to show.
    assert_eq!(run.post("/api/scale/toll_calculator"), 202);
    run.wait_for("/api/events", Duration::from_secs(15), |v| {
        events_of(v).iter().any(|(k, _)| k == "scale-out")
    });
    // Let a few more seconds of history accumulate for the charts.
    std::thread::sleep(Duration::from_secs(3));

    let dom = chromium(
        &url,
        &["--virtual-time-budget=4000".into(), "--dump-dom".into()],
        &profile,
    );
    assert!(
        dom.contains("data-kind=\"kill\""),
        "the kill is on the timeline:\n{dom}"
    );
    assert!(dom.contains("data-kind=\"restored\""), "{dom}");
    assert!(dom.contains("data-kind=\"scale-out\""), "{dom}");

    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let shot = docs.join("dashboard.png");
    chromium(
        &url,
        &[
            "--virtual-time-budget=4000".into(),
            "--window-size=1400,1000".into(),
            format!("--screenshot={}", shot.display()),
        ],
        &profile,
    );
    let size = std::fs::metadata(&shot).expect("the screenshot").len();
    assert!(size < 300 * 1024, "{} is {size} bytes", shot.display());
    eprintln!("saved {} ({size} bytes)", shot.display());
}
