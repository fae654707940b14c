//! The bounded replay buffer: the tail of PTY output sent as REPLAY to a
//! client that attaches (so a restarted Tower or `afx attach` sees the
//! screen's recent history).
//!
//! Bounded by both lines and bytes, as codev's buffer is (10,000 lines or
//! 8 MiB): a chatty line-oriented program is bounded by lines, a TUI that
//! never prints a newline is bounded by bytes.
//!
//! **Stored compactly, whatever the read sizes.** The bytes live in a ring
//! of fixed-size blocks ([`BLOCK`]): output is copied into the last block,
//! trimming advances an offset into the first and frees it once consumed.
//! So what the buffer pins is the bytes it holds plus less than two blocks,
//! however the program's writes were split into reads: a million 10-byte
//! reads take 10 MB of blocks, not a million allocations (storing the PTY
//! reader's chunks as they came pinned tens of MiB for a few MiB held:
//! each small chunk kept its whole 64 KiB read buffer alive). Blocks are
//! all the same size, so the allocator reuses the ones trimming frees for
//! the ones appending needs, and the heap does not fragment.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// Size of one block of the ring. Below glibc's mmap threshold (the heap
/// recycles them), large enough that a block is rarely allocated.
pub const BLOCK: usize = 32 * 1024;

/// Most bytes of REPLAY payloads alive at once, over every client: a
/// client that attaches and never reads holds its REPLAY (a copy) until the
/// write stall closes it, so 256 of them could otherwise pin 256 × 8 MiB.
/// A client that attaches while the others hold this much gets the most
/// recent part of the history that fits (at least [`REPLAY_MIN`]).
pub const REPLAY_IN_FLIGHT_MAX: usize = 32 * 1024 * 1024;
/// The least a REPLAY is cut to when [`REPLAY_IN_FLIGHT_MAX`] is reached.
pub const REPLAY_MIN: usize = 64 * 1024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A REPLAY payload, counted in [`IN_FLIGHT`] until its last reference is
/// dropped (written, or its connection gone).
struct InFlight(Vec<u8>);

impl AsRef<[u8]> for InFlight {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(self.0.len(), Ordering::Relaxed);
        shellper_leased::mem::released(self.0.len());
    }
}

/// Bytes of REPLAY payloads alive now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// Output history bounded by `max_lines` newlines (complete lines; a
/// trailing partial line is kept on top) and `max_bytes` bytes.
#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    /// Every block but the last is full (`BLOCK` bytes written); the first
    /// is read from `head` on.
    blocks: VecDeque<Vec<u8>>,
    head: usize,
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
            blocks: VecDeque::new(),
            head: 0,
            bytes: 0,
            lines: 0,
            max_lines,
            max_bytes,
        }
    }

    #[cfg(test)]
    /// Bytes currently held.
    pub fn len(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    #[cfg(test)]
    /// Newlines currently held.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Bytes of memory the buffer holds (its blocks' capacity), for the
    /// footprint tests and STATUS-style diagnostics.
    pub fn allocated(&self) -> usize {
        self.blocks.iter().map(Vec::capacity).sum()
    }

    /// Appends a copy of `data` and trims the front to the bounds.
    pub fn push(&mut self, mut data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if data.len() > self.max_bytes {
            data = &data[data.len() - self.max_bytes..];
        }
        self.bytes += data.len();
        self.lines += count_newlines(data);
        while !data.is_empty() {
            let room = match self.blocks.back() {
                Some(b) if b.len() < BLOCK => BLOCK - b.len(),
                _ => {
                    self.blocks.push_back(Vec::with_capacity(BLOCK));
                    BLOCK
                }
            };
            let (now, rest) = data.split_at(room.min(data.len()));
            // Invariant: a block was just ensured at the back.
            if let Some(b) = self.blocks.back_mut() {
                b.extend_from_slice(now);
            }
            data = rest;
        }
        self.trim();
    }

    /// The bytes of the first block still held.
    fn front(&self) -> &[u8] {
        self.blocks.front().map_or(&[], |b| &b[self.head..])
    }

    /// Drops `n` bytes (at most the first block's) from the front.
    fn advance(&mut self, n: usize) {
        let lines = count_newlines(&self.front()[..n]);
        self.head += n;
        self.bytes -= n;
        self.lines -= lines;
        if self.head == self.blocks.front().map_or(0, Vec::len) {
            // Consumed: free it (the last block too, so an emptied buffer
            // holds nothing).
            self.blocks.pop_front();
            self.head = 0;
        }
    }

    fn trim(&mut self) {
        while self.bytes > self.max_bytes {
            let excess = self.bytes - self.max_bytes;
            let n = self.front().len().min(excess);
            self.advance(n);
        }
        while self.lines > self.max_lines {
            let n = match self.front().iter().position(|&c| c == b'\n') {
                Some(i) => i + 1,
                None => self.front().len(),
            };
            self.advance(n);
        }
    }

    #[cfg(test)]
    /// The whole history as one buffer (the REPLAY payload): a copy, freed
    /// once written. (Not kept for the next client: a quiet session would
    /// then hold its history twice.)
    pub fn snapshot(&self) -> Bytes {
        self.snapshot_tail(usize::MAX)
    }

    /// The most recent `max` bytes of the history (all of it if it is
    /// shorter), counted in [`in_flight`] until dropped.
    pub fn snapshot_tail(&self, max: usize) -> Bytes {
        let mut skip = self.bytes.saturating_sub(max);
        let mut out = Vec::with_capacity(self.bytes - skip);
        for (i, b) in self.blocks.iter().enumerate() {
            let mut part = if i == 0 { &b[self.head..] } else { &b[..] };
            let cut = skip.min(part.len());
            part = &part[cut..];
            skip -= cut;
            out.extend_from_slice(part);
        }
        IN_FLIGHT.fetch_add(out.len(), Ordering::Relaxed);
        Bytes::from_owner(InFlight(out))
    }

    /// Forgets everything (SPAWN starts a fresh session, as in codev).
    pub fn clear(&mut self) {
        shellper_leased::mem::released(self.allocated());
        self.blocks.clear();
        self.head = 0;
        self.bytes = 0;
        self.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn push(r: &mut ReplayBuffer, s: &str) {
        r.push(s.as_bytes());
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
        assert_eq!(r.allocated(), 0);
    }

    #[test]
    fn zero_lines_keeps_only_a_partial_line() {
        let mut r = ReplayBuffer::new(0, 100);
        push(&mut r, "a\nb");
        assert_eq!(&r.snapshot()[..], b"b");
    }

    /// The chatty program: a million tiny reads. What is allocated
    /// stays within the bytes held plus two blocks, at the line bound and
    /// at the byte bound.
    #[test]
    fn tiny_reads_are_stored_compactly() {
        let mut r = ReplayBuffer::new(10_000, 8 << 20);
        for i in 0..200_000u32 {
            r.push(format!("line {i}\n").as_bytes());
        }
        assert_eq!(r.lines(), 10_000);
        assert!(
            r.allocated() <= r.len() + 2 * BLOCK,
            "{} for {}",
            r.allocated(),
            r.len()
        );
        let mut r = ReplayBuffer::new(10_000, 1 << 20);
        for _ in 0..300_000 {
            r.push(b"abcdefg");
        }
        assert_eq!(r.len(), 1 << 20);
        assert!(r.allocated() <= r.len() + 2 * BLOCK);
    }

    #[test]
    fn a_tail_snapshot_is_the_newest_bytes_and_is_counted_until_dropped() {
        let mut r = ReplayBuffer::new(1 << 20, 1 << 20);
        let data: Vec<u8> = (0..(3 * BLOCK + 100)).map(|i| (i % 251) as u8).collect();
        r.push(&data);
        let before = in_flight();
        let tail = r.snapshot_tail(BLOCK + 7);
        assert_eq!(&tail[..], &data[data.len() - BLOCK - 7..]);
        assert!(in_flight() >= before + tail.len());
        let again = tail.clone();
        drop(tail);
        assert!(
            in_flight() >= before + again.len(),
            "a clone keeps it counted"
        );
        drop(again);
        assert_eq!(&r.snapshot()[..], &data[..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Against a model (the whole output, trimmed on demand): the same
        /// bytes, whatever the read sizes and bounds.
        #[test]
        fn matches_a_model(
            reads in proptest::collection::vec((0..(BLOCK + 1000), any::<u64>()), 0..6),
            max_lines in 0usize..50,
            max_bytes in 1usize..(3 * BLOCK),
        ) {
            // Each read: `len` bytes, about one in four a newline (cheap to
            // generate, unlike a strategy per byte).
            let reads: Vec<Vec<u8>> = reads
                .into_iter()
                .map(|(len, mut x)| {
                    (0..len)
                        .map(|_| {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            if (x >> 62) == 0 { b'\n' } else { b'x' }
                        })
                        .collect()
                })
                .collect();
            let mut r = ReplayBuffer::new(max_lines, max_bytes);
            let mut model: Vec<u8> = Vec::new();
            for read in &reads {
                r.push(read);
                model.extend_from_slice(read);
                if model.len() > max_bytes {
                    model.drain(..model.len() - max_bytes);
                }
                let excess = count_newlines(&model).saturating_sub(max_lines);
                if excess > 0 {
                    // Through the excess-th newline.
                    let i = model
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| **c == b'\n')
                        .nth(excess - 1)
                        .map_or(0, |(i, _)| i);
                    model.drain(..=i);
                }
                prop_assert_eq!(&r.snapshot()[..], &model[..]);
                prop_assert_eq!(r.len(), model.len());
                prop_assert_eq!(r.lines(), count_newlines(&model));
                prop_assert!(r.allocated() <= r.len() + 2 * BLOCK);
            }
        }
    }
}
