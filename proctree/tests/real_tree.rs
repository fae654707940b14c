//! The ladder against real processes: an escape-torture tree built with
//! `sh`, killed with zero survivors, under the leak guard.
//!
//! The test process cannot be the tree's root (it is not a shellper, and
//! making it a subreaper that reaps would steal other tests' exit statuses),
//! so each test starts a root `sh` in its own session and runs the ladder
//! with root = that session leader and session = its session, exactly as a
//! shellper would for its PTY child.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shellper_proctree::{
    KillPlan, LinuxTable, RealClock, Session, kill_tree, members, read_stat, snapshot,
};
use shellper_testkit::LeakGuard;

const ESCAPES: &str = r#"
(trap '' HUP; while :; do sleep 1; done) &
setsid sh -c 'sleep 60' &
(sh -c 'sleep 60 &') &
(trap '' HUP TERM; while :; do sleep 1; done) &
nohup sleep 60 >/dev/null 2>&1 &
sleep 60 & kill -STOP $!
sleep 60 & kill -STOP $!
"#;

/// Starts `sh -c SCRIPT` as a session leader (and, if `subreaper`, a child
/// subreaper, like a shellper), tagged by `guard`; returns once the script
/// printed `ready`.
fn start_root(guard: &LeakGuard, script: &str, subreaper: bool) -> Child {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{script}\nsleep 0.3\necho ready\nexec sleep 600\n"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    guard.apply(&mut cmd);
    // SAFETY: setsid and prctl are async-signal-safe system calls; the
    // closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if subreaper && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn root sh");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read ready");
    assert_eq!(line.trim(), "ready");
    child
}

fn run_ladder(root: i32) -> shellper_proctree::KillReport {
    let mut plan = KillPlan::new(
        root,
        Session::led_by(&read_stat(root).expect("root")),
        Duration::from_millis(700),
    );
    plan.hard_bound = Duration::from_secs(5);
    kill_tree(&LinuxTable, &RealClock, &plan, &mut || {})
}

fn finish(guard: LeakGuard, mut root: Child) {
    root.kill().expect("kill root");
    root.wait().expect("reap root");
    guard.finish();
}

#[test]
fn s05_real_escape_torture_session_leader_root_zero_survivors() {
    let guard = LeakGuard::new("s05_real_session_root");
    let root_child = start_root(&guard, ESCAPES, false);
    let root = root_child.id() as i32;
    let root_info = read_stat(root).expect("root");
    assert_eq!(root_info.sid, root, "root leads its session");

    // The tree really has the escape kinds in it.
    let plan = KillPlan::new(
        root,
        Session::led_by(&read_stat(root).expect("root")),
        Duration::ZERO,
    );
    let before = members(&snapshot(), &plan.tree);
    assert!(before.len() >= 8, "members: {before:#?}");
    assert!(before.iter().any(|p| p.is_stopped()), "a stopped job");
    assert!(before.iter().any(|p| p.sid != root), "a setsid escapee");
    assert!(
        before.iter().any(|p| p.sid == root
            && p.ppid != root
            && read_stat(p.ppid).is_none_or(|pp| pp.sid != root)),
        "a double-forked process reparented out of the tree but still in the session: {before:#?}"
    );
    let tagged = guard.survivors().len();
    assert_eq!(
        tagged,
        before.len() + 1,
        "every tagged process but root is a member"
    );

    let report = run_ladder(root);
    assert!(report.is_clean(), "{report:#?}");
    assert!(report.errors.is_empty(), "{report:#?}");
    assert!(
        report.sigkilled >= 1,
        "the HUP+TERM-ignoring loop needed SIGKILL: {report:#?}"
    );
    assert!(report.elapsed >= Duration::from_millis(700));
    // Only root is left of everything tagged.
    let left: Vec<_> = guard.survivors().into_iter().map(|s| s.pid).collect();
    assert_eq!(left, vec![root]);
    assert!(
        read_stat(root).is_some_and(|p| p.is_live()),
        "root never signalled"
    );
    finish(guard, root_child);
}

#[test]
fn s05_real_escape_torture_subreaper_root_catches_setsid_daemons() {
    let guard = LeakGuard::new("s05_real_subreaper_root");
    let script = format!(
        "{ESCAPES}\n(setsid sh -c 'trap \"\" HUP TERM; while :; do sleep 1; done' &)\n(setsid sleep 60 &)\n"
    );
    let root_child = start_root(&guard, &script, true);
    let root = root_child.id() as i32;
    let plan = KillPlan::new(
        root,
        Session::led_by(&read_stat(root).expect("root")),
        Duration::ZERO,
    );
    let before = members(&snapshot(), &plan.tree);
    // Daemons that left both the session and their parent were reparented
    // to the subreaper root: only the descendant rule finds them.
    let escaped: Vec<_> = before
        .iter()
        .filter(|p| p.sid != root && p.ppid == root)
        .collect();
    assert!(escaped.len() >= 2, "{before:#?}");
    assert_eq!(guard.survivors().len(), before.len() + 1);

    let report = run_ladder(root);
    assert!(report.is_clean(), "{report:#?}");
    assert!(report.sigkilled >= 2, "{report:#?}");
    let left: Vec<_> = guard.survivors().into_iter().map(|s| s.pid).collect();
    assert_eq!(left, vec![root]);
    finish(guard, root_child);
}
