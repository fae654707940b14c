//! One sweep of a scope: every socket file and registry entry, each asked
//! for STATUS concurrently with a short timeout, the silent ones filled in
//! from /proc.
//!
//! The sweep is bounded: every query has its own deadline (a stopped
//! shellper still accepts connections, the kernel queues them, but never
//! answers), at most [`MAX_CONCURRENT`] run at once (file descriptors), and
//! the /proc fallback reads `stat`, fds and (never for state `D`) cmdline
//! only. So with `n` shellpers the sweep takes at most about
//! `ceil(n / MAX_CONCURRENT) × timeout` plus a /proc pass, however many are
//! wedged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shellper_proctree::{ProcInfo, SocketOwners, read_stat, start_time_unix_ms};
use shellper_protocol::msg::{ChildState, Containment, Status};
use tokio::sync::Semaphore;
use tower_client::{Registry, RegistryEntry, Scope};

use crate::error::{Error, Result};
/// Where it was first defined; it is a JSON shape, so it lives in `model`.
pub use crate::model::TowerView;
use crate::model::{HolderView, Phase, PidSource, ShellperView, Timings, proc_state_name};
use crate::procs;

/// The `error` of a registry entry whose socket file and process are both
/// gone: what `leasectl prune` removes.
pub const GONE_NO_SOCKET: &str = "gone: socket file missing and process gone (registry entry only)";

/// True for a dead shellper of which only the registry entry is left (no
/// socket file), as opposed to a socket file that nothing listens on.
pub fn socket_missing(v: &ShellperView) -> bool {
    v.phase == Phase::Dead && v.error.as_deref() == Some(GONE_NO_SOCKET)
}

/// Most STATUS queries in flight at once.
pub const MAX_CONCURRENT: usize = 256;

/// Result of one sweep.
#[derive(Debug)]
pub struct Scan {
    pub scope: PathBuf,
    /// False when the scope directory does not exist (nothing to list).
    pub exists: bool,
    /// The registry, when it could be read.
    pub registry: Option<Registry>,
    /// Why the registry could not be read (it is then never treated as
    /// empty: entries just lack `in_registry` and reap cannot authenticate).
    pub registry_error: Option<String>,
    /// Every shellper, sorted by id.
    pub shellpers: Vec<ShellperView>,
    /// The scope's Tower: the pid holding `tower.lock` (from /proc/locks),
    /// and whether one holds it at all.
    pub tower: TowerView,
}

impl Scan {
    /// The registry entry of `id`, if any.
    pub fn entry(&self, id: &str) -> Option<&RegistryEntry> {
        self.registry.as_ref().and_then(|r| r.get(id))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, milliseconds) of a Unix-epoch millisecond time.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A short human duration: `850ms`, `2.9s`, `4m05s`, `3h12m`, `2d04h`.
pub fn short_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else if ms < 86_400_000 {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    } else {
        format!("{}d{:02}h", ms / 86_400_000, (ms % 86_400_000) / 3_600_000)
    }
}

/// Parses a humantime duration (`500ms`, `3s`, `10m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 3s, 10m: {e}"))
}

/// What a sweep knows about one candidate before asking it.
#[derive(Debug, Clone)]
struct Candidate {
    id: String,
    socket: PathBuf,
    socket_exists: bool,
    entry: Option<RegistryEntry>,
}

/// Sweeps `dir`. With `only`, just that id (an error if the scope has no
/// such shellper).
pub async fn scan_scope(dir: &Path, timeout: Duration, only: Option<&str>) -> Result<Scan> {
    let mut scan = Scan {
        scope: dir.to_path_buf(),
        exists: true,
        registry: None,
        registry_error: None,
        shellpers: Vec::new(),
        tower: TowerView::default(),
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            scan.exists = false;
            return match only {
                Some(id) => Err(Error::UnknownId {
                    id: id.to_string(),
                    scope: dir.to_path_buf(),
                }),
                None => Ok(scan),
            };
        }
        _ => {}
    }
    let scope = Scope::open_existing(dir).map_err(|e| Error::Scope(Box::new(e)))?;
    match scope.read_registry() {
        Ok(r) => scan.registry = Some(r),
        // Reported once, by the command (`warn_registry`), not here too.
        Err(e) => scan.registry_error = Some(e.to_string()),
    }
    let lock = scope.lock_path();
    scan.tower.pid = scope.lock_holder().unwrap_or_else(|e| {
        tracing::warn!("{e}");
        None
    });
    if scan.tower.pid.is_none() {
        scan.tower.last_pid = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|s| s.trim().parse().ok());
    }
    let mut cands: BTreeMap<String, Candidate> = BTreeMap::new();
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("listing scope", dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".sock") {
            cands.insert(
                id.to_string(),
                Candidate {
                    id: id.to_string(),
                    socket: e.path(),
                    socket_exists: true,
                    entry: None,
                },
            );
        }
    }
    if let Some(reg) = &scan.registry {
        for entry in &reg.shellpers {
            let c = cands.entry(entry.id.clone()).or_insert_with(|| Candidate {
                id: entry.id.clone(),
                socket: entry.socket.clone(),
                socket_exists: entry.socket.exists(),
                entry: None,
            });
            c.entry = Some(entry.clone());
        }
    }
    if let Some(id) = only {
        cands.retain(|k, _| k == id);
        if cands.is_empty() {
            return Err(Error::UnknownId {
                id: id.to_string(),
                scope: dir.to_path_buf(),
            });
        }
    }
    scan.shellpers = sweep(cands.into_values().collect(), timeout).await;
    Ok(scan)
}

/// Queries every candidate concurrently, then fills in the silent ones.
async fn sweep(cands: Vec<Candidate>, timeout: Duration) -> Vec<ShellperView> {
    let sem = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in cands.iter().enumerate() {
        if !c.socket_exists {
            continue;
        }
        let socket = c.socket.clone();
        let sem = sem.clone();
        tasks.spawn(async move {
            // Invariant: the semaphore is never closed.
            let _permit = sem.acquire_owned().await.ok();
            // query_status bounds every step by `timeout`; the outer
            // timeout only guards against a bug there.
            let r = tokio::time::timeout(
                timeout + Duration::from_millis(100),
                tower_client::query_status(&socket, timeout),
            )
            .await;
            let r = match r {
                Ok(Ok(st)) => Ok(st),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            (i, r)
        });
    }
    let mut answers: Vec<Option<Result<Status, String>>> = vec![None; cands.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, r)) = joined {
            answers[i] = Some(r);
        }
    }
    let need_proc = answers.iter().any(|a| !matches!(a, Some(Ok(_))));
    let (snap, owners) = if need_proc {
        tokio::task::spawn_blocking(|| {
            let snap = shellper_proctree::snapshot();
            let owners = SocketOwners::scan(&snap);
            (snap, owners)
        })
        .await
        .unwrap_or_default()
    } else {
        (Vec::new(), SocketOwners::default())
    };
    let now = now_ms();
    cands
        .into_iter()
        .zip(answers)
        .map(|(c, a)| match a {
            Some(Ok(st)) => from_status(&c, &st, now),
            Some(Err(e)) => from_proc(&c, Some(e), &snap, &owners, now),
            None => from_proc(&c, Some("socket file missing".into()), &snap, &owners, now),
        })
        .collect()
}

/// A view from a STATUS answer.
fn from_status(c: &Candidate, st: &Status, now: u64) -> ShellperView {
    let mut v = ShellperView::bare(c.id.clone(), c.socket.display().to_string());
    v.pid = Some(st.shellper_pid);
    v.pid_source = Some(PidSource::Status);
    v.start_ticks = Some(st.shellper_start_ticks);
    v.child_pid = st.child_pid;
    v.child = Some(st.child.clone());
    v.phase = Phase::from(st.phase);
    v.reachable = true;
    v.leased = Some(st.leased);
    v.epoch = Some(st.epoch);
    v.holder = st.holder.as_ref().map(|h| HolderView {
        info: h.clone(),
        peer_pid: st.holder_peer_pid,
    });
    v.holder_alive = v.holder.as_ref().map(|h| {
        let pid = h.effective_pid();
        pid > 0 && read_stat(pid as i32).is_some_and(|p| p.is_live())
    });
    v.expires_in_ms = st.expires_in_ms;
    v.kill_in_ms = st.kill_in_ms;
    v.claim_in_ms = st.claim_in_ms;
    v.command = Some(st.command.clone());
    v.args = st.args.clone();
    v.cwd = Some(st.cwd.clone());
    v.started_at_ms = Some(st.started_at_ms);
    v.started_at = Some(rfc3339(st.started_at_ms));
    v.age_ms = Some(now.saturating_sub(st.started_at_ms));
    v.clients = Some(st.clients.clone());
    v.in_registry = c.entry.is_some();
    v.timings = Some(Timings {
        ttl_ms: st.ttl_ms,
        window_ms: st.window_ms,
        claim_ms: st.claim_ms,
        kill_grace_ms: st.kill_grace_ms,
    });
    v.counters = Some(st.counters.clone());
    v.version = Some(st.version.clone());
    v.containment = st.containment.clone();
    v
}

/// What the kernel accounts for a session's cgroup, read directly (for a
/// shellper that does not answer STATUS: stopped, wedged, or gone with its
/// session still running). `None` if the cgroup does not exist.
pub fn containment_of(dir: &Path) -> Option<Containment> {
    let cg = shellper_proctree::Cgroup::at(dir);
    if !cg.exists() {
        return None;
    }
    let usage = cg.usage();
    let limits = cg.limits();
    Some(Containment {
        cgroup: Some(dir.display().to_string()),
        controllers: cg.controllers().unwrap_or_default(),
        cpu_usec: usage.cpu_usec,
        procs: Some(usage.procs),
        memory_current: usage.memory_current,
        memory_peak: usage.memory_peak,
        pids_max: limits.pids_max,
        memory_max: limits.memory_max,
    })
}

/// A view of a shellper that did not answer: whatever the registry, the
/// socket's listener and /proc tell.
fn from_proc(
    c: &Candidate,
    error: Option<String>,
    snap: &[ProcInfo],
    owners: &SocketOwners,
    now: u64,
) -> ShellperView {
    let mut v = ShellperView::bare(c.id.clone(), c.socket.display().to_string());
    v.in_registry = c.entry.is_some();
    v.error = error;
    let find = |pid: i32| snap.iter().find(|p| p.pid == pid && p.is_live());
    // The registry pid counts only if it is still that process.
    let from_registry = c.entry.as_ref().and_then(|e| {
        find(e.pid as i32)
            .filter(|p| p.start_ticks == e.start_ticks)
            .map(|p| (p, PidSource::Registry))
    });
    let found = from_registry.or_else(|| {
        owners
            .owner_of(&c.socket)
            .and_then(find)
            .map(|p| (p, PidSource::Socket))
    });
    if let Some(e) = &c.entry {
        v.command = Some(e.command.clone());
        v.args = e.args.clone();
        v.cwd = (!e.cwd.is_empty()).then(|| e.cwd.clone());
        v.containment = e.cgroup.as_deref().and_then(containment_of);
    }
    match found {
        None => {
            v.phase = Phase::Dead;
            if !c.socket_exists {
                v.error = Some(GONE_NO_SOCKET.into());
            }
            if let Some(e) = &c.entry
                && e.created_at_ms > 0
            {
                v.started_at_ms = Some(e.created_at_ms);
                v.started_at = Some(rfc3339(e.created_at_ms));
                v.age_ms = Some(now.saturating_sub(e.created_at_ms));
            }
        }
        Some((p, source)) => {
            v.phase = Phase::Unreachable;
            v.pid = Some(p.pid as u32);
            v.pid_source = Some(source);
            v.start_ticks = Some(p.start_ticks);
            v.proc_state = Some(proc_state_name(p.state).to_string());
            v.child_pid = procs::pty_child(snap, p.pid).map(|c| c as u32);
            if v.child_pid.is_some() {
                v.child = Some(ChildState::Running);
            }
            if v.command.is_none()
                && let Some((cmd, args, cwd)) = procs::invocation_from_argv(&procs::safe_cmdline(p))
            {
                v.command = Some(cmd);
                v.args = args;
                v.cwd = cwd;
            }
            let registry_ms = c
                .entry
                .as_ref()
                .filter(|_| source == PidSource::Registry)
                .map(|e| e.created_at_ms)
                .filter(|ms| *ms > 0);
            if let Some(ms) = registry_ms.or_else(|| start_time_unix_ms(p.start_ticks).ok()) {
                v.started_at_ms = Some(ms);
                v.started_at = Some(rfc3339(ms));
                v.age_ms = Some(now.saturating_sub(ms));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_millis() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[tokio::test]
    async fn missing_scope_is_empty_but_unknown_id_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nope");
        let s = scan_scope(&dir, Duration::from_millis(100), None)
            .await
            .unwrap();
        assert!(!s.exists && s.shellpers.is_empty());
        let e = scan_scope(&dir, Duration::from_millis(100), Some("sh-00000001"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::UnknownId { .. }), "{e}");
    }

    #[tokio::test]
    async fn stale_socket_file_is_dead() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("scope");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(
            &dir,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
        )
        .unwrap();
        // Bind then drop a listener: the file stays, nothing listens.
        let sock = dir.join("sh-0000abcd.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let s = scan_scope(&dir, Duration::from_millis(200), None)
            .await
            .unwrap();
        assert_eq!(s.shellpers.len(), 1);
        let v = &s.shellpers[0];
        assert_eq!(v.id, "sh-0000abcd");
        assert_eq!(v.phase, Phase::Dead);
        assert!(!v.reachable && v.pid.is_none() && v.error.is_some());
    }
}
