#![allow(clippy::unwrap_used)]
//! `watch` (JSON lines, Ctrl-C), `demo` (verdict, Ctrl-C cleanup) and the
//! CLI contract (help, exit codes, completions, errors).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shellper_testkit::{LeakGuard, cargo_bin};

/// s01 seen through `watch`: not on a terminal it prints one JSON line per
/// change; the phases go held → lapsed → dead after the Tower's SIGKILL;
/// Ctrl-C ends it cleanly with exit 0.
#[test]
fn s01_watch_prints_phase_changes_as_json_lines_and_exits_on_ctrl_c() {
    let guard = LeakGuard::new("leasectl_watch");
    let (_tmp, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 300ms --window 1s --kill-grace 200ms --spawn 1",
        &["sleep", "600"],
    );
    let sp = tower.spawned[0].clone();
    let mut c = Command::new(cargo_bin("leasectl"));
    c.arg("--scope")
        .arg(&scope)
        .args(["watch", "--interval", "50ms"])
        .stdout(Stdio::piped());
    guard.apply(&mut c);
    let mut watch = c.spawn().unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = tx.send(serde_json::from_str(&l).unwrap());
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(first["schema_version"], 1);
    assert_eq!(first["event"], "added");
    assert_eq!(first["id"], sp.id.as_str());
    assert_eq!(first["phase"], "held");
    assert_eq!(first["shellper"]["pid"], sp.pid);
    tower.kill();
    let mut phases = vec!["held".to_string()];
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && phases.last().map(String::as_str) != Some("dead") {
        if let Ok(ev) = rx.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(ev["id"], sp.id.as_str());
            assert_eq!(ev["previous"], phases.last().unwrap().as_str(), "{ev}");
            phases.push(ev["phase"].as_str().unwrap().to_string());
        }
    }
    let expected_core = ["held", "lapsed"];
    assert_eq!(&phases[..2], expected_core, "{phases:?}");
    assert_eq!(phases.last().unwrap(), "dead", "{phases:?}");
    // Between lapse and death the shellper runs its ladder and exits; under
    // load a STATUS query may time out meanwhile (unreachable).
    assert!(
        phases[2..phases.len() - 1]
            .iter()
            .all(|p| p == "terminating" || p == "unreachable"),
        "{phases:?}"
    );
    signal(watch.id(), libc::SIGINT);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "watch ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    guard.finish();
}

/// The demo: exit 0, a verdict with zero survivors, and nothing left
/// running (the guard's tag reaches every demo process through minitower).
#[test]
fn s01_s02_s05_demo_exits_zero_with_zero_survivors() {
    let guard = LeakGuard::new("leasectl_demo");
    let start = Instant::now();
    let out = assert_cmd::Command::new(cargo_bin("leasectl"))
        .env(guard.env_pair().0, guard.tag())
        .env("NO_COLOR", "1")
        .args(["demo", "--window", "2s"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(text.contains("ok   survivors: 0 (act 1"), "{text}");
    assert!(text.contains("+ 0 (act 2)"), "{text}");
    assert!(text.contains("held → lapsed"), "{text}");
    assert!(text.contains("→ gone"), "{text}");
    assert!(
        text.contains("3/3 adopted, 3/3 same child pids, 0 killed"),
        "{text}"
    );
    assert!(text.contains("DEMO OK: survivors: 0"), "{text}");
    guard.finish();
}

/// Ctrl-C in the middle of the demo (after the Tower was SIGKILLed, while
/// the shellpers wait out their window) leaves nothing running.
#[test]
fn demo_interrupted_leaves_nothing_running() {
    let guard = LeakGuard::new("leasectl_demo_int");
    let mut c = Command::new(cargo_bin("leasectl"));
    c.env("NO_COLOR", "1")
        .args(["demo", "--window", "10s"])
        .stdout(Stdio::piped());
    guard.apply(&mut c);
    let mut demo = c.spawn().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = tx.send(l);
        }
    });
    let end = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains("held → lapsed") {
        assert!(Instant::now() < end, "demo never got to the lapse: {seen}");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&l);
            seen.push('\n');
        }
    }
    assert!(
        tagged_pids(&guard).len() > 3,
        "demo processes should be running"
    );
    signal(demo.id(), libc::SIGINT);
    let status = demo.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("nothing left running")),
        "{rest:?}"
    );
    assert!(guard.survivors().is_empty(), "{:?}", guard.survivors());
    guard.finish();
}

#[test]
fn help_documents_examples_and_exit_codes() {
    let out = assert_cmd::Command::new(cargo_bin("leasectl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Examples:",
        "leasectl orphans --tracked -",
        "Exit codes:",
        "0    success",
        "1    `orphans`: orphans found",
        "2    error",
        "130",
        "RUST_LOG",
        "list",
        "show",
        "watch",
        "orphans",
        "reap",
        "demo",
        "attach",
        "logs",
        "completions",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    let out = assert_cmd::Command::new(cargo_bin("leasectl"))
        .args(["orphans", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit codes:"));
    for (cmd, needles) in [
        (
            "attach",
            &[
                "Examples:",
                "ctrl-] d",
                "Exit codes of attach:",
                "128+S",
                "--read-only",
            ][..],
        ),
        (
            "logs",
            &["Examples:", "Exit codes of logs:", "--follow", "--lines"][..],
        ),
    ] {
        let out = assert_cmd::Command::new(cargo_bin("leasectl"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(help.contains(n), "{cmd} --help lacks {n:?}:\n{help}");
        }
    }
}

#[test]
fn completions_for_common_shells() {
    for (shell, needle) in [
        ("bash", "_leasectl"),
        ("zsh", "#compdef leasectl"),
        ("fish", "complete -c leasectl"),
    ] {
        let out = assert_cmd::Command::new(cargo_bin("leasectl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(s.contains(needle), "{shell}: {s}");
        assert!(s.contains("orphans") && s.contains("--tracked"), "{shell}");
        assert!(
            s.contains("attach") && s.contains("detach-keys") && s.contains("read-only"),
            "{shell}: attach"
        );
        assert!(s.contains("logs") && s.contains("follow"), "{shell}: logs");
    }
}

#[test]
fn errors_exit_2_with_context() {
    let guard = LeakGuard::new("leasectl_errors");
    let (tmp, scope) = scope();
    // A scope that does not exist yet is empty, not an error.
    let out = leasectl(&guard, &scope).arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no shellpers in scope"));
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    assert_eq!((code, doc["shellpers"].as_array().unwrap().len()), (0, 0));
    // An unknown id.
    let out = leasectl(&guard, &scope)
        .args(["reap", "sh-12345678"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A scope with loose permissions is refused, naming the fix.
    let loose = tmp.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(
        &loose,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let out = leasectl(&guard, &loose).arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("755") && err.contains("chmod 700"), "{err}");
    // A corrupt registry is reported, never taken as empty.
    let s = tmp.path().join("corrupt");
    std::fs::create_dir(&s).unwrap();
    std::fs::set_permissions(
        &s,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .unwrap();
    std::fs::write(s.join("registry.json"), "{garbage").unwrap();
    for cmd in [
        &["list"][..],
        &["list", "--json"],
        &["orphans", "--scope-only"],
    ] {
        let out = leasectl(&guard, &s).args(cmd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains("is corrupt"), "{cmd:?}: {err}");
        assert_eq!(
            err.matches("is corrupt").count(),
            1,
            "{cmd:?}: warned once: {err}"
        );
    }
    // Usage errors are clap's exit 2.
    let out = leasectl(&guard, &scope).args(["reap"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    guard.finish();
}

/// `watch` on a terminal hides the cursor while it redraws; whichever way
/// it is stopped (Ctrl-C, `kill`, the terminal hanging up) it shows the
/// cursor again and exits 0.
#[test]
fn watch_on_a_terminal_restores_the_cursor_when_killed() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::Read;
    let guard = LeakGuard::new("leasectl_watch_cursor");
    let (_tmp, scope) = scope();
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        let mut c = Command::new(cargo_bin("leasectl"));
        c.env("NO_COLOR", "1")
            .arg("--scope")
            .arg(&scope)
            .args(["watch", "--interval", "100ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::null());
        guard.apply(&mut c);
        let mut child = c.spawn().unwrap();
        drop(slave);
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let mut reader = std::fs::File::from(master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last writer closed the terminal: end of output.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let end = Instant::now() + Duration::from_secs(10);
        while !text(&seen).contains("leasectl watch") && Instant::now() < end {
            if let Ok(b) = rx.recv_timeout(Duration::from_millis(100)) {
                seen.extend(b);
            }
        }
        assert!(
            text(&seen).contains("\x1b[?25l"),
            "cursor hidden: {:?}",
            text(&seen)
        );
        signal(child.id(), sig);
        let exited = wait_until(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        assert!(exited, "watch did not exit on signal {sig}");
        assert_eq!(child.wait().unwrap().code(), Some(0), "signal {sig}");
        while let Ok(b) = rx.recv_timeout(Duration::from_millis(300)) {
            seen.extend(b);
        }
        let out = text(&seen);
        let hidden = out.rfind("\x1b[?25l").unwrap();
        assert!(
            out[hidden..].contains("\x1b[?25h"),
            "cursor not shown again after signal {sig}: {:?}",
            &out[hidden..]
        );
    }
    guard.finish();
}
