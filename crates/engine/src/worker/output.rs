//! The sending side of an instance: per-downstream-instance batches, routing
//! by key-hash range, flushing with progress marks.

use std::io::Write;
use std::net::TcpStream;

use serde::Serialize;

use crate::error::EngineError;
use crate::stamp::merge::write_tuple;
use crate::stamp::Stamp;
use crate::state::RoutingTable;
use crate::wire::data::{seal_batch, write_hello, ChannelHello, BATCH_HEADER};

/// A batch grows to about this many bytes before it is sent on its own.
const FLUSH_BYTES: usize = 64 << 10;

/// One outgoing data channel (this instance -> one downstream instance).
pub(crate) struct ChannelWriter {
    to: u32,
    stream: Box<dyn Write + Send>,
    frame: Vec<u8>,
    sent_mark: Stamp,
}

impl ChannelWriter {
    /// Opens a channel to instance `to` at `addr`.
    pub(crate) fn connect(from: u32, to: u32, addr: &str) -> Result<Self, EngineError> {
        let stream = TcpStream::connect(addr).map_err(|e| {
            EngineError::io(format!("opening data channel {from}->{to} to {addr}"), e)
        })?;
        stream
            .set_nodelay(true)
            .map_err(|e| EngineError::io("setting TCP_NODELAY", e))?;
        let mut stream: Box<dyn Write + Send> = Box::new(stream);
        write_hello(&mut stream, ChannelHello { from, to })
            .map_err(|e| EngineError::io(format!("greeting instance {to} at {addr}"), e))?;
        Ok(Self::over(to, stream))
    }

    /// A channel over any byte sink (tests use a `Vec`).
    pub(crate) fn over(to: u32, stream: Box<dyn Write + Send>) -> Self {
        ChannelWriter {
            to,
            stream,
            frame: vec![0; BATCH_HEADER],
            sent_mark: Stamp::ZERO,
        }
    }

    fn flush(&mut self, mark: Stamp) -> Result<(), EngineError> {
        if self.frame.len() == BATCH_HEADER && mark <= self.sent_mark {
            return Ok(());
        }
        let mark = mark.max(self.sent_mark);
        seal_batch(&mut self.frame, mark);
        self.stream
            .write_all(&self.frame)
            .map_err(|e| EngineError::io(format!("sending to instance {}", self.to), e))?;
        self.frame.truncate(BATCH_HEADER);
        self.sent_mark = mark;
        Ok(())
    }
}

/// Everything an instance sends: one routing table per output edge, one
/// writer per downstream instance.
pub struct Outbox {
    stamp: Stamp,
    /// Mark sent with batches flushed because they were full: the frontier
    /// completed before the current round.
    mark_floor: Stamp,
    ports: Vec<RoutingTable<usize>>,
    channels: Vec<ChannelWriter>,
    encoded: Vec<u8>,
    tuples_out: u64,
}

impl Outbox {
    pub(crate) fn new(ports: Vec<RoutingTable<usize>>, channels: Vec<ChannelWriter>) -> Self {
        Outbox {
            stamp: Stamp::ZERO,
            mark_floor: Stamp::ZERO,
            ports,
            channels,
            encoded: Vec::with_capacity(256),
            tuples_out: 0,
        }
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
        self.tuples_out += 1;
        if writer.frame.len() >= FLUSH_BYTES {
            writer.flush(self.mark_floor)?;
        }
        Ok(())
    }

    /// Sends every pending batch, and `mark` on every channel.
    pub(crate) fn flush(&mut self, mark: Stamp) -> Result<(), EngineError> {
        for channel in &mut self.channels {
            channel.flush(mark)?;
        }
        Ok(())
    }
}
