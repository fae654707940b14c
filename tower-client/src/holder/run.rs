//! The holder loop: one task per held shellper. It owns the lease
//! connection, the process watch and all per-shellper state, and advances
//! every long operation (a reconnect, a terminate, a release) as a state
//! the loop polls, so it always keeps handling commands, frames and the
//! process's exit. Nothing in it waits on a socket write (see [`Link`]).
//! The reconnect is in `reconnect.rs`, the tree record and the outside
//! kill of a SIGKILLed shellper's tree in `tree.rs`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shellper_proctree::{LinuxTable, ProcessTable, Session, Sig};
use shellper_protocol::clamp::wire_ms;
use shellper_protocol::msg::{
    ErrorCode, Release, ReleaseMode, Renew, SignalMsg, Status, StatusRequest, TerminateReason,
    Terminated,
};
use shellper_protocol::{Frame, Token};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::events::{
    Event, ExitWhat, ProcExit, TerminateReport, child_exit_event, exit_reason, reason_name,
};
use super::handle::{Ctl, HandleInner, ST_ENDED, ST_HELD, ST_LAPSED, ST_UNRESPONSIVE};
use super::link::{Link, LinkEvent, SendError};
use super::reconnect::{Reconnect, reconnect_step};
use super::tree::TreeMemory;
use super::watch::ProcWatch;
use crate::conn::{self, HelloOpts};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::sched::{Health, Key, SchedMsg};

pub(super) struct PendingTerminate {
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    pub(super) reply: Option<oneshot::Sender<Result<TerminateReport>>>,
}

/// The per-shellper task.
pub(crate) struct Holder {
    pub ctx: Arc<Ctx>,
    pub handle: Arc<HandleInner>,
    pub key: Key,
    pub token: Token,
    pub conn: Option<Link>,
    /// The reattach window of the lease: how long a reconnect may go on.
    pub window: Duration,
    pub(super) reconnect: Option<Reconnect>,
    /// The PTY child's session (sid and leader start time), read while the
    /// child was still the shellper's: what to take down if the shellper is
    /// killed without running its own ladder.
    pub session: Option<Session>,
    /// The tree as last walked (see [`TreeMemory`]), refreshed at each
    /// renewal.
    pub(super) tree: Arc<std::sync::Mutex<TreeMemory>>,
    pub epoch: u64,
    pub proc: ProcWatch,
    pub ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    pub(super) pending_status: VecDeque<oneshot::Sender<Result<Status>>>,
    pub(super) detach: Option<oneshot::Sender<Result<Duration>>>,
    pub(super) terminate: Option<PendingTerminate>,
    /// TERMINATED received (requested or not).
    pub(super) report: Option<Terminated>,
    /// A `lost` event was emitted already.
    pub(super) lost: bool,
    pub(super) finished: bool,
}

/// The next event of an optional connection; pending forever when there is
/// none (so `select!` simply never picks it).
pub(super) async fn next_opt(conn: &mut Option<Link>) -> LinkEvent {
    match conn {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

impl Holder {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        handle: Arc<HandleInner>,
        key: Key,
        token: Token,
        conn: Link,
        epoch: u64,
        window: Duration,
        proc: ProcWatch,
        ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    ) -> Self {
        Holder {
            ctx,
            handle,
            key,
            token,
            conn: Some(conn),
            window,
            reconnect: None,
            session: None,
            tree: Arc::default(),
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

    pub(super) fn id(&self) -> String {
        self.handle.info.id.clone()
    }

    pub(super) fn emit(&self, ev: Event) {
        self.ctx.events.send(ev);
    }

    pub(super) fn set_state(&self, s: u8) {
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

    pub(super) fn unschedule(&self) {
        let _ = self.ctx.sched.send(SchedMsg::Remove { key: self.key });
    }

    pub(crate) async fn run(mut self) {
        let cancel = self.ctx.cancel.clone();
        while !self.finished {
            let term_deadline = self.terminate.as_ref().map(|t| t.deadline);
            // Biased: a frame already on the socket (TERMINATED, EXIT) is
            // read before the process exit is acted on (and `on_gone` drains
            // whatever is left before concluding).
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // Abandoned (a simulated crash, or the runtime going
                    // away): drop everything as a dead process would.
                    return;
                }
                ev = next_opt(&mut self.conn) => match ev {
                    LinkEvent::Frame(f) => self.on_frame(f).await,
                    LinkEvent::Closed(why) => self.on_closed(&why),
                },
                Some(c) = self.ctl_rx.recv() => self.on_ctl(c),
                r = reconnect_step(&mut self.reconnect, || {
                    let socket = self.handle.info.socket.clone();
                    let token = self.token.clone();
                    let holder = self.ctx.holder.clone();
                    let timeout = self.handle.connect_timeout;
                    Box::pin(async move {
                        let mut c = conn::connect(&socket, HelloOpts::LEASE, timeout, false).await?;
                        let (grant, exit) = conn::acquire(&mut c, &token, holder, timeout).await?;
                        Ok((c, grant, exit))
                    })
                }) => self.on_reconnect(r),
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
                why: "the holder stopped".into(),
            }));
        }
        let proc = std::mem::replace(&mut self.proc, ProcWatch::Done);
        proc.reap_in_background();
        self.ctx.forget(&self.handle);
    }

    /// Queues a frame on the lease connection; never waits. A full queue
    /// (the shellper is not reading) refuses the frame; a stopped writer is
    /// reported through the connection's next event.
    pub(super) fn write(&mut self, f: Frame) -> Result<(), SendError> {
        match &self.conn {
            Some(l) => l.send(f),
            None => Err(SendError::Closed),
        }
    }

    pub(super) fn on_ctl(&mut self, c: Ctl) {
        match c {
            Ctl::Renew { seq } => {
                self.remember_tree(false);
                if self.terminate.is_none() && self.detach.is_none() {
                    let epoch = self.epoch;
                    // A renewal that cannot be queued is simply missed: the
                    // scheduler reports the lease unresponsive if it matters.
                    let _ = self.write(Frame::Renew(Renew { epoch, seq }));
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
            Ctl::Status(reply) => match self.write(Frame::StatusRequest(StatusRequest {})) {
                Ok(()) => self.pending_status.push_back(reply),
                Err(e) => {
                    let _ = reply.send(Err(self.not_sent(e)));
                }
            },
            Ctl::Signal(sig, reply) => {
                let r = self.write(Frame::Signal(SignalMsg { signal: sig }));
                let _ = reply.send(r.map_err(|e| self.not_sent(e)));
            }
            Ctl::Resize(r, reply) => {
                let r = self.write(Frame::Resize(r));
                let _ = reply.send(r.map_err(|e| self.not_sent(e)));
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
                match self.write(f) {
                    Ok(()) => self.detach = Some(reply),
                    Err(e) => {
                        let _ = reply.send(Err(self.not_sent(e)));
                    }
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
                if self.write(f).is_err() {
                    self.reconnect = None;
                    // No usable lease connection: SIGTERM makes the shellper run its
                    // kill ladder all the same; death is confirmed by its
                    // process disappearing (and exit code 0 when ours).
                    let info = &self.handle.info;
                    let _ = LinuxTable.signal(info.pid as i32, info.start_ticks, Sig::Term);
                }
            }
        }
    }

    pub(super) fn not_connected(&self) -> Error {
        Error::NotHeld {
            id: self.id(),
            why: "the lease connection is closed".into(),
        }
    }

    pub(super) fn not_sent(&self, e: SendError) -> Error {
        match e {
            SendError::Closed => self.not_connected(),
            SendError::Full => Error::NotHeld {
                id: self.id(),
                why: "the shellper is not reading its lease connection (stopped or wedged)".into(),
            },
        }
    }

    pub(super) fn busy(&self, why: &str) -> Error {
        Error::NotHeld {
            id: self.id(),
            why: why.into(),
        }
    }

    pub(super) async fn on_frame(&mut self, f: Frame) {
        match f {
            Frame::Renewed(r) if r.epoch == self.epoch => {
                let _ = self.ctx.sched.send(SchedMsg::Ack {
                    key: self.key,
                    seq: r.seq,
                    expires_in: wire_ms(r.expires_in_ms),
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
                    let _ = reply.send(Ok(wire_ms(r.kill_in_ms)));
                    // Detached shellpers stay in the registry: a restarted
                    // Tower adopts them back.
                    self.conn = None;
                    self.finished = true;
                }
            }
            Frame::Error(m) => self.on_error(m.code, m.message).await,
            Frame::Ping => {
                let _ = self.write(Frame::Pong);
            }
            _ => {}
        }
    }

    pub(super) async fn on_error(&mut self, code: ErrorCode, message: String) {
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

    pub(super) async fn on_revoked(&mut self, old_epoch: u64, new_epoch: Option<u64>) {
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

    pub(super) fn on_terminate_timeout(&mut self) {
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
    pub(super) async fn on_gone(&mut self, exit: ProcExit) {
        // What it wrote just before exiting (TERMINATED, EXIT) is still in
        // our socket buffer even when its exit was noticed first: read it
        // before concluding anything.
        if let Some(mut l) = self.conn.take() {
            for f in l.drain(Duration::from_millis(200), 64).await {
                match f {
                    Frame::Terminated(t) => self.report = Some(t),
                    Frame::Exit(e) => self.emit(child_exit_event(self.id(), &e)),
                    _ => {}
                }
            }
        }
        self.reconnect = None;
        self.finished = true;
        let id = self.id();
        let requested = self.terminate.is_some();
        // Killed without a ladder of its own (SIGKILL, or no TERMINATED
        // from one we could not wait for): its tree runs on under PID 1.
        let sigkilled = exit.signal == Some(9)
            || (self.report.is_none() && exit.code.is_none() && exit.signal.is_none());
        if sigkilled {
            self.kill_orphaned_tree();
        } else if let Some(dir) = self.handle.info.cgroup.clone() {
            // It ran its own ladder (which empties and removes the session
            // cgroup); remove an empty one it left, never a populated one.
            tokio::task::spawn_blocking(move || {
                let cg = shellper_proctree::Cgroup::at(dir);
                if cg.exists() && cg.populated().is_ok_and(|p| !p) {
                    let _ = cg.remove();
                }
            });
        }
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
