//! The client's side of the control socket: one request, one response,
//! every step bounded, the Tower checked to run as our uid.

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::wire::{MAX_RESPONSE_BYTES, Request, Response};
use crate::error::{Error, Result};

/// Sends `req` to the Tower listening on `socket` and returns its answer:
/// an `ok` response, or [`Error::ControlRefused`] with the Tower's code and
/// message. [`Error::NoTower`] when nothing listens there (no file, or
/// connection refused: a Tower that died). Connecting is bounded by
/// `connect_timeout`, the whole exchange by `timeout` (give a spawn more
/// than the Tower's spawn timeout, a terminate more than its own).
pub async fn request(
    socket: &Path,
    req: &Request,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Response> {
    let conn_err = |step: &'static str, detail: String| Error::Control {
        socket: socket.to_path_buf(),
        step,
        detail,
    };
    let stream = match tokio::time::timeout(connect_timeout, UnixStream::connect(socket)).await {
        Err(_) => {
            return Err(conn_err(
                "connect",
                format!("no answer within {connect_timeout:?} (a wedged Tower?)"),
            ));
        }
        Ok(Err(e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(Error::NoTower {
                socket: socket.to_path_buf(),
                detail: e.to_string(),
            });
        }
        Ok(Err(e)) => return Err(conn_err("connect", e.to_string())),
        Ok(Ok(s)) => s,
    };
    // The scope is private, but the path may be given explicitly: never
    // send an environment to another user's process.
    let me = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(c) if c.uid() == me => {}
        Ok(c) => {
            return Err(conn_err(
                "peer check",
                format!("served by uid {}, not by us (uid {me})", c.uid()),
            ));
        }
        Err(e) => return Err(conn_err("peer check", e.to_string())),
    }
    let (r, mut w) = stream.into_split();
    let exchange = async {
        w.write_all(req.to_line().as_bytes())
            .await
            .map_err(|e| conn_err("send", e.to_string()))?;
        let mut buf = Vec::new();
        let mut reader = BufReader::new(r).take(MAX_RESPONSE_BYTES as u64);
        reader
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| conn_err("receive", e.to_string()))?;
        if buf.last() != Some(&b'\n') {
            return Err(conn_err(
                "receive",
                if buf.is_empty() {
                    "the Tower closed the connection without answering".into()
                } else {
                    format!("answer incomplete or over {MAX_RESPONSE_BYTES} bytes")
                },
            ));
        }
        buf.pop();
        Response::parse(&buf).map_err(|e| conn_err("parse answer", e))
    };
    let resp = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| conn_err("answer", format!("no answer within {timeout:?}")))??;
    match resp.error {
        Some(e) => Err(Error::ControlRefused {
            code: e.code,
            message: e.message,
        }),
        None => Ok(resp),
    }
}
