//! Simulated hosts on one Linux machine, to test and demonstrate Spate
//! across machines without machines: each host is a network namespace with
//! its own address on a private bridge, its own directory standing for its
//! disk and a CPU quota; a shared directory stands for shared storage. The
//! coordinator gets a namespace and address of its own (the bridge's).
//!
//! Faults are injected with nftables rules and tc qdiscs inside the hosts'
//! namespaces: full partitions, cuts between two hosts or between a host
//! and the coordinator, random loss, a bandwidth cap, and crashes (every
//! process of the host killed, its disk wiped).
//!
//! Everything lives in namespaces the harness created, on 10.213.0.0/16, and
//! is removed when [`SimulatedHosts`] is dropped (also on a panic); names
//! carry a per-run slot so runs in parallel never clash, and a slot whose
//! owner died without cleaning up is swept when it is next reserved.

mod command;
mod faults;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use command::HostsError;
use command::{run, run_in};
pub use faults::Fault;

/// Where the harness records which process owns which slot.
const OWNERS_DIR: &str = "/run/spate-hosts";
/// The cgroup v1 CPU controller's mount, else cgroup v2's root.
const CGROUP_V1: &str = "/sys/fs/cgroup/cpu";
const CGROUP_V2: &str = "/sys/fs/cgroup";
const CPU_PERIOD_US: u64 = 100_000;

/// One simulated host, numbered from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "h{}", self.0)
    }
}

impl std::str::FromStr for HostId {
    type Err = String;

    /// Parses `h3` or `3`.
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim_start_matches('h')
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .map(HostId)
            .ok_or_else(|| format!("`{s}` is not a host (h1, h2, ...)"))
    }
}

/// What to make.
#[derive(Clone, Debug)]
pub struct HostsOptions {
    /// How many hosts.
    pub hosts: usize,
    /// Where the hosts' disks and the shared directory go.
    pub dir: PathBuf,
    /// Each host's CPU quota, in cores (`None`: unlimited).
    pub cpu_per_host: Option<f64>,
}

/// A set of simulated hosts and the coordinator's namespace, removed when
/// dropped.
pub struct SimulatedHosts {
    slot: u8,
    hosts: usize,
    dir: PathBuf,
    cgroups: Vec<PathBuf>,
    faults: Mutex<Vec<Fault>>,
}

impl SimulatedHosts {
    /// Makes the hosts. Fails with [`HostsError::Unsupported`] where
    /// namespaces cannot be made (not root, no `ip` or `nft`).
    pub fn create(options: &HostsOptions) -> Result<Self, HostsError> {
        check_support()?;
        if options.hosts == 0 || options.hosts > 200 {
            return Err(HostsError::BadOption(format!(
                "between 1 and 200 hosts, not {}",
                options.hosts
            )));
        }
        // Processes on a host run in its disk: a relative path handed to
        // them (the shared directory's) would name a directory of each.
        let dir = std::path::absolute(&options.dir)
            .map_err(|e| HostsError::io(format!("resolving {}", options.dir.display()), e))?;
        let slot = reserve_slot()?;
        let mut made = SimulatedHosts {
            slot,
            hosts: options.hosts,
            dir,
            cgroups: Vec::new(),
            faults: Mutex::new(Vec::new()),
        };
        // From here on, dropping `made` undoes whatever was made.
        made.build(options.cpu_per_host)?;
        Ok(made)
    }

    fn build(&mut self, cpu: Option<f64>) -> Result<(), HostsError> {
        let switch = self.switch_namespace();
        run_in(&switch, "ip", &["link", "set", "lo", "up"])?;
        run_in(&switch, "ip", &["link", "add", "br0", "type", "bridge"])?;
        let coordinator = format!("{}/24", self.coordinator_ip());
        run_in(&switch, "ip", &["addr", "add", &coordinator, "dev", "br0"])?;
        run_in(&switch, "ip", &["link", "set", "br0", "up"])?;
        mkdir(&self.shared_dir())?;
        for host in self.all() {
            self.build_host(host, cpu)?;
        }
        Ok(())
    }

    fn build_host(&mut self, host: HostId, cpu: Option<f64>) -> Result<(), HostsError> {
        let ns = self.namespace(host);
        let switch = self.switch_namespace();
        run("ip", &["netns", "add", &ns])?;
        run_in(&ns, "ip", &["link", "set", "lo", "up"])?;
        let port = format!("{host}");
        run_in(
            &ns,
            "ip",
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &switch,
            ],
        )?;
        let addr = format!("{}/24", self.ip(host));
        run_in(&ns, "ip", &["addr", "add", &addr, "dev", "eth0"])?;
        run_in(&ns, "ip", &["link", "set", "eth0", "up"])?;
        run_in(&switch, "ip", &["link", "set", &port, "master", "br0"])?;
        run_in(&switch, "ip", &["link", "set", &port, "up"])?;
        faults::install_table(&ns)?;
        mkdir(&self.private_dir(host))?;
        // A quota the kernel refuses (no CPU controller delegated here) is a
        // warning, as for local clusters: the hosts still work, unlimited.
        let cgroup = match cpu.map(|cores| self.make_cgroup(host, cores)) {
            Some(Ok(dir)) => Some(dir),
            Some(Err(e @ HostsError::BadOption(_))) => return Err(e),
            Some(Err(e)) => {
                tracing::warn!(%host, "no CPU quota for the host: {e}");
                None
            }
            None => None,
        };
        self.write_launcher(host, cgroup.as_deref())
    }

    /// A CPU cgroup for `host` that its launcher puts every process in.
    fn make_cgroup(&mut self, host: HostId, cores: f64) -> Result<PathBuf, HostsError> {
        if !(cores.is_finite() && cores > 0.0) {
            return Err(HostsError::BadOption(format!(
                "a host's CPU quota must be a positive number of cores, not {cores}"
            )));
        }
        let quota = ((cores * CPU_PERIOD_US as f64) as u64).max(1_000);
        let name = format!("spate-hosts-{}-{host}", self.slot);
        let (dir, files) = if Path::new(CGROUP_V1).join("cpu.cfs_quota_us").exists() {
            (
                Path::new(CGROUP_V1).join(name),
                vec![
                    ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            )
        } else {
            (
                Path::new(CGROUP_V2).join(name),
                vec![("cpu.max", format!("{quota} {CPU_PERIOD_US}"))],
            )
        };
        mkdir(&dir)?;
        self.cgroups.push(dir.clone());
        for (file, value) in files {
            let path = dir.join(file);
            std::fs::write(&path, value)
                .map_err(|e| HostsError::io(format!("writing {}", path.display()), e))?;
        }
        Ok(dir)
    }

    /// Writes `h<N>/enter`: runs its arguments on the host (its namespace,
    /// CPU quota and disk), as `ssh host` would on a real machine.
    fn write_launcher(&self, host: HostId, cgroup: Option<&Path>) -> Result<(), HostsError> {
        let join = cgroup.map_or(String::new(), |dir| {
            format!("echo $$ > '{}/cgroup.procs' || exit 1\n", dir.display())
        });
        let script = format!(
            "#!/bin/sh\n# Runs a command on simulated host {host}.\n{join}cd '{}' || exit 1\nexec ip netns exec {} \"$@\"\n",
            self.private_dir(host).display(),
            self.namespace(host)
        );
        let path = self.launcher(host);
        std::fs::write(&path, script)
            .map_err(|e| HostsError::io(format!("writing {}", path.display()), e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| HostsError::io(format!("making {} executable", path.display()), e))
    }

    /// Every host, in order.
    pub fn all(&self) -> impl Iterator<Item = HostId> {
        (1..=self.hosts).map(HostId)
    }

    /// The address of the coordinator's namespace (the bridge's).
    pub fn coordinator_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.slot, 1)
    }

    /// The hosts' network (`10.213.SLOT.0/24`).
    pub fn network(&self) -> String {
        format!("10.213.{}.0/24", self.slot)
    }

    /// `host`'s address.
    pub fn ip(&self, host: HostId) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.slot, 10 + host.0 as u8)
    }

    /// The host whose address is `ip`, if any.
    pub fn host_of(&self, ip: Ipv4Addr) -> Option<HostId> {
        self.all().find(|h| self.ip(*h) == ip)
    }

    /// `host`'s network namespace.
    pub fn namespace(&self, host: HostId) -> String {
        format!("spt{}{host}", self.slot)
    }

    /// The namespace holding the bridge, where the coordinator listens.
    pub fn switch_namespace(&self) -> String {
        format!("spt{}", self.slot)
    }

    /// The directory standing for shared storage, reachable from every host.
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }

    /// `host`'s disk: its processes' working directory, wiped by a crash.
    pub fn private_dir(&self, host: HostId) -> PathBuf {
        self.dir.join("hosts").join(host.to_string()).join("disk")
    }

    /// The script that runs a command on `host` (`enter CMD ARGS...`).
    pub fn launcher(&self, host: HostId) -> PathBuf {
        self.dir.join("hosts").join(host.to_string()).join("enter")
    }

    /// Runs `f` on a thread inside the coordinator's namespace: sockets it
    /// makes (a coordinator's listener) stay there.
    pub fn in_coordinator_namespace<T: Send>(
        &self,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, HostsError> {
        command::in_namespace(&self.switch_namespace(), f)
    }

    /// Runs `f` on a thread inside `host`'s namespace.
    pub fn in_host_namespace<T: Send>(
        &self,
        host: HostId,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, HostsError> {
        self.check(host)?;
        command::in_namespace(&self.namespace(host), f)
    }

    /// Injects `fault` (added to those in force).
    pub fn inject(&self, fault: Fault) -> Result<(), HostsError> {
        for host in fault.hosts() {
            self.check(host)?;
        }
        fault.check()?;
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        faults.push(fault);
        let hosts = fault.hosts();
        self.apply(&faults, &hosts)
    }

    /// Lifts every fault involving `host`; its cut-off processes (if any
    /// survive) come back.
    pub fn heal(&self, host: HostId) -> Result<(), HostsError> {
        self.check(host)?;
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let mut touched = vec![host];
        faults.retain(|f| {
            let hosts = f.hosts();
            if hosts.contains(&host) {
                touched.extend(hosts);
                false
            } else {
                true
            }
        });
        touched.sort();
        touched.dedup();
        self.apply(&faults, &touched)
    }

    /// Lifts `fault` alone (one of it, if injected twice), leaving any other
    /// fault on its hosts in force: a fault that lasts a while. Lifting a
    /// fault not in force (healed meanwhile) does nothing.
    pub fn lift(&self, fault: Fault) -> Result<(), HostsError> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = faults.iter().position(|f| *f == fault) else {
            return Ok(());
        };
        faults.remove(i);
        self.apply(&faults, &fault.hosts())
    }

    /// Lifts every fault.
    pub fn heal_all(&self) -> Result<(), HostsError> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        faults.clear();
        let all: Vec<HostId> = self.all().collect();
        self.apply(&faults, &all)
    }

    /// The faults in force.
    pub fn faults(&self) -> Vec<Fault> {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rewrites the rules of `hosts` from `faults`.
    fn apply(&self, faults: &[Fault], hosts: &[HostId]) -> Result<(), HostsError> {
        for host in hosts {
            faults::apply(self, *host, faults)?;
        }
        Ok(())
    }

    /// Crashes `host`: kills every process on it and wipes its disk, as a
    /// machine that dies and reboots empty. Returns how many processes died.
    pub fn crash(&self, host: HostId) -> Result<usize, HostsError> {
        self.check(host)?;
        let killed = kill_all(&self.namespace(host));
        let disk = self.private_dir(host);
        let _ = std::fs::remove_dir_all(&disk);
        mkdir(&disk)?;
        Ok(killed)
    }

    /// The processes running on `host`.
    pub fn processes(&self, host: HostId) -> Vec<u32> {
        pids(&self.namespace(host))
    }

    fn check(&self, host: HostId) -> Result<(), HostsError> {
        if host.0 == 0 || host.0 > self.hosts {
            return Err(HostsError::NoSuchHost(host, self.hosts));
        }
        Ok(())
    }
}

impl Drop for SimulatedHosts {
    fn drop(&mut self) {
        teardown(self.slot, self.hosts);
        for cgroup in &self.cgroups {
            let _ = std::fs::remove_dir(cgroup);
        }
        let _ = std::fs::remove_dir_all(self.dir.join("hosts"));
    }
}

/// Removes every namespace of `slot` (killing what runs there) and its
/// owner record.
fn teardown(slot: u8, hosts: usize) {
    for i in 1..=hosts {
        let ns = format!("spt{slot}h{i}");
        kill_all(&ns);
        let _ = run("ip", &["netns", "del", &ns]);
    }
    // Deleting the switch's namespace deletes the bridge and every veth.
    let _ = run("ip", &["netns", "del", &format!("spt{slot}")]);
    let _ = std::fs::remove_file(Path::new(OWNERS_DIR).join(slot.to_string()));
}

/// Kills every process in namespace `ns`; returns how many there were.
fn kill_all(ns: &str) -> usize {
    let mut killed = 0;
    for _ in 0..100 {
        let pids = pids(ns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory effects; the pid is in a namespace
            // this harness made.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

fn pids(ns: &str) -> Vec<u32> {
    run("ip", &["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Fails with [`HostsError::Unsupported`] unless this process can make
/// namespaces and the tools are there.
fn check_support() -> Result<(), HostsError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(HostsError::Unsupported("not running as root".into()));
    }
    for (tool, args) in [("ip", ["-V"]), ("nft", ["--version"]), ("tc", ["-V"])] {
        if let Err(e) = run(tool, &args) {
            return Err(HostsError::Unsupported(format!("`{tool}` is missing: {e}")));
        }
    }
    Ok(())
}

/// Reserves a free slot by creating its switch namespace (which fails if it
/// exists), sweeping slots whose owner process is gone.
fn reserve_slot() -> Result<u8, HostsError> {
    mkdir(Path::new(OWNERS_DIR))?;
    for slot in 1..=250u8 {
        let ns = format!("spt{slot}");
        if run("ip", &["netns", "add", &ns]).is_ok() {
            let owner = Path::new(OWNERS_DIR).join(slot.to_string());
            std::fs::write(&owner, std::process::id().to_string())
                .map_err(|e| HostsError::io(format!("writing {}", owner.display()), e))?;
            return Ok(slot);
        }
        if owner_gone(slot) {
            tracing::warn!(slot, "removing simulated hosts left by a process that died");
            teardown(slot, 200);
            if run("ip", &["netns", "add", &ns]).is_ok() {
                let owner = Path::new(OWNERS_DIR).join(slot.to_string());
                std::fs::write(&owner, std::process::id().to_string())
                    .map_err(|e| HostsError::io(format!("writing {}", owner.display()), e))?;
                return Ok(slot);
            }
        }
    }
    Err(HostsError::NoSlot)
}

/// Whether the process that reserved `slot` no longer runs (a slot with no
/// owner record is being made right now, or by hand: left alone).
fn owner_gone(slot: u8) -> bool {
    let owner = Path::new(OWNERS_DIR).join(slot.to_string());
    let Some(pid) = std::fs::read_to_string(owner)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) != 0 && *libc::__errno_location() == libc::ESRCH }
}

fn mkdir(dir: &Path) -> Result<(), HostsError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| HostsError::io(format!("creating {}", dir.display()), e))
}
