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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use shellper_proctree::{
    LinuxTable, OutsidePlan, ProcInfo, ProcessTable, RealClock, Session, Sig, TreeSpec,
    kill_tree_from_outside, members, read_stat,
};
use shellper_protocol::Token;
use tower_client::{TerminateOutcome, terminate_with_token};

use crate::model::{Phase, ShellperView, TreeProc};
use crate::orphans::OrphanReport;
use crate::procs;
use crate::scan::Scan;

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

fn tree_proc(p: &ProcInfo, shellper: Option<u32>, child: Option<u32>) -> TreeProc {
    let role = if Some(p.pid as u32) == shellper {
        "shellper"
    } else if Some(p.pid as u32) == child {
        "child"
    } else {
        "descendant"
    };
    let cmdline = if p.cmdline.is_empty() {
        procs::safe_cmdline(p)
    } else {
        p.cmdline.clone()
    };
    TreeProc {
        pid: p.pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        state: p.state.to_string(),
        start_ticks: p.start_ticks,
        comm: p.comm.clone(),
        cmdline,
        role,
    }
}

/// The tree of `pid` as [`TreeProc`]s (shellper first), and the spec that
/// found it. Shared with `show`.
pub fn tree_procs(
    snap: &[ProcInfo],
    pid: u32,
    start_ticks: Option<u64>,
    child: Option<u32>,
    extra: &[Session],
) -> (Vec<TreeProc>, TreeSpec) {
    let (tree, spec) = procs::tree_of(snap, pid as i32, start_ticks, extra);
    (
        tree.iter()
            .map(|p| tree_proc(p, Some(pid), child))
            .collect(),
        spec,
    )
}

/// Plans one target.
pub fn plan(t: &Target, snap: &[ProcInfo], force: bool) -> Plan {
    let mut p = Plan {
        target: t.label.clone(),
        id: t.id.clone(),
        pid: t.pid,
        phase: t.phase,
        refused: None,
        note: None,
        steps: Vec::new(),
        tree: Vec::new(),
        sessions: Vec::new(),
        cgroup: None,
        spec: TreeSpec::default(),
    };
    let cg = t
        .cgroup
        .as_ref()
        .map(shellper_proctree::Cgroup::at)
        .filter(shellper_proctree::Cgroup::exists);
    let in_cgroup: Vec<ProcInfo> = cg
        .as_ref()
        .map(|c| {
            c.members()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|pid| snap.iter().find(|x| x.pid == pid).cloned())
                .collect()
        })
        .unwrap_or_default();
    p.cgroup = cg.as_ref().map(|c| c.dir().to_path_buf());
    let Some(pid) = t.pid else {
        if cg.is_some() && !in_cgroup.is_empty() {
            // A dead shellper's cgroup: its members are exactly what is
            // left of the session (sessions from the log add nothing the
            // cgroup lacks, but are swept too).
            p.tree = in_cgroup
                .iter()
                .map(|x| tree_proc(x, None, t.child_pid))
                .collect();
            p.sessions = t.sessions.clone();
            p.spec = TreeSpec {
                sessions: t.sessions.clone(),
                ..TreeSpec::default()
            };
            p.steps.push(Method::CgroupKill);
            if !t.sessions.is_empty() {
                p.steps.push(Method::OutsideLadder);
            }
            if t.socket.as_ref().is_some_and(|s| s.exists()) {
                p.steps.push(Method::RemoveStaleSocket);
            }
            return p;
        }
        if !t.sessions.is_empty() {
            // A dead shellper's sessions: the ladder over them alone.
            let mut spec = TreeSpec {
                sessions: t.sessions.clone(),
                ..TreeSpec::default()
            };
            let found = members(snap, &spec);
            shellper_proctree::tree::record_witnesses(&mut spec, snap, &found);
            p.tree = found
                .iter()
                .map(|x| tree_proc(x, None, t.child_pid))
                .collect();
            p.sessions = t.sessions.clone();
            p.spec = spec;
            if p.tree.is_empty() {
                p.note = Some("nothing to do: its sessions are gone".into());
                return p;
            }
            p.steps.push(Method::OutsideLadder);
            if t.socket.as_ref().is_some_and(|s| s.exists()) {
                p.steps.push(Method::RemoveStaleSocket);
            }
            return p;
        }
        if t.phase == Some(Phase::Dead) && t.socket.as_ref().is_some_and(|s| s.exists()) {
            p.steps.push(Method::RemoveStaleSocket);
        } else if t.phase == Some(Phase::Dead) {
            p.note = Some("nothing to do: no process, no socket file".into());
        } else {
            p.refused = Some("no process found for it".into());
        }
        return p;
    };
    (p.tree, p.spec) = tree_procs(snap, pid, t.start_ticks, t.child_pid, &t.sessions);
    for x in &in_cgroup {
        if !p.tree.iter().any(|r| r.pid == x.pid) {
            p.tree.push(tree_proc(x, Some(pid), t.child_pid));
        }
    }
    p.sessions = p.spec.sessions.clone();
    if p.tree.is_empty() {
        p.note = Some(format!("nothing to do: process {pid} is gone already"));
        return p;
    }
    if shellper_proctree::signal_permitted(pid as i32) == Some(false) {
        p.refused = Some(not_permitted(pid).to_string());
        return p;
    }
    if t.phase == Some(Phase::Held) && !force {
        p.refused = Some(held_refusal(t.holder.as_deref()));
        return p;
    }
    if t.reachable && t.token.is_some() && t.phase != Some(Phase::Terminating) {
        p.steps.push(Method::AuthTerminate);
    }
    p.steps.push(Method::Sigterm);
    if cg.is_some() {
        p.steps.push(Method::CgroupKill);
    }
    p.steps.push(Method::OutsideLadder);
    p
}

fn held_refusal(holder: Option<&str>) -> String {
    format!(
        "its lease is held by {}; --force evicts the holder",
        holder.unwrap_or("a live Tower")
    )
}

/// Right before an acting step: is the shellper held *now*? The plan was
/// made from a scan, and a Tower may have re-adopted the shellper since
/// (acquiring its lease then would evict a live Tower). `Some(holder)` when
/// held; `None` when not, or when it does not answer (a wedged shellper
/// cannot be renewed by anyone either).
async fn held_now(socket: &std::path::Path, timeout: Duration) -> Option<String> {
    let st = tower_client::query_status(socket, timeout).await.ok()?;
    (st.phase == shellper_protocol::msg::WirePhase::Held).then(|| {
        st.holder.as_ref().map_or_else(
            || "a Tower".to_string(),
            |h| format!("{}/{}", h.name, st.holder_peer_pid.unwrap_or(h.pid)),
        )
    })
}

/// True while that exact process is alive.
fn alive(t: &TreeProc) -> bool {
    LinuxTable.alive(t.pid, t.start_ticks)
}

/// Live processes now in the recorded tree, or members of the tree by its
/// spec (the shellper's sessions while verifiably the same sessions, and
/// its descendants while it lives), or of its cgroup. A full /proc scan:
/// call it off the async runtime.
fn leftovers(recorded: &[TreeProc], spec: &TreeSpec, cgroup: Option<&PathBuf>) -> Vec<TreeProc> {
    let mut out: Vec<TreeProc> = recorded.iter().filter(|t| alive(t)).cloned().collect();
    if let Some(c) = cgroup.map(shellper_proctree::Cgroup::at) {
        for pid in c.members().unwrap_or_default() {
            if !out.iter().any(|o| o.pid == pid)
                && let Some(p) = read_stat(pid).filter(ProcInfo::is_live)
            {
                out.push(tree_proc(&p, None, None));
            }
        }
    }
    if !spec.sessions.is_empty() {
        for p in members(&shellper_proctree::snapshot(), spec) {
            if !out.iter().any(|o| o.pid == p.pid) {
                out.push(tree_proc(&p, None, None));
            }
        }
    }
    out
}

/// [`leftovers`] on the blocking pool.
async fn leftovers_async(
    recorded: &[TreeProc],
    spec: &TreeSpec,
    cgroup: Option<&PathBuf>,
) -> Vec<TreeProc> {
    let (r, s, c) = (recorded.to_vec(), spec.clone(), cgroup.cloned());
    tokio::task::spawn_blocking(move || leftovers(&r, &s, c.as_ref()))
        .await
        .unwrap_or_default()
}

/// Polls until the recorded tree is gone or `bound` passes; true if gone.
async fn wait_gone(
    recorded: &[TreeProc],
    spec: &TreeSpec,
    cgroup: Option<&PathBuf>,
    bound: Duration,
) -> bool {
    let end = Instant::now() + bound;
    loop {
        let left = leftovers_async(recorded, spec, cgroup).await;
        if left.is_empty() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Executes a plan. Without `force`, a shellper found held right before a
/// step is left alone (the plan is refused then): a Tower may have
/// re-adopted it since the scan.
pub async fn execute(
    t: &Target,
    mut plan: Plan,
    grace: Duration,
    handshake: Duration,
    force: bool,
) -> Outcome {
    let mut executed = Vec::new();
    // A plan for a dead shellper's session runs every step (the cgroup,
    // the ladder, then the socket).
    let session_only = t.pid.is_none();
    let recorded = plan.tree.clone();
    let spec = plan.spec.clone();
    let cgroup = plan.cgroup.clone();
    let cg = cgroup.as_ref();
    let shellper = recorded.iter().find(|p| p.role == "shellper").cloned();
    let mut done = false;
    for &m in &plan.steps {
        if done {
            break;
        }
        if !force
            && m != Method::RemoveStaleSocket
            && let Some(socket) = &t.socket
            && let Some(holder) = held_now(socket, handshake).await
        {
            plan.refused = Some(format!(
                "re-checked before acting: {}",
                held_refusal(Some(&holder))
            ));
            break;
        }
        let start = Instant::now();
        let (ok, detail) = match m {
            Method::RemoveStaleSocket => match &t.socket {
                Some(s) => match std::fs::remove_file(s) {
                    Ok(()) => (true, format!("removed {}", s.display())),
                    Err(e) => (false, format!("removing {}: {e}", s.display())),
                },
                None => (false, "no socket path".into()),
            },
            Method::AuthTerminate => {
                let (Some(socket), Some(token)) = (&t.socket, &t.token) else {
                    continue;
                };
                let ladder = t.kill_grace + grace + Duration::from_secs(1);
                match terminate_with_token(socket, token, "leasectl-reap", handshake, ladder).await
                {
                    Ok(TerminateOutcome::Terminated(r)) => {
                        let gone = wait_gone(&recorded, &spec, cg, grace).await;
                        (
                            gone,
                            format!(
                                "TERMINATED: {:?}, {} signalled, {} survivor(s), {} ms, {} sweep(s){}",
                                r.reason,
                                r.signalled,
                                r.survivors,
                                r.elapsed_ms,
                                r.sweeps,
                                if gone {
                                    ""
                                } else {
                                    "; tree still alive after --grace"
                                }
                            ),
                        )
                    }
                    Ok(TerminateOutcome::Closed) => {
                        let gone = wait_gone(&recorded, &spec, cg, grace).await;
                        (gone, "connection closed without a report".into())
                    }
                    Err(e) => (false, e.to_string()),
                }
            }
            Method::Sigterm => match &shellper {
                Some(s) if alive(s) => {
                    let table = LinuxTable;
                    let r = table
                        .signal(s.pid, s.start_ticks, Sig::Term)
                        .and_then(|_| table.signal(s.pid, s.start_ticks, Sig::Cont));
                    match r {
                        Err(e) => (false, e.to_string()),
                        Ok(_) => {
                            let gone = wait_gone(&recorded, &spec, cg, grace).await;
                            (
                                gone,
                                if gone {
                                    "the shellper took its tree down".into()
                                } else {
                                    format!("tree still alive after {grace:?}")
                                },
                            )
                        }
                    }
                }
                _ => (false, "the shellper is gone; its tree is not".into()),
            },
            Method::CgroupKill => match cgroup.clone() {
                Some(dir) => {
                    let r = tokio::task::spawn_blocking(move || {
                        let plan = shellper_proctree::CgroupKillPlan::new(grace);
                        shellper_proctree::kill_cgroup(
                            &shellper_proctree::Cgroup::at(&dir),
                            &RealClock,
                            &plan,
                            &mut || {},
                        )
                    })
                    .await;
                    match r {
                        Ok(r) => {
                            let gone =
                                wait_gone(&recorded, &spec, cg, Duration::from_millis(500)).await;
                            (
                                gone && r.is_clean(),
                                format!(
                                    "{} signalled, {} killed by {}, {} survivor(s){}",
                                    r.report.signalled,
                                    r.report.sigkilled,
                                    r.method
                                        .map_or("nothing (all left on SIGTERM)", |m| m.describe()),
                                    r.report.survivors.len(),
                                    if r.removed {
                                        ", cgroup removed".to_string()
                                    } else {
                                        r.remove_error.map(|e| format!(", {e}")).unwrap_or_default()
                                    }
                                ),
                            )
                        }
                        Err(e) => (false, format!("cgroup kill task failed: {e}")),
                    }
                }
                None => (false, "no cgroup".into()),
            },
            Method::OutsideLadder => {
                let rec = recorded.clone();
                let sp = shellper.clone();
                let sp_spec = spec.clone();
                let sp_cg = cgroup.clone();
                let r = tokio::task::spawn_blocking(move || {
                    outside(sp.as_ref(), &rec, &sp_spec, sp_cg.as_ref(), grace)
                })
                .await
                .unwrap_or_else(|e| (false, format!("ladder task failed: {e}")));
                let gone = wait_gone(&recorded, &spec, cg, Duration::from_millis(500)).await;
                (gone && r.0, r.1)
            }
        };
        executed.push(StepResult {
            method: m,
            ok,
            detail,
            elapsed_ms: start.elapsed().as_millis() as u64,
        });
        done = ok && !session_only;
    }
    let survivors = leftovers_async(&recorded, &spec, cg).await;
    let killed: Vec<TreeProc> = recorded
        .iter()
        .filter(|r| !survivors.iter().any(|s| s.pid == r.pid))
        .cloned()
        .collect();
    // The shellper removes its socket on an orderly exit; after SIGKILL the
    // file stays and nothing answers on it: remove it so `list` is clean.
    // Only when a connect is refused: one that hangs (a full backlog) means
    // something may still listen. Async and bounded: never a blocking
    // connect on the runtime.
    if survivors.is_empty()
        && let Some(s) = &t.socket
        && s.exists()
        && !plan.steps.contains(&Method::RemoveStaleSocket)
        && let Ok(Err(_)) =
            tokio::time::timeout(handshake, tokio::net::UnixStream::connect(s)).await
    {
        let _ = std::fs::remove_file(s);
    }
    let clean = plan.refused.is_none() && survivors.is_empty();
    Outcome {
        plan,
        executed,
        killed,
        survivors,
        clean,
    }
}

/// The outside ladder, then SIGKILL by identity of anything recorded that
/// is still alive (escaped members reparented away once the shellper died).
fn outside(
    shellper: Option<&TreeProc>,
    recorded: &[TreeProc],
    spec: &TreeSpec,
    cgroup: Option<&PathBuf>,
    grace: Duration,
) -> (bool, String) {
    let table = LinuxTable;
    let mut detail = String::new();
    if let Some(s) = shellper.filter(|s| alive(s)) {
        let mut plan = OutsidePlan::new(s.pid, Some(s.start_ticks), grace);
        plan.extra_sessions = spec.sessions.clone();
        plan.witnesses = spec.witnesses.clone();
        match kill_tree_from_outside(&table, &RealClock, &plan) {
            Ok(r) => {
                detail = format!(
                    "{} signalled, {} SIGKILLed, shellper {:?}, {} survivor(s)",
                    r.tree.signalled,
                    r.tree.sigkilled,
                    r.shellper,
                    r.tree.survivors.len()
                );
            }
            Err(e) => detail = e.to_string(),
        }
    }
    if shellper.is_none() && !spec.sessions.is_empty() {
        // The shellper is gone: its sessions get the ladder on their own
        // (HUP, TERM, then KILL), verified sessions only.
        let plan = shellper_proctree::KillPlan {
            tree: spec.clone(),
            grace,
            hard_bound: grace + shellper_proctree::ladder::DEFAULT_KILL_PHASE,
            poll: shellper_proctree::ladder::DEFAULT_POLL,
            scan: shellper_proctree::Scan::Full,
        };
        let r = shellper_proctree::kill_tree(&table, &RealClock, &plan, &mut || {});
        detail = format!(
            "sessions of the dead shellper: {} signalled, {} SIGKILLed, {} survivor(s)",
            r.signalled,
            r.sigkilled,
            r.survivors.len()
        );
    }
    let mut extra = 0;
    for _ in 0..20 {
        let left = leftovers(recorded, spec, cgroup);
        if left.is_empty() {
            break;
        }
        for p in &left {
            let _ = table.signal(p.pid, p.start_ticks, Sig::Kill);
            extra += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if extra > 0 {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!("{extra} SIGKILL(s) by identity to leftovers"));
    }
    let clean = leftovers(recorded, spec, cgroup).is_empty();
    (
        clean,
        if detail.is_empty() {
            "nothing left to kill".into()
        } else {
            detail
        },
    )
}

fn not_permitted(pid: u32) -> crate::error::Error {
    crate::error::Error::NotPermitted {
        pid,
        owner: shellper_proctree::owner_uid(pid as i32).map_or("?".into(), |u| u.to_string()),
        me: rustix::process::geteuid().as_raw(),
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
