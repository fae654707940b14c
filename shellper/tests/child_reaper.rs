//! The shellper's single reaper (`proctree::reap_zombies`, `wait4(-1)`)
//! collects a dropped child that left for its own session. Alone in its test
//! binary: `wait4(-1)` would steal the exit status of any other test's child
//! in a shared binary.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use shellper_proctree::{ChildExit, reap_zombies};
use shellper_testkit::{LeakGuard, wait_for};

#[test]
fn reaper_collects_a_dropped_child_in_another_session() {
    let guard = LeakGuard::new("child_reaper");
    let mut cmd = std::process::Command::new("true");
    guard.apply(&mut cmd);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    drop(child);
    let mut got = Vec::new();
    let reaped = wait_for(Duration::from_secs(10), || {
        got.extend(reap_zombies());
        got.iter().any(|(p, _)| *p == pid)
    });
    assert!(reaped, "{got:?}");
    assert!(got.contains(&(pid, ChildExit::Exited(0))), "{got:?}");
    guard.finish();
}
