//! Connections to a shellper's socket: connect with a deadline, HELLO /
//! WELCOME, ACQUIRE / GRANT, and the public one-shot operations: the status
//! query and the authenticated terminate.
//!
//! Every step has a deadline because a stopped or wedged shellper still
//! accepts connections (the kernel queues them) but never answers; a Tower
//! or an inspector must never hang on it. A timeout is reported as such and
//! never taken to mean the shellper is gone.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use shellper_protocol::codec::FrameCodec;
use shellper_protocol::msg::{
    Acquire, ClientType, ExitMsg, Grant, Hello, HolderInfo, Release, ReleaseMode, Status,
    StatusRequest, Terminated, Welcome,
};
use shellper_protocol::{Frame, LEASE_PROTOCOL_VERSION, PROTOCOL_VERSION, Token};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::error::{Error, Result};

pub(crate) type Reader = FramedRead<OwnedReadHalf, FrameCodec>;

/// Frame writer without a long-lived buffer. `FramedWrite` keeps an 8 KiB
/// buffer per connection; a Tower's connections send frames of a few dozen
/// bytes, so each frame is encoded into a right-sized buffer and written
/// out, and an idle lease costs nothing here.
#[derive(Debug)]
pub(crate) struct Writer {
    w: OwnedWriteHalf,
}

impl Writer {
    /// Writes one whole frame. Not cancel-safe (a partial write corrupts
    /// the stream): callers never race it in `select!`.
    pub(crate) async fn send(&mut self, f: Frame) -> std::io::Result<()> {
        let bytes = f.to_bytes().map_err(std::io::Error::other)?;
        self.w.write_all(&bytes).await
    }
}

/// Initial read buffer per connection. Lease connections carry frames of a
/// few dozen bytes; a small buffer keeps hundreds of held leases cheap (it
/// grows on demand for a large STATUS).
const READ_BUF: usize = 256;

/// An established, handshaken connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub socket: PathBuf,
    pub reader: Reader,
    pub writer: Writer,
    pub welcome: Welcome,
}

/// What a client asks for in HELLO.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HelloOpts {
    pub client: ClientType,
    pub replay: bool,
    pub data: bool,
}

impl HelloOpts {
    /// A Tower's lease connection: no REPLAY, no DATA, so renewals never
    /// queue behind terminal bytes.
    pub(crate) const LEASE: HelloOpts = HelloOpts {
        client: ClientType::Tower,
        replay: false,
        data: false,
    };
    pub(crate) const STATUS: HelloOpts = HelloOpts {
        client: ClientType::Status,
        replay: false,
        data: false,
    };
    pub(crate) const TERMINAL: HelloOpts = HelloOpts {
        client: ClientType::Terminal,
        replay: true,
        data: true,
    };
}

fn conn_err(socket: &Path, step: &'static str, detail: impl ToString) -> Error {
    Error::Conn {
        socket: socket.to_path_buf(),
        step,
        detail: detail.to_string(),
    }
}

fn timeout_err(socket: &Path, step: &'static str, timeout: Duration) -> Error {
    Error::Timeout {
        socket: socket.to_path_buf(),
        step,
        timeout,
    }
}

/// Connects and completes HELLO/WELCOME before `timeout` passes.
///
/// With `wait_for_socket`, a missing socket file or a refused connection is
/// retried until the deadline (a freshly spawned shellper may not have bound
/// yet); otherwise they fail at once.
pub(crate) async fn connect(
    socket: &Path,
    opts: HelloOpts,
    timeout: Duration,
    wait_for_socket: bool,
) -> Result<Conn> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match tokio::time::timeout_at(deadline, UnixStream::connect(socket)).await {
            Err(_) => return Err(timeout_err(socket, "connect", timeout)),
            Ok(Ok(s)) => break s,
            Ok(Err(e))
                if wait_for_socket
                    && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
            {
                if Instant::now() + Duration::from_millis(10) >= deadline {
                    return Err(conn_err(socket, "connect", e));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Err(e)) => return Err(conn_err(socket, "connect", e)),
        }
    };
    // The scope directory is private, but a socket path can be given
    // explicitly: never talk (and never send a token) to another user.
    let me = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(c) if c.uid() == me => {}
        Ok(c) => {
            return Err(conn_err(
                socket,
                "peer check",
                format!("socket is served by uid {}, not by us (uid {me})", c.uid()),
            ));
        }
        Err(e) => return Err(conn_err(socket, "peer check", e)),
    }
    let (r, w) = stream.into_split();
    // A connection that asked for no terminal bytes streams any it gets
    // anyway (and ignores them): a misbehaving shellper cannot make the
    // Tower buffer a 16 MiB frame per held session. A terminal takes
    // REPLAY whole, as its user reads it.
    let codec = if opts.replay || opts.data {
        FrameCodec::new()
    } else {
        FrameCodec::streaming()
    };
    let mut reader = FramedRead::with_capacity(r, codec, READ_BUF);
    let mut writer = Writer { w };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client_type: opts.client,
        lease: Some(LEASE_PROTOCOL_VERSION),
        replay: Some(opts.replay),
        data: Some(opts.data),
    };
    match tokio::time::timeout_at(deadline, writer.send(Frame::Hello(hello))).await {
        Err(_) => return Err(timeout_err(socket, "HELLO", timeout)),
        Ok(Err(e)) => return Err(conn_err(socket, "HELLO", e)),
        Ok(Ok(())) => {}
    }
    let welcome = loop {
        match next_frame(&mut reader, socket, "WELCOME", deadline, timeout).await? {
            Frame::Welcome(w) => break w,
            Frame::Unknown { .. } | Frame::Ping | Frame::Pong => continue,
            other => {
                return Err(conn_err(
                    socket,
                    "WELCOME",
                    format!("expected WELCOME, got {}", frame_name(&other)),
                ));
            }
        }
    };
    Ok(Conn {
        socket: socket.to_path_buf(),
        reader,
        writer,
        welcome,
    })
}

/// Reads the next frame before `deadline`; EOF, codec errors and ERROR
/// frames become errors naming `step`.
pub(crate) async fn next_frame(
    reader: &mut Reader,
    socket: &Path,
    step: &'static str,
    deadline: Instant,
    timeout: Duration,
) -> Result<Frame> {
    match tokio::time::timeout_at(deadline, reader.next()).await {
        Err(_) => Err(timeout_err(socket, step, timeout)),
        Ok(None) => Err(conn_err(socket, step, "the shellper closed the connection")),
        Ok(Some(Err(e))) => Err(conn_err(socket, step, e)),
        Ok(Some(Ok(Frame::Error(m)))) => Err(Error::Refused {
            socket: socket.to_path_buf(),
            step,
            code: m.code,
            message: m.message,
        }),
        Ok(Some(Ok(f))) => Ok(f),
    }
}

pub(crate) fn frame_name(f: &Frame) -> &'static str {
    f.frame_type().map_or("an unknown frame", |t| t.name())
}

/// Sends ACQUIRE and waits for GRANT. An EXIT frame seen on the way (the
/// child already exited) is returned alongside.
pub(crate) async fn acquire(
    conn: &mut Conn,
    token: &Token,
    holder: HolderInfo,
    timeout: Duration,
) -> Result<(Grant, Option<ExitMsg>)> {
    let deadline = Instant::now() + timeout;
    let socket = conn.socket.clone();
    let acq = Frame::Acquire(Acquire {
        token: token.clone(),
        holder,
    });
    match tokio::time::timeout_at(deadline, conn.writer.send(acq)).await {
        Err(_) => return Err(timeout_err(&socket, "ACQUIRE", timeout)),
        Ok(Err(e)) => return Err(conn_err(&socket, "ACQUIRE", e)),
        Ok(Ok(())) => {}
    }
    let mut exit = None;
    loop {
        match next_frame(&mut conn.reader, &socket, "GRANT", deadline, timeout).await? {
            Frame::Grant(g) => return Ok((g, exit)),
            Frame::Exit(e) => exit = Some(e),
            Frame::Unknown { .. } | Frame::Ping | Frame::Pong | Frame::Replay(_) => {}
            other => {
                return Err(conn_err(
                    &socket,
                    "GRANT",
                    format!("expected GRANT, got {}", frame_name(&other)),
                ));
            }
        }
    }
}

/// Asks a shellper for its STATUS over a fresh `status` connection: connect,
/// HELLO (status), WELCOME, STATUS_REQUEST, STATUS, all within `timeout`.
///
/// Needs no token and changes nothing, so an inspector can call it on every
/// socket of a scope while a Tower holds them. A stopped or wedged shellper
/// yields [`Error::Timeout`], never a hang.
///
/// ```no_run
/// # async fn f() -> tower_client::Result<()> {
/// use std::time::Duration;
/// let st = tower_client::query_status(
///     std::path::Path::new("/run/user/1000/shellper/sh-0a1b2c3d.sock"),
///     Duration::from_millis(500),
/// ).await?;
/// println!("{:?} epoch {} child {:?}", st.phase, st.epoch, st.child_pid);
/// # Ok(()) }
/// ```
pub async fn query_status(socket: &Path, timeout: Duration) -> Result<Status> {
    let deadline = Instant::now() + timeout;
    let mut conn = connect(socket, HelloOpts::STATUS, timeout, false).await?;
    match tokio::time::timeout_at(
        deadline,
        conn.writer.send(Frame::StatusRequest(StatusRequest {})),
    )
    .await
    {
        Err(_) => return Err(timeout_err(socket, "STATUS_REQUEST", timeout)),
        Ok(Err(e)) => return Err(conn_err(socket, "STATUS_REQUEST", e)),
        Ok(Ok(())) => {}
    }
    loop {
        match next_frame(&mut conn.reader, socket, "STATUS", deadline, timeout).await? {
            Frame::Status(s) => return Ok(*s),
            // Anything else (EXIT, unknown types) is not for us.
            _ => continue,
        }
    }
}

/// How an authenticated terminate ([`terminate_with_token`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminateOutcome {
    /// The shellper ran its kill ladder and reported TERMINATED.
    Terminated(Terminated),
    /// It accepted RELEASE and closed the connection without a report (it
    /// may have exited before sending one). Not a confirmation: check the
    /// process (pid + start time) to know whether it is gone.
    Closed,
}

/// Terminates the shellper on `socket` with its lease `token`, from outside
/// any [`Tower`](crate::Tower): connect, peer uid check, HELLO
/// `{clientType:"tower", lease:1, replay:false, data:false}`, WELCOME,
/// ACQUIRE (as `holder`, with this process's pid), GRANT, RELEASE{epoch,
/// Terminate}, then wait for TERMINATED.
///
/// **This evicts a live holder.** ACQUIRE with the right token always wins:
/// a Tower holding the lease gets REVOKED and loses the shellper. That is
/// why `leasectl reap` refuses a held shellper unless given `--force`; a
/// Tower terminates its own shellpers with
/// [`ShellperHandle::terminate`](crate::ShellperHandle::terminate).
///
/// `handshake` bounds connect..GRANT (a stopped or wedged shellper accepts
/// connections but never answers: that is [`Error::Timeout`], never a
/// hang); `ladder` bounds the wait for TERMINATED after RELEASE (give the
/// shellper's kill grace plus a margin). A legacy shellper (WELCOME says
/// `leased:false`) is refused before the token is sent; a wrong token is
/// [`Error::Refused`]. The token is never sent to another user's socket.
///
/// ```no_run
/// # async fn f(token: tower_client::Token) -> tower_client::Result<()> {
/// use std::time::Duration;
/// use tower_client::{TerminateOutcome, terminate_with_token};
/// let socket = std::path::Path::new("/run/user/1000/shellper/sh-0a1b2c3d.sock");
/// match terminate_with_token(socket, &token, "my-tool", Duration::from_secs(1), Duration::from_secs(5)).await? {
///     TerminateOutcome::Terminated(r) => println!("{} signalled, {} survivors", r.signalled, r.survivors),
///     TerminateOutcome::Closed => println!("closed without a report: check /proc"),
/// }
/// # Ok(()) }
/// ```
pub async fn terminate_with_token(
    socket: &Path,
    token: &Token,
    holder: &str,
    handshake: Duration,
    ladder: Duration,
) -> Result<TerminateOutcome> {
    let deadline = Instant::now() + handshake;
    let mut conn = connect(socket, HelloOpts::LEASE, handshake, false).await?;
    if conn.welcome.lease.as_ref().is_some_and(|l| !l.leased) {
        return Err(conn_err(
            socket,
            "WELCOME",
            "legacy shellper (no lease, no token)",
        ));
    }
    let holder = HolderInfo {
        name: holder.to_string(),
        pid: std::process::id(),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let (grant, _exit) = acquire(&mut conn, token, holder, left).await?;
    let deadline = Instant::now() + ladder;
    let release = Frame::Release(Release {
        epoch: grant.epoch,
        mode: ReleaseMode::Terminate,
    });
    match tokio::time::timeout_at(deadline, conn.writer.send(release)).await {
        Err(_) => return Err(timeout_err(socket, "RELEASE", ladder)),
        Ok(Err(e)) => return Err(conn_err(socket, "RELEASE", e)),
        Ok(Ok(())) => {}
    }
    loop {
        match tokio::time::timeout_at(deadline, conn.reader.next()).await {
            Err(_) => return Err(timeout_err(socket, "TERMINATED", ladder)),
            Ok(None) => return Ok(TerminateOutcome::Closed),
            Ok(Some(Err(e))) => return Err(conn_err(socket, "TERMINATED", e)),
            Ok(Some(Ok(Frame::Terminated(t)))) => return Ok(TerminateOutcome::Terminated(t)),
            Ok(Some(Ok(Frame::Error(m)))) => {
                return Err(Error::Refused {
                    socket: socket.to_path_buf(),
                    step: "RELEASE",
                    code: m.code,
                    message: m.message,
                });
            }
            // EXIT, RENEWED, unknown types: not the answer we wait for.
            Ok(Some(Ok(_))) => continue,
        }
    }
}
