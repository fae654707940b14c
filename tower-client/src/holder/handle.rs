//! The handle of a held shellper and the control queue behind it: the
//! handle only sends commands ([`Ctl`]) and waits for answers, each with a
//! deadline; the holder task owns everything else.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use shellper_protocol::msg::{ALLOWED_SIGNALS, Resize, Status};
use tokio::sync::{mpsc, oneshot};

use super::events::TerminateReport;
use crate::error::{Error, Result};
use crate::sched::{Health, RenewSink};
use crate::terminal::Terminal;

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
    /// The session's cgroup, when it has one (from the registry).
    pub cgroup: Option<PathBuf>,
}

/// Commands to a holder.
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

/// The scheduler's transport: queue a command to the lease's holder.
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

pub(crate) const ST_HELD: u8 = 0;
pub(crate) const ST_UNRESPONSIVE: u8 = 1;
pub(crate) const ST_LAPSED: u8 = 2;
pub(crate) const ST_ENDED: u8 = 3;

/// Health of a held lease as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Held,
    Unresponsive,
    Lapsed,
    /// The holder stopped (terminated, detached, revoked, lost, exited).
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
/// to the shellper's holder task and waits for its answer, each with a
/// deadline (a stopped shellper never makes a caller hang).
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
            why: "its holder has stopped".into(),
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
        self.ask(
            |r| Ctl::Signal(signal, r),
            Some(self.inner.connect_timeout),
            "SIGNAL",
        )
        .await
    }

    /// Resizes the PTY.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.ask(
            |r| Ctl::Resize(Resize { cols, rows }, r),
            Some(self.inner.connect_timeout),
            "RESIZE",
        )
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
        // The holder enforces the deadline (it knows what is missing); the
        // outer bound only guards against a wedged runtime.
        self.ask(
            |reply| Ctl::Terminate { timeout, reply },
            Some(timeout + Duration::from_secs(1)),
            "terminate",
        )
        .await
    }
}
