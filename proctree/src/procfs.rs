//! Reading the Linux process table from `/proc`.
//!
//! Only `/proc/PID/stat` is needed to decide tree membership and identity,
//! and it is the one file that never blocks on the target process: reading
//! `cmdline` or `environ` takes the target's memory-map lock, so a process
//! wedged in uninterruptible sleep with that lock held can hang the reader
//! (one of the ways Tower-side sweeps hung Tower's boot). Hence
//! [`snapshot`] and [`read_stat`] read `stat` only and leave
//! [`ProcInfo::cmdline`] empty; [`read_proc`] and [`read_cmdline`] read the
//! command line too and are meant for reporting a few processes.

use std::io;

use serde::{Deserialize, Serialize};

/// Upper bound on [`snapshot`] entries, so a runaway fork bomb cannot make a
/// sweep allocate without bound. (Linux's default `pid_max` is 4 Mi, but real
/// tables are far smaller; the ladder sweeps again anyway.)
pub const SNAPSHOT_CAP: usize = 100_000;

/// One process, as `/proc/PID/stat` (and optionally `cmdline`) describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    /// Session id.
    pub sid: i32,
    /// `R` running, `S` sleeping, `D` disk sleep, `T` stopped, `t` traced,
    /// `Z` zombie, `X` dead, `I` idle kernel thread, ...
    pub state: char,
    /// Start time in clock ticks after boot (field 22). With the pid it names
    /// one process for ever: a recycled pid has a later start time.
    pub start_ticks: u64,
    /// The kernel's short name (at most 15 bytes; may contain spaces or `)`).
    pub comm: String,
    /// argv; empty unless read by [`read_proc`] / [`read_cmdline`].
    pub cmdline: Vec<String>,
}

impl ProcInfo {
    /// Zombies (`Z`) and dead (`X`) processes run no code: for every purpose
    /// of this crate they are gone. (On these machines PID 1 never reaps, so
    /// dead orphans stay zombies for ever.)
    pub fn is_live(&self) -> bool {
        is_live_state(self.state)
    }

    /// Stopped by a signal (`T`) or by a tracer (`t`): needs SIGCONT before
    /// it can act on SIGHUP/SIGTERM.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }
}

/// See [`ProcInfo::is_live`].
pub fn is_live_state(state: char) -> bool {
    !matches!(state, 'Z' | 'X' | 'x')
}

/// Parses the text of `/proc/PID/stat`.
///
/// The second field is `(comm)`, and comm may contain spaces, parentheses
/// and `)` itself, so the fixed fields are located after the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcInfo> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgid = rest.next()?.parse().ok()?;
    let sid = rest.next()?.parse().ok()?;
    // Fields 7..=21 (tty_nr .. itrealvalue) are skipped; starttime is 22.
    let start_ticks = rest.nth(15)?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgid,
        sid,
        state,
        start_ticks,
        comm,
        cmdline: Vec::new(),
    })
}

/// `/proc/PID/stat` only (cmdline left empty). Never blocks on the target.
pub fn read_stat(pid: i32) -> Option<ProcInfo> {
    if pid <= 0 {
        return None;
    }
    let mut text = String::with_capacity(512);
    read_small(&format!("/proc/{pid}/stat"), &mut text).ok()?;
    parse_stat(&text).filter(|p| p.pid == pid)
}

/// `/proc/PID/stat` with "no such process" told apart from "could not
/// read": `Ok(None)` only when the kernel says the pid does not exist
/// (ENOENT/ESRCH); any other failure (EMFILE, EACCES, ...) is an error the
/// caller must not take for "gone".
pub fn stat_lookup(pid: i32) -> std::io::Result<Option<ProcInfo>> {
    if pid <= 0 {
        return Ok(None);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => Ok(parse_stat(&text).filter(|p| p.pid == pid)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// argv of a process (`None` if unreadable; empty for kernel threads and
/// zombies). May block while the target's memory map is locked: do not call
/// it on a process in state `D` from a path that must stay bounded.
pub fn read_cmdline(pid: i32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// argv of the process `p` describes, unless reading it could hang: `None`
/// for a process in uninterruptible sleep (`D`, which may hold the memory
/// map lock [`read_cmdline`] waits for), for zombies and dead processes
/// (they have no argv), and when unreadable. `p.state` is as of `p`'s read:
/// a process entering `D` right after it is not caught, which is why paths
/// that must stay bounded read `stat` first and this only for reporting.
pub fn read_cmdline_if_safe(p: &ProcInfo) -> Option<Vec<String>> {
    if p.state == 'D' || !p.is_live() {
        return None;
    }
    read_cmdline(p.pid)
}

/// One process with its command line (stat, then cmdline). See
/// [`read_cmdline`] for the blocking caveat.
pub fn read_proc(pid: i32) -> Option<ProcInfo> {
    let mut info = read_stat(pid)?;
    info.cmdline = read_cmdline(pid).unwrap_or_default();
    Some(info)
}

/// Every process in `/proc` (zombies included, cmdline empty), at most
/// [`SNAPSHOT_CAP`] entries. Entries that vanish or cannot be read while we
/// scan are skipped. Not atomic: the kernel offers no atomic view, which is
/// why the kill ladder re-scans until a full pass finds nothing.
pub fn snapshot() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .take(SNAPSHOT_CAP)
        .collect()
}

/// `root` and every descendant of it, found by walking
/// `/proc/PID/task/TID/children` instead of reading all of `/proc`.
///
/// Why: a full [`snapshot`] reads the stat file of every process on the
/// machine. When a Tower with hundreds of shellpers dies, their windows end
/// together and hundreds of kill ladders sweep at once; full scans then cost
/// O(shellpers × processes) and starve the ladders. The walk costs
/// O(size of the tree).
///
/// The kernel documents the `children` files as best-effort while children
/// are being created or reaped concurrently, so callers must not conclude
/// "the tree is empty" from one walk (the ladder wants two in a row).
/// Returns `None` when `root` is gone or the kernel lacks the `children`
/// files (CONFIG_PROC_CHILDREN): use [`snapshot`] then. At most
/// [`SNAPSHOT_CAP`] entries.
///
/// Cost: a walk reads two small files per single-threaded member (its
/// `stat`, then its one thread's `children`, named from the pid without
/// listing `task/`) and lists `task/` only for members with more threads.
/// A Tower walks every held shellper's tree on a cadence, so the syscalls
/// per member are most of its cost per session (BENCHMARKS.md, "The tree
/// record's cost").
pub fn descendants_snapshot(root: i32) -> Option<Vec<ProcInfo>> {
    let mut text = String::with_capacity(512);
    let (root_info, root_threads) = stat_and_threads(root, &mut text)?;
    let mut out = vec![root_info];
    let mut queue = vec![(root, root_threads)];
    let mut first = true;
    let mut tids = Vec::new();
    while let Some((pid, threads)) = queue.pop() {
        tids.clear();
        if threads == 1 {
            // One thread: its tid is the pid. (A thread started since the
            // stat read may hold children this walk misses, as a fork
            // during any walk may be missed: callers walk again.)
            tids.push(pid);
        } else {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                if first {
                    return None;
                }
                continue;
            };
            tids.extend(
                tasks
                    .filter_map(|t| t.ok())
                    .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok()),
            );
        }
        for &tid in &tids {
            if let Err(e) = read_small(&format!("/proc/{pid}/task/{tid}/children"), &mut text) {
                if first && e.kind() == std::io::ErrorKind::NotFound {
                    return None;
                }
                continue;
            }
            let children: Vec<i32> = text
                .split_ascii_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
                .collect();
            for child in children {
                if out.len() >= SNAPSHOT_CAP {
                    return Some(out);
                }
                if let Some((info, threads)) = stat_and_threads(child, &mut text) {
                    out.push(info);
                    queue.push((child, threads));
                }
            }
        }
        first = false;
    }
    Some(out)
}

/// A small /proc file into `buf` (cleared first): open and read, without
/// the size probe (`statx`, `lseek`) `std::fs::read_to_string` makes, which
/// /proc files answer with 0 anyway.
fn read_small(path: &str, buf: &mut String) -> io::Result<()> {
    use std::io::Read as _;
    buf.clear();
    let file = std::fs::File::open(path)?;
    // Bounded: a `children` file of a huge family is at most a few MiB.
    file.take(64 << 20).read_to_string(buf)?;
    Ok(())
}

/// `/proc/PID/stat` and its thread count (field 20), read into `buf`.
fn stat_and_threads(pid: i32, buf: &mut String) -> Option<(ProcInfo, u32)> {
    if pid <= 0 {
        return None;
    }
    read_small(&format!("/proc/{pid}/stat"), buf).ok()?;
    let info = parse_stat(buf).filter(|p| p.pid == pid)?;
    Some((info, stat_threads(buf).unwrap_or(0)))
}

/// Field 20 (`num_threads`) of a stat line; `None` if it does not parse.
fn stat_threads(text: &str) -> Option<u32> {
    let close = text.rfind(')')?;
    // Fields after the comm start at 3 (state): 20 is the 18th.
    text[close + 1..]
        .split_ascii_whitespace()
        .nth(17)?
        .parse()
        .ok()
}

/// The session led by `child` while it is still `parent`'s child (alive or
/// a zombie not yet reaped): a child's pid cannot be reused before its
/// parent reaps it, so its start time read now is the leader's identity.
/// `None` when `child` is gone, leads no session, or is not `parent`'s
/// child (reaped, and the pid possibly reused).
pub fn session_of_child(parent: i32, child: i32) -> Option<crate::tree::Session> {
    read_stat(child)
        .filter(|p| p.ppid == parent && parent > 1)
        .and_then(|p| crate::tree::Session::led_by(&p))
}

/// The file name of `/proc/PID/exe` (the executable; ` (deleted)` appended
/// when it was replaced on disk), `None` for kernel threads, other users'
/// processes and gone ones. A readlink: never blocks on the target.
pub fn exe_name(pid: i32) -> Option<String> {
    if pid <= 0 {
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    exe.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Descriptors this process has open now (entries of `/proc/self/fd`; 0
/// when unreadable).
pub fn open_fd_count() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Looks up `/proc/<self>` and `/proc/self/stat`, so that the inode of
/// `/proc/<pid>` (and its ctime) exists from now on: codev's Tower uses that
/// ctime as a shellper's start-time identity (brief §6).
pub fn touch_proc_self() {
    let _ = std::fs::metadata(format!("/proc/{}", std::process::id()));
    let _ = std::fs::metadata("/proc/self/stat");
}

/// Whether the kernel lets us signal `pid` (`kill(pid, 0)`, nothing is
/// sent): `Some(true)` yes, `Some(false)` EPERM (another user's process and
/// we lack the privilege), `None` no such process (or pid ≤ 0).
pub fn signal_permitted(pid: i32) -> Option<bool> {
    if pid <= 0 {
        return None;
    }
    let p = rustix::process::Pid::from_raw(pid)?;
    match rustix::process::test_kill_process(p) {
        Ok(()) => Some(true),
        Err(rustix::io::Errno::PERM) => Some(false),
        Err(_) => None,
    }
}

/// The uid owning process `pid` (the owner of `/proc/PID`), if it exists.
pub fn owner_uid(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    if pid <= 0 {
        return None;
    }
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// True if `pid` is the process that started at `start_ticks` (zombie or
/// not: identity only, see [`ProcInfo::is_live`] for liveness). This is the
/// guard against pid recycling: store `(pid, start_ticks)`, never a bare pid.
pub fn same_process(pid: i32, start_ticks: u64) -> bool {
    read_stat(pid).is_some_and(|p| p.start_ticks == start_ticks)
}

/// True if `/proc/PID/environ` contains exactly `KEY=VALUE` (false when
/// unreadable, which includes zombies and other users' processes).
///
/// Like `cmdline`, reading `environ` takes the target's memory-map lock, so
/// a process in uninterruptible sleep (`D`) is not read (false), nor a
/// zombie (it has no environment): the same guard as
/// [`read_cmdline_if_safe`].
pub fn environ_contains(pid: i32, key: &str, value: &str) -> bool {
    if !read_stat(pid).is_some_and(|p| p.state != 'D' && p.is_live()) {
        return false;
    }
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let (key, value) = (key.as_bytes(), value.as_bytes());
    env.split(|b| *b == 0).any(|entry| {
        entry.len() == key.len() + 1 + value.len()
            && entry.starts_with(key)
            && entry[key.len()] == b'='
            && entry.ends_with(value)
    })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Converts a start time in ticks to milliseconds since the Unix epoch, using
/// the boot time (`btime`) of `/proc/stat`. Second-granular (btime is in
/// whole seconds), so use it for display, never for identity.
pub fn start_time_unix_ms(start_ticks: u64) -> io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no btime in /proc/stat"))?;
    let hz = clock_ticks_per_sec();
    Ok(btime * 1000 + start_ticks * 1000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_threads_is_field_20_after_any_comm() {
        let line =
            "4242 (evil) S 1 2 (x)) T 7 8 9 0 -1 4194560 0 0 0 0 1 2 0 0 20 0 3 0 123456 0 0\n";
        assert_eq!(stat_threads(line), Some(3));
        let own = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        let listed = std::fs::read_dir("/proc/self/task").expect("tasks").count();
        // Test threads come and go, but this one is always there.
        assert!(stat_threads(&own).is_some_and(|n| n >= 1 && n as usize <= listed + 8));
    }

    #[test]
    fn parse_stat_takes_comm_up_to_the_last_paren() {
        let line =
            "4242 (evil) S 1 2 (x)) T 7 8 9 0 -1 4194560 0 0 0 0 1 2 0 0 20 0 1 0 123456 0 0\n";
        let p = parse_stat(line).expect("parses");
        assert_eq!(p.pid, 4242);
        assert_eq!(p.comm, "evil) S 1 2 (x)");
        assert_eq!(p.state, 'T');
        assert_eq!((p.ppid, p.pgid, p.sid), (7, 8, 9));
        assert_eq!(p.start_ticks, 123456);
        assert!(p.is_stopped());
    }

    #[test]
    fn parse_stat_rejects_garbage() {
        assert!(parse_stat("").is_none());
        assert!(parse_stat("1 (x) S 1 1 1").is_none(), "truncated");
        assert!(parse_stat(") 1 (").is_none());
        assert!(parse_stat("x (y) S 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5").is_none());
    }

    #[test]
    fn reads_self() {
        let me = std::process::id() as i32;
        let p = read_proc(me).expect("self");
        assert_eq!(p.pid, me);
        assert!(p.is_live());
        assert!(same_process(me, p.start_ticks));
        assert!(!same_process(me, p.start_ticks + 1));
        assert!(!p.cmdline.is_empty());
        let snap = snapshot();
        assert!(snap.iter().any(|q| q.pid == me && q.cmdline.is_empty()));
        assert!(snap.iter().any(|q| q.pid == 1));
        assert!(read_stat(0).is_none() && read_stat(-5).is_none());
        let ms = start_time_unix_ms(p.start_ticks).expect("btime");
        assert!(ms > 1_500_000_000_000);
    }

    #[test]
    fn cmdline_is_not_read_for_disk_sleep_or_zombies() {
        let me = read_stat(std::process::id() as i32).expect("self");
        assert_eq!(read_cmdline_if_safe(&me), read_cmdline(me.pid));
        assert!(read_cmdline_if_safe(&me).is_some_and(|v| !v.is_empty()));
        for state in ['D', 'Z', 'X'] {
            let p = ProcInfo {
                state,
                ..me.clone()
            };
            assert_eq!(read_cmdline_if_safe(&p), None, "state {state}");
        }
    }

    #[test]
    fn signal_permission_probe() {
        let me = std::process::id() as i32;
        assert_eq!(signal_permitted(me), Some(true));
        assert_eq!(signal_permitted(0), None);
        assert_eq!(signal_permitted(-3), None);
        assert_eq!(owner_uid(me), Some(rustix::process::getuid().as_raw()));
        // pid 1 belongs to root: only root may signal it.
        let root = rustix::process::geteuid().is_root();
        assert_eq!(signal_permitted(1), Some(root));
    }

    #[test]
    fn environ_match_is_exact() {
        // The test process has PATH; a prefix of the key or value must not match.
        let me = std::process::id() as i32;
        let path = std::env::var("PATH").expect("PATH set");
        assert!(environ_contains(me, "PATH", &path));
        assert!(!environ_contains(me, "PAT", &path));
        assert!(!environ_contains(me, "PATH", &path[..path.len() - 1]));
    }
}
