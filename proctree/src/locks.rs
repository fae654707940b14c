//! Who holds a `flock` on a file, read from `/proc/locks`.
//!
//! The point is to find out *without taking any lock*: probing with
//! `flock(LOCK_SH|LOCK_NB)` would, for an instant, make another process's
//! `LOCK_EX|LOCK_NB` fail (a Tower starting at that moment would refuse to
//! start, saying its scope is held). Reading `/proc/locks` touches nothing.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A `flock` held on a file, as `/proc/locks` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlockHolder {
    /// The process that took the lock. `None` when `/proc/locks` names no
    /// usable pid: it shows 0 for a holder outside our pid namespace, or
    /// when the process that took the lock is gone and a process that
    /// inherited the descriptor holds it now.
    pub pid: Option<u32>,
}

/// The `flock` held on `path`, or `Ok(None)` if nobody holds one (a
/// process merely waiting for the lock does not count). Errors: `path`
/// cannot be inspected (e.g. `NotFound`) or `/proc/locks` cannot be read.
pub fn flock_holder(path: &Path) -> io::Result<Option<FlockHolder>> {
    let meta = std::fs::metadata(path)?;
    let text = std::fs::read_to_string("/proc/locks")?;
    Ok(parse_proc_locks(&text, meta.dev(), meta.ino()))
}

/// Parses the text of `/proc/locks` for a `FLOCK` on the file (`dev`,
/// `ino`), with `dev` as `st_dev` encodes it (see [`flock_holder`]).
pub fn parse_proc_locks(text: &str, dev: u64, ino: u64) -> Option<FlockHolder> {
    let (major, minor) = (u64::from(libc::major(dev)), u64::from(libc::minor(dev)));
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF". Blocked waiters
        // read "1: -> FLOCK ..." and are skipped: they hold nothing.
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let mut id = f[5].split(':');
        let (Some(ma), Some(mi), Some(i)) = (id.next(), id.next(), id.next()) else {
            continue;
        };
        let same = u64::from_str_radix(ma, 16).ok() == Some(major)
            && u64::from_str_radix(mi, 16).ok() == Some(minor)
            && i.parse::<u64>().ok() == Some(ino);
        if same {
            return Some(FlockHolder {
                pid: f[4].parse().ok().filter(|p| *p > 0),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks() {
        let dev = libc::makedev(0, 0x2f);
        let text = "1: POSIX  ADVISORY  WRITE 99 00:2f:5678 0 EOF\n\
2: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF\n\
3: FLOCK  ADVISORY  WRITE 4321 00:2f:9999 0 EOF\n";
        let held = |pid| Some(FlockHolder { pid: Some(pid) });
        assert_eq!(parse_proc_locks(text, dev, 5678), held(1234));
        assert_eq!(parse_proc_locks(text, dev, 1), None);
        assert_eq!(parse_proc_locks(text, libc::makedev(8, 1), 5678), None);
    }

    #[test]
    fn waiters_do_not_hold_and_unusable_pids_still_mean_locked() {
        let dev = libc::makedev(0x103, 2);
        let waiter = "1: -> FLOCK  ADVISORY  WRITE 77 103:02:42 0 EOF\n";
        assert_eq!(parse_proc_locks(waiter, dev, 42), None);
        let text = format!("1: FLOCK  ADVISORY  WRITE 0 103:02:42 0 EOF\n{waiter}");
        assert_eq!(
            parse_proc_locks(&text, dev, 42),
            Some(FlockHolder { pid: None }),
            "pid 0: held by a process we cannot name"
        );
        assert_eq!(parse_proc_locks("", dev, 42), None);
        assert_eq!(parse_proc_locks("garbage\n1: FLOCK x\n", dev, 42), None);
    }

    #[test]
    fn finds_our_own_flock_and_takes_none() {
        use rustix::fs::{FlockOperation, flock};
        let path = std::env::temp_dir().join(format!("proctree-locks-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("create");
        assert_eq!(flock_holder(&path).expect("read"), None);
        flock(&file, FlockOperation::NonBlockingLockExclusive).expect("lock");
        let me = Some(FlockHolder {
            pid: Some(std::process::id()),
        });
        assert_eq!(flock_holder(&path).expect("read"), me);
        // Really held (another open file description cannot get it); once
        // unlocked, nothing is listed: reading left no lock of its own.
        let other = std::fs::File::open(&path).expect("open");
        assert!(flock(&other, FlockOperation::NonBlockingLockShared).is_err());
        flock(&file, FlockOperation::Unlock).expect("unlock");
        assert_eq!(flock_holder(&path).expect("read"), None);
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(
            flock_holder(&path).expect_err("gone").kind(),
            io::ErrorKind::NotFound
        );
    }
}
