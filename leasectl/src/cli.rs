//! Command-line interface (clap derive).
//!
//! Exit codes are part of the contract (scripts and CI gates branch on
//! them), so they are defined once here, printed in `--help` and in the
//! README text, and tested.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

pub use crate::exit::{EXIT_ERROR, EXIT_FOUND, EXIT_INTERRUPTED, EXIT_OK};
pub use crate::scan::parse_duration;

/// Exit codes as printed by `--help` (and copied into the README).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success; `orphans`: nothing found; `reap`: every target confirmed gone;
       `demo`: the verdict is good; `metrics`: the exposition was written (the
       scope's problems are in it); `prune`: nothing to remove, or all removed
  1    `orphans`: orphans found; `reap`: a target was refused (held, no --force)
       or something of its tree survived; `demo`: the verdict is bad;
       `prune`: a dry run found something to remove, or a removal failed
  2    error: bad usage, unreadable scope or registry, unknown id, unreadable
       --tracked input, another user's process (`reap --pid`); with an
       unreadable registry `list`, `show` and `orphans` still print what they
       found, and the warning once
  3    `prune --yes`: a Tower holds the scope; nothing removed (the Tower
       tidies it itself)
  4    `new`: no Tower runs in the scope; nothing started (see `new --help`)
  130  interrupted by Ctrl-C (`demo` and `reap` clean up first; `watch` exits 0
       on Ctrl-C, SIGTERM or SIGHUP, with the cursor restored)
  `attach` returns the command's exit status: see `leasectl attach --help`;
  `logs -f` exits 0 on Ctrl-C, SIGTERM or SIGHUP";

const EXAMPLES_HELP: &str = "\
Examples:
  leasectl list                          every shellper of the default scope
  leasectl --scope /tmp/s list --json    {\"schema_version\":1,\"shellpers\":[…]}
  leasectl show sh-0123abcd              one shellper, its process tree, counters
  leasectl watch --interval 200ms        live view (JSON lines when piped)
  leasectl orphans                       lapsed, unheld, unreachable, socketless
  curl -s localhost:4100/api/terminals | leasectl orphans --tracked -
  leasectl reap --orphans --dry-run      what would be killed, and how
  leasectl reap sh-0123abcd --force      terminate even though it is held
  leasectl reap --pid 4242               a socketless or codev Node shellper, by pid
  leasectl new --attach -- bash          a session held by the running Tower
  leasectl kill sh-0123abcd              end it (whole tree, confirmed)
  leasectl attach sh-0123abcd            a terminal on it (ctrl-] d detaches)
  leasectl logs -f sh-0123abcd           its log, followed across rotations
  leasectl metrics -o /var/lib/node_exporter/textfile/shellper.prom --mode 0640
                                         Prometheus text format, written atomically
  leasectl prune                         what gone shellpers left (dry run)
  leasectl prune --yes                   remove it
  leasectl demo                          the whole story in under a minute
  leasectl completions bash > ~/.local/share/bash-completion/completions/leasectl
  leasectl codev install                 codev's sessions on the native shellper
  leasectl man | man -l -                this manual as a man page

Logs go to stderr; set RUST_LOG=debug (or leasectl=trace) for more.";

/// `attach --help`: examples, the detach keys, exit codes.
pub const ATTACH_HELP: &str = "\
Examples:
  leasectl attach sh-0123abcd                  type into the session; ctrl-] d detaches
  leasectl attach sh-0123abcd --read-only      watch it; ctrl-] d or ctrl-c detaches
  leasectl attach sh-0123abcd --detach-keys ctrl-p,ctrl-q
  leasectl attach --read-only sh-0123abcd | tee out   (stdin need not be a terminal)

Detach: press ctrl-] then d. A ctrl-] followed by any other key reaches the
program with that key. After ctrl-] d the session keeps running; attach again
to see its replay.

Exit codes of attach:
  0        detached, or the command exited with 0
  N        the command exited with code N (1-255)
  128+S    the command was killed by signal S (137 for SIGKILL)
  1        the shellper closed the connection without an exit status
  2        error before attaching: unknown id, no terminal on stdin (use
           --read-only), connect or handshake failed or timed out
  129 130 131 143
           leasectl got SIGHUP (or lost its terminal), SIGINT, SIGQUIT or
           SIGTERM; the terminal was restored first";

/// `logs --help`: examples and exit codes.
pub const LOGS_HELP: &str = "\
Examples:
  leasectl logs sh-0123abcd              the live log
  leasectl logs sh-0123abcd --all -n 50  the last 50 lines, rotated part included
  leasectl logs -f sh-0123abcd           follow, across rotations, until Ctrl-C

Exit codes of logs:
  0    printed; with -f: stopped by Ctrl-C, SIGTERM or SIGHUP
  2    unknown id, no log file (without -f), unreadable log";

/// `metrics --help` epilogue.
const METRICS_HELP: &str = "\
Families (every one labelled with scope; per shellper also id):
  shellper_sessions{phase}             gauge, every phase, zeros included
  shellper_tower_up, shellper_registry_readable, shellper_scope_exists
  shellper_orphans, shellper_scope_log_bytes, shellper_prunable_files
  shellper_info{pid,command,leased,version} = 1, shellper_phase{phase} = 1
  shellper_reachable, shellper_holder_alive, shellper_lease_epoch
  shellper_lease_expires_in_seconds, shellper_kill_in_seconds,
  shellper_claim_in_seconds, shellper_lease_ttl_seconds,
  shellper_lease_window_seconds, shellper_start_time_seconds, shellper_clients{kind}
  counters: shellper_lease_{acquires,renewals,rejected_tokens,stale_epochs,
  revocations,lapses,stalls}_total, shellper_protocol_errors_total

What the labels hold: scope (the scope directory), id (sh-XXXXXXXX), pid,
version, phase, kind (client type), leased; and command: the session's command
line as it was started, arguments included, which may hold secrets (a token
passed as an argument). That is why -o writes FILE with mode 0600 unless
--mode says otherwise.

Files for node_exporter's textfile collector: node_exporter usually runs as a
user of its own and must read FILE. Either --mode 0640 with FILE's directory
in node_exporter's group (chgrp node_exporter DIR; chmod 2770 DIR: new files
take the group), so only node_exporter reads the command lines; or --mode 0644
when every user of the host may see them. The default 0600 suits a file under
your runtime directory ($XDG_RUNTIME_DIR) read by a collector of your own.

Examples (node_exporter --collector.textfile.directory=/var/lib/node_exporter/textfile):
  leasectl metrics                                   print to stdout
  leasectl metrics -o $XDG_RUNTIME_DIR/shellper.prom   mode 0600 (the default)
  leasectl metrics -o /var/lib/node_exporter/textfile/shellper.prom --mode 0640
  crontab: * * * * * leasectl metrics -o /var/lib/node_exporter/textfile/shellper.prom --mode 0640
  without -o: leasectl metrics > f.prom.tmp && mv f.prom.tmp f.prom
  a systemd timer: contrib/systemd/leasectl-metrics.{service,timer}

Exit codes:
  0  the exposition was written (the scope's problems are in it:
     shellper_registry_readable 0, phases dead/unreachable, a missing scope
     as shellper_scope_exists 0)
  2  nothing written: unusable scope (owner, mode), FILE not writable";

/// `prune --help` epilogue.
const PRUNE_HELP: &str = "\
What goes (only what is proven gone):
  registry entry  its process is gone (pid and start time checked by the kernel)
  cgroup          the session cgroup of such an entry, once no process is in it
                  (rmdir: the kernel refuses a cgroup something entered since)
  socket file     connecting is refused (nothing listens) and it is > 2 min old
  log, log.N      its shellper is gone and it was last written > --keep-logs ago
  over the cap    oldest logs of gone shellpers, then oldest rotated logs of live
                  ones; never a live shellper's current log
What stays: anything of a held, live or undecidable shellper; files younger
than 2 min; a gone shellper whose session still runs (`orphans` reason
shellper_gone: `reap` needs its entry and log); files not named sh-XXXXXXXX.*.
A running Tower tidies its scope itself (at start and every --tidy-every):
`prune --yes` then defers to it and exits 3. Without a Tower, `--yes` takes the
instance lock for the removal (a Tower starting in that instant is refused
and should be retried, as systemd's Restart= does).

Examples:
  leasectl prune                 what would be removed (exit 1 if anything)
  leasectl prune --yes           remove it
  leasectl prune --json          {\"schema_version\":1,\"plan\":{\"actions\":[…]},…}
  leasectl prune --yes --keep-logs 1d --log-cap-mib 64

Exit codes:
  0  nothing to remove, or everything removed
  1  dry run: something to remove; or a removal failed
  2  error (unusable scope, unreadable registry: nothing is pruned without it)
  3  --yes while a Tower holds the scope: nothing removed";

/// The `--help` epilogue: examples, then exit codes.
fn after_help() -> String {
    format!("{EXAMPLES_HELP}\n\n{EXIT_CODES_HELP}")
}

/// Inspect, watch and reap leased shellpers.
///
/// leasectl reads a scope directory (the shellpers' sockets and the Tower's
/// registry), asks every shellper for its STATUS concurrently with a short
/// timeout, and fills in what /proc still tells about the ones that do not
/// answer. It never holds a lease: only `reap` acquires one, to terminate.
#[derive(Debug, Parser)]
#[command(name = "leasectl", version, after_long_help = after_help(), after_help = after_help())]
pub struct Cli {
    /// Scope directory [default: $XDG_RUNTIME_DIR/shellper, else $TMPDIR/shellper-$UID]
    #[arg(long, global = true, value_name = "DIR", env = "SHELLPER_SCOPE")]
    pub scope: Option<PathBuf>,

    /// When to use colour (auto: only on a terminal and when NO_COLOR is unset)
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Per-shellper STATUS timeout; the whole sweep is bounded by about twice this
    #[arg(long, global = true, value_name = "DUR", default_value = "500ms", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

/// Colour policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every shellper of the scope: phase, epoch, holder, deadlines, reachability
    List {
        /// Print {"schema_version":1,"shellpers":[…]} instead of a table
        #[arg(long)]
        json: bool,
    },
    /// One shellper in full: lease, timings, clients, counters, process tree
    Show {
        /// Shellper id (sh-XXXXXXXX) as listed by `leasectl list`
        id: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Live table refreshed in place; phase changes highlighted; JSON lines when not a terminal
    Watch {
        /// Refresh interval
        #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Print JSON lines (one per change) even on a terminal
        #[arg(long)]
        json: bool,
        /// Stop after this many refreshes (default: until Ctrl-C)
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Shellpers nobody looks after: lapsed, unclaimed, dead holder, unreachable,
    /// running without a socket, or (with --tracked) unknown to your Tower
    #[command(after_long_help = EXIT_CODES_HELP)]
    Orphans {
        /// Print JSON instead of a report
        #[arg(long)]
        json: bool,
        /// Pids another registry knows (one per line, or codev's /api/terminals JSON); `-` reads stdin
        #[arg(long, value_name = "FILE|-")]
        tracked: Option<String>,
        /// Only the scope: do not search the process table for shellpers elsewhere
        #[arg(long)]
        scope_only: bool,
    },
    /// Take shellper trees down: authenticated terminate, else SIGTERM, else the
    /// kill ladder from outside; then verify through /proc that nothing survives
    #[command(after_long_help = EXIT_CODES_HELP)]
    Reap {
        /// Shellper ids to reap
        #[arg(
            value_name = "ID",
            required_unless_present_any = ["orphans", "pid"],
            conflicts_with = "orphans"
        )]
        ids: Vec<String>,
        /// Reap a shellper process by pid (ours or codev's Node one; no socket needed)
        #[arg(long, value_name = "PID", conflicts_with = "orphans")]
        pid: Vec<u32>,
        /// Reap everything `leasectl orphans` reports
        #[arg(long)]
        orphans: bool,
        /// With --orphans: pids another registry knows (see `orphans --tracked`)
        #[arg(long, value_name = "FILE|-", conflicts_with = "ids")]
        tracked: Option<String>,
        /// With --orphans: only the scope's orphans, not socketless shellpers elsewhere
        #[arg(long)]
        scope_only: bool,
        /// Print the plan, touch nothing
        #[arg(long)]
        dry_run: bool,
        /// How long each step may take before the next, harsher one
        #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
        grace: Duration,
        /// Also reap shellpers whose lease is held (this evicts their Tower)
        #[arg(long)]
        force: bool,
        /// Print JSON instead of a report
        #[arg(long)]
        json: bool,
    },
    /// Run the whole story in a throwaway scope: spawn, crash the Tower, watch
    /// the trees die on time, prove zero survivors; then re-adoption
    Demo {
        /// The minitower binary [default: next to leasectl]
        #[arg(long, value_name = "PATH")]
        minitower: Option<PathBuf>,
        /// Reattach window used by the demo's shellpers
        #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
        window: Duration,
    },
    /// Interactive terminal on a shellper (never takes the lease); detach with ctrl-] d
    ///
    /// Connects as a terminal client (ours or a codev v1 shellper), prints the
    /// replay of recent output, then relays keys and output both ways with the
    /// local terminal in raw mode, and sends its size on attach and on every
    /// resize. The Tower keeps holding the lease. The terminal (its settings, and
    /// the alternate screen, cursor, mouse and paste modes the program left on) is
    /// restored on every way out: detach, the command's exit (its status is printed and
    /// returned), a lost connection, SIGINT, SIGTERM, SIGHUP, SIGQUIT.
    #[command(after_long_help = ATTACH_HELP, after_help = ATTACH_HELP)]
    Attach {
        /// Shellper id (sh-XXXXXXXX) as listed by `leasectl list`
        id: String,
        /// Only look: send no keys and no size (ctrl-c detaches too)
        #[arg(long)]
        read_only: bool,
        /// Detach sequence: comma-separated keys, each ctrl-X (X in a-z @ [ \ ] ^ _)
        /// or one printable character
        #[arg(long, value_name = "KEYS", default_value = crate::attach::DEFAULT_DETACH_KEYS)]
        detach_keys: crate::attach::DetachKeys,
    },
    /// Ask the scope's running Tower for a new session: prints its id, or
    /// attaches with --attach (never starts one without a Tower)
    #[command(after_long_help = crate::new::NEW_HELP)]
    New(crate::new::NewArgs),
    /// Ask the scope's running Tower to end a session (whole tree, death
    /// confirmed); without one, terminate it with its token as `reap` does
    #[command(after_long_help = crate::new::KILL_HELP)]
    Kill {
        /// Session id (sh-XXXXXXXX)
        id: String,
        /// Print JSON instead of a sentence
        #[arg(long)]
        json: bool,
        /// Fallback (reap): how long each step may take before the next
        #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
        grace: Duration,
    },
    /// A shellper's log (the live file; --all puts the rotated part first); -f follows it
    #[command(after_long_help = LOGS_HELP, after_help = LOGS_HELP)]
    Logs {
        /// Shellper id (sh-XXXXXXXX); its log is SCOPE/ID.log
        id: String,
        /// Keep printing what is appended, across rotations, until Ctrl-C (like tail -F)
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<usize>,
        /// Include the rotated log (ID.log.1), oldest first
        #[arg(long)]
        all: bool,
    },
    /// The scope in the Prometheus text exposition format, for
    /// node_exporter's textfile collector (sessions by phase, holder alive,
    /// lease counters, seconds to expiry and to kill)
    #[command(after_long_help = METRICS_HELP)]
    Metrics {
        /// Write to FILE atomically (hidden temporary file in the same
        /// directory, then rename) instead of stdout
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Permissions of FILE, in octal: 0600 (default: the labels hold
        /// command lines), 0640 or 0644 for a collector running as another
        /// user (see below)
        #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = parse_mode, requires = "output")]
        mode: u32,
    },
    /// Remove what gone shellpers left: registry entries, their empty
    /// cgroups, socket files nothing listens on, old logs; and keep the
    /// scope's logs under a cap.
    /// Dry run unless --yes
    #[command(after_long_help = PRUNE_HELP)]
    Prune {
        /// Remove (without it: only show what would be removed)
        #[arg(long, short)]
        yes: bool,
        /// Print JSON instead of a report
        #[arg(long)]
        json: bool,
        /// Logs of gone shellpers are kept this long after their last write
        #[arg(long, value_name = "DUR", default_value = "7d", value_parser = parse_duration)]
        keep_logs: Duration,
        /// Cap on the scope's logs (live and rotated), in MiB
        #[arg(long, value_name = "MIB", default_value_t = tower_client::tidy::DEFAULT_SCOPE_LOG_CAP >> 20)]
        log_cap_mib: u64,
    },
    /// Print a shell completion script
    Completions {
        /// Target shell
        shell: clap_complete::Shell,
    },
    /// Put the native shellper under codev (install), show (status) or undo it (uninstall)
    #[command(subcommand)]
    Codev(crate::codev::CodevCommand),
    /// Print the man page (roff), or write every page (leasectl.1, leasectl-SUBCOMMAND.1) into a directory
    Man {
        /// Write leasectl.1 and one page per subcommand here instead of printing leasectl.1
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Parses an octal file mode for `metrics --mode` (permission bits only,
/// owner read-write, nobody else writing).
fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode (0600, 0640, 0644)"))?;
    if m > 0o777 {
        return Err(format!("{s}: only permission bits (at most 0777)"));
    }
    if m & 0o600 != 0o600 {
        return Err(format!(
            "{s}: the owner must be able to read and write it (0600 at least)"
        ));
    }
    if m & 0o022 != 0 {
        return Err(format!(
            "{s}: group or others could write it; 0640 or 0644 at most"
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn reap_needs_ids_or_orphans_not_both() {
        assert!(Cli::try_parse_from(["leasectl", "reap"]).is_err());
        assert!(Cli::try_parse_from(["leasectl", "reap", "--orphans", "sh-1"]).is_err());
        assert!(Cli::try_parse_from(["leasectl", "reap", "sh-00000001", "sh-00000002"]).is_ok());
        assert!(Cli::try_parse_from(["leasectl", "reap", "--orphans", "--dry-run"]).is_ok());
        assert!(Cli::try_parse_from(["leasectl", "reap", "--pid", "42"]).is_ok());
        assert!(Cli::try_parse_from(["leasectl", "reap", "--pid", "42", "--orphans"]).is_err());
        assert!(Cli::try_parse_from(["leasectl", "reap", "sh-1", "--tracked", "-"]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        let cli = Cli::try_parse_from(["leasectl", "--timeout", "250ms", "list"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_millis(250));
    }
}
