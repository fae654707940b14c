//! /proc, read independently of the code under test, the signals the run
//! sends, its one reaper, and the bystanders no one may ever signal.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shellper_testkit::{LEAK_TAG_VAR, read_survivor};

use super::trees::TREE_VAR;

/// One live tagged process.
#[derive(Debug, Clone)]
pub(super) struct Proc {
    pub(super) start: u64,
    /// The tree it belongs to, from [`TREE_VAR`].
    pub(super) tree: Option<String>,
    pub(super) argv: Vec<String>,
}

impl Proc {
    pub(super) fn cmdline(&self) -> String {
        self.argv.join(" ")
    }
}

/// Every live process carrying our leak tag.
pub(super) fn scan(tag: &[u8]) -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut ours = false;
        let mut tree = None;
        for entry in env.split(|b| *b == 0) {
            if let Some(v) = entry
                .strip_prefix(LEAK_TAG_VAR.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            {
                ours = v == tag;
            } else if let Some(v) = entry
                .strip_prefix(TREE_VAR.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            {
                tree = std::str::from_utf8(v).ok().map(str::to_string);
            }
        }
        if !ours {
            continue;
        }
        match read_survivor(pid) {
            Some(s) if !matches!(s.state, 'Z' | 'X' | 'x') => {
                out.insert(
                    pid,
                    Proc {
                        start: s.start_ticks,
                        tree,
                        argv: s.cmdline,
                    },
                );
            }
            _ => {}
        }
    }
    out
}

/// Wall-clock time as seconds.micros since the epoch, to line the run's
/// logs up with the shellpers' (which log wall-clock time).
pub(super) fn wall() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

pub(super) fn start_ticks(pid: i32) -> Option<u64> {
    read_survivor(pid)
        .filter(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
        .map(|s| s.start_ticks)
}

pub(super) fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid this run started and has not reaped (the
    // reaper records exits; callers check liveness first).
    unsafe {
        libc::kill(pid, sig);
    }
}

// ---------------------------------------------------------------------------
// The one reaper
// ---------------------------------------------------------------------------

/// Makes this process a child subreaper and reaps every child in one
/// thread, recording exit statuses by pid. Only for a process that owns all
/// of its children (the chaos test binary, the chaos binary).
///
/// A pid is recycled in a long run (pid_max 32768, and every orphan of the
/// run is reaped here): a status recorded for an earlier process must never
/// be taken for the exit of a new one with the same pid (seen: a Tower
/// "exited on its own" with status 0, a stale status of an earlier process,
/// 100 ms after it started). So reaping and recording happen under one
/// lock, and [`Reaper::spawn`] starts a child and forgets any status of its
/// pid under that same lock.
#[derive(Debug, Clone)]
pub(super) struct Reaper {
    pub(super) exits: Arc<Mutex<HashMap<i32, i32>>>,
}

impl Reaper {
    pub(super) fn start() -> Reaper {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) affects only this process.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        let exits: Arc<Mutex<HashMap<i32, i32>>> = Arc::default();
        let e2 = exits.clone();
        std::thread::spawn(move || {
            loop {
                let mut reaped = false;
                {
                    let mut m = e2.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        let mut status = 0;
                        // SAFETY: waitpid with a valid out pointer.
                        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                        if pid <= 0 {
                            break;
                        }
                        m.insert(pid, status);
                        reaped = true;
                    }
                }
                if !reaped {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Reaper { exits }
    }

    /// Starts `cmd`; no pid can be reaped meanwhile, so a status recorded
    /// for the new child's pid is an earlier process's and is dropped.
    pub(super) fn spawn(&self, cmd: &mut Command) -> std::io::Result<i32> {
        let mut m = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // The reaper owns the exit status; the handle is only a pid now.
        drop(child);
        m.remove(&pid);
        Ok(pid)
    }

    pub(super) fn exit_of(&self, pid: i32) -> Option<i32> {
        self.exits.lock().ok()?.get(&pid).copied()
    }
}

// ---------------------------------------------------------------------------

/// Spawns a bystander: a tagged process outside every tree, which no one
/// may ever signal.
pub(super) fn bystander(tag: &str, own_session: bool) -> std::io::Result<(i32, u64)> {
    let mut cmd = Command::new("sleep");
    cmd.arg("100008")
        .env(LEAK_TAG_VAR, tag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid and prctl are async-signal-safe; runs in the child only.
    unsafe {
        cmd.pre_exec(move || {
            if own_session {
                libc::setsid();
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Wait for the exec, so the start time is the sleep's.
        if let Some(s) = read_survivor(pid)
            && s.comm == "sleep"
        {
            return Ok((pid, s.start_ticks));
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other("bystander did not start"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
