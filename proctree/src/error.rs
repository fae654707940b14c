//! The crate's one error type.

use std::io;

/// Errors from the process-table layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed (prctl, waitpid, pidfd_open, ...).
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Sending a signal failed for a reason other than "the process is gone"
    /// (for example EPERM: a setuid program in the tree).
    #[error("sending {sig:?} to pid {pid}: {source}")]
    Signal {
        pid: i32,
        sig: crate::Sig,
        #[source]
        source: io::Error,
    },
    /// The process to act on does not exist (or is another process now).
    #[error("no process {pid} with the expected start time")]
    NoSuchProcess { pid: i32 },
    /// Refused: the pid is one the tree rules never touch (pid 1, ourselves).
    #[error("refusing to act on pid {pid}: {why}")]
    Refused { pid: i32, why: &'static str },
    /// A cgroup interface file could not be read or written.
    #[error("cgroup {}: {what}: {source}", path.display())]
    Cgroup {
        path: std::path::PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    /// A limit was asked for whose controller the cgroup does not offer
    /// (never ignored silently).
    #[error(
        "the {controller} controller is not available in {} (available: {}); \
         delegate it (systemd: Delegate=yes, or enable it in the parent's \
         cgroup.subtree_control) or drop the limit",
        path.display(),
        if available.is_empty() { "none" } else { available.as_str() }
    )]
    ControllerUnavailable {
        controller: &'static str,
        path: std::path::PathBuf,
        available: String,
    },
    /// This system (or this process) has no cgroup v2 hierarchy to use.
    #[error("no cgroup v2: {why}")]
    NoCgroupV2 { why: String },
    /// The cgroup given (or found) cannot hold sessions.
    #[error("cgroup {} cannot hold sessions: {why}", path.display())]
    CgroupNotUsable {
        path: std::path::PathBuf,
        why: String,
    },
}

impl Error {
    pub(crate) fn sys(what: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            what,
            source: source.into(),
        }
    }
}
