//! Lease scenarios of the brief (§5) at shellper level: 1, 3, 4, 7, 8.
//! Real processes, real time; bounds are generous ("not before", "gone
//! within") because this runs on a noisy 2-core box.

mod common;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shellper_protocol::Frame;
use shellper_protocol::msg::*;
use shellper_testkit::LeakGuard;

const T: Duration = Duration::from_secs(5);

/// A tree with escapes, so "every descendant" means something.
const TREE: &str = "set -m; sleep 1000 & setsid sleep 1001 & echo READY; wait";

/// A codev-style shellper running [`TREE`] under a lease with `timing`.
fn start_tree(guard: &LeakGuard, timing: Timing) -> Shellper {
    Shellper::start_codev(
        guard,
        "/bin/bash",
        &["-c", TREE],
        Some(timing),
        serde_json::json!({}),
    )
}

/// Once nobody renews, the shellper ends when its window does: exit 11
/// (lapsed, CONVENTIONS.md), within window + grace and a margin.
fn ends_with_its_window(sh: &mut Shellper) {
    assert_eq!(
        code(sh.wait_exit(ms(FAST.window + FAST.grace + 1500))),
        Some(11)
    );
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[test]
fn s01_holder_process_killed_tree_gone_after_window_not_before() {
    let timing = Timing {
        ttl: 1000,
        window: 2000,
        claim: 5000,
        grace: 300,
    };
    let guard = LeakGuard::new("s01");
    let mut sh = start_tree(&guard, timing);
    let mut term = sh.connect();
    term.hello(ClientType::Terminal, true, true, true);
    term.wait_output("READY", T);
    let (mut holder, g) = sh.holder();
    holder.renew(g.epoch, 1).expect("renew");

    // The holder's socket now lives only in a separate "Tower" process;
    // SIGKILL it, as the kernel would for a crashed Tower.
    let fd = OwnedFd::from(holder.stream);
    let mut tower = Command::new("sleep");
    tower
        .arg("1000")
        .stdin(Stdio::from(fd))
        .stdout(Stdio::null());
    guard.apply(&mut tower);
    let mut proc = tower.spawn().expect("tower");
    // The Command still owns our copy of the fd: drop it, so the only
    // copy is in the "Tower" process.
    drop(tower);
    let tower = &mut proc;
    tower.kill().expect("SIGKILL tower");
    tower.wait().expect("reap tower");
    let killed = Instant::now();

    // Not one is gone before the window ends.
    std::thread::sleep(ms(timing.window - 300));
    assert!(sh.alive(), "shellper died before the window ended");
    let alive = guard.survivors();
    assert!(
        alive.len() >= 4,
        "shellper, bash and both sleeps alive before the window: {alive:?}"
    );
    let st = sh.status();
    assert_eq!(st.phase, WirePhase::Lapsed);
    assert!(st.kill_in_ms.is_some_and(|k| k <= 400), "{st:?}");

    // EOF started the window at once: gone well before ttl + window.
    let status = sh.wait_exit(ms(timing.window + timing.grace + 1500));
    let gone = killed.elapsed();
    assert_eq!(code(status), Some(11), "log:\n{}", sh.log());
    assert!(gone >= ms(timing.window - 100), "{gone:?}");
    assert!(
        gone < ms(timing.ttl + timing.window),
        "EOF must start the window at once, not the TTL: {gone:?}"
    );
    assert!(guard.wait_gone(ms(200)).is_empty(), "every descendant gone");
    assert!(!sh.socket.exists());
    guard.finish();
}

#[test]
fn s01_holder_connection_dropped_starts_window_at_once() {
    let guard = LeakGuard::new("s01_drop");
    let mut sh = start_tree(&guard, FAST);
    let (holder, _g) = sh.holder();
    drop(holder);
    let t0 = Instant::now();
    std::thread::sleep(ms(FAST.window - 300));
    assert!(sh.alive());
    let status = sh.wait_exit(ms(FAST.window + FAST.grace + 1500));
    assert_eq!(code(status), Some(11), "log:\n{}", sh.log());
    assert!(t0.elapsed() >= ms(FAST.window - 100));
    guard.finish();
}

fn paused_tower(pause: Duration) -> (LeakGuard, Shellper, Renewer) {
    let guard = LeakGuard::new("s03");
    let sh = start_tree(&guard, FAST);
    let (holder, g) = sh.holder();
    let r = Renewer::start(holder, g.epoch, ms(FAST.ttl / 3));
    std::thread::sleep(ms(500));
    r.pause.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(pause);
    r.pause.store(false, std::sync::atomic::Ordering::SeqCst);
    (guard, sh, r)
}

#[test]
fn s03_tower_stopped_shorter_than_ttl_is_harmless() {
    // Stopped for a quarter TTL: the longest renewal gap is then
    // renew interval + pause, well inside the TTL.
    let (guard, mut sh, r) = paused_tower(ms(FAST.ttl / 4));
    std::thread::sleep(ms(500));
    let st = sh.status();
    assert_eq!(st.phase, WirePhase::Held);
    assert_eq!(st.counters.lapses, 0);
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    drop(r.finish());
    ends_with_its_window(&mut sh);
    guard.finish();
}

#[test]
fn s03_tower_stopped_past_ttl_within_window_is_safe() {
    let (guard, mut sh, r) = paused_tower(ms(FAST.ttl + 500));
    std::thread::sleep(ms(500));
    let st = sh.status();
    assert_eq!(
        st.phase,
        WirePhase::Held,
        "the silent holder revived the lease"
    );
    assert_eq!(st.counters.lapses, 1);
    assert_eq!(st.epoch, 1, "same epoch: renewed, not re-acquired");
    assert!(matches!(st.child, ChildState::Running));
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    drop(r.finish());
    ends_with_its_window(&mut sh);
    guard.finish();
}

#[test]
fn s03_tower_stopped_past_ttl_plus_window_is_killed_and_told() {
    let guard = LeakGuard::new("s03_dead");
    let mut sh = start_tree(&guard, FAST);
    let (mut holder, g) = sh.holder();
    holder.renew(g.epoch, 1).expect("renew");
    let t0 = Instant::now();
    // "SIGSTOPped" Tower: connected, silent.
    let status = sh.wait_exit(ms(FAST.ttl + FAST.window + FAST.grace + 1500));
    assert_eq!(code(status), Some(11), "log:\n{}", sh.log());
    assert!(t0.elapsed() >= ms(FAST.ttl + FAST.window - 100));
    // The resumed Tower learns it lost the lease: TERMINATED, then EOF.
    let report = holder
        .recv_until(T, |f| match f {
            Frame::Terminated(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("TERMINATED: {e:?}\n{}", sh.log()));
    assert_eq!(report.reason, TerminateReason::WindowExpired);
    assert_eq!(report.survivors, 0);
    assert!(report.signalled >= 3, "{report:?}");
    // Renewing now fails cleanly (the connection is closed).
    let renew = Frame::Renew(Renew {
        epoch: g.epoch,
        seq: 2,
    });
    let _ = holder.send_raw(&renew.to_bytes().expect("encode"));
    assert!(holder.closed_within(T).0);
    guard.finish();
}

#[test]
fn s04_shellper_stopped_past_its_deadline_does_not_kill_a_live_holder() {
    let guard = LeakGuard::new("s04");
    let mut sh = start_tree(&guard, FAST);
    let (holder, g) = sh.holder();
    let r = Renewer::start(holder, g.epoch, ms(FAST.ttl / 3));
    std::thread::sleep(ms(300));
    sh.signal(libc::SIGSTOP);
    // Past TTL + window: every deadline passed while it was frozen.
    std::thread::sleep(ms(FAST.ttl + FAST.window + 600));
    sh.signal(libc::SIGCONT);
    std::thread::sleep(ms(1000));
    assert!(sh.alive(), "log:\n{}", sh.log());
    let st = sh.status();
    assert_eq!(st.phase, WirePhase::Held, "{st:?}");
    assert!(st.counters.stalls >= 1, "{st:?}");
    assert!(matches!(st.child, ChildState::Running));
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    let child = st.child_pid.expect("child") as i32;
    assert!(shellper_testkit::proc_alive(child));
    drop(r.finish());
    ends_with_its_window(&mut sh);
    guard.finish();
}

#[test]
fn s07_spawner_dies_before_attaching_gone_after_claim_deadline() {
    let timing = Timing {
        ttl: 400,
        window: 1000,
        claim: 1000,
        grace: 300,
    };
    let guard = LeakGuard::new("s07");
    let t0 = Instant::now();
    let mut sh = start_tree(&guard, timing);
    std::thread::sleep(ms(timing.claim - 300));
    assert!(sh.alive());
    let st = sh.status();
    assert_eq!(st.phase, WirePhase::Unclaimed);
    assert!(st.claim_in_ms.is_some());
    let status = sh.wait_exit(ms(timing.claim + timing.grace + 1500));
    assert_eq!(code(status), Some(10), "log:\n{}", sh.log());
    assert!(t0.elapsed() >= ms(timing.claim - 50));
    assert!(!sh.socket.exists());
    guard.finish();
}

#[test]
fn s08_child_exit_is_reported_and_the_husk_waits_for_its_window() {
    let guard = LeakGuard::new("s08");
    let mut sh = Shellper::start_codev(
        &guard,
        "/bin/sh",
        &["-c", "echo waiting; read x; echo bye; exit 7"],
        Some(FAST),
        serde_json::json!({}),
    );
    let (holder, g) = sh.holder();
    let r = Renewer::start(holder, g.epoch, ms(FAST.ttl / 3));
    let mut term = sh.connect();
    term.hello(ClientType::Terminal, true, true, true);
    term.wait_output("waiting", T);
    term.data("go\n");
    let exit = term
        .recv_until(T, |f| match f {
            Frame::Exit(e) => Some(e.clone()),
            _ => None,
        })
        .expect("EXIT");
    assert_eq!(exit.code, Some(7));
    // The husk lives while held (longer than a whole window).
    std::thread::sleep(ms(FAST.window + 300));
    assert!(sh.alive());
    let st = sh.status();
    assert_eq!(
        st.child,
        ChildState::Exited {
            code: Some(7),
            signal: None
        }
    );
    assert_eq!(st.phase, WirePhase::Held);
    // A late client still learns of the exit.
    let mut late = sh.connect();
    late.hello(ClientType::Terminal, true, true, true);
    let late_exit = late
        .recv_until(T, |f| match f {
            Frame::Exit(e) => Some(e.clone()),
            _ => None,
        })
        .expect("late EXIT");
    assert_eq!(late_exit, exit);
    drop(late);
    // Holder gone: a husk is a session like any other, it waits for its
    // window (a Tower coming back collects the EXIT and may SPAWN), then
    // ends with "window expired" (11), never before.
    let holder = r.finish();
    drop(holder);
    let t0 = Instant::now();
    std::thread::sleep(ms(FAST.window - 400));
    assert!(sh.alive(), "a lapsed husk waits for its window");
    assert_eq!(sh.status().phase, WirePhase::Lapsed);
    let status = sh.wait_exit(ms(FAST.window + FAST.grace + 2500));
    assert_eq!(code(status), Some(11), "log:\n{}", sh.log());
    assert!(t0.elapsed() >= ms(FAST.window - 50), "{:?}", t0.elapsed());
    guard.finish();
}
