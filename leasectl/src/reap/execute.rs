//! Carrying a plan out: each step in order, "held" re-checked before each,
//! the recorded tree checked afterwards, and anything left SIGKILLed by
//! identity and reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shellper_proctree::{
    LinuxTable, OutsidePlan, ProcInfo, ProcessTable, RealClock, Sig, TreeSpec,
    kill_tree_from_outside, members, read_stat,
};
use tower_client::{TerminateOutcome, terminate_with_token};

use crate::model::TreeProc;

use super::plan::{held_refusal, tree_proc};
use super::*;

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
