//! The lease enforcer: runs the protocol's pure [`LeaseMachine`] on tokio time.
//!
//! Any shellper links this to enforce its lease. One task owns the machine
//! (no locks, one order of events); connection tasks talk to it through a
//! cloneable [`LeaseHandle`]. The enforcer
//!
//! * sleeps until [`LeaseMachine::next_deadline`] (never more than one
//!   heartbeat, so its own stalls are measured by the machine);
//! * before acting on a deadline, drains pending events (yield, then
//!   `try_recv` until empty, a few rounds) so a renewal that is already in
//!   flight counts: BRIEF §2 "re-check before killing";
//! * calls the termination hook exactly once, with the reason and the
//!   connection that held (or last silently held) the lease, when the
//!   machine enters `Terminating`, whatever caused it (deadline, RELEASE
//!   Terminate, a signal);
//! * keeps answering afterwards (lease requests get `Terminating`,
//!   snapshots keep working) so STATUS works during the kill ladder.
//!
//! Time: `tokio::time::Instant::now().into_std()`. Under tokio's paused test
//! clock that is the mocked time, so the enforcer is unit-tested without
//! sleeping.
//!
//! The event channel is unbounded on purpose: every request but the
//! fire-and-forget notifications waits for its reply, and notifications are
//! at most one per connection close, signal or child exit, so the queue is
//! bounded by the connection limit; an unbounded sender also lets
//! `disconnected` be called from `Drop`-like cleanup paths without awaiting.

use std::time::Duration;

use shellper_protocol::lease::{ConnId, Granted, LeaseConfig, Reject, Released, Snapshot};
use shellper_protocol::msg::{Grant, HolderInfo, ReleaseMode, Renewed, Revoked, TerminateReason};
use shellper_protocol::token::Token;
use shellper_protocol::{Frame, LeaseMachine};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Rounds of "yield, then drain the channel" before a deadline is acted on.
const DRAIN_ROUNDS: usize = 3;

/// What the termination hook is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termination {
    pub reason: TerminateReason,
    /// The connection that held the lease (or silently held it) just before
    /// termination: it gets the TERMINATED report.
    pub holder: Option<ConnId>,
}

enum Request {
    Acquire {
        conn: ConnId,
        token: Token,
        info: HolderInfo,
        reply: oneshot::Sender<Result<Granted, Reject>>,
    },
    AcquireLegacy {
        conn: ConnId,
        reply: oneshot::Sender<Result<Granted, Reject>>,
    },
    Renew {
        conn: ConnId,
        epoch: u64,
        reply: oneshot::Sender<Result<Duration, Reject>>,
    },
    Release {
        conn: ConnId,
        epoch: u64,
        mode: ReleaseMode,
        reply: oneshot::Sender<Result<Released, Reject>>,
    },
    IsHolder {
        conn: ConnId,
        reply: oneshot::Sender<bool>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    Disconnected(ConnId),
    Signalled,
    ChildExited,
    ChildStarted,
    ProtocolError,
    Exited,
}

/// What a lease request (ACQUIRE, RENEW, RELEASE) is answered with.
#[derive(Debug, Default)]
pub struct Answer {
    /// For the requesting connection (GRANT, RENEWED, RELEASED or ERROR);
    /// `None` for RELEASE Terminate, whose TERMINATED follows the ladder.
    pub reply: Option<Frame>,
    /// REVOKED, for the holder an ACQUIRE evicted.
    pub revoked: Option<(ConnId, Frame)>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Cloneable access to the enforcer. Every async method returns
/// `Err(Reject::Terminating)` (or `false`/`None`) once the enforcer is gone.
#[derive(Debug, Clone)]
pub struct LeaseHandle {
    tx: mpsc::UnboundedSender<Request>,
    cfg: LeaseConfig,
    leased: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        let name = match self {
            Request::Acquire { .. } => "Acquire",
            Request::AcquireLegacy { .. } => "AcquireLegacy",
            Request::Renew { .. } => "Renew",
            Request::Release { .. } => "Release",
            Request::IsHolder { .. } => "IsHolder",
            Request::Snapshot { .. } => "Snapshot",
            Request::Disconnected(_) => "Disconnected",
            Request::Signalled => "Signalled",
            Request::ChildExited => "ChildExited",
            Request::ChildStarted => "ChildStarted",
            Request::ProtocolError => "ProtocolError",
            Request::Exited => "Exited",
        };
        f.write_str(name)
    }
}

impl LeaseHandle {
    /// Runs a lease request frame and says what to send; `None` when
    /// `frame` is not ACQUIRE, RENEW or RELEASE. The one place both kinds
    /// of shellper (PTY and embedded) turn lease requests into replies.
    pub async fn answer(&self, conn: ConnId, frame: Frame) -> Option<Answer> {
        let reject = |r| Some(crate::sock::reject_frame(r));
        Some(match frame {
            Frame::Acquire(mut a) => {
                crate::sock::truncate_name(&mut a.holder);
                match self.acquire(conn, a.token, a.holder).await {
                    Ok(g) => {
                        let cfg = self.config();
                        Answer {
                            reply: Some(Frame::Grant(Grant {
                                epoch: g.epoch,
                                ttl_ms: ms(cfg.ttl),
                                window_ms: ms(cfg.window),
                                renew_every_ms: ms(cfg.suggested_renew()),
                                expires_in_ms: ms(g.expires_in.unwrap_or(cfg.ttl)),
                            })),
                            revoked: g.revoked.map(|(old, old_epoch)| {
                                (
                                    old,
                                    Frame::Revoked(Revoked {
                                        old_epoch,
                                        new_epoch: g.epoch,
                                    }),
                                )
                            }),
                        }
                    }
                    Err(r) => Answer {
                        reply: reject(r),
                        revoked: None,
                    },
                }
            }
            Frame::Renew(r) => Answer {
                reply: match self.renew(conn, r.epoch).await {
                    Ok(left) => Some(Frame::Renewed(Renewed {
                        epoch: r.epoch,
                        seq: r.seq,
                        expires_in_ms: ms(left),
                    })),
                    Err(e) => reject(e),
                },
                revoked: None,
            },
            Frame::Release(r) => Answer {
                reply: match self.release(conn, r.epoch, r.mode).await {
                    // TERMINATED follows once the kill ladder is done.
                    Ok(Released::Terminate) => None,
                    Ok(Released::Detached { kill_in }) => {
                        Some(Frame::Released(shellper_protocol::msg::Released {
                            epoch: r.epoch,
                            kill_in_ms: ms(kill_in),
                        }))
                    }
                    Err(e) => reject(e),
                },
                revoked: None,
            },
            _ => return None,
        })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request, gone: T) -> T {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(make(tx)).is_err() {
            return gone;
        }
        rx.await.unwrap_or(gone)
    }

    /// The lease timing (immutable for the shellper's life).
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// Whether the shellper runs in leased mode (token required).
    pub fn is_leased(&self) -> bool {
        self.leased
    }

    /// ACQUIRE with a token.
    pub async fn acquire(
        &self,
        conn: ConnId,
        token: Token,
        info: HolderInfo,
    ) -> Result<Granted, Reject> {
        self.ask(
            |reply| Request::Acquire {
                conn,
                token,
                info,
                reply,
            },
            Err(Reject::Terminating),
        )
        .await
    }

    /// Legacy mode: a `tower` client said HELLO.
    pub async fn acquire_legacy(&self, conn: ConnId) -> Result<Granted, Reject> {
        self.ask(
            |reply| Request::AcquireLegacy { conn, reply },
            Err(Reject::Terminating),
        )
        .await
    }

    /// RENEW; returns the new time to expiry.
    pub async fn renew(&self, conn: ConnId, epoch: u64) -> Result<Duration, Reject> {
        self.ask(
            |reply| Request::Renew { conn, epoch, reply },
            Err(Reject::Terminating),
        )
        .await
    }

    /// RELEASE (terminate or detach).
    pub async fn release(
        &self,
        conn: ConnId,
        epoch: u64,
        mode: ReleaseMode,
    ) -> Result<Released, Reject> {
        self.ask(
            |reply| Request::Release {
                conn,
                epoch,
                mode,
                reply,
            },
            Err(Reject::Terminating),
        )
        .await
    }

    /// Whether `conn` may use holder-only requests (SIGNAL, SPAWN).
    pub async fn is_holder(&self, conn: ConnId) -> bool {
        self.ask(|reply| Request::IsHolder { conn, reply }, false)
            .await
    }

    /// The machine's state now; `None` once the enforcer is gone.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Snapshot { reply: tx }).ok()?;
        rx.await.ok()
    }

    /// A connection closed (the window starts at once if it held the lease).
    pub fn disconnected(&self, conn: ConnId) {
        let _ = self.tx.send(Request::Disconnected(conn));
    }

    /// SIGTERM/SIGHUP/SIGINT reached the shellper.
    pub fn signalled(&self) {
        let _ = self.tx.send(Request::Signalled);
    }

    /// The PTY child exited.
    pub fn child_exited(&self) {
        let _ = self.tx.send(Request::ChildExited);
    }

    /// A new PTY child was started (SPAWN).
    pub fn child_started(&self) {
        let _ = self.tx.send(Request::ChildStarted);
    }

    /// A client sent a malformed frame (counted in STATUS).
    pub fn protocol_error(&self) {
        let _ = self.tx.send(Request::ProtocolError);
    }

    /// The kill ladder finished: the enforcer marks the machine `Exited` and
    /// returns it.
    pub fn exited(&self) {
        let _ = self.tx.send(Request::Exited);
    }
}

/// Owns a [`LeaseMachine`] and runs it on tokio time.
#[derive(Debug)]
pub struct LeaseEnforcer<H> {
    machine: LeaseMachine,
    rx: mpsc::UnboundedReceiver<Request>,
    hook: Option<H>,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl<H> LeaseEnforcer<H>
where
    H: FnOnce(Termination) + Send + 'static,
{
    /// An enforcer for `machine` that calls `on_terminate` once, when the
    /// machine enters `Terminating`.
    pub fn new(machine: LeaseMachine, on_terminate: H) -> (Self, LeaseHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = LeaseHandle {
            tx,
            cfg: *machine.config(),
            leased: machine.is_leased(),
        };
        (
            LeaseEnforcer {
                machine,
                rx,
                hook: Some(on_terminate),
            },
            handle,
        )
    }

    /// Spawns the enforcer on the current runtime.
    pub fn spawn(
        machine: LeaseMachine,
        on_terminate: H,
    ) -> (LeaseHandle, JoinHandle<LeaseMachine>) {
        let (enforcer, handle) = Self::new(machine, on_terminate);
        (handle, tokio::spawn(enforcer.run()))
    }

    /// Runs until the machine has exited (after [`LeaseHandle::exited`]) or
    /// every handle is dropped; returns the machine for inspection.
    pub async fn run(mut self) -> LeaseMachine {
        loop {
            let deadline = self.machine.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                req = self.rx.recv() => match req {
                    Some(Request::Exited) => {
                        self.machine.exited();
                        return self.machine;
                    }
                    Some(r) => self.handle(r),
                    None => return self.machine,
                },
                () = sleep => {
                    if self.drain().await {
                        return self.machine;
                    }
                    let holder = self.current_holder();
                    if let Some(reason) = self.machine.tick(now()) {
                        self.fire(reason, holder);
                    }
                }
            }
        }
    }

    /// Handles every event already queued (and those the yields let other
    /// tasks enqueue). Returns `true` if the enforcer must stop.
    async fn drain(&mut self) -> bool {
        for _ in 0..DRAIN_ROUNDS {
            tokio::task::yield_now().await;
            let mut any = false;
            loop {
                match self.rx.try_recv() {
                    Ok(Request::Exited) => {
                        self.machine.exited();
                        return true;
                    }
                    Ok(r) => {
                        any = true;
                        self.handle(r);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return true,
                }
            }
            if !any {
                break;
            }
        }
        false
    }

    fn current_holder(&self) -> Option<ConnId> {
        self.machine.snapshot(now()).holder
    }

    fn fire(&mut self, reason: TerminateReason, holder: Option<ConnId>) {
        tracing::info!(?reason, ?holder, "lease: terminating");
        if let Some(hook) = self.hook.take() {
            hook(Termination { reason, holder });
        }
    }

    fn handle(&mut self, req: Request) {
        let t = now();
        let holder = self.current_holder();
        let mut fired = None;
        match req {
            Request::Acquire {
                conn,
                token,
                info,
                reply,
            } => {
                let r = self.machine.acquire(t, conn, &token, info);
                tracing::debug!(conn, ok = r.is_ok(), "lease: acquire");
                let _ = reply.send(r);
            }
            Request::AcquireLegacy { conn, reply } => {
                let _ = reply.send(self.machine.acquire_legacy(t, conn));
            }
            Request::Renew { conn, epoch, reply } => {
                let _ = reply.send(self.machine.renew(t, conn, epoch));
            }
            Request::Release {
                conn,
                epoch,
                mode,
                reply,
            } => {
                let r = self.machine.release(t, conn, epoch, &mode);
                if let Ok(Released::Terminate) = r {
                    // `release` entered Terminating itself; the holder that
                    // asked gets the report.
                    fired = Some((
                        self.machine
                            .snapshot(t)
                            .terminate_reason
                            .unwrap_or(TerminateReason::Requested),
                        Some(conn),
                    ));
                }
                let _ = reply.send(r);
            }
            Request::IsHolder { conn, reply } => {
                let _ = reply.send(self.machine.is_holder(conn));
            }
            Request::Snapshot { reply } => {
                let _ = reply.send(self.machine.snapshot(t));
            }
            Request::Disconnected(conn) => {
                if let Some(r) = self.machine.disconnected(t, conn) {
                    fired = Some((r, holder));
                }
            }
            Request::Signalled => {
                if let Some(r) = self.machine.signalled() {
                    fired = Some((r, holder));
                }
            }
            Request::ChildExited => self.machine.child_exited(),
            Request::ChildStarted => self.machine.child_started(),
            Request::ProtocolError => self.machine.note_protocol_error(),
            Request::Exited => self.machine.exited(),
        }
        if let Some((reason, holder)) = fired {
            self.fire(reason, holder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shellper_protocol::lease::Mode;
    use shellper_protocol::msg::WirePhase;
    use std::sync::{Arc, Mutex};

    type Fired = Arc<Mutex<Vec<(Termination, Duration)>>>;

    fn cfg() -> LeaseConfig {
        LeaseConfig::new(
            Duration::from_millis(400),
            Duration::from_secs(2),
            Duration::from_secs(3),
            Duration::from_millis(300),
        )
        .expect("valid")
    }

    fn token() -> Token {
        Token([7; 32])
    }

    fn info() -> HolderInfo {
        HolderInfo {
            name: "test".into(),
            pid: 1,
        }
    }

    fn start(mode: Mode) -> (LeaseHandle, Fired, tokio::time::Instant) {
        let fired: Fired = Arc::default();
        let f2 = fired.clone();
        let t0 = tokio::time::Instant::now();
        let machine = LeaseMachine::new(cfg(), mode, t0.into_std());
        let (h, _join) = LeaseEnforcer::spawn(machine, move |t: Termination| {
            f2.lock().expect("lock").push((t, t0.elapsed()));
        });
        (h, fired, t0)
    }

    fn fired(f: &Fired) -> Vec<(Termination, Duration)> {
        f.lock().expect("lock").clone()
    }

    #[tokio::test(start_paused = true)]
    async fn unclaimed_shellper_terminates_at_the_claim_deadline() {
        let (_h, f, _) = start(Mode::Leased(token()));
        tokio::time::sleep(Duration::from_millis(2900)).await;
        assert!(fired(&f).is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = fired(&f);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.reason, TerminateReason::ClaimExpired);
        assert!(got[0].1 >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_lease_and_silence_lapses_then_kills_after_window() {
        let (h, f, t0) = start(Mode::Leased(token()));
        let g = h.acquire(1, token(), info()).await.expect("grant");
        assert_eq!(g.epoch, 1);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(130)).await;
            h.renew(1, g.epoch).await.expect("renew");
        }
        assert!(fired(&f).is_empty());
        let silent_from = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = h.snapshot().await.expect("snapshot");
        assert_eq!(s.phase, WirePhase::Lapsed);
        assert_eq!(s.holder, Some(1), "silent holder may still renew");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = fired(&f);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.reason, TerminateReason::WindowExpired);
        assert_eq!(got[0].0.holder, Some(1));
        let at = got[0].1 - silent_from;
        assert!(
            at >= Duration::from_millis(2400) && at < Duration::from_millis(2600),
            "{at:?}"
        );
        assert_eq!(h.renew(1, 1).await, Err(Reject::Terminating));
    }

    #[tokio::test(start_paused = true)]
    async fn holder_eof_starts_the_window_at_once_and_reacquire_saves_it() {
        let (h, f, _) = start(Mode::Leased(token()));
        h.acquire(1, token(), info()).await.expect("grant");
        h.disconnected(1);
        tokio::time::sleep(Duration::from_millis(1900)).await;
        let g = h.acquire(2, token(), info()).await.expect("re-acquire");
        assert_eq!(g.epoch, 2);
        assert_eq!(
            h.renew(2, 1).await,
            Err(Reject::StaleEpoch { got: 1, current: 2 })
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.renew(2, 2).await.expect("renew");
        h.disconnected(2);
        tokio::time::sleep(Duration::from_millis(1990)).await;
        assert!(fired(&f).is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = fired(&f);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.reason, TerminateReason::WindowExpired);
        assert_eq!(got[0].0.holder, None);
        let s = h.snapshot().await.expect("snapshot");
        assert_eq!(s.counters.rejected_tokens, 0);
        assert_eq!(s.counters.stale_epochs, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_token_is_rejected_and_counted() {
        let (h, _f, _) = start(Mode::Leased(token()));
        assert_eq!(
            h.acquire(1, Token([8; 32]), info()).await,
            Err(Reject::BadToken)
        );
        let s = h.snapshot().await.expect("snapshot");
        assert_eq!(s.counters.rejected_tokens, 1);
        assert_eq!(s.phase, WirePhase::Unclaimed);
    }

    #[tokio::test(start_paused = true)]
    async fn release_terminate_fires_with_the_requester_as_holder() {
        let (h, f, _) = start(Mode::Leased(token()));
        let g = h.acquire(5, token(), info()).await.expect("grant");
        assert_eq!(
            h.release(5, g.epoch, ReleaseMode::Terminate).await,
            Ok(Released::Terminate)
        );
        tokio::task::yield_now().await;
        let got = fired(&f);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].0,
            Termination {
                reason: TerminateReason::Requested,
                holder: Some(5)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_tower_holds_while_connected() {
        let (h, f, _) = start(Mode::Legacy);
        h.acquire_legacy(1).await.expect("legacy grant");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(fired(&f).is_empty(), "legacy holder needs no renewals");
        let g = h.acquire_legacy(2).await.expect("replaced");
        assert_eq!(g.revoked, Some((1, 1)));
        h.disconnected(1);
        assert!(h.is_holder(2).await);
        h.disconnected(2);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(fired(&f)[0].0.reason, TerminateReason::WindowExpired);
    }

    #[tokio::test(start_paused = true)]
    async fn a_husk_waits_for_its_window_and_signals_fire_once() {
        let (h, f, t0) = start(Mode::Leased(token()));
        h.acquire(1, token(), info()).await.expect("grant");
        h.child_exited();
        h.disconnected(1);
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert!(fired(&f).is_empty(), "a lapsed husk waits for its window");
        let s = h.snapshot().await.expect("snapshot");
        assert_eq!(s.phase, WirePhase::Lapsed);
        assert!(!s.child_alive);
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.signalled();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let got = fired(&f);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.reason, TerminateReason::WindowExpired);
        assert!(got[0].1 >= Duration::from_secs(2), "{:?}", t0.elapsed());
    }

    /// A renewal sent at the very instant of the expiry: the renewer's timer
    /// and the enforcer's deadline fire together, and tokio then runs the two
    /// tasks in a fixed but unspecified order (it depends on which timer was
    /// registered last). If the renewer runs first its request is queued and
    /// read before the deadline (biased select); if the enforcer runs first,
    /// only the drain (yield, then read what arrived) keeps the lease from
    /// lapsing. The enforcer re-arms its timer at every heartbeat (TTL/4 =
    /// 100 ms, so last at 300 ms); the renewer arms its last timer either
    /// before that (at 0 ms) or after it (at 350 ms), so one of the two runs
    /// is the enforcer-first case whatever tokio's order is (checked: this
    /// test fails with the drain deleted).
    #[tokio::test(start_paused = true)]
    async fn a_renewal_queued_at_the_deadline_is_drained_first() {
        for armed_at in [0u64, 350] {
            let (h, f, _) = start(Mode::Leased(token()));
            let g = h.acquire(1, token(), info()).await.expect("grant");
            assert_eq!(g.expires_in, Some(Duration::from_millis(400)));
            let h2 = h.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(armed_at)).await;
                tokio::time::sleep(Duration::from_millis(400 - armed_at)).await;
                let _ = h2.renew(1, g.epoch).await;
            });
            tokio::time::sleep(Duration::from_millis(450)).await;
            let s = h.snapshot().await.expect("snapshot");
            assert_eq!(
                s.phase,
                WirePhase::Held,
                "armed at {armed_at} ms: renewal at the deadline counts"
            );
            // Held at the end is not enough: a renewal from the silent holder
            // also revives a lease that lapsed first.
            assert_eq!(
                s.counters.lapses, 0,
                "armed at {armed_at} ms: the deadline was acted on first"
            );
            assert!(fired(&f).is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn exited_stops_the_enforcer() {
        let fired: Fired = Arc::default();
        let machine =
            LeaseMachine::new(cfg(), Mode::Legacy, tokio::time::Instant::now().into_std());
        let f2 = fired.clone();
        let (h, join) = LeaseEnforcer::spawn(machine, move |t: Termination| {
            f2.lock().expect("lock").push((t, Duration::ZERO));
        });
        h.signalled();
        h.exited();
        let m = join.await.expect("join");
        assert_eq!(m.phase(), WirePhase::Exited);
        assert_eq!(
            fired.lock().expect("lock")[0].0.reason,
            TerminateReason::Signal
        );
        assert!(h.snapshot().await.is_none());
    }

    /// The replies both kinds of shellper send for lease requests: GRANT
    /// with the configured timings, REVOKED to the evicted holder, a long
    /// holder name cut, RENEWED, the ERROR of a stale epoch, RELEASED for a
    /// detach, nothing for terminate, and `None` for other frames.
    #[tokio::test(start_paused = true)]
    async fn answers_lease_requests_with_their_frames() {
        use shellper_protocol::msg::{Acquire, ErrorCode, ErrorMsg, Release, ReleaseMode, Renew};
        let (h, f, _) = start(Mode::Leased(token()));
        let acquire = |name: String| {
            Frame::Acquire(Acquire {
                token: token(),
                holder: HolderInfo { name, pid: 9 },
            })
        };
        let a = h
            .answer(1, acquire("é".repeat(200)))
            .await
            .expect("lease frame");
        assert_eq!(
            a.reply,
            Some(Frame::Grant(Grant {
                epoch: 1,
                ttl_ms: 400,
                window_ms: 2000,
                renew_every_ms: ms(cfg().suggested_renew()),
                expires_in_ms: 400,
            }))
        );
        assert!(a.revoked.is_none());
        let held = h
            .snapshot()
            .await
            .expect("snapshot")
            .holder_info
            .expect("holder");
        assert_eq!(held.name.len(), crate::sock::MAX_HOLDER_NAME);
        let a = h.answer(2, acquire("b".into())).await.expect("lease frame");
        assert!(matches!(
            a.reply,
            Some(Frame::Grant(Grant { epoch: 2, .. }))
        ));
        assert_eq!(
            a.revoked,
            Some((
                1,
                Frame::Revoked(Revoked {
                    old_epoch: 1,
                    new_epoch: 2
                })
            ))
        );
        let a = h
            .answer(2, Frame::Renew(Renew { epoch: 2, seq: 5 }))
            .await
            .expect("lease frame");
        assert_eq!(
            a.reply,
            Some(Frame::Renewed(Renewed {
                epoch: 2,
                seq: 5,
                expires_in_ms: 400
            }))
        );
        let a = h
            .answer(1, Frame::Renew(Renew { epoch: 1, seq: 1 }))
            .await
            .expect("lease frame");
        assert!(matches!(
            a.reply,
            Some(Frame::Error(ErrorMsg {
                code: ErrorCode::StaleEpoch,
                ..
            }))
        ));
        let a = h
            .answer(
                2,
                Frame::Release(Release {
                    epoch: 2,
                    mode: ReleaseMode::Detach { hold_ms: 0 },
                }),
            )
            .await
            .expect("lease frame");
        assert_eq!(
            a.reply,
            Some(Frame::Released(shellper_protocol::msg::Released {
                epoch: 2,
                kill_in_ms: 2000
            }))
        );
        let a = h.answer(3, acquire("c".into())).await.expect("lease frame");
        assert!(matches!(
            a.reply,
            Some(Frame::Grant(Grant { epoch: 3, .. }))
        ));
        let a = h
            .answer(
                3,
                Frame::Release(Release {
                    epoch: 3,
                    mode: ReleaseMode::Terminate,
                }),
            )
            .await
            .expect("lease frame");
        assert!(a.reply.is_none() && a.revoked.is_none());
        tokio::task::yield_now().await;
        assert_eq!(fired(&f).len(), 1);
        assert!(h.answer(3, Frame::Ping).await.is_none());
    }
}
