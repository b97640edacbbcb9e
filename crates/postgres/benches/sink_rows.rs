//! Rows per second through the PostgreSQL sink into a local server started
//! for the bench (with PostgreSQL's default durability: fsync on), for Linear
//! Road toll-notification-shaped rows (five BIGINT columns) at two batch
//! sizes. Each figure is one run of ROWS rows ending with a checkpoint, so
//! every row counted is committed.
//!
//! Run with `cargo bench -p spate-postgres` (about a minute); the
//! figures and the machine's load go in `docs/BENCH.md`.

use std::time::Instant;

use spate_engine::ids::Incarnation;
use spate_engine::state::KeyRange;
use spate_engine::InstanceContext;
use spate_postgres::testing::{TestServer, TestServerError};
use spate_postgres::{Column, ColumnType, PgSinkConfig, PgWriter, Value};

const ROWS: i64 = 1_000_000;

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let server = match TestServer::start(true) {
        Ok(server) => server,
        Err(TestServerError::Unavailable(why)) => {
            eprintln!("skipped: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let columns: Vec<Column> = ["vid", "time", "emit", "lav", "toll"]
        .iter()
        .map(|name| Column::new(name, ColumnType::BigInt))
        .collect();
    println!(
        "{} cores, load average {} before",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );
    for (i, batch_rows) in [1_000usize, 10_000].into_iter().enumerate() {
        let mut config = PgSinkConfig::new(&server.url(), &format!("bench_{batch_rows}"));
        config.batch_rows = batch_rows;
        config.batch_delay = std::time::Duration::from_secs(3600);
        let ctx = InstanceContext {
            operator: "bench".into(),
            instance: i as u32,
            index: 0,
            parallelism: 1,
            key_range: KeyRange::FULL,
            restoring: false,
            incarnation: Incarnation::default(),
        };
        let mut writer = PgWriter::new(config, columns.clone(), &ctx).expect("sink");
        // Claim the progress row and create the table outside the timing.
        writer.checkpoint().expect("first checkpoint");
        let started = Instant::now();
        for n in 0..ROWS {
            let row = vec![
                Value::BigInt(n % 100_000),
                Value::BigInt(n / 300),
                Value::BigInt(n / 300 + 1),
                Value::BigInt(n % 80),
                Value::BigInt((n % 7) * 10),
            ];
            writer.push(row).expect("push");
        }
        let committed = writer.checkpoint().expect("checkpoint");
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(committed, ROWS as u64);
        println!(
            "batch {batch_rows:>6}: {ROWS} rows in {secs:.2} s = {:.0} rows/s ({} commits); load average {}",
            ROWS as f64 / secs,
            ROWS as usize / batch_rows,
            load()
        );
    }
}
