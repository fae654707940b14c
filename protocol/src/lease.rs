//! The lease state machine, pure.
//!
//! A shellper's life is bounded by a lease: `Unclaimed` until the first holder
//! acquires (bounded by the claim deadline), `Held` while the holder renews,
//! `Lapsed` when the holder disconnects or goes silent past the TTL (the
//! reattach window runs), `Terminating` when a deadline passes, a terminate is
//! requested or the shellper is signalled, and `Exited` once the kill ladder
//! is done.
//!
//! The machine performs no IO and never reads a clock: every method takes
//! `now`. The enforcer (the shellper's event loop, `shellper_leased::enforcer`) promises to call
//! [`LeaseMachine::tick`] at or after [`LeaseMachine::next_deadline`], which
//! is never more than one heartbeat away. A gap between ticks much larger than
//! the heartbeat means the *shellper* was frozen (SIGSTOP, a stalled host); in
//! that case a passed deadline is not acted on: the machine grants a fresh TTL
//! (held) or a fresh window (lapsed) so that the holder, if alive, can renew.

use std::time::{Duration, Instant};

use crate::msg::{Counters, HolderInfo, MAX_HOLD_MS, ReleaseMode, TerminateReason, WirePhase};
use crate::token::Token;

/// Identifies a connection to the shellper (assigned by the enforcer).
pub type ConnId = u64;

/// Lease phase.
pub type Phase = WirePhase;

/// Default time-to-live of a lease between renewals.
pub const DEFAULT_TTL: Duration = Duration::from_secs(6);
/// Default renewal interval used by Towers (TTL / 3).
pub const DEFAULT_RENEW: Duration = Duration::from_secs(2);
/// Default reattach window after a lapse.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
/// Default claim deadline for an unclaimed shellper.
pub const DEFAULT_CLAIM: Duration = Duration::from_secs(60);
/// Default grace between SIGTERM and SIGKILL in the kill ladder.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(3);

/// Smallest TTL accepted: below this, scheduling noise alone lapses leases.
pub const MIN_TTL: Duration = Duration::from_millis(50);
/// Largest TTL, window or claim deadline accepted (7 days). Keeps every
/// deadline far from `Instant` overflow and tokio's timer limits.
pub const MAX_DURATION: Duration = Duration::from_millis(MAX_HOLD_MS);
/// Largest kill grace accepted.
pub const MAX_KILL_GRACE: Duration = Duration::from_secs(600);

/// Timing of one shellper's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub ttl: Duration,
    pub window: Duration,
    pub claim: Duration,
    pub kill_grace: Duration,
    /// Longest interval the enforcer lets pass between ticks.
    pub heartbeat: Duration,
    /// A gap between ticks above this means the shellper itself was frozen.
    pub stall_threshold: Duration,
}

/// A lease configuration that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("ttl {ttl:?} is below the minimum of {min:?}")]
    TtlTooShort { ttl: Duration, min: Duration },
    #[error("{what} {value:?} is above the maximum of {max:?}")]
    TooLong {
        what: &'static str,
        value: Duration,
        max: Duration,
    },
    #[error("window {window:?} must be at least the ttl {ttl:?}")]
    WindowShorterThanTtl { window: Duration, ttl: Duration },
    #[error("ttl {ttl:?} must exceed 1.5 x the renew interval {renew:?}")]
    RenewTooSlow { ttl: Duration, renew: Duration },
    #[error("{what} must be greater than zero")]
    Zero { what: &'static str },
}

impl Default for LeaseConfig {
    fn default() -> Self {
        // Invariant: the defaults satisfy every rule of `new`.
        Self::new(
            DEFAULT_TTL,
            DEFAULT_WINDOW,
            DEFAULT_CLAIM,
            DEFAULT_KILL_GRACE,
        )
        .expect("default lease configuration is valid")
    }
}

impl LeaseConfig {
    /// Validates and derives the heartbeat (TTL/4, between 20 ms and 1 s) and
    /// the stall threshold (the larger of 1 s and 4 heartbeats: short enough
    /// to catch a SIGSTOP, long enough that a busy 2-core host is not
    /// mistaken for a frozen shellper).
    pub fn new(
        ttl: Duration,
        window: Duration,
        claim: Duration,
        kill_grace: Duration,
    ) -> Result<Self, ConfigError> {
        if ttl < MIN_TTL {
            return Err(ConfigError::TtlTooShort { ttl, min: MIN_TTL });
        }
        for (what, value, max) in [
            ("ttl", ttl, MAX_DURATION),
            ("window", window, MAX_DURATION),
            ("claim deadline", claim, MAX_DURATION),
            ("kill grace", kill_grace, MAX_KILL_GRACE),
        ] {
            if value > max {
                return Err(ConfigError::TooLong { what, value, max });
            }
        }
        if claim.is_zero() {
            return Err(ConfigError::Zero {
                what: "claim deadline",
            });
        }
        if window < ttl {
            return Err(ConfigError::WindowShorterThanTtl { window, ttl });
        }
        let heartbeat = (ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let stall_threshold = (heartbeat * 4).max(Duration::from_secs(1));
        Ok(LeaseConfig {
            ttl,
            window,
            claim,
            kill_grace,
            heartbeat,
            stall_threshold,
        })
    }

    /// The renew interval a Tower should use: TTL / 3.
    pub fn suggested_renew(&self) -> Duration {
        self.ttl / 3
    }

    /// Checks a Tower's renew interval against this lease: TTL > 1.5 × renew.
    pub fn check_renew_interval(&self, renew: Duration) -> Result<(), ConfigError> {
        if renew.is_zero() {
            return Err(ConfigError::Zero {
                what: "renew interval",
            });
        }
        if self.ttl.as_nanos() * 2 <= renew.as_nanos() * 3 {
            return Err(ConfigError::RenewTooSlow {
                ttl: self.ttl,
                renew,
            });
        }
        Ok(())
    }
}

/// How a shellper authenticates holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Started with a lease configuration: ACQUIRE must carry this token.
    Leased(Token),
    /// Started by an unmodified codev Tower: a connected `tower` client is
    /// the holder, for as long as it stays connected.
    Legacy,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("the lease token does not match")]
    BadToken,
    #[error("epoch {got} is not the current epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
    #[error("this connection does not hold the lease")]
    NotHolder,
    #[error("this shellper is not leased (legacy mode) or the request needs a lease")]
    NotLeased,
    #[error("the shellper is terminating")]
    Terminating,
}

/// Outcome of a successful acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub epoch: u64,
    /// `None` in legacy mode (held while connected).
    pub expires_in: Option<Duration>,
    /// The previous holder's connection, to be sent REVOKED, with its epoch.
    pub revoked: Option<(ConnId, u64)>,
}

/// Outcome of a successful release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Run the kill ladder now.
    Terminate,
    /// Detached; the shellper terminates after `kill_in` unless re-acquired.
    Detached { kill_in: Duration },
}

/// Why the lease lapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapseCause {
    /// The holder's connection closed (crash is detected at once).
    HolderGone,
    /// The holder stayed connected but did not renew within the TTL.
    Silent,
    /// The holder detached on purpose.
    Detached,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Unclaimed {
        claim_at: Instant,
    },
    Held {
        holder: ConnId,
        info: Option<HolderInfo>,
        /// `None` in legacy mode.
        expires: Option<Instant>,
    },
    Lapsed {
        kill_at: Instant,
        cause: LapseCause,
        /// For a silent lapse: the still-connected holder, who may renew.
        silent_holder: Option<(ConnId, Option<HolderInfo>)>,
    },
    Terminating {
        reason: TerminateReason,
    },
    Exited,
}

/// A point-in-time view of the machine, for STATUS and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub phase: Phase,
    pub leased: bool,
    pub epoch: u64,
    pub holder: Option<ConnId>,
    pub holder_info: Option<HolderInfo>,
    pub expires_in: Option<Duration>,
    pub kill_in: Option<Duration>,
    pub claim_in: Option<Duration>,
    pub lapse_cause: Option<LapseCause>,
    pub terminate_reason: Option<TerminateReason>,
    pub child_alive: bool,
    pub counters: Counters,
}

/// The lease state machine of one shellper.
#[derive(Debug, Clone)]
pub struct LeaseMachine {
    cfg: LeaseConfig,
    mode: Mode,
    state: State,
    epoch: u64,
    child_alive: bool,
    last_tick: Instant,
    counters: Counters,
}

impl LeaseMachine {
    /// A new shellper: unclaimed until `now + claim`.
    pub fn new(cfg: LeaseConfig, mode: Mode, now: Instant) -> Self {
        LeaseMachine {
            cfg,
            mode,
            state: State::Unclaimed {
                claim_at: now + cfg.claim,
            },
            epoch: 0,
            child_alive: true,
            last_tick: now,
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    pub fn is_leased(&self) -> bool {
        matches!(self.mode, Mode::Leased(_))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Unclaimed { .. } => Phase::Unclaimed,
            State::Held { .. } => Phase::Held,
            State::Lapsed { .. } => Phase::Lapsed,
            State::Terminating { .. } => Phase::Terminating,
            State::Exited => Phase::Exited,
        }
    }

    /// The connection currently holding the lease, if any.
    pub fn holder(&self) -> Option<ConnId> {
        match &self.state {
            State::Held { holder, .. } => Some(*holder),
            _ => None,
        }
    }

    /// Whether `conn` may use holder-only requests (SIGNAL, SPAWN, RELEASE):
    /// it holds the lease, or it is a silently lapsed holder that may still
    /// renew.
    pub fn is_holder(&self, conn: ConnId) -> bool {
        match &self.state {
            State::Held { holder, .. } => *holder == conn,
            State::Lapsed {
                silent_holder: Some((h, _)),
                ..
            } => *h == conn,
            _ => false,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts a malformed frame (kept here so STATUS has one set of counters).
    pub fn note_protocol_error(&mut self) {
        self.counters.protocol_errors += 1;
    }

    fn terminating(&self) -> bool {
        matches!(self.state, State::Terminating { .. } | State::Exited)
    }

    /// Enters `Lapsed`. A husk (child exited) lapses like any other
    /// session: a Tower that comes back within the window collects the
    /// retained EXIT and may restart the child with SPAWN.
    fn lapse(
        &mut self,
        kill_at: Instant,
        cause: LapseCause,
        silent_holder: Option<(ConnId, Option<HolderInfo>)>,
    ) {
        self.counters.lapses += 1;
        self.state = State::Lapsed {
            kill_at,
            cause,
            silent_holder,
        };
    }

    fn begin_terminate(&mut self, reason: TerminateReason) -> Option<TerminateReason> {
        if self.terminating() {
            return None;
        }
        self.state = State::Terminating { reason };
        Some(reason)
    }

    fn grant(&mut self, now: Instant, conn: ConnId, info: Option<HolderInfo>) -> Granted {
        let revoked = match &self.state {
            State::Held { holder, .. } if *holder != conn => Some((*holder, self.epoch)),
            State::Lapsed {
                silent_holder: Some((h, _)),
                ..
            } if *h != conn => Some((*h, self.epoch)),
            _ => None,
        };
        if revoked.is_some() {
            self.counters.revocations += 1;
        }
        self.epoch += 1;
        self.counters.acquires += 1;
        let expires = match self.mode {
            Mode::Leased(_) => Some(now + self.cfg.ttl),
            Mode::Legacy => None,
        };
        self.state = State::Held {
            holder: conn,
            info,
            expires,
        };
        Granted {
            epoch: self.epoch,
            expires_in: expires.map(|_| self.cfg.ttl),
            revoked,
        }
    }

    /// ACQUIRE with a token: starts a new epoch and evicts any other holder.
    pub fn acquire(
        &mut self,
        now: Instant,
        conn: ConnId,
        token: &Token,
        info: HolderInfo,
    ) -> Result<Granted, Reject> {
        if self.terminating() {
            return Err(Reject::Terminating);
        }
        match &self.mode {
            Mode::Legacy => Err(Reject::NotLeased),
            Mode::Leased(t) => {
                if !t.ct_eq(token) {
                    self.counters.rejected_tokens += 1;
                    return Err(Reject::BadToken);
                }
                Ok(self.grant(now, conn, Some(info)))
            }
        }
    }

    /// Legacy mode: a `tower` client said HELLO and becomes the holder.
    pub fn acquire_legacy(&mut self, now: Instant, conn: ConnId) -> Result<Granted, Reject> {
        if self.terminating() {
            return Err(Reject::Terminating);
        }
        match self.mode {
            Mode::Leased(_) => Err(Reject::NotLeased),
            Mode::Legacy => Ok(self.grant(now, conn, None)),
        }
    }

    fn check_epoch(&mut self, epoch: u64) -> Result<(), Reject> {
        if epoch != self.epoch {
            self.counters.stale_epochs += 1;
            return Err(Reject::StaleEpoch {
                got: epoch,
                current: self.epoch,
            });
        }
        Ok(())
    }

    /// RENEW: extends a held lease to `now + ttl`, or revives a silently
    /// lapsed one held by the same connection. A renewal that arrives after
    /// the expiry instant but before the machine ticked still counts: input
    /// is drained before deadlines are acted on.
    pub fn renew(&mut self, now: Instant, conn: ConnId, epoch: u64) -> Result<Duration, Reject> {
        if self.terminating() {
            return Err(Reject::Terminating);
        }
        if !self.is_leased() {
            return Err(Reject::NotLeased);
        }
        self.check_epoch(epoch)?;
        let ttl = self.cfg.ttl;
        match &mut self.state {
            State::Held {
                holder, expires, ..
            } if *holder == conn => {
                *expires = Some(now + ttl);
            }
            State::Lapsed {
                silent_holder: Some((h, info)),
                ..
            } if *h == conn => {
                let info = info.take();
                self.state = State::Held {
                    holder: conn,
                    info,
                    expires: Some(now + ttl),
                };
            }
            _ => return Err(Reject::NotHolder),
        }
        self.counters.renewals += 1;
        Ok(ttl)
    }

    /// RELEASE from the holder: terminate now, or detach and keep running
    /// for `max(hold, window)` (clamped to [`MAX_HOLD_MS`]).
    pub fn release(
        &mut self,
        now: Instant,
        conn: ConnId,
        epoch: u64,
        mode: &ReleaseMode,
    ) -> Result<Released, Reject> {
        if self.terminating() {
            return Err(Reject::Terminating);
        }
        self.check_epoch(epoch)?;
        if !self.is_holder(conn) {
            return Err(Reject::NotHolder);
        }
        match mode {
            ReleaseMode::Terminate => {
                self.begin_terminate(TerminateReason::Requested);
                Ok(Released::Terminate)
            }
            ReleaseMode::Detach { hold_ms } => {
                let hold = Duration::from_millis((*hold_ms).min(MAX_HOLD_MS)).max(self.cfg.window);
                self.lapse(now + hold, LapseCause::Detached, None);
                Ok(Released::Detached { kill_in: hold })
            }
        }
    }

    /// A connection closed. If it held the lease, the window starts now.
    pub fn disconnected(&mut self, now: Instant, conn: ConnId) -> Option<TerminateReason> {
        match &mut self.state {
            State::Held { holder, .. } if *holder == conn => {
                self.lapse(now + self.cfg.window, LapseCause::HolderGone, None);
                None
            }
            State::Lapsed { silent_holder, .. }
                if silent_holder.as_ref().is_some_and(|(h, _)| *h == conn) =>
            {
                // The window already runs from the silent lapse; keep it.
                *silent_holder = None;
                None
            }
            _ => None,
        }
    }

    /// SIGTERM, SIGHUP or SIGINT delivered to the shellper.
    pub fn signalled(&mut self) -> Option<TerminateReason> {
        self.begin_terminate(TerminateReason::Signal)
    }

    /// The PTY child exited. The shellper becomes a *husk*, which is a
    /// session like any other: it keeps its phase and its deadlines (claim
    /// deadline while unclaimed, window while lapsed), so a Tower that
    /// connects late still collects the EXIT and may restart the child in
    /// place with SPAWN. A Tower that does not want the husk terminates it
    /// explicitly. Nothing is decided here, hence no return value.
    pub fn child_exited(&mut self) {
        self.child_alive = false;
    }

    /// A new PTY child was started (SPAWN).
    pub fn child_started(&mut self) {
        self.child_alive = true;
    }

    /// The kill ladder finished.
    pub fn exited(&mut self) {
        self.state = State::Exited;
    }

    /// Acts on deadlines. Returns a reason exactly once, when the machine
    /// enters `Terminating`.
    pub fn tick(&mut self, now: Instant) -> Option<TerminateReason> {
        let gap = now.saturating_duration_since(self.last_tick);
        self.last_tick = self.last_tick.max(now);
        let stalled = gap > self.cfg.stall_threshold;
        let result = match &mut self.state {
            State::Unclaimed { claim_at } if now >= *claim_at => {
                if stalled {
                    *claim_at = now + self.cfg.claim;
                    None
                } else {
                    self.begin_terminate(TerminateReason::ClaimExpired)
                }
            }
            State::Held {
                holder,
                info,
                expires: Some(exp),
            } if now >= *exp => {
                if stalled {
                    *exp = now + self.cfg.ttl;
                    None
                } else {
                    let lapse_at = *exp;
                    let silent = Some((*holder, info.take()));
                    let kill_at = lapse_at + self.cfg.window;
                    self.lapse(kill_at, LapseCause::Silent, silent);
                    // The window may already be over too (a long gap below
                    // the stall threshold cannot make it so, but keep the
                    // rule simple: check it now).
                    if now >= kill_at {
                        self.begin_terminate(TerminateReason::WindowExpired)
                    } else {
                        None
                    }
                }
            }
            State::Lapsed { kill_at, .. } if now >= *kill_at => {
                if stalled {
                    *kill_at = now + self.cfg.window;
                    None
                } else {
                    self.begin_terminate(TerminateReason::WindowExpired)
                }
            }
            _ => None,
        };
        if stalled {
            self.counters.stalls += 1;
        }
        result
    }

    /// When the enforcer must call [`tick`](Self::tick) next: the earliest
    /// phase deadline, but never later than one heartbeat after the last
    /// tick (so stalls are measured). `None` once terminating.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hb = self.last_tick + self.cfg.heartbeat;
        let phase = match &self.state {
            State::Unclaimed { claim_at } => Some(*claim_at),
            State::Held { expires, .. } => *expires,
            State::Lapsed { kill_at, .. } => Some(*kill_at),
            State::Terminating { .. } | State::Exited => return None,
        };
        Some(phase.map_or(hb, |p| p.min(hb)))
    }

    /// The state as seen at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let left = |t: Instant| t.saturating_duration_since(now);
        let mut s = Snapshot {
            phase: self.phase(),
            leased: self.is_leased(),
            epoch: self.epoch,
            holder: None,
            holder_info: None,
            expires_in: None,
            kill_in: None,
            claim_in: None,
            lapse_cause: None,
            terminate_reason: None,
            child_alive: self.child_alive,
            counters: self.counters.clone(),
        };
        match &self.state {
            State::Unclaimed { claim_at } => s.claim_in = Some(left(*claim_at)),
            State::Held {
                holder,
                info,
                expires,
            } => {
                s.holder = Some(*holder);
                s.holder_info = info.clone();
                s.expires_in = expires.map(left);
            }
            State::Lapsed {
                kill_at,
                cause,
                silent_holder,
            } => {
                s.kill_in = Some(left(*kill_at));
                s.lapse_cause = Some(*cause);
                if let Some((h, info)) = silent_holder {
                    s.holder = Some(*h);
                    s.holder_info = info.clone();
                }
            }
            State::Terminating { reason } => s.terminate_reason = Some(*reason),
            State::Exited => {}
        }
        s
    }
}
