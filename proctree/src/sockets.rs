//! Which process listens on which unix socket path, from `/proc/net/unix`
//! and `/proc/PID/fd`.
//!
//! A process that does not answer on its socket (stopped, wedged) can still
//! be identified by the socket it holds: `/proc/net/unix` maps a listening
//! socket's inode to the path it is bound to, and `/proc/PID/fd/*` links
//! (`socket:[INODE]`) map inodes to the processes holding them. Reading
//! links in `/proc/PID/fd` never blocks on the target process, but it does
//! read every process's descriptor table: build a [`SocketOwners`] once per
//! sweep, and only when it is needed. Other users' processes cannot be
//! inspected and simply own nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::procfs::ProcInfo;

/// Listening unix sockets: socket inode → bound path (from `/proc/net/unix`,
/// entries with the `__SO_ACCEPTCON` flag; abstract and unnamed sockets are
/// left out). Empty if `/proc/net/unix` cannot be read.
pub fn listening_unix_sockets() -> HashMap<u64, PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return HashMap::new();
    };
    parse_net_unix(&text)
}

/// Parses the text of `/proc/net/unix` (see [`listening_unix_sockets`]).
pub fn parse_net_unix(text: &str) -> HashMap<u64, PathBuf> {
    const ACCEPTCON: u32 = 0x0001_0000;
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path (Path may hold spaces)
        let fields: Vec<&str> = line.split_ascii_whitespace().take(7).collect();
        if fields.len() < 7 {
            continue;
        }
        let flags = u32::from_str_radix(fields[3], 16).unwrap_or(0);
        let Ok(inode) = fields[6].parse::<u64>() else {
            continue;
        };
        // The path is whatever follows the 7th field.
        let path = nth_field_rest(line, 7);
        if flags & ACCEPTCON == 0 || path.is_empty() || path.starts_with('@') {
            continue;
        }
        out.insert(inode, PathBuf::from(path));
    }
    out
}

/// The text after the first `n` whitespace-separated fields of `line`.
fn nth_field_rest(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        match rest.find(|c: char| c.is_ascii_whitespace()) {
            Some(i) => rest = rest[i..].trim_start(),
            None => return "",
        }
    }
    rest.trim_end()
}

/// Socket inodes held open by `pid` (`/proc/PID/fd/* -> socket:[N]`).
/// Empty for processes we cannot inspect (other users).
pub fn socket_inodes_of(pid: i32) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Which processes listen on which unix socket paths.
#[derive(Debug, Default)]
pub struct SocketOwners {
    by_path: HashMap<PathBuf, i32>,
    by_pid: HashMap<i32, Vec<PathBuf>>,
}

impl SocketOwners {
    /// Scans `/proc/net/unix` and the fds of every live process in `snap`
    /// other than the calling process. Reads every such process's fd
    /// table: build it once per sweep.
    pub fn scan(snap: &[ProcInfo]) -> Self {
        let listening = listening_unix_sockets();
        if listening.is_empty() {
            return SocketOwners::default();
        }
        let me = std::process::id() as i32;
        let held = snap
            .iter()
            .filter(|p| p.is_live() && p.pid != me)
            .map(|p| (p.pid, socket_inodes_of(p.pid)));
        Self::from_parts(&listening, held)
    }

    /// Matches `(pid, socket inodes it holds)` against `listening` (inode
    /// → path). A path held by several processes (a listener inherited
    /// across fork) belongs to the first of them.
    fn from_parts(
        listening: &HashMap<u64, PathBuf>,
        held: impl IntoIterator<Item = (i32, Vec<u64>)>,
    ) -> Self {
        let mut owners = SocketOwners::default();
        for (pid, inodes) in held {
            for inode in inodes {
                if let Some(path) = listening.get(&inode) {
                    owners.by_path.entry(path.clone()).or_insert(pid);
                    owners.by_pid.entry(pid).or_default().push(path.clone());
                }
            }
        }
        owners
    }

    /// The process listening on `path` (compared as given and canonicalised).
    pub fn owner_of(&self, path: &Path) -> Option<i32> {
        self.by_path.get(path).copied().or_else(|| {
            let canon = std::fs::canonicalize(path).ok()?;
            self.by_path
                .iter()
                .find(|(p, _)| std::fs::canonicalize(p).ok().as_deref() == Some(&canon))
                .map(|(_, pid)| *pid)
        })
    }

    /// Paths `pid` listens on.
    pub fn paths_of(&self, pid: i32) -> Vec<PathBuf> {
        self.by_pid.get(&pid).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_net_unix() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 4242 /tmp/s/sh-00000001.sock\n\
0000000000000000: 00000003 00000000 00000000 0001 03 4243 /tmp/s/sh-00000001.sock\n\
0000000000000000: 00000002 00000000 00010000 0001 01 4244 /tmp/with space/x.sock\n\
0000000000000000: 00000002 00000000 00010000 0001 01 4245 @abstract\n\
0000000000000000: 00000002 00000000 00010000 0001 01 4246\n";
        let m = parse_net_unix(text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[&4242], PathBuf::from("/tmp/s/sh-00000001.sock"));
        assert_eq!(m[&4244], PathBuf::from("/tmp/with space/x.sock"));
    }

    #[test]
    fn owners_by_path_and_by_pid() {
        let listening: HashMap<u64, PathBuf> = [(1, "/s/a.sock"), (2, "/s/b.sock")]
            .into_iter()
            .map(|(i, p)| (i, PathBuf::from(p)))
            .collect();
        let o = SocketOwners::from_parts(
            &listening,
            [(10, vec![1, 2, 99]), (11, vec![2]), (12, vec![7])],
        );
        assert_eq!(o.owner_of(Path::new("/s/a.sock")), Some(10));
        assert_eq!(o.owner_of(Path::new("/s/b.sock")), Some(10), "first holder");
        assert_eq!(o.owner_of(Path::new("/s/c.sock")), None);
        let paths = |pid| o.paths_of(pid);
        assert_eq!(
            paths(10),
            vec![PathBuf::from("/s/a.sock"), "/s/b.sock".into()]
        );
        assert_eq!(paths(11), vec![PathBuf::from("/s/b.sock")]);
        assert!(paths(12).is_empty() && paths(13).is_empty());
    }

    #[test]
    fn finds_our_own_listener() {
        let dir = std::env::temp_dir().join(format!("proctree-sockets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("mkdir");
        let path = dir.join("l.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let listening = listening_unix_sockets();
        let inode = listening
            .iter()
            .find(|(_, p)| **p == path)
            .map(|(i, _)| *i)
            .expect("listed in /proc/net/unix");
        assert!(socket_inodes_of(std::process::id() as i32).contains(&inode));
        drop(listener);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
