//! The detach keys: their `--detach-keys` syntax and the matcher that finds
//! them in the terminal's input, across reads. Pure.

/// The default detach sequence (also in `--help`, the README and SPEC).
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-],d";

/// A detach key sequence: `ctrl-X` keys (X one of `a`–`z`, `@ [ \ ] ^ _`)
/// or single printable characters, separated by commas, at most 4 keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys {
    bytes: Vec<u8>,
    text: String,
}

impl DetachKeys {
    /// The bytes a terminal sends for the sequence.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Display for DetachKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for DetachKeys {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut bytes = Vec::new();
        for key in s.split(',') {
            let lower = key.to_ascii_lowercase();
            let b = if let Some(c) = lower.strip_prefix("ctrl-") {
                match c.as_bytes() {
                    [x @ b'a'..=b'z'] => x - b'a' + 1,
                    [b'@'] => 0,
                    [b'['] => 0x1b,
                    [b'\\'] => 0x1c,
                    [b']'] => 0x1d,
                    [b'^'] => 0x1e,
                    [b'_'] => 0x1f,
                    _ => {
                        return Err(format!(
                            "`{key}`: ctrl- takes one of a-z @ [ \\ ] ^ _ (keys are like ctrl-],d)"
                        ));
                    }
                }
            } else {
                match key.as_bytes() {
                    [x] if x.is_ascii_graphic() => *x,
                    _ => {
                        return Err(format!(
                            "`{key}`: a key is ctrl-X or one printable character; keys are separated by commas (like ctrl-],d)"
                        ));
                    }
                }
            };
            bytes.push(b);
        }
        if bytes.len() > 4 {
            return Err("at most 4 detach keys".into());
        }
        Ok(DetachKeys {
            bytes,
            text: s.to_string(),
        })
    }
}

/// Finds the detach sequence in the terminal's input, across reads.
///
/// Bytes that may start the sequence are held back; when the next byte
/// does not continue it, they are passed on with that byte (so
/// `ctrl-]` followed by anything but `d` reaches the program, one key
/// late). Pure: unit-tested below.
#[derive(Debug, Clone)]
pub struct DetachMatcher {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachMatcher {
    pub fn new(keys: &DetachKeys) -> DetachMatcher {
        DetachMatcher {
            keys: keys.bytes.clone(),
            matched: 0,
        }
    }

    /// Feeds `input`; appends what the program should get to `out`.
    /// Returns true when the sequence completed (the rest of `input` is
    /// dropped: it was typed after the detach).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.keys.get(self.matched) == Some(&b) {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return true;
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if self.keys.first() == Some(&b) {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return true;
                }
            } else {
                out.push(b);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keys(s: &str) -> DetachKeys {
        s.parse().unwrap()
    }

    #[test]
    fn detach_keys_parse() {
        assert_eq!(keys("ctrl-],d").bytes(), &[0x1d, b'd']);
        assert_eq!(keys("Ctrl-P,Ctrl-Q").bytes(), &[0x10, 0x11]);
        assert_eq!(keys("ctrl-\\,ctrl-\\").bytes(), &[0x1c, 0x1c]);
        assert_eq!(keys("ctrl-@").bytes(), &[0]);
        assert_eq!(keys("ctrl-],d").to_string(), "ctrl-],d");
        for bad in ["", "ctrl-", "ctrl-1", "dd", "a,,b", "a,b,c,d,e", " "] {
            assert!(bad.parse::<DetachKeys>().is_err(), "{bad:?}");
        }
        assert_eq!(
            DEFAULT_DETACH_KEYS.parse::<DetachKeys>().unwrap().bytes(),
            &[0x1d, b'd']
        );
    }

    fn feed_all(m: &mut DetachMatcher, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for c in chunks {
            if m.feed(c, &mut out) {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn detach_sequence_found_across_reads_and_the_rest_passes() {
        let k = keys("ctrl-],d");
        let mut m = DetachMatcher::new(&k);
        assert_eq!(
            feed_all(&mut m, &[b"ls\r", b"\x1d", b"dX"]),
            (b"ls\r".to_vec(), true)
        );
        let mut m = DetachMatcher::new(&k);
        // ctrl-] then something else: both reach the program.
        assert_eq!(
            feed_all(&mut m, &[b"\x1dx", b"d"]),
            (b"\x1dxd".to_vec(), false)
        );
        let mut m = DetachMatcher::new(&k);
        // ctrl-] ctrl-] d: the first goes through, the second starts the sequence.
        assert_eq!(feed_all(&mut m, &[b"\x1d\x1dd"]), (b"\x1d".to_vec(), true));
        let mut m = DetachMatcher::new(&keys("ctrl-\\"));
        assert_eq!(feed_all(&mut m, &[b"ab\x1c"]), (b"ab".to_vec(), true));
        // A plain 'd' alone is just a 'd'.
        let mut m = DetachMatcher::new(&k);
        assert_eq!(feed_all(&mut m, &[b"ddd"]), (b"ddd".to_vec(), false));
    }
}
