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
//! merely slow advertises a zero window and answers each of the sender's
//! window probes, so backpressure is never mistaken for a stall either. A
//! peer cut off while it holds the window shut answers none: nothing is in
//! flight then, so unanswered probes count as the retransmissions would
//! (they come further apart the longer the window stayed shut, so such a
//! cut takes a few seconds to notice, and longer after minutes of
//! backpressure). Without that, a channel cut during backpressure blocked
//! its writer for good and nobody reported it: a whole job stood still.

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
/// minimum timeout of 200 ms, two take 600 ms), or window probes gone
/// unanswered while the peer's window is shut.
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

/// How long `stream` has heard no acknowledgement while retransmitting data
/// in flight or probing a shut window; `None` when it is making progress
/// (or cannot tell).
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
    let retransmitting = info.tcpi_unacked > 0 && info.tcpi_retransmits >= MIN_RETRANSMITS;
    let probing_unanswered = info.tcpi_probes >= MIN_RETRANSMITS;
    (got == 0 && (retransmitting || probing_unanswered))
        .then(|| Duration::from_millis(u64::from(info.tcpi_last_ack_recv)))
}

#[cfg(not(target_os = "linux"))]
fn tcp_stall(_stream: &TcpStream) -> Option<Duration> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{ErrorKind, Write};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use spate_hosts::{Fault, HostId, HostsError, HostsOptions, SimulatedHosts};

    use super::{tcp_stall, CHECK_EVERY, STALL};

    /// Writes to `sender` until the receiver's window and both buffers are
    /// full: the receiver never reads.
    fn shut_the_window(sender: &TcpStream) {
        sender.set_nonblocking(true).expect("non-blocking");
        let chunk = vec![7u8; 64 << 10];
        let mut writer = sender;
        loop {
            match writer.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("filling the window: {e}"),
            }
        }
    }

    /// The first stall `tcp_stall` sees on `sender` within `time`, sampled
    /// as the watch samples.
    fn first_stall(sender: &TcpStream, time: Duration) -> Option<Duration> {
        let until = Instant::now() + time;
        while Instant::now() < until {
            if let Some(silent) = tcp_stall(sender).filter(|silent| *silent >= STALL) {
                return Some(silent);
            }
            std::thread::sleep(CHECK_EVERY);
        }
        None
    }

    #[test]
    fn a_receiver_holding_its_window_shut_is_not_a_stall() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let sender = TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (_receiver, _) = listener.accept().expect("accept");
        shut_the_window(&sender);
        // Long enough for several window probes, each answered.
        let stall = first_stall(&sender, 3 * STALL);
        assert!(stall.is_none(), "backpressure taken for a stall: {stall:?}");
    }

    #[test]
    fn a_receiver_cut_off_while_its_window_is_shut_is_a_stall() {
        let dir = std::env::temp_dir().join(format!("spate-watch-cut-{}", std::process::id()));
        let hosts = match SimulatedHosts::create(&HostsOptions {
            hosts: 2,
            dir: dir.clone(),
            cpu_per_host: None,
        }) {
            Ok(hosts) => hosts,
            Err(HostsError::Unsupported(why)) => {
                eprintln!("skipped: simulated hosts need network namespaces ({why})");
                return;
            }
            Err(e) => panic!("making simulated hosts: {e}"),
        };
        let (receiving, sending) = (HostId(1), HostId(2));
        let ip = IpAddr::V4(hosts.ip(receiving));
        let listener = hosts
            .in_host_namespace(receiving, || TcpListener::bind((ip, 0)))
            .expect("enter the namespace")
            .expect("bind");
        let to = SocketAddr::new(ip, listener.local_addr().expect("bound").port());
        let sender = hosts
            .in_host_namespace(sending, || TcpStream::connect(to))
            .expect("enter the namespace")
            .expect("connect");
        let (_receiver, _) = listener.accept().expect("accept");
        shut_the_window(&sender);
        assert_eq!(first_stall(&sender, 2 * STALL), None);

        hosts.inject(Fault::CutFromPeers(receiving)).expect("cut");
        // Unanswered probes back off from the round trip's timeout: the
        // second is due a few seconds after the cut.
        let stall = first_stall(&sender, 20 * STALL);
        assert!(stall.is_some(), "a cut under backpressure went unnoticed");
        drop(hosts);
        let _ = std::fs::remove_dir_all(dir);
    }
}
