//! The Tower: owns a locked scope, spawns and adopts shellpers, holds their
//! leases from one scheduler task, and reports events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shellper_proctree::PidfdLookup;
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

/// How many events wait for the application before new ones are dropped.
pub const EVENT_QUEUE: usize = 4096;

/// The stream of [`Event`]s of a Tower.
///
/// Bounded ([`EVENT_QUEUE`]): events are reports, and an application that
/// stops reading them must never stall a driver (and with it the renewals
/// of its lease) nor grow the Tower's memory without end. When the queue is
/// full, new events are dropped and counted ([`dropped`](Self::dropped));
/// nothing else is affected: the leases, handles and registry do not depend
/// on anybody reading events.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl Events {
    /// The next event (`None` only once the Tower and all drivers are gone).
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The sending side of [`Events`]: never waits.
#[derive(Debug, Clone)]
pub(crate) struct EventTx {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl EventTx {
    pub(crate) fn channel(cap: usize) -> (EventTx, Events) {
        let (tx, rx) = mpsc::channel(cap);
        let dropped = Arc::new(AtomicU64::new(0));
        (
            EventTx {
                tx,
                dropped: dropped.clone(),
            },
            Events { rx, dropped },
        )
    }

    /// Queues `ev`, or drops and counts it if the application is behind.
    pub(crate) fn send(&self, ev: Event) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.tx.try_send(ev) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!("event queue full: {n} events dropped so far (latest: {ev:?})");
            }
        }
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
    pub events: EventTx,
    pub handles: Mutex<HashMap<String, ShellperHandle>>,
    pub next_key: AtomicU64,
    pub cancel: CancellationToken,
    /// Spawns holding a share of the descriptor budget.
    pub spawns_in_flight: Mutex<u64>,
    pub spawn_done: tokio::sync::Notify,
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
        self.events.send(Event::Held {
            id: handle.id().to_string(),
            epoch: grant.epoch,
            recovered: false,
        });
        if let Some(e) = exit {
            self.events
                .send(crate::driver::child_exit_event(handle.id().to_string(), &e));
        }
        tokio::spawn(driver.run());
        handle
    }
}

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes on
/// Linux, including the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Refuses a scope whose shellper sockets could not be bound: better at
/// start than as a failure of every spawn.
fn check_socket_path_len(scope: &Scope) -> Result<()> {
    let sample = scope.socket_path("sh-00000000");
    let len = sample.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::UnsafeScope {
            path: scope.dir().to_path_buf(),
            reason: format!(
                "its socket paths ({}) would be {len} bytes, over the {MAX_SOCKET_PATH} a Unix \
                 socket address holds; use a shorter scope path",
                sample.display()
            ),
        });
    }
    Ok(())
}

/// Descriptors a held shellper costs a Tower: its lease connection and a
/// pidfd (the child handle of a spawned one is a pidfd too). Measured with
/// `ls /proc/PID/fd` on a minitower holding 5.
pub const FDS_PER_SHELLPER: u64 = 2;
/// Extra descriptors a spawn holds while it runs: stdin and stdout pipes,
/// the log file, std's exec-error pipe.
pub const FDS_PER_SPAWN: u64 = 4;
/// Descriptors kept free for everything else: registry writes, status
/// queries, terminal attaches, /proc reads, the runtime's own.
pub const FD_RESERVE: u64 = 16;

/// The descriptor budget of a Tower under its `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit.
    pub limit: u64,
    /// Descriptors open now.
    pub open: u64,
    /// Shellpers held now.
    pub held: u64,
    /// How many shellpers this Tower can hold in all under the limit.
    pub capacity: u64,
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// A shellper of the registry that could not be adopted. It was left
/// running: without a holder it terminates on its own when its window ends.
#[derive(Debug)]
pub struct AdoptFailure {
    pub entry: RegistryEntry,
    pub error: Error,
}

/// A spawn's share of the descriptor budget, given back when dropped.
struct SpawnSlot {
    ctx: Arc<Ctx>,
}

impl Drop for SpawnSlot {
    fn drop(&mut self) {
        let mut n = self
            .ctx
            .spawns_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        self.ctx.spawn_done.notify_waiters();
    }
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
        check_socket_path_len(&scope)?;
        let lock = scope.lock()?;
        let reg = scope.read_registry()?;
        let (sched_tx, sched_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = EventTx::channel(EVENT_QUEUE);
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
            spawns_in_flight: Mutex::new(0),
            spawn_done: tokio::sync::Notify::new(),
        });
        let r = rtt.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = sched::run(sched_rx, CtlSink, r) => {}
                _ = cancel.cancelled() => {}
            }
        });
        Ok((Tower { ctx, rtt }, ev_rx))
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

    /// The descriptor budget: how many shellpers fit under the current
    /// `RLIMIT_NOFILE` ([`FDS_PER_SHELLPER`] each, [`FD_RESERVE`] kept
    /// free).
    pub fn fd_budget(&self) -> FdBudget {
        let limit = fd_limit();
        let open = open_fds();
        let held = self.len() as u64;
        let free = limit.saturating_sub(open).saturating_sub(FD_RESERVE);
        FdBudget {
            limit,
            open,
            held,
            capacity: held + free / FDS_PER_SHELLPER,
        }
    }

    /// Spawns a shellper for `spec` and acquires its lease. On any failure
    /// nothing is left running (verified) and the error names the step and
    /// includes the tail of the shellper's log.
    ///
    /// Refused up front with [`Error::FdLimit`] when holding one more would
    /// not fit under the descriptor limit (see [`fd_budget`](Self::fd_budget)):
    /// a spawn that runs out of descriptors half-way fails late and at a
    /// random step, and one held past the limit starves every later
    /// reconnect.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<ShellperHandle> {
        let _slot = self.reserve_spawn_fds().await?;
        spawn::spawn(&self.ctx, spec).await
    }

    /// Waits until a spawn fits in the descriptor budget (counting the
    /// spawns in flight), or fails when it cannot fit even with none in
    /// flight.
    async fn reserve_spawn_fds(&self) -> Result<SpawnSlot> {
        loop {
            let notified = self.ctx.spawn_done.notified();
            {
                let mut inflight = self
                    .ctx
                    .spawns_in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let b = self.fd_budget();
                let need = b.open + (*inflight + 1) * FDS_PER_SPAWN + FDS_PER_SHELLPER + FD_RESERVE;
                if need <= b.limit {
                    *inflight += 1;
                    return Ok(SpawnSlot {
                        ctx: self.ctx.clone(),
                    });
                }
                if *inflight == 0 {
                    return Err(Error::FdLimit {
                        limit: b.limit,
                        open: b.open,
                        held: b.held,
                        capacity: b.capacity,
                    });
                }
            }
            notified.await;
        }
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
                let r = catch_panic(adopt_one(&ctx, &entry), &entry.id).await;
                (entry, r)
            });
        }
        while let Some(j) = set.join_next().await {
            // A task that panicked is caught inside (it reports its entry as
            // failed); only a cancelled runtime lands here.
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

/// Runs an adoption, turning a panic into an error for that entry: a bug in
/// one adoption must neither vanish silently (the entry would be neither
/// adopted nor reported) nor take the others down.
async fn catch_panic<T>(fut: impl std::future::Future<Output = Result<T>>, id: &str) -> Result<T> {
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

/// Adopts one entry: `Ok(None)` if its process is gone.
async fn adopt_one(ctx: &Arc<Ctx>, e: &RegistryEntry) -> Result<Option<ShellperHandle>> {
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
