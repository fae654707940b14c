//! The lease connection as the holder sees it: frames in from the reader,
//! frames out through a writer task with a bounded queue and a deadline on
//! every write.
//!
//! The holder never awaits a socket write: a stopped or wedged shellper
//! stops reading, its socket buffer fills, and a `write_all` in the holder
//! would stop it from handling terminate, status and the process's exit.
//! Queued frames are written by a task of their own; a write that does not
//! finish within [`WRITE_TIMEOUT`] ends the connection (reported like a
//! close, so the holder reconnects), and a full queue refuses new frames at
//! once.

use std::time::Duration;

use futures_util::StreamExt;
use shellper_protocol::Frame;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::conn::{Reader, Writer};

/// Longest a single frame write may take before the connection is given up.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames waiting for the writer. Lease traffic is a few frames per
/// renewal interval; more than this queued means the shellper is not
/// reading.
pub(crate) const OUT_QUEUE: usize = 64;

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The shellper is not reading (the queue is full).
    Full,
    /// The writer has stopped (write error or timeout).
    Closed,
}

/// What the connection delivers to the holder.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    Frame(Frame),
    /// Closed by the peer, a read error, or a write that failed or timed out.
    Closed(String),
}

/// One lease connection: the read half, and the writer task's queue.
#[derive(Debug)]
pub(crate) struct Link {
    reader: Reader,
    out: mpsc::Sender<Frame>,
    failed: oneshot::Receiver<String>,
    writer: JoinHandle<()>,
}

impl Link {
    pub(crate) fn new(reader: Reader, mut writer: Writer) -> Link {
        let (out, mut rx) = mpsc::channel::<Frame>(OUT_QUEUE);
        let (fail_tx, failed) = oneshot::channel();
        let writer = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                let why = match tokio::time::timeout(WRITE_TIMEOUT, writer.send(f)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => format!("write failed: {e}"),
                    Err(_) => format!("write not finished within {WRITE_TIMEOUT:?}"),
                };
                let _ = fail_tx.send(why);
                return;
            }
        });
        Link {
            reader,
            out,
            failed,
            writer,
        }
    }

    /// Queues a frame; never waits.
    pub(crate) fn send(&self, f: Frame) -> Result<(), SendError> {
        self.out.try_send(f).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// The next frame, or why the connection ended. Cancel-safe.
    pub(crate) async fn next(&mut self) -> LinkEvent {
        tokio::select! {
            f = self.reader.next() => match f {
                Some(Ok(f)) => LinkEvent::Frame(f),
                Some(Err(e)) => LinkEvent::Closed(e.to_string()),
                None => LinkEvent::Closed("closed by the shellper".into()),
            },
            why = &mut self.failed => LinkEvent::Closed(
                why.unwrap_or_else(|_| "writer stopped".into())
            ),
        }
    }

    /// Frames the socket still holds, without waiting for more than
    /// `within` in all: what a shellper wrote just before it exited
    /// (TERMINATED, EXIT) is in our receive buffer even when its exit is
    /// noticed first.
    pub(crate) async fn drain(&mut self, within: Duration, max: usize) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < max {
            match tokio::time::timeout_at(deadline, self.reader.next()).await {
                Ok(Some(Ok(f))) => out.push(f),
                _ => break,
            }
        }
        out
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The write half lives in the task: end it so the socket closes.
        self.writer.abort();
    }
}
