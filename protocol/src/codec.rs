//! `tokio_util::codec` adapter over [`crate::frame::parse`].
//!
//! Use with `Framed`/`FramedRead`. Reading the next frame inside
//! `tokio::select!` is cancel-safe; writing is not, so connections should give
//! their sink to a single writer task fed by a channel.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{self, Frame, FrameError, FrameType, HEADER_LEN, Parsed};

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
}

impl FrameCodec {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if self.skipping > 0 {
            let n = self.skipping.min(src.len());
            src.advance(n);
            self.skipping -= n;
            if self.skipping > 0 {
                return Ok(None);
            }
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
            None if src.is_empty() && self.skipping == 0 => Ok(None),
            None => {
                let needed = match frame::parse(src) {
                    Ok(Parsed::Incomplete { needed }) => needed,
                    _ => src.len() + self.skipping,
                };
                Err(FrameError::Truncated {
                    buffered: src.len(),
                    needed: needed.max(src.len() + self.skipping),
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
