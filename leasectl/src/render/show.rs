//! The `show` report.

use std::time::Duration;

use super::client_kind;
use super::list::{holder_text, phase_text};
use super::{
    Cell, Palette, Style, esc, opt_ms, opt_num, phase_style, short_duration, table, truncate,
};
use crate::model::{ShellperView, TreeProc};
use shellper_protocol::msg::ChildState;

/// Which containment is in force for the session (the path and names
/// come from the shellper: escaped).
pub fn containment_text(s: &ShellperView) -> String {
    match &s.containment {
        Some(c) => match &c.cgroup {
            Some(dir) => format!(
                "cgroup {} (controllers: {})",
                esc(dir),
                if c.controllers.is_empty() {
                    "none".to_string()
                } else {
                    esc(&c.controllers.join(" ")).into_owned()
                }
            ),
            None => "process tree (no writable cgroup v2)".into(),
        },
        None => "- (not reported: an older shellper)".into(),
    }
}

/// The `show` report. Values a shellper or its session supplied (socket
/// path, error, command line, cwd, version, holder name) are escaped.
pub fn show_text(p: &Palette, s: &ShellperView, tree: &[TreeProc]) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        out.push_str(&format!("{:<14}{v}\n", format!("{k}:")));
    };
    kv("id", p.paint(Style::Cyan, &s.id));
    kv("socket", esc(&s.socket).into_owned());
    kv(
        "phase",
        p.paint(phase_style(s.phase), &phase_text(s))
            + if s.reachable {
                ""
            } else {
                "  (did not answer STATUS)"
            },
    );
    if let Some(e) = &s.error {
        kv("error", esc(e).into_owned());
    }
    kv(
        "pid",
        match (s.pid, s.pid_source) {
            (Some(pid), Some(src)) => format!("{pid} (from {})", serde_plain(&src)),
            (Some(pid), None) => pid.to_string(),
            _ => "-".into(),
        },
    );
    let child = match &s.child {
        Some(ChildState::Running) | None => String::new(),
        Some(ChildState::Exited { code, signal }) => format!(
            " (exited: code {}, signal {})",
            opt_num(*code),
            opt_num(*signal)
        ),
    };
    kv("child pid", format!("{}{child}", opt_num(s.child_pid)));
    kv("command", esc(&s.command_line()).into_owned());
    kv(
        "cwd",
        s.cwd.as_deref().map_or("-".into(), |c| esc(c).into_owned()),
    );
    kv(
        "started",
        match (&s.started_at, s.age_ms) {
            (Some(t), Some(a)) => format!("{t} ({} ago)", short_duration(Duration::from_millis(a))),
            _ => "-".into(),
        },
    );
    kv(
        "lease",
        match s.leased {
            Some(true) => format!("leased, epoch {}", opt_num(s.epoch)),
            Some(false) => "legacy (no token; a connected tower holds it)".into(),
            None => "-".into(),
        },
    );
    let (holder, hs) = holder_text(s);
    kv("holder", p.paint(hs, &holder));
    kv("expires in", opt_ms(s.expires_in_ms));
    kv("kill in", opt_ms(s.kill_in_ms));
    kv("claim in", opt_ms(s.claim_in_ms));
    if let Some(t) = &s.timings {
        kv(
            "settings",
            format!(
                "ttl {}, window {}, claim {}, kill grace {}",
                short_duration(Duration::from_millis(t.ttl_ms)),
                short_duration(Duration::from_millis(t.window_ms)),
                short_duration(Duration::from_millis(t.claim_ms)),
                short_duration(Duration::from_millis(t.kill_grace_ms)),
            ),
        );
    }
    kv(
        "clients",
        match &s.clients {
            None => "-".into(),
            Some(c) if c.is_empty() => "none".into(),
            Some(c) => c
                .iter()
                .map(|c| {
                    format!(
                        "{}/{}{}",
                        client_kind(c.kind),
                        c.pid,
                        if c.holder { " (holder)" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        },
    );
    kv(
        "registry",
        if s.in_registry {
            "listed (token known)".into()
        } else {
            "not listed".to_string()
        },
    );
    if let Some(c) = &s.counters {
        kv(
            "counters",
            format!(
                "acquires {}, renewals {}, rejected tokens {}, stale epochs {}, revocations {}, lapses {}, stalls {}, protocol errors {}",
                c.acquires,
                c.renewals,
                c.rejected_tokens,
                c.stale_epochs,
                c.revocations,
                c.lapses,
                c.stalls,
                c.protocol_errors
            ),
        );
    }
    kv("containment", containment_text(s));
    if let Some(c) = s.containment.as_ref().filter(|c| c.cgroup.is_some()) {
        let [cpu, _, procs] = super::usage_cells(Some(c));
        let mem = match (c.memory_current, c.memory_peak) {
            (Some(m), Some(p)) => format!(
                ", memory {} (peak {})",
                super::human_bytes(m),
                super::human_bytes(p)
            ),
            (Some(m), None) => format!(", memory {}", super::human_bytes(m)),
            _ => ", memory not accounted (no memory controller)".into(),
        };
        kv("usage", format!("cpu {cpu}, {procs} process(es){mem}"));
        let lim = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or("max".to_string(), f);
        kv(
            "limits",
            format!(
                "pids.max {}, memory.max {}",
                lim(c.pids_max, &|n| n.to_string()),
                lim(c.memory_max, &super::human_bytes)
            ),
        );
    }
    if let Some(v) = &s.version {
        kv("version", esc(v).into_owned());
    }
    out.push_str(&format!("\nprocess tree ({} process(es)):\n", tree.len()));
    let rows: Vec<Vec<Cell>> = tree
        .iter()
        .map(|t| {
            vec![
                Cell::plain(t.pid.to_string()),
                Cell::plain(t.ppid.to_string()),
                Cell::plain(t.pgid.to_string()),
                Cell::plain(t.sid.to_string()),
                Cell::plain(t.state.clone()),
                Cell::plain(t.role),
                Cell::plain(truncate(
                    &if t.cmdline.is_empty() {
                        format!("[{}]", t.comm)
                    } else {
                        t.cmdline.join(" ")
                    },
                    80,
                )),
            ]
        })
        .collect();
    out.push_str(&table(
        p,
        &["PID", "PPID", "PGID", "SID", "STATE", "ROLE", "COMMAND"],
        &rows,
    ));
    out
}

/// A unit enum's serde name (`"status"` → `status`).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
