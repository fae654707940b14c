//! `tokio_util::codec` adapter over [`crate::frame::parse`].
//!
//! Use with `Framed`/`FramedRead`. Reading the next frame inside
//! `tokio::select!` is cancel-safe; writing is not, so connections should give
//! their sink to a single writer task fed by a channel.
//!
//! **Streaming bulk payloads.** DATA and REPLAY may carry up to 16 MiB (the
//! wire limit codev sends within). A decoder that waits for the whole frame
//! holds all of it before anything can be done with it: a peer that sends
//! 15 MiB of a frame and stops pins 15 MiB, per connection. In streaming
//! mode ([`FrameCodec::streaming`]) a DATA or REPLAY frame is delivered as
//! it arrives, as consecutive frames of the same type of at most
//! [`STREAM_PIECE`] bytes each: terminal bytes are a stream, and how they
//! are cut carries no meaning. Every other frame is still decoded whole,
//! and is at most 1 MiB ([`crate::frame::MAX_SPAWN_PAYLOAD`]), so what a
//! streaming decoder needs buffered is one such frame at most
//! ([`FrameCodec::wanted`] says how much more the frame in progress needs).

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{self, Frame, FrameError, FrameType, HEADER_LEN, Parsed};

/// Largest piece of a streamed DATA or REPLAY payload.
pub const STREAM_PIECE: usize = 16 * 1024;

/// Errors of the codec: a protocol error or an IO error of the transport.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("socket IO: {0}")]
    Io(#[from] std::io::Error),
}

/// Frame codec with per-type limits.
///
/// Unknown frame types are skipped as their bytes arrive (never buffered
/// whole) and surfaced once as [`Frame::Unknown`].
#[derive(Debug, Default)]
pub struct FrameCodec {
    /// Bytes of an unknown frame's payload still to discard.
    skipping: usize,
    /// Deliver DATA and REPLAY payloads in pieces as they arrive.
    streaming: bool,
    /// The bulk frame being streamed and the payload bytes still to come.
    bulk: Option<(FrameType, usize)>,
    /// Whether a piece of the bulk frame in progress was already returned.
    bulk_started: bool,
    /// Whether the last item decoded was a later piece of a streamed frame.
    last_continued: bool,
}

impl FrameCodec {
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec that delivers DATA and REPLAY payloads in pieces of at most
    /// [`STREAM_PIECE`] bytes as they arrive, never buffering a whole bulk
    /// frame (module docs).
    pub fn streaming() -> Self {
        FrameCodec {
            streaming: true,
            ..Self::default()
        }
    }

    /// Whether a frame is in progress (a streamed payload, or an unknown
    /// frame being skipped): the stream may not end here.
    pub fn mid_frame(&self) -> bool {
        self.skipping > 0 || self.bulk.is_some()
    }

    /// Whether the last item [`Decoder::decode`] returned is a later piece
    /// of a streamed DATA or REPLAY frame (not its first piece): a session
    /// that refuses a frame answers its first piece only. Not the same as
    /// "a bulk frame was in progress before the call": a header can arrive
    /// alone, and the piece after it is still the first.
    pub fn last_continued(&self) -> bool {
        self.last_continued
    }

    /// How many more bytes, beyond the `buffered` ones, the item in
    /// progress needs before [`Decoder::decode`] can return it: the rest of
    /// a header, of a frame decoded whole, or (streaming, skipping) one
    /// byte: any amount makes progress there. Zero when an item can be
    /// decoded now. A reader uses it to read no more than what a frame
    /// needs, and to know how much memory the frame in progress will take.
    ///
    /// A header over its type's limit reports 0: decoding it fails at once.
    pub fn wanted(&self, buffered: &[u8]) -> usize {
        if self.skipping > 0 || self.bulk.is_some() {
            return usize::from(buffered.is_empty());
        }
        if buffered.len() < HEADER_LEN {
            return HEADER_LEN - buffered.len();
        }
        let len = u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]);
        match FrameType::from_u8(buffered[0]) {
            // Unknown payloads are skipped as they come.
            None => 0,
            Some(t) if len > t.max_payload() => 0,
            Some(t) if self.streaming && is_bulk(t) => 0,
            Some(_) => (HEADER_LEN + len as usize).saturating_sub(buffered.len()),
        }
    }

    /// The next piece of the bulk payload being streamed, if any arrived.
    fn next_piece(&mut self, src: &mut BytesMut) -> Option<Frame> {
        let (ty, left) = self.bulk?;
        let n = left.min(src.len()).min(STREAM_PIECE);
        if n == 0 && left > 0 {
            return None;
        }
        // A copy: the piece must not keep the read buffer's allocation.
        let piece = Bytes::copy_from_slice(&src[..n]);
        src.advance(n);
        self.bulk = (left > n).then_some((ty, left - n));
        self.last_continued = self.bulk_started;
        self.bulk_started = self.bulk.is_some();
        Some(match ty {
            FrameType::Replay => Frame::Replay(piece),
            _ => Frame::Data(piece),
        })
    }
}

fn is_bulk(t: FrameType) -> bool {
    matches!(t, FrameType::Data | FrameType::Replay)
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.last_continued = false;
        if self.skipping > 0 {
            let n = self.skipping.min(src.len());
            src.advance(n);
            self.skipping -= n;
            if self.skipping > 0 {
                return Ok(None);
            }
        }
        if self.bulk.is_some() {
            return Ok(self.next_piece(src));
        }
        if self.streaming
            && src.len() >= HEADER_LEN
            && let Some(t) = FrameType::from_u8(src[0]).filter(|t| is_bulk(*t))
        {
            let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
            if len > t.max_payload() {
                return Err(FrameError::Oversized {
                    ty: src[0],
                    len,
                    limit: t.max_payload(),
                }
                .into());
            }
            src.advance(HEADER_LEN);
            self.bulk = Some((t, len as usize));
            return Ok(self.next_piece(src));
        }
        if src.len() >= HEADER_LEN && FrameType::from_u8(src[0]).is_none() {
            let ty = src[0];
            let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
            if len > frame::MAX_UNKNOWN_PAYLOAD {
                return Err(FrameError::Oversized {
                    ty,
                    len,
                    limit: frame::MAX_UNKNOWN_PAYLOAD,
                }
                .into());
            }
            // Surface the frame now and discard its payload as it arrives,
            // so an unknown frame never occupies memory.
            src.advance(HEADER_LEN);
            let n = (len as usize).min(src.len());
            src.advance(n);
            self.skipping = len as usize - n;
            return Ok(Some(Frame::Unknown { ty, len }));
        }
        match frame::parse(src)? {
            Parsed::Incomplete { needed } => {
                src.reserve(needed.saturating_sub(src.len()));
                Ok(None)
            }
            Parsed::Frame { frame, consumed } => {
                src.advance(consumed);
                Ok(Some(frame))
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() && self.skipping == 0 && self.bulk.is_none() => Ok(None),
            None => {
                let rest = self.skipping + self.bulk.map_or(0, |(_, left)| left);
                let needed = match frame::parse(src) {
                    Ok(Parsed::Incomplete { needed }) if rest == 0 => needed,
                    _ => src.len() + rest,
                };
                Err(FrameError::Truncated {
                    buffered: src.len(),
                    needed: needed.max(src.len() + rest),
                }
                .into())
            }
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode_into(dst)?;
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode_into(dst)?;
        Ok(())
    }
}
