//! The shipped unit (contrib/systemd/minitower.service) under a REAL systemd
//! user manager, used as the README tells a user to: `systemctl --user
//! start`, `leasectl new`, `restart` (the session is re-adopted: same child,
//! new epoch), `stop` (the session lives out its hold), `start` (adopted
//! again); then the README's `--on-exit terminate` drop-in, whose `stop`
//! ends every tree.
//!
//! No user manager runs on CI machines, but one can be started: in a
//! private mount namespace (`unshare -m`), a tmpfs over /run/systemd with a
//! `system` directory in it (what makes systemd believe it was booted with
//! systemd), `XDG_RUNTIME_DIR` and `HOME` in a temporary directory, then
//! `/lib/systemd/systemd --user`. `systemctl --user` reaches it from outside
//! the namespace through `$XDG_RUNTIME_DIR/systemd/private` (no D-Bus
//! needed). The manager passes its environment to its units, the leak
//! guard's tag included; `leasectl new` passes it to the sessions. At
//! teardown the manager is SIGKILLed and the guard proves that nothing
//! survived (it kills and names whatever did).
//!
//! Needs root (a mount namespace), `unshare`, `systemctl` and
//! `/lib/systemd/systemd`: without them the test says so and passes, unless
//! `SHELLPER_REQUIRE_SYSTEMD=1` (CI sets it), where it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shellper_testkit::{LeakGuard, cargo_bin, proc_alive, wait_for};

const SYSTEMD: &str = "/lib/systemd/systemd";
/// Generous: a loaded 2-core machine, a manager starting, a debug build.
const WAIT: Duration = Duration::from_secs(30);

fn contrib_unit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/minitower.service")
}

/// Why a user manager cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !Path::new(SYSTEMD).is_file() {
        return Some(format!("{SYSTEMD} is not installed"));
    }
    for tool in ["unshare", "systemctl"] {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("{tool} is not installed"));
        }
    }
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not root (a private mount namespace needs CAP_SYS_ADMIN)".into());
    }
    None
}

fn can_run() -> bool {
    match missing() {
        None => true,
        Some(why) => {
            assert!(
                std::env::var_os("SHELLPER_REQUIRE_SYSTEMD").is_none(),
                "a systemd user manager is required (SHELLPER_REQUIRE_SYSTEMD is set): {why}"
            );
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// The cgroups the manager runs in: a v2 one of the test's own (testkit's
/// `TestCgroup`: whatever is left inside is killed and every directory
/// removed on drop) and, on a hybrid host, its twin in systemd's v1
/// `name=systemd` hierarchy, where that systemd tracks its units. Without
/// them the manager would take the cgroup root for its own and leave its
/// `app.slice` there.
struct Cgroups {
    v2: Option<shellper_testkit::cgroup::TestCgroup>,
    v1: Option<PathBuf>,
}

impl Cgroups {
    fn new() -> Cgroups {
        let v2 = shellper_testkit::cgroup::TestCgroup::new("systemd-user")
            .map_err(|e| eprintln!("no cgroup v2 of our own ({e}); the manager runs in ours"))
            .ok();
        let v1_root = Path::new("/sys/fs/cgroup/systemd");
        let v1 = v2.as_ref().and_then(|v2| {
            let name = v2.dir().file_name()?;
            let named = std::fs::read_to_string("/proc/self/mountinfo")
                .ok()?
                .lines()
                .any(|l| l.contains(" /sys/fs/cgroup/systemd ") && l.contains("name=systemd"));
            let d = v1_root.join(name);
            (named && std::fs::create_dir(&d).is_ok()).then_some(d)
        });
        Cgroups { v2, v1 }
    }

    /// `echo $$ > …/cgroup.procs` for each.
    fn enter_script(&self) -> String {
        let dirs = self
            .v2
            .iter()
            .map(|c| c.dir().to_path_buf())
            .chain(self.v1.clone());
        dirs.map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display()))
            .collect()
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        drop(self.v2.take());
        if let Some(v1) = &self.v1 {
            // Deepest first; empty by now (the guard and cgroup.kill saw to it).
            let end = Instant::now() + Duration::from_secs(5);
            while v1.exists() && Instant::now() < end {
                let mut dirs = vec![v1.clone()];
                let mut i = 0;
                while i < dirs.len() && dirs.len() < 1024 {
                    if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                        dirs.extend(
                            rd.flatten()
                                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                                .map(|e| e.path()),
                        );
                    }
                    i += 1;
                }
                for d in dirs.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A systemd user manager of the test's own, SIGKILLed on drop.
struct Manager {
    child: Child,
    cgroups: Option<Cgroups>,
    xdg: PathBuf,
    home: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn start(guard: &LeakGuard) -> Manager {
        // Short paths: a shellper socket path must fit in 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("sd")
            .tempdir_in("/tmp")
            .unwrap();
        let xdg = dir.path().join("x");
        let home = dir.path().join("h");
        for d in [&xdg, &home] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
        }
        // Installed as the README says: the unit in the user's unit
        // directory, the binaries where its ExecStart looks (a symlink:
        // minitower finds the shellper next to its real path).
        let units = home.join(".config/systemd/user");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::copy(contrib_unit(), units.join("minitower.service")).unwrap();
        let bin = home.join(".cargo/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(cargo_bin("minitower"), bin.join("minitower")).unwrap();
        let log = dir.path().join("manager.log");
        let cgroups = Cgroups::new();
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "{}mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/system && exec {SYSTEMD} --user",
                cgroups.enter_script()
            ))
            .env("XDG_RUNTIME_DIR", &xdg)
            .env("HOME", &home)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("SHELLPER_SCOPE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("manager.err")).unwrap());
        guard.apply(&mut c);
        let child = c.spawn().unwrap();
        let m = Manager {
            child,
            cgroups: Some(cgroups),
            xdg,
            home,
            log,
            _dir: dir,
        };
        let private = m.xdg.join("systemd/private");
        assert!(
            wait_for(WAIT, || private.exists()),
            "the user manager did not come up: {}",
            m.logs()
        );
        m
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "stdout: {}\nstderr: {}",
            read(&self.log),
            read(&self.log.with_file_name("manager.err"))
        )
    }

    /// `systemctl --user ARGS`, which must succeed; its stdout.
    fn systemctl(&self, args: &[&str]) -> String {
        let out = Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env("HOME", &self.home)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemctl --user {args:?}: {}{}\nstatus: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.status()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self) -> String {
        let out = Command::new("systemctl")
            .args(["--user", "status", "--no-pager", "minitower"])
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, prop: &str) -> String {
        self.systemctl(&["show", "-p", prop, "--value", "minitower"])
            .trim()
            .to_string()
    }

    fn main_pid(&self) -> u32 {
        self.show("MainPID").parse().unwrap()
    }

    /// leasectl as the user runs it: the default scope
    /// ($XDG_RUNTIME_DIR/shellper), tagged.
    fn leasectl(&self, guard: &LeakGuard) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(cargo_bin("leasectl"));
        c.env("XDG_RUNTIME_DIR", &self.xdg)
            .env("HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("SHELLPER_SCOPE")
            .env(guard.env_pair().0, guard.tag());
        c
    }

    fn list(&self, guard: &LeakGuard) -> Value {
        let out = self
            .leasectl(guard)
            .args(["list", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "list --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Waits until session `id` is held by the minitower with pid
    /// `holder` at an epoch above `after`; returns (epoch, child pid).
    fn wait_held_by(&self, guard: &LeakGuard, id: &str, holder: u32, after: u64) -> (u64, u32) {
        let end = Instant::now() + WAIT;
        loop {
            let doc = self.list(guard);
            let e = doc["shellpers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == id)
                .cloned()
                .unwrap_or(Value::Null);
            let epoch = e["epoch"].as_u64().unwrap_or(0);
            if e["phase"] == "held" && e["holder"]["pid"] == holder && epoch > after {
                return (epoch, e["child_pid"].as_u64().unwrap() as u32);
            }
            assert!(
                Instant::now() < end,
                "{id} not held by minitower {holder} at an epoch above {after}: {e}\n{}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts (or restarts) the unit. Type=notify: when systemctl returns,
    /// minitower has said READY=1, so its control socket answers at once
    /// (no polling: `systemctl --user start minitower && leasectl new` must
    /// not race the start).
    fn start_unit(&self, verb: &str, old: u32) -> u32 {
        self.systemctl(&[verb, "minitower"]);
        let pid = self.main_pid();
        assert!(
            pid != 0 && pid != old,
            "no new minitower: {}",
            self.status()
        );
        assert_eq!(self.show("ActiveState"), "active", "{}", self.status());
        let ctl = self.xdg.join("shellper/tower.ctl");
        assert!(ctl.exists(), "started, but no control socket yet");
        pid
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // The manager first (its units cannot be restarted behind our
        // back), then the guard kills what is left and names it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Manager {
    /// Ends the manager, then whatever its cgroups still hold, and removes
    /// them (the guard checks afterwards that nothing tagged survived).
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.cgroups.take());
    }
}

/// The README's `--on-exit terminate` drop-in, as printed there.
fn readme_drop_in() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("```ini\n# systemctl --user edit minitower\n")
        .expect("the README shows the drop-in");
    let body = &readme[start + "```ini\n".len()..];
    body[..body.find("```").unwrap()].to_string()
}

#[test]
fn the_shipped_unit_under_a_real_user_manager_keeps_sessions_across_restart_and_stop() {
    if !can_run() {
        return;
    }
    let guard = LeakGuard::new("systemd_user");
    let m = Manager::start(&guard);
    m.systemctl(&["daemon-reload"]);

    // Start the service; ask it for a session.
    let tower1 = m.start_unit("start", 0);
    let out = m
        .leasectl(&guard)
        .args(["new", "--", "sh", "-c", "exec sleep 1000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "new: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (e1, child) = m.wait_held_by(&guard, &id, tower1, 0);
    // The guard sees the manager, the service and the session, or its
    // final check would prove nothing.
    let tagged: Vec<i32> = guard.survivors().iter().map(|p| p.pid).collect();
    for (what, pid) in [
        ("the manager", m.child.id() as i32),
        ("minitower", tower1 as i32),
        ("the session", child as i32),
    ] {
        assert!(tagged.contains(&pid), "{what} is not tagged: {tagged:?}");
    }

    // restart: re-adopted, same child, new epoch.
    let tower2 = m.start_unit("restart", tower1);
    assert!(!proc_alive(tower1 as i32), "the old minitower still runs");
    let (e2, c2) = m.wait_held_by(&guard, &id, tower2, e1);
    assert_eq!(c2, child, "restart replaced the session's child");

    // stop: the session lives out its hold; nobody takes requests.
    m.systemctl(&["stop", "minitower"]);
    assert_eq!(m.show("ActiveState"), "inactive", "{}", m.status());
    assert!(!proc_alive(tower2 as i32));
    std::thread::sleep(Duration::from_secs(1));
    assert!(proc_alive(child as i32), "stop killed the session");
    let out = m
        .leasectl(&guard)
        .args(["new", "--", "sleep", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "new without a Tower must fail");

    // start: adopted again.
    let tower3 = m.start_unit("start", tower2);
    let (e3, c3) = m.wait_held_by(&guard, &id, tower3, e2);
    assert_eq!(c3, child);

    // The README's drop-in: stop ends every tree. It applies to the
    // running unit at once (KillMode=mixed), so this restart already ends
    // the session, as the README says.
    let dropin = m.home.join(".config/systemd/user/minitower.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(dropin.join("override.conf"), readme_drop_in()).unwrap();
    m.systemctl(&["daemon-reload"]);
    let _tower4 = m.start_unit("restart", tower3);
    assert!(
        wait_for(Duration::from_secs(10), || !proc_alive(child as i32)),
        "a restart with the drop-in keeps the session"
    );
    let _ = e3;
    let out = m
        .leasectl(&guard)
        .args([
            "new",
            "--json",
            "--",
            "sh",
            "-c",
            "sleep 1000 & exec sleep 1000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "new: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let child2 = v["child_pid"].as_u64().unwrap() as u32;
    let shellpers: Vec<u32> = m.list(&guard)["shellpers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(shellpers.len(), 1);
    m.systemctl(&["stop", "minitower"]);
    // minitower itself confirmed every death (exit 0: no release failed);
    // KillMode=mixed's SIGKILL had nothing left to do.
    assert_eq!(m.show("ExecMainStatus"), "0", "{}", m.status());
    for p in std::iter::once(child2).chain(shellpers) {
        assert!(
            wait_for(Duration::from_secs(5), || !proc_alive(p as i32)),
            "pid {p} outlived `stop` with --on-exit terminate"
        );
    }
    m.stop();
    guard.finish();
}
