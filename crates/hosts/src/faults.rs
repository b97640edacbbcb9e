//! Network faults and how they become rules: each host's namespace has an
//! nftables table `spate` with an input and an output chain, rewritten from
//! the faults in force whenever they change; bandwidth caps are a tc token
//! bucket on the host's interface.

use crate::command::{run_in, run_with_input};
use crate::{HostId, HostsError, SimulatedHosts};

/// A network fault the harness can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The host reaches no one and no one reaches it.
    Partition(HostId),
    /// The two hosts cannot reach each other; both still reach everyone
    /// else, the coordinator included.
    Cut(HostId, HostId),
    /// The host and the coordinator cannot reach each other; the host still
    /// reaches the other hosts.
    CutFromCoordinator(HostId),
    /// The host reaches the coordinator only: no other host reaches it.
    CutFromPeers(HostId),
    /// Every packet into or out of the host is dropped with this chance, in
    /// percent.
    Loss(HostId, u8),
    /// The host sends at most this many kilobits per second.
    Bandwidth(HostId, u32),
}

impl Fault {
    /// The hosts whose rules carry this fault.
    pub fn hosts(&self) -> Vec<HostId> {
        match *self {
            Fault::Cut(a, b) => vec![a, b],
            Fault::Partition(h)
            | Fault::CutFromCoordinator(h)
            | Fault::CutFromPeers(h)
            | Fault::Loss(h, _)
            | Fault::Bandwidth(h, _) => vec![h],
        }
    }

    /// Refuses faults the rules cannot express.
    pub(crate) fn check(&self) -> Result<(), HostsError> {
        match *self {
            Fault::Loss(_, p) if !(1..=99).contains(&p) => Err(HostsError::BadOption(format!(
                "loss is a percentage from 1 to 99 (100 is a partition), not {p}"
            ))),
            Fault::Bandwidth(_, 0) => Err(HostsError::BadOption(
                "a bandwidth cap must be at least 1 kbit/s (no bandwidth is a partition)".into(),
            )),
            Fault::Cut(a, b) if a == b => {
                Err(HostsError::BadOption(format!("cannot cut {a} from itself")))
            }
            _ => Ok(()),
        }
    }

    /// The fault's kind, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition(_) => "partition",
            Fault::Cut(..) => "cut",
            Fault::CutFromCoordinator(_) => "cut-coordinator",
            Fault::CutFromPeers(_) => "cut-peers",
            Fault::Loss(..) => "loss",
            Fault::Bandwidth(..) => "bandwidth",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Partition(h) => write!(f, "partition {h}"),
            Fault::Cut(a, b) => write!(f, "cut {a} from {b}"),
            Fault::CutFromCoordinator(h) => write!(f, "cut {h} from the coordinator"),
            Fault::CutFromPeers(h) => write!(f, "cut {h} from every other host"),
            Fault::Loss(h, p) => write!(f, "{p} % loss on {h}"),
            Fault::Bandwidth(h, kbit) => write!(f, "cap {h} at {kbit} kbit/s"),
        }
    }
}

/// Makes the empty table the faults' rules go into.
pub(crate) fn install_table(ns: &str) -> Result<(), HostsError> {
    nft(
        ns,
        "table inet spate {\n\
         chain input { type filter hook input priority 0; policy accept; }\n\
         chain output { type filter hook output priority 0; policy accept; }\n\
         }\n",
    )
}

/// Rewrites `host`'s rules and qdisc from the faults in force.
pub(crate) fn apply(
    hosts: &SimulatedHosts,
    host: HostId,
    faults: &[Fault],
) -> Result<(), HostsError> {
    let ns = hosts.namespace(host);
    let mut rules = String::from("flush chain inet spate input\nflush chain inet spate output\n");
    let mut rule = |input: &str, output: &str| {
        rules.push_str(&format!("add rule inet spate input {input} drop\n"));
        rules.push_str(&format!("add rule inet spate output {output} drop\n"));
    };
    let mut bandwidth = None;
    for fault in faults {
        match *fault {
            Fault::Partition(h) if h == host => rule("iifname \"eth0\"", "oifname \"eth0\""),
            Fault::Cut(a, b) if a == host || b == host => {
                let other = hosts.ip(if a == host { b } else { a });
                rule(&format!("ip saddr {other}"), &format!("ip daddr {other}"));
            }
            Fault::CutFromCoordinator(h) if h == host => {
                let c = hosts.coordinator_ip();
                rule(&format!("ip saddr {c}"), &format!("ip daddr {c}"));
            }
            Fault::CutFromPeers(h) if h == host => {
                // Only what crosses the wire: a host cut off still reaches
                // its own address (over loopback), as a real one would.
                let (c, net) = (hosts.coordinator_ip(), hosts.network());
                rule(
                    &format!("iifname \"eth0\" ip saddr {net} ip saddr != {c}"),
                    &format!("oifname \"eth0\" ip daddr {net} ip daddr != {c}"),
                );
            }
            Fault::Loss(h, percent) if h == host => {
                let chance = format!("numgen random mod 100 < {percent}");
                rule(
                    &format!("iifname \"eth0\" {chance}"),
                    &format!("oifname \"eth0\" {chance}"),
                );
            }
            Fault::Bandwidth(h, kbit) if h == host => bandwidth = Some(kbit),
            _ => {}
        }
    }
    nft(&ns, &rules)?;
    match bandwidth {
        Some(kbit) => {
            let rate = format!("{kbit}kbit");
            // A burst of at least one full packet, and about 10 ms of rate.
            let burst = format!("{}", (kbit as u64 * 1000 / 8 / 100).max(3_000));
            run_in(
                &ns,
                "tc",
                &[
                    "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst",
                    &burst, "latency", "500ms",
                ],
            )?;
        }
        None => {
            // No cap: back to the default qdisc (fails harmlessly when none
            // was set).
            let _ = run_in(&ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        }
    }
    Ok(())
}

fn nft(ns: &str, script: &str) -> Result<(), HostsError> {
    run_with_input("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)).map(|_| ())
}
