//! The figures of a run, and the failure that names what reproduces it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::schedule::Fault;

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub cycles: u32,
    pub faults: BTreeMap<String, u32>,
    pub towers_started: u32,
    pub sessions_spawned: u32,
    pub adoptions: u32,
    pub trees_killed_by_window: u32,
    /// Leases found lapsed by STATUS although a live Tower held them (its
    /// renewals late past the TTL under load); not a failure by itself.
    pub lapses_while_held: u32,
    /// Processes alive past their kill bound (0 in a passing run).
    pub orphans: u32,
    /// Sessions dead while held or before their window (0 in a passing run).
    pub false_kills: u32,
    /// Window end to whole tree gone, for Towers killed with a known instant.
    pub kill_precision: Vec<Duration>,
    pub elapsed: Duration,
}

impl ChaosReport {
    /// (min, median, p99, max) of the kill precision.
    pub fn precision(&self) -> Option<[Duration; 4]> {
        let mut v = self.kill_precision.clone();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some([v[0], at(0.5), at(0.99), v[v.len() - 1]])
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos: seed {} cycles {} in {:.0?}: towers {}, sessions spawned {}, adoptions {}, \
             trees killed by their window {}, lapses while held {}, orphans {}, false kills {}",
            self.seed,
            self.cycles,
            self.elapsed,
            self.towers_started,
            self.sessions_spawned,
            self.adoptions,
            self.trees_killed_by_window,
            self.lapses_while_held,
            self.orphans,
            self.false_kills
        )?;
        if let Some([min, med, p99, max]) = self.precision() {
            writeln!(
                f,
                "kill precision (window end -> tree gone, {} trees): min {:?} median {:?} p99 {:?} max {:?}",
                self.kill_precision.len(),
                min,
                med,
                p99,
                max
            )?;
        }
        write!(f, "faults: {:?}", self.faults)
    }
}

/// A failed invariant, with what reproduces it.
#[derive(Debug, Clone)]
pub struct ChaosFailure {
    pub seed: u64,
    pub step: u32,
    pub fault: Option<Fault>,
    pub message: String,
    /// The figures up to the failure.
    pub report: Box<ChaosReport>,
}

impl fmt::Display for ChaosFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chaos FAILED: seed {} step {} fault {:?}: {}\n(replay: chaos --seed {} --cycles {})\n{}",
            self.seed,
            self.step,
            self.fault,
            self.message,
            self.seed,
            self.step + 1,
            self.report
        )
    }
}

impl std::error::Error for ChaosFailure {}
