//! A Tower tidies its scope: what gone shellpers left goes, nothing of a
//! live one does (real shellpers, real processes, real files).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use shellper_testkit::{LeakGuard, cargo_bin};
use tower_client::{Registry, RegistryEntry, TidyPolicy};

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

fn entry(dir: &Path, id: &str, pid: u32, start_ticks: u64) -> RegistryEntry {
    RegistryEntry {
        id: id.into(),
        token: tower_client::Token::from_bytes([0xab; 32]),
        pid,
        start_ticks,
        socket: dir.join(format!("{id}.sock")),
        command: "sleep".into(),
        args: vec![],
        cwd: String::new(),
        created_at_ms: 0,
        cgroup: None,
    }
}

/// A stale socket file: bound, then the listener dropped (the file stays,
/// nothing listens).
fn stale_socket(path: &Path) {
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_tidy_prunes_only_what_is_proven_gone() {
    let guard = LeakGuard::new("tower_tidy");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("scope");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .unwrap();

    // A process that is gone: run `true` and reap it.
    let mut t = Command::new("true");
    guard.apply(&mut t);
    let gone_pid = t.spawn().unwrap();
    let gone_pid = {
        let mut c = gone_pid;
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    // A process that is alive (not a shellper: the entry is what counts).
    let mut s = Command::new("sleep");
    s.arg("600").stdin(Stdio::null());
    guard.apply(&mut s);
    let mut alive = s.spawn().unwrap();
    let alive_ticks = shellper_proctree::read_stat(alive.id() as i32)
        .unwrap()
        .start_ticks;

    let gone = "sh-000000a1"; // entry gone, stale socket, old log
    let alive_entry = "sh-000000a2"; // entry alive, stale socket, old log
    let old_log_only = "sh-000000a3"; // nothing but a 30-day-old log
    let recent_log_only = "sh-000000a4"; // nothing but a 1-day-old log
    let legacy = "sh-000000a5"; // unregistered live shellper, old files

    let mut reg = Registry::new();
    reg.upsert(entry(&dir, gone, gone_pid, 12345));
    reg.upsert(entry(&dir, alive_entry, alive.id(), alive_ticks));
    reg.save(&dir.join("registry.json")).unwrap();
    for id in [gone, alive_entry] {
        stale_socket(&dir.join(format!("{id}.sock")));
    }
    for id in [gone, alive_entry, old_log_only, recent_log_only] {
        std::fs::write(dir.join(format!("{id}.log")), "x\n").unwrap();
    }
    std::fs::write(dir.join(format!("{gone}.log.1")), "y\n").unwrap();

    // A live legacy shellper nobody registered.
    let legacy_sock = dir.join(format!("{legacy}.sock"));
    let mut l = Command::new(cargo_bin("shellper"));
    l.arg("--socket")
        .arg(&legacy_sock)
        .args(["--window", "60s", "--claim", "60s", "--", "sleep", "600"]);
    guard.apply(&mut l);
    let mut legacy_proc = l
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(legacy_proc.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("pid"), "{line}");
    }
    std::fs::write(dir.join(format!("{legacy}.log")), "z\n").unwrap();

    for p in std::fs::read_dir(&dir).unwrap() {
        let p = p.unwrap().path();
        if !p.ends_with(format!("{recent_log_only}.log")) {
            age(&p, 30);
        }
    }
    age(&dir.join(format!("{recent_log_only}.log")), 1);

    // A Tower that holds one shellper of its own, with an old log too.
    let (tower, _events) = open(&dir, lease(2000, 60_000, 300));
    let held = tower.spawn(spec(&guard, "exec sleep 600")).await.unwrap();
    let held_id = held.id().to_string();
    age(&dir.join(format!("{held_id}.log")), 30);
    age(&dir.join(format!("{held_id}.sock")), 30);
    assert_eq!(tower.config().tidy, TidyPolicy::default());

    let done = tower.tidy().await;
    assert!(done.failed.is_empty(), "{:?}", done.failed);
    let mut removed: Vec<String> = done
        .done
        .iter()
        .map(|a| {
            a.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|_| a.what != tower_client::tidy::What::RegistryEntry)
                .unwrap_or_else(|| format!("entry {}", a.id))
        })
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            format!("entry {gone}"),
            format!("{gone}.log"),
            format!("{gone}.log.1"),
            format!("{gone}.sock"),
            format!("{old_log_only}.log"),
        ],
        "{:#?}",
        done.done
    );
    // On disk too, and the rest is untouched.
    let reg = Registry::load(&dir.join("registry.json")).unwrap();
    assert!(reg.get(gone).is_none());
    assert!(reg.get(alive_entry).is_some());
    assert!(reg.get(&held_id).is_some());
    for kept in [
        format!("{alive_entry}.sock"),
        format!("{alive_entry}.log"),
        format!("{recent_log_only}.log"),
        format!("{legacy}.sock"),
        format!("{legacy}.log"),
        format!("{held_id}.sock"),
        format!("{held_id}.log"),
    ] {
        assert!(dir.join(&kept).exists(), "{kept} was removed");
    }
    // The held shellper is still held and answering.
    assert!(held.status().await.is_ok());

    // A second tidy finds nothing more.
    let again = tower.tidy().await;
    assert!(again.done.is_empty(), "{:#?}", again.done);

    tower.terminate_all(Duration::from_secs(10)).await;
    // SIGTERM: the shellper takes its tree down itself (SIGKILL would
    // leave its PTY child behind).
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(legacy_proc.id() as i32, libc::SIGTERM) };
    let _ = legacy_proc.wait();
    let _ = alive.kill();
    let _ = alive.wait();
}
