//! The socket server: binding, accepting, and one task pair per connection.
//!
//! * Binding, accepting, the peer check and the slots are
//!   `shellper_leased::sock`, shared with embedded leased processes:
//!   filesystem socket name only, directory 0700 when we create it, socket
//!   0600, a leftover socket file reclaimed only when nothing answers on it.
//! * Every connection: peer uid (SO_PEERCRED) must be ours, else it is closed
//!   at once; at most [`MAX_CONNECTIONS`], plus [`RESERVED_CONNECTIONS`]
//!   kept for status queries and the lease holder; HELLO within the
//!   handshake timeout; a reader (this task) and one writer task fed by an
//!   [`Outbox`]. A frame over its limit, an undecodable payload, trailing
//!   bytes or a truncated frame get an ERROR and close *that* connection.
//!   Unknown frame types are ignored.
//! * A write that fails, or makes no progress for the write stall limit,
//!   closes the whole connection (both directions, reader included): a
//!   peer that stopped reading must not keep its slot, and a half-written
//!   frame must not be followed by anything.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use shellper_leased::sock::{self, Half, Slots, Stream, error_frame};
use shellper_protocol::Frame;
use shellper_protocol::codec::{CodecError, FrameCodec};
use shellper_protocol::lease::ConnId;
use shellper_protocol::msg::{ALLOWED_SIGNALS, ClientType, ErrorCode, Hello, Revoked};
use tokio::io::AsyncWriteExt as _;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::child::ChildHandle;
use crate::hub::Hub;
use crate::lease::LeaseHandle;
use crate::outbox::{Out, Outbox};

pub use shellper_leased::sock::{Listener, bind};

/// Most simultaneous connections (handshaking or not) of any kind.
pub const MAX_CONNECTIONS: usize = 256;
/// Extra slots, used only when the [`MAX_CONNECTIONS`] are taken, and kept
/// for status readers (leasectl) and the lease holder, so idle terminal
/// clients can never lock out the operator or the Tower. A connection in a
/// reserved slot that turns out to be a terminal is refused with `Busy`; a
/// status reader there is closed after idling for the handshake timeout; a
/// tower there must hold the lease by the end of the handshake timeout.
pub const RESERVED_CONNECTIONS: usize = 16;
/// How long the writer keeps flushing queued frames after a close.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);
/// A peer that accepts no bytes for this long is disconnected, whole
/// (SPEC §7). Measured per write call, so a slow reader that keeps taking
/// bytes gets a full REPLAY however long it takes.
pub const DEFAULT_WRITE_STALL: Duration = Duration::from_secs(30);
/// Longest wait at a barrier for the peer to read what was written before
/// it (a peer that reads nothing for this long gets the rest anyway).
const PEER_READ_WAIT: Duration = Duration::from_secs(1);
/// How often the writer looks at the socket's unread byte count there.
const PEER_READ_POLL: Duration = Duration::from_millis(2);

/// Everything a connection task needs.
#[derive(Debug)]
pub struct Shared {
    pub hub: Arc<Hub>,
    pub lease: LeaseHandle,
    pub child: ChildHandle,
    pub handshake_timeout: Duration,
    /// A peer that accepts no bytes for this long is disconnected.
    pub write_stall: Duration,
    pub status: crate::app::StatusSource,
    /// Every connection task and writer, so the exit path can wait for
    /// final frames (TERMINATED) to be flushed.
    pub tracker: TaskTracker,
    next_conn: AtomicU64,
    slots: Slots,
    my_uid: u32,
}

impl Shared {
    pub fn new(
        hub: Arc<Hub>,
        lease: LeaseHandle,
        child: ChildHandle,
        handshake_timeout: Duration,
        status: crate::app::StatusSource,
    ) -> Self {
        Shared {
            hub,
            lease,
            child,
            handshake_timeout,
            write_stall: DEFAULT_WRITE_STALL,
            status,
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            slots: Slots::new(MAX_CONNECTIONS, RESERVED_CONNECTIONS),
            my_uid: rustix::process::geteuid().as_raw(),
        }
    }

    /// Sets the write stall limit (tests use short ones).
    #[must_use]
    pub fn with_write_stall(mut self, stall: Duration) -> Self {
        self.write_stall = stall;
        self
    }
}

/// Accepts connections until `stop` is cancelled.
pub async fn accept_loop(listener: Listener, shared: Arc<Shared>, stop: CancellationToken) {
    let tracker = shared.tracker.clone();
    sock::accept_loop(listener, tracker, stop, move |stream| {
        serve(shared.clone(), stream)
    })
    .await;
}

/// Writes frames from the outbox, in priority order, until it is closed
/// and drained, the connection is cancelled, or a write fails or stalls.
/// Queued frames are written before a cancellation is noticed (biased
/// select), so a last ERROR/TERMINATED/REVOKED pushed just before the
/// cancel still reaches the peer.
///
/// A failed or stalled write ends the connection whole: the outbox is
/// closed, the reader is cancelled (so the slot is freed and the client
/// unregistered) and the socket is shut down both ways, so nothing follows
/// a half-written frame and the peer sees the end at once.
async fn writer(outbox: Arc<Outbox>, mut w: Half, cancel: CancellationToken, stall: Duration) {
    let mut buf = bytes::BytesMut::new();
    loop {
        let next = tokio::select! {
            biased;
            f = outbox.next() => f,
            () = cancel.cancelled() => break,
        };
        let Some(out) = next else {
            break;
        };
        if let Err(why) = write_out(&mut w, &mut buf, &out, stall).await {
            tracing::info!(error = %why, "write failed; closing the connection");
            abort_connection(&outbox, &w, &cancel);
            return;
        }
    }
    // Cancelled or closed: flush what is still queued for a bounded time,
    // then end the connection.
    outbox.close();
    let flushed = tokio::time::timeout(FLUSH_ON_CLOSE, async {
        while let Some(out) = outbox.next().await {
            write_out(&mut w, &mut buf, &out, stall).await?;
        }
        Ok::<(), io::Error>(())
    })
    .await;
    match flushed {
        Ok(Ok(())) => w.shutdown(rustix::net::Shutdown::Write),
        _ => abort_connection(&outbox, &w, &cancel),
    }
}

/// Ends a connection whose writer cannot go on.
fn abort_connection(outbox: &Outbox, w: &Half, cancel: &CancellationToken) {
    outbox.close();
    cancel.cancel();
    w.shutdown(rustix::net::Shutdown::Both);
}

/// Writes a frame, or waits at a barrier.
async fn write_out(
    w: &mut Half,
    buf: &mut bytes::BytesMut,
    out: &Out,
    stall: Duration,
) -> io::Result<()> {
    match out {
        Out::Frame(f) => write_frame(w, buf, f, stall).await,
        Out::AwaitPeerRead => {
            await_peer_read(w).await;
            Ok(())
        }
    }
}

/// Waits until the peer has read every byte written so far (the socket's
/// send queue, `SIOCOUTQ`, is empty), at most [`PEER_READ_WAIT`]. What is
/// written next then reaches the peer in a read of its own.
async fn await_peer_read(w: &Half) {
    use std::os::fd::AsFd;
    let deadline = tokio::time::Instant::now() + PEER_READ_WAIT;
    loop {
        let unread = match &*w.0 {
            Stream::UdSocket(s) => unread_bytes(s.as_fd()),
        };
        match unread {
            Ok(0) => return,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(PEER_READ_POLL).await;
            }
            Ok(left) => {
                tracing::debug!(left, "peer did not read within the barrier wait");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "SIOCOUTQ");
                return;
            }
        }
    }
}

/// Bytes written to a Unix stream socket that its peer has not read yet.
fn unread_bytes(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is a valid open socket for the duration of the call;
    // SIOCOUTQ (= TIOCOUTQ) writes one c_int through the pointer, which
    // points at a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Encodes and writes one frame. Each write call must make progress
/// within `stall`, else the frame fails with `TimedOut`.
async fn write_frame(
    w: &mut Half,
    buf: &mut bytes::BytesMut,
    frame: &Frame,
    stall: Duration,
) -> io::Result<()> {
    buf.clear();
    if let Err(e) = frame.encode_into(buf) {
        tracing::warn!(error = %e, "dropping unencodable frame");
        return Ok(());
    }
    let mut rest: &[u8] = buf;
    while !rest.is_empty() {
        match tokio::time::timeout(stall, w.write(rest)).await {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => rest = &rest[n..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("peer accepted no bytes for {stall:?}"),
                ));
            }
        }
    }
    Ok(())
}

struct Conn {
    id: ConnId,
    kind: ClientType,
    outbox: Arc<Outbox>,
    cancel: CancellationToken,
    /// The socket, to notice a peer that closed while its input waits.
    sock: Arc<Stream>,
    /// Room for this client's input in the PTY queue, in bytes.
    input_budget: Arc<tokio::sync::Semaphore>,
}

/// How often a reader blocked on a full input queue checks that its peer
/// is still there.
const HANGUP_POLL: Duration = Duration::from_millis(200);

impl Conn {
    /// Resolves when the connection is cancelled or the peer has closed its
    /// socket entirely (POLLHUP; a peer that only shut down its write side
    /// still gets its input delivered). Used while the reader waits for
    /// room in the input queue, when it does not read the socket.
    async fn gone(&self) {
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

    fn send(&self, f: Frame) {
        if self.outbox.control(f) == crate::outbox::Pushed::Overflow {
            self.cancel.cancel();
        }
    }
}

/// Serves one connection from accept to close.
async fn serve(shared: Arc<Shared>, stream: Stream) {
    let Some(peer_pid) = sock::peer_pid_if_same_uid(&stream, shared.my_uid) else {
        return;
    };
    let Some(slot) = shared.slots.acquire() else {
        tracing::warn!(peer_pid, "too many connections; refusing");
        sock::refuse_busy(stream).await;
        return;
    };
    let reserved = slot.reserved;
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let stream = Arc::new(stream);
    let sock = stream.clone();
    let (r, w) = (Half(stream.clone()), Half(stream));
    let outbox = Arc::new(Outbox::new());
    let cancel = CancellationToken::new();
    shared.tracker.spawn(writer(
        outbox.clone(),
        w,
        cancel.clone(),
        shared.write_stall,
    ));
    let mut frames = FramedRead::new(r, FrameCodec::new());
    let mut conn = Conn {
        id,
        kind: ClientType::Status,
        outbox,
        cancel,
        sock,
        input_budget: crate::child::client_input_budget(),
    };
    let registered = match handshake(&shared, &mut frames, &mut conn).await {
        Some(hello) if reserved && hello.client_type == ClientType::Terminal => {
            tracing::info!(conn = id, peer_pid, "terminal in a reserved slot; refusing");
            conn.send(error_frame(
                ErrorCode::Busy,
                "too many connections: the remaining slots are reserved for status \
                 readers and the lease holder",
            ));
            false
        }
        Some(hello) => {
            conn.kind = hello.client_type;
            shared.hub.register(
                id,
                &hello,
                peer_pid,
                conn.outbox.clone(),
                conn.cancel.clone(),
            );
            tracing::debug!(conn = id, peer_pid, kind = ?hello.client_type, "client attached");
            if hello.client_type == ClientType::Tower && !shared.lease.is_leased() {
                legacy_acquire(&shared, &conn).await;
            }
            read_loop(&shared, &mut frames, &conn, reserved).await;
            true
        }
        None => false,
    };
    if registered {
        shared.hub.unregister(id);
    }
    // Always tell the driver: it ignores connections that never held.
    shared.lease.disconnected(id);
    conn.outbox.close();
    tracing::debug!(conn = id, "connection closed");
}

async fn next_frame(
    frames: &mut FramedRead<Half, FrameCodec>,
    cancel: &CancellationToken,
) -> Option<std::result::Result<Frame, CodecError>> {
    tokio::select! {
        f = frames.next() => f,
        () = cancel.cancelled() => None,
    }
}

fn protocol_error(shared: &Shared, conn: &Conn, e: CodecError) {
    match e {
        CodecError::Frame(fe) => {
            tracing::info!(conn = conn.id, error = %fe, "protocol error; closing connection");
            shared.lease.protocol_error();
            conn.send(error_frame(ErrorCode::Protocol, fe.to_string()));
        }
        CodecError::Io(ioe) => {
            tracing::debug!(conn = conn.id, error = %ioe, "read failed");
        }
    }
}

/// Waits for HELLO. Other frames before it are ignored as in codev v1,
/// except lease requests, which get an ERROR (they need a handshake).
async fn handshake(
    shared: &Shared,
    frames: &mut FramedRead<Half, FrameCodec>,
    conn: &mut Conn,
) -> Option<Hello> {
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    loop {
        let f = match tokio::time::timeout_at(deadline, next_frame(frames, &conn.cancel)).await {
            Err(_) => {
                tracing::info!(conn = conn.id, "no HELLO within the handshake timeout");
                conn.send(error_frame(
                    ErrorCode::Protocol,
                    "handshake timeout: send HELLO first",
                ));
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                protocol_error(shared, conn, e);
                return None;
            }
            Ok(Some(Ok(f))) => f,
        };
        match f {
            Frame::Hello(h) => return Some(h),
            Frame::Acquire(_) | Frame::Renew(_) | Frame::Release(_) | Frame::StatusRequest(_) => {
                conn.send(error_frame(
                    ErrorCode::NotLeased,
                    "send HELLO before lease requests",
                ));
            }
            _ => {}
        }
    }
}

async fn legacy_acquire(shared: &Shared, conn: &Conn) {
    match shared.lease.acquire_legacy(conn.id).await {
        Ok(g) => {
            if let Some((old, old_epoch)) = g.revoked {
                tracing::info!(old, new = conn.id, "legacy: new tower replaces the old one");
                shared.hub.kick(
                    old,
                    Some(Frame::Revoked(Revoked {
                        old_epoch,
                        new_epoch: g.epoch,
                    })),
                );
            }
        }
        Err(r) => tracing::info!(conn = conn.id, reject = %r, "legacy acquire refused"),
    }
}

/// Reads and dispatches frames until the connection ends. A connection in
/// a reserved slot must earn it ([`RESERVED_CONNECTIONS`]): a status reader
/// may idle at most the handshake timeout between requests, a tower must
/// hold the lease once the handshake timeout has passed.
async fn read_loop(
    shared: &Shared,
    frames: &mut FramedRead<Half, FrameCodec>,
    conn: &Conn,
    reserved: bool,
) {
    let mut deadline = reserved.then(|| tokio::time::Instant::now() + shared.handshake_timeout);
    loop {
        let item = match deadline {
            None => next_frame(frames, &conn.cancel).await,
            Some(d) => match tokio::time::timeout_at(d, next_frame(frames, &conn.cancel)).await {
                Ok(item) => item,
                Err(_) => {
                    if conn.kind == ClientType::Tower && shared.lease.is_holder(conn.id).await {
                        deadline = None;
                        continue;
                    }
                    tracing::info!(conn = conn.id, kind = ?conn.kind, "reserved slot unused; closing");
                    conn.send(error_frame(
                        ErrorCode::Busy,
                        "reserved connection slot: idle status reader or tower without the lease",
                    ));
                    return;
                }
            },
        };
        let Some(item) = item else {
            return;
        };
        match item {
            Ok(frame) => dispatch(shared, conn, frame).await,
            Err(e) => {
                protocol_error(shared, conn, e);
                return;
            }
        }
        if deadline.is_some() && conn.kind == ClientType::Status {
            deadline = Some(tokio::time::Instant::now() + shared.handshake_timeout);
        }
    }
}

async fn dispatch(shared: &Shared, conn: &Conn, frame: Frame) {
    let can_write = conn.kind != ClientType::Status;
    match frame {
        Frame::Data(b) if can_write => {
            shared.child.input(b, &conn.input_budget, conn.gone()).await;
        }
        Frame::Resize(r) if can_write => {
            shared.child.resize(r.cols.max(1), r.rows.max(1));
        }
        Frame::Signal(s) => {
            if !ALLOWED_SIGNALS.contains(&s.signal) {
                tracing::info!(conn = conn.id, signal = s.signal, "signal not allowed");
                conn.send(error_frame(
                    ErrorCode::Forbidden,
                    format!("signal {} is not allowed", s.signal),
                ));
            } else if shared.lease.is_holder(conn.id).await {
                tracing::debug!(conn = conn.id, signal = s.signal, "SIGNAL to the child");
                shared.child.signal(s.signal);
            } else {
                conn.send(error_frame(ErrorCode::Forbidden, "SIGNAL needs the lease"));
            }
        }
        Frame::Spawn(s) => {
            if shared.lease.is_holder(conn.id).await {
                if let Err(e) = shared.child.spawn(s).await {
                    tracing::warn!(error = %e, "SPAWN failed");
                    conn.send(error_frame(
                        ErrorCode::Protocol,
                        format!("spawn failed: {e}"),
                    ));
                }
            } else {
                conn.send(error_frame(ErrorCode::Forbidden, "SPAWN needs the lease"));
            }
        }
        Frame::Ping => conn.send(Frame::Pong),
        f @ (Frame::Acquire(_) | Frame::Renew(_) | Frame::Release(_)) => {
            if let Some(a) = shared.lease.answer(conn.id, f).await {
                if let Some(reply) = a.reply {
                    conn.send(reply);
                }
                if let Some((old, revoked)) = a.revoked {
                    shared.hub.send(old, revoked);
                }
            }
        }
        Frame::StatusRequest(_) => {
            if let Some(s) = shared.status.status(&shared.hub, &shared.lease).await {
                conn.send(Frame::Status(Box::new(s)));
            }
        }
        // DATA/RESIZE from a status client, frames only a shellper sends,
        // duplicate HELLO, PONG and unknown types: ignored (v1 semantics).
        _ => {}
    }
}
