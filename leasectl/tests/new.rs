//! `leasectl new` and `leasectl kill` against a real minitower: a session
//! with the client's environment (minus the documented drops), `--env`,
//! `--clean-env`, `--json`; nothing started without a Tower; `kill` by the
//! Tower, and by reap's authenticated terminate when no Tower holds it.
//! `new --attach` in a real terminal (tmux) is at the end.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shellper_testkit::{LeakGuard, cargo_bin, proc_alive, wait_for};

fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn output(c: &mut assert_cmd::Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The child pid of a session, from `list --json`, once it is held.
fn child_of(guard: &LeakGuard, scope: &Path, id: &str) -> u32 {
    let (_, doc) = run_json(leasectl(guard, scope).args(["list", "--json"]));
    let e = entry(&doc, id);
    assert_eq!(e["phase"], "held", "{e}");
    e["child_pid"].as_u64().unwrap() as u32
}

#[test]
fn new_without_a_tower_says_so_and_starts_nothing() {
    let guard = LeakGuard::new("new_no_tower");
    let (_t, scope) = scope();
    // No scope directory at all, then an empty one: exit 4 either way.
    for _ in 0..2 {
        let (code, out, err) = output(leasectl(&guard, &scope).args(["new", "--", "sleep", "60"]));
        assert_eq!(code, 4, "stdout {out} stderr {err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("no Tower runs in scope"), "{err}");
        assert!(err.contains("systemctl --user start minitower"), "{err}");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::set_permissions(&scope, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
    }
    assert!(guard.survivors().is_empty(), "something was started");
    assert_eq!(
        std::fs::read_dir(&scope).unwrap().count(),
        0,
        "scope touched"
    );
    guard.finish();
}

#[test]
fn new_env_json_and_kill_through_a_running_minitower() {
    let guard = LeakGuard::new("new_kill");
    let (_t, scope) = scope();
    let mut tower = start_tower(
        &guard,
        &scope,
        "--ttl 1s --window 20s --kill-grace 300ms",
        &[],
    );
    let cwd = tempfile::tempdir().unwrap();

    // The client's environment, minus the dropped, plus --env.
    let (code, out, err) = output(
        leasectl(&guard, &scope)
            .env("TMUX", "/tmp/tmux-0/default,1,0")
            .env("COLUMNS", "132")
            .env("KEEP_ME", "kept")
            .env("FROM_HERE", "copied secret")
            .current_dir(cwd.path())
            .args(["new", "--env", "EXTRA=a=b", "--env", "FROM_HERE"])
            .args(["--", "sh", "-c", "exec sleep 1000"]),
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    assert!(id.starts_with("sh-") && id.len() == 11, "{out:?}");
    let child = child_of(&guard, &scope, &id);
    let env = environ(child);
    for want in ["KEEP_ME=kept", "EXTRA=a=b", "FROM_HERE=copied secret"] {
        assert!(env.iter().any(|v| v == want), "{want} missing: {env:?}");
    }
    assert!(env.iter().any(|v| v.starts_with("SHELLPER_LEAK_TAG=")));
    for gone in ["TMUX=", "COLUMNS="] {
        assert!(
            !env.iter().any(|v| v.starts_with(gone)),
            "{gone} kept: {env:?}"
        );
    }
    let wd = std::fs::read_link(format!("/proc/{child}/cwd")).unwrap();
    assert_eq!(wd, cwd.path().canonicalize().unwrap());
    // The Tower's events say who spawned it, never the environment.
    let ev = tower
        .lines
        .recv_timeout(Duration::from_secs(10))
        .into_iter()
        .chain(std::iter::from_fn(|| {
            tower.lines.recv_timeout(Duration::from_millis(500)).ok()
        }))
        .find(|v| v["event"] == "spawned" && v["id"] == id.as_str())
        .expect("minitower's spawned line");
    assert_eq!(ev["via"], "control");
    assert!(!ev.to_string().contains("copied secret"));

    // --clean-env: only what is given. --json: the spawn event.
    let (code, out, err) = output(
        leasectl(&guard, &scope)
            .env("KEEP_ME", "kept")
            .args(["new", "--json", "--clean-env", "--env", "SHELLPER_LEAK_TAG"])
            .args(["--cols", "100", "--rows", "30", "--window", "30s"])
            .args(["--", "/bin/sleep", "1000"]),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["event"], "spawned", "{v}");
    let id2 = v["id"].as_str().unwrap().to_string();
    let child2 = v["child_pid"].as_u64().unwrap() as u32;
    // Only what was given, and the TERM every Tower sets when none is.
    assert_eq!(
        environ(child2),
        [
            format!("SHELLPER_LEAK_TAG={}", guard.tag()),
            "TERM=xterm-256color".into()
        ]
    );
    let (_, doc) = run_json(leasectl(&guard, &scope).args(["show", &id2, "--json"]));
    assert_eq!(doc["shellper"]["timings"]["window_ms"], 30_000, "{doc}");

    // A refusal (lease over the Tower's limits) exits 1 and starts nothing.
    let before = guard.survivors().len();
    let (code, _, err) =
        output(leasectl(&guard, &scope).args(["new", "--window", "30d", "--", "sleep", "1"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("maximum"), "{err}");
    assert_eq!(guard.wait_steady(before, Duration::from_secs(5)), before);

    // kill by the Tower: confirmed, so gone when it returns.
    let (code, out, err) = output(leasectl(&guard, &scope).args(["kill", &id]));
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("terminated by the Tower"), "{out}");
    assert!(!proc_alive(child as i32), "child alive after kill");

    // No Tower holds id2 any more (detached on SIGTERM, alive for its
    // window): kill falls back to reap's authenticated terminate.
    tower.child.kill().ok();
    let _ = tower.child.wait();
    assert!(
        proc_alive(child2 as i32),
        "a Tower's death killed the session at once"
    );
    let (code, out, err) = output(leasectl(&guard, &scope).args(["kill", &id2]));
    assert_eq!(code, 0, "{out} {err}");
    assert!(err.contains("no Tower runs in the scope"), "{err}");
    assert!(wait_for(Duration::from_secs(10), || !proc_alive(
        child2 as i32
    )));
    let (code, _, _) = output(leasectl(&guard, &scope).args(["kill", "sh-00000000"]));
    assert_eq!(code, 2, "an unknown id is an error");
    guard.finish();
}

fn have_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("SHELLPER_REQUIRE_TMUX").is_none(),
            "tmux is required (SHELLPER_REQUIRE_TMUX is set) but not installed"
        );
        eprintln!("skipped: tmux is not installed");
    }
    ok
}

/// `leasectl new --attach -- bash` typed into a real terminal (a tmux pane
/// of a tmux server of the test's own): the new shell answers, ctrl-] d
/// detaches and the session lives on held, `leasectl kill` ends it.
#[test]
fn new_attach_in_a_real_terminal() {
    if !have_tmux() {
        return;
    }
    let guard = LeakGuard::new("new_attach");
    let (t, scope) = scope();
    let tower = start_tower(&guard, &scope, "--ttl 1s --window 20s", &[]);
    let sock = t.path().join("tmux.sock");
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let screen = || tmux(&["capture-pane", "-p", "-J", "-t", "t", "-S", "-"]);
    let wait_screen = |what: &str, f: &dyn Fn(&str) -> bool| {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let s = screen();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "waited for {what}; the pane shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut c = Command::new("tmux");
    c.arg("-S")
        .arg(&sock)
        .args([
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
        ])
        .arg("env PS1='outer$ ' bash --norc --noprofile")
        .env("HISTFILE", "/dev/null")
        .env("TERM", "xterm-256color")
        .env_remove("SHELLPER_SCOPE");
    guard.apply(&mut c);
    assert!(c.status().unwrap().success());
    wait_screen("the outer prompt", &|s| s.contains("outer$"));
    let line = format!(
        "{} --scope {} new --attach -- env PS1='inner$ ' bash --norc --noprofile; echo rc=$?",
        cargo_bin("leasectl").display(),
        scope.display()
    );
    tmux(&["send-keys", "-t", "t", "-l", &line]);
    tmux(&["send-keys", "-t", "t", "Enter"]);
    wait_screen("the session's prompt", &|s| s.contains("inner$"));
    tmux(&["send-keys", "-t", "t", "-l", "echo $((6*7)) $COLUMNS"]);
    tmux(&["send-keys", "-t", "t", "Enter"]);
    // The session runs in a PTY of this terminal's size.
    wait_screen("the session's answer", &|s| s.contains("42 100"));
    tmux(&["send-keys", "-t", "t", "C-]", "d"]);
    wait_screen("leasectl to detach", &|s| s.contains("rc=0"));
    // Detached, still held by the Tower.
    let (_, doc) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    let list = doc["shellpers"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{doc}");
    assert_eq!(list[0]["phase"], "held", "{doc}");
    let id = list[0]["id"].as_str().unwrap().to_string();
    let (code, _, err) = output(leasectl(&guard, &scope).args(["kill", &id]));
    assert_eq!(code, 0, "{err}");
    let _ = Command::new("tmux")
        .arg("-S")
        .arg(&sock)
        .arg("kill-server")
        .status();
    drop(tower);
    guard.finish();
}
