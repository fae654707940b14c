//! The cgroup kill ladder: `cgroup.kill` where the kernel has it, else
//! signals to every member by pidfd, until the group is empty.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags};
use serde::{Deserialize, Serialize};

use crate::ladder::{Clock, KillReport};
use crate::table::Sig;

use super::*;

/// Pidfds pinned at once by [`signal_members`] (well below the usual soft
/// limit of 1024 descriptors).
const PIDFD_BATCH: usize = 256;

/// What [`signal_members`] did.
#[derive(Debug, Default)]
pub(super) struct Sent {
    /// Processes that received the first signal of the list.
    pub(super) processes: u32,
    pub(super) errors: Vec<String>,
}

/// Sends `sigs`, in order, to each of `pids` that, once pinned by a pidfd,
/// is still a member of `cg`. The pids came from `cgroup.procs`, and a pid
/// freed and reused by a stranger between that read and the signal must not
/// be hit: the pidfds of a batch are opened first, the membership is read
/// again, and only pids still listed are signalled. (A pid reused *inside*
/// the cgroup is ours anyway; the pidfd then names the dead process and the
/// signal is a no-op.)
pub(super) fn signal_members(cg: &Cgroup, pids: &[i32], sigs: &[Sig]) -> Sent {
    let me = std::process::id() as i32;
    let mut out = Sent::default();
    for chunk in pids.chunks(PIDFD_BATCH) {
        let pinned: Vec<(i32, OwnedFd)> = chunk
            .iter()
            .filter(|&&pid| pid > 1 && pid != me)
            .filter_map(|&pid| {
                let p = Pid::from_raw(pid)?;
                match rustix::process::pidfd_open(p, PidfdFlags::empty()) {
                    Ok(fd) => Some((pid, fd)),
                    Err(rustix::io::Errno::SRCH) => None,
                    Err(e) => {
                        out.errors.push(format!("pidfd_open({pid}): {e}"));
                        None
                    }
                }
            })
            .collect();
        if pinned.is_empty() {
            continue;
        }
        let now: std::collections::HashSet<i32> =
            cg.members().unwrap_or_default().into_iter().collect();
        for (pid, fd) in pinned.iter().filter(|(pid, _)| now.contains(pid)) {
            for (i, sig) in sigs.iter().enumerate() {
                match rustix::process::pidfd_send_signal(fd, sig.to_rustix()) {
                    Ok(()) if i == 0 => out.processes += 1,
                    Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                    Err(e) => out
                        .errors
                        .push(format!("sending {sig:?} to pid {pid}: {e}")),
                }
            }
        }
    }
    out
}

/// How to kill a session cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupKillPlan {
    /// From the polite signals until `cgroup.kill` (the lease's kill grace).
    pub grace: Duration,
    /// Total bound, from the start, after which the ladder reports survivors.
    pub hard_bound: Duration,
    /// Interval between looks at `cgroup.events`.
    pub poll: Duration,
    /// Remove the cgroup directory once it is empty.
    pub remove: bool,
    /// Use the freeze-kill-thaw path even where `cgroup.kill` exists (what
    /// kernels before 5.14 get; tests exercise it with this).
    pub force_freeze: bool,
}

impl CgroupKillPlan {
    pub fn new(grace: Duration) -> Self {
        CgroupKillPlan {
            grace,
            hard_bound: grace.saturating_add(crate::ladder::DEFAULT_KILL_PHASE),
            poll: crate::ladder::DEFAULT_POLL,
            remove: true,
            force_freeze: false,
        }
    }
}

/// The outcome of [`kill_cgroup`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupKillReport {
    /// Counts as the `/proc` ladder's: `signalled` got a polite signal,
    /// `sigkilled` were members when the kill was issued; `survivors`
    /// are the members left when the hard bound passed.
    pub report: KillReport,
    /// How the kill was issued (`None`: everything exited within the grace).
    pub method: Option<KillMethod>,
    /// The cgroup directory was removed.
    pub removed: bool,
    /// Why it could not be removed, when it could not.
    pub remove_error: Option<String>,
}

impl CgroupKillReport {
    /// Nothing of the session is left alive.
    pub fn is_clean(&self) -> bool {
        self.report.is_clean()
    }
}

/// Kills everything in `cg`: SIGHUP + SIGTERM + SIGCONT to every member
/// (from `cgroup.procs`; newcomers too), the grace, then `cgroup.kill`
/// (or freeze/kill/thaw), then waits until `cgroup.events` says
/// `populated 0`, then removes the directory. Verification reads the
/// cgroup, not `/proc`. `reap` runs before every look (the shellper passes
/// its one reaper; outsiders a no-op). Synchronous: run it off any async
/// runtime thread.
///
/// A cgroup that is already gone (the directory is missing) counts as
/// empty: nothing can live in a cgroup that does not exist.
pub fn kill_cgroup<C: Clock + ?Sized>(
    cg: &Cgroup,
    clock: &C,
    plan: &CgroupKillPlan,
    reap: &mut dyn FnMut(),
) -> CgroupKillReport {
    let start = clock.now();
    let grace_end = start + plan.grace.min(plan.hard_bound);
    let hard_end = start + plan.hard_bound;
    let poll = plan.poll.max(Duration::from_millis(1));
    let mut out = CgroupKillReport::default();
    let mut polite: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let push_err = |out: &mut CgroupKillReport, e: String| {
        if out.report.errors.len() < crate::ladder::MAX_ERRORS && !out.report.errors.contains(&e) {
            out.report.errors.push(e);
        }
    };
    let gone = |cg: &Cgroup| !cg.exists() || cg.populated().is_ok_and(|p| !p);
    let mut kills = 0u32;
    loop {
        reap();
        out.report.sweeps += 1;
        if gone(cg) {
            break;
        }
        let now = clock.now();
        let members = match cg.members() {
            Ok(m) => m,
            Err(e) => {
                push_err(&mut out, format!("read {}: {e}", cg.dir().display()));
                Vec::new()
            }
        };
        if now < grace_end {
            let new: Vec<i32> = members
                .iter()
                .copied()
                .filter(|&p| polite.insert(p))
                .collect();
            // HUP and TERM before CONT: a stopped member acts on them as
            // soon as it continues.
            let sent = signal_members(cg, &new, &[Sig::Hup, Sig::Term, Sig::Cont]);
            out.report.signalled += sent.processes;
            for e in sent.errors {
                push_err(&mut out, e);
            }
            clock.sleep(poll.min(grace_end.saturating_duration_since(clock.now())));
            continue;
        }
        if kills > 0 && now >= hard_end {
            break;
        }
        // Members are counted once, at the first kill.
        if kills == 0 {
            out.report.sigkilled = members.len() as u32;
            out.report.signalled += members.iter().filter(|p| !polite.contains(p)).count() as u32;
        }
        // The kill is repeated every 100 ms-ish while anything is left: a
        // freeze-kill pass may miss a member that was mid-fork.
        if kills.is_multiple_of(10) {
            match cg.kill_all(plan.force_freeze) {
                Ok(m) => out.method = Some(m),
                Err(e) => push_err(&mut out, e.to_string()),
            }
        }
        kills += 1;
        clock.sleep(
            poll.min(hard_end.saturating_duration_since(clock.now()))
                .max(Duration::from_millis(1)),
        );
    }
    reap();
    if !gone(cg) {
        out.report.survivors = cg
            .members()
            .unwrap_or_default()
            .into_iter()
            .take(32)
            .map(|pid| {
                crate::procfs::read_proc(pid).unwrap_or(crate::procfs::ProcInfo {
                    pid,
                    ppid: 0,
                    pgid: 0,
                    sid: 0,
                    state: '?',
                    start_ticks: 0,
                    comm: String::new(),
                    cmdline: Vec::new(),
                })
            })
            .collect();
        if out.report.survivors.is_empty() {
            // Populated but no pid readable: still not clean.
            out.report.survivors.push(crate::procfs::ProcInfo {
                pid: 0,
                ppid: 0,
                pgid: 0,
                sid: 0,
                state: '?',
                start_ticks: 0,
                comm: format!("(populated {})", cg.dir().display()),
                cmdline: Vec::new(),
            });
        }
    } else if plan.remove {
        // rmdir can race the kernel's last bookkeeping of exiting tasks
        // (EBUSY for a moment after populated 0): retry briefly.
        let until = clock.now() + Duration::from_millis(500);
        loop {
            match cg.remove() {
                Ok(()) => {
                    out.removed = true;
                    break;
                }
                Err(e) if clock.now() >= until => {
                    out.remove_error = Some(format!("remove {}: {e}", cg.dir().display()));
                    break;
                }
                Err(_) => clock.sleep(Duration::from_millis(5)),
            }
        }
    }
    out.report.elapsed = clock.now().saturating_duration_since(start);
    out
}
