//! The Tower's side of the control socket: accept (same uid only, bounded
//! in number), read one bounded line at a time with a deadline, answer,
//! and leave the scope as it was on any refusal.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::wire::{
    self, ControlLimits, ErrorCode, MAX_REQUEST_BYTES, Request, Response, SessionInfo, Spawned,
    TerminatedInfo, TowerInfo, WireError,
};
use crate::error::{Error, Result};
use crate::holder::{LeaseState, ShellperHandle};
use crate::scope::Scope;
use crate::tower::Tower;

/// File name of the control socket inside a scope.
pub const CONTROL_SOCKET: &str = "tower.ctl";

/// Control connections served at once; more are answered `busy` and
/// closed.
pub const MAX_CONNECTIONS: usize = 16;

/// A request line must arrive whole within this of the connection (or of
/// the previous response): a client that trickles bytes or says nothing
/// holds a connection slot for no longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on writing one response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopping server waits for requests in flight (a spawn is
/// bounded by the Tower's spawn timeout, a terminate by its own).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The control socket of `scope`.
pub fn socket_path(scope: &Scope) -> PathBuf {
    scope.dir().join(CONTROL_SOCKET)
}

/// What the server did, for the application to report (minitower prints
/// one event line for each). Never carries a request's environment.
#[derive(Debug, Clone)]
pub enum ControlNote {
    /// A session was spawned on request and is held.
    Spawned {
        handle: ShellperHandle,
        peer_pid: Option<i32>,
    },
    /// A session was terminated on request (death confirmed).
    Terminated {
        info: TerminatedInfo,
        peer_pid: Option<i32>,
    },
    /// A request was refused.
    Refused {
        op: Option<&'static str>,
        code: ErrorCode,
        peer_pid: Option<i32>,
    },
}

impl ControlNote {
    /// The event line a Tower prints for it (minitower's format), if any:
    /// `spawned` (with `"via":"control"`) and `control_refused`; a
    /// terminate is reported by the Tower's own `terminated` event.
    pub fn event_json(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        match self {
            ControlNote::Spawned { handle, peer_pid } => {
                let i = handle.info();
                Some(
                    json!({"event":"spawned","id":i.id,"pid":i.pid,"child_pid":i.child_pid,
                    "socket":i.socket,"epoch":handle.epoch(),"via":"control","peer_pid":peer_pid}),
                )
            }
            ControlNote::Terminated { .. } => None,
            ControlNote::Refused { op, code, peer_pid } => {
                Some(json!({"event":"control_refused","op":op,"code":code,"peer_pid":peer_pid}))
            }
        }
    }
}

/// A bound control socket, not yet serving. Removes its socket file when
/// dropped (only if the file is still the one it bound).
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    ident: (u64, u64),
    limits: ControlLimits,
}

impl ControlServer {
    /// Binds `<scope>/tower.ctl` (mode 0600) for `tower`. The Tower holds
    /// the scope's lock, so a socket file already there is a dead Tower's
    /// and is replaced; anything else at that path is refused.
    pub fn bind(tower: &Tower, limits: ControlLimits) -> Result<ControlServer> {
        let path = socket_path(tower.scope());
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io("removing a stale control socket", &path, e))?;
            }
            Ok(_) => {
                return Err(Error::UnsafeScope {
                    path: path.clone(),
                    reason: "is in the way of the control socket and is not a socket; move it away"
                        .into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("inspecting the control socket", &path, e)),
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io("binding the control socket", &path, e))?;
        // The scope is 0700 already; the socket is private on its own too.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("chmod 0600 of the control socket", &path, e))?;
        let m = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::io("inspecting the control socket", &path, e))?;
        Ok(ControlServer {
            listener,
            path,
            ident: (m.dev(), m.ino()),
            limits,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `cancel`, then refuses what waits (`stopping`), lets
    /// requests in flight finish (at most [`DRAIN_TIMEOUT`]), removes the
    /// socket file and returns.
    pub async fn serve<F>(self, tower: Arc<Tower>, cancel: CancellationToken, note: F)
    where
        F: Fn(ControlNote) + Send + Sync + 'static,
    {
        let note = Arc::new(note);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        let me = rustix::process::geteuid().as_raw();
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = self.listener.accept() => a,
                // Reap finished connection tasks as we go.
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: say so and back off rather than spin.
                    tracing::warn!("control socket {}: accept: {e}", self.path.display());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let cred = stream.peer_cred().ok();
            let peer_pid = cred.as_ref().and_then(|c| c.pid());
            if cred.as_ref().map(|c| c.uid()) != Some(me) {
                note(ControlNote::Refused {
                    op: None,
                    code: ErrorCode::Forbidden,
                    peer_pid,
                });
                conns.spawn(refuse(
                    stream,
                    WireError::new(
                        ErrorCode::Forbidden,
                        format!("this Tower serves uid {me} only"),
                    ),
                ));
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                note(ControlNote::Refused {
                    op: None,
                    code: ErrorCode::Busy,
                    peer_pid,
                });
                conns.spawn(refuse(
                    stream,
                    WireError::new(
                        ErrorCode::Busy,
                        format!("{MAX_CONNECTIONS} control connections are open; retry shortly"),
                    ),
                ));
                continue;
            };
            let conn = Conn {
                tower: tower.clone(),
                limits: self.limits,
                cancel: cancel.clone(),
                note: note.clone(),
                peer_pid,
            };
            conns.spawn(async move {
                conn.run(stream).await;
                drop(permit);
            });
        }
        // Stop accepting first, so a client is refused by the kernel rather
        // than left waiting on a backlog nobody reads.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.ident
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Answers one error and closes (bounded by the write timeout).
async fn refuse(mut stream: UnixStream, e: WireError) {
    let line = Response::err(None, e).to_line();
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line.as_bytes())).await;
    let _ = stream.shutdown().await;
}

struct Conn<F> {
    tower: Arc<Tower>,
    limits: ControlLimits,
    cancel: CancellationToken,
    note: Arc<F>,
    peer_pid: Option<i32>,
}

/// What reading one request line gave.
enum Line {
    Request(Vec<u8>),
    Eof,
    TooLarge,
    Timeout,
    Stopping,
    Failed,
}

impl<F: Fn(ControlNote) + Send + Sync + 'static> Conn<F> {
    async fn run(self, stream: UnixStream) {
        let (r, mut w) = stream.into_split();
        let mut reader = BufReader::new(r);
        loop {
            let (resp, close) = match self.read_line(&mut reader).await {
                Line::Eof | Line::Failed => return,
                Line::Request(line) => (self.answer(&line).await, false),
                Line::TooLarge => (
                    self.refused(
                        None,
                        WireError::new(
                            ErrorCode::TooLarge,
                            format!(
                                "request line over {MAX_REQUEST_BYTES} bytes; nothing was done and the connection is closed"
                            ),
                        ),
                    ),
                    true,
                ),
                Line::Timeout => (
                    self.refused(
                        None,
                        WireError::new(
                            ErrorCode::Timeout,
                            format!(
                                "no complete request line within {}s; the connection is closed",
                                REQUEST_TIMEOUT.as_secs()
                            ),
                        ),
                    ),
                    true,
                ),
                Line::Stopping => (
                    self.refused(
                        None,
                        WireError::new(ErrorCode::Stopping, "the Tower is stopping"),
                    ),
                    true,
                ),
            };
            let line = resp.to_line();
            match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(line.as_bytes())).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            if close {
                let _ = w.shutdown().await;
                return;
            }
        }
    }

    /// One line of at most [`MAX_REQUEST_BYTES`], within
    /// [`REQUEST_TIMEOUT`]. A final line without its newline counts (a
    /// client that half-closes after writing).
    async fn read_line(&self, reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Line {
        let mut buf = Vec::new();
        let limit = MAX_REQUEST_BYTES as u64;
        let read = async {
            let mut take = (&mut *reader).take(limit);
            take.read_until(b'\n', &mut buf).await
        };
        let r = tokio::select! {
            r = tokio::time::timeout(REQUEST_TIMEOUT, read) => r,
            _ = self.cancel.cancelled() => return Line::Stopping,
        };
        match r {
            Err(_) => Line::Timeout,
            Ok(Err(_)) => Line::Failed,
            Ok(Ok(0)) => Line::Eof,
            Ok(Ok(_)) if buf.last() == Some(&b'\n') => {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                Line::Request(buf)
            }
            Ok(Ok(n)) if n as u64 >= limit => Line::TooLarge,
            Ok(Ok(_)) => Line::Request(buf),
        }
    }

    fn refused(&self, op: Option<&'static str>, e: WireError) -> Response {
        (self.note)(ControlNote::Refused {
            op,
            code: e.code,
            peer_pid: self.peer_pid,
        });
        Response::err(op, e)
    }

    fn tower_info(&self) -> TowerInfo {
        TowerInfo {
            pid: std::process::id(),
            holder: self.tower.config().holder_name.clone(),
            scope: self.tower.scope().dir().display().to_string(),
        }
    }

    async fn answer(&self, line: &[u8]) -> Response {
        let req = match wire::parse_request(line) {
            Ok(r) => r,
            Err(e) => return self.refused(None, e),
        };
        let op = req.op();
        if self.cancel.is_cancelled() || self.tower.scope_lost() {
            return self.refused(
                Some(op),
                WireError::new(ErrorCode::Stopping, "the Tower is stopping"),
            );
        }
        match req {
            Request::List(_) => {
                let mut r = Response::ok(op, self.tower_info());
                r.sessions = Some(self.tower.handles().iter().map(session_info).collect());
                r
            }
            Request::Spawn(s) => {
                let spec = match wire::spawn_spec(&s, &self.tower.config().lease, &self.limits) {
                    Ok(spec) => spec,
                    Err(e) => return self.refused(Some(op), e),
                };
                if let Some(cwd) = spec.cwd.clone()
                    && let Err(e) = check_dir(cwd).await
                {
                    return self.refused(Some(op), e);
                }
                match self.tower.spawn(spec).await {
                    Ok(h) => {
                        let i = h.info();
                        let mut r = Response::ok(op, self.tower_info());
                        r.spawned = Some(Spawned {
                            event: "spawned".into(),
                            id: i.id.clone(),
                            pid: i.pid,
                            child_pid: i.child_pid,
                            socket: i.socket.display().to_string(),
                            epoch: h.epoch(),
                        });
                        (self.note)(ControlNote::Spawned {
                            handle: h,
                            peer_pid: self.peer_pid,
                        });
                        r
                    }
                    Err(e) => self.refused(
                        Some(op),
                        WireError::new(ErrorCode::SpawnFailed, e.to_string()),
                    ),
                }
            }
            Request::Terminate(t) => {
                let Some(h) = self.tower.handle(&t.id) else {
                    return self.refused(
                        Some(op),
                        WireError::new(
                            ErrorCode::NotHeld,
                            format!(
                                "{} is not held by this Tower (pid {}); `leasectl reap {}` terminates a shellper no Tower holds",
                                t.id.chars().take(40).collect::<String>().escape_debug(),
                                std::process::id(),
                                t.id.chars().take(40).collect::<String>().escape_debug(),
                            ),
                        ),
                    );
                };
                let max = self.limits.max_terminate_timeout;
                let timeout = match t.timeout_ms.map(Duration::from_millis) {
                    Some(d) if d.is_zero() || d > max => {
                        return self.refused(
                            Some(op),
                            WireError::new(
                                ErrorCode::Limit,
                                format!(
                                    "timeout_ms must be in 1..={} on this Tower",
                                    max.as_millis()
                                ),
                            ),
                        );
                    }
                    Some(d) => d,
                    None => default_terminate_timeout(&self.limits),
                };
                match h.terminate(timeout).await {
                    Ok(rep) => {
                        let (signalled, survivors, elapsed_ms) = rep
                            .report
                            .as_ref()
                            .map_or((0, 0, 0), |t| (t.signalled, t.survivors, t.elapsed_ms));
                        let info = TerminatedInfo {
                            id: t.id.clone(),
                            signalled,
                            survivors,
                            elapsed_ms,
                            exit_code: rep.exit.code,
                            exit_signal: rep.exit.signal,
                        };
                        (self.note)(ControlNote::Terminated {
                            info: info.clone(),
                            peer_pid: self.peer_pid,
                        });
                        let mut r = Response::ok(op, self.tower_info());
                        r.terminated = Some(info);
                        r
                    }
                    Err(e) => self.refused(
                        Some(op),
                        WireError::new(ErrorCode::TerminateFailed, e.to_string()),
                    ),
                }
            }
        }
    }
}

/// The wait for a terminate that names none: long enough for the longest
/// kill grace this Tower allows and its sweeps.
pub fn default_terminate_timeout(limits: &ControlLimits) -> Duration {
    (limits.max_kill_grace + Duration::from_secs(10)).min(limits.max_terminate_timeout)
}

/// A session as `list` reports it.
pub fn session_info(h: &ShellperHandle) -> SessionInfo {
    let i = h.info();
    SessionInfo {
        id: i.id.clone(),
        pid: i.pid,
        child_pid: i.child_pid,
        socket: i.socket.display().to_string(),
        epoch: h.epoch(),
        state: match h.state() {
            LeaseState::Held => "held",
            LeaseState::Unresponsive => "unresponsive",
            LeaseState::Lapsed => "lapsed",
            LeaseState::Ended => "ended",
        }
        .into(),
        command: i.command.clone(),
        args: i.args.clone(),
        cwd: i.cwd.clone(),
    }
}

/// The working directory must exist and be a directory: the shellper would
/// fail later with a less helpful message (and after being started). On
/// the blocking pool, bounded (a hung network mount must not wedge us).
async fn check_dir(dir: PathBuf) -> std::result::Result<(), WireError> {
    let shown = dir.display().to_string();
    let stat = tokio::task::spawn_blocking(move || std::fs::metadata(&dir));
    match tokio::time::timeout(Duration::from_secs(2), stat).await {
        Ok(Ok(Ok(m))) if m.is_dir() => Ok(()),
        Ok(Ok(Ok(_))) => Err(WireError::new(
            ErrorCode::BadRequest,
            format!("spawn: cwd {shown} is not a directory"),
        )),
        Ok(Ok(Err(e))) => Err(WireError::new(
            ErrorCode::BadRequest,
            format!("spawn: cwd {shown}: {e}"),
        )),
        _ => Err(WireError::new(
            ErrorCode::BadRequest,
            format!("spawn: cwd {shown}: no answer from the filesystem within 2s"),
        )),
    }
}
