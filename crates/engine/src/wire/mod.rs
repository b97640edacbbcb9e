//! The wire format: binary batch frames for tuples, length-prefixed control
//! messages between coordinator and workers. Every connection starts with a
//! versioned handshake and every length is checked before it is trusted.

use std::io::{self, Read};

pub mod control;
pub mod data;

/// Bumped whenever a frame layout changes; peers of another version are
/// refused (3: leases, stalled links, incremental checkpoints; 4: the Fx
/// routing hash; 5: checkpoints shipped from worker to holder directly; 6:
/// restoring workers fetch backups from holders, and a data channel's
/// handshake names the receiver's incarnation; 7: holders give one key
/// range of a backup, or its changes since a staged frontier; 8: live
/// merges, `RestoreFrom::StagedMerge` and `ToWorker::MergeBackups`; 9: a
/// checkpoint shipped to a holder follows its header raw; 10: staging
/// makes room for a merge's other partition; 11: a live merge's two
/// partitions are joined while staged, `ToWorker::Stage { merge }`; 12:
/// heartbeats list the hosts a worker's data channels heard from lately;
/// 13: `ToWorker::Rewire`, a healed stall reconnected without a recovery).
pub const PROTOCOL_VERSION: u16 = 13;

/// Upper bound on a data frame, so a corrupt length cannot make us allocate
/// gigabytes.
pub const MAX_FRAME: usize = 64 << 20;

/// Upper bound on a control message (checkpoints travel as control
/// messages, to holders and for reconfigurations): a gigabyte of keyed state makes a checkpoint of more than
/// 1 GiB, and a length beyond 3 GiB is taken for corruption.
pub const MAX_CONTROL_FRAME: usize = 3 << 30;

// A control frame's length travels as 32 bits.
const _: () = assert!(MAX_CONTROL_FRAME <= u32::MAX as usize);

/// The host part of a network address (`10.213.0.2` of
/// `10.213.0.2:4000`, `[::1]` of `[::1]:4000`): workers on one host share
/// it, and faults of the network come between hosts.
pub(crate) fn host_part(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// Reads exactly `len` bytes into a new vector, straight into its spare
/// capacity: zeroing a buffer first costs as much as receiving into it,
/// and checkpoints are megabytes. A peer that stops short is an
/// `UnexpectedEof`.
pub(crate) fn read_exactly(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(len);
    r.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the peer closed the connection after {} of {len} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}
