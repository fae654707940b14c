//! leasectl: the operators' inspector for leased shellpers.
//!
//! An operator who suspects leaked sessions used to pipe `ps` into `grep`
//! and diff pids against Tower's API by hand; each such sweep missed
//! something (escaped process groups, wedged processes, other scopes).
//! leasectl replaces that with one tool that asks the shellpers themselves
//! (STATUS needs no token), falls back to /proc for the ones that do not
//! answer, and reaps trees in the right order.
//!
//! Modules:
//! * [`cli`]: the clap interface and the exit codes.
//! * [`model`]: the JSON shapes (`schema_version` 1).
//! * [`render`]: every human report (list, show, watch, orphans, reap),
//!   aligned tables, colour policy. Commands compute data; only this
//!   module turns it into text.
//! * [`tracked`]: `--tracked` input (pid lines or codev's `/api/terminals`).
//! * [`scan`]: one bounded, concurrent sweep of a scope.
//! * [`procs`]: shellper recognition (flavours), the argv of a shellper and
//!   its tree, on top of proctree's /proc reading (snapshots, socket owners).
//! * [`orphans`], [`reap`], [`demo`]: the subcommands with logic of their
//!   own (`orphans` and `reap` build reports that [`render`] prints).
//! * [`attach`]: the interactive terminal client (raw mode, detach keys).
//! * [`new`]: `new` and `kill`, clients of the Tower's control socket.
//! * [`logs`]: a shellper's log, and following it across rotations.
//! * [`metrics`]: the Prometheus text exposition; [`prune`]: removing what
//!   gone shellpers left (tower-client's tidy rules).
//! * [`codev`]: `codev install | status | uninstall`, the swap of codev's
//!   shellper-main.js for the shim and the native shellper.
//! * [`commands`]: wiring of every subcommand to its exit code.

pub mod attach;
pub mod cli;
pub mod codev;
pub mod commands;
pub mod demo;
pub mod error;
pub mod exit;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod new;
pub mod orphans;
pub mod output;
pub mod procs;
pub mod prune;
pub mod reap;
pub mod render;
pub mod scan;
pub mod tracked;

pub use error::{Error, Result};
