//! Faults outside the chaos run that used to break "never killed while a
//! live Tower holds it": each test here failed before its fix.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use shellper_testkit::LeakGuard;
use tower_client::{Event, Registry};

const SLEEPER: &str = "sleep 1000";

/// A revocation whose registry write fails (scope read-only for a moment)
/// must not leave the revoked entry on disk: the write is retried until it
/// lands, so a restarted Tower never re-adopts it (SPEC §8.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_entry_leaves_the_registry_even_if_the_first_write_fails() {
    let guard = LeakGuard::new("revoke_commit_retry");
    let a_dir = scope_tmp();
    let b_dir = scope_tmp();
    let (a, mut a_ev) = open(a_dir.path(), lease(400, 3000, 300));
    let h = a.spawn(spec(&guard, SLEEPER)).await.unwrap();
    std::fs::copy(
        a_dir.path().join("registry.json"),
        b_dir.path().join("registry.json"),
    )
    .unwrap();
    // A's registry cannot be written while it learns of the revocation: a
    // directory in its place makes the atomic rename fail (a read-only
    // directory would not stop root).
    let reg = a_dir.path().join("registry.json");
    let saved = a_dir.path().join("registry.saved");
    std::fs::rename(&reg, &saved).unwrap();
    std::fs::create_dir(&reg).unwrap();
    let (b, _b_ev) = open(b_dir.path(), lease(400, 3000, 300));
    let rep = b.adopt_all().await;
    assert_eq!(rep.adopted.len(), 1, "{:?}", rep.failed);
    wait_event(&mut a_ev, Duration::from_secs(3), |e| {
        matches!(e, Event::Revoked { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(reg.is_dir(), "the first write failed");
    // Back to the registry as it was on disk, still listing the entry.
    std::fs::remove_dir(&reg).unwrap();
    std::fs::rename(&saved, &reg).unwrap();
    assert!(Registry::load(&reg).unwrap().get(h.id()).is_some());
    let t = tokio::time::Instant::now();
    loop {
        let on_disk = Registry::load(&a_dir.path().join("registry.json")).unwrap();
        if on_disk.get(h.id()).is_none() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the revoked entry stayed in the registry on disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = b.terminate_all(Duration::from_secs(5)).await;
    assert!(res.iter().all(|(_, r)| r.is_ok()), "{res:?}");
    guard.with_settle(Duration::from_millis(500)).finish();
}

// ---- a scripted shellper: the test plays the shellper's side of the
// socket while a real process (a `sleep`) stands for its pid, so faults can
// be placed exactly. ----

use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use shellper_protocol::frame::{Parsed, parse};
use shellper_protocol::msg::{Grant, TerminateReason, Terminated, Welcome, WelcomeLease};
use shellper_protocol::{Frame, LEASE_PROTOCOL_VERSION, PROTOCOL_VERSION, Token};
use tower_client::RegistryEntry;

/// Reads frames until `want` matches one (skipping others); `None` on EOF.
fn read_until(
    s: &mut UnixStream,
    buf: &mut Vec<u8>,
    want: impl Fn(&Frame) -> bool,
) -> Option<Frame> {
    loop {
        while let Ok(Parsed::Frame { frame, consumed }) = parse(buf) {
            buf.drain(..consumed);
            if want(&frame) {
                return Some(frame);
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Accepts one Tower connection and grants it `epoch`.
fn serve_grant(l: &UnixListener, pid: u32, epoch: u64) -> (UnixStream, Vec<u8>) {
    serve_grant_with(
        l,
        pid,
        Grant {
            epoch,
            ttl_ms: 600,
            window_ms: 4000,
            renew_every_ms: 200,
            expires_in_ms: 600,
        },
    )
}

/// Accepts one Tower connection and answers its ACQUIRE with `grant`.
fn serve_grant_with(l: &UnixListener, pid: u32, grant: Grant) -> (UnixStream, Vec<u8>) {
    let (mut s, _) = l.accept().unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, |f| matches!(f, Frame::Hello(_))).unwrap();
    let w = Frame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        pid: i64::from(pid),
        cols: 80,
        rows: 24,
        start_time: 0,
        last_data_at: None,
        always_sends_replay: false,
        lease: Some(WelcomeLease {
            version: LEASE_PROTOCOL_VERSION,
            leased: true,
            shellper_pid: pid,
        }),
    });
    s.write_all(&w.to_bytes().unwrap()).unwrap();
    read_until(&mut s, &mut buf, |f| matches!(f, Frame::Acquire(_))).unwrap();
    s.write_all(&Frame::Grant(grant).to_bytes().unwrap())
        .unwrap();
    (s, buf)
}

/// A `sleep` standing for the shellper process, and a registry naming it
/// with `socket`, written before the Tower opens the scope.
fn scripted_scope(guard: &LeakGuard, dir: &Path) -> (std::process::Child, PathBuf, String) {
    scripted_entry(guard, dir, "sh-0000abcd")
}

/// [`scripted_scope`] for one more entry `id` (added to the registry).
fn scripted_entry(
    guard: &LeakGuard,
    dir: &Path,
    id: &str,
) -> (std::process::Child, PathBuf, String) {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60");
    guard.apply(&mut cmd);
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let start_ticks = shellper_proctree::read_stat(pid as i32)
        .unwrap()
        .start_ticks;
    let id = id.to_string();
    let socket = dir.join(format!("{id}.sock"));
    let mut reg = Registry::load(&dir.join("registry.json")).unwrap();
    reg.upsert(RegistryEntry {
        id: id.clone(),
        token: Token::from_bytes([7; 32]),
        pid,
        start_ticks,
        socket: socket.clone(),
        command: "sleep".into(),
        args: vec!["60".into()],
        cwd: "/".into(),
        created_at_ms: 0,
        cgroup: None,
    });
    reg.save(&dir.join("registry.json")).unwrap();
    (child, socket, id)
}

/// Item 4: a lease connection that breaks while the socket refuses
/// connections for longer than the old 0.5 s of retries is taken back once
/// the shellper answers again: `unresponsive` meanwhile, never `lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_trying_within_the_window_and_reports_unresponsive() {
    let guard = LeakGuard::new("reconnect_backoff");
    let dir = scope_tmp();
    let (mut child, socket, id) = scripted_scope(&guard, dir.path());
    let pid = child.id();
    let l = UnixListener::bind(&socket).unwrap();
    let sock2 = socket.clone();
    let fake = std::thread::spawn(move || {
        let (s, _) = serve_grant(&l, pid, 1);
        std::thread::sleep(Duration::from_millis(300));
        // Connection broken and nothing listening for 1.5 s (a restart of
        // the listener, a full backlog, EMFILE on our side).
        drop(s);
        drop(l);
        std::fs::remove_file(&sock2).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let l = UnixListener::bind(&sock2).unwrap();
        let (s, _) = serve_grant(&l, pid, 2);
        std::thread::sleep(Duration::from_millis(500));
        drop(s);
    });
    let (tower, mut ev) = open(dir.path(), lease(600, 4000, 300));
    let rep = tower.adopt_all().await;
    assert_eq!(rep.adopted.len(), 1, "{:?}", rep.failed);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let e = tokio::time::timeout_at(deadline, ev.recv())
            .await
            .unwrap_or_else(|_| panic!("not re-acquired; events: {seen:?}"))
            .unwrap();
        assert!(
            !matches!(e, Event::Lost { .. }),
            "gave up: {e:?} after {seen:?}"
        );
        seen.push(e.clone());
        if matches!(e, Event::Held { epoch: 2, .. }) {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Unresponsive { id: i, .. } if *i == id)),
        "{seen:?}"
    );
    fake.join().unwrap();
    tower.abandon();
    let _ = child.kill();
    let _ = child.wait();
    guard.finish();
}

/// Item 8: the shellper's TERMINATED is still in the socket when its exit
/// is noticed first; the `terminated` event carries its figures, never
/// `signalled: 0, elapsed_ms: 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_report_is_read_even_when_the_exit_is_seen_first() {
    let guard = LeakGuard::new("terminated_drain");
    let dir = scope_tmp();
    let (child, socket, _id) = scripted_scope(&guard, dir.path());
    let pid = child.id();
    let l = UnixListener::bind(&socket).unwrap();
    let child = std::sync::Arc::new(std::sync::Mutex::new(child));
    let c2 = child.clone();
    let fake = std::thread::spawn(move || {
        let (mut s, mut buf) = serve_grant(&l, pid, 1);
        read_until(&mut s, &mut buf, |f| matches!(f, Frame::Release(_))).unwrap();
        // The process is gone first; its report lands a moment later.
        let mut c = c2.lock().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let t = Frame::Terminated(Terminated {
            reason: TerminateReason::Requested,
            signalled: 6,
            survivors: 0,
            elapsed_ms: 320,
            sweeps: 3,
        });
        s.write_all(&t.to_bytes().unwrap()).unwrap();
    });
    let (tower, mut ev) = open(dir.path(), lease(600, 4000, 300));
    let rep = tower.adopt_all().await;
    assert_eq!(rep.adopted.len(), 1, "{:?}", rep.failed);
    let r = rep.adopted[0]
        .terminate(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.report.map(|t| t.signalled), Some(6));
    let e = wait_event(&mut ev, Duration::from_secs(2), |e| {
        matches!(e, Event::Terminated { .. })
    })
    .await;
    assert!(
        matches!(
            e,
            Event::Terminated {
                signalled: 6,
                elapsed_ms: 320,
                ..
            }
        ),
        "{e:?}"
    );
    fake.join().unwrap();
    guard.finish();
}

/// Item 3: a SIGSTOPped shellper stops reading its lease connection; the
/// holder must keep answering every command within its deadline (no socket
/// write in the loop), and take the lease back once it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_shellper_with_a_full_socket_never_wedges_its_holder() {
    let guard = LeakGuard::new("stopped_full_socket");
    let dir = scope_tmp();
    let (tower, _ev) = open(dir.path(), lease(600, 20_000, 300));
    let h = tower.spawn(spec(&guard, SLEEPER)).await.unwrap();
    let pid = h.info().pid as i32;
    // SAFETY: kill(2) on the shellper we just spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let t0 = tokio::time::Instant::now();
    let mut refused = false;
    for i in 0..200_000u32 {
        match tokio::time::timeout(Duration::from_secs(3), h.resize(80 + (i % 2) as u16, 24)).await
        {
            Err(_) => panic!("resize #{i} wedged the holder"),
            Ok(Err(_)) => {
                refused = true;
                break;
            }
            Ok(Ok(())) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "socket never filled"
        );
    }
    assert!(refused, "a stopped shellper's socket never filled");
    let st = tokio::time::timeout(Duration::from_secs(4), h.status()).await;
    assert!(matches!(st, Ok(Err(_))), "status must fail in time: {st:?}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        h.terminate(Duration::from_secs(15)),
    )
    .await;
    assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    guard.with_settle(Duration::from_millis(500)).finish();
}

/// Item 7: a shellper killed by SIGKILL (the OOM killer, an operator) runs
/// no ladder; the Tower saw it die and takes the tree down from outside,
/// by the PTY session and its leader's start time, and reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_shellper_tree_is_taken_down_by_the_tower() {
    let guard = LeakGuard::new("sigkill_tree");
    let dir = scope_tmp();
    let (tower, mut ev) = open(dir.path(), lease(600, 20_000, 300));
    // Everything ignores SIGHUP, so nothing dies when the PTY closes.
    let h = tower
        .spawn(spec(
            &guard,
            "trap '' HUP; sleep 1000 & sleep 1000 & sh -c 'sleep 1000' & wait",
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = guard.survivors().len();
    assert!(before >= 5, "tree not started: {before}");
    // SAFETY: kill(2) on the shellper we spawned (not reaped: we hold it).
    assert_eq!(unsafe { libc::kill(h.info().pid as i32, libc::SIGKILL) }, 0);
    let e = wait_event(&mut ev, Duration::from_secs(10), |e| {
        matches!(e, Event::TreeKilled { .. })
    })
    .await;
    match &e {
        Event::TreeKilled {
            signalled,
            survivors,
            session_verified,
            ..
        } => {
            assert!(*session_verified, "{e:?}");
            assert!(*signalled >= 4, "{e:?}");
            assert_eq!(*survivors, 0, "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    let left = guard.wait_gone(Duration::from_secs(5));
    assert!(left.is_empty(), "survivors: {left:?}");
    guard.finish();
}

/// Item 7, as a shell really behaves: the PTY session leader does not
/// ignore SIGHUP, so it dies of the hangup when its shellper is SIGKILLed
/// (the session can then no longer be verified by its leader), a job with
/// job control (its own process group) survives the hangup inside that
/// session, and a `setsid` daemon was never in it. The Tower recorded the
/// tree's members (pid and start time) while the shellper lived, and takes
/// every one of them down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_shellper_whose_leader_dies_of_the_hangup_leaves_nothing() {
    let guard = LeakGuard::new("sigkill_hup_tree");
    let dir = scope_tmp();
    let (tower, mut ev) = open(dir.path(), lease(600, 20_000, 300));
    let h = tower
        .spawn(spec(
            &guard,
            "set -m; sleep 1001 & setsid sleep 1002 & (sh -c 'sleep 1003 &' &); exec sleep 1004",
        ))
        .await
        .unwrap();
    let sleeps = || {
        guard
            .survivors()
            .iter()
            .filter(|s| s.cmdline.first().map(String::as_str) == Some("sleep"))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sleeps() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tree not started: {:?}",
            guard.survivors()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several renewals (every 200 ms): the Tower has walked the whole tree.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // SAFETY: kill(2) on the shellper we spawned (not reaped: we hold it).
    assert_eq!(unsafe { libc::kill(h.info().pid as i32, libc::SIGKILL) }, 0);
    let e = wait_event(&mut ev, Duration::from_secs(10), |e| {
        matches!(e, Event::TreeKilled { .. })
    })
    .await;
    match &e {
        Event::TreeKilled {
            signalled,
            survivors,
            session_verified,
            ..
        } => {
            assert!(*session_verified, "{e:?}");
            assert!(*signalled >= 3, "{e:?}");
            assert_eq!(*survivors, 0, "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    let left = guard.wait_gone(Duration::from_secs(5));
    assert!(left.is_empty(), "orphans: {left:?}");
    guard.finish();
}

/// SPEC §5: a GRANT's durations are clamped before they reach a timer. A
/// shellper that says "renew every 0 ms" gets at most ten renewals per TTL
/// (it used to get one every 10 ms); one that says every duration is
/// `u64::MAX` is held with 7-day timers, and the Tower's one scheduler goes
/// on renewing its other leases (an `Instant` past the end of time used to
/// panic it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_grant_durations_are_clamped() {
    let guard = LeakGuard::new("grant_clamps");
    let dir = scope_tmp();
    let (mut busy, busy_sock, _) = scripted_entry(&guard, dir.path(), "sh-0000000b");
    let (mut huge, huge_sock, _) = scripted_entry(&guard, dir.path(), "sh-0000000c");
    let (mut sane, sane_sock, _) = scripted_entry(&guard, dir.path(), "sh-0000000d");
    let count_renews = |sock: PathBuf, pid: u32, grant: Grant| {
        let l = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let (mut s, mut buf) = serve_grant_with(&l, pid, grant.clone());
            s.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            let t0 = std::time::Instant::now();
            let mut renews = 0u32;
            while t0.elapsed() < Duration::from_millis(1500) {
                let Some(Frame::Renew(r)) =
                    read_until(&mut s, &mut buf, |f| matches!(f, Frame::Renew(_)))
                else {
                    break;
                };
                renews += 1;
                let ack = Frame::Renewed(shellper_protocol::msg::Renewed {
                    epoch: r.epoch,
                    seq: r.seq,
                    expires_in_ms: grant.expires_in_ms,
                });
                if s.write_all(&ack.to_bytes().unwrap()).is_err() {
                    break;
                }
            }
            renews
        })
    };
    let busy_t = count_renews(
        busy_sock,
        busy.id(),
        Grant {
            epoch: 1,
            ttl_ms: 3000,
            window_ms: 60_000,
            renew_every_ms: 0,
            expires_in_ms: 3000,
        },
    );
    let huge_t = count_renews(
        huge_sock,
        huge.id(),
        Grant {
            epoch: 1,
            ttl_ms: u64::MAX,
            window_ms: u64::MAX,
            renew_every_ms: u64::MAX,
            expires_in_ms: u64::MAX,
        },
    );
    let sane_t = count_renews(
        sane_sock,
        sane.id(),
        Grant {
            epoch: 1,
            ttl_ms: 600,
            window_ms: 4000,
            renew_every_ms: 200,
            expires_in_ms: 600,
        },
    );
    let (tower, _ev) = open(dir.path(), lease(600, 4000, 300));
    let rep = tower.adopt_all().await;
    assert_eq!(rep.adopted.len(), 3, "{:?}", rep.failed);
    let (busy_n, huge_n, sane_n) = tokio::task::spawn_blocking(move || {
        (
            busy_t.join().unwrap(),
            huge_t.join().unwrap(),
            sane_t.join().unwrap(),
        )
    })
    .await
    .unwrap();
    // TTL 3 s: at most one renewal per 300 ms (plus jitter and slack).
    assert!(
        (1..=8).contains(&busy_n),
        "renew_every_ms 0: {busy_n} renewals in 1.5 s"
    );
    assert_eq!(huge_n, 0, "7-day timers: no renewal in 1.5 s");
    assert!(
        sane_n >= 3,
        "the scheduler must keep renewing the other leases: {sane_n} in 1.5 s"
    );
    tower.abandon();
    for c in [&mut busy, &mut huge, &mut sane] {
        let _ = c.kill();
        let _ = c.wait();
    }
    guard.finish();
}
