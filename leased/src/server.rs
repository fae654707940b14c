//! The lease socket of an embedded (PTY-less) leased process: bind, accept
//! (same uid only, at most 256 connections; both in [`crate::sock`], shared
//! with the PTY shellper), HELLO within the handshake
//! timeout, then the lease frames (SPEC.md §6.2, §7, §8). Terminal frames
//! (DATA, RESIZE, SIGNAL, SPAWN) are refused with `Forbidden`: there is no
//! PTY here. Each connection has one reader and one writer task; the writer
//! is fed by a bounded channel so a peer that stops reading is dropped
//! instead of pinning memory, and lease replies never wait behind anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use shellper_protocol::Frame;
use shellper_protocol::codec::{CodecError, FrameCodec};
use shellper_protocol::lease::ConnId;
use shellper_protocol::msg::{
    ClientInfo, ClientType, ErrorCode, Hello, Revoked, Status, Welcome, WelcomeLease,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sock::{self, Half, Listener, Slots, Stream, error_frame};
use crate::{Describe, LeaseHandle, Worker, ms};

/// Most simultaneous connections (SPEC.md §7).
const MAX_CONNECTIONS: usize = 256;
/// Extra slots, used only when the [`MAX_CONNECTIONS`] are taken, and kept
/// for status readers and the lease holder, so idle connections can never
/// lock the Tower out of renewing (SPEC.md §7). A connection in a reserved
/// slot must earn it: a status reader may idle at most the handshake
/// timeout between requests, a tower must hold the lease once the handshake
/// timeout has passed, a terminal is refused.
const RESERVED_CONNECTIONS: usize = 16;
/// Frames queued for one connection before it counts as not reading (SPEC.md §7).
const MAX_QUEUED: usize = 1024;
/// How long the exit path waits for final frames (TERMINATED) to be written.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);

/// Who we are, for WELCOME and STATUS.
#[derive(Debug)]
pub(crate) struct Identity {
    pub pid: u32,
    pub start_ticks: u64,
    pub started_at_ms: u64,
    pub describe: Describe,
}

#[derive(Debug)]
struct Client {
    kind: ClientType,
    peer_pid: u32,
    tx: mpsc::Sender<Frame>,
    cancel: CancellationToken,
}

/// State shared by every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    lease: LeaseHandle,
    worker: Arc<Mutex<Worker>>,
    me: Identity,
    handshake_timeout: Duration,
    write_stall: Duration,
    clients: Mutex<HashMap<ConnId, Client>>,
    tracker: TaskTracker,
    next_conn: AtomicU64,
    slots: Slots,
    my_uid: u32,
}

impl Shared {
    pub(crate) fn new(
        lease: LeaseHandle,
        worker: Arc<Mutex<Worker>>,
        me: Identity,
        handshake_timeout: Duration,
        write_stall: Duration,
    ) -> Self {
        Shared {
            lease,
            worker,
            me,
            handshake_timeout,
            write_stall,
            clients: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            slots: Slots::new(MAX_CONNECTIONS, RESERVED_CONNECTIONS),
            my_uid: rustix::process::geteuid().as_raw(),
        }
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Client>> {
        // A panic while holding this lock would be a bug elsewhere; the map
        // itself stays consistent (single inserts/removes), so keep serving.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `f` for connection `conn`; a peer whose queue is full is dropped.
    pub(crate) fn send(&self, conn: ConnId, f: Frame) -> bool {
        let clients = self.clients();
        let Some(c) = clients.get(&conn) else {
            return false;
        };
        if c.tx.try_send(f).is_err() {
            c.cancel.cancel();
            return false;
        }
        true
    }

    /// Ends every connection after its queued frames are written (bounded).
    pub(crate) async fn close_all(&self) {
        let all: Vec<Client> = self.clients().drain().map(|(_, c)| c).collect();
        // Cancelling ends the readers; each writer still writes what is
        // queued (its select is biased to the queue) and then shuts down.
        for c in all {
            c.cancel.cancel();
        }
        self.tracker.close();
        let _ = tokio::time::timeout(
            FLUSH_ON_CLOSE + Duration::from_millis(200),
            self.tracker.wait(),
        )
        .await;
    }

    async fn status(&self) -> Option<Status> {
        let snap = self.lease.snapshot().await?;
        let cfg = self.lease.config();
        let worker = self
            .worker
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let (clients, holder_peer_pid) = {
            let map = self.clients();
            let list = map
                .iter()
                .map(|(id, c)| ClientInfo {
                    kind: c.kind,
                    pid: c.peer_pid,
                    holder: Some(*id) == snap.holder,
                })
                .collect();
            (
                list,
                snap.holder.and_then(|h| map.get(&h).map(|c| c.peer_pid)),
            )
        };
        let d = &self.me.describe;
        Some(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            shellper_pid: self.me.pid,
            shellper_start_ticks: self.me.start_ticks,
            started_at_ms: self.me.started_at_ms,
            child_pid: worker.pid,
            child: worker.state,
            command: d.command.clone(),
            args: d.args.clone(),
            cwd: d.cwd.clone(),
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
        })
    }
}

/// Accepts connections until `stop` is cancelled.
pub(crate) async fn accept_loop(listener: Listener, shared: Arc<Shared>, stop: CancellationToken) {
    let tracker = shared.tracker.clone();
    sock::accept_loop(listener, tracker, stop, move |stream| {
        serve(shared.clone(), stream)
    })
    .await;
}

/// Writes queued frames until the queue closes (then shuts the write side
/// down so the peer sees EOF after the last frame) or the peer stalls.
///
/// A failed or stalled write ends the connection whole (SPEC.md §7): the
/// queue is closed, the reader is cancelled (so the slot is freed and the
/// client unregistered) and the socket is shut down both ways, so nothing
/// follows a half-written frame and the peer sees the end at once.
async fn writer(
    mut rx: mpsc::Receiver<Frame>,
    mut w: Half,
    cancel: CancellationToken,
    stall: Duration,
) {
    let mut buf = bytes::BytesMut::new();
    loop {
        let next = tokio::select! {
            biased;
            f = rx.recv() => f,
            () = cancel.cancelled() => None,
        };
        let Some(frame) = next else { break };
        if !write_frame(&mut w, &mut buf, &frame, stall).await {
            abort_connection(&mut rx, &w, &cancel);
            return;
        }
    }
    // Frames pushed just before the close (TERMINATED, ERROR) still go out.
    rx.close();
    let flushed = tokio::time::timeout(FLUSH_ON_CLOSE, async {
        while let Some(frame) = rx.recv().await {
            if !write_frame(&mut w, &mut buf, &frame, stall).await {
                return false;
            }
        }
        true
    })
    .await;
    match flushed {
        Ok(true) => w.shutdown(rustix::net::Shutdown::Write),
        _ => abort_connection(&mut rx, &w, &cancel),
    }
}

/// Writes one frame within `stall`; false when the connection cannot go on.
async fn write_frame(
    w: &mut Half,
    buf: &mut bytes::BytesMut,
    frame: &Frame,
    stall: Duration,
) -> bool {
    buf.clear();
    if let Err(e) = frame.encode_into(buf) {
        // Our own frame, over its limit: a bug, not the peer's fault.
        tracing::warn!(error = %e, "dropping unencodable frame");
        return true;
    }
    match tokio::time::timeout(stall, w.write_all(buf)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "write failed; closing the connection");
            false
        }
        Err(_) => {
            tracing::info!(
                stall_ms = ms(stall),
                "peer accepted no bytes within the write stall limit; closing the connection"
            );
            false
        }
    }
}

/// Ends a connection whose writer cannot go on.
fn abort_connection(rx: &mut mpsc::Receiver<Frame>, w: &Half, cancel: &CancellationToken) {
    rx.close();
    cancel.cancel();
    w.shutdown(rustix::net::Shutdown::Both);
}

/// Serves one connection from accept to close.
async fn serve(shared: Arc<Shared>, stream: Stream) {
    let Some(peer_pid) = sock::peer_pid_if_same_uid(&stream, shared.my_uid) else {
        return;
    };
    let Some(slot) = shared.slots.acquire() else {
        tracing::warn!(peer_pid, "too many connections; refusing");
        sock::refuse_busy(stream).await;
        return;
    };
    let reserved = slot.reserved;
    let stream = Arc::new(stream);
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(MAX_QUEUED);
    let cancel = CancellationToken::new();
    shared.tracker.spawn(writer(
        rx,
        Half(stream.clone()),
        cancel.clone(),
        shared.write_stall,
    ));
    let mut frames = FramedRead::new(Half(stream), FrameCodec::new());
    shared.clients().insert(
        id,
        Client {
            kind: ClientType::Status,
            peer_pid,
            tx,
            cancel: cancel.clone(),
        },
    );
    if let Some(hello) = handshake(&shared, id, &mut frames, &cancel).await {
        if reserved && hello.client_type == ClientType::Terminal {
            shared.send(
                id,
                error_frame(
                    ErrorCode::Busy,
                    "too many connections: the remaining slots are reserved for status \
                     readers and the lease holder",
                ),
            );
            shared.clients().remove(&id);
            shared.lease.disconnected(id);
            cancel.cancel();
            return;
        }
        if let Some(c) = shared.clients().get_mut(&id) {
            c.kind = hello.client_type;
        }
        let welcome = Welcome {
            version: shellper_protocol::PROTOCOL_VERSION,
            pid: shared
                .worker
                .lock()
                .map(|w| w.pid.map_or(-1, i64::from))
                .unwrap_or(-1),
            cols: 80,
            rows: 24,
            start_time: shared.me.started_at_ms,
            last_data_at: None,
            always_sends_replay: false,
            lease: hello.lease.map(|_| WelcomeLease {
                version: shellper_protocol::LEASE_PROTOCOL_VERSION,
                leased: shared.lease.is_leased(),
                shellper_pid: shared.me.pid,
            }),
        };
        shared.send(id, Frame::Welcome(welcome));
        if hello.client_type == ClientType::Tower && !shared.lease.is_leased() {
            legacy_acquire(&shared, id).await;
        }
        read_loop(
            &shared,
            id,
            hello.client_type,
            &mut frames,
            &cancel,
            reserved,
        )
        .await;
    }
    shared.clients().remove(&id);
    shared.lease.disconnected(id);
}

async fn next_frame(
    frames: &mut FramedRead<Half, FrameCodec>,
    cancel: &CancellationToken,
) -> Option<Result<Frame, CodecError>> {
    tokio::select! {
        f = frames.next() => f,
        () = cancel.cancelled() => None,
    }
}

fn protocol_error(shared: &Shared, id: ConnId, e: CodecError) {
    if let CodecError::Frame(fe) = e {
        tracing::info!(conn = id, error = %fe, "protocol error; closing connection");
        shared.lease.protocol_error();
        shared.send(id, error_frame(ErrorCode::Protocol, fe.to_string()));
    }
}

async fn handshake(
    shared: &Shared,
    id: ConnId,
    frames: &mut FramedRead<Half, FrameCodec>,
    cancel: &CancellationToken,
) -> Option<Hello> {
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    loop {
        let f = match tokio::time::timeout_at(deadline, next_frame(frames, cancel)).await {
            Err(_) => {
                shared.send(
                    id,
                    error_frame(ErrorCode::Protocol, "handshake timeout: send HELLO first"),
                );
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                protocol_error(shared, id, e);
                return None;
            }
            Ok(Some(Ok(f))) => f,
        };
        match f {
            Frame::Hello(h) => return Some(h),
            Frame::Acquire(_) | Frame::Renew(_) | Frame::Release(_) | Frame::StatusRequest(_) => {
                shared.send(
                    id,
                    error_frame(ErrorCode::NotLeased, "send HELLO before lease requests"),
                );
            }
            _ => {}
        }
    }
}

async fn legacy_acquire(shared: &Shared, id: ConnId) {
    if let Ok(g) = shared.lease.acquire_legacy(id).await
        && let Some((old, old_epoch)) = g.revoked
    {
        shared.send(
            old,
            Frame::Revoked(Revoked {
                old_epoch,
                new_epoch: g.epoch,
            }),
        );
        if let Some(c) = shared.clients().get(&old) {
            c.cancel.cancel();
        }
    }
}

/// Reads and dispatches frames until the connection ends. A connection in
/// a reserved slot must earn it ([`RESERVED_CONNECTIONS`]).
async fn read_loop(
    shared: &Shared,
    id: ConnId,
    kind: ClientType,
    frames: &mut FramedRead<Half, FrameCodec>,
    cancel: &CancellationToken,
    reserved: bool,
) {
    let mut deadline = reserved.then(|| tokio::time::Instant::now() + shared.handshake_timeout);
    loop {
        let item = match deadline {
            None => next_frame(frames, cancel).await,
            Some(d) => match tokio::time::timeout_at(d, next_frame(frames, cancel)).await {
                Ok(item) => item,
                Err(_) => {
                    if kind == ClientType::Tower && shared.lease.is_holder(id).await {
                        deadline = None;
                        continue;
                    }
                    tracing::info!(conn = id, ?kind, "reserved slot unused; closing");
                    shared.send(
                        id,
                        error_frame(
                            ErrorCode::Busy,
                            "reserved connection slot: idle status reader or tower without the lease",
                        ),
                    );
                    return;
                }
            },
        };
        let Some(item) = item else {
            return;
        };
        match item {
            Ok(frame) => dispatch(shared, id, frame).await,
            Err(e) => {
                protocol_error(shared, id, e);
                return;
            }
        }
        if deadline.is_some() && kind == ClientType::Status {
            deadline = Some(tokio::time::Instant::now() + shared.handshake_timeout);
        }
    }
}

async fn dispatch(shared: &Shared, id: ConnId, frame: Frame) {
    match frame {
        Frame::Data(_) | Frame::Resize(_) | Frame::Signal(_) | Frame::Spawn(_) => {
            shared.send(
                id,
                error_frame(
                    ErrorCode::Forbidden,
                    "no terminal here: this leased process has no PTY",
                ),
            );
        }
        Frame::Ping => {
            shared.send(id, Frame::Pong);
        }
        f @ (Frame::Acquire(_) | Frame::Renew(_) | Frame::Release(_)) => {
            if let Some(a) = shared.lease.answer(id, f).await {
                if let Some(reply) = a.reply {
                    shared.send(id, reply);
                }
                if let Some((old, revoked)) = a.revoked {
                    shared.send(old, revoked);
                }
            }
        }
        Frame::StatusRequest(_) => {
            if let Some(s) = shared.status().await {
                shared.send(id, Frame::Status(Box::new(s)));
            }
        }
        // Frames only a shellper sends, a second HELLO, PONG, unknown types: ignored.
        _ => {}
    }
}
