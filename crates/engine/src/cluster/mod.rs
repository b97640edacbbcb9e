//! A local embedded cluster: this process is the coordinator and starts N
//! worker processes (the same binary, `worker` subcommand) as children.
//! Children never outlive the run: they are killed when the cluster is
//! dropped, and on Linux also when this process dies (parent-death signal).

mod cgroup;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::QueryRegistry;
use crate::coordinator::{Coordinator, JobConfig, JobSummary, Provisioner};
use crate::error::EngineError;
use crate::plan::WorkerId;

pub use cgroup::CpuLimit;

/// Worker child processes of this process.
pub struct LocalCluster {
    children: Vec<Child>,
    program: PathBuf,
    coordinator: String,
    /// CPU quota per worker, in cores.
    worker_cpu: Option<f64>,
    /// The cluster's shared secret, handed to workers in `SPATE_TOKEN`.
    token: String,
    limits: Vec<CpuLimit>,
}

impl LocalCluster {
    /// Starts `n` workers by running `program worker --coordinator ADDR`,
    /// each limited to `worker_cpu` cores when given (and possible).
    pub fn spawn(
        n: usize,
        program: &Path,
        coordinator: &str,
        worker_cpu: Option<f64>,
        token: &str,
    ) -> Result<Self, EngineError> {
        let mut cluster = LocalCluster {
            children: Vec::with_capacity(n),
            program: program.to_path_buf(),
            coordinator: coordinator.to_string(),
            worker_cpu,
            token: token.to_string(),
            limits: Vec::new(),
        };
        for _ in 0..n {
            cluster.provision()?;
        }
        Ok(cluster)
    }

    /// Waits up to `grace` for the workers to exit, then kills the rest.
    pub fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for child in &mut self.children {
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        // Drop kills and reaps whatever is left.
    }
}

impl Provisioner for LocalCluster {
    fn check(&mut self) -> Result<(), EngineError> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(EngineError::WorkerFailed {
                    worker: WorkerId(i as u32),
                    reason: format!("its process exited ({status})"),
                });
            }
        }
        Ok(())
    }

    fn provision(&mut self) -> Result<(), EngineError> {
        let mut command = Command::new(&self.program);
        command
            .args(["worker", "--coordinator", &self.coordinator])
            .env("SPATE_TOKEN", &self.token)
            .stdin(Stdio::null());
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| {
            EngineError::io(format!("starting a worker ({})", self.program.display()), e)
        })?;
        if let Some(cores) = self.worker_cpu {
            match CpuLimit::apply(child.id(), cores) {
                Ok(limit) => self.limits.push(limit),
                Err(reason) => {
                    if self.limits.is_empty() {
                        tracing::warn!("--worker-cpu {cores}: cannot limit workers' CPU ({reason}); they run unlimited");
                    }
                    self.worker_cpu = None;
                }
            }
        }
        self.children.push(child);
        Ok(())
    }

    fn stop(&mut self, worker: WorkerId, pid: u32, _data_addr: &str) -> Result<(), EngineError> {
        let child = self
            .children
            .iter_mut()
            .find(|c| c.id() == pid)
            .ok_or_else(|| EngineError::CannotStop {
                worker,
                reason: format!("pid {pid} is not a worker this cluster started"),
            })?;
        // Reaped when the cluster ends; a child that already exited is fine.
        let _ = child.kill();
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// Runs `config` on a fresh local cluster of `config.workers` (plus
/// `config.pool` idle) processes of `program`, with the coordinator in this
/// process on loopback.
pub fn run_local(
    registry: &QueryRegistry,
    config: &JobConfig,
    program: &Path,
) -> Result<JobSummary, EngineError> {
    let coordinator = Coordinator::bind("127.0.0.1:0")?;
    // A fresh secret per run, so no other process on the machine can join.
    let mut config = config.clone();
    if config.token.is_empty() {
        config.token = random_token();
    }
    let mut cluster = LocalCluster::spawn(
        config.workers + config.pool,
        program,
        &coordinator.addr().to_string(),
        config.worker_cpu,
        &config.token,
    )?;
    let result = coordinator.run(registry, &config, &mut cluster);
    cluster.shutdown(Duration::from_secs(5));
    result
}

/// An unguessable-enough secret from the clock, the process id and an
/// address (no randomness crate needed for a loopback cluster's token).
fn random_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ (&local as *const u8 as u64);
    format!(
        "{:016x}{:016x}",
        crate::hash::mix64(seed),
        crate::hash::mix64(seed.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15)
    )
}

/// The path of the running executable, to start workers from.
pub fn current_program() -> Result<PathBuf, EngineError> {
    std::env::current_exe().map_err(|e| EngineError::io("finding the spate executable", e))
}

/// Workers started by hand (e.g. `spate worker` on other machines): the
/// coordinator can only ask a person for more.
pub struct ExternalWorkers;

impl Provisioner for ExternalWorkers {
    fn check(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

    fn provision(&mut self) -> Result<(), EngineError> {
        tracing::warn!("a worker failed: start another `spate worker` to refill the pool");
        Ok(())
    }

    fn stop(&mut self, worker: WorkerId, pid: u32, data_addr: &str) -> Result<(), EngineError> {
        Err(EngineError::CannotStop {
            worker,
            reason: format!(
                "it was started by hand (pid {pid}, data address {data_addr}); it was ordered to exit, end it by hand if it still runs"
            ),
        })
    }
}

/// Starts workers with a shell command template, e.g.
/// `ssh {host} spate worker --coordinator {coordinator}` or a cloud CLI: the
/// coordinator runs it once per worker it needs (at start and to refill the
/// pool). `{coordinator}` is replaced by the coordinator's address and
/// `{host}` by the next of the given hosts, in turn; the cluster token is
/// passed in `SPATE_TOKEN`. Ending a worker runs the
/// optional stop template (`{pid}` and `{addr}` are the worker's process id
/// and data address, as it reported them), after the coordinator ordered
/// the worker to exit.
pub struct CommandProvisioner {
    template: String,
    stop_template: Option<String>,
    coordinator: String,
    token: String,
    children: Vec<Child>,
    /// What `{host}` becomes, in turn.
    hosts: Vec<String>,
    /// Workers started so far (which host is next).
    started: usize,
}

impl CommandProvisioner {
    /// A provisioner running `template` for a coordinator at `coordinator`.
    pub fn new(template: &str, coordinator: &str, token: &str) -> Self {
        CommandProvisioner {
            template: template.to_string(),
            stop_template: None,
            coordinator: coordinator.to_string(),
            token: token.to_string(),
            children: Vec::new(),
            hosts: Vec::new(),
            started: 0,
        }
    }

    /// Starts workers on `hosts` in turn: `{host}` in the template becomes
    /// the first for the first worker, the second for the second, and so on.
    pub fn with_hosts(mut self, hosts: Vec<String>) -> Self {
        self.hosts = hosts;
        self
    }

    /// The command line for the next worker.
    fn next_command_line(&self) -> String {
        let line = self.command_line();
        match self.hosts.get(self.started % self.hosts.len().max(1)) {
            Some(host) => line.replace("{host}", host),
            None => line,
        }
    }

    /// Ends workers with `template` (e.g. `ssh host kill -9 {pid}`).
    pub fn with_stop_command(mut self, template: &str) -> Self {
        self.stop_template = Some(template.to_string());
        self
    }

    /// The command line for one worker.
    pub fn command_line(&self) -> String {
        self.template.replace("{coordinator}", &self.coordinator)
    }
}

impl Provisioner for CommandProvisioner {
    fn check(&mut self) -> Result<(), EngineError> {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    return Err(EngineError::WorkerFailed {
                        worker: WorkerId(u32::MAX),
                        reason: format!("`{}` exited with {status}", self.command_line()),
                    });
                }
            }
        }
        Ok(())
    }

    fn provision(&mut self) -> Result<(), EngineError> {
        let line = self.next_command_line();
        self.started += 1;
        let child = Command::new("sh")
            .args(["-c", &line])
            .env("SPATE_TOKEN", &self.token)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| EngineError::io(format!("running the provision command `{line}`"), e))?;
        self.children.push(child);
        Ok(())
    }

    fn stop(&mut self, worker: WorkerId, pid: u32, data_addr: &str) -> Result<(), EngineError> {
        let Some(template) = &self.stop_template else {
            return Err(EngineError::CannotStop {
                worker,
                reason: "no stop command was given (--stop-command); it was ordered to exit".into(),
            });
        };
        let line = template
            .replace("{pid}", &pid.to_string())
            .replace("{addr}", data_addr);
        let status = Command::new("sh")
            .args(["-c", &line])
            .env("SPATE_TOKEN", &self.token)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| EngineError::io(format!("running the stop command `{line}`"), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(EngineError::CannotStop {
                worker,
                reason: format!("`{line}` exited with {status}"),
            })
        }
    }
}

impl Drop for CommandProvisioner {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
