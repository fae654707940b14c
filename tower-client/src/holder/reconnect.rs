//! Reconnecting after an unexpected close: attempts with capped exponential
//! backoff and jitter until the shellper's window leaves no time, advanced
//! as a state the holder loop polls (it keeps handling commands, frames and
//! the process's exit meanwhile).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shellper_protocol::clamp::GrantTimes;
use shellper_protocol::msg::{ExitMsg, Grant};
use tokio::time::Instant;

use super::events::{Event, child_exit_event};
use super::handle::{ST_HELD, ST_LAPSED, ST_UNRESPONSIVE};
use super::link::Link;
use super::run::Holder;
use crate::conn;
use crate::error::{Error, Result};

/// First reconnect attempt after an unexpected close: long enough for the
/// exit of a dying shellper (the kernel closes its socket first) to be
/// noticed before anything is concluded.
pub(super) const RECONNECT_FIRST: Duration = Duration::from_millis(200);
/// Backoff between reconnect attempts: doubled from this, capped below.
pub(super) const RECONNECT_BASE: Duration = Duration::from_millis(100);
pub(super) const RECONNECT_CAP: Duration = Duration::from_secs(5);

pub(super) type Acquired = Result<(conn::Conn, Grant, Option<ExitMsg>)>;

/// A reconnect in progress: attempts with capped exponential backoff and
/// jitter until the shellper's kill deadline leaves no time.
pub(super) struct Reconnect {
    pub(super) since: Instant,
    pub(super) give_up_at: Instant,
    pub(super) attempt: u32,
    pub(super) next_at: Instant,
    pub(super) in_flight: Option<Pin<Box<dyn Future<Output = Acquired> + Send>>>,
    pub(super) last_err: String,
    pub(super) why: String,
}

/// Polls the reconnect state: waits for its next attempt, runs it, and
/// returns its result. Cancel-safe: the attempt in flight is kept in the
/// state, so a `select!` that picks another branch loses nothing.
pub(super) async fn reconnect_step(
    r: &mut Option<Reconnect>,
    attempt: impl Fn() -> Pin<Box<dyn Future<Output = Acquired> + Send>>,
) -> Acquired {
    let Some(r) = r else {
        return std::future::pending().await;
    };
    if r.in_flight.is_none() {
        tokio::time::sleep_until(r.next_at).await;
        r.in_flight = Some(attempt());
    }
    let res = match r.in_flight.as_mut() {
        Some(f) => f.await,
        None => return std::future::pending().await,
    };
    r.in_flight = None;
    res
}

impl Holder {
    /// The lease connection ended without a detach.
    pub(super) fn on_closed(&mut self, why: &str) {
        self.conn = None;
        self.unschedule();
        for s in self.pending_status.drain(..) {
            let _ = s.send(Err(Error::NotHeld {
                id: self.handle.info.id.clone(),
                why: format!("lease connection {why}"),
            }));
        }
        if let Some(r) = self.detach.take() {
            let _ = r.send(Err(Error::NotHeld {
                id: self.id(),
                why: format!("lease connection {why} before RELEASED"),
            }));
        }
        if self.terminate.is_some()
            || self.report.is_some()
            || self.lost
            || self.reconnect.is_some()
        {
            return; // waiting for the process to go
        }
        // Unexpected. The process may be exiting (the kernel closes its
        // socket first): the loop keeps watching it while the first attempt
        // waits, and an exit seen meanwhile ends this.
        let now = Instant::now();
        self.reconnect = Some(Reconnect {
            since: now,
            give_up_at: now + self.window,
            attempt: 0,
            next_at: now + RECONNECT_FIRST,
            in_flight: None,
            last_err: String::new(),
            why: why.to_string(),
        });
    }

    /// One reconnect attempt finished.
    pub(super) fn on_reconnect(&mut self, r: Acquired) {
        let Some(mut rc) = self.reconnect.take() else {
            return;
        };
        match r {
            Ok((c, grant, exit)) => {
                let times = GrantTimes::of(&grant);
                self.epoch = grant.epoch;
                self.window = times.window;
                self.handle.epoch.store(grant.epoch, Ordering::Relaxed);
                self.conn = Some(Link::new(c.reader, c.writer));
                self.schedule(times.renew_every, times.expires_in);
                self.set_state(ST_HELD);
                self.emit(Event::Held {
                    id: self.id(),
                    epoch: grant.epoch,
                    recovered: false,
                });
                if let Some(e) = exit {
                    self.emit(child_exit_event(self.id(), &e));
                }
            }
            Err(e) => {
                rc.last_err = e.to_string();
                let now = Instant::now();
                if now >= rc.give_up_at {
                    self.lost = true;
                    self.set_state(ST_LAPSED);
                    self.emit(Event::Lost {
                        id: self.id(),
                        reason: format!(
                            "lease connection {}; re-acquire failed for {} ms ({} attempts), last: {}",
                            rc.why,
                            now.duration_since(rc.since).as_millis(),
                            rc.attempt + 1,
                            rc.last_err
                        ),
                    });
                    // Keep watching the process so its exit is still reported.
                    return;
                }
                if rc.attempt == 0 {
                    // Not concluded: the shellper may be stopped, busy, or
                    // out of descriptors for a moment.
                    self.set_state(ST_UNRESPONSIVE);
                    self.emit(Event::Unresponsive {
                        id: self.id(),
                        waited_ms: now.duration_since(rc.since).as_millis() as u64,
                    });
                }
                rc.attempt += 1;
                let backoff = RECONNECT_BASE
                    .saturating_mul(1u32 << rc.attempt.min(16))
                    .min(RECONNECT_CAP);
                let jitter = rand::random_range(0.8..1.2);
                rc.next_at = (now + backoff.mul_f64(jitter)).min(rc.give_up_at);
                self.reconnect = Some(rc);
            }
        }
    }
}
