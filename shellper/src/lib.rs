//! The lease-enforcing PTY shellper.
//!
//! A shellper owns a PTY running one command, serves it over a Unix socket
//! (codev's shellper protocol v1 plus the lease extension) and bounds its own
//! life with a lease: when no holder renews within the reattach window it
//! kills its whole process tree and exits (BRIEF.md).
//!
//! Library layout (pure logic apart from IO):
//!
//! * [`config`]: codev's JSON invocation and the friendly flags (pure).
//! * [`lease`] (from `shellper-leased`): [`lease::LeaseEnforcer`], the
//!   protocol's lease machine on tokio time with a termination hook; usable
//!   by any shellper.
//! * [`replay`]: the bounded replay buffer (pure).
//! * [`exit`] (from `shellper-leased`): exit codes.
//! * [`child`]: the PTY child, its single reaper and its IO tasks.
//! * [`hub`]: state shared by the PTY tasks and the connections.
//! * [`server`]: the PTY session of the lease crate's connection server.
//! * [`startup`]: process-level start-up (session, subreaper, stdio, log).
//! * [`kill`]: the kill ladder over the shellper's tree.
//! * [`app`]: wires it all together ([`app::run`]).

pub mod app;
pub mod child;
pub mod config;
pub mod error;
pub mod hub;
pub mod kill;
pub mod replay;
pub mod server;
pub mod startup;

/// The lease enforcer, shared with embedded leased processes: one
/// implementation of the lease on tokio time (crate `shellper-leased`).
pub use shellper_leased::enforcer as lease;
/// Exit codes (crate `shellper-leased`, shared with embedded leased
/// processes).
pub use shellper_leased::exit;

pub use config::Config;
pub use error::{Error, Result};
pub use lease::{LeaseEnforcer, LeaseHandle, Termination};
