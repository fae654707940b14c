//! An exhaustive model check of the lease protocol.
//!
//! The real [`LeaseMachine`] (through
//! [`faulty::Shellside`], a pass-through unless a [`Fault`] is chosen) is
//! composed with models of everything around it, and
//! [stateright](https://docs.rs/stateright) visits every state the composition
//! can reach within a time horizon and a budget of faults:
//!
//! * **the shellper's enforcer**: the lease enforcer's rules (`leased::enforcer`):
//!   ticks at the machine's own `next_deadline()`, the termination hook fired
//!   once with the holder seen before the event, the kill ladder (done after
//!   the grace, at once for a husk), TERMINATED to the hook's holder, then
//!   every connection closed; the child exits at any point (EXIT to every
//!   connection, and to later ones on connect), SIGNAL and SPAWN from the
//!   holder only, an operator's SIGTERM, and the shellper itself frozen
//!   (SIGSTOP) for longer than its stall threshold;
//! * **Towers** (one or two, both with the token: a restarted Tower, or
//!   `leasectl reap` next to a running one): connect and ACQUIRE (spawn,
//!   adoption after a restart, reconnection after a broken connection, each a
//!   new connection and a new epoch), renew `renew` after each RENEWED, stall
//!   (SIGSTOP) and resume, crash (the kernel closes the socket), send
//!   RELEASE (terminate or detach), SIGNAL and SPAWN while holding, and, once
//!   revoked, the requests of a stale Tower with its old epoch (on its old
//!   connection, or first thing on a new one);
//! * **connections**: two FIFO queues each; a frame is delivered within
//!   `latency` of being sent while its receiver runs (a stopped receiver's
//!   frames wait); a connection can break between any two deliveries (what
//!   is in flight is lost) and each side then sees EOF; a crashed Tower's
//!   frames already sent are still delivered, then EOF;
//! * **time**: discrete. It advances only to the next instant something is
//!   scheduled at (a machine deadline or heartbeat, a renewal, a delivery
//!   bound, the end of the ladder or of a freeze, the horizon), and only once
//!   everything due at the current instant has happened; between two such
//!   instants the events above interleave in every order.
//!
//! Assumptions (what the check does *not* cover): frames are never corrupted
//! or reordered within a connection (the codec's own tests and the fuzzers
//! cover malformed input); the token is always right (a wrong token is the
//! fuzzers' and the unit tests' business); the kill ladder kills the whole
//! tree within the grace (proctree's tests); a healthy Tower's renewals keep
//! within the TTL, i.e. `renew + 2 × latency < ttl`. Every figure is in
//! milliseconds of the model's clock, starting at 0.
//!
//! The properties ([`PROPERTIES`]) are checked on every reachable state; the
//! tests show that each of them fails on at least one broken variant.

pub mod faulty;

use std::collections::VecDeque;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub use faulty::{Fault, Shellside};
use shellper_protocol::lease::{ConnId, LeaseConfig, LeaseMachine, Mode, Released};
use shellper_protocol::msg::{HolderInfo, ReleaseMode, TerminateReason, WirePhase};
use shellper_protocol::token::Token;
use stateright::{Model, Property};

/// Milliseconds on the model's clock.
pub type Ms = u64;

/// How many of each nondeterministic event a run may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Tower connections opened (spawn, restart, reconnection).
    pub starts: u8,
    /// Tower stalls, Tower crashes and broken connections, together.
    pub faults: u8,
    /// RELEASE, SIGNAL, SPAWN and stale requests, together.
    pub requests: u8,
    /// Exits of the PTY child.
    pub child_exits: u8,
    /// SIGTERMs to the shellper (an operator).
    pub sigterms: u8,
    /// Freezes of the shellper itself (SIGSTOP beyond its stall threshold).
    pub freezes: u8,
}

/// One model: timings, scope and the machine variant under test.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub ttl: Ms,
    pub window: Ms,
    pub claim: Ms,
    pub grace: Ms,
    /// The Towers' renewal interval, timed from each RENEWED.
    pub renew: Ms,
    /// Longest time a frame takes to be handled once sent (receiver running).
    pub latency: Ms,
    /// Time stops here.
    pub horizon: Ms,
    /// One or two Towers.
    pub towers: usize,
    pub budget: Budget,
    pub fault: Fault,
}

impl Setup {
    /// The timings of every check: TTL 4 s (heartbeat 1 s, stall
    /// threshold 4 s), window 4 s, claim deadline 2 s, grace 1 s, renewals
    /// every 1.333 s (TTL / 3), frames handled at the instant they are
    /// sent (in any order with everything else due then), two Towers, a
    /// horizon of 6 s, and no events (see [`Setup::with`]). Only ratios
    /// matter: the machine derives its heartbeat and stall threshold from
    /// the TTL, and the number of instants per TTL is what the state count
    /// grows with.
    pub fn base() -> Self {
        Setup {
            ttl: 4000,
            window: 4000,
            claim: 2000,
            grace: 1000,
            renew: 1333,
            latency: 0,
            horizon: 6000,
            towers: 2,
            budget: Budget {
                starts: 2,
                faults: 0,
                requests: 0,
                child_exits: 0,
                sigterms: 0,
                freezes: 0,
            },
            fault: Fault::None,
        }
    }

    /// The base setup with another budget.
    pub fn with(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The bounded checks CI runs (`cargo test -p shellper-model`), each a
    /// family of scenarios small enough to be exhausted in seconds: Towers
    /// that crash, stall and restart; holders' requests and a husk; an
    /// operator's SIGTERM beside a husk; a frozen shellper.
    pub fn ci() -> Vec<(&'static str, Setup)> {
        let b = Setup::base().budget;
        vec![
            (
                "two Towers, two faults (stall, crash, broken connection)",
                Setup::base().with(Budget { faults: 2, ..b }),
            ),
            (
                "requests (RELEASE, SIGNAL, SPAWN, stale ones) and a husk",
                Setup::base().with(Budget {
                    requests: 1,
                    child_exits: 1,
                    ..b
                }),
            ),
            (
                "an operator's SIGTERM, a husk, a request",
                Setup::base().with(Budget {
                    sigterms: 1,
                    child_exits: 1,
                    requests: 1,
                    ..b
                }),
            ),
            (
                "a frozen shellper and a fault",
                Setup {
                    horizon: 8000,
                    ..Setup::base().with(Budget {
                        faults: 1,
                        freezes: 1,
                        ..b
                    })
                },
            ),
        ]
    }

    /// The same timings with another machine variant.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn lease_config(&self) -> LeaseConfig {
        // Invariant: the setups of this crate respect the machine's rules
        // (checked by the tests, which build every setup).
        LeaseConfig::new(
            Duration::from_millis(self.ttl),
            Duration::from_millis(self.window),
            Duration::from_millis(self.claim),
            Duration::from_millis(self.grace),
        )
        .expect("the model's lease configuration is valid")
    }
}

/// A frame from a Tower to the shellper. SIGNAL and SPAWN carry no epoch on
/// the wire; `believed` is the epoch the sending Tower thought it held, kept
/// so that the fencing property can tell a stale sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Up {
    Acquire,
    Renew { epoch: u64 },
    Release { epoch: u64, terminate: bool },
    Signal { believed: u64 },
    Spawn { believed: u64 },
}

/// A frame from the shellper to a Tower.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DownFrame {
    Grant {
        epoch: u64,
    },
    Renewed {
        epoch: u64,
    },
    Released,
    Revoked,
    /// ERROR; `to_acquire`: the reply to an ACQUIRE.
    Error {
        to_acquire: bool,
    },
    Exit,
    Terminated(TerminateReason),
}

/// One connection between a Tower and the shellper.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Conn {
    pub tower: usize,
    /// Frames to the shellper, each with the instant it must be handled by.
    pub up: VecDeque<(Up, Ms)>,
    /// Frames to the Tower, each with the instant it must be handled by.
    pub down: VecDeque<(DownFrame, Ms)>,
    /// When the Tower's end closed (crash, or the connection broke).
    pub tower_closed: Option<Ms>,
    /// When the shellper's end closed (it exited, saw EOF, or it broke).
    pub shellper_closed: Option<Ms>,
    pub shellper_saw_eof: bool,
    pub tower_saw_eof: bool,
}

impl Conn {
    fn open(&self) -> bool {
        self.tower_closed.is_none() && self.shellper_closed.is_none()
    }
}

/// What a Tower believes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TowerPhase {
    /// Not running, or between connections.
    Down,
    /// ACQUIRE sent, waiting for GRANT.
    Acquiring,
    /// GRANT received. `healthy`: not stalled since the grant.
    Holding {
        epoch: u64,
        renew_at: Option<Ms>,
        healthy: bool,
    },
    /// Revoked, refused, detached: no longer holding (a Tower must not
    /// re-acquire on its own after REVOKED); it remembers its old epoch.
    Lost { epoch: Option<u64> },
    /// TERMINATED received or nothing left to connect to.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tower {
    pub phase: TowerPhase,
    pub conn: Option<usize>,
    pub stalled: bool,
    /// Stalled since it last connected: a GRANT it reads late is old.
    pub stalled_since_start: bool,
    pub last_epoch: Option<u64>,
}

/// The kill ladder in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ladder {
    pub started: Ms,
    pub ends: Ms,
    pub reason: TerminateReason,
    pub holder: Option<usize>,
}

/// The first violation of each property, kept in the state (the checker
/// reports the path to the first state where one is set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Violations {
    pub no_false_kill: Option<&'static str>,
    pub fencing: Option<&'static str>,
    pub one_holder: Option<&'static str>,
    pub husk: Option<&'static str>,
    pub one_reason: Option<&'static str>,
}

/// Things that happened at least once (the checker's `sometimes`
/// properties: proof that the interesting paths are explored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Seen {
    pub readopted: bool,
    pub stale_refused: bool,
    pub husk_respawned: bool,
    pub window_kill: bool,
    pub freeze_survived: bool,
}

/// One state of the composed system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    pub now: Ms,
    pub shellside: HashedMachine,
    pub child_alive: bool,
    /// The shellper is frozen until then.
    pub frozen_until: Option<Ms>,
    /// Thawed, and the machine has not ticked since.
    pub stall_pending: bool,
    /// When the enforcer last ticked the machine (the model's own count).
    pub last_tick: Ms,
    pub ladder: Option<Ladder>,
    pub exited: Option<Ms>,
    pub hook_fired: Option<TerminateReason>,
    pub reasons_returned: u8,
    pub terminated_frames: u8,
    pub towers: Vec<Tower>,
    pub conns: Vec<Conn>,
    pub budget: Budget,
    /// No deadline may terminate the session before this instant (the
    /// SPEC's rules applied to the frames the shellper accepted).
    pub earliest: Ms,
    /// A live session must be terminating by this instant.
    pub latest: Ms,
    pub violations: Violations,
    /// Not part of the state's identity: see [`Untracked`].
    pub seen: Untracked<Seen>,
}

/// A value carried along a path but left out of the state's identity, so
/// that it never keeps two otherwise equal states apart. Used for the
/// `sometimes` flags only: no `always` property reads them, so merging is
/// sound for those; at worst an example is found later or not at all (the
/// test then fails, it does not pass wrongly).
#[derive(Debug, Clone, Default)]
pub struct Untracked<T>(pub T);

impl<T> PartialEq for Untracked<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Untracked<T> {}
impl<T> Hash for Untracked<T> {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// The machine as state: compared and hashed through the wrapper.
#[derive(Debug, Clone)]
pub struct HashedMachine(pub Shellside);

impl PartialEq for HashedMachine {
    fn eq(&self, other: &Self) -> bool {
        faulty::decisive_state(self.0.machine()) == faulty::decisive_state(other.0.machine())
    }
}
impl Eq for HashedMachine {}
impl Hash for HashedMachine {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// One step of the composed system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Time moves to the next scheduled instant.
    Advance,
    /// The enforcer ticks the machine (a deadline or heartbeat is due).
    Tick,
    /// The shellper handles the next frame of a connection.
    ShellperRecv(usize),
    /// The shellper sees a connection's EOF.
    ShellperEof(usize),
    /// A Tower handles the next frame of its connection.
    TowerRecv(usize),
    /// A Tower sees its connection's EOF.
    TowerEof(usize),
    /// A Tower connects and sends ACQUIRE; `stale_first`: a stale RENEW
    /// with its old epoch goes first.
    Start {
        tower: usize,
        stale_first: bool,
    },
    /// A holding Tower's renewal is due.
    SendRenew(usize),
    /// A Tower sends a request (budgeted).
    Request(usize, Req),
    Stall(usize),
    Resume(usize),
    Crash(usize),
    Break(usize),
    ChildExit,
    Sigterm,
    Freeze,
    /// The kill ladder is done: TERMINATED, then the shellper exits.
    LadderDone,
}

/// The optional requests of a Tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Req {
    ReleaseTerminate,
    Detach,
    Signal,
    Spawn,
}

/// The property names, for the tests.
pub const NO_FALSE_KILL: &str = "no false kill";
pub const BOUNDED_LIFETIME: &str = "bounded lifetime";
pub const FENCING: &str = "fencing";
pub const ONE_HOLDER: &str = "at most one holder";
pub const HUSK: &str = "a husk is a session like any other";
pub const ONE_REASON: &str = "one termination reason, reported once";
/// Every `always` property.
pub const PROPERTIES: [&str; 6] = [
    NO_FALSE_KILL,
    BOUNDED_LIFETIME,
    FENCING,
    ONE_HOLDER,
    HUSK,
    ONE_REASON,
];

/// The model: a setup and the fixed instant its clock starts at.
#[derive(Debug, Clone)]
pub struct LeaseModel {
    pub setup: Setup,
    /// Check only this property (and no `sometimes` one), so that the
    /// checker stops at its first counterexample.
    pub only: Option<&'static str>,
    base: Instant,
    token: Token,
}

/// The lease as far as fencing and husks are concerned: everything but the
/// counters.
#[derive(Debug, PartialEq, Eq)]
struct View {
    phase: WirePhase,
    epoch: u64,
    holder: Option<ConnId>,
    deadline: Option<Instant>,
    expires_in: Option<Duration>,
    kill_in: Option<Duration>,
    claim_in: Option<Duration>,
    reason: Option<TerminateReason>,
}

fn conn_id(c: usize) -> ConnId {
    c as ConnId + 1
}

fn conn_index(id: ConnId) -> usize {
    (id - 1) as usize
}

fn first(slot: &mut Option<&'static str>, what: &'static str) {
    if slot.is_none() {
        *slot = Some(what);
    }
}

impl LeaseModel {
    pub fn new(setup: Setup) -> Self {
        LeaseModel {
            setup,
            only: None,
            base: Instant::now(),
            token: Token::from_bytes([7; 32]),
        }
    }

    fn at(&self, t: Ms) -> Instant {
        self.base + Duration::from_millis(t)
    }

    fn ms(&self, i: Instant) -> Ms {
        i.saturating_duration_since(self.base).as_millis() as Ms
    }

    fn stall_threshold(&self) -> Ms {
        self.setup.lease_config().stall_threshold.as_millis() as Ms
    }

    fn view(&self, s: &State) -> View {
        let m = &s.shellside.0;
        let snap = m.snapshot(self.at(s.now));
        View {
            phase: snap.phase,
            epoch: m.machine().epoch(),
            holder: snap.holder,
            deadline: m.next_deadline(),
            expires_in: snap.expires_in,
            kill_in: snap.kill_in,
            claim_in: snap.claim_in,
            reason: snap.terminate_reason,
        }
    }

    fn shellper_runs(&self, s: &State) -> bool {
        s.exited.is_none() && s.frozen_until.is_none()
    }

    fn tower_runs(&self, s: &State, t: usize, c: usize) -> bool {
        let tw = &s.towers[t];
        !tw.stalled && tw.conn == Some(c)
    }

    /// The instants at which something must happen, and whether one of
    /// them is now (then time may not advance).
    fn schedule(&self, s: &State) -> (bool, Ms) {
        let mut due = false;
        let mut next = self.setup.horizon;
        let mut at = |t: Ms| {
            if t <= s.now {
                due = true;
            } else {
                next = next.min(t);
            }
        };
        let lat = self.setup.latency;
        if let Some(f) = s.frozen_until {
            at(f);
        }
        if self.shellper_runs(s) {
            if let Some(d) = s.shellside.0.next_deadline() {
                at(self.ms(d));
            }
            if let Some(l) = s.ladder {
                at(l.ends);
            }
            for c in &s.conns {
                if c.shellper_saw_eof {
                    continue;
                }
                if let Some((_, by)) = c.up.front() {
                    at(*by);
                } else if let Some(t) = c.tower_closed {
                    at(t + lat);
                }
            }
        }
        for (ci, c) in s.conns.iter().enumerate() {
            if !self.tower_runs(s, c.tower, ci) {
                continue;
            }
            if let Some((_, by)) = c.down.front() {
                at(*by);
            } else if let Some(t) = c.shellper_closed
                && !c.tower_saw_eof
            {
                at(t + lat);
            }
        }
        for tw in &s.towers {
            if let TowerPhase::Holding {
                renew_at: Some(r), ..
            } = tw.phase
                && !tw.stalled
            {
                at(r);
            }
        }
        (due, next)
    }

    fn send_down(&self, s: &mut State, c: usize, f: DownFrame) {
        let by = s.now + self.setup.latency;
        let conn = &mut s.conns[c];
        if conn.open() {
            conn.down.push_back((f, by));
        }
    }

    fn send_up(&self, s: &mut State, c: usize, f: Up) {
        let by = s.now + self.setup.latency;
        let conn = &mut s.conns[c];
        if conn.open() {
            conn.up.push_back((f, by));
        }
    }

    /// The enforcer's termination hook: at most once, starts the ladder.
    fn fire(&self, s: &mut State, reason: TerminateReason, holder: Option<ConnId>) {
        s.reasons_returned = s.reasons_returned.saturating_add(1);
        if s.reasons_returned > 1 {
            first(
                &mut s.violations.one_reason,
                "the machine returned a second termination reason",
            );
        }
        if s.hook_fired.is_some() {
            return;
        }
        s.hook_fired = Some(reason);
        if reason == TerminateReason::ChildExitedUnheld {
            first(
                &mut s.violations.husk,
                "a husk was ended because its child exited",
            );
        }
        if matches!(
            reason,
            TerminateReason::ClaimExpired | TerminateReason::WindowExpired
        ) || reason == TerminateReason::ChildExitedUnheld
        {
            if s.now < s.earliest {
                first(
                    &mut s.violations.no_false_kill,
                    "a deadline killed before the earliest instant the accepted frames allow",
                );
            }
            let epoch = s.shellside.0.epoch();
            let healthy = s.towers.iter().any(|t| {
                matches!(t.phase, TowerPhase::Holding { epoch: e, healthy: true, .. } if e == epoch)
                    && !t.stalled
                    && t.conn.is_some_and(|c| s.conns[c].open())
            });
            if healthy {
                first(
                    &mut s.violations.no_false_kill,
                    "killed while a Tower held the lease and renewed on schedule",
                );
            }
            if reason == TerminateReason::WindowExpired {
                s.seen.0.window_kill = true;
            }
        }
        let grace = if s.child_alive { self.setup.grace } else { 0 };
        s.ladder = Some(Ladder {
            started: s.now,
            ends: s.now + grace,
            reason,
            holder: holder.map(conn_index),
        });
    }

    fn holder_now(&self, s: &State) -> Option<ConnId> {
        s.shellside.0.snapshot(self.at(s.now)).holder
    }

    /// The SPEC's bounds after an accepted frame: both move to `at`.
    fn bound(s: &mut State, at: Ms) {
        s.earliest = at;
        s.latest = at;
    }

    fn child_exit(&self, s: &mut State) {
        let before = self.view(s);
        s.child_alive = false;
        let holder = self.holder_now(s);
        let r = s.shellside.0.child_exited();
        if self.view(s) != before {
            first(
                &mut s.violations.husk,
                "the child's exit changed the lease (phase, epoch, holder or deadlines)",
            );
        }
        for c in 0..s.conns.len() {
            self.send_down(s, c, DownFrame::Exit);
        }
        if let Some(r) = r {
            self.fire(s, r, holder);
        }
    }

    fn shellper_recv(&self, s: &mut State, c: usize) {
        let Some((frame, _)) = s.conns[c].up.pop_front() else {
            return;
        };
        let now = self.at(s.now);
        let id = conn_id(c);
        let before = self.view(s);
        let epoch_now = s.shellside.0.epoch();
        let ttl = self.setup.ttl;
        let window = self.setup.window;
        match frame {
            Up::Acquire => match s.shellside.0.acquire(
                now,
                id,
                &self.token,
                HolderInfo {
                    name: "model".into(),
                    pid: 1,
                },
            ) {
                Ok(g) => {
                    Self::bound(s, s.now + ttl + window);
                    self.send_down(s, c, DownFrame::Grant { epoch: g.epoch });
                    if let Some((old, _)) = g.revoked {
                        self.send_down(s, conn_index(old), DownFrame::Revoked);
                    }
                }
                Err(_) => self.send_down(s, c, DownFrame::Error { to_acquire: true }),
            },
            Up::Renew { epoch } => {
                let r = s.shellside.0.renew(now, id, epoch);
                if epoch != epoch_now {
                    self.check_fenced(s, &before, r.is_ok(), "a stale RENEW");
                }
                match r {
                    Ok(_) => {
                        Self::bound(s, s.now + ttl + window);
                        self.send_down(s, c, DownFrame::Renewed { epoch });
                    }
                    Err(_) => self.send_down(s, c, DownFrame::Error { to_acquire: false }),
                }
            }
            Up::Release { epoch, terminate } => {
                let mode = if terminate {
                    ReleaseMode::Terminate
                } else {
                    ReleaseMode::Detach { hold_ms: 0 }
                };
                let r = s.shellside.0.release(now, id, epoch, &mode);
                if epoch != epoch_now {
                    self.check_fenced(s, &before, r.is_ok(), "a stale RELEASE");
                }
                match r {
                    Ok(Released::Terminate) => {
                        let reason = s
                            .shellside
                            .0
                            .snapshot(now)
                            .terminate_reason
                            .unwrap_or(TerminateReason::Requested);
                        self.fire(s, reason, Some(id));
                    }
                    Ok(Released::Detached { kill_in }) => {
                        Self::bound(s, s.now + kill_in.as_millis() as Ms);
                        self.send_down(s, c, DownFrame::Released);
                    }
                    Err(_) => self.send_down(s, c, DownFrame::Error { to_acquire: false }),
                }
            }
            Up::Signal { believed } | Up::Spawn { believed } => {
                let spawn = matches!(frame, Up::Spawn { .. });
                let allowed = s.shellside.0.is_holder(id);
                let child_before = s.child_alive;
                if allowed {
                    if spawn {
                        if !s.child_alive {
                            s.seen.0.husk_respawned = true;
                        }
                        s.child_alive = true;
                        s.shellside.0.child_started();
                    } else if s.child_alive {
                        // SIGKILL to the child: it exits.
                        self.child_exit(s);
                    }
                } else {
                    self.send_down(s, c, DownFrame::Error { to_acquire: false });
                }
                if believed != epoch_now {
                    let changed = s.child_alive != child_before;
                    self.check_fenced(
                        s,
                        &before,
                        allowed || changed,
                        if spawn {
                            "a stale SPAWN"
                        } else {
                            "a stale SIGNAL"
                        },
                    );
                }
            }
        }
    }

    /// A request from a stale sender must be refused and change nothing.
    fn check_fenced(&self, s: &mut State, before: &View, accepted: bool, what: &'static str) {
        let after = self.view(s);
        if accepted || after != *before {
            first(&mut s.violations.fencing, what);
        } else {
            s.seen.0.stale_refused = true;
        }
    }

    fn shellper_eof(&self, s: &mut State, c: usize) {
        let id = conn_id(c);
        let snap = s.shellside.0.snapshot(self.at(s.now));
        let holder = snap.holder;
        if snap.phase == WirePhase::Held && snap.holder == Some(id) {
            Self::bound(s, s.now + self.setup.window);
        }
        let conn = &mut s.conns[c];
        conn.shellper_saw_eof = true;
        conn.shellper_closed.get_or_insert(s.now);
        conn.down.clear();
        if let Some(r) = s.shellside.0.disconnected(self.at(s.now), id) {
            self.fire(s, r, holder);
        }
    }

    fn tick(&self, s: &mut State) {
        let stalled = s.now.saturating_sub(s.last_tick) > self.stall_threshold();
        s.last_tick = s.now;
        let holder = self.holder_now(s);
        let r = s.shellside.0.tick(self.at(s.now));
        if stalled && s.stall_pending {
            // The shellper was frozen: a passed deadline becomes a fresh
            // period from now (SPEC §8.5), which may push the bound out.
            let fresh = match s.shellside.0.phase() {
                WirePhase::Held => self.setup.ttl + self.setup.window,
                WirePhase::Lapsed => self.setup.window,
                WirePhase::Unclaimed => self.setup.claim,
                _ => 0,
            };
            s.latest = s.latest.max(s.now + fresh);
            if r.is_none() {
                s.seen.0.freeze_survived = true;
            }
        }
        s.stall_pending = false;
        if let Some(r) = r {
            self.fire(s, r, holder);
        }
    }

    fn ladder_done(&self, s: &mut State) {
        let Some(l) = s.ladder else { return };
        s.shellside.0.exited();
        s.child_alive = false;
        if let Some(h) = l.holder {
            self.send_down(s, h, DownFrame::Terminated(l.reason));
        }
        s.exited = Some(s.now);
        for c in &mut s.conns {
            c.up.clear();
            c.shellper_closed.get_or_insert(s.now);
        }
    }

    fn tower_recv(&self, s: &mut State, c: usize) {
        let Some((frame, _)) = s.conns[c].down.pop_front() else {
            return;
        };
        let t = s.conns[c].tower;
        let now = s.now;
        let renew = self.setup.renew;
        let phase = s.towers[t].phase.clone();
        let next = match (frame, phase) {
            (DownFrame::Grant { epoch }, TowerPhase::Acquiring) => {
                let twin = s.towers.iter().enumerate().any(|(i, o)| {
                    i != t
                        && matches!(o.phase, TowerPhase::Holding { epoch: e, .. } if e == epoch)
                        && o.conn.is_some_and(|oc| s.conns[oc].open())
                });
                if twin {
                    first(
                        &mut s.violations.one_holder,
                        "two Towers were granted the same epoch",
                    );
                }
                if epoch > 1 {
                    s.seen.0.readopted = true;
                }
                s.towers[t].last_epoch = Some(epoch);
                Some(TowerPhase::Holding {
                    epoch,
                    renew_at: Some(now + renew),
                    healthy: !s.towers[t].stalled_since_start,
                })
            }
            (
                DownFrame::Renewed { epoch },
                TowerPhase::Holding {
                    epoch: e, healthy, ..
                },
            ) if e == epoch => Some(TowerPhase::Holding {
                epoch,
                renew_at: Some(now + renew),
                healthy,
            }),
            (
                DownFrame::Revoked | DownFrame::Error { .. } | DownFrame::Released,
                TowerPhase::Holding { epoch, .. },
            ) => Some(TowerPhase::Lost { epoch: Some(epoch) }),
            (DownFrame::Error { to_acquire: true }, TowerPhase::Acquiring) => {
                Some(TowerPhase::Lost {
                    epoch: s.towers[t].last_epoch,
                })
            }
            (DownFrame::Terminated(r), _) => {
                s.terminated_frames = s.terminated_frames.saturating_add(1);
                if s.terminated_frames > 1 {
                    first(&mut s.violations.one_reason, "TERMINATED sent twice");
                }
                if s.hook_fired != Some(r) {
                    first(
                        &mut s.violations.one_reason,
                        "TERMINATED carries another reason than the one acted on",
                    );
                }
                Some(TowerPhase::Done)
            }
            _ => None,
        };
        if let Some(p) = next {
            s.towers[t].phase = p;
        }
    }

    fn tower_eof(&self, s: &mut State, c: usize) {
        let t = s.conns[c].tower;
        s.conns[c].tower_saw_eof = true;
        s.conns[c].tower_closed.get_or_insert(s.now);
        let tw = &mut s.towers[t];
        tw.conn = None;
        if tw.phase != TowerPhase::Done {
            tw.phase = TowerPhase::Down;
        }
    }

    fn start(&self, s: &mut State, t: usize, stale_first: bool) {
        s.budget.starts -= 1;
        if s.exited.is_some() {
            // Nothing to connect to: the socket is gone.
            s.towers[t].phase = TowerPhase::Done;
            return;
        }
        s.conns.push(Conn {
            tower: t,
            up: VecDeque::new(),
            down: VecDeque::new(),
            tower_closed: None,
            shellper_closed: None,
            shellper_saw_eof: false,
            tower_saw_eof: false,
        });
        let c = s.conns.len() - 1;
        s.towers[t].conn = Some(c);
        s.towers[t].phase = TowerPhase::Acquiring;
        s.towers[t].stalled_since_start = false;
        if !s.child_alive {
            // The retained EXIT follows WELCOME and REPLAY.
            self.send_down(s, c, DownFrame::Exit);
        }
        if stale_first && let Some(e) = s.towers[t].last_epoch {
            s.budget.requests -= 1;
            self.send_up(s, c, Up::Renew { epoch: e });
        }
        self.send_up(s, c, Up::Acquire);
    }

    fn request(&self, s: &mut State, t: usize, r: Req) {
        s.budget.requests -= 1;
        let Some(c) = s.towers[t].conn else { return };
        let (epoch, holding) = match s.towers[t].phase {
            TowerPhase::Holding { epoch, .. } => (epoch, true),
            TowerPhase::Lost { epoch: Some(e) } => (e, false),
            _ => return,
        };
        let frame = match r {
            Req::ReleaseTerminate => Up::Release {
                epoch,
                terminate: true,
            },
            Req::Detach => Up::Release {
                epoch,
                terminate: false,
            },
            Req::Signal => Up::Signal { believed: epoch },
            Req::Spawn => Up::Spawn { believed: epoch },
        };
        if holding && matches!(r, Req::ReleaseTerminate | Req::Detach) {
            // Having released, the Tower no longer holds.
            s.towers[t].phase = TowerPhase::Lost { epoch: Some(epoch) };
        }
        self.send_up(s, c, frame);
    }

    fn crash(&self, s: &mut State, t: usize) {
        s.budget.faults -= 1;
        let tw = &mut s.towers[t];
        tw.phase = TowerPhase::Down;
        tw.stalled = false;
        if let Some(c) = tw.conn.take() {
            let conn = &mut s.conns[c];
            conn.tower_closed.get_or_insert(s.now);
            conn.down.clear();
            conn.tower_saw_eof = true;
        }
    }

    fn break_conn(&self, s: &mut State, c: usize) {
        s.budget.faults -= 1;
        let conn = &mut s.conns[c];
        conn.up.clear();
        conn.down.clear();
        conn.tower_closed.get_or_insert(s.now);
        conn.shellper_closed.get_or_insert(s.now);
    }

    fn advance(&self, s: &mut State) {
        let (_, next) = self.schedule(s);
        s.now = next;
        if s.frozen_until.is_some_and(|f| f <= s.now) {
            s.frozen_until = None;
            s.stall_pending = true;
        }
    }
}

impl Model for LeaseModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let machine = LeaseMachine::new(
            self.setup.lease_config(),
            Mode::Leased(self.token.clone()),
            self.at(0),
        );
        vec![State {
            now: 0,
            shellside: HashedMachine(Shellside::new(machine, self.setup.fault)),
            child_alive: true,
            frozen_until: None,
            stall_pending: false,
            last_tick: 0,
            ladder: None,
            exited: None,
            hook_fired: None,
            reasons_returned: 0,
            terminated_frames: 0,
            towers: vec![
                Tower {
                    phase: TowerPhase::Down,
                    conn: None,
                    stalled: false,
                    stalled_since_start: false,
                    last_epoch: None,
                };
                self.setup.towers
            ],
            conns: Vec::new(),
            budget: self.setup.budget,
            earliest: self.setup.claim,
            latest: self.setup.claim,
            violations: Violations::default(),
            seen: Untracked::default(),
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        let runs = self.shellper_runs(s);
        let (due, _) = self.schedule(s);
        if !due && s.now < self.setup.horizon {
            out.push(Action::Advance);
        }
        // What the system does on its own (deliveries, ticks, renewals,
        // the end of the ladder) may happen in any order at an instant; the
        // environment's events (faults, starts, requests, the child's exit,
        // signals) happen between instants, once nothing is due. Deliveries
        // may still be late (up to `latency`), so a fault can fall between a
        // frame's sending and its handling.
        let env = !due;
        // Faults may also strike while frames are in flight: between a
        // frame's sending and its handling.
        let in_flight = s
            .conns
            .iter()
            .any(|c| !c.up.is_empty() || !c.down.is_empty());
        let faults = (env || in_flight) && s.budget.faults > 0;
        if runs {
            if s.shellside
                .0
                .next_deadline()
                .is_some_and(|d| self.ms(d) <= s.now)
            {
                out.push(Action::Tick);
            }
            for (i, c) in s.conns.iter().enumerate() {
                if c.shellper_saw_eof {
                    continue;
                }
                if !c.up.is_empty() {
                    out.push(Action::ShellperRecv(i));
                } else if c.tower_closed.is_some() {
                    out.push(Action::ShellperEof(i));
                }
            }
            if s.ladder.is_some_and(|l| l.ends <= s.now) {
                out.push(Action::LadderDone);
            }
            if env && s.budget.sigterms > 0 {
                // Also during the ladder: an operator's second thoughts.
                out.push(Action::Sigterm);
            }
            if env && s.ladder.is_none() {
                if s.child_alive && s.budget.child_exits > 0 {
                    out.push(Action::ChildExit);
                }
                if s.budget.freezes > 0 {
                    out.push(Action::Freeze);
                }
            }
        }
        for (i, c) in s.conns.iter().enumerate() {
            if !self.tower_runs(s, c.tower, i) {
                continue;
            }
            if !c.down.is_empty() {
                out.push(Action::TowerRecv(i));
            } else if c.shellper_closed.is_some() && !c.tower_saw_eof {
                out.push(Action::TowerEof(i));
            }
            if faults && c.open() {
                out.push(Action::Break(i));
            }
        }
        for (t, tw) in s.towers.iter().enumerate() {
            if let TowerPhase::Holding {
                renew_at: Some(r), ..
            } = tw.phase
                && r <= s.now
                && !tw.stalled
            {
                out.push(Action::SendRenew(t));
            }
            if tw.stalled {
                if env {
                    out.push(Action::Resume(t));
                }
                if faults {
                    out.push(Action::Crash(t));
                }
                continue;
            }
            if faults && !matches!(tw.phase, TowerPhase::Down | TowerPhase::Done) {
                out.push(Action::Stall(t));
                out.push(Action::Crash(t));
            }
            if !env {
                continue;
            }
            match &tw.phase {
                TowerPhase::Down if s.budget.starts > 0 => {
                    out.push(Action::Start {
                        tower: t,
                        stale_first: false,
                    });
                    if tw.last_epoch.is_some() && s.budget.requests > 0 {
                        out.push(Action::Start {
                            tower: t,
                            stale_first: true,
                        });
                    }
                }
                TowerPhase::Holding { .. } if s.budget.requests > 0 => {
                    // SIGNAL (SIGKILL) to a live child, SPAWN in a husk.
                    let child = if s.child_alive {
                        Req::Signal
                    } else {
                        Req::Spawn
                    };
                    for r in [Req::ReleaseTerminate, Req::Detach, child] {
                        out.push(Action::Request(t, r));
                    }
                }
                TowerPhase::Lost { epoch: Some(_) } if s.budget.requests > 0 => {
                    let child = if s.child_alive {
                        Req::Signal
                    } else {
                        Req::Spawn
                    };
                    for r in [Req::ReleaseTerminate, child] {
                        out.push(Action::Request(t, r));
                    }
                }
                _ => {}
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Advance => self.advance(&mut s),
            Action::Tick => self.tick(&mut s),
            Action::ShellperRecv(c) => self.shellper_recv(&mut s, c),
            Action::ShellperEof(c) => self.shellper_eof(&mut s, c),
            Action::TowerRecv(c) => self.tower_recv(&mut s, c),
            Action::TowerEof(c) => self.tower_eof(&mut s, c),
            Action::Start { tower, stale_first } => self.start(&mut s, tower, stale_first),
            Action::SendRenew(t) => {
                if let TowerPhase::Holding {
                    epoch,
                    ref mut renew_at,
                    ..
                } = s.towers[t].phase
                {
                    *renew_at = None;
                    if let Some(c) = s.towers[t].conn {
                        self.send_up(&mut s, c, Up::Renew { epoch });
                    }
                }
            }
            Action::Request(t, r) => self.request(&mut s, t, r),
            Action::Stall(t) => {
                s.budget.faults -= 1;
                let tw = &mut s.towers[t];
                tw.stalled = true;
                tw.stalled_since_start = true;
                if let TowerPhase::Holding {
                    ref mut healthy, ..
                } = tw.phase
                {
                    *healthy = false;
                }
            }
            Action::Resume(t) => s.towers[t].stalled = false,
            Action::Crash(t) => self.crash(&mut s, t),
            Action::Break(c) => self.break_conn(&mut s, c),
            Action::ChildExit => {
                s.budget.child_exits -= 1;
                self.child_exit(&mut s);
            }
            Action::Sigterm => {
                s.budget.sigterms -= 1;
                let holder = self.holder_now(&s);
                if let Some(r) = s.shellside.0.signalled() {
                    self.fire(&mut s, r, holder);
                }
            }
            Action::Freeze => {
                s.budget.freezes -= 1;
                s.frozen_until = Some(s.now + self.stall_threshold() + self.setup.ttl / 3);
            }
            Action::LadderDone => self.ladder_done(&mut s),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut all = self.all_properties();
        if let Some(only) = self.only {
            all.retain(|p| p.name == only);
        }
        all
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.now <= self.setup.horizon
    }
}

impl LeaseModel {
    /// Only `property` is checked (see [`LeaseModel::only`]).
    pub fn only(mut self, property: &'static str) -> Self {
        self.only = Some(property);
        self
    }

    fn all_properties(&self) -> Vec<Property<Self>> {
        let b = self.setup.budget;
        let mut v = vec![
            Property::always(NO_FALSE_KILL, |_, s: &State| {
                s.violations.no_false_kill.is_none()
            }),
            Property::always(BOUNDED_LIFETIME, |m: &LeaseModel, s: &State| {
                if s.exited.is_some() {
                    return true;
                }
                match s.ladder {
                    // The tree is dead and reported by the end of the grace.
                    Some(l) => s.now <= l.started + m.setup.grace,
                    // The kill starts by the last bound the frames allow,
                    // unless the shellper itself was frozen past it.
                    None => s.now <= s.latest || s.frozen_until.is_some() || s.stall_pending,
                }
            }),
            Property::always(FENCING, |_, s: &State| s.violations.fencing.is_none()),
            Property::always(ONE_HOLDER, |_, s: &State| {
                if s.violations.one_holder.is_some() {
                    return false;
                }
                let holders = s.towers.iter().filter_map(|t| match t.phase {
                    TowerPhase::Holding { epoch, .. }
                        if t.conn.is_some_and(|c| s.conns[c].open()) =>
                    {
                        Some(epoch)
                    }
                    _ => None,
                });
                let mut epochs: Vec<u64> = holders.collect();
                let n = epochs.len();
                epochs.sort_unstable();
                epochs.dedup();
                epochs.len() == n
            }),
            Property::always(HUSK, |_, s: &State| s.violations.husk.is_none()),
            Property::always(ONE_REASON, |_, s: &State| s.violations.one_reason.is_none()),
        ];
        let mut sometimes = |on: bool, name: &'static str, f: fn(&LeaseModel, &State) -> bool| {
            if on {
                v.push(Property::sometimes(name, f));
            }
        };
        sometimes(
            b.starts > 1 && b.faults > 0,
            "a Tower re-adopts with a new epoch",
            |_, s| s.seen.0.readopted,
        );
        sometimes(
            b.starts > 1 && (b.requests > 0 || b.faults > 0),
            "a stale request is refused",
            |_, s| s.seen.0.stale_refused,
        );
        sometimes(
            b.requests > 0 && b.child_exits > 0,
            "a husk is restarted by SPAWN",
            |_, s| s.seen.0.husk_respawned,
        );
        sometimes(b.faults > 0, "the window expires and kills", |_, s| {
            s.seen.0.window_kill
        });
        sometimes(
            b.freezes > 0,
            "a frozen shellper survives its stall",
            |_, s| s.seen.0.freeze_survived,
        );
        v
    }
}
