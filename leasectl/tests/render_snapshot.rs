#![allow(clippy::unwrap_used)]
//! Exact snapshots of the human output, from fixed data: the table's
//! alignment, the placeholders for unknown values, the phase texts, and the
//! `show` report. (Real-process runs cannot be snapshotted byte for byte:
//! pids and paths change the column widths.)

mod common;

use leasectl::model::{Phase, PidSource, ShellperView, TreeProc};
use leasectl::render::{self, Palette};

fn held() -> ShellperView {
    let mut v = common::held_view();
    // A session in a cgroup (issue 21): CPU, MEM and PROCS filled in.
    v.containment = Some(shellper_protocol::msg::Containment {
        cgroup: Some("/sys/fs/cgroup/user.slice/minitower.service/sh-0a1b2c3d".into()),
        controllers: vec!["memory".into(), "pids".into()],
        cpu_usec: Some(83_400_000),
        procs: Some(3),
        memory_current: Some(10 << 20),
        memory_peak: Some(12 << 20),
        pids_max: Some(256),
        memory_max: None,
    });
    v
}

fn others() -> Vec<ShellperView> {
    let mut lapsed = held();
    lapsed.id = "sh-11111111".into();
    lapsed.phase = Phase::Lapsed;
    lapsed.pid = Some(10001);
    lapsed.child_pid = Some(10002);
    lapsed.holder = None;
    lapsed.holder_alive = None;
    lapsed.expires_in_ms = None;
    lapsed.kill_in_ms = Some(598_500);
    lapsed.clients = Some(vec![]);
    // The process tree: no accounting.
    lapsed.containment = Some(shellper_protocol::msg::Containment::default());
    lapsed.command = Some("sh".into());
    lapsed.args = vec![
        "-c".into(),
        "while :; do date; sleep 1; done; this is a long command line that gets cut".into(),
    ];
    let mut stopped = ShellperView::bare("sh-22222222".into(), "/s/sh-22222222.sock".into());
    stopped.pid = Some(7);
    stopped.pid_source = Some(PidSource::Registry);
    stopped.proc_state = Some("stopped".into());
    stopped.command = Some("vim".into());
    stopped.age_ms = Some(90_061_000);
    let mut dead = ShellperView::bare("sh-33333333".into(), "/s/sh-33333333.sock".into());
    dead.phase = Phase::Dead;
    vec![held(), lapsed, stopped, dead]
}

#[test]
fn list_table_snapshot() {
    let p = Palette { color: false };
    let text = render::list_text(&p, "/run/user/1000/shellper", &others());
    common::snapshot("list_table.txt", &text);
    let empty = render::list_text(&p, "/x", &[]);
    assert_eq!(empty, "no shellpers in scope /x\n");
    // With colour the same text, plus escapes.
    let coloured = render::list_text(
        &Palette { color: true },
        "/run/user/1000/shellper",
        &others(),
    );
    assert!(coloured.contains("\x1b[32mheld\x1b[0m"));
    common::snapshot("list_table_colour.txt", &coloured);
    assert_eq!(render::strip_ansi(&coloured), text);
}

#[test]
fn show_text_snapshot() {
    let p = Palette { color: false };
    let tree = vec![
        TreeProc {
            pid: 4242,
            ppid: 77,
            pgid: 4242,
            sid: 4242,
            state: "S".into(),
            start_ticks: 100,
            comm: "shellper".into(),
            cmdline: vec!["shellper".into(), "{…}".into()],
            role: "shellper",
        },
        TreeProc {
            pid: 4243,
            ppid: 4242,
            pgid: 4243,
            sid: 4243,
            state: "S".into(),
            start_ticks: 101,
            comm: "bash".into(),
            cmdline: vec!["bash".into(), "-l".into()],
            role: "child",
        },
        TreeProc {
            pid: 5000,
            ppid: 4242,
            pgid: 5000,
            sid: 5000,
            state: "T".into(),
            start_ticks: 150,
            comm: "daemon".into(),
            cmdline: vec![],
            role: "descendant",
        },
    ];
    common::snapshot("show.txt", &render::show_text(&p, &held(), &tree));
    let coloured = render::show_text(&Palette { color: true }, &held(), &tree);
    common::snapshot("show_colour.txt", &coloured);
    assert_eq!(
        render::strip_ansi(&coloured),
        render::show_text(&p, &held(), &tree)
    );
}
