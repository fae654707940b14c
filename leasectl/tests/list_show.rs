#![allow(clippy::unwrap_used)]
//! `list` and `show` against real shellpers held by a real minitower.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shellper_testkit::LeakGuard;

/// s04-adjacent: a SIGSTOPped shellper still accepts connections (the
/// kernel queues them) but never answers. `list` must return within its
/// bound anyway and show it as unreachable with what /proc tells: the
/// registry pid for a leased one, the socket's listener for a legacy one
/// that no registry knows. A socket with nothing behind it is `dead`.
#[test]
fn list_marks_sigstopped_shellpers_unreachable_within_bound() {
    let guard = LeakGuard::new("leasectl_list_stopped");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 30s --kill-grace 300ms --spawn 2",
        &["sleep", "600"],
    );
    let legacy_sock = scope.join("sh-0000beef.sock");
    let legacy = legacy_shellper(&guard, &legacy_sock, &["sleep", "600"]);
    drop(std::os::unix::net::UnixListener::bind(scope.join("sh-deadbeef.sock")).unwrap());
    let stopped = tower.spawned[0].clone();
    let healthy = tower.spawned[1].clone();
    signal(stopped.pid, libc::SIGSTOP);
    signal(legacy, libc::SIGSTOP);

    let start = Instant::now();
    let (code, doc) =
        run_json(leasectl(&guard, &scope).args(["--timeout", "300ms", "list", "--json"]));
    let took = start.elapsed();
    assert_eq!(code, 0);
    assert!(
        took < Duration::from_millis(2500),
        "list took {took:?} with two stopped shellpers (timeout 300ms)"
    );
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["tower"]["pid"], tower.pid);

    let s = entry(&doc, &stopped.id);
    assert_eq!(s["phase"], "unreachable", "{s}");
    assert_eq!(s["reachable"], false);
    assert_eq!(s["proc_state"], "stopped");
    assert_eq!(s["pid"], stopped.pid);
    assert_eq!(s["pid_source"], "registry");
    assert_eq!(s["child_pid"], stopped.child_pid);
    assert_eq!(s["in_registry"], true);
    assert_eq!(s["command"], "sleep");
    assert!(s["error"].as_str().unwrap().contains("no answer"), "{s}");

    let h = entry(&doc, &healthy.id);
    assert_eq!(h["phase"], "held", "{h}");
    assert_eq!(h["reachable"], true);
    assert_eq!(h["pid"], healthy.pid);
    assert_eq!(h["child_pid"], healthy.child_pid);
    assert_eq!(h["epoch"], 1);
    assert_eq!(h["holder"]["peer_pid"], tower.pid);
    assert_eq!(h["holder_alive"], true);
    assert!(h["expires_in_ms"].as_u64().unwrap() <= 1000);
    assert!(h["kill_in_ms"].is_null());
    assert!(h["age_ms"].as_u64().is_some());
    assert!(h["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(!h["clients"].as_array().unwrap().is_empty());

    let l = entry(&doc, "sh-0000beef");
    assert_eq!(l["phase"], "unreachable", "{l}");
    assert_eq!(l["pid"], legacy);
    assert_eq!(l["pid_source"], "socket");
    assert_eq!(l["in_registry"], false);
    assert_eq!(
        l["command"], "sleep",
        "argv of the shellper gives the command: {l}"
    );

    let d = entry(&doc, "sh-deadbeef");
    assert_eq!(d["phase"], "dead", "{d}");
    assert!(d["pid"].is_null());

    let out = leasectl(&guard, &scope)
        .args(["--timeout", "300ms", "list"])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("unreachable(stopped)"), "{table}");
    assert!(table.contains(" dead "), "{table}");
    assert!(!table.contains('\x1b'), "NO_COLOR: no escapes\n{table}");

    signal(stopped.pid, libc::SIGCONT);
    signal(legacy, libc::SIGCONT);
    tower.kill();
    guard.kill_all();
    guard.finish();
}

/// The JSON shapes of `list` and `show` (volatile values normalised) and
/// the table's header and alignment, against committed snapshots.
#[test]
fn list_and_show_shapes_match_snapshots() {
    let guard = LeakGuard::new("leasectl_shapes");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 2s --window 30s --spawn 1",
        &["sleep", "600"],
    );
    let id = tower.spawned[0].id.clone();
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    assert_eq!(code, 0);
    snapshot(
        "list.json",
        &(serde_json::to_string_pretty(&normalise(&doc)).unwrap() + "\n"),
    );
    let (code, show) = run_json(leasectl(&guard, &scope).args(["show", &id, "--json"]));
    assert_eq!(code, 0);
    snapshot(
        "show.json",
        &(serde_json::to_string_pretty(&normalise(&show)).unwrap() + "\n"),
    );

    let out = leasectl(&guard, &scope).arg("list").output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    // Column widths follow the data (pid digits, path lengths): the
    // snapshot is of the column names; alignment is checked below.
    let names: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    snapshot("list_header.txt", &format!("{}\n", names.join(" | ")));
    // Every column of the row starts where its header starts.
    let header = lines[0];
    let row = lines[1];
    for col in [
        "PID", "CHILD", "PHASE", "EPOCH", "HOLDER", "EXPIRES", "AGE", "CWD", "COMMAND",
    ] {
        let at = header.find(col).unwrap();
        assert_eq!(
            &row[at - 2..at],
            "  ",
            "column {col} misaligned:\n{header}\n{row}"
        );
        assert_ne!(
            &row[at..at + 1],
            " ",
            "column {col} empty:\n{header}\n{row}"
        );
    }
    assert!(lines.last().unwrap().starts_with("1 shellper(s) in "));

    tower.kill();
    guard.kill_all();
    guard.finish();
}

/// `show` gives the whole tree of an escape-torture session (pids, process
/// groups, sessions, commands) and the lease counters.
#[test]
fn show_reports_process_tree_and_counters() {
    let guard = LeakGuard::new("leasectl_show_tree");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 300ms --window 30s --spawn 1",
        &["sh", "-c", TORTURE],
    );
    let sp = tower.spawned[0].clone();
    // shellper + sh + 5 sleeps once the torture tree is up.
    assert!(
        wait_torture_up(&guard),
        "torture tree did not come up: {:?}",
        guard.survivors()
    );
    std::thread::sleep(Duration::from_millis(400)); // a few renewals
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["show", &sp.id, "--json"]));
    assert_eq!(code, 0);
    let s = &doc["shellper"];
    assert_eq!(s["pid"], sp.pid);
    assert!(s["counters"]["renewals"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["counters"]["rejected_tokens"], 0);
    assert_eq!(s["counters"]["stale_epochs"], 0);
    let tree = doc["tree"].as_array().unwrap();
    assert_eq!(tree[0]["role"], "shellper");
    assert_eq!(tree[0]["pid"], sp.pid);
    assert!(
        tree.iter()
            .any(|t| t["role"] == "child" && t["pid"] == sp.child_pid)
    );
    let descendants: Vec<_> = tree.iter().filter(|t| t["role"] == "descendant").collect();
    // Three background jobs and the orphaned grandchild (the child is the
    // shell itself, exec'd into sleep).
    assert!(descendants.len() >= 4, "{tree:?}");
    // The setsid'd sleeper has a session of its own: found anyway.
    assert!(
        descendants
            .iter()
            .any(|t| t["sid"] != sp.child_pid && t["sid"] == t["pid"]),
        "no escaped session in {tree:?}"
    );
    // Background jobs of a non-interactive shell keep its group; pgids are shown.
    assert!(tree.iter().all(|t| t["pgid"].as_i64().unwrap() > 1));
    let every_tagged: std::collections::BTreeSet<i64> =
        tagged_pids(&guard).into_iter().map(i64::from).collect();
    let shown: std::collections::BTreeSet<i64> =
        tree.iter().map(|t| t["pid"].as_i64().unwrap()).collect();
    let tower_pid = i64::from(tower.pid);
    let missing: Vec<_> = every_tagged
        .difference(&shown)
        .filter(|p| **p != tower_pid)
        .collect();
    assert!(missing.is_empty(), "tree misses {missing:?}");

    let out = leasectl(&guard, &scope)
        .args(["show", &sp.id])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("process tree ("), "{text}");
    assert!(text.contains("counters:"), "{text}");
    assert!(text.contains("PGID"), "{text}");

    let out = leasectl(&guard, &scope)
        .args(["show", "sh-00000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shellper sh-00000000"));

    tower.kill();
    guard.kill_all();
    guard.finish();
}
