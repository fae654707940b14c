//! The one lease operation leasectl performs: an authenticated terminate.
//!
//! connect → HELLO `{clientType:"tower", lease:1, replay:false, data:false}`
//! → WELCOME → ACQUIRE(token) → GRANT{epoch} → RELEASE{epoch, Terminate} →
//! TERMINATED. ACQUIRE evicts a live holder (it gets REVOKED), which is why
//! `reap` refuses a held shellper without `--force`.
//!
//! tower-client keeps its connection helpers crate-private (only
//! `query_status` is public), so this small client lives here behind one
//! function. It belongs in tower-client as a public
//! `terminate_with_token(socket, token, timeout)`; see the crate README.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shellper_protocol::codec::FrameCodec;
use shellper_protocol::msg::{
    Acquire, ClientType, Hello, HolderInfo, Release, ReleaseMode, Terminated,
};
use shellper_protocol::{Frame, LEASE_PROTOCOL_VERSION, PROTOCOL_VERSION, Token};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Outcome of an authenticated terminate.
#[derive(Debug)]
pub enum TerminateOutcome {
    /// The shellper reported TERMINATED (its own ladder ran).
    Terminated(Terminated),
    /// It accepted RELEASE and closed the connection without a report
    /// (it may have exited before sending it); /proc decides.
    Closed,
}

/// Why an authenticated terminate failed (the caller falls back to signals).
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct TerminateError {
    pub step: &'static str,
    pub detail: String,
}

fn err(step: &'static str, detail: impl ToString) -> TerminateError {
    TerminateError {
        step,
        detail: detail.to_string(),
    }
}

/// Terminates the shellper on `socket` with its lease `token`.
///
/// `handshake` bounds connect..GRANT (a wedged shellper must not hang us);
/// `ladder` bounds the wait for TERMINATED (the shellper's kill grace plus
/// margin).
pub async fn terminate_with_token(
    socket: &Path,
    token: &Token,
    handshake: Duration,
    ladder: Duration,
) -> Result<TerminateOutcome, TerminateError> {
    let deadline = Instant::now() + handshake;
    let stream = tokio::time::timeout_at(deadline, UnixStream::connect(socket))
        .await
        .map_err(|_| err("connect", format!("no answer within {handshake:?}")))?
        .map_err(|e| err("connect", e))?;
    // Never hand a token to another user's process.
    let me = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(c) if c.uid() == me => {}
        Ok(c) => {
            return Err(err(
                "peer check",
                format!("socket served by uid {}", c.uid()),
            ));
        }
        Err(e) => return Err(err("peer check", e)),
    }
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, FrameCodec::new());
    let mut writer = FramedWrite::new(w, FrameCodec::new());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client_type: ClientType::Tower,
        lease: Some(LEASE_PROTOCOL_VERSION),
        replay: Some(false),
        data: Some(false),
    };
    timed(deadline, "HELLO", writer.send(Frame::Hello(hello))).await?;
    loop {
        match next(&mut reader, deadline, "WELCOME").await? {
            Frame::Welcome(w) => {
                if w.lease.as_ref().is_some_and(|l| !l.leased) {
                    return Err(err("WELCOME", "legacy shellper (no lease, no token)"));
                }
                break;
            }
            _ => continue,
        }
    }
    let acquire = Frame::Acquire(Acquire {
        token: token.clone(),
        holder: HolderInfo {
            name: "leasectl-reap".into(),
            pid: std::process::id(),
        },
    });
    timed(deadline, "ACQUIRE", writer.send(acquire)).await?;
    let epoch = loop {
        match next(&mut reader, deadline, "GRANT").await? {
            Frame::Grant(g) => break g.epoch,
            _ => continue,
        }
    };
    let deadline = Instant::now() + ladder;
    let release = Frame::Release(Release {
        epoch,
        mode: ReleaseMode::Terminate,
    });
    timed(deadline, "RELEASE", writer.send(release)).await?;
    loop {
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => return Err(err("TERMINATED", format!("no report within {ladder:?}"))),
            Ok(None) => return Ok(TerminateOutcome::Closed),
            Ok(Some(Err(e))) => return Err(err("TERMINATED", e)),
            Ok(Some(Ok(Frame::Terminated(t)))) => return Ok(TerminateOutcome::Terminated(t)),
            Ok(Some(Ok(Frame::Error(m)))) => {
                return Err(err(
                    "RELEASE",
                    format!("refused ({:?}): {}", m.code, m.message),
                ));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn timed<F, T, E>(deadline: Instant, step: &'static str, f: F) -> Result<T, TerminateError>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout_at(deadline, f).await {
        Err(_) => Err(err(step, "timed out")),
        Ok(Err(e)) => Err(err(step, e)),
        Ok(Ok(v)) => Ok(v),
    }
}

async fn next<R>(
    reader: &mut FramedRead<R, FrameCodec>,
    deadline: Instant,
    step: &'static str,
) -> Result<Frame, TerminateError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    match tokio::time::timeout_at(deadline, reader.next()).await {
        Err(_) => Err(err(step, "timed out")),
        Ok(None) => Err(err(step, "the shellper closed the connection")),
        Ok(Some(Err(e))) => Err(err(step, e)),
        Ok(Some(Ok(Frame::Error(m)))) => {
            Err(err(step, format!("refused ({:?}): {}", m.code, m.message)))
        }
        Ok(Some(Ok(f))) => Ok(f),
    }
}
