//! Kill-ladder scenarios (brief §5): 5 (escape torture) and 6 (explicit
//! terminate confirms death, Tower up).

mod common;

use std::time::{Duration, Instant};

use common::*;
use shellper_protocol::Frame;
use shellper_protocol::msg::*;
use shellper_testkit::LeakGuard;

const T: Duration = Duration::from_secs(5);

/// Every escape of the brief, each in its own process group (`set -m`):
/// a background job ignoring SIGHUP, a `setsid` grandchild, a double-forked
/// `setsid` daemon (reparented to the shellper), `nohup`, a process ignoring
/// SIGTERM and SIGHUP, and a stopped job.
const TORTURE: &str = r#"set -m
(trap '' HUP; exec sleep 1001) &
setsid sleep 1002 &
( ( setsid sleep 1003 & ) & )
nohup sleep 1004 >/dev/null 2>&1 &
sh -c 'trap "" TERM HUP; while :; do sleep 0.1; done' &
sleep 1005 &
kill -STOP $!
echo READY-$((40+2))
wait
"#;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn torture(name: &str) -> (LeakGuard, Shellper) {
    let guard = LeakGuard::new(name).with_settle(ms(500));
    let sh = Shellper::start_codev(
        &guard,
        "/bin/bash",
        &["-c", TORTURE],
        Some(FAST),
        serde_json::json!({}),
    );
    let mut term = sh.connect();
    term.hello(ClientType::Terminal, true, true, true);
    term.wait_output("READY-42", T);
    // Let the double fork finish.
    assert!(
        wait_for(T, || guard.survivors().len() >= 9),
        "{:?}",
        guard.survivors()
    );
    // SIGSTOP takes effect when the target next runs: poll for it.
    let stopped = wait_for(T, || guard.survivors().iter().any(|p| p.state == 'T'));
    assert!(stopped, "the stopped job exists");
    (guard, sh)
}

#[test]
fn s05_escape_torture_zero_survivors_after_lapse() {
    let (guard, mut sh) = torture("s05_lapse");
    let (holder, _g) = sh.holder();
    drop(holder);
    let status = sh.wait_exit(ms(FAST.window + FAST.grace + 2500));
    assert_eq!(code(status), Some(11), "log:\n{}", sh.log());
    let left = guard.wait_gone(ms(300));
    assert!(left.is_empty(), "survivors: {left:?}");
    guard.finish();
}

#[test]
fn s05_escape_torture_zero_survivors_after_sigterm_to_the_shellper() {
    let (guard, mut sh) = torture("s05_sigterm");
    sh.signal(libc::SIGTERM);
    let status = sh.wait_exit(ms(FAST.grace + 2500));
    assert_eq!(code(status), Some(0), "log:\n{}", sh.log());
    assert!(guard.wait_gone(ms(300)).is_empty());
    assert!(!sh.socket.exists());
    guard.finish();
}

#[test]
fn s06_terminate_confirms_death_of_the_whole_tree() {
    let (guard, mut sh) = torture("s06");
    let members = guard.survivors().len() as u32 - 1; // minus the shellper
    let (mut holder, g) = sh.holder();
    let t0 = Instant::now();
    holder.send(&Frame::Release(Release {
        epoch: g.epoch,
        mode: ReleaseMode::Terminate,
    }));
    let report = holder
        .recv_until(ms(FAST.grace + 3000), |f| match f {
            Frame::Terminated(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("TERMINATED: {e:?}\n{}", sh.log()));
    assert_eq!(report.reason, TerminateReason::Requested);
    assert_eq!(report.survivors, 0);
    assert!(report.signalled >= members, "{report:?} vs {members}");
    // The TERM-ignoring loop needs SIGKILL after the grace.
    assert!(report.elapsed_ms >= FAST.grace - 50, "{report:?}");
    // By the time TERMINATED arrives, the tree is already gone.
    let left: Vec<_> = guard
        .survivors()
        .into_iter()
        .filter(|p| p.pid as u32 != sh.pid)
        .collect();
    assert!(left.is_empty(), "alive after TERMINATED: {left:?}");
    let status = sh.wait_exit(T);
    assert_eq!(code(status), Some(0));
    assert!(t0.elapsed() < ms(FAST.grace + 3000));
    assert!(!sh.socket.exists());
    guard.finish();
}

#[test]
fn s06_terminate_with_stale_epoch_or_without_lease_is_refused() {
    let guard = LeakGuard::new("s06_refused");
    let mut sh = Shellper::start_codev(
        &guard,
        "/bin/sh",
        &["-c", "exec sleep 1000"],
        Some(FAST),
        serde_json::json!({}),
    );
    let (mut holder, g) = sh.holder();
    let mut other = sh.connect();
    other.hello(ClientType::Tower, true, false, false);
    other.send(&Frame::Release(Release {
        epoch: g.epoch,
        mode: ReleaseMode::Terminate,
    }));
    let e = other
        .recv_until(T, |f| match f {
            Frame::Error(e) => Some(e.code),
            _ => None,
        })
        .expect("ERROR");
    assert_eq!(e, ErrorCode::NotHolder);
    holder.send(&Frame::Release(Release {
        epoch: g.epoch + 1,
        mode: ReleaseMode::Terminate,
    }));
    let e = holder
        .recv_until(T, |f| match f {
            Frame::Error(e) => Some(e.code),
            _ => None,
        })
        .expect("ERROR");
    assert_eq!(e, ErrorCode::StaleEpoch);
    assert!(sh.alive());
    sh.signal(libc::SIGTERM);
    assert_eq!(code(sh.wait_exit(T)), Some(0));
    guard.finish();
}
