//! Tidying a scope: registry entries, socket files and logs of shellpers
//! that are gone, and a cap on the scope's logs.
//!
//! A scope used for months collects what dead shellpers leave: a registry
//! entry whose process was SIGKILLed while no Tower held it, a socket file
//! nobody listens on, a `<id>.log` (kept on purpose for post-mortems) and,
//! after a SIGKILL, its rotated `<id>.log.1`. This module decides what may
//! go ([`plan`], pure: files, registry and the facts gathered by the caller
//! in, actions out) and gathers those facts ([`gather`]); a Tower runs it at
//! start and periodically ([`crate::Tower::tidy`]), `leasectl prune` on
//! request.
//!
//! What is *proven* gone is the only thing removed:
//! * a registry entry only when the kernel says its process is gone
//!   (`pidfd_for`: no such pid, or another start time); "unknown" (out of
//!   descriptors, /proc unreadable) keeps it;
//! * a socket file only when connecting to it is refused (nothing listens),
//!   it is older than [`TidyPolicy::min_age`] (a starting shellper binds
//!   before it listens) and no live registry entry names it;
//! * a log only when its shellper is gone by those rules (no held lease, no
//!   live or unknown registry entry, no socket that answers or is young),
//!   and it was last written more than [`TidyPolicy::keep_gone_logs`] ago,
//!   or the scope is over its log cap.
//!
//! The log cap removes, oldest first, the logs of gone shellpers, then the
//! rotated logs (`<id>.log.N`) of live ones; never a live shellper's
//! current log (its stderr points there, and unlinking would free nothing).
//!
//! Two files: `rules.rs` (the pure plan and its types) and `io.rs` (the
//! listing, the facts and the removals).

mod io;
mod rules;

pub use io::{MAX_ENTRIES, PROBE_TIMEOUT, TidyDone, gather, list_scope, remove_files};
pub use rules::{
    Action, DEFAULT_KEEP_GONE_LOGS, DEFAULT_MIN_AGE, DEFAULT_SCOPE_LOG_CAP, Facts, FileKind,
    Liveness, ScopeFile, ScopeFiles, TidyPlan, TidyPolicy, What, classify, plan,
};
