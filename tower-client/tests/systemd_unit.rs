//! contrib/systemd/minitower.service: the unit keeps the sessions on stop
//! and restart, and its ExecStart command line really works.
//!
//! `systemctl --user` against a real user manager is
//! `leasectl/tests/service.rs`. What is here: the unit's settings (KillMode=process,
//! --on-exit detach), `systemd-analyze verify` when the tool exists, and
//! the ExecStart command line run as systemd would (its Environment=, the
//! default scope under $XDG_RUNTIME_DIR, stdin from /dev/null, stdout JSON
//! lines as the journal gets them), then stopped as KillMode=process stops
//! it (SIGTERM to the main process only) and started again.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shellper_testkit::{LeakGuard, cargo_bin};

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/systemd")
        .join(name)
}

/// `[Service]` keys of a unit file (last one wins; `Environment=` kept as
/// a list).
fn service_section(text: &str) -> (HashMap<String, String>, Vec<(String, String)>) {
    let mut keys = HashMap::new();
    let mut env = Vec::new();
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        if k == "Environment" {
            let (ek, ev) = v.split_once('=').unwrap();
            env.push((ek.to_string(), ev.to_string()));
        } else {
            keys.insert(k.to_string(), v.to_string());
        }
    }
    (keys, env)
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Running {
    fn wait_event(&self, name: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no {name} event within 20s"));
            if v["event"] == name {
                return v;
            }
        }
    }
}

/// Runs the unit's ExecStart (plus `extra` arguments) as systemd would.
fn exec_start(guard: &LeakGuard, runtime: &Path, extra: &[&str]) -> Running {
    let text = std::fs::read_to_string(contrib("minitower.service")).unwrap();
    let (keys, env) = service_section(&text);
    let exec = &keys["ExecStart"];
    let mut words = exec.split_whitespace();
    let program = words.next().unwrap();
    assert!(
        program.ends_with("/minitower"),
        "ExecStart runs {program}, not minitower"
    );
    let mut c = Command::new(cargo_bin("minitower"));
    c.args(words).args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env("XDG_RUNTIME_DIR", runtime).env_remove("SHELL");
    guard.apply(&mut c);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // Every line is one JSON object: one journal entry per event.
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    Running { child, lines: rx }
}

/// What `systemctl stop` does under KillMode=process: KillSignal to the
/// main process only, then wait (TimeoutStopSec).
fn stop(r: &mut Running) -> i32 {
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
    r.child.wait().unwrap().code().unwrap_or(-1)
}

fn alive(pid: u32) -> bool {
    shellper_proctree::read_stat(pid as i32).is_some_and(|p| p.is_live())
}

#[test]
fn unit_keeps_sessions_on_stop_and_its_execstart_works() {
    let text = std::fs::read_to_string(contrib("minitower.service")).unwrap();
    let (keys, _) = service_section(&text);
    assert_eq!(keys["KillMode"], "process", "sessions would die on stop");
    assert!(keys["ExecStart"].contains("--on-exit detach"));
    assert_eq!(keys["KillSignal"], "SIGTERM");
    // Sessions get a cgroup each under the unit's (issue 21).
    assert_eq!(
        keys["Delegate"], "yes",
        "minitower needs its cgroup delegated"
    );
    assert!(keys["ExecStart"].contains("--cgroup auto"));

    // systemd's own checker, on copies whose binaries exist here.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let d = tempfile::tempdir().unwrap();
        let bin_dir = cargo_bin("minitower").parent().unwrap().to_path_buf();
        for name in [
            "minitower.service",
            "leasectl-metrics.service",
            "leasectl-metrics.timer",
        ] {
            let t = std::fs::read_to_string(contrib(name))
                .unwrap()
                .replace("%h/.cargo/bin", bin_dir.to_str().unwrap());
            std::fs::write(d.path().join(name), t).unwrap();
        }
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(d.path().join("minitower.service"))
            .arg(d.path().join("leasectl-metrics.timer"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify: {err}");
        // Anything it says about our units (not about the host's) is a finding.
        assert!(
            !err.contains("minitower.service") && !err.contains("leasectl-metrics"),
            "{err}"
        );
    } else {
        eprintln!("systemd-analyze not installed: unit syntax not verified");
    }

    let guard = LeakGuard::new("systemd_unit");
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tmp.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(
        &runtime,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .unwrap();

    // Started with a session of its own (the operator's spawns go through
    // the same command line).
    let mut first = exec_start(&guard, &runtime, &["--spawn", "1", "--", "sleep", "600"]);
    let spawned = first.wait_event("spawned");
    first.wait_event("ready");
    let (id, pid, child) = (
        spawned["id"].as_str().unwrap().to_string(),
        spawned["pid"].as_u64().unwrap() as u32,
        spawned["child_pid"].as_u64().unwrap() as u32,
    );
    assert!(
        Path::new(&spawned["socket"].as_str().unwrap()).starts_with(runtime.join("shellper")),
        "default scope is $XDG_RUNTIME_DIR/shellper: {spawned}"
    );

    // `systemctl --user stop`: the Tower exits 0 after detaching; the
    // session lives on.
    assert_eq!(stop(&mut first), 0);
    let detached = first.wait_event("detached");
    assert_eq!(detached["id"], id.as_str());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(pid) && alive(child),
        "the session died with the service"
    );

    // `systemctl --user start` (or a restart): adopted, nothing lost.
    let mut second = exec_start(&guard, &runtime, &[]);
    let adopted = second.wait_event("adopted");
    assert_eq!(adopted["id"], id.as_str());
    assert_eq!(adopted["pid"], pid);
    let ready = second.wait_event("ready");
    assert_eq!(ready["held"], 1);
    assert_eq!(stop(&mut second), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(pid) && alive(child),
        "the session died with a restart"
    );
    guard.kill_all();
}
