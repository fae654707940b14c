//! Subreaping and reaping: the shellper's one place that collects exit
//! statuses.

use std::io;

use rustix::process::{WaitOptions, WaitStatus};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Makes the calling process a child subreaper
/// (`prctl(PR_SET_CHILD_SUBREAPER, 1)`).
///
/// Why: without it, a process of the tree that double-forks or `setsid`s
/// away is reparented to PID 1 and is no longer our descendant, so the kill
/// ladder's descendant rule would miss it if it also left the PTY session.
/// With it, every orphan of our tree is reparented to us.
///
/// The cost: we must reap those orphans (see [`reap_zombies`]), or they
/// stay zombies for as long as we live. The attribute is per process, is not
/// inherited by children and survives `execve`.
pub fn become_subreaper() -> Result<(), Error> {
    let me = rustix::process::getpid();
    rustix::process::set_child_subreaper(Some(me))
        .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", io::Error::from(e)))
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildExit {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

/// Most children reaped in one call, so a fork storm cannot keep one call
/// (and the thread running it) busy for ever; call again to continue.
pub const REAP_BATCH: usize = 4096;

/// Reaps every child that has exited, without blocking
/// (`waitpid(-1, WNOHANG|__WALL)` in a loop, equivalent to
/// `waitid(P_ALL, WEXITED|WNOHANG|__WALL)`), and returns `(pid, how)` for
/// each.
///
/// **This steals exit statuses.** It reaps *any* child, including ones some
/// other code is waiting for (`std::process::Child::wait`,
/// `tokio::process::Child::wait` would then fail with ECHILD or never
/// resolve). A process that uses it must make it its *only* reaper: spawn
/// children without a runtime's process handle and learn about the direct
/// child's exit from the statuses this function returns (or from its pidfd,
/// then call this to collect the status). Never call it from a test binary
/// that also waits on `Child` handles in parallel threads.
///
/// Returns an empty list when there are no children at all (ECHILD).
pub fn reap_zombies() -> Vec<(i32, ChildExit)> {
    let mut out = Vec::new();
    while out.len() < REAP_BATCH {
        // __WALL: also reap children whose exit signal is not SIGCHLD
        // (clone(2) users); a subreaper inherits whatever the tree made.
        let opts = WaitOptions::NOHANG | WaitOptions::from_bits_retain(libc::__WALL as u32);
        // `wait`, not `waitpid(None, ..)`: rustix maps `waitpid(None)` to
        // wait4(0), "any child in my process group", which misses the PTY
        // child (it leads its own session) and every setsid escapee.
        match rustix::process::wait(opts) {
            Ok(Some((pid, status))) => {
                if let Some(how) = classify(status) {
                    out.push((pid.as_raw_nonzero().get(), how));
                }
            }
            // Ok(None): children exist but none has exited.
            // Err(ECHILD): no children at all. EINTR cannot happen with
            // WNOHANG, and any other error leaves nothing we could retry.
            Ok(None) | Err(_) => break,
        }
    }
    out
}

fn classify(status: WaitStatus) -> Option<ChildExit> {
    if let Some(code) = status.exit_status() {
        Some(ChildExit::Exited(code))
    } else {
        status.terminating_signal().map(ChildExit::Signaled)
    }
}

/// Sends signal number `sig` to our own child `pid` whose exit status we
/// have not collected yet. Safe from pid reuse without a start-time check:
/// an unreaped child (running or zombie) keeps its pid. For the one reaper
/// of a process (the shellper's child actor), which knows which of its
/// children are unreaped. Errors (ESRCH for a zombie's last moments, EINVAL
/// for an unknown signal) are returned for logging.
pub fn signal_unreaped_child(pid: i32, sig: i32) -> std::io::Result<()> {
    use rustix::process::{Pid, Signal};
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    if pid <= 1 {
        return Err(invalid());
    }
    let p = Pid::from_raw(pid).ok_or_else(invalid)?;
    let s = Signal::from_named_raw(sig).ok_or_else(invalid)?;
    rustix::process::kill_process(p, s).map_err(std::io::Error::from)
}
