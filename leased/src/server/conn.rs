//! A connection as its reader and its session see it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shellper_protocol::Frame;
use shellper_protocol::lease::ConnId;
use shellper_protocol::msg::ClientType;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, Pushed};
use crate::sock::Stream;

/// How often a reader waiting on its session (a full input queue) checks
/// that its peer is still there.
const HANGUP_POLL: Duration = Duration::from_millis(200);

/// One connection, as its reader and the session see it.
#[derive(Debug)]
pub struct Conn<C> {
    pub(super) id: ConnId,
    pub(super) kind: ClientType,
    /// The lease extension version negotiated in HELLO/WELCOME (`None`:
    /// not announced): STATUS carries the containment from version 2 on.
    pub(super) lease_version: Option<u32>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) cancel: CancellationToken,
    /// The socket, to notice a peer that closed while the reader waits.
    pub(super) sock: Arc<Stream>,
    pub(super) state: C,
    /// The frame being dispatched is a later piece of a streamed DATA
    /// frame (see [`Conn::continues_frame`]).
    pub(super) continued: std::sync::atomic::AtomicBool,
}

impl<C> Conn<C> {
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// What the client said it is in HELLO.
    pub fn kind(&self) -> ClientType {
        self.kind
    }

    /// Whether the DATA being dispatched continues a frame whose first
    /// piece was dispatched before (DATA is streamed in pieces as it
    /// arrives, `reader.rs`): a session that refuses DATA answers once per
    /// frame, not once per piece.
    pub fn continues_frame(&self) -> bool {
        self.continued.load(Ordering::Relaxed)
    }

    /// The session's state for this connection.
    pub fn state(&self) -> &C {
        &self.state
    }

    /// Queues a control frame; a client whose control lane overflows is not
    /// reading at all and is disconnected.
    pub fn send(&self, f: Frame) {
        if self.outbox.control(f) == Pushed::Overflow {
            self.cancel.cancel();
        }
    }

    /// Resolves when the connection is cancelled or the peer has closed its
    /// socket entirely (POLLHUP; a peer that only shut down its write side
    /// still gets its input delivered). For a reader that waits on its
    /// session and does not read the socket meanwhile.
    pub async fn gone(&self) {
        use std::os::fd::AsFd as _;
        let Stream::UdSocket(s) = &*self.sock;
        let hung_up = async {
            loop {
                tokio::time::sleep(HANGUP_POLL).await;
                let fd = s.as_fd();
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::empty(),
                )];
                let zero = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                if rustix::event::poll(&mut fds, Some(&zero)).is_ok()
                    && fds[0]
                        .revents()
                        .intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR)
                {
                    return;
                }
            }
        };
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = hung_up => {}
        }
    }
}
