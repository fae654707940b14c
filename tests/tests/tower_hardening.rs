//! Ordinary faults that used to make a live `minitower` lose (or stop
//! holding) its shellpers, each reproduced with real processes: descriptor
//! exhaustion, a stdout nobody reads, bad scopes and registries, spawns that
//! all fail. Build the binaries first (`cargo build --workspace --bins`).
#![allow(clippy::unwrap_used)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shellper_protocol::msg::WirePhase;
use shellper_testkit::LeakGuard;
use tower_client::Registry;

use shellper_testkit::minitower::{MiniTower as Mini, scene};

fn command(guard: &LeakGuard, scope: &Path, args: &[&str], nofile: Option<u64>) -> Command {
    let mut cmd = Mini::command(guard, scope, args);
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe; runs in the child only.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

fn alive(pid: u32) -> bool {
    shellper_proctree::read_stat(pid as i32).is_some_and(|p| p.is_live())
}

fn registry(scope: &Path) -> Registry {
    Registry::load(&scope.join("registry.json")).unwrap()
}

/// Terminates whatever the scope's registry lists, through a Tower of its
/// own (cleanup for tests that leave shellpers held by nobody).
fn terminate_scope(guard: &LeakGuard, scope: &Path) {
    let mut m = Mini::start(guard, scope, &["--on-exit", "terminate"]);
    m.event("ready", Duration::from_secs(10));
    m.signal(libc::SIGTERM);
    m.expect_exit(Duration::from_secs(20), 0);
}

/// Item 1: a Tower restarted with too few descriptors to open a pidfd or a
/// socket for every shellper must not take "could not open" for "gone": it
/// keeps every entry and every socket, and a later Tower adopts them all.
#[test]
fn adoption_out_of_descriptors_keeps_live_shellpers_and_their_sockets() {
    let (guard, _tmp, scope) = scene("adopt_emfile");
    let mut m = Mini::run(
        &guard,
        &scope,
        "--ttl 600ms --window 30s --kill-grace 300ms --spawn 6",
        &["sleep", "1000"],
    );
    assert_eq!(m.event("ready", Duration::from_secs(20))["held"], 6);
    m.kill9();
    let reg = registry(&scope);
    assert_eq!(reg.shellpers.len(), 6);

    // Restarted with 18 descriptors: some adoptions cannot even open a
    // pidfd or a socket.
    let mut starved = Mini::spawn(command(&guard, &scope, &[], Some(18)), true);
    let ready = starved.event("ready", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let failed = starved.of("adopt_failed").len();
    let pruned = starved.of("pruned");
    assert!(pruned.is_empty(), "live shellpers pruned: {pruned:?}");
    starved.kill9();
    assert!(
        failed > 0,
        "the limit did not bite (ready: {ready}); stderr: {}",
        starved.stderr()
    );
    for e in &reg.shellpers {
        assert!(alive(e.pid), "{} died", e.id);
        assert!(e.socket.exists(), "socket of {} deleted", e.id);
    }
    assert_eq!(registry(&scope).shellpers.len(), 6);

    let mut next = Mini::start(&guard, &scope, &["--on-exit", "terminate"]);
    assert_eq!(next.event("ready", Duration::from_secs(20))["held"], 6);
    assert_eq!(next.of("adopted").len(), 6);
    next.signal(libc::SIGTERM);
    next.expect_exit(Duration::from_secs(20), 0);
    guard.finish();
}

/// Item 2: stdout into a pipe nobody reads (`minitower | less`) must not
/// stop a single renewal: events are queued and dropped, never waited for.
#[test]
fn stuck_stdout_never_stalls_the_lease_loop() {
    let (guard, _tmp, scope) = scene("stuck_stdout");
    // A pipe of one page that nobody reads: full after a few dozen lines.
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) };
    let mut cmd = command(
        &guard,
        &scope,
        &[
            "--ttl",
            "500ms",
            "--window",
            "1500ms",
            "--kill-grace",
            "300ms",
            "--spawn",
            "32",
            "--",
            "sleep",
            "1000",
        ],
        None,
    );
    cmd.stdout(Stdio::from(wr));
    let mut m = Mini::spawn(cmd, false);
    // Every spawn registers before it acquires; wait until all did.
    let t = Instant::now();
    while registry(&scope).shellpers.len() < 32 {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", m.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Well past TTL + window: a stalled Tower would have lost them all.
    std::thread::sleep(Duration::from_millis(5000));
    let reg = registry(&scope);
    let dead: Vec<_> = reg.shellpers.iter().filter(|e| !alive(e.pid)).collect();
    assert!(
        dead.is_empty(),
        "{} of 32 died: {:?}",
        dead.len(),
        m.stderr()
    );
    // Not merely alive: held and renewed by this Tower right now (a Tower
    // stalled before acquiring leaves them unclaimed, alive for a while).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for e in &reg.shellpers {
        let st = rt
            .block_on(tower_client::query_status(
                &e.socket,
                Duration::from_secs(3),
            ))
            .unwrap();
        assert_eq!(st.phase, WirePhase::Held, "{}: {st:?}", e.id);
    }
    // And it still stops promptly with its stdout stuck.
    m.signal(libc::SIGTERM);
    m.expect_exit(Duration::from_secs(10), 0);
    // What did get out is valid JSON lines, with a count of the dropped.
    drop(rd);
    terminate_scope(&guard, &scope);
    guard.finish();
}

/// Item 9: a scope whose socket paths cannot be bound is refused at start
/// (exit 4), before anything is spawned.
#[test]
fn scope_path_too_long_for_sockets_is_refused_up_front() {
    let guard = LeakGuard::new("long_scope");
    let tmp = tempfile::tempdir().unwrap();
    let scope = tmp.path().join("x".repeat(100));
    let mut m = Mini::run(&guard, &scope, "--spawn 1", &["sleep", "1000"]);
    m.expect_exit(Duration::from_secs(10), 4);
    assert!(m.stderr().contains("107"), "{}", m.stderr());
    assert!(m.of("spawned").is_empty() && m.of("spawn_failed").is_empty());
    guard.finish();
}

/// Item 9: when every requested spawn fails, minitower exits non-zero
/// instead of running on holding nothing.
#[test]
fn every_spawn_failing_exits_non_zero() {
    let (guard, _tmp, scope) = scene("all_spawns_fail");
    let mut m = Mini::run(
        &guard,
        &scope,
        "--shellper /bin/false --spawn 2",
        &["sleep", "1000"],
    );
    m.expect_exit(Duration::from_secs(20), 1);
    assert_eq!(m.of("spawn_failed").len(), 2);
    assert!(m.of("ready").is_empty(), "{:?}", m.seen);
    assert!(m.stderr().contains("none of the 2"), "{}", m.stderr());
    guard.finish();
}

/// Item 9: under a low descriptor limit, minitower says how many it can
/// hold, refuses spawns past it with a clear error, and every shellper it
/// did take stays held.
#[test]
fn descriptor_limit_caps_spawns_with_a_clear_error() {
    let (guard, _tmp, scope) = scene("fd_capacity");
    let cmd = command(
        &guard,
        &scope,
        &[
            "--ttl",
            "500ms",
            "--window",
            "1500ms",
            "--kill-grace",
            "300ms",
            "--spawn",
            "12",
            "--on-exit",
            "terminate",
            "--",
            "sleep",
            "1000",
        ],
        Some(48),
    );
    let mut m = Mini::spawn(cmd, true);
    let ready = m.event("ready", Duration::from_secs(30));
    let spawned = m.of("spawned").len();
    let failed = m.of("spawn_failed");
    assert_eq!(spawned + failed.len(), 12);
    assert!(spawned >= 1 && !failed.is_empty(), "{:#?}", m.seen);
    for f in &failed {
        let e = f["error"].as_str().unwrap();
        assert!(e.contains("RLIMIT_NOFILE"), "unclear error: {e}");
    }
    assert_eq!(ready["held"], spawned);
    assert!(
        ready["capacity"].as_u64().unwrap() >= spawned as u64,
        "{ready}"
    );
    // Everything taken stays held (past TTL + window).
    std::thread::sleep(Duration::from_millis(2500));
    let reg = registry(&scope);
    assert_eq!(reg.shellpers.len(), spawned);
    assert!(reg.shellpers.iter().all(|e| alive(e.pid)));
    m.signal(libc::SIGTERM);
    m.expect_exit(Duration::from_secs(20), 0);
    guard.finish();
}

/// Item 10: a registry that is a directory, or of a future schema, makes
/// the scope unusable (exit 4), never "empty".
#[test]
fn unusable_registry_exits_4() {
    let (guard, _tmp, scope) = scene("bad_registry");
    std::fs::create_dir_all(&scope).unwrap();
    std::fs::set_permissions(&scope, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::create_dir(scope.join("registry.json")).unwrap();
    let mut m = Mini::start(&guard, &scope, &[]);
    m.expect_exit(Duration::from_secs(10), 4);
    assert!(m.stderr().contains("directory"), "{}", m.stderr());
    std::fs::remove_dir(scope.join("registry.json")).unwrap();
    std::fs::write(
        scope.join("registry.json"),
        br#"{"schema_version":2,"shellpers":[]}"#,
    )
    .unwrap();
    let mut m = Mini::start(&guard, &scope, &[]);
    m.expect_exit(Duration::from_secs(10), 4);
    assert!(m.stderr().contains("schema_version 2"), "{}", m.stderr());
    guard.finish();
}

/// Item 6: the scope deleted under a running minitower and taken by a
/// second one: the first notices (identity of the directory and lock file),
/// stops with exit 4 without writing anything there, and the second's
/// registry stays intact.
#[test]
fn scope_replaced_under_a_running_tower_stops_it_without_writing() {
    let (guard, _tmp, scope) = scene("scope_replaced");
    let mut a = Mini::run(
        &guard,
        &scope,
        "--ttl 500ms --window 2s --kill-grace 300ms --spawn 1",
        &["sleep", "1000"],
    );
    a.event("ready", Duration::from_secs(20));
    std::fs::remove_dir_all(&scope).unwrap();
    let mut b = Mini::run(
        &guard,
        &scope,
        "--ttl 500ms --window 2s --kill-grace 300ms --spawn 1 --on-exit terminate",
        &["sleep", "1000"],
    );
    b.event("ready", Duration::from_secs(20));
    let b_id = b.of("spawned")[0]["id"].as_str().unwrap().to_string();
    a.expect_exit(Duration::from_secs(10), 4);
    assert!(a.stderr().contains("stopping"), "{}", a.stderr());
    let reg = registry(&scope);
    assert_eq!(reg.shellpers.len(), 1, "{reg:?}");
    assert_eq!(reg.shellpers[0].id, b_id);
    b.signal(libc::SIGTERM);
    b.expect_exit(Duration::from_secs(20), 0);
    // A's detached shellper ends with its window.
    guard.assert_gone_within(Duration::from_secs(10));
    guard.finish();
}
