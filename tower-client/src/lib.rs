//! tower-client: hold the leases of many shellpers from one tokio event loop.
//!
//! A Tower starts shellpers (PTY-owning helpers) and keeps each alive by
//! renewing a time-limited lease over its Unix socket. If the Tower dies or
//! stalls, every shellper kills its own process tree once the reattach window
//! passes, so nothing outlives its Tower for long; a restarted Tower adopts
//! them back within the window. See the design brief and docs/CONVENTIONS.md.
//!
//! Building blocks, usable separately (the operators' tool `leasectl` uses
//! only the first three):
//! * [`Scope`]: the private runtime directory, its instance lock and paths;
//! * [`Registry`] / [`RegistryEntry`]: the scope's record of shellpers and
//!   their lease tokens;
//! * [`query_status`]: a read-only, bounded STATUS query of one socket;
//! * [`sched`]: the coalesced renewal scheduler (one timer for all leases).

pub mod error;
pub mod procfs;
pub mod registry;
pub mod sched;
pub mod scope;

mod conn;

pub use conn::query_status;
pub use error::{Error, Result};
pub use registry::{Registry, RegistryEntry};
pub use scope::{InstanceLock, Scope};
