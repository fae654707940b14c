//! `leasectl reap`: take shellper trees down in the right order, and prove it.
//!
//! Per target, the gentlest method that can work comes first:
//!
//! 1. **authenticated terminate** when the scope's registry has the token
//!    and the shellper answers: ACQUIRE + RELEASE Terminate; the shellper
//!    runs its own ladder and reports TERMINATED;
//! 2. **SIGTERM (+SIGCONT)** to the shellper: it runs the same ladder
//!    (legacy shellpers, unknown tokens, a stopped shellper);
//! 3. **the kill ladder from outside** (`proctree::kill_tree_from_outside`)
//!    when the shellper did not finish within `--grace` (wedged, or not our
//!    shellper at all, like codev's Node one): tree first, shellper last.
//!
//! A session contained in a cgroup (the registry names it) is killed
//! through it (**`cgroup.kill`**, step [`Method::CgroupKill`]) before the
//! outside ladder, and whatever its shellper left after a SIGKILL is exactly
//! that cgroup's members: processes started after the last look included.
//!
//! Before acting, the tree is recorded (pid and start time of every member);
//! afterwards each recorded process must be gone (zombies count as gone) and
//! the child's session must be empty. Anything left is SIGKILLed by identity
//! and reported. A held shellper is refused without `--force`: acquiring its
//! lease evicts a live Tower.
//!
//! Files by job: this one (targets and the report's types), `plan.rs` (the
//! plan, pure: a target and a /proc snapshot in, steps out), `execute.rs`
//! (carrying a plan out and checking what is left).

mod execute;
mod plan;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use shellper_proctree::{Session, TreeSpec, read_stat};
use shellper_protocol::Token;

use crate::model::{Phase, ShellperView, TreeProc};
use crate::orphans::OrphanReport;
use crate::procs;
use crate::scan::Scan;

pub use execute::execute;
pub use plan::{plan, tree_procs};

/// A step of a reap plan, gentlest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    AuthTerminate,
    Sigterm,
    CgroupKill,
    OutsideLadder,
    RemoveStaleSocket,
}

/// One thing to reap.
#[derive(Debug, Clone)]
pub struct Target {
    pub label: String,
    pub id: Option<String>,
    pub socket: Option<PathBuf>,
    pub pid: Option<u32>,
    pub start_ticks: Option<u64>,
    /// The PTY child as last reported (display only: never a kill target by
    /// itself, see [`procs::tree_of`]).
    pub child_pid: Option<u32>,
    /// Sessions known from elsewhere, by sid and leader start time (a dead
    /// shellper's child, from its log).
    pub sessions: Vec<Session>,
    pub phase: Option<Phase>,
    pub reachable: bool,
    pub holder: Option<String>,
    pub token: Option<Token>,
    pub kill_grace: Duration,
    /// The session's cgroup (from the registry), when it has one.
    pub cgroup: Option<PathBuf>,
}

impl Target {
    /// A target from a scope sweep entry (token from the registry).
    pub fn from_view(v: &ShellperView, scan: &Scan) -> Target {
        Target {
            label: v.id.clone(),
            id: Some(v.id.clone()),
            socket: Some(PathBuf::from(&v.socket)),
            pid: v.pid,
            start_ticks: v.start_ticks,
            child_pid: v.child_pid,
            sessions: Vec::new(),
            phase: Some(v.phase),
            reachable: v.reachable,
            holder: v.holder.as_ref().map(|h| {
                format!(
                    "{}/{}{}",
                    h.info.name,
                    h.effective_pid(),
                    if v.holder_alive == Some(false) {
                        " (dead)"
                    } else {
                        ""
                    }
                )
            }),
            token: scan.entry(&v.id).map(|e| e.token.clone()),
            kill_grace: Duration::from_millis(v.timings.as_ref().map_or(3000, |t| t.kill_grace_ms)),
            cgroup: scan.entry(&v.id).and_then(|e| e.cgroup.clone()),
        }
    }
}

/// The plan for one target.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub target: String,
    pub id: Option<String>,
    pub pid: Option<u32>,
    pub phase: Option<Phase>,
    /// Why nothing will be done although something may be running (held
    /// without --force, no process found): counts as "not clean".
    pub refused: Option<String>,
    /// Why nothing needs doing (already gone): counts as clean.
    pub note: Option<String>,
    pub steps: Vec<Method>,
    /// The tree as it is now (shellper first).
    pub tree: Vec<TreeProc>,
    /// The sessions treated as the shellper's (sid and leader start time).
    pub sessions: Vec<Session>,
    /// The session's cgroup, when it has one and it still exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// How the tree was found (sessions and their witnesses), for the
    /// checks after each step.
    #[serde(skip)]
    pub spec: TreeSpec,
}

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub method: Method,
    pub ok: bool,
    pub detail: String,
    pub elapsed_ms: u64,
}

/// What happened to one target.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub plan: Plan,
    pub executed: Vec<StepResult>,
    /// Processes of the recorded tree that are gone now.
    pub killed: Vec<TreeProc>,
    /// Processes still alive (must be empty).
    pub survivors: Vec<TreeProc>,
    pub clean: bool,
}

/// The `reap` report.
#[derive(Debug, Clone, Serialize)]
pub struct ReapReport {
    pub schema_version: u32,
    pub scope: String,
    pub dry_run: bool,
    pub targets: Vec<Outcome>,
}

impl ReapReport {
    /// Exit-code decision: every target done and clean, nothing refused.
    pub fn all_clean(&self) -> bool {
        self.targets
            .iter()
            .all(|t| t.plan.refused.is_none() && (self.dry_run || t.clean || t.plan.note.is_some()))
    }
}

/// A target given by pid (`reap --pid`): it must be a shellper process
/// (ours or codev's), so a typo never takes down an unrelated tree. A pid
/// of one of the scope's shellpers becomes that shellper's target (token
/// and all).
pub fn target_from_pid(pid: u32, scan: &Scan) -> crate::error::Result<Target> {
    if let Some(v) = scan.shellpers.iter().find(|v| v.pid == Some(pid)) {
        return Ok(Target::from_view(v, scan));
    }
    let not = |why: &str| crate::error::Error::NotAShellper {
        pid,
        why: why.to_string(),
    };
    let info = read_stat(pid as i32)
        .filter(|p| p.is_live())
        .ok_or_else(|| not("no such live process"))?;
    // Another user's process: every signal would fail with EPERM. Say so at
    // once instead of running the ladder against it.
    if shellper_proctree::signal_permitted(pid as i32) == Some(false) {
        return Err(not_permitted(pid));
    }
    let exe_name = shellper_proctree::exe_name(pid as i32);
    let argv = procs::safe_cmdline(&info);
    if procs::classify(&info.comm, exe_name.as_deref(), &argv).is_none() {
        return Err(not(&format!(
            "`{}` is neither a shellper binary nor a shellper-main.js process",
            argv.join(" ")
        )));
    }
    let snap = shellper_proctree::snapshot();
    Ok(Target {
        label: format!("pid {pid}"),
        id: None,
        socket: None,
        pid: Some(pid),
        start_ticks: Some(info.start_ticks),
        child_pid: procs::pty_child(&snap, pid as i32).map(|c| c as u32),
        sessions: Vec::new(),
        phase: None,
        reachable: false,
        holder: None,
        token: None,
        kill_grace: Duration::from_secs(3),
        cgroup: None,
    })
}

/// Targets for `reap --orphans`: every orphan and every stale socket.
pub fn targets_from_orphans(r: &OrphanReport, scan: &Scan) -> Vec<Target> {
    let mut out = Vec::new();
    for o in &r.orphans {
        if (!o.sessions.is_empty() || o.cgroup.is_some())
            && let Some(id) = &o.id
            && let Some(v) = scan.shellpers.iter().find(|v| &v.id == id)
        {
            let mut t = Target::from_view(v, scan);
            t.sessions = o.sessions.clone();
            t.child_pid = o.child_pid;
            out.push(t);
            continue;
        }
        if let Some(id) = &o.id
            && let Some(v) = scan.shellpers.iter().find(|v| &v.id == id)
        {
            out.push(Target::from_view(v, scan));
            continue;
        }
        out.push(Target {
            label: format!("pid {}", o.pid.unwrap_or(0)),
            id: None,
            socket: o.socket.as_ref().map(PathBuf::from),
            pid: o.pid,
            start_ticks: o.start_ticks,
            child_pid: o.child_pid,
            sessions: Vec::new(),
            phase: None,
            reachable: false,
            holder: None,
            token: None,
            kill_grace: Duration::from_secs(3),
            cgroup: None,
        });
    }
    for s in &r.stale_sockets {
        if let Some(v) = scan.shellpers.iter().find(|v| v.id == s.id) {
            out.push(Target::from_view(v, scan));
        }
    }
    out
}

fn not_permitted(pid: u32) -> crate::error::Error {
    crate::error::Error::NotPermitted {
        pid,
        owner: shellper_proctree::owner_uid(pid as i32).map_or("?".into(), |u| u.to_string()),
        me: rustix::process::geteuid().as_raw(),
    }
}
