//! The crate's one error type.
//!
//! Every message names what leasectl was doing and on which file, socket or
//! process, because an operator reading it has usually just been woken up by
//! a leak: "permission denied" alone is useless, "reading tracked pids from
//! /tmp/x: permission denied" is actionable.

use std::path::PathBuf;

/// Result alias for leasectl.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can make a leasectl command fail (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The scope could not be opened or its registry read (tower-client's
    /// error carries the path and the reason).
    /// Boxed: tower-client's error is large and this one travels in every
    /// `Result`.
    #[error("scope: {0}")]
    Scope(Box<tower_client::Error>),

    /// The `--tracked` input is neither a pid list nor codev's terminals JSON.
    #[error("tracked pids from {source_name}: {detail}")]
    Tracked { source_name: String, detail: String },

    /// No shellper with this id in the scope (no socket, no registry entry).
    #[error("no shellper {id} in scope {}: see `leasectl --scope {} list`", scope.display(), scope.display())]
    UnknownId { id: String, scope: PathBuf },

    /// `reap --pid` named a process that is not a shellper.
    #[error("pid {pid} is not a shellper to reap: {why}")]
    NotAShellper { pid: u32, why: String },

    /// `reap --pid` named another user's process: the kernel refuses our
    /// signals (EPERM), so trying would only waste the grace periods.
    #[error(
        "pid {pid}: not permitted: it belongs to uid {owner} and leasectl runs as uid {me}; run leasectl as that user (or root)"
    )]
    NotPermitted { pid: u32, owner: String, me: u32 },

    /// Talking to a shellper failed during reap (authenticated terminate).
    #[error("shellper {id}: {step}: {detail}")]
    Protocol {
        id: String,
        step: &'static str,
        detail: String,
    },

    /// The demo could not run (a binary is missing, minitower misbehaved).
    #[error("demo: {0}")]
    Demo(String),

    /// `attach` could not start: no terminal, connection or handshake
    /// failed (after attaching, the outcome is an exit code, not an error).
    #[error("attach {id}: {detail}")]
    Attach { id: String, detail: String },

    /// `codev install | status | uninstall` cannot proceed (codev not
    /// found, a Node too old, no backup to restore).
    #[error("codev: {0}")]
    Codev(String),

    /// `new` or `kill`: no Tower answers on the scope's control socket.
    #[error("no Tower runs in scope {} ({detail}): start one (`systemctl --user start minitower`, or `minitower --scope {}`); leasectl never starts a session nobody holds", scope.display(), scope.display())]
    NoTower { scope: PathBuf, detail: String },

    /// Writing to stdout failed (a closed pipe is handled separately).
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
}

impl Error {
    /// An IO error with the action and path that failed.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
