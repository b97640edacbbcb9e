//! Spate's operations server: a web dashboard, a small JSON API and
//! Prometheus metrics for one running job.
//!
//! The coordinator publishes a [`ClusterView`] about five times a second
//! into a [`SharedView`] and reads [`JobCommand`]s from a channel; this crate
//! only reads the one and writes the other, so the job never waits on a web
//! client. The server runs on its own small tokio runtime on a background
//! thread, which keeps the engine free of async code.
//!
//! Routes:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | the dashboard page |
//! | `GET /api/view[?history=N]` | the whole [`ClusterView`] (last `N` history points) |
//! | `GET /api/graph` | operators, instances with key ranges and workers, edges |
//! | `GET /api/events[?since_ms=MS]` | events, recovery timelines, checkpoint count |
//! | `GET /metrics` | Prometheus text exposition |
//! | `POST /api/kill/worker/{n}` | kill worker `n` (202) |
//! | `POST /api/kill/{operator}/{index}` | kill the worker hosting an instance (202) |
//! | `POST /api/checkpoint` | checkpoint every instance now (202) |
//! | `POST /api/scale/{operator}` | split the operator's busiest partition onto a pool worker (202) |
//! | `POST /api/scale-in/{operator}` | merge the operator's coldest adjacent partitions (202) |
//!
//! When the cluster has a token, every `POST` must carry it as
//! `Authorization: Bearer TOKEN` (401 without it, 403 with another); the
//! `GET` routes are a read-only view and stay open.
//!
//! Every error is a 4xx or 5xx status with a JSON body `{"error": "..."}`.

#![warn(missing_docs)]

mod auth;
mod metrics;
mod routes;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
pub use spate_engine::coordinator::view::{ClusterView, JobCommand, SharedView};
use tokio::sync::watch;

/// How long in-flight requests may take to finish once the server is asked
/// to stop; a client holding a connection open must not hold up the job's
/// exit for longer.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The address is malformed, taken, or not this machine's.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The runtime or its thread could not be created (out of threads or
    /// file descriptors).
    #[error("cannot start the dashboard server: {0}")]
    Start(#[source] std::io::Error),
}

/// A running dashboard server. Dropping it stops the server and waits (a
/// couple of seconds at most) for its thread to end, so a run that finishes
/// leaves no listening socket behind.
pub struct Dashboard {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Dashboard {
    /// The address actually bound, which differs from the one asked for when
    /// that had port 0.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL, for printing to a person.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        // The receivers live as long as the server; if it already ended
        // there is nobody to tell.
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the dashboard server thread panicked");
            }
        }
    }
}

/// Starts the server on `addr` (for example `127.0.0.1:0`, which picks a
/// free loopback port) for the job publishing into `view` and reading
/// `commands`. Commands must carry `token`, the cluster's shared secret;
/// an empty `token` (a cluster without one) leaves them open.
///
/// Binding happens before this returns, so a taken or malformed address is
/// reported here rather than lost on a background thread. Nothing restricts
/// the address to loopback: exposing the API to a network is the caller's
/// explicit choice.
pub fn serve(
    addr: &str,
    view: SharedView,
    commands: Sender<JobCommand>,
    token: &str,
) -> Result<Dashboard, DashboardError> {
    let bind_error = |source| DashboardError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("spate-dashboard-io")
        .enable_io()
        .enable_time()
        .build()
        .map_err(DashboardError::Start)?;
    let (stop, stopped) = watch::channel(false);
    let app = routes::router(routes::AppState::new(view, commands, token));
    let thread = std::thread::Builder::new()
        .name("spate-dashboard".into())
        .spawn(move || {
            runtime.block_on(run_server(listener, app, stopped));
            runtime.shutdown_timeout(STOP_GRACE);
        })
        .map_err(DashboardError::Start)?;
    Ok(Dashboard {
        addr: bound,
        stop,
        thread: Some(thread),
    })
}

/// Serves until `stopped` turns true, then lets in-flight requests finish
/// for at most [`STOP_GRACE`].
async fn run_server(
    listener: std::net::TcpListener,
    app: axum::Router,
    stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!("the dashboard cannot use its socket: {e}");
            return;
        }
    };
    let mut graceful = stopped.clone();
    let mut deadline = stopped;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        // An error means the `Dashboard` is gone: stop as well.
        let _ = graceful.wait_for(|stop| *stop).await;
    });
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                tracing::warn!("the dashboard server failed: {e}");
            }
        }
        _ = async move {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(STOP_GRACE).await;
        } => tracing::debug!("dashboard clients were cut off at shutdown"),
    }
}
