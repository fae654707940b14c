#![allow(clippy::unwrap_used)]
//! Exact snapshots of the human output, from fixed data: the table's
//! alignment, the placeholders for unknown values, the phase texts, and the
//! `show` report. (Real-process runs cannot be snapshotted byte for byte:
//! pids and paths change the column widths.)

mod common;

use leasectl::model::{HolderView, Phase, PidSource, ShellperView, Timings, TreeProc};
use leasectl::render::{self, Palette};
use shellper_protocol::msg::{ChildState, ClientInfo, ClientType, Counters, HolderInfo};

fn held() -> ShellperView {
    let mut v = ShellperView::bare(
        "sh-0a1b2c3d".into(),
        "/run/user/1000/shellper/sh-0a1b2c3d.sock".into(),
    );
    v.pid = Some(4242);
    v.pid_source = Some(PidSource::Status);
    v.start_ticks = Some(100);
    v.child_pid = Some(4243);
    v.child = Some(ChildState::Running);
    v.phase = Phase::Held;
    v.reachable = true;
    v.leased = Some(true);
    v.epoch = Some(3);
    v.holder = Some(HolderView {
        info: HolderInfo {
            name: "minitower@77".into(),
            pid: 77,
        },
        peer_pid: Some(77),
    });
    v.holder_alive = Some(true);
    v.expires_in_ms = Some(5400);
    v.command = Some("bash".into());
    v.args = vec!["-l".into()];
    v.cwd = Some("/home/u".into());
    v.started_at = Some("2026-01-01T00:00:00.000Z".into());
    v.started_at_ms = Some(1_767_225_600_000);
    v.age_ms = Some(3_723_000);
    v.clients = Some(vec![
        ClientInfo {
            kind: ClientType::Tower,
            pid: 77,
            holder: true,
        },
        ClientInfo {
            kind: ClientType::Terminal,
            pid: 900,
            holder: false,
        },
    ]);
    v.in_registry = true;
    v.timings = Some(Timings {
        ttl_ms: 6000,
        window_ms: 600_000,
        claim_ms: 60_000,
        kill_grace_ms: 3000,
    });
    v.counters = Some(Counters {
        acquires: 3,
        renewals: 1234,
        rejected_tokens: 1,
        stale_epochs: 2,
        revocations: 2,
        lapses: 2,
        stalls: 0,
        protocol_errors: 0,
    });
    v.version = Some("0.1.0".into());
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
