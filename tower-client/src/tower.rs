//! The Tower: owns a locked scope, spawns and adopts shellpers, holds their
//! leases from one scheduler task, and reports events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shellper_protocol::LeaseConfig;
use shellper_protocol::msg::HolderInfo;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Token;
use crate::conn::{self, HelloOpts};
use crate::driver::{
    Ctl, CtlSink, CtlTx, Driver, Event, HandleInner, ProcWatch, ShellperHandle, ShellperInfo,
    TerminateReport, renew_interval,
};
use crate::error::{Error, Result};
use crate::registry::{Registry, RegistryEntry, RegistryStore};
use crate::sched::{self, RttSamples, SchedMsg};
use crate::scope::{InstanceLock, Scope};
use crate::spawn::{self, SpawnSpec};

/// How many terminations [`Tower::terminate_all`] runs at once.
pub const TERMINATE_CONCURRENCY: usize = 16;

/// How a Tower runs its shellpers.
#[derive(Debug, Clone)]
pub struct TowerConfig {
    /// Lease timings for new shellpers (validated by [`LeaseConfig::new`]).
    pub lease: LeaseConfig,
    /// Name sent in ACQUIRE (shown by `leasectl`).
    pub holder_name: String,
    /// The shellper binary; `None`: next to the current executable, then
    /// `PATH`.
    pub shellper_bin: Option<PathBuf>,
    /// Bound on each connect + handshake + acquire (adoption, reconnects,
    /// status).
    pub connect_timeout: Duration,
    /// Bound on a whole spawn (exec to GRANT).
    pub spawn_timeout: Duration,
}

impl Default for TowerConfig {
    fn default() -> Self {
        TowerConfig {
            lease: LeaseConfig::default(),
            holder_name: "tower-client".into(),
            shellper_bin: None,
            connect_timeout: Duration::from_secs(1),
            spawn_timeout: Duration::from_secs(10),
        }
    }
}

/// The stream of [`Event`]s of a Tower.
#[derive(Debug)]
pub struct Events(mpsc::UnboundedReceiver<Event>);

impl Events {
    /// The next event (`None` only once the Tower and all drivers are gone).
    pub async fn recv(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    /// An event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

/// State shared by the Tower and its drivers.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub scope: Scope,
    /// Held for as long as any driver runs (drivers hold the `Ctx`), so the
    /// scope cannot be taken over while its leases are still being renewed.
    pub lock: Mutex<Option<InstanceLock>>,
    pub registry: RegistryStore,
    pub cfg: TowerConfig,
    pub shellper_bin: PathBuf,
    pub holder: HolderInfo,
    pub sched: mpsc::UnboundedSender<SchedMsg<CtlTx>>,
    pub events: mpsc::UnboundedSender<Event>,
    pub handles: Mutex<HashMap<String, ShellperHandle>>,
    pub next_key: AtomicU64,
    pub cancel: CancellationToken,
}

impl Ctx {
    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, ShellperHandle>> {
        // Map operations cannot leave it inconsistent; survive a poisoning.
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes a driver's handle from the map, unless the id is now held by
    /// a newer driver (re-adopted after a detach).
    pub(crate) fn forget(&self, inner: &Arc<HandleInner>) {
        let mut map = self.handles();
        if map
            .get(&inner.info.id)
            .is_some_and(|h| Arc::ptr_eq(&h.inner, inner))
        {
            map.remove(&inner.info.id);
        }
    }

    /// Registers a granted lease and starts its driver.
    pub(crate) fn start_driver(
        self: &Arc<Self>,
        info: ShellperInfo,
        token: Token,
        c: conn::Conn,
        grant: shellper_protocol::msg::Grant,
        exit: Option<shellper_protocol::msg::ExitMsg>,
        proc: ProcWatch,
    ) -> ShellperHandle {
        let (tx, rx) = mpsc::unbounded_channel::<Ctl>();
        let inner = Arc::new(HandleInner {
            info,
            ctl: tx,
            epoch: AtomicU64::new(grant.epoch),
            state: AtomicU8::new(0),
            connect_timeout: self.cfg.connect_timeout,
        });
        let handle = ShellperHandle {
            inner: inner.clone(),
        };
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let driver = Driver::new(
            self.clone(),
            inner,
            key,
            token,
            (c.reader, c.writer),
            grant.epoch,
            proc,
            rx,
        );
        driver.schedule(
            renew_interval(&grant),
            Duration::from_millis(grant.expires_in_ms),
        );
        self.handles()
            .insert(handle.id().to_string(), handle.clone());
        let _ = self.events.send(Event::Held {
            id: handle.id().to_string(),
            epoch: grant.epoch,
            recovered: false,
        });
        if let Some(e) = exit {
            let _ = self
                .events
                .send(crate::driver::child_exit_event(handle.id().to_string(), &e));
        }
        tokio::spawn(driver.run());
        handle
    }
}

/// A shellper of the registry that could not be adopted. It was left
/// running: without a holder it terminates on its own when its window ends.
#[derive(Debug)]
pub struct AdoptFailure {
    pub entry: RegistryEntry,
    pub error: Error,
}

/// Outcome of [`Tower::adopt_all`].
#[derive(Debug, Default)]
pub struct AdoptReport {
    /// Re-acquired (new epoch) and now held.
    pub adopted: Vec<ShellperHandle>,
    /// Listed in the registry but their process is gone (or the pid was
    /// recycled); removed from the registry.
    pub gone: Vec<RegistryEntry>,
    /// Alive but not adoptable (no answer in time, refused, bad token).
    pub failed: Vec<AdoptFailure>,
    /// Already held by this Tower; skipped.
    pub already_held: usize,
}

/// A Tower: one locked scope, its shellpers and their leases.
///
/// Create it inside a tokio runtime. Dropping it does **not** stop holding:
/// the drivers keep renewing (and keep the scope locked) until each
/// shellper is released with [`detach_all`](Self::detach_all) /
/// [`terminate_all`](Self::terminate_all) or per handle, or until the
/// process exits. [`abandon`](Self::abandon) drops everything at once, as a
/// crash would.
#[derive(Debug)]
pub struct Tower {
    ctx: Arc<Ctx>,
    rtt: Arc<Mutex<RttSamples>>,
}

impl Tower {
    /// Takes the scope's instance lock, loads its registry (a corrupt one is
    /// an error) and starts the renewal scheduler.
    pub fn open(scope: Scope, cfg: TowerConfig) -> Result<(Tower, Events)> {
        // Configuration errors first: they need no lock and change nothing.
        let shellper_bin = spawn::resolve_shellper(cfg.shellper_bin.as_deref())?;
        let lock = scope.lock()?;
        let reg = scope.read_registry()?;
        let (sched_tx, sched_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let rtt = Arc::new(Mutex::new(RttSamples::default()));
        let cancel = CancellationToken::new();
        let ctx = Arc::new(Ctx {
            registry: RegistryStore::new(scope.registry_path(), reg),
            scope,
            lock: Mutex::new(Some(lock)),
            holder: HolderInfo {
                name: cfg.holder_name.chars().take(200).collect(),
                pid: std::process::id(),
            },
            cfg,
            shellper_bin,
            sched: sched_tx,
            events: ev_tx,
            handles: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            cancel: cancel.clone(),
        });
        let r = rtt.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = sched::run(sched_rx, CtlSink, r) => {}
                _ = cancel.cancelled() => {}
            }
        });
        Ok((Tower { ctx, rtt }, Events(ev_rx)))
    }

    /// The scope this Tower holds.
    pub fn scope(&self) -> &Scope {
        &self.ctx.scope
    }

    /// The configuration.
    pub fn config(&self) -> &TowerConfig {
        &self.ctx.cfg
    }

    /// The resolved shellper binary.
    pub fn shellper_bin(&self) -> &std::path::Path {
        &self.ctx.shellper_bin
    }

    /// The registry as this Tower last wrote it.
    pub fn registry(&self) -> Registry {
        self.ctx.registry.snapshot()
    }

    /// Handles of every shellper currently held.
    pub fn handles(&self) -> Vec<ShellperHandle> {
        let mut v: Vec<_> = self.ctx.handles().values().cloned().collect();
        v.sort_by(|a, b| a.id().cmp(b.id()));
        v
    }

    /// The handle of shellper `id`, if held.
    pub fn handle(&self, id: &str) -> Option<ShellperHandle> {
        self.ctx.handles().get(id).cloned()
    }

    /// Number of shellpers held.
    pub fn len(&self) -> usize {
        self.ctx.handles().len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Round trips of acknowledged renewals so far.
    pub fn rtt_samples(&self) -> (Vec<Duration>, u64) {
        let r = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        (r.samples().to_vec(), r.total())
    }

    /// Spawns a shellper for `spec` and acquires its lease. On any failure
    /// nothing is left running (verified) and the error names the step and
    /// includes the tail of the shellper's log.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<ShellperHandle> {
        spawn::spawn(&self.ctx, spec).await
    }

    /// Adopts every registry entry not already held: concurrently, each
    /// bounded by the connect timeout; a re-acquire starts a new epoch.
    /// Entries whose process is gone are removed from the registry; live
    /// ones that cannot be adopted are reported and left alone.
    pub async fn adopt_all(&self) -> AdoptReport {
        let entries = self.ctx.registry.snapshot().shellpers;
        let mut report = AdoptReport::default();
        let mut set = JoinSet::new();
        for entry in entries {
            if self.ctx.handles().contains_key(&entry.id) {
                report.already_held += 1;
                continue;
            }
            let ctx = self.ctx.clone();
            set.spawn(async move {
                let r = adopt_one(&ctx, &entry).await;
                (entry, r)
            });
        }
        while let Some(j) = set.join_next().await {
            let Ok((entry, r)) = j else { continue };
            match r {
                Ok(Some(h)) => report.adopted.push(h),
                Ok(None) => report.gone.push(entry),
                Err(error) => report.failed.push(AdoptFailure { entry, error }),
            }
        }
        if !report.gone.is_empty() {
            let gone: Vec<String> = report.gone.iter().map(|e| e.id.clone()).collect();
            if let Err(e) = self
                .ctx
                .registry
                .commit(|r| r.shellpers.retain(|e| !gone.contains(&e.id)))
                .await
            {
                tracing::warn!("pruning gone shellpers from the registry: {e}");
            }
            for e in &report.gone {
                // Left behind by a shellper that was killed (it removes its
                // own socket on every orderly exit).
                let _ = std::fs::remove_file(&e.socket);
            }
        }
        report.adopted.sort_by(|a, b| a.id().cmp(b.id()));
        report
    }

    /// Detaches every held shellper (each keeps running for
    /// `max(hold, window)`), concurrently.
    pub async fn detach_all(&self, hold: Option<Duration>) -> Vec<(String, Result<Duration>)> {
        let mut set = JoinSet::new();
        for h in self.handles() {
            set.spawn(async move { (h.id().to_string(), h.detach(hold).await) });
        }
        collect(set).await
    }

    /// Terminates every held shellper with confirmed death, at most
    /// [`TERMINATE_CONCURRENCY`] at a time. `timeout` bounds each one.
    ///
    /// Bounded because every kill ladder sweeps the process table: hundreds
    /// of ladders at once on a small host starve each other past their hard
    /// bound (measured: 500 at once on 2 cores, ~5 % reported survivors).
    pub async fn terminate_all(&self, timeout: Duration) -> Vec<(String, Result<TerminateReport>)> {
        let sem = Arc::new(tokio::sync::Semaphore::new(TERMINATE_CONCURRENCY));
        let mut set = JoinSet::new();
        for h in self.handles() {
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire().await;
                (h.id().to_string(), h.terminate(timeout).await)
            });
        }
        collect(set).await
    }

    /// Drops every connection and stops every task at once, without
    /// releasing anything, then releases the scope lock: what a crash does
    /// (the shellpers see EOF and their windows start). For tests and for
    /// an emergency exit.
    pub fn abandon(self) {
        self.ctx.cancel.cancel();
        self.ctx.handles().clear();
        // Drivers notice the cancellation at their next poll; give the lock
        // up now so a successor can start (it will re-acquire, fencing any
        // late write of ours with a new epoch).
        drop(
            self.ctx
                .lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

async fn collect<T: 'static>(mut set: JoinSet<(String, T)>) -> Vec<(String, T)> {
    let mut out = Vec::new();
    while let Some(j) = set.join_next().await {
        if let Ok(x) = j {
            out.push(x);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Adopts one entry: `Ok(None)` if its process is gone.
async fn adopt_one(ctx: &Arc<Ctx>, e: &RegistryEntry) -> Result<Option<ShellperHandle>> {
    // Pin the process first, then check it is the one we registered: a
    // recycled pid is never mistaken for our shellper.
    let Some(pidfd) = shellper_proctree::pidfd_for(e.pid as i32, e.start_ticks) else {
        return Ok(None);
    };
    let token = e.token().map_err(|err| Error::RegistryCorrupt {
        path: ctx.scope.registry_path(),
        detail: format!("entry {}: {err}", e.id),
    })?;
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
    };
    Ok(Some(ctx.start_driver(info, token, c, grant, exit, proc)))
}
