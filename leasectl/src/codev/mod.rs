//! `leasectl codev install | status | uninstall`: put our shellper under an
//! unmodified codev, show which shellper codev launches, and undo it.
//!
//! codev's Tower starts every session as `node <codev>/dist/terminal/
//! shellper-main.js CONFIG` and cannot launch a native binary, so the swap is
//! a file swap: codev's script is kept beside the shim as
//! `shellper-main.orig.js` (the shim hands over to it on a platform the
//! shellper does not support), the shim (`integrations/codev/
//! shellper-main.js`, embedded in this binary so a lone `leasectl` can
//! install it) takes its place, and the `shellper` binary goes next to it,
//! where the shim looks first. Doing it by hand was four shell lines that
//! lost the original on a second run and said nothing about an old Node.
//!
//! The decisions (what to back up, what a re-install or an install over an
//! upgraded codev does, whether the Node can run the shim) are pure functions
//! of what is on disk ([`plan_install`], [`plan_uninstall`],
//! [`NodeInfo::supports_shim`]); the rest reads and writes files, each write
//! to a temporary file renamed into place, the shim last, so codev never
//! starts a session on a shim without its binary.
//!
//! Files by job: `plan.rs` (the decisions, pure), `disk.rs` (finding codev,
//! Node and the binary; writing files), `commands.rs` (install, status,
//! uninstall); this file holds the command line and dispatches.

mod commands;
mod disk;
mod plan;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::error::Result;

pub use disk::{Layout, locate, which};
pub use plan::*;

use commands::{install, status, uninstall};

/// The shim, as installed (`integrations/codev/shellper-main.js`).
pub const SHIM: &str = include_str!("shellper-main.js");

/// The line that marks a `shellper-main.js` as our shim.
pub const SHIM_MARKER: &str = "@shellper-shim";

/// The script codev launches, relative to its package root.
pub const SCRIPT_REL: &str = "dist/terminal/shellper-main.js";

/// codev's original script, kept next to the shim (the shim's macOS
/// fallback imports it under this name: it must end in `.js`).
pub const BACKUP_NAME: &str = "shellper-main.orig.js";

/// Where the README's manual instructions used to keep the original.
pub const LEGACY_BACKUP_NAME: &str = "shellper-main.js.orig";

/// codev's npm package name, under `npm root -g`.
pub const CODEV_PACKAGE: &str = "@cluesmith/codev";

/// The first Node with `process.execve`, which the shim needs.
pub const MIN_NODE: (u32, u32, u32) = (22, 15, 0);

/// How long `node` and `npm` get to answer a question.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

const CODEV_HELP: &str = "\
codev's Tower starts every session as `node <codev>/dist/terminal/shellper-main.js
CONFIG`. `install` keeps that script as shellper-main.orig.js, puts the shim (which
replaces the Node process with the native shellper through process.execve: same pid,
same start time) in its place and the shellper binary next to it; `uninstall` puts
codev's script back. Sessions started before keep their shellper until they end;
restart the Tower (afx tower stop; afx tower start) for new sessions to use the new one.

Examples:
  leasectl codev install                      codev from `npm root -g`, shellper next to leasectl
  leasectl codev install --codev ~/src/codev  a codev checkout or another install
  leasectl codev install --node ~/.nvm/versions/node/v22.15.0/bin/node
  leasectl codev status                       which shellper codev launches; is the backup there?
  leasectl codev status --json
  leasectl codev uninstall                    codev's own shellper-main.js back

Exit codes:
  0  done; `status`: codev launches the native shellper, and it can
  1  `status`: codev launches its own Node shellper, or the install is broken
     (no shellper binary the shim would find, a Node without process.execve)
  2  error: codev not found, Node too old (install without --force), no
     backup to restore, a file could not be written";

/// `leasectl codev …`.
#[derive(Debug, Subcommand)]
#[command(after_long_help = CODEV_HELP)]
pub enum CodevCommand {
    /// Swap codev's shellper-main.js for the shim and the native shellper (keeps a backup)
    #[command(after_long_help = CODEV_HELP)]
    Install {
        #[command(flatten)]
        place: Place,
        /// The Node that runs codev [default: node on PATH]
        #[arg(long, value_name = "PATH")]
        node: Option<PathBuf>,
        /// The shellper binary to install [default: shellper next to leasectl, else on PATH]
        #[arg(long, value_name = "PATH")]
        shellper: Option<PathBuf>,
        /// Install even when that Node has no process.execve (Node < 22.15) or cannot be run
        #[arg(long)]
        force: bool,
    },
    /// Which shellper codev launches, whether the backup exists, and whether Node can run the shim
    #[command(after_long_help = CODEV_HELP)]
    Status {
        #[command(flatten)]
        place: Place,
        /// The Node that runs codev [default: node on PATH]
        #[arg(long, value_name = "PATH")]
        node: Option<PathBuf>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Put codev's own shellper-main.js back and remove the shellper binary installed beside it
    #[command(after_long_help = CODEV_HELP)]
    Uninstall {
        #[command(flatten)]
        place: Place,
    },
}

/// Where codev is.
#[derive(Debug, Args)]
pub struct Place {
    /// codev's package directory (holding dist/terminal/shellper-main.js), or that
    /// dist/terminal directory (default: @cluesmith/codev under `npm root -g`)
    #[arg(long, value_name = "DIR")]
    pub codev: Option<PathBuf>,
}

/// Runs a `codev` subcommand; returns the exit code.
pub async fn run(cmd: CodevCommand) -> Result<i32> {
    match cmd {
        CodevCommand::Install {
            place,
            node,
            shellper,
            force,
        } => install(&place, node.as_deref(), shellper.as_deref(), force).await,
        CodevCommand::Status { place, node, json } => status(&place, node.as_deref(), json).await,
        CodevCommand::Uninstall { place } => uninstall(&place).await,
    }
}
