//! The harness itself: hosts reach each other, each fault cuts exactly what
//! it says, healing restores it, a crash kills and wipes, and nothing is
//! left behind. Skips (with a message) where namespaces cannot be made.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spate_hosts::{Fault, HostId, HostsError, HostsOptions, SimulatedHosts};

fn hosts(name: &str, n: usize) -> Option<SimulatedHosts> {
    hosts_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name), n)
}

fn hosts_in(dir: PathBuf, n: usize) -> Option<SimulatedHosts> {
    let _ = std::fs::remove_dir_all(&dir);
    match SimulatedHosts::create(&HostsOptions {
        hosts: n,
        dir,
        cpu_per_host: Some(1.0),
    }) {
        Ok(h) => Some(h),
        Err(HostsError::Unsupported(why)) => {
            eprintln!("skipping: cannot make simulated hosts here ({why})");
            None
        }
        Err(e) => panic!("making simulated hosts: {e}"),
    }
}

/// A listener on each host, answering every connection with one byte.
fn listeners(hosts: &SimulatedHosts) -> Vec<SocketAddr> {
    hosts
        .all()
        .map(|h| {
            let ip = hosts.ip(h);
            let listener = hosts
                .in_host_namespace(h, || TcpListener::bind((ip, 0)))
                .unwrap()
                .unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                for mut s in listener.incoming().flatten() {
                    let _ = s.write_all(b"!");
                }
            });
            addr
        })
        .collect()
}

/// Whether a connection from `from` (a host, or the coordinator) to `to`
/// gets its byte within a second.
fn reaches(hosts: &SimulatedHosts, from: Option<HostId>, to: SocketAddr) -> bool {
    let attempt = || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(1000)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
        let mut byte = [0u8];
        s.read_exact(&mut byte).is_ok()
    };
    match from {
        Some(h) => hosts.in_host_namespace(h, attempt).unwrap(),
        None => hosts.in_coordinator_namespace(attempt).unwrap(),
    }
}

#[test]
fn each_fault_cuts_what_it_says_and_heals() {
    let Some(hosts) = hosts("hosts-faults", 3) else {
        return;
    };
    let (h1, h2, h3) = (HostId(1), HostId(2), HostId(3));
    let at = listeners(&hosts);
    let coordinator = hosts
        .in_coordinator_namespace(|| TcpListener::bind((hosts.coordinator_ip(), 0)))
        .unwrap()
        .unwrap();
    let coordinator_addr = coordinator.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in coordinator.incoming().flatten() {
            let _ = s.write_all(b"!");
        }
    });
    assert!(reaches(&hosts, Some(h2), at[0]));
    assert!(reaches(&hosts, Some(h1), coordinator_addr));
    assert!(reaches(&hosts, None, at[2]));

    hosts.inject(Fault::Partition(h1)).unwrap();
    assert!(!reaches(&hosts, Some(h2), at[0]));
    assert!(!reaches(&hosts, Some(h1), coordinator_addr));
    assert!(reaches(&hosts, Some(h2), at[2]));
    assert!(reaches(&hosts, Some(h1), at[0]));
    hosts.heal(h1).unwrap();
    assert!(reaches(&hosts, Some(h2), at[0]));

    hosts.inject(Fault::Cut(h1, h2)).unwrap();
    assert!(!reaches(&hosts, Some(h2), at[0]));
    assert!(!reaches(&hosts, Some(h1), at[1]));
    assert!(reaches(&hosts, Some(h3), at[0]));
    assert!(reaches(&hosts, Some(h1), coordinator_addr));
    assert!(reaches(&hosts, Some(h2), coordinator_addr));
    hosts.heal(h2).unwrap();
    assert!(reaches(&hosts, Some(h2), at[0]));

    hosts.inject(Fault::CutFromCoordinator(h3)).unwrap();
    assert!(!reaches(&hosts, Some(h3), coordinator_addr));
    assert!(!reaches(&hosts, None, at[2]));
    assert!(reaches(&hosts, Some(h3), at[0]));
    assert!(reaches(&hosts, Some(h1), at[2]));
    hosts.heal_all().unwrap();
    assert!(reaches(&hosts, None, at[2]));

    hosts.inject(Fault::CutFromPeers(h2)).unwrap();
    assert!(!reaches(&hosts, Some(h1), at[1]));
    assert!(!reaches(&hosts, Some(h2), at[2]));
    assert!(reaches(&hosts, Some(h2), coordinator_addr));
    assert!(reaches(&hosts, None, at[1]));
    assert!(reaches(&hosts, Some(h1), at[2]));
    // A host cut off still reaches its own address, as a real one would:
    // two workers on it keep talking to each other.
    assert!(reaches(&hosts, Some(h2), at[1]));
    hosts.heal(h2).unwrap();
    assert!(reaches(&hosts, Some(h1), at[1]));

    hosts.inject(Fault::Loss(h1, 99)).unwrap();
    assert!(!reaches(&hosts, Some(h2), at[0]));
    assert!(hosts.inject(Fault::Loss(h1, 100)).is_err());
    hosts.heal(h1).unwrap();
    assert!(hosts.faults().is_empty());
    assert!(reaches(&hosts, Some(h2), at[0]));

    // Lifting one fault leaves the others on the same host in force.
    hosts.inject(Fault::CutFromCoordinator(h1)).unwrap();
    hosts.inject(Fault::Cut(h1, h2)).unwrap();
    hosts.lift(Fault::Cut(h1, h2)).unwrap();
    assert!(reaches(&hosts, Some(h2), at[0]));
    assert!(!reaches(&hosts, Some(h1), coordinator_addr));
    hosts.lift(Fault::Cut(h1, h2)).unwrap();
    assert_eq!(hosts.faults(), vec![Fault::CutFromCoordinator(h1)]);
    hosts.lift(Fault::CutFromCoordinator(h1)).unwrap();
    assert!(reaches(&hosts, Some(h1), coordinator_addr));
}

#[test]
fn a_bandwidth_cap_slows_a_transfer() {
    let Some(hosts) = hosts("hosts-bandwidth", 2) else {
        return;
    };
    let ip = hosts.ip(HostId(2));
    let listener = hosts
        .in_host_namespace(HostId(2), || TcpListener::bind((ip, 0)))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all.len()
    });
    // 100 KB at 400 kbit/s takes at least 2 s; load can only make it slower.
    hosts.inject(Fault::Bandwidth(HostId(1), 400)).unwrap();
    let started = Instant::now();
    hosts
        .in_host_namespace(HostId(1), || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&vec![7u8; 100_000]).unwrap();
        })
        .unwrap();
    assert_eq!(reader.join().unwrap(), 100_000);
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_crash_kills_and_wipes_and_drop_removes_everything() {
    let Some(hosts) = hosts("hosts-crash", 2) else {
        return;
    };
    let disk = hosts.private_dir(HostId(1));
    std::fs::write(disk.join("state"), "x").unwrap();
    let mut sleeper = std::process::Command::new(hosts.launcher(HostId(1)))
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hosts.processes(HostId(1)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the process never reached its host"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(hosts.crash(HostId(1)).unwrap() >= 1);
    assert!(!sleeper.wait().unwrap().success());
    assert!(disk.is_dir() && !disk.join("state").exists());
    let names: Vec<String> = hosts.all().map(|h| hosts.namespace(h)).collect();
    let switch = hosts.switch_namespace();
    drop(hosts);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    for name in names.iter().chain([&switch]) {
        assert!(
            !left.split_whitespace().any(|w| w == name),
            "{name} left behind: {left}"
        );
    }
}

#[test]
fn a_relative_directory_names_one_shared_directory_on_every_host() {
    // Processes on a host run in its disk, so the shared directory a
    // relative path names must be resolved before it is handed to them.
    let absolute = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hosts-relative");
    let here = std::env::current_dir().unwrap();
    let up: PathBuf = here.components().skip(1).map(|_| "..").collect();
    let relative = up.join(absolute.strip_prefix("/").unwrap());
    let Some(hosts) = hosts_in(relative, 1) else {
        return;
    };
    let shared = hosts.shared_dir();
    assert!(shared.is_absolute(), "{}", shared.display());
    let touched = std::process::Command::new(hosts.launcher(HostId(1)))
        .arg("touch")
        .arg(shared.join("seen-from-h1"))
        .status()
        .unwrap();
    assert!(touched.success());
    assert!(absolute.join("shared").join("seen-from-h1").is_file());
}
