//! The reader side of a connection: frames from the socket, with every
//! byte it buffers bounded (SPEC.md §7, "Queued input").
//!
//! * DATA and REPLAY are streamed ([`FrameCodec::streaming`]): a 16 MiB
//!   frame is handed on in pieces of at most 16 KiB as it arrives, so the
//!   session's own budget (the PTY's input queue) applies from the first
//!   byte, and a peer that sends part of a frame and stops pins no more
//!   than one read.
//! * Reads stop at [`READ_AHEAD`] bytes buffered, or at the end of the
//!   frame in progress when it is larger (a SPAWN or HELLO of up to 1 MiB,
//!   a STATUS reply of up to 256 KiB): nothing past that frame is read.
//! * What a large frame needs beyond [`READ_AHEAD`] is taken from a pool
//!   shared by every connection ([`LARGE_FRAMES_TOTAL`]) before it is read,
//!   and given back once the frame is decoded (and the buffer shrunk):
//!   while the pool is empty, such a connection is simply not read (the
//!   kernel's socket buffer pushes back on its peer). Small frames (every
//!   lease frame, a typical HELLO) never wait for it.
//!
//! So a connection holds at most [`READ_AHEAD`] bytes, or one frame of at
//! most 1 MiB while the pool allows; all connections together at most
//! (slots × [`READ_AHEAD`]) + [`LARGE_FRAMES_TOTAL`].

use std::sync::Arc;

use bytes::BytesMut;
use shellper_protocol::Frame;
use shellper_protocol::codec::{CodecError, FrameCodec};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Decoder as _;

use crate::sock::Half;

/// Bytes a connection may buffer ahead of the frame it decodes.
pub const READ_AHEAD: usize = 16 * 1024;
/// Bytes of large frames (their part beyond [`READ_AHEAD`]) buffered over
/// every connection together: eight SPAWNs of the largest size.
pub const LARGE_FRAMES_TOTAL: usize = 8 * 1024 * 1024;

/// The pool of [`LARGE_FRAMES_TOTAL`] bytes the readers of one server share.
pub fn large_frame_pool() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(LARGE_FRAMES_TOTAL))
}

/// Frames from one connection; [`FrameReader::next`] is cancel-safe (all
/// state is in the struct: a cancelled read appended bytes or did not).
#[derive(Debug)]
pub struct FrameReader {
    io: Half,
    buf: BytesMut,
    codec: FrameCodec,
    pool: Arc<Semaphore>,
    /// The pool's share for the large frame being read.
    held: Option<OwnedSemaphorePermit>,
    eof: bool,
    /// The last frame returned continues a streamed DATA/REPLAY frame.
    continued: bool,
}

impl FrameReader {
    pub fn new(io: Half, pool: Arc<Semaphore>) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(READ_AHEAD),
            codec: FrameCodec::streaming(),
            pool,
            held: None,
            eof: false,
            continued: false,
        }
    }

    /// Whether the last frame returned is a later piece of a streamed
    /// DATA or REPLAY frame (a session that refuses DATA answers the first
    /// piece only).
    pub fn continued(&self) -> bool {
        self.continued
    }

    /// Bytes of buffer this reader holds now.
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// The next frame (or piece of a streamed one); `None` at the end of
    /// the stream.
    pub async fn next(&mut self) -> Option<Result<Frame, CodecError>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(f)) => {
                    self.continued = self.codec.last_continued();
                    self.frame_done();
                    return Some(Ok(f));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.eof {
                return match self.codec.decode_eof(&mut self.buf) {
                    Ok(f) => f.map(Ok),
                    Err(e) => Some(Err(e)),
                };
            }
            let have = self.buf.len();
            let want = have + self.codec.wanted(&self.buf).max(1);
            if want > READ_AHEAD && self.held.is_none() {
                // Invariant: a frame decoded whole is at most 1 MiB plus
                // its header (the codec refused larger headers), far below
                // u32 and within the pool.
                let n = (want - READ_AHEAD) as u32;
                let permit = self.pool.clone().acquire_many_owned(n).await.ok()?;
                self.held = Some(permit);
            }
            let room = want.max(READ_AHEAD) - have;
            self.buf.reserve(room);
            match (&mut self.io)
                .take(room as u64)
                .read_buf(&mut self.buf)
                .await
            {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// A frame was decoded: its share of the pool goes back, and a buffer
    /// grown for it is given back too.
    fn frame_done(&mut self) {
        if self.held.take().is_some() && self.buf.capacity() > 2 * READ_AHEAD {
            let mut small = BytesMut::with_capacity(READ_AHEAD.max(self.buf.len()));
            small.extend_from_slice(&self.buf);
            crate::mem::released(self.buf.capacity());
            self.buf = small;
        }
    }
}
