//! Tree membership: which processes a shellper's kill ladder may signal.
//!
//! A process is a member if
//! * it is a descendant of `root` (the shellper), following ppid links
//!   within one snapshot; the shellper is a child subreaper, so daemons that
//!   double-fork or `setsid` away are reparented to it and stay descendants; or
//! * its session id is one of `sessions` (the PTY child's session), which
//!   catches processes that escaped to PID 1 (or to another subreaper) but
//!   kept the session. A session is named by its id *and* its leader's start
//!   time ([`Session`]): the rule holds only while the snapshot shows that
//!   very leader (alive or a zombie) at pid `sid`. Once the leader is gone
//!   the sid can be reused: when the last member of a session dies the
//!   kernel frees the number, and a newcomer with that pid may `setsid` and
//!   lead an unrelated session (another shellper's child, an ssh login). A
//!   bare sid would then kill it, so a session whose leader is gone or has
//!   another start time matches nothing, unless continuity is proven by a
//!   *witness*: a process (pid and start time) seen as a member of that
//!   session while it was verified. A process never rejoins a session it
//!   left, and a sid is not reused while any process is still in its
//!   session, so a witness still in the session proves it is the same one
//!   (this keeps a session ours after its leader is killed mid-ladder; see
//!   [`record_witnesses`]),
//!
//! or it is a *known* member: a process (pid and start time) seen as a
//! descendant of the live root, or a descendant of such a process. A Tower
//! records them while its shellper lives, because a SIGKILLed shellper runs
//! no ladder, its orphans are reparented away from it (so the descendant
//! rule no longer finds them), its PTY session leader dies of the hangup
//! (so the session rule has no leader to verify), and a `setsid` daemon is
//! in no session of ours at all. A pid with the recorded start time is that
//! very process, so killing it is as safe as killing a descendant;
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

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::procfs::ProcInfo;

/// A session as a kill target: its id and the start time of its leader (the
/// process whose pid is the sid). Never a bare sid: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Session {
    pub sid: i32,
    /// `start_ticks` of the leader, process `sid`.
    pub leader_start_ticks: u64,
}

impl Session {
    /// The session `p` leads, if it leads one (`pid == sid`, pid > 1).
    pub fn led_by(p: &ProcInfo) -> Option<Session> {
        (p.pid == p.sid && p.pid > 1).then_some(Session {
            sid: p.sid,
            leader_start_ticks: p.start_ticks,
        })
    }

    /// True while `snapshot` shows this session's leader (alive or zombie)
    /// with its recorded start time.
    pub fn leader_present(&self, snapshot: &[ProcInfo]) -> bool {
        self.sid > 1
            && snapshot.iter().any(|p| {
                p.pid == self.sid && p.sid == self.sid && p.start_ticks == self.leader_start_ticks
            })
    }
}

/// Identifies the tree to kill.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeSpec {
    /// The shellper's pid; never a member itself.
    pub root: i32,
    /// The root's start time, if known. When set and the snapshot's process
    /// at `root` has another start time (or `root` is gone), the descendant
    /// rule is disabled (the pid is someone else's now) and only the session
    /// rule applies.
    pub root_start_ticks: Option<u64>,
    /// Sessions whose every process is a member, while their leader is
    /// still the recorded process (sids ≤ 1 ignored).
    pub sessions: Vec<Session>,
    /// Processes seen as members of a verified session (see the module
    /// docs): a session whose leader is gone still counts while one of them
    /// is in it. The kill ladder adds to its own copy as it sweeps.
    pub witnesses: Witnesses,
    /// Processes seen as members while the tree was verifiably ours (see
    /// the module docs): each is a member while it is alive with that
    /// start time, and so is every process descending from one of them.
    pub known: Witnesses,
}

/// Longest ppid chain we follow (a guard against cycles in a torn snapshot).
const MAX_DEPTH: usize = 4096;

/// `(pid, start_ticks)` of processes seen as members of a verified session.
pub type Witnesses = HashSet<(i32, u64)>;

/// Adds to `spec.witnesses` every member of `members` (from `snapshot`)
/// whose session `snapshot` verifies. Call it after each snapshot of a
/// sweep that takes several, so killing a session's leader does not free
/// the rest of its session.
pub fn record_witnesses(spec: &mut TreeSpec, snapshot: &[ProcInfo], members: &[ProcInfo]) {
    let verified = verified_sessions(snapshot, spec);
    spec.witnesses.extend(
        members
            .iter()
            .filter(|p| verified.contains(&p.sid))
            .map(|p| (p.pid, p.start_ticks)),
    );
}

/// The sessions of `spec` that `snapshot` shows to be the recorded ones:
/// their leader is there with its start time, or a witness is still in them.
pub fn verified_sessions(snapshot: &[ProcInfo], spec: &TreeSpec) -> Vec<i32> {
    let by_pid: HashMap<i32, &ProcInfo> = snapshot.iter().map(|p| (p.pid, p)).collect();
    verified(snapshot, &by_pid, spec)
}

fn verified(snapshot: &[ProcInfo], by_pid: &HashMap<i32, &ProcInfo>, spec: &TreeSpec) -> Vec<i32> {
    let witnesses = &spec.witnesses;
    spec.sessions
        .iter()
        .filter(|s| s.sid > 1)
        .filter(|s| {
            by_pid
                .get(&s.sid)
                .is_some_and(|l| l.sid == s.sid && l.start_ticks == s.leader_start_ticks)
                || (!witnesses.is_empty()
                    && snapshot
                        .iter()
                        .any(|p| p.sid == s.sid && witnesses.contains(&(p.pid, p.start_ticks))))
        })
        .map(|s| s.sid)
        .collect()
}

/// The live members of the tree in `snapshot`, in snapshot order.
pub fn members(snapshot: &[ProcInfo], spec: &TreeSpec) -> Vec<ProcInfo> {
    let me = std::process::id() as i32;
    let by_pid: HashMap<i32, &ProcInfo> = snapshot.iter().map(|p| (p.pid, p)).collect();
    let root_ok = match (spec.root_start_ticks, by_pid.get(&spec.root)) {
        (None, _) => spec.root > 1,
        (Some(t), Some(r)) => spec.root > 1 && r.start_ticks == t,
        (Some(_), None) => false,
    };
    // A session counts only while it is verifiably the recorded one:
    // otherwise the sid may name somebody else's session now.
    let sessions = verified(snapshot, &by_pid, spec);
    let anchors = Anchors {
        root: root_ok.then_some(spec.root),
        known: &spec.known,
    };
    let mut memo: HashMap<i32, bool> = HashMap::new();
    snapshot
        .iter()
        .filter(|p| p.pid > 1 && p.pid != spec.root && p.pid != me && p.is_live())
        .filter(|p| {
            sessions.contains(&p.sid)
                || spec.known.contains(&(p.pid, p.start_ticks))
                || ((anchors.root.is_some() || !anchors.known.is_empty())
                    && descends_from(p, &anchors, &by_pid, &mut memo))
        })
        .cloned()
        .collect()
}

/// What a ppid chain may end at to make a process a member: the root
/// (while it is the recorded process) or a known member (with its start
/// time).
struct Anchors<'a> {
    root: Option<i32>,
    known: &'a Witnesses,
}

/// Walks `p`'s ppid chain up to an anchor (the root, or a known member),
/// memoising every pid on the path.
fn descends_from(
    p: &ProcInfo,
    anchors: &Anchors<'_>,
    by_pid: &HashMap<i32, &ProcInfo>,
    memo: &mut HashMap<i32, bool>,
) -> bool {
    let mut path: Vec<i32> = Vec::new();
    let mut cur = p;
    let answer = loop {
        if let Some(&known) = memo.get(&cur.pid) {
            break known;
        }
        if let Some(root) = anchors.root
            && cur.ppid == root
        {
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
            Some(parent) if parent.start_ticks <= cur.start_ticks => {
                if anchors.known.contains(&(parent.pid, parent.start_ticks)) {
                    break true;
                }
                cur = parent;
            }
            _ => break false,
        }
    };
    memo.insert(cur.pid, answer);
    for pid in path {
        memo.insert(pid, answer);
    }
    answer
}

/// Sessions led by `root`'s direct children: the PTY child(ren) of a
/// shellper, found from outside (see [`crate::kill_tree_from_outside`]).
/// A child of `root` is pinned (its pid cannot be reused before `root`
/// reaps it), so its start time in the snapshot is its identity.
pub fn child_sessions(snapshot: &[ProcInfo], root: i32) -> Vec<Session> {
    let mut out: Vec<Session> = snapshot
        .iter()
        .filter(|p| p.ppid == root && root > 1)
        .filter_map(Session::led_by)
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

    fn ses(sid: i32, leader_start_ticks: u64) -> Session {
        Session {
            sid,
            leader_start_ticks,
        }
    }

    fn pids(v: &[ProcInfo]) -> Vec<i32> {
        let mut out: Vec<i32> = v.iter().map(|p| p.pid).collect();
        out.sort_unstable();
        out
    }

    /// After a SIGKILL of the shellper (100): its orphans went to PID 1 and
    /// its session leader (101) died of the hangup. Known members are found
    /// by pid and start time, with their descendants; a recycled pid is not.
    #[test]
    fn known_members_and_their_descendants_after_the_root_died() {
        let snap = vec![
            p(1, 0, 1, 0),
            p(102, 1, 101, 12),    // job left in the dead leader's session
            p(103, 1, 103, 13),    // setsid'd daemon
            p(104, 103, 103, 14),  // its child, forked after the record
            p(105, 1, 105, 99),    // pid 105 recycled (recorded at 15)
            p(106, 105, 105, 100), // the newcomer's child
            p(107, 1, 101, 17),    // forked into the session after the record
            p(108, 1, 108, 18),    // unrelated daemon
            p(109, 108, 108, 19),  // its child
        ];
        let known: Witnesses = [(102, 12), (103, 13), (105, 15)].into_iter().collect();
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: Some(10),
            sessions: vec![ses(101, 11)],
            witnesses: Witnesses::new(),
            known: known.clone(),
        };
        assert_eq!(pids(&members(&snap, &spec)), vec![102, 103, 104]);
        // With the known members as witnesses, the session is proven by 102
        // (still in it), so 107 is a member too.
        let spec = TreeSpec {
            witnesses: known,
            ..spec
        };
        assert_eq!(pids(&members(&snap, &spec)), vec![102, 103, 104, 107]);
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
            sessions: vec![ses(101, 11)],
            witnesses: Witnesses::new(),
            known: Witnesses::new(),
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
            sessions: vec![ses(101, 11)],
            witnesses: Witnesses::new(),
            known: Witnesses::new(),
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
            witnesses: Witnesses::new(),
            known: Witnesses::new(),
        };
        assert_eq!(pids(&members(&snap, &spec)), vec![150]);
    }

    #[test]
    fn recycled_root_disables_descendant_rule() {
        let snap = vec![
            p(7, 1, 7, 4),
            p(100, 1, 100, 99),
            p(101, 100, 101, 100),
            p(102, 1, 7, 5),
        ];
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: Some(10),
            sessions: vec![ses(7, 4)],
            witnesses: Witnesses::new(),
            known: Witnesses::new(),
        };
        assert_eq!(pids(&members(&snap, &spec)), vec![7, 102]);
    }

    #[test]
    fn bogus_sessions_and_roots_match_nothing() {
        let snap = vec![p(1, 0, 1, 0), p(2, 0, 0, 0), p(3, 2, 0, 1), p(10, 1, 10, 2)];
        for root in [0, 1, -1] {
            let spec = TreeSpec {
                root,
                root_start_ticks: None,
                sessions: vec![ses(0, 0), ses(1, 0), ses(-1, 0)],
                witnesses: Witnesses::new(),
                known: Witnesses::new(),
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
            witnesses: Witnesses::new(),
            known: Witnesses::new(),
        };
        assert!(members(&snap, &spec).is_empty());
    }

    #[test]
    fn child_sessions_are_session_leading_children() {
        let snap = vec![p(100, 1, 100, 1), p(101, 100, 101, 2), p(102, 100, 100, 3)];
        assert_eq!(child_sessions(&snap, 100), vec![ses(101, 2)]);
    }

    #[test]
    fn a_reused_sid_matches_nothing() {
        // Session 101's leader (start 11) exited and its pid now leads an
        // unrelated session (an ssh login, another shellper's child).
        let snap = vec![
            p(100, 1, 100, 10),
            p(101, 1, 101, 500), // newcomer leading a new session 101
            p(102, 101, 101, 501),
        ];
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: Some(10),
            sessions: vec![ses(101, 11)],
            witnesses: Witnesses::new(),
            known: Witnesses::new(),
        };
        assert!(members(&snap, &spec).is_empty());
    }

    #[test]
    fn a_session_whose_leader_is_gone_matches_nothing_but_a_zombie_leader_counts() {
        let member = p(102, 1, 101, 12);
        let spec = TreeSpec {
            root: 100,
            root_start_ticks: Some(10),
            sessions: vec![ses(101, 11)],
            witnesses: Witnesses::new(),
            known: Witnesses::new(),
        };
        let gone = vec![p(100, 1, 100, 10), member.clone()];
        assert!(members(&gone, &spec).is_empty());
        let mut zombie = p(101, 1, 101, 11);
        zombie.state = 'Z';
        let snap = vec![p(100, 1, 100, 10), zombie, member];
        assert_eq!(pids(&members(&snap, &spec)), vec![102]);
        assert!(spec.sessions[0].leader_present(&snap));
        assert!(!spec.sessions[0].leader_present(&gone));
        // A member seen while the session was verified keeps it ours.
        let mut seen = spec.clone();
        record_witnesses(&mut seen, &snap, &members(&snap, &spec));
        assert_eq!(pids(&members(&gone, &seen)), vec![102]);
        // A witness with another start time (pid reused) proves nothing.
        let mut stranger = spec.clone();
        stranger.witnesses = [(102, 13)].into_iter().collect();
        assert!(members(&gone, &stranger).is_empty());
    }
}
