//! Helpers for tests that run the `spate` binary.

#![allow(dead_code)]

pub mod hosts;
pub mod lrb;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The spate binary under test.
pub fn spate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spate"));
    command.stdin(Stdio::null());
    command
}

/// Runs `command` to completion, killing it (and failing) after `limit`.
pub fn run_with_timeout(mut command: Command, limit: Duration) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().expect("start spate");
    wait_with_timeout(child, limit)
}

/// Waits for `child`, killing it (and failing) after `limit`.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            if let Some(mut out) = child.stdout.take() {
                out.read_to_end(&mut stdout).ok();
            }
            if let Some(mut err) = child.stderr.take() {
                err.read_to_end(&mut stderr).ok();
            }
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spate did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh scratch directory under the target dir, removed first if present.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A loopback port nobody listens on (bound and released), for tests that
/// start a coordinator at a known address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("read its address")
        .port()
}

/// Stderr as text, for assertions on error messages.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A small deterministic generator, so a failing randomized run can be
/// replayed by seed.
pub fn next_random(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}
