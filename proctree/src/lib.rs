//! Process tables and the whole-tree kill ladder of a shellper.
//!
//! A shellper must be able to kill *everything* its PTY command started, and
//! nothing else, even when jobs sit in their own process groups, daemons
//! `setsid` and double-fork away, processes ignore SIGHUP/SIGTERM, jobs are
//! stopped, and the tree forks while we sweep (brief §2 "Kill the whole
//! tree", §6). This crate is that ladder, plus the `/proc` reading,
//! pidfd signalling and reaping it relies on. The operators' tool uses the
//! same code from outside ([`kill_tree_from_outside`]).
//!
//! # API for the shellper
//!
//! ```no_run
//! use std::time::Duration;
//! use shellper_proctree::{KillPlan, LinuxTable, RealClock, become_subreaper, kill_tree, reap_zombies, session_of_child};
//!
//! # fn main() -> Result<(), shellper_proctree::Error> {
//! become_subreaper()?; // at startup, before spawning the PTY child
//! # let child_pid = 0;
//! // ... later, to terminate (on tokio: inside spawn_blocking):
//! let me = std::process::id() as i32;
//! // The child's session by sid *and* leader start time (never a bare sid).
//! let plan = KillPlan::new(me, session_of_child(me, child_pid), Duration::from_secs(3));
//! let report = kill_tree(&LinuxTable, &RealClock, &plan, &mut || {
//!     for (pid, how) in reap_zombies() { /* the shellper's single reaper */ let _ = (pid, how); }
//! });
//! if !report.is_clean() { /* exit code 13, log report.survivors */ }
//! # Ok(()) }
//! ```
//!
//! * [`become_subreaper`]`() -> Result<(), Error>`: orphans of the tree are
//!   reparented to us and stay descendants.
//! * [`reap_zombies`]`() -> Vec<(i32, ChildExit)>`: non-blocking reap of all
//!   exited children. **Steals statuses**: it must be the only reaper of the
//!   process (no `Child::wait` elsewhere).
//! * [`kill_tree`]`(&table, &clock, &KillPlan, &mut reap_hook) -> KillReport`:
//!   the ladder (SIGHUP+SIGCONT, SIGTERM+SIGCONT until `grace`, SIGKILL until
//!   `hard_bound`, sweeping until a full pass finds nothing). Synchronous.
//! * [`KillPlan`]`::new(root, Some(child_session), grace)` (a [`Session`]:
//!   sid and leader start time, e.g. from [`session_of_child`]), with `scan:`
//!   [`Scan::Full`] (default, reads all of `/proc`) or [`Scan::Descendants`]
//!   (walks the root's descendants: for a live subreaper root; cheap when
//!   hundreds of ladders run at once); [`KillReport`]
//!   `{ signalled, sigkilled, survivors, elapsed, sweeps, errors }`.
//! * [`LinuxTable`]: the real [`ProcessTable`] (`/proc` + pidfd signalling
//!   that never hits a recycled pid); [`RealClock`].
//! * [`snapshot`]`() -> Vec<ProcInfo>`, [`read_stat`]`(pid)`,
//!   [`read_proc`]`(pid)` (with cmdline), [`same_process`]`(pid, start_ticks)`,
//!   [`environ_contains`]`(pid, key, value)`, [`start_time_unix_ms`].
//! * [`pidfd_for`]`(pid, start_ticks) -> PidfdLookup`: a pidfd pinned
//!   to that exact live process (to watch the exit of one we did not spawn),
//!   or `Gone` (the kernel says so), or `Unknown` (any other error: EMFILE,
//!   ENOSYS, EPERM; never to be taken for gone).
//! * [`flock_holder`]`(path) -> io::Result<Option<FlockHolder>>`: who holds
//!   a `flock` on a file, from `/proc/locks`, without taking any lock.
//! * [`SocketOwners`]`::scan(&snapshot)`: which process listens on which
//!   unix socket path (`/proc/net/unix` + `/proc/PID/fd`), to identify a
//!   process that does not answer on its socket.
//!
//! # cgroup v2 containment
//!
//! Where a writable cgroup v2 tree exists, each session lives in a cgroup
//! of its own and [`cgroup`] is used instead of the tree walk:
//!
//! * [`prepare_base`]`(&CgroupChoice, leaf) -> Result<SessionBase, Error>`
//!   (a Tower's base: `--cgroup DIR` or `auto`; the Tower moves itself into a
//!   leaf when its own cgroup is the base, controllers enabled for the
//!   sessions); [`SessionBase::create_session`]`(id, &Limits)`.
//! * [`Cgroup`]: `attach_fd` (the child moves itself in between fork and
//!   exec: [`cgroup::AttachFd::attach_current`]), `members`, `populated`,
//!   `usage` ([`Usage`]: CPU, processes, memory), `limits`/`set_limits`
//!   ([`Limits`]: `pids.max`, `memory.max`; a missing controller is an
//!   error), `kill_all` (`cgroup.kill`, or freeze/SIGKILL/thaw), `remove`.
//! * [`kill_cgroup`]`(&cgroup, &clock, &CgroupKillPlan, &mut reap) ->
//!   CgroupKillReport`: SIGHUP+SIGTERM+SIGCONT to the members, the grace,
//!   the kill, `populated 0`, the directory removed.
//!
//! # API for operators
//!
//! * [`kill_tree_from_outside`]`(&table, &clock, &OutsidePlan) ->
//!   Result<OutsideReport, Error>`: tree first, then the shellper itself.
//!
//! # Tests
//!
//! `fake::FakeTable` and `fake::FakeClock` (feature `fake`, for tests: the
//! product does not ship them) simulate the hard cases deterministically.
//!
//! # Membership
//!
//! See [`tree`]: descendants of the root (ppid chains, one snapshot, with a
//! start-time sanity check on each link) plus every process of the given
//! sessions (while each is verifiably the recorded one: its leader, or a
//! member seen earlier, is still there); never the root, never PID 1, never
//! the caller, never zombies.

pub mod cgroup;
pub mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod ladder;
pub mod locks;
pub mod procfs;
pub mod reap;
pub mod sockets;
pub mod table;
pub mod tree;

pub use cgroup::{
    Cgroup, CgroupChoice, CgroupKillPlan, CgroupKillReport, KillMethod, Limits, SessionBase, Usage,
    kill_cgroup, prepare_base,
};
pub use error::Error;
pub use ladder::{
    Clock, KillPlan, KillReport, OutsidePlan, OutsideReport, RealClock, Scan, ShellperFate,
    kill_tree, kill_tree_from_outside,
};
pub use locks::{FlockHolder, flock_holder, parse_proc_locks};
pub use procfs::{
    ProcInfo, environ_contains, exe_name, open_fd_count, owner_uid, read_cmdline,
    read_cmdline_if_safe, read_proc, read_stat, same_process, session_of_child, signal_permitted,
    snapshot, start_time_unix_ms, stat_lookup, touch_proc_self,
};
pub use reap::{ChildExit, become_subreaper, reap_zombies, signal_unreaped_child};
pub use sockets::{SocketOwners, listening_unix_sockets, parse_net_unix, socket_inodes_of};
pub use table::{Delivery, LinuxTable, PidfdLookup, ProcessTable, Sig, pidfd_for};
pub use tree::{Session, TreeSpec, members};
