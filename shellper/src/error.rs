//! The one error type of the shellper crate.
//!
//! Every failure the binary can report maps to an exit code (see
//! `docs/CONVENTIONS.md`): usage and configuration errors are 2 (nothing was
//! started), everything that fails while starting is 3.

use std::path::PathBuf;

/// Everything that can go wrong while configuring or starting a shellper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or JSON config is malformed.
    #[error("usage: {0}")]
    Usage(String),
    /// The lease timing breaks a rule of [`shellper_protocol::LeaseConfig::new`].
    #[error("invalid lease configuration: {0}")]
    Lease(#[from] shellper_protocol::lease::ConfigError),
    /// The lease token could not be read from stdin.
    #[error("lease token: {0}")]
    Token(String),
    /// Another process answers on the socket path.
    #[error("socket {0} is in use by a live process")]
    SocketInUse(PathBuf),
    /// An IO operation failed; `what` says which.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The PTY itself could not be set up (no PTY left, fcntl failed).
    #[error("spawning {command:?} on a PTY: {detail}")]
    Spawn { command: String, detail: String },
    /// The command could not be started on its PTY: not found, not
    /// executable, its working directory missing. In legacy mode not a
    /// startup failure: like codev's (node-pty's) shellper it starts anyway
    /// and reports the child as exited with code 1 (SPEC §3).
    #[error("cannot start {command:?}: {detail}")]
    Exec { command: String, detail: String },
}

impl From<shellper_leased::invocation::ParseError> for Error {
    fn from(e: shellper_leased::invocation::ParseError) -> Self {
        use shellper_leased::invocation::ParseError as P;
        match e {
            P::Usage(m) => Error::Usage(m),
            P::Lease(e) => Error::Lease(e),
            P::Token(m) => Error::Token(m),
        }
    }
}

impl From<shellper_leased::sock::BindError> for Error {
    fn from(e: shellper_leased::sock::BindError) -> Self {
        match e {
            shellper_leased::sock::BindError::InUse(p) => Error::SocketInUse(p),
            shellper_leased::sock::BindError::Io { context, source } => Error::io(context, source),
        }
    }
}

impl Error {
    /// Wraps an IO error with a short description of what was attempted.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Exit code for this error (CONVENTIONS.md): 2 when nothing was started
    /// because the invocation is wrong, 3 for a startup failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Lease(_) => crate::exit::USAGE,
            _ => crate::exit::STARTUP,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
