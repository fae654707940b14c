//! Adoption: re-acquiring a registry entry's lease after a Tower restart.
//! A shellper is taken for gone only on the kernel's word (ESRCH, another
//! start time); any other failure keeps the entry for a later retry.

use std::sync::Arc;

use shellper_proctree::PidfdLookup;

use crate::conn::{self, HelloOpts};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::holder::{Granted, ProcWatch, ShellperInfo};
use crate::registry::RegistryEntry;

/// Runs an adoption, turning a panic into an error for that entry: a bug in
/// one adoption must neither vanish silently (the entry would be neither
/// adopted nor reported) nor take the others down.
pub(crate) async fn catch_panic<T>(
    fut: impl std::future::Future<Output = Result<T>>,
    id: &str,
) -> Result<T> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(%id, "adoption panicked: {what}");
            Err(Error::NotHeld {
                id: id.to_string(),
                why: format!("adoption panicked (a bug; the shellper was left alone): {what}"),
            })
        }
    }
}

/// Adopts one entry: `Ok(None)` if its process is gone, else the granted
/// lease (the Tower starts its holder).
pub(crate) async fn adopt_one(ctx: &Arc<Ctx>, e: &RegistryEntry) -> Result<Option<Granted>> {
    // Pin the process first, then check it is the one we registered: a
    // recycled pid is never mistaken for our shellper.
    // Only the kernel's word makes it gone: any other failure (EMFILE,
    // ENOSYS, EPERM) leaves the entry and its socket alone, to retry.
    let pidfd = match shellper_proctree::pidfd_for(e.pid as i32, e.start_ticks) {
        PidfdLookup::Alive(fd) => fd,
        PidfdLookup::Gone => return Ok(None),
        PidfdLookup::Unknown(err) => {
            return Err(Error::io(
                "cannot tell whether the shellper is alive (kept; retry later) for",
                &e.socket,
                err,
            ));
        }
    };
    let token = e.token.clone();
    let timeout = ctx.cfg.connect_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut c = conn::connect(&e.socket, HelloOpts::LEASE, timeout, false).await?;
    if let Some(l) = &c.welcome.lease
        && l.shellper_pid != e.pid
    {
        return Err(Error::Conn {
            socket: e.socket.clone(),
            step: "WELCOME",
            detail: format!(
                "socket is served by pid {}, but the registry says pid {}",
                l.shellper_pid, e.pid
            ),
        });
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let (grant, exit) = conn::acquire(&mut c, &token, ctx.holder.clone(), left).await?;
    let proc =
        ProcWatch::pidfd(pidfd).map_err(|err| Error::io("watching pidfd of", &e.socket, err))?;
    let child_pid = u32::try_from(c.welcome.pid).ok();
    let info = ShellperInfo {
        id: e.id.clone(),
        pid: e.pid,
        start_ticks: e.start_ticks,
        child_pid,
        socket: e.socket.clone(),
        log: ctx.scope.log_path(&e.id),
        command: e.command.clone(),
        args: e.args.clone(),
        cwd: e.cwd.clone(),
        cgroup: e.cgroup.clone(),
    };
    Ok(Some(Granted {
        info,
        token,
        conn: c,
        grant,
        exit,
        proc,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_adoption_is_reported_as_a_failure() {
        let r: Result<()> = catch_panic(
            async {
                if std::hint::black_box(true) {
                    panic!("boom in adoption");
                }
                Ok(())
            },
            "sh-0000000a",
        )
        .await;
        let err = r.expect_err("reported");
        assert!(err.to_string().contains("boom in adoption"), "{err}");
        assert!(err.to_string().contains("sh-0000000a"), "{err}");
    }
}
