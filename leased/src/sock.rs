//! Socket plumbing every shellper shares, the PTY one (crate `shellper`)
//! and embedded leased processes (this crate): binding, accepting, the
//! peer-credential check, connection slots, the two halves of a
//! connection, and the ERROR frames of the lease protocol (SPEC.md §7).
//!
//! * Filesystem socket name only (the abstract namespace ignores file
//!   permissions); directory 0700 when we create it, socket 0600 (set before
//!   `bind` by interprocess, so there is no umask race).
//! * A leftover socket file is reclaimed only when nothing answers on it: a
//!   live shellper's socket is never stolen.
//! * Every connection: peer uid (SO_PEERCRED) must be ours, else it is
//!   closed at once; a connection past the slots gets a `Busy` ERROR.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::traits::StreamCommon as _;
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use shellper_protocol::Frame;
use shellper_protocol::lease::Reject;
use shellper_protocol::msg::{ErrorCode, ErrorMsg, HolderInfo};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use interprocess::local_socket::tokio::{Listener, Stream};

/// Longest holder name kept from ACQUIRE (SPEC.md §6.2).
pub const MAX_HOLDER_NAME: usize = 256;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process answers on the socket path.
    #[error("socket {0} is in use by a live process")]
    InUse(PathBuf),
    /// An IO operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: String, source: io::Error) -> BindError {
    BindError::Io { context, source }
}

/// Creates the socket directory (0700 when we create it) and binds the
/// socket (0600), reclaiming a stale file nobody answers on.
pub fn bind(path: &Path) -> Result<Listener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err(format!("create socket directory {}", dir.display()), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_path_buf()));
            }
            // Nothing answers: a crashed shellper left it behind.
            tracing::info!(path = %path.display(), "reclaiming stale socket file");
            std::fs::remove_file(path)
                .map_err(|e| io_err(format!("remove stale socket {}", path.display()), e))?;
        }
        Ok(_) => {
            return Err(io_err(
                format!("socket path {}", path.display()),
                io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            ));
        }
        Err(_) => {}
    }
    let name = path
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| io_err(format!("socket name {}", path.display()), e))?;
    let listener = ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .reclaim_name(true)
        .create_tokio()
        .map_err(|e| io_err(format!("bind {}", path.display()), e))?;
    // Belt and braces for platforms where the pre-bind fchmod is ignored.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(listener)
}

/// Accepts connections until `stop` is cancelled; each one is served by
/// `serve` in a task of `tracker` (so the exit path can wait for final
/// frames to be flushed).
pub async fn accept_loop<F, Fut>(
    listener: Listener,
    tracker: TaskTracker,
    stop: CancellationToken,
    mut serve: F,
) where
    F: FnMut(Stream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(stream) => {
                tracker.spawn(serve(stream));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The peer's pid (0 when unknown) when it runs as `my_uid`; `None` (and a
/// warning) when its credentials are missing or another user's: the
/// connection is then dropped at once.
pub fn peer_pid_if_same_uid(stream: &Stream, my_uid: u32) -> Option<u32> {
    let creds = match stream.peer_creds() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no peer credentials; closing");
            return None;
        }
    };
    if creds.euid() != Some(my_uid) {
        tracing::warn!(uid = ?creds.euid(), pid = ?creds.pid(), "connection from another uid refused");
        return None;
    }
    Some(creds.pid().map_or(0, |p| p as u32))
}

/// Connection slots: `max` for anyone, then `reserved` more that the
/// server keeps for clients it can vouch for (status readers, the holder).
#[derive(Debug)]
pub struct Slots {
    permits: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
}

/// A slot taken; freed on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// Taken from the reserve: the connection must earn it.
    pub reserved: bool,
}

impl Slots {
    pub fn new(max: usize, reserved: usize) -> Self {
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            reserve: Arc::new(Semaphore::new(reserved)),
        }
    }

    /// A free slot, an ordinary one first; `None` when all are taken.
    pub fn acquire(&self) -> Option<Slot> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(Slot {
                _permit: p,
                reserved: false,
            });
        }
        self.reserve.clone().try_acquire_owned().ok().map(|p| Slot {
            _permit: p,
            reserved: true,
        })
    }
}

/// Tells a peer that found no slot why it is closed (`Busy`), within a
/// short bound, then drops the connection.
pub async fn refuse_busy(stream: Stream) {
    let mut w = Half(Arc::new(stream));
    if let Ok(b) = error_frame(ErrorCode::Busy, "too many connections").to_bytes() {
        let _ = tokio::time::timeout(Duration::from_millis(200), w.write_all(&b)).await;
    }
}

/// One side of a connection: the reader task and the writer task each hold
/// one, sharing the stream (`&Stream` implements `AsyncRead`/`AsyncWrite`).
/// The socket closes when both are dropped.
#[derive(Debug)]
pub struct Half(pub Arc<Stream>);

impl Half {
    /// A real `shutdown(2)`: interprocess's `poll_shutdown` is a no-op.
    /// Errors (already closed, peer gone) change nothing for us.
    pub fn shutdown(&self, how: rustix::net::Shutdown) {
        use std::os::fd::AsFd as _;
        let Stream::UdSocket(s) = &*self.0;
        let _ = rustix::net::shutdown(s.as_fd(), how);
    }
}

impl tokio::io::AsyncRead for Half {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Half {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut &*self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut &*self.0).poll_shutdown(cx)
    }
}

/// An ERROR frame.
pub fn error_frame(code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::Error(ErrorMsg {
        code,
        message: message.into(),
    })
}

/// The ERROR frame for a refused lease request.
pub fn reject_frame(r: Reject) -> Frame {
    let code = match r {
        Reject::BadToken => ErrorCode::BadToken,
        Reject::StaleEpoch { .. } => ErrorCode::StaleEpoch,
        Reject::NotHolder => ErrorCode::NotHolder,
        Reject::NotLeased => ErrorCode::NotLeased,
        Reject::Terminating => ErrorCode::Terminating,
    };
    error_frame(code, r.to_string())
}

/// Cuts a holder's self-declared name to [`MAX_HOLDER_NAME`] bytes (on a
/// character boundary).
pub fn truncate_name(h: &mut HolderInfo) {
    if h.name.len() > MAX_HOLDER_NAME {
        let mut end = MAX_HOLDER_NAME;
        while !h.name.is_char_boundary(end) {
            end -= 1;
        }
        h.name.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_ordinary_first_then_the_reserve() {
        let slots = Slots::new(2, 1);
        let a = slots.acquire().expect("first");
        let b = slots.acquire().expect("second");
        assert!(!a.reserved && !b.reserved);
        let r = slots.acquire().expect("the reserve");
        assert!(r.reserved);
        assert!(slots.acquire().is_none());
        drop(a);
        let c = slots.acquire().expect("freed on drop");
        assert!(!c.reserved);
        assert!(Slots::new(1, 0).acquire().is_some());
        let none = Slots::new(0, 0);
        assert!(none.acquire().is_none());
        drop((b, r, c));
    }

    #[test]
    fn holder_names_are_cut_on_a_character_boundary() {
        let mut h = HolderInfo {
            name: format!("a{}", "é".repeat(200)),
            pid: 1,
        };
        truncate_name(&mut h);
        assert_eq!(h.name.len(), MAX_HOLDER_NAME - 1);
        let mut short = HolderInfo {
            name: "tower".into(),
            pid: 1,
        };
        truncate_name(&mut short);
        assert_eq!(short.name, "tower");
    }
}
