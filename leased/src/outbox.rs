//! Per-connection outgoing queue, drained by one writer task.
//!
//! Writing a frame inside `select!` is not cancel-safe, and a slow client
//! must never hold up the PTY, the lease or other clients. So every
//! connection has exactly one writer task that owns the socket's send half
//! and drains an [`Outbox`]:
//!
//! * the **control** lane (WELCOME, lease replies, STATUS, ERROR, PONG) always
//!   goes first, so renewals are answered even while terminal output is
//!   queued; it is bounded in bytes ([`CONTROL_QUEUE_BYTES`]: each frame
//!   counts its encoded size plus [`CONTROL_FRAME_COST`]), and a client that
//!   lets it overflow is not reading at all: it is disconnected;
//! * the **ordered** lane carries REPLAY, DATA and EXIT in PTY order (EXIT
//!   must not overtake the last output). DATA past [`DATA_QUEUE_BYTES`] is
//!   dropped for that client only (terminal output is ephemeral, as in
//!   codev); REPLAY and EXIT are never dropped, but REPLAY counts against
//!   the same budget, so a client still taking a large REPLAY gets no DATA
//!   piled up behind it. It may also hold a
//!   *barrier* ([`Out::AwaitPeerRead`]): the writer waits there until the
//!   peer has read everything written before it, so what follows lands in
//!   a later read (SPEC §7: the retained EXIT after WELCOME and REPLAY).
//!
//! **DATA is coalesced.** Output pushed while the previous DATA is still
//! queued is appended to it (up to [`DATA_FRAME_MAX`] per frame), copied
//! into one growing buffer: a client that falls behind a program writing
//! a million tiny lines holds its 1 MiB budget in a few dozen buffers, not
//! in a million small allocations and queue entries (each costing far more
//! than its bytes). It also means fewer, larger writes for a slow reader.
//! DATA is a byte stream: how it is cut into frames carries no meaning.
//!
//! The queue logic ([`Lanes`]) is pure and unit-tested; [`Outbox`] adds the
//! lock and the wake-up.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::BytesMut;
use shellper_protocol::Frame;
use tokio::sync::Notify;

/// Most REPLAY and DATA bytes queued for one client before new DATA is
/// dropped.
pub const DATA_QUEUE_BYTES: usize = 1024 * 1024;
/// Largest DATA frame the coalescing builds (a single PTY read may be
/// larger; it is never split).
pub const DATA_FRAME_MAX: usize = 64 * 1024;
/// Most control bytes queued for one client before it is disconnected:
/// room for four STATUS replies of the largest size (256 KiB each), or
/// thousands of ordinary ones.
pub const CONTROL_QUEUE_BYTES: usize = 1024 * 1024;
/// What a queued control frame costs beyond its encoded payload: the
/// queue entry and the decoded message's own allocations, so a flood of
/// empty frames (PONG) is bounded too: at most
/// `CONTROL_QUEUE_BYTES / CONTROL_FRAME_COST` = 4,096 of them.
pub const CONTROL_FRAME_COST: usize = 256;

/// What pushing a frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// DATA dropped: the client is too far behind.
    Dropped,
    /// The control lane overflowed (or the outbox is closed): disconnect.
    Overflow,
}

/// What the writer does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Write this frame.
    Frame(Frame),
    /// Wait (bounded) until the peer has read every byte written so far.
    AwaitPeerRead,
}

/// An entry of the ordered lane.
#[derive(Debug)]
enum Ordered {
    /// DATA still open for appending.
    Data(BytesMut),
    Frame(Frame),
    Barrier,
}

/// The byte cost of a control frame: its encoded payload plus the fixed
/// [`CONTROL_FRAME_COST`]. A frame that does not encode is written as
/// nothing (the writer drops it), so it costs only the fixed part.
fn control_cost(f: &Frame) -> usize {
    CONTROL_FRAME_COST + f.encode_payload().map_or(0, |p| p.len())
}

/// The two lanes, without synchronisation.
#[derive(Debug, Default)]
pub struct Lanes {
    control: VecDeque<(Frame, usize)>,
    control_bytes: usize,
    ordered: VecDeque<Ordered>,
    data_bytes: usize,
    closed: bool,
    /// DATA frames dropped for this client since it connected.
    pub dropped: u64,
}

impl Lanes {
    pub fn push_control(&mut self, f: Frame) -> Pushed {
        let cost = control_cost(&f);
        if self.closed || self.control_bytes + cost > CONTROL_QUEUE_BYTES {
            return Pushed::Overflow;
        }
        self.control_bytes += cost;
        self.control.push_back((f, cost));
        Pushed::Queued
    }

    /// Queues a copy of `b` as DATA, appended to the DATA queued last when
    /// nothing was queued after it and the frame stays within
    /// [`DATA_FRAME_MAX`].
    pub fn push_data(&mut self, b: &[u8]) -> Pushed {
        if self.closed {
            return Pushed::Overflow;
        }
        if self.data_bytes + b.len() > DATA_QUEUE_BYTES {
            self.dropped += 1;
            return Pushed::Dropped;
        }
        self.data_bytes += b.len();
        match self.ordered.back_mut() {
            Some(Ordered::Data(d)) if d.len() + b.len() <= DATA_FRAME_MAX => {
                d.extend_from_slice(b);
            }
            _ => self.ordered.push_back(Ordered::Data(BytesMut::from(b))),
        }
        Pushed::Queued
    }

    /// REPLAY and EXIT: never dropped (bounded by the replay buffer and by
    /// there being one EXIT per child). REPLAY bytes count against the
    /// output budget.
    pub fn push_ordered(&mut self, f: Frame) -> Pushed {
        if self.closed {
            return Pushed::Overflow;
        }
        if let Frame::Replay(b) = &f {
            self.data_bytes += b.len();
        }
        self.ordered.push_back(Ordered::Frame(f));
        Pushed::Queued
    }

    /// A barrier in the ordered lane: what is pushed after it is written
    /// only once the peer has read what was written before it.
    pub fn push_barrier(&mut self) -> Pushed {
        if self.closed {
            return Pushed::Overflow;
        }
        self.ordered.push_back(Ordered::Barrier);
        Pushed::Queued
    }

    /// The next control frame only (the writer, waiting at a barrier).
    pub fn pop_control(&mut self) -> Option<Frame> {
        let (f, cost) = self.control.pop_front()?;
        self.control_bytes -= cost;
        Some(f)
    }

    /// Next thing for the writer: control frames first.
    pub fn pop(&mut self) -> Option<Out> {
        if let Some((f, cost)) = self.control.pop_front() {
            self.control_bytes -= cost;
            return Some(Out::Frame(f));
        }
        Some(match self.ordered.pop_front()? {
            Ordered::Data(d) => {
                self.data_bytes -= d.len();
                // Freed once written: count it towards the next trim.
                crate::mem::released(d.len());
                Out::Frame(Frame::Data(d.freeze()))
            }
            Ordered::Frame(f) => {
                if let Frame::Replay(b) = &f {
                    self.data_bytes -= b.len();
                    crate::mem::released(b.len());
                }
                Out::Frame(f)
            }
            Ordered::Barrier => Out::AwaitPeerRead,
        })
    }

    /// Control bytes queued (encoded payloads plus the per-frame cost).
    pub fn control_bytes(&self) -> usize {
        self.control_bytes
    }

    /// REPLAY and DATA bytes queued.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    /// Stop accepting frames; what is queued is still written.
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // A client that left with output queued: that memory is freed now.
        crate::mem::released(self.data_bytes + self.control_bytes);
    }
}

/// A connection's outgoing queue, shared by the tasks that produce frames
/// and the connection's single writer.
#[derive(Debug, Default)]
pub struct Outbox {
    lanes: Mutex<Lanes>,
    notify: Notify,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Lanes) -> R) -> R {
        // A poisoned lock means a producer panicked mid-push; the queue
        // itself is still consistent (every method is a single VecDeque op
        // plus a counter), so keep using it.
        let mut g = self
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = f(&mut g);
        drop(g);
        self.notify.notify_one();
        r
    }

    pub fn control(&self, f: Frame) -> Pushed {
        self.with(|l| l.push_control(f))
    }

    pub fn data(&self, b: &[u8]) -> Pushed {
        self.with(|l| l.push_data(b))
    }

    pub fn ordered(&self, f: Frame) -> Pushed {
        self.with(|l| l.push_ordered(f))
    }

    /// See [`Lanes::push_barrier`].
    pub fn barrier(&self) -> Pushed {
        self.with(Lanes::push_barrier)
    }

    /// Writes what is queued, then ends the writer.
    pub fn close(&self) {
        self.with(Lanes::close);
    }

    pub fn dropped(&self) -> u64 {
        self.with(|l| l.dropped)
    }

    /// The next control frame, if one is queued (without waiting): what the
    /// writer still writes while the ordered lane waits at a barrier.
    pub fn try_control(&self) -> Option<Frame> {
        self.lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_control()
    }

    /// Waits for the next frame or barrier; `None` once closed and empty.
    pub async fn next(&self) -> Option<Out> {
        loop {
            let (frame, closed) = {
                let mut g = self
                    .lanes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (g.pop(), g.is_closed())
            };
            if frame.is_some() {
                return frame;
            }
            if closed {
                return None;
            }
            // notify_one stores a permit when nobody waits, so a push
            // between the check above and this await is not lost.
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shellper_protocol::msg::{ErrorCode, ErrorMsg, ExitMsg};

    fn err() -> Frame {
        Frame::Error(ErrorMsg {
            code: ErrorCode::Protocol,
            message: "x".into(),
        })
    }

    #[test]
    fn control_overtakes_bulk_but_exit_keeps_order() {
        let mut l = Lanes::default();
        l.push_ordered(Frame::Replay(Bytes::from_static(b"r")));
        l.push_data(b"d");
        l.push_ordered(Frame::Exit(ExitMsg::exited(0)));
        l.push_control(err());
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Error(_)))));
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Replay(_)))));
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Data(_)))));
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Exit(_)))));
        assert!(l.pop().is_none());
    }

    #[test]
    fn data_is_dropped_past_the_bound_and_control_overflow_is_reported() {
        let mut l = Lanes::default();
        let chunk = vec![0u8; 64 * 1024];
        let mut queued = 0;
        for _ in 0..100 {
            if l.push_data(&chunk) == Pushed::Queued {
                queued += 1;
            }
        }
        assert_eq!(queued, DATA_QUEUE_BYTES / chunk.len());
        assert_eq!(l.dropped, 100 - queued as u64);
        // Draining frees room again.
        assert!(l.pop().is_some());
        assert_eq!(l.push_data(&chunk), Pushed::Queued);

        let most = CONTROL_QUEUE_BYTES / CONTROL_FRAME_COST;
        for _ in 0..most {
            assert_eq!(l.push_control(Frame::Pong), Pushed::Queued);
        }
        assert_eq!(l.push_control(Frame::Pong), Pushed::Overflow);
        l.close();
        assert_eq!(l.push_ordered(Frame::Pong), Pushed::Overflow);
        assert!(l.pop().is_some(), "queued frames survive close");
    }

    /// A STATUS of the largest size: the control lane is bounded in bytes,
    /// so a client that requests STATUS and never reads is disconnected
    /// after a few MiB at most, not after 1,024 replies (256 MiB).
    #[test]
    fn control_lane_is_bounded_in_bytes() {
        use shellper_protocol::msg::{ErrorCode, ErrorMsg};
        let big = || {
            Frame::Error(ErrorMsg {
                code: ErrorCode::Protocol,
                message: "e".repeat(3000),
            })
        };
        let mut l = Lanes::default();
        let mut n = 0;
        while l.push_control(big()) == Pushed::Queued {
            n += 1;
            assert!(n < 1024, "never overflowed");
        }
        let cost = control_cost(&big());
        assert!(cost > 3000);
        assert_eq!(n, CONTROL_QUEUE_BYTES / cost);
        assert!(l.control_bytes() <= CONTROL_QUEUE_BYTES);
        // Writing one makes room for one.
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Error(_)))));
        assert_eq!(l.push_control(big()), Pushed::Queued);
        while l.pop().is_some() {}
        assert_eq!(l.control_bytes(), 0);
    }

    /// Tiny output to a client that is not reading: coalesced into frames
    /// of up to DATA_FRAME_MAX, in order, the budget counted in bytes.
    #[test]
    fn tiny_data_is_coalesced_in_order() {
        let mut l = Lanes::default();
        let mut sent = Vec::new();
        for i in 0..100_000u32 {
            let line = format!("{i}\n");
            if l.push_data(line.as_bytes()) == Pushed::Queued {
                sent.extend_from_slice(line.as_bytes());
            }
        }
        assert_eq!(l.data_bytes(), sent.len());
        l.push_ordered(Frame::Exit(ExitMsg::exited(0)));
        l.push_data(b"after");
        let mut got = Vec::new();
        let mut frames = 0;
        loop {
            match l.pop() {
                Some(Out::Frame(Frame::Data(b))) => {
                    assert!(b.len() <= DATA_FRAME_MAX);
                    got.extend_from_slice(&b);
                    frames += 1;
                }
                Some(Out::Frame(Frame::Exit(_))) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, sent);
        assert!(frames <= sent.len() / DATA_FRAME_MAX + 1, "{frames} frames");
        assert_eq!(
            l.pop(),
            Some(Out::Frame(Frame::Data(Bytes::from_static(b"after"))))
        );
        assert_eq!(l.data_bytes(), 0);
    }

    #[test]
    fn control_frames_can_be_taken_past_a_barrier() {
        let mut l = Lanes::default();
        l.push_barrier();
        l.push_ordered(Frame::Exit(ExitMsg::exited(0)));
        l.push_control(err());
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Error(_)))));
        assert_eq!(l.pop(), Some(Out::AwaitPeerRead));
        l.push_control(err());
        assert!(matches!(l.pop_control(), Some(Frame::Error(_))));
        assert!(l.pop_control().is_none());
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Exit(_)))));
    }

    #[test]
    fn a_barrier_keeps_its_place_in_the_ordered_lane() {
        let mut l = Lanes::default();
        l.push_ordered(Frame::Replay(Bytes::from_static(b"r")));
        l.push_barrier();
        l.push_ordered(Frame::Exit(ExitMsg::exited(1)));
        l.push_control(Frame::Pong);
        assert_eq!(l.pop(), Some(Out::Frame(Frame::Pong)));
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Replay(_)))));
        assert_eq!(l.pop(), Some(Out::AwaitPeerRead));
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Exit(_)))));
        l.close();
        assert_eq!(l.push_barrier(), Pushed::Overflow);
    }

    #[test]
    fn replay_counts_against_the_output_budget() {
        let mut l = Lanes::default();
        let replay = Bytes::from(vec![0u8; DATA_QUEUE_BYTES]);
        assert_eq!(l.push_ordered(Frame::Replay(replay)), Pushed::Queued);
        // The budget is used up by the REPLAY: DATA is dropped...
        assert_eq!(l.push_data(b"x"), Pushed::Dropped);
        // ...until the REPLAY has been written.
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Replay(_)))));
        assert_eq!(l.push_data(b"x"), Pushed::Queued);
    }

    #[tokio::test]
    async fn next_wakes_on_push_and_ends_after_close() {
        let o = std::sync::Arc::new(Outbox::new());
        let o2 = o.clone();
        let h = tokio::spawn(async move {
            let mut n = 0;
            while o2.next().await.is_some() {
                n += 1;
            }
            n
        });
        tokio::task::yield_now().await;
        o.control(Frame::Pong);
        o.data(b"x");
        o.close();
        assert_eq!(h.await.expect("join"), 2);
    }
}
