//! Data channels: one TCP connection per (upstream instance, downstream
//! instance), carrying batches of tuples each followed by a progress mark.
//!
//! Handshake: `b"SPTD"`, protocol version (u16), from instance (u32), its
//! incarnation (u32), to instance (u32), connection (u32). Frame: body length (u32), mark (u64), body (tuples as
//! written by [`crate::stamp::merge::write_tuple`]).

use std::io::{self, Read, Write};

use super::{MAX_FRAME, PROTOCOL_VERSION};
use crate::error::EngineError;
use crate::plan::{Incarnation, InstanceId};
use crate::stamp::Stamp;

const MAGIC: &[u8; 4] = b"SPTD";
const HELLO: usize = 26;

/// Who is at each end of a data channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelHello {
    /// Upstream instance id.
    pub from: InstanceId,
    /// How many times the upstream instance has been restored: batches of an
    /// older incarnation are stale.
    pub incarnation: Incarnation,
    /// Downstream instance id.
    pub to: InstanceId,
    /// The incarnation of `to` the upstream's plan names: a connection that
    /// arrives while an older one still runs there (the part of a split
    /// restored in its parent's place, the same decision's new upstream
    /// part connecting first) waits for it rather than feed the instance
    /// being replaced, whose inbox dies with it.
    pub to_incarnation: Incarnation,
    /// How many connections this incarnation opened to `to` before this
    /// one. A reconnection (after a broken pipe) replays the whole output
    /// buffer, so the receiver starts the channel afresh rather than take
    /// the replay for stamps going backwards.
    pub connection: u32,
}

/// Writes the handshake that opens a data channel.
pub fn write_hello(w: &mut impl Write, hello: ChannelHello) -> io::Result<()> {
    let mut buf = [0u8; HELLO];
    buf[..4].copy_from_slice(MAGIC);
    buf[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    buf[6..10].copy_from_slice(&hello.from.0.to_le_bytes());
    buf[10..14].copy_from_slice(&hello.incarnation.0.to_le_bytes());
    buf[14..18].copy_from_slice(&hello.to.0.to_le_bytes());
    buf[18..22].copy_from_slice(&hello.connection.to_le_bytes());
    buf[22..26].copy_from_slice(&hello.to_incarnation.0.to_le_bytes());
    w.write_all(&buf)
}

/// Reads and checks the handshake of a data channel.
pub fn read_hello(r: &mut impl Read) -> Result<ChannelHello, EngineError> {
    let mut buf = [0u8; HELLO];
    r.read_exact(&mut buf)
        .map_err(|e| EngineError::io("reading data channel handshake", e))?;
    if &buf[..4] != MAGIC {
        return Err(EngineError::Protocol(
            "data channel handshake has a bad magic number (not a Spate worker?)".into(),
        ));
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != PROTOCOL_VERSION {
        return Err(EngineError::Protocol(format!(
            "peer speaks protocol version {version}, this worker {PROTOCOL_VERSION}; run the same spate build everywhere"
        )));
    }
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    Ok(ChannelHello {
        from: InstanceId(word(6)),
        incarnation: Incarnation(word(10)),
        to: InstanceId(word(14)),
        connection: word(18),
        to_incarnation: Incarnation(word(22)),
    })
}

/// Bytes of a batch frame header: body length (u32) and mark (u64).
pub const BATCH_HEADER: usize = 12;

/// Fills the header of a frame whose body follows the first
/// [`BATCH_HEADER`] bytes of `frame`, so a batch goes out in one write.
pub fn seal_batch(frame: &mut [u8], mark: Stamp) {
    let len = (frame.len() - BATCH_HEADER) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..BATCH_HEADER].copy_from_slice(&mark.0.to_le_bytes());
}

/// The body and mark of a whole frame sealed by [`seal_batch`], or `None`
/// if its header does not announce exactly the bytes that follow it.
pub fn open_frame(frame: &[u8]) -> Option<(&[u8], Stamp)> {
    let header = frame.get(..BATCH_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let mark = u64::from_le_bytes(header[4..].try_into().ok()?);
    let body = &frame[BATCH_HEADER..];
    (body.len() == len).then_some((body, Stamp(mark)))
}

/// Writes one batch frame: `body` holds encoded tuples, `mark` the progress
/// after them.
pub fn write_batch(w: &mut impl Write, body: &[u8], mark: Stamp) -> io::Result<()> {
    let mut frame = vec![0u8; BATCH_HEADER];
    frame.extend_from_slice(body);
    seal_batch(&mut frame, mark);
    w.write_all(&frame)
}

/// Reads one batch frame; `Ok(None)` on a clean end of stream.
pub fn read_batch(r: &mut impl Read) -> Result<Option<(Vec<u8>, Stamp)>, EngineError> {
    let mut header = [0u8; 12];
    match r.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(EngineError::io("reading data frame", e)),
    }
    r.read_exact(&mut header[1..])
        .map_err(|e| EngineError::io("reading data frame header", e))?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return Err(EngineError::Protocol(format!(
            "data frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    let mut mark = [0u8; 8];
    mark.copy_from_slice(&header[4..]);
    let body =
        super::read_exactly(r, len).map_err(|e| EngineError::io("reading data frame body", e))?;
    Ok(Some((body, Stamp(u64::from_le_bytes(mark)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let hello = ChannelHello {
            from: InstanceId(3),
            incarnation: Incarnation(2),
            to: InstanceId(9),
            connection: 4,
            to_incarnation: Incarnation(7),
        };
        write_hello(&mut buf, hello).unwrap();
        write_batch(&mut buf, b"abc", Stamp(42)).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_hello(&mut r).unwrap(), hello);
        assert_eq!(
            read_batch(&mut r).unwrap(),
            Some((b"abc".to_vec(), Stamp(42)))
        );
        assert_eq!(read_batch(&mut r).unwrap(), None);
    }

    #[test]
    fn a_sealed_frame_opens_to_its_body_and_mark() {
        let mut frame = vec![0u8; BATCH_HEADER];
        frame.extend_from_slice(b"tuples");
        seal_batch(&mut frame, Stamp(42));
        assert_eq!(open_frame(&frame), Some((&b"tuples"[..], Stamp(42))));
        assert_eq!(open_frame(&frame[..frame.len() - 1]), None);
        assert_eq!(open_frame(&frame[..5]), None);
    }

    #[test]
    fn refuses_bad_magic_version_and_lengths() {
        assert!(read_hello(&mut &b"XXXX\x02\x00\0\0\0\0\0\0\0\0\0\0\0\0"[..]).is_err());
        assert!(read_hello(&mut &b"SPTD\x09\x00\0\0\0\0\0\0\0\0\0\0\0\0"[..]).is_err());
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 8]);
        assert!(read_batch(&mut &huge[..]).is_err());
        let mut short = Vec::new();
        write_batch(&mut short, b"abcdef", Stamp(1)).unwrap();
        short.truncate(15);
        assert!(read_batch(&mut &short[..]).is_err());
    }
}
