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
//!
//! The same thread notes when each peer host was last heard from: data
//! received on an incoming channel or backup connection (checkpoints come
//! every interval), an acknowledgement on an outgoing one.
//! Heartbeats carry that to the coordinator, which tells by it the end of a
//! stalled channel cut off from its peers (it hears from nobody) from the
//! end that still reaches others.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::EngineError;
use crate::wire::control::{HeardFrom, ToCoordinator, HEARD_WINDOW};
use crate::wire::host_part;

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

/// A data channel's socket, shared between its writer (or reader) and the
/// watch.
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

impl std::ops::Deref for WatchedStream {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

impl Read for WatchedStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

/// Which way a watched channel's data goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// This worker sends: the channel may stall, and acknowledgements are
    /// news from the peer.
    Outgoing,
    /// This worker receives: data is news from the peer.
    Incoming,
}

struct Watched {
    /// The peer's address (its data address for an outgoing channel).
    peer: String,
    direction: Direction,
    stream: Weak<TcpStream>,
}

/// The watch over this worker's data channels.
#[derive(Clone)]
pub(crate) struct LinkWatch {
    watched: Arc<Mutex<Vec<Watched>>>,
    /// When each peer host was last heard from on a data channel.
    heard: Arc<Mutex<HashMap<String, Instant>>>,
    writer: ControlWriter,
}

impl LinkWatch {
    /// Starts watching; reports go to the coordinator on `writer`.
    pub(crate) fn start(writer: ControlWriter) -> Result<Self, EngineError> {
        let watch = LinkWatch {
            watched: Arc::default(),
            heard: Arc::default(),
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
        self.add(peer.to_string(), Direction::Outgoing, stream)
    }

    /// Notes when `stream`, a data channel or a backup connection from a
    /// peer, last brought data, for as long as its reader keeps it.
    pub(crate) fn watch_incoming(&self, stream: TcpStream) -> WatchedStream {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        self.add(peer, Direction::Incoming, stream)
    }

    fn add(&self, peer: String, direction: Direction, stream: TcpStream) -> WatchedStream {
        let stream = Arc::new(stream);
        self.lock().push(Watched {
            peer,
            direction,
            stream: Arc::downgrade(&stream),
        });
        WatchedStream(stream)
    }

    /// The peer hosts heard from within [`HEARD_WINDOW`], for a heartbeat.
    pub(crate) fn heard_lately(&self) -> Vec<HeardFrom> {
        let now = Instant::now();
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard
            .iter()
            .map(|(host, at)| (host, now.saturating_duration_since(*at)))
            .filter(|(_, ago)| *ago <= HEARD_WINDOW)
            .map(|(host, ago)| HeardFrom {
                host: host.clone(),
                ms_ago: ago.as_millis() as u64,
            })
            .collect()
    }

    /// `peer` could not be reached at all.
    pub(crate) fn unreachable(&self, peer: &str, waited: Duration) {
        self.report(peer, waited);
    }

    fn look(&self) {
        let mut stalled = Vec::new();
        let mut heard = Vec::new();
        let now = Instant::now();
        self.lock().retain(|w| {
            let Some(stream) = w.stream.upgrade() else {
                return false;
            };
            let Some(state) = ChannelState::of(&stream) else {
                return true;
            };
            if let Some(at) = state
                .heard(w.direction)
                .and_then(|ago| now.checked_sub(ago))
            {
                heard.push((host_part(&w.peer).to_string(), at));
            }
            match state.stall().filter(|_| w.direction == Direction::Outgoing) {
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
        self.note_heard(heard);
        for (peer, silent) in stalled {
            tracing::warn!(%peer, "data channel stalled for {} ms", silent.as_millis());
            self.report(&peer, silent);
        }
    }

    fn note_heard(&self, heard: Vec<(String, Instant)>) {
        let mut latest = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        for (host, at) in heard {
            let last = latest.entry(host).or_insert(at);
            *last = (*last).max(at);
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

/// What the kernel knows of a data channel's connection.
struct ChannelState {
    #[cfg(target_os = "linux")]
    info: libc::tcp_info,
}

impl ChannelState {
    /// `stream`'s state now; `None` where the kernel does not say.
    #[cfg(target_os = "linux")]
    fn of(stream: &TcpStream) -> Option<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len`
        // bytes into it.
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
        (got == 0).then_some(ChannelState { info })
    }

    #[cfg(not(target_os = "linux"))]
    fn of(_stream: &TcpStream) -> Option<Self> {
        None
    }

    /// How long the channel has heard no acknowledgement while
    /// retransmitting data in flight or probing a shut window; `None` when
    /// it is making progress.
    #[cfg(target_os = "linux")]
    fn stall(&self) -> Option<Duration> {
        let info = &self.info;
        let retransmitting = info.tcpi_unacked > 0 && info.tcpi_retransmits >= MIN_RETRANSMITS;
        let probing_unanswered = info.tcpi_probes >= MIN_RETRANSMITS;
        (retransmitting || probing_unanswered)
            .then(|| Duration::from_millis(u64::from(info.tcpi_last_ack_recv)))
    }

    #[cfg(not(target_os = "linux"))]
    fn stall(&self) -> Option<Duration> {
        None
    }

    /// How long ago the peer was last heard from: data on a channel this
    /// worker receives on, an acknowledgement on one it sends on.
    #[cfg(target_os = "linux")]
    fn heard(&self, direction: Direction) -> Option<Duration> {
        let ms = match direction {
            Direction::Outgoing => self.info.tcpi_last_ack_recv,
            Direction::Incoming => self.info.tcpi_last_data_recv,
        };
        Some(Duration::from_millis(u64::from(ms)))
    }

    #[cfg(not(target_os = "linux"))]
    fn heard(&self, _direction: Direction) -> Option<Duration> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use spate_hosts::{Fault, HostId, HostsError, HostsOptions, SimulatedHosts};

    use super::{ChannelState, LinkWatch, CHECK_EVERY, STALL};

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

    /// The first stall `ChannelState::stall` sees on `sender` within `time`, sampled
    /// as the watch samples.
    fn first_stall(sender: &TcpStream, time: Duration) -> Option<Duration> {
        let until = Instant::now() + time;
        while Instant::now() < until {
            if let Some(silent) = ChannelState::of(sender)
                .and_then(|state| state.stall())
                .filter(|silent| *silent >= STALL)
            {
                return Some(silent);
            }
            std::thread::sleep(CHECK_EVERY);
        }
        None
    }

    /// What `watch` heard from `host` lately, in milliseconds ago.
    fn heard_from(watch: &LinkWatch, host: &str) -> Option<u64> {
        watch.look();
        watch
            .heard_lately()
            .into_iter()
            .find(|h| h.host == host)
            .map(|h| h.ms_ago)
    }

    #[test]
    fn data_in_and_acknowledgements_out_are_news_from_the_peer() {
        let coordinator = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let control =
            TcpStream::connect(coordinator.local_addr().expect("bound")).expect("connect");
        let watch = LinkWatch {
            watched: Arc::default(),
            heard: Arc::default(),
            writer: Arc::new(Mutex::new(control)),
        };
        // A peer on another loopback address, so that its host differs
        // from the one this end connects from.
        let peer = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind");
        let peer_addr = peer.local_addr().expect("bound");
        let mut outgoing = watch.watch(
            &peer_addr.to_string(),
            TcpStream::connect(peer_addr).expect("connect"),
        );
        let (accepted, _) = peer.accept().expect("accept");
        let mut incoming = watch.watch_incoming(accepted);
        let sender_host = incoming.peer_addr().expect("connected").ip().to_string();
        assert_ne!(sender_host, "127.0.0.2");

        // Silence ages the news (the handshake was the last).
        std::thread::sleep(Duration::from_millis(600));
        let silent_out = heard_from(&watch, "127.0.0.2").expect("within the window");
        let silent_in = heard_from(&watch, &sender_host).expect("within the window");
        assert!(
            silent_out >= 550 && silent_in >= 550,
            "{silent_out} {silent_in}"
        );

        outgoing.write_all(b"a batch").expect("sent");
        let mut received = [0u8; 7];
        incoming.read_exact(&mut received).expect("received");
        // The peer acknowledged what went out, and the data came in: news
        // younger than the silence before.
        let acknowledged = heard_from(&watch, "127.0.0.2").expect("acknowledged");
        let brought_data = heard_from(&watch, &sender_host).expect("data came in");
        assert!(
            acknowledged < silent_out && brought_data < silent_in,
            "{acknowledged} {brought_data}"
        );
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
