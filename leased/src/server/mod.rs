//! The connection server every shellper runs: the PTY shellper (crate
//! `shellper`) and embedded leased processes (this crate) alike. One
//! implementation, generic over what a session adds ([`Session`]: the PTY's
//! frames, what WELCOME says, the terminal frames), so a fix to the slots,
//! the handshake or the writer reaches both.
//!
//! * Binding, accepting, the peer check and the slots are [`crate::sock`]:
//!   filesystem socket name only, directory 0700 when we create it, socket
//!   0600, a leftover socket file reclaimed only when nothing answers on it.
//! * Every connection: peer uid (SO_PEERCRED) must be ours, else it is
//!   closed at once; at most [`MAX_CONNECTIONS`], plus
//!   [`RESERVED_CONNECTIONS`] kept for status readers and the lease holder;
//!   HELLO within the handshake timeout; a reader (the connection's task,
//!   `Server::serve`) and one writer task (`writer.rs`) fed by an
//!   [`Outbox`]. A frame over its limit, an undecodable payload, trailing
//!   bytes or a truncated frame get an ERROR and close *that* connection.
//!   Unknown frame types are ignored.
//! * A write that fails, or makes no progress for the write stall limit,
//!   closes the whole connection (both directions, reader included): a peer
//!   that stopped reading must not keep its slot, and a half-written frame
//!   must not be followed by anything (SPEC.md §7).
//! * The lease frames (SPEC.md §6.2, §7, §8), PING and STATUS are answered
//!   here; DATA, RESIZE, SIGNAL and SPAWN go to [`Session::terminal`].
//!
//! **Where a connection's input is buffered** (for bounding it): the
//! reader's buffer ([`reader`]: DATA streamed in pieces as it arrives, at
//! most [`reader::READ_AHEAD`] bytes, or one frame decoded whole of at most
//! 1 MiB with its share of a pool shared by all connections), and whatever
//! a [`Session`] holds for it ([`Session::terminal`]: the PTY shellper's
//! input queue, bounded per client and in total in bytes). Output is
//! bounded by the [`Outbox`].

mod conn;
pub mod reader;
mod writer;

pub use conn::Conn;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shellper_protocol::Frame;
use shellper_protocol::codec::CodecError;
use shellper_protocol::lease::ConnId;
use shellper_protocol::msg::{
    ChildState, ClientInfo, ClientType, Containment, ErrorCode, Hello, Revoked, Status,
    WelcomeLease,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::outbox::{Outbox, Pushed};
use crate::sock::{self, Half, Listener, Slots, Stream, error_frame};
use crate::{LeaseHandle, ms};

/// Most simultaneous connections (handshaking or not) of any kind (SPEC.md §7).
pub const MAX_CONNECTIONS: usize = 256;
/// Extra slots, used only when the [`MAX_CONNECTIONS`] are taken, and kept
/// for status readers (leasectl) and the lease holder, so idle terminal
/// clients can never lock out the operator or the Tower (SPEC.md §7). A
/// connection in a reserved slot must earn it: a terminal is refused with
/// `Busy`; a status reader is closed after idling for the handshake timeout
/// between requests; a tower must hold the lease by the end of the
/// handshake timeout.
pub const RESERVED_CONNECTIONS: usize = 16;
/// A peer that accepts no bytes for this long is disconnected, whole
/// (SPEC.md §7). Measured per write call, so a slow reader that keeps
/// taking bytes gets a full REPLAY however long it takes.
pub const DEFAULT_WRITE_STALL: Duration = Duration::from_secs(30);

/// Who serves: the process's identity for WELCOME and STATUS.
#[derive(Debug, Clone)]
pub struct Identity {
    pub pid: u32,
    /// From `/proc/PID/stat`: with the pid, a recycle-proof identity.
    pub start_ticks: u64,
    /// Wall-clock ms at which the session started.
    pub started_at_ms: u64,
}

impl Identity {
    /// This process, started at `started_at_ms` (its start time is read
    /// from /proc; 0 if it cannot be).
    pub fn current(started_at_ms: u64) -> Self {
        let pid = std::process::id();
        Identity {
            pid,
            start_ticks: shellper_proctree::read_stat(pid as i32).map_or(0, |p| p.start_ticks),
            started_at_ms,
        }
    }
}

/// The session's worker (the PTY child, the embedded program's worker) as
/// STATUS shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    pub pid: Option<u32>,
    pub state: ChildState,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
}

/// Timeouts of the server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a new connection may take to send HELLO (and how long a
    /// connection in a reserved slot may go without earning it).
    pub handshake: Duration,
    /// A peer that accepts no bytes for this long is disconnected.
    pub write_stall: Duration,
}

/// What a session adds to the server: the PTY shellper's terminal, or an
/// embedded process that has none.
pub trait Session: Send + Sync + 'static {
    /// The session's own state for one connection (the PTY shellper: the
    /// client's input budget).
    type Conn: Send + Sync + 'static;

    /// A connection was accepted.
    fn open(&self) -> Self::Conn;

    /// A client completed HELLO: queue WELCOME on its outbox first, then
    /// whatever the session streams to it (REPLAY, DATA, EXIT).
    fn attach(&self, client: Attach<'_>);

    /// The client of an [`attach`](Self::attach) is gone.
    fn detach(&self, conn: ConnId);

    /// DATA, RESIZE, SIGNAL or SPAWN from an attached client. May wait (the
    /// reader does not read meanwhile: backpressure); must stop waiting
    /// when [`Conn::gone`] resolves.
    fn terminal(&self, conn: &Conn<Self::Conn>, frame: Frame) -> impl Future<Output = ()> + Send;

    /// The worker, for STATUS.
    fn worker(&self) -> WorkerView;
}

/// A client that completed HELLO, for [`Session::attach`].
#[derive(Debug)]
pub struct Attach<'a> {
    pub conn: ConnId,
    pub hello: &'a Hello,
    /// For the session's logs.
    pub peer_pid: u32,
    pub outbox: &'a Arc<Outbox>,
    /// WELCOME's lease part (present when HELLO asked for the lease
    /// protocol).
    pub lease: Option<WelcomeLease>,
}

/// A connection in the server's table (from accept to close).
#[derive(Debug)]
struct Client {
    kind: ClientType,
    peer_pid: u32,
    outbox: Arc<Outbox>,
    cancel: CancellationToken,
    /// HELLO accepted: listed in STATUS.
    attached: bool,
}

/// The server: shared by every connection task.
#[derive(Debug)]
pub struct Server<S> {
    session: S,
    lease: LeaseHandle,
    me: Identity,
    timeouts: Timeouts,
    clients: Mutex<HashMap<ConnId, Client>>,
    /// Every connection task and writer, so the exit path can wait for
    /// final frames (TERMINATED) to be flushed.
    tracker: TaskTracker,
    next_conn: AtomicU64,
    slots: Slots,
    my_uid: u32,
    /// What readers may buffer for large frames, over all connections.
    large_frames: Arc<tokio::sync::Semaphore>,
    /// The session's cgroup (SPEC.md §9.1), reported in STATUS.
    cgroup: Option<std::path::PathBuf>,
    /// Log each connection (accepted, HELLO, WELCOME, closed) at the
    /// default level, as codev's shellper does: see
    /// [`Server::log_connections`].
    log_connections: bool,
}

type Frames = reader::FrameReader;

impl<S: Session> Server<S> {
    pub fn new(session: S, lease: LeaseHandle, me: Identity, timeouts: Timeouts) -> Self {
        Server {
            session,
            lease,
            me,
            timeouts,
            clients: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            large_frames: reader::large_frame_pool(),
            slots: Slots::new(MAX_CONNECTIONS, RESERVED_CONNECTIONS),
            my_uid: rustix::process::geteuid().as_raw(),
            cgroup: None,
            log_connections: false,
        }
    }

    /// Logs every tower and terminal connection at INFO (otherwise DEBUG):
    /// "Connection accepted", "HELLO: version=1, clientType=tower",
    /// "WELCOME sent: pid=…, version=1", "Connection N closed", the lines
    /// codev's own shellper writes, which operators read when a session
    /// misbehaves under codev's Tower (the legacy invocation turns this
    /// on). Status readers (leasectl) stay at DEBUG: a `watch` would flood
    /// the log.
    pub fn log_connections(mut self, on: bool) -> Self {
        self.log_connections = on;
        self
    }

    /// One connection event, at INFO when [`Self::log_connections`] is on
    /// and the client is not a status reader (`None`: not known yet).
    fn conn_event(&self, kind: Option<ClientType>, msg: std::fmt::Arguments<'_>) {
        if self.log_connections && kind != Some(ClientType::Status) {
            tracing::info!("{msg}");
        } else {
            tracing::debug!("{msg}");
        }
    }

    /// The session's cgroup, for STATUS (its containment and accounting).
    pub fn with_cgroup(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.cgroup = dir;
        self
    }

    pub fn session(&self) -> &S {
        &self.session
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<ConnId, Client>> {
        // Every critical section is a single insert, remove or read, so a
        // poisoned lock still guards a consistent map: keep serving.
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accepts connections until `stop` is cancelled.
    pub async fn accept_loop(self: Arc<Self>, listener: Listener, stop: CancellationToken) {
        let tracker = self.tracker.clone();
        sock::accept_loop(listener, tracker, stop, move |stream| {
            self.clone().serve(stream)
        })
        .await;
    }

    /// Queues a control frame for connection `conn`; `false` if it is gone
    /// or its control lane overflowed (it is then disconnected).
    pub fn send(&self, conn: ConnId, frame: Frame) -> bool {
        let clients = self.clients();
        let Some(c) = clients.get(&conn) else {
            return false;
        };
        if c.outbox.control(frame) == Pushed::Queued {
            true
        } else {
            c.cancel.cancel();
            false
        }
    }

    /// Sends a last control frame and disconnects the client (a replaced
    /// holder).
    fn kick(&self, conn: ConnId, frame: Frame) {
        if let Some(c) = self.clients().get(&conn) {
            c.outbox.control(frame);
            c.cancel.cancel();
        }
    }

    /// Ends every connection after its queued frames are written, waiting
    /// at most `within` for the writers. Call after the accept loop stopped.
    pub async fn close_all(&self, within: Duration) {
        for c in self.clients().values() {
            // The writer still writes what is queued (its select is biased
            // to the outbox), then shuts the socket down.
            c.outbox.close();
            c.cancel.cancel();
        }
        self.tracker.close();
        let _ = tokio::time::timeout(within, self.tracker.wait()).await;
    }

    /// A full STATUS (SPEC.md §10); `None` once the lease enforcer is gone.
    async fn status(&self) -> Option<Status> {
        let snap = self.lease.snapshot().await?;
        let cfg = self.lease.config();
        let worker = self.session.worker();
        let (clients, holder_peer_pid) = {
            let map = self.clients();
            let mut list: Vec<(ConnId, ClientInfo)> = map
                .iter()
                .filter(|(_, c)| c.attached)
                .map(|(id, c)| {
                    let info = ClientInfo {
                        kind: c.kind,
                        pid: c.peer_pid,
                        holder: Some(*id) == snap.holder,
                    };
                    (*id, info)
                })
                .collect();
            list.sort_by_key(|(id, _)| *id);
            let holder_pid = snap.holder.and_then(|h| map.get(&h).map(|c| c.peer_pid));
            (list.into_iter().map(|(_, c)| c).collect(), holder_pid)
        };
        Some(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            shellper_pid: self.me.pid,
            shellper_start_ticks: self.me.start_ticks,
            started_at_ms: self.me.started_at_ms,
            child_pid: worker.pid,
            child: worker.state,
            command: worker.command,
            args: worker.args,
            cwd: worker.cwd,
            phase: snap.phase,
            leased: snap.leased,
            epoch: snap.epoch,
            holder: snap.holder_info.clone(),
            holder_peer_pid,
            expires_in_ms: snap.expires_in.map(ms),
            kill_in_ms: snap.kill_in.map(ms),
            claim_in_ms: snap.claim_in.map(ms),
            ttl_ms: ms(cfg.ttl),
            window_ms: ms(cfg.window),
            claim_ms: ms(cfg.claim),
            kill_grace_ms: ms(cfg.kill_grace),
            clients,
            counters: snap.counters,
            containment: None,
        })
    }

    /// The session's containment and what the kernel accounts for it
    /// (STATUS, lease extension v2), read inline (see below).
    fn containment(&self) -> Containment {
        let Some(dir) = self.cgroup.as_deref() else {
            return Containment::default();
        };
        // Inline: a few small cgroupfs files, which never wait for the
        // session's processes. A thread per STATUS cost a task each, and
        // where the pid table was full (2,000 sessions in a 4,915-task
        // sandbox) STATUS went unanswered.
        let cg = shellper_proctree::Cgroup::at(dir);
        let usage = cg.usage();
        let limits = cg.limits();
        Containment {
            cgroup: Some(dir.display().to_string()),
            controllers: cg.controllers().unwrap_or_default(),
            cpu_usec: usage.cpu_usec,
            procs: Some(usage.procs),
            memory_current: usage.memory_current,
            memory_peak: usage.memory_peak,
            pids_max: limits.pids_max,
            memory_max: limits.memory_max,
        }
    }

    /// Serves one connection from accept to close: this task is its reader.
    async fn serve(self: Arc<Self>, stream: Stream) {
        let Some(peer_pid) = sock::peer_pid_if_same_uid(&stream, self.my_uid) else {
            return;
        };

        let Some(slot) = self.slots.acquire() else {
            tracing::warn!(peer_pid, "too many connections; refusing");
            sock::refuse_busy(stream).await;
            return;
        };
        let reserved = slot.reserved;
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(stream);
        let sock = stream.clone();
        let (r, w) = (Half(stream.clone()), Half(stream));
        let outbox = Arc::new(Outbox::new());
        let cancel = CancellationToken::new();
        self.tracker.spawn(writer::writer(
            outbox.clone(),
            w,
            cancel.clone(),
            self.timeouts.write_stall,
        ));
        // Input buffered for this connection: this reader's buffer (see
        // the module docs) and what the session holds for `conn.state`.
        let mut frames = reader::FrameReader::new(r, self.large_frames.clone());
        let mut conn = Conn {
            id,
            kind: ClientType::Status,
            lease_version: None,
            outbox,
            cancel,
            sock,
            state: self.session.open(),
            continued: std::sync::atomic::AtomicBool::new(false),
        };
        self.clients().insert(
            id,
            Client {
                kind: ClientType::Status,
                peer_pid,
                outbox: conn.outbox.clone(),
                cancel: conn.cancel.clone(),
                attached: false,
            },
        );
        match self.handshake(&mut frames, &conn).await {
            Some(hello) if reserved && hello.client_type == ClientType::Terminal => {
                tracing::info!(conn = id, peer_pid, "terminal in a reserved slot; refusing");
                conn.send(error_frame(
                    ErrorCode::Busy,
                    "too many connections: the remaining slots are reserved for status \
                     readers and the lease holder",
                ));
            }
            Some(hello) => {
                let kind = hello.client_type;
                // Logged once the kind is known, so status readers stay quiet.
                self.conn_event(
                    Some(kind),
                    format_args!("Connection accepted: connection {id}, peer pid {peer_pid}"),
                );
                self.conn_event(
                    Some(kind),
                    format_args!(
                        "HELLO: version={}, clientType={}, connection {id}",
                        hello.version,
                        client_type_name(kind)
                    ),
                );
                conn.kind = hello.client_type;
                conn.lease_version = shellper_protocol::negotiated_lease_version(hello.lease);
                let lease = conn.lease_version.map(|version| WelcomeLease {
                    version,
                    leased: self.lease.is_leased(),
                    shellper_pid: self.me.pid,
                });
                self.session.attach(Attach {
                    conn: id,
                    hello: &hello,
                    peer_pid,
                    outbox: &conn.outbox,
                    lease,
                });
                if let Some(c) = self.clients().get_mut(&id) {
                    c.kind = hello.client_type;
                    c.attached = true;
                }
                self.conn_event(
                    Some(kind),
                    format_args!(
                        "WELCOME sent: pid={}, version={}, connection {id}",
                        self.session.worker().pid.map_or(-1, i64::from),
                        shellper_protocol::PROTOCOL_VERSION
                    ),
                );
                if hello.client_type == ClientType::Tower && !self.lease.is_leased() {
                    self.legacy_acquire(&conn).await;
                }
                self.read_loop(&mut frames, &conn, reserved).await;
                self.session.detach(id);
            }
            None => {}
        }
        self.clients().remove(&id);
        // Always tell the enforcer: it ignores connections that never held.
        self.lease.disconnected(id);
        conn.outbox.close();
        self.conn_event(Some(conn.kind), format_args!("Connection {id} closed"));
    }

    fn protocol_error(&self, conn: &Conn<S::Conn>, e: CodecError) {
        match e {
            CodecError::Frame(fe) => {
                tracing::info!(conn = conn.id, error = %fe, "protocol error; closing connection");
                self.lease.protocol_error();
                conn.send(error_frame(ErrorCode::Protocol, fe.to_string()));
            }
            CodecError::Io(ioe) => {
                tracing::debug!(conn = conn.id, error = %ioe, "read failed");
            }
        }
    }

    /// Waits for HELLO. Other frames before it are ignored as in codev v1,
    /// except lease requests, which get an ERROR (they need a handshake).
    async fn handshake(&self, frames: &mut Frames, conn: &Conn<S::Conn>) -> Option<Hello> {
        let deadline = tokio::time::Instant::now() + self.timeouts.handshake;
        loop {
            let f = match tokio::time::timeout_at(deadline, next_frame(frames, &conn.cancel)).await
            {
                Err(_) => {
                    tracing::info!(conn = conn.id, "no HELLO within the handshake timeout");
                    conn.send(error_frame(
                        ErrorCode::Protocol,
                        "handshake timeout: send HELLO first",
                    ));
                    return None;
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    self.protocol_error(conn, e);
                    return None;
                }
                Ok(Some(Ok(f))) => f,
            };
            match f {
                Frame::Hello(h) => return Some(h),
                Frame::Acquire(_)
                | Frame::Renew(_)
                | Frame::Release(_)
                | Frame::StatusRequest(_) => {
                    conn.send(error_frame(
                        ErrorCode::NotLeased,
                        "send HELLO before lease requests",
                    ));
                }
                _ => {}
            }
        }
    }

    /// Legacy mode (SPEC.md §12): a connected tower holds the lease; the
    /// tower it replaces gets REVOKED and is disconnected.
    async fn legacy_acquire(&self, conn: &Conn<S::Conn>) {
        match self.lease.acquire_legacy(conn.id).await {
            Ok(g) => {
                if let Some((old, old_epoch)) = g.revoked {
                    tracing::info!(old, new = conn.id, "legacy: new tower replaces the old one");
                    self.kick(
                        old,
                        Frame::Revoked(Revoked {
                            old_epoch,
                            new_epoch: g.epoch,
                        }),
                    );
                }
            }
            Err(r) => tracing::info!(conn = conn.id, reject = %r, "legacy acquire refused"),
        }
    }

    /// Reads and dispatches frames until the connection ends. A connection
    /// in a reserved slot must earn it ([`RESERVED_CONNECTIONS`]): a status
    /// reader may idle at most the handshake timeout between requests, a
    /// tower must hold the lease once the handshake timeout has passed.
    async fn read_loop(&self, frames: &mut Frames, conn: &Conn<S::Conn>, reserved: bool) {
        let handshake = self.timeouts.handshake;
        let mut deadline = reserved.then(|| tokio::time::Instant::now() + handshake);
        loop {
            let item = match deadline {
                None => next_frame(frames, &conn.cancel).await,
                Some(d) => match tokio::time::timeout_at(d, next_frame(frames, &conn.cancel)).await
                {
                    Ok(item) => item,
                    Err(_) => {
                        if conn.kind == ClientType::Tower && self.lease.is_holder(conn.id).await {
                            deadline = None;
                            continue;
                        }
                        tracing::info!(conn = conn.id, kind = ?conn.kind, "reserved slot unused; closing");
                        conn.send(error_frame(
                            ErrorCode::Busy,
                            "reserved connection slot: idle status reader or tower without the lease",
                        ));
                        return;
                    }
                },
            };
            let Some(item) = item else {
                return;
            };
            match item {
                Ok(frame) => {
                    conn.continued.store(frames.continued(), Ordering::Relaxed);
                    self.dispatch(conn, frame).await;
                }
                Err(e) => {
                    self.protocol_error(conn, e);
                    return;
                }
            }
            if deadline.is_some() && conn.kind == ClientType::Status {
                deadline = Some(tokio::time::Instant::now() + handshake);
            }
        }
    }

    async fn dispatch(&self, conn: &Conn<S::Conn>, frame: Frame) {
        match frame {
            f @ (Frame::Data(_) | Frame::Resize(_) | Frame::Signal(_) | Frame::Spawn(_)) => {
                self.session.terminal(conn, f).await;
            }
            Frame::Ping => conn.send(Frame::Pong),
            f @ (Frame::Acquire(_) | Frame::Renew(_) | Frame::Release(_)) => {
                if let Some(a) = self.lease.answer(conn.id, f).await {
                    if let Some(reply) = a.reply {
                        conn.send(reply);
                    }
                    if let Some((old, revoked)) = a.revoked {
                        self.send(old, revoked);
                    }
                }
            }
            Frame::StatusRequest(_) => {
                if let Some(mut s) = self.status().await {
                    // Version 1 peers reject the appended containment.
                    if conn.lease_version.unwrap_or(1) < 2 {
                        s.containment = None;
                    } else {
                        s.containment = Some(self.containment());
                    }
                    conn.send(Frame::Status(Box::new(s)));
                }
            }
            // Frames only a shellper sends, a second HELLO, PONG and
            // unknown types: ignored (v1 semantics).
            _ => {}
        }
    }
}

/// The wire name of a client type (`tower`, `terminal`, `status`).
fn client_type_name(k: ClientType) -> &'static str {
    match k {
        ClientType::Tower => "tower",
        ClientType::Terminal => "terminal",
        ClientType::Status => "status",
    }
}

/// The next frame, or `None` when the peer closed or the connection was
/// cancelled.
async fn next_frame(
    frames: &mut Frames,
    cancel: &CancellationToken,
) -> Option<Result<Frame, CodecError>> {
    tokio::select! {
        f = frames.next() => f,
        () = cancel.cancelled() => None,
    }
}
