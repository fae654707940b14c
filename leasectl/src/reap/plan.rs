//! The plan of a reap, pure: a target and a /proc snapshot in, the steps
//! (or the refusal) out.

use shellper_proctree::{ProcInfo, Session, TreeSpec, members};

use crate::model::{Phase, TreeProc};
use crate::procs;

use super::*;

pub(super) fn tree_proc(p: &ProcInfo, shellper: Option<u32>, child: Option<u32>) -> TreeProc {
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

pub(super) fn held_refusal(holder: Option<&str>) -> String {
    format!(
        "its lease is held by {}; --force evicts the holder",
        holder.unwrap_or("a live Tower")
    )
}
