//! `become_subreaper` + `reap_zombies`. Alone in its own test binary on
//! purpose: reaping steals every child's exit status in the process, and the
//! subreaper attribute changes where every orphan of the process goes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shellper_proctree::{ChildExit, become_subreaper, reap_zombies};
use shellper_testkit::LeakGuard;

#[test]
// The children are reaped by reap_zombies, which is what this test is about.
#[allow(clippy::zombie_processes)]
fn subreaper_adopts_orphans_and_reap_zombies_collects_every_status() {
    let guard = LeakGuard::new("subreaper_reap");
    become_subreaper().expect("prctl");
    assert!(
        reap_zombies().is_empty(),
        "no children yet: ECHILD is an empty list"
    );

    // sh prints its background job's pid and exits 3: the job is orphaned
    // and must be reparented to us, then exit 0.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("sleep 0.2 & echo $!; exit 3")
        .stdout(Stdio::piped());
    guard.apply(&mut cmd);
    let mut sh = cmd.spawn().expect("spawn");
    let sh_pid = sh.id() as i32;
    let mut line = String::new();
    BufReader::new(sh.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read");
    let orphan: i32 = line.trim().parse().expect("pid");

    let mut victim = Command::new("sleep");
    victim.arg("30");
    guard.apply(&mut victim);
    let victim = victim.spawn().expect("spawn");
    let victim_pid = victim.id() as i32;
    // SAFETY: plain kill(2) on our own child, which is not yet reaped, so
    // its pid cannot have been recycled.
    unsafe { libc::kill(victim_pid, libc::SIGKILL) };

    let mut got = Vec::new();
    let mut adopted = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "reaped so far: {got:?}");
        if let Some(p) = shellper_proctree::read_stat(orphan) {
            adopted |= p.ppid == std::process::id() as i32;
        }
        got.extend(reap_zombies());
        std::thread::sleep(Duration::from_millis(10));
    }
    got.sort_unstable_by_key(|g| g.0);
    let mut want = vec![
        (sh_pid, ChildExit::Exited(3)),
        (orphan, ChildExit::Exited(0)),
        (victim_pid, ChildExit::Signaled(libc::SIGKILL)),
    ];
    want.sort_unstable_by_key(|w| w.0);
    assert_eq!(got, want);
    assert!(adopted, "the orphan was reparented to this subreaper");
    assert!(reap_zombies().is_empty());
    guard.finish();
}
