//! A throwaway PostgreSQL server for tests and benches: `initdb` in a
//! temporary directory, a free loopback port, and a stop (then removal) when
//! dropped, also when a test panics.
//!
//! PostgreSQL refuses to run as root; as root the server runs as the
//! `postgres` user (Debian's package creates it) or else `nobody`, through
//! `runuser`. The binaries are looked up on `PATH`, then in
//! `/usr/lib/postgresql/*/bin`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The server's superuser.
pub const USER: &str = "spate";
/// Its password (loopback TCP connections use password authentication, so
/// that tests can try wrong credentials).
pub const PASSWORD: &str = "spate-test";

/// Why no server could be started.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    /// This machine cannot run one (no binaries, no unprivileged user): a
    /// test should skip, saying why.
    #[error("no PostgreSQL server can run here: {0}")]
    Unavailable(String),
    /// The binaries are there but the server failed: a test should fail.
    #[error("the test PostgreSQL server failed: {0}")]
    Failed(String),
}

/// A running server, stopped and deleted when dropped.
pub struct TestServer {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    durable: bool,
}

impl TestServer {
    /// Starts a server. `durable: false` turns fsync off (tests); `true`
    /// keeps PostgreSQL's defaults (benches).
    pub fn start(durable: bool) -> Result<TestServer, TestServerError> {
        let bin = find_binaries().ok_or_else(|| {
            TestServerError::Unavailable(
                "initdb and pg_ctl are neither on PATH nor in /usr/lib/postgresql/*/bin \
                 (install Debian's postgresql package)"
                    .into(),
            )
        })?;
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        let run_as = if root_user {
            Some(unprivileged_user()?)
        } else {
            None
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "spate-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| failed("creating its directory", e))?;
        let mut server = TestServer {
            root,
            bin,
            port: 0,
            run_as,
            durable,
        };
        server.init()?;
        // A free port can be taken between choosing and binding: try again.
        let mut last = String::new();
        for _ in 0..3 {
            server.port = free_port()?;
            match server.pg_ctl(&["start"]) {
                Ok(()) => return Ok(server),
                Err(e) => last = e.to_string(),
            }
        }
        Err(TestServerError::Failed(last))
    }

    /// Starts a server, or prints why this test skips and returns `None`.
    pub fn start_or_skip(test: &str) -> Option<TestServer> {
        match TestServer::start(false) {
            Ok(server) => Some(server),
            Err(TestServerError::Unavailable(why)) => {
                eprintln!("SKIPPED {test}: {why}");
                None
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    /// `postgres://spate:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Restarts the server (fast shutdown: sessions are cut).
    pub fn restart(&self) -> Result<(), TestServerError> {
        self.pg_ctl(&["-m", "fast", "restart"])
    }

    /// Stops the server (fast shutdown), keeping its data for [`Self::resume`].
    pub fn stop(&self) -> Result<(), TestServerError> {
        self.pg_ctl(&["-m", "fast", "stop"])
    }

    /// Starts a stopped server again on the same port.
    pub fn resume(&self) -> Result<(), TestServerError> {
        self.pg_ctl(&["start"])
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn init(&self) -> Result<(), TestServerError> {
        let pwfile = self.root.join("password");
        std::fs::write(&pwfile, PASSWORD).map_err(|e| failed("writing the password file", e))?;
        if let Some(user) = &self.run_as {
            let (uid, gid) = ids_of(user)?;
            for path in [&self.root, &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| failed("handing its directory to the server's user", e))?;
            }
        }
        let data = self.data();
        self.command(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                USER,
                &format!("--pwfile={}", path_str(&pwfile)?),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
    }

    fn pg_ctl(&self, action: &[&str]) -> Result<(), TestServerError> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            path_str(&self.root)?
        );
        if !self.durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let data = self.data();
        let log = self.root.join("log");
        let mut args = vec![
            "-D",
            path_str(&data)?,
            "-l",
            path_str(&log)?,
            "-w",
            "-t",
            "120",
            "-o",
            &options,
        ];
        args.extend_from_slice(action);
        self.command("pg_ctl", &args).map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            TestServerError::Failed(format!("{e}\nserver log:\n{}", tail.join("\n")))
        })
    }

    fn command(&self, program: &str, args: &[&str]) -> Result<(), TestServerError> {
        let exe = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let output = command
            .args(args)
            .current_dir(&self.root)
            .output()
            .map_err(|e| failed(&format!("running {}", exe.display()), e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(TestServerError::Failed(format!(
                "{program} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn failed(what: &str, e: std::io::Error) -> TestServerError {
    TestServerError::Failed(format!("{what}: {e}"))
}

fn path_str(path: &Path) -> Result<&str, TestServerError> {
    path.to_str()
        .ok_or_else(|| TestServerError::Failed(format!("{} is not UTF-8", path.display())))
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| has_both(d)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A user the server may run as when we are root, with `runuser` to switch.
fn unprivileged_user() -> Result<String, TestServerError> {
    let runuser = Command::new("runuser").arg("--help").output();
    if runuser.is_err() {
        return Err(TestServerError::Unavailable(
            "running as root and runuser is missing, so the server cannot run as another user"
                .into(),
        ));
    }
    ["postgres", "nobody"]
        .into_iter()
        .find(|user| ids_of(user).is_ok())
        .map(str::to_string)
        .ok_or_else(|| {
            TestServerError::Unavailable(
                "running as root and neither a postgres nor a nobody user exists".into(),
            )
        })
}

/// The uid and gid of `user`.
fn ids_of(user: &str) -> Result<(u32, u32), TestServerError> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, user]).output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(TestServerError::Unavailable(format!("no user {user}"))),
    }
}

fn free_port() -> Result<u16, TestServerError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| failed("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| failed("finding a free port", e))
}
