#![allow(clippy::unwrap_used)]
//! `reap`: each method of the ladder on real trees, verified through /proc
//! (the LeakGuard's own scan is the independent check).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use shellper_testkit::LeakGuard;

fn methods(t: &Value) -> Vec<(String, bool)> {
    t["executed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["method"].as_str().unwrap().to_string(),
                s["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// s05 + s06 (Tower down): the escape-torture tree of a lapsed shellper is
/// reaped with an authenticated terminate (token from the registry), and
/// not one process of it survives.
#[test]
fn s05_reap_escape_torture_tree_leaves_zero_survivors() {
    let guard = LeakGuard::new("leasectl_reap_torture");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 500ms --window 60s --kill-grace 300ms --spawn 1",
        &["sh", "-c", TORTURE],
    );
    let sp = tower.spawned[0].clone();
    assert!(wait_torture_up(&guard), "{:?}", guard.survivors());
    tower.kill();
    let tree_before: Vec<i32> = tagged_pids(&guard);
    assert!(tree_before.len() >= 6, "{tree_before:?}");

    let (code, doc) =
        run_json(leasectl(&guard, &scope).args(["reap", &sp.id, "--json", "--grace", "3s"]));
    assert_eq!(code, 0, "{doc}");
    let t = &doc["targets"][0];
    assert_eq!(methods(t), [("auth_terminate".to_string(), true)], "{t}");
    assert!(
        t["executed"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("Requested"),
        "{t}"
    );
    assert_eq!(t["survivors"].as_array().unwrap().len(), 0);
    assert_eq!(t["clean"], true);
    let killed: Vec<i64> = t["killed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["pid"].as_i64().unwrap())
        .collect();
    for pid in &tree_before {
        assert!(
            killed.contains(&i64::from(*pid)),
            "{pid} not reported killed: {killed:?}"
        );
    }
    // Independent check: the guard's /proc scan finds nothing alive.
    assert!(guard.wait_gone(Duration::from_secs(2)).is_empty());
    // The socket file is gone; `list` shows only the stale registry entry.
    assert!(!scope.join(format!("{}.sock", sp.id)).exists());
    guard.finish();
}

/// A held shellper is refused without --force (acquiring evicts its
/// Tower); --dry-run prints the plan and touches nothing; with --force the
/// authenticated terminate evicts the Tower and takes the tree down.
#[test]
fn reap_refuses_held_without_force_and_dry_run_touches_nothing() {
    let guard = LeakGuard::new("leasectl_reap_held");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 60s --kill-grace 300ms --spawn 1",
        &["sleep", "600"],
    );
    let sp = tower.spawned[0].clone();
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["reap", &sp.id, "--json"]));
    assert_eq!(code, 1, "{doc}");
    let refused = doc["targets"][0]["refused"].as_str().unwrap();
    assert!(refused.contains("held by minitower"), "{refused}");
    assert!(refused.contains("--force"));

    let out = leasectl(&guard, &scope)
        .args(["reap", &sp.id, "--force", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let plan = String::from_utf8(out.stdout).unwrap();
    assert!(plan.contains("1. authenticated terminate"), "{plan}");
    assert!(plan.contains("2. SIGTERM"), "{plan}");
    assert!(plan.contains("3. kill ladder from outside"), "{plan}");
    assert!(plan.contains(&format!("{}", sp.child_pid)), "{plan}");
    // Nothing was touched.
    let (_, list) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    assert_eq!(entry(&list, &sp.id)["phase"], "held");

    let (code, doc) =
        run_json(leasectl(&guard, &scope).args(["reap", &sp.id, "--force", "--json"]));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        methods(&doc["targets"][0]),
        [("auth_terminate".to_string(), true)]
    );
    // Only minitower is left.
    assert!(wait_until(Duration::from_secs(3), || tagged_pids(&guard)
        == [tower.pid as i32]));
    tower.kill();
    guard.finish();
}

/// s06 (Tower down, shellper wedged): a SIGSTOPped shellper gets SIGTERM +
/// SIGCONT and runs its own ladder; a codev Node shellper that ignores
/// SIGTERM (and whose children do too) needs the ladder from outside. Zero
/// survivors either way. `--pid` refuses a process that is not a shellper.
#[test]
fn s06_reap_stopped_and_stubborn_legacy_shellpers() {
    let guard = LeakGuard::new("leasectl_reap_wedged");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 60s --kill-grace 300ms --spawn 1",
        &["sh", "-c", TORTURE],
    );
    let sp = tower.spawned[0].clone();
    assert!(wait_torture_up(&guard), "{:?}", guard.survivors());
    tower.kill();
    signal(sp.pid, libc::SIGSTOP);
    let (code, doc) = run_json(leasectl(&guard, &scope).args([
        "--timeout",
        "300ms",
        "reap",
        &sp.id,
        "--json",
        "--grace",
        "3s",
    ]));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        methods(&doc["targets"][0]),
        [("sigterm".to_string(), true)],
        "unreachable: no authenticated terminate; the shellper's own ladder after SIGCONT"
    );
    assert!(
        guard.wait_gone(Duration::from_secs(2)).is_empty(),
        "{:?}",
        guard.survivors()
    );

    let mut node = fake_node_shellper(&guard, true);
    assert!(wait_until(Duration::from_secs(3), || tagged_pids(&guard)
        .len()
        >= 3));
    let (code, doc) = run_json(leasectl(&guard, &scope).args([
        "reap",
        "--pid",
        &node.id().to_string(),
        "--json",
        "--grace",
        "300ms",
    ]));
    assert_eq!(code, 0, "{doc}");
    let t = &doc["targets"][0];
    assert_eq!(
        methods(t),
        [
            ("sigterm".to_string(), false),
            ("outside_ladder".to_string(), true)
        ],
        "{t}"
    );
    assert!(t["killed"].as_array().unwrap().len() >= 3, "{t}");
    let _ = node.wait();
    assert!(
        guard.wait_gone(Duration::from_secs(2)).is_empty(),
        "{:?}",
        guard.survivors()
    );

    // Not a shellper: refused with exit 2, nothing signalled.
    let mut plain = std::process::Command::new("sleep");
    plain.arg("600");
    guard.apply(&mut plain);
    let mut plain = plain.spawn().unwrap();
    let out = leasectl(&guard, &scope)
        .args(["reap", "--pid", &plain.id().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a shellper"));
    assert!(shellper_testkit::proc_alive(plain.id() as i32));
    let _ = plain.kill();
    let _ = plain.wait();
    guard.finish();
}

/// Session-id reuse: a husk (its PTY child exited and was reaped) still
/// reports the old `child_pid` in STATUS. When that pid now leads an
/// unrelated session, `reap --force` must take the husk down and leave the
/// stranger's session alone: sessions are kill targets only by sid *and*
/// leader start time.
///
/// Choosing a pid needs write access to `/proc/sys/kernel/ns_last_pid`
/// (root). Without it the test is skipped, unless
/// `SHELLPER_REQUIRE_NS_LAST_PID` is set (CI runs as root and sets it): then
/// it fails, so CI can never pass without running it.
#[test]
fn reap_force_on_a_husk_spares_a_session_that_reuses_its_old_child_pid() {
    if !can_choose_pids() {
        assert!(
            std::env::var_os("SHELLPER_REQUIRE_NS_LAST_PID").is_none(),
            "SHELLPER_REQUIRE_NS_LAST_PID is set, but /proc/sys/kernel/ns_last_pid is not \
             writable (not root, or a read-only /proc): the sid-reuse test cannot run"
        );
        eprintln!("skipped: choosing a pid needs write access to /proc/sys/kernel/ns_last_pid");
        return;
    }
    let guard = LeakGuard::new("leasectl_reap_sid_reuse");
    let (_tmp, scope) = scope();
    // A held husk: minitower holds a shellper whose command exits soon.
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 60s --spawn 1",
        &["sh", "-c", "sleep 1"],
    );
    let id = tower.spawned[0].id.clone();
    let id = id.as_str();
    let husk = tower.spawned[0].pid;
    let mut child_pid = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, doc) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
            let Some(e) = doc["shellpers"].as_array().unwrap().first() else {
                return false;
            };
            child_pid = e["child_pid"].as_u64().unwrap_or(0) as u32;
            e["child"]["state"] == "exited"
        }),
        "the child never exited: {:?}",
        guard.survivors()
    );
    assert!(child_pid > 1);
    // The exited child was reaped by the shellper: its pid is free. A
    // stranger takes it and leads a session of its own. (A plain `sleep`:
    // attempts that land on another pid are killed, and must leave nothing.)
    let mut stranger = spawn_at_pid(&guard, child_pid, &["sleep", "600"])
        .expect("could not start a process at the reused pid");
    assert!(wait_until(Duration::from_secs(5), || {
        shellper_testkit::read_survivor(child_pid as i32)
            .is_some_and(|s| s.comm == "sleep" && s.sid == child_pid as i32)
    }));
    let strangers = vec![child_pid as i32];

    let (code, doc) =
        run_json(leasectl(&guard, &scope).args(["reap", id, "--force", "--json", "--grace", "1s"]));
    let t = &doc["targets"][0];
    assert_eq!(code, 0, "{doc}");
    assert_eq!(t["tree"].as_array().unwrap().len(), 1, "only the husk: {t}");
    assert!(!shellper_testkit::proc_alive(husk as i32), "{t}");
    for pid in &strangers {
        assert!(
            shellper_testkit::proc_alive(*pid),
            "pid {pid} of the unrelated session was killed: {t}"
        );
    }
    let _ = stranger.kill();
    let _ = stranger.wait();
    for pid in &strangers {
        signal(*pid as u32, libc::SIGKILL);
    }
    tower.kill();
    assert!(guard.wait_gone(Duration::from_secs(3)).is_empty());
    guard.finish();
}

/// `reap --pid` of another user's process: the kernel would refuse every
/// signal (EPERM), so leasectl refuses at once with "not permitted" instead
/// of running the ladder for seconds and reporting SURVIVORS. As root, the
/// test runs leasectl as `nobody` against a root-owned shellper-looking
/// process; unprivileged, it targets pid 1 (root's).
#[test]
fn reap_pid_of_another_users_process_is_not_permitted_at_once() {
    use std::os::unix::process::CommandExt;
    let guard = LeakGuard::new("leasectl_reap_eperm");
    let root = rustix::process::geteuid().is_root();
    let mut target = None;
    let pid = if root {
        let node = fake_node_shellper(&guard, false);
        let pid = node.id();
        target = Some(node);
        pid
    } else {
        1
    };
    let scope = std::env::temp_dir().join(format!("leasectl-eperm-none-{}", std::process::id()));
    let mut cmd = std::process::Command::new(shellper_testkit::cargo_bin("leasectl"));
    cmd.env("NO_COLOR", "1")
        .env(guard.env_pair().0, guard.tag())
        .arg("--scope")
        .arg(&scope)
        .args(["reap", "--pid", &pid.to_string(), "--grace", "3s"]);
    if root {
        cmd.uid(65534).gid(65534);
    }
    let start = std::time::Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not permitted"), "{err}");
    assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
    if let Some(mut node) = target {
        assert!(shellper_testkit::proc_alive(pid as i32));
        let _ = node.kill();
        let _ = node.wait();
    }
    guard.finish();
}

/// "Held, so refuse" is decided again right before acting: a shellper that
/// was lapsed when reap scanned and was re-adopted by a restarted Tower
/// before reap acted is left alone (acquiring would evict the live Tower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_rechecks_held_right_before_acting() {
    let guard = LeakGuard::new("leasectl_reap_recheck");
    let (_tmp, scope) = scope();
    let timing = "--ttl 1s --window 60s --kill-grace 300ms";
    let mut first = start_tower(
        &guard,
        &scope,
        &format!("{timing} --spawn 1"),
        &["sleep", "600"],
    );
    let sp = first.spawned[0].clone();
    first.kill();
    // The scan sees it lapsed: the plan would take it down.
    let scan = leasectl::scan::scan_scope(&scope, Duration::from_millis(500), None)
        .await
        .unwrap();
    let v = scan.shellpers.iter().find(|v| v.id == sp.id).unwrap();
    assert_eq!(v.phase, leasectl::model::Phase::Lapsed, "{v:?}");
    let target = leasectl::reap::Target::from_view(v, &scan);
    let plan = leasectl::reap::plan(&target, &shellper_proctree::snapshot(), false);
    assert!(plan.refused.is_none() && !plan.steps.is_empty(), "{plan:?}");
    // Meanwhile a Tower re-adopts it.
    let mut second = start_tower(&guard, &scope, timing, &[]);
    assert_eq!(second.spawned.len(), 1, "re-adopted");
    let outcome = leasectl::reap::execute(
        &target,
        plan,
        Duration::from_secs(3),
        Duration::from_secs(1),
        false,
    )
    .await;
    let why = outcome.plan.refused.clone().unwrap_or_default();
    assert!(why.contains("held by"), "{outcome:?}");
    assert!(outcome.executed.is_empty(), "{outcome:?}");
    assert!(!outcome.clean);
    assert!(shellper_testkit::proc_alive(sp.pid as i32));
    assert!(shellper_testkit::proc_alive(sp.child_pid as i32));
    let (_, doc) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    assert_eq!(entry(&doc, &sp.id)["phase"], "held");
    second.kill();
    let _ = leasectl(&guard, &scope)
        .args(["reap", &sp.id, "--grace", "2s"])
        .output();
    assert!(guard.wait_gone(Duration::from_secs(3)).is_empty());
    guard.finish();
}
