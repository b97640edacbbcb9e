//! The routes against a hand-built view, over real HTTP on loopback.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::Value;
use spate_dashboard::{serve, ClusterView, Dashboard, DashboardError, JobCommand, SharedView};
use spate_engine::coordinator::view::{
    ControlTraffic, HistoryPoint, InstanceView, OperatorView, WorkerView,
};
use spate_engine::coordinator::{
    EventKind, JobEvent, JobState, PolicyKind, RecoveryTimeline, ScaleEvent, ScaleRates,
};
use spate_engine::plan::{InstanceId, WorkerId};

fn instance(index: u32, worker: u32, start: u64, end: u64, utilization: f64) -> InstanceView {
    InstanceView {
        id: InstanceId(10 + index),
        index,
        worker: WorkerId(worker),
        key_start: start,
        key_end: end,
        utilization,
        in_rate: 1500.0,
        out_rate: 1200.5,
        queued_batches: 3,
        buffered_bytes: 4096,
        tuples_in: 123_456,
        tuples_out: 100_000,
        ..InstanceView::default()
    }
}

/// Three operators on workers 0-2, worker 3 dead, worker 4 in the pool.
fn sample_view() -> ClusterView {
    let worker = |index: u32, alive: bool, pool: bool| WorkerView {
        index: WorkerId(index),
        pid: 1000 + index,
        addr: format!("127.0.0.1:{}", 4000 + index),
        alive,
        pool,
    };
    let point = |second: u64| HistoryPoint {
        at_ms: second * 1000,
        workers: 3,
        in_rate: BTreeMap::from([("toll_calculator".to_string(), 2000.0)]),
        utilization: BTreeMap::from([("toll_calculator".to_string(), 0.5)]),
        partitions: BTreeMap::from([("toll_calculator".to_string(), 2)]),
    };
    let event = |at_ms: u64, kind: EventKind, detail: &str| JobEvent::new(at_ms, kind, detail);
    ClusterView {
        query: "linear_road".into(),
        state: JobState::Running,
        elapsed_ms: 5_500,
        checkpoint_ms: 1000,
        workers: vec![
            worker(0, true, false),
            worker(1, true, false),
            worker(2, true, false),
            worker(3, false, false),
            worker(4, true, true),
        ],
        operators: vec![
            OperatorView {
                name: "feeder".into(),
                kind: "Source".into(),
                instances: vec![instance(0, 0, 0, u64::MAX, 0.2)],
            },
            OperatorView {
                name: "toll_calculator".into(),
                kind: "Stateful".into(),
                instances: vec![
                    instance(0, 1, 0, u64::MAX / 2, 0.25),
                    instance(1, 2, u64::MAX / 2 + 1, u64::MAX, 0.75),
                ],
            },
            OperatorView {
                name: "tolls".into(),
                kind: "Sink".into(),
                instances: vec![instance(0, 0, 0, u64::MAX, 0.01)],
            },
        ],
        edges: vec![
            ("feeder".into(), "toll_calculator".into()),
            ("toll_calculator".into(), "tolls".into()),
        ],
        events: vec![
            event(0, EventKind::Start, "3 workers, 1 in the pool"),
            event(
                2_000,
                EventKind::Kill,
                "killed worker 3 (pid 1003) on request",
            ),
            event(2_100, EventKind::Failure, "workers [3] failed"),
            event(
                2_300,
                EventKind::Restored,
                "toll_calculator[1] on workers [2]",
            ),
        ],
        recoveries: vec![RecoveryTimeline {
            workers: vec![WorkerId(3)],
            instances: vec!["toll_calculator[1]".into()],
            killed_ms: Some(2_000),
            detected_ms: 2_100,
            restored_ms: 2_300,
            rewired_ms: 2_310,
            caught_up_ms: Some(2_900),
        }],
        scale_events: vec![ScaleEvent {
            decided_ms: 4_000,
            reason: "policy rate decision 1".into(),
            decision: Some(1),
            rates: Some(ScaleRates {
                policy: PolicyKind::Rate,
                in_rate: 2000.0,
                offered_rate: 2600.0,
                true_rate: 2400.0,
                utilization: 0.83,
                projected: 1.08,
                target: 0.7,
            }),
            operator: "toll_calculator".into(),
            instance: InstanceId(2),
            new_instance: InstanceId(5),
            worker: WorkerId(4),
            partitions_before: 1,
            partitions_after: 2,
            pause_ms: 38,
            ..ScaleEvent::default()
        }],
        checkpoints: 7,
        history: (1..=5).map(point).collect(),
        control_traffic: ControlTraffic {
            received_bytes: 4_096,
            sent_bytes: 1_024,
        },
    }
}

/// The cluster token of the fixtures that have one.
const TOKEN: &str = "0123456789abcdef-s3cret";

struct Fixture {
    dashboard: Dashboard,
    view: SharedView,
    commands: Receiver<JobCommand>,
    agent: ureq::Agent,
    /// Sent with every POST, as `Authorization: Bearer` (none if empty).
    token: String,
}

/// A dashboard for a cluster whose token is [`TOKEN`].
fn start(view: ClusterView) -> Fixture {
    start_with_token(view, TOKEN)
}

fn start_with_token(view: ClusterView, token: &str) -> Fixture {
    let view: SharedView = Arc::new(RwLock::new(view));
    let (sender, commands) = crossbeam_channel::unbounded();
    let dashboard = serve("127.0.0.1:0", view.clone(), sender, token).expect("start the dashboard");
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    Fixture {
        dashboard,
        view,
        commands,
        agent,
        token: token.to_string(),
    }
}

/// Status, content type and body of a request.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an error answer: the status and a JSON message.
    fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(self.content_type.starts_with("application/json"));
        self.json()["error"]
            .as_str()
            .expect("an error message")
            .to_string()
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.dashboard.addr())
    }

    fn answer(mut response: ureq::http::Response<ureq::Body>) -> Answer {
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Answer {
            status: response.status().as_u16(),
            content_type,
            body: response.body_mut().read_to_string().expect("read the body"),
        }
    }

    fn get(&self, path: &str) -> Answer {
        Self::answer(self.agent.get(self.url(path)).call().expect("GET"))
    }

    /// POSTs with the fixture's token.
    fn post(&self, path: &str) -> Answer {
        if self.token.is_empty() {
            return self.post_with(path, None);
        }
        self.post_with(path, Some(&format!("Bearer {}", self.token)))
    }

    /// POSTs with this `Authorization` header, or none.
    fn post_with(&self, path: &str, authorization: Option<&str>) -> Answer {
        let mut request = self.agent.post(self.url(path));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        Self::answer(request.send_empty().expect("POST"))
    }

    fn no_command_sent(&self) {
        assert_eq!(self.commands.try_recv().ok(), None);
    }
}

#[test]
fn view_is_the_cluster_view_as_json() {
    let f = start(sample_view());
    let answer = f.get("/api/view");
    assert_eq!(answer.status, 200);
    let view: ClusterView = serde_json::from_str(&answer.body).expect("a ClusterView");
    assert_eq!(view.query, "linear_road");
    assert_eq!(view.state, JobState::Running);
    assert_eq!(view.operators.len(), 3);
    assert_eq!(view.control_traffic.received_bytes, 4_096);
    assert_eq!(view.operators[1].instances[1].worker, WorkerId(2));
    assert_eq!(view.history.len(), 5);
    assert_eq!(view.events.len(), 4);
    let [split] = &view.scale_events[..] else {
        panic!("one scale event: {:?}", view.scale_events);
    };
    assert_eq!((split.decision, split.partitions_after), (Some(1), 2));
    assert_eq!(split.rates.as_ref().map(|r| r.offered_rate), Some(2600.0));

    let short: ClusterView = serde_json::from_str(&f.get("/api/view?history=2").body).unwrap();
    assert_eq!(
        short.history.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
        [4000, 5000]
    );
    let none: ClusterView = serde_json::from_str(&f.get("/api/view?history=0").body).unwrap();
    assert!(none.history.is_empty());
    assert_eq!(none.operators.len(), 3);

    let message = f.get("/api/view?history=lots").assert_error(400);
    assert!(message.contains("history"), "{message}");
    f.get("/api/view?colour=red").assert_error(400);
}

#[test]
fn graph_has_operators_in_order_with_partitions_and_edges() {
    let f = start(sample_view());
    let graph = f.get("/api/graph").json();
    let names: Vec<&str> = graph["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["feeder", "toll_calculator", "tolls"]);
    let toll = &graph["operators"][1];
    assert_eq!(toll["position"], 1);
    assert_eq!(toll["kind"], "Stateful");
    let parts = toll["instances"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1]["worker"], 2);
    assert_eq!(parts[1]["worker_alive"], true);
    assert_eq!(parts[0]["key_range"], "0000000000000000-7fffffffffffffff");
    let share = parts[0]["key_share"].as_f64().unwrap();
    assert!((share - 0.5).abs() < 1e-9, "{share}");
    assert_eq!(parts[1]["utilization"], 0.75);
    assert_eq!(graph["edges"][0]["from"], "feeder");
    assert_eq!(graph["edges"][0]["to"], "toll_calculator");
}

#[test]
fn events_can_be_filtered_by_time() {
    let f = start(sample_view());
    let all = f.get("/api/events").json();
    assert_eq!(all["events"].as_array().unwrap().len(), 4);
    assert_eq!(all["checkpoints"], 7);
    assert_eq!(all["recoveries"][0]["caught_up_ms"], 2900);
    let recent = f.get("/api/events?since_ms=2100").json();
    let kinds: Vec<&str> = recent["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["failure", "restored"]);
    f.get("/api/events?since_ms=-1").assert_error(400);
}

#[test]
fn metrics_are_prometheus_text() {
    let f = start(sample_view());
    let answer = f.get("/metrics");
    assert_eq!(answer.status, 200);
    assert!(answer.content_type.starts_with("text/plain; version=0.0.4"));
    let text = answer.body;
    for line in [
        "# TYPE spate_instance_utilization gauge",
        r#"spate_instance_utilization{operator="toll_calculator",instance="1",worker="2"} 0.75"#,
        r#"spate_instance_in_rate{operator="toll_calculator",instance="0",worker="1"} 1500"#,
        r#"spate_instance_out_rate{operator="feeder",instance="0",worker="0"} 1200.5"#,
        "# TYPE spate_instance_tuples_in_total counter",
        r#"spate_instance_tuples_in_total{operator="tolls",instance="0",worker="0"} 123456"#,
        r#"spate_instance_tuples_out_total{operator="tolls",instance="0",worker="0"} 100000"#,
        r#"spate_instance_queued_batches{operator="toll_calculator",instance="1",worker="2"} 3"#,
        r#"spate_instance_buffered_bytes{operator="toll_calculator",instance="1",worker="2"} 4096"#,
        r#"spate_operator_partitions{operator="toll_calculator"} 2"#,
        r#"spate_job_info{query="linear_road",state="running"} 1"#,
        "spate_job_elapsed_seconds 5.5",
        "spate_workers_alive 4",
        "spate_pool_size 1",
        "# TYPE spate_checkpoints_total counter",
        "spate_checkpoints_total 7",
        "spate_recoveries_total 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}

#[test]
fn commands_are_queued_and_accepted() {
    let f = start(sample_view());
    let answer = f.post("/api/kill/worker/1");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        answer.json()["accepted"],
        serde_json::json!({ "KillWorker": 1 })
    );
    assert_eq!(
        f.commands.try_recv().ok(),
        Some(JobCommand::KillWorker(WorkerId(1)))
    );

    let answer = f.post("/api/kill/toll_calculator/1");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        f.commands.try_recv().ok(),
        Some(JobCommand::KillInstance {
            operator: "toll_calculator".into(),
            index: 1
        })
    );

    let answer = f.post("/api/scale/toll_calculator");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        f.commands.try_recv().ok(),
        Some(JobCommand::ScaleOut {
            operator: "toll_calculator".into()
        })
    );

    let answer = f.post("/api/scale-in/toll_calculator");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        f.commands.try_recv().ok(),
        Some(JobCommand::ScaleIn {
            operator: "toll_calculator".into()
        })
    );

    let answer = f.post("/api/checkpoint");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.json()["accepted"], "Checkpoint");
    assert_eq!(f.commands.try_recv().ok(), Some(JobCommand::Checkpoint));
    f.no_command_sent();
}

#[test]
fn commands_need_the_cluster_token() {
    let f = start(sample_view());
    for path in [
        "/api/kill/worker/1",
        "/api/kill/toll_calculator/0",
        "/api/checkpoint",
        "/api/scale/toll_calculator",
    ] {
        let message = f.post_with(path, None).assert_error(401);
        assert!(
            message.contains("--token") && message.contains("SPATE_TOKEN"),
            "{path}: {message}"
        );
        let message = f.post_with(path, Some("Bearer guess")).assert_error(403);
        assert!(message.contains("not this cluster's"), "{path}: {message}");
        f.post_with(path, Some(&format!("Basic {TOKEN}")))
            .assert_error(401);
        f.post_with(path, Some(&format!("Bearer {TOKEN}x")))
            .assert_error(403);
    }
    f.no_command_sent();
    // Refused before the command is even parsed: no hint about what exists.
    f.post_with("/api/kill/worker/abc", None).assert_error(401);
    f.no_command_sent();

    let answer = f.post_with("/api/checkpoint", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(f.commands.try_recv().ok(), Some(JobCommand::Checkpoint));
}

#[test]
fn the_read_only_routes_need_no_token() {
    let f = start(sample_view());
    for path in ["/", "/api/view", "/api/graph", "/api/events", "/metrics"] {
        assert_eq!(f.get(path).status, 200, "{path}");
    }
    // A wrong method is still a 405, not a request for a token.
    f.get("/api/checkpoint").assert_error(405);
}

#[test]
fn a_cluster_without_a_token_takes_commands_from_anyone() {
    let f = start_with_token(sample_view(), "");
    let answer = f.post_with("/api/kill/worker/1", None);
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        f.commands.try_recv().ok(),
        Some(JobCommand::KillWorker(WorkerId(1)))
    );
}

#[test]
fn bad_commands_are_refused_with_json_errors() {
    let f = start(sample_view());
    assert!(f
        .post("/api/kill/worker/abc")
        .assert_error(400)
        .contains("abc"));
    assert!(f
        .post("/api/kill/worker/99")
        .assert_error(404)
        .contains("99"));
    assert!(f
        .post("/api/kill/worker/3")
        .assert_error(409)
        .contains("not alive"));
    let message = f.post("/api/kill/nope/0").assert_error(404);
    assert!(
        message.contains("toll_calculator"),
        "lists the operators: {message}"
    );
    f.post("/api/kill/toll_calculator/2").assert_error(404);
    f.post("/api/kill/toll_calculator/-1").assert_error(400);
    f.post("/api/kill/toll_calculator").assert_error(404);
    f.get("/api/kill/worker/1").assert_error(405);
    f.post("/api/view").assert_error(405);
    f.get("/no/such/page").assert_error(404);
    f.post("/api/scale/nope").assert_error(404);
    let message = f.post("/api/scale/tolls").assert_error(409);
    assert!(message.contains("do not split"), "{message}");
    let message = f.post("/api/scale-in/tolls").assert_error(409);
    assert!(message.contains("single partition"), "{message}");
    f.no_command_sent();
}

#[test]
fn commands_need_a_running_job() {
    let f = start(sample_view());
    f.view.write().unwrap().state = JobState::Finished;
    assert!(f
        .post("/api/kill/worker/1")
        .assert_error(409)
        .contains("finished"));
    f.post("/api/checkpoint").assert_error(409);
    f.view.write().unwrap().state = JobState::Starting;
    f.post("/api/kill/toll_calculator/0").assert_error(409);
    f.view.write().unwrap().state = JobState::Running;
    f.view.write().unwrap().checkpoint_ms = 0;
    f.post("/api/checkpoint").assert_error(409);
    f.view.write().unwrap().checkpoint_ms = 1000;
    f.view.write().unwrap().workers.retain(|w| !w.pool);
    let message = f.post("/api/scale/toll_calculator").assert_error(409);
    assert!(message.contains("pool"), "{message}");
    f.no_command_sent();
}

#[test]
fn a_job_that_stopped_listening_gives_503() {
    let mut f = start(sample_view());
    drop(std::mem::replace(
        &mut f.commands,
        crossbeam_channel::never(),
    ));
    f.post("/api/kill/worker/0").assert_error(503);
}

#[test]
fn the_page_is_served() {
    let f = start(ClusterView::default());
    let answer = f.get("/");
    assert_eq!(answer.status, 200);
    assert!(answer.content_type.starts_with("text/html"));
    assert!(answer.body.contains("/api/view"), "the page polls the view");
    assert!(
        answer.body.contains("scale_events"),
        "the page shows the scaling decisions"
    );
    // An empty view (a job not started yet) still answers everywhere.
    assert_eq!(f.get("/api/view").status, 200);
    assert_eq!(f.get("/api/graph").status, 200);
    assert_eq!(f.get("/metrics").status, 200);
}

#[test]
fn dropping_the_dashboard_frees_its_port() {
    let f = start(ClusterView::default());
    let addr = f.dashboard.addr();
    assert!(addr.ip().is_loopback());
    assert!(f.dashboard.url().starts_with("http://127.0.0.1:"));
    drop(f);
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "still listening on {addr}"
    );
}

#[test]
fn a_bad_address_is_an_error() {
    let view: SharedView = Arc::new(RwLock::new(ClusterView::default()));
    let (sender, _commands) = crossbeam_channel::unbounded();
    match serve("not an address", view, sender, TOKEN) {
        Err(DashboardError::Bind { addr, .. }) => assert_eq!(addr, "not an address"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(d) => panic!("bound {}", d.addr()),
    }
}
