#![allow(clippy::unwrap_used)]
//! `leasectl list` says what is gone; `leasectl prune` removes it (dry run
//! first), never touches a live shellper, and defers to a running Tower.
//! minitower tidies on its own at start.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;
use shellper_testkit::LeakGuard;

/// Sets a file's (or a socket's) modification time `days` ago.
fn age(path: &Path, days: u64) {
    use std::os::unix::ffi::OsStrExt;
    let t = SystemTime::now() - Duration::from_secs(days * 86_400);
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [ts, ts].as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

/// (what, id) of every action of a prune report's plan (or removals).
fn actions(doc: &Value, key: &str) -> Vec<(String, String)> {
    let arr = if key == "plan" {
        &doc["plan"]["actions"]
    } else {
        &doc[key]
    };
    let mut v: Vec<(String, String)> = arr
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let file = Path::new(a["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (a["what"].as_str().unwrap().to_string(), file)
        })
        .collect();
    v.sort();
    v
}

fn registry_ids(scope: &Path) -> Vec<String> {
    let reg: Value =
        serde_json::from_slice(&std::fs::read(scope.join("registry.json")).unwrap()).unwrap();
    let mut ids: Vec<String> = reg["shellpers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn prune_removes_only_what_is_gone_and_never_a_live_shellper() {
    let guard = LeakGuard::new("leasectl_prune");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 60s --spawn 2",
        &["sleep", "600"],
    );
    let gone = tower.spawned[0].clone();
    let live = tower.spawned[1].clone();
    // The Tower dies; then one shellper is terminated (SIGTERM: it takes
    // its tree down and removes its socket). With no Tower, its registry
    // entry stays: "gone, registry entry only".
    tower.kill();
    signal(gone.pid, libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(10), || !scope
        .join(format!("{}.sock", gone.id))
        .exists()));
    // What else a scope collects: a socket file nothing listens on, the
    // log of a long-gone shellper, a rotated log of the live one.
    let stale = scope.join("sh-deadbeef.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let old_log = scope.join("sh-00000001.log");
    std::fs::write(&old_log, "old\n").unwrap();
    let live_rotated = scope.join(format!("{}.log.1", live.id));
    std::fs::write(&live_rotated, "rotated\n").unwrap();
    // Everything is a month old, the live shellper's files included.
    for e in std::fs::read_dir(&scope).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n.starts_with("sh-") {
            age(&p, 30);
        }
    }

    // `list` says plainly what is gone, and what a dead socket file is.
    let out = leasectl(&guard, &scope).arg("list").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 gone (registry entry only: socket file missing, process gone)"),
        "{text}"
    );
    assert!(
        text.contains("1 dead socket file(s) (present, nothing listening)"),
        "{text}"
    );
    assert!(!text.contains("dead socket(s)"), "{text}");
    let gone_row = text.lines().find(|l| l.starts_with(&gone.id)).unwrap();
    assert!(gone_row.contains(" gone "), "{gone_row}");

    // Dry run (the default): the plan, exit 1, nothing removed.
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["prune", "--json"]));
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["dry_run"], true);
    let old_name = old_log.file_name().unwrap().to_string_lossy().into_owned();
    let expected = {
        let mut v = vec![
            ("registry_entry".to_string(), "registry.json".to_string()),
            ("socket".to_string(), "sh-deadbeef.sock".to_string()),
            ("log".to_string(), format!("{}.log", gone.id)),
            ("log".to_string(), old_name.clone()),
        ];
        v.sort();
        v
    };
    assert_eq!(actions(&doc, "plan"), expected, "{doc}");
    assert!(registry_ids(&scope).contains(&gone.id));
    assert!(stale.exists() && old_log.exists());

    // Over a cap, the live shellper's rotated log goes too; never its
    // current log, never its entry or socket.
    let (_, capped) =
        run_json(leasectl(&guard, &scope).args(["prune", "--json", "--log-cap-mib", "0"]));
    let capped = actions(&capped, "plan");
    assert!(capped.contains(&("rotated_log".into(), format!("{}.log.1", live.id))));
    assert!(
        !capped
            .iter()
            .any(|(w, f)| f.starts_with(&live.id) && w != "rotated_log"),
        "{capped:?}"
    );

    // A Tower holding the scope (here: anything holding tower.lock's
    // flock): --yes defers, exit 3, nothing removed.
    let mut holder = Command::new("flock");
    holder
        // -o: only flock itself holds the lock, not the sleep it runs.
        .args(["-n", "-o"])
        .arg(scope.join("tower.lock"))
        .args(["sleep", "600"])
        .stdin(Stdio::null());
    guard.apply(&mut holder);
    let mut holder = holder.spawn().unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        shellper_proctree::flock_holder(&scope.join("tower.lock"))
            .ok()
            .flatten()
            .is_some()
    }));
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["prune", "--yes", "--json"]));
    assert_eq!(code, 3, "{doc}");
    assert_eq!(doc["deferred"], true);
    assert!(doc["removed"].as_array().unwrap().is_empty());
    assert!(stale.exists() && old_log.exists());
    let _ = holder.kill();
    let _ = holder.wait();

    // --yes: removed; the live shellper untouched and still answering.
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["prune", "--yes", "--json"]));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["dry_run"], false);
    assert_eq!(actions(&doc, "removed"), expected, "{doc}");
    assert_eq!(registry_ids(&scope), vec![live.id.clone()]);
    assert!(!stale.exists() && !old_log.exists());
    assert!(!scope.join(format!("{}.log", gone.id)).exists());
    for f in [
        format!("{}.sock", live.id),
        format!("{}.log", live.id),
        format!("{}.log.1", live.id),
    ] {
        assert!(scope.join(&f).exists(), "{f} removed");
    }
    let (_, list) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    let l = entry(&list, &live.id);
    assert_eq!(l["reachable"], true, "{l}");
    assert_eq!(l["in_registry"], true);
    // The lock file still names the last Tower, not leasectl.
    let last: u32 = std::fs::read_to_string(scope.join("tower.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(last, tower.pid);

    // Nothing left to do.
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["prune", "--json"]));
    assert_eq!(code, 0, "{doc}");
    assert!(doc["plan"]["actions"].as_array().unwrap().is_empty());
    guard.kill_all();
}

/// minitower tidies at start: a gone shellper's old log is removed and
/// reported in a `tidied` line; a live one's is not.
#[test]
fn minitower_tidies_its_scope_at_start() {
    let guard = LeakGuard::new("leasectl_minitower_tidy");
    let (_tmp, scope) = scope();
    std::fs::create_dir(&scope).unwrap();
    std::fs::set_permissions(
        &scope,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .unwrap();
    let old_log = scope.join("sh-000a0001.log");
    std::fs::write(&old_log, "old\n").unwrap();
    age(&old_log, 30);
    let mut tower = start_tower(&guard, &scope, "--spawn 1", &["sleep", "600"]);
    let live = tower.spawned[0].clone();
    age(&scope.join(format!("{}.log", live.id)), 30);
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let tidied = loop {
        let v = tower
            .lines
            .recv_timeout(end.saturating_duration_since(std::time::Instant::now()))
            .expect("no tidied line within 20s");
        if v["event"] == "tidied" {
            break v;
        }
    };
    let removed = tidied["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{tidied}");
    assert_eq!(removed[0]["what"], "log");
    assert_eq!(removed[0]["id"], "sh-000a0001");
    assert!(!old_log.exists());
    assert!(scope.join(format!("{}.log", live.id)).exists());
    tower.kill();
    guard.kill_all();
}

/// Item 6: `--help` of the new commands carries examples and exit codes,
/// and the completions know them.
#[test]
fn metrics_and_prune_help_and_completions() {
    for (cmd, needles) in [
        (
            "metrics",
            &[
                "Examples",
                "crontab",
                "--output",
                "Exit codes",
                "leasectl-metrics",
            ][..],
        ),
        (
            "prune",
            &[
                "Examples",
                "prune --yes",
                "--json",
                "Exit codes",
                "3  --yes while a Tower",
            ][..],
        ),
    ] {
        let out = assert_cmd::Command::new(shellper_testkit::cargo_bin("leasectl"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(help.contains(n), "{cmd} --help lacks {n:?}:\n{help}");
        }
    }
    let out = assert_cmd::Command::new(shellper_testkit::cargo_bin("leasectl"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let bash = String::from_utf8_lossy(&out.stdout);
    for n in [
        "metrics",
        "prune",
        "--keep-logs",
        "--log-cap-mib",
        "--output",
    ] {
        assert!(bash.contains(n), "bash completion lacks {n}");
    }
}
