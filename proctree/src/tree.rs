//! Tree membership: which processes a shellper's kill ladder may signal.
//!
//! A process is a member if
//! * it is a descendant of `root` (the shellper), following ppid links
//!   within one snapshot; the shellper is a child subreaper, so daemons that
//!   double-fork or `setsid` away are reparented to it and stay descendants; or
//! * its session id is one of `sessions` (the PTY child's session), which
//!   catches processes that escaped to PID 1 (or to another subreaper) but
//!   kept the session,
//!
//! and it is never `root`, never PID 1 (or any pid ≤ 1), never the calling
//! process, and never a zombie (zombies are gone for every purpose here).
//! Nothing else is ever a member: a pid that appears in no rule is never
//! signalled.
//!
//! A snapshot is not atomic, so ppid links can be stale: if a parent died and
//! its pid was recycled while we read `/proc`, a child could appear to hang
//! below an unrelated newcomer (or a newcomer below our tree). A parent is
//! always older than its child, so a link whose "parent" started *after* the
//! child is rejected.

use std::collections::HashMap;

use crate::procfs::ProcInfo;

/// Identifies the tree to kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSpec {
    /// The shellper's pid; never a member itself.
    pub root: i32,
    /// The root's start time, if known. When set and the snapshot's process
    /// at `root` has another start time (or `root` is gone), the descendant
    /// rule is disabled (the pid is someone else's now) and only the session
    /// rule applies.
    pub root_start_ticks: Option<u64>,
    /// Session ids whose every process is a member (values ≤ 1 ignored).
    pub sessions: Vec<i32>,
}

/// Longest ppid chain we follow (a guard against cycles in a torn snapshot).
const MAX_DEPTH: usize = 4096;

/// The live members of the tree in `snapshot`, in snapshot order.
pub fn members(snapshot: &[ProcInfo], spec: &TreeSpec) -> Vec<ProcInfo> {
    let me = std::process::id() as i32;
    let by_pid: HashMap<i32, &ProcInfo> = snapshot.iter().map(|p| (p.pid, p)).collect();
    let root_ok = match (spec.root_start_ticks, by_pid.get(&spec.root)) {
        (None, _) => spec.root > 1,
        (Some(t), Some(r)) => spec.root > 1 && r.start_ticks == t,
        (Some(_), None) => false,
    };
    let sessions: Vec<i32> = spec.sessions.iter().copied().filter(|s| *s > 1).collect();
    let mut memo: HashMap<i32, bool> = HashMap::new();
    snapshot
        .iter()
        .filter(|p| p.pid > 1 && p.pid != spec.root && p.pid != me && p.is_live())
        .filter(|p| {
            sessions.contains(&p.sid)
                || (root_ok && descends_from(p, spec.root, &by_pid, &mut memo))
        })
        .cloned()
        .collect()
}

/// Walks `p`'s ppid chain up to `root`, memoising every pid on the path.
fn descends_from(
    p: &ProcInfo,
    root: i32,
    by_pid: &HashMap<i32, &ProcInfo>,
    memo: &mut HashMap<i32, bool>,
) -> bool {
    let mut path: Vec<i32> = Vec::new();
    let mut cur = p;
    let answer = loop {
        if let Some(&known) = memo.get(&cur.pid) {
            break known;
        }
        if cur.ppid == root {
            // Direct child of root. (The root itself is older than any of
            // its children; if the root's pid had been recycled the caller's
            // root_start_ticks check has disabled this rule.)
            break by_pid
                .get(&root)
                .is_none_or(|r| r.start_ticks <= cur.start_ticks);
        }
        if cur.ppid <= 1 || path.len() >= MAX_DEPTH {
            break false;
        }
        path.push(cur.pid);
        match by_pid.get(&cur.ppid) {
            // A parent that started after its child is a recycled pid.
            Some(parent) if parent.start_ticks <= cur.start_ticks => cur = parent,
            _ => break false,
        }
    };
    memo.insert(cur.pid, answer);
    for pid in path {
        memo.insert(pid, answer);
    }
    answer
}

/// Session ids of `root`'s direct children that lead their own session: the
/// PTY child(ren) of a shellper, found from outside (see
/// [`crate::kill_tree_from_outside`]).
pub fn child_sessions(snapshot: &[ProcInfo], root: i32) -> Vec<i32> {
    let mut out: Vec<i32> = snapshot
        .iter()
        .filter(|p| p.ppid == root && p.pid == p.sid && p.pid > 1)
        .map(|p| p.sid)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, sid: i32, start: u64) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            pgid: pid,
            sid,
            state: 'S',
            start_ticks: start,
            comm: format!("p{pid}"),
            cmdline: Vec::new(),
        }
    }

    fn pids(v: &[ProcInfo]) -> Vec<i32> {
        let mut out: Vec<i32> = v.iter().map(|p| p.pid).collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn descendants_and_session_but_never_root_init_or_outsiders() {
        let snap = vec![
            p(1, 0, 1, 0),
            p(50, 1, 50, 5),      // Tower: root's parent, outsider
            p(100, 50, 100, 10),  // root (shellper)
            p(101, 100, 101, 11), // PTY child, session leader
            p(102, 101, 101, 12), // job
            p(103, 100, 103, 13), // setsid'd daemon reparented to root
            p(104, 103, 103, 14), // its child
            p(105, 1, 101, 15),   // double-forked into PID 1, kept the session
            p(106, 1, 106, 16),   // unrelated daemon
            p(107, 50, 50, 17),   // Tower's other child
        ];
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: Some(10),
            sessions: vec![101],
        };
        assert_eq!(pids(&members(&snap, &spec)), vec![101, 102, 103, 104, 105]);
    }

    #[test]
    fn zombies_are_not_members() {
        let mut z = p(102, 100, 101, 12);
        z.state = 'Z';
        let snap = vec![p(100, 1, 100, 10), p(101, 100, 101, 11), z];
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: None,
            sessions: vec![101],
        };
        assert_eq!(pids(&members(&snap, &spec)), vec![101]);
    }

    #[test]
    fn stale_parent_link_is_rejected() {
        // 200's parent 150 died and its pid was reused by a newcomer started
        // later *inside* the tree: 200 (an outsider) must not join.
        let snap = vec![
            p(100, 1, 100, 10),
            p(150, 100, 100, 50), // newcomer child of root with recycled pid
            p(200, 150, 200, 20), // outsider whose parent pid 150 was recycled
        ];
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: Some(10),
            sessions: vec![],
        };
        assert_eq!(pids(&members(&snap, &spec)), vec![150]);
    }

    #[test]
    fn recycled_root_disables_descendant_rule() {
        let snap = vec![p(100, 1, 100, 99), p(101, 100, 101, 100), p(102, 1, 7, 5)];
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: Some(10),
            sessions: vec![7],
        };
        assert_eq!(pids(&members(&snap, &spec)), vec![102]);
    }

    #[test]
    fn bogus_sessions_and_roots_match_nothing() {
        let snap = vec![p(1, 0, 1, 0), p(2, 0, 0, 0), p(3, 2, 0, 1), p(10, 1, 10, 2)];
        for root in [0, 1, -1] {
            let spec = TreeSpec {
                root,
                root_start_ticks: None,
                sessions: vec![0, 1, -1],
            };
            assert!(members(&snap, &spec).is_empty(), "root {root}");
        }
    }

    #[test]
    fn cycles_terminate() {
        let snap = vec![p(10, 11, 10, 5), p(11, 10, 10, 5), p(100, 1, 100, 1)];
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: None,
            sessions: vec![],
        };
        assert!(members(&snap, &spec).is_empty());
    }

    #[test]
    fn child_sessions_are_session_leading_children() {
        let snap = vec![p(100, 1, 100, 1), p(101, 100, 101, 2), p(102, 100, 100, 3)];
        assert_eq!(child_sessions(&snap, 100), vec![101]);
    }
}
