//! The lease state machine: one test per transition, then a model check over
//! random interleavings of events and time advances.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use shellper_protocol::lease::*;
use shellper_protocol::msg::{HolderInfo, ReleaseMode, TerminateReason, WirePhase};
use shellper_protocol::token::Token;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> LeaseConfig {
    // ttl 400 ms, window 1 s, claim 2 s, grace 300 ms; heartbeat 100 ms,
    // stall threshold 1 s.
    LeaseConfig::new(400 * MS, 1000 * MS, 2000 * MS, 300 * MS).unwrap()
}

fn tok() -> Token {
    Token::from_bytes([7; 32])
}

fn who() -> HolderInfo {
    HolderInfo {
        name: "test".into(),
        pid: 1,
    }
}

/// A machine plus a clock that advances in heartbeat-sized ticks, as a
/// healthy enforcer would.
struct Rig {
    m: LeaseMachine,
    now: Instant,
}

impl Rig {
    fn leased() -> Rig {
        let now = Instant::now();
        Rig {
            m: LeaseMachine::new(cfg(), Mode::Leased(tok()), now),
            now,
        }
    }
    fn legacy() -> Rig {
        let now = Instant::now();
        Rig {
            m: LeaseMachine::new(cfg(), Mode::Legacy, now),
            now,
        }
    }
    /// Advances time by `d`, ticking at every deadline on the way.
    fn run(&mut self, d: Duration) -> Option<TerminateReason> {
        let end = self.now + d;
        let mut fired = None;
        while let Some(next) = self.m.next_deadline() {
            if next > end {
                break;
            }
            self.now = next.max(self.now);
            if let Some(r) = self.m.tick(self.now) {
                fired = Some(r);
            }
        }
        self.now = end;
        if let Some(r) = self.m.tick(self.now) {
            fired = Some(r);
        }
        fired
    }
    fn acquire(&mut self, conn: ConnId) -> Granted {
        self.m.acquire(self.now, conn, &tok(), who()).unwrap()
    }
}

#[test]
fn config_rules() {
    assert!(LeaseConfig::new(10 * MS, 1000 * MS, 1000 * MS, MS).is_err());
    assert!(matches!(
        LeaseConfig::new(500 * MS, 400 * MS, 1000 * MS, MS),
        Err(ConfigError::WindowShorterThanTtl { .. })
    ));
    assert!(LeaseConfig::new(500 * MS, 500 * MS, Duration::ZERO, MS).is_err());
    assert!(LeaseConfig::new(500 * MS, Duration::from_secs(30 * 24 * 3600), MS * 100, MS).is_err());
    let c = LeaseConfig::default();
    assert_eq!(c.ttl, DEFAULT_TTL);
    assert!(c.check_renew_interval(DEFAULT_RENEW).is_ok());
    assert!(c.check_renew_interval(Duration::from_secs(4)).is_err());
    assert!(c.check_renew_interval(c.suggested_renew()).is_ok());
    assert!(c.stall_threshold > c.heartbeat);
}

#[test]
fn unclaimed_terminates_at_claim_deadline() {
    let mut r = Rig::leased();
    assert_eq!(r.m.phase(), WirePhase::Unclaimed);
    assert_eq!(r.run(1999 * MS), None);
    assert_eq!(r.run(2 * MS), Some(TerminateReason::ClaimExpired));
    assert_eq!(r.m.phase(), WirePhase::Terminating);
    // Only once.
    assert_eq!(r.run(1000 * MS), None);
    r.m.exited();
    assert_eq!(r.m.phase(), WirePhase::Exited);
    assert_eq!(r.m.next_deadline(), None);
}

#[test]
fn acquire_needs_the_token_and_counts_rejections() {
    let mut r = Rig::leased();
    let bad = Token::from_bytes([8; 32]);
    assert_eq!(r.m.acquire(r.now, 1, &bad, who()), Err(Reject::BadToken));
    assert_eq!(r.m.counters().rejected_tokens, 1);
    assert_eq!(r.m.phase(), WirePhase::Unclaimed);
    let g = r.acquire(1);
    assert_eq!(g.epoch, 1);
    assert_eq!(g.expires_in, Some(400 * MS));
    assert_eq!(g.revoked, None);
    assert_eq!(r.m.phase(), WirePhase::Held);
    assert_eq!(r.m.acquire_legacy(r.now, 2), Err(Reject::NotLeased));
}

#[test]
fn renewals_keep_it_held_forever() {
    let mut r = Rig::leased();
    let g = r.acquire(1);
    for _ in 0..100 {
        assert_eq!(r.run(130 * MS), None);
        assert_eq!(r.m.renew(r.now, 1, g.epoch), Ok(400 * MS));
    }
    assert_eq!(r.m.phase(), WirePhase::Held);
    assert_eq!(r.m.counters().renewals, 100);
}

#[test]
fn silence_lapses_after_ttl_then_kills_after_window() {
    let mut r = Rig::leased();
    r.acquire(1);
    assert_eq!(r.run(399 * MS), None);
    assert_eq!(r.m.phase(), WirePhase::Held);
    assert_eq!(r.run(2 * MS), None);
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    let snap = r.m.snapshot(r.now);
    assert_eq!(snap.lapse_cause, Some(LapseCause::Silent));
    assert_eq!(snap.holder, Some(1), "a silent holder may still renew");
    // kill deadline = lapse (expiry) + window = 1400 ms after acquire.
    assert_eq!(r.run(997 * MS), None);
    assert_eq!(r.run(3 * MS), Some(TerminateReason::WindowExpired));
}

#[test]
fn silent_holder_revives_by_renewing_within_the_window() {
    let mut r = Rig::leased();
    let g = r.acquire(1);
    r.run(900 * MS);
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    assert_eq!(r.m.renew(r.now, 2, g.epoch), Err(Reject::NotHolder));
    assert_eq!(r.m.renew(r.now, 1, g.epoch), Ok(400 * MS));
    assert_eq!(r.m.phase(), WirePhase::Held);
    assert_eq!(r.run(300 * MS), None);
}

#[test]
fn holder_eof_starts_the_window_at_once() {
    let mut r = Rig::leased();
    let g = r.acquire(1);
    r.run(100 * MS);
    assert_eq!(r.m.disconnected(r.now, 1), None);
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    assert_eq!(r.m.snapshot(r.now).kill_in, Some(1000 * MS));
    // The old connection cannot renew; a reconnecting Tower re-acquires.
    assert_eq!(r.m.renew(r.now, 1, g.epoch), Err(Reject::NotHolder));
    assert_eq!(r.run(999 * MS), None);
    assert_eq!(r.run(2 * MS), Some(TerminateReason::WindowExpired));
}

#[test]
fn reacquire_within_window_starts_a_new_epoch_and_fences_the_old() {
    let mut r = Rig::leased();
    let g1 = r.acquire(1);
    r.m.disconnected(r.now, 1);
    r.run(500 * MS);
    let g2 = r.acquire(2);
    assert_eq!(g2.epoch, g1.epoch + 1);
    assert_eq!(r.m.phase(), WirePhase::Held);
    assert_eq!(
        r.m.renew(r.now, 2, g1.epoch),
        Err(Reject::StaleEpoch {
            got: g1.epoch,
            current: g2.epoch
        })
    );
    assert_eq!(r.m.counters().stale_epochs, 1);
    assert!(r.m.renew(r.now, 2, g2.epoch).is_ok());
}

#[test]
fn acquire_evicts_the_current_holder() {
    let mut r = Rig::leased();
    let g1 = r.acquire(1);
    let g2 = r.acquire(2);
    assert_eq!(g2.revoked, Some((1, g1.epoch)));
    assert_eq!(r.m.counters().revocations, 1);
    assert_eq!(
        r.m.renew(r.now, 1, g1.epoch),
        Err(Reject::StaleEpoch { got: 1, current: 2 })
    );
    assert_eq!(r.m.renew(r.now, 1, g2.epoch), Err(Reject::NotHolder));
    // The evicted connection closing changes nothing.
    assert_eq!(r.m.disconnected(r.now, 1), None);
    assert_eq!(r.m.holder(), Some(2));
    // A silent holder is evicted too.
    r.run(500 * MS);
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    let g3 = r.acquire(3);
    assert_eq!(g3.revoked, Some((2, 2)));
}

#[test]
fn release_terminate_and_detach() {
    let mut r = Rig::leased();
    let g = r.acquire(1);
    assert_eq!(
        r.m.release(r.now, 1, g.epoch, &ReleaseMode::Detach { hold_ms: 5000 }),
        Ok(Released::Detached { kill_in: 5000 * MS })
    );
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    assert_eq!(r.run(4990 * MS), None);
    let g = r.acquire(2);
    // A hold shorter than the window gets the window.
    assert_eq!(
        r.m.release(r.now, 2, g.epoch, &ReleaseMode::Detach { hold_ms: 1 }),
        Ok(Released::Detached { kill_in: 1000 * MS })
    );
    let g = r.acquire(3);
    assert_eq!(
        r.m.release(r.now, 1, g.epoch, &ReleaseMode::Terminate),
        Err(Reject::NotHolder)
    );
    assert_eq!(
        r.m.release(r.now, 3, g.epoch - 1, &ReleaseMode::Terminate),
        Err(Reject::StaleEpoch {
            got: g.epoch - 1,
            current: g.epoch
        })
    );
    assert_eq!(
        r.m.release(r.now, 3, g.epoch, &ReleaseMode::Terminate),
        Ok(Released::Terminate)
    );
    assert_eq!(r.m.phase(), WirePhase::Terminating);
    assert_eq!(
        r.m.snapshot(r.now).terminate_reason,
        Some(TerminateReason::Requested)
    );
    assert_eq!(
        r.m.acquire(r.now, 4, &tok(), who()),
        Err(Reject::Terminating)
    );
}

#[test]
fn huge_detach_hold_is_clamped() {
    let mut r = Rig::leased();
    let g = r.acquire(1);
    let out =
        r.m.release(
            r.now,
            1,
            g.epoch,
            &ReleaseMode::Detach { hold_ms: u64::MAX },
        )
        .unwrap();
    assert_eq!(
        out,
        Released::Detached {
            kill_in: Duration::from_millis(shellper_protocol::msg::MAX_HOLD_MS)
        }
    );
}

#[test]
fn signal_terminates_from_any_live_phase() {
    for setup in 0..3 {
        let mut r = Rig::leased();
        if setup >= 1 {
            r.acquire(1);
        }
        if setup == 2 {
            r.m.disconnected(r.now, 1);
        }
        assert_eq!(r.m.signalled(), Some(TerminateReason::Signal));
        assert_eq!(r.m.signalled(), None);
    }
}

/// A husk (the child exited) is a session like any other: unclaimed it
/// waits for its claim deadline, lapsed it waits for its window, and a
/// Tower that comes back in time takes it over (codev collects the
/// retained EXIT and restarts the child in place with SPAWN).
#[test]
fn husk_is_a_session_like_any_other() {
    let c = cfg();

    // Child exits before anyone claims: the claim deadline still rules.
    let mut r = Rig::leased();
    r.m.child_exited();
    assert_eq!(r.m.phase(), WirePhase::Unclaimed);
    assert_eq!(r.run(c.claim - 10 * MS), None);
    r.acquire(1);
    assert_eq!(r.m.phase(), WirePhase::Held);
    assert!(!r.m.snapshot(r.now).child_alive);

    // Unclaimed husk nobody claims: ClaimExpired at the claim deadline.
    let mut r = Rig::leased();
    r.m.child_exited();
    assert_eq!(r.run(c.claim - 10 * MS), None);
    assert_eq!(r.run(20 * MS), Some(TerminateReason::ClaimExpired));

    // Held husk whose holder leaves: the window runs, a re-acquire saves it.
    let mut r = Rig::leased();
    r.acquire(1);
    r.m.child_exited();
    assert_eq!(r.m.phase(), WirePhase::Held);
    assert_eq!(r.m.disconnected(r.now, 1), None);
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    assert_eq!(r.run(c.window - 10 * MS), None);
    let g = r.acquire(2);
    assert_eq!(g.epoch, 2);
    r.m.child_started();
    assert!(r.m.snapshot(r.now).child_alive);

    // Child exits while lapsed: the window it is in still rules.
    let mut r = Rig::leased();
    r.acquire(1);
    r.m.disconnected(r.now, 1);
    assert_eq!(r.run(c.window / 2), None);
    r.m.child_exited();
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    assert_eq!(r.run(c.window / 2 - 10 * MS), None);
    assert_eq!(r.run(20 * MS), Some(TerminateReason::WindowExpired));

    // A silent holder's husk lapses after the TTL like any other lease.
    let mut r = Rig::leased();
    r.acquire(1);
    r.m.child_exited();
    assert_eq!(r.run(c.ttl + 10 * MS), None);
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    assert_eq!(r.run(c.window), Some(TerminateReason::WindowExpired));

    // Legacy: the codev Tower disconnects from a husk and reconnects later.
    let mut r = Rig::legacy();
    r.m.child_exited();
    assert_eq!(r.run(c.claim / 2), None);
    r.m.acquire_legacy(r.now, 1).unwrap();
    r.m.disconnected(r.now, 1);
    assert_eq!(r.run(c.window - 10 * MS), None);
    r.m.acquire_legacy(r.now, 2).unwrap();
    assert_eq!(r.m.phase(), WirePhase::Held);
}

#[test]
fn legacy_mode_holds_while_connected() {
    let mut r = Rig::legacy();
    let bad = Token::from_bytes([7; 32]);
    assert_eq!(r.m.acquire(r.now, 1, &bad, who()), Err(Reject::NotLeased));
    let g = r.m.acquire_legacy(r.now, 1).unwrap();
    assert_eq!(g.expires_in, None);
    // No TTL: an hour of silence is fine.
    assert_eq!(r.run(Duration::from_secs(3600)), None);
    assert_eq!(r.m.phase(), WirePhase::Held);
    assert_eq!(r.m.renew(r.now, 1, g.epoch), Err(Reject::NotLeased));
    // A second tower replaces the first (v1 behaviour).
    let g2 = r.m.acquire_legacy(r.now, 2).unwrap();
    assert_eq!(g2.revoked, Some((1, 1)));
    r.m.disconnected(r.now, 2);
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    assert_eq!(r.run(999 * MS), None);
    assert_eq!(r.run(2 * MS), Some(TerminateReason::WindowExpired));
}

#[test]
fn own_stall_grants_a_fresh_ttl_instead_of_lapsing() {
    let mut r = Rig::leased();
    let g = r.acquire(1);
    // The shellper is frozen for 5 s (far past ttl + window) and then ticks.
    r.now += Duration::from_secs(5);
    assert_eq!(r.m.tick(r.now), None);
    assert_eq!(
        r.m.phase(),
        WirePhase::Held,
        "a stall is not the holder's fault"
    );
    assert_eq!(r.m.counters().stalls, 1);
    // The holder, alive all along, renews.
    assert!(r.m.renew(r.now, 1, g.epoch).is_ok());
    assert_eq!(r.run(300 * MS), None);
    // Without renewals the lease still lapses normally afterwards.
    assert_eq!(r.run(2000 * MS), Some(TerminateReason::WindowExpired));
}

#[test]
fn own_stall_while_lapsed_grants_a_fresh_window() {
    let mut r = Rig::leased();
    r.acquire(1);
    r.m.disconnected(r.now, 1);
    r.now += Duration::from_secs(5);
    assert_eq!(r.m.tick(r.now), None);
    assert_eq!(r.m.phase(), WirePhase::Lapsed);
    assert_eq!(r.m.snapshot(r.now).kill_in, Some(1000 * MS));
    assert_eq!(r.run(1001 * MS), Some(TerminateReason::WindowExpired));
}

#[test]
fn own_stall_while_unclaimed_grants_a_fresh_claim() {
    let mut r = Rig::leased();
    r.now += Duration::from_secs(5);
    assert_eq!(r.m.tick(r.now), None);
    assert_eq!(r.run(2001 * MS), Some(TerminateReason::ClaimExpired));
}

#[test]
fn late_renewal_before_the_tick_still_counts() {
    // The renewal was sitting in the socket buffer when the deadline fired;
    // the enforcer drains input first, so it is processed before the tick.
    let mut r = Rig::leased();
    let g = r.acquire(1);
    r.run(399 * MS);
    r.now += 50 * MS;
    assert!(r.m.renew(r.now, 1, g.epoch).is_ok());
    assert_eq!(r.m.tick(r.now), None);
    assert_eq!(r.m.phase(), WirePhase::Held);
}

#[test]
fn next_deadline_never_exceeds_a_heartbeat() {
    let mut r = Rig::leased();
    r.acquire(1);
    let hb = r.m.config().heartbeat;
    for _ in 0..20 {
        let next = r.m.next_deadline().unwrap();
        assert!(next <= r.now + hb);
        r.now = next;
        r.m.tick(r.now);
        if r.m.phase() == WirePhase::Terminating {
            break;
        }
    }
}

// ---------------------------------------------------------------------------
// Model check
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Ev {
    Advance(u64),
    Stall(u64),
    Acquire(ConnId, bool),
    Renew(ConnId, u64),
    Disconnect(ConnId),
    Detach(ConnId, u64),
    ChildExit,
    ChildStart,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => (1u64..700).prop_map(Ev::Advance),
        1 => (1100u64..4000).prop_map(Ev::Stall),
        2 => (0u64..3, prop::bool::weighted(0.85)).prop_map(|(c, ok)| Ev::Acquire(c, ok)),
        6 => (0u64..3, 0u64..5).prop_map(|(c, e)| Ev::Renew(c, e)),
        2 => (0u64..3).prop_map(Ev::Disconnect),
        1 => (0u64..3, 0u64..3000).prop_map(|(c, h)| Ev::Detach(c, h)),
        1 => Just(Ev::ChildExit),
        1 => Just(Ev::ChildStart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Invariants over random interleavings, with the enforcer ticking at every
    /// deadline (and never more than a heartbeat apart except in `Stall`):
    /// 1. never terminating while held with the current epoch and not past expiry;
    /// 2. always terminating by lapse + window + one heartbeat when nobody re-acquires;
    /// 3. stale epochs never renew; epochs only grow.
    #[test]
    fn lease_model(events in proptest::collection::vec(ev(), 1..60)) {
        let c = cfg();
        let mut r = Rig::leased();
        let mut last_epoch = 0;
        // Latest instant by which the machine must have terminated, if no
        // acquire/renew intervenes (the model's own bookkeeping).
        let mut must_die_by: Option<Instant> = Some(r.now + c.claim + c.heartbeat);
        for e in events {
            if r.m.phase() == WirePhase::Terminating { break; }
            let before = r.m.snapshot(r.now);
            match e {
                Ev::Advance(ms) => {
                    let end = r.now + Duration::from_millis(ms);
                    loop {
                        let next = r.m.next_deadline().unwrap();
                        let at = next.min(end).max(r.now);
                        let snap = r.m.snapshot(at);
                        let fired = r.m.tick(at);
                        r.now = at;
                        if let Some(reason) = fired {
                            // Invariant 1.
                            if snap.phase == WirePhase::Held {
                                prop_assert!(snap.expires_in == Some(Duration::ZERO),
                                    "terminated while held and unexpired: {:?}", snap);
                            }
                            prop_assert!(matches!(reason, TerminateReason::ClaimExpired | TerminateReason::WindowExpired));
                            break;
                        }
                        if let Some(deadline) = must_die_by {
                            // Invariant 2.
                            prop_assert!(r.now <= deadline, "alive past its kill deadline: {:?}", r.m.snapshot(r.now));
                        }
                        if at >= end { break; }
                    }
                }
                Ev::Stall(ms) => {
                    r.now += Duration::from_millis(ms);
                    prop_assert_eq!(r.m.tick(r.now), None, "a stall never kills");
                    // A stall may push a passed deadline out by a fresh
                    // TTL, window or claim period, never more.
                    let fresh = match r.m.phase() {
                        WirePhase::Held => Some(r.now + c.ttl + c.window + c.heartbeat),
                        WirePhase::Lapsed => Some(r.now + c.window + c.heartbeat),
                        WirePhase::Unclaimed => Some(r.now + c.claim + c.heartbeat),
                        _ => None,
                    };
                    must_die_by = fresh.max(must_die_by);
                }
                Ev::Acquire(conn, good) => {
                    let t = if good { tok() } else { Token::from_bytes([9; 32]) };
                    match r.m.acquire(r.now, conn, &t, who()) {
                        Ok(g) => {
                            prop_assert!(good);
                            prop_assert!(g.epoch > last_epoch);
                            last_epoch = g.epoch;
                            must_die_by = Some(r.now + c.ttl + c.window + c.heartbeat);
                        }
                        Err(Reject::BadToken) => prop_assert!(!good),
                        Err(e) => prop_assert!(matches!(e, Reject::Terminating), "{:?}", e),
                    }
                }
                Ev::Renew(conn, epoch) => {
                    let ok = r.m.renew(r.now, conn, epoch).is_ok();
                    if ok {
                        // Invariant 3.
                        prop_assert_eq!(epoch, before.epoch);
                        prop_assert_eq!(before.holder, Some(conn));
                        must_die_by = Some(r.now + c.ttl + c.window + c.heartbeat);
                    } else if epoch != before.epoch {
                        prop_assert!(r.m.counters().stale_epochs > before.counters.stale_epochs
                            || r.m.phase() == WirePhase::Terminating);
                    }
                }
                Ev::Disconnect(conn) => {
                    r.m.disconnected(r.now, conn);
                    if before.phase == WirePhase::Held && before.holder == Some(conn) {
                        must_die_by = Some(r.now + c.window + c.heartbeat);
                    }
                }
                Ev::Detach(conn, hold) => {
                    if let Ok(Released::Detached { kill_in }) =
                        r.m.release(r.now, conn, before.epoch, &ReleaseMode::Detach { hold_ms: hold })
                    {
                        prop_assert_eq!(before.holder, Some(conn));
                        must_die_by = Some(r.now + kill_in + c.heartbeat);
                    }
                }
                Ev::ChildExit => { r.m.child_exited(); }
                Ev::ChildStart => { if r.m.phase() != WirePhase::Terminating { r.m.child_started(); } }
            }
            prop_assert!(r.m.epoch() >= last_epoch);
        }
        // Finally: with no more renewals, it must terminate by its deadline.
        if r.m.phase() != WirePhase::Terminating {
            let deadline = must_die_by.unwrap();
            let mut fired = false;
            while let Some(next) = r.m.next_deadline() {
                r.now = next.max(r.now);
                if r.m.tick(r.now).is_some() { fired = true; break; }
                prop_assert!(r.now <= deadline, "still {:?} past its deadline", r.m.phase());
            }
            prop_assert!(fired);
            prop_assert!(r.now <= deadline);
        }
    }
}
