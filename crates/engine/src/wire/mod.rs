//! The wire format: binary batch frames for tuples, length-prefixed control
//! messages between coordinator and workers. Every connection starts with a
//! versioned handshake and every length is checked before it is trusted.

pub mod control;
pub mod data;

/// Bumped whenever a frame layout changes; peers of another version are
/// refused (3: leases, stalled links, incremental checkpoints; 4: the Fx
/// routing hash; 5: checkpoints shipped from worker to holder directly; 6:
/// restoring workers fetch backups from holders, and a data channel's
/// handshake names the receiver's incarnation; 7: holders give one key
/// range of a backup, or its changes since a staged frontier; 8: live
/// merges, `RestoreFrom::StagedMerge` and `ToWorker::MergeBackups`).
pub const PROTOCOL_VERSION: u16 = 8;

/// Upper bound on a data frame, so a corrupt length cannot make us allocate
/// gigabytes.
pub const MAX_FRAME: usize = 64 << 20;

/// Upper bound on a control message (checkpoints travel as control
/// messages, to holders and for reconfigurations): a gigabyte of keyed state makes a checkpoint of more than
/// 1 GiB, and a length beyond 3 GiB is taken for corruption.
pub const MAX_CONTROL_FRAME: usize = 3 << 30;

// A control frame's length travels as 32 bits.
const _: () = assert!(MAX_CONTROL_FRAME <= u32::MAX as usize);
