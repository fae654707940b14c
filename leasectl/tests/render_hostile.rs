#![allow(clippy::unwrap_used)]
//! Terminal injection: whatever a session or a client supplies (command
//! line, cwd, holder name, process names, error texts, file names) must
//! reach the operator's terminal as visible text, never as control
//! sequences; columns are measured in terminal cells; `--json` stays exact.
//! From fixed data for every human report, and end to end against a real
//! shellper whose command line is an escape sequence.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use leasectl::model::{HolderView, Phase, ShellperView, TreeProc};
use leasectl::orphans::{Orphan, OrphanReport, Reason, StaleSocket};
use leasectl::procs::Flavor;
use leasectl::prune::{Failure, PruneReport};
use leasectl::reap::{Method, Outcome, Plan, ReapReport, StepResult};
use leasectl::render::{self, Palette};
use shellper_proctree::TreeSpec;
use shellper_protocol::msg::HolderInfo;
use shellper_testkit::LeakGuard;
use tower_client::tidy::{Action, TidyPlan, What};

/// Sets the window title, clears the screen, turns text red; a C1 CSI, DEL
/// and a right-to-left override for good measure.
const HOSTILE: &str = "#\x1b]0;TITLE\x07\x1b[2J\x1b[31mred\u{9b}2J\x7f\u{202e}\r\n";

const PALETTES: [Palette; 2] = [Palette { color: false }, Palette { color: true }];

/// C0, DEL, C1, bidirectional overrides and isolates (the checker keeps its
/// own copy of the rule, independent of the code it checks).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Terminal cells.
fn width(s: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(s)
}

/// Panics if `text` holds anything but printable text, newlines, and the
/// report's own escapes (SGR colours; `watch`'s cursor-home-and-clear at the
/// very start).
fn assert_inert(what: &str, text: &str) {
    let body = text.strip_prefix("\x1b[H\x1b[2J").unwrap_or(text);
    let mut it = body.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c == '\x1b' {
            // Only `ESC [ digits/; m` is ours.
            let rest = &body[i + 1..];
            let end = rest
                .find('m')
                .unwrap_or_else(|| panic!("{what}: a bare ESC at byte {i}:\n{text:?}"));
            let params = &rest[..end];
            assert!(
                params.starts_with('[')
                    && params[1..].chars().all(|c| c.is_ascii_digit() || c == ';'),
                "{what}: an escape that is not a colour at byte {i}: {:?}\n{text:?}",
                &rest[..end + 1]
            );
            for _ in 0..=end {
                it.next();
            }
            continue;
        }
        assert!(
            c == '\n' || !is_unsafe(c),
            "{what}: control character {c:?} at byte {i}:\n{text:?}"
        );
    }
}

fn hostile_view(id: &str) -> ShellperView {
    let mut v = held_view();
    v.id = id.into();
    v.socket = format!("/s/{id}{HOSTILE}.sock");
    v.command = Some(format!("sh{HOSTILE}"));
    v.args = vec!["-c".into(), format!("sleep 100 {HOSTILE}")];
    v.cwd = Some(format!("/home/{HOSTILE}"));
    v.holder = Some(HolderView {
        info: HolderInfo {
            name: format!("tower{HOSTILE}"),
            pid: 77,
        },
        peer_pid: Some(77),
    });
    v.error = Some(format!("shellper said: {HOSTILE}"));
    v.version = Some(format!("0.1{HOSTILE}"));
    v.proc_state = Some(format!("stopped{HOSTILE}"));
    v
}

fn hostile_proc() -> TreeProc {
    TreeProc {
        pid: 5000,
        ppid: 1,
        pgid: 5000,
        sid: 5000,
        state: format!("S{HOSTILE}"),
        start_ticks: 1,
        comm: format!("evil{HOSTILE}"),
        cmdline: vec!["sh".into(), "-c".into(), HOSTILE.into()],
        role: "descendant",
    }
}

#[test]
fn every_report_escapes_what_sessions_supply() {
    let mut views = vec![hostile_view("sh-0a1b2c3d"), hostile_view("sh-1\x1b[2J")];
    views[1].phase = Phase::Unreachable;
    let tree = vec![hostile_proc()];
    let orphans = OrphanReport {
        schema_version: 1,
        scope: format!("/s{HOSTILE}"),
        orphans: vec![Orphan {
            id: Some(format!("sh-{HOSTILE}")),
            pid: Some(4242),
            start_ticks: Some(1),
            child_pid: None,
            flavor: Flavor::Node,
            phase: None,
            reasons: vec![Reason::NoSocket],
            detail: format!("log says {HOSTILE}"),
            socket: None,
            command: format!("node shellper-main.js {HOSTILE}"),
            age_ms: None,
            sessions: vec![],
            cgroup: Some(format!("/sys/fs/cgroup/{HOSTILE}")),
        }],
        stale_sockets: vec![StaleSocket {
            id: format!("sh-{HOSTILE}"),
            socket: format!("/s/{HOSTILE}.sock"),
        }],
        shellper_processes: 1,
        tracked: None,
    };
    let plan = |refused: Option<String>, note: Option<String>| Plan {
        target: format!("sh-{HOSTILE}"),
        id: None,
        pid: Some(5000),
        phase: None,
        refused,
        note,
        steps: vec![Method::Sigterm],
        tree: tree.clone(),
        sessions: vec![],
        spec: TreeSpec::default(),
        cgroup: Some(PathBuf::from(format!("/sys/fs/cgroup/{HOSTILE}"))),
    };
    let outcome = |plan: Plan| Outcome {
        plan,
        executed: vec![StepResult {
            method: Method::Sigterm,
            ok: false,
            detail: format!("shellper said {HOSTILE}"),
            elapsed_ms: 1,
        }],
        killed: tree.clone(),
        survivors: tree.clone(),
        clean: false,
    };
    let reap = |dry_run| ReapReport {
        schema_version: 1,
        scope: format!("/s{HOSTILE}"),
        dry_run,
        targets: vec![
            outcome(plan(None, None)),
            outcome(plan(Some(format!("held by {HOSTILE}")), None)),
            outcome(plan(None, Some(format!("note {HOSTILE}")))),
        ],
    };
    let action = Action {
        what: What::Log,
        id: format!("sh-{HOSTILE}"),
        path: PathBuf::from(format!("/s/sh-{HOSTILE}.log")),
        bytes: 10,
        reason: format!("because {HOSTILE}"),
    };
    let prune = |dry_run, deferred| PruneReport {
        schema_version: 1,
        scope: format!("/s{HOSTILE}"),
        dry_run,
        tower_pid: None,
        deferred,
        plan: TidyPlan {
            actions: vec![action.clone()],
            ..TidyPlan::default()
        },
        removed: vec![action.clone()],
        failed: vec![Failure {
            action: action.clone(),
            error: format!("EACCES {HOSTILE}"),
        }],
    };
    let changes = vec![render::Change {
        ts_ms: 0,
        id: format!("sh-{HOSTILE}"),
        from: None,
        to: Some(Phase::Held),
    }];
    for p in PALETTES {
        assert_inert(
            "list",
            &render::list_text(&p, &format!("/s{HOSTILE}"), &views),
        );
        assert_inert("show", &render::show_text(&p, &views[0], &tree));
        assert_inert("show unreachable", &render::show_text(&p, &views[1], &tree));
        assert_inert(
            "watch",
            &render::watch_screen(
                &p,
                Path::new(&format!("/s{HOSTILE}")),
                Duration::from_secs(1),
                0,
                &views,
                &|_| true,
                &changes,
            ),
        );
        assert_inert("orphans", &render::orphans_text(&p, &orphans));
        assert_inert("reap", &render::reap_text(&p, &reap(false)));
        assert_inert("reap --dry-run", &render::reap_text(&p, &reap(true)));
    }
    for (dry, deferred) in [(true, false), (false, false), (true, true)] {
        assert_inert("prune", &render::prune_text(&prune(dry, deferred)));
    }
    // The text is there, visibly.
    let list = render::list_text(&PALETTES[0], "/s", &views);
    assert!(list.contains("\\x1b]0;TITLE\\x07"), "{list}");
    // JSON is the data itself.
    let json = serde_json::to_value(&views[0]).unwrap();
    assert_eq!(json["args"][1], format!("sleep 100 {HOSTILE}"));
}

/// Wide characters take two cells: the columns after a CJK cwd line up
/// with the header on a terminal.
#[test]
fn columns_are_measured_in_terminal_cells() {
    let mut a = held_view();
    a.cwd = Some("/home/中文字".into());
    a.command = Some("vim".into());
    a.args = vec!["日本語.txt".into()];
    let mut b = held_view();
    b.id = "sh-11111111".into();
    b.cwd = Some("/home/ab".into());
    b.command = Some("sh".into());
    b.args = vec![];
    let text = render::list_text(&PALETTES[0], "/s", &[a, b]);
    let lines: Vec<&str> = text.lines().take(3).collect();
    let at = |line: &str, needle: &str| width(&line[..line.rfind(needle).unwrap()]);
    let col = at(lines[0], "COMMAND");
    assert_eq!(at(lines[1], "vim"), col, "{text}");
    assert_eq!(at(lines[2], "sh"), col, "{text}");
    // A long wide command is cut to the column's width in cells.
    let mut c = held_view();
    c.command = Some("中".repeat(100));
    c.args = vec![];
    let text = render::list_text(&PALETTES[0], "/s", &[c]);
    let row = text.lines().nth(1).unwrap();
    let cmd = &row[row.find('中').unwrap()..];
    assert!(cmd.ends_with('…'), "{row}");
    assert!(width(cmd) <= 60, "{} cells: {row}", width(cmd));
}

/// The issue's own example, end to end: a real shellper running
/// `sh -c $'sleep 100 #\e]0;TITLE\a\e[2J\e[31mred'`. `list` (plain and
/// coloured) and `show` print it inert; `list --json` exactly.
#[test]
fn a_session_cannot_write_to_the_operators_terminal() {
    let guard = LeakGuard::new("leasectl_injection");
    let (_tmp, scope) = scope();
    let script = "sleep 100 #\x1b]0;TITLE\x07\x1b[2J\x1b[31mred";
    let sock = scope.join("sh-0000beef.sock");
    let _pid = legacy_shellper(&guard, &sock, &["sh", "-c", script]);

    for color in ["never", "always"] {
        let out = leasectl(&guard, &scope)
            .args(["--color", color, "list"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("sleep 100 #\\x1b]0;TITLE"), "{text}");
        assert_inert(&format!("list --color {color}"), &text);
        let out = leasectl(&guard, &scope)
            .args(["--color", color, "show", "sh-0000beef"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("\\x1b[2J"), "{text}");
        assert_inert(&format!("show --color {color}"), &text);
    }
    let (code, doc) = run_json(leasectl(&guard, &scope).args(["list", "--json"]));
    assert_eq!(code, 0, "{doc}");
    let e = entry(&doc, "sh-0000beef");
    assert_eq!(e["args"][1], script, "--json is exact: {e}");

    guard.kill_all();
    guard.finish();
}
