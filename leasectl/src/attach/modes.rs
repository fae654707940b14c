//! The terminal emulator's modes a program switched on through its output,
//! followed so that leaving the session switches them off again. Pure.

/// The terminal modes a program switched on through the output, so that
/// leaving the session can switch them off again.
///
/// Restoring the termios settings is not the whole of "the terminal as it
/// was": a full-screen program (vim, less, top) also switches the terminal
/// *emulator* into the alternate screen, hides the cursor, turns on mouse
/// reporting, bracketed paste or application keys, with escape sequences
/// in its output. Detached in the middle of that, the user's shell would
/// be left on a blank alternate screen with an invisible cursor and mouse
/// clicks typed as garbage. This follows DEC private mode sets and resets
/// (`ESC [ ? N… h|l`) and the keypad mode (`ESC =`, `ESC >`) in everything
/// written to the terminal, sequences split across writes included, and
/// [`ModeTracker::reset_sequence`] undoes what is still on. Pure.
#[derive(Debug, Clone, Default)]
pub struct ModeTracker {
    /// Tracked modes whose last change was a set (`h`).
    on: std::collections::BTreeSet<u16>,
    /// `ESC =` seen last (application keypad).
    keypad: bool,
    /// The start of a sequence cut off at the end of the last write.
    carry: Vec<u8>,
}

/// DEC private modes undone on the way out: application cursor keys (1),
/// cursor hidden (25, inverted), alternate screens (47, 1047, 1049), mouse
/// reporting (1000, 1002, 1003, 1005, 1006, 1015), focus events (1004),
/// bracketed paste (2004).
const TRACKED_MODES: &[u16] = &[
    1, 25, 47, 1000, 1002, 1003, 1004, 1005, 1006, 1015, 1047, 1049, 2004,
];

/// Longest escape sequence kept across writes; longer ones are not modes.
const MODE_CARRY_MAX: usize = 64;

impl ModeTracker {
    /// Follows the modes set or reset in `bytes` (the next output).
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(bytes);
        let mut i = 0;
        while i < buf.len() {
            if buf[i] != 0x1b {
                i += 1;
                continue;
            }
            match self.sequence(&buf[i..]) {
                Some(used) => i += used,
                None => {
                    // Incomplete at the end: keep it for the next write.
                    if buf.len() - i <= MODE_CARRY_MAX {
                        self.carry = buf[i..].to_vec();
                    }
                    return;
                }
            }
        }
    }

    /// Handles the sequence at the start of `s` (which starts with ESC);
    /// returns the bytes it used, or `None` if `s` ends before it does.
    fn sequence(&mut self, s: &[u8]) -> Option<usize> {
        match s.get(1)? {
            b'=' => {
                self.keypad = true;
                Some(2)
            }
            b'>' => {
                self.keypad = false;
                Some(2)
            }
            b'[' if s.get(2)? == &b'?' => {
                let mut j = 3;
                while j < s.len() && (s[j].is_ascii_digit() || s[j] == b';') {
                    j += 1;
                    if j > MODE_CARRY_MAX {
                        return Some(j);
                    }
                }
                let fin = *s.get(j)?;
                if fin == b'h' || fin == b'l' {
                    for p in s[3..j].split(|b| *b == b';') {
                        let n = std::str::from_utf8(p)
                            .ok()
                            .and_then(|t| t.parse::<u16>().ok());
                        if let Some(n) = n.filter(|n| TRACKED_MODES.contains(n)) {
                            // Mode 25 is "cursor visible": its reset is the
                            // state to undo.
                            let on = (fin == b'h') != (n == 25);
                            if on {
                                self.on.insert(n);
                            } else {
                                self.on.remove(&n);
                            }
                        }
                    }
                }
                Some(j + 1)
            }
            _ => Some(1),
        }
    }

    /// The bytes that switch off what is still on (empty when nothing is):
    /// the alternate screen first, so the rest applies to the normal one.
    pub fn reset_sequence(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for alt in [1049u16, 1047, 47] {
            if self.on.contains(&alt) {
                out.extend_from_slice(format!("\x1b[?{alt}l").as_bytes());
            }
        }
        for &m in &self.on {
            if [1049, 1047, 47].contains(&m) {
                continue;
            }
            let fin = if m == 25 { 'h' } else { 'l' };
            out.extend_from_slice(format!("\x1b[?{m}{fin}").as_bytes());
        }
        if self.keypad {
            out.extend_from_slice(b"\x1b>");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn modes_left_on_are_switched_off_even_when_split_across_writes() {
        let mut m = ModeTracker::default();
        assert!(m.reset_sequence().is_empty());
        m.feed(b"x\x1b[?1049h\x1b[?25l\x1b[?100");
        m.feed(b"0;1006h\x1b=\x1b[?2004h text \x1b[1m");
        assert_eq!(
            String::from_utf8(m.reset_sequence()).unwrap(),
            "\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1006l\x1b[?2004l\x1b>"
        );
        // The program switched them back off itself: nothing to do.
        m.feed(b"\x1b[?2004l\x1b[?1000;1006l\x1b[?25h\x1b[?1049l\x1b>");
        assert!(m.reset_sequence().is_empty());
        // Untracked modes and other sequences are ignored; hostile
        // lengths are bounded.
        m.feed(b"\x1b[?7l\x1b[?12h\x1b]0;title\x07");
        m.feed(b"\x1b[?");
        m.feed(&vec![b'1'; 10_000]);
        m.feed(b"h\x1b[?2004h");
        assert_eq!(m.reset_sequence(), b"\x1b[?2004l");
        assert!(m.carry.len() <= MODE_CARRY_MAX);
    }
}
