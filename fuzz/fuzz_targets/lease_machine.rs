//! The lease machine driven by fuzzed event sequences (acquire with a good or
//! bad token, renew with any epoch, release, disconnect, child exit and
//! restart, signals, time advances with a healthy driver ticking at every
//! deadline, late ticks below the stall threshold, and stalls), checking
//! after every event the invariants the shellper relies on:
//!
//! 1. no false kill: a deadline never terminates the machine before the
//!    earliest instant the events allow (claim deadline, last grant or
//!    renewal + TTL + window, holder gone + window, detach + hold);
//! 2. no immortality: a tick that is not a stall at or after the latest such
//!    instant terminates it (so a healthy driver kills exactly on time);
//! 3. fencing: epochs only grow, every grant starts a new epoch, a renewal
//!    succeeds only with the current epoch from the holder, a bad token never
//!    grants and is counted, another holder is told it was revoked;
//! 4. a stall never kills;
//! 5. a termination reason is reported exactly once, and afterwards every
//!    request is refused and no deadline is left;
//! 6. the snapshot agrees with the phase, and `next_deadline` is never more
//!    than one heartbeat after the last tick.
//!
//! The input is a byte string: a few header bytes pick the mode and timings,
//! then each event is an opcode byte and its arguments. A husk (child
//! exited) is a session like any other: the same bounds hold for it.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shellper_protocol::lease::{LeaseConfig, LeaseMachine, Mode, Reject, Released};
use shellper_protocol::msg::{HolderInfo, ReleaseMode, TerminateReason, WirePhase};
use shellper_protocol::token::Token;

const GOOD: [u8; 32] = [7; 32];

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
}

fn who() -> HolderInfo {
    HolderInfo {
        name: "fuzz".into(),
        pid: 1,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The model's bookkeeping: bounds on when the machine may and must end.
struct Model {
    cfg: LeaseConfig,
    now: Instant,
    /// Time of the last `tick` (the machine measures stalls from it).
    last_tick: Instant,
    /// Before this instant no deadline may terminate the machine.
    earliest: Instant,
    /// A non-stalled tick at or after this instant must terminate it
    /// (`None`: held in legacy mode, no deadline while connected).
    latest: Option<Instant>,
    epoch: u64,
    reason: Option<TerminateReason>,
}

impl Model {
    /// Both bounds become `at` (a new deadline the events fully determine).
    fn deadline(&mut self, at: Instant) {
        self.earliest = at;
        self.latest = Some(at);
    }

    /// Records a reason the machine returned: at most one, ever.
    fn fired(&mut self, r: Option<TerminateReason>) {
        if let Some(r) = r {
            assert!(
                self.reason.is_none(),
                "second reason {r:?} after {:?}",
                self.reason
            );
            self.reason = Some(r);
        }
    }

    /// One tick at `now`, checking invariants 1, 2 and 4.
    fn tick(&mut self, m: &mut LeaseMachine, now: Instant) {
        let stalled = now.saturating_duration_since(self.last_tick) > self.cfg.stall_threshold;
        let phase = m.phase();
        self.now = now;
        self.last_tick = self.last_tick.max(now);
        let r = m.tick(now);
        if stalled {
            assert_eq!(r, None, "a stall killed (phase {phase:?})");
            // A passed deadline is pushed out by one fresh period at most.
            let fresh = match m.phase() {
                WirePhase::Held => Some(now + self.cfg.ttl + self.cfg.window),
                WirePhase::Lapsed => Some(now + self.cfg.window),
                WirePhase::Unclaimed => Some(now + self.cfg.claim),
                _ => None,
            };
            if let (Some(l), Some(f)) = (self.latest, fresh) {
                self.latest = Some(l.max(f));
            }
        } else if self.reason.is_none() && m.phase() != WirePhase::Terminating {
            if let Some(latest) = self.latest {
                assert!(
                    now < latest,
                    "alive at a tick past its deadline: {:?}",
                    m.snapshot(now)
                );
            }
        }
        if let Some(reason) = r {
            // A husk is a session like any other: it too ends only at its
            // claim deadline or at the end of its window.
            assert!(
                now >= self.earliest,
                "{reason:?} {:?} before the earliest allowed kill",
                self.earliest - now
            );
            assert!(matches!(
                reason,
                TerminateReason::ClaimExpired | TerminateReason::WindowExpired
            ));
        }
        self.fired(r);
    }
}

fn check_snapshot(m: &LeaseMachine, model: &Model) {
    let s = m.snapshot(model.now);
    assert_eq!(s.phase, m.phase());
    assert_eq!(s.epoch, model.epoch);
    match s.phase {
        WirePhase::Unclaimed => {
            assert!(s.claim_in.is_some() && s.holder.is_none() && s.kill_in.is_none());
        }
        WirePhase::Held => {
            assert!(s.holder.is_some() && s.kill_in.is_none() && s.claim_in.is_none());
            assert_eq!(s.expires_in.is_some(), m.is_leased());
            assert!(s.expires_in.is_none_or(|e| e <= model.cfg.ttl));
        }
        WirePhase::Lapsed => {
            assert!(s.kill_in.is_some() && s.lapse_cause.is_some() && s.expires_in.is_none());
        }
        WirePhase::Terminating => {
            assert!(s.terminate_reason.is_some() && s.holder.is_none());
            assert_eq!(s.terminate_reason, model.reason);
        }
        WirePhase::Exited => {}
    }
    match m.next_deadline() {
        Some(d) => {
            assert!(!matches!(
                s.phase,
                WirePhase::Terminating | WirePhase::Exited
            ));
            assert!(
                d <= model.last_tick + model.cfg.heartbeat,
                "deadline past a heartbeat"
            );
        }
        None => assert!(matches!(
            s.phase,
            WirePhase::Terminating | WirePhase::Exited
        )),
    }
}

fn run(data: &[u8]) {
    let mut input = Input { data };
    let (Some(flags), Some(ttl), Some(window), Some(claim)) =
        (input.u8(), input.u16(), input.u16(), input.u16())
    else {
        return;
    };
    let ttl = ms(50 + u64::from(ttl % 4000));
    let window = ttl + ms(u64::from(window % 8000));
    let claim = ms(1 + u64::from(claim % 8000));
    let Ok(cfg) = LeaseConfig::new(ttl, window, claim, ms(100)) else {
        return;
    };
    let legacy = flags & 1 == 1;
    let mode = if legacy {
        Mode::Legacy
    } else {
        Mode::Leased(Token::from_bytes(GOOD))
    };
    let start = Instant::now();
    let mut m = LeaseMachine::new(cfg, mode, start);
    let mut model = Model {
        cfg,
        now: start,
        last_tick: start,
        earliest: start + claim,
        latest: Some(start + claim),
        epoch: 0,
        reason: None,
    };

    let mut steps = 0;
    while let Some(op) = input.u8() {
        steps += 1;
        if steps > 400 {
            break;
        }
        let before = m.snapshot(model.now);
        let ended = model.reason.is_some();
        let now = model.now;
        match op % 13 {
            // Healthy driver: advance, ticking at every deadline on the way.
            0 | 1 => {
                let end = now + ms(u64::from(input.u8().unwrap_or(0)) * 8);
                loop {
                    let at = m.next_deadline().map_or(end, |d| d.min(end)).max(model.now);
                    model.tick(&mut m, at);
                    if at >= end {
                        break;
                    }
                }
            }
            // A late tick (busy host), below the stall threshold.
            2 => {
                let frac = u32::from(input.u8().unwrap_or(0));
                let gap = cfg.stall_threshold * frac / 255;
                let at = model.last_tick.max(now) + gap;
                model.tick(&mut m, at);
            }
            // The shellper itself frozen: a gap above the stall threshold.
            3 => {
                let extra = ms(1 + u64::from(input.u16().unwrap_or(0)) * 4);
                let at = model.last_tick + cfg.stall_threshold + extra;
                model.tick(&mut m, at.max(now));
            }
            // ACQUIRE (or a legacy `tower` HELLO), good or bad token.
            4 | 5 => {
                let arg = input.u8().unwrap_or(0);
                let conn = u64::from(arg % 4);
                let good = arg & 0x80 == 0;
                let token = Token::from_bytes(if good { GOOD } else { [9; 32] });
                let r = if legacy {
                    m.acquire_legacy(now, conn)
                } else {
                    m.acquire(now, conn, &token, who())
                };
                match r {
                    Ok(g) => {
                        assert!(!ended, "granted after termination");
                        assert!(legacy || good, "bad token granted");
                        assert_eq!(g.epoch, before.epoch + 1);
                        model.epoch = g.epoch;
                        let prev = before.holder.filter(|h| *h != conn);
                        assert_eq!(g.revoked.map(|(c, _)| c), prev, "revocation not reported");
                        if legacy {
                            assert_eq!(g.expires_in, None);
                            model.earliest = now + cfg.window;
                            model.latest = None;
                        } else {
                            assert_eq!(g.expires_in, Some(cfg.ttl));
                            model.deadline(now + cfg.ttl + cfg.window);
                        }
                    }
                    Err(Reject::Terminating) => assert!(ended),
                    Err(Reject::BadToken) => {
                        assert!(!good && !legacy);
                        assert_eq!(
                            m.counters().rejected_tokens,
                            before.counters.rejected_tokens + 1
                        );
                    }
                    Err(e) => panic!("unexpected acquire refusal {e:?}"),
                }
            }
            // The wrong kind of acquire for the mode.
            6 => {
                let conn = u64::from(input.u8().unwrap_or(0) % 4);
                let r = if legacy {
                    m.acquire(now, conn, &Token::from_bytes(GOOD), who())
                } else {
                    m.acquire_legacy(now, conn)
                };
                assert!(matches!(r, Err(Reject::NotLeased | Reject::Terminating)));
            }
            // RENEW with any epoch from any connection.
            7 | 8 => {
                let arg = input.u8().unwrap_or(0);
                let conn = u64::from(arg % 4);
                let epoch = (before.epoch + u64::from(arg >> 2 & 3)).saturating_sub(1);
                match m.renew(now, conn, epoch) {
                    Ok(ttl) => {
                        assert!(!ended && !legacy);
                        assert_eq!(ttl, cfg.ttl);
                        assert_eq!(epoch, before.epoch, "stale epoch renewed");
                        assert_eq!(before.holder, Some(conn), "non-holder renewed");
                        assert_eq!(m.phase(), WirePhase::Held);
                        model.deadline(now + cfg.ttl + cfg.window);
                    }
                    Err(Reject::Terminating) => assert!(ended),
                    Err(Reject::NotLeased) => assert!(legacy),
                    Err(Reject::StaleEpoch { got, current }) => {
                        assert_ne!(got, current);
                        assert_eq!(m.counters().stale_epochs, before.counters.stale_epochs + 1);
                    }
                    Err(Reject::NotHolder) => assert_ne!(before.holder, Some(conn)),
                    Err(e) => panic!("unexpected renew refusal {e:?}"),
                }
            }
            // RELEASE: detach with a hold, or terminate.
            9 => {
                let arg = input.u8().unwrap_or(0);
                let conn = u64::from(arg % 4);
                let hold_ms = u64::from(input.u16().unwrap_or(0)) * 4;
                let mode = if arg & 0x80 == 0 {
                    ReleaseMode::Detach { hold_ms }
                } else {
                    ReleaseMode::Terminate
                };
                match m.release(now, conn, before.epoch, &mode) {
                    Ok(Released::Detached { kill_in }) => {
                        assert!(!ended);
                        assert_eq!(before.holder, Some(conn));
                        assert!(kill_in >= cfg.window);
                        assert_eq!(m.phase(), WirePhase::Lapsed);
                        model.deadline(now + kill_in);
                    }
                    Ok(Released::Terminate) => {
                        assert!(!ended);
                        assert_eq!(before.holder, Some(conn));
                        assert_eq!(m.phase(), WirePhase::Terminating);
                        let reason = m.snapshot(now).terminate_reason;
                        model.fired(reason);
                    }
                    Err(Reject::Terminating) => assert!(ended),
                    Err(Reject::NotHolder) => assert_ne!(before.holder, Some(conn)),
                    Err(e) => panic!("unexpected release refusal {e:?}"),
                }
            }
            // A connection closes.
            10 => {
                let conn = u64::from(input.u8().unwrap_or(0) % 4);
                let r = m.disconnected(now, conn);
                assert_eq!(r, None, "a disconnect only starts the window");
                if before.phase == WirePhase::Held && before.holder == Some(conn) {
                    model.deadline(now + cfg.window);
                }
            }
            // The child exits, or a new one is spawned.
            11 => {
                if input.u8().unwrap_or(0) & 1 == 0 {
                    // A husk keeps its phase and deadlines.
                    m.child_exited();
                    assert_eq!(m.phase(), before.phase, "a child exit changed the phase");
                    assert!(!m.snapshot(now).child_alive);
                } else if !ended {
                    m.child_started();
                }
            }
            // A signal to the shellper, or a malformed frame.
            _ => {
                if input.u8().unwrap_or(0) & 1 == 0 {
                    let r = m.signalled();
                    assert_eq!(r.is_some(), !ended);
                    model.fired(r);
                } else {
                    let errs = m.counters().protocol_errors;
                    m.note_protocol_error();
                    assert_eq!(m.counters().protocol_errors, errs + 1);
                }
            }
        }
        assert!(m.epoch() >= before.epoch, "epoch went backwards");
        assert_eq!(m.phase() == WirePhase::Terminating, model.reason.is_some());
        check_snapshot(&m, &model);
    }

    // With no more events, a healthy driver ends it by its deadline.
    if model.reason.is_none() {
        let Some(latest) = model.latest else { return };
        while let Some(next) = m.next_deadline() {
            model.tick(&mut m, next.max(model.now));
            if model.reason.is_some() {
                break;
            }
        }
        assert!(model.reason.is_some(), "never terminated");
        assert!(model.now <= latest, "terminated late");
    }
    m.exited();
    assert_eq!(m.phase(), WirePhase::Exited);
    assert_eq!(m.next_deadline(), None);
}

fuzz_target!(|data: &[u8]| run(data));
