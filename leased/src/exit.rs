//! Exit codes of a shellper, PTY or embedded (CONVENTIONS.md, "Shellper
//! exit codes"; SPEC.md §9). Scripts and Towers read these to learn why a
//! shellper ended. The `shellper` binary re-exports this module.

use shellper_protocol::msg::TerminateReason;

/// Terminated on request (RELEASE Terminate) or by SIGTERM/SIGHUP/SIGINT.
pub const OK: i32 = 0;
/// Usage or configuration error; nothing was started.
pub const USAGE: i32 = 2;
/// Startup failure (socket bind, PTY spawn, token read).
pub const STARTUP: i32 = 3;
/// The claim deadline passed with no holder.
pub const CLAIM_EXPIRED: i32 = 10;
/// The reattach window expired.
pub const WINDOW_EXPIRED: i32 = 11;
/// Reserved: older shellpers exited with 12 when the child exited while
/// nobody held the lease. A husk now waits for its claim deadline or window
/// like any other session (SPEC.md §8.2), so this version never produces 12;
/// the code is not reused so that scripts reading it stay unambiguous.
pub const CHILD_EXITED_UNHELD: i32 = 12;
/// The kill ladder left survivors (a bug; reported loudly).
pub const SURVIVORS: i32 = 13;

/// The exit code for a finished kill ladder: survivors trump the reason,
/// because a tree that could not be killed is the one thing an operator must
/// hear about.
pub fn for_termination(reason: TerminateReason, survivors: u32) -> i32 {
    if survivors > 0 {
        return SURVIVORS;
    }
    match reason {
        TerminateReason::Requested | TerminateReason::Signal => OK,
        TerminateReason::ClaimExpired => CLAIM_EXPIRED,
        TerminateReason::WindowExpired => WINDOW_EXPIRED,
        TerminateReason::ChildExitedUnheld => CHILD_EXITED_UNHELD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_conventions() {
        assert_eq!(for_termination(TerminateReason::Requested, 0), 0);
        assert_eq!(for_termination(TerminateReason::Signal, 0), 0);
        assert_eq!(for_termination(TerminateReason::ClaimExpired, 0), 10);
        assert_eq!(for_termination(TerminateReason::WindowExpired, 0), 11);
        assert_eq!(for_termination(TerminateReason::ChildExitedUnheld, 0), 12);
        assert_eq!(for_termination(TerminateReason::Requested, 1), 13);
    }
}
