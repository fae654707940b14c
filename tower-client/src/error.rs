//! The crate's single error type.
//!
//! Every variant carries the context an operator needs to act without a
//! debugger: the path or shellper id involved, the step that failed, and for
//! spawn failures the tail of the shellper's log (its own explanation).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use shellper_protocol::lease::ConfigError;
use shellper_protocol::msg::ErrorCode;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tower-client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An IO operation on a file of the scope failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The scope directory is unsafe or unusable (wrong owner, loose
    /// permissions, not a directory, a path too long for socket addresses).
    #[error("scope {}: {reason}", path.display())]
    UnsafeScope { path: PathBuf, reason: String },

    /// Another Tower holds the scope's instance lock.
    #[error("scope {} is already held by another Tower (pid {}); stop it first or use another --scope", path.display(), pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()))]
    ScopeLocked { path: PathBuf, pid: Option<u32> },

    /// The registry exists but cannot be understood. Never treated as empty:
    /// that would orphan every shellper it lists.
    #[error("registry {} is corrupt ({detail}); refusing to treat it as empty. Inspect or move it aside by hand", path.display())]
    RegistryCorrupt { path: PathBuf, detail: String },

    /// The registry could not be serialized (a path that is not UTF-8):
    /// nothing was written, the file on disk is the previous registry.
    #[error("registry {}: cannot serialize ({detail}); nothing written, the previous registry is kept", path.display())]
    RegistrySerialize { path: PathBuf, detail: String },

    /// The lease timings break a rule of the protocol.
    #[error("invalid lease settings: {0}")]
    LeaseConfig(#[from] ConfigError),

    /// Connecting to or talking with a shellper failed.
    #[error("shellper socket {}: {step}: {detail}", socket.display())]
    Conn {
        socket: PathBuf,
        step: &'static str,
        detail: String,
    },

    /// A step with a deadline did not finish in time. Timeouts never mean a
    /// shellper is gone; only its process disappearing does.
    #[error("shellper socket {}: {step}: no answer within {timeout:?}", socket.display())]
    Timeout {
        socket: PathBuf,
        step: &'static str,
        timeout: Duration,
    },

    /// The shellper answered with an ERROR frame.
    #[error("shellper socket {}: {step}: refused ({code:?}): {message}", socket.display())]
    Refused {
        socket: PathBuf,
        step: &'static str,
        code: ErrorCode,
        message: String,
    },

    /// The containment asked for cannot be provided (limits without a
    /// usable cgroup, or a controller missing): never ignored silently.
    #[error("containment: {0}")]
    Containment(String),

    /// Spawning a shellper failed. Whatever was started has been killed and
    /// confirmed gone before this error is returned (unless the failure's
    /// `cleanup` says otherwise).
    #[error("{0}")]
    Spawn(Box<SpawnFailure>),

    /// The shellper binary could not be found.
    #[error("cannot find the shellper binary: {0}")]
    ShellperNotFound(String),

    /// The shellper's lease enforcer has stopped (it exited, was revoked,
    /// terminated or detached), so the request cannot be served.
    #[error("shellper {id}: not held any more ({why})")]
    NotHeld { id: String, why: String },

    /// The scope this Tower locked was deleted or replaced under it. The
    /// Tower stops writing there (another Tower may own the path now).
    #[error("scope registry {}: the scope is no longer the one this Tower locked: {detail}; stopping (the sessions keep running for their window)", path.display())]
    ScopeReplaced { path: PathBuf, detail: String },

    /// Holding one more shellper would not fit under the descriptor limit.
    #[error(
        "cannot hold another shellper: {open} of the {limit} descriptors allowed (RLIMIT_NOFILE) are in use with {held} held; this Tower can hold about {capacity} under that limit. Raise it (ulimit -n) or spread the shellpers over several scopes"
    )]
    FdLimit {
        limit: u64,
        open: u64,
        held: u64,
        capacity: u64,
    },

    /// Terminating a shellper did not end in confirmed death.
    #[error("terminating shellper {id}: {detail}")]
    Terminate { id: String, detail: String },

    /// Nothing listens on the scope's control socket: no Tower runs there
    /// (or one that does not take requests).
    #[error("no Tower answers on {} ({detail})", socket.display())]
    NoTower { socket: PathBuf, detail: String },

    /// Talking to a Tower's control socket failed.
    #[error("control socket {}: {step}: {detail}", socket.display())]
    Control {
        socket: PathBuf,
        step: &'static str,
        detail: String,
    },

    /// The Tower refused a control request (nothing was changed).
    #[error("the Tower refused: {message}")]
    ControlRefused {
        code: crate::control::ErrorCode,
        message: String,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Details of a failed spawn (boxed in [`Error::Spawn`] to keep `Result`s
/// small).
#[derive(Debug, thiserror::Error)]
#[error("spawning shellper {id} failed at step `{step}`: {detail}{cleanup}\n--- last lines of {} ---\n{log_tail}", log.display())]
pub struct SpawnFailure {
    pub id: String,
    /// The step that failed: `prepare`, `open log`, `exec`, `write config`,
    /// `read info line`, `identity`, `registry`, `connect` or `acquire`.
    pub step: &'static str,
    pub detail: String,
    /// Empty when cleanup succeeded, else a sentence about what survived.
    pub cleanup: String,
    pub log: PathBuf,
    pub log_tail: String,
}
