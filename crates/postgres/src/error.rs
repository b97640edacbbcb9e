//! What can go wrong between a sink and its database, and which failures
//! are worth retrying.

use std::error::Error as _;
use std::time::Duration;

/// An error of the PostgreSQL sink, worded for the person running the job.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection URL does not parse.
    #[error("bad PostgreSQL URL: {0} (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)")]
    BadUrl(String),
    /// Connecting failed: wrong host, port, database or credentials, or the
    /// server is down.
    #[error("cannot connect to PostgreSQL at {target}: {message}; check the URL, the credentials and that the server runs")]
    Connect {
        /// Where it tried to connect (user@host:port/database, no password).
        target: String,
        /// What the server or the network said.
        message: String,
        /// Whether trying again later may succeed (the server is down or
        /// restarting), as opposed to wrong credentials or database.
        transient: bool,
    },
    /// A statement failed.
    #[error("{what} on PostgreSQL at {target}: {message}")]
    Sql {
        /// What the sink was doing.
        what: String,
        /// Where (no password).
        target: String,
        /// What the server said.
        message: String,
        /// Whether the connection broke (retry) rather than the statement
        /// being refused (give up).
        transient: bool,
    },
    /// The database stayed unreachable for longer than the sink retries.
    #[error(
        "PostgreSQL at {target} stayed unreachable for {waited:?} while {what}; last error: {last}"
    )]
    Unreachable {
        /// What the sink was doing.
        what: String,
        /// Where (no password).
        target: String,
        /// How long it retried.
        waited: Duration,
        /// The last failure.
        last: String,
    },
    /// A newer incarnation of this sink instance took its progress row over:
    /// this one is a zombie and must not write.
    #[error("sink instance {instance} of table {table}, incarnation {mine}, is fenced: incarnation {current} has taken over (a new job over an earlier job's table must empty it first: prepare_tables with replace)")]
    Fenced {
        /// The sink's table.
        table: String,
        /// The sink instance.
        instance: u32,
        /// This writer's incarnation.
        mine: u32,
        /// The incarnation that owns the progress row now.
        current: i64,
    },
    /// The table holds fewer committed rows than the sink's checkpoint says:
    /// someone truncated or rewrote it during the job.
    #[error("table {table} holds {found} committed rows of sink instance {instance}, fewer than its checkpoint's {expected}: the table was changed outside the job; rerun the job from the start")]
    Inconsistent {
        /// The sink's table.
        table: String,
        /// The sink instance.
        instance: u32,
        /// Rows the progress table says are committed.
        found: i64,
        /// Rows the checkpoint says are committed.
        expected: u64,
    },
    /// The sink was defined or used wrongly (a bad table name, a row with
    /// the wrong columns).
    #[error("PostgreSQL sink: {0}")]
    Invalid(String),
}

impl PgError {
    /// Whether retrying later may succeed: the connection broke or the
    /// server is starting, stopping or overloaded.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Connect { transient, .. } | PgError::Sql { transient, .. } => *transient,
            _ => false,
        }
    }

    /// Wraps a failed statement.
    pub(crate) fn sql(what: &str, target: &str, e: &postgres::Error) -> Self {
        PgError::Sql {
            what: what.to_string(),
            target: target.to_string(),
            message: describe(e),
            transient: transient(e),
        }
    }
}

/// The server's own words when it answered, else the chain of causes.
pub(crate) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Connection exceptions (08), operator intervention such as a shutdown or
/// a server still starting (57), insufficient resources (53) and
/// serialization failures (40) pass; a closed connection or an I/O error
/// (refused, reset) is the network's. Everything else (bad credentials,
/// unknown database, SQL errors) is permanent.
pub(crate) fn transient(e: &postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        let class = &db.code().code()[..2];
        return matches!(class, "08" | "57" | "53" | "40");
    }
    if e.is_closed() {
        return true;
    }
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}
