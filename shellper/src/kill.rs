//! The kill ladder over the shellper's own tree (proctree does the work).
//!
//! Targets: every descendant of the shellper (it is a child subreaper, so
//! double-forked and `setsid` escapees are reparented to it and stay
//! descendants) plus every process of each PTY session it ever started
//! (processes that escaped to another subreaper but kept the session).
//! Nothing else: membership rules live in `shellper_proctree::tree`.
//!
//! With a session cgroup (SPEC.md §9.1) the cgroup goes first: SIGHUP and
//! SIGTERM to its members, the grace, `cgroup.kill`, `populated 0`, the
//! directory removed. The tree ladder then still sweeps the shellper's
//! descendants (normally nothing is left; it catches a process that moved
//! itself out of the cgroup).

use std::path::Path;
use std::time::Duration;

use shellper_proctree::{
    Cgroup, CgroupKillPlan, KillPlan, KillReport, LinuxTable, RealClock, Scan, kill_cgroup,
    kill_tree,
};

/// Runs the ladder synchronously (call it from `spawn_blocking`).
///
/// The ladder does not reap: the child actor is the shellper's one reaper
/// (it must see the PTY child's status to report EXIT), and it keeps running
/// on SIGCHLD while the ladder sweeps. Zombies count as gone for the ladder.
pub fn run_ladder(sessions: Vec<i32>, grace: Duration, cgroup: Option<&Path>) -> KillReport {
    let mut by_cgroup = KillReport::default();
    let mut grace_left = grace;
    if let Some(dir) = cgroup {
        let r = kill_cgroup(
            &Cgroup::at(dir),
            &RealClock,
            &CgroupKillPlan::new(grace),
            &mut || {},
        );
        tracing::info!(
            cgroup = %dir.display(),
            signalled = r.report.signalled,
            killed = r.report.sigkilled,
            method = r.method.map(|m| m.describe()),
            removed = r.removed,
            elapsed_ms = r.report.elapsed.as_millis() as u64,
            "session cgroup killed"
        );
        if let Some(e) = &r.remove_error {
            tracing::warn!(cgroup = %dir.display(), "session cgroup not removed: {e}");
        }
        grace_left = grace.saturating_sub(r.report.elapsed);
        by_cgroup = r.report;
    }
    let mut report = tree_ladder(sessions, grace_left);
    report.signalled += by_cgroup.signalled;
    report.sigkilled += by_cgroup.sigkilled;
    report.sweeps += by_cgroup.sweeps;
    report.elapsed += by_cgroup.elapsed;
    report.survivors.extend(by_cgroup.survivors);
    for e in by_cgroup.errors {
        if !report.errors.contains(&e) {
            report.errors.push(e);
        }
    }
    report
}

/// The process-tree ladder (the whole containment without a cgroup).
fn tree_ladder(sessions: Vec<i32>, grace: Duration) -> KillReport {
    let me = std::process::id() as i32;
    let mut plan = KillPlan::new(me, None, grace);
    // A session is named by its sid and its leader's start time, never a
    // bare sid: a PTY child this shellper already reaped may have had its
    // pid reused by a stranger leading a session of its own. Unreaped
    // children (alive or zombie) pin their pid; reaped ones are dropped
    // (their escapees are our descendants: we are a subreaper).
    plan.tree.sessions = sessions
        .into_iter()
        .filter_map(|sid| shellper_proctree::session_of_child(me, sid))
        .collect();
    plan.tree.root_start_ticks = shellper_proctree::read_stat(me).map(|p| p.start_ticks);
    // The shellper is a child subreaper (start-up fails otherwise) and alive,
    // so every member of its sessions is its descendant: walk the tree
    // instead of reading all of /proc, which keeps hundreds of ladders that
    // start together (a Tower with hundreds of shellpers died) cheap.
    plan.scan = Scan::Descendants;
    let report = kill_tree(&LinuxTable, &RealClock, &plan, &mut || {});
    if report.is_clean() {
        tracing::info!(
            signalled = report.signalled,
            sigkilled = report.sigkilled,
            sweeps = report.sweeps,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "kill ladder done: tree gone"
        );
    } else {
        tracing::error!(
            survivors = ?report.survivors,
            errors = ?report.errors,
            "kill ladder left survivors"
        );
    }
    report
}
