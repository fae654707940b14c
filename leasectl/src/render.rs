//! Human output: aligned tables and the `show` report.
//!
//! Colour is decided once ([`Palette`]): only when stdout is a terminal and
//! `NO_COLOR` is unset or empty (<https://no-color.org>), unless forced by
//! `--color`. Escape codes are added *after* padding, so they never break
//! the alignment, and the uncoloured output is stable enough to snapshot.

use std::io::IsTerminal;
use std::time::Duration;

use crate::cli::ColorChoice;
use crate::model::{ChildView, Phase, ShellperView, TreeProc};

/// A text style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Bold,
    Dim,
    Green,
    Yellow,
    Red,
    Magenta,
    Cyan,
    /// Reverse video: a phase that just changed (watch).
    Highlight,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Plain => "",
            Style::Bold => "\x1b[1m",
            Style::Dim => "\x1b[2m",
            Style::Green => "\x1b[32m",
            Style::Yellow => "\x1b[33m",
            Style::Red => "\x1b[31m",
            Style::Magenta => "\x1b[35m",
            Style::Cyan => "\x1b[36m",
            Style::Highlight => "\x1b[7;1m",
        }
    }
}

/// Whether to emit ANSI escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Palette {
    pub color: bool,
}

impl Palette {
    /// Decides from `--color`, whether stdout is a terminal, and `NO_COLOR`.
    pub fn detect(choice: ColorChoice) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Palette::decide(choice, std::io::stdout().is_terminal(), no_color)
    }

    /// The decision itself (pure, for tests).
    pub fn decide(choice: ColorChoice, tty: bool, no_color: bool) -> Self {
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && !no_color,
        };
        Palette { color }
    }

    /// `text` in `style` (unchanged without colour).
    pub fn paint(&self, style: Style, text: &str) -> String {
        if !self.color || style == Style::Plain {
            text.to_string()
        } else {
            format!("{}{text}\x1b[0m", style.code())
        }
    }
}

/// A table cell: text plus style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub style: Style,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            style: Style::Plain,
        }
    }
    pub fn styled(text: impl Into<String>, style: Style) -> Self {
        Cell {
            text: text.into(),
            style,
        }
    }
}

/// Renders an aligned table: columns separated by two spaces, the last
/// column not padded (it holds the long command line), no trailing spaces.
pub fn table(p: &Palette, headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let ncol = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(ncol) {
            width[i] = width[i].max(c.text.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<(String, Style)>, out: &mut String| {
        let mut s = String::new();
        for (i, (text, style)) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = if i + 1 < cells.len() {
                width[i].saturating_sub(text.chars().count())
            } else {
                0
            };
            s.push_str(&p.paint(*style, text));
            s.push_str(&" ".repeat(pad));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(
        headers
            .iter()
            .map(|h| (h.to_string(), Style::Bold))
            .collect(),
        &mut out,
    );
    for r in rows {
        line(
            r.iter()
                .take(ncol)
                .map(|c| (c.text.clone(), c.style))
                .collect(),
            &mut out,
        );
    }
    out
}

/// A short human duration: `850ms`, `2.9s`, `4m05s`, `3h12m`, `2d04h`.
pub fn short_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else if ms < 86_400_000 {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    } else {
        format!("{}d{:02}h", ms / 86_400_000, (ms % 86_400_000) / 3_600_000)
    }
}

fn opt_ms(v: Option<u64>) -> String {
    v.map(|ms| short_duration(Duration::from_millis(ms)))
        .unwrap_or_else(|| "-".into())
}

fn opt_num<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

/// The colour of a phase.
pub fn phase_style(phase: Phase) -> Style {
    match phase {
        Phase::Held => Style::Green,
        Phase::Unclaimed | Phase::Lapsed => Style::Yellow,
        Phase::Terminating => Style::Red,
        Phase::Unreachable => Style::Magenta,
        Phase::Exited | Phase::Dead | Phase::Gone => Style::Dim,
    }
}

/// The PHASE cell text: the phase, plus the /proc state for unreachable
/// shellpers (`unreachable(stopped)`), so a SIGSTOPped one is obvious.
pub fn phase_text(s: &ShellperView) -> String {
    match (&s.phase, &s.proc_state) {
        (Phase::Unreachable, Some(st)) => format!("unreachable({st})"),
        (p, _) => p.as_str().to_string(),
    }
}

/// The HOLDER cell text: `name/pid`, `(dead)` when its process is gone.
pub fn holder_text(s: &ShellperView) -> (String, Style) {
    match &s.holder {
        None => ("-".into(), Style::Plain),
        Some(h) => {
            let pid = h.peer_pid.unwrap_or(h.pid);
            // "minitower@77" already names its pid.
            let who = if h.name.ends_with(&format!("@{pid}")) {
                h.name.clone()
            } else {
                format!("{}/{pid}", h.name)
            };
            match s.holder_alive {
                Some(false) => (format!("{who} (dead)"), Style::Red),
                _ => (who, Style::Plain),
            }
        }
    }
}

/// Column headers of the list table.
pub const LIST_HEADERS: [&str; 12] = [
    "ID", "PID", "CHILD", "PHASE", "EPOCH", "HOLDER", "EXPIRES", "KILL IN", "AGE", "CLIENTS",
    "CWD", "COMMAND",
];

/// One row of the list table. `highlight` marks a phase that just changed.
pub fn list_row(s: &ShellperView, highlight: bool) -> Vec<Cell> {
    let (holder, holder_style) = holder_text(s);
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
        return format!("no shellpers in scope {scope}\n");
    }
    let mut out = list_table(p, shellpers, &|_| false);
    let unreachable = shellpers
        .iter()
        .filter(|s| s.phase == Phase::Unreachable)
        .count();
    let dead = shellpers.iter().filter(|s| s.phase == Phase::Dead).count();
    out.push_str(&format!(
        "{} shellper(s) in {scope}; {unreachable} unreachable, {dead} dead socket(s)\n",
        shellpers.len()
    ));
    out
}

/// Shortens `s` to at most `max` characters, ending in `…`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The `show` report.
pub fn show_text(p: &Palette, s: &ShellperView, tree: &[TreeProc]) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        out.push_str(&format!("{:<14}{v}\n", format!("{k}:")));
    };
    kv("id", p.paint(Style::Cyan, &s.id));
    kv("socket", s.socket.clone());
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
        kv("error", e.clone());
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
        Some(ChildView::Running) | None => String::new(),
        Some(ChildView::Exited { code, signal }) => format!(
            " (exited: code {}, signal {})",
            opt_num(*code),
            opt_num(*signal)
        ),
    };
    kv("child pid", format!("{}{child}", opt_num(s.child_pid)));
    kv("command", s.command_line());
    kv("cwd", s.cwd.clone().unwrap_or_else(|| "-".into()));
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
                        c.kind,
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
    if let Some(v) = &s.version {
        kv("version", v.clone());
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

/// Removes ANSI CSI sequences (colours, cursor moves): what a terminal shows
/// as text. Used to check that coloured and plain renderings agree.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_policy() {
        assert!(Palette::decide(ColorChoice::Auto, true, false).color);
        assert!(!Palette::decide(ColorChoice::Auto, true, true).color);
        assert!(!Palette::decide(ColorChoice::Auto, false, false).color);
        assert!(Palette::decide(ColorChoice::Always, false, true).color);
        assert!(!Palette::decide(ColorChoice::Never, true, false).color);
    }

    #[test]
    fn durations() {
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(short_duration(Duration::from_millis(2950)), "2.9s");
        assert_eq!(short_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(short_duration(Duration::from_secs(3 * 3600 + 720)), "3h12m");
        assert_eq!(
            short_duration(Duration::from_secs(2 * 86400 + 4 * 3600)),
            "2d04h"
        );
    }

    #[test]
    fn table_alignment_ignores_escapes() {
        let rows = vec![
            vec![Cell::styled("a", Style::Red), Cell::plain("x")],
            vec![Cell::plain("long"), Cell::plain("y")],
        ];
        let plain = table(&Palette { color: false }, &["H", "LAST"], &rows);
        assert_eq!(plain, "H     LAST\na     x\nlong  y\n");
        let coloured = table(&Palette { color: true }, &["H", "LAST"], &rows);
        let stripped = strip_ansi(&coloured);
        assert_eq!(stripped, plain);
        assert!(coloured.contains("\x1b[31ma\x1b[0m   "));
    }

    #[test]
    fn truncates_with_ellipsis() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
