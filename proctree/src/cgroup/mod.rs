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
//!
//! Files by job: `parse.rs` (the kernel's files, pure), this file (limits,
//! accounting and one cgroup directory), `kill.rs` (the kill ladder),
//! `discover.rs` (the v2 mount, our own cgroup, a Tower's base).

mod discover;
mod kill;
mod parse;

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::table::Sig;

pub use discover::*;
pub use kill::*;
pub use parse::*;

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
