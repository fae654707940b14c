//! cgroup v2 containment: one cgroup per session, killed with `cgroup.kill`.
//!
//! Why: the `/proc` ladder ([`crate::kill_tree`]) finds a session's tree by
//! ancestry, sessions and witnesses, and sweeps until nothing is left; a
//! process forked after the last look can be missed, and a SIGKILLed
//! shellper leaves the Tower only what it recorded. A cgroup's membership is
//! exact instead: every descendant of a process placed in it is born in it,
//! whatever it does (`setsid`, double fork, ignoring signals), and
//! `cgroup.kill` kills the whole group at once, so a fork cannot race the
//! kill. The kernel also accounts CPU, memory and processes per group.
//!
//! Layout (decided): a Tower is given (or finds) a writable v2 directory,
//! the *base*; each session gets `base/<session id>`, a leaf that holds the
//! PTY child and everything it starts. The shellper process itself is not in
//! it: it stays in the Tower's cgroup (a leaf too when the Tower had to move
//! itself, see [`prepare_base`]), so it can kill its session's cgroup
//! without killing itself, and no session cgroup ever has an internal
//! process blocking controllers (the "no internal processes" rule).
//!
//! Everything here is path-based: the same code runs against a fake
//! directory holding the interface files (the tests of limits and
//! accounting do that on machines whose v2 tree has no controllers), except
//! [`prepare_base`], which insists on a real cgroup2 mount.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::ladder::{Clock, KillReport};
use crate::table::Sig;

/// `statfs` magic number of a cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Most member pids read from one cgroup subtree per sweep (a fork bomb
/// cannot make a sweep allocate without bound; `cgroup.kill` needs no list).
pub const MAX_MEMBERS: usize = 65_536;
/// Most cgroups walked below a session cgroup (a process inside may create
/// sub-cgroups of its own).
pub const MAX_CGROUPS: usize = 1024;
/// Largest interface file read (cgroup.procs of a big group is the largest).
const MAX_FILE: u64 = 4 << 20;

/// Controllers a Tower enables for its sessions when its base offers them.
pub const SESSION_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

// ---------------------------------------------------------------------------
// Pure parsing
// ---------------------------------------------------------------------------

/// A cgroup2 mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy appears at the mount point (`/` unless
    /// the mount was made inside a cgroup namespace from outside it).
    pub root: String,
}

impl V2Mount {
    /// The directory of the cgroup `path` (as `/proc/PID/cgroup` names it),
    /// if it is visible under this mount.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path
        } else {
            let rest = path.strip_prefix(self.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest
        };
        let rel = rel.trim_start_matches('/');
        Some(if rel.is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rel)
        })
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first cgroup2 mount in a `/proc/PID/mountinfo` text: on a pure v2
/// system the usual `/sys/fs/cgroup`, in the hybrid layout the `unified`
/// mount beside the v1 controllers.
pub fn parse_mountinfo_v2(text: &str) -> Option<V2Mount> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = left.split_whitespace().collect();
        let (root, mount_point) = (f.get(3)?, f.get(4)?);
        Some(V2Mount {
            mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            root: unescape_mountinfo(root),
        })
    })
}

/// The v2 cgroup path (`0::PATH`) in a `/proc/PID/cgroup` text.
pub fn parse_proc_cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
}

/// `populated` and `frozen` from a `cgroup.events` text.
pub fn parse_events(text: &str) -> (Option<bool>, Option<bool>) {
    let mut populated = None;
    let mut frozen = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("populated", v)) => populated = Some(v.trim() == "1"),
            Some(("frozen", v)) => frozen = Some(v.trim() == "1"),
            _ => {}
        }
    }
    (populated, frozen)
}

/// One `key value` line of a flat-keyed file (`cpu.stat`, `memory.stat`).
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A limit file's value: `max` is no limit (`None` inside `Some`).
pub fn parse_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        v => v.parse().ok().map(Some),
    }
}

/// The pids in a `cgroup.procs` text, at most `cap`.
pub fn parse_procs(text: &str, cap: usize) -> Vec<i32> {
    text.lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|&p| p > 0)
        .take(cap)
        .collect()
}

// ---------------------------------------------------------------------------
// Limits and accounting
// ---------------------------------------------------------------------------

/// Opt-in per-session limits (`pids.max`, `memory.max`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most processes (and threads) the session may have at once.
    pub pids_max: Option<u64>,
    /// Most bytes of memory the session may use before the kernel reclaims
    /// and, failing that, OOM-kills inside it.
    pub memory_max: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.pids_max.is_none() && self.memory_max.is_none()
    }

    /// The controllers these limits need.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.memory_max.is_some() {
            v.push("memory");
        }
        if self.pids_max.is_some() {
            v.push("pids");
        }
        v
    }
}

/// What the kernel accounts for one session cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of every process that ever ran in it (`cpu.stat`
    /// `usage_usec`, present in every v2 cgroup).
    pub cpu_usec: Option<u64>,
    /// Processes in it now (its subtree's `cgroup.procs`).
    pub procs: u32,
    /// `memory.current`, where the memory controller is enabled.
    pub memory_current: Option<u64>,
    /// `memory.peak` (kernel ≥ 5.19), where the memory controller is enabled.
    pub memory_peak: Option<u64>,
}

/// How a cgroup was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KillMethod {
    /// `cgroup.kill` (kernel ≥ 5.14): one write, the kernel kills the whole
    /// subtree and nothing can fork past it.
    CgroupKill,
    /// Older kernels: `cgroup.freeze`, SIGKILL to each member, thaw.
    FreezeKill,
}

impl KillMethod {
    /// How reports name it.
    pub fn describe(self) -> &'static str {
        match self {
            KillMethod::CgroupKill => "cgroup.kill",
            KillMethod::FreezeKill => "freeze/kill/thaw",
        }
    }
}

// ---------------------------------------------------------------------------
// A cgroup directory
// ---------------------------------------------------------------------------

/// One cgroup, by the directory of its interface files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cgroup {
    dir: PathBuf,
}

fn read_small(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_string(&mut s)?;
    Ok(s)
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    // One write(2) per value: cgroup files act on each write.
    // O_TRUNC as `echo >` does: the kernel ignores it, a fake file needs it.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(value.as_bytes())
}

impl Cgroup {
    /// The cgroup at `dir`, without any check (a recorded path, or a fake
    /// directory in tests).
    pub fn at(dir: impl Into<PathBuf>) -> Cgroup {
        Cgroup { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn err(&self, what: &str, source: io::Error) -> Error {
        Error::Cgroup {
            path: self.dir.clone(),
            what: what.to_string(),
            source,
        }
    }

    /// True if the directory exists and looks like a cgroup.
    pub fn exists(&self) -> bool {
        self.file("cgroup.procs").is_file()
    }

    /// Controllers this cgroup offers (`cgroup.controllers`).
    pub fn controllers(&self) -> io::Result<Vec<String>> {
        Ok(read_small(&self.file("cgroup.controllers"))?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// Controllers enabled for this cgroup's children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> io::Result<Vec<String>> {
        Ok(read_small(&self.file("cgroup.subtree_control"))?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// Enables each of `wanted` this cgroup offers for its children, one at
    /// a time (one refused controller must not cost the others); returns
    /// what is enabled afterwards. Needs a cgroup without processes of its
    /// own (the root excepted).
    pub fn enable_controllers(&self, wanted: &[&str]) -> Vec<String> {
        let offered = self.controllers().unwrap_or_default();
        for c in wanted {
            if offered.iter().any(|o| o == c)
                && let Err(e) = write_file(&self.file("cgroup.subtree_control"), &format!("+{c}"))
            {
                tracing::debug!(controller = c, dir = %self.dir.display(), error = %e, "controller not enabled");
            }
        }
        self.subtree_control().unwrap_or_default()
    }

    /// `populated` from `cgroup.events`: a live process is in this cgroup
    /// or below (zombies do not count).
    pub fn populated(&self) -> io::Result<bool> {
        parse_events(&read_small(&self.file("cgroup.events"))?)
            .0
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no populated line"))
    }

    fn frozen(&self) -> io::Result<bool> {
        Ok(parse_events(&read_small(&self.file("cgroup.events"))?)
            .1
            .unwrap_or(false))
    }

    /// This cgroup and the cgroups below it, parents first, at most
    /// [`MAX_CGROUPS`].
    pub fn subtree(&self) -> Vec<Cgroup> {
        let mut out = vec![self.clone()];
        let mut i = 0;
        while i < out.len() && out.len() < MAX_CGROUPS {
            if let Ok(rd) = fs::read_dir(&out[i].dir) {
                for e in rd.flatten() {
                    if out.len() >= MAX_CGROUPS {
                        break;
                    }
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        out.push(Cgroup::at(e.path()));
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// The pids in this cgroup and below, at most [`MAX_MEMBERS`].
    pub fn members(&self) -> io::Result<Vec<i32>> {
        let mut out = Vec::new();
        for (i, cg) in self.subtree().into_iter().enumerate() {
            match read_small(&cg.file("cgroup.procs")) {
                Ok(t) => out.extend(parse_procs(&t, MAX_MEMBERS - out.len())),
                // A sub-cgroup may vanish while we walk; the top one may not.
                Err(e) if i == 0 => return Err(e),
                Err(_) => {}
            }
            if out.len() >= MAX_MEMBERS {
                break;
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// What the kernel accounts for this cgroup (files that are missing,
    /// because a controller is not enabled, are `None`).
    pub fn usage(&self) -> Usage {
        let num = |name: &str| {
            read_small(&self.file(name))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        };
        Usage {
            cpu_usec: read_small(&self.file("cpu.stat"))
                .ok()
                .and_then(|t| parse_keyed(&t, "usage_usec")),
            procs: self.members().map_or(0, |m| m.len() as u32),
            memory_current: num("memory.current"),
            memory_peak: num("memory.peak"),
        }
    }

    /// The limits in force (`None` where a file is missing or says `max`).
    pub fn limits(&self) -> Limits {
        let lim = |name: &str| {
            read_small(&self.file(name))
                .ok()
                .and_then(|t| parse_max(&t))
                .flatten()
        };
        Limits {
            pids_max: lim("pids.max"),
            memory_max: lim("memory.max"),
        }
    }

    /// Writes `limits`; a limit whose controller this cgroup does not have
    /// is an error naming it (never silently ignored).
    pub fn set_limits(&self, limits: &Limits) -> Result<(), Error> {
        if limits.is_empty() {
            return Ok(());
        }
        let offered = self
            .controllers()
            .map_err(|e| self.err("read cgroup.controllers", e))?;
        for c in limits.controllers() {
            if !offered.iter().any(|o| o == c) {
                return Err(Error::ControllerUnavailable {
                    controller: c,
                    path: self.dir.clone(),
                    available: offered.join(" "),
                });
            }
        }
        if let Some(n) = limits.pids_max {
            write_file(&self.file("pids.max"), &n.to_string())
                .map_err(|e| self.err("write pids.max", e))?;
        }
        if let Some(n) = limits.memory_max {
            write_file(&self.file("memory.max"), &n.to_string())
                .map_err(|e| self.err("write memory.max", e))?;
        }
        Ok(())
    }

    /// Creates the child cgroup `name` (a single path component). An empty
    /// existing one (left by a crash) is reused; one with live processes is
    /// an error: it belongs to a session that still runs.
    pub fn create_child(&self, name: &str) -> Result<Cgroup, Error> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(self.err(
                "create a child cgroup",
                io::Error::new(io::ErrorKind::InvalidInput, format!("bad name {name:?}")),
            ));
        }
        let child = Cgroup::at(self.dir.join(name));
        match fs::create_dir(&child.dir) {
            Ok(()) => Ok(child),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if child.populated().unwrap_or(true) {
                    Err(child.err(
                        "create",
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "exists and has live processes",
                        ),
                    ))
                } else {
                    Ok(child)
                }
            }
            Err(e) => Err(child.err("create", e)),
        }
    }

    /// Removes this cgroup and every cgroup below it (deepest first). Only
    /// empty cgroups can be removed; a populated one is `EBUSY`.
    pub fn remove(&self) -> io::Result<()> {
        let all = self.subtree();
        let mut first_err = None;
        for cg in all.iter().rev() {
            match fs::remove_dir(&cg.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Moves the calling process (every thread) into this cgroup.
    pub fn move_self(&self) -> Result<(), Error> {
        write_file(&self.file("cgroup.procs"), "0").map_err(|e| self.err("move into", e))
    }

    /// Opens `cgroup.procs` for a child to move itself in between fork and
    /// exec ([`AttachFd::attach_current`]).
    pub fn attach_fd(&self) -> Result<AttachFd, Error> {
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.file("cgroup.procs"))
            .map(|f| AttachFd(f.into()))
            .map_err(|e| self.err("open cgroup.procs", e))
    }

    /// `cgroup.kill` (kernel ≥ 5.14), else freeze, SIGKILL every member,
    /// thaw. Returns once the kill is issued; the members may take a moment
    /// to exit (wait for [`Cgroup::populated`] to say false).
    pub fn kill_all(&self, force_freeze: bool) -> Result<KillMethod, Error> {
        if !force_freeze {
            match write_file(&self.file("cgroup.kill"), "1") {
                Ok(()) => return Ok(KillMethod::CgroupKill),
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.exists() => {}
                Err(e) => return Err(self.err("write cgroup.kill", e)),
            }
        }
        write_file(&self.file("cgroup.freeze"), "1")
            .map_err(|e| self.err("write cgroup.freeze", e))?;
        // Frozen within a second on any sane system; kill anyway after it.
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while !self.frozen().unwrap_or(true) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Frozen members cannot fork, so the list is complete.
        let sent = signal_members(self, &self.members().unwrap_or_default(), &[Sig::Kill]);
        let thaw = write_file(&self.file("cgroup.freeze"), "0");
        if let Err(e) = thaw {
            return Err(self.err("thaw (write cgroup.freeze)", e));
        }
        match sent.errors.into_iter().next() {
            Some(e) => Err(self.err("SIGKILL to a frozen member", io::Error::other(e))),
            None => Ok(KillMethod::FreezeKill),
        }
    }
}

/// `cgroup.procs` opened for writing, for a forked child to move itself in
/// before it executes anything, so every process it starts is born inside.
#[derive(Debug)]
pub struct AttachFd(OwnedFd);

impl AttachFd {
    /// Moves the calling process into the cgroup. Only `write(2)`: safe to
    /// call between fork and exec (async-signal-safe, no allocation).
    pub fn attach_current(&self) -> io::Result<()> {
        // SAFETY: writing one byte from a static buffer to a descriptor we own.
        let n = unsafe { libc::write(self.0.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Pidfds pinned at once by [`signal_members`] (well below the usual soft
/// limit of 1024 descriptors).
const PIDFD_BATCH: usize = 256;

/// What [`signal_members`] did.
#[derive(Debug, Default)]
struct Sent {
    /// Processes that received the first signal of the list.
    processes: u32,
    errors: Vec<String>,
}

/// Sends `sigs`, in order, to each of `pids` that, once pinned by a pidfd,
/// is still a member of `cg`. The pids came from `cgroup.procs`, and a pid
/// freed and reused by a stranger between that read and the signal must not
/// be hit: the pidfds of a batch are opened first, the membership is read
/// again, and only pids still listed are signalled. (A pid reused *inside*
/// the cgroup is ours anyway; the pidfd then names the dead process and the
/// signal is a no-op.)
fn signal_members(cg: &Cgroup, pids: &[i32], sigs: &[Sig]) -> Sent {
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

// ---------------------------------------------------------------------------
// The cgroup kill ladder
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Discovery: the v2 mount, our own cgroup, a Tower's base
// ---------------------------------------------------------------------------

/// The v2 hierarchy as this process sees it (`/proc/self/mountinfo`).
pub fn find_v2_mount() -> io::Result<Option<V2Mount>> {
    Ok(parse_mountinfo_v2(&read_small(Path::new(
        "/proc/self/mountinfo",
    ))?))
}

/// The v2 cgroup path of a process (`/proc/PID/cgroup`), `None` if it has
/// none (no v2 hierarchy) or is gone.
pub fn cgroup_path_of(pid: i32) -> Option<String> {
    parse_proc_cgroup_v2(&read_small(Path::new(&format!("/proc/{pid}/cgroup"))).ok()?)
}

/// The directory of this process's own v2 cgroup.
pub fn own_cgroup() -> Result<Cgroup, Error> {
    let unavailable = |why: String| Error::NoCgroupV2 { why };
    let mount = find_v2_mount()
        .map_err(|e| unavailable(format!("read /proc/self/mountinfo: {e}")))?
        .ok_or_else(|| unavailable("no cgroup2 file system is mounted".into()))?;
    let path = cgroup_path_of(std::process::id() as i32)
        .ok_or_else(|| unavailable("/proc/self/cgroup has no v2 entry".into()))?;
    mount.dir_of(&path).map(Cgroup::at).ok_or_else(|| {
        unavailable(format!(
            "our cgroup {path} is outside the v2 mount at {}",
            mount.mount_point.display()
        ))
    })
}

/// Where a Tower puts its sessions' cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupChoice {
    /// The Tower's own cgroup, where it is delegated (a systemd service with
    /// `Delegate=yes`): the Tower moves itself into a leaf of it.
    Auto,
    /// This directory (which must be a writable cgroup v2 directory).
    Dir(PathBuf),
}

impl std::str::FromStr for CgroupChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty cgroup: give `auto` or a directory".into()),
            "auto" => Ok(CgroupChoice::Auto),
            p => Ok(CgroupChoice::Dir(PathBuf::from(p))),
        }
    }
}

/// The base of a Tower's session cgroups, ready for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBase {
    pub base: Cgroup,
    /// Controllers the sessions get (the base's `cgroup.subtree_control`).
    pub controllers: Vec<String>,
    /// The leaf the Tower moved itself into, when it had to (its own
    /// cgroup was the base: a cgroup with processes cannot give its
    /// children controllers).
    pub tower_leaf: Option<PathBuf>,
}

impl SessionBase {
    /// Checks that `limits` can be applied to sessions here: each needs its
    /// controller enabled in the base's `cgroup.subtree_control`.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), Error> {
        for c in limits.controllers() {
            if !self.controllers.iter().any(|o| o == c) {
                return Err(Error::ControllerUnavailable {
                    controller: c,
                    path: self.base.dir().to_path_buf(),
                    available: self.controllers.join(" "),
                });
            }
        }
        Ok(())
    }

    /// Creates the cgroup of session `id` with `limits`; removed again if
    /// the limits cannot be set.
    pub fn create_session(&self, id: &str, limits: &Limits) -> Result<Cgroup, Error> {
        let cg = self.base.create_child(id)?;
        if let Err(e) = cg.set_limits(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// True if `dir` is on a cgroup2 file system.
fn is_cgroup2(dir: &Path) -> io::Result<bool> {
    let st = rustix::fs::statfs(dir)?;
    Ok(st.f_type as u64 == CGROUP2_SUPER_MAGIC)
}

/// Makes `choice` usable as the base of a Tower's session cgroups, or says
/// why it cannot be (the caller then falls back to the `/proc` ladder and
/// reports the reason).
///
/// * `Dir(p)`: `p` must be a directory of a cgroup2 file system where we
///   can create cgroups (checked by creating and removing a probe).
/// * `Auto`: our own cgroup, if it is not the root and we can create
///   cgroups in it. Under systemd that needs `Delegate=yes`; without it a
///   root Tower could write there but systemd would fight it, so a
///   `.service`/`.scope` cgroup without systemd's delegation mark
///   (`user.delegate` or `trusted.delegate` extended attribute) is refused.
///   If our own cgroup is already the leaf `<unit>/<tower_leaf>` (systemd
///   254+ with `DelegateSubgroup=<tower_leaf>`), the base is its parent.
///
/// When the Tower's own cgroup *is* the base, the Tower moves itself into
/// the leaf `base/<tower_leaf>` first (processes only in leaves).
///
/// Controllers for the sessions: every one of [`SESSION_CONTROLLERS`] the
/// base offers, except when the base is a cgroup whose manager puts
/// processes into it (the Tower's own, e.g. a systemd unit without
/// `DelegateSubgroup=`): there a controller enabled in its
/// `cgroup.subtree_control` would make the next start of the service fail
/// (a cgroup with domain controllers enabled for its children cannot take
/// processes: `EBUSY`), so only the controllers in `needed` (those the
/// limits asked for) are enabled.
pub fn prepare_base(
    choice: &CgroupChoice,
    tower_leaf: &str,
    needed: &[&str],
) -> Result<SessionBase, Error> {
    let not_usable = |path: &Path, why: String| Error::CgroupNotUsable {
        path: path.to_path_buf(),
        why,
    };
    let own = own_cgroup().ok();
    let mut tower_leaf_dir = None;
    let base = match choice {
        CgroupChoice::Dir(p) => Cgroup::at(p),
        CgroupChoice::Auto => {
            let own = own_cgroup()?;
            let mount = find_v2_mount().ok().flatten();
            let is_root = |c: &Path| mount.as_ref().is_some_and(|m| m.mount_point == c);
            let name_of = |c: &Path| {
                c.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let (dir, leaf) = match own.dir().parent() {
                Some(parent) if name_of(own.dir()) == tower_leaf && !is_root(own.dir()) => {
                    (parent.to_path_buf(), Some(own.dir().to_path_buf()))
                }
                _ => (own.dir().to_path_buf(), None),
            };
            if is_root(&dir) {
                return Err(not_usable(
                    &dir,
                    "this process is in the root cgroup (not a delegated service): \
                     pass --cgroup DIR"
                        .into(),
                ));
            }
            let name = name_of(&dir);
            if (name.ends_with(".service") || name.ends_with(".scope")) && !delegated(&dir) {
                return Err(not_usable(
                    &dir,
                    "systemd did not delegate it (set Delegate=yes in the unit)".into(),
                ));
            }
            tower_leaf_dir = leaf;
            Cgroup::at(dir)
        }
    };
    let dir = base.dir().to_path_buf();
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(not_usable(&dir, "not a directory".into())),
        Err(e) => return Err(not_usable(&dir, e.to_string())),
    }
    match is_cgroup2(&dir) {
        Ok(true) => {}
        Ok(false) => return Err(not_usable(&dir, "not on a cgroup2 file system".into())),
        Err(e) => return Err(not_usable(&dir, format!("statfs: {e}"))),
    }
    let probe = dir.join(format!(".shellper-probe-{}", std::process::id()));
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
        }
        Err(e) => {
            return Err(not_usable(&dir, format!("cannot create cgroups here: {e}")));
        }
    }
    let ours = own.as_ref().is_some_and(|o| o.dir == dir);
    if ours {
        let leaf = base.create_child(tower_leaf).or_else(|e| {
            // Our own leaf from an earlier run holds our predecessor's
            // shellpers: populated, and ours to join.
            let p = dir.join(tower_leaf);
            if p.join("cgroup.procs").is_file() {
                Ok(Cgroup::at(p))
            } else {
                Err(e)
            }
        })?;
        leaf.move_self()?;
        tower_leaf_dir = Some(leaf.dir().to_path_buf());
    }
    let controllers = if ours {
        base.enable_controllers(needed)
    } else {
        base.enable_controllers(SESSION_CONTROLLERS)
    };
    Ok(SessionBase {
        base,
        controllers,
        tower_leaf: tower_leaf_dir,
    })
}

/// systemd marks a delegated cgroup with a `user.delegate` (unprivileged
/// managers) or `trusted.delegate` extended attribute.
fn delegated(dir: &Path) -> bool {
    let mut buf = [0u8; 8];
    ["user.delegate", "trusted.delegate"]
        .iter()
        .any(|name| rustix::fs::getxattr(dir, *name, &mut buf).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_the_v2_mount_in_the_hybrid_layout() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let m = parse_mountinfo_v2(text).expect("found");
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m.root, "/");
        assert_eq!(
            m.dir_of("/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a/b"))
        );
        assert_eq!(m.dir_of("/"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            parse_mountinfo_v2("1 2 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn mountinfo_escapes_and_namespaced_roots() {
        let text = "41 31 0:38 /user.slice /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo_v2(text).expect("found");
        assert_eq!(m.mount_point, PathBuf::from("/mnt/cg two"));
        assert_eq!(
            m.dir_of("/user.slice/x.service"),
            Some(PathBuf::from("/mnt/cg two/x.service"))
        );
        assert_eq!(m.dir_of("/user.slicex"), None);
        assert_eq!(m.dir_of("/system.slice"), None);
    }

    #[test]
    fn proc_cgroup_events_and_keyed_files_parse() {
        assert_eq!(
            parse_proc_cgroup_v2("4:memory:/x\n0::/user.slice/a.service\n").as_deref(),
            Some("/user.slice/a.service")
        );
        assert_eq!(parse_proc_cgroup_v2("4:memory:/x\n"), None);
        assert_eq!(
            parse_events("populated 1\nfrozen 0\n"),
            (Some(true), Some(false))
        );
        assert_eq!(parse_events("populated 0\n"), (Some(false), None));
        assert_eq!(
            parse_keyed("usage_usec 2429\nuser_usec 2000\n", "usage_usec"),
            Some(2429)
        );
        assert_eq!(parse_keyed("user_usec 2000\n", "usage_usec"), None);
        assert_eq!(parse_max("max\n"), Some(None));
        assert_eq!(parse_max("100\n"), Some(Some(100)));
        assert_eq!(parse_max("x"), None);
        assert_eq!(parse_procs("12\n13\nx\n0\n14\n", 2), vec![12, 13]);
    }

    #[test]
    fn choice_parses() {
        assert_eq!("auto".parse::<CgroupChoice>(), Ok(CgroupChoice::Auto));
        assert_eq!(
            "/x".parse::<CgroupChoice>(),
            Ok(CgroupChoice::Dir("/x".into()))
        );
        assert!("".parse::<CgroupChoice>().is_err());
    }
}
