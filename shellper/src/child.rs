//! The PTY child: spawning, the single reaper, and the IO tasks.
//!
//! **One reaper.** The shellper is a child subreaper, so every orphan of its
//! tree is reparented to it and must be reaped by it; a `waitpid(-1)` loop
//! would steal the PTY child's status from any per-child waiter (tokio's
//! `Child::wait`). So the child is spawned with a *std* `Child` handle that is
//! dropped at once (std never reaps on drop), and [`shellper_proctree::reap_zombies`] (run by the
//! child actor on every SIGCHLD and once a second as a safety net) collects
//! every exit and routes the PTY child's status. Until it is reaped the
//! child's pid cannot be recycled, which is what makes `kill(pid)` for SIGNAL
//! safe without a pidfd.
//!
//! **EOF.** Reading the PTY master after the slave side is closed returns
//! EIO on Linux: that is end of output. EXIT is reported only after the
//! reader hit EOF (all output drained) or, if a background process keeps the
//! slave open, [`EXIT_DRAIN`] after the child's status was reaped.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shellper_proctree::ChildExit;
use shellper_proctree::cgroup::AttachFd;
use shellper_protocol::msg::{ChildState, ExitMsg, Spawn};
use std::future::Future;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::lease::LeaseHandle;

/// How long EXIT waits for the PTY output to drain after the child's
/// status was collected.
pub const EXIT_DRAIN: Duration = Duration::from_millis(500);
/// Input bytes one client may have queued for the PTY. When they are
/// queued the shellper stops reading from that client (backpressure) until
/// the child takes input.
pub const INPUT_QUEUE_PER_CLIENT: usize = 256 * 1024;
/// Input bytes queued for the PTY from every client together.
pub const INPUT_QUEUE_TOTAL: usize = 1024 * 1024;
/// Input reaches the PTY writer in pieces of at most this size, each a copy,
/// so a queued piece never pins the (up to 16 MiB) frame it came from.
const INPUT_PIECE: usize = 16 * 1024;
/// PTY read size: the reader's one buffer (the hub copies each read).
const READ_CHUNK: usize = 64 * 1024;

/// What to run on the PTY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnSpec {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
    /// Whole environment; `None` inherits the shellper's.
    pub env: Option<BTreeMap<String, String>>,
    pub cols: u16,
    pub rows: u16,
}

impl SpawnSpec {
    /// From a SPAWN frame, at the current terminal size.
    pub fn from_spawn(s: Spawn, cols: u16, rows: u16) -> Self {
        SpawnSpec {
            command: s.command,
            args: s.args,
            cwd: s.cwd,
            env: Some(s.env),
            cols,
            rows,
        }
    }
}

/// A freshly spawned child and the PTY master it talks through.
#[derive(Debug)]
pub struct PtyChild {
    pub pid: i32,
    reader: pty_process::OwnedReadPty,
    writer: pty_process::OwnedWritePty,
    /// A duplicate of the master for TIOCSWINSZ, so resizing never waits
    /// behind a blocked input write.
    resize_fd: OwnedFd,
}

/// Spawns `spec` in a new session with the PTY as its controlling terminal.
/// Must be called inside a tokio runtime (the master is registered with it).
/// (The tests' shorthand: the shellper always passes its cgroup.)
#[cfg(test)]
pub fn spawn_pty(spec: &SpawnSpec) -> Result<PtyChild> {
    spawn_pty_in(spec, None)
}

/// Spawns `spec` (see `spawn_pty`), the child first moving itself into the session's cgroup
/// (between fork and exec: every process the command starts is born
/// inside). A failed move fails the spawn: the session would not be
/// contained.
pub fn spawn_pty_in(spec: &SpawnSpec, cgroup: Option<&Arc<AttachFd>>) -> Result<PtyChild> {
    let fail = |detail: String| Error::Spawn {
        command: spec.command.clone(),
        detail,
    };
    let exec_fail = |detail: String| Error::Exec {
        command: spec.command.clone(),
        detail,
    };
    // exec reports a missing cwd as a bare ENOENT, indistinguishable from a
    // missing command: check the directory first so the error names it.
    match std::fs::metadata(&spec.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(exec_fail(format!(
                "working directory {:?} is not a directory",
                spec.cwd
            )));
        }
        Err(e) => return Err(exec_fail(format!("working directory {:?}: {e}", spec.cwd))),
    }
    let (pty, pts) = pty_process::blocking::open().map_err(|e| fail(format!("open PTY: {e}")))?;
    pty.resize(pty_process::Size::new(spec.rows, spec.cols))
        .map_err(|e| fail(format!("set size: {e}")))?;
    let mut cmd = pty_process::blocking::Command::new(&spec.command)
        .args(&spec.args)
        .current_dir(&spec.cwd);
    if let Some(env) = &spec.env {
        cmd = cmd.env_clear().envs(env);
    }
    let attach = cgroup.cloned();
    // SAFETY: the closure only calls write (the cgroup move), sigaction and
    // sigprocmask, all async-signal-safe, and touches no memory shared with
    // the parent (the descriptor is only read).
    cmd = unsafe {
        cmd.pre_exec(move || {
            if let Some(a) = &attach {
                a.attach_current()?;
            }
            reset_signals()
        })
    };
    // `spawn` consumes the slave: the parent keeps no slave fd, so the
    // master reads EIO once the child's session closes its side.
    // An error here is the exec's (std reports it through its CLOEXEC
    // pipe): the command is missing or not executable.
    let child = cmd.spawn(pts).map_err(|e| exec_fail(e.to_string()))?;
    let pid = i32::try_from(child.id()).map_err(|_| fail("pid out of range".into()))?;
    // Dropping a std Child neither kills nor reaps: the reaper owns it.
    drop(child);
    let master: OwnedFd = pty.into();
    let resize_fd = master
        .try_clone()
        .map_err(|e| fail(format!("dup master: {e}")))?;
    let flags = rustix::fs::fcntl_getfl(&master).map_err(|e| fail(format!("fcntl: {e}")))?;
    rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| fail(format!("fcntl: {e}")))?;
    // SAFETY: `master` is the open, valid, non-blocking master side of a PTY
    // we just allocated, and ownership moves into the async wrapper.
    let apty = unsafe { pty_process::Pty::from_fd(master) }
        .map_err(|e| fail(format!("register master: {e}")))?;
    let (reader, writer) = apty.into_split();
    Ok(PtyChild {
        pid,
        reader,
        writer,
        resize_fd,
    })
}

/// Highest signal number on Linux (`_NSIG - 1`).
const MAX_SIGNAL: libc::c_int = 64;

/// Runs in the forked child before exec: every signal disposition back to
/// the default and an empty signal mask. exec keeps ignored signals and the
/// mask, and a shellper started under `nohup` (SIGHUP ignored) or by a
/// runtime that blocks signals would pass them on: the kill ladder's
/// SIGHUP, SPAWN's SIGHUP and the PTY hang-up would then do nothing.
///
/// The raw `rt_sigaction` system call, not libc's wrapper: glibc refuses to
/// touch the two real-time signals it reserves (32, 33), and a parent may
/// have left those ignored too. Only async-signal-safe system calls;
/// errors for SIGKILL and SIGSTOP (which cannot be changed) are ignored.
fn reset_signals() -> std::io::Result<()> {
    // The kernel's `struct sigaction` with every field zero is SIG_DFL, no
    // flags, no restorer, empty mask (laid out as four machine words on
    // every Linux architecture we build for; the mask is one word).
    let dfl = [0usize; 4];
    for sig in 1..=MAX_SIGNAL {
        // SAFETY: rt_sigaction with a valid pointer to a zeroed kernel
        // sigaction, no old-action pointer and the kernel's sigset size.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            );
        }
    }
    // SAFETY: sigemptyset/sigprocmask on a local set; async-signal-safe.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// codev's EXIT for a wait status, byte for byte what node-pty's numbers
/// become in codev's shellper: a normal exit is `{"code":C,"signal":"0"}`, a
/// signal death `{"code":0,"signal":"N"}`.
pub fn exit_report(status: ChildExit) -> (ExitMsg, ChildState) {
    match status {
        ChildExit::Signaled(sig) => (
            ExitMsg::signaled(sig),
            ChildState::Exited {
                code: None,
                signal: Some(sig),
            },
        ),
        ChildExit::Exited(code) => (
            ExitMsg::exited(code),
            ChildState::Exited {
                code: Some(code),
                signal: None,
            },
        ),
    }
}

/// Requests to the child actor.
#[derive(Debug)]
pub enum ChildCmd {
    Resize { cols: u16, rows: u16 },
    Signal(i32),
    Spawn(Spawn, oneshot::Sender<std::result::Result<u32, String>>),
}

/// A piece of input on its way to the PTY, holding its share of the
/// client's and the total budget until it is written (or dropped with the
/// queue when the child is replaced).
#[derive(Debug)]
struct Input {
    bytes: Bytes,
    _client: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

type InputTx = mpsc::UnboundedSender<Input>;

/// Access to the PTY child from connection tasks.
#[derive(Debug, Clone)]
pub struct ChildHandle {
    tx: mpsc::UnboundedSender<ChildCmd>,
    input: Arc<Mutex<Option<InputTx>>>,
    /// Room left in the input queue, in bytes, over every client.
    total: Arc<Semaphore>,
}

/// A client's input budget: [`INPUT_QUEUE_PER_CLIENT`] bytes.
pub fn client_input_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(INPUT_QUEUE_PER_CLIENT))
}

impl ChildHandle {
    /// Queues input for the current child, piece by piece; each piece waits
    /// for room in the client's `budget` and in the total, so the caller
    /// (the client's reader) stops reading while the queue is full: the
    /// queue is bounded in bytes, never in frames. Returns once everything
    /// is queued; the rest is dropped when no child runs or when `gone`
    /// resolves (the client went away: it must not pin memory).
    pub async fn input(
        &self,
        data: Bytes,
        budget: &Arc<Semaphore>,
        gone: impl Future<Output = ()>,
    ) {
        tokio::pin!(gone);
        for piece in data.chunks(INPUT_PIECE) {
            // Invariant: a piece is at most INPUT_PIECE bytes, far below u32.
            let n = piece.len() as u32;
            let permits = async {
                let c = budget.clone().acquire_many_owned(n).await.ok()?;
                let t = self.total.clone().acquire_many_owned(n).await.ok()?;
                Some((c, t))
            };
            let (c, t) = tokio::select! {
                p = permits => match p {
                    Some(p) => p,
                    None => return,
                },
                () = &mut gone => return,
            };
            let tx = self
                .input
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let Some(tx) = tx else { return };
            let input = Input {
                bytes: Bytes::copy_from_slice(piece),
                _client: c,
                _total: t,
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        let _ = self.tx.send(ChildCmd::Resize { cols, rows });
    }

    /// Delivers an (already allow-listed) signal to the child.
    pub fn signal(&self, sig: i32) {
        let _ = self.tx.send(ChildCmd::Signal(sig));
    }

    /// Replaces the child; returns the new child's pid.
    pub async fn spawn(&self, s: Spawn) -> std::result::Result<u32, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(ChildCmd::Spawn(s, tx))
            .map_err(|_| "shellper is shutting down".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("shellper is shutting down".into()))
    }
}

struct Current {
    generation: u64,
    pid: i32,
    resize_fd: OwnedFd,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    status: Option<(ExitMsg, ChildState)>,
    reader_done: bool,
    reported: bool,
    drain_deadline: Option<tokio::time::Instant>,
}

/// Owns the PTY child across SPAWNs, reaps, and reports EXIT.
pub struct ChildActor {
    hub: Arc<Hub>,
    lease: LeaseHandle,
    rx: mpsc::UnboundedReceiver<ChildCmd>,
    input: Arc<Mutex<Option<InputTx>>>,
    done_tx: mpsc::UnboundedSender<u64>,
    done_rx: mpsc::UnboundedReceiver<u64>,
    current: Option<Current>,
    next_generation: u64,
    /// The session's cgroup, for children started by SPAWN.
    cgroup: Option<Arc<AttachFd>>,
}

impl std::fmt::Debug for ChildActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildActor")
            .field("pid", &self.current.as_ref().map(|c| c.pid))
            .finish_non_exhaustive()
    }
}

impl ChildActor {
    /// An actor for the already spawned first child (generation 0, already
    /// announced to the hub by the caller), or for none when the first
    /// command could not start (the caller reported that to the hub).
    pub fn new(hub: Arc<Hub>, lease: LeaseHandle, first: Option<PtyChild>) -> (Self, ChildHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let input = Arc::new(Mutex::new(None));
        let mut actor = ChildActor {
            hub,
            lease,
            rx,
            input: input.clone(),
            done_tx,
            done_rx,
            current: None,
            next_generation: 0,
            cgroup: None,
        };
        match first {
            Some(child) => {
                actor.adopt(child);
            }
            None => actor.next_generation = 1,
        }
        let total = Arc::new(Semaphore::new(INPUT_QUEUE_TOTAL));
        (actor, ChildHandle { tx, input, total })
    }

    /// Children started by SPAWN go into this cgroup (the first child was
    /// put there by the caller, with [`spawn_pty_in`]).
    pub fn set_cgroup(&mut self, cgroup: Option<Arc<AttachFd>>) {
        self.cgroup = cgroup;
    }

    fn adopt(&mut self, child: PtyChild) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        let PtyChild {
            pid,
            mut reader,
            mut writer,
            resize_fd,
        } = child;
        let hub = self.hub.clone();
        let done = self.done_tx.clone();
        let reader = tokio::spawn(async move {
            // One buffer for the reader's life: the hub copies what it
            // keeps, so a small read never pins a large allocation.
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => hub.output(generation, &buf[..n]),
                    // EIO: the slave side is closed (Linux PTY EOF).
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "PTY read failed");
                        break;
                    }
                }
            }
            let _ = done.send(generation);
        });
        // Unbounded channel, bounded in bytes by the budgets the pieces carry.
        let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Input>();
        let writer = tokio::spawn(async move {
            while let Some(input) = in_rx.recv().await {
                if writer.write_all(&input.bytes).await.is_err() {
                    break;
                }
                shellper_leased::mem::released(input.bytes.len());
            }
        });
        *self
            .input
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(in_tx);
        self.current = Some(Current {
            generation,
            pid,
            resize_fd,
            reader,
            writer,
            status: None,
            reader_done: false,
            reported: false,
            drain_deadline: None,
        });
        generation
    }

    /// Runs until every [`ChildHandle`] is dropped.
    pub async fn run(mut self) {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGCHLD; reaping by polling");
                None
            }
        };
        let mut poll = tokio::time::interval(Duration::from_millis(if sigchld.is_some() {
            1000
        } else {
            50
        }));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Reap anything that exited before the signal stream existed.
        self.reap();
        loop {
            let drain_at = self
                .current
                .as_ref()
                .and_then(|c| if c.reported { None } else { c.drain_deadline });
            let drain = async {
                match drain_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                _ = async {
                    match sigchld.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.reap(),
                _ = poll.tick() => {
                    self.reap();
                    // The same once-a-second tick gives memory freed after
                    // a burst back to the system (only after one).
                    shellper_leased::mem::trim_if_due();
                }
                Some(generation) = self.done_rx.recv() => {
                    if let Some(c) = self.current.as_mut().filter(|c| c.generation == generation) {
                        c.reader_done = true;
                    }
                    self.maybe_report(false);
                }
                () = drain => self.maybe_report(true),
            }
        }
    }

    fn reap(&mut self) {
        for (pid, status) in shellper_proctree::reap_zombies() {
            match self.current.as_mut() {
                Some(c) if c.pid == pid && c.status.is_none() => {
                    let report = exit_report(status);
                    // codev's wording, which its operators grep for.
                    tracing::info!(
                        pid,
                        "PTY exited: code={}, signal={}",
                        report.0.code.unwrap_or(-1),
                        report.0.signal.as_deref().unwrap_or("null")
                    );
                    c.status = Some(report);
                    c.drain_deadline = Some(tokio::time::Instant::now() + EXIT_DRAIN);
                }
                _ => tracing::debug!(pid, ?status, "reaped a descendant"),
            }
        }
        self.maybe_report(false);
    }

    fn maybe_report(&mut self, deadline_passed: bool) {
        let Some(c) = self.current.as_mut() else {
            return;
        };
        if c.reported || c.status.is_none() || !(c.reader_done || deadline_passed) {
            return;
        }
        c.reported = true;
        if let Some((exit, state)) = c.status.clone() {
            self.hub.child_exited(c.generation, exit, state);
            self.lease.child_exited();
        }
        // The child is gone: no more input for it.
        *self
            .input
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn command(&mut self, cmd: ChildCmd) {
        match cmd {
            ChildCmd::Resize { cols, rows } => {
                self.hub.set_size(cols, rows);
                if let Some(c) = self.current.as_ref().filter(|c| c.status.is_none()) {
                    let ws = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    if let Err(e) = rustix::termios::tcsetwinsize(&c.resize_fd, ws) {
                        tracing::warn!(error = %e, "resize failed");
                    }
                }
            }
            ChildCmd::Signal(sig) => match self.current.as_ref().filter(|c| c.status.is_none()) {
                Some(c) => signal_pid(c.pid, sig),
                None => tracing::debug!(sig, "SIGNAL ignored: no running child"),
            },
            ChildCmd::Spawn(s, reply) => {
                let _ = reply.send(self.respawn(s));
            }
        }
    }

    fn respawn(&mut self, s: Spawn) -> std::result::Result<u32, String> {
        let (cols, rows) = self.hub.size();
        let spec = SpawnSpec::from_spawn(s, cols, rows);
        if let Some(old) = self.current.take() {
            if old.status.is_none() {
                // codev sends SIGTERM; interactive shells ignore it, so also
                // hang up (closing the old master below does the same).
                signal_pid(old.pid, libc::SIGTERM);
                signal_pid(old.pid, libc::SIGHUP);
                signal_pid(old.pid, libc::SIGCONT);
            }
            old.reader.abort();
            old.writer.abort();
        }
        *self
            .input
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let child = match spawn_pty_in(&spec, self.cgroup.as_ref()) {
            Ok(c) => c,
            Err(e @ Error::Exec { .. }) => {
                // As codev: the new child "ran" and exited with code 1, so
                // the Tower's restart and error paths see an EXIT.
                tracing::error!(error = %e, "SPAWN: the command cannot start");
                let generation = self.next_generation;
                self.next_generation += 1;
                self.hub.start_failed(generation, &spec, &e.to_string());
                self.lease.child_exited();
                return Err(e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        };
        let pid = child.pid;
        let generation = self.adopt(child);
        self.hub.child_started(generation, pid as u32, &spec);
        self.lease.child_started();
        tracing::info!(pid, command = %spec.command, "SPAWN: new PTY child");
        Ok(pid as u32)
    }
}

/// Signals the PTY child by pid. Safe from pid reuse: the shellper is the
/// only reaper and the actor only signals a child whose status it has not
/// collected yet, so the pid still names that (possibly zombie) process.
fn signal_pid(pid: i32, sig: i32) {
    if let Err(e) = shellper_proctree::signal_unreaped_child(pid, sig) {
        tracing::debug!(pid, sig, error = %e, "signal to child failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_working_directory_is_named_in_the_error() {
        let spec = SpawnSpec {
            command: "/bin/sh".into(),
            args: vec![],
            cwd: "/nonexistent/shellper-test-dir".into(),
            env: None,
            cols: 80,
            rows: 24,
        };
        let err = spawn_pty(&spec)
            .expect_err("cwd does not exist")
            .to_string();
        assert!(
            err.contains("working directory") && err.contains("/nonexistent/shellper-test-dir"),
            "{err}"
        );
    }

    #[test]
    fn exit_reports_are_codev_style() {
        let (m, s) = exit_report(ChildExit::Signaled(9));
        assert_eq!(m.code, Some(0));
        assert_eq!(m.signal.as_deref(), Some("9"));
        assert_eq!(
            s,
            ChildState::Exited {
                code: None,
                signal: Some(9)
            }
        );
        let (m, _) = exit_report(ChildExit::Exited(7));
        assert_eq!(
            serde_json::to_string(&m).expect("json"),
            r#"{"code":7,"signal":"0"}"#
        );
        assert_eq!(m.signal_number(), None);
        let (m, _) = exit_report(ChildExit::Signaled(15));
        assert_eq!(
            serde_json::to_string(&m).expect("json"),
            r#"{"code":0,"signal":"15"}"#
        );
        assert_eq!(m.signal_number(), Some(15));
    }
}
