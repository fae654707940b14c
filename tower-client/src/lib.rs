//! tower-client: hold the leases of many shellpers from one tokio event loop.
//!
//! A Tower starts shellpers (PTY-owning helpers) and keeps each alive by
//! renewing a time-limited lease over its Unix socket. If the Tower dies or
//! stalls, every shellper kills its own process tree once the reattach window
//! passes, so nothing outlives its Tower for long; a restarted Tower adopts
//! them back within the window. See the design brief and docs/CONVENTIONS.md.
//!
//! # For inspectors (`leasectl`)
//! Read-only, no lock needed:
//! * [`Scope`]: open/validate a scope directory ([`Scope::open_existing`]),
//!   its paths, [`Scope::lock_holder`] (pid of the Tower holding it);
//! * [`Registry`] / [`RegistryEntry`] via [`Scope::read_registry`]: the
//!   shellpers a Tower holds, their identities and tokens (a corrupt
//!   registry is an error, never "empty");
//! * [`query_status`]: one bounded STATUS query of a socket;
//! * is this registry entry's process still alive? Ask `shellper-proctree`:
//!   `LinuxTable.alive(pid, start_ticks)` ([`shellper_proctree::ProcessTable`]),
//!   which checks the start time, so a recycled pid is never taken for it.
//!
//! And one operation that is not read-only: [`terminate_with_token`], the
//! authenticated terminate of a shellper whose token you hold (`leasectl
//! reap`). It evicts a live holder; see its docs.
//!
//! # For Towers
//! [`Tower::open`] locks a scope and starts the single renewal scheduler;
//! [`Tower::spawn`] starts a shellper for a [`SpawnSpec`];
//! [`Tower::adopt_all`] re-acquires every registry entry after a restart;
//! each held shellper has a [`ShellperHandle`] (status, signal, resize,
//! [`attach`](ShellperHandle::attach) a [`Terminal`], detach, terminate);
//! [`Events`] reports held / unresponsive / lapsed / revoked / exited /
//! lost / terminated / detached.
//!
//! ```no_run
//! # async fn f() -> tower_client::Result<()> {
//! use std::time::Duration;
//! use tower_client::{Scope, SpawnSpec, Tower, TowerConfig};
//! let (tower, mut events) = Tower::open(Scope::open(Scope::default_dir())?, TowerConfig::default())?;
//! let report = tower.adopt_all().await;
//! let h = tower.spawn(SpawnSpec::new("/bin/sh")).await?;
//! while let Some(ev) = events.recv().await {
//!     println!("{}", ev.to_json());
//! }
//! h.terminate(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

#[cfg(feature = "cli")]
pub mod cli;
pub mod control;
pub mod error;
#[cfg(feature = "cli")]
pub mod manpage;
pub mod registry;
pub mod sched;
pub mod scope;
pub mod tidy;

pub mod contain;

mod adopt;
mod atomic;
mod config;
mod conn;
mod ctx;
mod holder;
mod spawn;
mod terminal;
mod tower;

pub use atomic::write_atomic;
pub use config::{DEFAULT_TREE_WALK_BACKOFF, TowerConfig};
pub use conn::{TerminateOutcome, query_status, terminate_with_token};
pub use contain::Containment;
pub use error::{Error, Result, SpawnFailure};
pub use holder::{
    EVENT_QUEUE, Event, Events, ExitWhat, LeaseState, ProcExit, ShellperHandle, ShellperInfo,
    TerminateReport,
};
pub use registry::{Registry, RegistryEntry};
pub use scope::{InstanceLock, Scope};
pub use shellper_proctree::{CgroupChoice, Limits};
pub use shellper_protocol::{LeaseConfig, Token};
pub use spawn::{SpawnSpec, resolve_shellper};
pub use terminal::{Output, Terminal, TerminalReader, TerminalWriter};
pub use tidy::{TidyDone, TidyPlan, TidyPolicy};
pub use tower::{
    AdoptFailure, AdoptReport, FD_RESERVE, FDS_PER_SHELLPER, FDS_PER_SPAWN, FdBudget,
    MAX_SOCKET_PATH, TERMINATE_CONCURRENCY, Tower,
};

/// Raises the soft limit on open descriptors to the hard limit and returns
/// the new soft limit. A Tower needs [`FDS_PER_SHELLPER`] descriptors per
/// held shellper (its lease socket and a pidfd or child handle): the common
/// default soft limit of 1024 caps it near 500 ([`Tower::fd_budget`]).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
    getrlimit(Resource::Nofile).current
}
