//! Stalled data channels are failures: a thread watches every outgoing data
//! channel's TCP state and reports to the coordinator a channel that has
//! data in flight but has heard no acknowledgement for [`STALL`] despite
//! retransmitting (the peer is unreachable from here, whatever the
//! coordinator sees), and likewise a peer it cannot connect to. The
//! coordinator decides which side to recover elsewhere.
//!
//! Loss alone does not stall a channel: the peer acknowledges the packets
//! that do arrive (duplicate acknowledgements included), so the time since
//! the last acknowledgement stays near one round trip. A receiver that is
//! merely slow advertises a zero window: nothing is in flight unacknowledged,
//! so backpressure is never mistaken for a stall either.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use crate::error::EngineError;
use crate::wire::control::ToCoordinator;

use super::{send, ControlWriter};

/// How long a channel with data in flight may go unacknowledged.
pub const STALL: Duration = Duration::from_millis(1000);
/// How often channels are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// Retransmission timeouts a stalled channel has fired at least (with the
/// minimum timeout of 200 ms, two take 600 ms).
const MIN_RETRANSMITS: u8 = 2;
/// How long opening a data channel may take before its peer counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a connection to the peer worker at `addr` (a data channel or a
/// backup connection; `context` says which, for errors), watched by
/// `watch`: a peer that cannot be reached in time is reported to it.
pub(crate) fn open_peer(
    addr: &str,
    watch: Option<&LinkWatch>,
    context: &str,
) -> Result<Box<dyn Write + Send>, EngineError> {
    let stream = connect_peer(addr).map_err(|e| {
        if let (Some(watch), std::io::ErrorKind::TimedOut) = (watch, e.kind()) {
            watch.unreachable(addr, CONNECT_TIMEOUT);
        }
        EngineError::io(context, e)
    })?;
    Ok(match watch {
        Some(watch) => Box::new(watch.watch(addr, stream)),
        None => Box::new(stream),
    })
}

/// Connects to the peer worker at `addr`, giving up after
/// [`CONNECT_TIMEOUT`], with small writes sent at once.
pub(crate) fn connect_peer(addr: &str) -> std::io::Result<TcpStream> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A data channel's socket, shared between its writer and the watch.
#[derive(Clone)]
pub(crate) struct WatchedStream(Arc<TcpStream>);

impl Write for WatchedStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

struct Watched {
    /// The peer's data address.
    peer: String,
    stream: Weak<TcpStream>,
}

/// The watch over this worker's outgoing data channels.
#[derive(Clone)]
pub(crate) struct LinkWatch {
    watched: Arc<Mutex<Vec<Watched>>>,
    writer: ControlWriter,
}

impl LinkWatch {
    /// Starts watching; reports go to the coordinator on `writer`.
    pub(crate) fn start(writer: ControlWriter) -> Result<Self, EngineError> {
        let watch = LinkWatch {
            watched: Arc::default(),
            writer,
        };
        let looking = watch.clone();
        thread::Builder::new()
            .name("spate-link-watch".into())
            .spawn(move || loop {
                thread::sleep(CHECK_EVERY);
                looking.look();
            })
            .map_err(|e| EngineError::io("starting the link watch", e))?;
        Ok(watch)
    }

    /// Watches `stream`, a data channel to `peer`, for as long as its
    /// writer keeps it.
    pub(crate) fn watch(&self, peer: &str, stream: TcpStream) -> WatchedStream {
        let stream = Arc::new(stream);
        self.lock().push(Watched {
            peer: peer.to_string(),
            stream: Arc::downgrade(&stream),
        });
        WatchedStream(stream)
    }

    /// `peer` could not be reached at all.
    pub(crate) fn unreachable(&self, peer: &str, waited: Duration) {
        self.report(peer, waited);
    }

    fn look(&self) {
        let mut stalled = Vec::new();
        self.lock().retain(|w| {
            let Some(stream) = w.stream.upgrade() else {
                return false;
            };
            match tcp_stall(&stream) {
                Some(silent) if silent >= STALL => {
                    // Unblocks the writer (its channel goes down, its
                    // batches stay buffered for the replay after the
                    // coordinator's decision).
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    stalled.push((w.peer.clone(), silent));
                    false
                }
                _ => true,
            }
        });
        for (peer, silent) in stalled {
            tracing::warn!(%peer, "data channel stalled for {} ms", silent.as_millis());
            self.report(&peer, silent);
        }
    }

    fn report(&self, peer: &str, silent: Duration) {
        let message = ToCoordinator::LinkStalled {
            peer: peer.to_string(),
            silent_ms: silent.as_millis() as u64,
        };
        if let Err(e) = send(&self.writer, &message) {
            tracing::debug!("cannot report a stalled channel: {e}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long `stream` has had data in flight with no acknowledgement while
/// retransmitting; `None` when it is making progress (or cannot tell).
#[cfg(target_os = "linux")]
fn tcp_stall(stream: &TcpStream) -> Option<Duration> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes
    // into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let got = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (got == 0 && info.tcpi_unacked > 0 && info.tcpi_retransmits >= MIN_RETRANSMITS)
        .then(|| Duration::from_millis(u64::from(info.tcpi_last_ack_recv)))
}

#[cfg(not(target_os = "linux"))]
fn tcp_stall(_stream: &TcpStream) -> Option<Duration> {
    None
}
