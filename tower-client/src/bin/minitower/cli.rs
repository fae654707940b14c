//! minitower's command line: the flags, their help, and `--generate`
//! (man page and shell completions).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub(super) const AFTER_HELP: &str = "\
WHAT IT DOES
  At start, minitower locks the scope (one Tower per scope), adopts every
  shellper listed in the scope's registry.json that is still alive
  (re-acquiring its lease with the stored token), then spawns --spawn N new
  shellpers running CMD (default: $SHELL, else /bin/sh). It renews every
  lease from one timer until SIGINT or SIGTERM, then detaches (default:
  the shellpers keep running for --hold or their window, waiting for the
  next Tower) or terminates them (--on-exit terminate: whole trees killed,
  death confirmed), and exits 0.

  If minitower dies (SIGKILL, crash), each shellper notices at once and
  kills its own tree when --window passes with no Tower back. If it is
  stopped (SIGSTOP), the leases lapse after --ttl and the window runs from
  there; on SIGCONT it reports what it lost and keeps running.

OUTPUT (stdout, one JSON object per line, flushed per line)
  {\"event\":\"adopted\",\"id\":\"sh-…\",\"pid\":…,\"child_pid\":…,\"epoch\":…}
  {\"event\":\"adopt_failed\",\"id\":…,\"error\":…}   alive but not adoptable (left alone)
  {\"event\":\"pruned\",\"id\":…}                     registry entry whose process is gone
  {\"event\":\"tidied\",\"removed\":[{\"what\",\"id\",\"path\",\"bytes\",\"reason\"}],\"failed\":[…]}
                                      the periodic tidy (--tidy-every) removed
                                      entries, sockets or logs of gone shellpers
  {\"event\":\"spawned\",\"id\":…,\"pid\":…,\"child_pid\":…,\"socket\":…}
  {\"event\":\"spawn_failed\",\"error\":…}
  {\"event\":\"ready\",\"held\":N,\"capacity\":C,\"fd_limit\":L,\"containment\":{…}}
                                      startup done; C: how many fit under the
                                      descriptor limit (2 each); spawns past
                                      it fail with spawn_failed; containment:
                                      {\"kind\":\"cgroup\",\"base\":…,\"controllers\":[…],
                                      \"limits\":{…}} or {\"kind\":\"process_tree\",
                                      \"reason\":…}
  {\"event\":\"dropped\",\"count\":N}                 N lines were dropped
                                      because stdout was not being read
  then: held, unresponsive, lapsed, revoked, exited (what: child|shellper),
  lost, terminated, detached; and {\"event\":\"stopping\",\"signal\":…} at the end.
  Diagnostics go to stderr (RUST_LOG=debug for more). Output never
  stalls the leases: a stdout nobody reads costs lines, not renewals.
  Shellpers that cannot be adopted (no answer, out of descriptors) are left
  running and in the registry, and adoption is retried with backoff.

CONTROL SOCKET
  SCOPE/tower.ctl (0600, this uid only): `leasectl new -- CMD` asks this
  Tower for a session, `leasectl kill ID` ends one; any client may speak
  its JSON lines (SPEC.md section 15): spawn, terminate, list. A session
  spawned on request prints a `spawned` line with \"via\":\"control\"; a
  refused request prints {\"event\":\"control_refused\",\"op\",\"code\"}
  (never its content). Requested lease timings must lie within this
  Tower's limits (--max-window); environments never reach argv or a log.

TIDY
  At start and every --tidy-every, minitower removes what shellpers that are
  proven gone left: registry entries (the kernel says the process is gone:
  pid and start time), socket files nothing listens on (older than 2 min),
  their logs once last written more than --keep-logs ago; and over
  --log-cap-mib, the oldest logs of gone shellpers, then the oldest rotated
  logs of live ones. Nothing of a held, live or undecidable shellper goes.

CONTAINMENT
  With a writable cgroup v2 (--cgroup DIR, or auto under a delegated systemd
  unit), each session's PTY command and everything it starts live in a cgroup
  of their own (BASE/<id>): killed at once with cgroup.kill (nothing can fork
  past it), exactly after a SIGKILLed shellper, and accounted (CPU, processes,
  memory where the controller is delegated; see leasectl list). Without one,
  the process-tree ladder (/proc) does the work, as before.

UNDER SYSTEMD
  contrib/systemd/minitower.service runs it as a user service that keeps the
  sessions across `systemctl --user restart` (KillMode=process); see the
  README's section \"Running the Tower as a service\". With $NOTIFY_SOCKET set
  (Type=notify) it sends READY=1 once the scope is adopted and the control
  socket answers, so `systemctl --user start` returns only then.

EXIT CODES
  0  stopped by SIGINT/SIGTERM after releasing everything
  1  runtime error (could not start the event loop, release failed), or
     none of --spawn N succeeded (what was adopted is detached, not killed)
  2  usage error (bad flag or lease timings; --pids-max/--memory-max
     without a cgroup that offers the controller)
  3  the scope is held by another Tower (the message names its pid)
  4  the scope is unusable (bad owner or permissions, socket paths too long,
     registry corrupt, a directory, or of an unknown schema version), or it
     was deleted or replaced while running (checked every second and before
     every registry write; held shellpers are detached, never killed)

EXAMPLES
  Hold two shells in a private scope, detach on Ctrl-C:
    minitower --scope /tmp/demo --spawn 2

  Short leases for experiments; kill everything on exit:
    minitower --scope /tmp/demo --ttl 600ms --window 3s --spawn 3 \\
              --on-exit terminate -- sh -c 'while :; do date; sleep 1; done'

  Restart within the window and everything is adopted, nothing is killed:
    minitower --scope /tmp/demo            # after the previous one died

  Before a planned long stop, detach with a long hold:
    minitower --scope /tmp/demo --hold 2h   # then SIGTERM it
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum OnExit {
    /// Stop holding; shellpers live on for --hold (at least their window).
    Detach,
    /// Kill every held shellper's whole tree and confirm it.
    Terminate,
}

/// The reference Tower: holds the leases of every shellper of a scope.
#[derive(Debug, Parser)]
#[command(name = "minitower", version, after_help = AFTER_HELP)]
pub(super) struct Cli {
    /// Scope directory (created 0700). Default: $XDG_RUNTIME_DIR/shellper,
    /// else `$TMPDIR/shellper-<uid>`.
    #[arg(long, value_name = "DIR")]
    pub(super) scope: Option<PathBuf>,

    /// Lease time-to-live of new shellpers (renewed every ttl/3) [default: 6s].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub(super) ttl: Option<Duration>,

    /// Reattach window of new shellpers: how long they survive without a
    /// Tower before killing their tree [default: 10m].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub(super) window: Option<Duration>,

    /// Grace between SIGTERM and SIGKILL in a shellper's kill ladder
    /// [default: 3s].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub(super) kill_grace: Option<Duration>,

    /// Claim deadline of new shellpers (time to the first acquire)
    /// [default: 60s].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub(super) claim: Option<Duration>,

    /// Number of new shellpers to spawn.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(super) spawn: usize,

    /// What to do with held shellpers on SIGINT/SIGTERM.
    #[arg(long, value_enum, default_value_t = OnExit::Detach)]
    pub(super) on_exit: OnExit,

    /// With --on-exit detach: keep shellpers alive at least this long
    /// (default: their window).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub(super) hold: Option<Duration>,

    /// The shellper binary. Default: next to minitower, then PATH.
    #[arg(long, value_name = "PATH")]
    pub(super) shellper: Option<PathBuf>,

    /// Initial PTY size of spawned shellpers.
    #[arg(long, default_value_t = 80)]
    pub(super) cols: u16,
    #[arg(long, default_value_t = 24)]
    pub(super) rows: u16,

    /// How often the scope is tidied (registry entries, sockets and logs of
    /// gone shellpers, the log cap); also once at start. `0s` disables.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = humantime::parse_duration)]
    pub(super) tidy_every: Duration,

    /// Logs of gone shellpers are kept this long after their last write.
    #[arg(long, value_name = "DUR", default_value = "7d", value_parser = humantime::parse_duration)]
    pub(super) keep_logs: Duration,

    /// Cap on the scope's logs in MiB (live and rotated): past it the
    /// oldest logs of gone shellpers go first, then the oldest rotated logs
    /// of live ones; never a live shellper's current log.
    #[arg(long, value_name = "MIB", default_value_t = tower_client::tidy::DEFAULT_SCOPE_LOG_CAP >> 20)]
    pub(super) log_cap_mib: u64,

    /// Containment of the sessions: `auto` (a cgroup v2 each, under
    /// minitower's own cgroup where it is delegated, e.g. a systemd unit with
    /// Delegate=yes; minitower then moves itself into its leaf `tower`), a
    /// cgroup v2 directory to create them in, or `none` (the process-tree
    /// ladder). A cgroup that cannot be used falls back to the process tree;
    /// the `ready` event says which containment is in force and why.
    #[arg(long, value_name = "DIR|auto|none", default_value = "auto")]
    pub(super) cgroup: String,

    /// Most processes (and threads) per session (cgroup pids.max). Needs a
    /// cgroup whose sessions get the pids controller, else minitower exits 2.
    #[arg(long, value_name = "N")]
    pub(super) pids_max: Option<u64>,

    /// Most memory per session (cgroup memory.max): bytes, or with a K, M or
    /// G suffix (powers of 1024). Needs the memory controller, else exit 2.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(super) memory_max: Option<u64>,

    /// Longest reattach window a `leasectl new` (control socket) request may
    /// ask for.
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(super) max_window: Duration,

    /// Print minitower's man page (roff) or a shell completion script, and
    /// exit (for packagers: `minitower --generate man > minitower.1`).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub(super) generate: Option<Generate>,

    /// Command (and arguments) run in each spawned shellper's PTY.
    #[arg(last = true, value_name = "CMD")]
    pub(super) command: Vec<String>,
}

/// A size in bytes: `1048576`, `512K`, `256M`, `2G` (powers of 1024).
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or a number with K, M or G)"))?;
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Generate {
    /// The man page, rendered from this command line's definition.
    Man,
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

/// `--generate`: the man page or a completion script on stdout.
pub(super) fn generate(what: Generate) -> ExitCode {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut cmd = Cli::command();
    let mut stdout = std::io::stdout();
    let shell = match what {
        Generate::Man => {
            return match tower_client::manpage::render(cmd, &mut stdout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("minitower: writing the man page: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Generate::Bash => Shell::Bash,
        Generate::Zsh => Shell::Zsh,
        Generate::Fish => Shell::Fish,
        Generate::Elvish => Shell::Elvish,
        Generate::Powershell => Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut cmd, "minitower", &mut stdout);
    ExitCode::SUCCESS
}
