//! Helpers shared by leasectl's integration tests: start a tagged
//! minitower, run leasectl, signal processes, fake legacy shellpers.
//!
//! Every process a test starts carries its LeakGuard's tag, so teardown
//! proves nothing survived.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shellper_testkit::{LeakGuard, cargo_bin};

/// The escape-torture PTY command: a job ignoring SIGHUP, a setsid'd
/// grandchild, a job ignoring SIGHUP and SIGTERM, an orphaned grandchild.
pub const TORTURE: &str = "(trap '' HUP; exec sleep 600) & setsid sleep 600 & \
(trap '' HUP TERM; exec sleep 600) & sh -c 'sleep 600 & exit 0' & exec sleep 600";

/// One shellper minitower spawned.
#[derive(Debug, Clone)]
pub struct Spawned {
    pub id: String,
    pub pid: u32,
    pub child_pid: u32,
}

/// A running minitower (SIGKILLed on drop).
#[derive(Debug)]
pub struct Tower {
    pub child: Child,
    pub pid: u32,
    pub spawned: Vec<Spawned>,
    pub lines: mpsc::Receiver<Value>,
    /// The `ready` event (it says which containment is in force).
    pub ready: Value,
}

impl Tower {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tower {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh scope path inside a private temporary directory.
pub fn scope() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("scope");
    (t, s)
}

/// Starts `minitower --scope SCOPE FLAGS -- CMD…` (testkit's
/// `minitower::args`: the flags on one line) tagged by `guard` and waits for
/// `ready`.
pub fn start_tower(guard: &LeakGuard, scope: &Path, flags: &str, cmd: &[&str]) -> Tower {
    let mut c = Command::new(cargo_bin("minitower"));
    c.arg("--scope")
        .arg(scope)
        .args(shellper_testkit::minitower::args(flags, cmd));
    guard.apply(&mut c);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    let mut spawned = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let left = end.saturating_duration_since(Instant::now());
        let v = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("minitower not ready within 20s"));
        match v["event"].as_str() {
            Some("spawned") | Some("adopted") => spawned.push(Spawned {
                id: v["id"].as_str().unwrap().to_string(),
                pid: v["pid"].as_u64().unwrap() as u32,
                child_pid: v["child_pid"].as_u64().unwrap() as u32,
            }),
            Some("ready") => break v,
            Some("spawn_failed") | Some("adopt_failed") => panic!("minitower: {v}"),
            _ => {}
        }
    };
    spawned.sort_by(|a, b| a.id.cmp(&b.id));
    Tower {
        child,
        pid,
        spawned,
        lines: rx,
        ready,
    }
}

/// A leasectl command on `scope`, tagged, colourless.
pub fn leasectl(guard: &LeakGuard, scope: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(cargo_bin("leasectl"));
    c.env("NO_COLOR", "1")
        .env_remove("SHELLPER_SCOPE")
        .env(guard.env_pair().0, guard.tag())
        .arg("--scope")
        .arg(scope);
    c
}

/// Runs leasectl and parses stdout as JSON; returns (exit code, JSON).
pub fn run_json(cmd: &mut assert_cmd::Command) -> (i32, Value) {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// Sends a signal.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a pid this test started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

#[allow(unused_imports)] // not every test binary polls
pub use shellper_testkit::wait_for as wait_until;

/// The entry `id` of a `list --json` document.
pub fn entry<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["shellpers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed in {doc}"))
}

/// A fake codev Node shellper: a process whose argv is
/// `node shellper-main.js …` (via bash's `exec -a`). With `stubborn`, it and
/// its two children ignore SIGHUP and SIGTERM. Returns its pid.
pub fn fake_node_shellper(guard: &LeakGuard, stubborn: bool) -> Child {
    let script = if stubborn {
        "trap '' HUP TERM; sleep 600 & setsid sleep 600 & exec -a 'node shellper-main.js' sleep 600"
    } else {
        "exec -a 'node shellper-main.js' sleep 600"
    };
    let mut c = Command::new("bash");
    c.arg("-c").arg(script);
    guard.apply(&mut c);
    c.stdin(Stdio::null()).spawn().unwrap()
}

/// A legacy (no lease) shellper started directly with friendly flags; it
/// keeps running after printing its info line. Returns its pid.
pub fn legacy_shellper(guard: &LeakGuard, socket: &Path, cmd: &[&str]) -> u32 {
    let mut c = Command::new(cargo_bin("shellper"));
    c.arg("--socket")
        .arg(socket)
        .args(["--window", "60s", "--claim", "60s", "--"])
        .args(cmd);
    guard.apply(&mut c);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    // The shellper runs on as our child: a thread reaps it when it ends.
    std::thread::spawn(move || child.wait());
    v["pid"].as_u64().unwrap() as u32
}

/// Live pids of the guard's tree.
pub fn tagged_pids(guard: &LeakGuard) -> Vec<i32> {
    guard.survivors().iter().map(|s| s.pid).collect()
}

/// Waits until the [`TORTURE`] tree is in its steady state: its five
/// `sleep`s exist (the shells have exec'd or exited). Counting all tagged
/// processes instead is racy: the transient shells count too, and a
/// process caught mid-exec can be missed by one scan.
pub fn wait_torture_up(guard: &LeakGuard) -> bool {
    wait_until(Duration::from_secs(10), || {
        guard
            .survivors()
            .iter()
            .filter(|s| s.comm == "sleep")
            .count()
            >= 5
    })
}

/// Keys whose values change from run to run (pids, times, paths, ids).
const VOLATILE: &[&str] = &[
    "id",
    "socket",
    "pid",
    "start_ticks",
    "child_pid",
    "peer_pid",
    "expires_in_ms",
    "kill_in_ms",
    "claim_in_ms",
    "cwd",
    "started_at",
    "started_at_ms",
    "age_ms",
    "scope",
    "name",
    "renewals",
    "version",
    "last_pid",
    "ppid",
    "pgid",
    "sid",
    "state",
    "comm",
    "cmdline",
    "error",
];

/// Replaces volatile values with `"<…>"` (nulls stay null, so the snapshot
/// still shows which fields are known) and sorts `clients` by kind.
pub fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let nx = if VOLATILE.contains(&k.as_str()) && !x.is_null() {
                    Value::String("<volatile>".into())
                } else if k == "clients" && x.is_array() {
                    let mut kinds: Vec<Value> =
                        x.as_array().unwrap().iter().map(normalise).collect();
                    kinds.sort_by_key(|c| c.to_string());
                    kinds.dedup();
                    Value::Array(kinds)
                } else {
                    normalise(x)
                };
                out.insert(k.clone(), nx);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// Compares `actual` with `tests/snapshots/NAME`; with
/// `LEASECTL_UPDATE_SNAPSHOTS=1` it (re)writes the file instead.
pub fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("LEASECTL_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("snapshot {name}: {e} (LEASECTL_UPDATE_SNAPSHOTS=1 writes it)"));
    assert_eq!(
        expected, actual,
        "snapshot {name} differs (LEASECTL_UPDATE_SNAPSHOTS=1 rewrites it)"
    );
}

/// Whether this process may choose the next pid: write access to
/// `/proc/sys/kernel/ns_last_pid` and the capability the kernel checks on
/// the write (CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE; the file itself may
/// open for anyone). Tests of pid reuse need it.
pub fn can_choose_pids() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_CHECKPOINT_RESTORE: u32 = 40;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let capable = eff & (1 << CAP_SYS_ADMIN) != 0 || eff & (1 << CAP_CHECKPOINT_RESTORE) != 0;
    capable
        && std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/kernel/ns_last_pid")
            .is_ok()
}

/// Starts `cmd` as pid `pid` (which must be free), in a session of its
/// own, tagged by `guard`: a stranger reusing a pid. Retries while other
/// processes on the machine take the pid first; `None` if it never lands.
pub fn spawn_at_pid(guard: &LeakGuard, pid: u32, cmd: &[&str]) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    for _ in 0..200 {
        let mut c = Command::new(cmd[0]);
        c.args(&cmd[1..]).stdin(Stdio::null());
        guard.apply(&mut c);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid - 1)).ok()?;
        let mut child = c.spawn().ok()?;
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// A held shellper with every field known: the fixture of the rendering
/// and JSON-contract snapshots.
pub fn held_view() -> leasectl::model::ShellperView {
    use leasectl::model::{HolderView, Phase, PidSource, ShellperView, Timings};
    use shellper_protocol::msg::{ChildState, ClientInfo, ClientType, Counters, HolderInfo};
    let mut v = ShellperView::bare(
        "sh-0a1b2c3d".into(),
        "/run/user/1000/shellper/sh-0a1b2c3d.sock".into(),
    );
    v.pid = Some(4242);
    v.pid_source = Some(PidSource::Status);
    v.start_ticks = Some(100);
    v.child_pid = Some(4243);
    v.child = Some(ChildState::Running);
    v.phase = Phase::Held;
    v.reachable = true;
    v.leased = Some(true);
    v.epoch = Some(3);
    v.holder = Some(HolderView {
        info: HolderInfo {
            name: "minitower@77".into(),
            pid: 77,
        },
        peer_pid: Some(77),
    });
    v.holder_alive = Some(true);
    v.expires_in_ms = Some(5400);
    v.command = Some("bash".into());
    v.args = vec!["-l".into()];
    v.cwd = Some("/home/u".into());
    v.started_at = Some("2026-01-01T00:00:00.000Z".into());
    v.started_at_ms = Some(1_767_225_600_000);
    v.age_ms = Some(3_723_000);
    v.clients = Some(vec![
        ClientInfo {
            kind: ClientType::Tower,
            pid: 77,
            holder: true,
        },
        ClientInfo {
            kind: ClientType::Terminal,
            pid: 900,
            holder: false,
        },
    ]);
    v.in_registry = true;
    v.timings = Some(Timings {
        ttl_ms: 6000,
        window_ms: 600_000,
        claim_ms: 60_000,
        kill_grace_ms: 3000,
    });
    v.counters = Some(Counters {
        acquires: 3,
        renewals: 1234,
        rejected_tokens: 1,
        stale_epochs: 2,
        revocations: 2,
        lapses: 2,
        stalls: 0,
        protocol_errors: 0,
    });
    v.version = Some("0.1.0".into());
    v
}
