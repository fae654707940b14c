//! How a Tower runs its shellpers.

use std::path::PathBuf;
use std::time::Duration;

use shellper_proctree::{CgroupChoice, Limits};
use shellper_protocol::LeaseConfig;

use crate::tidy::TidyPolicy;

/// How a Tower runs its shellpers.
#[derive(Debug, Clone)]
pub struct TowerConfig {
    /// Lease timings for new shellpers (validated by [`LeaseConfig::new`]).
    pub lease: LeaseConfig,
    /// Name sent in ACQUIRE (shown by `leasectl`).
    pub holder_name: String,
    /// The shellper binary; `None`: next to the current executable, then
    /// `PATH`.
    pub shellper_bin: Option<PathBuf>,
    /// Bound on each connect + handshake + acquire (adoption, reconnects,
    /// status).
    pub connect_timeout: Duration,
    /// Bound on a whole spawn (exec to GRANT).
    pub spawn_timeout: Duration,
    /// What [`Tower::tidy`](crate::Tower::tidy) may remove: logs of gone
    /// shellpers after a retention, the scope's log cap.
    pub tidy: TidyPolicy,
    /// Where the sessions' cgroups go: `None` the process tree (the `/proc`
    /// ladder); `Auto` the Tower's own cgroup where it is delegated; a
    /// directory. A cgroup that cannot be used falls back to the process
    /// tree, and [`Tower::containment`](crate::Tower::containment) says why.
    pub cgroup: Option<CgroupChoice>,
    /// Opt-in per-session limits (`pids.max`, `memory.max`); they need a
    /// cgroup whose sessions get those controllers, else opening the Tower
    /// fails.
    pub limits: Limits,
    /// How many renewals may pass between two walks of a held shellper's
    /// tree (the record that proves its orphans ours if it is SIGKILLed)
    /// while the tree does not change: walks happen at adoption and at
    /// every renewal while the tree changes, then every 2nd, 4th, ... up to
    /// this many renewals while it stays the same (a changed tree resets
    /// it to every renewal). 1 walks at every renewal. Each walk reads a
    /// few /proc files per member: most of a Tower's cost per held session
    /// when done at every renewal (BENCHMARKS.md).
    pub tree_walk_backoff: u32,
}

/// Default [`TowerConfig::tree_walk_backoff`]: a stable tree is walked
/// every 8th renewal (16 s at the default renew interval).
pub const DEFAULT_TREE_WALK_BACKOFF: u32 = 8;

impl Default for TowerConfig {
    fn default() -> Self {
        TowerConfig {
            lease: LeaseConfig::default(),
            holder_name: "tower-client".into(),
            shellper_bin: None,
            connect_timeout: Duration::from_secs(1),
            spawn_timeout: Duration::from_secs(10),
            tidy: TidyPolicy::default(),
            cgroup: None,
            limits: Limits::default(),
            tree_walk_backoff: DEFAULT_TREE_WALK_BACKOFF,
        }
    }
}
