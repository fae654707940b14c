//! The record of a shellper's tree, and its outside kill: if the shellper
//! is SIGKILLed (no ladder of its own), the holder takes down what it
//! recorded of the tree, off the runtime thread, and reports it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shellper_proctree::tree::Witnesses;
use shellper_proctree::{
    KillPlan, LinuxTable, ProcessTable, RealClock, Session, TreeSpec, kill_tree,
};

use super::events::Event;
use super::run::Holder;

/// The shellper's tree as last seen while the shellper was alive: every
/// descendant by pid and start time, and the sessions they lead. If the
/// shellper is SIGKILLed, its orphans are reparented away from it and its
/// PTY session leader usually dies of the hangup, so neither the descendant
/// rule nor the session rule can prove them ours any more; these records
/// can (a pid with the recorded start time is that very process).
#[derive(Debug, Default)]
pub(crate) struct TreeMemory {
    pub(super) known: Witnesses,
    pub(super) sessions: Vec<Session>,
    /// A walk is running (at most one per shellper).
    pub(super) walking: bool,
    /// Renewals between two walks now: 1 while the tree changes, doubled
    /// after each walk that found it unchanged, up to the configured
    /// backoff ([`TowerConfig::tree_walk_backoff`](crate::TowerConfig)).
    every: u32,
    /// Renewals since the last walk.
    since: u32,
}

impl TreeMemory {
    /// Whether this renewal walks (and counts it).
    fn due(&mut self) -> bool {
        self.since = self.since.saturating_add(1);
        self.since >= self.every.max(1)
    }

    /// Keeps a walk's result and sets the next interval: back to every
    /// renewal if the tree changed, twice as long (at most `max`) if not.
    fn record(&mut self, known: Witnesses, sessions: Vec<Session>, max: u32) {
        let same = known == self.known && sessions == self.sessions;
        self.every = if same {
            self.every.max(1).saturating_mul(2).min(max.max(1))
        } else {
            1
        };
        self.known = known;
        self.sessions = sessions;
    }
}

/// One walk to make: the shellper `root` (started at `ticks`), and where
/// its result goes.
#[derive(Debug)]
pub(crate) struct WalkJob {
    root: i32,
    ticks: u64,
    memory: Arc<Mutex<TreeMemory>>,
    max: u32,
}

impl WalkJob {
    fn run(self) {
        let walked = walk_tree(self.root, self.ticks);
        let mut m = lock(&self.memory);
        m.walking = false;
        if let Some((known, sessions)) = walked {
            m.record(known, sessions, self.max);
        }
    }
}

/// The thread that walks a Tower's held shellpers' trees, one job after
/// another. Why one thread and not the runtime's blocking pool: renewals
/// come in coalesced batches, and a task per walk woke (or started) a pool
/// thread per walk, a wake-up and often a thread's creation each; one
/// thread fed by a queue wakes once per batch. The queue is bounded by the
/// number of holders (each has at most one walk queued or running). /proc
/// `stat` and `children` reads never wait for the process they describe,
/// so one slow walk cannot hold the others up for long. The thread ends
/// when the Tower's shared state is dropped (the queue's sender with it).
#[derive(Debug, Default)]
pub(crate) struct TreeRecorder {
    tx: Mutex<Option<std::sync::mpsc::Sender<WalkJob>>>,
}

impl TreeRecorder {
    /// Queues `job`, starting the thread on first use (or again, if it
    /// died). If no thread can be started (the process is out of threads),
    /// the walk is made here, on the caller's thread: the record matters
    /// more than a short stall.
    pub(crate) fn walk(&self, job: WalkJob) {
        let mut tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let job = match tx.as_ref() {
            Some(t) => match t.send(job) {
                Ok(()) => return,
                // The thread died (a panic in a walk): start another.
                Err(std::sync::mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (new_tx, rx) = std::sync::mpsc::channel::<WalkJob>();
        let started = std::thread::Builder::new()
            .name("tree-recorder".into())
            .spawn(move || {
                for job in rx {
                    job.run();
                }
            });
        match started {
            Ok(_) => {
                // Invariant: the receiver lives in the thread just started.
                let _ = new_tx.send(job);
                *tx = Some(new_tx);
            }
            Err(e) => {
                tracing::warn!(error = %e, "no thread for tree walks; walking inline");
                *tx = None;
                drop(tx);
                job.run();
            }
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every update is one assignment).
pub(super) fn lock(m: &Mutex<TreeMemory>) -> std::sync::MutexGuard<'_, TreeMemory> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The live tree of `root` (which must be the process started at `ticks`,
/// alive before and after the walk: a walk that raced its death may have
/// missed members reparented away, and is not kept).
pub(super) fn walk_tree(root: i32, ticks: u64) -> Option<(Witnesses, Vec<Session>)> {
    let tree: Vec<shellper_proctree::ProcInfo> =
        match shellper_proctree::procfs::descendants_snapshot(root) {
            Some(v) => {
                let r = v.first()?;
                if r.pid != root || r.start_ticks != ticks || !r.is_live() {
                    return None;
                }
                v.into_iter().skip(1).collect()
            }
            // No `children` files in this kernel: one full scan.
            None => shellper_proctree::members(
                &shellper_proctree::snapshot(),
                &TreeSpec {
                    root,
                    root_start_ticks: Some(ticks),
                    ..TreeSpec::default()
                },
            ),
        };
    if !LinuxTable.alive(root, ticks) {
        return None;
    }
    let live = tree.iter().filter(|p| p.is_live() && p.pid > 1);
    let known = live.clone().map(|p| (p.pid, p.start_ticks)).collect();
    let mut sessions: Vec<Session> = live.filter_map(Session::led_by).collect();
    sessions.sort_unstable();
    sessions.dedup();
    Some((known, sessions))
}

impl Holder {
    /// Walks the shellper's tree off the runtime thread (at most one walk
    /// at a time) and keeps it in [`TreeMemory`]: what proves its members
    /// ours if the shellper is SIGKILLed. Called at adoption (`always`) and
    /// at each renewal, which walks while the tree changes and backs off
    /// while it does not (every 2nd, 4th, ... renewal, up to
    /// `tree_walk_backoff`): the record is at most one renewal interval old
    /// while processes come and go, and at most the backoff's worth of
    /// renewals old in a tree that has been still since. A process that
    /// escaped both the PTY session and every recorded ancestor since the
    /// last walk before a SIGKILL cannot be proven ours and is left alone.
    /// A session in a cgroup of its own is never walked: it is killed
    /// through its cgroup, exactly.
    pub(crate) fn remember_tree(&self, always: bool) {
        if self.handle.info.cgroup.is_some() {
            // The session's cgroup is the record: `cgroup.kill` takes every
            // process the PTY child started, born after any walk included
            // (a shellper given a cgroup it cannot use does not start), so
            // walking /proc for it at each renewal would only cost.
            return;
        }
        {
            let mut m = lock(&self.tree);
            if m.walking || !(m.due() || always) {
                return;
            }
            m.walking = true;
            m.since = 0;
        }
        self.ctx.recorder.walk(WalkJob {
            root: self.handle.info.pid as i32,
            ticks: self.handle.info.start_ticks,
            memory: self.tree.clone(),
            max: self.ctx.cfg.tree_walk_backoff,
        });
    }

    /// Takes down, from outside and off the runtime thread, what the dead
    /// shellper's tree left running: processes recorded as its members
    /// while it lived (pid and start time) and their descendants, and the
    /// members of its sessions while each is provably the same one (leader
    /// with its start time, or a recorded member still in it). Reports what
    /// it killed and what survived.
    ///
    /// A session in a cgroup of its own is killed through it first
    /// (`cgroup.kill`): exact, processes born after the last renewal
    /// included. The recorded tree is then swept as well (normally nothing
    /// is left of it; it covers a shellper that could not use the cgroup).
    pub(super) fn kill_orphaned_tree(&self) {
        let cgroup = self
            .handle
            .info
            .cgroup
            .clone()
            .map(shellper_proctree::Cgroup::at);
        let (known, mut sessions) = {
            let m = lock(&self.tree);
            (m.known.clone(), m.sessions.clone())
        };
        sessions.extend(self.session);
        sessions.sort_unstable();
        sessions.dedup();
        if sessions.is_empty() && known.is_empty() && cgroup.is_none() {
            return;
        }
        let info = &self.handle.info;
        let plan = KillPlan {
            tree: TreeSpec {
                root: info.pid as i32,
                root_start_ticks: Some(info.start_ticks),
                sessions,
                // A recorded member still in a session proves it the same
                // one: a sid is not reused while any process is in it.
                witnesses: known.clone(),
                known,
            },
            ..KillPlan::new(
                info.pid as i32,
                self.session,
                self.ctx.cfg.lease.kill_grace.min(Duration::from_secs(5)),
            )
        };
        let events = self.ctx.events.clone();
        let id = self.id();
        let cg_plan = shellper_proctree::CgroupKillPlan::new(plan.grace);
        tokio::spawn(async move {
            let res = tokio::task::spawn_blocking(move || {
                let by_cgroup = cgroup.filter(|c| c.exists()).map(|c| {
                    let r = shellper_proctree::kill_cgroup(&c, &RealClock, &cg_plan, &mut || {});
                    (c.dir().display().to_string(), r)
                });
                let snap = shellper_proctree::snapshot();
                let verified = !shellper_proctree::members(&snap, &plan.tree).is_empty();
                let report =
                    verified.then(|| kill_tree(&LinuxTable, &RealClock, &plan, &mut || {}));
                (verified, report, by_cgroup)
            })
            .await;
            let Ok((verified, report, by_cgroup)) = res else {
                return;
            };
            if !verified && by_cgroup.is_none() {
                tracing::warn!(%id, "shellper killed; nothing left of its tree can be proven ours: left alone");
            }
            let mut r = report.unwrap_or_default();
            let mut cgroup = None;
            if let Some((path, c)) = by_cgroup {
                r.signalled += c.report.signalled.max(c.report.sigkilled);
                r.survivors.extend(c.report.survivors);
                r.elapsed += c.report.elapsed;
                if let Some(e) = c.remove_error {
                    tracing::warn!(%id, "session cgroup left behind: {e}");
                }
                cgroup = Some(path);
            }
            if !r.survivors.is_empty() {
                tracing::error!(%id, survivors = ?r.survivors, "processes of a killed shellper's tree survived");
            }
            events.send(Event::TreeKilled {
                id,
                signalled: r.signalled,
                survivors: r.survivors.len() as u32,
                elapsed_ms: r.elapsed.as_millis() as u64,
                session_verified: verified || cgroup.is_some(),
                cgroup,
            });
        });
    }
}

#[cfg(test)]
mod tree_memory_tests {
    use super::*;

    fn tree(pids: &[i32]) -> Witnesses {
        pids.iter().map(|&p| (p, 100 + p as u64)).collect()
    }

    /// Walks the renewals `1..=n` would start, feeding each walk `trees`.
    fn walks(m: &mut TreeMemory, n: u32, trees: impl Fn(u32) -> Witnesses, max: u32) -> Vec<u32> {
        let mut at = Vec::new();
        for r in 1..=n {
            if m.due() {
                m.since = 0;
                at.push(r);
                m.record(trees(r), Vec::new(), max);
            }
        }
        at
    }

    /// A still tree is walked every 2nd, 4th, then every 8th renewal; a
    /// change brings the walks back to every renewal; a backoff of 1 walks
    /// at every renewal (the cadence before the backoff existed).
    #[test]
    fn walks_back_off_while_the_tree_is_still_and_resume_on_a_change() {
        let mut m = TreeMemory::default();
        m.record(tree(&[2, 3]), Vec::new(), 8); // the walk at adoption
        let still = walks(&mut m, 40, |_| tree(&[2, 3]), 8);
        assert_eq!(still, vec![1, 3, 7, 15, 23, 31, 39]);
        // The tree grows after renewal 40: seen at the next due walk (the
        // 7th renewal from there), then walked at the next renewal, and
        // backing off again once still.
        let grows = walks(&mut m, 20, |_| tree(&[2, 3, 4]), 8);
        assert_eq!(grows, vec![7, 8, 10, 14]);
        let mut every = TreeMemory::default();
        assert_eq!(walks(&mut every, 5, |_| tree(&[2]), 1), vec![1, 2, 3, 4, 5]);
    }
}
