//! The leak guard proves its own claims with real processes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shellper_testkit::{LeakGuard, Survivor, cargo_bin, proc_alive, read_survivor, scan_tagged};

fn panic_text(err: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = err.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = err.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        String::from("<non-string panic>")
    }
}

/// Starts `script` under `sh -c` with the guard's tag, waits for `sh` itself
/// to exit (so whatever it left behind is orphaned) and returns the tagged
/// process whose comm is `comm`, once it shows up.
fn leak_via_sh(guard: &LeakGuard, script: &str, comm: &str) -> Survivor {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    guard.apply(&mut cmd);
    let status = cmd.status().expect("spawn sh");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = guard.survivors().into_iter().find(|s| s.comm == comm) {
            return s;
        }
        assert!(Instant::now() < deadline, "the {comm} never showed up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn deliberate_setsid_leak_is_found_killed_and_named() {
    let guard = LeakGuard::new("deliberate_leak").with_settle(Duration::from_millis(200));
    let leaked = leak_via_sh(&guard, "setsid sleep 30 &", "sleep");
    // It really escaped: its own session, and its parent `sh` is gone.
    assert_eq!(leaked.sid, leaked.pid, "setsid made it a session leader");
    assert_ne!(leaked.ppid, std::process::id() as i32);
    assert!(proc_alive(leaked.pid));
    assert!(guard.survivors().iter().any(|s| s.pid == leaked.pid));
    assert!(
        scan_tagged(Some(guard.tag()))
            .iter()
            .any(|s| s.pid == leaked.pid),
        "the CI gate sees it too"
    );

    let err = catch_unwind(AssertUnwindSafe(move || guard.finish()))
        .expect_err("finish must fail the test when a process leaked");
    let msg = panic_text(err);
    assert!(
        msg.contains(&format!("pid {} (sleep)", leaked.pid)),
        "{msg}"
    );
    assert!(msg.contains("sleep 30"), "cmdline named: {msg}");
    assert!(!proc_alive(leaked.pid), "finish killed the survivor");
}

#[test]
fn clean_run_passes_and_waits_for_stragglers() {
    let guard = LeakGuard::new("clean_run");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("true");
    guard.apply(&mut cmd);
    assert!(cmd.status().expect("spawn").success());
    // A straggler that exits on its own within the settle time is no leak.
    let straggler = leak_via_sh(&guard, "sleep 0.3 &", "sleep");
    assert!(proc_alive(straggler.pid));
    guard.finish();
    assert!(!proc_alive(straggler.pid));
}

#[test]
fn zombies_are_ignored() {
    let guard = LeakGuard::new("zombie");
    let mut cmd = Command::new("true");
    guard.apply(&mut cmd);
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    // Do not wait: the child stays a zombie of this process until we do.
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_survivor(pid).map(|s| s.state) != Some('Z') {
        assert!(Instant::now() < deadline, "child never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!proc_alive(pid));
    assert!(guard.survivors().is_empty());
    guard.finish();
    child.wait().expect("reap");
}

#[test]
fn drop_without_finish_fails_the_test_on_leaks() {
    let handle = std::thread::spawn(|| {
        let guard = LeakGuard::new("drop_leak").with_settle(Duration::from_millis(100));
        let leaked = leak_via_sh(&guard, "setsid sleep 30 &", "sleep");
        let pid = leaked.pid;
        let r = catch_unwind(AssertUnwindSafe(move || drop(guard)));
        (pid, r.map_err(panic_text))
    });
    let (pid, r) = handle.join().expect("thread");
    let msg = r.expect_err("drop must panic on a leak");
    assert!(msg.contains(&format!("pid {pid} (sleep)")), "{msg}");
    assert!(!proc_alive(pid));
}

#[test]
fn drop_while_panicking_kills_silently() {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let guard = LeakGuard::new("panicking");
        let leaked = leak_via_sh(&guard, "setsid sleep 30 &", "sleep");
        tx.send(leaked.pid).expect("send");
        panic!("the test's own failure");
    });
    let msg = panic_text(handle.join().expect_err("thread panicked"));
    assert_eq!(msg, "the test's own failure", "original panic kept");
    let pid = rx.recv().expect("pid");
    assert!(!proc_alive(pid), "guard killed the tree while unwinding");
}

#[test]
fn cargo_bin_finds_a_workspace_binary() {
    let path = cargo_bin("leak-scan");
    assert!(path.is_file(), "{}", path.display());
    let guard = LeakGuard::new("leak_scan_cli");
    let mut cmd = Command::new(&path);
    guard.apply(cmd.arg("--help"));
    assert!(cmd.status().expect("run").success());
    let mut cmd = Command::new(&path);
    guard.apply(cmd.arg("--bogus"));
    assert_eq!(cmd.status().expect("run").code(), Some(2));
    guard.finish();
}
