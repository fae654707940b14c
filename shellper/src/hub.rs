//! The hub: state shared by the PTY tasks and the connection tasks.
//!
//! One lock guards the client table, the replay buffer and the child's
//! state together, so a client that registers sees exactly the replay up to
//! now followed by every later DATA (no gap, no duplicate), and an EXIT is
//! queued after the last output of the same child. Work under the lock is
//! bounded: pushes into per-client queues, never IO.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use shellper_leased::outbox::{Outbox, Pushed};
use shellper_leased::server::WorkerView as ChildView;
use shellper_protocol::Frame;
use shellper_protocol::lease::ConnId;
use shellper_protocol::msg::{ChildState, ClientType, ExitMsg, Hello, Welcome, WelcomeLease};

use crate::child::SpawnSpec;
use crate::replay::{REPLAY_IN_FLIGHT_MAX, REPLAY_MIN, ReplayBuffer};

/// A connected client that completed HELLO, as the PTY streams to it (the
/// connection itself is the server's: control frames, STATUS, closing).
#[derive(Debug)]
struct Client {
    kind: ClientType,
    peer_pid: u32,
    outbox: Arc<Outbox>,
    data: bool,
}

#[derive(Debug)]
struct Inner {
    clients: HashMap<ConnId, Client>,
    replay: ReplayBuffer,
    generation: u64,
    child: ChildView,
    exit: Option<ExitMsg>,
    cols: u16,
    rows: u16,
    last_data_at: u64,
    /// Session ids of every PTY child ever started (the kill ladder's
    /// session rule); bounded by the number of SPAWNs.
    sessions: Vec<i32>,
}

/// Shared state of one shellper.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    /// Wall-clock ms at which the session started (WELCOME `startTime`).
    pub start_time_ms: u64,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Hub {
    /// `child_pid` is `None` when the first command could not start (then
    /// call [`Hub::start_failed`] for generation 0).
    pub fn new(
        spec: &SpawnSpec,
        child_pid: Option<u32>,
        replay_lines: usize,
        replay_bytes: usize,
    ) -> Self {
        let now = wall_ms();
        Hub {
            inner: Mutex::new(Inner {
                clients: HashMap::new(),
                replay: ReplayBuffer::new(replay_lines, replay_bytes),
                generation: 0,
                child: ChildView {
                    pid: child_pid,
                    state: ChildState::Running,
                    command: spec.command.clone(),
                    args: spec.args.clone(),
                    cwd: spec.cwd.clone(),
                },
                exit: None,
                cols: spec.cols,
                rows: spec.rows,
                last_data_at: now,
                sessions: child_pid.map(|p| p as i32).into_iter().collect(),
            }),
            start_time_ms: now,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves Inner consistent before any call
        // that could panic, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a client after HELLO and queues WELCOME (with `lease` as
    /// its lease part), then REPLAY
    /// (unless a status client or `replay:false`), then EXIT if the child
    /// already exited (codev #905: late clients must learn of the exit).
    ///
    /// Every EXIT a client gets, the retained one and one of a child that
    /// exits later, goes behind a barrier placed right after WELCOME and
    /// REPLAY: it is written only once the client has read them. codev's
    /// client handles every frame of the read that completes WELCOME
    /// synchronously, before its `SessionManager` attaches the exit
    /// listener (after `connect()` resolves); an EXIT in that read is lost
    /// and the session stays "running" for ever (SPEC §7). A child that
    /// exits just after the client connected (a keystroke from another
    /// terminal ends it) must not put its EXIT there either. The barrier
    /// holds the ordered lane only (REPLAY, DATA, EXIT): control frames go
    /// on.
    pub fn register(
        &self,
        conn: ConnId,
        hello: &Hello,
        peer_pid: u32,
        outbox: Arc<Outbox>,
        lease: Option<WelcomeLease>,
    ) {
        let mut g = self.lock();
        let welcome = Welcome {
            version: shellper_protocol::PROTOCOL_VERSION,
            pid: g.child.pid.map_or(-1, i64::from),
            cols: g.cols,
            rows: g.rows,
            start_time: self.start_time_ms,
            last_data_at: Some(g.last_data_at),
            always_sends_replay: true,
            lease,
        };
        outbox.control(Frame::Welcome(welcome));
        if hello.wants_replay() {
            // Every client's REPLAY is a copy until written: past
            // REPLAY_IN_FLIGHT_MAX over all clients (clients attaching and
            // not reading), a new one gets the newest part that fits.
            let room = REPLAY_IN_FLIGHT_MAX
                .saturating_sub(crate::replay::in_flight())
                .max(REPLAY_MIN);
            outbox.ordered(Frame::Replay(g.replay.snapshot_tail(room)));
        }
        if hello.client_type != ClientType::Status {
            outbox.barrier();
            if let Some(exit) = g.exit.clone() {
                outbox.ordered(Frame::Exit(exit));
            }
        }
        g.clients.insert(
            conn,
            Client {
                kind: hello.client_type,
                peer_pid,
                outbox,
                data: hello.wants_data(),
            },
        );
    }

    pub fn unregister(&self, conn: ConnId) {
        self.lock().clients.remove(&conn);
    }

    /// PTY output of child generation `generation`: into the replay buffer and to
    /// every client that streams data. Output of a replaced child is
    /// dropped.
    ///
    /// Each copies what it keeps (the replay into its block ring, each
    /// outbox into its coalescing DATA buffer), so nothing here holds on to
    /// the reader's buffer: memory follows the bytes held, not the number
    /// or size of the reads (issue 18).
    pub fn output(&self, generation: u64, data: &[u8]) {
        let mut g = self.lock();
        if g.generation != generation {
            return;
        }
        g.replay.push(data);
        g.last_data_at = wall_ms();
        for c in g.clients.values().filter(|c| c.data) {
            if c.outbox.data(data) == Pushed::Dropped && c.outbox.dropped() == 1 {
                tracing::info!(peer_pid = c.peer_pid, "client too slow: dropping DATA");
            }
        }
    }

    /// The child of generation `generation` exited: remember it and tell every
    /// non-status client.
    pub fn child_exited(&self, generation: u64, exit: ExitMsg, state: ChildState) {
        let mut g = self.lock();
        if g.generation != generation {
            return;
        }
        g.child.state = state;
        g.exit = Some(exit.clone());
        for c in g.clients.values().filter(|c| c.kind != ClientType::Status) {
            c.outbox.ordered(Frame::Exit(exit.clone()));
        }
    }

    /// A new child replaced the old one (SPAWN): fresh replay, as in codev.
    pub fn child_started(&self, generation: u64, pid: u32, spec: &SpawnSpec) {
        let mut g = self.lock();
        g.generation = generation;
        g.sessions.push(pid as i32);
        g.replay.clear();
        g.exit = None;
        g.child = ChildView {
            pid: Some(pid),
            state: ChildState::Running,
            command: spec.command.clone(),
            args: spec.args.clone(),
            cwd: spec.cwd.clone(),
        };
    }

    /// The command of generation `generation` could not start (not found,
    /// not executable, no working directory). As codev's shellper (node-pty
    /// forks, the exec fails, the child exits 1): the reason becomes the
    /// session's output and the child counts as exited with code 1, so
    /// every client, now or later, gets `{"code":1,"signal":"0"}`.
    pub fn start_failed(&self, generation: u64, spec: &SpawnSpec, reason: &str) {
        let line = format!("shellper: {reason}\r\n").into_bytes();
        {
            let mut g = self.lock();
            g.generation = generation;
            g.replay.clear();
            g.exit = None;
            g.child = ChildView {
                pid: None,
                state: ChildState::Running,
                command: spec.command.clone(),
                args: spec.args.clone(),
                cwd: spec.cwd.clone(),
            };
        }
        self.output(generation, &line);
        self.child_exited(
            generation,
            ExitMsg::exited(1),
            ChildState::Exited {
                code: Some(1),
                signal: None,
            },
        );
    }

    pub fn set_size(&self, cols: u16, rows: u16) {
        let mut g = self.lock();
        g.cols = cols;
        g.rows = rows;
    }

    pub fn size(&self) -> (u16, u16) {
        let g = self.lock();
        (g.cols, g.rows)
    }

    /// Every PTY session started so far (for the kill ladder).
    pub fn sessions(&self) -> Vec<i32> {
        self.lock().sessions.clone()
    }

    pub fn child(&self) -> ChildView {
        self.lock().child.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shellper_leased::outbox::Out;

    fn spec() -> SpawnSpec {
        SpawnSpec {
            command: "sh".into(),
            args: vec![],
            cwd: "/".into(),
            env: None,
            cols: 80,
            rows: 24,
        }
    }

    async fn drain_out(o: &Outbox) -> Vec<Out> {
        o.close();
        let mut v = Vec::new();
        while let Some(f) = o.next().await {
            v.push(f);
        }
        v
    }

    async fn drain(o: &Outbox) -> Vec<Frame> {
        drain_out(o)
            .await
            .into_iter()
            .filter_map(|o| match o {
                Out::Frame(f) => Some(f),
                Out::AwaitPeerRead => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn late_client_gets_welcome_replay_then_exit() {
        let hub = Hub::new(&spec(), Some(42), 100, 1000);
        hub.output(0, b"hello");
        hub.output(7, b"stale generation");
        hub.child_exited(
            0,
            ExitMsg::exited(3),
            ChildState::Exited {
                code: Some(3),
                signal: None,
            },
        );
        let o = Arc::new(Outbox::new());
        hub.register(1, &Hello::v1(ClientType::Terminal), 9, o.clone(), None);
        let out = drain_out(&o).await;
        assert!(
            matches!(&out[0], Out::Frame(Frame::Welcome(w)) if w.pid == 42 && w.always_sends_replay)
        );
        assert_eq!(
            out[1],
            Out::Frame(Frame::Replay(Bytes::from_static(b"hello")))
        );
        // The retained EXIT waits until WELCOME and REPLAY have been read.
        assert_eq!(out[2], Out::AwaitPeerRead);
        assert!(matches!(&out[3], Out::Frame(Frame::Exit(e)) if e.code == Some(3)));
        assert_eq!(out.len(), 4);
    }

    /// A child that exits after the client registered: its EXIT (and any
    /// output) is behind the barrier too, never in the read that brings
    /// WELCOME; a lease-only tower (no REPLAY) gets the barrier after
    /// WELCOME.
    #[tokio::test]
    async fn exit_after_the_client_connected_waits_behind_the_barrier() {
        for hello in [
            Hello::v1(ClientType::Tower),
            Hello {
                replay: Some(false),
                data: Some(false),
                lease: Some(1),
                ..Hello::v1(ClientType::Tower)
            },
        ] {
            let hub = Hub::new(&spec(), Some(42), 100, 1000);
            let o = Arc::new(Outbox::new());
            hub.register(1, &hello, 9, o.clone(), None);
            hub.output(0, b"bye");
            hub.child_exited(
                0,
                ExitMsg::exited(7),
                ChildState::Exited {
                    code: Some(7),
                    signal: None,
                },
            );
            let out = drain_out(&o).await;
            let barrier = out
                .iter()
                .position(|x| *x == Out::AwaitPeerRead)
                .expect("a barrier");
            let exit = out
                .iter()
                .position(|x| matches!(x, Out::Frame(Frame::Exit(e)) if e.code == Some(7)))
                .expect("the EXIT");
            assert!(matches!(&out[0], Out::Frame(Frame::Welcome(_))), "{out:?}");
            assert!(barrier < exit, "{out:?}");
            assert!(
                out[..barrier]
                    .iter()
                    .all(|x| matches!(x, Out::Frame(Frame::Welcome(_) | Frame::Replay(_)))),
                "only WELCOME and REPLAY before the barrier: {out:?}"
            );
        }
    }

    #[tokio::test]
    async fn status_clients_get_no_replay_data_or_exit() {
        let hub = Hub::new(&spec(), Some(42), 100, 1000);
        let o = Arc::new(Outbox::new());
        let mut hello = Hello::v1(ClientType::Status);
        hello.lease = Some(1);
        let lease = WelcomeLease {
            version: shellper_protocol::LEASE_PROTOCOL_VERSION,
            leased: true,
            shellper_pid: 7,
        };
        hub.register(1, &hello, 9, o.clone(), Some(lease));
        hub.output(0, b"x");
        let frames = drain(&o).await;
        assert_eq!(frames.len(), 1);
        assert!(
            matches!(&frames[0], Frame::Welcome(w) if w.lease.as_ref().is_some_and(|l| l.leased))
        );
    }
}
