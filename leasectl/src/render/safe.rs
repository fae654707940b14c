//! Text from elsewhere, made safe to print on an operator's terminal.
//!
//! Everything a report shows that a session or a client supplied (command
//! lines, working directories, holder names, process names, log excerpts,
//! error messages from a shellper, file names found in a scope) may hold
//! terminal control sequences: `sh -c $'sleep 1 #\e]0;TITLE\a\e[2J'` as a
//! session's command would set the operator's window title and clear the
//! screen when `list` prints it. [`esc`] turns every control character into
//! visible text; the report's own colours are added after it (by
//! [`super::Palette::paint`]), so they are the only escapes in the output.
//!
//! Columns are measured in terminal cells ([`width`]): a wide character
//! (CJK, most emoji) takes two, a combining mark none.

use std::borrow::Cow;
use std::fmt::Write as _;

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Whether `c` must not reach a terminal as it is: C0 controls (tab and
/// newline included: a report's layout is its own), DEL, C1 controls
/// (U+0080–U+009F: a terminal may take U+009B as CSI), and the bidirectional
/// overrides and isolates, which reorder what follows them on the line
/// ("Trojan source").
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every [`is_unsafe`] character written as a visible escape:
/// `\n`, `\r`, `\t`, `\x1b`-style for the other C0 controls and DEL,
/// `\u{9b}`-style above. Backslashes are kept as they are, so benign text
/// (`printf '%s\n'` in a command line) prints unchanged. Idempotent.
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`esc`] as an owned `String`.
pub fn esc_string(s: &str) -> String {
    esc(s).into_owned()
}

/// How many terminal cells `s` takes (after [`esc`]; control characters
/// count as none here, which is why they must be escaped first).
pub fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// [`esc`] of `s`, shortened to at most `max` terminal cells, ending in
/// `…` when cut. A wide character that would cross the limit is left out
/// whole.
pub fn truncate(s: &str, max: usize) -> String {
    let s = esc(s);
    if width(&s) <= max {
        return s.into_owned();
    }
    let budget = max.saturating_sub(1);
    let mut used = 0;
    let mut t = String::new();
    for c in s.chars() {
        let w = UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w > budget {
            break;
        }
        used += w;
        t.push(c);
    }
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_c0_c1_del_and_bidi() {
        let hostile = "sleep 100 #\x1b]0;TITLE\x07\x1b[2J\x1b[31mred\u{9b}31m\x7f\u{202e}x\ny\tz\r";
        let e = esc(hostile);
        assert_eq!(
            e,
            "sleep 100 #\\x1b]0;TITLE\\x07\\x1b[2J\\x1b[31mred\\u{9b}31m\\x7f\\u{202e}x\\ny\\tz\\r"
        );
        assert!(!e.chars().any(is_unsafe));
        assert_eq!(esc(&e), e, "idempotent");
        assert!(matches!(esc("bash -l é 中文 \\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn widths_and_truncation_in_cells() {
        assert_eq!(width("abc"), 3);
        assert_eq!(width("中文"), 4);
        assert_eq!(width("e\u{301}"), 1, "a combining mark takes no cell");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        // "中文字" is 6 cells: cut to 5 leaves "中文" (4) and the ellipsis.
        assert_eq!(truncate("中文字", 5), "中文…");
        assert_eq!(truncate("中文字", 4), "中…");
        assert_eq!(width(&truncate("中文字", 4)), 3);
        assert_eq!(truncate("a\x1bb", 10), "a\\x1bb");
    }
}
