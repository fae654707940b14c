//! The control socket: a running Tower you can ask to spawn a session,
//! terminate one, or list what it holds.
//!
//! `<scope>/tower.ctl` (0600, in the 0700 scope; peers of another uid are
//! refused by their credentials). JSON lines: one request object per line,
//! one response object per line, in order, on one connection. Why not the
//! shellper framing: this socket's users are scripts (Python, shell with
//! `socat`, CI runners) that have a JSON library and a line reader already,
//! and its traffic is a few requests per session, not a data stream.
//! SPEC.md ("Control socket") is the normative text, with golden examples.
//!
//! * [`wire`]: the request and response types and their checks (pure);
//! * [`ControlServer`]: what a Tower runs (minitower does);
//! * [`request`]: one exchange, for clients (`leasectl new`, `leasectl kill`).

mod client;
mod server;
pub mod wire;

pub use client::request;
pub use server::{
    CONTROL_SOCKET, ControlNote, ControlServer, DRAIN_TIMEOUT, MAX_CONNECTIONS, REQUEST_TIMEOUT,
    WRITE_TIMEOUT, default_terminate_timeout, session_info, socket_path,
};
pub use wire::{
    CONTROL_VERSION, ControlLimits, ErrorCode, LeaseRequest, ListRequest, MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES, Request, Response, SessionInfo, SpawnRequest, Spawned, TerminateRequest,
    TerminatedInfo, TowerInfo, WireError,
};
