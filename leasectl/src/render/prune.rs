//! The `prune` report, and the line of `list` about what is gone.

use tower_client::tidy::What;

use super::esc;
use crate::model::{Phase, ShellperView};
use crate::prune::PruneReport;

fn what_name(w: What) -> &'static str {
    match w {
        What::RegistryEntry => "entry",
        What::Socket => "socket",
        What::Log => "log",
        What::RotatedLog => "rotated log",
        What::Cgroup => "cgroup",
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// The `prune` report.
pub fn prune_text(r: &PruneReport) -> String {
    let mut out = String::new();
    let actions = if r.dry_run {
        &r.plan.actions
    } else {
        &r.removed
    };
    if r.deferred {
        out.push_str(&format!(
            "prune: a Tower (pid {}) holds {}: it tidies the scope itself (at start and every \
             --tidy-every); nothing removed. What the rules select now:\n",
            r.tower_pid.map_or("?".into(), |p| p.to_string()),
            esc(&r.scope)
        ));
    } else if r.dry_run {
        out.push_str(&format!(
            "prune (dry run) in {}: {} to remove{}\n",
            esc(&r.scope),
            r.plan.actions.len(),
            if r.plan.actions.is_empty() {
                ""
            } else if r.tower_pid.is_some() {
                "; the Tower holding the scope removes them at its next tidy"
            } else {
                "; `leasectl prune --yes` removes them"
            }
        ));
    } else {
        out.push_str(&format!(
            "prune in {}: {} removed\n",
            esc(&r.scope),
            r.removed.len()
        ));
    }
    for a in actions {
        let bytes = if a.bytes > 0 {
            format!(" ({})", size(a.bytes))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:<12} {}  {}{bytes}: {}\n",
            what_name(a.what),
            esc(&a.id),
            esc(&a.path.display().to_string()),
            esc(&a.reason)
        ));
    }
    for f in &r.failed {
        out.push_str(&format!(
            "  FAILED {} {}: {}\n",
            what_name(f.action.what),
            esc(&f.action.path.display().to_string()),
            esc(&f.error)
        ));
    }
    out.push_str(&format!(
        "logs: {} in the scope, {} after{}; cap {}{}\n",
        size(r.plan.log_bytes),
        size(r.plan.log_bytes_after),
        if r.dry_run { " (planned)" } else { "" },
        size(r.plan.log_cap),
        if r.plan.over_cap {
            " (still over: only live shellpers' current logs are left)"
        } else {
            ""
        }
    ));
    if r.plan.truncated {
        out.push_str("the scope has more files than one sweep looks at: run prune again\n");
    }
    out
}

/// One line for `list` about shellpers that are gone: registry entries
/// whose socket file and process are both gone, and socket files nothing
/// listens on; with the command that removes them. Empty when none.
pub fn gone_summary(shellpers: &[ShellperView]) -> String {
    let missing = shellpers
        .iter()
        .filter(|s| s.phase == Phase::Dead && crate::scan::socket_missing(s))
        .count();
    let refusing = shellpers
        .iter()
        .filter(|s| s.phase == Phase::Dead && !crate::scan::socket_missing(s))
        .count();
    let mut parts = Vec::new();
    if missing > 0 {
        parts.push(format!(
            "{missing} gone (registry entry only: socket file missing, process gone)"
        ));
    }
    if refusing > 0 {
        parts.push(format!(
            "{refusing} dead socket file(s) (present, nothing listening)"
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(
            "{}; `leasectl prune` shows what can be removed\n",
            parts.join(", ")
        )
    }
}
