//! The process-table abstraction the kill ladder runs against, and the real
//! Linux implementation.
//!
//! The ladder only needs three operations: list processes, signal one process
//! *identified by pid and start time*, and ask whether one is still alive.
//! Keeping them behind [`ProcessTable`] lets the sweep logic be tested
//! deterministically against `fake::FakeTable` (feature `fake`; processes that
//! ignore signals, fork while we sweep, stop, setsid away, recycle pids)
//! and run for real against [`LinuxTable`].

use std::io;
use std::os::fd::OwnedFd;

use rustix::process::{Pid, PidfdFlags, Signal};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::procfs::{self, ProcInfo};

/// The signals the ladder (and its tests) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sig {
    Hup,
    Term,
    Kill,
    Cont,
    Stop,
}

impl Sig {
    /// The rustix signal.
    pub fn to_rustix(self) -> Signal {
        match self {
            Sig::Hup => Signal::HUP,
            Sig::Term => Signal::TERM,
            Sig::Kill => Signal::KILL,
            Sig::Cont => Signal::CONT,
            Sig::Stop => Signal::STOP,
        }
    }
}

/// What happened to one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The kernel accepted the signal for exactly the intended process.
    Sent,
    /// The process no longer exists.
    Gone,
    /// The pid now belongs to a different process (another start time):
    /// nothing was sent.
    Recycled,
}

/// A process table the ladder can sweep.
///
/// Methods take `&self` so a caller can share the table with its reap hook
/// (the fake needs that; the Linux table is stateless).
pub trait ProcessTable {
    /// Every process (zombies included). Need not be atomic.
    fn list(&self) -> Vec<ProcInfo>;

    /// Sends `sig` to the process `pid` *only if* it still has `start_ticks`.
    /// `Ok(Gone)` / `Ok(Recycled)` are normal outcomes during a sweep;
    /// `Err` is reserved for real failures (EPERM, refused pids).
    fn signal(&self, pid: i32, start_ticks: u64, sig: Sig) -> Result<Delivery, Error>;

    /// True if that exact process exists and is not a zombie.
    fn alive(&self, pid: i32, start_ticks: u64) -> bool;

    /// `root` and its descendants only, if the table can list them more
    /// cheaply than [`list`](Self::list) (see
    /// [`crate::procfs::descendants_snapshot`]). `None`: not supported, or
    /// `root` is gone; callers fall back to `list`.
    fn list_descendants(&self, _root: i32) -> Option<Vec<ProcInfo>> {
        None
    }

    /// argv, for reporting survivors. Optional; may return `None`.
    fn cmdline(&self, _pid: i32) -> Option<Vec<String>> {
        None
    }
}

/// What [`pidfd_for`] found out about a process.
#[derive(Debug)]
pub enum PidfdLookup {
    /// The process is alive, has that start time, and this pidfd pins it.
    Alive(OwnedFd),
    /// The kernel says that process is gone: no such pid (ESRCH), a zombie,
    /// or the pid now names a process with another start time.
    Gone,
    /// Nothing could be concluded (descriptors exhausted, pidfds
    /// unavailable or forbidden, /proc unreadable). The process may well be
    /// alive: callers must keep treating it as theirs and retry later.
    Unknown(io::Error),
}

/// A pidfd for the live process `(pid, start_ticks)`, with "gone" decided
/// only by the kernel.
///
/// The pidfd is opened first and the start time checked afterwards: the
/// pidfd pins one process, so a successful check proves it pins the one we
/// meant (a recycled pid is never mistaken for it). Meant for watching a
/// process we did not spawn (a pidfd becomes readable when the process
/// exits), e.g. a shellper a restarted Tower adopts.
///
/// Only ESRCH or a /proc entry with another start time (or a zombie) is
/// [`PidfdLookup::Gone`]. Every other failure (EMFILE, ENFILE, ENOSYS on
/// kernels before 5.3, EPERM under a seccomp filter) is
/// [`PidfdLookup::Unknown`]: taking it for "gone" would let a Tower prune a
/// live shellper it still holds and delete its socket.
pub fn pidfd_for(pid: i32, start_ticks: u64) -> PidfdLookup {
    let Some(p) = (pid > 0).then(|| Pid::from_raw(pid)).flatten() else {
        return PidfdLookup::Gone;
    };
    match rustix::process::pidfd_open(p, PidfdFlags::empty()) {
        Ok(fd) => match procfs::stat_lookup(pid) {
            Ok(Some(s)) if s.start_ticks == start_ticks && s.is_live() => PidfdLookup::Alive(fd),
            Ok(_) => PidfdLookup::Gone,
            Err(e) => PidfdLookup::Unknown(e),
        },
        Err(rustix::io::Errno::SRCH) => PidfdLookup::Gone,
        Err(e) => {
            // No pidfd, but /proc may still answer "gone" for sure.
            match procfs::stat_lookup(pid) {
                Ok(None) => PidfdLookup::Gone,
                Ok(Some(s)) if s.start_ticks != start_ticks || !s.is_live() => PidfdLookup::Gone,
                _ => PidfdLookup::Unknown(e.into()),
            }
        }
    }
}

/// The real Linux table: `/proc` for listing, pidfds for signalling.
///
/// Signalling opens a pidfd for the pid, *then* checks the start time in
/// `/proc/PID/stat`, then signals through the pidfd. A pidfd names one
/// process for ever, and the start time read after opening it proves it is
/// the process we meant (a process keeps its pid for its whole life, so the
/// process the pidfd pinned is the one `/proc` showed with that start time).
/// A recycled pid is therefore never hit. Kernels without pidfds (before
/// 5.3, ENOSYS) or a process out of file descriptors fall back to
/// check-then-kill(2), which leaves the classic tiny race; nothing better
/// exists there.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxTable;

impl LinuxTable {
    fn check_pid(pid: i32) -> Result<Pid, Error> {
        if pid <= 1 {
            return Err(Error::Refused {
                pid,
                why: "pid 1 and non-positive pids are never signalled",
            });
        }
        Pid::from_raw(pid).ok_or(Error::NoSuchProcess { pid })
    }

    fn identity(pid: i32, start_ticks: u64) -> Delivery {
        match procfs::read_stat(pid) {
            None => Delivery::Gone,
            Some(p) if p.start_ticks != start_ticks => Delivery::Recycled,
            Some(_) => Delivery::Sent,
        }
    }
}

impl ProcessTable for LinuxTable {
    fn list(&self) -> Vec<ProcInfo> {
        procfs::snapshot()
    }

    fn list_descendants(&self, root: i32) -> Option<Vec<ProcInfo>> {
        procfs::descendants_snapshot(root)
    }

    fn signal(&self, pid: i32, start_ticks: u64, sig: Sig) -> Result<Delivery, Error> {
        let p = Self::check_pid(pid)?;
        let signal_err = |e: io::Error| Error::Signal {
            pid,
            sig,
            source: e,
        };
        match rustix::process::pidfd_open(p, PidfdFlags::empty()) {
            Ok(fd) => {
                let id = Self::identity(pid, start_ticks);
                if id != Delivery::Sent {
                    return Ok(id);
                }
                match rustix::process::pidfd_send_signal(&fd, sig.to_rustix()) {
                    Ok(()) => Ok(Delivery::Sent),
                    Err(rustix::io::Errno::SRCH) => Ok(Delivery::Gone),
                    Err(e) => Err(signal_err(e.into())),
                }
            }
            Err(rustix::io::Errno::SRCH) => Ok(Delivery::Gone),
            // ENOSYS (kernel < 5.3) or fd exhaustion (EMFILE/ENFILE): still
            // signal, with the identity check right before kill(2).
            Err(_) => {
                let id = Self::identity(pid, start_ticks);
                if id != Delivery::Sent {
                    return Ok(id);
                }
                match rustix::process::kill_process(p, sig.to_rustix()) {
                    Ok(()) => Ok(Delivery::Sent),
                    Err(rustix::io::Errno::SRCH) => Ok(Delivery::Gone),
                    Err(e) => Err(signal_err(e.into())),
                }
            }
        }
    }

    fn alive(&self, pid: i32, start_ticks: u64) -> bool {
        procfs::read_stat(pid).is_some_and(|p| p.start_ticks == start_ticks && p.is_live())
    }

    fn cmdline(&self, pid: i32) -> Option<Vec<String>> {
        // Reading cmdline can block on a process whose memory map is locked,
        // typical of uninterruptible sleep: skip those.
        procfs::read_cmdline_if_safe(&procfs::read_stat(pid)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_table_refuses_pid_1_and_rejects_wrong_identity() {
        let t = LinuxTable;
        assert!(matches!(
            t.signal(1, 0, Sig::Cont),
            Err(Error::Refused { pid: 1, .. })
        ));
        assert!(matches!(
            t.signal(0, 0, Sig::Cont),
            Err(Error::Refused { .. })
        ));
        // Our own pid with a wrong start time is "another process": nothing
        // is sent (SIGSTOP would stop this test if it were).
        let me = procfs::read_stat(std::process::id() as i32).expect("self");
        assert_eq!(
            t.signal(me.pid, me.start_ticks + 1, Sig::Stop).expect("ok"),
            Delivery::Recycled
        );
        // And the right identity is accepted (SIGCONT to ourselves is a no-op).
        assert_eq!(
            t.signal(me.pid, me.start_ticks, Sig::Cont).expect("ok"),
            Delivery::Sent
        );
        assert!(t.alive(me.pid, me.start_ticks));
        assert!(!t.alive(me.pid, me.start_ticks + 1));
    }

    #[test]
    fn pidfd_for_pins_only_the_live_process_with_that_start_time() {
        let me = procfs::read_stat(std::process::id() as i32).expect("self");
        let alive = |l: PidfdLookup| match l {
            PidfdLookup::Alive(fd) => Some(fd),
            _ => None,
        };
        let gone = |l: PidfdLookup| matches!(l, PidfdLookup::Gone);
        assert!(alive(pidfd_for(me.pid, me.start_ticks)).is_some());
        assert!(gone(pidfd_for(me.pid, me.start_ticks + 1)), "recycled");
        assert!(gone(pidfd_for(0, 0)) && gone(pidfd_for(-1, 0)));

        // A child: readable pidfd once it exits; no pidfd for its zombie.
        let guard = shellper_testkit::LeakGuard::new("pidfd_for_unit");
        let mut cmd = std::process::Command::new("sleep");
        guard.apply(cmd.arg("30"));
        let mut child = cmd.spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        let st = procfs::read_stat(pid).expect("child stat");
        let fd = alive(pidfd_for(pid, st.start_ticks)).expect("pidfd of live child");
        let readable = |fd: &OwnedFd, ms: i32| {
            use std::os::fd::AsRawFd;
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, and `fd` outlives the call.
            unsafe { libc::poll(&mut p, 1, ms) == 1 }
        };
        assert!(!readable(&fd, 0), "not readable while it runs");
        assert_eq!(
            LinuxTable
                .signal(pid, st.start_ticks, Sig::Kill)
                .expect("kill"),
            Delivery::Sent
        );
        assert!(readable(&fd, 900), "readable once it exited");
        // Not reaped yet: a zombie has no pidfd to offer.
        assert!(gone(pidfd_for(pid, st.start_ticks)), "zombie");
        child.wait().expect("reap");
        assert!(gone(pidfd_for(pid, st.start_ticks)), "gone");
        guard.finish();
    }
}
