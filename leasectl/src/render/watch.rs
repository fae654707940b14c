//! `watch` on a terminal: the refreshed screen and its recent changes.

use std::path::Path;
use std::time::Duration;

use super::{Palette, Style, esc, list_table, short_duration};
use crate::model::{Phase, ShellperView};

/// How many recent changes the screen shows.
const RECENT: usize = 8;

/// A phase change seen between two refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub ts_ms: u64,
    pub id: String,
    /// `None`: the shellper appeared.
    pub from: Option<Phase>,
    /// `None`: the shellper is gone.
    pub to: Option<Phase>,
}

/// `HH:MM:SS.mmm` (UTC) of a Unix-epoch millisecond time.
pub fn clock(ms: u64) -> String {
    let s = crate::scan::rfc3339(ms);
    s.get(11..23).unwrap_or(&s).to_string()
}

/// One line of the recent changes: `12:00:01.250 sh-… held → lapsed`.
fn change_line(c: &Change) -> String {
    let from = match (c.from, c.to) {
        (Some(f), _) => f.as_str(),
        (None, Some(_)) => "new",
        (None, None) => "?",
    };
    format!(
        "{} {} {from} → {}",
        clock(c.ts_ms),
        esc(&c.id),
        c.to.map_or("gone", Phase::as_str)
    )
}

/// The whole screen (cursor home, cleared): a header, the list table
/// (`highlight(id)` marks a phase that just changed), the last changes.
pub fn watch_screen(
    p: &Palette,
    scope: &Path,
    interval: Duration,
    ts_ms: u64,
    shellpers: &[ShellperView],
    highlight: &dyn Fn(&str) -> bool,
    log: &[Change],
) -> String {
    let mut screen = String::from("\x1b[H\x1b[2J");
    screen.push_str(&p.paint(
        Style::Bold,
        &format!(
            "leasectl watch  scope {}  every {}  {}  (Ctrl-C quits)",
            scope.display(),
            short_duration(interval),
            clock(ts_ms)
        ),
    ));
    screen.push_str("\n\n");
    if shellpers.is_empty() {
        screen.push_str("no shellpers\n");
    } else {
        screen.push_str(&list_table(p, shellpers, highlight));
    }
    if !log.is_empty() {
        screen.push_str("\nrecent changes:\n");
        let from = log.len().saturating_sub(RECENT);
        for c in &log[from..] {
            screen.push_str("  ");
            screen.push_str(&change_line(c));
            screen.push('\n');
        }
    }
    screen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_snapshot() {
        let ts = 1_767_225_601_250; // 2026-01-01T00:00:01.250Z
        let mut v = ShellperView::bare("sh-0a1b2c3d".into(), "/s/sh-0a1b2c3d.sock".into());
        v.phase = Phase::Lapsed;
        let change = |from, to| Change {
            ts_ms: ts,
            id: "sh-0a1b2c3d".into(),
            from,
            to,
        };
        let log: Vec<Change> = (0..9)
            .map(|_| change(Some(Phase::Held), Some(Phase::Lapsed)))
            .chain([
                change(None, Some(Phase::Unclaimed)),
                change(Some(Phase::Lapsed), None),
            ])
            .collect();
        let s = watch_screen(
            &Palette { color: false },
            Path::new("/s"),
            Duration::from_secs(1),
            ts,
            &[v],
            &|_| false,
            &log,
        );
        let expected =
            "\x1b[H\x1b[2Jleasectl watch  scope /s  every 1.0s  00:00:01.250  (Ctrl-C quits)\n\n\
ID           PID  CHILD  PHASE   EPOCH  HOLDER  EXPIRES  KILL IN  AGE  CLIENTS  CPU  MEM  PROCS  CWD  COMMAND\n\
sh-0a1b2c3d  -    -      lapsed  -      -       -        -        -    -        -    -    -      -\n\
\nrecent changes:\n"
                .to_string()
                + &"  00:00:01.250 sh-0a1b2c3d held → lapsed\n".repeat(6)
                + "  00:00:01.250 sh-0a1b2c3d new → unclaimed\n"
                + "  00:00:01.250 sh-0a1b2c3d lapsed → gone\n";
        assert_eq!(s, expected);
        let empty = watch_screen(
            &Palette { color: false },
            Path::new("/s"),
            Duration::from_millis(500),
            ts,
            &[],
            &|_| false,
            &[],
        );
        assert!(
            empty.ends_with("(Ctrl-C quits)\n\nno shellpers\n"),
            "{empty:?}"
        );
    }
}
