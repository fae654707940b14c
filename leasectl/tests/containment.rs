#![allow(clippy::unwrap_used)]
//! Containment end to end, through minitower, the shellper and leasectl,
//! with real cgroups (issue 21). Each test has a cgroup parent of its own
//! (`TestCgroup`, killed and removed at teardown) and a leak guard; the tests
//! that need a writable cgroup v2 are skipped, saying why, where there is
//! none.

mod common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{TORTURE, entry, leasectl, run_json, scope, signal, start_tower};
use serde_json::Value;
use shellper_testkit::cgroup::{TestCgroup, populated, procs};
use shellper_testkit::minitower::MiniTower;
use shellper_testkit::{LeakGuard, wait_for};

fn test_cgroup(name: &str) -> Option<TestCgroup> {
    match TestCgroup::new(name) {
        Ok(t) => Some(t),
        Err(why) => {
            eprintln!("SKIP {name}: no writable cgroup v2 ({why})");
            None
        }
    }
}

/// One session in a cgroup under `t`, held by a minitower; once its cgroup
/// has `procs` processes, the Tower is killed and the shellper SIGKILLed (the
/// session runs on, under PID 1, in its cgroup). Returns the session and its
/// cgroup.
fn orphan_a_session(
    guard: &LeakGuard,
    scope: &std::path::Path,
    t: &TestCgroup,
    cmd: &[&str],
    procs_at_least: usize,
) -> (common::Spawned, std::path::PathBuf) {
    let flags = format!(
        "--ttl 1s --window 60s --spawn 1 --cgroup {}",
        t.dir().display()
    );
    let mut tower = start_tower(guard, scope, &flags, cmd);
    let sp = tower.spawned[0].clone();
    let cg = t.join(&sp.id);
    assert!(wait_for(Duration::from_secs(10), || {
        procs(&cg).len() >= procs_at_least
    }));
    tower.kill();
    signal(sp.pid, libc::SIGKILL);
    assert!(wait_for(Duration::from_secs(5), || {
        !shellper_testkit::proc_alive(sp.pid as i32)
    }));
    (sp, cg)
}

fn cpu_usec(doc: &Value, id: &str) -> u64 {
    entry(doc, id)["containment"]["cpu_usec"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cpu_usec: {doc}"))
}

/// `leasectl list --json` reports the session's CPU time, growing while the
/// session burns CPU; `show` says which containment is in force.
#[test]
fn list_json_shows_cpu_time_growing_while_a_session_burns_cpu() {
    let Some(t) = test_cgroup("lc-cpu") else {
        return;
    };
    let guard = LeakGuard::new("leasectl_cgroup_cpu");
    let (_tmp, scope) = scope();
    let flags = format!(
        "--ttl 1s --window 30s --kill-grace 300ms --spawn 1 --on-exit terminate --cgroup {}",
        t.dir().display()
    );
    let mut tower = start_tower(&guard, &scope, &flags, &["sh", "-c", "while :; do :; done"]);
    assert_eq!(
        tower.ready["containment"]["kind"], "cgroup",
        "{}",
        tower.ready
    );
    assert_eq!(
        tower.ready["containment"]["base"],
        t.dir().to_str().unwrap(),
        "{}",
        tower.ready
    );
    let id = tower.spawned[0].id.clone();
    let (code, first) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    assert_eq!(code, 0, "{first}");
    let c = &entry(&first, &id)["containment"];
    assert_eq!(c["cgroup"], t.dir().join(&id).to_str().unwrap(), "{first}");
    assert_eq!(c["procs"], 1, "the busy shell alone: {first}");
    let before = cpu_usec(&first, &id);
    // The busy loop gets CPU even on a loaded machine: wait until it shows.
    let mut after = before;
    let end = Instant::now() + Duration::from_secs(20);
    while after < before + 100_000 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(300));
        let (_, doc) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
        after = cpu_usec(&doc, &id);
    }
    assert!(
        after >= before + 100_000,
        "CPU time grew from {before} µs to only {after} µs"
    );
    let out = leasectl(&guard, &scope)
        .args(["show", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "containment:  cgroup {}",
            t.dir().join(&id).display()
        )),
        "{text}"
    );
    assert!(text.contains("usage:        cpu "), "{text}");
    let out = leasectl(&guard, &scope).args(["list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().unwrap().contains("CPU    MEM  PROCS") || text.contains("PROCS"),
        "{text}"
    );
    // The metrics carry it too.
    let out = leasectl(&guard, &scope).args(["metrics"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shellper_session_processes{scope=")
            && text.contains("shellper_session_cpu_seconds_total{"),
        "{text}"
    );
    signal(tower.pid, libc::SIGTERM);
    let _ = tower.child.wait();
    assert!(guard.wait_gone(Duration::from_secs(10)).is_empty());
    assert!(!t.join(&id).exists(), "session cgroup removed");
    guard.finish();
}

/// Tower and shellper SIGKILLed while the session forks a new process every
/// few ms: `leasectl reap --orphans` kills the session's cgroup (from the
/// registry), and nothing survives, not even the youngest.
#[test]
fn reap_after_tower_and_shellper_are_sigkilled_leaves_nothing_of_a_forking_session() {
    let Some(t) = test_cgroup("lc-reap") else {
        return;
    };
    let guard = LeakGuard::new("leasectl_cgroup_reap");
    let (_tmp, scope) = scope();
    let (sp, cg) = orphan_a_session(
        &guard,
        &scope,
        &t,
        &[
            "sh",
            "-c",
            "trap '' HUP; while :; do setsid sleep 600 & sleep 0.005; done",
        ],
        20,
    );
    // Still forking, under PID 1, inside its cgroup.
    let n = procs(&cg).len();
    std::thread::sleep(Duration::from_millis(100));
    assert!(procs(&cg).len() > n, "the session keeps forking");

    let (code, doc) =
        run_json(leasectl(&guard, &scope).args(["orphans", "--scope-only", "--json"]));
    assert_eq!(code, 1, "{doc}");
    let o = doc["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == sp.id.as_str())
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(o["cgroup"], cg.to_str().unwrap(), "{o}");

    let (code, doc) = run_json(leasectl(&guard, &scope).args([
        "reap",
        "--orphans",
        "--scope-only",
        "--json",
        "--grace",
        "300ms",
    ]));
    assert_eq!(code, 0, "{doc}");
    let steps = doc["targets"][0]["executed"].to_string();
    assert!(steps.contains("cgroup_kill"), "{doc}");
    assert!(!populated(&cg), "populated 0");
    assert!(!cg.exists(), "removed");
    let left = guard.wait_gone(Duration::from_secs(3));
    assert!(left.is_empty(), "survivors: {left:?}");
    guard.finish();
}

/// A session that ended by itself after its shellper was SIGKILLed (no
/// Tower) leaves an empty cgroup behind: `prune --yes` removes it with the
/// gone entry, and leaves nothing of the session.
#[test]
fn prune_removes_the_empty_cgroup_of_a_session_that_ended_after_its_shellper_was_killed() {
    let Some(t) = test_cgroup("lc-prune") else {
        return;
    };
    let guard = LeakGuard::new("leasectl_cgroup_prune");
    let (_tmp, scope) = scope();
    let (_sp, cg) = orphan_a_session(
        &guard,
        &scope,
        &t,
        &["sh", "-c", "trap '' HUP; sleep 1.5"],
        1,
    );
    // The session ends on its own; its cgroup stays, empty.
    assert!(wait_for(Duration::from_secs(10), || !populated(&cg)));
    assert!(cg.exists());

    let (code, doc) = run_json(leasectl(&guard, &scope).args(["prune", "--json"]));
    assert_eq!(code, 1, "a dry run that found work: {doc}");
    assert!(cg.exists(), "a dry run removes nothing");
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["prune", "--yes", "--json"]));
    assert_eq!(code, 0, "{doc}");
    let removed = doc["removed"].to_string();
    assert!(removed.contains("\"cgroup\""), "{doc}");
    assert!(removed.contains("\"registry_entry\""), "{doc}");
    assert!(!cg.exists(), "the empty cgroup was removed: {doc}");
    let left = guard.wait_gone(Duration::from_secs(3));
    assert!(left.is_empty(), "survivors: {left:?}");
    guard.finish();
}

/// A cgroup option pointing at a missing path: the process-tree ladder
/// runs, and the report says so (ready event, `show`).
#[test]
fn a_missing_cgroup_falls_back_to_the_process_tree_ladder_and_says_so() {
    let guard = LeakGuard::new("leasectl_cgroup_missing");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 30s --kill-grace 300ms --spawn 1 --on-exit terminate --cgroup /nonexistent/shellper-cg",
        &["sh", "-c", TORTURE],
    );
    let c = &tower.ready["containment"];
    assert_eq!(c["kind"], "process_tree", "{}", tower.ready);
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("no writable cgroup v2"),
        "{}",
        tower.ready
    );
    let id = tower.spawned[0].id.clone();
    let out = leasectl(&guard, &scope)
        .args(["show", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("containment:  process tree (no writable cgroup v2)"),
        "{text}"
    );
    let (_, doc) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    assert_eq!(
        entry(&doc, &id)["containment"]["cgroup"],
        Value::Null,
        "{doc}"
    );
    assert!(guard.wait_steady(5, Duration::from_secs(10)) >= 5);
    // Terminate on exit: the /proc ladder takes the torture tree down.
    signal(tower.pid, libc::SIGTERM);
    let _ = tower.child.wait();
    let left = guard.wait_gone(Duration::from_secs(10));
    assert!(left.is_empty(), "survivors: {left:?}");
    guard.finish();
}

/// `--cgroup auto` in a cgroup of its own (as a delegated service would
/// be): minitower moves itself into the leaf `tower`, each session gets a
/// sibling cgroup, the escape torture tree lives in it and dies with it.
#[test]
fn auto_moves_minitower_into_a_leaf_and_contains_each_session_beside_it() {
    let Some(t) = test_cgroup("lc-auto") else {
        return;
    };
    let guard = LeakGuard::new("leasectl_cgroup_auto");
    let (_tmp, scope) = scope();
    let procs_file = std::fs::OpenOptions::new()
        .write(true)
        .open(t.join("cgroup.procs"))
        .unwrap();
    let args = shellper_testkit::minitower::args(
        "--ttl 1s --window 30s --kill-grace 300ms --spawn 1 --on-exit terminate --cgroup auto",
        &["sh", "-c", TORTURE],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = MiniTower::command(&guard, &scope, &args);
    // SAFETY: write(2) on an open descriptor, between fork and exec.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = procs_file.as_raw_fd();
        c.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut mt = MiniTower::spawn(c, true);
    let spawned = mt.event("spawned", Duration::from_secs(20));
    let ready = mt.event("ready", Duration::from_secs(20));
    let id = spawned["id"].as_str().unwrap().to_string();
    assert_eq!(ready["containment"]["kind"], "cgroup", "{ready}");
    assert_eq!(
        ready["containment"]["base"],
        t.dir().to_str().unwrap(),
        "{ready}"
    );
    assert_eq!(
        ready["containment"]["tower_leaf"],
        t.join("tower").to_str().unwrap(),
        "{ready}"
    );
    // minitower and its shellper (born there) sit in the leaf; the
    // session's processes do not.
    let leaf = procs(&t.join("tower"));
    assert!(leaf.contains(&mt.pid()), "minitower in its leaf: {leaf:?}");
    let shellper = spawned["pid"].as_u64().unwrap() as i32;
    assert!(leaf.contains(&shellper), "the shellper beside it: {leaf:?}");
    assert_eq!(leaf.len(), 2, "nothing of the session there: {leaf:?}");
    assert!(procs(t.dir()).is_empty(), "no process in the base itself");
    assert!(guard.wait_steady(6, Duration::from_secs(10)) >= 6);
    let session = procs(&t.join(&id));
    assert!(
        session.len() >= 5,
        "the torture tree is in the session's cgroup: {session:?}"
    );
    signal(mt.pid() as u32, libc::SIGTERM);
    let _ = mt.child.wait();
    let left = guard.wait_gone(Duration::from_secs(10));
    assert!(left.is_empty(), "survivors: {left:?}");
    assert!(!t.join(&id).exists(), "session cgroup removed");
    guard.finish();
}
