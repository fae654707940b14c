//! An in-memory process table and clock for deterministic tests of the
//! ladder (`tests/ladder_fake.rs`). Behind the `fake` feature: tests only.
//!
//! It models what makes killing a PTY session hard: processes that ignore
//! SIGHUP or SIGTERM, stopped processes that keep signals pending until
//! SIGCONT, processes that fork on every sweep or when signalled, daemons
//! that double-fork and `setsid` away on SIGHUP, reparenting to the nearest
//! live subreaper (else PID 1, which never reaps), pids recycled between a
//! snapshot and a signal, and processes SIGKILL cannot end (uninterruptible
//! sleep). Every delivered signal is logged with its target's ground-truth
//! label ("outsider" or not) so tests can assert that nothing outside the
//! tree was ever signalled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Error;
use crate::ladder::Clock;
use crate::procfs::ProcInfo;
use crate::table::{Delivery, ProcessTable, Sig};

/// A clock whose `sleep` only advances `now`. Clones share one time line.
#[derive(Debug, Clone)]
pub struct FakeClock {
    epoch: Instant,
    now: Arc<Mutex<Instant>>,
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeClock {
    pub fn new() -> Self {
        let epoch = Instant::now();
        FakeClock {
            epoch,
            now: Arc::new(Mutex::new(epoch)),
        }
    }

    /// Fake time since the clock was created.
    pub fn elapsed(&self) -> Duration {
        self.now().saturating_duration_since(self.epoch)
    }

    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += d;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn sleep(&self, d: Duration) {
        self.advance(d);
    }
}

/// How a fake process reacts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behavior {
    pub ignore_hup: bool,
    pub ignore_term: bool,
    /// Even SIGKILL does nothing (uninterruptible sleep that never ends).
    pub unkillable: bool,
    /// While alive and running, forks one child (with this behavior minus
    /// the forking) on each snapshot, this many times.
    pub fork_per_sweep: u32,
    /// On SIGTERM, forks a child (this behavior minus `fork_on_term`)
    /// before reacting.
    pub fork_on_term: bool,
    /// On SIGHUP, double-forks a daemon that `setsid`s, ignores SIGHUP and
    /// is reparented to the nearest subreaper; then exits.
    pub daemonize_on_hup: bool,
}

/// Parameters of [`FakeTable::spawn`].
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    pub parent: i32,
    /// New session (and process group) led by the new process.
    pub setsid: bool,
    /// New process group, same session.
    pub new_pgrp: bool,
    /// Force this session id (for processes created already escaped).
    pub session: Option<i32>,
    /// Start stopped (state `T`).
    pub stopped: bool,
    pub subreaper: bool,
    pub behavior: Behavior,
    /// Ground truth for assertions: `Some(true)` = must never be signalled.
    /// `None` inherits the parent's label (PID 1 counts as an outsider).
    pub outsider: Option<bool>,
    pub comm: Option<String>,
}

/// One delivered (or refused) signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRecord {
    pub pid: i32,
    pub start_ticks: u64,
    pub sig: Sig,
    /// Fake time of delivery (zero without a clock).
    pub at: Duration,
    /// The target's ground-truth label.
    pub outsider: bool,
}

/// A scripted change applied right after a given snapshot is taken, so the
/// snapshot the ladder holds is already stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `pid` dies, is reaped at once, and its pid is reused by a new
    /// outsider (another session, another start time).
    Recycle { pid: i32 },
}

#[derive(Debug, Clone)]
struct FakeProc {
    info: ProcInfo,
    behavior: Behavior,
    outsider: bool,
    subreaper: bool,
    pending: Vec<Sig>,
}

#[derive(Debug, Default)]
struct State {
    procs: BTreeMap<i32, FakeProc>,
    next_pid: i32,
    next_ticks: u64,
    lists: u64,
    /// Offer `list_descendants` (a walk from the root), as Linux does.
    walks: bool,
    log: Vec<SignalRecord>,
    refused: Vec<SignalRecord>,
    events: Vec<(u64, Event)>,
    clock: Option<FakeClock>,
}

/// The fake table. PID 1 exists from the start (an outsider that never
/// reaps, like this machine's init).
#[derive(Debug)]
pub struct FakeTable {
    state: Mutex<State>,
}

impl Default for FakeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeTable {
    pub fn new() -> Self {
        let mut st = State {
            next_pid: 2,
            next_ticks: 1,
            ..State::default()
        };
        st.procs.insert(
            1,
            FakeProc {
                info: ProcInfo {
                    pid: 1,
                    ppid: 0,
                    pgid: 1,
                    sid: 1,
                    state: 'S',
                    start_ticks: 0,
                    comm: "init".into(),
                    cmdline: vec!["init".into()],
                },
                behavior: Behavior {
                    ignore_hup: true,
                    ignore_term: true,
                    unkillable: true,
                    ..Behavior::default()
                },
                outsider: true,
                subreaper: false,
                pending: Vec::new(),
            },
        );
        FakeTable {
            state: Mutex::new(st),
        }
    }

    /// Records fake time in the signal log.
    pub fn with_clock(self, clock: FakeClock) -> Self {
        self.lock().clock = Some(clock);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a process; returns its pid.
    ///
    /// # Panics
    /// If `parent` does not exist (a test bug).
    pub fn spawn(&self, spec: Spawn) -> i32 {
        self.lock().spawn(spec)
    }

    /// Shorthand: a child of `parent` with `behavior`, inheriting its label.
    pub fn child(&self, parent: i32, behavior: Behavior) -> i32 {
        self.spawn(Spawn {
            parent,
            behavior,
            ..Spawn::default()
        })
    }

    /// Sends a signal directly (test setup, e.g. SIGSTOP), unlogged.
    pub fn raw_signal(&self, pid: i32, sig: Sig) {
        self.lock().deliver(pid, sig);
    }

    /// Schedules `event` right after snapshot number `after_list` (1-based).
    pub fn schedule(&self, after_list: u64, event: Event) {
        self.lock().events.push((after_list, event));
    }

    /// Reaps the zombie children of `parent` (what the shellper's reaper
    /// does for it); returns their pids.
    pub fn reap_children_of(&self, parent: i32) -> Vec<i32> {
        let mut st = self.lock();
        let dead: Vec<i32> = st
            .procs
            .values()
            .filter(|p| p.info.ppid == parent && p.info.state == 'Z')
            .map(|p| p.info.pid)
            .collect();
        for pid in &dead {
            st.procs.remove(pid);
        }
        dead
    }

    /// Every signal delivered through [`ProcessTable::signal`].
    pub fn log(&self) -> Vec<SignalRecord> {
        self.lock().log.clone()
    }

    /// Signals refused because the pid had been recycled.
    pub fn refused(&self) -> Vec<SignalRecord> {
        self.lock().refused.clone()
    }

    /// The current state of one pid (including zombies).
    pub fn info(&self, pid: i32) -> Option<ProcInfo> {
        self.lock().procs.get(&pid).map(|p| p.info.clone())
    }

    /// Live processes not labelled outsiders (what must be gone after a
    /// successful ladder), excluding `except` (the root).
    pub fn live_members(&self, except: i32) -> Vec<ProcInfo> {
        self.lock()
            .procs
            .values()
            .filter(|p| !p.outsider && p.info.pid != except && p.info.is_live())
            .map(|p| p.info.clone())
            .collect()
    }

    /// Live processes labelled outsiders.
    pub fn live_outsiders(&self) -> Vec<ProcInfo> {
        self.lock()
            .procs
            .values()
            .filter(|p| p.outsider && p.info.is_live())
            .map(|p| p.info.clone())
            .collect()
    }

    /// Number of snapshots taken so far (walks included).
    pub fn lists(&self) -> u64 {
        self.lock().lists
    }

    /// Makes the table answer [`ProcessTable::list_descendants`] (by
    /// following ppid links from the root), so [`crate::Scan::Descendants`]
    /// ladders walk instead of falling back to full lists.
    pub fn with_walks(self) -> Self {
        self.lock().walks = true;
        self
    }
}

impl State {
    fn now(&self) -> Duration {
        self.clock
            .as_ref()
            .map(FakeClock::elapsed)
            .unwrap_or_default()
    }

    fn alloc_pid(&mut self) -> i32 {
        while self.procs.contains_key(&self.next_pid) {
            self.next_pid += 1;
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        pid
    }

    fn spawn(&mut self, spec: Spawn) -> i32 {
        let pid = self.alloc_pid();
        self.spawn_at(pid, spec)
    }

    fn spawn_at(&mut self, pid: i32, spec: Spawn) -> i32 {
        let parent = match self.procs.get(&spec.parent) {
            Some(p) => p.clone(),
            None => panic!("fake spawn: no parent {}", spec.parent),
        };
        let ticks = self.next_ticks;
        self.next_ticks += 1;
        let (sid, pgid) = if spec.setsid {
            (pid, pid)
        } else if let Some(s) = spec.session {
            (s, if spec.new_pgrp { pid } else { s })
        } else if spec.new_pgrp {
            (parent.info.sid, pid)
        } else {
            (parent.info.sid, parent.info.pgid)
        };
        let info = ProcInfo {
            pid,
            ppid: spec.parent,
            pgid,
            sid,
            state: if spec.stopped { 'T' } else { 'S' },
            start_ticks: ticks,
            comm: spec.comm.unwrap_or_else(|| format!("p{pid}")),
            cmdline: vec![format!("fake-{pid}")],
        };
        let proc = FakeProc {
            info,
            behavior: spec.behavior,
            outsider: spec.outsider.unwrap_or(parent.outsider),
            subreaper: spec.subreaper,
            pending: Vec::new(),
        };
        self.procs.insert(pid, proc);
        pid
    }

    /// Where orphans of `pid` go: the nearest live subreaper ancestor, else 1.
    fn reaper_for(&self, pid: i32) -> i32 {
        let mut cur = self.procs.get(&pid).map(|p| p.info.ppid);
        let mut depth = 0;
        while let Some(a) = cur {
            if a <= 1 || depth > 10_000 {
                break;
            }
            match self.procs.get(&a) {
                Some(p) if p.subreaper && p.info.is_live() => return a,
                Some(p) => cur = Some(p.info.ppid),
                None => break,
            }
            depth += 1;
        }
        1
    }

    fn die(&mut self, pid: i32) {
        let reaper = self.reaper_for(pid);
        let orphans: Vec<i32> = self
            .procs
            .values()
            .filter(|p| p.info.ppid == pid)
            .map(|p| p.info.pid)
            .collect();
        for o in orphans {
            if let Some(p) = self.procs.get_mut(&o) {
                p.info.ppid = reaper;
            }
        }
        if let Some(p) = self.procs.get_mut(&pid) {
            p.info.state = 'Z';
            p.pending.clear();
        }
    }

    fn fork_child(&mut self, parent: i32, behavior: Behavior) -> i32 {
        self.spawn(Spawn {
            parent,
            behavior,
            ..Spawn::default()
        })
    }

    fn deliver(&mut self, pid: i32, sig: Sig) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        if !p.info.is_live() {
            return;
        }
        let stopped = p.info.is_stopped();
        let b = p.behavior.clone();
        match sig {
            Sig::Kill => {
                if !b.unkillable {
                    self.die(pid);
                }
            }
            Sig::Stop => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.info.state = 'T';
                }
            }
            Sig::Cont => {
                let pending = match self.procs.get_mut(&pid) {
                    Some(p) => {
                        p.info.state = 'S';
                        std::mem::take(&mut p.pending)
                    }
                    None => Vec::new(),
                };
                for s in pending {
                    self.deliver(pid, s);
                }
            }
            Sig::Hup | Sig::Term if stopped => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.pending.push(sig);
                }
            }
            Sig::Hup => {
                if b.daemonize_on_hup {
                    // fork; child setsids and forks again; middle exits.
                    let daemon_behavior = Behavior {
                        daemonize_on_hup: false,
                        ignore_hup: true,
                        ..b
                    };
                    let middle = self.fork_child(pid, Behavior::default());
                    let daemon = self.spawn(Spawn {
                        parent: middle,
                        setsid: true,
                        behavior: daemon_behavior,
                        ..Spawn::default()
                    });
                    let _ = daemon;
                    self.die(middle);
                    self.die(pid);
                } else if !b.ignore_hup {
                    self.die(pid);
                }
            }
            Sig::Term => {
                if b.fork_on_term {
                    let child = Behavior {
                        fork_on_term: false,
                        ..b.clone()
                    };
                    self.fork_child(pid, child);
                }
                if !b.ignore_term {
                    self.die(pid);
                }
            }
        }
    }

    fn on_list(&mut self) {
        let forkers: Vec<i32> = self
            .procs
            .values()
            .filter(|p| p.behavior.fork_per_sweep > 0 && p.info.is_live() && !p.info.is_stopped())
            .map(|p| p.info.pid)
            .collect();
        for pid in forkers {
            let child = match self.procs.get_mut(&pid) {
                Some(p) => {
                    p.behavior.fork_per_sweep -= 1;
                    Behavior {
                        fork_per_sweep: 0,
                        ..p.behavior.clone()
                    }
                }
                None => continue,
            };
            self.fork_child(pid, child);
        }
    }

    fn run_events(&mut self) {
        let now = self.lists;
        let due: Vec<Event> = self
            .events
            .iter()
            .filter(|(at, _)| *at == now)
            .map(|(_, e)| e.clone())
            .collect();
        self.events.retain(|(at, _)| *at != now);
        for e in due {
            match e {
                Event::Recycle { pid } => {
                    if self.procs.contains_key(&pid) {
                        self.die(pid);
                        self.procs.remove(&pid);
                    }
                    self.spawn_at(
                        pid,
                        Spawn {
                            parent: 1,
                            setsid: true,
                            outsider: Some(true),
                            comm: Some("recycled".into()),
                            ..Spawn::default()
                        },
                    );
                }
            }
        }
    }
}

impl ProcessTable for FakeTable {
    fn list(&self) -> Vec<ProcInfo> {
        let mut st = self.lock();
        st.lists += 1;
        st.on_list();
        let snap = st.procs.values().map(|p| p.info.clone()).collect();
        st.run_events();
        snap
    }

    fn list_descendants(&self, root: i32) -> Option<Vec<ProcInfo>> {
        if !self.lock().walks {
            return None;
        }
        let all = self.list();
        if !all.iter().any(|p| p.pid == root) {
            return None;
        }
        let mut keep = vec![root];
        let mut grew = true;
        while grew {
            grew = false;
            for p in &all {
                if !keep.contains(&p.pid) && keep.contains(&p.ppid) {
                    keep.push(p.pid);
                    grew = true;
                }
            }
        }
        Some(all.into_iter().filter(|p| keep.contains(&p.pid)).collect())
    }

    fn signal(&self, pid: i32, start_ticks: u64, sig: Sig) -> Result<Delivery, Error> {
        if pid <= 1 {
            return Err(Error::Refused {
                pid,
                why: "pid 1 and non-positive pids are never signalled",
            });
        }
        let mut st = self.lock();
        let at = st.now();
        let Some(p) = st.procs.get(&pid) else {
            return Ok(Delivery::Gone);
        };
        let rec = SignalRecord {
            pid,
            start_ticks: p.info.start_ticks,
            sig,
            at,
            outsider: p.outsider,
        };
        if p.info.start_ticks != start_ticks {
            st.refused.push(rec);
            return Ok(Delivery::Recycled);
        }
        st.log.push(rec);
        st.deliver(pid, sig);
        Ok(Delivery::Sent)
    }

    fn alive(&self, pid: i32, start_ticks: u64) -> bool {
        self.lock()
            .procs
            .get(&pid)
            .is_some_and(|p| p.info.start_ticks == start_ticks && p.info.is_live())
    }

    fn cmdline(&self, pid: i32) -> Option<Vec<String>> {
        self.lock().procs.get(&pid).map(|p| p.info.cmdline.clone())
    }
}
