//! Backups between workers, with the coordinator off the data path. An
//! instance's checkpoints go from its worker straight to its holders (the
//! workers the coordinator routed it to, see `coordinator::backups`), on a
//! backup connection of their own to each holder's data listener. A holder
//! verifies each checkpoint, joins it to the instance's backup, and
//! acknowledges it to the coordinator, which keeps only that metadata. The
//! coordinator fetches a backup from its holder only to restore or
//! repartition it.
//!
//! - Shipping side ([`Shipper`]): one lane (a thread and its connection)
//!   per holder, so that a holder that is slow or cut off delays only its
//!   own copies; a lane drops queued checkpoints a newer full one
//!   supersedes. Its connections are watched like data channels: a stalled
//!   one is reported to the coordinator.
//! - Holding side ([`Holdings`]): refuses a checkpoint that is corrupt,
//!   that changes one it does not hold (the instance then checkpoints in
//!   full), or that comes from an incarnation older than the one it holds
//!   (a worker declared failed and replaced).
//! - Restoring side ([`fetch_from`]): a worker told to restore an instance
//!   from a holder asks it for the whole backup on a backup connection of
//!   its own, so that a recovery moves the state once.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::api::ProcessLogic;
use crate::error::EngineError;
use crate::plan::{Incarnation, InstanceId, WorkerId};
use crate::stamp::Stamp;
use crate::state::{
    catch_up_steps, BackupChain, ChainError, Checkpoint, CheckpointKind, Cuts, KeyRange, RangeCut,
    SharedEncoding, StateEntry,
};
use crate::wire::control::{
    self, BackupAck, BackupHolder, BackupRoute, BackupShipment, HeldBackup, Refusal, ReshapedPart,
    StagedJoin, StagedSource, ToCoordinator, ToHolder,
};
use crate::wire::MAX_CONTROL_FRAME;

use super::watch::{connect_peer, open_peer, LinkWatch, WatchedStream};
use super::{reply, ControlWriter};

/// The backups this worker holds for other workers' instances: each one's
/// latest verified checkpoint and the incremental ones since, with the
/// incarnation that sent them.
#[derive(Clone, Default)]
pub(crate) struct Holdings {
    held: Arc<Mutex<HashMap<InstanceId, (Incarnation, BackupChain)>>>,
    /// The parts of a live split whose backups this holder is cutting
    /// ([`reshape`]), with the checkpoints that came for them meanwhile:
    /// those wait, so that a part's first increments join its cut backup
    /// instead of being refused. Locked before `held`, never after.
    cutting: Arc<Mutex<HashMap<InstanceId, Vec<BackupShipment>>>>,
}

impl Holdings {
    /// [`Holdings::store`], unless a backup of the shipment's instance is
    /// being cut: then it waits for the cut (`None`), whose end stores it
    /// and answers for it.
    pub(crate) fn store_or_wait(&self, shipment: BackupShipment) -> Option<ToCoordinator> {
        let mut cutting = lock(&self.cutting);
        match cutting.get_mut(&shipment.instance) {
            Some(waiting) => {
                waiting.push(shipment);
                None
            }
            None => Some(self.store(shipment)),
        }
    }

    /// The frontier of the latest checkpoint of `instance` held here.
    fn frontier_of(&self, instance: InstanceId) -> Option<Stamp> {
        self.lock()
            .get(&instance)
            .map(|(_, chain)| chain.frontier())
    }

    /// Stores, in order, the checkpoints of `instance` from incarnations
    /// before `before` that came while its backup waits to be cut (a
    /// split instance's own, not its parts'); returns the answers.
    fn store_waiting_before(
        &self,
        instance: InstanceId,
        before: Incarnation,
    ) -> Vec<ToCoordinator> {
        let mut cutting = lock(&self.cutting);
        let Some(waiting) = cutting.get_mut(&instance) else {
            return Vec::new();
        };
        let (earlier, later): (Vec<_>, Vec<_>) = std::mem::take(waiting)
            .into_iter()
            .partition(|s| s.incarnation < before);
        *waiting = later;
        earlier.into_iter().map(|s| self.store(s)).collect()
    }

    /// Checkpoints of `instances` wait from now on until [`Holdings::cut`]
    /// stores their cut backups.
    fn start_cutting(&self, instances: impl IntoIterator<Item = InstanceId>) {
        let mut cutting = lock(&self.cutting);
        for id in instances {
            cutting.entry(id).or_default();
        }
    }

    /// Stores each part's cut backup (or answers its refusal), then what
    /// waited for it, in order; returns the answers.
    fn cut(
        &self,
        parts: Vec<(InstanceId, Result<BackupShipment, ToCoordinator>)>,
    ) -> Vec<ToCoordinator> {
        let mut cutting = lock(&self.cutting);
        let mut answers = Vec::new();
        for (id, part) in parts {
            answers.push(part.map_or_else(|refused| refused, |shipment| self.store(shipment)));
            for waited in cutting.remove(&id).unwrap_or_default() {
                answers.push(self.store(waited));
            }
        }
        answers
    }

    /// Keeps a shipment if it is good; returns what to tell the
    /// coordinator: stored (with the sizes it shows) or refused.
    pub(crate) fn store(&self, shipment: BackupShipment) -> ToCoordinator {
        let BackupShipment {
            instance,
            incarnation,
            frontier,
            bytes,
        } = shipment;
        let arrived_bytes = bytes.len() as u64;
        let mut held = self.lock();
        let stored = match held.get_mut(&instance) {
            Some((known, _)) if *known > incarnation => Err((
                Refusal::Replaced,
                format!(
                    "incarnation {} of instance {instance} was replaced by {}",
                    incarnation.0, known.0
                ),
            )),
            Some((known, chain)) => {
                *known = incarnation;
                chain
                    .push(frontier, bytes)
                    .map(|()| chain.bytes())
                    .map_err(refusal)
            }
            None => BackupChain::new(frontier, bytes)
                .map(|chain| {
                    let size = chain.bytes();
                    held.insert(instance, (incarnation, chain));
                    size
                })
                .map_err(refusal),
        };
        match stored {
            Ok(held_bytes) => ToCoordinator::BackupStored(BackupAck {
                instance,
                incarnation,
                frontier,
                arrived_bytes,
                held_bytes: held_bytes as u64,
            }),
            Err((refusal, reason)) => {
                tracing::debug!(%instance, "refusing a backup: {reason}");
                ToCoordinator::BackupRefused {
                    instance,
                    refusal,
                    reason,
                }
            }
        }
    }

    /// The whole backup of `instance` (its checkpoints folded), if held,
    /// copied once the lock is released.
    pub(crate) fn fetch(&self, instance: InstanceId) -> Option<Vec<u8>> {
        self.shared(instance).map(|shared| shared.to_vec())
    }

    /// The same, sharing the held bytes: to send, once the lock is
    /// released, without a copy.
    fn shared(&self, instance: InstanceId) -> Option<SharedEncoding> {
        self.lock().get(&instance).map(|(_, chain)| chain.shared())
    }

    /// The part of the backup of `instance` that `range` owns, or its
    /// changes since `since` ([`BackupChain::range_since`]), cut once the
    /// lock is released; `None`: none held. The chain is pinned where the
    /// fetcher will be, so that its next catch-up gets deltas.
    pub(crate) fn range_since(
        &self,
        instance: InstanceId,
        range: KeyRange,
        since: Option<Stamp>,
    ) -> Option<Result<RangeCut, EngineError>> {
        let chain = {
            let mut held = self.lock();
            let (_, chain) = held.get_mut(&instance)?;
            chain.pin();
            chain.clone()
        };
        Some(chain.range_since(range, since))
    }

    /// Where to cut the backup of `instance` into `parts`
    /// ([`BackupChain::cuts`]); `None`: none held.
    pub(crate) fn cuts(
        &self,
        instance: InstanceId,
        parts: usize,
    ) -> Option<Result<Cuts, EngineError>> {
        let chain = self.lock().get(&instance).map(|(_, chain)| chain.clone())?;
        Some(chain.cuts(parts))
    }

    /// A copy of the backup of `instance`, as a checkpoint of
    /// `incarnation` to ship to another holder.
    fn replica(&self, instance: InstanceId, incarnation: Incarnation) -> Option<BackupShipment> {
        let (frontier, shared) = {
            let held = self.lock();
            let (_, chain) = held.get(&instance)?;
            (chain.frontier(), chain.shared())
        };
        Some(BackupShipment {
            instance,
            incarnation,
            frontier,
            bytes: shared.to_vec(),
        })
    }

    /// Forgets the backup of `instance`: it is void.
    pub(crate) fn drop_backup(&self, instance: InstanceId) {
        self.lock().remove(&instance);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, (Incarnation, BackupChain)>> {
        lock(&self.held)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map only means a thread panicked between two statements
    // that each leave it consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a chain did not take a checkpoint, for the coordinator.
fn refusal(e: ChainError) -> (Refusal, String) {
    let kind = match e {
        ChainError::Corrupt(_) => Refusal::Corrupt,
        ChainError::Gap { .. } | ChainError::Reshaped { .. } => Refusal::NotItsBase,
    };
    (kind, e.to_string())
}

/// Serves a backup connection (its handshake not yet read) until the
/// other worker closes it: stores each checkpoint shipped and answers the
/// coordinator for it, and sends back each backup asked for.
pub(crate) fn serve(mut stream: WatchedStream, holdings: &Holdings, writer: &ControlWriter) {
    if let Err(e) = control::read_hello(&mut stream) {
        tracing::warn!("dropping a backup connection: {e}");
        return;
    }
    let _ = stream.set_read_timeout(None);
    let mut reader = BufReader::with_capacity(256 << 10, stream);
    loop {
        let served = match control::recv::<ToHolder>(&mut reader) {
            Ok(Some(ToHolder::Store(header))) => {
                control::recv_shipment(&mut reader, header).map(|shipment| {
                    if let Some(answer) = holdings.store_or_wait(shipment) {
                        reply(writer, &answer);
                    }
                })
            }
            Ok(Some(ToHolder::Fetch {
                instance,
                range: None,
                ..
            })) => send_backup(reader.get_mut(), instance, holdings.shared(instance)),
            Ok(Some(ToHolder::Fetch {
                instance,
                range: Some(range),
                since,
            })) => send_range(
                reader.get_mut(),
                instance,
                holdings.range_since(instance, range, since),
            ),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if let Err(e) = served {
            tracing::debug!("backup connection ended: {e}");
            return;
        }
    }
}

/// Answers a fetch: the frame, then the backup's bytes raw.
fn send_backup(
    stream: &mut impl Write,
    instance: InstanceId,
    backup: Option<SharedEncoding>,
) -> Result<(), EngineError> {
    let held = HeldBackup {
        instance,
        bytes: backup.as_ref().map(|b| b.len() as u64),
        since: None,
    };
    control::send(stream, &held)?;
    backup
        .map_or(Ok(()), |b| b.write_to(stream))
        .and_then(|()| stream.flush())
        .map_err(|e| EngineError::io("sending a backup to a restoring worker", e))
}

/// Answers a fetch of one key range: the frame, then the part's (or the
/// run of deltas') bytes raw. A range the holder cannot cut is answered
/// as none held, so that the asking worker turns to another source.
fn send_range(
    stream: &mut impl Write,
    instance: InstanceId,
    cut: Option<Result<RangeCut, EngineError>>,
) -> Result<(), EngineError> {
    let cut = cut.and_then(|cut| {
        cut.map_err(|e| tracing::warn!(%instance, "cannot cut a range of a backup: {e}"))
            .ok()
    });
    let held = HeldBackup {
        instance,
        bytes: cut.as_ref().map(|(_, bytes)| bytes.len() as u64),
        since: cut.as_ref().and_then(|(since, _)| *since),
    };
    control::send(stream, &held)?;
    cut.map_or(Ok(()), |(_, bytes)| stream.write_all(&bytes))
        .and_then(|()| stream.flush())
        .map_err(|e| EngineError::io("sending a backup's range to a staging worker", e))
}

/// How long a fetch waits for the holder's next bytes: a holder cut off
/// mid-transfer must not hold a restore forever, while a large backup that
/// keeps coming is waited for.
const FETCH_SILENCE: Duration = Duration::from_secs(10);

/// Fetches the whole backup of `instance` from `holder` (a worker about to
/// restore it). An error says why the holder could not give it.
pub(crate) fn fetch_from(
    holder: &BackupHolder,
    instance: InstanceId,
) -> Result<Vec<u8>, EngineError> {
    fetch(holder, instance, None, None).map(|(_, bytes)| bytes)
}

/// Fetches the part of the backup of `instance` that `range` owns from
/// `holder`: with `since` (the frontier of a part staged before), only its
/// changes since, if the holder still has them as deltas. Returns
/// `Some(since)` with a run of deltas ([`Checkpoint::apply_run`]), or
/// `None` with a restorable checkpoint of the range.
pub(crate) fn fetch_range(
    holder: &BackupHolder,
    instance: InstanceId,
    range: KeyRange,
    since: Option<Stamp>,
) -> Result<RangeCut, EngineError> {
    fetch(holder, instance, Some(range), since)
}

fn fetch(
    holder: &BackupHolder,
    instance: InstanceId,
    range: Option<KeyRange>,
    since: Option<Stamp>,
) -> Result<RangeCut, EngineError> {
    let what = range.map_or_else(String::new, |r| format!("range {r:?} of "));
    let context = format!(
        "fetching {what}the backup of instance {instance} from {}",
        holder.addr
    );
    let io = |e| EngineError::io(context.clone(), e);
    let mut stream = connect_peer(&holder.addr).map_err(io)?;
    stream.set_read_timeout(Some(FETCH_SILENCE)).map_err(io)?;
    control::write_hello(&mut stream).map_err(io)?;
    control::send(
        &mut stream,
        &ToHolder::Fetch {
            instance,
            range,
            since,
        },
    )?;
    let held: HeldBackup = control::recv(&mut stream)?.ok_or_else(|| {
        EngineError::Protocol(format!("{context}: the holder closed the connection"))
    })?;
    let answered_since = held.since;
    let len = match held {
        HeldBackup {
            instance: answered,
            bytes: Some(len),
            since: answered_since,
        } if answered == instance
            && len <= MAX_CONTROL_FRAME as u64
            && (answered_since.is_none() || answered_since == since) =>
        {
            len as usize
        }
        HeldBackup { bytes: None, .. } => {
            return Err(EngineError::Checkpoint(format!("{context}: it holds none")))
        }
        other => {
            return Err(EngineError::Protocol(format!(
                "{context}: answered {other:?}"
            )))
        }
    };
    let bytes = crate::wire::read_exactly(&mut stream, len).map_err(io)?;
    tracing::debug!(%instance, holder = %holder.worker, bytes = len, ?range, ?since, "backup fetched from its holder");
    Ok((answered_since, bytes))
}

/// Ships a copy of the backup of `instance` to `to`, a new holder of its
/// route, on a thread of its own. Best effort: a copy that does not
/// arrive leaves the new holder refusing the instance's next increment,
/// and the instance then checkpoints in full to it.
pub(crate) fn replicate(
    holdings: &Holdings,
    watch: &LinkWatch,
    instance: InstanceId,
    incarnation: Incarnation,
    to: BackupHolder,
) {
    let (holdings, watch) = (holdings.clone(), watch.clone());
    let started = thread::Builder::new()
        .name("spate-backup-replica".into())
        .spawn(move || {
            let Some(replica) = holdings.replica(instance, incarnation) else {
                tracing::debug!(%instance, "no backup held to replicate");
                return;
            };
            let bytes = replica.bytes.len();
            let sent = open_backup_connection(&to.addr, &watch)
                .and_then(|mut stream| control::send_shipment(&mut stream, &replica));
            match sent {
                Ok(()) => tracing::debug!(%instance, to = %to.worker, bytes, "backup replicated"),
                Err(e) => {
                    tracing::debug!(%instance, to = %to.worker, "cannot replicate a backup: {e}")
                }
            }
        });
    if let Err(e) = started {
        tracing::warn!(%instance, "cannot start replicating a backup: {e}");
    }
}

/// Answers [`ToWorker::CutBackup`] on a thread of its own (folding a
/// large backup takes a while): where to cut the backup of `instance`.
pub(crate) fn cut(holdings: &Holdings, writer: &ControlWriter, instance: InstanceId, parts: usize) {
    let (holdings, writer) = (holdings.clone(), writer.clone());
    spawn("spate-backup-cuts", move || {
        let (frontier, parts) = match holdings.cuts(instance, parts) {
            Some(Ok(cuts)) => cuts,
            Some(Err(e)) => {
                tracing::warn!(%instance, "cannot cut a backup: {e}");
                (Stamp::ZERO, Vec::new())
            }
            None => (Stamp::ZERO, Vec::new()),
        };
        reply(
            &writer,
            &ToCoordinator::Cuts {
                instance,
                frontier,
                parts,
            },
        );
    });
}

/// How long a holder told to cut a split instance's backup waits for the
/// instance's checkpoint at the split's stop to reach it.
const STOP_PATIENCE: Duration = Duration::from_secs(2);

/// Waits, up to [`STOP_PATIENCE`], until the backup of `instance` held
/// here reaches `frontier`, storing the checkpoints of its incarnations
/// before `before` as they come. The coordinator orders the cut once one
/// holder stored the checkpoint at the stop; this one's copy may still be
/// on its way, and cutting without it left the split's parts one copy
/// short until their next full checkpoints.
fn await_stop_checkpoint(
    holdings: &Holdings,
    writer: &ControlWriter,
    instance: InstanceId,
    before: Incarnation,
    frontier: Stamp,
) {
    let deadline = Instant::now() + STOP_PATIENCE;
    loop {
        for answer in holdings.store_waiting_before(instance, before) {
            reply(writer, &answer);
        }
        match holdings.frontier_of(instance) {
            Some(at) if at < frontier && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            _ => return,
        }
    }
}

/// Carries out [`ToWorker::ReshapeBackup`] on a thread of its own: cuts
/// every part first (the lowest keeps the parent's id, so storing it
/// replaces the backup cut), then stores each as its part's backup and
/// answers for it as for a checkpoint shipped. A part that cannot be cut
/// at `frontier` is refused, and its instance checkpoints in full.
pub(crate) fn reshape(
    holdings: &Holdings,
    writer: &ControlWriter,
    instance: InstanceId,
    frontier: Stamp,
    parts: Vec<ReshapedPart>,
) {
    let ids: Vec<InstanceId> = parts.iter().map(|p| p.instance).collect();
    let split_off = parts
        .iter()
        .find(|p| p.instance == instance)
        .map(|p| p.incarnation);
    let answers = writer.clone();
    store_cut(
        holdings,
        writer,
        ids,
        "spate-backup-reshape",
        move |holdings| {
            if let Some(before) = split_off {
                await_stop_checkpoint(holdings, &answers, instance, before, frontier);
            }
            parts
                .into_iter()
                .map(|part| {
                    let bytes = match holdings.range_since(instance, part.range, None) {
                        Some(Ok((_, bytes))) => match Checkpoint::frontier(&bytes) {
                            Ok(at) if at == frontier => Ok(bytes),
                            Ok(at) => Err(format!(
                                "the backup of instance {instance} is at stamp {}, not at the split's stop at {}",
                                at.0, frontier.0
                            )),
                            Err(e) => Err(e.to_string()),
                        },
                        Some(Err(e)) => Err(e.to_string()),
                        None => Err(format!("no backup of instance {instance} held")),
                    };
                    (part.instance, shipment(part, frontier, bytes))
                })
                .collect()
        },
    );
}

/// Carries out [`ToWorker::MergeBackups`] on a thread of its own: merges
/// the lower partition's backup held here with the upper's (held here too,
/// or fetched from the first of `upper_holders` that gives it), both at
/// `frontier`, then stores the result as the merged instance's backup (the
/// lower's id: it replaces the lower's) and answers for it as for a
/// checkpoint shipped. One that cannot be merged is refused, and the
/// merged instance checkpoints in full.
pub(crate) fn merge_backups(
    holdings: &Holdings,
    writer: &ControlWriter,
    upper: InstanceId,
    frontier: Stamp,
    merged: ReshapedPart,
    upper_holders: Vec<BackupHolder>,
) {
    let lower = merged.instance;
    store_cut(
        holdings,
        writer,
        vec![lower],
        "spate-backup-merge",
        move |holdings| {
            let at_frontier = |id: InstanceId, bytes: Vec<u8>| {
                let checkpoint = Checkpoint::decode_owned(bytes).map_err(|e| e.to_string())?;
                if checkpoint.frontier == frontier {
                    Ok(checkpoint)
                } else {
                    Err(format!(
                        "the backup of instance {id} is at stamp {}, not {}",
                        checkpoint.frontier.0, frontier.0
                    ))
                }
            };
            let upper_bytes = || {
                holdings.fetch(upper).map_or_else(
                    || {
                        let mut reasons = vec![format!("no backup of instance {upper} held")];
                        for holder in &upper_holders {
                            match fetch_from(holder, upper) {
                                Ok(bytes) => return Ok(bytes),
                                Err(e) => reasons.push(e.to_string()),
                            }
                        }
                        Err(reasons.join("; "))
                    },
                    Ok,
                )
            };
            let bytes = holdings
                .fetch(lower)
                .ok_or_else(|| format!("no backup of instance {lower} held"))
                .and_then(|bytes| at_frontier(lower, bytes))
                .and_then(|low| {
                    let high = at_frontier(upper, upper_bytes()?)?;
                    low.merge(high)
                        .and_then(|merged| merged.encode())
                        .map_err(|e| e.to_string())
                });
            vec![(lower, shipment(merged, frontier, bytes))]
        },
    );
}

/// The backup a holder made for `part` at `frontier` as a shipment to
/// store, or, when it could not (`Err`: why), its refusal.
fn shipment(
    part: ReshapedPart,
    frontier: Stamp,
    bytes: Result<Vec<u8>, String>,
) -> Result<BackupShipment, ToCoordinator> {
    bytes
        .map(|bytes| BackupShipment {
            instance: part.instance,
            incarnation: part.incarnation,
            frontier,
            bytes,
        })
        .map_err(|reason| ToCoordinator::BackupRefused {
            instance: part.instance,
            refusal: Refusal::NotItsBase,
            reason,
        })
}

/// Makes the backups of `ids` from those held (`make`, on a thread named
/// `name`) and stores each as its instance's own, answering for it; their
/// checkpoints that arrive meanwhile wait and join it. If the thread
/// cannot start, each is refused (its instance checkpoints in full).
fn store_cut(
    holdings: &Holdings,
    writer: &ControlWriter,
    ids: Vec<InstanceId>,
    name: &str,
    make: impl FnOnce(&Holdings) -> Vec<(InstanceId, Result<BackupShipment, ToCoordinator>)>
        + Send
        + 'static,
) {
    holdings.start_cutting(ids.iter().copied());
    let (held, answers) = (holdings.clone(), writer.clone());
    let cut_all = move || {
        let cut = make(&held);
        for answer in held.cut(cut) {
            reply(&answers, &answer);
        }
    };
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(cut_all) {
        tracing::warn!("cannot start {name}: {e}");
        let refused = ids
            .into_iter()
            .map(|id| {
                let refusal = ToCoordinator::BackupRefused {
                    instance: id,
                    refusal: Refusal::NotItsBase,
                    reason: format!("cannot cut a backup: {e}"),
                };
                (id, Err(refusal))
            })
            .collect();
        for answer in holdings.cut(refused) {
            reply(writer, &answer);
        }
    }
}

/// Carries out [`ToWorker::Stage`] on a thread of its own: fetches the
/// range of `instance`'s backup from the first holder that gives it,
/// restores it as live keyed state into a logic that `logic` makes (its
/// operator's), keeps both in `staged` (a live merge's partition joined
/// with the other's once both are: `merge`) and answers the coordinator.
/// A range staged here before (a warm standby kept current) is caught up
/// in place instead, from the holder it came from ([`refresh`]).
pub(crate) fn stage(
    staged: &Staging,
    writer: &ControlWriter,
    instance: InstanceId,
    range: KeyRange,
    merge: Option<StagedJoin>,
    holders: Vec<BackupHolder>,
    logic: impl FnOnce() -> Result<Box<dyn ProcessLogic>, EngineError> + Send + 'static,
) {
    let (staged, writer) = (staged.clone(), writer.clone());
    spawn("spate-stage", move || {
        // A live merge's partition is staged afresh, to be joined.
        let refreshed = merge
            .is_none()
            .then(|| refresh(&staged, instance, range))
            .flatten();
        let (frontier, keys, reason) = match refreshed {
            Some(Ok((frontier, keys))) => (Some(frontier), keys, String::new()),
            Some(Err(e)) => {
                staged.drop_instance(instance);
                (None, 0, format!("could not catch up: {e}"))
            }
            None => stage_whole(&staged, instance, range, merge, &holders, logic),
        };
        let answer = ToCoordinator::Staged {
            instance,
            range,
            frontier,
            keys,
            reason,
        };
        reply(&writer, &answer);
    });
}

/// Stages `range` of `instance` whole, from the first of `holders` that
/// gives it ([`stage`]): the frontier staged (`None`: it could not), the
/// keys, and why not.
fn stage_whole(
    staged: &Staging,
    instance: InstanceId,
    range: KeyRange,
    merge: Option<StagedJoin>,
    holders: &[BackupHolder],
    logic: impl FnOnce() -> Result<Box<dyn ProcessLogic>, EngineError>,
) -> (Option<Stamp>, usize, String) {
    let mut reasons = Vec::new();
    let (mut frontier, mut keys) = (None, 0);
    let mut logic = Some(logic);
    let room = merge.map_or(0, |m| usize::try_from(m.room).unwrap_or(usize::MAX));
    for holder in holders {
        let fetched = fetch_range(holder, instance, range, None)
            .and_then(|(_, bytes)| Checkpoint::decode_owned(bytes))
            .and_then(|mut part| {
                let make = logic.take().ok_or_else(|| {
                    EngineError::Protocol("the operator's logic was already made".into())
                })?;
                let mut live = make()?;
                live.restore(&part.entries, part.key_range)?;
                live.reserve_keys(room);
                // Its bytes are in the live state now.
                part.entries = Vec::new();
                Ok(StagedPart {
                    part,
                    live,
                    holder: holder.clone(),
                    merge_with: merge.map(|m| m.with),
                })
            });
        match fetched {
            Ok(part) => {
                keys = part.live.state_size().keys as usize;
                frontier = Some(part.part.frontier);
                if let Err(e) = staged.keep(instance, part) {
                    frontier = None;
                    reasons.push(e.to_string());
                }
                break;
            }
            Err(e) => reasons.push(e.to_string()),
        }
        if logic.is_none() {
            break;
        }
    }
    if holders.is_empty() {
        reasons.push("no holder named".into());
    }
    (frontier, keys, reasons.join("; "))
}

/// Catches up the part of `instance` staged for `range`, in place, from
/// the holder it came from: its new frontier and keys. `None` when none is
/// staged. A holder that no longer has the changes since as deltas (a
/// full checkpoint came since) sends the range whole, whose entries are
/// folded in as changes (keyed state only ever adds or updates keys). An
/// error (the holder is gone) makes its caller drop the part: the
/// coordinator stages it again.
fn refresh(
    staged: &Staging,
    instance: InstanceId,
    range: KeyRange,
) -> Option<Result<(Stamp, usize), EngineError>> {
    let (since, holder) = staged.peek(instance, range)?;
    let from = StagedSource {
        parent: instance,
        range,
        since,
        holders: vec![holder.clone()],
    };
    let changes = changes_since(&from, Some((since, holder.worker)))
        .map(|(_, changes)| changes)
        .map_err(|(_, e)| e);
    Some(changes.and_then(|changes| staged.fold(instance, range, since, changes)))
}

/// A part of a backup staged for a live split, a standby or a live
/// merge: its checkpoint but the entries, which are restored as live
/// keyed state in `live`.
pub(crate) struct StagedPart {
    part: Checkpoint,
    live: Box<dyn ProcessLogic>,
    /// The holder it was fetched from.
    holder: BackupHolder,
    /// For a live merge's partition: the other partition, to join with
    /// once it is staged too.
    merge_with: Option<InstanceId>,
}

/// A live merge's two partitions staged and joined into one keyed state
/// ([`ToWorker::Stage`]'s `merge`), until the merge's stop catches it up.
struct JoinedMerge {
    /// The lower partition and the upper.
    parents: [InstanceId; 2],
    /// Each one's staged checkpoint without entries (caught up since),
    /// and the holder it was staged from.
    parts: [(Checkpoint, BackupHolder); 2],
    /// The keyed state of both.
    live: Box<dyn ProcessLogic>,
}

/// What this worker staged of other instances' backups, until restored
/// or called off.
#[derive(Clone, Default)]
pub(crate) struct Staging(Arc<Mutex<Staged>>);

#[derive(Default)]
struct Staged {
    /// Parts staged on their own, by the instance whose backup they are
    /// (a live merge's partition until the other is staged).
    parts: HashMap<InstanceId, Vec<StagedPart>>,
    /// Live merges' partitions joined.
    joined: Vec<JoinedMerge>,
}

impl Staging {
    /// Keeps what was staged of `instance`; a live merge's partition
    /// whose other is staged already is joined with it and the two caught
    /// up (off the lock: it moves the smaller's keys into the other's map).
    fn keep(&self, instance: InstanceId, part: StagedPart) -> Result<(), EngineError> {
        let waiting = {
            let mut staged = self.lock();
            let other = part.merge_with.and_then(|other| {
                let parts = staged.parts.get_mut(&other)?;
                let at = parts.iter().position(|p| p.merge_with == Some(instance))?;
                Some((other, parts.swap_remove(at)))
            });
            match other {
                Some(other) => other,
                None => {
                    let parts = staged.parts.entry(instance).or_default();
                    parts.retain(|p| p.part.key_range != part.part.key_range);
                    parts.push(part);
                    return Ok(());
                }
            }
        };
        let mut joined = join((instance, part), waiting)?;
        joined.catch_up()?;
        let mut staged = self.lock();
        staged.parts.retain(|_, parts| !parts.is_empty());
        staged.joined.retain(|j| j.parents != joined.parents);
        staged.joined.push(joined);
        Ok(())
    }

    /// The frontier of the part of `instance` staged for `range`, and the
    /// holder it came from.
    fn peek(&self, instance: InstanceId, range: KeyRange) -> Option<(Stamp, BackupHolder)> {
        let staged = self.lock();
        let part = staged
            .parts
            .get(&instance)?
            .iter()
            .find(|p| p.part.key_range == range)?;
        Some((part.part.frontier, part.holder.clone()))
    }

    /// Folds `changes`, those since `since`, into the part of `instance`
    /// staged for `range` if it is still at `since`: its new frontier and
    /// keys. A part that failed halfway is dropped.
    fn fold(
        &self,
        instance: InstanceId,
        range: KeyRange,
        since: Stamp,
        changes: Changes,
    ) -> Result<(Stamp, usize), EngineError> {
        let mut staged = self.lock();
        let parts = staged.parts.get_mut(&instance);
        let Some(at) = parts.as_ref().and_then(|parts| {
            parts
                .iter()
                .position(|p| p.part.key_range == range && p.part.frontier == since)
        }) else {
            return Err(EngineError::Protocol(format!(
                "the part of instance {instance} staged at stamp {} was taken meanwhile",
                since.0
            )));
        };
        let parts = parts.expect("found above");
        let StagedPart { part, live, .. } = &mut parts[at];
        match fold_changes(live.as_mut(), vec![(part, range, changes)]) {
            Ok(()) => Ok((
                parts[at].part.frontier,
                parts[at].live.state_size().keys as usize,
            )),
            Err(e) => {
                parts.swap_remove(at);
                Err(e)
            }
        }
    }

    /// Forgets what was staged of `instance`.
    pub(crate) fn drop_instance(&self, instance: InstanceId) {
        let mut staged = self.lock();
        staged.parts.remove(&instance);
        staged.joined.retain(|j| !j.parents.contains(&instance));
    }

    /// The part of `parent` staged for `range`, taken.
    fn take(&self, parent: InstanceId, range: KeyRange) -> Option<StagedPart> {
        let mut staged = self.lock();
        let parts = staged.parts.get_mut(&parent)?;
        let at = parts.iter().position(|p| p.part.key_range == range)?;
        let part = parts.swap_remove(at);
        if parts.is_empty() {
            staged.parts.remove(&parent);
        }
        Some(part)
    }

    /// The joined partitions of the live merge of `parents`, taken.
    fn take_joined(&self, parents: [InstanceId; 2]) -> Option<JoinedMerge> {
        let mut staged = self.lock();
        let at = staged.joined.iter().position(|j| j.parents == parents)?;
        Some(staged.joined.swap_remove(at))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Staged> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A live merge's two staged partitions made one, the smaller's keys
/// moving into the map with room for them ([`KeyedState::absorb`]).
///
/// [`KeyedState::absorb`]: crate::state::KeyedState::absorb
fn join(
    a: (InstanceId, StagedPart),
    b: (InstanceId, StagedPart),
) -> Result<JoinedMerge, EngineError> {
    let started = std::time::Instant::now();
    let ((lower, mut low), (upper, high)) = if a.1.part.key_range.start < b.1.part.key_range.start {
        (a, b)
    } else {
        (b, a)
    };
    let keys = [&low, &high].map(|p| p.live.state_size().keys);
    low.live.absorb_state(high.live.take_state())?;
    tracing::info!(
        %lower,
        %upper,
        "live merge: staged partitions joined ({} + {} keys) in {} ms",
        keys[0],
        keys[1],
        started.elapsed().as_millis()
    );
    Ok(JoinedMerge {
        parents: [lower, upper],
        parts: [(low.part, low.holder), (high.part, high.holder)],
        live: low.live,
    })
}

impl JoinedMerge {
    /// Folds in each partition's changes since it was staged, from the
    /// holder it was staged from, while both partitions still run: the
    /// first partition staged waited for the second, and whatever changed
    /// meanwhile need not be folded in at the merge's stop, which then
    /// asks only for the changes since. A holder that cannot give them
    /// leaves them to the stop; an error is one folding them in (the
    /// joined state is then unusable).
    fn catch_up(&mut self) -> Result<(), EngineError> {
        let started = std::time::Instant::now();
        let mut changes = Vec::new();
        for (parent, (part, holder)) in self.parents.iter().zip(&self.parts) {
            let from = StagedSource {
                parent: *parent,
                range: part.key_range,
                since: part.frontier,
                holders: vec![holder.clone()],
            };
            match changes_since(&from, Some((part.frontier, holder.worker))) {
                Ok((_, since)) => changes.push((part.key_range, since)),
                Err((_, e)) => {
                    tracing::warn!(instance = %parent, "a live merge's staged partitions are caught up at its stop only: {e}");
                    return Ok(());
                }
            }
        }
        let increments: Vec<Option<usize>> = changes.iter().map(|(_, c)| c.increments()).collect();
        let ranges = self
            .parts
            .iter_mut()
            .zip(changes)
            .map(|((part, _), (range, changes))| (part, range, changes))
            .collect();
        fold_changes(self.live.as_mut(), ranges)?;
        tracing::info!(
            lower = %self.parents[0],
            upper = %self.parents[1],
            ?increments,
            "live merge: joined partitions caught up while staged in {} ms",
            started.elapsed().as_millis()
        );
        Ok(())
    }
}

/// The state of a part of a live split ([`RestoreFrom::Staged`]).
pub(crate) enum CaughtUp {
    /// Its live state, staged and caught up: the checkpoint (without
    /// entries: its frontier, output buffer and operator state) and the
    /// logic holding the keyed state for its instance to adopt (kept
    /// whole until then, with whatever its operator prepared: reference
    /// data it loaded stays loaded for the instance's own logic).
    Live(Checkpoint, Box<dyn ProcessLogic>),
    /// Its checkpoint whole: nothing was staged, or no holder still had the
    /// changes since as deltas.
    Whole(Checkpoint),
}

/// The state of a part of a live split ([`RestoreFrom::Staged`]): what was
/// staged of `from`, caught up with the range's changes since; when
/// nothing was staged, or a holder no longer has the changes as deltas,
/// the range's part whole. An error names the last holder tried.
pub(crate) fn catch_up(
    staged: &Staging,
    from: &StagedSource,
) -> Result<CaughtUp, (WorkerId, EngineError)> {
    // A standby kept current may be ahead of the frontier named.
    let part = staged
        .take(from.parent, from.range)
        .filter(|p| p.part.frontier >= from.since);
    let (holder, changes) = changes_since(
        from,
        part.as_ref().map(|p| (p.part.frontier, p.holder.worker)),
    )?;
    match (changes, part) {
        (Changes::Whole(whole), _) => Ok(CaughtUp::Whole(whole)),
        (
            changes,
            Some(StagedPart {
                mut part, mut live, ..
            }),
        ) => {
            fold_changes(live.as_mut(), vec![(&mut part, from.range, changes)])
                .map_err(|e| (holder, e))?;
            Ok(CaughtUp::Live(part, live))
        }
        (Changes::Since(_), None) => Err((holder, unasked_changes())),
    }
}

/// The state of a live merge ([`RestoreFrom::StagedMerge`]): the two
/// partitions joined while staged, caught up with each one's changes
/// since (fetched at once, each from its own holders) in the steps of
/// [`catch_up_steps`]; their checkpoints (frontier, output buffers
/// interleaved into stamp order) merged as a whole-checkpoint merge merges
/// them. Without what was staged, both ranges whole, merged. An error
/// names the last holder tried.
pub(crate) fn catch_up_merge(
    staged: &Staging,
    lower: &StagedSource,
    upper: &StagedSource,
) -> Result<CaughtUp, (WorkerId, EngineError)> {
    let started = std::time::Instant::now();
    let joined = staged.take_joined([lower.parent, upper.parent]);
    let sources = [lower, upper];
    // Caught up since its staging (to `part.frontier`) while staged.
    let staged_at = [0, 1].map(|i| {
        let (part, holder) = &joined.as_ref()?.parts[i];
        (part.frontier >= sources[i].since && part.key_range == sources[i].range)
            .then_some((part.frontier, holder.worker))
    });
    let (low, high) = thread::scope(|scope| {
        let high = scope.spawn(|| changes_since(upper, staged_at[1]));
        let low = changes_since(lower, staged_at[0]);
        let high = high.join().unwrap_or_else(|_| {
            Err((
                WorkerId(0),
                EngineError::Protocol("a catch-up panicked".into()),
            ))
        });
        (low, high)
    });
    let ((_, low), (_, high)) = (low?, high?);
    let fetched_ms = started.elapsed().as_millis();
    let increments = [&low, &high].map(Changes::increments);
    let mut folded_ms = fetched_ms;
    let merged = match (joined, low, high) {
        (Some(joined), low, high) => {
            let JoinedMerge {
                parts: [(mut low_part, _), (mut high_part, _)],
                mut live,
                ..
            } = joined;
            fold_changes(
                live.as_mut(),
                vec![
                    (&mut low_part, lower.range, low),
                    (&mut high_part, upper.range, high),
                ],
            )
            .and_then(|()| {
                folded_ms = started.elapsed().as_millis();
                low_part.merge(high_part)
            })
            .map(|merged| CaughtUp::Live(merged, live))
        }
        (None, Changes::Whole(low), Changes::Whole(high)) => low.merge(high).map(CaughtUp::Whole),
        (None, _, _) => Err(unasked_changes()),
    };
    tracing::info!(
        lower = %lower.parent,
        upper = %upper.parent,
        ?increments,
        "live merge caught up: changes since staging fetched in {fetched_ms} ms, folded in after {folded_ms} ms, checkpoints merged after {} ms",
        started.elapsed().as_millis()
    );
    merged.map_err(|e| (WorkerId(0), e))
}

fn unasked_changes() -> EngineError {
    EngineError::Protocol("a holder sent changes since a frontier not asked for".into())
}

/// A staged range's changes since it was staged, as a holder sent them.
enum Changes {
    /// The increments since the staged frontier, in order.
    Since(Vec<Checkpoint>),
    /// The range whole, at the backup's frontier: nothing was staged, or
    /// the holder had folded the increments away.
    Whole(Checkpoint),
}

impl Changes {
    /// How many increments came (`None`: the range came whole), for the
    /// log.
    fn increments(&self) -> Option<usize> {
        match self {
            Changes::Since(deltas) => Some(deltas.len()),
            Changes::Whole(_) => None,
        }
    }
}

/// The changes of `from`'s range since `staged_at` (the frontier it was
/// staged at and the holder it was staged from), or without it the range
/// whole, from the first of its holders that gives them, and that holder.
/// The holder it was staged from is asked first: it has the changes as
/// deltas, where a copy that began later (a replica) could only send the
/// range whole. An error names the last holder tried.
fn changes_since(
    from: &StagedSource,
    staged_at: Option<(Stamp, WorkerId)>,
) -> Result<(WorkerId, Changes), (WorkerId, EngineError)> {
    let mut holders: Vec<&BackupHolder> = from.holders.iter().collect();
    if let Some((_, first)) = staged_at {
        holders.sort_by_key(|h| h.worker != first);
    }
    let mut last = Err((
        WorkerId(0),
        EngineError::Checkpoint(format!("no holder of instance {} named", from.parent)),
    ));
    for holder in holders {
        let asked = staged_at.map(|(at, _)| at);
        let changes =
            fetch_range(holder, from.parent, from.range, asked).and_then(|(since, bytes)| {
                match since {
                    Some(since) => Checkpoint::decode_run(&bytes, since).map(Changes::Since),
                    None => Checkpoint::decode_owned(bytes).map(Changes::Whole),
                }
            });
        match changes {
            Ok(changes) => return Ok((holder.worker, changes)),
            Err(e) => last = Err((holder.worker, e)),
        }
    }
    last
}

/// Folds each staged range's changes into its checkpoint (frontier,
/// output buffer, operator state; a range that came whole replaces it)
/// and into `live`, the keyed state staged of them all, in the steps of
/// [`catch_up_steps`].
fn fold_changes(
    live: &mut dyn ProcessLogic,
    ranges: Vec<(&mut Checkpoint, KeyRange, Changes)>,
) -> Result<(), EngineError> {
    let runs: Vec<(Vec<Vec<StateEntry>>, KeyRange)> = ranges
        .into_iter()
        .map(|(part, range, changes)| {
            let run = match changes {
                Changes::Whole(mut whole) => {
                    let entries = std::mem::take(&mut whole.entries);
                    *part = whole;
                    vec![entries]
                }
                Changes::Since(deltas) => deltas
                    .into_iter()
                    .map(|delta| {
                        let Checkpoint {
                            frontier,
                            entries,
                            output_buffer,
                            operator_state,
                            ..
                        } = delta;
                        part.frontier = frontier;
                        part.output_buffer =
                            std::mem::take(&mut part.output_buffer).then(output_buffer);
                        part.operator_state = operator_state;
                        entries
                    })
                    .collect(),
            };
            (run, range)
        })
        .collect();
    for step in catch_up_steps(&runs) {
        live.apply_changes(&step)?;
    }
    Ok(())
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(work) {
        tracing::warn!("cannot start {name}: {e}");
    }
}

/// A checkpoint encoded for the wire once, shared by its holders' lanes.
struct Outgoing {
    instance: InstanceId,
    /// Whether it is a full checkpoint (it supersedes everything queued
    /// before it for its instance).
    full: bool,
    shipment: BackupShipment,
}

#[derive(Default)]
struct Routing {
    /// Each instance's holders, as the coordinator last said.
    routes: HashMap<InstanceId, Vec<BackupHolder>>,
    /// A lane per holder address.
    lanes: HashMap<String, Sender<Arc<Outgoing>>>,
    /// Checkpoints taken before their instance had a holder, in order: a
    /// part of a live split checkpoints before the coordinator routes it,
    /// and its holders already hold what it restored from, so its first
    /// increments must reach them (each lost one would cost a full
    /// checkpoint of the part on its thread).
    unrouted: HashMap<InstanceId, Vec<Arc<Outgoing>>>,
}

/// Bytes of checkpoints held back for one instance that has no holder yet;
/// beyond it they are dropped, and the instance checkpoints in full once
/// its holders refuse an increment they cannot join.
const UNROUTED_MAX_BYTES: usize = 256 << 20;

impl Routing {
    /// Keeps `outgoing` until its instance is routed; a full checkpoint
    /// supersedes what waited before it.
    fn hold_back(&mut self, outgoing: Arc<Outgoing>) {
        let waiting = self.unrouted.entry(outgoing.instance).or_default();
        if outgoing.full {
            waiting.clear();
        }
        waiting.push(outgoing);
        let bytes: usize = waiting.iter().map(|o| o.shipment.bytes.len()).sum();
        if bytes > UNROUTED_MAX_BYTES {
            tracing::debug!(instance = %waiting[0].instance, bytes, "no holder routed for too long; checkpoints dropped");
            waiting.clear();
        }
    }
}

/// Ships this worker's instances' checkpoints to their holders.
#[derive(Clone)]
pub(crate) struct Shipper {
    routing: Arc<Mutex<Routing>>,
    watch: LinkWatch,
}

impl Shipper {
    /// Ships over connections watched by `watch`.
    pub(crate) fn new(watch: LinkWatch) -> Self {
        Shipper {
            routing: Arc::default(),
            watch,
        }
    }

    /// Adopts the coordinator's routes, and ships to them what waited for
    /// them. A new holder that cannot join the next increment to what it
    /// holds refuses it, and the instance then checkpoints in full; a
    /// restored instance whose holders hold what it was restored from goes
    /// on with increments.
    pub(crate) fn set_routes(&self, routes: Vec<BackupRoute>) {
        let mut routing = self.lock();
        for route in routes {
            if !route.holders.is_empty() {
                for waited in routing.unrouted.remove(&route.instance).unwrap_or_default() {
                    if let Err(e) = self.send_to(&mut routing, &route.holders, &waited) {
                        tracing::warn!(instance = %route.instance, "cannot ship a checkpoint that waited for its route: {e}");
                    }
                }
            }
            routing.routes.insert(route.instance, route.holders);
        }
    }

    /// Sends a checkpoint to each of its instance's holders. With none
    /// routed yet it waits for its route ([`Shipper::set_routes`]).
    pub(crate) fn ship(&self, shipment: BackupShipment) -> Result<(), EngineError> {
        control::check_shipment(&shipment)?;
        let outgoing = Arc::new(Outgoing {
            instance: shipment.instance,
            full: is_full(&shipment.bytes),
            shipment,
        });
        let mut routing = self.lock();
        let holders = routing
            .routes
            .get(&outgoing.instance)
            .cloned()
            .unwrap_or_default();
        if holders.is_empty() {
            tracing::debug!(instance = %outgoing.instance, "no holder routed yet; checkpoint held back");
            routing.hold_back(outgoing);
            return Ok(());
        }
        self.send_to(&mut routing, &holders, &outgoing)
    }

    fn send_to(
        &self,
        routing: &mut Routing,
        holders: &[BackupHolder],
        outgoing: &Arc<Outgoing>,
    ) -> Result<(), EngineError> {
        for holder in holders {
            let lane = match routing.lanes.get(&holder.addr) {
                Some(lane) => lane.clone(),
                None => {
                    let lane = self.open_lane(&holder.addr)?;
                    routing.lanes.insert(holder.addr.clone(), lane.clone());
                    lane
                }
            };
            // A lane only ends with the process.
            let _ = lane.send(outgoing.clone());
        }
        Ok(())
    }

    fn open_lane(&self, addr: &str) -> Result<Sender<Arc<Outgoing>>, EngineError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (addr, watch) = (addr.to_string(), self.watch.clone());
        thread::Builder::new()
            .name("spate-backup-lane".into())
            .spawn(move || run_lane(&addr, &rx, &watch))
            .map_err(|e| EngineError::io("starting a backup lane", e))?;
        Ok(tx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routing> {
        self.routing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ships what comes for the holder at `addr`, connecting (again) when
/// needed. A checkpoint that cannot be sent is dropped: the holder never
/// acknowledges it, the next increment does not fit what it holds, and the
/// instance checkpoints in full after its refusal.
fn run_lane(addr: &str, rx: &Receiver<Arc<Outgoing>>, watch: &LinkWatch) {
    let mut connection: Option<Box<dyn Write + Send>> = None;
    while let Ok(first) = rx.recv() {
        let batch: Vec<Arc<Outgoing>> = std::iter::once(first).chain(rx.try_iter()).collect();
        for outgoing in latest(batch, |o| Some((o.instance, o.full))) {
            if connection.is_none() {
                connection = open_backup_connection(addr, watch)
                    .map_err(|e| tracing::debug!("cannot ship a backup to {addr}: {e}"))
                    .ok();
            }
            let Some(stream) = connection.as_mut() else {
                continue;
            };
            if let Err(e) = control::send_shipment(stream, &outgoing.shipment) {
                tracing::debug!(instance = %outgoing.instance, "shipping a backup to {addr} failed: {e}");
                connection = None;
            }
        }
    }
}

fn open_backup_connection(
    addr: &str,
    watch: &LinkWatch,
) -> Result<Box<dyn Write + Send>, EngineError> {
    let context = format!("opening a backup connection to {addr}");
    let mut stream = open_peer(addr, Some(watch), &context)?;
    control::write_hello(&mut stream).map_err(|e| EngineError::io(context, e))?;
    Ok(stream)
}

/// Whether an encoded checkpoint stands on its own (full, or a chain): it
/// supersedes every earlier one of its instance.
pub(crate) fn is_full(bytes: &[u8]) -> bool {
    !matches!(Checkpoint::kind(bytes), Ok(CheckpointKind::Delta { .. }))
}

/// Keeps the items of `batch` (in order) that no later full checkpoint of
/// the same instance supersedes: when checkpoints come faster than they
/// can be shipped, only the latest full one and the increments after it
/// are worth shipping. `checkpoint` says of an item which instance's
/// checkpoint it is and whether it is full (`None`: not a checkpoint).
pub(crate) fn latest<T>(
    batch: Vec<T>,
    checkpoint: impl Fn(&T) -> Option<(InstanceId, bool)>,
) -> Vec<T> {
    let mut latest_full: HashMap<InstanceId, usize> = HashMap::new();
    for (i, item) in batch.iter().enumerate() {
        if let Some((instance, true)) = checkpoint(item) {
            latest_full.insert(instance, i);
        }
    }
    batch
        .into_iter()
        .enumerate()
        .filter(|(i, item)| match checkpoint(item) {
            Some((instance, _)) => latest_full.get(&instance).is_none_or(|l| l <= i),
            None => true,
        })
        .map(|(_, item)| item)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;
    use crate::state::testing::encoded;
    use crate::state::CheckpointParts;

    fn shipment(incarnation: u32, frontier: u64, base: Option<u64>) -> BackupShipment {
        BackupShipment {
            instance: InstanceId(7),
            incarnation: Incarnation(incarnation),
            frontier: Stamp(frontier),
            bytes: encoded(frontier, &[], base),
        }
    }

    fn stored(answer: &ToCoordinator) -> bool {
        matches!(answer, ToCoordinator::BackupStored(_))
    }

    fn refused(answer: &ToCoordinator) -> Option<Refusal> {
        match answer {
            ToCoordinator::BackupRefused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }

    #[test]
    fn a_holder_joins_increments_and_refuses_gaps_and_replaced_incarnations() {
        let holdings = Holdings::default();
        assert!(stored(&holdings.store(shipment(0, 10, None))));
        assert!(stored(&holdings.store(shipment(0, 20, Some(10)))));
        // An increment on a checkpoint it does not hold.
        assert_eq!(
            refused(&holdings.store(shipment(0, 40, Some(30)))),
            Some(Refusal::NotItsBase)
        );
        let mut corrupt = shipment(0, 40, None);
        let last = corrupt.bytes.len() - 1;
        corrupt.bytes[last] ^= 0xff;
        assert_eq!(refused(&holdings.store(corrupt)), Some(Refusal::Corrupt));
        // A restored incarnation goes on from what it was restored from.
        assert!(stored(&holdings.store(shipment(1, 30, Some(20)))));
        // The replaced incarnation (a worker declared failed) is refused.
        assert_eq!(
            refused(&holdings.store(shipment(0, 40, None))),
            Some(Refusal::Replaced)
        );
        let whole = Checkpoint::decode(&holdings.fetch(InstanceId(7)).expect("held"));
        assert_eq!(whole.expect("valid").frontier, Stamp(30));
        holdings.drop_backup(InstanceId(7));
        assert!(holdings.fetch(InstanceId(7)).is_none());
    }

    #[test]
    fn a_restoring_worker_fetches_a_whole_backup_from_its_holder() {
        let holdings = Holdings::default();
        assert!(stored(&holdings.store(shipment(0, 10, None))));
        assert!(stored(&holdings.store(shipment(0, 20, Some(10)))));
        let (holder, serving) = serve_fetches(&holdings, 2);
        let fetched = fetch_from(&holder, InstanceId(7)).expect("fetched");
        assert_eq!(fetched, holdings.fetch(InstanceId(7)).expect("held"));
        let restored = Checkpoint::decode_owned(fetched).expect("valid");
        assert_eq!(restored.frontier, Stamp(20));
        let error = fetch_from(&holder, InstanceId(8)).expect_err("none held");
        assert!(error.to_string().contains("holds none"), "{error}");
        serving.join().expect("served");
    }

    /// Serves `fetches` backup connections to `holdings` on a thread: the
    /// holder to fetch from and the thread to join.
    fn serve_fetches(
        holdings: &Holdings,
        fetches: usize,
    ) -> (BackupHolder, thread::JoinHandle<()>) {
        // The holder's control connection, whose answers nobody reads here.
        let coordinator = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let writer: ControlWriter = Arc::new(Mutex::new(
            TcpStream::connect(coordinator.local_addr().expect("bound")).expect("connects"),
        ));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let holder = BackupHolder {
            worker: crate::ids::WorkerId(3),
            addr: listener.local_addr().expect("bound").to_string(),
        };
        let holdings = holdings.clone();
        let watch = LinkWatch::start(writer.clone()).expect("watches");
        let serving = thread::spawn(move || {
            for stream in listener.incoming().take(fetches) {
                serve(
                    watch.watch_incoming(stream.expect("accepts")),
                    &holdings,
                    &writer,
                );
            }
        });
        (holder, serving)
    }

    #[test]
    fn a_staging_worker_fetches_one_range_then_only_its_changes() {
        let holdings = Holdings::default();
        let keys: Vec<u64> = (0..200).collect();
        let changed: Vec<u64> = (0..200).step_by(7).collect();
        assert!(stored(&holdings.store(BackupShipment {
            bytes: encoded(10, &keys, None),
            ..shipment(0, 10, None)
        })));
        let (holder, serving) = serve_fetches(&holdings, 4);
        let (upper, lower) = (
            KeyRange::FULL.split_even(2)[1],
            KeyRange::FULL.split_even(2)[0],
        );
        // Staged while the instance runs: its range only, in full.
        let (since, bytes) = fetch_range(&holder, InstanceId(7), upper, None).expect("fetched");
        assert_eq!(since, None);
        let staged = Checkpoint::decode_owned(bytes).expect("valid");
        assert_eq!((staged.frontier, staged.key_range), (Stamp(10), upper));
        assert!(!staged.entries.is_empty());
        assert!(staged.entries.iter().all(|e| upper.contains(e.hash)));
        // The instance checkpoints again; the staging worker catches up.
        assert!(stored(&holdings.store(BackupShipment {
            bytes: encoded(20, &changed, Some(10)),
            ..shipment(0, 20, Some(10))
        })));
        let (since, run) =
            fetch_range(&holder, InstanceId(7), upper, Some(Stamp(10))).expect("fetched");
        assert_eq!(since, Some(Stamp(10)));
        let caught_up = staged.apply_run(&run).expect("applies");
        let whole = Checkpoint::decode_owned(holdings.fetch(InstanceId(7)).expect("held"));
        let expected = whole
            .expect("valid")
            .partition(&[lower, upper])
            .expect("cut");
        assert_eq!(caught_up, expected[1]);
        // A range of an instance it does not hold.
        let error = fetch_range(&holder, InstanceId(8), upper, None).expect_err("none held");
        assert!(error.to_string().contains("holds none"), "{error}");
        // A catch-up from beyond what it holds.
        let error =
            fetch_range(&holder, InstanceId(7), upper, Some(Stamp(30))).expect_err("behind");
        assert!(error.to_string().contains("holds none"), "{error}");
        serving.join().expect("served");
    }

    /// A holder of instance 7's backup at 10 (200 keys), which answers the
    /// coordinator on `writer`, read at the returned stream; and the keys.
    fn holding_a_split_instance() -> (Holdings, ControlWriter, TcpStream, Vec<u64>) {
        let holdings = Holdings::default();
        let keys: Vec<u64> = (0..200).collect();
        assert!(stored(&holdings.store(BackupShipment {
            bytes: encoded(10, &keys, None),
            ..shipment(0, 10, None)
        })));
        let coordinator = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let writer: ControlWriter = Arc::new(Mutex::new(
            TcpStream::connect(coordinator.local_addr().expect("bound")).expect("connects"),
        ));
        let (answers, _) = coordinator.accept().expect("accepts");
        (holdings, writer, answers, keys)
    }

    /// The backups held of parts 7 and 8.
    fn held_parts(holdings: &Holdings) -> (Checkpoint, Checkpoint) {
        let held = |id: u32| {
            Checkpoint::decode_owned(holdings.fetch(InstanceId(id)).expect("held")).expect("valid")
        };
        (held(7), held(8))
    }

    /// Orders `holdings` to cut instance 7's backup at `at` into two
    /// halves: 7 (incarnation 1) keeps the lower, new part 8 the upper.
    fn reshape_halves(
        holdings: &Holdings,
        writer: &ControlWriter,
        at: u64,
    ) -> (KeyRange, KeyRange) {
        let [lower, upper] = KeyRange::FULL.split_even(2)[..] else {
            panic!("two halves");
        };
        let part = |instance: u32, incarnation: u32, range: KeyRange| ReshapedPart {
            instance: InstanceId(instance),
            incarnation: Incarnation(incarnation),
            range,
        };
        reshape(
            holdings,
            writer,
            InstanceId(7),
            Stamp(at),
            vec![part(7, 1, lower), part(8, 0, upper)],
        );
        (lower, upper)
    }

    /// What the holder stored for the cut into halves, sorted: `first`,
    /// if storing answered at once, and the rest of three answers read
    /// from `answers`. Fails on a refusal.
    fn stored_at(
        first: Option<ToCoordinator>,
        answers: &mut TcpStream,
    ) -> Vec<(InstanceId, Stamp)> {
        let mut acks: Vec<ToCoordinator> = first.into_iter().collect();
        while acks.len() < 3 {
            acks.push(control::recv(answers).expect("reads").expect("answers"));
        }
        let mut stored: Vec<(InstanceId, Stamp)> = acks
            .iter()
            .map(|a| match a {
                ToCoordinator::BackupStored(ack) => (ack.instance, ack.frontier),
                other => panic!("refused: {other:?}"),
            })
            .collect();
        stored.sort();
        stored
    }

    #[test]
    fn a_holder_told_to_cut_before_the_stop_checkpoint_came_waits_for_it() {
        let (holdings, writer, mut answers, _) = holding_a_split_instance();
        // Another holder stored the instance's checkpoint at the stop, 20;
        // this one's copy comes after the order to cut there.
        let (lower, upper) = reshape_halves(&holdings, &writer, 20);
        thread::sleep(Duration::from_millis(30));
        let late = holdings.store_or_wait(BackupShipment {
            bytes: encoded(20, &[3, 150], Some(10)),
            ..shipment(0, 20, Some(10))
        });
        assert!(late.is_none(), "it waits for the cut");
        assert_eq!(
            stored_at(None, &mut answers),
            vec![
                (InstanceId(7), Stamp(20)),
                (InstanceId(7), Stamp(20)),
                (InstanceId(8), Stamp(20))
            ]
        );
        let (low, high) = held_parts(&holdings);
        assert_eq!((low.key_range, low.frontier), (lower, Stamp(20)));
        assert_eq!((high.key_range, high.frontier), (upper, Stamp(20)));
    }

    #[test]
    fn a_holder_cuts_a_split_instance_backup_into_its_parts_and_their_increments_join() {
        let (holdings, writer, mut answers, keys) = holding_a_split_instance();
        let (lower, upper) = reshape_halves(&holdings, &writer, 10);
        // The upper part's first increment, on what it restored from, may
        // come before the cut is done: it waits for it, then joins it.
        let increment = CheckpointParts {
            operator: "count",
            key_range: upper,
            frontier: Stamp(20),
            entries: &[],
            output_buffer: &crate::state::OutputBuffer::default(),
            operator_state: &[],
        }
        .encode_delta(Stamp(10), None)
        .expect("encodes");
        let first = holdings.store_or_wait(BackupShipment {
            instance: InstanceId(8),
            incarnation: Incarnation(0),
            frontier: Stamp(20),
            bytes: increment,
        });
        assert_eq!(
            stored_at(first, &mut answers),
            vec![
                (InstanceId(7), Stamp(10)),
                (InstanceId(8), Stamp(10)),
                (InstanceId(8), Stamp(20))
            ]
        );
        let (low, high) = held_parts(&holdings);
        assert_eq!((low.key_range, low.frontier), (lower, Stamp(10)));
        assert_eq!((high.key_range, high.frontier), (upper, Stamp(20)));
        assert_eq!(low.entries.len() + high.entries.len(), keys.len());
    }

    #[test]
    fn a_full_checkpoint_supersedes_what_was_queued_before_it() {
        let a = InstanceId(1);
        let b = InstanceId(2);
        let batch = vec![
            (a, true, 1),
            (b, true, 2),
            (a, false, 3),
            (a, true, 4),
            (a, false, 5),
        ];
        let kept: Vec<u32> = latest(batch, |(i, full, _)| Some((*i, *full)))
            .into_iter()
            .map(|(_, _, n)| n)
            .collect();
        assert_eq!(kept, vec![2, 4, 5]);
    }

    fn outgoing(frontier: u64, base: Option<u64>) -> Arc<Outgoing> {
        let shipment = shipment(0, frontier, base);
        Arc::new(Outgoing {
            instance: shipment.instance,
            full: is_full(&shipment.bytes),
            shipment,
        })
    }

    #[test]
    fn checkpoints_without_a_route_wait_and_a_full_one_supersedes_them() {
        let mut routing = Routing::default();
        routing.hold_back(outgoing(20, Some(10)));
        routing.hold_back(outgoing(30, Some(20)));
        let waiting = |r: &Routing| -> Vec<Stamp> {
            r.unrouted[&InstanceId(7)]
                .iter()
                .map(|o| o.shipment.frontier)
                .collect()
        };
        assert_eq!(waiting(&routing), vec![Stamp(20), Stamp(30)]);
        routing.hold_back(outgoing(40, None));
        routing.hold_back(outgoing(50, Some(40)));
        assert_eq!(waiting(&routing), vec![Stamp(40), Stamp(50)]);
    }

    #[test]
    fn checkpoints_taken_before_a_route_reach_the_holder_once_it_comes() {
        let holdings = Holdings::default();
        assert!(stored(&holdings.store(shipment(0, 10, None))));
        let (holder, _serving) = serve_fetches(&holdings, 1);
        let coordinator = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let writer: ControlWriter = Arc::new(Mutex::new(
            TcpStream::connect(coordinator.local_addr().expect("bound")).expect("connects"),
        ));
        let shipper = Shipper::new(LinkWatch::start(writer).expect("watches"));
        shipper.ship(shipment(0, 20, Some(10))).expect("held back");
        shipper.ship(shipment(0, 30, Some(20))).expect("held back");
        shipper.set_routes(vec![BackupRoute {
            instance: InstanceId(7),
            holders: vec![holder],
        }]);
        let held = || {
            Checkpoint::decode_owned(holdings.fetch(InstanceId(7)).expect("held"))
                .expect("valid")
                .frontier
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while held() != Stamp(30) {
            assert!(
                std::time::Instant::now() < deadline,
                "the held-back increments never joined the backup (at {:?})",
                held()
            );
            thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A keyed count over `u64`s, whose state encodes as
    /// [`crate::state::testing::encode_count_over`]'s.
    struct Count;

    impl crate::api::StatefulOperator for Count {
        type In = u64;
        type Key = u64;
        type State = u64;
        type Out = u64;
        fn key(input: &u64) -> u64 {
            *input
        }
        fn process(
            &mut self,
            _input: u64,
            state: &mut u64,
            out: &mut crate::api::Output<'_, u64>,
        ) -> Result<(), crate::api::OperatorError> {
            *state += 1;
            out.emit(*state)
        }
    }

    struct Nothing;

    impl crate::api::Source for Nothing {
        type Out = u64;
        fn next(&mut self) -> Result<crate::api::SourceStep<u64>, crate::api::OperatorError> {
            Ok(crate::api::SourceStep::Done)
        }
    }

    /// A fresh logic of operator `count` owning `range`.
    fn count_logic(range: KeyRange) -> Box<dyn ProcessLogic> {
        let mut q = crate::api::QueryBuilder::new();
        let source = q.source("source", 1, |_| Ok(Nothing));
        q.stateful("count", 2, &[source], |_| Ok(Count));
        let query = q.build().expect("builds");
        let ctx = crate::api::InstanceContext {
            operator: "count".into(),
            instance: 7,
            index: 0,
            parallelism: 2,
            key_range: range,
            restoring: true,
            incarnation: Incarnation(0),
        };
        match query.instantiate(query.find("count").expect("count"), &ctx) {
            Ok(crate::api::Logic::Process(logic)) => logic,
            _ => panic!("count is a processing operator"),
        }
    }

    #[test]
    fn a_live_merge_joins_its_partitions_when_staged_and_catches_them_up_twice() {
        use crate::hash::key_hash;
        use crate::state::testing::encode_count_over;
        use crate::state::KeyedState;

        let ranges = KeyRange::FULL.split_even(2);
        let ids = [InstanceId(7), InstanceId(8)];
        let holdings = Holdings::default();
        let mut states: Vec<KeyedState<u64, u64>> = ranges
            .iter()
            .map(|range| {
                let mut state = KeyedState::default();
                for k in (0..300u64).filter(|k| range.contains(key_hash(k))) {
                    *state.get_or_default(k) = k;
                }
                state
            })
            .collect();
        // Each partition checkpoints at `frontier`, touching `keys` first.
        let mut checkpoint = |frontier: u64, keys: &[u64], base: Option<u64>| {
            for k in keys {
                let p = usize::from(ranges[1].contains(key_hash(k)));
                *states[p].get_or_default(*k) += frontier;
            }
            for p in 0..2 {
                let entries = match base {
                    Some(_) => states[p].snapshot_changes(),
                    None => states[p].snapshot(),
                }
                .expect("snapshots");
                let bytes = encode_count_over(ranges[p], &entries, frontier, base, &[]);
                assert!(stored(&holdings.store(BackupShipment {
                    instance: ids[p],
                    incarnation: Incarnation(0),
                    frontier: Stamp(frontier),
                    bytes,
                })));
            }
        };
        checkpoint(10, &[], None);
        // Two fetches to stage, two to catch up while staged, two at the stop.
        let (holder, serving) = serve_fetches(&holdings, 6);
        let staging = Staging::default();
        let stage = |p: usize| {
            let (_, bytes) = fetch_range(&holder, ids[p], ranges[p], None).expect("fetched");
            let mut part = Checkpoint::decode_owned(bytes).expect("valid");
            let mut live = count_logic(ranges[p]);
            live.restore(&part.entries, part.key_range)
                .expect("restores");
            part.entries = Vec::new();
            let part = StagedPart {
                part,
                live,
                holder: holder.clone(),
                merge_with: Some(ids[1 - p]),
            };
            staging.keep(ids[p], part).expect("kept");
        };
        // The upper is staged first and waits; both change; the lower's
        // staging joins the two and catches both up.
        stage(1);
        checkpoint(20, &(0..300).step_by(3).collect::<Vec<_>>(), Some(10));
        stage(0);
        assert!(staging.lock().parts.is_empty());
        assert_eq!(staging.lock().joined[0].parents, ids);
        let frontiers = staging.lock().joined[0]
            .parts
            .each_ref()
            .map(|(part, _)| part.frontier);
        assert_eq!(frontiers, [Stamp(20); 2]);
        // The stop: both change again; the catch-up asks for what changed
        // since 20, though the coordinator names the frontier staged.
        checkpoint(30, &(0..300).step_by(7).collect::<Vec<_>>(), Some(20));
        let sources = [0, 1].map(|p| StagedSource {
            parent: ids[p],
            range: ranges[p],
            since: Stamp(10),
            holders: vec![holder.clone()],
        });
        let CaughtUp::Live(merged, state) =
            catch_up_merge(&staging, &sources[0], &sources[1]).expect("caught up")
        else {
            panic!("the joined state was caught up live");
        };
        assert!(staging.lock().joined.is_empty());
        assert_eq!(
            (merged.frontier, merged.key_range),
            (Stamp(30), KeyRange::FULL)
        );
        // The state of restoring the merge of the two folded backups,
        // loads too: both partitions took as many increments.
        let folded = ids
            .map(|id| Checkpoint::decode_owned(holdings.fetch(id).expect("held")).expect("valid"));
        let [lower, upper] = folded;
        let whole = lower.merge(upper).expect("merges");
        let mut expected: KeyedState<u64, u64> =
            KeyedState::restore(&whole.entries, whole.key_range).expect("restores");
        let mut state = *state
            .take_state()
            .downcast::<KeyedState<u64, u64>>()
            .expect("count's keyed state");
        assert_eq!(state.encoded_bytes(), expected.encoded_bytes());
        assert_eq!(
            state.snapshot().expect("snapshots"),
            expected.snapshot().expect("snapshots")
        );
        serving.join().expect("served");
    }
}
