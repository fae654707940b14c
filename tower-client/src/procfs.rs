//! The few /proc and pidfd facts a Tower needs about the processes it
//! started: a recycle-proof identity (pid + start ticks), liveness, and the
//! descendants of a shellper for the cleanup of a failed spawn.
//!
//! Kept local and small on purpose: the Tower only ever signals processes it
//! started itself (or their descendants, on a failed spawn), and it pins
//! them with a pidfd before signalling so a recycled pid is never hit.

use std::fs;
use std::os::fd::OwnedFd;

use rustix::process::{Pid, PidfdFlags, Signal};

/// Fields of `/proc/PID/stat` the Tower uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub ppid: u32,
    pub session: u32,
    pub start_ticks: u64,
}

/// Reads `/proc/PID/stat`. The comm field may contain spaces and `)`, so
/// fields are located from the last `)`.
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state(3) ppid(4) pgrp(5) session(6) ... starttime(22).
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

/// Start time of `pid` in clock ticks since boot, if it exists.
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_ticks)
}

/// True if `pid` is alive (not a zombie) and is the process that started at
/// `start_ticks` (so not a recycled pid).
pub fn same_process(pid: u32, start_ticks: u64) -> bool {
    matches!(stat(pid), Some(s) if s.start_ticks == start_ticks && s.state != 'Z' && s.state != 'X')
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// A pidfd for `pid`, verified to be the process with `start_ticks` after it
/// was opened (the pidfd pins the process; checking after pinning closes
/// the race with pid reuse).
pub(crate) fn pidfd_for(pid: u32, start_ticks: u64) -> Option<OwnedFd> {
    let p = Pid::from_raw(pid as i32)?;
    let fd = rustix::process::pidfd_open(p, PidfdFlags::empty()).ok()?;
    same_process(pid, start_ticks).then_some(fd)
}

/// Every live process whose parent chain leads to `root`, plus every live
/// process in a session led by one of those (a PTY child may `setsid` its
/// own children away; they stay in the child's session, and if the parent
/// died they were reparented to the shellper (a subreaper) anyway).
/// Returns `(pid, start_ticks)` pairs.
pub(crate) fn descendants(root: u32) -> Vec<(u32, u64)> {
    let mut all: Vec<(u32, Stat)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(st) = stat(pid)
                && st.state != 'Z'
                && st.state != 'X'
            {
                all.push((pid, st));
            }
        }
    }
    let mut tree: Vec<u32> = vec![root];
    let mut changed = true;
    while changed {
        changed = false;
        for (pid, st) in &all {
            if !tree.contains(pid)
                && (tree.contains(&st.ppid) || (st.session != 0 && tree[1..].contains(&st.session)))
            {
                tree.push(*pid);
                changed = true;
            }
        }
    }
    all.into_iter()
        .filter(|(pid, _)| *pid != root && tree.contains(pid))
        .map(|(pid, st)| (pid, st.start_ticks))
        .collect()
}

/// Sends `sig` to the process `(pid, start_ticks)` through a pidfd, so a
/// recycled pid is never signalled. False if it is already gone.
pub(crate) fn signal(pid: u32, start_ticks: u64, sig: Signal) -> bool {
    match pidfd_for(pid, start_ticks) {
        Some(fd) => rustix::process::pidfd_send_signal(&fd, sig).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_self_and_children() {
        let me = std::process::id();
        let t = start_ticks(me).expect("own stat");
        assert!(same_process(me, t));
        assert!(!same_process(me, t + 1));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let cpid = child.id();
        let ct = start_ticks(cpid).expect("child stat");
        assert!(descendants(me).iter().any(|(p, _)| *p == cpid));
        assert!(signal(cpid, ct, Signal::KILL));
        child.wait().expect("reap");
        assert!(!same_process(cpid, ct));
        assert!(!alive(cpid));
    }
}
