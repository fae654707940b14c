//! The shellper protocol: wire types, framing and the lease state machine.
//!
//! This crate is pure on purpose: it performs no IO and never reads a clock.
//! Every function that depends on time takes `now` as an argument, so the
//! lease machine can be driven by tokio's paused time in tests, by a real
//! event loop in the shellper, or by a model checker, with identical results.
//!
//! * [`frame`]: frame types, the `[type u8][len u32 BE][payload]` header,
//!   per-type size limits and the byte-level parser.
//! * [`msg`]: the payloads. Frames 0x01–0x0A are codev shellper protocol v1
//!   (JSON control payloads, raw DATA/REPLAY bytes); frames 0x20–0x2A are the
//!   lease and status messages (postcard payloads).
//! * [`codec`]: a `tokio_util::codec` adapter (feature `codec`).
//! * [`lease`]: the lease state machine.
//! * [`token`]: the 256-bit lease token with constant-time comparison.

pub mod clamp;
pub mod frame;
pub mod lease;
pub mod msg;
pub mod samples;
pub mod token;

#[cfg(feature = "codec")]
pub mod codec;

pub use frame::{Frame, FrameError, FrameType};
pub use lease::{LeaseConfig, LeaseMachine, Phase};
pub use token::Token;

/// Version of the v1 terminal protocol we speak (codev's `PROTOCOL_VERSION`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of the lease extension, advertised in HELLO/WELCOME as `lease`.
/// Version 2 adds the session's containment to STATUS (SPEC.md §6.2).
pub const LEASE_PROTOCOL_VERSION: u32 = 2;

/// The lease extension version a connection uses: the smaller of the
/// client's (HELLO `lease`) and ours; `None` when the client did not
/// announce the extension.
pub fn negotiated_lease_version(client: Option<u32>) -> Option<u32> {
    client.map(|c| c.min(LEASE_PROTOCOL_VERSION))
}
