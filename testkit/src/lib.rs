//! Test support shared by every crate: the leak guard and binary lookup.
//!
//! Scenario 13 of the brief says test suites leak nothing, and proves it. A
//! [`LeakGuard`] gives each test a unique value for [`LEAK_TAG_VAR`]; the test
//! puts it into the environment of everything it spawns ([`LeakGuard::apply`]).
//! Environment variables are inherited across `fork`, `exec`, `setsid` and
//! double forks, so every process of the tree carries the tag no matter how it
//! escaped its parent or its process group. At teardown the guard scans
//! `/proc/*/environ` for the exact `VAR=tag` entry, SIGKILLs whatever is still
//! alive and fails the test naming each survivor.
//!
//! Zombies are skipped everywhere: on these machines PID 1 never reaps
//! orphans, so a dead orphan stays in state `Z` forever (its environ is empty
//! anyway). Only live processes count as leaks.
//!
//! Public API:
//! * [`LeakGuard`]: `new`, `with_settle`, `tag`, `env_pair`, `apply`,
//!   `survivors`, `wait_steady`, `wait_gone`, `kill_all`, `finish` (and a
//!   checking `Drop`).
//! * [`scan_tagged`]: every live process carrying the tag variable (the CI
//!   leak gate; also the `leak-scan` binary).
//! * [`cargo_bin`]: path of a workspace binary next to the running test,
//!   checked to be newer than its sources ([`bins`]).
//! * [`wait_for`], [`wait_for_some`]: poll with a deadline (never a fixed
//!   sleep).
//! * [`scan_comm`], [`kill_tagged`], [`kill_survivor`]: for the gate.
//! * [`proc_alive`], [`read_survivor`]: small /proc helpers.
//! * [`cgroup::TestCgroup`]: a cgroup v2 parent of the test's own, whose
//!   contents are killed and directories removed at teardown.
//! * [`minitower::MiniTower`]: a `minitower` run by a test (events read
//!   with deadlines, stderr kept, killed on drop), shared by the scenario
//!   files instead of a copy in each.
//!
//! This crate deliberately depends on `libc`, `rand` and `serde_json` only
//! (no tokio), so it can be used from sync tests, async tests and binaries
//! alike.

pub mod bins;
pub mod cgroup;
pub mod minitower;

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The environment variable that tags a test's process tree.
pub const LEAK_TAG_VAR: &str = "SHELLPER_LEAK_TAG";

/// Default time [`LeakGuard::finish`] waits for the tree to exit on its own.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// How often [`LeakGuard::wait_gone`] rescans `/proc`.
const POLL: Duration = Duration::from_millis(20);

/// How many SIGKILL passes the guard makes: a process may fork between a scan
/// and the kill, so one pass is not enough.
const KILL_PASSES: usize = 20;

/// A live process that carries a leak tag (or that a scan otherwise matched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivor {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The state letter from `/proc/PID/stat` (`R`, `S`, `D`, `T`, ...).
    pub state: char,
    /// The kernel's short name (`/proc/PID/comm`, at most 15 bytes).
    pub comm: String,
    /// The argument vector (empty for kernel threads or unreadable entries).
    pub cmdline: Vec<String>,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`):
    /// with the pid, it identifies one process even if the pid is recycled.
    pub start_ticks: u64,
}

impl fmt::Display for Survivor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} ({}) state {} ppid {} pgid {} sid {} cmdline {:?}",
            self.pid,
            self.comm,
            self.state,
            self.ppid,
            self.pgid,
            self.sid,
            self.cmdline.join(" ")
        )
    }
}

/// What the guard reads about one process.
///
/// Deliberately not a copy of the code under test: proctree parses
/// `/proc/PID/stat` from the *last* `)` of the line. Here the state,
/// parent, process group and session come from the `Key:<TAB>value` lines
/// of `/proc/PID/status`, and only the start time (which nothing else
/// offers) from `/proc/PID/stat`, found after an exact prefix built from
/// `/proc/PID/comm` (read on its own). A parsing bug in one cannot hide the
/// same bug in the checker.
struct Stat {
    comm: String,
    state: char,
    ppid: i32,
    pgid: i32,
    sid: i32,
    start_ticks: u64,
}

/// The value of one `Key:` line of `/proc/PID/status`, trimmed.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// `(state, ppid, pgid, sid)` from the text of `/proc/PID/status`. Process
/// group and session are the innermost pid namespace's (the last number of
/// `NSpgid`/`NSsid`); `None` if the kernel does not print them.
fn parse_status(status: &str) -> Option<(char, i32, i32, i32)> {
    let state = status_field(status, "State")?.chars().next()?;
    let ppid = status_field(status, "PPid")?.parse().ok()?;
    let last = |key: &str| -> Option<i32> {
        status_field(status, key)?
            .split_ascii_whitespace()
            .last()?
            .parse()
            .ok()
    };
    Some((state, ppid, last("NSpgid")?, last("NSsid")?))
}

/// The start time (field 22) from the bytes of `/proc/PID/stat`, given the
/// process's name as `/proc/PID/comm` prints it: the line must begin with
/// exactly `PID (COMM) `, so a name holding `) ` or digits cannot shift the
/// fields, and what follows must be a state letter and then numbers only.
/// `None` otherwise (the process renamed itself in between).
fn start_ticks_in_stat(stat: &[u8], pid: i32, comm: &[u8]) -> Option<u64> {
    let mut prefix = format!("{pid} (").into_bytes();
    prefix.extend_from_slice(comm);
    prefix.extend_from_slice(b") ");
    let rest = std::str::from_utf8(stat.strip_prefix(prefix.as_slice())?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    if state.len() != 1 || !state.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    // Fields 4..=22 (ppid .. starttime) are all numbers; the last is ours.
    let numbers: Vec<i64> = fields
        .take(19)
        .map(|f| f.parse::<i64>().ok())
        .collect::<Option<_>>()?;
    if numbers.len() != 19 {
        return None;
    }
    u64::try_from(numbers[18]).ok()
}

/// Reads one process, or `None` when it is gone (or renamed itself between
/// the reads three times in a row).
fn read_stat(pid: i32) -> Option<Stat> {
    for _ in 0..3 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let (state, ppid, pgid, sid) = parse_status(&status)?;
        let comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        // The same name before and after the stat read: it is the name
        // the stat line carries.
        let again = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
        if again.strip_suffix(b"\n").unwrap_or(&again) != comm {
            continue;
        }
        let Some(start_ticks) = start_ticks_in_stat(&stat, pid, comm) else {
            continue;
        };
        return Some(Stat {
            comm: String::from_utf8_lossy(comm).into_owned(),
            state,
            ppid,
            pgid,
            sid,
            start_ticks,
        });
    }
    None
}

/// `Z` (zombie) and `X`/`x` (dead) are not live: they run no code, hold no
/// resources except a pid, and on these machines PID 1 never reaps them.
fn is_live_state(state: char) -> bool {
    !matches!(state, 'Z' | 'X' | 'x')
}

/// argv, for reports; never read for a process in `D` state (see [`tag_of`]).
fn read_cmdline(pid: i32, state: char) -> Vec<String> {
    if state == 'D' {
        return Vec::new();
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads one process from /proc, or `None` if it does not exist (or its stat
/// is unreadable). Zombies are returned too (with `state == 'Z'`).
pub fn read_survivor(pid: i32) -> Option<Survivor> {
    let st = read_stat(pid)?;
    Some(Survivor {
        pid,
        ppid: st.ppid,
        pgid: st.pgid,
        sid: st.sid,
        state: st.state,
        comm: st.comm,
        cmdline: read_cmdline(pid, st.state),
        start_ticks: st.start_ticks,
    })
}

/// True if `pid` exists and is not a zombie (or dead).
pub fn proc_alive(pid: i32) -> bool {
    read_stat(pid).is_some_and(|st| is_live_state(st.state))
}

/// Every numeric entry of /proc (thread-group leaders, i.e. processes).
fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .collect()
}

/// The value of [`LEAK_TAG_VAR`] in a process's environment, if any.
/// Unreadable environments (other users, exiting processes) give `None`.
///
/// Reading `environ` (like `cmdline`) takes the target's memory-map lock,
/// so a process in uninterruptible sleep (`D`) could hang the scan: it is
/// not read now (`None`); `D` is transient, and the polling scans of
/// [`LeakGuard`] see it again on their next pass.
fn tag_of(pid: i32) -> Option<Vec<u8>> {
    let st = read_stat(pid)?;
    if st.state == 'D' || !is_live_state(st.state) {
        return None;
    }
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let key = LEAK_TAG_VAR.as_bytes();
    env.split(|b| *b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(key)?;
        let value = rest.strip_prefix(b"=")?;
        Some(value.to_vec())
    })
}

/// Scans every live process (excluding this one) and keeps those whose
/// [`LEAK_TAG_VAR`] value passes `accept`.
fn scan_where(accept: impl Fn(&[u8]) -> bool) -> Vec<Survivor> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for pid in all_pids() {
        if pid == me {
            continue;
        }
        let Some(value) = tag_of(pid) else { continue };
        if !accept(&value) {
            continue;
        }
        // Read stat after the environ match: if the process died in between
        // it is a zombie or gone now, and skipped either way.
        match read_survivor(pid) {
            Some(s) if is_live_state(s.state) => out.push(s),
            _ => {}
        }
    }
    out.sort_by_key(|s| s.pid);
    out
}

/// Every live process (other than this one) carrying [`LEAK_TAG_VAR`]; with
/// `Some(prefix)`, only those whose tag value starts with `prefix`.
///
/// This is the CI leak gate: after the whole suite ran, it must be empty.
pub fn scan_tagged(value_prefix: Option<&str>) -> Vec<Survivor> {
    let prefix = value_prefix.unwrap_or("").as_bytes();
    scan_where(|v| v.starts_with(prefix))
}

/// SIGKILLs the process `s` describes, but only if it is still that process
/// (same pid *and* start time) *after* a pidfd pins it. A pidfd refers to one
/// process for ever, so if the pid was recycled between the scan and the kill
/// the newcomer is never hit. Falls back to kill(2) (after the same check)
/// where pidfds are unsupported (kernels before 5.3). Returns true if a
/// signal was sent.
pub fn kill_survivor(s: &Survivor) -> bool {
    let same = || read_survivor(s.pid).is_some_and(|now| now.start_ticks == s.start_ticks);
    // SAFETY: pidfd_open takes (pid_t, unsigned int) and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, s.pid, 0) };
    if fd >= 0 {
        let fd = fd as libc::c_int;
        let mut sent = false;
        if same() {
            // SAFETY: pidfd_send_signal(int, int, siginfo_t *, unsigned int);
            // a null siginfo is documented to behave like kill(2).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            sent = rc == 0;
        }
        // SAFETY: fd was returned by pidfd_open above and is closed once.
        unsafe { libc::close(fd) };
        sent
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) && same() {
        // SAFETY: plain kill(2); the race window is the one a pidfd closes on
        // newer kernels.
        unsafe { libc::kill(s.pid, libc::SIGKILL) == 0 }
    } else {
        false
    }
}

/// Kills everything `scan` finds, in repeated passes (a process may fork
/// between a scan and its kill), until a scan comes back empty. Returns every
/// process seen in any pass, and whether the last scan was empty.
fn kill_passes(scan: impl Fn() -> Vec<Survivor>) -> (Vec<Survivor>, bool) {
    let mut seen: Vec<Survivor> = Vec::new();
    for _ in 0..KILL_PASSES {
        let found = scan();
        if found.is_empty() {
            return (seen, true);
        }
        for s in found {
            kill_survivor(&s);
            if !seen.iter().any(|x| x.pid == s.pid) {
                seen.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let clean = scan().is_empty();
    (seen, clean)
}

/// Every live process (other than this one) whose comm is one of `names`
/// (the kernel truncates comm to 15 bytes; compare accordingly).
pub fn scan_comm(names: &[&str]) -> Vec<Survivor> {
    let me = std::process::id() as i32;
    let mut out: Vec<Survivor> = all_pids()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter_map(read_survivor)
        .filter(|s| is_live_state(s.state) && names.iter().any(|n| *n == s.comm))
        .collect();
    out.sort_by_key(|s| s.pid);
    out
}

/// Kills every live process carrying [`LEAK_TAG_VAR`] (optionally only with a
/// tag value starting with `value_prefix`); returns the processes it found.
pub fn kill_tagged(value_prefix: Option<&str>) -> Vec<Survivor> {
    kill_passes(|| scan_tagged(value_prefix)).0
}

/// Proves a test leaves no process behind.
///
/// ```no_run
/// # use shellper_testkit::LeakGuard;
/// let guard = LeakGuard::new("my_test");
/// let mut cmd = std::process::Command::new("sh");
/// guard.apply(cmd.arg("-c").arg("sleep 0.1 &"));
/// cmd.status().unwrap();
/// guard.finish(); // waits up to 2 s, then kills survivors and panics naming them
/// ```
///
/// If neither [`finish`](Self::finish) nor a panic ended the test, `Drop`
/// makes the same check (and panics on leaks). If the thread is already
/// panicking, `Drop` only kills, silently, so a failing test still leaks
/// nothing and its original panic message is kept.
#[derive(Debug)]
pub struct LeakGuard {
    tag: String,
    settle: Duration,
    finished: bool,
}

impl LeakGuard {
    /// A guard with a unique tag: `name` (sanitised), this process's pid and
    /// 64 random bits, so concurrent tests, test binaries and engineers never
    /// see each other's processes.
    pub fn new(name: &str) -> LeakGuard {
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let tag = format!(
            "{clean}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        LeakGuard {
            tag,
            settle: DEFAULT_SETTLE,
            finished: false,
        }
    }

    /// Changes how long [`finish`](Self::finish) waits for the tree to exit
    /// on its own before it counts leftovers as leaks.
    pub fn with_settle(mut self, settle: Duration) -> LeakGuard {
        self.settle = settle;
        self
    }

    /// The unique tag value.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `(LEAK_TAG_VAR, tag)`, for APIs that take an environment as pairs
    /// (for example a shellper JSON config's `env`).
    pub fn env_pair(&self) -> (&'static str, String) {
        (LEAK_TAG_VAR, self.tag.clone())
    }

    /// Tags a command: sets [`LEAK_TAG_VAR`] in its environment. Note that a
    /// later `env_clear()` on the same command removes it again.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env(LEAK_TAG_VAR, &self.tag)
    }

    /// Live processes (zombies excluded, this process excluded) carrying
    /// exactly this guard's tag.
    pub fn survivors(&self) -> Vec<Survivor> {
        let tag = self.tag.as_bytes();
        scan_where(|v| v == tag)
    }

    /// Polls until no tagged process is alive or `timeout` passes; returns
    /// the survivors of the last scan (empty on success).
    pub fn wait_gone(&self, timeout: Duration) -> Vec<Survivor> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.survivors();
            if found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Polls until no tagged process is alive; panics naming the survivors
    /// if some are still there after `timeout` (the guard's `finish` then
    /// has nothing left to kill).
    pub fn assert_gone_within(&self, timeout: Duration) {
        let left = self.wait_gone(timeout);
        assert!(
            left.is_empty(),
            "still alive {timeout:?} later: {}",
            left.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    /// Waits until at least `min` tagged processes are alive and their
    /// number has not changed over three scans 50 ms apart (a tree that is
    /// still forking is not counted half-started); returns that number, or
    /// the last count if `timeout` passed first.
    pub fn wait_steady(&self, min: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut last = (usize::MAX, 0);
        loop {
            let n = self.survivors().len();
            last = if n == last.0 { (n, last.1 + 1) } else { (n, 1) };
            if (n >= min && last.1 >= 3) || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs every tagged process, in passes, until none is left; returns
    /// those it found.
    pub fn kill_all(&self) -> Vec<Survivor> {
        kill_passes(|| self.survivors()).0
    }

    /// Ends the test: waits up to the settle time for the tree to exit, then
    /// kills any survivors and panics naming each of them.
    pub fn finish(mut self) {
        self.finished = true;
        self.check();
    }

    fn check(&self) {
        let leftover = self.wait_gone(self.settle);
        if leftover.is_empty() {
            return;
        }
        let (killed, clean) = kill_passes(|| self.survivors());
        let mut all = leftover;
        for k in killed {
            if !all.iter().any(|x| x.pid == k.pid) {
                all.push(k);
            }
        }
        let mut msg = format!(
            "leak guard {}: {} process(es) survived the test (settle {:?}); SIGKILLed{}:",
            self.tag,
            all.len(),
            self.settle,
            if clean { "" } else { " (some STILL ALIVE)" }
        );
        for s in &all {
            msg.push_str("\n  ");
            msg.push_str(&s.to_string());
        }
        panic!("{msg}");
    }
}

impl Drop for LeakGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if std::thread::panicking() {
            self.kill_all();
        } else {
            self.check();
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes; true if it did.
/// Every test that waits for a process, a file or a state uses this (or
/// [`wait_for_some`]) instead of a fixed sleep: a fixed sleep is either too
/// short on a loaded machine or wasted time on an idle one.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    wait_for_some(timeout, || f().then_some(())).is_some()
}

/// Polls `f` (every 10 ms) until it returns `Some` or `timeout` passes. `f`
/// is always called at least once, and once more at the deadline.
pub fn wait_for_some<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// Locates a workspace binary (`shellper`, `minitower`, `leasectl`, ...).
///
/// A test executable lives in `target/<profile>/deps/`; binaries are built
/// into `target/<profile>/`, so that is where we look first (then next to
/// the executable itself), and fall back to `CARGO_BIN_EXE_<name>` if set.
///
/// The binary must be newer than every source it was built from (the
/// dep-info file cargo writes beside it, [`bins`]): a test of one crate
/// never silently runs another crate's old binary.
///
/// # Panics
/// When the binary is absent, or older than one of its sources: build it
/// first with `cargo build --workspace --bins` (or set
/// [`bins::ALLOW_STALE_VAR`]`=1`).
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe_name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
    {
        if dir.file_name() == Some(OsStr::from_bytes(b"deps"))
            && let Some(profile) = dir.parent()
        {
            candidates.push(profile.join(&exe_name));
        }
        candidates.push(dir.join(&exe_name));
    }
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        if std::env::var_os(bins::ALLOW_STALE_VAR).is_none_or(|v| v != "1") {
            let dep_info = PathBuf::from(format!("{}.d", found.display()));
            if let Err(why) = bins::check_fresh(found, &dep_info) {
                panic!("{}", bins::stale_message(name, found, &why));
            }
        }
        return found.clone();
    }
    let shown = candidates
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<no candidate path: current_exe unknown>".to_string());
    panic!("binary {name} not found at {shown}: run `cargo build --workspace --bins` first");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_start_time_is_found_after_the_exact_name() {
        let line = b"42 (a) b) (c) S 1 42 42 0 -1 4194560 0 0 0 0 1 2 0 0 20 0 1 0 777 0 0\n";
        assert_eq!(start_ticks_in_stat(line, 42, b"a) b) (c"), Some(777));
        // A name that is not the one in the line (renamed in between), a
        // wrong pid, a cut line: no answer rather than a wrong field.
        assert_eq!(start_ticks_in_stat(line, 42, b"a) b"), None);
        assert_eq!(start_ticks_in_stat(line, 4, b"a) b) (c"), None);
        assert_eq!(start_ticks_in_stat(b"42 (x) S 1 2", 42, b"x"), None);
    }

    #[test]
    fn status_lines_give_state_parent_group_and_session() {
        let status = "Name:\tsleep\nUmask:\t0022\nState:\tT (stopped)\nTgid:\t77\n\
                      Pid:\t77\nPPid:\t5\nNStgid:\t77\t3\nNSpid:\t77\t3\n\
                      NSpgid:\t70\t2\nNSsid:\t60\t1\n";
        assert_eq!(parse_status(status), Some(('T', 5, 2, 1)));
        assert_eq!(parse_status("State:\tS (sleeping)\nPPid:\t1\n"), None);
        assert_eq!(parse_status(""), None);
    }

    /// A real process with a hostile name: the checker reads it right.
    #[test]
    fn a_live_process_named_like_stat_fields_is_read_right() {
        let guard = LeakGuard::new("hostile_comm");
        let dir = tempfile_dir("testkit-comm");
        let link = dir.join("x) R 1 2 3 (");
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        let mut cmd = Command::new(&link);
        guard.apply(cmd.arg("30"));
        let mut child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let me = read_survivor(std::process::id() as i32).unwrap();
        let s = wait_for_some(Duration::from_secs(5), || {
            read_survivor(pid).filter(|s| s.comm == "x) R 1 2 3 (" && s.state == 'S')
        })
        .expect("child readable");
        assert_eq!(s.ppid, std::process::id() as i32);
        assert_eq!((s.pgid, s.sid), (me.pgid, me.sid));
        assert!(s.start_ticks >= me.start_ticks && s.start_ticks > 0);
        assert_eq!(guard.survivors().len(), 1);
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        guard.finish();
    }

    /// A fresh private directory (this crate has no tempfile dependency).
    pub(crate) fn tempfile_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "{name}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn zombie_and_dead_states_are_not_live() {
        for s in ['Z', 'X', 'x'] {
            assert!(!is_live_state(s));
        }
        for s in ['R', 'S', 'D', 'T', 't', 'I'] {
            assert!(is_live_state(s));
        }
    }

    #[test]
    fn tags_are_unique_and_sanitised() {
        let a = LeakGuard::new("x y=z");
        let b = LeakGuard::new("x y=z");
        assert_ne!(a.tag(), b.tag());
        assert!(a.tag().starts_with("x_y_z-"));
        assert_eq!(a.env_pair().0, LEAK_TAG_VAR);
        a.finish();
        b.finish();
    }

    #[test]
    fn cargo_bin_panics_with_a_clear_message() {
        let err =
            std::panic::catch_unwind(|| cargo_bin("no-such-binary-xyz")).expect_err("must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("binary no-such-binary-xyz not found at"),
            "{msg}"
        );
        assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
    }
}
