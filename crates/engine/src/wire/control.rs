//! Control messages between the coordinator and its workers: length-prefixed
//! bincode, after a handshake carrying the protocol version.

use std::io::{self, Read, Write};

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{MAX_CONTROL_FRAME, PROTOCOL_VERSION};
use crate::error::EngineError;
use crate::plan::{AddedInstance, MergedInstance};
use crate::plan::{Incarnation, InstanceId, Plan, WorkerId};
use crate::stamp::Stamp;
use crate::state::KeyRange;

/// The first bytes of the control handshake. A connection to a worker's
/// data listener that starts with them carries backups, not tuples.
pub const MAGIC: &[u8; 4] = b"SPTC";

/// Counters an instance reports when it finishes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// Tuples the instance processed (sources: emitted).
    pub tuples_in: u64,
    /// Tuples the instance sent downstream.
    pub tuples_out: u64,
}

/// Cumulative counters of one instance, sent every [`METRICS_EVERY`]; the
/// coordinator turns consecutive samples into rates and utilisation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceMetrics {
    /// The instance.
    pub instance: InstanceId,
    /// Tuples processed (sources: emitted) so far.
    pub tuples_in: u64,
    /// Tuples sent so far.
    pub tuples_out: u64,
    /// CPU seconds the instance's thread has used so far.
    pub cpu_secs: f64,
    /// Batches waiting in its inbox and merge.
    pub queued_batches: u64,
    /// Batches taken in so far: with `tuples_in`, the tuples a batch
    /// carries, hence the tuples `queued_batches` hold (offered load the
    /// instance could not take yet).
    #[serde(default)]
    pub batches_in: u64,
    /// Bytes held in its output buffer for replay.
    pub buffered_bytes: u64,
    /// Every input at or below this stamp is processed.
    pub frontier: Stamp,
    /// Keys in its state at its latest checkpoint (0 before the first).
    pub state_keys: u64,
    /// Encoded size of those keys and values, bytes: what a checkpoint of
    /// its state costs, and (per key) how much state a car or a segment is.
    pub state_bytes: u64,
    /// CPU seconds its thread spent taking checkpoints so far: what
    /// checkpointing costs the instance.
    #[serde(default)]
    pub checkpoint_cpu_secs: f64,
    /// Seconds its thread waited for input (or, a source, for its
    /// schedule) so far: the share of time it had nothing to do.
    #[serde(default)]
    pub idle_secs: f64,
    /// Seconds its thread spent in writes to downstreams so far: a slow
    /// downstream blocks them, and that time is the downstream's load.
    #[serde(default)]
    pub blocked_secs: f64,
}

/// How often instances report metrics.
pub const METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How far back a heartbeat's [`HeardFrom`] list reaches.
pub const HEARD_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// A host that a worker's data channels heard from, and how long ago.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeardFrom {
    /// The host part of the peer's address (as in its data address).
    pub host: String,
    /// Milliseconds between hearing from it and sending the heartbeat.
    pub ms_ago: u64,
}

/// Worker to coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// A worker joins: where its data listener is.
    Register {
        /// Address other workers connect to for data channels.
        data_addr: String,
        /// OS process id, for `kill` and diagnostics.
        pid: u32,
        /// The cluster's shared secret; a coordinator with a token refuses
        /// workers that do not present it.
        token: String,
    },
    /// The first message on a worker's heartbeat connection, a second
    /// connection so that heartbeats never queue behind large checkpoints.
    Beat {
        /// The worker's data address, as in its `Register`.
        data_addr: String,
        /// The cluster's shared secret, as in `Register`.
        token: String,
    },
    /// The worker created its instances and is ready to start.
    Deployed,
    /// The worker is alive (sent every [`HEARTBEAT_EVERY`]), and the
    /// hosts its data channels heard from lately: which end of a stalled
    /// channel is cut off from its peers is a question of what each end
    /// still hears, not of what the plan says it sends.
    Heartbeat {
        /// Hosts that sent data, or acknowledged it, on this worker's
        /// data channels lately (within [`HEARD_WINDOW`]).
        heard: Vec<HeardFrom>,
    },
    /// One of the worker's sources checkpointed its input position (a few
    /// bytes, kept by the coordinator). Stateful instances and sinks ship
    /// their checkpoints to their holders directly ([`BackupShipment`]).
    Checkpoint {
        /// The instance.
        instance: InstanceId,
        /// Its incarnation: checkpoints of a replaced one are stale.
        incarnation: Incarnation,
        /// The checkpoint's frontier.
        frontier: Stamp,
        /// The encoded checkpoint.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// This worker now holds a backup.
    BackupStored(BackupAck),
    /// This worker refused a backup of `instance`: the instance must
    /// checkpoint in full next.
    BackupRefused {
        /// The instance.
        instance: InstanceId,
        /// Why.
        refusal: Refusal,
        /// Why, in words, for the log.
        reason: String,
    },
    /// The backup asked for with [`ToWorker::FetchBackup`].
    Backup {
        /// The instance.
        instance: InstanceId,
        /// The encoded checkpoint, if this worker holds one.
        #[serde(with = "serde_bytes")]
        bytes: Option<Vec<u8>>,
    },
    /// The holder named in a [`RestoreFrom::Holder`] could not give the
    /// backup of `instance` (it died, was cut off, or holds none): the
    /// coordinator names another source.
    RestoreUnavailable {
        /// The instance being restored.
        instance: InstanceId,
        /// The holder that failed to give it.
        holder: WorkerId,
        /// What went wrong, for the log.
        reason: String,
    },
    /// Where to cut the backup of `instance`, as asked with
    /// [`ToWorker::CutBackup`]: the ranges in key order and the keys of
    /// each, at the backup's `frontier`; no ranges: this holder cannot say
    /// (it holds none).
    Cuts {
        /// The instance.
        instance: InstanceId,
        /// The frontier of the backup cut.
        frontier: Stamp,
        /// The parts' ranges and key counts.
        parts: Vec<(KeyRange, usize)>,
    },
    /// A part of `instance`'s backup is staged here ([`ToWorker::Stage`]),
    /// at `frontier`; `None`: no holder could give it (`reason`).
    Staged {
        /// The instance being split.
        instance: InstanceId,
        /// The part's range.
        range: KeyRange,
        /// The frontier of what was staged.
        frontier: Option<Stamp>,
        /// The keys staged.
        keys: usize,
        /// Why not, when not.
        reason: String,
    },
    /// An instance's counters.
    Metrics(InstanceMetrics),
    /// An instance told to [`ToWorker::Pause`] stopped at `done`.
    Paused {
        /// The instance.
        instance: InstanceId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// Every input at or below it is processed, none above.
        done: Stamp,
    },
    /// A restored instance was created and started.
    Restored {
        /// The instance.
        instance: InstanceId,
    },
    /// A restored instance has worked off the backlog of its recovery.
    CaughtUp {
        /// The instance.
        instance: InstanceId,
    },
    /// An instance reached the end of its input.
    InstanceFinished {
        /// Instance id.
        instance: InstanceId,
        /// Its counters.
        stats: InstanceStats,
    },
    /// The worker could not deploy its share of the plan.
    WorkerFailed {
        /// What went wrong.
        error: String,
    },
    /// A data channel to the worker at `peer` (its data address) made no
    /// progress for `silent_ms` while it had data to deliver, or `peer`
    /// could not be connected to: the coordinator decides which side to
    /// recover elsewhere.
    LinkStalled {
        /// The peer's data address.
        peer: String,
        /// How long the channel had been silent.
        silent_ms: u64,
    },
    /// An instance stopped on an error.
    InstanceFailed {
        /// Instance id.
        instance: InstanceId,
        /// What went wrong.
        error: String,
    },
}

/// How often workers send heartbeats.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Coordinator to worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Build the query and create this worker's instances (none for a pool
    /// worker, which only gets ready for a later restore).
    Deploy {
        /// The registered query name.
        query: String,
        /// The query's parameters, as JSON text.
        params: String,
        /// Which instance runs where.
        plan: Plan,
        /// The receiving worker's index in the plan.
        worker: WorkerId,
        /// Checkpoint interval in milliseconds; 0 turns fault tolerance off.
        checkpoint_ms: u64,
    },
    /// Every worker is deployed: open data channels and start processing.
    Start,
    /// Where the checkpoints of this worker's instances go from now on:
    /// each listed instance's holders (a holder that cannot join an
    /// increment to what it holds refuses it, and gets a full checkpoint
    /// next).
    BackupRoutes {
        /// The instances whose holders changed.
        routes: Vec<BackupRoute>,
    },
    /// Drop the backup of `instance`: this worker no longer holds it (the
    /// instance was reshaped, merged away, or routed elsewhere).
    DropBackup {
        /// The instance.
        instance: InstanceId,
    },
    /// Send a copy of the backup of `instance` to `to`, a new holder of its
    /// route, as a checkpoint of incarnation `incarnation` (the one that
    /// runs): a route that lost a holder gets its second copy holder to
    /// holder, never through the coordinator.
    Replicate {
        /// The instance.
        instance: InstanceId,
        /// Its running incarnation, which the copy is a restore point of.
        incarnation: Incarnation,
        /// The new holder.
        to: BackupHolder,
    },
    /// Send the backup of `instance` back to the coordinator.
    FetchBackup {
        /// The instance.
        instance: InstanceId,
    },
    /// Downstream instance `downstream` has a durable checkpoint at
    /// `frontier`: upstreams may drop the outputs it covers.
    Trim {
        /// The checkpointed instance.
        downstream: InstanceId,
        /// Its frontier.
        frontier: Stamp,
    },
    /// Create and start these instances from their checkpoints, as placed
    /// in `plan`.
    Restore {
        /// Instance ids and where each one's state comes from.
        instances: Vec<(InstanceId, RestoreFrom)>,
        /// The plan after the recovery.
        plan: Plan,
    },
    /// The plan changed: instances were restored (a new incarnation),
    /// added by a split or merged by a scale in; reconnect and replay
    /// accordingly.
    PlanUpdate {
        /// The new plan.
        plan: Plan,
        /// Instances added by a split.
        added: Vec<AddedInstance>,
        /// Instances merged into a neighbour by a scale in.
        merged: Vec<MergedInstance>,
    },
    /// Reconnect every data channel to an instance on worker `peer`, and
    /// replay it: one of them stalled, and the two hosts hear each other again
    /// (a cut that healed), so nobody is recovered. A channel its stall
    /// shut may look open to its writer, which had nothing to send since.
    Rewire {
        /// The worker the stalled channel went to.
        peer: WorkerId,
    },
    /// `instance` should stop processing where it is and say where
    /// ([`ToCoordinator::Paused`]): it is about to be merged.
    Pause {
        /// The instance.
        instance: InstanceId,
    },
    /// A paused `instance` should process up to exactly `until` and, unless
    /// `until` is the end (the merge was called off), checkpoint there with
    /// its output buffer and stay paused.
    Resume {
        /// The instance.
        instance: InstanceId,
        /// Where to stop again.
        until: Stamp,
    },
    /// Say where to cut the backup of `instance` into `parts` by recent
    /// load ([`ToCoordinator::Cuts`]): asked of a holder of it ahead of a
    /// live split, so that the cuts are chosen where the state is.
    CutBackup {
        /// The instance to split.
        instance: InstanceId,
        /// Into how many parts.
        parts: usize,
    },
    /// Fetch the part of the backup of `instance` that `range` owns from
    /// one of `holders` (in order) and keep it decoded, ready for a
    /// restore from it ([`RestoreFrom::Staged`]): the bulk of a live
    /// split, moved while the instance runs. A range this worker staged
    /// before (a warm standby) is caught up in place instead, from the
    /// holder it came from. Answered with [`ToCoordinator::Staged`].
    Stage {
        /// The instance being split.
        instance: InstanceId,
        /// The part this worker will restore.
        range: KeyRange,
        /// Holders of the instance's backup, the newest copy first.
        holders: Vec<BackupHolder>,
        /// For a live merge's partition: the other partition, staged on
        /// this worker too, to join it with.
        merge: Option<StagedJoin>,
    },
    /// Forget what was staged of `instance`: its split was called off.
    Unstage {
        /// The instance.
        instance: InstanceId,
    },
    /// Cut the backup of `instance`, which must be at `frontier`, into a
    /// backup of each part of its split, each stored and acknowledged as
    /// that part's own: the parts' holders then hold what the parts
    /// restored from, and the parts' increments join it.
    ReshapeBackup {
        /// The instance split.
        instance: InstanceId,
        /// The frontier every part restored at.
        frontier: Stamp,
        /// The parts whose backup this holder keeps.
        parts: Vec<ReshapedPart>,
    },
    /// Merge the backups of a live merge's two partitions, both at
    /// `frontier`, into the backup of the merged instance (the lower's id,
    /// a new incarnation, both ranges), stored and acknowledged as its own:
    /// its increments then join it. The upper's backup comes from this
    /// holder if it holds it, else from the first of `upper_holders` that
    /// gives it.
    MergeBackups {
        /// The upper partition, merged into the lower.
        upper: InstanceId,
        /// The frontier both partitions stopped at.
        frontier: Stamp,
        /// The merged instance.
        merged: ReshapedPart,
        /// Holders of the upper's backup at `frontier`.
        upper_holders: Vec<BackupHolder>,
    },
    /// Every instance should checkpoint now (an operator asked).
    CheckpointNow,
    /// Take `instance`'s next checkpoint in full, soon: its backup lost
    /// track of its incremental checkpoints.
    CheckpointFull {
        /// The instance.
        instance: InstanceId,
    },
    /// The coordinator still counts on this worker (sent on the heartbeat
    /// connection every [`HEARTBEAT_EVERY`]): a worker that hears none for
    /// `ms` milliseconds may have been declared failed, and stops.
    Lease {
        /// The lease (`JobConfig::lease`).
        ms: u64,
    },
    /// The job is over (or aborted): exit.
    Shutdown,
}

/// Where a restored instance's state comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreFrom {
    /// Nowhere: it starts empty, from the beginning.
    Nothing,
    /// This encoded checkpoint, sent along (a part of a split or merge, a
    /// restart point, or a copy the coordinator kept).
    Checkpoint(serde_bytes::ByteBuf),
    /// Its backup, which the restoring worker fetches from this holder
    /// itself, so that a recovery moves the state once and never through
    /// the coordinator.
    Holder(BackupHolder),
    /// A part of a live split: what this worker staged of its parent,
    /// caught up.
    Staged(StagedSource),
    /// A live merge: what this worker staged of both partitions, joined
    /// into one keyed state while staged, caught up with each one's
    /// changes since (output buffers interleaved back into stamp order).
    StagedMerge {
        /// The lower partition (whose id the merged instance keeps).
        lower: StagedSource,
        /// The upper partition.
        upper: StagedSource,
    },
}

/// A key range of an instance's backup that a worker staged
/// ([`ToWorker::Stage`]) and catches up on at a split's or merge's stop:
/// with its changes since, fetched from the first of `holders` that can
/// give them (or, when none can, the range's part whole).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedSource {
    /// The instance whose backup it is (split or merged).
    pub parent: InstanceId,
    /// The range staged.
    pub range: KeyRange,
    /// The frontier of what was staged (a live merge's joined partitions
    /// may have been caught up beyond it while staged).
    pub since: Stamp,
    /// Holders of the parent's backup at the stop's frontier.
    pub holders: Vec<BackupHolder>,
}

/// A live merge's partition staged ([`ToWorker::Stage`]) to be joined
/// with the other's: whichever of the two is staged second moves the
/// smaller's keys into the map with room for them and catches that map up
/// with both partitions' changes since they were staged, so that the
/// merge's stop only folds each partition's latest changes into that one
/// map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedJoin {
    /// The other partition.
    pub with: InstanceId,
    /// Keys beyond the range's own to make room for (the other's, when
    /// this partition is the larger), so that joining them does not grow
    /// the map, which would rehash it.
    pub room: u64,
}

/// One part of a live split whose backup a holder cuts from the parent's
/// ([`ToWorker::ReshapeBackup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshapedPart {
    /// The part (the parent's own id for the lowest part).
    pub instance: InstanceId,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Its key range.
    pub range: KeyRange,
}

/// What travels on a backup connection to a holder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToHolder {
    /// Keep the checkpoint whose bytes follow this frame raw
    /// ([`send_shipment`]); acknowledge it to the coordinator.
    Store(ShipmentHeader),
    /// Send back the backup of `instance` ([`HeldBackup`], then its
    /// bytes): a worker restoring it (whole), or staging or catching up on
    /// one key range of it ahead of a split.
    Fetch {
        /// The instance.
        instance: InstanceId,
        /// Only this key range of it (`None`: the whole backup, as held).
        range: Option<KeyRange>,
        /// With a `range`: only the changes since this frontier, which the
        /// asking worker staged, if the holder still has them as deltas.
        since: Option<Stamp>,
    },
}

/// A holder's answer to [`ToHolder::Fetch`]; the backup's bytes follow the
/// frame raw, so that gigabytes are not copied into a frame and out again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBackup {
    /// The instance.
    pub instance: InstanceId,
    /// How many bytes follow; `None`: the holder has no backup of it (or
    /// cannot cut the range asked for).
    pub bytes: Option<u64>,
    /// `Some(since)`: the bytes are a run of deltas of the range asked for,
    /// on the frontier `since` ([`crate::state::Checkpoint::apply_run`]);
    /// `None`: a restorable checkpoint (the whole backup or the range's
    /// part of it).
    pub since: Option<Stamp>,
}

/// A holder's word that it holds the backup of `instance` at `frontier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupAck {
    /// The instance backed up.
    pub instance: InstanceId,
    /// The incarnation the backup belongs to.
    pub incarnation: Incarnation,
    /// The backup's frontier.
    pub frontier: Stamp,
    /// Bytes of the checkpoint as it arrived (an increment, or full): what
    /// checkpointing moves.
    pub arrived_bytes: u64,
    /// Bytes of the whole backup held now (the latest full checkpoint and
    /// the increments since).
    pub held_bytes: u64,
}

/// Why a holder refused a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Corrupted on the way: worth telling the user.
    Corrupt,
    /// An increment the holder cannot join to what it holds (a new holder,
    /// one that missed a checkpoint, or a backup of the instance before it
    /// was split or merged): routine.
    NotItsBase,
    /// From an incarnation since replaced (a worker declared failed).
    Replaced,
}

/// The workers an instance's checkpoints go to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRoute {
    /// The instance.
    pub instance: InstanceId,
    /// Its holders, first the preferred one; empty: none can be chosen now.
    pub holders: Vec<BackupHolder>,
}

/// A worker holding backups, and the data address its peers reach it at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHolder {
    /// The holder.
    pub worker: WorkerId,
    /// Its data address: backups travel on a connection of their own to
    /// its data listener, opened with the control handshake.
    pub addr: String,
}

/// A checkpoint on its way from an instance's worker to a holder, on the
/// backup connection between the two (never through the coordinator).
#[derive(Clone, Debug)]
pub struct BackupShipment {
    /// The instance it belongs to.
    pub instance: InstanceId,
    /// The incarnation that took it.
    pub incarnation: Incarnation,
    /// Its frontier.
    pub frontier: Stamp,
    /// The encoded checkpoint (full or incremental).
    pub bytes: Vec<u8>,
}

/// What a holder is told of a [`BackupShipment`] ahead of its bytes, which
/// follow raw: a checkpoint is neither copied into a frame nor out of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentHeader {
    /// The instance it belongs to.
    pub instance: InstanceId,
    /// The incarnation that took it.
    pub incarnation: Incarnation,
    /// Its frontier.
    pub frontier: Stamp,
    /// How many bytes follow.
    pub bytes: u64,
}

/// Refuses a checkpoint too large for a holder to take
/// ([`MAX_CONTROL_FRAME`]), saying what to do about it.
pub fn check_shipment(shipment: &BackupShipment) -> Result<(), EngineError> {
    let len = shipment.bytes.len();
    if len > MAX_CONTROL_FRAME {
        return Err(EngineError::Protocol(format!(
            "a checkpoint of instance {} has {len} bytes, over the {MAX_CONTROL_FRAME}-byte \
             limit: give the operator more partitions so that each instance's state stays \
             under it",
            shipment.instance
        )));
    }
    Ok(())
}

/// Sends `shipment` on a backup connection: its header, then its bytes.
pub fn send_shipment(w: &mut impl Write, shipment: &BackupShipment) -> Result<(), EngineError> {
    check_shipment(shipment)?;
    let header = ShipmentHeader {
        instance: shipment.instance,
        incarnation: shipment.incarnation,
        frontier: shipment.frontier,
        bytes: shipment.bytes.len() as u64,
    };
    w.write_all(&encode(&ToHolder::Store(header))?)
        .and_then(|()| w.write_all(&shipment.bytes))
        .and_then(|()| w.flush())
        .map_err(|e| EngineError::io("shipping a checkpoint to its holder", e))
}

/// Receives the bytes announced by `header`, which follow it on `r`.
pub fn recv_shipment(
    r: &mut impl Read,
    header: ShipmentHeader,
) -> Result<BackupShipment, EngineError> {
    let context = || format!("receiving a checkpoint of instance {}", header.instance);
    let len = usize::try_from(header.bytes)
        .ok()
        .filter(|&len| len <= MAX_CONTROL_FRAME)
        .ok_or_else(|| {
            EngineError::Protocol(format!(
                "{}: {} bytes exceeds the {MAX_CONTROL_FRAME}-byte limit",
                context(),
                header.bytes
            ))
        })?;
    let bytes = super::read_exactly(r, len).map_err(|e| EngineError::io(context(), e))?;
    Ok(BackupShipment {
        instance: header.instance,
        incarnation: header.incarnation,
        frontier: header.frontier,
        bytes,
    })
}

/// Writes the control handshake.
pub fn write_hello(w: &mut impl Write) -> io::Result<()> {
    let mut buf = [0u8; 6];
    buf[..4].copy_from_slice(MAGIC);
    buf[4..].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    w.write_all(&buf)
}

/// Reads and checks the control handshake.
pub fn read_hello(r: &mut impl Read) -> Result<(), EngineError> {
    let mut buf = [0u8; 6];
    r.read_exact(&mut buf)
        .map_err(|e| EngineError::io("reading control handshake", e))?;
    if &buf[..4] != MAGIC {
        return Err(EngineError::Protocol(
            "control handshake has a bad magic number (is this a Spate coordinator?)".into(),
        ));
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != PROTOCOL_VERSION {
        return Err(EngineError::Protocol(format!(
            "peer speaks protocol version {version}, this process {PROTOCOL_VERSION}; run the same spate build everywhere"
        )));
    }
    Ok(())
}

/// Encodes one control message as a length-prefixed frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EngineError> {
    let mut frame = vec![0u8; 4];
    bincode::serialize_into(&mut frame, msg)
        .map_err(|e| EngineError::Protocol(format!("encoding control message: {e}")))?;
    let len = frame.len() - 4;
    if len > MAX_CONTROL_FRAME {
        return Err(EngineError::Protocol(format!(
            "control message of {len} bytes exceeds the {MAX_CONTROL_FRAME}-byte limit (checkpoints \
             travel as control messages: give the operator more partitions so that each \
             instance's state stays under the limit)"
        )));
    }
    // Lossless: the limit is below 4 GiB.
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(frame)
}

/// Sends a frame made by [`encode`].
pub fn send_encoded(w: &mut impl Write, frame: &[u8]) -> Result<(), EngineError> {
    w.write_all(frame)
        .and_then(|()| w.flush())
        .map_err(|e| EngineError::io("sending control message", e))
}

/// Sends one control message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), EngineError> {
    send_encoded(w, &encode(msg)?)
}

/// Receives one control message; `Ok(None)` when the peer closed cleanly.
pub fn recv<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, EngineError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(EngineError::io("receiving control message", e)),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(EngineError::Protocol(format!(
            "control message of {len} bytes exceeds the {MAX_CONTROL_FRAME}-byte limit"
        )));
    }
    let body = super::read_exactly(r, len)
        .map_err(|e| EngineError::io("receiving control message body", e))?;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(body.len() as u64)
        .deserialize(&body)
        .map(Some)
        .map_err(|e| EngineError::Protocol(format!("malformed control message: {e}")))
}
