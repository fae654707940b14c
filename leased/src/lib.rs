//! Make any process leased.
//!
//! The design promises that shellpers *link the lease crate*. This crate is
//! that promise for programs that are not our PTY shellper (a build worker, an
//! agent runner): it serves the lease protocol of SPEC.md on a Unix socket, so
//! any Tower of ours (minitower, a tower-client program, a Node Tower on
//! `clients/node`) can hold it, and when the lease ends (the reattach window
//! expires after the Tower died or hung, the claim deadline passes, the
//! holder sends RELEASE Terminate, or the process gets SIGTERM/SIGHUP/SIGINT)
//! it kills the process's **whole tree** with the kill ladder of SPEC.md §9
//! and reports how it went. Nothing of the PTY shellper is pulled in: no PTY,
//! no replay buffer, no terminal clients.
//!
//! # How to make a process leased
//!
//! ```no_run
//! # async fn demo() -> Result<(), shellper_leased::Error> {
//! use shellper_leased::{Leased, Options, invocation};
//!
//! // 1. Started by a Tower: the token and config arrive on stdin
//! //    (`--config-stdin`) or as codev's last argument (SPEC.md §3).
//! let args: Vec<String> = std::env::args().skip(1).collect();
//! let inv = invocation::read_from_tower(&args)?;
//! // 2. Serve the lease (this also makes the process a child subreaper, so
//! //    everything it starts stays in its tree).
//! let leased = Leased::serve(inv.options()).await?;
//! // 3. Start the work, tell the lease about it, then the Tower.
//! let worker = std::process::Command::new(&inv.config.command).spawn().expect("spawn");
//! leased.set_worker(worker.id());
//! invocation::announce_ready(inv.started_at_ms)?;
//! // 4. Wait until the lease ends: by then the whole tree is gone.
//! let ended = leased.ended().await;
//! std::process::exit(ended.exit_code);
//! # }
//! ```
//!
//! `examples/leased_worker.rs` is that program in full; minitower holds it
//! through `--shellper`, and `tests/embedded.rs` kills the Tower and watches the
//! whole tree go after the window.
//!
//! # Obligations of the embedding program
//!
//! * **One tree.** The kill ladder signals every descendant of the process
//!   (it is a child subreaper, so double-forked and `setsid` escapees stay
//!   descendants) and nothing else: never the process itself, never pid 1.
//! * **Reaping is yours.** The library never calls `wait`: your program keeps
//!   the exit statuses of its own children. Orphans reparented to it become
//!   zombies until reaped (`shellper_proctree::reap_zombies` reaps them all,
//!   if your program waits for nothing itself); the ladder counts zombies as
//!   gone.
//! * **Exit after [`Leased::ended`].** When it resolves, the tree is dead,
//!   the holder has its TERMINATED report and the socket file is removed; the
//!   process should exit with [`Ended::exit_code`] (SPEC.md §9's codes).
//! * **A worker that ends.** Call [`Leased::worker_exited`]: STATUS shows it
//!   and the process stays, a husk, until the lease ends (SPEC.md §8.2: the
//!   Tower that wants it gone terminates it; unheld, its deadlines apply).
//!
//! The lease enforcer ([`enforcer`]), the exit codes ([`exit`]), the socket
//! plumbing ([`sock`]) and the connection server ([`server`], with its
//! per-connection [`outbox`]) live here and the PTY shellper (crate
//! `shellper`) uses them, so both enforce the lease with one implementation
//! of the "re-check before killing" rules and answer on their sockets with
//! one server.

mod embedded;
pub mod enforcer;
pub mod exit;
pub mod invocation;
pub mod mem;
pub mod offthread;
pub mod outbox;
pub mod server;
pub mod sock;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use enforcer::{LeaseEnforcer, LeaseHandle, Termination};
use shellper_proctree::{KillPlan, KillReport, LinuxTable, RealClock, Scan, kill_tree};
use shellper_protocol::lease::{LeaseConfig, Mode};
use shellper_protocol::msg::{ChildState, TerminateReason};
use shellper_protocol::{Frame, LeaseMachine};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Everything that can go wrong before the lease is served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad invocation or configuration (exit code 2).
    #[error("configuration: {0}")]
    Config(String),
    /// The token could not be read (exit code 3).
    #[error("token: {0}")]
    Token(String),
    /// Socket or process set-up failed (exit code 3).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something answers on the socket path already.
    #[error("socket {0} is in use by a live process")]
    SocketInUse(PathBuf),
    /// `PR_SET_CHILD_SUBREAPER` failed: the tree could escape.
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(String),
}

impl From<invocation::ParseError> for Error {
    fn from(e: invocation::ParseError) -> Self {
        match e {
            invocation::ParseError::Token(m) => Error::Token(m),
            e => Error::Config(e.to_string()),
        }
    }
}

impl From<sock::BindError> for Error {
    fn from(e: sock::BindError) -> Self {
        match e {
            sock::BindError::InUse(p) => Error::SocketInUse(p),
            sock::BindError::Io { context, source } => Error::Io { context, source },
        }
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The exit code SPEC.md §9 gives this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => exit::USAGE,
            _ => exit::STARTUP,
        }
    }
}

/// What STATUS reports as the "command" of this process.
#[derive(Debug, Clone, Default)]
pub struct Describe {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
}

/// How to serve the lease.
#[derive(Debug)]
pub struct Options {
    /// Where to listen (the directory is created 0700 if missing; the socket is 0600).
    pub socket: PathBuf,
    /// `Mode::Leased(token)`: ACQUIRE must carry the token. `Mode::Legacy`:
    /// a connected `tower` client holds the lease (SPEC.md §12).
    pub mode: Mode,
    /// TTL, window, claim deadline, kill grace (validated by the protocol crate).
    pub config: LeaseConfig,
    /// How long a new connection may take to send HELLO.
    pub handshake_timeout: Duration,
    /// A peer that accepts no bytes for this long is disconnected, whole
    /// (SPEC.md §7; default 30 s).
    pub write_stall: Duration,
    /// Shown in STATUS.
    pub describe: Describe,
    /// Turn SIGTERM/SIGHUP/SIGINT into an orderly termination (kill ladder,
    /// report, exit code 0). Default true; set false if your program handles
    /// them and calls [`LeaseHandle::signalled`] itself.
    pub handle_signals: bool,
}

impl Options {
    /// Leased mode on `socket` with `token` and the default timing.
    pub fn leased(socket: impl Into<PathBuf>, token: shellper_protocol::token::Token) -> Self {
        Options {
            socket: socket.into(),
            mode: Mode::Leased(token),
            config: LeaseConfig::default(),
            handshake_timeout: Duration::from_secs(5),
            write_stall: server::DEFAULT_WRITE_STALL,
            describe: Describe::default(),
            handle_signals: true,
        }
    }
}

/// How the lease ended. By the time it is returned the tree is gone (or
/// `report.survivors` says what is left), the holder got TERMINATED and the
/// socket file is removed.
#[derive(Debug)]
pub struct Ended {
    pub reason: TerminateReason,
    pub report: KillReport,
    /// The exit code for the process (SPEC.md §9).
    pub exit_code: i32,
}

/// The worker as STATUS shows it.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub pid: Option<u32>,
    pub state: ChildState,
}

/// A process whose life is bounded by a lease. Dropping it does not stop the
/// lease: await [`ended`](Self::ended).
#[derive(Debug)]
pub struct Leased {
    lease: LeaseHandle,
    worker: Arc<Mutex<Worker>>,
    ended: oneshot::Receiver<Ended>,
}

/// How long the exit path waits for final frames (TERMINATED) to be
/// written: the writers' own flush bound plus a little.
const FLUSH_ON_CLOSE: Duration = Duration::from_millis(2200);

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn now_wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms)
}

impl Leased {
    /// Becomes a child subreaper, binds the socket and starts serving the
    /// lease on the current tokio runtime. The claim deadline starts now.
    pub async fn serve(opts: Options) -> Result<Leased, Error> {
        shellper_proctree::become_subreaper().map_err(|e| Error::Subreaper(e.to_string()))?;
        let listener = sock::bind(&opts.socket)?;
        let machine = LeaseMachine::new(
            opts.config,
            opts.mode,
            tokio::time::Instant::now().into_std(),
        );
        let (term_tx, term_rx) = oneshot::channel::<Termination>();
        let (lease, _enforcer) = LeaseEnforcer::spawn(machine, move |t: Termination| {
            let _ = term_tx.send(t);
        });
        let worker = Arc::new(Mutex::new(Worker {
            pid: None,
            state: ChildState::Running,
        }));
        let session = embedded::Embedded {
            worker: worker.clone(),
            describe: opts.describe,
            started_at_ms: now_wall_ms(),
        };
        let me = server::Identity::current(session.started_at_ms);
        let shared = Arc::new(server::Server::new(
            session,
            lease.clone(),
            me,
            server::Timeouts {
                handshake: opts.handshake_timeout,
                write_stall: opts.write_stall,
            },
        ));
        let stop = CancellationToken::new();
        tokio::spawn(shared.clone().accept_loop(listener, stop.clone()));
        if opts.handle_signals {
            spawn_signal_watch(lease.clone())?;
        }
        let (ended_tx, ended_rx) = oneshot::channel();
        let grace = opts.config.kill_grace;
        let socket = opts.socket;
        let lease2 = lease.clone();
        tokio::spawn(async move {
            let Ok(t) = term_rx.await else { return };
            let ended = finish(t, grace, &shared, &lease2, &stop, &socket).await;
            let _ = ended_tx.send(ended);
        });
        Ok(Leased {
            lease,
            worker,
            ended: ended_rx,
        })
    }

    /// The lease enforcer, for programs that feed it events themselves.
    pub fn handle(&self) -> &LeaseHandle {
        &self.lease
    }

    /// Records the worker's pid (shown as `child_pid` in STATUS).
    pub fn set_worker(&self, pid: u32) {
        self.reporter().started(pid);
    }

    /// The worker ended: see [`WorkerReport::exited`].
    pub fn worker_exited(&self, code: Option<i32>, signal: Option<i32>) {
        self.reporter().exited(code, signal);
    }

    /// A cloneable handle for the task that watches the worker (it can
    /// report an exit while another task awaits [`ended`](Self::ended)).
    pub fn reporter(&self) -> WorkerReport {
        WorkerReport {
            lease: self.lease.clone(),
            worker: self.worker.clone(),
        }
    }

    /// Resolves once the lease has ended and the tree is gone.
    pub async fn ended(self) -> Ended {
        match self.ended.await {
            Ok(e) => e,
            // The finisher task is gone without a report: the runtime is
            // shutting down. Nothing was killed by us; say so loudly.
            Err(_) => Ended {
                reason: TerminateReason::Signal,
                report: KillReport {
                    signalled: 0,
                    sigkilled: 0,
                    survivors: Vec::new(),
                    elapsed: Duration::ZERO,
                    sweeps: 0,
                    errors: vec!["the lease task ended without a report".into()],
                },
                exit_code: exit::SURVIVORS,
            },
        }
    }
}

/// Tells the lease about the worker (see [`Leased::reporter`]).
#[derive(Debug, Clone)]
pub struct WorkerReport {
    lease: LeaseHandle,
    worker: Arc<Mutex<Worker>>,
}

impl WorkerReport {
    /// A worker started with this pid.
    pub fn started(&self, pid: u32) {
        if let Ok(mut w) = self.worker.lock() {
            w.pid = Some(pid);
            w.state = ChildState::Running;
        }
        self.lease.child_started();
    }

    /// The worker ended (exit code, or the signal that killed it). Shown in
    /// STATUS; the lease goes on (a husk, SPEC.md §8.2) until the Tower
    /// terminates it or its deadline passes.
    pub fn exited(&self, code: Option<i32>, signal: Option<i32>) {
        if let Ok(mut w) = self.worker.lock() {
            w.state = ChildState::Exited { code, signal };
        }
        self.lease.child_exited();
    }
}

fn spawn_signal_watch(lease: LeaseHandle) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut streams = Vec::new();
    for kind in [
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::interrupt(),
    ] {
        streams.push(signal(kind).map_err(|e| Error::io("installing signal handlers", e))?);
    }
    tokio::spawn(async move {
        let [mut a, mut b, mut c] = match <[_; 3]>::try_from(streams) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = a.recv() => {}
            _ = b.recv() => {}
            _ = c.recv() => {}
        }
        lease.signalled();
    });
    Ok(())
}

/// The kill ladder over this process's descendants (SPEC.md §9).
fn run_ladder(grace: Duration) -> KillReport {
    let me = std::process::id() as i32;
    let mut plan = KillPlan::new(me, None, grace);
    plan.tree.root_start_ticks = shellper_proctree::read_stat(me).map(|p| p.start_ticks);
    // A live child subreaper: every member of the tree is a descendant.
    plan.scan = Scan::Descendants;
    kill_tree(&LinuxTable, &RealClock, &plan, &mut || {})
}

async fn finish(
    t: Termination,
    grace: Duration,
    shared: &Arc<server::Server<embedded::Embedded>>,
    lease: &LeaseHandle,
    stop: &CancellationToken,
    socket: &Path,
) -> Ended {
    tracing::info!(reason = ?t.reason, "lease ended: running the kill ladder");
    let report = match offthread::run("kill-ladder", move || run_ladder(grace)).await {
        Ok(r) => r,
        Err(e) => KillReport {
            signalled: 0,
            sigkilled: 0,
            survivors: Vec::new(),
            elapsed: Duration::ZERO,
            sweeps: 0,
            errors: vec![format!("kill ladder task failed: {e}")],
        },
    };
    if let Some(holder) = t.holder {
        shared.send(
            holder,
            Frame::Terminated(shellper_protocol::msg::Terminated {
                reason: t.reason,
                signalled: report.signalled,
                survivors: report.survivors.len() as u32,
                elapsed_ms: ms(report.elapsed),
                sweeps: report.sweeps,
            }),
        );
    }
    lease.exited();
    stop.cancel();
    shared.close_all(FLUSH_ON_CLOSE).await;
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::debug!(error = %e, "removing the socket file");
    }
    let exit_code = exit::for_termination(t.reason, report.survivors.len() as u32);
    Ended {
        reason: t.reason,
        report,
        exit_code,
    }
}
