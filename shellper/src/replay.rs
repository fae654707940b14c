//! The bounded replay buffer: the tail of PTY output sent as REPLAY to a
//! client that attaches (so a restarted Tower or `afx attach` sees the
//! screen's recent history).
//!
//! Bounded by both lines and bytes, as codev's buffer is (10,000 lines or
//! 8 MiB): a chatty line-oriented program is bounded by lines, a TUI that
//! never prints a newline is bounded by bytes. Output is stored as the chunks
//! the PTY produced (no copy on append); trimming drops whole chunks and
//! splits at most one.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Output history bounded by `max_lines` newlines (complete lines; a
/// trailing partial line is kept on top) and `max_bytes` bytes.
#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    lines: usize,
    max_lines: usize,
    max_bytes: usize,
}

fn count_newlines(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

impl ReplayBuffer {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        ReplayBuffer {
            chunks: VecDeque::new(),
            bytes: 0,
            lines: 0,
            max_lines,
            max_bytes,
        }
    }

    /// Bytes currently held.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Newlines currently held.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Appends output and trims the front to the bounds.
    pub fn push(&mut self, mut data: Bytes) {
        if data.is_empty() {
            return;
        }
        if data.len() > self.max_bytes {
            data = data.slice(data.len() - self.max_bytes..);
        }
        self.bytes += data.len();
        self.lines += count_newlines(&data);
        self.chunks.push_back(data);
        self.trim();
    }

    fn trim(&mut self) {
        while self.bytes > self.max_bytes {
            let excess = self.bytes - self.max_bytes;
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= excess {
                self.bytes -= front.len();
                self.lines -= count_newlines(front);
                self.chunks.pop_front();
            } else {
                let cut = front.split_to(excess);
                self.bytes -= cut.len();
                self.lines -= count_newlines(&cut);
            }
        }
        while self.lines > self.max_lines {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            match front.iter().position(|&c| c == b'\n') {
                Some(i) => {
                    let cut = front.split_to(i + 1);
                    self.bytes -= cut.len();
                    self.lines -= 1;
                    if front.is_empty() {
                        self.chunks.pop_front();
                    }
                }
                None => {
                    self.bytes -= front.len();
                    self.chunks.pop_front();
                }
            }
        }
    }

    /// The whole history as one buffer (the REPLAY payload).
    pub fn snapshot(&self) -> Bytes {
        if self.chunks.len() == 1 {
            return self.chunks[0].clone();
        }
        let mut out = BytesMut::with_capacity(self.bytes);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.freeze()
    }

    /// Forgets everything (SPAWN starts a fresh session, as in codev).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
        self.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(r: &mut ReplayBuffer, s: &str) {
        r.push(Bytes::copy_from_slice(s.as_bytes()));
    }

    #[test]
    fn keeps_last_lines() {
        let mut r = ReplayBuffer::new(2, 1000);
        push(&mut r, "a\nb\n");
        push(&mut r, "c\nd");
        assert_eq!(&r.snapshot()[..], b"b\nc\nd");
        assert_eq!(r.lines(), 2);
        push(&mut r, "\ne\n");
        assert_eq!(&r.snapshot()[..], b"d\ne\n");
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn keeps_last_bytes() {
        let mut r = ReplayBuffer::new(100, 5);
        push(&mut r, "abc");
        push(&mut r, "defg");
        assert_eq!(&r.snapshot()[..], b"cdefg");
        push(&mut r, "0123456789");
        assert_eq!(&r.snapshot()[..], b"56789");
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn counters_stay_consistent_under_mixed_trims() {
        let mut r = ReplayBuffer::new(3, 10);
        for i in 0..200 {
            let s = if i % 3 == 0 { "x\ny\n" } else { "zzzz" };
            push(&mut r, s);
            let snap = r.snapshot();
            assert_eq!(snap.len(), r.len());
            assert_eq!(count_newlines(&snap), r.lines());
            assert!(r.len() <= 10 && r.lines() <= 3);
        }
        r.clear();
        assert!(r.is_empty());
        assert_eq!(&r.snapshot()[..], b"");
    }

    #[test]
    fn zero_lines_keeps_only_a_partial_line() {
        let mut r = ReplayBuffer::new(0, 100);
        push(&mut r, "a\nb");
        assert_eq!(&r.snapshot()[..], b"b");
    }
}
