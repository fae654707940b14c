//! The `list` table (also `watch`'s screen and the demo's tables).

use super::{Cell, Palette, Style, opt_ms, opt_num, phase_style, table, truncate};
use crate::model::{Phase, ShellperView};

/// The PHASE cell text: the phase, plus the /proc state for unreachable
/// shellpers (`unreachable(stopped)`), so a SIGSTOPped one is obvious.
pub fn phase_text(s: &ShellperView) -> String {
    match (&s.phase, &s.proc_state) {
        (Phase::Unreachable, Some(st)) => format!("unreachable({st})"),
        (Phase::Dead, _) if crate::scan::socket_missing(s) => "gone".to_string(),
        (p, _) => p.as_str().to_string(),
    }
}

/// The HOLDER cell text: `name/pid`, `(dead)` when its process is gone.
pub fn holder_text(s: &ShellperView) -> (String, Style) {
    match &s.holder {
        None => ("-".into(), Style::Plain),
        Some(h) => {
            let pid = h.effective_pid();
            // "minitower@77" already names its pid.
            let who = if h.info.name.ends_with(&format!("@{pid}")) {
                h.info.name.clone()
            } else {
                format!("{}/{pid}", h.info.name)
            };
            match s.holder_alive {
                Some(false) => (format!("{who} (dead)"), Style::Red),
                _ => (who, Style::Plain),
            }
        }
    }
}

/// Column headers of the list table.
pub const LIST_HEADERS: [&str; 15] = [
    "ID", "PID", "CHILD", "PHASE", "EPOCH", "HOLDER", "EXPIRES", "KILL IN", "AGE", "CLIENTS",
    "CPU", "MEM", "PROCS", "CWD", "COMMAND",
];

/// One row of the list table. `highlight` marks a phase that just changed.
pub fn list_row(s: &ShellperView, highlight: bool) -> Vec<Cell> {
    let (holder, holder_style) = holder_text(s);
    let [cpu, mem, procs] = super::usage_cells(s.containment.as_ref());
    let phase_style = if highlight {
        Style::Highlight
    } else {
        phase_style(s.phase)
    };
    vec![
        Cell::styled(s.id.clone(), Style::Cyan),
        Cell::plain(opt_num(s.pid)),
        Cell::plain(opt_num(s.child_pid)),
        Cell::styled(phase_text(s), phase_style),
        Cell::plain(opt_num(s.epoch)),
        Cell::styled(holder, holder_style),
        Cell::plain(opt_ms(s.expires_in_ms)),
        Cell::styled(
            opt_ms(s.kill_in_ms.or(s.claim_in_ms)),
            if s.kill_in_ms.is_some() {
                Style::Yellow
            } else {
                Style::Plain
            },
        ),
        Cell::plain(opt_ms(s.age_ms)),
        Cell::plain(
            s.clients
                .as_ref()
                .map_or("-".into(), |c| c.len().to_string()),
        ),
        Cell::plain(cpu),
        Cell::plain(mem),
        Cell::plain(procs),
        Cell::plain(s.cwd.clone().unwrap_or_else(|| "-".into())),
        Cell::plain(truncate(&s.command_line(), 60)),
    ]
}

/// The list table; `highlight(id)` says which phases to highlight.
pub fn list_table(
    p: &Palette,
    shellpers: &[ShellperView],
    highlight: &dyn Fn(&str) -> bool,
) -> String {
    let rows: Vec<Vec<Cell>> = shellpers
        .iter()
        .map(|s| list_row(s, highlight(&s.id)))
        .collect();
    table(p, &LIST_HEADERS, &rows)
}

/// The whole `list` output: the table, or a sentence when the scope is empty.
pub fn list_text(p: &Palette, scope: &str, shellpers: &[ShellperView]) -> String {
    if shellpers.is_empty() {
        return format!("no shellpers in scope {}\n", super::esc(scope));
    }
    let mut out = list_table(p, shellpers, &|_| false);
    let unreachable = shellpers
        .iter()
        .filter(|s| s.phase == Phase::Unreachable)
        .count();
    out.push_str(&format!(
        "{} shellper(s) in {}; {unreachable} unreachable\n",
        shellpers.len(),
        super::esc(scope)
    ));
    out.push_str(&super::gone_summary(shellpers));
    out
}
