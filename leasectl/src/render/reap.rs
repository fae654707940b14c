//! The `reap` report.

use super::{Palette, Style, esc, truncate};
use crate::reap::{Method, ReapReport};

/// What a step does, in words.
pub fn method_text(m: Method) -> &'static str {
    match m {
        Method::AuthTerminate => "authenticated terminate (token from the registry)",
        Method::Sigterm => "SIGTERM+SIGCONT to the shellper (it runs its own ladder)",
        Method::CgroupKill => {
            "kill the session's cgroup (SIGTERM, grace, cgroup.kill; exact, removed after)"
        }
        Method::OutsideLadder => "kill ladder from outside (tree first, shellper last)",
        Method::RemoveStaleSocket => "remove the stale socket file",
    }
}

/// The `reap` report (the plan with `--dry-run`, else what was done).
pub fn reap_text(p: &Palette, r: &ReapReport) -> String {
    let mut out = String::new();
    if r.targets.is_empty() {
        out.push_str("nothing to reap\n");
        return out;
    }
    for t in &r.targets {
        let head = format!(
            "{} (pid {}, {})",
            t.plan.target,
            t.plan.pid.map_or("-".into(), |x| x.to_string()),
            t.plan.phase.map_or("process", |ph| ph.as_str())
        );
        out.push_str(&p.paint(Style::Bold, &head));
        out.push('\n');
        if let Some(why) = &t.plan.refused {
            out.push_str(&format!(
                "  {} {}\n",
                p.paint(Style::Yellow, "refused:"),
                esc(why)
            ));
            continue;
        }
        if let Some(note) = &t.plan.note {
            out.push_str(&format!("  {}\n", esc(note)));
            continue;
        }
        if r.dry_run {
            out.push_str("  plan:\n");
            for (i, m) in t.plan.steps.iter().enumerate() {
                out.push_str(&format!(
                    "    {}. {}{}\n",
                    i + 1,
                    method_text(*m),
                    if i > 0 && *m != Method::RemoveStaleSocket {
                        " (if the previous step did not finish)"
                    } else {
                        ""
                    }
                ));
            }
            out.push_str(&format!("  tree ({} process(es)):\n", t.plan.tree.len()));
            for pr in &t.plan.tree {
                out.push_str(&format!(
                    "    {:>7} {:<10} pgid {:>7} sid {:>7} {}\n",
                    pr.pid,
                    pr.role,
                    pr.pgid,
                    pr.sid,
                    truncate(&pr.cmdline.join(" "), 60)
                ));
            }
            continue;
        }
        for s in &t.executed {
            out.push_str(&format!(
                "  {} {} ({} ms): {}\n",
                if s.ok {
                    p.paint(Style::Green, "ok  ")
                } else {
                    p.paint(Style::Yellow, "next")
                },
                method_text(s.method),
                s.elapsed_ms,
                esc(&s.detail)
            ));
        }
        out.push_str(&format!("  killed {} process(es):", t.killed.len()));
        for k in &t.killed {
            out.push_str(&format!(" {}({})", k.pid, esc(&k.comm)));
        }
        out.push('\n');
        if t.survivors.is_empty() {
            out.push_str(&format!(
                "  {}\n",
                p.paint(Style::Green, "verified: nothing of the tree survives")
            ));
        } else {
            out.push_str(&format!(
                "  {} {}\n",
                p.paint(Style::Red, "SURVIVORS:"),
                t.survivors
                    .iter()
                    .map(|s| format!("{}({}) state {}", s.pid, esc(&s.comm), esc(&s.state)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}
