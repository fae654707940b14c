//! A cgroup v2 directory of a test's own, removed at teardown.
//!
//! Tests of the cgroup containment run for real where a writable v2
//! hierarchy exists. Each test gets a parent of its own,
//! `<v2 mount>/shellper-test-<name>-<pid>-<random>`, so concurrent tests
//! (and concurrent test runs of other worktrees) never touch each other's
//! cgroups. On drop, everything still inside is killed (`cgroup.kill`,
//! subtree) and every directory removed, deepest first: a failing test
//! leaves no cgroup behind.
//!
//! Like the rest of testkit this is independent of the code it checks (it
//! does not use `proctree`'s cgroup module).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup2 mount point, from `/proc/self/mountinfo`.
pub fn v2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Whether a cgroup's `cgroup.events` says `populated 1` (false when it is gone).
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// The pids listed in a cgroup's `cgroup.procs` (this cgroup only).
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// A test's own cgroup parent (see the module docs).
#[derive(Debug)]
pub struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    /// Creates the test's parent cgroup, or says why it cannot (no v2
    /// mount, or not allowed to create cgroups there): the caller skips
    /// with that message. With `SHELLPER_REQUIRE_CGROUP=1` (CI) it panics
    /// instead: a skipped containment test there would hide a regression.
    pub fn new(name: &str) -> Result<TestCgroup, String> {
        let r = Self::try_new(name);
        if let Err(why) = &r
            && std::env::var_os("SHELLPER_REQUIRE_CGROUP").is_some_and(|v| v == "1")
        {
            panic!("SHELLPER_REQUIRE_CGROUP=1 but no writable cgroup v2: {why}");
        }
        r
    }

    fn try_new(name: &str) -> Result<TestCgroup, String> {
        let mount = v2_mount().ok_or("no cgroup2 file system is mounted")?;
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let dir = mount.join(format!(
            "shellper-test-{clean}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        Ok(TestCgroup { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A subdirectory path (not created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every cgroup directory at or below ours, parents first.
    pub fn all_dirs(&self) -> Vec<PathBuf> {
        let mut out = vec![self.dir.clone()];
        let mut i = 0;
        while i < out.len() && out.len() < 4096 {
            if let Ok(rd) = std::fs::read_dir(&out[i]) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        out.push(e.path());
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// Kills everything inside and removes every directory; true if all of
    /// them are gone.
    pub fn clean_up(&self) -> bool {
        if !self.dir.exists() {
            return true;
        }
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(20);
        while populated(&self.dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            for d in self.all_dirs().iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            if !self.dir.exists() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        !self.dir.exists()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !self.clean_up() && !std::thread::panicking() {
            panic!("test cgroup {} could not be removed", self.dir.display());
        }
    }
}
