//! leasectl's exit codes (`--help` lists them, `cli::EXIT_CODES_HELP`).
//! A module of their own, so that a command module can name them without
//! depending on the command line that dispatches to it.

/// Exit code: success; nothing found; every target confirmed gone.
pub const EXIT_OK: i32 = 0;
/// Exit code: the answer is "not clean": orphans found, a reap target
/// refused or surviving, a demo verdict that failed.
pub const EXIT_FOUND: i32 = 1;
/// Exit code: an error prevented an answer (usage, scope, registry, input).
pub const EXIT_ERROR: i32 = 2;
/// Exit code: interrupted by Ctrl-C (after cleaning up).
pub const EXIT_INTERRUPTED: i32 = 130;
