//! The sending side of an instance: per-downstream-instance batches, routing
//! by key-hash range, flushing with progress marks, and the output buffer
//! that keeps sent batches for replay until downstream checkpoints cover them.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::api::{Emit, OperatorError, Query};
use crate::error::EngineError;
use crate::plan::{AddedInstance, Incarnation, InstanceId, MergedInstance, Plan, WorkerId};
use crate::stamp::merge::encode_tuple;
use crate::stamp::Stamp;
use crate::state::{OutputBuffer, RoutingTable};
use crate::wire::data::{seal_batch, write_hello, ChannelHello, BATCH_HEADER};

use super::input::ControlEvent;
use super::local::Locality;
use super::watch::{open_peer, LinkWatch};

/// A batch grows to about this many bytes before it is sent on its own.
/// Fewer, larger batches mean fewer hand-overs, wake-ups and merge steps
/// per tuple: on two cores, Linear Road ran about 9 % faster with 256 KiB
/// than with 64 KiB (docs/BENCH.md, "The feeder's read buffer, and larger
/// batches shared not copied").
const FLUSH_BYTES: usize = 256 << 10;

/// Room a batch's frame is allocated with: a full batch plus the tuple that
/// filled it, so that the frame is not reallocated on the way.
const FRAME_CAPACITY: usize = FLUSH_BYTES + (16 << 10);

/// Which running instance an outbox sends as, and reports as: the instance
/// and its incarnation, as its channel hellos name it so that a downstream
/// can tell a new incarnation's batches from an old one's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SenderIdentity {
    pub(crate) instance: InstanceId,
    pub(crate) incarnation: Incarnation,
}

/// Time an outbox's writes took, shared by its channel writers: a write
/// waits while a downstream that does not keep up has its window closed,
/// and that time is load offered to the downstream, not work done here.
#[derive(Clone, Debug, Default)]
struct WriteTime(Arc<AtomicU64>);

impl WriteTime {
    fn add(&self, since: Instant) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    fn secs(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// Where a data channel's frames go: a connection to another worker, or
/// the inbox of an instance in this worker (`super::local`).
pub(crate) trait FrameLink: Send {
    /// Sends one whole frame, header and body, blocking while the receiver
    /// does not keep up; an error means the channel broke.
    fn send_frame(&mut self, frame: Bytes) -> std::io::Result<()>;
}

impl<W: Write + Send> FrameLink for W {
    fn send_frame(&mut self, frame: Bytes) -> std::io::Result<()> {
        self.write_all(&frame)
    }
}

/// Opens data channel number `connection` of `from` to incarnation
/// `to_incarnation` of instance `to` at `addr`, watched by `watch` (a peer
/// that cannot be reached in time is reported to it).
fn connect(
    from: SenderIdentity,
    to: InstanceId,
    to_incarnation: Incarnation,
    connection: u32,
    addr: &str,
    watch: Option<&LinkWatch>,
) -> Result<Box<dyn Write + Send>, EngineError> {
    let context = format!("opening data channel {}->{to} to {addr}", from.instance);
    let mut stream = open_peer(addr, watch, &context)?;
    write_hello(
        &mut stream,
        ChannelHello {
            from: from.instance,
            incarnation: from.incarnation,
            to,
            connection,
            to_incarnation,
        },
    )
    .map_err(|e| EngineError::io(format!("greeting instance {to} at {addr}"), e))?;
    Ok(stream)
}

/// A data channel opened off the instance's thread, handed back to the
/// instance through its control queue ([`ControlEvent::LinkOpened`]): a
/// downstream that cannot be reached (its host was just cut off) must not
/// hold the instance up for the whole connect timeout.
pub(crate) struct OpenedLink {
    /// The incarnation of this instance that asked: one that replaced it
    /// on this worker drops the link.
    by: Incarnation,
    to: InstanceId,
    connection: u32,
    link: Result<Box<dyn FrameLink>, EngineError>,
}

/// What opening a channel gave.
enum Link {
    Open(Box<dyn FrameLink>),
    /// Being opened off the instance's thread.
    Opening,
    /// Unreachable for now: a recovery or a rewire opens it again.
    Down,
}

/// A downstream `to` that could not be connected to: with fault
/// tolerance on, a channel down until a recovery or a rewire opens it.
fn unreachable(to: InstanceId, e: &EngineError) -> Link {
    tracing::warn!(%to, "cannot reach downstream yet: {e}");
    Link::Down
}

/// One outgoing data channel (this instance -> one downstream instance).
struct ChannelWriter {
    to: InstanceId,
    /// The operator `to` is an instance of, and the first key hash of its
    /// range: where its batches were kept before it was split off.
    node: usize,
    start: u64,
    /// The incarnation of `to` the current connection goes to.
    incarnation: Incarnation,
    /// Where that incarnation runs: a rewire picks channels by worker.
    at: Peer,
    /// The number of the current connection (0 for the first).
    connection: u32,
    /// `None` while the downstream is down: batches then only go to the
    /// output buffer, and are replayed when the channel is rewired.
    stream: Option<Box<dyn FrameLink>>,
    /// Connection number `connection` is being opened off this thread;
    /// its batches are replayed once it is handed back.
    opening: bool,
    frame: Vec<u8>,
    frame_last: Stamp,
    sent_mark: Stamp,
    /// When `to` last had this instance trim its batches: its latest
    /// checkpoint was backed up then.
    trimmed_at: Option<Instant>,
    written: WriteTime,
}

impl ChannelWriter {
    fn new(to: InstanceId, incarnation: Incarnation, at: Peer, written: WriteTime) -> Self {
        ChannelWriter {
            to,
            node: usize::MAX,
            start: 0,
            incarnation,
            at,
            connection: 0,
            stream: None,
            opening: false,
            frame: vec![0; BATCH_HEADER],
            frame_last: Stamp::ZERO,
            sent_mark: Stamp::ZERO,
            trimmed_at: None,
            written,
        }
    }

    /// Takes what opening the channel gave: an open link, one still
    /// being opened, or none for now.
    fn attach(&mut self, link: Link) {
        (self.stream, self.opening) = match link {
            Link::Open(stream) => (Some(stream), false),
            Link::Opening => (None, true),
            Link::Down => (None, false),
        };
    }

    fn write(&mut self, frame: Bytes) {
        if let Some(stream) = &mut self.stream {
            let started = Instant::now();
            let written = stream.send_frame(frame);
            self.written.add(started);
            if let Err(e) = written {
                // The downstream died; the coordinator will restore it and
                // rewire this channel, and the buffer will be replayed.
                tracing::warn!(to = %self.to, "data channel broke: {e}");
                self.stream = None;
            }
        }
    }

    fn flush(&mut self, mark: Stamp, buffer: Option<&mut OutputBuffer>) {
        let has_tuples = self.frame.len() > BATCH_HEADER;
        if !has_tuples && mark <= self.sent_mark {
            return;
        }
        let mark = mark.max(self.sent_mark);
        seal_batch(&mut self.frame, mark);
        let frame = self.take_frame();
        if has_tuples {
            if let Some(buffer) = buffer {
                buffer.push(self.to.0, self.frame_last, frame.slice(BATCH_HEADER..));
            }
        }
        self.write(frame);
        self.sent_mark = mark;
    }

    /// The sealed frame, to send and to keep, leaving an empty one. A full
    /// batch hands its allocation over, so that the output buffer and an
    /// in-process downstream share it with no copy; a small one (a round's
    /// last few tuples, a bare mark) is copied out, so that what the buffer
    /// keeps does not hold a whole batch's room, and the frame is reused.
    fn take_frame(&mut self) -> Bytes {
        let frame = if self.frame.len() >= FLUSH_BYTES / 2 {
            std::mem::replace(&mut self.frame, Vec::with_capacity(FRAME_CAPACITY)).into()
        } else {
            Bytes::copy_from_slice(&self.frame)
        };
        self.frame.truncate(BATCH_HEADER);
        self.frame.resize(BATCH_HEADER, 0);
        frame
    }
}

/// The worker a downstream instance runs on, and its data address.
#[derive(Clone)]
struct Peer {
    worker: WorkerId,
    addr: String,
}

/// Everything an instance sends: one routing table per output edge, one
/// writer per downstream instance, and (with fault tolerance on) the output
/// buffer.
pub struct Outbox {
    me: SenderIdentity,
    stamp: Stamp,
    /// Mark sent with batches flushed because they were full: the frontier
    /// completed before the current round.
    mark_floor: Stamp,
    ports: Vec<RoutingTable<usize>>,
    channels: Vec<ChannelWriter>,
    buffer: Option<OutputBuffer>,
    tuples_out: u64,
    /// Watches the channels for stalls, when running in a worker.
    watch: Option<LinkWatch>,
    /// The worker this outbox runs in, whose instances it reaches without
    /// TCP; `None` connects to every downstream over TCP.
    local: Option<Locality>,
    /// Time every channel's writes took.
    written: WriteTime,
}

impl Outbox {
    /// An outbox with no channels yet: [`Outbox::reconcile`] opens them.
    pub(crate) fn new(me: SenderIdentity, buffering: bool) -> Self {
        Outbox {
            me,
            stamp: Stamp::ZERO,
            mark_floor: Stamp::ZERO,
            ports: Vec::new(),
            channels: Vec::new(),
            buffer: buffering.then(OutputBuffer::default),
            tuples_out: 0,
            watch: None,
            local: None,
            written: WriteTime::default(),
        }
    }

    /// Has `watch` watch every channel this outbox opens from now on.
    pub(crate) fn with_watch(mut self, watch: LinkWatch) -> Self {
        self.watch = Some(watch);
        self
    }

    /// Sends to the instances of the worker `local` describes in process.
    pub(crate) fn with_locality(mut self, local: Locality) -> Self {
        self.local = Some(local);
        self
    }

    /// Brings the channels and routing in line with `plan`: opens channels
    /// to new downstream instances (replaying their parent's buffered
    /// batches: each half of a split keeps what it owns), reconnects to
    /// restored ones (replaying their own), and rebuilds the routing tables.
    pub(crate) fn reconcile(
        &mut self,
        plan: &Plan,
        query: &Query,
        node: usize,
        added: &[AddedInstance],
        merged: &[MergedInstance],
    ) -> Result<(), EngineError> {
        // Unsent batches go to the buffer first (promising no new progress):
        // what a split's new partition inherits, a merged channel folds in
        // and a rewired channel replays is then everything sent so far, in
        // order, and nothing goes out behind a replay.
        for channel in &mut self.channels {
            let mark = channel.sent_mark;
            channel.flush(mark, self.buffer.as_mut());
        }
        for m in merged {
            let Some(i) = self.channels.iter().position(|c| c.to == m.id) else {
                continue;
            };
            self.channels.remove(i);
            if let Some(buffer) = &mut self.buffer {
                buffer.absorb(m.id.0, m.into.0, m.frontier)?;
            }
        }
        let mut targets = plan.downstream_instances(query, node);
        targets.dedup();
        for to in targets {
            self.wire(plan, to, added)?;
        }
        for channel in &mut self.channels {
            if let Some((node, placed)) = plan.instance(channel.to) {
                channel.node = node;
                channel.start = placed.key_range.start;
            }
        }
        self.ports = Vec::new();
        for &target in query.edge_targets(node) {
            let table = plan.routing(target)?;
            let channels = &self.channels;
            self.ports.push(table.map(|to| {
                channels
                    .iter()
                    .position(|c| c.to == *to)
                    .expect("every routed instance has a channel")
            }));
        }
        Ok(())
    }

    /// Opens the channel to downstream `to` if it has none (a new
    /// instance of a split takes over its parent's buffered batches), or
    /// reconnects and replays it if `to` was restored or the channel broke.
    fn wire(
        &mut self,
        plan: &Plan,
        to: InstanceId,
        added: &[AddedInstance],
    ) -> Result<(), EngineError> {
        let (_, placed) = plan.instance(to).ok_or_else(|| {
            EngineError::InvalidQuery(format!("instance {to} is not in the plan"))
        })?;
        let incarnation = placed.incarnation;
        let at = Peer {
            worker: placed.worker,
            addr: plan.addr_of(to).unwrap_or_default().to_string(),
        };
        match self.channels.iter().position(|c| c.to == to) {
            None => {
                let link = self.try_connect(to, incarnation, 0, &at)?;
                let mut channel = ChannelWriter::new(to, incarnation, at, self.written.clone());
                channel.attach(link);
                self.channels.push(channel);
                let i = self.channels.len() - 1;
                if let Some(parent) = added.iter().find(|a| a.id == to).map(|a| a.parent) {
                    self.inherit(i, parent);
                }
            }
            Some(i)
                if self.channels[i].incarnation != incarnation
                    || (self.channels[i].stream.is_none() && !self.channels[i].opening) =>
            {
                self.channels[i].incarnation = incarnation;
                self.channels[i].at = at;
                self.reconnect(i)?;
            }
            Some(i) => self.channels[i].at = at,
        }
        Ok(())
    }

    /// Reconnects and replays every channel to an instance on `worker`
    /// over TCP, open or not: one of them stalled and the coordinator found
    /// that the stall healed. A channel the stall shut looks open here
    /// until its next write, and one with nothing to send makes none.
    pub(crate) fn rewire(&mut self, worker: WorkerId) -> Result<(), EngineError> {
        if self.local.as_ref().is_some_and(|l| l.worker == worker) {
            return Ok(());
        }
        for i in 0..self.channels.len() {
            if self.channels[i].at.worker != worker {
                continue;
            }
            let mark = self.channels[i].sent_mark;
            self.channels[i].flush(mark, self.buffer.as_mut());
            tracing::info!(to = %self.channels[i].to, "reconnecting a data channel whose stall healed");
            self.reconnect(i)?;
        }
        Ok(())
    }

    /// Opens channel `i` afresh to the incarnation and place it names, and
    /// replays what the buffer holds for it.
    fn reconnect(&mut self, i: usize) -> Result<(), EngineError> {
        // A new number makes the receiver drop what it holds of this
        // channel; only a replay may ask for that.
        let replays = self.buffer.is_some();
        let channel = &self.channels[i];
        let (to, incarnation) = (channel.to, channel.incarnation);
        let connection = channel.connection + u32::from(replays);
        let link = self.try_connect(to, incarnation, connection, &channel.at)?;
        self.channels[i].attach(link);
        self.channels[i].connection = connection;
        self.replay(i, to);
        self.reannounce(i);
        Ok(())
    }

    /// Installs a channel opened off this thread, unless a later plan or
    /// rewire replaced it (the link then closes unused), and replays what
    /// the buffer holds for it, what came while it was opened included.
    pub(crate) fn link_opened(&mut self, opened: OpenedLink) {
        if opened.by != self.me.incarnation {
            return;
        }
        let Some(i) = self
            .channels
            .iter()
            .position(|c| c.to == opened.to && c.opening && c.connection == opened.connection)
        else {
            return;
        };
        match opened.link {
            Ok(link) => {
                // What waits in the batch goes to the buffer first, so
                // that the replay sends it in order.
                let mark = self.channels[i].sent_mark;
                self.channels[i].flush(mark, self.buffer.as_mut());
                self.channels[i].attach(Link::Open(link));
                self.replay(i, opened.to);
                self.reannounce(i);
            }
            Err(e) => self.channels[i].attach(unreachable(opened.to, &e)),
        }
    }

    /// Connects to a downstream; with fault tolerance on, a downstream that
    /// cannot be reached (it is failing, and its recovery will rewire us) is
    /// a broken channel whose batches wait in the buffer, not an error, and
    /// in a worker a connection over TCP is opened off this thread
    /// ([`Outbox::link_opened`]).
    fn try_connect(
        &self,
        to: InstanceId,
        incarnation: Incarnation,
        connection: u32,
        at: &Peer,
    ) -> Result<Link, EngineError> {
        let opened: Result<Box<dyn FrameLink>, EngineError> = match &self.local {
            Some(local) if local.worker == at.worker => local
                .open(self.me, to, incarnation, connection)
                .map(|link| Box::new(link) as Box<dyn FrameLink>),
            Some(local) if self.buffer.is_some() => {
                return Ok(self.open_remote(local, to, incarnation, connection, at));
            }
            _ => connect(
                self.me,
                to,
                incarnation,
                connection,
                &at.addr,
                self.watch.as_ref(),
            )
            .map(|stream| Box::new(stream) as Box<dyn FrameLink>),
        };
        match opened {
            Ok(stream) => Ok(Link::Open(stream)),
            Err(e) if self.buffer.is_some() => Ok(unreachable(to, &e)),
            Err(e) => Err(e),
        }
    }

    /// Opens a TCP channel on a thread of its own, which hands it to this
    /// instance through its control queue.
    fn open_remote(
        &self,
        local: &Locality,
        to: InstanceId,
        incarnation: Incarnation,
        connection: u32,
        at: &Peer,
    ) -> Link {
        let (me, addr, watch, inboxes) = (
            self.me,
            at.addr.clone(),
            self.watch.clone(),
            local.inboxes.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("spate-connect-{}", me.instance))
            .spawn(move || {
                let link = connect(me, to, incarnation, connection, &addr, watch.as_ref())
                    .map(|stream| Box::new(stream) as Box<dyn FrameLink>);
                let opened = OpenedLink {
                    by: me.incarnation,
                    to,
                    connection,
                    link,
                };
                inboxes.control(me.instance, ControlEvent::LinkOpened(opened));
            });
        match spawned {
            Ok(_) => Link::Opening,
            Err(e) => {
                tracing::warn!(%to, "cannot start opening a data channel: {e}");
                Link::Down
            }
        }
    }

    /// A new channel `i` takes over the buffered batches of `parent`: they
    /// are replayed to it and kept for it, in case it fails before its
    /// first checkpoint.
    fn inherit(&mut self, i: usize, parent: InstanceId) {
        let Some(buffer) = &mut self.buffer else {
            return;
        };
        let to = self.channels[i].to;
        buffer.copy(parent.0, to.0);
        self.replay(i, to);
        let mark = self
            .channels
            .iter()
            .find(|c| c.to == parent)
            .map_or(Stamp::ZERO, |c| c.sent_mark);
        self.channels[i].flush(mark, None);
    }

    /// Re-announces on a fresh connection the progress already promised.
    fn reannounce(&mut self, i: usize) {
        let channel = &mut self.channels[i];
        let mark = channel.sent_mark;
        channel.sent_mark = Stamp::ZERO;
        channel.flush(mark, None);
    }

    /// The stamp outputs get: that of the input being processed.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    pub(crate) fn set_stamp(&mut self, stamp: Stamp) {
        self.stamp = stamp;
    }

    pub(crate) fn set_mark_floor(&mut self, mark: Stamp) {
        self.mark_floor = mark;
    }

    pub(crate) fn tuples_out(&self) -> u64 {
        self.tuples_out
    }

    /// Seconds spent writing to downstreams so far, mostly blocked on
    /// those that do not keep up.
    pub(crate) fn blocked_secs(&self) -> f64 {
        self.written.secs()
    }

    /// Sends every pending batch, and `mark` on every channel.
    pub(crate) fn flush(&mut self, mark: Stamp) {
        for channel in &mut self.channels {
            channel.flush(mark, self.buffer.as_mut());
        }
    }

    /// The output buffer, for a checkpoint.
    pub(crate) fn buffer(&self) -> Option<&OutputBuffer> {
        self.buffer.as_ref()
    }

    /// Bytes held for replay.
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffer.as_ref().map_or(0, OutputBuffer::bytes)
    }

    /// Downstream `to` checkpointed at `frontier`: what it covers can go.
    pub(crate) fn trim(&mut self, to: InstanceId, frontier: Stamp) {
        if let Some(buffer) = &mut self.buffer {
            buffer.trim(to.0, frontier);
        }
        if let Some(channel) = self.channels.iter_mut().find(|c| c.to == to) {
            channel.trimmed_at = Some(Instant::now());
        }
    }

    /// Whether the buffer holds batches for a downstream that has not had
    /// them trimmed since `since`: a checkpoint now would carry them,
    /// though that downstream's next backup may cover them.
    pub(crate) fn untrimmed_since(&self, since: Instant) -> bool {
        let Some(buffer) = &self.buffer else {
            return false;
        };
        self.channels.iter().any(|c| {
            c.trimmed_at.is_none_or(|at| at < since) && buffer.replay(c.to.0).next().is_some()
        })
    }

    /// Takes over the output buffer of a restored checkpoint and resends it
    /// on every channel: downstreams drop what they already processed.
    pub(crate) fn restore_buffer(&mut self, buffer: OutputBuffer, mark: Stamp) {
        self.buffer = Some(buffer);
        self.adopt_orphans();
        for i in 0..self.channels.len() {
            let to = self.channels[i].to;
            self.replay(i, to);
        }
        self.flush(mark);
    }

    /// Gives each downstream the restored buffer has no entry for the
    /// batches of the instance it was split from. A checkpoint taken before
    /// a downstream split (the latest backup, or a split's checkpoint that
    /// was waiting in the coordinator's queue) keeps what it sent to the
    /// parent's whole range under the parent alone; replaying that to the
    /// parent only would lose, for the new instance, every tuple above the
    /// new instance's frontier and at or below this checkpoint's (it is not
    /// regenerated, and the new instance's channel from here was reset). A
    /// split leaves the parent's id on the lower part of its range, so the
    /// parent is the nearest instance below the orphan, in key order, that
    /// the buffer has an entry for; the orphan keeps only its own range of
    /// the copy and drops what it already processed.
    fn adopt_orphans(&mut self) {
        let Some(buffer) = &mut self.buffer else {
            return;
        };
        let adoptions: Vec<(InstanceId, InstanceId)> = self
            .channels
            .iter()
            .filter(|orphan| !buffer.holds(orphan.to.0))
            .filter_map(|orphan| {
                self.channels
                    .iter()
                    .filter(|c| {
                        c.node == orphan.node && c.start < orphan.start && buffer.holds(c.to.0)
                    })
                    .max_by_key(|c| c.start)
                    .map(|parent| (parent.to, orphan.to))
            })
            .collect();
        for (parent, orphan) in adoptions {
            buffer.copy(parent.0, orphan.0);
        }
    }

    /// Resends on channel `channel` the batches buffered for instance `of`.
    fn replay(&mut self, channel: usize, of: InstanceId) {
        let Some(buffer) = &self.buffer else { return };
        let writer = &mut self.channels[channel];
        // A channel that is down or still opening is replayed once it is
        // open ([`Outbox::link_opened`], a rewire); framing the buffer for
        // it now would only be thrown away.
        if writer.stream.is_none() {
            return;
        }
        for batch in buffer.replay(of.0) {
            let mut frame = Vec::with_capacity(BATCH_HEADER + batch.body.len());
            frame.resize(BATCH_HEADER, 0);
            frame.extend_from_slice(&batch.body);
            seal_batch(&mut frame, Stamp::ZERO);
            writer.write(frame.into());
        }
    }
}

impl Emit for Outbox {
    fn stamp(&self) -> Stamp {
        self.stamp
    }

    fn send_with(
        &mut self,
        port: usize,
        hash: u64,
        encode: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        let channel = *self
            .ports
            .get(port)
            .ok_or_else(|| OperatorError::new(format!("no output edge {port}")))?
            .route(hash);
        let writer = &mut self.channels[channel];
        encode_tuple(&mut writer.frame, self.stamp, encode)?;
        writer.frame_last = self.stamp;
        self.tuples_out += 1;
        if writer.frame.len() >= FLUSH_BYTES {
            writer.flush(self.mark_floor, self.buffer.as_mut());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::stamp::merge::{read_tuple, write_tuple};
    use crate::wire::data::read_batch;

    /// A data channel that keeps what is written to it.
    #[derive(Clone, Default)]
    struct Wire(Arc<Mutex<Vec<u8>>>);

    impl Write for Wire {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A downstream whose window stays closed for a while before each
    /// write goes through.
    struct Slow(std::time::Duration);

    impl Write for Slow {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.0);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A downstream in the same worker, as the outbox sees it: it keeps
    /// the frames handed to it.
    #[derive(Clone, Default)]
    struct Handed(Arc<Mutex<Vec<Bytes>>>);

    impl FrameLink for Handed {
        fn send_frame(&mut self, frame: Bytes) -> std::io::Result<()> {
            self.0.lock().unwrap().push(frame);
            Ok(())
        }
    }

    /// Worker `worker`, listening at `addr`.
    fn on_worker(worker: u32, addr: &str) -> Peer {
        Peer {
            worker: WorkerId(worker),
            addr: addr.to_string(),
        }
    }

    /// An outbox of instance 1 with a channel to each of `links`, each
    /// instance on the worker of its own number.
    fn outbox_to(buffering: bool, links: Vec<(u32, Box<dyn FrameLink>)>) -> Outbox {
        let me = SenderIdentity {
            instance: InstanceId(1),
            incarnation: Incarnation(0),
        };
        let mut outbox = Outbox::new(me, buffering);
        for (to, stream) in links {
            let mut channel = ChannelWriter::new(
                InstanceId(to),
                Incarnation(0),
                on_worker(to, ""),
                outbox.written.clone(),
            );
            channel.attach(Link::Open(stream));
            outbox.channels.push(channel);
        }
        outbox
    }

    #[test]
    fn a_flushed_batch_is_one_allocation_that_the_output_buffer_and_the_downstream_share() {
        let handed = Handed::default();
        let link = Box::new(handed.clone()) as Box<dyn FrameLink>;
        let mut outbox = outbox_to(true, vec![(2, link)]);
        let mut stamp = 0;
        // A full batch, then a round's tail of one tuple.
        for tuples in [FLUSH_BYTES / 100, 1] {
            let writer = &mut outbox.channels[0];
            for _ in 0..tuples {
                stamp += 1;
                write_tuple(&mut writer.frame, Stamp(stamp), &[7; 100]);
            }
            writer.frame_last = Stamp(stamp);
            outbox.flush(Stamp(stamp));
        }
        let handed = handed.0.lock().unwrap();
        let kept: Vec<Bytes> = outbox
            .buffer()
            .unwrap()
            .replay(2)
            .map(|b| b.body.clone())
            .collect();
        assert_eq!((handed.len(), kept.len()), (2, 2));
        for (frame, kept) in handed.iter().zip(&kept) {
            let body = &frame[BATCH_HEADER..];
            assert_eq!(
                (body, body.as_ptr()),
                (&kept[..], kept.as_ptr()),
                "shared, not copied"
            );
        }
        // The tail was copied out of the frame, which stays for the next
        // batch with a full batch's room.
        let writer = &outbox.channels[0];
        assert_eq!(writer.frame.len(), BATCH_HEADER);
        assert!(writer.frame.capacity() >= FLUSH_BYTES);
        assert!(
            handed[1].len() < 200,
            "the tail's frame holds the tail alone"
        );
    }

    #[test]
    fn time_blocked_writing_to_a_slow_downstream_is_counted() {
        let wait = std::time::Duration::from_millis(20);
        let slow = |to| (to, Box::new(Slow(wait)) as Box<dyn FrameLink>);
        let mut outbox = outbox_to(false, vec![slow(2), slow(3)]);
        assert_eq!(outbox.blocked_secs(), 0.0);
        // A mark on each channel: two writes, each held 20 ms at least.
        outbox.flush(Stamp(9));
        assert!(outbox.blocked_secs() >= 0.04, "{}", outbox.blocked_secs());
    }

    #[test]
    fn batches_count_as_untrimmed_until_their_downstream_trims_after_the_round_began() {
        let wire = |to| (to, Box::new(Wire::default()) as Box<dyn FrameLink>);
        let mut outbox = outbox_to(true, vec![wire(2), wire(3)]);
        let round = Instant::now();
        assert!(!outbox.untrimmed_since(round), "nothing buffered yet");
        let mut body = Vec::new();
        write_tuple(&mut body, Stamp(4), b"x");
        outbox.buffer.as_mut().unwrap().push(2, Stamp(4), body);
        assert!(outbox.untrimmed_since(round));
        // Trimmed after the round began, though not below its batch: the
        // downstream's checkpoint of the round is backed up.
        outbox.trim(InstanceId(2), Stamp(3));
        assert!(!outbox.untrimmed_since(round));
        // A later round waits for a later trim.
        let next_round = Instant::now() + std::time::Duration::from_secs(1);
        assert!(outbox.untrimmed_since(next_round));
        // Instance 3 holds nothing, so it is never waited for.
        outbox.trim(InstanceId(2), Stamp(4));
        assert!(!outbox.untrimmed_since(next_round));
    }

    /// The stamps of the tuples sent on `wire`, and its last mark.
    fn sent(wire: &Wire) -> (Vec<u64>, Stamp) {
        let bytes = wire.0.lock().unwrap().clone();
        let mut reader = bytes.as_slice();
        let (mut stamps, mut mark) = (Vec::new(), Stamp::ZERO);
        while let Some((body, m)) = read_batch(&mut reader).unwrap() {
            let mut pos = 0;
            while pos < body.len() {
                let (stamp, payload) = read_tuple(&body, pos).unwrap();
                stamps.push(stamp.0);
                pos = payload.end;
            }
            mark = m;
        }
        (stamps, mark)
    }

    #[test]
    fn a_buffer_restored_from_before_a_downstream_split_is_replayed_to_both_halves() {
        // Checkpointed while downstream 4 (operator 3) had the whole range.
        let mut body = Vec::new();
        write_tuple(&mut body, Stamp(5), b"a");
        write_tuple(&mut body, Stamp(7), b"b");
        let mut buffer = OutputBuffer::default();
        buffer.push(4, Stamp(7), body);
        // Since then 11 took the upper half of 4's range; 6 is a sink.
        let me = SenderIdentity {
            instance: InstanceId(2),
            incarnation: Incarnation(1),
        };
        let mut outbox = Outbox::new(me, true);
        let wires = [Wire::default(), Wire::default(), Wire::default()];
        for ((to, node, start), wire) in [(4, 3, 0), (11, 3, 1 << 63), (6, 5, 0)]
            .into_iter()
            .zip(&wires)
        {
            let stream: Box<dyn FrameLink> = Box::new(wire.clone());
            let mut channel = ChannelWriter::new(
                InstanceId(to),
                Incarnation(0),
                on_worker(to, ""),
                outbox.written.clone(),
            );
            channel.attach(Link::Open(stream));
            (channel.node, channel.start) = (node, start);
            outbox.channels.push(channel);
        }
        outbox.restore_buffer(buffer, Stamp(7));
        assert_eq!(sent(&wires[0]), (vec![5, 7], Stamp(7)));
        assert_eq!(sent(&wires[1]), (vec![5, 7], Stamp(7)));
        assert_eq!(sent(&wires[2]), (vec![], Stamp(7)));
        // Kept for the new half too, trimmed by its own checkpoints.
        outbox.trim(InstanceId(4), Stamp(7));
        assert_eq!(outbox.buffer().unwrap().replay(11).count(), 1);
    }

    #[test]
    fn a_rewired_channel_connects_afresh_and_replays_what_it_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stalled, untouched) = (Wire::default(), Wire::default());
        let mut outbox = outbox_to(
            true,
            vec![
                (4, Box::new(stalled.clone()) as Box<dyn FrameLink>),
                (5, Box::new(untouched.clone()) as Box<dyn FrameLink>),
            ],
        );
        outbox.channels[0].at = on_worker(4, &addr);
        write_tuple(&mut outbox.channels[0].frame, Stamp(5), b"a");
        write_tuple(&mut outbox.channels[0].frame, Stamp(7), b"b");
        outbox.channels[0].frame_last = Stamp(7);
        outbox.flush(Stamp(7));
        assert_eq!(sent(&stalled), (vec![5, 7], Stamp(7)));
        let before = untouched.0.lock().unwrap().len();

        outbox.rewire(WorkerId(4)).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        let hello = crate::wire::data::read_hello(&mut accepted).unwrap();
        assert_eq!((hello.from, hello.to), (InstanceId(1), InstanceId(4)));
        assert_eq!(hello.connection, 1, "a replay takes the next number");
        drop(outbox);
        let mut replayed = Vec::new();
        accepted.read_to_end(&mut replayed).unwrap();
        assert_eq!(
            sent(&Wire(Arc::new(Mutex::new(replayed)))),
            (vec![5, 7], Stamp(7))
        );
        assert_eq!(
            untouched.0.lock().unwrap().len(),
            before,
            "other workers' channels stay"
        );
    }

    #[test]
    fn a_channel_opened_off_the_thread_replays_what_was_sent_meanwhile() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let me = SenderIdentity {
            instance: InstanceId(1),
            incarnation: Incarnation(2),
        };
        let inboxes = crate::worker::input::Inboxes::default();
        let inbox = inboxes.create(me.instance, me.incarnation);
        let mut outbox = Outbox::new(me, true).with_locality(Locality {
            worker: WorkerId(0),
            inboxes,
        });
        let channel = ChannelWriter::new(
            InstanceId(4),
            Incarnation(0),
            on_worker(4, &addr),
            outbox.written.clone(),
        );
        outbox.channels.push(channel);

        outbox.reconnect(0).unwrap();
        assert!(outbox.channels[0].opening && outbox.channels[0].stream.is_none());
        // Sent while the channel opens: kept in the buffer, and one tuple
        // still in the batch when it is handed back.
        write_tuple(&mut outbox.channels[0].frame, Stamp(5), b"a");
        write_tuple(&mut outbox.channels[0].frame, Stamp(7), b"b");
        outbox.channels[0].frame_last = Stamp(7);
        outbox.flush(Stamp(7));
        write_tuple(&mut outbox.channels[0].frame, Stamp(9), b"c");
        outbox.channels[0].frame_last = Stamp(9);

        let (mut accepted, _) = listener.accept().unwrap();
        let hello = crate::wire::data::read_hello(&mut accepted).unwrap();
        assert_eq!((hello.from, hello.to), (InstanceId(1), InstanceId(4)));
        assert_eq!(hello.connection, 1);
        let event = inbox
            .control
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let ControlEvent::LinkOpened(opened) = event else {
            panic!("expected the opened link");
        };
        outbox.link_opened(opened);
        assert!(!outbox.channels[0].opening && outbox.channels[0].stream.is_some());
        // A link of a connection since replaced is dropped unused.
        let stale = Wire::default();
        outbox.link_opened(OpenedLink {
            by: me.incarnation,
            to: InstanceId(4),
            connection: 0,
            link: Ok(Box::new(stale.clone())),
        });
        assert!(stale.0.lock().unwrap().is_empty());
        drop(outbox);
        let mut replayed = Vec::new();
        accepted.read_to_end(&mut replayed).unwrap();
        assert_eq!(
            sent(&Wire(Arc::new(Mutex::new(replayed)))),
            (vec![5, 7, 9], Stamp(7))
        );
    }
}
