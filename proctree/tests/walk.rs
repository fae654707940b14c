//! The descendant walk (`/proc/PID/task/TID/children`) sees what a full
//! snapshot sees below a root, and nothing else.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use shellper_proctree::procfs::{descendants_snapshot, snapshot};
use shellper_testkit::LeakGuard;

#[test]
fn walk_finds_children_grandchildren_and_setsid_escapees() {
    let guard = LeakGuard::new("walk");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 30 & setsid sleep 30 & (sleep 30 &) ; sleep 30"]);
    guard.apply(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let root = child.id() as i32;
    // Wait until the shell has started its four sleeps (the subshell's may
    // already have been reparented away from it: not ours to see).
    let end = Instant::now() + Duration::from_secs(5);
    let walked = loop {
        let w = descendants_snapshot(root).expect("children files exist on this kernel");
        if w.iter().filter(|p| p.comm == "sleep").count() >= 3 || Instant::now() > end {
            break w;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(walked[0].pid, root, "the root comes first");
    let full = snapshot();
    // Every walked process is in the full snapshot with the same ancestry.
    for p in &walked[1..] {
        let mut cur = p.ppid;
        let mut ok = false;
        for _ in 0..64 {
            if cur == root {
                ok = true;
                break;
            }
            match full.iter().find(|q| q.pid == cur) {
                Some(q) => cur = q.ppid,
                None => break,
            }
        }
        assert!(
            ok || !full.iter().any(|q| q.pid == p.pid),
            "{p:?} is not below {root}"
        );
    }
    assert!(
        walked.iter().filter(|p| p.comm == "sleep").count() >= 3,
        "{walked:?}"
    );
    // A pid that does not exist has no walk.
    assert!(descendants_snapshot(i32::MAX - 1).is_none());
    child.kill().unwrap();
    child.wait().unwrap();
    guard.kill_all();
    guard.finish();
}

/// A child forked by a thread other than the main one is listed in that
/// thread's `children` file only: the walk lists `task/` for a
/// multi-threaded process (and reads the one file of a single-threaded
/// one).
#[test]
fn walk_finds_children_of_every_thread() {
    let guard = LeakGuard::new("walk_threads");
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (key, value) = guard.env_pair();
    let forker = std::thread::spawn(move || {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        cmd.env(key, value);
        tx.send(cmd.spawn().unwrap()).unwrap();
        // Stay alive: the child stays in this thread's `children` file.
        let _ = done_rx.recv();
    });
    let mut child = rx.recv().unwrap();
    let me = std::process::id() as i32;
    let walked = descendants_snapshot(me).expect("children files exist on this kernel");
    let found = walked.iter().any(|p| p.pid == child.id() as i32);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = done_tx.send(());
    forker.join().unwrap();
    guard.finish();
    assert!(found, "a second thread's child is missing from {walked:?}");
}
