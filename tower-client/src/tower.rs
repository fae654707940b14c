//! The Tower: owns a locked scope, spawns and adopts shellpers, holds their
//! leases from one scheduler task, and reports events.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shellper_protocol::msg::HolderInfo;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::adopt;
use crate::config::TowerConfig;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::holder::{
    self, CtlSink, EVENT_QUEUE, Event, EventTx, Events, ShellperHandle, TerminateReport,
};
use crate::registry::{Registry, RegistryEntry, RegistryStore};
use crate::sched::{self, RttSamples};
use crate::scope::Scope;
use crate::spawn::{self, SpawnSpec};

/// How many terminations [`Tower::terminate_all`] runs at once.
pub const TERMINATE_CONCURRENCY: usize = 16;

/// How often a Tower checks that its scope and lock file are still the
/// ones it locked.
pub const SCOPE_CHECK_EVERY: Duration = Duration::from_secs(1);

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
    shellper_proctree::open_fd_count()
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
/// the holders keep renewing (and keep the scope locked) until each
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
        // After the lock: moving this process into a leaf of its cgroup is
        // a change, and a Tower that cannot have the scope makes none.
        let (containment, session_base) = crate::contain::choose(&cfg)?;
        let ident = lock.ident().clone();
        let (sched_tx, sched_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = EventTx::channel(EVENT_QUEUE);
        let rtt = Arc::new(Mutex::new(RttSamples::default()));
        let cancel = CancellationToken::new();
        let ctx = Arc::new(Ctx {
            registry: RegistryStore::guarded(scope.registry_path(), reg, ident.clone()),
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
            scope_lost: std::sync::atomic::AtomicBool::new(false),
            spawn_done: tokio::sync::Notify::new(),
            containment,
            session_base,
            recorder: crate::holder::TreeRecorder::default(),
        });
        // The scope is checked periodically too, not only on writes: a
        // Tower with nothing to write must still notice it lost its scope.
        let (weak, ev2, cancel2) = (Arc::downgrade(&ctx), ctx.events.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SCOPE_CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel2.cancelled() => return,
                    _ = tick.tick() => {}
                }
                // Holds no strong reference between ticks: the check must not
                // keep the scope locked after the Tower and its holders end.
                let Some(c2) = weak.upgrade() else { return };
                let id = ident.clone();
                let res = tokio::task::spawn_blocking(move || id.verify()).await;
                if let Ok(Err(detail)) = res {
                    tracing::error!("scope {}: {detail}", c2.scope.dir().display());
                    c2.scope_lost
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    ev2.send(Event::ScopeLost {
                        scope: c2.scope.dir().display().to_string(),
                        detail,
                    });
                    return;
                }
            }
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

    /// The containment new sessions get: a cgroup each (base, controllers,
    /// limits) or the process tree, with the reason.
    pub fn containment(&self) -> &crate::contain::Containment {
        &self.ctx.containment
    }

    /// True once the Tower found its scope deleted or replaced (see
    /// [`Event::ScopeLost`]); it writes nothing there any more.
    pub fn scope_lost(&self) -> bool {
        self.ctx
            .scope_lost
            .load(std::sync::atomic::Ordering::Relaxed)
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
        let granted = spawn::spawn(&self.ctx, spec).await?;
        Ok(holder::start(&self.ctx, granted))
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
                let r = adopt::catch_panic(adopt::adopt_one(&ctx, &entry), &entry.id).await;
                (entry, r)
            });
        }
        while let Some(j) = set.join_next().await {
            // A task that panicked is caught inside (it reports its entry as
            // failed); only a cancelled runtime lands here.
            let Ok((entry, r)) = j else { continue };
            match r {
                Ok(Some(g)) => report.adopted.push(holder::start(&self.ctx, g)),
                Ok(None) => report.gone.push(entry),
                Err(error) => report.failed.push(AdoptFailure { entry, error }),
            }
        }
        // A gone shellper's session may still run in its cgroup (it was
        // SIGKILLed while no Tower held it): the cgroup's members are exactly
        // that session, so they are killed now, and the cgroup removed.
        for e in &report.gone {
            if let Some(dir) = e.cgroup.clone() {
                let grace = self.ctx.cfg.lease.kill_grace.min(Duration::from_secs(5));
                let id = e.id.clone();
                let cg = shellper_proctree::Cgroup::at(&dir);
                match crate::contain::kill_session_cgroup(cg, grace).await {
                    Ok(Some(r)) if !r.is_clean() => tracing::error!(
                        %id, survivors = ?r.report.survivors,
                        "the session cgroup of a gone shellper kept survivors"
                    ),
                    Ok(Some(r)) if r.report.sigkilled + r.report.signalled > 0 => tracing::warn!(
                        %id, signalled = r.report.signalled,
                        "killed what a gone shellper's session left in its cgroup"
                    ),
                    _ => {}
                }
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

    /// Tidies the scope (see [`crate::tidy`]): removes the registry entries
    /// and socket files of shellpers proven gone, the logs of gone
    /// shellpers past [`TidyPolicy::keep_gone_logs`](crate::TidyPolicy),
    /// and, over [`TidyPolicy::scope_log_cap`](crate::TidyPolicy), the
    /// oldest logs of gone shellpers then the oldest rotated logs of live
    /// ones. Nothing held, alive, or of unknown liveness is touched. The
    /// directory listing and the liveness checks run on the blocking pool;
    /// each socket probe is bounded.
    pub async fn tidy(&self) -> crate::tidy::TidyDone {
        use crate::tidy;
        if self.scope_lost() {
            return tidy::TidyDone::default();
        }
        let dir = self.ctx.scope.dir().to_path_buf();
        let files = match tokio::task::spawn_blocking(move || tidy::list_scope(&dir)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!("tidy: listing {}: {e}", self.ctx.scope.dir().display());
                return tidy::TidyDone::default();
            }
            Err(_) => return tidy::TidyDone::default(),
        };
        let registry = self.ctx.registry.snapshot();
        let held = self.ctx.handles().keys().cloned().collect();
        let facts = tidy::gather(&files, &registry, held).await;
        let plan = tidy::plan(
            &files,
            &registry,
            &self.ctx.scope.registry_path(),
            &facts,
            std::time::SystemTime::now(),
            &self.ctx.cfg.tidy,
        );
        let mut done = tidy::TidyDone::default();
        let gone: Vec<RegistryEntry> = plan
            .entry_ids()
            .iter()
            .filter_map(|id| registry.get(id).cloned())
            .collect();
        if !gone.is_empty() {
            // Only the very entries found gone (same pid and start time):
            // an id re-registered meanwhile is another shellper.
            match self
                .ctx
                .registry
                .commit(|r| r.shellpers.retain(|e| !gone.contains(e)))
                .await
            {
                Ok(()) => done.done.extend(
                    plan.actions
                        .iter()
                        .filter(|a| a.what == tidy::What::RegistryEntry)
                        .cloned(),
                ),
                Err(e) => {
                    tracing::warn!("tidy: pruning the registry: {e}");
                    for a in plan
                        .actions
                        .iter()
                        .filter(|a| a.what == tidy::What::RegistryEntry)
                    {
                        done.failed.push((a.clone(), e.to_string()));
                    }
                }
            }
        }
        if let Ok(files_done) = tokio::task::spawn_blocking(move || tidy::remove_files(&plan)).await
        {
            done.done.extend(files_done.done);
            done.failed.extend(files_done.failed);
        }
        done
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
        // Holders notice the cancellation at their next poll; give the lock
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
