//! The sending side of an instance: per-downstream-instance batches, routing
//! by key-hash range, flushing with progress marks, and the output buffer
//! that keeps sent batches for replay until downstream checkpoints cover them.

use std::io::Write;
use std::net::TcpStream;

use serde::Serialize;

use crate::error::EngineError;
use crate::stamp::merge::write_tuple;
use crate::stamp::Stamp;
use crate::state::{OutputBuffer, RoutingTable};
use crate::wire::data::{seal_batch, write_hello, ChannelHello, BATCH_HEADER};

/// A batch grows to about this many bytes before it is sent on its own.
const FLUSH_BYTES: usize = 64 << 10;

/// Who sends on a channel: the upstream instance and its incarnation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sender {
    pub(crate) instance: u32,
    pub(crate) incarnation: u32,
}

/// Opens a data channel to instance `to` at `addr`.
fn connect(from: Sender, to: u32, addr: &str) -> Result<Box<dyn Write + Send>, EngineError> {
    let stream = TcpStream::connect(addr).map_err(|e| {
        EngineError::io(
            format!("opening data channel {}->{to} to {addr}", from.instance),
            e,
        )
    })?;
    stream
        .set_nodelay(true)
        .map_err(|e| EngineError::io("setting TCP_NODELAY", e))?;
    let mut stream: Box<dyn Write + Send> = Box::new(stream);
    write_hello(
        &mut stream,
        ChannelHello {
            from: from.instance,
            incarnation: from.incarnation,
            to,
        },
    )
    .map_err(|e| EngineError::io(format!("greeting instance {to} at {addr}"), e))?;
    Ok(stream)
}

/// One outgoing data channel (this instance -> one downstream instance).
struct ChannelWriter {
    to: u32,
    /// Where the current connection goes.
    addr: String,
    /// `None` while the downstream is down: batches then only go to the
    /// output buffer, and are replayed when the channel is rewired.
    stream: Option<Box<dyn Write + Send>>,
    frame: Vec<u8>,
    frame_last: Stamp,
    sent_mark: Stamp,
}

impl ChannelWriter {
    fn new(to: u32, addr: &str, stream: Box<dyn Write + Send>) -> Self {
        ChannelWriter {
            to,
            addr: addr.to_string(),
            stream: Some(stream),
            frame: vec![0; BATCH_HEADER],
            frame_last: Stamp::ZERO,
            sent_mark: Stamp::ZERO,
        }
    }

    fn write(&mut self, frame: &[u8]) {
        if let Some(stream) = &mut self.stream {
            if let Err(e) = stream.write_all(frame) {
                // The downstream died; the coordinator will restore it and
                // rewire this channel, and the buffer will be replayed.
                tracing::warn!(to = self.to, "data channel broke: {e}");
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
        if has_tuples {
            if let Some(buffer) = buffer {
                buffer.push(self.to, self.frame_last, &self.frame[BATCH_HEADER..]);
            }
        }
        seal_batch(&mut self.frame, mark);
        let frame = std::mem::take(&mut self.frame);
        self.write(&frame);
        self.frame = frame;
        self.frame.truncate(BATCH_HEADER);
        self.sent_mark = mark;
    }
}

/// Everything an instance sends: one routing table per output edge, one
/// writer per downstream instance, and (with fault tolerance on) the output
/// buffer.
pub struct Outbox {
    stamp: Stamp,
    /// Mark sent with batches flushed because they were full: the frontier
    /// completed before the current round.
    mark_floor: Stamp,
    ports: Vec<RoutingTable<usize>>,
    channels: Vec<ChannelWriter>,
    buffer: Option<OutputBuffer>,
    encoded: Vec<u8>,
    tuples_out: u64,
}

impl Outbox {
    /// Opens a channel to every downstream instance `(id, addr)`; `ports`
    /// route each output edge's key hashes to indices of `targets`.
    pub(crate) fn connect(
        from: Sender,
        targets: &[(u32, String)],
        ports: Vec<RoutingTable<usize>>,
        buffering: bool,
    ) -> Result<Self, EngineError> {
        let mut channels = Vec::with_capacity(targets.len());
        for (to, addr) in targets {
            channels.push(ChannelWriter::new(*to, addr, connect(from, *to, addr)?));
        }
        Ok(Outbox {
            stamp: Stamp::ZERO,
            mark_floor: Stamp::ZERO,
            ports,
            channels,
            buffer: buffering.then(OutputBuffer::default),
            encoded: Vec::with_capacity(256),
            tuples_out: 0,
        })
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

    /// Encodes a value once, to be sent on one or more edges.
    pub(crate) fn encode<T: Serialize>(&mut self, value: &T) -> Result<(), bincode::Error> {
        self.encoded.clear();
        bincode::serialize_into(&mut self.encoded, value)
    }

    /// Sends the last encoded value on output edge `port`, to the instance
    /// owning `hash`.
    pub(crate) fn send_encoded(&mut self, port: usize, hash: u64) -> Result<(), EngineError> {
        let channel = *self
            .ports
            .get(port)
            .ok_or_else(|| EngineError::InvalidQuery(format!("no output edge {port}")))?
            .route(hash);
        let writer = &mut self.channels[channel];
        write_tuple(&mut writer.frame, self.stamp, &self.encoded);
        writer.frame_last = self.stamp;
        self.tuples_out += 1;
        if writer.frame.len() >= FLUSH_BYTES {
            writer.flush(self.mark_floor, self.buffer.as_mut());
        }
        Ok(())
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
    pub(crate) fn trim(&mut self, to: u32, frontier: Stamp) {
        if let Some(buffer) = &mut self.buffer {
            buffer.trim(to, frontier);
        }
    }

    /// Takes over the output buffer of a restored checkpoint and resends it
    /// on every channel: downstreams drop what they already processed.
    pub(crate) fn restore_buffer(&mut self, buffer: OutputBuffer, mark: Stamp) {
        self.buffer = Some(buffer);
        for i in 0..self.channels.len() {
            self.replay(i);
        }
        self.flush(mark);
    }

    /// Downstream `to` was restored elsewhere: connect to its new incarnation
    /// and resend everything still buffered for it.
    pub(crate) fn rewire(&mut self, from: Sender, to: u32, addr: &str) -> Result<(), EngineError> {
        let Some(i) = self.channels.iter().position(|c| c.to == to) else {
            return Ok(());
        };
        if self.channels[i].stream.is_some() && self.channels[i].addr == addr {
            // Already connected to the new incarnation (we were restored
            // with it and connected from the new plan): nothing to redo.
            return Ok(());
        }
        self.channels[i].stream = Some(connect(from, to, addr)?);
        self.channels[i].addr = addr.to_string();
        self.replay(i);
        let channel = &mut self.channels[i];
        let mark = channel.sent_mark;
        // Re-announce the progress already promised to the old incarnation.
        channel.sent_mark = Stamp::ZERO;
        channel.flush(mark, None);
        Ok(())
    }

    fn replay(&mut self, channel: usize) {
        let Some(buffer) = &self.buffer else { return };
        let writer = &mut self.channels[channel];
        let mut frame = Vec::new();
        for batch in buffer.replay(writer.to) {
            frame.clear();
            frame.resize(BATCH_HEADER, 0);
            frame.extend_from_slice(&batch.body);
            seal_batch(&mut frame, Stamp::ZERO);
            writer.write(&frame);
        }
    }
}
