//! The cgroup kill ladder against real processes in real cgroups: the
//! escape torture tree and a fork storm die by `cgroup.kill` (and by
//! freeze/kill/thaw, the path of kernels before 5.14), with zero survivors,
//! `populated 0` and the directory removed. Skipped, saying why, where no
//! writable cgroup v2 exists.
//!
//! Every test has a cgroup parent of its own ([`TestCgroup`]), killed and
//! removed at teardown, and a leak guard.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shellper_proctree::RealClock;
use shellper_proctree::cgroup::{Cgroup, CgroupKillPlan, KillMethod, kill_cgroup};
use shellper_testkit::LeakGuard;
use shellper_testkit::cgroup::{TestCgroup, populated};

const ESCAPES: &str = r#"
(trap '' HUP; while :; do sleep 1; done) &
setsid sh -c 'sleep 60' &
(sh -c 'sleep 60 &') &
(trap '' HUP TERM; while :; do sleep 1; done) &
nohup sleep 60 >/dev/null 2>&1 &
sleep 60 & kill -STOP $!
sleep 60 & kill -STOP $!
"#;

/// A fork storm: loops starting a new process every few ms (paced: the
/// machine is shared), in sessions of their own, ignoring HUP and TERM; the
/// kill lands while they fork.
const STORM: &str = r#"
for i in 1 2 3; do
  setsid sh -c 'trap "" HUP TERM; while :; do sleep 60 & sleep 0.01; done' &
done
"#;

fn test_cgroup(name: &str) -> Option<TestCgroup> {
    match TestCgroup::new(name) {
        Ok(t) => Some(t),
        Err(why) => {
            eprintln!("SKIP {name}: no writable cgroup v2 ({why})");
            None
        }
    }
}

/// Starts `sh -c SCRIPT` inside `cg` (moved between fork and exec, so every
/// process it starts is born inside), tagged by `guard`; returns once the
/// script printed `ready`.
fn start_in(cg: &Cgroup, guard: &LeakGuard, script: &str) -> Child {
    let attach = cg.attach_fd().expect("open cgroup.procs");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{script}\nsleep 0.3\necho ready\nexec sleep 600\n"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    guard.apply(&mut cmd);
    // SAFETY: attach_current only calls write(2); setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            attach.attach_current()?;
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn sh in the cgroup");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read ready");
    assert_eq!(line.trim(), "ready");
    child
}

fn plan(grace_ms: u64) -> CgroupKillPlan {
    let mut p = CgroupKillPlan::new(Duration::from_millis(grace_ms));
    p.hard_bound = Duration::from_secs(10);
    p
}

fn torture(name: &str, force_freeze: bool, script: &str, storm: bool) {
    let Some(t) = test_cgroup(name) else { return };
    let guard = LeakGuard::new(name);
    let cg = Cgroup::at(t.join("session"));
    std::fs::create_dir(cg.dir()).expect("mkdir session cgroup");
    let mut root = start_in(&cg, &guard, script);
    // A storm never holds still: wait for it to be well under way instead.
    let before = if storm {
        shellper_testkit::wait_for(Duration::from_secs(10), || guard.survivors().len() >= 100);
        guard.survivors().len()
    } else {
        guard.wait_steady(8, Duration::from_secs(10))
    };
    assert!(before >= 8, "the tree started ({before} tagged processes)");
    // Every tagged process is in the cgroup: born inside, whatever it did.
    // (Tagged processes first, then members: a storm's newcomers are in the
    // second list; one that exited in between is not alive any more.)
    let tagged = guard.survivors();
    let members = cg.members().expect("members");
    for s in tagged {
        assert!(
            members.contains(&s.pid) || !shellper_testkit::proc_alive(s.pid),
            "{s} escaped the cgroup"
        );
    }
    let mut p = plan(300);
    p.force_freeze = force_freeze;
    let started = Instant::now();
    let report = kill_cgroup(&cg, &RealClock, &p, &mut || {});
    let took = started.elapsed();
    eprintln!("{name}: {before} processes, killed in {took:?} ({report:?})");
    assert!(report.is_clean(), "survivors: {report:?}");
    assert_eq!(
        report.method,
        Some(if force_freeze {
            KillMethod::FreezeKill
        } else {
            KillMethod::CgroupKill
        }),
        "{report:?}"
    );
    assert!(
        report.report.sigkilled >= 2,
        "TERM ignorers needed the kill: {report:?}"
    );
    assert!(report.removed, "directory removed: {report:?}");
    assert!(!cg.dir().exists());
    assert!(!populated(cg.dir()));
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // Nothing tagged is alive: zero survivors, checked independently.
    let left = guard.survivors();
    assert!(left.is_empty(), "survivors: {left:?}");
    root.wait().expect("reap the root sh");
    guard.finish();
    assert!(t.clean_up());
}

#[test]
fn s05_escape_torture_tree_dies_by_cgroup_kill() {
    torture("cg-torture", false, ESCAPES, false);
}

#[test]
fn s05_escape_torture_tree_dies_by_freeze_kill_thaw() {
    torture("cg-torture-freeze", true, ESCAPES, false);
}

#[test]
fn s05_fork_storm_dies_by_cgroup_kill() {
    torture("cg-storm", false, &format!("{ESCAPES}{STORM}"), true);
}

#[test]
fn a_sub_cgroup_made_inside_the_session_dies_and_is_removed_with_it() {
    let Some(t) = test_cgroup("cg-nested") else {
        return;
    };
    let guard = LeakGuard::new("cg-nested");
    let cg = Cgroup::at(t.join("session"));
    std::fs::create_dir(cg.dir()).expect("mkdir");
    let inner = cg.dir().join("inner");
    let script = format!(
        "mkdir {0} && sh -c 'echo $$ > {0}/cgroup.procs; trap \"\" TERM HUP; exec sleep 60' &",
        inner.display()
    );
    let mut root = start_in(&cg, &guard, &script);
    assert!(shellper_testkit::wait_for(Duration::from_secs(5), || {
        !shellper_testkit::cgroup::procs(&inner).is_empty()
    }));
    let report = kill_cgroup(&cg, &RealClock, &plan(200), &mut || {});
    assert!(report.is_clean() && report.removed, "{report:?}");
    assert!(!inner.exists() && !cg.dir().exists());
    root.wait().expect("reap");
    guard.finish();
}

#[test]
fn a_missing_cgroup_is_empty_and_members_leave_it_by_exiting() {
    let Some(t) = test_cgroup("cg-gone") else {
        return;
    };
    let cg = Cgroup::at(t.join("never-made"));
    let report = kill_cgroup(&cg, &RealClock, &plan(100), &mut || {});
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.method, None);
    // A polite tree exits within the grace: no kill is needed.
    let guard = LeakGuard::new("cg-polite");
    let cg = Cgroup::at(t.join("polite"));
    std::fs::create_dir(cg.dir()).expect("mkdir");
    let mut root = start_in(&cg, &guard, "sleep 60 &");
    let report = kill_cgroup(&cg, &RealClock, &plan(3000), &mut || {});
    assert!(report.is_clean() && report.removed, "{report:?}");
    assert_eq!(report.method, None, "everything left on SIGHUP/SIGTERM");
    assert!(report.report.elapsed < Duration::from_millis(2500));
    root.wait().expect("reap");
    guard.finish();
}
