//! Limits and accounting over a fake cgroup file system (a directory with
//! the interface files). This machine's cgroup v2 tree offers no
//! controllers, so `memory.max`, `pids.max`, `memory.current` and
//! `memory.peak` cannot exist there: the code is path-based, and these
//! tests drive it over files laid out as the kernel lays them out.

use std::path::Path;

use shellper_proctree::Error;
use shellper_proctree::cgroup::{Cgroup, Limits, SessionBase, Usage};

fn fake(dir: &Path, controllers: &str, files: &[(&str, &str)]) -> Cgroup {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("cgroup.controllers"), controllers).expect("write");
    std::fs::write(dir.join("cgroup.procs"), "").expect("write");
    std::fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 0\n").expect("write");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
    Cgroup::at(dir)
}

#[test]
fn limits_are_written_where_the_controllers_exist() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cg = fake(
        &tmp.path().join("s"),
        "cpu memory pids\n",
        &[("pids.max", "max\n"), ("memory.max", "max\n")],
    );
    assert_eq!(cg.limits(), Limits::default(), "max means no limit");
    let want = Limits {
        pids_max: Some(64),
        memory_max: Some(256 << 20),
    };
    cg.set_limits(&want).expect("set");
    assert_eq!(
        std::fs::read_to_string(cg.dir().join("pids.max")).expect("read"),
        "64"
    );
    assert_eq!(
        std::fs::read_to_string(cg.dir().join("memory.max")).expect("read"),
        (256u64 << 20).to_string()
    );
    assert_eq!(cg.limits(), want);
}

#[test]
fn a_limit_without_its_controller_is_a_clear_error_not_a_silent_ignore() {
    let tmp = tempfile::tempdir().expect("tmp");
    // This machine's situation: no controller at all.
    let cg = fake(&tmp.path().join("none"), "\n", &[]);
    let err = cg
        .set_limits(&Limits {
            pids_max: Some(10),
            memory_max: None,
        })
        .expect_err("no pids controller");
    assert!(matches!(
        err,
        Error::ControllerUnavailable {
            controller: "pids",
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.contains("pids controller is not available"), "{msg}");
    assert!(msg.contains("available: none"), "{msg}");
    assert!(!cg.dir().join("pids.max").exists(), "nothing written");

    // Memory asked for where only pids is delegated.
    let cg = fake(
        &tmp.path().join("pids-only"),
        "pids\n",
        &[("pids.max", "max\n")],
    );
    let err = cg
        .set_limits(&Limits {
            pids_max: Some(10),
            memory_max: Some(1 << 20),
        })
        .expect_err("no memory controller");
    assert!(err.to_string().contains("memory controller"), "{err}");
    assert!(err.to_string().contains("available: pids"), "{err}");
    assert_eq!(
        std::fs::read_to_string(cg.dir().join("pids.max")).expect("read"),
        "max\n",
        "checked before anything is written"
    );

    // A base checks the limits against what its sessions get.
    let base = SessionBase {
        base: Cgroup::at(tmp.path()),
        controllers: vec!["pids".into()],
        tower_leaf: None,
    };
    base.check_limits(&Limits {
        pids_max: Some(5),
        memory_max: None,
    })
    .expect("pids is there");
    let err = base
        .check_limits(&Limits {
            pids_max: None,
            memory_max: Some(1),
        })
        .expect_err("memory is not");
    assert!(err.to_string().contains("memory"), "{err}");
}

#[test]
fn a_session_whose_limits_cannot_be_set_is_not_left_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base_dir = tmp.path().join("base");
    std::fs::create_dir(&base_dir).expect("mkdir");
    let base = SessionBase {
        base: Cgroup::at(&base_dir),
        controllers: vec![],
        tower_leaf: None,
    };
    // On a fake fs the new directory has no interface files, so reading its
    // controllers fails: the session is refused and its directory removed.
    let err = base
        .create_session(
            "sh-1",
            &Limits {
                pids_max: Some(3),
                memory_max: None,
            },
        )
        .expect_err("refused");
    assert!(err.to_string().contains("sh-1"), "{err}");
    assert!(!base_dir.join("sh-1").exists());
    // Without limits nothing is checked.
    let cg = base
        .create_session("sh-2", &Limits::default())
        .expect("made");
    assert!(cg.dir().is_dir());
}

#[test]
fn accounting_reads_cpu_processes_and_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cg = fake(
        &tmp.path().join("s"),
        "cpu memory pids\n",
        &[
            (
                "cpu.stat",
                "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n",
            ),
            ("memory.current", "10485760\n"),
            ("memory.peak", "20971520\n"),
            ("cgroup.procs", "101\n102\n"),
        ],
    );
    // A sub-cgroup a process of the session made: its members count too.
    fake(
        &cg.dir().join("inner"),
        "",
        &[("cgroup.procs", "103\n102\n")],
    );
    assert_eq!(
        cg.usage(),
        Usage {
            cpu_usec: Some(1_234_567),
            procs: 3,
            memory_current: Some(10 << 20),
            memory_peak: Some(20 << 20),
        }
    );
    // No memory controller: memory is unknown, not zero.
    let bare = fake(
        &tmp.path().join("bare"),
        "\n",
        &[("cpu.stat", "usage_usec 5\n"), ("cgroup.procs", "7\n")],
    );
    assert_eq!(
        bare.usage(),
        Usage {
            cpu_usec: Some(5),
            procs: 1,
            memory_current: None,
            memory_peak: None,
        }
    );
}

#[test]
fn controllers_are_enabled_one_by_one_for_the_sessions() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cg = fake(
        &tmp.path().join("b"),
        "cpu io memory pids\n",
        &[("cgroup.subtree_control", "")],
    );
    // A regular file keeps only the last write; the kernel's file would
    // list all of them. What matters: only offered controllers are asked
    // for, and the answer is read back from the file.
    let got = cg.enable_controllers(&["memory", "hugetlb"]);
    assert_eq!(got, vec!["+memory".to_string()]);
}
