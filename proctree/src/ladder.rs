//! The whole-tree kill ladder.
//!
//! Why a ladder and why sweeps (brief §2 "Kill the whole tree", §6 "Killing
//! a PTY session"): SIGHUP alone is ignored by `nohup` and by shells that trap
//! it; a stopped process acts on nothing until SIGCONT; a process may ignore
//! SIGTERM; and any of them can fork while we work. So:
//!
//! 1. sweep 1: SIGHUP then SIGCONT to every member (the polite hang-up a
//!    closing terminal would give; CONT so stopped jobs receive it);
//! 2. later sweeps, every `poll`: SIGTERM + SIGCONT to every member not yet
//!    TERMed (newcomers also get their SIGHUP first; stopped members get
//!    SIGCONT again), until no member is left or `grace` has passed;
//! 3. then SIGKILL to every member, sweeping until a full pass finds nothing
//!    or `hard_bound` (measured from the start) has passed. At least one
//!    SIGKILL pass always happens, even if `hard_bound <= grace`.
//!
//! Membership is recomputed from a fresh snapshot on every sweep
//! ([`crate::tree::members`]), every signal names its target by pid *and*
//! start time, and zombies count as gone. The ladder does not reap: the
//! caller's `reap` hook runs before every sweep (the shellper passes its one
//! reaper, [`crate::reap_zombies`]; outsiders pass a no-op).
//!
//! The ladder is synchronous (it sleeps through [`Clock::sleep`]): the
//! shellper runs it on `spawn_blocking`. Time and sleeping come from a
//! [`Clock`] so tests drive it deterministically.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::procfs::ProcInfo;
use crate::table::{Delivery, ProcessTable, Sig};
use crate::tree::{self, Session, TreeSpec};

/// Time source for the ladder.
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// `Instant::now` and `std::thread::sleep`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Default interval between sweeps: short, because each member that dies
/// early shortens the whole ladder, and cheap (one `/proc` scan).
pub const DEFAULT_POLL: Duration = Duration::from_millis(10);

/// Default length of the SIGKILL phase in [`KillPlan::new`].
pub const DEFAULT_KILL_PHASE: Duration = Duration::from_secs(2);

/// How each sweep finds the tree's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scan {
    /// Read every process in the table (`/proc`). Always correct; costs
    /// O(processes on the machine) per sweep.
    #[default]
    Full,
    /// Walk the root's descendants only
    /// ([`ProcessTable::list_descendants`], O(tree)); the tree counts as gone
    /// after two empty walks in a row (one walk is best-effort under
    /// concurrent forks). Correct only when every member is a descendant of
    /// a live root: true for a shellper's own ladder, because it is a child
    /// subreaper (orphans of its tree are reparented to it) and no process can
    /// join a session it did not start in. Why it exists: when hundreds of
    /// shellpers' windows end together, hundreds of full scans at once starve
    /// every ladder.
    Descendants,
}

/// What to kill and how long to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillPlan {
    pub tree: TreeSpec,
    /// From the first signal until SIGKILL (the lease's kill grace).
    pub grace: Duration,
    /// Total bound, from the start, after which the ladder gives up and
    /// reports survivors (returns within about `hard_bound + poll`).
    pub hard_bound: Duration,
    /// Interval between sweeps.
    pub poll: Duration,
    /// How sweeps list processes.
    pub scan: Scan,
}

impl KillPlan {
    /// Kill the tree of `root` (descendants) plus every process of
    /// `session` (the PTY child's session: its sid is the child's pid, which
    /// called `setsid`, with the child's start time), with `grace` before
    /// SIGKILL and [`DEFAULT_KILL_PHASE`] after it.
    pub fn new(root: i32, session: Option<Session>, grace: Duration) -> KillPlan {
        KillPlan {
            tree: TreeSpec {
                root,
                root_start_ticks: None,
                sessions: session.into_iter().collect(),
                witnesses: tree::Witnesses::new(),
                known: tree::Witnesses::new(),
            },
            grace,
            hard_bound: grace.saturating_add(DEFAULT_KILL_PHASE),
            poll: DEFAULT_POLL,
            scan: Scan::Full,
        }
    }
}

/// The outcome of one ladder run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillReport {
    /// Distinct processes (pid + start time) that received at least one signal.
    pub signalled: u32,
    /// Distinct processes that needed SIGKILL (ignored or outlived the grace).
    pub sigkilled: u32,
    /// Members still alive when the hard bound passed (empty on success).
    /// `cmdline` is filled where it can be read without blocking.
    pub survivors: Vec<ProcInfo>,
    pub elapsed: Duration,
    /// Snapshots taken (the last one found the tree empty, on success).
    pub sweeps: u32,
    /// Signal failures other than "already gone" (for example EPERM on a
    /// setuid member), deduplicated, at most [`MAX_ERRORS`].
    pub errors: Vec<String>,
}

/// Cap on [`KillReport::errors`].
pub const MAX_ERRORS: usize = 32;

/// Cap on survivors whose cmdline is read for the report.
const DESCRIBE_SURVIVORS: usize = 32;

impl KillReport {
    /// True if nothing of the tree is left alive.
    pub fn is_clean(&self) -> bool {
        self.survivors.is_empty()
    }

    fn merge(&mut self, later: KillReport) {
        self.signalled += later.signalled;
        self.sigkilled += later.sigkilled;
        self.survivors = later.survivors;
        self.elapsed += later.elapsed;
        self.sweeps += later.sweeps;
        for e in later.errors {
            self.push_error(e);
        }
    }

    fn push_error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS && !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }
}

type Id = (i32, u64);

struct Sender<'a, T: ?Sized> {
    table: &'a T,
    report: KillReport,
    signalled: HashSet<Id>,
    sigkilled: HashSet<Id>,
}

impl<T: ProcessTable + ?Sized> Sender<'_, T> {
    fn send(&mut self, p: &ProcInfo, sig: Sig) -> bool {
        match self.table.signal(p.pid, p.start_ticks, sig) {
            Ok(Delivery::Sent) => {
                let id = (p.pid, p.start_ticks);
                if self.signalled.insert(id) {
                    self.report.signalled += 1;
                }
                if sig == Sig::Kill && self.sigkilled.insert(id) {
                    self.report.sigkilled += 1;
                }
                true
            }
            Ok(Delivery::Gone | Delivery::Recycled) => false,
            Err(e) => {
                self.report.push_error(e.to_string());
                false
            }
        }
    }
}

/// Runs the ladder against `table` (see the module docs). `reap` is called
/// before every sweep and once at the end.
pub fn kill_tree<T, C>(table: &T, clock: &C, plan: &KillPlan, reap: &mut dyn FnMut()) -> KillReport
where
    T: ProcessTable + ?Sized,
    C: Clock + ?Sized,
{
    let mut spec = plan.tree.clone();
    ladder(table, clock, plan, &mut spec, reap)
}

/// The ladder over `spec` (which gains witnesses as it sweeps, so a caller
/// running several ladders over one tree keeps what the first one saw);
/// `plan.tree` is not used.
fn ladder<T, C>(
    table: &T,
    clock: &C,
    plan: &KillPlan,
    spec: &mut TreeSpec,
    reap: &mut dyn FnMut(),
) -> KillReport
where
    T: ProcessTable + ?Sized,
    C: Clock + ?Sized,
{
    let start = clock.now();
    let grace_end = start + plan.grace.min(plan.hard_bound);
    let hard_end = start + plan.hard_bound;
    let poll = plan.poll.max(Duration::from_millis(1));
    let mut tx = Sender {
        table,
        report: KillReport::default(),
        signalled: HashSet::new(),
        sigkilled: HashSet::new(),
    };
    let mut hupped: HashSet<Id> = HashSet::new();
    let mut termed: HashSet<Id> = HashSet::new();
    let mut kill_passes = 0u32;
    let mut empty_walks = 0u32;
    // The tree grows witnesses (members of verified sessions) as we sweep:
    // they keep a session ours after its leader died.
    loop {
        reap();
        let (snapshot, walked) = match plan.scan {
            Scan::Descendants => match table.list_descendants(spec.root) {
                Some(v) => (v, true),
                None => (table.list(), false),
            },
            Scan::Full => (table.list(), false),
        };
        let members = tree::members(&snapshot, spec);
        tree::record_witnesses(spec, &snapshot, &members);
        tx.report.sweeps += 1;
        if members.is_empty() {
            empty_walks += 1;
            // A full scan is conclusive; a walk must come up empty twice.
            if !walked || empty_walks >= 2 {
                break;
            }
            clock.sleep(poll);
            continue;
        }
        empty_walks = 0;
        let now = clock.now();
        let killing = now >= grace_end;
        if killing && kill_passes > 0 && now >= hard_end {
            tx.report.survivors = members;
            break;
        }
        for p in &members {
            let id = (p.pid, p.start_ticks);
            if killing {
                tx.send(p, Sig::Kill);
                continue;
            }
            // HUP before CONT and TERM before CONT: a stopped process keeps
            // the signal pending and acts on it as soon as it continues.
            let mut cont = p.is_stopped();
            if hupped.insert(id) {
                tx.send(p, Sig::Hup);
                cont = true;
            }
            if tx.report.sweeps > 1 && termed.insert(id) {
                tx.send(p, Sig::Term);
                cont = true;
            }
            if cont {
                tx.send(p, Sig::Cont);
            }
        }
        if killing {
            kill_passes += 1;
        }
        let after = clock.now();
        let wait = if killing && after >= hard_end {
            // One last look after the final SIGKILL pass.
            poll
        } else {
            let next = if killing { hard_end } else { grace_end };
            poll.min(next.saturating_duration_since(after))
        };
        clock.sleep(wait);
    }
    reap();
    let mut report = tx.report;
    for s in report.survivors.iter_mut().take(DESCRIBE_SURVIVORS) {
        if let Some(argv) = table.cmdline(s.pid) {
            s.cmdline = argv;
        }
    }
    report.elapsed = clock.now().saturating_duration_since(start);
    report
}

/// The operators' variant: kill a shellper's tree from another process,
/// typically because the shellper itself is wedged or stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsidePlan {
    pub shellper_pid: i32,
    /// The shellper's start time as recorded at spawn (registry
    /// `start_ticks`); when set, a recycled pid is refused.
    pub shellper_start_ticks: Option<u64>,
    /// Sessions to add to those found (for example the PTY child a STATUS
    /// reported, once it is no longer the shellper's child). Each counts
    /// only while its recorded leader is there ([`Session`]) or a witness is.
    pub extra_sessions: Vec<Session>,
    /// Processes the caller saw in those sessions while they were verified
    /// (see [`TreeSpec::witnesses`]).
    pub witnesses: tree::Witnesses,
    pub grace: Duration,
    pub hard_bound: Duration,
    /// How long the shellper gets to exit on SIGTERM before SIGKILL.
    pub shellper_grace: Duration,
    pub poll: Duration,
}

impl OutsidePlan {
    pub fn new(shellper_pid: i32, shellper_start_ticks: Option<u64>, grace: Duration) -> Self {
        OutsidePlan {
            shellper_pid,
            shellper_start_ticks,
            extra_sessions: Vec::new(),
            witnesses: tree::Witnesses::new(),
            grace,
            hard_bound: grace.saturating_add(DEFAULT_KILL_PHASE),
            shellper_grace: Duration::from_secs(1),
            poll: DEFAULT_POLL,
        }
    }
}

/// What became of the shellper itself in [`kill_tree_from_outside`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellperFate {
    /// It was gone (or a zombie) once its tree was dead.
    AlreadyGone,
    /// It exited on SIGTERM (+SIGCONT) within `shellper_grace`.
    ExitedAfterTerm,
    /// It needed SIGKILL.
    Killed,
    /// Still alive after SIGKILL (uninterruptible sleep?).
    Survived,
}

/// Result of [`kill_tree_from_outside`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideReport {
    pub tree: KillReport,
    pub shellper: ShellperFate,
    /// The sessions treated as the shellper's (children's + extra).
    pub sessions: Vec<Session>,
}

impl OutsideReport {
    pub fn is_clean(&self) -> bool {
        self.tree.is_clean() && self.shellper != ShellperFate::Survived
    }
}

/// Kills a shellper's whole tree, then the shellper, from another process.
///
/// Order (decided): **tree first, shellper last.** The shellper is a child
/// subreaper, so while it exists (running, wedged or stopped) every escaped
/// daemon of its tree is reparented to it and stays its descendant. Killing
/// it first would reparent them to PID 1, where nothing distinguishes them
/// from unrelated processes unless they kept the PTY session. So:
///
/// 1. check the pid is the shellper we mean (start time), refuse pid ≤ 1 and
///    ourselves;
/// 2. find the PTY sessions: the sessions of the shellper's direct children
///    that lead their own session, plus `extra_sessions`;
/// 3. run the same ladder as [`kill_tree`] with root = the shellper (the
///    shellper itself is never signalled by it, and nothing is reaped: we
///    are not the parent; zombies count as gone). No SIGSTOP is used: a
///    stopped shellper cannot interfere, a running one may be running its
///    own ladder concurrently, which is harmless;
/// 4. the shellper gets SIGTERM + SIGCONT (a healthy one then exits in order,
///    removing its socket file) and, after `shellper_grace`, SIGKILL;
/// 5. one more sweep of the sessions catches anything the shellper started
///    between steps 3 and 4.
pub fn kill_tree_from_outside<T, C>(
    table: &T,
    clock: &C,
    plan: &OutsidePlan,
) -> Result<OutsideReport, Error>
where
    T: ProcessTable + ?Sized,
    C: Clock + ?Sized,
{
    let pid = plan.shellper_pid;
    if pid <= 1 {
        return Err(Error::Refused {
            pid,
            why: "pid 1 and non-positive pids are never signalled",
        });
    }
    if pid == std::process::id() as i32 {
        return Err(Error::Refused {
            pid,
            why: "that is the calling process",
        });
    }
    let snap = table.list();
    let shellper = snap
        .iter()
        .find(|p| p.pid == pid)
        .filter(|p| plan.shellper_start_ticks.is_none_or(|t| t == p.start_ticks))
        .ok_or(Error::NoSuchProcess { pid })?;
    let ticks = shellper.start_ticks;
    let mut sessions = tree::child_sessions(&snap, pid);
    sessions.extend(plan.extra_sessions.iter().copied().filter(|s| s.sid > 1));
    sessions.sort_unstable();
    sessions.dedup();
    let mut spec = TreeSpec {
        root: pid,
        root_start_ticks: Some(ticks),
        sessions: sessions.clone(),
        witnesses: plan.witnesses.clone(),
        known: tree::Witnesses::new(),
    };
    let now = tree::members(&snap, &spec);
    tree::record_witnesses(&mut spec, &snap, &now);
    let plan_ladder = KillPlan {
        tree: spec.clone(),
        grace: plan.grace,
        hard_bound: plan.hard_bound,
        poll: plan.poll,
        // From outside the shellper may be stopped or half dead: scan
        // everything, so session members found through no live ancestry
        // are caught too.
        scan: Scan::Full,
    };
    let mut report = ladder(table, clock, &plan_ladder, &mut spec, &mut || {});

    let poll = plan.poll.max(Duration::from_millis(1));
    let wait_dead = |bound: Duration| {
        let end = clock.now() + bound;
        while table.alive(pid, ticks) && clock.now() < end {
            clock.sleep(poll);
        }
        !table.alive(pid, ticks)
    };
    let fate = if !table.alive(pid, ticks) {
        ShellperFate::AlreadyGone
    } else {
        let mut send = |sig| {
            if let Err(e) = table.signal(pid, ticks, sig) {
                report.push_error(e.to_string());
            }
        };
        send(Sig::Term);
        send(Sig::Cont);
        if wait_dead(plan.shellper_grace) {
            ShellperFate::ExitedAfterTerm
        } else {
            send(Sig::Kill);
            if wait_dead(Duration::from_secs(1).max(poll)) {
                ShellperFate::Killed
            } else {
                ShellperFate::Survived
            }
        }
    };

    if !tree::members(&table.list(), &spec).is_empty() {
        let again = ladder(table, clock, &plan_ladder, &mut spec, &mut || {});
        report.merge(again);
    }
    Ok(OutsideReport {
        tree: report,
        shellper: fate,
        sessions,
    })
}
