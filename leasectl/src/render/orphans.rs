//! The `orphans` report.

use super::{Cell, Palette, Style, esc, table, truncate};
use crate::orphans::{OrphanReport, Reason};
use crate::procs::Flavor;

/// The `orphans` report.
pub fn orphans_text(p: &Palette, r: &OrphanReport) -> String {
    let mut out = String::new();
    if r.orphans.is_empty() {
        out.push_str(&format!(
            "no orphans (scope {}, {} shellper process(es) seen{})\n",
            esc(&r.scope),
            r.shellper_processes,
            r.tracked
                .map(|n| format!(", {n} tracked pid(s)"))
                .unwrap_or_default()
        ));
    } else {
        let rows: Vec<Vec<Cell>> = r
            .orphans
            .iter()
            .map(|o| {
                vec![
                    Cell::styled(o.id.clone().unwrap_or_else(|| "-".into()), Style::Cyan),
                    Cell::plain(o.pid.map_or("-".into(), |p| p.to_string())),
                    Cell::plain(o.child_pid.map_or("-".into(), |p| p.to_string())),
                    Cell::plain(match o.flavor {
                        Flavor::Shellper => "shellper",
                        Flavor::Node => "node",
                    }),
                    Cell::styled(
                        o.reasons
                            .iter()
                            .map(|x| reason_name(*x))
                            .collect::<Vec<_>>()
                            .join(","),
                        Style::Yellow,
                    ),
                    Cell::plain(o.detail.clone()),
                    Cell::plain(truncate(&o.command, 50)),
                ]
            })
            .collect();
        out.push_str(&table(
            p,
            &["ID", "PID", "CHILD", "KIND", "REASONS", "DETAIL", "COMMAND"],
            &rows,
        ));
        out.push_str(&format!(
            "{} orphan(s); reap them with `leasectl reap --orphans` (try --dry-run first)\n",
            r.orphans.len()
        ));
    }
    for s in &r.stale_sockets {
        out.push_str(&format!(
            "stale socket (nothing alive): {} {}\n",
            esc(&s.id),
            esc(&s.socket)
        ));
    }
    out
}

/// snake_case name of a reason.
pub fn reason_name(r: Reason) -> &'static str {
    match r {
        Reason::Lapsed => "lapsed",
        Reason::Unclaimed => "unclaimed",
        Reason::HolderDead => "holder_dead",
        Reason::Unreachable => "unreachable",
        Reason::NoSocket => "no_socket",
        Reason::Untracked => "untracked",
        Reason::ShellperGone => "shellper_gone",
    }
}
