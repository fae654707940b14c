#![allow(clippy::unwrap_used)]
//! `leasectl logs`: a real shellper's log, printed and followed across its
//! own rotations.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use shellper_testkit::LeakGuard;

/// Rotation threshold given to the shellper (its minimum is 1024).
const ROTATE: &str = "4096";

/// A tower whose shellper logs every connection (debug) and rotates its log
/// every 4 KiB.
fn chatty_tower(guard: &LeakGuard, scope: &Path) -> Tower {
    // SAFETY: this binary has one test, and no other thread reads or
    // writes the environment meanwhile; start_tower's child inherits them.
    unsafe {
        std::env::set_var("SHELLPER_LOG", "debug");
        std::env::set_var("SHELLPER_LOG_ROTATE_BYTES", ROTATE);
    }
    start_tower(
        guard,
        scope,
        "--ttl 3s --window 30s --kill-grace 300ms --on-exit terminate --spawn 1",
        &["sleep", "600"],
    )
}

fn stop_tower(mut tower: Tower) {
    signal(tower.pid, libc::SIGTERM);
    let end = Instant::now() + Duration::from_secs(20);
    while tower.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "minitower did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The connection numbers of the "WELCOME sent: …, connection N" lines of
/// `text` (one per STATUS query).
fn attached_conns(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.contains("WELCOME sent"))
        .filter_map(|l| {
            l.rsplit_once("connection ")
                .and_then(|(_, n)| n.trim().parse().ok())
        })
        .collect()
}

fn inode(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.ino())
}

/// `logs -f` keeps up across rotations: every connection the shellper
/// logged while it followed appears once, in order, although the live file
/// was renamed and replaced several times meanwhile. Also `--lines`, `--all`
/// and an unknown id.
#[test]
fn logs_prints_and_follows_across_rotations() {
    let guard = LeakGuard::new("leasectl_logs");
    let (_tmp, scope) = scope();
    let tower = chatty_tower(&guard, &scope);
    let id = tower.spawned[0].id.clone();
    let log = scope.join(format!("{id}.log"));
    let rotated = scope.join(format!("{id}.log.1"));

    // Printing: the live file as it is.
    let out = leasectl(&guard, &scope)
        .args(["logs", &id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let now = std::fs::read(&log).unwrap();
    assert!(
        now.starts_with(&out.stdout),
        "logs printed something else than the live file"
    );

    // Follow while the shellper's log rotates at least twice.
    let mut follower = std::process::Command::new(shellper_testkit::cargo_bin("leasectl"));
    follower
        .env("NO_COLOR", "1")
        .arg("--scope")
        .arg(&scope)
        .args(["logs", "-f", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    guard.apply(&mut follower);
    let mut follower = follower.spawn().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let seen = seen.clone();
        let mut stdout = follower.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    // Everything printed before the follower started is in its output.
    assert!(wait_until(Duration::from_secs(10), || !seen
        .lock()
        .unwrap()
        .is_empty()));
    let first_inode = inode(&log).unwrap();
    let mut inodes = BTreeSet::from([first_inode]);
    let end = Instant::now() + Duration::from_secs(60);
    let mut queries = 0;
    while inodes.len() < 3 {
        assert!(
            Instant::now() < end,
            "the log rotated only {} time(s) after {queries} queries",
            inodes.len() - 1
        );
        // Each STATUS query is four debug lines in the shellper's log.
        let out = leasectl(&guard, &scope)
            .args(["--timeout", "3s", "show", &id])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        queries += 1;
        if let Some(i) = inode(&log) {
            inodes.insert(i);
        }
        // Leave the follower (polling every 200 ms) time to see each
        // rotation: two rotations between its polls would lose the
        // middle file, as with `tail -F`.
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(rotated.exists());
    // The last query's lines reach the follower. The live file may hold no
    // "WELCOME sent" line yet (the rotation can fall between a query's
    // two lines, so the new file starts with "Connection N closed"): query
    // until it does.
    let last = loop {
        let live = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(c) = attached_conns(&live).last() {
            break *c;
        }
        assert!(Instant::now() < end, "no query reached the live log");
        let out = leasectl(&guard, &scope)
            .args(["--timeout", "3s", "show", &id])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            attached_conns(&String::from_utf8_lossy(&seen.lock().unwrap())).contains(&last)
        }),
        "the follower never printed connection {last}"
    );
    signal(follower.id(), libc::SIGINT);
    let status = follower.wait().unwrap();
    assert_eq!(status.code(), Some(0), "logs -f on SIGINT");
    reader.join().unwrap();
    let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    let conns = attached_conns(&text);
    let from = conns[0];
    let expected: Vec<u64> = (from..=last).collect();
    assert_eq!(
        conns,
        expected,
        "the follower lost or repeated lines across {} rotations",
        inodes.len() - 1
    );

    // --lines and --all (nothing is being written now).
    let live = std::fs::read_to_string(&log).unwrap();
    let out = leasectl(&guard, &scope)
        .args(["logs", &id, "-n", "3"])
        .output()
        .unwrap();
    let tail: Vec<&str> = live.lines().rev().take(3).collect();
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got.lines().count(), tail.len(), "{got}");
    assert_eq!(got.lines().rev().collect::<Vec<_>>(), tail);
    let out = leasectl(&guard, &scope)
        .args(["logs", &id, "--all"])
        .output()
        .unwrap();
    let mut both = std::fs::read(&rotated).unwrap();
    both.extend(std::fs::read(&log).unwrap());
    assert_eq!(
        out.stdout, both,
        "--all is the rotated file, then the live one"
    );

    let out = leasectl(&guard, &scope)
        .args(["logs", "sh-00000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shellper sh-00000000"));
    let out = leasectl(&guard, &scope)
        .args(["logs", "../scope/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    stop_tower(tower);
    guard.finish();
}
