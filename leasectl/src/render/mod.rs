//! Human output: every text leasectl prints for its reports.
//!
//! Commands compute data (the model types, the `orphans` and `reap`
//! reports); this module alone turns them into text, one submodule per
//! report: [`list`] (the table, also `watch`'s screen), [`show`],
//! [`watch`], [`orphans`], [`reap`]. JSON is the same data serialized
//! (`output::json_out`). Helpers shared by the reports (tables, styles,
//! durations) are here.
//!
//! Anything a session or a client supplied is escaped ([`safe::esc`]) before
//! it is measured or painted: [`table`] escapes every cell and
//! [`Palette::paint`] the text it is given, and each report escapes the
//! values it writes outside those two. Columns are measured in terminal
//! cells ([`safe::width`]). JSON output is not touched: it is exact.
//!
//! Colour is decided once ([`Palette`]): only when stdout is a terminal and
//! `NO_COLOR` is unset or empty (<https://no-color.org>), unless forced by
//! `--color`. Escape codes are added *after* padding, so they never break
//! the alignment, and the uncoloured output is stable enough to snapshot.

use std::io::IsTerminal;
use std::time::Duration;

use crate::cli::ColorChoice;
use crate::model::Phase;
use shellper_protocol::msg::ClientType;

pub mod list;
pub mod orphans;
pub mod prune;
pub mod reap;
pub mod safe;
pub mod show;
pub mod watch;

pub use list::{LIST_HEADERS, holder_text, list_row, list_table, list_text, phase_text};
pub use orphans::{orphans_text, reason_name};
pub use prune::{gone_summary, prune_text};
pub use reap::{method_text, reap_text};
pub use safe::{esc, truncate, width};
pub use show::show_text;
pub use watch::{Change, clock, watch_screen};

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

    /// `text`, escaped ([`esc`]), in `style` (no escape codes added
    /// without colour).
    pub fn paint(&self, style: Style, text: &str) -> String {
        let text = esc(text);
        if !self.color || style == Style::Plain {
            text.into_owned()
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
/// Every cell is escaped ([`esc`]) and measured in terminal cells.
pub fn table(p: &Palette, headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let ncol = headers.len();
    let rows: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .take(ncol)
                .map(|c| Cell::styled(esc(&c.text).into_owned(), c.style))
                .collect()
        })
        .collect();
    let mut width: Vec<usize> = headers.iter().map(|h| safe::width(h)).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(safe::width(&c.text));
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
                width[i].saturating_sub(safe::width(text))
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
    for r in &rows {
        line(
            r.iter().map(|c| (c.text.clone(), c.style)).collect(),
            &mut out,
        );
    }
    out
}

/// Where the reports find it (`orphans` builds its details with it too).
pub use crate::scan::short_duration;

/// `-` or a [`short_duration`] of milliseconds.
fn opt_ms(v: Option<u64>) -> String {
    v.map(|ms| short_duration(Duration::from_millis(ms)))
        .unwrap_or_else(|| "-".into())
}

/// Bytes for humans: `512B`, `12.3K`, `4.0M`, `1.5G` (powers of 1024).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

/// The CPU, MEM and PROCS cells of a session: `-` where unknown (a
/// process-tree session, or an older shellper).
pub fn usage_cells(c: Option<&shellper_protocol::msg::Containment>) -> [String; 3] {
    let dash = || "-".to_string();
    match c {
        Some(c) if c.cgroup.is_some() => [
            c.cpu_usec
                .map_or_else(dash, |u| short_duration(Duration::from_micros(u))),
            c.memory_current.map_or_else(dash, human_bytes),
            c.procs.map_or_else(dash, |n| n.to_string()),
        ],
        _ => [dash(), dash(), dash()],
    }
}

/// `-` or the number.
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

/// Lower-case name of a client type (`tower`, `terminal`, `status`).
pub fn client_kind(k: ClientType) -> &'static str {
    match k {
        ClientType::Tower => "tower",
        ClientType::Terminal => "terminal",
        ClientType::Status => "status",
    }
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

    #[test]
    fn table_escapes_cells_and_counts_cells() {
        let rows = vec![
            vec![Cell::plain("中文"), Cell::plain("\x1b]0;T\x07")],
            vec![Cell::plain("ab"), Cell::plain("y")],
        ];
        let t = table(&Palette { color: true }, &["H", "LAST"], &rows);
        assert_eq!(
            strip_ansi(&t),
            "H     LAST\n中文  \\x1b]0;T\\x07\nab    y\n"
        );
    }
}
