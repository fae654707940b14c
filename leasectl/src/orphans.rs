//! `leasectl orphans`: shellpers nobody looks after.
//!
//! Two sources, merged by pid:
//!
//! 1. the scope's sweep ([`crate::scan`]): lapsed or unclaimed leases, dead
//!    holders, unreachable shellpers;
//! 2. the whole process table: every `shellper` binary and every codev Node
//!    `shellper-main.js` process, flagged when it listens on no socket that
//!    still exists (nobody can ever reattach to it) and, with `--tracked`,
//!    when neither its pid nor its child's pid is in the tracked list.
//!
//! A shellper that is younger than [`STARTUP_GRACE`] is never reported as
//! socketless: it may not have bound its socket yet.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use serde::Serialize;
use shellper_proctree::{ProcInfo, Session, SocketOwners, members, start_time_unix_ms};

use crate::model::{Phase, SCHEMA_VERSION, ShellperView};
use crate::procs::{self, Flavor};
use crate::scan::{Scan, now_ms, short_duration};

/// A process this young is not yet expected to have a socket.
pub const STARTUP_GRACE: Duration = Duration::from_secs(2);

/// Why something is an orphan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its lease lapsed; it dies when the window ends unless re-acquired.
    Lapsed,
    /// Nobody ever claimed it; it dies at the claim deadline.
    Unclaimed,
    /// Its holder's process is gone.
    HolderDead,
    /// It did not answer STATUS in time (stopped, wedged).
    Unreachable,
    /// Running, but listening on no socket that exists: nobody can reattach.
    NoSocket,
    /// Not in the `--tracked` list.
    Untracked,
    /// The shellper is gone (SIGKILLed, OOM-killed) but its PTY child's
    /// session still runs, under PID 1: nothing will ever end it.
    ShellperGone,
}

/// One orphan.
#[derive(Debug, Clone, Serialize)]
pub struct Orphan {
    /// Shellper id when it belongs to the scope, else `null`.
    pub id: Option<String>,
    pub pid: Option<u32>,
    pub start_ticks: Option<u64>,
    pub child_pid: Option<u32>,
    /// `shellper` (ours) or `node` (codev's shellper-main.js).
    pub flavor: Flavor,
    /// Phase when it belongs to the scope, else `null`.
    pub phase: Option<Phase>,
    pub reasons: Vec<Reason>,
    /// One human sentence.
    pub detail: String,
    pub socket: Option<String>,
    pub command: String,
    pub age_ms: Option<u64>,
    /// Sessions left by a dead shellper (sid and leader start time): what
    /// `reap` takes down.
    pub sessions: Vec<Session>,
    /// The cgroup of a dead shellper's session that still has processes:
    /// exactly what it left (`reap` kills it with `cgroup.kill`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// A socket file with nothing alive behind it.
#[derive(Debug, Clone, Serialize)]
pub struct StaleSocket {
    pub id: String,
    pub socket: String,
}

/// The `orphans` report.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanReport {
    pub schema_version: u32,
    pub scope: String,
    pub orphans: Vec<Orphan>,
    /// Informational: stale socket files hold no process and do not count.
    pub stale_sockets: Vec<StaleSocket>,
    /// Shellper processes seen system-wide (ours and codev's).
    pub shellper_processes: usize,
    /// Number of tracked pids given, or `null` without `--tracked`.
    pub tracked: Option<usize>,
}

/// True when the scope's Tower is gone and `v` is one of its shellpers
/// waiting in vain: after a Tower's death the shellper forgets its holder
/// (the connection closed), so this comes from `tower.lock` instead.
fn tower_gone(v: &ShellperView, scan: &Scan) -> bool {
    scan.tower.pid.is_none() && v.in_registry && matches!(v.phase, Phase::Lapsed | Phase::Unclaimed)
}

/// Scope-level reasons for one shellper.
fn scope_reasons(v: &ShellperView, scan: &Scan) -> Vec<Reason> {
    let mut r = Vec::new();
    match v.phase {
        Phase::Lapsed => r.push(Reason::Lapsed),
        Phase::Unclaimed => r.push(Reason::Unclaimed),
        Phase::Unreachable => r.push(Reason::Unreachable),
        _ => {}
    }
    if v.holder_alive == Some(false) || tower_gone(v, scan) {
        r.push(Reason::HolderDead);
    }
    r
}

fn scope_detail(v: &ShellperView, scan: &Scan) -> String {
    let mut parts = Vec::new();
    let ms = |x: u64| short_duration(Duration::from_millis(x));
    match v.phase {
        Phase::Lapsed => parts.push(format!(
            "lease lapsed, kill in {}",
            v.kill_in_ms.map(ms).unwrap_or_else(|| "?".into())
        )),
        Phase::Unclaimed => parts.push(format!(
            "never claimed, claim deadline in {}",
            v.claim_in_ms.map(ms).unwrap_or_else(|| "?".into())
        )),
        Phase::Unreachable => parts.push(format!(
            "no STATUS answer{}",
            v.proc_state
                .as_ref()
                .map(|s| format!(" (process {s})"))
                .unwrap_or_default()
        )),
        _ => {}
    }
    if v.holder_alive == Some(false)
        && let Some(h) = &v.holder
    {
        parts.push(format!(
            "holder {}/{} is dead",
            h.info.name,
            h.effective_pid()
        ));
    } else if tower_gone(v, scan) {
        parts.push(format!(
            "its Tower is gone (nobody holds tower.lock{})",
            scan.tower
                .last_pid
                .map(|p| format!("; last Tower pid {p}"))
                .unwrap_or_default()
        ));
    }
    parts.join("; ")
}

/// Builds the report from a sweep, the process table and the tracked pids.
/// With `scope_only`, the process table is not searched for shellpers
/// outside the scope.
pub fn find(scan: &Scan, tracked: Option<&BTreeSet<u32>>, scope_only: bool) -> OrphanReport {
    let snap = shellper_proctree::snapshot();
    let found = if scope_only {
        Vec::new()
    } else {
        let owners = SocketOwners::scan(&snap);
        procs::find_shellpers(&snap, &owners)
    };
    find_with(scan, tracked, &snap, &found)
}

/// Most bytes of a shellper log read (its live file and the rotated one).
const LOG_READ_CAP: u64 = 2 * 1024 * 1024;

/// The log of the shellper whose socket is `socket` (CONVENTIONS.md), the
/// rotated part first, at most [`LOG_READ_CAP`] bytes.
fn read_log(socket: &std::path::Path) -> String {
    use std::io::Read;
    let s = socket.to_string_lossy();
    let log = match s.strip_suffix(".sock") {
        Some(stem) => format!("{stem}.log"),
        None => format!("{s}.log"),
    };
    let mut text = String::new();
    for path in [format!("{log}.1"), log] {
        if let Ok(f) = std::fs::File::open(&path) {
            let mut buf = Vec::new();
            let _ = f.take(LOG_READ_CAP / 2).read_to_end(&mut buf);
            text.push_str(&String::from_utf8_lossy(&buf));
            text.push('\n');
        }
    }
    text
}

/// Sessions that the dead shellper `v` of the scope left running (see
/// [`procs::sessions_left`]); empty unless the registry knows its start time
/// and its log names a child that still leads its session.
pub fn sessions_of_dead(v: &ShellperView, scan: &Scan, snap: &[ProcInfo]) -> Vec<Session> {
    let Some(entry) = scan.entry(&v.id) else {
        return Vec::new();
    };
    if v.phase != Phase::Dead {
        return Vec::new();
    }
    let logged = procs::logged_children(&read_log(std::path::Path::new(&v.socket)));
    procs::sessions_left(snap, entry.start_ticks, &logged, &|t| {
        start_time_unix_ms(t).ok()
    })
}

/// The cgroup of the dead shellper `v`'s session (from the registry), if
/// it still has live processes, with their number.
pub fn cgroup_of_dead(v: &ShellperView, scan: &Scan) -> Option<(String, usize)> {
    if v.phase != Phase::Dead {
        return None;
    }
    let dir = scan.entry(&v.id)?.cgroup.clone()?;
    let cg = shellper_proctree::Cgroup::at(&dir);
    let n = cg.members().ok()?.len();
    (n > 0).then(|| (dir.display().to_string(), n))
}

/// [`find`] over a given snapshot (for tests).
pub fn find_with(
    scan: &Scan,
    tracked: Option<&BTreeSet<u32>>,
    snap: &[ProcInfo],
    found: &[procs::FoundShellper],
) -> OrphanReport {
    let tracked_set: Option<HashSet<u32>> = tracked.map(|t| t.iter().copied().collect());
    let now = now_ms();
    let mut orphans = Vec::new();
    let mut stale = Vec::new();
    let mut seen_pids: HashSet<u32> = HashSet::new();
    for v in &scan.shellpers {
        let left = sessions_of_dead(v, scan, snap);
        let cgroup = cgroup_of_dead(v, scan);
        if !left.is_empty() || cgroup.is_some() {
            let spec = shellper_proctree::TreeSpec {
                sessions: left.clone(),
                ..Default::default()
            };
            let n = members(snap, &spec).len();
            let where_ = match &cgroup {
                Some((dir, k)) => format!("its session's cgroup {dir} still holds {k} process(es)"),
                None => format!(
                    "its child's session {} still runs: {n} process(es)",
                    left.iter()
                        .map(|s| s.sid.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            orphans.push(Orphan {
                id: Some(v.id.clone()),
                pid: None,
                start_ticks: None,
                child_pid: left.first().map(|s| s.sid as u32),
                flavor: Flavor::Shellper,
                phase: Some(v.phase),
                reasons: vec![Reason::ShellperGone],
                detail: format!(
                    "shellper gone (pid {}); {where_}",
                    scan.entry(&v.id).map_or("?".into(), |e| e.pid.to_string()),
                ),
                socket: Some(v.socket.clone()),
                command: v.command_line(),
                age_ms: v.age_ms,
                sessions: left,
                cgroup: cgroup.map(|c| c.0),
            });
            continue;
        }
        if v.phase == Phase::Dead {
            // A registry entry without a socket file holds nothing; the
            // Tower prunes it on its next start.
            if is_socket_file(std::path::Path::new(&v.socket)) {
                stale.push(StaleSocket {
                    id: v.id.clone(),
                    socket: v.socket.clone(),
                });
            }
            continue;
        }
        if let Some(p) = v.pid {
            seen_pids.insert(p);
        }
        let mut reasons = scope_reasons(v, scan);
        let mut detail = scope_detail(v, scan);
        if let Some(t) = &tracked_set
            && !procs::is_tracked(t, v.pid, v.child_pid)
        {
            reasons.push(Reason::Untracked);
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            detail.push_str("not in the tracked list");
        }
        if reasons.is_empty() {
            continue;
        }
        orphans.push(Orphan {
            id: Some(v.id.clone()),
            pid: v.pid,
            start_ticks: v.start_ticks,
            child_pid: v.child_pid,
            flavor: Flavor::Shellper,
            phase: Some(v.phase),
            reasons,
            detail,
            socket: Some(v.socket.clone()),
            command: v.command_line(),
            age_ms: v.age_ms,
            sessions: Vec::new(),
            cgroup: None,
        });
    }
    for f in found {
        let pid = f.info.pid as u32;
        if seen_pids.contains(&pid) {
            continue;
        }
        let age_ms = start_time_unix_ms(f.info.start_ticks)
            .ok()
            .map(|ms| now.saturating_sub(ms));
        let young = age_ms.is_some_and(|a| a < STARTUP_GRACE.as_millis() as u64);
        let live_socket = f.listening.iter().find(|p| is_socket_file(p));
        let child = procs::pty_child(snap, f.info.pid).map(|c| c as u32);
        let mut reasons = Vec::new();
        let mut detail = Vec::new();
        if live_socket.is_none() && !young {
            reasons.push(Reason::NoSocket);
            detail.push(if f.listening.is_empty() {
                "listens on no socket".to_string()
            } else {
                "its socket file was removed".to_string()
            });
        }
        if let Some(t) = &tracked_set
            && !procs::is_tracked(t, Some(pid), child)
        {
            reasons.push(Reason::Untracked);
            detail.push("not in the tracked list".into());
        }
        if reasons.is_empty() {
            continue;
        }
        orphans.push(Orphan {
            id: None,
            pid: Some(pid),
            start_ticks: Some(f.info.start_ticks),
            child_pid: child,
            flavor: f.flavor,
            phase: None,
            reasons,
            detail: detail.join("; "),
            socket: live_socket.map(|p| p.display().to_string()),
            command: f.info.cmdline.join(" "),
            age_ms,
            sessions: Vec::new(),
            cgroup: None,
        });
    }
    OrphanReport {
        schema_version: SCHEMA_VERSION,
        scope: scan.scope.display().to_string(),
        orphans,
        stale_sockets: stale,
        shellper_processes: found.len(),
        tracked: tracked.map(|t| t.len()),
    }
}

fn is_socket_file(p: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}
