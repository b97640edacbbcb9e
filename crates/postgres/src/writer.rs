//! The exactly-once writer: batches, commits with the sink's progress,
//! fences zombies, and retries while the database is away.

use std::str::FromStr;
use std::time::{Duration, Instant};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::config::Host;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};
use spate_engine::ids::Incarnation;
use spate_engine::InstanceContext;

use crate::error::{describe, transient, PgError};
use crate::{Column, PgSinkConfig, Value};

/// The table holding, per (sink table, sink instance), the last committed
/// sequence number and the incarnation allowed to write.
pub const PROGRESS_TABLE: &str = "spate_sink_progress";

/// Serialises table creation between sink instances starting together
/// (`CREATE TABLE IF NOT EXISTS` races otherwise): an arbitrary constant.
const SCHEMA_LOCK: i64 = 0x5350_4154_4531;

/// The first retry waits this long; each next one twice as long, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where the writer's next commit may start, decided by how the instance
/// was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// Take over from incarnations older than this one, keeping the first
    /// `n` rows (the checkpoint's; 0 for a restart with no checkpoint).
    From(u64),
    /// A restored instance, before the engine handed it its checkpoint.
    AwaitingRestore,
    /// This incarnation owns the progress row.
    Owned,
}

/// Writes one sink instance's rows exactly once: see the crate's docs.
pub struct PgWriter {
    config: PgSinkConfig,
    pg: postgres::Config,
    target: String,
    columns: Vec<Column>,
    /// `spate_instance`, `spate_seq`, then the columns' types.
    types: Vec<Type>,
    copy_sql: String,
    instance: u32,
    incarnation: Incarnation,
    client: Option<Client>,
    claim: Claim,
    /// Rows committed (and the sequence number of the last).
    committed: u64,
    /// Rows waiting for the next commit, flattened.
    pending: Vec<Value>,
    pending_since: Option<Instant>,
    retries: u64,
}

impl PgWriter {
    /// A writer for the sink instance `ctx`; it connects on first use.
    pub fn new(
        config: PgSinkConfig,
        columns: Vec<Column>,
        ctx: &InstanceContext,
    ) -> Result<Self, PgError> {
        check_identifier(&config.table)?;
        if columns.is_empty() {
            return Err(PgError::Invalid(format!(
                "table {} has no column",
                config.table
            )));
        }
        for column in &columns {
            check_identifier(&column.name)?;
            if column.name.starts_with("spate_") {
                return Err(PgError::Invalid(format!(
                    "column {} of table {}: names starting with spate_ are the sink's own",
                    column.name, config.table
                )));
            }
        }
        if config.batch_rows == 0 {
            return Err(PgError::Invalid("batch_rows must be at least 1".into()));
        }
        let pg = parse_url(&config.url)?;
        let target = target(&pg);
        let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
        let copy_sql = format!(
            "COPY {} (spate_instance, spate_seq, {}) FROM STDIN BINARY",
            quote(&config.table),
            names.join(", ")
        );
        let mut types = vec![Type::INT4, Type::INT8];
        types.extend(columns.iter().map(|c| c.kind.pg_type()));
        let claim = if ctx.restoring {
            Claim::AwaitingRestore
        } else {
            Claim::From(0)
        };
        Ok(PgWriter {
            config,
            pg,
            target,
            columns,
            types,
            copy_sql,
            instance: ctx.instance,
            incarnation: ctx.incarnation,
            client: None,
            claim,
            committed: 0,
            pending: Vec::new(),
            pending_since: None,
            retries: 0,
        })
    }

    /// Queues a row; commits when the batch is full or old enough.
    pub fn push(&mut self, row: Vec<Value>) -> Result<(), PgError> {
        if row.len() != self.columns.len() {
            return Err(PgError::Invalid(format!(
                "a row of table {} has {} values for {} columns",
                self.config.table,
                row.len(),
                self.columns.len()
            )));
        }
        for (value, column) in row.iter().zip(&self.columns) {
            if value.kind() != column.kind {
                return Err(PgError::Invalid(format!(
                    "column {} of table {} is {}, not {}",
                    column.name,
                    self.config.table,
                    column.kind.sql(),
                    value.kind().sql()
                )));
            }
        }
        self.pending.extend(row);
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        if self.pending_rows() >= self.config.batch_rows
            || since.elapsed() >= self.config.batch_delay
        {
            self.commit()?;
        }
        Ok(())
    }

    /// Rows queued and not yet committed.
    pub fn pending_rows(&self) -> usize {
        self.pending.len() / self.columns.len()
    }

    /// Rows committed by this instance so far (its last sequence number).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Attempts that failed on an unreachable database and were retried.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Commits the queued rows with the instance's progress in one
    /// transaction, retrying while the database is unreachable.
    pub fn commit(&mut self) -> Result<(), PgError> {
        self.claimed()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        self.retrying("committing rows", |w| w.try_commit())?;
        self.committed += self.pending_rows() as u64;
        self.pending.clear();
        self.pending_since = None;
        Ok(())
    }

    /// Commits everything queued and returns the sequence number to keep in
    /// the checkpoint: after a restore, rows past it are deleted and written
    /// again by the replay.
    pub fn checkpoint(&mut self) -> Result<u64, PgError> {
        self.commit()?;
        Ok(self.committed)
    }

    /// Returns the instance to a checkpoint's sequence number: takes the
    /// progress row over from older incarnations and deletes its rows past
    /// `seq`, in one transaction.
    pub fn restore(&mut self, seq: u64) -> Result<(), PgError> {
        self.claim = Claim::From(seq);
        self.pending.clear();
        self.pending_since = None;
        self.claimed()
    }

    /// Makes sure this incarnation owns its progress row.
    fn claimed(&mut self) -> Result<(), PgError> {
        match self.claim {
            Claim::Owned => Ok(()),
            Claim::AwaitingRestore => Err(PgError::Invalid(format!(
                "sink instance {} of table {} was given rows before its checkpoint",
                self.instance, self.config.table
            ))),
            Claim::From(_) => {
                let from = self.retrying("taking over the sink's progress", |w| w.try_claim())?;
                self.committed = from;
                self.claim = Claim::Owned;
                tracing::info!(
                    table = %self.config.table,
                    instance = self.instance,
                    incarnation = %self.incarnation,
                    "PostgreSQL sink owns its progress from row {from}"
                );
                Ok(())
            }
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the database
    /// has been unreachable for `retry_for`, with exponential backoff.
    fn retrying<T>(
        &mut self,
        what: &str,
        mut attempt: impl FnMut(&mut Self) -> Result<T, PgError>,
    ) -> Result<T, PgError> {
        let started = Instant::now();
        let mut delay = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            match attempt(self) {
                Ok(value) => {
                    if failures > 0 {
                        tracing::warn!(
                            table = %self.config.table,
                            instance = self.instance,
                            "PostgreSQL at {} reachable again after {failures} failed attempts in {:.1} s",
                            self.target,
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(value);
                }
                Err(e) if e.is_transient() => {
                    self.client = None;
                    if started.elapsed() + delay > self.config.retry_for {
                        return Err(PgError::Unreachable {
                            what: what.to_string(),
                            target: self.target.clone(),
                            waited: started.elapsed(),
                            last: e.to_string(),
                        });
                    }
                    failures += 1;
                    self.retries += 1;
                    tracing::warn!(
                        table = %self.config.table,
                        instance = self.instance,
                        "{what} failed ({e}); retry {failures} in {delay:?}"
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn client(&mut self) -> Result<&mut Client, PgError> {
        if self.client.is_none() {
            self.client = Some(open(&self.pg, &self.target)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// One attempt at taking the progress row over; returns the rows kept.
    fn try_claim(&mut self) -> Result<u64, PgError> {
        let table = self.config.table.clone();
        let columns = self.columns.clone();
        let (me, mine, claim) = (self.instance, self.incarnation, self.claim);
        let instance = me as i32;
        let target = self.target.clone();
        let err = |what: &str| {
            let target = target.clone();
            let what = what.to_string();
            move |e: postgres::Error| PgError::sql(&what, &target, &e)
        };
        let client = self.client()?;
        let mut tx = client
            .transaction()
            .map_err(err("starting a transaction"))?;
        create_tables(&mut tx, &[(&table, &columns)]).map_err(err("creating tables"))?;
        tx.execute(
            &format!(
                "INSERT INTO {PROGRESS_TABLE} (sink_table, instance, committed_seq, incarnation) \
                 VALUES ($1, $2, 0, $3) ON CONFLICT DO NOTHING"
            ),
            &[&table, &instance, &i64::from(mine.0)],
        )
        .map_err(err("adding the sink's progress row"))?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT committed_seq, incarnation FROM {PROGRESS_TABLE} \
                     WHERE sink_table = $1 AND instance = $2 FOR UPDATE"
                ),
                &[&table, &instance],
            )
            .map_err(err("reading the sink's progress"))?;
        let (found, current): (i64, i64) = (row.get(0), row.get(1));
        let Claim::From(keep) = claim else {
            return Err(PgError::Invalid("claiming a sink already owned".into()));
        };
        if current > i64::from(mine.0) {
            return Err(PgError::Fenced {
                table,
                instance: me,
                mine: mine.0,
                current,
            });
        }
        if found < keep as i64 {
            return Err(PgError::Inconsistent {
                table,
                instance: me,
                found,
                expected: keep,
            });
        }
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE spate_instance = $1 AND spate_seq > $2",
                quote(&table)
            ),
            &[&instance, &(keep as i64)],
        )
        .map_err(err("deleting rows past the checkpoint"))?;
        tx.execute(
            &format!(
                "UPDATE {PROGRESS_TABLE} SET committed_seq = $3, incarnation = $4 \
                 WHERE sink_table = $1 AND instance = $2"
            ),
            &[&table, &instance, &(keep as i64), &i64::from(mine.0)],
        )
        .map_err(err("taking over the sink's progress"))?;
        tx.commit().map_err(err("committing the take-over"))?;
        Ok(keep)
    }

    /// One attempt at committing the queued rows. After a connection broke
    /// during an earlier attempt the commit may have landed: the progress
    /// row tells, and then this attempt only confirms it.
    fn try_commit(&mut self) -> Result<(), PgError> {
        let table = self.config.table.clone();
        let (instance, mine) = (self.instance as i32, i64::from(self.incarnation.0));
        let old = self.committed as i64;
        let new = old + self.pending_rows() as i64;
        let target = self.target.clone();
        let err = |what: &str| {
            let target = target.clone();
            let what = what.to_string();
            move |e: postgres::Error| PgError::sql(&what, &target, &e)
        };
        let copy_sql = self.copy_sql.clone();
        let types = self.types.clone();
        let width = self.columns.len();
        let pending = std::mem::take(&mut self.pending);
        let (me, my_incarnation) = (self.instance, self.incarnation.0);
        let result = (|| {
            let client = self.client()?;
            let mut tx = client
                .transaction()
                .map_err(err("starting a transaction"))?;
            let updated = tx
                .execute(
                    &format!(
                        "UPDATE {PROGRESS_TABLE} SET committed_seq = $3 WHERE sink_table = $1 \
                         AND instance = $2 AND incarnation = $4 AND committed_seq = $5"
                    ),
                    &[&table, &instance, &new, &mine, &old],
                )
                .map_err(err("advancing the sink's progress"))?;
            if updated == 0 {
                let row = tx
                    .query_one(
                        &format!(
                            "SELECT committed_seq, incarnation FROM {PROGRESS_TABLE} \
                             WHERE sink_table = $1 AND instance = $2"
                        ),
                        &[&table, &instance],
                    )
                    .map_err(err("reading the sink's progress"))?;
                let (found, current): (i64, i64) = (row.get(0), row.get(1));
                return if current != mine {
                    Err(PgError::Fenced {
                        table: table.clone(),
                        instance: me,
                        mine: my_incarnation,
                        current,
                    })
                } else if found == new {
                    // An earlier attempt committed before its connection broke.
                    Ok(())
                } else {
                    Err(PgError::Inconsistent {
                        table: table.clone(),
                        instance: me,
                        found,
                        expected: old as u64,
                    })
                };
            }
            let copy = tx.copy_in(&copy_sql).map_err(err("starting COPY"))?;
            let mut writer = BinaryCopyInWriter::new(copy, &types);
            for (i, row) in pending.chunks(width).enumerate() {
                let seq = old + 1 + i as i64;
                let mut values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(width + 2);
                values.push(&instance);
                values.push(&seq);
                values.extend(row.iter().map(|v| v as &(dyn ToSql + Sync)));
                writer.write(&values).map_err(err("copying rows"))?;
            }
            writer.finish().map_err(err("copying rows"))?;
            tx.commit().map_err(err("committing rows"))
        })();
        self.pending = pending;
        result
    }
}

/// Connects to `url` once, without retrying: for checks at a job's start,
/// where a wrong URL or credentials must fail at once.
pub fn connect(url: &str) -> Result<Client, PgError> {
    let pg = parse_url(url)?;
    open(&pg, &target(&pg))
}

/// Creates the progress table and `tables` where absent; with `replace`,
/// empties them and forgets their sinks' progress, for a job that starts
/// over.
pub fn prepare_tables(
    client: &mut Client,
    tables: &[(&str, &[Column])],
    replace: bool,
) -> Result<(), PgError> {
    for (table, columns) in tables {
        check_identifier(table)?;
        for column in columns.iter() {
            check_identifier(&column.name)?;
        }
    }
    let target = "the server".to_string();
    let err = |what: &'static str| {
        let target = target.clone();
        move |e: postgres::Error| PgError::sql(what, &target, &e)
    };
    let mut tx = client
        .transaction()
        .map_err(err("starting a transaction"))?;
    create_tables(&mut tx, tables).map_err(err("creating tables"))?;
    if replace {
        for (table, _) in tables {
            tx.execute(&format!("TRUNCATE {}", quote(table)), &[])
                .map_err(err("emptying a table"))?;
            tx.execute(
                &format!("DELETE FROM {PROGRESS_TABLE} WHERE sink_table = $1"),
                &[table],
            )
            .map_err(err("forgetting a table's progress"))?;
        }
    }
    tx.commit().map_err(err("committing the tables"))
}

fn create_tables(
    tx: &mut postgres::Transaction<'_>,
    tables: &[(&str, &[Column])],
) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (\
         sink_table TEXT NOT NULL, instance INTEGER NOT NULL, \
         committed_seq BIGINT NOT NULL, incarnation BIGINT NOT NULL, \
         PRIMARY KEY (sink_table, instance))"
    ))?;
    for (table, columns) in tables {
        let defs: Vec<String> = columns
            .iter()
            .map(|c| format!("{} {} NOT NULL", quote(&c.name), c.kind.sql()))
            .collect();
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (spate_instance INTEGER NOT NULL, \
             spate_seq BIGINT NOT NULL, {}, PRIMARY KEY (spate_instance, spate_seq))",
            quote(table),
            defs.join(", ")
        ))?;
    }
    Ok(())
}

fn open(pg: &postgres::Config, target: &str) -> Result<Client, PgError> {
    pg.connect(NoTls).map_err(|e| PgError::Connect {
        target: target.to_string(),
        message: describe(&e),
        transient: transient(&e),
    })
}

fn parse_url(url: &str) -> Result<postgres::Config, PgError> {
    let mut pg = postgres::Config::from_str(url)
        .map_err(|e| PgError::BadUrl(format!("{}: {e}", redact(url))))?;
    if pg.get_hosts().is_empty() {
        return Err(PgError::BadUrl(format!("{} names no host", redact(url))));
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(10));
    }
    pg.application_name("spate-sink");
    Ok(pg)
}

/// user@host:port/database, for messages: never the password.
fn target(pg: &postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "?".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("?");
    let db = pg.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

/// The URL with its password replaced, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// Table and column names are plain lower-case identifiers, so that they
/// mean the same quoted or not.
fn check_identifier(name: &str) -> Result<(), PgError> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(PgError::Invalid(format!(
            "{name:?} is not a table or column name: use lower-case letters, digits and _ (at most 63)"
        )))
    }
}

fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://me:secret@host:5432/db"),
            "postgres://me:***@host:5432/db"
        );
        assert_eq!(redact("postgres://me@host/db"), "postgres://me@host/db");
        assert_eq!(redact("host=x"), "host=x");
    }

    #[test]
    fn names_must_be_plain_identifiers() {
        assert!(check_identifier("lrb_tolls").is_ok());
        assert!(check_identifier("Tolls").is_err());
        assert!(check_identifier("a;drop").is_err());
        assert!(check_identifier("").is_err());
        assert!(check_identifier("1x").is_err());
    }

    #[test]
    fn bad_urls_are_refused_before_connecting() {
        let err = connect("postgres://me@host:notaport/db").err().unwrap();
        assert!(matches!(err, PgError::BadUrl(_)), "{err}");
        assert!(err.to_string().contains("expected postgres://"), "{err}");
    }
}
