//! The sink against a real PostgreSQL server started by the test: restores
//! after a crash, a zombie incarnation, the database restarting or going
//! away for a while, and wrong URLs or credentials.

use std::time::Duration;

use spate_engine::ids::Incarnation;
use spate_engine::state::KeyRange;
use spate_engine::{InstanceContext, Sink};
use spate_postgres::testing::{TestServer, PASSWORD};
use spate_postgres::{
    connect, prepare_tables, Column, ColumnType, PgError, PgSinkConfig, PgWriter, PostgresSink,
    Value,
};

fn context(instance: u32, incarnation: u32, restoring: bool) -> InstanceContext {
    InstanceContext {
        operator: "out".into(),
        instance,
        index: 0,
        parallelism: 1,
        key_range: KeyRange::FULL,
        restoring,
        incarnation: Incarnation(incarnation),
    }
}

fn columns() -> Vec<Column> {
    vec![
        Column::new("n", ColumnType::BigInt),
        Column::new("label", ColumnType::Text),
    ]
}

fn row(n: i64) -> Vec<Value> {
    vec![Value::BigInt(n), Value::Text(format!("row {n}"))]
}

fn config(url: &str, table: &str) -> PgSinkConfig {
    let mut config = PgSinkConfig::new(url, table);
    config.batch_rows = 7;
    config
}

/// (seq, n, label) of `instance`'s rows, in sequence order.
fn rows(url: &str, table: &str, instance: i32) -> Vec<(i64, i64, String)> {
    let mut client = connect(url).unwrap();
    client
        .query(
            &format!(
                "SELECT spate_seq, n, label FROM {table} WHERE spate_instance = $1 ORDER BY spate_seq"
            ),
            &[&instance],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn expected(count: i64) -> Vec<(i64, i64, String)> {
    (1..=count).map(|n| (n, n, format!("row {n}"))).collect()
}

#[test]
fn restores_fence_zombies_and_keep_every_row_once() {
    let Some(server) = TestServer::start_or_skip("restores_fence_zombies") else {
        return;
    };
    let url = server.url();
    let mut first = PgWriter::new(config(&url, "out"), columns(), &context(3, 0, false)).unwrap();
    for n in 1..=100 {
        first.push(row(n)).unwrap();
    }
    let checkpoint = first.checkpoint().unwrap();
    assert_eq!(checkpoint, 100);
    // Past the checkpoint: some rows commit by batch size, some wait.
    for n in 101..=150 {
        first.push(row(n)).unwrap();
    }
    assert!(first.committed() > 100 && first.pending_rows() > 0);
    assert!(rows(&url, "out", 3).len() > 100);

    // The instance's worker is declared failed; a new incarnation restores
    // the checkpoint while the old one (a zombie) still runs.
    let mut second = PgWriter::new(config(&url, "out"), columns(), &context(3, 1, true)).unwrap();
    second.restore(checkpoint).unwrap();
    assert_eq!(
        rows(&url, "out", 3),
        expected(100),
        "rows past the checkpoint stay"
    );

    let fenced = first.commit().unwrap_err();
    assert!(
        matches!(
            fenced,
            PgError::Fenced {
                current: 1,
                mine: 0,
                ..
            }
        ),
        "{fenced}"
    );
    assert_eq!(rows(&url, "out", 3), expected(100), "the zombie wrote");

    // The replay writes the same rows again, and more.
    for n in 101..=200 {
        second.push(row(n)).unwrap();
    }
    assert_eq!(second.checkpoint().unwrap(), 200);
    assert_eq!(rows(&url, "out", 3), expected(200));

    // An older incarnation cannot take the row back either.
    let mut stale = PgWriter::new(config(&url, "out"), columns(), &context(3, 0, true)).unwrap();
    let err = stale.restore(checkpoint).unwrap_err();
    assert!(matches!(err, PgError::Fenced { .. }), "{err}");

    // A new job (incarnation 0, not restoring) cannot tell itself from a
    // zombie of the old one: it must empty the table first.
    let mut rerun = PgWriter::new(config(&url, "out"), columns(), &context(3, 0, false)).unwrap();
    let err = rerun.checkpoint().unwrap_err();
    assert!(err.to_string().contains("must empty it first"), "{err}");
    let mut client = connect(&url).unwrap();
    prepare_tables(&mut client, &[("out", &columns())], true).unwrap();
    for n in 1..=5 {
        rerun.push(row(n)).unwrap();
    }
    rerun.checkpoint().unwrap();
    assert_eq!(rows(&url, "out", 3), expected(5));
}

#[test]
fn a_sink_checkpoints_and_restores_through_the_engine_trait() {
    let Some(server) = TestServer::start_or_skip("sink_trait") else {
        return;
    };
    let url = server.url();
    let make = |ctx: &InstanceContext| {
        PostgresSink::new(config(&url, "pairs"), columns(), ctx, |n: &i64| row(*n)).unwrap()
    };
    let mut sink = make(&context(1, 0, false));
    for n in 1..=30 {
        sink.write(n).unwrap();
    }
    let state = sink.checkpoint().unwrap();
    for n in 31..=40 {
        sink.write(n).unwrap();
    }
    // A restart with no checkpoint (incarnation 1, not restoring) keeps
    // nothing; a restore keeps exactly the checkpoint's rows.
    let mut restarted = make(&context(1, 1, false));
    restarted.finish().unwrap();
    assert!(rows(&url, "pairs", 1).is_empty());
    let mut restored = make(&context(1, 2, true));
    let err = restored.restore(b"bad").unwrap_err();
    assert!(err.0.contains("not a sequence number"), "{err}");
    // The table lost rows the checkpoint counts on: refused, not hidden.
    let err = restored.restore(&state).unwrap_err();
    assert!(err.0.contains("changed outside the job"), "{err}");

    let mut sink = make(&context(2, 0, false));
    for n in 1..=30 {
        sink.write(n).unwrap();
    }
    let state = sink.checkpoint().unwrap();
    for n in 31..=40 {
        sink.write(n).unwrap();
    }
    let mut restored = make(&context(2, 1, true));
    restored.restore(&state).unwrap();
    for n in 31..=45 {
        restored.write(n).unwrap();
    }
    restored.finish().unwrap();
    assert_eq!(rows(&url, "pairs", 2), expected(45));
}

#[test]
fn the_database_restarting_or_away_loses_and_duplicates_nothing() {
    let Some(server) = TestServer::start_or_skip("database_restarts") else {
        return;
    };
    let url = server.url();
    let mut writer = PgWriter::new(config(&url, "kept"), columns(), &context(1, 0, false)).unwrap();
    for n in 1..=50 {
        writer.push(row(n)).unwrap();
    }
    writer.checkpoint().unwrap();

    // A restart cuts the connection: the next commit reconnects.
    server.restart().unwrap();
    for n in 51..=100 {
        writer.push(row(n)).unwrap();
    }
    writer.checkpoint().unwrap();
    assert!(writer.retries() >= 1, "the restart went unnoticed");
    let after_restart = writer.retries();

    // Down for a while: the commit backs off until it is up again. The
    // rows wait (50 rows, commits every 7: one waits) before the server
    // stops, so the first attempt comes well before it resumes.
    for n in 101..=150 {
        writer.push(row(n)).unwrap();
    }
    assert_eq!(writer.pending_rows(), 1);
    server.stop().unwrap();
    let resumed = std::thread::scope(|scope| {
        let resumer = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            server.resume()
        });
        writer.checkpoint().unwrap();
        resumer.join().unwrap()
    });
    resumed.unwrap();
    assert!(writer.retries() > after_restart, "no retry while down");
    assert_eq!(rows(&url, "kept", 1), expected(150));
}

#[test]
fn wrong_urls_and_credentials_fail_clearly() {
    let Some(server) = TestServer::start_or_skip("wrong_credentials") else {
        return;
    };
    let port = server.port();
    let wrong_password = format!("postgres://spate:nope@127.0.0.1:{port}/postgres");
    let err = connect(&wrong_password).err().unwrap();
    let text = err.to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("nope"), "the password shows: {text}");

    let wrong_database = format!("postgres://spate:{PASSWORD}@127.0.0.1:{port}/nosuchdb");
    let text = connect(&wrong_database).err().unwrap().to_string();
    assert!(text.contains("\"nosuchdb\" does not exist"), "{text}");

    // Nothing listens there: transient for a running sink, which retries
    // and then gives up with the last error.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nobody = format!("postgres://spate:{PASSWORD}@127.0.0.1:{closed}/postgres");
    let err = connect(&nobody).err().unwrap();
    assert!(err.is_transient(), "{err}");
    let mut config = config(&nobody, "never");
    config.retry_for = Duration::from_millis(300);
    let mut writer = PgWriter::new(config, columns(), &context(1, 0, false)).unwrap();
    let text = writer.checkpoint().unwrap_err().to_string();
    assert!(text.contains("stayed unreachable"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{closed}")), "{text}");

    let err = connect("mysql://x@y/z").err().unwrap();
    assert!(matches!(err, PgError::BadUrl(_)), "{err}");
    let err = PgWriter::new(
        PgSinkConfig::new(&server.url(), "Bad Name"),
        columns(),
        &context(1, 0, false),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("not a table or column name"),
        "{err}"
    );
}
