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
}

impl Error {
    pub(crate) fn sys(what: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            what,
            source: source.into(),
        }
    }
}
