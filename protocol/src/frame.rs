//! Frames: `[type u8][length u32 big-endian][payload]`.
//!
//! This is codev's shellper protocol v1 framing. The parser here works on
//! plain byte slices (mini-redis style: parsing is separate from connection
//! IO), enforces a per-type payload limit *before* buffering a payload, and
//! decodes payloads strictly: undecodable payloads and trailing bytes are
//! errors. Unknown frame types are surfaced as [`Frame::Unknown`] (their
//! payload is skipped), never fatal, so newer peers can add frame types.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

use crate::msg::*;

/// Header length: one type byte plus a 4-byte big-endian length.
pub const HEADER_LEN: usize = 5;

/// Largest payload of any frame, known or unknown (codev's MAX_FRAME_SIZE).
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Limit for DATA and REPLAY payloads (raw terminal bytes).
pub const MAX_DATA_PAYLOAD: u32 = MAX_PAYLOAD;
/// Limit for SPAWN (carries an environment) and HELLO/WELCOME.
pub const MAX_SPAWN_PAYLOAD: u32 = 1024 * 1024;
/// Limit for small JSON control payloads (RESIZE, SIGNAL, EXIT, HELLO, WELCOME).
pub const MAX_CONTROL_PAYLOAD: u32 = 64 * 1024;
/// Limit for lease frames (ACQUIRE … ERROR, except STATUS).
pub const MAX_LEASE_PAYLOAD: u32 = 4 * 1024;
/// Limit for STATUS (it lists clients and the command line).
pub const MAX_STATUS_PAYLOAD: u32 = 256 * 1024;
/// Limit for frames of a type we do not know (skipped, never buffered whole).
pub const MAX_UNKNOWN_PAYLOAD: u32 = MAX_PAYLOAD;

/// Every frame type of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Data = 0x01,
    Resize = 0x02,
    Signal = 0x03,
    Exit = 0x04,
    Replay = 0x05,
    Ping = 0x06,
    Pong = 0x07,
    Hello = 0x08,
    Welcome = 0x09,
    Spawn = 0x0A,
    Acquire = 0x20,
    Grant = 0x21,
    Renew = 0x22,
    Renewed = 0x23,
    Release = 0x24,
    Released = 0x25,
    Terminated = 0x26,
    StatusRequest = 0x27,
    Status = 0x28,
    Revoked = 0x29,
    Error = 0x2A,
}

impl FrameType {
    /// All known types, in numeric order.
    pub const ALL: [FrameType; 21] = [
        FrameType::Data,
        FrameType::Resize,
        FrameType::Signal,
        FrameType::Exit,
        FrameType::Replay,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::Hello,
        FrameType::Welcome,
        FrameType::Spawn,
        FrameType::Acquire,
        FrameType::Grant,
        FrameType::Renew,
        FrameType::Renewed,
        FrameType::Release,
        FrameType::Released,
        FrameType::Terminated,
        FrameType::StatusRequest,
        FrameType::Status,
        FrameType::Revoked,
        FrameType::Error,
    ];

    /// The type for a byte, or `None` for an unknown type.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        FrameType::ALL.iter().copied().find(|t| *t as u8 == b)
    }

    /// Largest payload accepted for this type.
    pub fn max_payload(self) -> u32 {
        use FrameType::*;
        match self {
            Data | Replay => MAX_DATA_PAYLOAD,
            Spawn | Hello | Welcome => MAX_SPAWN_PAYLOAD,
            Resize | Signal | Exit => MAX_CONTROL_PAYLOAD,
            Ping | Pong => 0,
            Status => MAX_STATUS_PAYLOAD,
            Acquire | Grant | Renew | Renewed | Release | Released | Terminated | StatusRequest
            | Revoked | Error => MAX_LEASE_PAYLOAD,
        }
    }

    /// Upper-case protocol name, as used in SPEC.md and logs.
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Data => "DATA",
            Resize => "RESIZE",
            Signal => "SIGNAL",
            Exit => "EXIT",
            Replay => "REPLAY",
            Ping => "PING",
            Pong => "PONG",
            Hello => "HELLO",
            Welcome => "WELCOME",
            Spawn => "SPAWN",
            Acquire => "ACQUIRE",
            Grant => "GRANT",
            Renew => "RENEW",
            Renewed => "RENEWED",
            Release => "RELEASE",
            Released => "RELEASED",
            Terminated => "TERMINATED",
            StatusRequest => "STATUS_REQUEST",
            Status => "STATUS",
            Revoked => "REVOKED",
            Error => "ERROR",
        }
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data(Bytes),
    Resize(Resize),
    Signal(SignalMsg),
    Exit(ExitMsg),
    Replay(Bytes),
    Ping,
    Pong,
    Hello(Hello),
    Welcome(Welcome),
    Spawn(Spawn),
    Acquire(Acquire),
    Grant(Grant),
    Renew(Renew),
    Renewed(Renewed),
    Release(Release),
    Released(Released),
    Terminated(Terminated),
    StatusRequest(StatusRequest),
    Status(Box<Status>),
    Revoked(Revoked),
    Error(ErrorMsg),
    /// A frame of a type this peer does not know; its payload was skipped.
    /// Peers must ignore these (forward compatibility).
    Unknown {
        ty: u8,
        len: u32,
    },
}

/// What went wrong with a frame. Every variant closes only the connection it
/// arrived on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces more payload than the type allows.
    #[error("frame type 0x{ty:02x} announces {len} payload bytes, over its limit of {limit}")]
    Oversized { ty: u8, len: u32, limit: u32 },
    /// The payload is not a valid encoding of the type's message.
    #[error("frame type 0x{ty:02x} ({name}): payload does not decode: {detail}")]
    Undecodable {
        ty: u8,
        name: &'static str,
        detail: String,
    },
    /// The payload decoded but bytes were left over.
    #[error("frame type 0x{ty:02x} ({name}): {extra} trailing bytes after the message")]
    Trailing {
        ty: u8,
        name: &'static str,
        extra: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {buffered} bytes buffered, {needed} needed")]
    Truncated { buffered: usize, needed: usize },
    /// An encoder was asked to produce a frame over its type's limit.
    #[error("refusing to encode {name}: payload of {len} bytes is over its limit of {limit}")]
    TooLargeToEncode {
        name: &'static str,
        len: usize,
        limit: u32,
    },
}

impl Frame {
    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Unknown { ty, .. } => *ty,
            other => other.frame_type().map(|t| t as u8).unwrap_or(0),
        }
    }

    /// The frame's known type (`None` for [`Frame::Unknown`]).
    pub fn frame_type(&self) -> Option<FrameType> {
        use FrameType as T;
        Some(match self {
            Frame::Data(_) => T::Data,
            Frame::Resize(_) => T::Resize,
            Frame::Signal(_) => T::Signal,
            Frame::Exit(_) => T::Exit,
            Frame::Replay(_) => T::Replay,
            Frame::Ping => T::Ping,
            Frame::Pong => T::Pong,
            Frame::Hello(_) => T::Hello,
            Frame::Welcome(_) => T::Welcome,
            Frame::Spawn(_) => T::Spawn,
            Frame::Acquire(_) => T::Acquire,
            Frame::Grant(_) => T::Grant,
            Frame::Renew(_) => T::Renew,
            Frame::Renewed(_) => T::Renewed,
            Frame::Release(_) => T::Release,
            Frame::Released(_) => T::Released,
            Frame::Terminated(_) => T::Terminated,
            Frame::StatusRequest(_) => T::StatusRequest,
            Frame::Status(_) => T::Status,
            Frame::Revoked(_) => T::Revoked,
            Frame::Error(_) => T::Error,
            Frame::Unknown { .. } => return None,
        })
    }

    /// True for frames that carry terminal bytes (DATA, REPLAY). Writers give
    /// every other frame priority over these so that lease traffic never
    /// waits behind terminal output.
    pub fn is_bulk(&self) -> bool {
        matches!(self, Frame::Data(_) | Frame::Replay(_))
    }

    /// Encodes the payload of this frame (without header).
    pub fn encode_payload(&self) -> Result<Bytes, FrameError> {
        Ok(match self {
            Frame::Data(b) | Frame::Replay(b) => b.clone(),
            Frame::Ping | Frame::Pong | Frame::Unknown { .. } => Bytes::new(),
            Frame::Resize(m) => json(m),
            Frame::Signal(m) => json(m),
            Frame::Exit(m) => json(m),
            Frame::Hello(m) => json(m),
            Frame::Welcome(m) => json(m),
            Frame::Spawn(m) => json(m),
            Frame::Acquire(m) => pc(m),
            Frame::Grant(m) => pc(m),
            Frame::Renew(m) => pc(m),
            Frame::Renewed(m) => pc(m),
            Frame::Release(m) => pc(m),
            Frame::Released(m) => pc(m),
            Frame::Terminated(m) => pc(m),
            Frame::StatusRequest(m) => pc(m),
            Frame::Status(m) => {
                // v1 payload, then (lease extension v2) the containment.
                let mut b =
                    postcard::to_stdvec(m.as_ref()).expect("lease payloads always serialize");
                if let Some(c) = &m.containment {
                    b.extend_from_slice(&pc(c));
                }
                Bytes::from(b)
            }
            Frame::Revoked(m) => pc(m),
            Frame::Error(m) => pc(m),
        })
    }

    /// Appends the whole frame (header and payload) to `dst`, refusing a
    /// payload over the type's limit (a peer would reject it anyway).
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let payload = self.encode_payload()?;
        let limit = match self.frame_type() {
            Some(t) => t.max_payload(),
            None => MAX_UNKNOWN_PAYLOAD,
        };
        if payload.len() > limit as usize {
            return Err(FrameError::TooLargeToEncode {
                name: self.frame_type().map(FrameType::name).unwrap_or("UNKNOWN"),
                len: payload.len(),
                limit,
            });
        }
        dst.reserve(HEADER_LEN + payload.len());
        dst.put_u8(self.type_byte());
        dst.put_u32(payload.len() as u32);
        dst.extend_from_slice(&payload);
        Ok(())
    }

    /// The whole frame as bytes.
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut b = BytesMut::new();
        self.encode_into(&mut b)?;
        Ok(b.freeze())
    }

    /// Decodes a payload of a known type. `payload` must be the exact payload.
    pub fn decode_payload(ty: FrameType, payload: &[u8]) -> Result<Frame, FrameError> {
        use FrameType as T;
        Ok(match ty {
            T::Data => Frame::Data(Bytes::copy_from_slice(payload)),
            T::Replay => Frame::Replay(Bytes::copy_from_slice(payload)),
            T::Ping => Frame::Ping,
            T::Pong => Frame::Pong,
            T::Resize => Frame::Resize(from_json(ty, payload)?),
            T::Signal => Frame::Signal(from_json(ty, payload)?),
            T::Exit => Frame::Exit(from_json(ty, payload)?),
            T::Hello => Frame::Hello(from_json(ty, payload)?),
            T::Welcome => Frame::Welcome(from_json(ty, payload)?),
            T::Spawn => Frame::Spawn(from_json(ty, payload)?),
            T::Acquire => Frame::Acquire(from_pc(ty, payload)?),
            T::Grant => Frame::Grant(from_pc(ty, payload)?),
            T::Renew => Frame::Renew(from_pc(ty, payload)?),
            T::Renewed => Frame::Renewed(from_pc(ty, payload)?),
            T::Release => Frame::Release(from_pc(ty, payload)?),
            T::Released => Frame::Released(from_pc(ty, payload)?),
            T::Terminated => Frame::Terminated(from_pc(ty, payload)?),
            T::StatusRequest => Frame::StatusRequest(from_pc(ty, payload)?),
            T::Status => Frame::Status(Box::new(status_from(ty, payload)?)),
            T::Revoked => Frame::Revoked(from_pc(ty, payload)?),
            T::Error => Frame::Error(from_pc(ty, payload)?),
        })
    }
}

/// Result of looking at the front of a byte buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet; at least `needed` bytes in total are required.
    Incomplete { needed: usize },
    /// A complete frame occupying the first `consumed` bytes.
    Frame { frame: Frame, consumed: usize },
}

/// Parses one frame from the front of `buf`.
///
/// The header is validated against the type's limit as soon as it is
/// complete, so a hostile length is rejected before any payload is buffered.
/// For unknown types the caller may discard bytes as they arrive; this
/// function simply reports the frame once its payload is present.
pub fn parse(buf: &[u8]) -> Result<Parsed, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(Parsed::Incomplete { needed: HEADER_LEN });
    }
    let ty_byte = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let ty = FrameType::from_u8(ty_byte);
    let limit = ty
        .map(FrameType::max_payload)
        .unwrap_or(MAX_UNKNOWN_PAYLOAD);
    if len > limit {
        return Err(FrameError::Oversized {
            ty: ty_byte,
            len,
            limit,
        });
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(Parsed::Incomplete { needed: total });
    }
    let payload = &buf[HEADER_LEN..total];
    let frame = match ty {
        Some(t) => Frame::decode_payload(t, payload)?,
        None => Frame::Unknown { ty: ty_byte, len },
    };
    Ok(Parsed::Frame {
        frame,
        consumed: total,
    })
}

fn json<T: Serialize>(m: &T) -> Bytes {
    // Invariant: every v1 message is a plain struct of strings, integers,
    // options and string maps, which serde_json always serializes.
    Bytes::from(serde_json::to_vec(m).expect("v1 JSON payloads always serialize"))
}

fn pc<T: Serialize>(m: &T) -> Bytes {
    // Invariant: lease messages are plain structs and externally tagged enums
    // with no maps of non-string keys; postcard serializes them infallibly.
    Bytes::from(postcard::to_stdvec(m).expect("lease payloads always serialize"))
}

fn from_json<T: DeserializeOwned>(ty: FrameType, payload: &[u8]) -> Result<T, FrameError> {
    // serde_json::from_slice already rejects anything but trailing whitespace;
    // report non-whitespace leftovers as Trailing for a precise error kind.
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = T::deserialize(&mut de).map_err(|e| FrameError::Undecodable {
        ty: ty as u8,
        name: ty.name(),
        detail: e.to_string(),
    })?;
    match de.end() {
        Ok(()) => Ok(value),
        Err(_) => {
            let consumed = payload.len()
                - payload
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            // Find where the value ended: re-scan with a stream deserializer.
            let mut stream =
                serde_json::Deserializer::from_slice(payload).into_iter::<serde_json::Value>();
            let _ = stream.next();
            let end = stream.byte_offset();
            Err(FrameError::Trailing {
                ty: ty as u8,
                name: ty.name(),
                extra: consumed.saturating_sub(end).max(1),
            })
        }
    }
}

/// STATUS: the v1 fields, then, when bytes follow (lease extension v2),
/// exactly one [`Containment`](crate::msg::Containment) and nothing more.
fn status_from(ty: FrameType, payload: &[u8]) -> Result<crate::msg::Status, FrameError> {
    let (mut status, rest) =
        postcard::take_from_bytes::<crate::msg::Status>(payload).map_err(|e| {
            FrameError::Undecodable {
                ty: ty as u8,
                name: ty.name(),
                detail: e.to_string(),
            }
        })?;
    if !rest.is_empty() {
        status.containment = Some(from_pc(ty, rest)?);
    }
    Ok(status)
}

fn from_pc<T: DeserializeOwned>(ty: FrameType, payload: &[u8]) -> Result<T, FrameError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| FrameError::Undecodable {
            ty: ty as u8,
            name: ty.name(),
            detail: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing {
            ty: ty as u8,
            name: ty.name(),
            extra: rest.len(),
        });
    }
    Ok(value)
}
