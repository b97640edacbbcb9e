//! In-process data channels: an instance whose downstream runs in the same
//! worker hands it each batch through the downstream's inbox, with no
//! socket, no reader thread and no copy: the downstream reads the very
//! bytes the output buffer keeps for replay. Frames,
//! marks, replays and connection numbers are those of a TCP channel, so
//! the receiving instance cannot tell the two apart; only the transport
//! differs, and a downstream that moves to another worker is reached over
//! TCP again at the next replan.

use std::io;

use bytes::Bytes;
use crossbeam_channel::Sender;

use crate::error::EngineError;
use crate::plan::{Incarnation, InstanceId, WorkerId};
use crate::wire::data::open_frame;

use super::input::{Inboxes, InputEvent};
use super::output::{FrameLink, SenderIdentity};

/// This worker, and the inboxes of the instances it runs: what an outbox
/// needs to tell a local downstream from a remote one and to reach it.
#[derive(Clone)]
pub(crate) struct Locality {
    pub(crate) worker: WorkerId,
    pub(crate) inboxes: Inboxes,
}

impl Locality {
    /// Opens channel number `connection` from `from` to incarnation
    /// `to_incarnation` of `to`, which runs on this worker (or is about to:
    /// during a deployment or a recovery its inbox may come a little later).
    pub(crate) fn open(
        &self,
        from: SenderIdentity,
        to: InstanceId,
        to_incarnation: Incarnation,
        connection: u32,
    ) -> Result<LocalLink, EngineError> {
        let inbox = self.inboxes.wait_for(to, to_incarnation).ok_or_else(|| {
            EngineError::Protocol(format!(
                "opening data channel {}->{to} in this worker: no instance {to} (incarnation {}) runs here",
                from.instance, to_incarnation.0
            ))
        })?;
        Ok(LocalLink {
            from: from.instance,
            incarnation: from.incarnation,
            connection,
            inbox,
        })
    }
}

/// The sending end of an in-process channel.
pub(crate) struct LocalLink {
    from: InstanceId,
    incarnation: Incarnation,
    connection: u32,
    inbox: Sender<InputEvent>,
}

impl FrameLink for LocalLink {
    /// Blocks while the inbox is full, as a TCP write blocks on a closed
    /// window; fails like a broken connection once the downstream stopped.
    fn send_frame(&mut self, frame: Bytes) -> io::Result<()> {
        let (body, mark) = open_frame(&frame)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a data frame cut short"))?;
        let batch = InputEvent::Batch {
            from: self.from,
            incarnation: self.incarnation,
            connection: self.connection,
            body: frame.slice_ref(body),
            mark,
        };
        self.inbox.send(batch).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the downstream instance stopped")
        })
    }
}

impl Drop for LocalLink {
    /// Ends the channel as a closed socket would; never blocks (a full
    /// inbox misses only the notice, which nothing waits for).
    fn drop(&mut self) {
        let _ = self.inbox.try_send(InputEvent::Closed {
            from: self.from,
            error: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::stamp::Stamp;
    use crate::wire::data::write_batch;

    fn sender(instance: u32) -> SenderIdentity {
        SenderIdentity {
            instance: InstanceId(instance),
            incarnation: Incarnation(2),
        }
    }

    fn frame(body: &[u8], mark: u64) -> Bytes {
        let mut frame = Vec::new();
        write_batch(&mut frame, body, Stamp(mark)).expect("written to memory");
        frame.into()
    }

    /// Worker 0, whose instances have `inboxes`.
    fn worker_zero(inboxes: Inboxes) -> Locality {
        Locality {
            worker: WorkerId(0),
            inboxes,
        }
    }

    #[test]
    fn a_batch_reaches_the_inbox_as_a_tcp_reader_would_hand_it_over() {
        let inboxes = Inboxes::default();
        let inbox = inboxes.create(InstanceId(7), Incarnation(1));
        let local = worker_zero(inboxes);
        let mut link = local
            .open(sender(3), InstanceId(7), Incarnation(1), 4)
            .expect("the downstream runs here");
        link.send_frame(frame(b"tuples", 42)).expect("sent");
        match inbox.data.try_recv() {
            Ok(InputEvent::Batch {
                from,
                incarnation,
                connection,
                body,
                mark,
            }) => {
                assert_eq!(
                    (from, incarnation, connection),
                    (InstanceId(3), Incarnation(2), 4)
                );
                assert_eq!((&body[..], mark), (&b"tuples"[..], Stamp(42)));
            }
            _ => panic!("no batch"),
        }
        assert!(
            link.send_frame(frame(b"x", 1).slice(..5)).is_err(),
            "a cut frame"
        );
        drop(link);
        assert!(matches!(
            inbox.data.try_recv(),
            Ok(InputEvent::Closed {
                from: InstanceId(3),
                error: None
            })
        ));
    }

    #[test]
    fn a_link_opened_before_its_downstream_exists_waits_for_it() {
        let inboxes = Inboxes::default();
        let local = worker_zero(inboxes.clone());
        let opening = thread::spawn(move || {
            let mut link = local
                .open(sender(1), InstanceId(5), Incarnation(3), 0)
                .expect("the inbox came");
            link.send_frame(frame(b"a", 9))
        });
        thread::sleep(std::time::Duration::from_millis(20));
        let inbox = inboxes.create(InstanceId(5), Incarnation(3));
        opening.join().unwrap().expect("sent");
        assert!(matches!(
            inbox.data.recv(),
            Ok(InputEvent::Batch { mark: Stamp(9), .. })
        ));
    }

    #[test]
    fn sending_to_a_stopped_downstream_breaks_the_channel() {
        let inboxes = Inboxes::default();
        let inbox = inboxes.create(InstanceId(5), Incarnation(0));
        let local = worker_zero(inboxes);
        let mut link = local
            .open(sender(1), InstanceId(5), Incarnation(0), 0)
            .expect("opened");
        drop(inbox);
        let e = link.send_frame(frame(b"a", 1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
