//! The writer task of a connection: the only code that writes to its socket.
//!
//! It drains the connection's [`Outbox`] (control lane first) and owns the
//! write half. A write that fails, or makes no progress for the write stall
//! limit, ends the connection whole (SPEC.md §7): the outbox is closed, the
//! reader is cancelled (so the slot is freed and the client unregistered)
//! and the socket is shut down both ways, so nothing follows a half-written
//! frame and the peer sees the end at once.
//!
//! Memory: what a connection can make this task hold is bounded by its
//! outbox (see [`crate::outbox`]) plus one encoded frame in `buf`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use shellper_protocol::Frame;
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Out, Outbox};
use crate::sock::{Half, Stream};

/// How long the writer keeps flushing queued frames after a close.
pub(super) const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);
/// How often the writer first looks at the socket's unread byte count at a
/// barrier; the interval doubles up to [`PEER_READ_POLL_MAX`], so a peer
/// that reads at once is seen within a millisecond or two and an idle one
/// costs a few syscalls a second.
const PEER_READ_POLL: Duration = Duration::from_millis(1);
const PEER_READ_POLL_MAX: Duration = Duration::from_millis(50);

/// Writes frames from the outbox, in priority order, until it is closed
/// and drained, the connection is cancelled, or a write fails or stalls.
/// Queued frames are written before a cancellation is noticed (biased
/// select), so a last ERROR/TERMINATED/REVOKED pushed just before the
/// cancel still reaches the peer.
pub(super) async fn writer(
    outbox: Arc<Outbox>,
    mut w: Half,
    cancel: CancellationToken,
    stall: Duration,
) {
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
        let written = match &out {
            // The ordered lane waits for the peer; control frames go on.
            Out::AwaitPeerRead => await_peer_read(&mut w, &mut buf, &outbox, &cancel, stall).await,
            Out::Frame(f) => write_frame(&mut w, &mut buf, f, stall).await,
        };
        if let Err(why) = written {
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
            match &out {
                // Closing: what is left goes out without waiting.
                Out::AwaitPeerRead => {}
                Out::Frame(f) => write_frame(&mut w, &mut buf, f, stall).await?,
            }
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

/// Waits at a barrier until the peer has read every byte written so far
/// (the socket's send queue, `SIOCOUTQ`, is empty): what is written next
/// then reaches the peer in a read of its own (SPEC §7: no EXIT in the read
/// that brings WELCOME). Control frames queued meanwhile are written (they
/// are not held by the barrier). The wait is bounded by the write stall
/// limit, like any write: a peer that reads nothing for that long gets the
/// rest anyway (its next write stall then closes it). A cancelled
/// connection stops waiting.
async fn await_peer_read(
    w: &mut Half,
    buf: &mut bytes::BytesMut,
    outbox: &Outbox,
    cancel: &CancellationToken,
    stall: Duration,
) -> io::Result<()> {
    use std::os::fd::AsFd;
    let deadline = tokio::time::Instant::now() + stall;
    let mut poll = PEER_READ_POLL;
    loop {
        while let Some(f) = outbox.try_control() {
            write_frame(w, buf, &f, stall).await?;
        }
        let unread = match &*w.0 {
            Stream::UdSocket(s) => unread_bytes(s.as_fd()),
        };
        match unread {
            Ok(0) => return Ok(()),
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(poll) => {}
                }
                poll = (poll * 2).min(PEER_READ_POLL_MAX);
            }
            Ok(left) => {
                tracing::info!(
                    left,
                    "peer read nothing at a barrier for {stall:?}; writing on"
                );
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, "SIOCOUTQ");
                return Ok(());
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
/// within `stall`, else the frame fails with `TimedOut`: a slow reader
/// that keeps taking bytes gets a large REPLAY however long it takes.
async fn write_frame(
    w: &mut Half,
    buf: &mut bytes::BytesMut,
    frame: &Frame,
    stall: Duration,
) -> io::Result<()> {
    // A large REPLAY or DATA payload is written from where it is, after
    // its header, rather than copied into `buf`: a copy would double what
    // a client taking a large REPLAY holds, and `buf` would keep that
    // size for the connection's life.
    if let Frame::Data(p) | Frame::Replay(p) = frame
        && p.len() > DIRECT_PAYLOAD
    {
        buf.clear();
        let mut header = bytes::BytesMut::new();
        if let Err(e) = frame_header(frame, p.len(), &mut header) {
            tracing::warn!(error = %e, "dropping unencodable frame");
            return Ok(());
        }
        write_all(w, &header, stall).await?;
        return write_all(w, p, stall).await;
    }
    buf.clear();
    if let Err(e) = frame.encode_into(buf) {
        // Our own frame, over its limit: a bug, not the peer's fault.
        tracing::warn!(error = %e, "dropping unencodable frame");
        return Ok(());
    }
    if buf.capacity() > 2 * DIRECT_PAYLOAD {
        // A large STATUS grew it: written from a buffer of its own, so
        // the writer does not keep that size afterwards.
        let big = std::mem::take(buf);
        return write_all(w, &big, stall).await;
    }
    write_all(w, buf, stall).await
}

/// Payloads above this are written in place, not copied with their header.
const DIRECT_PAYLOAD: usize = 64 * 1024;

/// The 5-byte header of a DATA or REPLAY frame of `len` payload bytes,
/// checked against the type's limit as `encode_into` does.
fn frame_header(
    frame: &Frame,
    len: usize,
    out: &mut bytes::BytesMut,
) -> Result<(), shellper_protocol::FrameError> {
    use bytes::BufMut as _;
    let ty = frame.frame_type().map_or(0, |t| t as u8);
    let limit = frame
        .frame_type()
        .map_or(shellper_protocol::frame::MAX_PAYLOAD, |t| t.max_payload());
    let len32 = u32::try_from(len).unwrap_or(u32::MAX);
    if len32 > limit {
        return Err(shellper_protocol::FrameError::TooLargeToEncode {
            name: frame.frame_type().map_or("UNKNOWN", |t| t.name()),
            len,
            limit,
        });
    }
    out.put_u8(ty);
    out.put_u32(len32);
    Ok(())
}

/// Writes all of `bytes`; each write call must make progress within
/// `stall`, else `TimedOut`.
async fn write_all(w: &mut Half, bytes: &[u8], stall: Duration) -> io::Result<()> {
    let mut rest: &[u8] = bytes;
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
