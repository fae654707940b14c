//! The lease-enforcing PTY shellper.
//!
//! A shellper owns a PTY running one command, serves it over a Unix socket
//! (codev's shellper protocol v1 plus the lease extension) and bounds its own
//! life with a lease: when no holder renews within the reattach window it
//! kills its whole process tree and exits (BRIEF.md).
//!
//! The library is the binary's: its one public function is [`main_entry`]
//! (what `shellper` runs), and it re-exports the lease enforcer ([`lease`])
//! and the exit codes ([`exit`]) of `shellper-leased`, which a program that
//! embeds the lease uses directly. Inside (private; pure logic apart from
//! IO):
//!
//! * `config`: codev's JSON invocation and the friendly flags (pure).
//! * `replay`: the bounded replay buffer (pure).
//! * `child`: the PTY child, its single reaper and its IO tasks.
//! * `hub`: state shared by the PTY tasks and the connections.
//! * `server`: the PTY session of the lease crate's connection server.
//! * `startup`: process-level start-up (session, subreaper, stdio, log).
//! * `kill`: the kill ladder over the shellper's tree.
//! * `app`: wires it all together (`app::run`).

mod app;
mod child;
mod config;
mod error;
mod hub;
mod kill;
mod replay;
mod server;
mod startup;

/// The lease enforcer, shared with embedded leased processes: one
/// implementation of the lease on tokio time (crate `shellper-leased`).
pub use shellper_leased::enforcer as lease;
/// Exit codes (crate `shellper-leased`, shared with embedded leased
/// processes).
pub use shellper_leased::exit;

pub use app::main_entry;
use error::Error;
