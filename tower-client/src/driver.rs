//! One task per held shellper (the "driver") and the handle that controls it.
//!
//! Modelled on watchexec's `Job`: the [`ShellperHandle`] is cheap to clone
//! and only sends commands down a control queue; the driver owns the lease
//! connection (read and write halves), the process watch and every piece of
//! per-shellper state, so there are no locks on the hot path and no two
//! writers on a socket. Renewal *timing* is not here: the Tower's single
//! scheduler task sends `Ctl::Renew` when a lease is due, and the driver
//! reports each RENEWED back to it.
//!
//! The lease connection carries no DATA or REPLAY (HELLO `replay:false,
//! data:false`); terminal I/O uses separate connections ([`Terminal`]), so a
//! renewal never waits behind terminal bytes.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use shellper_proctree::{LinuxTable, ProcessTable, Sig};
use shellper_protocol::msg::{
    ALLOWED_SIGNALS, ErrorCode, Release, ReleaseMode, Renew, Resize, SignalMsg, Status,
    StatusRequest, TerminateReason, Terminated,
};
use shellper_protocol::{Frame, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::conn::{self, HelloOpts, Reader, Writer};
use crate::error::{Error, Result};
use crate::sched::{Health, Key, RenewSink, SchedMsg};
use crate::terminal::Terminal;
use crate::tower::Ctx;

/// What the Tower reports about the shellpers it holds, one value per
/// transition. Serialized (for `minitower`) as one JSON object with an
/// `"event"` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The lease is held: granted (spawn, adoption, re-acquire after a lost
    /// connection: `recovered: false`) or acknowledged again after being
    /// unresponsive or lapsed (`recovered: true`).
    Held {
        id: String,
        epoch: u64,
        recovered: bool,
    },
    /// A renewal has gone unanswered for `waited_ms` (the shellper may be
    /// stopped or wedged; nothing is concluded from this).
    Unresponsive { id: String, waited_ms: u64 },
    /// By our clock the lease has expired at the shellper: its reattach
    /// window is running. Renewals continue and revive it if it answers.
    Lapsed { id: String },
    /// Another holder acquired the lease (`new_epoch` when the shellper told
    /// us). We stop holding and never re-acquire automatically.
    Revoked {
        id: String,
        old_epoch: u64,
        new_epoch: Option<u64>,
    },
    /// The PTY child (`what: "child"`; the husk stays, a session like any
    /// other) or the
    /// shellper process itself (`what: "shellper"`) ended.
    Exited {
        id: String,
        what: ExitWhat,
        code: Option<i32>,
        signal: Option<i32>,
        reason: Option<String>,
    },
    /// We lost the shellper without asking: it terminated on its own
    /// (window or claim expired, signalled) or its connection
    /// could not be re-established. Followed by `exited` once its process is
    /// gone.
    Lost { id: String, reason: String },
    /// Terminated on our request, death of the whole tree confirmed.
    Terminated {
        id: String,
        signalled: u32,
        survivors: u32,
        elapsed_ms: u64,
    },
    /// Detached on our request; the shellper terminates in `kill_in_ms`
    /// unless a Tower re-acquires it.
    Detached { id: String, kill_in_ms: u64 },
}

impl Event {
    /// The shellper id the event is about.
    pub fn id(&self) -> &str {
        match self {
            Event::Held { id, .. }
            | Event::Unresponsive { id, .. }
            | Event::Lapsed { id }
            | Event::Revoked { id, .. }
            | Event::Exited { id, .. }
            | Event::Lost { id, .. }
            | Event::Terminated { id, .. }
            | Event::Detached { id, .. } => id,
        }
    }

    /// One JSON line (no newline).
    pub fn to_json(&self) -> String {
        // Invariant: events are strings, integers and options; they always
        // serialize.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// Which process an [`Event::Exited`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitWhat {
    Child,
    Shellper,
}

/// How a process ended, as far as we can know: exact when the shellper is
/// our child (spawned by this Tower), unknown (both `None`) when it was
/// adopted and watched through a pidfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct ProcExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Result of a confirmed terminate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminateReport {
    /// The shellper's own report of its kill ladder.
    pub report: Option<Terminated>,
    /// How the shellper process ended.
    pub exit: ProcExit,
}

/// Identity and launch details of a held shellper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellperInfo {
    pub id: String,
    /// pid of the shellper process.
    pub pid: u32,
    /// Its start time (clock ticks since boot): with `pid`, recycle-proof.
    pub start_ticks: u64,
    /// pid of the PTY child when the lease was acquired.
    pub child_pid: Option<u32>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
}

/// Commands to a driver.
#[derive(Debug)]
pub(crate) enum Ctl {
    Renew {
        seq: u64,
    },
    Health(Health),
    Status(oneshot::Sender<Result<Status>>),
    Signal(i32, oneshot::Sender<Result<()>>),
    Resize(Resize, oneshot::Sender<Result<()>>),
    Detach {
        hold: Option<Duration>,
        reply: oneshot::Sender<Result<Duration>>,
    },
    Terminate {
        timeout: Duration,
        reply: oneshot::Sender<Result<TerminateReport>>,
    },
}

pub(crate) type CtlTx = mpsc::UnboundedSender<Ctl>;

/// The scheduler's transport: queue a command to the lease's driver.
#[derive(Debug, Default)]
pub(crate) struct CtlSink;

impl RenewSink for CtlSink {
    type Target = CtlTx;
    fn renew(&mut self, t: &CtlTx, seq: u64) -> bool {
        t.send(Ctl::Renew { seq }).is_ok()
    }
    fn health(&mut self, t: &CtlTx, h: Health) {
        let _ = t.send(Ctl::Health(h));
    }
}

const ST_HELD: u8 = 0;
const ST_UNRESPONSIVE: u8 = 1;
const ST_LAPSED: u8 = 2;
const ST_ENDED: u8 = 3;

/// Health of a held lease as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Held,
    Unresponsive,
    Lapsed,
    /// The driver stopped (terminated, detached, revoked, lost, exited).
    Ended,
}

#[derive(Debug)]
pub(crate) struct HandleInner {
    pub info: ShellperInfo,
    pub ctl: CtlTx,
    pub epoch: AtomicU64,
    pub state: AtomicU8,
    pub connect_timeout: Duration,
}

/// Controls one held shellper. Cheap to clone; every method sends a command
/// to the shellper's driver task and waits for its answer.
#[derive(Debug, Clone)]
pub struct ShellperHandle {
    pub(crate) inner: Arc<HandleInner>,
}

impl ShellperHandle {
    /// The shellper's id (`sh-xxxxxxxx`).
    pub fn id(&self) -> &str {
        &self.inner.info.id
    }

    /// Identity and launch details.
    pub fn info(&self) -> &ShellperInfo {
        &self.inner.info
    }

    /// The current lease epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    /// Health of the lease as last observed.
    pub fn state(&self) -> LeaseState {
        match self.inner.state.load(Ordering::Relaxed) {
            ST_HELD => LeaseState::Held,
            ST_UNRESPONSIVE => LeaseState::Unresponsive,
            ST_LAPSED => LeaseState::Lapsed,
            _ => LeaseState::Ended,
        }
    }

    fn not_held(&self) -> Error {
        Error::NotHeld {
            id: self.id().to_string(),
            why: "its driver has stopped".into(),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Ctl,
        timeout: Option<Duration>,
        step: &'static str,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner.ctl.send(make(tx)).map_err(|_| self.not_held())?;
        let res = match timeout {
            Some(t) => tokio::time::timeout(t, rx)
                .await
                .map_err(|_| Error::Timeout {
                    socket: self.inner.info.socket.clone(),
                    step,
                    timeout: t,
                })?,
            None => rx.await,
        };
        res.map_err(|_| self.not_held())?
    }

    /// The shellper's STATUS, over the lease connection (bounded by the
    /// Tower's connect timeout).
    pub async fn status(&self) -> Result<Status> {
        self.ask(Ctl::Status, Some(self.inner.connect_timeout), "STATUS")
            .await
    }

    /// Sends a signal to the PTY child. Only the v1 allow-list (HUP, INT,
    /// KILL, TERM, WINCH) is accepted; others fail here without a round trip.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        if !ALLOWED_SIGNALS.contains(&signal) {
            return Err(Error::Conn {
                socket: self.inner.info.socket.clone(),
                step: "SIGNAL",
                detail: format!("signal {signal} is not allowed (only {ALLOWED_SIGNALS:?})"),
            });
        }
        self.ask(|r| Ctl::Signal(signal, r), None, "SIGNAL").await
    }

    /// Resizes the PTY.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.ask(|r| Ctl::Resize(Resize { cols, rows }, r), None, "RESIZE")
            .await
    }

    /// Opens a terminal connection: REPLAY then live DATA in, input and
    /// resize out. Independent of the lease connection.
    pub async fn attach(&self) -> Result<Terminal> {
        Terminal::connect(&self.inner.info.socket, self.inner.connect_timeout).await
    }

    /// Stops holding without killing: the shellper keeps running for
    /// `max(hold, window)` (its window when `None`) waiting for a Tower to
    /// re-acquire it. Returns that duration as the shellper reported it.
    /// Use a long hold before a planned long stop of the Tower.
    pub async fn detach(&self, hold: Option<Duration>) -> Result<Duration> {
        self.ask(
            |reply| Ctl::Detach { hold, reply },
            Some(self.inner.connect_timeout),
            "RELEASE (detach)",
        )
        .await
    }

    /// Terminates the shellper and its whole process tree, and returns only
    /// once death is confirmed: the shellper's TERMINATED report (no
    /// survivors) and its process gone. Fails with [`Error::Terminate`]
    /// after `timeout` (give it more than the kill grace).
    pub async fn terminate(&self, timeout: Duration) -> Result<TerminateReport> {
        // The driver enforces the deadline (it knows what is missing); the
        // outer bound only guards against a wedged runtime.
        self.ask(
            |reply| Ctl::Terminate { timeout, reply },
            Some(timeout + Duration::from_secs(1)),
            "terminate",
        )
        .await
    }
}

/// Watches a shellper process until it is really gone.
#[derive(Debug)]
pub(crate) enum ProcWatch {
    /// Spawned by this Tower: we are its parent and must reap it; `wait`
    /// gives the exact status.
    Child(tokio::process::Child),
    /// Adopted: a pidfd becomes readable when the process exits.
    Pidfd(AsyncFd<OwnedFd>),
    Done,
}

impl ProcWatch {
    pub(crate) fn pidfd(fd: OwnedFd) -> std::io::Result<ProcWatch> {
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, which stays
        // open and refers to the same pidfd until the AsyncFd is dropped.
        let afd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(ProcWatch::Pidfd(afd))
    }

    /// Resolves when the process is gone. Cancel-safe.
    async fn wait(&mut self) -> ProcExit {
        match self {
            ProcWatch::Child(c) => match c.wait().await {
                Ok(st) => ProcExit {
                    code: st.code(),
                    signal: st.signal(),
                },
                Err(_) => ProcExit::default(),
            },
            ProcWatch::Pidfd(fd) => {
                let _ = fd.readable().await;
                ProcExit::default()
            }
            ProcWatch::Done => std::future::pending().await,
        }
    }

    /// Keeps reaping in the background once the driver stops caring (so a
    /// long-running Tower never accumulates zombies).
    fn reap_in_background(self) {
        if let ProcWatch::Child(mut c) = self {
            tokio::spawn(async move {
                let _ = c.wait().await;
            });
        }
    }
}

fn reason_name(r: TerminateReason) -> &'static str {
    match r {
        TerminateReason::ClaimExpired => "claim_expired",
        TerminateReason::WindowExpired => "window_expired",
        TerminateReason::Requested => "requested",
        TerminateReason::Signal => "signal",
        TerminateReason::ChildExitedUnheld => "child_exited_unheld",
    }
}

/// The reason a shellper gave through its exit code (CONVENTIONS.md).
fn exit_reason(e: &ProcExit) -> Option<String> {
    match (e.code, e.signal) {
        (Some(0), _) => Some("terminated (signal or request)".into()),
        (Some(2), _) => Some("configuration error".into()),
        (Some(3), _) => Some("startup failure".into()),
        (Some(10), _) => Some("claim_expired".into()),
        (Some(11), _) => Some("window_expired".into()),
        (Some(12), _) => Some("child_exited_unheld".into()),
        (Some(13), _) => Some("kill ladder left survivors".into()),
        (Some(c), _) => Some(format!("exit code {c}")),
        (None, Some(s)) => Some(format!("killed by signal {s}")),
        (None, None) => None,
    }
}

struct PendingTerminate {
    deadline: Instant,
    timeout: Duration,
    reply: Option<oneshot::Sender<Result<TerminateReport>>>,
}

/// The per-shellper task.
pub(crate) struct Driver {
    pub ctx: Arc<Ctx>,
    pub handle: Arc<HandleInner>,
    pub key: Key,
    pub token: Token,
    pub conn: Option<(Reader, Writer)>,
    pub epoch: u64,
    pub proc: ProcWatch,
    pub ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    pending_status: VecDeque<oneshot::Sender<Result<Status>>>,
    detach: Option<oneshot::Sender<Result<Duration>>>,
    terminate: Option<PendingTerminate>,
    /// TERMINATED received (requested or not).
    report: Option<Terminated>,
    /// A `lost` event was emitted already.
    lost: bool,
    finished: bool,
}

/// Reads the next frame of an optional connection; pending forever when
/// there is none (so `select!` simply never picks it).
async fn next_opt(conn: &mut Option<(Reader, Writer)>) -> Option<Result<Frame, String>> {
    match conn {
        Some((r, _)) => r.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        handle: Arc<HandleInner>,
        key: Key,
        token: Token,
        conn: (Reader, Writer),
        epoch: u64,
        proc: ProcWatch,
        ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    ) -> Self {
        Driver {
            ctx,
            handle,
            key,
            token,
            conn: Some(conn),
            epoch,
            proc,
            ctl_rx,
            pending_status: VecDeque::new(),
            detach: None,
            terminate: None,
            report: None,
            lost: false,
            finished: false,
        }
    }

    fn id(&self) -> String {
        self.handle.info.id.clone()
    }

    fn emit(&self, ev: Event) {
        self.ctx.events.send(ev);
    }

    fn set_state(&self, s: u8) {
        self.handle.state.store(s, Ordering::Relaxed);
    }

    /// Starts renewing a freshly granted lease.
    pub(crate) fn schedule(&self, interval: Duration, expires_in: Duration) {
        let _ = self.ctx.sched.send(SchedMsg::Insert {
            key: self.key,
            target: self.handle.ctl.clone(),
            interval,
            expires_in,
            at: Instant::now(),
        });
    }

    fn unschedule(&self) {
        let _ = self.ctx.sched.send(SchedMsg::Remove { key: self.key });
    }

    pub(crate) async fn run(mut self) {
        let cancel = self.ctx.cancel.clone();
        while !self.finished {
            let term_deadline = self.terminate.as_ref().map(|t| t.deadline);
            // Biased: a frame already on the socket (TERMINATED, EXIT) is
            // read before the process exit is acted on, so a shellper that
            // reported and exited between two polls is not judged to have
            // exited without a report.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // Abandoned (a simulated crash, or the runtime going
                    // away): drop everything as a dead process would.
                    return;
                }
                f = next_opt(&mut self.conn) => self.on_frame(f).await,
                Some(c) = self.ctl_rx.recv() => self.on_ctl(c).await,
                exit = self.proc.wait() => {
                    self.proc = ProcWatch::Done;
                    self.on_gone(exit).await;
                }
                _ = tokio::time::sleep_until(term_deadline.unwrap_or_else(Instant::now)),
                    if term_deadline.is_some() => self.on_terminate_timeout(),
            }
        }
        self.unschedule();
        self.set_state(ST_ENDED);
        for s in self.pending_status.drain(..) {
            let _ = s.send(Err(Error::NotHeld {
                id: self.handle.info.id.clone(),
                why: "the driver stopped".into(),
            }));
        }
        let proc = std::mem::replace(&mut self.proc, ProcWatch::Done);
        proc.reap_in_background();
        self.ctx.forget(&self.handle);
    }

    async fn write(&mut self, f: Frame) -> bool {
        let ok = match &mut self.conn {
            Some((_, w)) => w.send(f).await.is_ok(),
            None => false,
        };
        if !ok && self.conn.is_some() {
            self.on_closed("write failed").await;
        }
        ok
    }

    async fn on_ctl(&mut self, c: Ctl) {
        match c {
            Ctl::Renew { seq } => {
                if self.terminate.is_none() && self.detach.is_none() {
                    let epoch = self.epoch;
                    self.write(Frame::Renew(Renew { epoch, seq })).await;
                }
            }
            Ctl::Health(h) => {
                let id = self.id();
                match h {
                    Health::Held => {
                        self.set_state(ST_HELD);
                        self.emit(Event::Held {
                            id,
                            epoch: self.epoch,
                            recovered: true,
                        });
                    }
                    Health::Unresponsive { waited } => {
                        self.set_state(ST_UNRESPONSIVE);
                        self.emit(Event::Unresponsive {
                            id,
                            waited_ms: waited.as_millis() as u64,
                        });
                    }
                    Health::Lapsed => {
                        self.set_state(ST_LAPSED);
                        self.emit(Event::Lapsed { id });
                    }
                }
            }
            Ctl::Status(reply) => {
                if self.conn.is_some() && self.write(Frame::StatusRequest(StatusRequest {})).await {
                    self.pending_status.push_back(reply);
                } else {
                    let _ = reply.send(Err(self.not_connected()));
                }
            }
            Ctl::Signal(sig, reply) => {
                let ok = self.write(Frame::Signal(SignalMsg { signal: sig })).await;
                let _ = reply.send(if ok {
                    Ok(())
                } else {
                    Err(self.not_connected())
                });
            }
            Ctl::Resize(r, reply) => {
                let ok = self.write(Frame::Resize(r)).await;
                let _ = reply.send(if ok {
                    Ok(())
                } else {
                    Err(self.not_connected())
                });
            }
            Ctl::Detach { hold, reply } => {
                if self.terminate.is_some() || self.detach.is_some() {
                    let _ = reply.send(Err(self.busy("a release is already in progress")));
                    return;
                }
                self.unschedule();
                let hold_ms = hold.map_or(0, |h| h.as_millis().min(u64::MAX as u128) as u64);
                let f = Frame::Release(Release {
                    epoch: self.epoch,
                    mode: ReleaseMode::Detach { hold_ms },
                });
                self.detach = Some(reply);
                if !self.write(f).await
                    && let Some(r) = self.detach.take()
                {
                    let _ = r.send(Err(self.not_connected()));
                }
            }
            Ctl::Terminate { timeout, reply } => {
                if self.terminate.is_some() {
                    let _ = reply.send(Err(self.busy("a terminate is already in progress")));
                    return;
                }
                self.unschedule();
                self.terminate = Some(PendingTerminate {
                    deadline: Instant::now() + timeout,
                    timeout,
                    reply: Some(reply),
                });
                let f = Frame::Release(Release {
                    epoch: self.epoch,
                    mode: ReleaseMode::Terminate,
                });
                if !self.write(f).await {
                    // No lease connection: SIGTERM makes the shellper run its
                    // kill ladder all the same; death is confirmed by its
                    // process disappearing (and exit code 0 when ours).
                    let info = &self.handle.info;
                    let _ = LinuxTable.signal(info.pid as i32, info.start_ticks, Sig::Term);
                }
            }
        }
    }

    fn not_connected(&self) -> Error {
        Error::NotHeld {
            id: self.id(),
            why: "the lease connection is closed".into(),
        }
    }

    fn busy(&self, why: &str) -> Error {
        Error::NotHeld {
            id: self.id(),
            why: why.into(),
        }
    }

    async fn on_frame(&mut self, f: Option<Result<Frame, String>>) {
        let f = match f {
            Some(Ok(f)) => f,
            Some(Err(e)) => return self.on_closed(&e).await,
            None => return self.on_closed("closed by the shellper").await,
        };
        match f {
            Frame::Renewed(r) if r.epoch == self.epoch => {
                let _ = self.ctx.sched.send(SchedMsg::Ack {
                    key: self.key,
                    seq: r.seq,
                    expires_in: Duration::from_millis(r.expires_in_ms.min(7 * 86_400_000)),
                    at: Instant::now(),
                });
            }
            Frame::Renewed(_) => {}
            Frame::Revoked(r) => self.on_revoked(r.old_epoch, Some(r.new_epoch)).await,
            Frame::Terminated(t) => {
                if self.terminate.is_none() && !self.lost {
                    self.lost = true;
                    self.emit(Event::Lost {
                        id: self.id(),
                        reason: reason_name(t.reason).into(),
                    });
                }
                self.unschedule();
                self.report = Some(t);
            }
            Frame::Exit(e) => self.emit(child_exit_event(self.id(), &e)),
            Frame::Status(s) => {
                if let Some(reply) = self.pending_status.pop_front() {
                    let _ = reply.send(Ok(*s));
                }
            }
            Frame::Released(r) => {
                if let Some(reply) = self.detach.take() {
                    // No longer held: gone from the Tower's map before the
                    // caller hears about it.
                    self.ctx.forget(&self.handle);
                    self.set_state(ST_ENDED);
                    self.emit(Event::Detached {
                        id: self.id(),
                        kill_in_ms: r.kill_in_ms,
                    });
                    let _ = reply.send(Ok(Duration::from_millis(r.kill_in_ms)));
                    // Detached shellpers stay in the registry: a restarted
                    // Tower adopts them back.
                    self.conn = None;
                    self.finished = true;
                }
            }
            Frame::Error(m) => self.on_error(m.code, m.message).await,
            Frame::Ping => {
                self.write(Frame::Pong).await;
            }
            _ => {}
        }
    }

    async fn on_error(&mut self, code: ErrorCode, message: String) {
        tracing::debug!(id = %self.handle.info.id, ?code, %message, "ERROR from shellper");
        match code {
            ErrorCode::StaleEpoch | ErrorCode::NotHolder => {
                if let Some(r) = self.detach.take() {
                    let _ = r.send(Err(Error::Refused {
                        socket: self.handle.info.socket.clone(),
                        step: "RELEASE (detach)",
                        code,
                        message: message.clone(),
                    }));
                }
                if let Some(t) = self.terminate.as_mut()
                    && let Some(r) = t.reply.take()
                {
                    let _ = r.send(Err(Error::Refused {
                        socket: self.handle.info.socket.clone(),
                        step: "RELEASE (terminate)",
                        code,
                        message: message.clone(),
                    }));
                }
                // Our epoch is no longer current: someone else holds it.
                self.on_revoked(self.epoch, None).await;
            }
            ErrorCode::Terminating => {
                // Terminating for a reason of its own (or ours, racing):
                // stop renewing, wait for TERMINATED and the process.
                self.unschedule();
                if let Some(r) = self.detach.take() {
                    let _ = r.send(Err(Error::Refused {
                        socket: self.handle.info.socket.clone(),
                        step: "RELEASE (detach)",
                        code,
                        message,
                    }));
                }
            }
            _ => {}
        }
    }

    async fn on_revoked(&mut self, old_epoch: u64, new_epoch: Option<u64>) {
        if self.finished {
            return;
        }
        self.ctx.forget(&self.handle);
        self.set_state(ST_ENDED);
        self.emit(Event::Revoked {
            id: self.id(),
            old_epoch,
            new_epoch,
        });
        self.conn = None;
        self.finished = true;
        // Never re-acquire after a revocation (SPEC §8.4): drop it from the
        // registry so a restart of this Tower does not take it back either.
        let id = self.id();
        self.ctx.remove_entry(&id).await;
    }

    /// The lease connection ended without a detach.
    async fn on_closed(&mut self, why: &str) {
        self.conn = None;
        self.unschedule();
        for s in self.pending_status.drain(..) {
            let _ = s.send(Err(Error::NotHeld {
                id: self.handle.info.id.clone(),
                why: format!("lease connection {why}"),
            }));
        }
        if let Some(r) = self.detach.take() {
            let _ = r.send(Err(Error::NotHeld {
                id: self.id(),
                why: format!("lease connection {why} before RELEASED"),
            }));
        }
        if self.terminate.is_some() || self.report.is_some() || self.lost {
            return; // waiting for the process to go
        }
        // Unexpected. The process may be exiting (the kernel closed the
        // socket first): give it a moment before concluding anything.
        if let Ok(exit) = tokio::time::timeout(Duration::from_millis(500), self.proc.wait()).await {
            self.proc = ProcWatch::Done;
            return self.on_gone(exit).await;
        }
        // Still alive: take the lease back over a new connection.
        let mut last_err = String::new();
        for delay_ms in [0u64, 100, 400] {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            match self.reacquire().await {
                Ok(()) => return,
                Err(e) => last_err = e.to_string(),
            }
        }
        self.lost = true;
        self.set_state(ST_LAPSED);
        self.emit(Event::Lost {
            id: self.id(),
            reason: format!("lease connection {why}; re-acquire failed: {last_err}"),
        });
        // Keep watching the process so its exit is still reported.
    }

    async fn reacquire(&mut self) -> Result<()> {
        let info = &self.handle.info;
        let timeout = self.handle.connect_timeout;
        let mut c = conn::connect(&info.socket, HelloOpts::LEASE, timeout, false).await?;
        let (grant, exit) =
            conn::acquire(&mut c, &self.token, self.ctx.holder.clone(), timeout).await?;
        self.epoch = grant.epoch;
        self.handle.epoch.store(grant.epoch, Ordering::Relaxed);
        self.conn = Some((c.reader, c.writer));
        self.schedule(
            renew_interval(&grant),
            Duration::from_millis(grant.expires_in_ms),
        );
        self.set_state(ST_HELD);
        self.emit(Event::Held {
            id: self.id(),
            epoch: grant.epoch,
            recovered: false,
        });
        if let Some(e) = exit {
            self.emit(child_exit_event(self.id(), &e));
        }
        Ok(())
    }

    fn on_terminate_timeout(&mut self) {
        if let Some(t) = self.terminate.as_mut() {
            t.deadline = Instant::now() + Duration::from_secs(86_400 * 365);
            if let Some(reply) = t.reply.take() {
                let info = &self.handle.info;
                let alive = LinuxTable.alive(info.pid as i32, info.start_ticks);
                let _ = reply.send(Err(Error::Terminate {
                    id: info.id.clone(),
                    detail: format!(
                        "no confirmed death within {:?}: TERMINATED report {}, shellper pid {} {}",
                        t.timeout,
                        if self.report.is_some() {
                            "received"
                        } else {
                            "not received"
                        },
                        info.pid,
                        if alive { "still alive" } else { "gone" },
                    ),
                }));
            }
        }
    }

    /// The shellper process is gone.
    async fn on_gone(&mut self, exit: ProcExit) {
        self.conn = None;
        self.finished = true;
        let id = self.id();
        let requested = self.terminate.is_some();
        self.ctx.forget(&self.handle);
        self.set_state(ST_ENDED);
        // Gone for good: forget it (before anyone is told, so a caller that
        // wakes on the reply sees the registry without it), and remove a
        // socket file a killed shellper could not remove itself.
        self.ctx.remove_entry(&id).await;
        let _ = std::fs::remove_file(&self.handle.info.socket);
        if let Some(t) = self.terminate.as_mut()
            && let Some(reply) = t.reply.take()
        {
            let res = match &self.report {
                Some(r) if r.survivors > 0 => Err(Error::Terminate {
                    id: id.clone(),
                    detail: format!("the kill ladder left {} survivors", r.survivors),
                }),
                Some(_) => Ok(()),
                None if matches!(exit.code, Some(c) if c != 0) || exit.signal.is_some() => {
                    Err(Error::Terminate {
                        id: id.clone(),
                        detail: format!(
                            "the shellper exited without a TERMINATED report ({})",
                            exit_reason(&exit).unwrap_or_default()
                        ),
                    })
                }
                None => Ok(()),
            };
            if res.is_ok() {
                // Emitted before the reply so a caller that wakes on the
                // reply finds the event already queued.
                let r = self.report.clone().unwrap_or(Terminated {
                    reason: TerminateReason::Requested,
                    signalled: 0,
                    survivors: 0,
                    elapsed_ms: 0,
                    sweeps: 0,
                });
                self.emit(Event::Terminated {
                    id: id.clone(),
                    signalled: r.signalled,
                    survivors: r.survivors,
                    elapsed_ms: r.elapsed_ms,
                });
            }
            let _ = reply.send(res.map(|()| TerminateReport {
                report: self.report.clone(),
                exit,
            }));
        }
        let reason = self
            .report
            .as_ref()
            .map(|r| reason_name(r.reason).to_string())
            .or_else(|| exit_reason(&exit));
        if !requested {
            if !self.lost {
                self.lost = true;
                self.emit(Event::Lost {
                    id: id.clone(),
                    reason: reason
                        .clone()
                        .unwrap_or_else(|| "the shellper process is gone".into()),
                });
            }
            self.emit(Event::Exited {
                id: id.clone(),
                what: ExitWhat::Shellper,
                code: exit.code,
                signal: exit.signal,
                reason,
            });
        }
    }
}

/// The `exited` event for a v1 EXIT (codev reports a normal exit as
/// `code: C, signal: "0"` and a signal death as `code: 0, signal: "N"`; we
/// report `code: C, signal: null` and `code: null, signal: N`).
pub(crate) fn child_exit_event(id: String, e: &shellper_protocol::msg::ExitMsg) -> Event {
    let signal = e.signal_number();
    Event::Exited {
        id,
        what: ExitWhat::Child,
        code: if signal.is_some() { None } else { e.code },
        signal,
        reason: None,
    }
}

/// The renewal interval to use for a grant: the shellper's suggestion,
/// clamped into `[10 ms, ttl / 2]` so a bogus value can neither spin the
/// scheduler nor let the lease lapse.
pub(crate) fn renew_interval(g: &shellper_protocol::msg::Grant) -> Duration {
    let ttl = Duration::from_millis(g.ttl_ms.max(20));
    Duration::from_millis(g.renew_every_ms).clamp(Duration::from_millis(10), ttl / 2)
}
