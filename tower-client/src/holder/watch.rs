//! Watching a shellper process until it is really gone: the one thing that
//! lets a Tower say "gone" (ARCHITECTURE.md: gone only when the process is).

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;

use tokio::io::unix::AsyncFd;

use super::events::ProcExit;

/// Watches a shellper process until it is really gone.
#[derive(Debug)]
pub(crate) enum ProcWatch {
    /// Spawned by this Tower: we are its parent and must reap it; `wait`
    /// gives the exact status.
    Child(tokio::process::Child),
    /// Adopted: a pidfd becomes readable when the process exits.
    Pidfd(AsyncFd<OwnedFd>),
    Done,
}

impl ProcWatch {
    pub(crate) fn pidfd(fd: OwnedFd) -> std::io::Result<ProcWatch> {
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, which stays
        // open and refers to the same pidfd until the AsyncFd is dropped.
        let afd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(ProcWatch::Pidfd(afd))
    }

    /// Resolves when the process is gone. Cancel-safe.
    pub(crate) async fn wait(&mut self) -> ProcExit {
        match self {
            ProcWatch::Child(c) => match c.wait().await {
                Ok(st) => ProcExit {
                    code: st.code(),
                    signal: st.signal(),
                },
                Err(_) => ProcExit::default(),
            },
            ProcWatch::Pidfd(fd) => {
                let _ = fd.readable().await;
                ProcExit::default()
            }
            ProcWatch::Done => std::future::pending().await,
        }
    }

    /// Keeps reaping in the background once the holder stops caring (so a
    /// long-running Tower never accumulates zombies).
    pub(crate) fn reap_in_background(self) {
        if let ProcWatch::Child(mut c) = self {
            tokio::spawn(async move {
                let _ = c.wait().await;
            });
        }
    }
}
