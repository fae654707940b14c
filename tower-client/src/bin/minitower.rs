//! minitower: the reference Tower. Holds the leases of every shellper of a
//! scope until signalled, spawns more on request, prints one JSON line per
//! event.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tower_client::{Error, LeaseConfig, Scope, SpawnSpec, Tower, TowerConfig};

use shellper_protocol::lease::{DEFAULT_CLAIM, DEFAULT_KILL_GRACE, DEFAULT_TTL, DEFAULT_WINDOW};

const AFTER_HELP: &str = "\
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
enum OnExit {
    /// Stop holding; shellpers live on for --hold (at least their window).
    Detach,
    /// Kill every held shellper's whole tree and confirm it.
    Terminate,
}

/// The reference Tower: holds the leases of every shellper of a scope.
#[derive(Debug, Parser)]
#[command(name = "minitower", version, after_help = AFTER_HELP)]
struct Cli {
    /// Scope directory (created 0700). Default: $XDG_RUNTIME_DIR/shellper,
    /// else `$TMPDIR/shellper-<uid>`.
    #[arg(long, value_name = "DIR")]
    scope: Option<PathBuf>,

    /// Lease time-to-live of new shellpers (renewed every ttl/3) [default: 6s].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,

    /// Reattach window of new shellpers: how long they survive without a
    /// Tower before killing their tree [default: 10m].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    window: Option<Duration>,

    /// Grace between SIGTERM and SIGKILL in a shellper's kill ladder
    /// [default: 3s].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    kill_grace: Option<Duration>,

    /// Claim deadline of new shellpers (time to the first acquire)
    /// [default: 60s].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    claim: Option<Duration>,

    /// Number of new shellpers to spawn.
    #[arg(long, value_name = "N", default_value_t = 0)]
    spawn: usize,

    /// What to do with held shellpers on SIGINT/SIGTERM.
    #[arg(long, value_enum, default_value_t = OnExit::Detach)]
    on_exit: OnExit,

    /// With --on-exit detach: keep shellpers alive at least this long
    /// (default: their window).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    hold: Option<Duration>,

    /// The shellper binary. Default: next to minitower, then PATH.
    #[arg(long, value_name = "PATH")]
    shellper: Option<PathBuf>,

    /// Initial PTY size of spawned shellpers.
    #[arg(long, default_value_t = 80)]
    cols: u16,
    #[arg(long, default_value_t = 24)]
    rows: u16,

    /// How often the scope is tidied (registry entries, sockets and logs of
    /// gone shellpers, the log cap); also once at start. `0s` disables.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = humantime::parse_duration)]
    tidy_every: Duration,

    /// Logs of gone shellpers are kept this long after their last write.
    #[arg(long, value_name = "DUR", default_value = "7d", value_parser = humantime::parse_duration)]
    keep_logs: Duration,

    /// Cap on the scope's logs in MiB (live and rotated): past it the
    /// oldest logs of gone shellpers go first, then the oldest rotated logs
    /// of live ones; never a live shellper's current log.
    #[arg(long, value_name = "MIB", default_value_t = tower_client::tidy::DEFAULT_SCOPE_LOG_CAP >> 20)]
    log_cap_mib: u64,

    /// Containment of the sessions: `auto` (a cgroup v2 each, under
    /// minitower's own cgroup where it is delegated, e.g. a systemd unit with
    /// Delegate=yes; minitower then moves itself into its leaf `tower`), a
    /// cgroup v2 directory to create them in, or `none` (the process-tree
    /// ladder). A cgroup that cannot be used falls back to the process tree;
    /// the `ready` event says which containment is in force and why.
    #[arg(long, value_name = "DIR|auto|none", default_value = "auto")]
    cgroup: String,

    /// Most processes (and threads) per session (cgroup pids.max). Needs a
    /// cgroup whose sessions get the pids controller, else minitower exits 2.
    #[arg(long, value_name = "N")]
    pids_max: Option<u64>,

    /// Most memory per session (cgroup memory.max): bytes, or with a K, M or
    /// G suffix (powers of 1024). Needs the memory controller, else exit 2.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_max: Option<u64>,

    /// Longest reattach window a `leasectl new` (control socket) request may
    /// ask for.
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = humantime::parse_duration)]
    max_window: Duration,

    /// Print minitower's man page (roff) or a shell completion script, and
    /// exit (for packagers: `minitower --generate man > minitower.1`).
    #[arg(long, value_enum, value_name = "WHAT")]
    generate: Option<Generate>,

    /// Command (and arguments) run in each spawned shellper's PTY.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// A size in bytes: `1048576`, `512K`, `256M`, `2G` (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
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
enum Generate {
    /// The man page, rendered from this command line's definition.
    Man,
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

/// `--generate`: the man page or a completion script on stdout.
fn generate(what: Generate) -> ExitCode {
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

/// Lines waiting for stdout before new ones are dropped.
const OUTPUT_QUEUE: usize = 1024;

/// The event output: a bounded queue drained by a thread of its own.
///
/// Writing to stdout can block for ever (a pipe nobody reads, `| less`, a
/// stuck log shipper). The lease loop runs on one thread and must never wait
/// for it: lines are queued without blocking, and when the queue is full
/// they are dropped and counted; the writer reports the count in an
/// `{"event":"dropped","count":N}` line as soon as stdout moves again.
struct Output {
    tx: Option<std::sync::mpsc::SyncSender<String>>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Output {
    fn start() -> Output {
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(OUTPUT_QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let d = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("minitower-output".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                for line in rx {
                    let mut o = stdout.lock();
                    let n = d.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(o, "{}", json!({"event":"dropped","count":n}));
                    }
                    // A closed stdout must not stop a Tower from holding
                    // its leases: write errors are ignored.
                    let _ = writeln!(o, "{line}");
                    let _ = o.flush();
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            eprintln!("minitower: cannot start the output thread ({e}); events are not printed");
        }
        Output {
            tx: Some(tx),
            dropped,
            done,
        }
    }

    /// Queues one line; never blocks.
    fn line(&self, s: String) {
        use std::sync::mpsc::TrySendError;
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(s)
        {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Lets the writer print what is queued, waiting at most `timeout` (a
    /// stuck stdout must not keep a stopping Tower alive).
    fn finish(mut self, timeout: Duration) {
        self.tx = None;
        let _ = self.done.recv_timeout(timeout);
    }
}

static OUTPUT: std::sync::OnceLock<std::sync::Mutex<Option<Output>>> = std::sync::OnceLock::new();

fn with_output(f: impl FnOnce(&Output)) {
    if let Some(m) = OUTPUT.get()
        && let Some(o) = m.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
    {
        f(o);
    }
}

fn out(v: serde_json::Value) {
    with_output(|o| o.line(v.to_string()));
}

fn out_line(s: &str) {
    with_output(|o| o.line(s.to_string()));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(what) = cli.generate {
        return generate(what);
    }
    tower_client::cli::init_logging();
    let lease = match LeaseConfig::new(
        cli.ttl.unwrap_or(DEFAULT_TTL),
        cli.window.unwrap_or(DEFAULT_WINDOW),
        cli.claim.unwrap_or(DEFAULT_CLAIM),
        cli.kill_grace.unwrap_or(DEFAULT_KILL_GRACE),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("minitower: invalid lease settings: {e}");
            return ExitCode::from(2);
        }
    };
    tower_client::raise_fd_limit();
    // One thread: a Tower's work is small and IO-bound, and a single-threaded
    // runtime avoids cross-thread wakeups (measured ~30 % less CPU per
    // renewal than two workers). Registry writes go to the blocking pool.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("minitower: cannot start the event loop: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = OUTPUT.set(std::sync::Mutex::new(Some(Output::start())));
    let code = rt.block_on(run(cli, lease));
    // Holders of detached or terminated shellpers are done; anything left
    // (a background reaper) must not delay the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    if let Some(m) = OUTPUT.get()
        && let Some(o) = m.lock().unwrap_or_else(|p| p.into_inner()).take()
    {
        o.finish(Duration::from_secs(1));
    }
    code
}

/// Prints an adoption report. Held events of adoption are summarized by the
/// `adopted` lines.
fn print_adoption(report: &tower_client::AdoptReport, retry: bool) {
    for h in &report.adopted {
        let i = h.info();
        out(
            json!({"event":"adopted","id":i.id,"pid":i.pid,"child_pid":i.child_pid,"epoch":h.epoch(),"retry":retry}),
        );
    }
    for g in &report.gone {
        out(json!({"event":"pruned","id":g.id,"pid":g.pid,"reason":"process gone"}));
    }
    for f in &report.failed {
        eprintln!(
            "minitower: cannot adopt {} (left running and kept in the registry; retrying): {}",
            f.entry.id, f.error
        );
        out(
            json!({"event":"adopt_failed","id":f.entry.id,"pid":f.entry.pid,"error":f.error.to_string(),"retry":retry}),
        );
    }
}

/// Prints what a tidy removed (nothing when it removed nothing).
fn print_tidy(done: &tower_client::TidyDone) {
    if done.done.is_empty() && done.failed.is_empty() {
        return;
    }
    let removed: Vec<_> = done
        .done
        .iter()
        .map(|a| json!({"what":a.what,"id":a.id,"path":a.path,"bytes":a.bytes,"reason":a.reason}))
        .collect();
    let failed: Vec<_> = done
        .failed
        .iter()
        .map(|(a, e)| json!({"what":a.what,"id":a.id,"path":a.path,"error":e}))
        .collect();
    out(json!({"event":"tidied","removed":removed,"failed":failed}));
}

/// Tells the service manager that startup is done (`READY=1` on
/// `$NOTIFY_SOCKET`, sd_notify(3)'s protocol: one datagram; a path, or an
/// abstract name after `@`). Nothing without the variable; a failure is
/// logged, never fatal (the service runs either way).
fn sd_notify_ready() {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(b"READY=1", &addr)
        } else {
            sock.send_to(b"READY=1", &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!("telling the service manager we are ready (NOTIFY_SOCKET): {e}");
    }
}

async fn run(cli: Cli, lease: LeaseConfig) -> ExitCode {
    // Signals first, so a SIGTERM during a slow startup is not lost.
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            eprintln!("minitower: cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let dir = cli.scope.clone().unwrap_or_else(Scope::default_dir);
    let scope = match Scope::open(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(4);
        }
    };
    let cgroup = match cli.cgroup.as_str() {
        "none" => None,
        c => match c.parse::<tower_client::CgroupChoice>() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("minitower: --cgroup: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let cfg = TowerConfig {
        lease,
        cgroup,
        limits: tower_client::Limits {
            pids_max: cli.pids_max,
            memory_max: cli.memory_max,
        },
        holder_name: format!("minitower@{}", std::process::id()),
        shellper_bin: cli.shellper.clone(),
        tidy: tower_client::TidyPolicy {
            keep_gone_logs: cli.keep_logs,
            scope_log_cap: cli.log_cap_mib.saturating_mul(1 << 20),
            ..tower_client::TidyPolicy::default()
        },
        ..TowerConfig::default()
    };
    let (tower, mut events) = match Tower::open(scope, cfg) {
        Ok(t) => t,
        Err(e @ Error::Containment(_)) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(2);
        }
        Err(e @ Error::ScopeLocked { .. }) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(3);
        }
        Err(e @ (Error::RegistryCorrupt { .. } | Error::UnsafeScope { .. } | Error::Io { .. })) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(4);
        }
        Err(e) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(1);
        }
    };

    // The control socket first: `leasectl new` right after a start finds
    // it as soon as the scope is locked.
    let limits = tower_client::control::ControlLimits {
        max_window: cli.max_window.max(lease.window),
        ..Default::default()
    };
    let control = match tower_client::control::ControlServer::bind(&tower, limits) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(4);
        }
    };
    let tower = std::sync::Arc::new(tower);
    let control_stop = tokio_util::sync::CancellationToken::new();
    let control_task = tokio::spawn(control.serve(tower.clone(), control_stop.clone(), |n| {
        if let Some(v) = n.event_json() {
            out(v);
        }
    }));

    let report = tower.adopt_all().await;
    print_adoption(&report, false);

    let (command, args) = match cli.command.split_first() {
        Some((c, a)) => (c.clone(), a.to_vec()),
        None => (
            std::env::var("SHELL")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/bin/sh".into()),
            Vec::new(),
        ),
    };
    let mut set = JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for _ in 0..cli.spawn {
        let mut spec = SpawnSpec::new(command.clone()).args(args.clone());
        spec.cols = cli.cols;
        spec.rows = cli.rows;
        let t = tower.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire().await;
            t.spawn(spec).await
        });
    }
    let mut stop_signal = None;
    let mut spawned = 0usize;
    while !set.is_empty() {
        tokio::select! {
            j = set.join_next() => match j {
                Some(Ok(Ok(h))) => {
                    spawned += 1;
                    let i = h.info();
                    out(json!({"event":"spawned","id":i.id,"pid":i.pid,"child_pid":i.child_pid,"socket":i.socket}));
                }
                Some(Ok(Err(e))) => {
                    eprintln!("minitower: {e}");
                    out(json!({"event":"spawn_failed","error":e.to_string()}));
                }
                Some(Err(e)) => eprintln!("minitower: spawn task failed: {e}"),
                None => break,
            },
            _ = sigint.recv() => { stop_signal = Some("SIGINT"); break; }
            _ = sigterm.recv() => { stop_signal = Some("SIGTERM"); break; }
        }
    }
    if stop_signal.is_some() {
        // Let in-flight spawns finish (each is bounded) so that what they
        // started is held and released below, never left unclaimed.
        while let Some(j) = set.join_next().await {
            if let Ok(Ok(h)) = j {
                let i = h.info();
                out(
                    json!({"event":"spawned","id":i.id,"pid":i.pid,"child_pid":i.child_pid,"socket":i.socket}),
                );
            }
        }
    }
    // Startup Held events are implied by adopted/spawned lines; print the
    // rest (child exits seen during startup, anything unusual).
    while let Some(ev) = events.try_recv() {
        if !matches!(
            ev,
            tower_client::Event::Held {
                recovered: false,
                ..
            }
        ) {
            out_line(&ev.to_json());
        }
    }
    let mut spawns_failed = false;
    let mut scope_lost = false;
    if stop_signal.is_none() && cli.spawn > 0 && spawned == 0 {
        // Asked to run something and nothing runs: say so with the exit
        // code rather than holding nothing (what was adopted is detached,
        // never killed, so its window still protects it).
        eprintln!(
            "minitower: none of the {} requested spawns succeeded",
            cli.spawn
        );
        spawns_failed = true;
    } else if stop_signal.is_none() {
        let budget = tower.fd_budget();
        out(
            json!({"event":"ready","held":tower.len(),"capacity":budget.capacity,"fd_limit":budget.limit,"containment":tower.containment()}),
        );
        // Under systemd (Type=notify): `systemctl start` returns now, with
        // the control socket up and the scope adopted.
        sd_notify_ready();
        // Entries that could not be adopted stay in the registry; retry
        // them with backoff (an EMFILE or a wedged shellper passes).
        let mut retry_in = Duration::from_secs(1);
        let mut retry_at =
            (!report.failed.is_empty()).then(|| tokio::time::Instant::now() + retry_in);
        // The first tidy runs now (after adoption: what was adopted is held,
        // and what is gone was pruned by it), then every --tidy-every.
        let mut tidy_at = (!cli.tidy_every.is_zero()).then(tokio::time::Instant::now);
        stop_signal = loop {
            let tidy_due = async {
                match tidy_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev @ tower_client::Event::ScopeLost { .. }) => {
                        out_line(&ev.to_json());
                        if let tower_client::Event::ScopeLost { scope, detail } = &ev {
                            eprintln!("minitower: scope {scope}: {detail}; stopping (sessions detached, alive for their window)");
                        }
                        scope_lost = true;
                        break Some("scope lost");
                    }
                    Some(ev) => out_line(&ev.to_json()),
                    None => break None,
                },
                _ = tidy_due => {
                    print_tidy(&tower.tidy().await);
                    tidy_at = Some(tokio::time::Instant::now() + cli.tidy_every);
                }
                _ = retry => {
                    let r = tower.adopt_all().await;
                    print_adoption(&r, true);
                    retry_in = (retry_in * 2).min(Duration::from_secs(30));
                    retry_at = (!r.failed.is_empty()).then(|| tokio::time::Instant::now() + retry_in);
                }
                _ = sigint.recv() => break Some("SIGINT"),
                _ = sigterm.recv() => break Some("SIGTERM"),
            }
        };
    }

    // No new requests; those in flight finish (each is bounded), so what
    // they spawned is held and released below.
    control_stop.cancel();
    let _ = tokio::time::timeout(
        tower_client::control::DRAIN_TIMEOUT + Duration::from_secs(1),
        control_task,
    )
    .await;

    let on_exit = if spawns_failed || scope_lost {
        OnExit::Detach
    } else {
        cli.on_exit
    };
    out(
        json!({"event":"stopping","signal":stop_signal,"reason":spawns_failed.then_some("no spawn succeeded"),"on_exit":match on_exit { OnExit::Detach => "detach", OnExit::Terminate => "terminate" },"held":tower.len()}),
    );
    let mut failed = 0;
    match on_exit {
        OnExit::Detach => {
            for (id, r) in tower.detach_all(cli.hold).await {
                if let Err(e) = r {
                    failed += 1;
                    eprintln!("minitower: detach {id}: {e}");
                    out(json!({"event":"release_failed","id":id,"error":e.to_string()}));
                }
            }
        }
        OnExit::Terminate => {
            let timeout = lease.kill_grace + Duration::from_secs(5);
            for (id, r) in tower.terminate_all(timeout).await {
                if let Err(e) = r {
                    failed += 1;
                    eprintln!("minitower: terminate {id}: {e}");
                    out(json!({"event":"release_failed","id":id,"error":e.to_string()}));
                }
            }
        }
    }
    // Report the detached/terminated/exited events of the release.
    tokio::time::sleep(Duration::from_millis(20)).await;
    while let Some(ev) = events.try_recv() {
        out_line(&ev.to_json());
    }
    if scope_lost {
        ExitCode::from(4)
    } else if failed > 0 || spawns_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
