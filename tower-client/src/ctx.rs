//! State shared by the Tower and its holders, and the context spawn and
//! adoption work in: kept apart from the Tower so that neither spawn nor
//! adoption imports it (they return a [`Granted`](crate::holder::Granted)
//! lease, which only the Tower turns into a holder).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shellper_protocol::msg::HolderInfo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::TowerConfig;
use crate::holder::{CtlTx, EventTx, HandleInner, ShellperHandle};
use crate::registry::RegistryStore;
use crate::sched::SchedMsg;
use crate::scope::{InstanceLock, Scope};

/// State shared by the Tower and its holders.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub scope: Scope,
    /// Held for as long as any holder runs (holders hold the `Ctx`), so the
    /// scope cannot be taken over while its leases are still being renewed.
    pub lock: Mutex<Option<InstanceLock>>,
    pub registry: RegistryStore,
    pub cfg: TowerConfig,
    pub shellper_bin: PathBuf,
    pub holder: HolderInfo,
    pub sched: mpsc::UnboundedSender<SchedMsg<CtlTx>>,
    pub events: EventTx,
    pub handles: Mutex<HashMap<String, ShellperHandle>>,
    pub next_key: AtomicU64,
    pub cancel: CancellationToken,
    /// Spawns holding a share of the descriptor budget.
    pub spawns_in_flight: Mutex<u64>,
    pub spawn_done: tokio::sync::Notify,
    /// Set when the scope was found deleted or replaced.
    pub scope_lost: std::sync::atomic::AtomicBool,
    /// The containment of new sessions, chosen when the Tower opened.
    pub containment: crate::contain::Containment,
    /// With a cgroup: where the sessions' cgroups are created.
    pub session_base: Option<shellper_proctree::SessionBase>,
    /// Walks the held shellpers' trees, one after another, on a thread of
    /// its own.
    pub recorder: crate::holder::TreeRecorder,
}

impl Ctx {
    pub(crate) fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, ShellperHandle>> {
        // Map operations cannot leave it inconsistent; survive a poisoning.
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a newly held shellper's handle to the map.
    pub(crate) fn insert_handle(&self, h: ShellperHandle) {
        self.handles().insert(h.id().to_string(), h);
    }

    /// Removes a holder's handle from the map, unless the id is now held by
    /// a newer holder (re-adopted after a detach).
    pub(crate) fn forget(&self, inner: &Arc<HandleInner>) {
        let mut map = self.handles();
        if map
            .get(&inner.info.id)
            .is_some_and(|h| Arc::ptr_eq(&h.inner, inner))
        {
            map.remove(&inner.info.id);
        }
    }

    /// Removes `id` from the registry for good (revoked, or its process is
    /// gone). A failed write is not ignored: the in-memory registry already
    /// lacks the entry, and the write is retried with backoff until it
    /// lands (or the Tower is abandoned), because a revoked entry left on
    /// disk would be re-adopted by the next Tower (SPEC §8.4).
    pub(crate) async fn remove_entry(self: &Arc<Self>, id: &str) {
        let id = id.to_string();
        let Err(e) = self
            .registry
            .commit(|r| {
                r.remove(&id);
            })
            .await
        else {
            return;
        };
        if matches!(e, crate::error::Error::ScopeReplaced { .. }) {
            // Never written through a replaced scope; nothing to retry.
            tracing::error!(%id, "not removed from the registry: {e}");
            return;
        }
        tracing::error!(%id, "removing it from the registry failed (retrying): {e}");
        let ctx = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                // The entry is already gone from memory: any commit writes
                // the registry without it.
                match ctx
                    .registry
                    .commit(|r| {
                        r.remove(&id);
                    })
                    .await
                {
                    Ok(()) => {
                        tracing::warn!(%id, "removed from the registry after a retry");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(%id, "removing it from the registry failed again: {e}");
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
    }
}
