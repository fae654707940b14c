//! What a Tower reports: the [`Event`] values, how a process ended, and the
//! bounded queue that carries events to the application without ever
//! making a holder wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use shellper_protocol::msg::{TerminateReason, Terminated};
use tokio::sync::mpsc;

/// What the Tower reports about the shellpers it holds, one value per
/// transition. Serialized (for `minitower`) as one JSON object with an
/// `"event"` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The lease is held: granted (spawn, adoption, re-acquire after a lost
    /// connection: `recovered: false`) or acknowledged again after being
    /// unresponsive or lapsed (`recovered: true`).
    Held {
        id: String,
        epoch: u64,
        recovered: bool,
    },
    /// A renewal has gone unanswered for `waited_ms` (the shellper may be
    /// stopped or wedged; nothing is concluded from this).
    Unresponsive { id: String, waited_ms: u64 },
    /// By our clock the lease has expired at the shellper: its reattach
    /// window is running. Renewals continue and revive it if it answers.
    Lapsed { id: String },
    /// Another holder acquired the lease (`new_epoch` when the shellper told
    /// us). We stop holding and never re-acquire automatically.
    Revoked {
        id: String,
        old_epoch: u64,
        new_epoch: Option<u64>,
    },
    /// The PTY child (`what: "child"`; the husk stays, a session like any
    /// other) or the
    /// shellper process itself (`what: "shellper"`) ended.
    Exited {
        id: String,
        what: ExitWhat,
        code: Option<i32>,
        signal: Option<i32>,
        reason: Option<String>,
    },
    /// We lost the shellper without asking: it terminated on its own
    /// (window or claim expired, signalled) or its connection
    /// could not be re-established. Followed by `exited` once its process is
    /// gone.
    Lost { id: String, reason: String },
    /// Terminated on our request, death of the whole tree confirmed.
    Terminated {
        id: String,
        signalled: u32,
        survivors: u32,
        elapsed_ms: u64,
    },
    /// Detached on our request; the shellper terminates in `kill_in_ms`
    /// unless a Tower re-acquires it.
    Detached { id: String, kill_in_ms: u64 },
    /// The shellper died without running its own kill ladder (SIGKILL: the
    /// OOM killer, an operator), so the Tower took its tree down from
    /// outside: the processes it recorded as the tree's members while the
    /// shellper lived (pid and start time, walked at each renewal) and
    /// their descendants, and the PTY child's session and the sessions they
    /// led, each named by its id and its leader's start time or proven by a
    /// recorded member still in it (never a bare pid or sid).
    /// `session_verified: false` means nothing left could be proven to be
    /// of that tree, so nothing was touched.
    ///
    /// `cgroup`: the session's cgroup, when it had one: it was killed
    /// through it (`cgroup.kill`, exact: processes started after the last
    /// renewal included), and removed.
    TreeKilled {
        id: String,
        signalled: u32,
        survivors: u32,
        elapsed_ms: u64,
        session_verified: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
    },
    /// The scope directory or its lock file was deleted or replaced under
    /// the Tower (another Tower may own the path now). Not about one
    /// shellper (`id()` is empty). The Tower no longer writes its
    /// registry; an application should stop (detaching, so the sessions
    /// live on for their window).
    ScopeLost { scope: String, detail: String },
}

impl Event {
    /// The shellper id the event is about.
    pub fn id(&self) -> &str {
        match self {
            Event::Held { id, .. }
            | Event::Unresponsive { id, .. }
            | Event::Lapsed { id }
            | Event::Revoked { id, .. }
            | Event::Exited { id, .. }
            | Event::Lost { id, .. }
            | Event::Terminated { id, .. }
            | Event::Detached { id, .. }
            | Event::TreeKilled { id, .. } => id,
            Event::ScopeLost { .. } => "",
        }
    }

    /// One JSON line (no newline).
    pub fn to_json(&self) -> String {
        // Invariant: events are strings, integers and options; they always
        // serialize.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// Which process an [`Event::Exited`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitWhat {
    Child,
    Shellper,
}

/// How a process ended, as far as we can know: exact when the shellper is
/// our child (spawned by this Tower), unknown (both `None`) when it was
/// adopted and watched through a pidfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct ProcExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Result of a confirmed terminate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminateReport {
    /// The shellper's own report of its kill ladder.
    pub report: Option<Terminated>,
    /// How the shellper process ended.
    pub exit: ProcExit,
}

/// How many events wait for the application before new ones are dropped.
pub const EVENT_QUEUE: usize = 4096;

/// The stream of [`Event`]s of a Tower.
///
/// Bounded ([`EVENT_QUEUE`]): events are reports, and an application that
/// stops reading them must never stall a holder (and with it the renewals
/// of its lease) nor grow the Tower's memory without end. When the queue is
/// full, new events are dropped and counted ([`dropped`](Self::dropped));
/// nothing else is affected: the leases, handles and registry do not depend
/// on anybody reading events.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl Events {
    /// The next event (`None` only once the Tower and all holders are gone).
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The sending side of [`Events`]: never waits.
#[derive(Debug, Clone)]
pub(crate) struct EventTx {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl EventTx {
    pub(crate) fn channel(cap: usize) -> (EventTx, Events) {
        let (tx, rx) = mpsc::channel(cap);
        let dropped = Arc::new(AtomicU64::new(0));
        (
            EventTx {
                tx,
                dropped: dropped.clone(),
            },
            Events { rx, dropped },
        )
    }

    /// Queues `ev`, or drops and counts it if the application is behind.
    pub(crate) fn send(&self, ev: Event) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.tx.try_send(ev) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!("event queue full: {n} events dropped so far (latest: {ev:?})");
            }
        }
    }
}

pub(crate) fn reason_name(r: TerminateReason) -> &'static str {
    match r {
        TerminateReason::ClaimExpired => "claim_expired",
        TerminateReason::WindowExpired => "window_expired",
        TerminateReason::Requested => "requested",
        TerminateReason::Signal => "signal",
        TerminateReason::ChildExitedUnheld => "child_exited_unheld",
    }
}

/// The reason a shellper gave through its exit code (CONVENTIONS.md).
pub(crate) fn exit_reason(e: &ProcExit) -> Option<String> {
    match (e.code, e.signal) {
        (Some(0), _) => Some("terminated (signal or request)".into()),
        (Some(2), _) => Some("configuration error".into()),
        (Some(3), _) => Some("startup failure".into()),
        (Some(10), _) => Some("claim_expired".into()),
        (Some(11), _) => Some("window_expired".into()),
        (Some(12), _) => Some("child_exited_unheld".into()),
        (Some(13), _) => Some("kill ladder left survivors".into()),
        (Some(c), _) => Some(format!("exit code {c}")),
        (None, Some(s)) => Some(format!("killed by signal {s}")),
        (None, None) => None,
    }
}

/// The `exited` event for a v1 EXIT (codev reports a normal exit as
/// `code: C, signal: "0"` and a signal death as `code: 0, signal: "N"`; we
/// report `code: C, signal: null` and `code: null, signal: N`).
pub(crate) fn child_exit_event(id: String, e: &shellper_protocol::msg::ExitMsg) -> Event {
    let signal = e.signal_number();
    Event::Exited {
        id,
        what: ExitWhat::Child,
        code: if signal.is_some() { None } else { e.code },
        signal,
        reason: None,
    }
}
