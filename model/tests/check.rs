//! The bounded model check CI runs, and the proof that it can fail: each
//! property is violated by at least one deliberately broken machine
//! ([`Fault`], a wrapper around the real one).
//!
//! Each check of [`Setup::ci`] visits every reachable state of its family
//! of scenarios. A broken variant checks only the property it is meant to
//! break, so the checker stops at the first counterexample (breadth first:
//! a shortest one), which is printed.

use shellper_model::{
    BOUNDED_LIFETIME, Budget, FENCING, Fault, HUSK, LeaseModel, NO_FALSE_KILL, ONE_HOLDER,
    ONE_REASON, Setup,
};
use stateright::{Checker, Model};

/// The real machine: no property has a counterexample in any CI check,
/// and every `sometimes` property that the check's budget allows
/// (re-adoption, a refused stale request, a respawned husk, a window
/// kill, a survived freeze) has an example, so the check is not vacuous.
#[test]
fn the_real_machine_keeps_every_property() {
    for (name, setup) in Setup::ci() {
        let started = std::time::Instant::now();
        let c = LeaseModel::new(setup)
            .checker()
            .threads(1)
            .spawn_bfs()
            .join();
        eprintln!(
            "model check {name:?}: {} states ({} unique), depth {}, {:.1?}",
            c.state_count(),
            c.unique_state_count(),
            c.max_depth(),
            started.elapsed()
        );
        c.assert_properties();
        assert!(c.is_done(), "{name}: the bounded space was not exhausted");
    }
}

/// Checks `property` alone with `fault` in `setup`: it must have a
/// counterexample. Prints it.
fn breaks(fault: Fault, budget: Budget, property: &'static str) {
    // Long enough for a window to run out after a lapse at the TTL.
    let setup = Setup {
        horizon: 10_000,
        ..Setup::base()
    };
    let c = LeaseModel::new(setup.with(budget).with_fault(fault))
        .only(property)
        .checker()
        .threads(1)
        .spawn_bfs()
        .join();
    let Some(path) = c.discovery(property) else {
        panic!(
            "{fault:?}: no counterexample for {property:?} in {} states",
            c.unique_state_count()
        );
    };
    let last = path.last_state().clone();
    let actions = path.into_actions();
    eprintln!(
        "{fault:?} breaks {property:?} at t = {} ms: {:?}\n  path: {actions:?}",
        last.now, last.violations
    );
}

fn budget() -> Budget {
    Setup::base().budget
}

#[test]
fn a_machine_without_fencing_lets_a_stale_tower_act() {
    let b = Budget {
        faults: 1,
        ..budget()
    };
    breaks(Fault::NoFencing, b, FENCING);
}

/// Defence in depth, shown: a machine that ignores the epoch of RENEW and
/// RELEASE still refuses a stale Tower, because its frames come from a
/// connection that no longer holds the lease (one ACQUIRE per connection,
/// as Towers do). The epoch matters to a Tower that would re-acquire on
/// the same connection, which this model's Towers never do.
#[test]
fn ignoring_the_epoch_alone_is_still_fenced_by_the_holder_check() {
    let setup = Setup::base().with(Budget {
        faults: 1,
        requests: 1,
        starts: 2,
        ..budget()
    });
    let c = LeaseModel::new(setup.with_fault(Fault::AcceptStaleEpoch))
        .only(FENCING)
        .checker()
        .threads(1)
        .spawn_bfs()
        .join();
    assert!(c.is_done());
    c.assert_no_discovery(FENCING);
}

#[test]
fn a_machine_without_epochs_has_two_holders() {
    breaks(Fault::FrozenEpoch, budget(), ONE_HOLDER);
}

#[test]
fn killing_at_the_ttl_is_a_false_kill() {
    let b = Budget {
        faults: 1,
        ..budget()
    };
    breaks(Fault::KillAtTtl, b, NO_FALSE_KILL);
}

#[test]
fn ignoring_renewals_kills_a_tower_that_renews() {
    breaks(Fault::IgnoreRenewals, budget(), NO_FALSE_KILL);
}

#[test]
fn ignoring_the_end_of_the_window_is_immortality() {
    let b = Budget {
        faults: 1,
        ..budget()
    };
    breaks(Fault::IgnoreWindowExpiry, b, BOUNDED_LIFETIME);
}

#[test]
fn ending_a_husk_at_once_breaks_the_husk_rule() {
    let b = Budget {
        child_exits: 1,
        ..budget()
    };
    breaks(Fault::HuskEndsAtOnce, b, HUSK);
}

#[test]
fn a_second_reason_breaks_one_reason() {
    let b = Budget {
        sigterms: 1,
        ..budget()
    };
    breaks(Fault::ReportTwice, b, ONE_REASON);
}

/// The model hashes the machine's `Debug` form without its counters
/// (`faulty::decisive_state`): that relies on `counters` being the last
/// field printed. If a field is added after it, this fails (and the cut
/// must move).
#[test]
fn counters_are_the_last_field_of_the_machine_debug_form() {
    use shellper_protocol::lease::{LeaseConfig, LeaseMachine, Mode};
    let m = LeaseMachine::new(
        LeaseConfig::default(),
        Mode::Legacy,
        std::time::Instant::now(),
    );
    let d = format!("{m:?}");
    let at = d.rfind(", counters: Counters {").expect("a counters field");
    let tail = &d[at..];
    assert!(
        !tail.contains("last_tick") && !tail.contains("epoch:"),
        "{d}"
    );
    let kept = shellper_model::faulty::decisive_state(&m);
    assert!(
        kept.contains("last_tick") && !kept.contains("counters"),
        "{kept}"
    );
}
