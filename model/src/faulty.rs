//! The real [`LeaseMachine`] behind a wrapper that can break it on purpose.
//!
//! Every broken variant the model check must catch is made here, by
//! corrupting what goes into the machine or what comes out of it; the
//! machine itself is never copied and never changed. With [`Fault::None`] the
//! wrapper is a pass-through: each method calls the machine's method of the
//! same name with the same arguments and returns its result.
//!
//! Why a wrapper and not a `cfg(feature)` fault hook inside `lease.rs`: the
//! product code stays free of test-only branches (a feature flag compiled by
//! accident would ship a machine that accepts stale epochs), and every fault
//! below is expressible at the machine's boundary, which is also where the
//! enforcer (the shellper's event loop) meets it.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use shellper_protocol::lease::{
    ConnId, Granted, LapseCause, LeaseMachine, Reject, Released, Snapshot,
};
use shellper_protocol::msg::{HolderInfo, ReleaseMode, TerminateReason, WirePhase};
use shellper_protocol::token::Token;

/// A deliberate defect, for showing that each property can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The real machine, unchanged.
    None,
    /// RENEW and RELEASE are run with the current epoch whatever epoch they
    /// carried. Not enough to break fencing here: a stale Tower's frames
    /// come from a connection that no longer holds, and the holder check
    /// refuses them too (the epoch is a second line of defence).
    AcceptStaleEpoch,
    /// No fencing at all: RENEW, RELEASE, SIGNAL and SPAWN are taken as the
    /// holder's, whatever connection and epoch they come with (fencing).
    NoFencing,
    /// No epochs at all: every GRANT says epoch 1 and every epoch is taken
    /// as current, so two Towers believe they hold the same lease (at most
    /// one holder).
    FrozenEpoch,
    /// A silent lapse kills at once (at the TTL) instead of after the window
    /// (no false kill: the window is the holder's chance to come back).
    KillAtTtl,
    /// RENEW is answered but does not extend the lease: a Tower renewing on
    /// schedule is killed (no false kill).
    IgnoreRenewals,
    /// The end of the window is never acted on: the session outlives every
    /// holder (bounded lifetime).
    IgnoreWindowExpiry,
    /// The rule of earlier versions: a child exit while nobody holds the
    /// lease ends the session at once (a husk is a session like any other).
    HuskEndsAtOnce,
    /// A signal during the kill ladder returns a second reason (one
    /// termination reason, reported once).
    ReportTwice,
}

/// The lease machine as the model's shellper drives it.
#[derive(Debug, Clone)]
pub struct Shellside {
    machine: LeaseMachine,
    fault: Fault,
}

impl Hash for Shellside {
    /// The machine's state, through its `Debug` form (`LeaseMachine` does
    /// not implement `Hash`: its token must not get a derived comparison),
    /// which prints every field: deadlines as `Instant`s, the epoch, the
    /// redacted token (the same in every state of a run). All but the
    /// counters, the last field: they only count (STATUS), no decision
    /// reads them, and two states that differ only in them behave alike;
    /// leaving them out lets the checker merge such states.
    fn hash<H: Hasher>(&self, state: &mut H) {
        decisive_state(&self.machine).hash(state);
        self.fault.hash(state);
    }
}

/// `machine`'s `Debug` form without its counters (see `Hash`).
pub fn decisive_state(machine: &LeaseMachine) -> String {
    let mut d = format!("{machine:?}");
    if let Some(i) = d.rfind(", counters: ") {
        d.truncate(i);
    }
    d
}

impl Shellside {
    pub fn new(machine: LeaseMachine, fault: Fault) -> Self {
        Shellside { machine, fault }
    }

    pub fn machine(&self) -> &LeaseMachine {
        &self.machine
    }

    /// The epoch the machine reports (always 1 under [`Fault::FrozenEpoch`]
    /// once granted).
    pub fn epoch(&self) -> u64 {
        match self.fault {
            Fault::FrozenEpoch => self.machine.epoch().min(1),
            _ => self.machine.epoch(),
        }
    }

    /// The epoch a request is run with.
    fn epoch_in(&self, epoch: u64) -> u64 {
        match self.fault {
            Fault::AcceptStaleEpoch | Fault::FrozenEpoch | Fault::NoFencing => self.machine.epoch(),
            _ => epoch,
        }
    }

    pub fn phase(&self) -> WirePhase {
        self.machine.phase()
    }

    pub fn is_holder(&self, conn: ConnId) -> bool {
        self.fault == Fault::NoFencing || self.machine.is_holder(conn)
    }

    /// The connection a request is run as.
    fn conn_in(&self, now: Instant, conn: ConnId) -> ConnId {
        match self.fault {
            Fault::NoFencing => self.machine.snapshot(now).holder.unwrap_or(conn),
            _ => conn,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.machine.next_deadline()
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        self.machine.snapshot(now)
    }

    pub fn acquire(
        &mut self,
        now: Instant,
        conn: ConnId,
        token: &Token,
        info: HolderInfo,
    ) -> Result<Granted, Reject> {
        let mut g = self.machine.acquire(now, conn, token, info)?;
        if self.fault == Fault::FrozenEpoch {
            g.epoch = 1;
            g.revoked = g.revoked.map(|(c, _)| (c, 1));
        }
        Ok(g)
    }

    pub fn renew(&mut self, now: Instant, conn: ConnId, epoch: u64) -> Result<Duration, Reject> {
        let epoch = self.epoch_in(epoch);
        let conn = self.conn_in(now, conn);
        if self.fault == Fault::IgnoreRenewals
            && self.machine.is_holder(conn)
            && epoch == self.machine.epoch()
        {
            return Ok(self.machine.config().ttl);
        }
        self.machine.renew(now, conn, epoch)
    }

    pub fn release(
        &mut self,
        now: Instant,
        conn: ConnId,
        epoch: u64,
        mode: &ReleaseMode,
    ) -> Result<Released, Reject> {
        let epoch = self.epoch_in(epoch);
        let conn = self.conn_in(now, conn);
        self.machine.release(now, conn, epoch, mode)
    }

    pub fn disconnected(&mut self, now: Instant, conn: ConnId) -> Option<TerminateReason> {
        self.machine.disconnected(now, conn)
    }

    pub fn signalled(&mut self) -> Option<TerminateReason> {
        let terminating = self.machine.phase() == WirePhase::Terminating;
        let r = self.machine.signalled();
        if self.fault == Fault::ReportTwice && terminating {
            return Some(TerminateReason::Signal);
        }
        r
    }

    /// The child exited. The real machine decides nothing here (a husk is
    /// a session like any other), hence `None` unless broken.
    pub fn child_exited(&mut self) -> Option<TerminateReason> {
        self.machine.child_exited();
        if self.fault == Fault::HuskEndsAtOnce && self.machine.holder().is_none() {
            return self
                .machine
                .signalled()
                .map(|_| TerminateReason::ChildExitedUnheld);
        }
        None
    }

    pub fn child_started(&mut self) {
        self.machine.child_started();
    }

    pub fn exited(&mut self) {
        self.machine.exited();
    }

    pub fn tick(&mut self, now: Instant) -> Option<TerminateReason> {
        let r = self.machine.tick(now);
        match self.fault {
            Fault::KillAtTtl
                if r.is_none()
                    && self.machine.snapshot(now).lapse_cause == Some(LapseCause::Silent) =>
            {
                self.machine
                    .signalled()
                    .map(|_| TerminateReason::WindowExpired)
            }
            Fault::IgnoreWindowExpiry if r == Some(TerminateReason::WindowExpired) => None,
            _ => r,
        }
    }
}
