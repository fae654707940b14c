#![allow(clippy::unwrap_used)]
//! Exact snapshots of the `orphans` and `reap` human reports, from fixed
//! data, plain and coloured: what an operator reads must not drift when the
//! code that computes the reports changes.

mod common;

use leasectl::model::{Phase, TreeProc};
use leasectl::orphans::{Orphan, OrphanReport, Reason, StaleSocket};
use leasectl::procs::Flavor;
use leasectl::reap::{Method, Outcome, Plan, ReapReport, StepResult};
use leasectl::render::{self, Palette, strip_ansi};
use shellper_proctree::{Session, TreeSpec};

const PLAIN: Palette = Palette { color: false };
const COLOUR: Palette = Palette { color: true };

fn orphan_report() -> OrphanReport {
    OrphanReport {
        schema_version: 1,
        scope: "/run/user/1000/shellper".into(),
        orphans: vec![
            Orphan {
                id: Some("sh-0a1b2c3d".into()),
                pid: Some(4242),
                start_ticks: Some(100),
                child_pid: Some(4243),
                flavor: Flavor::Shellper,
                phase: Some(Phase::Lapsed),
                reasons: vec![Reason::Lapsed, Reason::HolderDead],
                detail: "lease lapsed, kill in 9m58s; holder minitower/77 is dead".into(),
                socket: Some("/run/user/1000/shellper/sh-0a1b2c3d.sock".into()),
                command: "bash -l".into(),
                age_ms: Some(3_723_000),
                sessions: vec![],
                cgroup: None,
            },
            Orphan {
                id: None,
                pid: Some(900),
                start_ticks: Some(5),
                child_pid: None,
                flavor: Flavor::Node,
                phase: None,
                reasons: vec![Reason::NoSocket, Reason::Untracked],
                detail: "listens on no socket; not in the tracked list".into(),
                socket: None,
                command: "node /opt/codev/shellper-main.js {\"command\":\"claude\",\"args\":[\"--long\",\"arguments\"]}"
                    .into(),
                age_ms: None,
                sessions: vec![],
                cgroup: None,
            },
            Orphan {
                id: Some("sh-99999999".into()),
                pid: None,
                start_ticks: None,
                child_pid: Some(7000),
                flavor: Flavor::Shellper,
                phase: Some(Phase::Dead),
                reasons: vec![Reason::ShellperGone],
                detail: "shellper gone (pid 6999); its child's session 7000 still runs: 3 process(es)"
                    .into(),
                socket: Some("/s/sh-99999999.sock".into()),
                command: "sh -c make".into(),
                age_ms: Some(10),
                sessions: vec![Session {
                    sid: 7000,
                    leader_start_ticks: 321,
                }],
                cgroup: None,
            },
        ],
        stale_sockets: vec![StaleSocket {
            id: "sh-33333333".into(),
            socket: "/s/sh-33333333.sock".into(),
        }],
        shellper_processes: 4,
        tracked: Some(2),
    }
}

#[test]
fn orphans_text_snapshot() {
    let r = orphan_report();
    let text = render::orphans_text(&PLAIN, &r);
    common::snapshot("orphans.txt", &text);
    let coloured = render::orphans_text(&COLOUR, &r);
    common::snapshot("orphans_colour.txt", &coloured);
    assert_eq!(strip_ansi(&coloured), text);
    let mut none = orphan_report();
    none.orphans.clear();
    none.stale_sockets.clear();
    assert_eq!(
        render::orphans_text(&PLAIN, &none),
        "no orphans (scope /run/user/1000/shellper, 4 shellper process(es) seen, 2 tracked pid(s))\n"
    );
    none.tracked = None;
    assert_eq!(
        render::orphans_text(&PLAIN, &none),
        "no orphans (scope /run/user/1000/shellper, 4 shellper process(es) seen)\n"
    );
}

fn proc(pid: i32, role: &'static str, comm: &str, cmdline: &[&str]) -> TreeProc {
    TreeProc {
        pid,
        ppid: 1,
        pgid: pid,
        sid: pid,
        state: "S".into(),
        start_ticks: 100 + pid as u64,
        comm: comm.into(),
        cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
        role,
    }
}

fn plan(target: &str, pid: Option<u32>, phase: Option<Phase>, steps: Vec<Method>) -> Plan {
    Plan {
        target: target.into(),
        id: Some(target.into()),
        pid,
        phase,
        refused: None,
        note: None,
        steps,
        tree: vec![
            proc(
                4242,
                "shellper",
                "shellper",
                &["shellper", "--config-stdin"],
            ),
            proc(4243, "child", "bash", &["bash", "-l"]),
            proc(
                5000,
                "descendant",
                "sh",
                &[
                    "sh",
                    "-c",
                    "while :; do date; sleep 1; done; this is a long command line that gets cut",
                ],
            ),
        ],
        sessions: vec![],
        cgroup: None,
        spec: TreeSpec::default(),
    }
}

fn outcome(plan: Plan) -> Outcome {
    Outcome {
        plan,
        executed: vec![],
        killed: vec![],
        survivors: vec![],
        clean: false,
    }
}

fn reap_report(dry_run: bool) -> ReapReport {
    let all = vec![
        Method::AuthTerminate,
        Method::Sigterm,
        Method::OutsideLadder,
        Method::RemoveStaleSocket,
    ];
    let mut ok = outcome(plan("sh-0a1b2c3d", Some(4242), Some(Phase::Lapsed), all));
    let mut bad = outcome(plan(
        "pid 900",
        Some(900),
        None,
        vec![Method::Sigterm, Method::OutsideLadder],
    ));
    let mut refused = outcome(plan("sh-11111111", Some(10001), Some(Phase::Held), vec![]));
    refused.plan.refused =
        Some("its lease is held by minitower@77/77; --force evicts the holder".into());
    let mut gone = outcome(plan(
        "sh-22222222",
        Some(7),
        Some(Phase::Unreachable),
        vec![],
    ));
    gone.plan.note = Some("nothing to do: process 7 is gone already".into());
    if !dry_run {
        ok.executed = vec![StepResult {
            method: Method::AuthTerminate,
            ok: true,
            detail: "TERMINATED: Requested, 3 signalled, 0 survivor(s), 12 ms, 1 sweep(s)".into(),
            elapsed_ms: 15,
        }];
        ok.killed = ok.plan.tree.clone();
        ok.clean = true;
        bad.executed = vec![
            StepResult {
                method: Method::Sigterm,
                ok: false,
                detail: "tree still alive after 3s".into(),
                elapsed_ms: 3001,
            },
            StepResult {
                method: Method::OutsideLadder,
                ok: false,
                detail: "4 signalled, 2 SIGKILLed, shellper Killed, 1 survivor(s)".into(),
                elapsed_ms: 6020,
            },
        ];
        bad.killed = bad.plan.tree[..2].to_vec();
        let mut d = bad.plan.tree[2].clone();
        d.state = "D".into();
        bad.survivors = vec![d];
    }
    ReapReport {
        schema_version: 1,
        scope: "/run/user/1000/shellper".into(),
        dry_run,
        targets: vec![ok, bad, refused, gone],
    }
}

#[test]
fn reap_text_snapshot() {
    for (dry, name) in [(true, "reap_dry_run"), (false, "reap")] {
        let r = reap_report(dry);
        let text = render::reap_text(&PLAIN, &r);
        common::snapshot(&format!("{name}.txt"), &text);
        let coloured = render::reap_text(&COLOUR, &r);
        common::snapshot(&format!("{name}_colour.txt"), &coloured);
        assert_eq!(strip_ansi(&coloured), text);
    }
    let empty = ReapReport {
        schema_version: 1,
        scope: "/x".into(),
        dry_run: false,
        targets: vec![],
    };
    assert_eq!(render::reap_text(&PLAIN, &empty), "nothing to reap\n");
}
