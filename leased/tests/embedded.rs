//! The embedding API end to end: minitower holds the example program
//! `leased_worker` (no PTY) through `--shellper`; the Tower is SIGKILLed and
//! the program's whole tree (a shell, a `setsid` escapee, a process ignoring
//! HUP and TERM) is gone after the reattach window, not before.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shellper_testkit::{LeakGuard, cargo_bin};

/// `target/<profile>/examples/leased_worker`. `cargo test` builds examples;
/// with a target filter (`--test embedded`) build them first:
/// `cargo build -p shellper-leased --examples`.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let p = profile_dir.join("examples").join("leased_worker");
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build -p shellper-leased --examples`",
        p.display()
    );
    p
}

const TREE: &str = "sleep 300 & setsid sleep 300 & (trap '' HUP TERM; sleep 300) & wait";

fn read_event(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    want: &str,
) -> serde_json::Value {
    for line in lines.by_ref() {
        let line = line.expect("minitower stdout");
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        if v["event"] == want {
            return v;
        }
    }
    panic!("minitower ended before the {want} event");
}

#[test]
fn s01_tower_sigkilled_embedded_worker_tree_gone_after_window() {
    let guard = LeakGuard::new("leased_s01").with_settle(Duration::from_secs(5));
    let dir = tempfile::tempdir().expect("tempdir");
    let scope = dir.path().join("scope");
    let window = Duration::from_millis(2000);
    let grace = Duration::from_millis(500);
    let mut cmd = Command::new(cargo_bin("minitower"));
    cmd.arg("--scope")
        .arg(&scope)
        .arg("--shellper")
        .arg(example_bin())
        .args([
            "--ttl",
            "300ms",
            "--window",
            "2s",
            "--kill-grace",
            "500ms",
            "--spawn",
            "1",
        ])
        .args(["--", "sh", "-c", TREE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    guard.apply(&mut cmd);
    let mut tower = cmd.spawn().expect("spawn minitower");
    let mut lines = BufReader::new(tower.stdout.take().expect("stdout")).lines();
    let spawned = read_event(&mut lines, "spawned");
    let worker_pid = spawned["pid"].as_i64().expect("pid") as i32;
    read_event(&mut lines, "ready");

    // The worker, sh and three sleeps, all tagged, besides minitower.
    let deadline = Instant::now() + Duration::from_secs(10);
    let tower_pid = tower.id() as i32;
    let others = || {
        guard
            .survivors()
            .into_iter()
            .filter(|s| s.pid != tower_pid)
            .collect::<Vec<_>>()
    };
    while others().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "tree never complete: {:?}",
            others()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(others().iter().any(|s| s.pid == worker_pid));
    // Renewals keep it alive for several TTLs, held by minitower as leasectl sees it.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(others().len() >= 5, "tree died while held: {:?}", others());
    let out = Command::new(cargo_bin("leasectl"))
        .arg("--scope")
        .arg(&scope)
        .args(["list", "--json"])
        .output()
        .expect("run leasectl");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("leasectl JSON");
    let entry = &listed["shellpers"][0];
    assert_eq!(
        entry["pid"].as_i64(),
        Some(i64::from(worker_pid)),
        "{listed}"
    );
    assert_eq!(
        entry["phase"].as_str().map(str::to_lowercase).as_deref(),
        Some("held"),
        "{listed}"
    );
    assert!(
        entry["holder"].to_string().contains("minitower"),
        "{listed}"
    );
    assert_eq!(entry["epoch"].as_u64(), Some(1), "{listed}");

    tower.kill().expect("SIGKILL minitower");
    let killed_at = Instant::now();
    let _ = tower.wait();

    // Not before the window: everything is still there shortly before it ends.
    std::thread::sleep(window.saturating_sub(Duration::from_millis(500)));
    let alive = others();
    assert!(
        alive.len() >= 5,
        "the tree died before its window ({:?} after the kill): {alive:?}",
        killed_at.elapsed()
    );
    // Gone within window + grace + a generous margin for a loaded machine.
    let left = guard.wait_gone(
        (window + grace + Duration::from_millis(2500)).saturating_sub(killed_at.elapsed()),
    );
    assert!(
        left.is_empty(),
        "survivors {:?} after the Tower's SIGKILL: {left:?}",
        killed_at.elapsed()
    );
    eprintln!(
        "tree gone {:?} after the Tower's SIGKILL (window {window:?}, kill grace {grace:?})",
        killed_at.elapsed()
    );
    guard.finish();
}
