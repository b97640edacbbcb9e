//! An exactly-once PostgreSQL sink for any Spate query.
//!
//! Every row the sink writes carries its sink instance and a sequence
//! number (the row's position in that instance's output, which replay
//! reproduces exactly). A progress table holds, per (table, sink instance),
//! the last committed sequence number and the incarnation that owns the
//! instance. Each commit is one transaction that inserts a batch (binary
//! `COPY`) and advances the progress row *only if the incarnation is still
//! the writer's*; a zombie (an older incarnation still running after a
//! failover) finds no row to update and rolls back. A restored incarnation
//! takes the progress row over (raising its incarnation) and deletes the
//! rows past its checkpoint in one transaction, and the engine's replay
//! writes them again with the same sequence numbers. The sink commits at
//! every checkpoint, so the checkpointed sequence is always durable; between
//! checkpoints it commits by batch size and age. See [`PgWriter`].
//!
//! [`PostgresSink`] wraps a writer as a [`Sink`] for rows made by a
//! function; [`testing::TestServer`] starts a throwaway server for tests and
//! benches.

mod error;
pub mod testing;
mod writer;

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use serde::{Deserialize, Serialize};
use spate_engine::{InstanceContext, OperatorError, Sink};

pub use error::PgError;
pub use postgres;
pub use writer::{connect, prepare_tables, PgWriter, PROGRESS_TABLE};

/// The SQL type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    /// `BIGINT` (i64).
    BigInt,
    /// `INTEGER` (i32).
    Integer,
    /// `DOUBLE PRECISION` (f64).
    Double,
    /// `TEXT`.
    Text,
    /// `BOOLEAN`.
    Boolean,
}

impl ColumnType {
    fn sql(self) -> &'static str {
        match self {
            ColumnType::BigInt => "BIGINT",
            ColumnType::Integer => "INTEGER",
            ColumnType::Double => "DOUBLE PRECISION",
            ColumnType::Text => "TEXT",
            ColumnType::Boolean => "BOOLEAN",
        }
    }

    fn pg_type(self) -> Type {
        match self {
            ColumnType::BigInt => Type::INT8,
            ColumnType::Integer => Type::INT4,
            ColumnType::Double => Type::FLOAT8,
            ColumnType::Text => Type::TEXT,
            ColumnType::Boolean => Type::BOOL,
        }
    }
}

/// A column of a sink's table (besides the sink's own `spate_instance` and
/// `spate_seq`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Its name: lower-case letters, digits and `_`, not starting with
    /// `spate_`.
    pub name: String,
    /// Its type.
    pub kind: ColumnType,
}

impl Column {
    /// A column named `name` of type `kind`.
    pub fn new(name: &str, kind: ColumnType) -> Self {
        Column {
            name: name.to_string(),
            kind,
        }
    }
}

/// One value of a row, in its column's type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// For a `BIGINT` column.
    BigInt(i64),
    /// For an `INTEGER` column.
    Integer(i32),
    /// For a `DOUBLE PRECISION` column.
    Double(f64),
    /// For a `TEXT` column.
    Text(String),
    /// For a `BOOLEAN` column.
    Boolean(bool),
}

impl Value {
    /// The column type this value belongs in.
    pub fn kind(&self) -> ColumnType {
        match self {
            Value::BigInt(_) => ColumnType::BigInt,
            Value::Integer(_) => ColumnType::Integer,
            Value::Double(_) => ColumnType::Double,
            Value::Text(_) => ColumnType::Text,
            Value::Boolean(_) => ColumnType::Boolean,
        }
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::BigInt(v) => v.to_sql_checked(ty, out),
            Value::Integer(v) => v.to_sql_checked(ty, out),
            Value::Double(v) => v.to_sql_checked(ty, out),
            Value::Text(v) => v.to_sql_checked(ty, out),
            Value::Boolean(v) => v.to_sql_checked(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            ColumnType::BigInt,
            ColumnType::Integer,
            ColumnType::Double,
            ColumnType::Text,
            ColumnType::Boolean,
        ]
        .iter()
        .any(|kind| kind.pg_type() == *ty)
    }

    to_sql_checked!();
}

/// Where a sink writes and how often it commits.
#[derive(Clone, Serialize, Deserialize)]
pub struct PgSinkConfig {
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (libpq's URL form).
    pub url: String,
    /// The table; created if absent.
    pub table: String,
    /// Commit once this many rows wait.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Commit when the oldest waiting row is this old (checked as rows
    /// arrive; every checkpoint commits too).
    #[serde(default = "default_batch_delay", with = "millis")]
    pub batch_delay: Duration,
    /// How long to keep retrying, with exponential backoff, while the
    /// database is unreachable before failing the instance.
    #[serde(default = "default_retry_for", with = "millis")]
    pub retry_for: Duration,
}

impl fmt::Debug for PgSinkConfig {
    // The URL may hold a password: show where, not how.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSinkConfig")
            .field("url", &writer::redact(&self.url))
            .field("table", &self.table)
            .field("batch_rows", &self.batch_rows)
            .field("batch_delay", &self.batch_delay)
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

impl PgSinkConfig {
    /// Writes to `table` at `url` with the default batching and retries.
    pub fn new(url: &str, table: &str) -> Self {
        PgSinkConfig {
            url: url.to_string(),
            table: table.to_string(),
            batch_rows: default_batch_rows(),
            batch_delay: default_batch_delay(),
            retry_for: default_retry_for(),
        }
    }
}

fn default_batch_rows() -> usize {
    10_000
}

fn default_batch_delay() -> Duration {
    Duration::from_millis(500)
}

fn default_retry_for() -> Duration {
    Duration::from_secs(120)
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Makes a table row of an input.
type RowFn<T> = Box<dyn Fn(&T) -> Vec<Value> + Send>;

/// A [`Sink`] writing each input as one row made by `to_row`, exactly once.
pub struct PostgresSink<T> {
    writer: PgWriter,
    to_row: RowFn<T>,
}

impl<T> PostgresSink<T> {
    /// A sink for the instance `ctx` writing rows of `columns` into
    /// `config.table`. It connects on first use, so creating it never
    /// blocks a worker.
    pub fn new(
        config: PgSinkConfig,
        columns: Vec<Column>,
        ctx: &InstanceContext,
        to_row: impl Fn(&T) -> Vec<Value> + Send + 'static,
    ) -> Result<Self, OperatorError> {
        Ok(PostgresSink {
            writer: PgWriter::new(config, columns, ctx).map_err(operator_error)?,
            to_row: Box::new(to_row),
        })
    }
}

/// The engine's error for a sink failure, with the sink's message.
pub fn operator_error(e: PgError) -> OperatorError {
    OperatorError::new(e.to_string())
}

impl<T: spate_engine::Data> Sink for PostgresSink<T> {
    type In = T;

    fn write(&mut self, input: T) -> Result<(), OperatorError> {
        let row = (self.to_row)(&input);
        self.writer.push(row).map_err(operator_error)
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        self.writer.commit().map_err(operator_error)
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        let seq = self.writer.checkpoint().map_err(operator_error)?;
        Ok(seq.to_le_bytes().to_vec())
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let seq: [u8; 8] = state.try_into().map_err(|_| {
            OperatorError::new("the PostgreSQL sink's checkpoint is not a sequence number")
        })?;
        self.writer
            .restore(u64::from_le_bytes(seq))
            .map_err(operator_error)
    }
}
