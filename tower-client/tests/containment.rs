//! How a Tower chooses its sessions' containment: a cgroup v2 each where a
//! writable one is given, the process tree (the `/proc` ladder) otherwise,
//! saying why; limits never silently ignored. Real cgroups where this
//! machine has a writable v2 tree (skipped, saying so, where not).

mod common;

use std::time::Duration;

use common::{config, lease, open_cfg, scope_tmp, spec};
use shellper_testkit::LeakGuard;
use shellper_testkit::cgroup::TestCgroup;
use tower_client::{CgroupChoice, Containment, Error, Limits};

/// The error of an open that must fail (a Tower is not `Debug`).
fn refused<T>(r: tower_client::Result<T>) -> Error {
    match r {
        Ok(_) => panic!("the Tower opened"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_missing_cgroup_directory_falls_back_to_the_process_tree_and_says_why() {
    let dir = scope_tmp();
    let mut cfg = config(lease(600, 3000, 300));
    cfg.cgroup = Some(CgroupChoice::Dir("/nonexistent/shellper-cgroup".into()));
    let (tower, _ev) = open_cfg(dir.path(), cfg).expect("opens");
    match tower.containment() {
        Containment::ProcessTree { reason } => {
            assert!(reason.contains("no writable cgroup v2"), "{reason}");
            assert!(reason.contains("/nonexistent/shellper-cgroup"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(tower.containment().describe().starts_with("process tree ("));
}

#[tokio::test]
async fn a_directory_that_is_not_a_cgroup_falls_back_too() {
    let dir = scope_tmp();
    let not_cg = tempfile::tempdir().expect("tmp");
    let mut cfg = config(lease(600, 3000, 300));
    cfg.cgroup = Some(CgroupChoice::Dir(not_cg.path().to_path_buf()));
    let (tower, _ev) = open_cfg(dir.path(), cfg).expect("opens");
    let Containment::ProcessTree { reason } = tower.containment() else {
        panic!("{:?}", tower.containment());
    };
    assert!(reason.contains("not on a cgroup2 file system"), "{reason}");
}

#[tokio::test]
async fn limits_without_a_usable_cgroup_are_an_error_not_a_silent_ignore() {
    let dir = scope_tmp();
    let mut cfg = config(lease(600, 3000, 300));
    cfg.limits = Limits {
        pids_max: Some(50),
        memory_max: None,
    };
    let err = refused(open_cfg(dir.path(), cfg.clone()));
    assert!(matches!(err, Error::Containment(_)), "{err}");
    assert!(err.to_string().contains("need a cgroup"), "{err}");
    cfg.cgroup = Some(CgroupChoice::Dir("/nonexistent/x".into()));
    let err = refused(open_cfg(dir.path(), cfg));
    assert!(err.to_string().contains("limits asked for"), "{err}");
}

#[tokio::test]
async fn limits_where_the_controller_is_not_delegated_are_an_error() {
    let Ok(t) = TestCgroup::new("tower-limits") else {
        eprintln!("SKIP: no writable cgroup v2");
        return;
    };
    let offered = std::fs::read_to_string(t.dir().join("cgroup.controllers")).unwrap_or_default();
    if offered.split_whitespace().any(|c| c == "pids") {
        eprintln!("SKIP: this cgroup offers pids; the error case cannot be made here");
        return;
    }
    let dir = scope_tmp();
    let mut cfg = config(lease(600, 3000, 300));
    cfg.cgroup = Some(CgroupChoice::Dir(t.dir().to_path_buf()));
    cfg.limits.pids_max = Some(10);
    let err = refused(open_cfg(dir.path(), cfg));
    let msg = err.to_string();
    assert!(msg.contains("pids controller is not available"), "{msg}");
}

/// With a writable cgroup, each session gets `base/<id>`, recorded in the
/// registry; it is gone once the session is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_gets_its_own_cgroup_recorded_in_the_registry_and_removed_at_the_end() {
    let Ok(t) = TestCgroup::new("tower-session") else {
        eprintln!("SKIP: no writable cgroup v2");
        return;
    };
    let guard = LeakGuard::new("tower-session-cgroup");
    let dir = scope_tmp();
    let mut cfg = config(lease(600, 3000, 300));
    cfg.cgroup = Some(CgroupChoice::Dir(t.dir().to_path_buf()));
    let (tower, _ev) = open_cfg(dir.path(), cfg).expect("opens");
    let Containment::Cgroup { base, .. } = tower.containment() else {
        panic!("{:?}", tower.containment());
    };
    assert_eq!(base, t.dir());
    let h = tower
        .spawn(spec(&guard, "exec sleep 60"))
        .await
        .expect("spawn");
    let want = t.dir().join(&h.info().id);
    assert_eq!(h.info().cgroup.as_deref(), Some(want.as_path()));
    assert!(want.join("cgroup.procs").is_file(), "created");
    let reg = tower_client::Scope::open(dir.path())
        .expect("scope")
        .read_registry()
        .expect("registry");
    assert_eq!(
        reg.get(&h.info().id).and_then(|e| e.cgroup.clone()),
        Some(want.clone())
    );
    h.terminate(Duration::from_secs(5))
        .await
        .expect("terminate");
    assert!(
        shellper_testkit::wait_for(Duration::from_secs(5), || !want.exists()),
        "session cgroup removed"
    );
    drop(tower);
    guard.finish();
}

/// A shellper SIGKILLed while its session forks a new process every few
/// ms: the Tower kills the session's cgroup, so nothing survives, not even
/// the processes started after its last look at the tree (the bound of the
/// process-tree record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_shellper_of_a_forking_session_leaves_nothing_behind() {
    let Ok(t) = TestCgroup::new("tower-sigkill-fork") else {
        eprintln!("SKIP: no writable cgroup v2");
        return;
    };
    let guard = LeakGuard::new("tower-sigkill-fork");
    let dir = scope_tmp();
    let mut cfg = config(lease(600, 20_000, 300));
    cfg.cgroup = Some(CgroupChoice::Dir(t.dir().to_path_buf()));
    let (tower, mut ev) = open_cfg(dir.path(), cfg).expect("opens");
    // A new process every ~5 ms, each in a session of its own (setsid), so
    // neither the PTY session nor the recorded tree can know the youngest.
    let h = tower
        .spawn(spec(
            &guard,
            "trap '' HUP; while :; do setsid sleep 600 & sleep 0.005; done",
        ))
        .await
        .expect("spawn");
    let cg_dir = t.dir().join(&h.info().id);
    assert!(
        shellper_testkit::wait_for(Duration::from_secs(10), || guard.survivors().len() >= 30),
        "the session forks"
    );
    // Every tagged process but the shellper is in the session's cgroup.
    let shellper = h.info().pid as i32;
    let members = |d: &std::path::Path| shellper_testkit::cgroup::procs(d);
    let tagged = guard.survivors();
    let inside = members(&cg_dir);
    for s in tagged.iter().filter(|s| s.pid != shellper) {
        assert!(
            inside.contains(&s.pid) || !shellper_testkit::proc_alive(s.pid),
            "{s} is not in the session cgroup {}",
            cg_dir.display()
        );
    }
    assert!(!inside.contains(&shellper), "the shellper stays outside");
    // SAFETY: kill(2) on the shellper we spawned (not reaped: we hold it).
    assert_eq!(unsafe { libc::kill(shellper, libc::SIGKILL) }, 0);
    let e = common::wait_event(&mut ev, Duration::from_secs(15), |e| {
        matches!(e, tower_client::Event::TreeKilled { .. })
    })
    .await;
    match &e {
        tower_client::Event::TreeKilled {
            survivors, cgroup, ..
        } => {
            assert_eq!(*survivors, 0, "{e:?}");
            assert_eq!(cgroup.as_deref(), Some(cg_dir.to_str().unwrap()), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    let left = guard.wait_gone(Duration::from_secs(5));
    assert!(left.is_empty(), "survivors: {left:?}");
    assert!(!cg_dir.exists(), "session cgroup removed");
    drop(tower);
    guard.finish();
}

/// The Tower gone, then its shellper SIGKILLed: nobody watched, and the
/// session runs on in its cgroup. The next Tower finds the shellper gone at
/// adoption and kills the session's cgroup (the registry names it) before
/// it forgets the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_tower_kills_the_cgroup_of_a_shellper_found_gone_at_adoption() {
    let Ok(t) = TestCgroup::new("tower-adopt-gone") else {
        eprintln!("SKIP: no writable cgroup v2");
        return;
    };
    let guard = LeakGuard::new("tower-adopt-gone");
    let dir = scope_tmp();
    let cfg = || {
        let mut c = config(lease(600, 20_000, 300));
        c.cgroup = Some(CgroupChoice::Dir(t.dir().to_path_buf()));
        c
    };
    let (tower, _ev) = open_cfg(dir.path(), cfg()).expect("opens");
    let h = tower
        .spawn(spec(
            &guard,
            "trap '' HUP; setsid sleep 600 & exec sleep 600",
        ))
        .await
        .expect("spawn");
    let cg_dir = t.dir().join(&h.info().id);
    let shellper = h.info().pid as i32;
    assert!(shellper_testkit::wait_for(Duration::from_secs(10), || {
        shellper_testkit::cgroup::procs(&cg_dir).len() == 2
    }));
    // The Tower lets go (its holders end: nobody watches the shellper)...
    drop(h);
    for (id, r) in tower.detach_all(None).await {
        r.unwrap_or_else(|e| panic!("detach {id}: {e}"));
    }
    drop(tower);
    // ...and then the shellper is SIGKILLed: its session runs on, unwatched.
    // SAFETY: kill(2) on the shellper this test spawned.
    assert_eq!(unsafe { libc::kill(shellper, libc::SIGKILL) }, 0);
    assert!(shellper_testkit::wait_for(Duration::from_secs(5), || {
        !shellper_testkit::proc_alive(shellper)
    }));
    assert_eq!(
        shellper_testkit::cgroup::procs(&cg_dir).len(),
        2,
        "session alive"
    );
    let (tower, _ev) = common::open_cfg(dir.path(), cfg()).expect("reopens");
    let report = tower.adopt_all().await;
    assert_eq!(report.gone.len(), 1, "{report:?}");
    assert!(
        !cg_dir.exists(),
        "the session's cgroup is killed and removed"
    );
    let left = guard.wait_gone(Duration::from_secs(5));
    assert!(left.is_empty(), "survivors: {left:?}");
    drop(tower);
    guard.finish();
}
