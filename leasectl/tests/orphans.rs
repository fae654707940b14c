#![allow(clippy::unwrap_used)]
//! `orphans`: lapsed leases, dead Towers, socketless and codev Node
//! shellpers, and the `--tracked` diff. Other engineers' tests run on this
//! machine at the same time, so system-wide findings are checked for *our*
//! pids only, never for absence of everything else.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use shellper_testkit::LeakGuard;

fn orphan_by_pid(doc: &Value, pid: u32) -> Option<&Value> {
    doc["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["pid"] == pid)
}

fn reasons(o: &Value) -> Vec<String> {
    o["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

/// A Tower SIGSTOPped past its TTL leaves lapsed leases whose holder is
/// alive; the same Tower SIGKILLed leaves lapsed leases whose Tower is dead.
/// A fake codev `node shellper-main.js` and a `sh …/shellper-main.js`
/// without sockets are socketless orphans. Exit code 1 when anything is
/// found, 0 for a healthy scope with `--scope-only`.
#[test]
fn orphans_finds_lapsed_dead_holder_and_legacy_processes() {
    let guard = LeakGuard::new("leasectl_orphans");
    let (tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 300ms --window 30s --spawn 2",
        &["sleep", "600"],
    );
    // Healthy: nothing to report in the scope.
    let out = leasectl(&guard, &scope)
        .args(["orphans", "--scope-only"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("no orphans"));

    // Fakes of codev's Node shellper, with no socket anywhere.
    let mut node = fake_node_shellper(&guard, false);
    let script = tmp.path().join("shellper-main.js");
    std::fs::write(&script, "sleep 600\n").unwrap();
    let mut c = std::process::Command::new("sh");
    c.arg(&script);
    guard.apply(&mut c);
    let mut sh_script = c.spawn().unwrap();

    // Lapsed by silence: the Tower is stopped, still alive.
    signal(tower.pid, libc::SIGSTOP);
    let a = tower.spawned[0].clone();
    let b = tower.spawned[1].clone();
    assert!(wait_until(Duration::from_secs(5), || {
        let (_, d) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
        d["shellpers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["phase"] == "lapsed")
    }));
    let (code, doc) =
        run_json(leasectl(&guard, &scope).args(["orphans", "--json", "--scope-only"]));
    assert_eq!(code, 1);
    let o = orphan_by_pid(&doc, a.pid).expect("lapsed shellper reported");
    assert_eq!(reasons(o), ["lapsed"], "Tower alive (stopped): {o}");
    assert_eq!(o["id"], a.id.as_str());
    assert!(o["detail"].as_str().unwrap().contains("kill in"));

    // Now the Tower dies: its shellpers wait for nobody.
    tower.kill();
    // The fakes must be older than the start-up grace to count as socketless.
    std::thread::sleep(Duration::from_millis(2100));
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["orphans", "--json"]));
    assert_eq!(code, 1);
    for sp in [&a, &b] {
        let o = orphan_by_pid(&doc, sp.pid).expect("scope orphan");
        assert_eq!(reasons(o), ["lapsed", "holder_dead"], "{o}");
        assert!(
            o["detail"].as_str().unwrap().contains("Tower is gone"),
            "{o}"
        );
        assert_eq!(o["child_pid"], sp.child_pid);
    }
    let n = orphan_by_pid(&doc, node.id()).expect("fake node shellper reported");
    assert_eq!(reasons(n), ["no_socket"], "{n}");
    assert_eq!(n["flavor"], "node");
    assert!(n["id"].is_null());
    let s = orphan_by_pid(&doc, sh_script.id()).expect("sh shellper-main.js reported");
    assert_eq!(reasons(s), ["no_socket"]);
    assert!(doc["shellper_processes"].as_u64().unwrap() >= 4);

    // The human report names them and says how to reap.
    let out = leasectl(&guard, &scope).arg("orphans").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("holder_dead"), "{text}");
    assert!(text.contains("no_socket"), "{text}");
    assert!(text.contains("leasectl reap --orphans"), "{text}");
    assert_eq!(out.status.code(), Some(1));

    let _ = node.kill();
    let _ = node.wait();
    let _ = sh_script.kill();
    let _ = sh_script.wait();
    guard.kill_all();
    guard.finish();
}

/// `--tracked` reports running shellpers whose pid (or child's pid) is not
/// in the list, from a pid file or codev's /api/terminals JSON on stdin.
#[test]
fn orphans_tracked_diffs_pid_lists_and_codev_json() {
    let guard = LeakGuard::new("leasectl_tracked");
    let (tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 30s --spawn 3",
        &["sleep", "600"],
    );
    let [a, b, c] = [
        tower.spawned[0].clone(),
        tower.spawned[1].clone(),
        tower.spawned[2].clone(),
    ];
    // a by its own pid, b by its child's pid (codev reports either); c unknown.
    let file = tmp.path().join("pids.txt");
    std::fs::write(
        &file,
        format!("# tracked by Tower\n{}\n{}\n", a.pid, b.child_pid),
    )
    .unwrap();
    let (code, doc) = run_json(leasectl(&guard, &scope).args([
        "orphans",
        "--json",
        "--tracked",
        file.to_str().unwrap(),
    ]));
    assert_eq!(code, 1);
    assert_eq!(doc["tracked"], 2);
    assert!(orphan_by_pid(&doc, a.pid).is_none(), "a is tracked: {doc}");
    assert!(
        orphan_by_pid(&doc, b.pid).is_none(),
        "b is tracked by child pid: {doc}"
    );
    let o = orphan_by_pid(&doc, c.pid).expect("c untracked");
    assert_eq!(reasons(o), ["untracked"]);
    assert_eq!(o["id"], c.id.as_str());

    let codev = format!(
        r#"{{"terminals":[{{"id":"t1","pid":{},"shellperPid":{}}},{{"id":"t2","shellperPid":"{}"}},{{"id":"t3"}}]}}"#,
        a.child_pid, a.pid, c.pid
    );
    let (code, doc) = run_json(
        leasectl(&guard, &scope)
            .args(["orphans", "--json", "--tracked", "-"])
            .write_stdin(codev),
    );
    assert_eq!(code, 1);
    assert!(orphan_by_pid(&doc, a.pid).is_none());
    assert!(orphan_by_pid(&doc, c.pid).is_none());
    assert_eq!(
        reasons(orphan_by_pid(&doc, b.pid).expect("b untracked")),
        ["untracked"]
    );

    // Everything tracked and healthy: exit 0 within the scope.
    let all = format!("{}\n{}\n{}\n", a.pid, b.pid, c.pid);
    let out = leasectl(&guard, &scope)
        .args(["orphans", "--scope-only", "--tracked", "-"])
        .write_stdin(all)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Unreadable input is an error (exit 2), naming the input.
    let out = leasectl(&guard, &scope)
        .args(["orphans", "--tracked", "-"])
        .write_stdin("12\nnot-a-pid\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("<stdin>") && err.contains("line 2"), "{err}");

    tower.kill();
    guard.kill_all();
    guard.finish();
}

/// A shellper killed by SIGKILL (the OOM killer, an operator) leaves its
/// child's session running under PID 1. The scope still names it (the
/// registry has the shellper's start time, its log the child's pid), so
/// `orphans` reports the session, and `reap --orphans` takes it down by sid
/// and leader start time.
#[test]
fn orphans_reports_the_session_of_a_sigkilled_shellper_and_reap_takes_it_down() {
    let guard = LeakGuard::new("leasectl_orphans_dead_shellper");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 60s --spawn 1",
        // The terminal's hang-up (the PTY master closes with the shellper)
        // is ignored, as by nohup'd jobs and agents that trap SIGHUP.
        &["sh", "-c", "trap '' HUP; sleep 600 & exec sleep 600"],
    );
    let sp = tower.spawned[0].clone();
    assert!(wait_until(Duration::from_secs(5), || {
        guard
            .survivors()
            .iter()
            .filter(|s| s.comm == "sleep")
            .count()
            == 2
    }));
    tower.kill();
    signal(sp.pid, libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(5), || {
        !shellper_testkit::proc_alive(sp.pid as i32)
    }));
    let session: Vec<i32> = tagged_pids(&guard);
    assert_eq!(session.len(), 2, "{:?}", guard.survivors());

    let (code, doc) =
        run_json(leasectl(&guard, &scope).args(["orphans", "--scope-only", "--json"]));
    assert_eq!(code, 1, "{doc}");
    let o = doc["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == sp.id.as_str())
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(o["reasons"], serde_json::json!(["shellper_gone"]), "{o}");
    assert_eq!(o["sessions"][0]["sid"], sp.child_pid, "{o}");

    let (code, doc) = run_json(leasectl(&guard, &scope).args([
        "reap",
        "--orphans",
        "--scope-only",
        "--json",
        "--grace",
        "1s",
    ]));
    assert_eq!(code, 0, "{doc}");
    assert!(guard.wait_gone(Duration::from_secs(3)).is_empty());
    let (code, doc) =
        run_json(leasectl(&guard, &scope).args(["orphans", "--scope-only", "--json"]));
    assert_eq!(code, 0, "{doc}");
    guard.finish();
}
