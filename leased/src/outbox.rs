//! Per-connection outgoing queue, drained by one writer task.
//!
//! Writing a frame inside `select!` is not cancel-safe, and a slow client
//! must never hold up the PTY, the lease or other clients. So every
//! connection has exactly one writer task that owns the socket's send half
//! and drains an [`Outbox`]:
//!
//! * the **control** lane (WELCOME, lease replies, STATUS, ERROR, PONG) always
//!   goes first, so renewals are answered even while terminal output is
//!   queued; it is bounded in frames, and a client that lets it overflow is
//!   not reading at all: it is disconnected;
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
//! The queue logic ([`Lanes`]) is pure and unit-tested; [`Outbox`] adds the
//! lock and the wake-up.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use shellper_protocol::Frame;
use tokio::sync::Notify;

/// Most REPLAY and DATA bytes queued for one client before new DATA is
/// dropped.
pub const DATA_QUEUE_BYTES: usize = 1024 * 1024;
/// Most control frames queued for one client before it is disconnected.
pub const CONTROL_QUEUE_FRAMES: usize = 1024;

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

/// The two lanes, without synchronisation.
#[derive(Debug, Default)]
pub struct Lanes {
    control: VecDeque<Frame>,
    ordered: VecDeque<Out>,
    data_bytes: usize,
    closed: bool,
    /// DATA frames dropped for this client since it connected.
    pub dropped: u64,
}

impl Lanes {
    pub fn push_control(&mut self, f: Frame) -> Pushed {
        if self.closed || self.control.len() >= CONTROL_QUEUE_FRAMES {
            return Pushed::Overflow;
        }
        self.control.push_back(f);
        Pushed::Queued
    }

    pub fn push_data(&mut self, b: Bytes) -> Pushed {
        if self.closed {
            return Pushed::Overflow;
        }
        if self.data_bytes + b.len() > DATA_QUEUE_BYTES {
            self.dropped += 1;
            return Pushed::Dropped;
        }
        self.data_bytes += b.len();
        self.ordered.push_back(Out::Frame(Frame::Data(b)));
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
        self.ordered.push_back(Out::Frame(f));
        Pushed::Queued
    }

    /// A barrier in the ordered lane: what is pushed after it is written
    /// only once the peer has read what was written before it.
    pub fn push_barrier(&mut self) -> Pushed {
        if self.closed {
            return Pushed::Overflow;
        }
        self.ordered.push_back(Out::AwaitPeerRead);
        Pushed::Queued
    }

    /// Next thing for the writer: control frames first.
    pub fn pop(&mut self) -> Option<Out> {
        if let Some(f) = self.control.pop_front() {
            return Some(Out::Frame(f));
        }
        let o = self.ordered.pop_front()?;
        if let Out::Frame(Frame::Data(b) | Frame::Replay(b)) = &o {
            self.data_bytes -= b.len();
        }
        Some(o)
    }

    /// Stop accepting frames; what is queued is still written.
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
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

    pub fn data(&self, b: Bytes) -> Pushed {
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
        l.push_data(Bytes::from_static(b"d"));
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
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        let mut queued = 0;
        for _ in 0..100 {
            if l.push_data(chunk.clone()) == Pushed::Queued {
                queued += 1;
            }
        }
        assert_eq!(queued, DATA_QUEUE_BYTES / chunk.len());
        assert_eq!(l.dropped, 100 - queued as u64);
        // Draining frees room again.
        assert!(l.pop().is_some());
        assert_eq!(l.push_data(chunk), Pushed::Queued);

        for _ in 0..CONTROL_QUEUE_FRAMES {
            assert_eq!(l.push_control(Frame::Pong), Pushed::Queued);
        }
        assert_eq!(l.push_control(Frame::Pong), Pushed::Overflow);
        l.close();
        assert_eq!(l.push_ordered(Frame::Pong), Pushed::Overflow);
        assert!(l.pop().is_some(), "queued frames survive close");
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
        assert_eq!(l.push_data(Bytes::from_static(b"x")), Pushed::Dropped);
        // ...until the REPLAY has been written.
        assert!(matches!(l.pop(), Some(Out::Frame(Frame::Replay(_)))));
        assert_eq!(l.push_data(Bytes::from_static(b"x")), Pushed::Queued);
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
        o.data(Bytes::from_static(b"x"));
        o.close();
        assert_eq!(h.await.expect("join"), 2);
    }
}
