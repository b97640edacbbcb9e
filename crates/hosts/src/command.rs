//! Running the tools that make namespaces and faults (`ip`, `nft`, `tc`),
//! and running code inside a namespace, with errors that say what failed.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::HostId;

/// What can go wrong making or using simulated hosts.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// This machine or user cannot make network namespaces.
    #[error("simulated hosts need root, Linux network namespaces, `ip`, `nft` and `tc` ({0}); run as root (and `apt-get install nftables iproute2`)")]
    Unsupported(String),
    /// A tool failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output.
        detail: String,
    },
    /// A file or directory could not be made.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// A host that does not exist was named.
    #[error("there is no host {0}; hosts are h1 to h{1}")]
    NoSuchHost(HostId, usize),
    /// An option out of range.
    #[error("bad simulated-hosts option: {0}")]
    BadOption(String),
    /// Every slot is in use.
    #[error("all 250 simulated-hosts slots are in use; remove stale ones with `ip netns del`")]
    NoSlot,
}

impl HostsError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HostsError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Runs `program args`; returns its output, or its error output as an error.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, HostsError> {
    run_with_input(program, args, None)
}

/// Runs `program args` inside namespace `ns`.
pub(crate) fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String, HostsError> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs `program args` with `input` on its standard input.
pub(crate) fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, HostsError> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HostsError::Command {
            command: line.clone(),
            detail: e.to_string(),
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| HostsError::io(format!("writing to `{line}`"), e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| HostsError::io(format!("waiting for `{line}`"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(HostsError::Command {
            command: line,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs `f` on a new thread that first joins network namespace `ns`: a
/// socket made there stays in that namespace whichever thread uses it.
pub(crate) fn in_namespace<T: Send>(
    ns: &str,
    f: impl FnOnce() -> T + Send,
) -> Result<T, HostsError> {
    let path = format!("/var/run/netns/{ns}");
    let file =
        std::fs::File::open(&path).map_err(|e| HostsError::io(format!("opening {path}"), e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns only changes this (new, scoped) thread's
                // network namespace; the fd is open for the call.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(HostsError::io(
                        format!("entering namespace {path}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
