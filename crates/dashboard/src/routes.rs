//! The HTTP routes. Handlers read the shared view under its lock only long
//! enough to copy or encode what they answer, and send commands without
//! waiting for the coordinator: a 202 means "queued", and what happened
//! shows up in the view's events. Command routes first pass
//! [`auth::require_token`].

use std::collections::BTreeSet;
use std::sync::{Arc, RwLockReadGuard};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crossbeam_channel::Sender;
use serde::Serialize;
use serde_json::json;
use spate_engine::coordinator::view::{ClusterView, InstanceView, JobCommand, SharedView};
use spate_engine::coordinator::JobState;
use spate_engine::plan::{Incarnation, InstanceId, WorkerId};

use crate::{auth, metrics};

/// The page, built into the binary so the dashboard works on a machine with
/// no network and no files next to the executable.
const PAGE: &str = include_str!("dashboard.html");

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    view: SharedView,
    commands: Sender<JobCommand>,
    /// The cluster token commands must carry; empty: none needed.
    token: Arc<str>,
}

impl AppState {
    pub(crate) fn new(view: SharedView, commands: Sender<JobCommand>, token: &str) -> Self {
        AppState {
            view,
            commands,
            token: token.into(),
        }
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// A poisoned lock only means a writer panicked mid-update; the last
    /// view is still the best answer there is.
    fn read(&self) -> RwLockReadGuard<'_, ClusterView> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every route, with JSON errors for unknown paths and methods. The
/// commands are one group behind the token check, so a command added to it
/// cannot be left unprotected by mistake; the read-only routes are open.
pub(crate) fn router(state: AppState) -> Router {
    let commands = Router::new()
        // A static segment wins over a parameter: `/api/kill/worker/3` is
        // always worker 3, even for a query with an operator named `worker`.
        .route("/api/kill/worker/{worker}", post(kill_worker))
        .route("/api/kill/{operator}/{index}", post(kill_instance))
        .route("/api/checkpoint", post(checkpoint))
        .route("/api/scale/{operator}", post(scale))
        .route("/api/scale-in/{operator}", post(scale_in))
        // `route_layer`: a wrong method still gets its 405, not a 401.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/", get(page))
        .route("/api/view", get(view))
        .route("/api/graph", get(graph))
        .route("/api/events", get(events))
        .route("/metrics", get(prometheus))
        .merge(commands)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer: a status and a sentence for a person.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", uri.path()),
    )
}

/// Reads the one numeric parameter a route accepts; anything else in the
/// query string is a mistake worth telling the caller about.
fn numeric_param(query: Option<&str>, name: &str) -> Result<Option<u64>, ApiError> {
    let mut value = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{key}` (this route takes `{name}`)"
            )));
        }
        let parsed = raw.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("`{name}` must be a whole number, not `{raw}`"))
        })?;
        value = Some(parsed);
    }
    Ok(value)
}

async fn view(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<ClusterView>, ApiError> {
    let history = numeric_param(query.as_deref(), "history")?;
    let guard = state.read();
    // Listing every field (no `..`) makes a field added to the view a
    // compile error here rather than a silent omission from the API.
    let ClusterView {
        query,
        state: job_state,
        elapsed_ms,
        checkpoint_ms,
        workers,
        operators,
        edges,
        events,
        recoveries,
        scale_events,
        checkpoints,
        history: points,
        control_traffic,
    } = &*guard;
    let keep = history.map_or(points.len(), |n| {
        usize::try_from(n).unwrap_or(usize::MAX).min(points.len())
    });
    Ok(Json(ClusterView {
        query: query.clone(),
        state: *job_state,
        elapsed_ms: *elapsed_ms,
        checkpoint_ms: *checkpoint_ms,
        workers: workers.clone(),
        operators: operators.clone(),
        edges: edges.clone(),
        events: events.clone(),
        recoveries: recoveries.clone(),
        scale_events: scale_events.clone(),
        checkpoints: *checkpoints,
        history: points[points.len() - keep..].to_vec(),
        control_traffic: *control_traffic,
    }))
}

/// The query graph as the dashboard draws it.
#[derive(Serialize)]
struct Graph {
    query: String,
    state: JobState,
    operators: Vec<GraphOperator>,
    edges: Vec<GraphEdge>,
}

#[derive(Serialize)]
struct GraphOperator {
    name: String,
    kind: String,
    /// Place in query order, left to right.
    position: usize,
    instances: Vec<GraphInstance>,
}

#[derive(Serialize)]
struct GraphInstance {
    id: InstanceId,
    index: u32,
    worker: WorkerId,
    worker_alive: bool,
    key_start: u64,
    key_end: u64,
    /// `start-end` in hex: JSON numbers above 2^53 lose precision in
    /// JavaScript, so this is the exact form for people and scripts.
    key_range: String,
    /// Fraction of the key space owned.
    key_share: f64,
    incarnation: Incarnation,
    utilization: f64,
    in_rate: f64,
    out_rate: f64,
    queued_batches: u64,
    finished: bool,
}

#[derive(Serialize)]
struct GraphEdge {
    from: String,
    to: String,
}

/// The fraction of the 64-bit key-hash space an inclusive range owns.
pub(crate) fn key_share(start: u64, end: u64) -> f64 {
    if end < start {
        return 0.0;
    }
    let owned = u128::from(end - start) + 1;
    owned as f64 / 2f64.powi(64)
}

fn graph_instance(i: &InstanceView, alive: &BTreeSet<WorkerId>) -> GraphInstance {
    GraphInstance {
        id: i.id,
        index: i.index,
        worker: i.worker,
        worker_alive: alive.contains(&i.worker),
        key_start: i.key_start,
        key_end: i.key_end,
        key_range: format!("{:016x}-{:016x}", i.key_start, i.key_end),
        key_share: key_share(i.key_start, i.key_end),
        incarnation: i.incarnation,
        utilization: i.utilization,
        in_rate: i.in_rate,
        out_rate: i.out_rate,
        queued_batches: i.queued_batches,
        finished: i.finished,
    }
}

async fn graph(State(state): State<AppState>) -> Json<Graph> {
    let view = state.read();
    let alive: BTreeSet<WorkerId> = view
        .workers
        .iter()
        .filter(|w| w.alive)
        .map(|w| w.index)
        .collect();
    Json(Graph {
        query: view.query.clone(),
        state: view.state,
        operators: view
            .operators
            .iter()
            .enumerate()
            .map(|(position, op)| GraphOperator {
                name: op.name.clone(),
                kind: op.kind.clone(),
                position,
                instances: op
                    .instances
                    .iter()
                    .map(|i| graph_instance(i, &alive))
                    .collect(),
            })
            .collect(),
        edges: view
            .edges
            .iter()
            .map(|(from, to)| GraphEdge {
                from: from.clone(),
                to: to.clone(),
            })
            .collect(),
    })
}

async fn events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let since = numeric_param(query.as_deref(), "since_ms")?.unwrap_or(0);
    let view = state.read();
    let events: Vec<_> = view.events.iter().filter(|e| e.at_ms >= since).collect();
    Ok(Json(json!({
        "state": view.state,
        "elapsed_ms": view.elapsed_ms,
        "checkpoints": view.checkpoints,
        "events": events,
        "recoveries": view.recoveries,
    })))
}

async fn prometheus(State(state): State<AppState>) -> Response {
    let text = metrics::render(&state.read());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// Commands only make sense while the job runs: before, nothing is deployed;
/// after, nobody reads them.
fn require_running(view: &ClusterView) -> Result<(), ApiError> {
    match view.state {
        JobState::Running => Ok(()),
        JobState::Starting => Err(ApiError::conflict("the job has not started yet")),
        other => Err(ApiError::conflict(format!("the job has {other}"))),
    }
}

/// The operator a scale command names, in a running job.
fn running_operator<'v>(
    view: &'v ClusterView,
    operator: &str,
) -> Result<&'v spate_engine::coordinator::view::OperatorView, ApiError> {
    require_running(view)?;
    view.operators
        .iter()
        .find(|o| o.name == operator)
        .ok_or_else(|| ApiError::not_found(format!("no operator `{operator}`")))
}

/// Queues `command` and answers 202 with what was queued.
fn send(state: &AppState, command: JobCommand, what: String) -> Result<Response, ApiError> {
    state.commands.send(command.clone()).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the job no longer takes commands",
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": command, "message": what })),
    )
        .into_response())
}

async fn kill_worker(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = path?;
    let worker = WorkerId(
        raw.parse()
            .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a worker number")))?,
    );
    {
        let view = state.read();
        require_running(&view)?;
        match view.workers.iter().find(|w| w.index == worker) {
            None => {
                return Err(ApiError::not_found(format!(
                    "no worker {worker} (the job has {} workers)",
                    view.workers.len()
                )))
            }
            Some(w) if !w.alive => {
                return Err(ApiError::conflict(format!("worker {worker} is not alive")))
            }
            Some(_) => {}
        }
    }
    send(
        &state,
        JobCommand::KillWorker(worker),
        format!("kill worker {worker}"),
    )
}

async fn kill_instance(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((operator, raw)) = path?;
    let index: u32 = raw
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not an instance index")))?;
    {
        let view = state.read();
        require_running(&view)?;
        let Some(op) = view.operators.iter().find(|o| o.name == operator) else {
            let names: Vec<&str> = view.operators.iter().map(|o| o.name.as_str()).collect();
            return Err(ApiError::not_found(format!(
                "no operator `{operator}` (operators: {})",
                names.join(", ")
            )));
        };
        if !op.instances.iter().any(|i| i.index == index) {
            return Err(ApiError::not_found(format!(
                "`{operator}` has no instance {index} (it has {})",
                op.instances.len()
            )));
        }
    }
    let what = format!("kill the worker hosting {operator}[{index}]");
    send(&state, JobCommand::KillInstance { operator, index }, what)
}

async fn checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    {
        let view = state.read();
        require_running(&view)?;
        if view.checkpoint_ms == 0 {
            return Err(ApiError::conflict(
                "fault tolerance is off for this job (checkpoint interval 0)",
            ));
        }
    }
    send(
        &state,
        JobCommand::Checkpoint,
        "checkpoint every instance".into(),
    )
}

async fn scale(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(operator) = path?;
    {
        let view = state.read();
        let op = running_operator(&view, &operator)?;
        // The coordinator refuses these too, but only in its event list;
        // saying so here gives the caller the reason directly.
        if matches!(op.kind.as_str(), "Source" | "Sink") {
            return Err(ApiError::conflict(format!(
                "`{operator}` is a {}: sources and sinks do not split",
                op.kind.to_lowercase()
            )));
        }
        if !view.workers.iter().any(|w| w.alive && w.pool) {
            return Err(ApiError::conflict(
                "no idle worker in the pool to scale out onto (run with --pool N)",
            ));
        }
    }
    let what = format!("split the busiest partition of {operator}");
    send(&state, JobCommand::ScaleOut { operator }, what)
}

/// Merges the coldest adjacent pair of an operator's partitions.
async fn scale_in(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(operator) = path?;
    {
        let view = state.read();
        let op = running_operator(&view, &operator)?;
        if op.instances.len() < 2 {
            return Err(ApiError::conflict(format!(
                "`{operator}` has a single partition: nothing to merge"
            )));
        }
    }
    let what = format!("merge the coldest adjacent partitions of {operator}");
    send(&state, JobCommand::ScaleIn { operator }, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_share_covers_the_space() {
        assert_eq!(key_share(0, u64::MAX), 1.0);
        assert!((key_share(0, u64::MAX / 2) - 0.5).abs() < 1e-12);
        assert_eq!(key_share(5, 4), 0.0);
    }

    #[test]
    fn numeric_param_parses_and_refuses() {
        assert_eq!(numeric_param(None, "history").unwrap(), None);
        assert_eq!(
            numeric_param(Some("history=7"), "history").unwrap(),
            Some(7)
        );
        assert_eq!(
            numeric_param(Some("history=x"), "history")
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            numeric_param(Some("other=1"), "history")
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }
}
