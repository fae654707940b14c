//! Pure parsing of the kernel's cgroup files: mountinfo, `/proc/PID/cgroup`,
//! `cgroup.events`, keyed files, `*.max` values and `cgroup.procs`.

use std::path::PathBuf;

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
}
