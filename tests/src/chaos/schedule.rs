//! What a run does and in which order: its configuration, the faults with
//! their weights, and the seeded generator that draws them.

use std::time::Duration;

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub seed: u64,
    /// Steps (one fault each) to run.
    pub cycles: u32,
    /// How many sessions the run keeps alive (topped up at each restart).
    pub sessions: usize,
    pub ttl: Duration,
    pub window: Duration,
    pub kill_grace: Duration,
    pub claim: Duration,
    /// Slack on top of the kill bound before a survivor counts as an
    /// orphan (a loaded 2-core machine).
    pub margin: Duration,
    /// Include the faults whose fixes are not in this tree yet (none
    /// today). A SIGKILLed shellper, the Tower's stdout blocked and the fd
    /// limit lowered at restart were pending and are in the default
    /// schedule since their fixes landed.
    pub pending_faults: bool,
    /// Only these faults (by name, as `Fault`'s variants), to chase one.
    pub only: Option<Vec<String>>,
    /// Print one line per step.
    pub verbose: bool,
}

impl ChaosConfig {
    /// Short leases so that many cycles fit in minutes.
    pub fn new(seed: u64, cycles: u32) -> ChaosConfig {
        ChaosConfig {
            seed,
            cycles,
            sessions: 3,
            ttl: Duration::from_millis(600),
            window: Duration::from_millis(1500),
            kill_grace: Duration::from_millis(300),
            claim: Duration::from_secs(3),
            margin: Duration::from_secs(3),
            pending_faults: false,
            only: None,
            verbose: false,
        }
    }
}

/// One kind of fault (a step of the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Nothing: a healthy Tower holds for a while.
    Steady,
    /// SIGKILL the Tower, never restart it (a fresh one starts after every
    /// tree is gone).
    TowerKill,
    /// SIGKILL the Tower and restart it inside the window.
    TowerKillRestart,
    /// The same, twice in a row, the second kill in the middle of adoption.
    TowerKillRestartTwice,
    /// SIGKILL a Tower in the middle of its start-up (adoption and spawns).
    TowerKillMidSpawn,
    /// SIGTERM a Tower with `--on-exit terminate`, sometimes SIGKILL it in
    /// the middle of the terminate.
    TowerTerminate,
    /// SIGSTOP the Tower for less than the TTL.
    TowerStopShort,
    /// SIGSTOP the Tower past the TTL but inside the window: safe.
    TowerStopMid,
    /// SIGSTOP the Tower past TTL + window, then SIGCONT.
    TowerStopLong,
    /// SIGSTOP one shellper for up to a few seconds.
    ShellperStop,
    /// SIGKILL one shellper: its Tower must take its tree down.
    ShellperKill,
    /// The PTY child exits (the session becomes a husk).
    ChildExit,
    /// A session's socket file is deleted.
    SocketDelete,
    /// The Tower's stdout is blocked: renewals must go on, the event must
    /// arrive (or its loss be counted) once it is unblocked.
    StdoutBlocked,
    /// The Tower is restarted with a low fd limit: whatever it cannot hold
    /// it must not destroy (the next Tower adopts every live session).
    LowFdLimit,
}

pub(super) const FAULTS: &[(Fault, u32, bool)] = &[
    // (fault, weight, pending)
    (Fault::Steady, 1, false),
    (Fault::TowerKill, 2, false),
    (Fault::TowerKillRestart, 3, false),
    (Fault::TowerKillRestartTwice, 2, false),
    (Fault::TowerKillMidSpawn, 2, false),
    (Fault::TowerTerminate, 1, false),
    (Fault::TowerStopShort, 2, false),
    (Fault::TowerStopMid, 2, false),
    (Fault::TowerStopLong, 1, false),
    (Fault::ShellperStop, 2, false),
    (Fault::ChildExit, 2, false),
    (Fault::SocketDelete, 1, false),
    (Fault::StdoutBlocked, 2, false),
    (Fault::LowFdLimit, 1, false),
    // Its Tower takes the tree of a SIGKILLed shellper down from outside,
    // by what it recorded of the tree (was pending until that landed).
    (Fault::ShellperKill, 2, false),
    // Pending faults (fix not in yet) are flagged `true`; none today.
];

/// splitmix64: tiny, seedable and stable forever (a run's schedule must not
/// change when a dependency is upgraded).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// A duration uniform in `[lo, hi]`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub(super) fn pick_fault(rng: &mut Rng, pending: bool, only: Option<&[String]>) -> Fault {
    let table: Vec<(Fault, u32)> = FAULTS
        .iter()
        .filter(|(_, _, p)| pending || !*p)
        .filter(|(f, _, _)| only.is_none_or(|o| o.iter().any(|n| *n == format!("{f:?}"))))
        .map(|(f, w, _)| (*f, *w))
        .collect();
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(u64::from(total)) as u32;
    for (f, w) in &table {
        if x < *w {
            return *f;
        }
        x -= w;
    }
    Fault::Steady
}
