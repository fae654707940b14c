//! The kill ladder against the fake process table: every escape kind,
//! forking during the sweep, pid recycling, bounds, and the rule that nothing
//! outside the tree is ever signalled (checked on the fake's signal log).

use std::time::Duration;

use shellper_proctree::fake::{Behavior, Event, FakeClock, FakeTable, SignalRecord, Spawn};
use shellper_proctree::{
    Error, KillPlan, KillReport, OutsidePlan, Scan, Session, ShellperFate, Sig, kill_tree,
    kill_tree_from_outside,
};

const GRACE: Duration = Duration::from_millis(300);
const HARD: Duration = Duration::from_millis(800);
const POLL: Duration = Duration::from_millis(10);

struct World {
    t: FakeTable,
    clock: FakeClock,
    root: i32,
    child: i32,
    outsiders_before: usize,
}

/// Tower → shellper (subreaper, session leader) → PTY child `bash` (own
/// session; dies on HUP, ignores TERM like an interactive shell), plus a
/// crowd of outsiders: Tower's other children, an unrelated daemon, and a
/// second shellper with its own child session.
fn world() -> World {
    world_with(false)
}

/// The same world; with `walks`, the table also answers descendant walks.
fn world_with(walks: bool) -> World {
    let clock = FakeClock::new();
    let mut t = FakeTable::new().with_clock(clock.clone());
    if walks {
        t = t.with_walks();
    }
    let out = |parent, setsid, comm: &str| {
        t.spawn(Spawn {
            parent,
            setsid,
            outsider: Some(true),
            comm: Some(comm.into()),
            ..Spawn::default()
        })
    };
    let tower = out(1, true, "tower");
    out(tower, false, "tower-worker");
    out(1, true, "unrelated");
    let other = t.spawn(Spawn {
        parent: tower,
        setsid: true,
        subreaper: true,
        outsider: Some(true),
        comm: Some("shellper".into()),
        ..Spawn::default()
    });
    let other_child = out(other, true, "other-bash");
    out(other_child, false, "other-job");
    let root = t.spawn(Spawn {
        parent: tower,
        setsid: true,
        subreaper: true,
        outsider: Some(true), // never signalled by its own ladder
        comm: Some("shellper".into()),
        ..Spawn::default()
    });
    let child = t.spawn(Spawn {
        parent: root,
        setsid: true,
        outsider: Some(false),
        behavior: Behavior {
            ignore_term: true,
            ..Behavior::default()
        },
        comm: Some("bash".into()),
        ..Spawn::default()
    });
    let outsiders_before = t.live_outsiders().len();
    World {
        t,
        clock,
        root,
        child,
        outsiders_before,
    }
}

impl World {
    /// The PTY child's session, named by sid and leader start time.
    fn session(&self) -> Session {
        Session {
            sid: self.child,
            leader_start_ticks: self.t.info(self.child).expect("child").start_ticks,
        }
    }

    fn job(&self, behavior: Behavior) -> i32 {
        self.t.spawn(Spawn {
            parent: self.child,
            new_pgrp: true,
            behavior,
            ..Spawn::default()
        })
    }

    fn plan(&self, grace: Duration, hard: Duration) -> KillPlan {
        let mut plan = KillPlan::new(self.root, Some(self.session()), grace);
        plan.hard_bound = hard;
        plan.poll = POLL;
        plan
    }

    fn run(&self, grace: Duration, hard: Duration) -> KillReport {
        let root = self.root;
        kill_tree(&self.t, &self.clock, &self.plan(grace, hard), &mut || {
            self.t.reap_children_of(root);
        })
    }

    fn sigs_to(&self, pid: i32) -> Vec<Sig> {
        self.t
            .log()
            .iter()
            .filter(|r| r.pid == pid)
            .map(|r| r.sig)
            .collect()
    }

    /// Nothing of the tree alive, nothing outside it signalled or harmed.
    fn assert_clean(&self, report: &KillReport) {
        assert!(report.is_clean(), "survivors: {:?}", report.survivors);
        assert!(
            self.t.live_members(self.root).is_empty(),
            "live members: {:?}",
            self.t.live_members(self.root)
        );
        let bad: Vec<SignalRecord> = self.t.log().into_iter().filter(|r| r.outsider).collect();
        assert!(bad.is_empty(), "outsiders signalled: {bad:?}");
        assert_eq!(self.t.live_outsiders().len(), self.outsiders_before);
        assert!(self.t.info(self.root).is_some_and(|p| p.is_live()));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
}

#[test]
fn s05_fake_plain_session_dies_on_hup_without_term_or_kill() {
    let w = world();
    let jobs: Vec<i32> = (0..3).map(|_| w.job(Behavior::default())).collect();
    let r = w.run(GRACE, HARD);
    w.assert_clean(&r);
    assert_eq!(r.signalled, 4);
    assert_eq!(r.sigkilled, 0);
    assert_eq!(
        r.sweeps, 2,
        "one signalling pass, one pass that finds nothing"
    );
    for pid in jobs.iter().chain([&w.child]) {
        assert_eq!(w.sigs_to(*pid), vec![Sig::Hup, Sig::Cont]);
    }
    assert!(r.elapsed < GRACE);
}

#[test]
fn s05_fake_nohup_job_is_terminated_by_sigterm() {
    let w = world();
    let nohup = w.job(Behavior {
        ignore_hup: true,
        ..Behavior::default()
    });
    let r = w.run(GRACE, HARD);
    w.assert_clean(&r);
    assert_eq!(
        w.sigs_to(nohup),
        vec![Sig::Hup, Sig::Cont, Sig::Term, Sig::Cont]
    );
    assert_eq!(r.sigkilled, 0);
    assert!(r.elapsed < GRACE);
}

#[test]
fn s05_fake_term_ignoring_member_is_killed_only_after_grace() {
    let w = world();
    let stubborn = w.job(Behavior {
        ignore_hup: true,
        ignore_term: true,
        ..Behavior::default()
    });
    let r = w.run(GRACE, HARD);
    w.assert_clean(&r);
    let log = w.t.log();
    let kill = log
        .iter()
        .find(|x| x.pid == stubborn && x.sig == Sig::Kill)
        .expect("SIGKILL sent");
    assert!(
        kill.at >= GRACE,
        "SIGKILL at {:?}, before the grace",
        kill.at
    );
    assert!(kill.at < GRACE + 2 * POLL);
    assert!(
        log.iter()
            .filter(|x| x.sig == Sig::Kill)
            .all(|x| x.at >= GRACE)
    );
    let term = log
        .iter()
        .find(|x| x.pid == stubborn && x.sig == Sig::Term)
        .expect("TERM first");
    assert!(term.at < kill.at);
    assert_eq!(r.sigkilled, 1);
    assert!(r.elapsed >= GRACE && r.elapsed < HARD);
}

#[test]
fn s05_fake_stopped_jobs_get_sigcont_and_act_on_pending_signals() {
    let w = world();
    let stopped = w.job(Behavior::default());
    w.t.raw_signal(stopped, Sig::Stop);
    let stopped_nohup = w.job(Behavior {
        ignore_hup: true,
        ..Behavior::default()
    });
    w.t.raw_signal(stopped_nohup, Sig::Stop);
    assert!(w.t.info(stopped).is_some_and(|p| p.is_stopped()));
    let r = w.run(GRACE, HARD);
    w.assert_clean(&r);
    assert_eq!(w.sigs_to(stopped), vec![Sig::Hup, Sig::Cont]);
    assert_eq!(
        w.sigs_to(stopped_nohup),
        vec![Sig::Hup, Sig::Cont, Sig::Term, Sig::Cont]
    );
    assert_eq!(r.sigkilled, 0, "no SIGKILL needed once continued");
}

#[test]
fn s05_fake_a_member_stopped_again_mid_sweep_is_continued_again() {
    // Stopped between sweeps by something else; SIGKILL works on stopped
    // processes anyway, but TERM needs CONT: it gets CONT on every sweep
    // where it is seen stopped.
    let w = world();
    let job = w.job(Behavior {
        ignore_hup: true,
        ..Behavior::default()
    });
    w.t.raw_signal(job, Sig::Stop);
    let r = w.run(Duration::ZERO, HARD);
    w.assert_clean(&r);
    assert_eq!(w.sigs_to(job), vec![Sig::Kill]);
}

#[test]
fn s05_fake_setsid_and_double_fork_escapes_are_caught() {
    let w = world();
    // setsid'd daemon already reparented to the subreaper root.
    let own_session = w.t.spawn(Spawn {
        parent: w.root,
        setsid: true,
        outsider: Some(false),
        behavior: Behavior {
            ignore_hup: true,
            ..Behavior::default()
        },
        ..Spawn::default()
    });
    let its_child = w.t.child(own_session, Behavior::default());
    // Double-forked to PID 1 but still in the PTY session.
    let in_session = w.t.spawn(Spawn {
        parent: 1,
        session: Some(w.child),
        new_pgrp: true,
        outsider: Some(false),
        behavior: Behavior {
            ignore_hup: true,
            ignore_term: true,
            ..Behavior::default()
        },
        ..Spawn::default()
    });
    // A job that daemonizes (double fork + setsid) when it gets SIGHUP.
    let daemonizer = w.job(Behavior {
        daemonize_on_hup: true,
        ..Behavior::default()
    });
    let r = w.run(GRACE, HARD);
    w.assert_clean(&r);
    for pid in [own_session, its_child, in_session, daemonizer] {
        assert!(!w.sigs_to(pid).is_empty(), "{pid} signalled");
    }
    // The daemon born during the sweep (fork, fork, setsid, reparented to
    // the subreaper) was found in a later sweep and needed SIGTERM.
    let daemon = daemonizer + 2;
    // (Dead and already reaped by the root's reap hook.)
    assert!(w.t.info(daemon).is_none());
    assert_eq!(w.sigs_to(daemon), vec![Sig::Hup, Sig::Term, Sig::Cont]);
    // child, three escapees, the daemonizer and its daemon.
    assert_eq!(r.signalled, 6, "{r:?}");
}

#[test]
fn s05_fake_forking_during_the_sweep_is_outrun() {
    let w = world();
    let forker = w.job(Behavior {
        ignore_hup: true,
        ignore_term: true,
        fork_per_sweep: 200,
        ..Behavior::default()
    });
    let term_forker = w.job(Behavior {
        ignore_hup: true,
        fork_on_term: true,
        ..Behavior::default()
    });
    let r = w.run(GRACE, HARD);
    w.assert_clean(&r);
    assert!(w.sigs_to(forker).contains(&Sig::Kill));
    assert!(w.sigs_to(term_forker).contains(&Sig::Term));
    // Many forked children were each found and signalled.
    assert!(r.signalled > 20, "{r:?}");
    assert!(r.sweeps > 20);
}

#[test]
fn s05_fake_recycled_pid_is_never_signalled() {
    for (after_list, grace) in [(1, GRACE), (2, GRACE), (1, Duration::ZERO)] {
        let w = world();
        let victim = w.job(Behavior {
            ignore_hup: true,
            ignore_term: true,
            ..Behavior::default()
        });
        let old = w.t.info(victim).expect("exists").start_ticks;
        // Right after snapshot `after_list`, the member dies and its pid is
        // taken by an outsider: the ladder holds a stale snapshot.
        w.t.schedule(after_list, Event::Recycle { pid: victim });
        let r = w.run(grace, HARD);
        assert!(r.is_clean(), "{r:?}");
        let newcomer = w.t.info(victim).expect("recycled pid in use");
        assert_ne!(newcomer.start_ticks, old);
        assert!(newcomer.is_live(), "the newcomer was not harmed");
        assert!(
            w.t.refused().iter().any(|x| x.pid == victim),
            "the stale signal was attempted and refused (after list {after_list})"
        );
        let bad: Vec<_> = w.t.log().into_iter().filter(|x| x.outsider).collect();
        assert!(bad.is_empty(), "{bad:?}");
    }
}

#[test]
fn s05_fake_unkillable_member_is_reported_within_the_hard_bound() {
    let w = world();
    let stuck = w.job(Behavior {
        ignore_hup: true,
        ignore_term: true,
        unkillable: true,
        ..Behavior::default()
    });
    let r = w.run(GRACE, HARD);
    assert_eq!(r.survivors.len(), 1);
    assert_eq!(r.survivors[0].pid, stuck);
    assert_eq!(r.survivors[0].cmdline, vec![format!("fake-{stuck}")]);
    assert!(r.elapsed >= HARD, "{:?}", r.elapsed);
    assert!(r.elapsed <= HARD + 2 * POLL, "{:?}", r.elapsed);
    assert!(w.t.log().iter().all(|x| !x.outsider));
}

#[test]
fn hard_bound_below_grace_still_makes_one_sigkill_pass() {
    let w = world();
    let stubborn = w.job(Behavior {
        ignore_hup: true,
        ignore_term: true,
        ..Behavior::default()
    });
    let r = w.run(Duration::from_secs(10), Duration::from_millis(50));
    w.assert_clean(&r);
    assert!(w.sigs_to(stubborn).contains(&Sig::Kill));
    assert!(r.elapsed <= Duration::from_millis(50) + 2 * POLL);
}

#[test]
fn empty_tree_returns_at_once_and_reap_hook_runs_every_sweep() {
    let w = world();
    w.t.raw_signal(w.child, Sig::Kill);
    let mut reaps = 0;
    let r = kill_tree(&w.t, &w.clock, &w.plan(GRACE, HARD), &mut || reaps += 1);
    assert_eq!(
        r,
        KillReport {
            sweeps: 1,
            ..KillReport::default()
        }
    );
    assert_eq!(reaps, 2, "before the sweep and once at the end");
    assert!(w.t.log().is_empty());

    let w = world();
    w.job(Behavior {
        ignore_hup: true,
        ..Behavior::default()
    });
    let mut reaps = 0;
    let r = kill_tree(&w.t, &w.clock, &w.plan(GRACE, HARD), &mut || reaps += 1);
    assert_eq!(reaps, r.sweeps + 1);
}

#[test]
fn s06_fake_outside_kill_takes_the_tree_first_then_the_stopped_shellper() {
    let w = world();
    w.job(Behavior {
        ignore_hup: true,
        ignore_term: true,
        ..Behavior::default()
    });
    w.t.spawn(Spawn {
        parent: w.root,
        setsid: true,
        outsider: Some(false),
        ..Spawn::default()
    });
    w.t.raw_signal(w.root, Sig::Stop); // the wedged shellper
    let mut plan = OutsidePlan::new(w.root, w.t.info(w.root).map(|p| p.start_ticks), GRACE);
    plan.hard_bound = HARD;
    plan.poll = POLL;
    let r = kill_tree_from_outside(&w.t, &w.clock, &plan).expect("runs");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.shellper, ShellperFate::ExitedAfterTerm);
    assert!(r.sessions.contains(&w.session()));
    assert!(w.t.live_members(w.root).is_empty());
    let log = w.t.log();
    let first_root = log
        .iter()
        .position(|x| x.pid == w.root)
        .expect("root signalled");
    assert!(log[..first_root].iter().all(|x| !x.outsider), "{log:?}");
    assert!(
        log[first_root..].iter().all(|x| x.pid == w.root),
        "tree first, root last"
    );
    assert_eq!(
        log[first_root..].iter().map(|x| x.sig).collect::<Vec<_>>(),
        vec![Sig::Term, Sig::Cont]
    );
    assert!(w.t.info(w.root).is_some_and(|p| !p.is_live()));
    assert_eq!(
        w.t.live_outsiders().len(),
        w.outsiders_before - 1,
        "only the shellper"
    );
}

/// Issue 9 item 7: a session named by a sid whose leader now has another
/// start time (the pid was reused and leads an unrelated session) is not a
/// kill target: nothing of it is signalled.
#[test]
fn outside_kill_spares_a_reused_sid() {
    let w = world();
    let stranger = w.t.spawn(Spawn {
        parent: 1,
        setsid: true,
        outsider: Some(true),
        comm: Some("sshd-session".into()),
        ..Spawn::default()
    });
    let member = w.t.spawn(Spawn {
        parent: stranger,
        outsider: Some(true),
        ..Spawn::default()
    });
    let now = w.t.info(stranger).expect("stranger").start_ticks;
    let mut plan = OutsidePlan::new(w.root, w.t.info(w.root).map(|p| p.start_ticks), GRACE);
    plan.poll = POLL;
    plan.extra_sessions = vec![Session {
        sid: stranger,
        leader_start_ticks: now.saturating_sub(1),
    }];
    let r = kill_tree_from_outside(&w.t, &w.clock, &plan).expect("runs");
    assert!(r.is_clean(), "{r:?}");
    // Only the shellper itself (an "outsider" to its own ladder) and its
    // tree were signalled.
    assert!(
        w.t.log().iter().all(|x| !x.outsider || x.pid == w.root),
        "{:?}",
        w.t.log()
    );
    assert!(w.t.info(stranger).is_some_and(|p| p.is_live()));
    assert!(w.t.info(member).is_some_and(|p| p.is_live()));
}

#[test]
fn s06_fake_outside_kill_escalates_on_the_shellper_and_uses_extra_sessions() {
    let w = world();
    // A session leader that is no longer the shellper's child (it was
    // reparented to PID 1), with an escapee of its session under PID 1 too.
    let leader = w.t.spawn(Spawn {
        parent: 1,
        setsid: true,
        outsider: Some(false),
        ..Spawn::default()
    });
    let escapee = w.t.spawn(Spawn {
        parent: 1,
        session: Some(leader),
        outsider: Some(false),
        ..Spawn::default()
    });
    let start = w.t.info(w.root).map(|p| p.start_ticks);
    let leader_start_ticks = w.t.info(leader).expect("leader").start_ticks;

    // Only the extra session ties them to this shellper.
    let mut plan = OutsidePlan::new(w.root, start, GRACE);
    plan.poll = POLL;
    plan.extra_sessions = vec![Session {
        sid: leader,
        leader_start_ticks,
    }];
    let w_root = w.root;
    let clock = w.clock.clone();
    let r = kill_tree_from_outside(&w.t, &clock, &plan).expect("runs");
    assert!(w.t.info(escapee).is_some_and(|p| !p.is_live()));
    assert!(w.t.info(leader).is_some_and(|p| !p.is_live()));
    assert!(r.tree.is_clean());
    // The fake root has default behavior, so TERM ends it.
    assert_eq!(r.shellper, ShellperFate::ExitedAfterTerm);
    assert!(w.t.info(w_root).is_some_and(|p| !p.is_live()));

    // A shellper that ignores SIGTERM needs SIGKILL.
    let w = world();
    let stubborn_root = w.t.spawn(Spawn {
        parent: 1,
        setsid: true,
        subreaper: true,
        outsider: Some(true),
        behavior: Behavior {
            ignore_term: true,
            ..Behavior::default()
        },
        ..Spawn::default()
    });
    let mut plan = OutsidePlan::new(stubborn_root, None, GRACE);
    plan.poll = POLL;
    let r = kill_tree_from_outside(&w.t, &w.clock, &plan).expect("runs");
    assert_eq!(r.shellper, ShellperFate::Killed);

    let unkillable_root = w.t.spawn(Spawn {
        parent: 1,
        setsid: true,
        outsider: Some(true),
        behavior: Behavior {
            ignore_term: true,
            unkillable: true,
            ..Behavior::default()
        },
        ..Spawn::default()
    });
    let mut plan = OutsidePlan::new(unkillable_root, None, GRACE);
    plan.poll = POLL;
    let r = kill_tree_from_outside(&w.t, &w.clock, &plan).expect("runs");
    assert_eq!(r.shellper, ShellperFate::Survived);
    assert!(!r.is_clean());
}

#[test]
fn outside_kill_refuses_init_self_and_recycled_pids() {
    let w = world();
    let plan = |pid, t| OutsidePlan::new(pid, t, GRACE);
    assert!(matches!(
        kill_tree_from_outside(&w.t, &w.clock, &plan(1, None)),
        Err(Error::Refused { pid: 1, .. })
    ));
    let me = std::process::id() as i32;
    assert!(matches!(
        kill_tree_from_outside(&w.t, &w.clock, &plan(me, None)),
        Err(Error::Refused { .. })
    ));
    let ticks = w.t.info(w.root).expect("root").start_ticks;
    assert!(matches!(
        kill_tree_from_outside(&w.t, &w.clock, &plan(w.root, Some(ticks + 100))),
        Err(Error::NoSuchProcess { .. })
    ));
    assert!(w.t.log().is_empty(), "nothing signalled on refusal");
}

#[test]
fn s12_fake_descendant_walks_kill_the_same_tree_and_confirm_twice() {
    let w = world_with(true);
    let plain = w.job(Behavior::default());
    let nohup = w.job(Behavior {
        ignore_hup: true,
        ..Behavior::default()
    });
    // A setsid escapee: its own session, still below the subreaper.
    let escapee = w.t.spawn(Spawn {
        parent: plain,
        setsid: true,
        ..Spawn::default()
    });
    let mut plan = w.plan(GRACE, HARD);
    plan.scan = Scan::Descendants;
    let root = w.root;
    let r = kill_tree(&w.t, &w.clock, &plan, &mut || {
        w.t.reap_children_of(root);
    });
    w.assert_clean(&r);
    for pid in [w.child, plain, nohup, escapee] {
        assert!(!w.sigs_to(pid).is_empty(), "{pid} was not signalled");
    }
    // The last two sweeps were empty walks: one walk is not conclusive.
    let full = {
        let w2 = world_with(false);
        let p = w2.job(Behavior::default());
        let n = w2.job(Behavior {
            ignore_hup: true,
            ..Behavior::default()
        });
        w2.t.spawn(Spawn {
            parent: p,
            setsid: true,
            ..Spawn::default()
        });
        let _ = n;
        let root = w2.root;
        let mut plan = w2.plan(GRACE, HARD);
        plan.scan = Scan::Descendants; // the table cannot walk: falls back to full lists
        kill_tree(&w2.t, &w2.clock, &plan, &mut || {
            w2.t.reap_children_of(root);
        })
    };
    assert!(full.is_clean());
    assert_eq!(
        r.sweeps,
        full.sweeps + 1,
        "walks need one more (empty) sweep than full scans"
    );
}
