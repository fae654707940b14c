//! A Tower's scope: one private runtime directory holding the shellpers'
//! sockets and logs, the instance lock and the registry of lease tokens.
//!
//! Layout (docs/CONVENTIONS.md):
//!
//! | path | what |
//! |---|---|
//! | `<id>.sock` | a shellper's socket (0600) |
//! | `<id>.log` | its log (shellper tracing + stderr) |
//! | `tower.lock` | instance lock: `flock(LOCK_EX\|LOCK_NB)`, holds the owner's pid |
//! | `registry.json` | the [`Registry`], 0600 |
//! | `tower.ctl` | the running Tower's control socket, 0600 ([`crate::control`]) |
//!
//! Opening a scope never takes the lock: read-only tools (`leasectl`) open a
//! scope to read its registry and query shellpers while a Tower holds it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{Error, Result};
use crate::registry::Registry;

/// File name of the instance lock inside a scope.
pub const LOCK_FILE: &str = "tower.lock";
/// File name of the registry inside a scope.
pub const REGISTRY_FILE: &str = "registry.json";

/// An opened, validated scope directory (not locked).
#[derive(Debug, Clone)]
pub struct Scope {
    dir: PathBuf,
}

impl Scope {
    /// The default scope: `$XDG_RUNTIME_DIR/shellper` when `XDG_RUNTIME_DIR`
    /// is set (a per-user tmpfs cleared at logout, the natural home for
    /// sockets), else `$TMPDIR/shellper-<uid>` (`/tmp` without `TMPDIR`).
    pub fn default_dir() -> PathBuf {
        Self::default_dir_from(
            std::env::var_os("XDG_RUNTIME_DIR"),
            std::env::temp_dir(),
            rustix::process::geteuid().as_raw(),
        )
    }

    /// The rule of [`default_dir`](Self::default_dir), without reading the
    /// environment (so that both branches can be tested).
    pub fn default_dir_from(
        xdg_runtime_dir: Option<std::ffi::OsString>,
        temp_dir: PathBuf,
        uid: u32,
    ) -> PathBuf {
        match xdg_runtime_dir {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("shellper"),
            _ => temp_dir.join(format!("shellper-{uid}")),
        }
    }

    /// Opens `dir`, creating it (mode 0700) if missing.
    ///
    /// Refuses a directory owned by another user or accessible by group or
    /// others: the scope holds lease tokens and sockets that must stay
    /// private, and silently fixing permissions on somebody else's directory
    /// would hide an attack or a misconfiguration.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Scope> {
        let dir = dir.into();
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Parent missing: create parents too, the leaf still 0700.
                fs::DirBuilder::new()
                    .mode(0o700)
                    .recursive(true)
                    .create(&dir)
                    .map_err(|e| Error::io("creating scope directory", &dir, e))?;
            }
            Err(e) => return Err(Error::io("creating scope directory", &dir, e)),
        }
        Self::validate(&dir)?;
        Ok(Scope { dir })
    }

    /// Opens an existing scope without creating anything (for inspectors).
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<Scope> {
        let dir = dir.into();
        Self::validate(&dir)?;
        Ok(Scope { dir })
    }

    fn validate(dir: &Path) -> Result<()> {
        let meta = fs::symlink_metadata(dir).map_err(|e| Error::io("inspecting scope", dir, e))?;
        let unsafe_scope = |reason: String| Error::UnsafeScope {
            path: dir.to_path_buf(),
            reason,
        };
        if meta.file_type().is_symlink() {
            return Err(unsafe_scope(
                "is a symbolic link; give the real directory".into(),
            ));
        }
        if !meta.is_dir() {
            return Err(unsafe_scope("is not a directory".into()));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(unsafe_scope(format!(
                "is owned by uid {}, not by us (uid {me})",
                meta.uid()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(unsafe_scope(format!(
                "has mode {mode:03o}; a scope must be private (0700): chmod 700 it"
            )));
        }
        Ok(())
    }

    /// The scope directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the registry file.
    pub fn registry_path(&self) -> PathBuf {
        self.dir.join(REGISTRY_FILE)
    }

    /// Path of the instance lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// Socket path of shellper `id`.
    pub fn socket_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sock"))
    }

    /// Log path of shellper `id`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// Reads the registry (empty if the file does not exist yet; an error if
    /// it is corrupt).
    pub fn read_registry(&self) -> Result<Registry> {
        Registry::load(&self.registry_path())
    }

    /// Takes the instance lock. Fails with [`Error::ScopeLocked`] naming the
    /// holder's pid if another process holds it.
    ///
    /// The lock is a `flock` on `tower.lock`: the kernel drops it when the
    /// holder dies, so a crashed Tower never leaves a stale lock behind (a
    /// pid file alone would).
    pub fn lock(&self) -> Result<InstanceLock> {
        self.lock_with(true)
    }

    /// Takes the instance lock for a short maintenance job (`leasectl
    /// prune`): like [`lock`](Self::lock), but the file keeps the pid of the
    /// last Tower (what `leasectl list` shows as the scope's last Tower).
    /// A Tower starting meanwhile is refused with [`Error::ScopeLocked`]
    /// naming that pid, as with any holder; hold it briefly.
    pub fn lock_for_maintenance(&self) -> Result<InstanceLock> {
        self.lock_with(false)
    }

    fn lock_with(&self, write_pid: bool) -> Result<InstanceLock> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("opening instance lock", &path, e))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::ScopeLocked {
                    path: self.dir.clone(),
                    pid: read_pid(&mut file),
                });
            }
            Err(e) => return Err(Error::io("locking", &path, e.into())),
        }
        let pid = std::process::id();
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{pid}")?;
            f.flush()
        };
        if write_pid {
            write(&mut file).map_err(|e| Error::io("writing pid into", &path, e))?;
        }
        // A crash in the middle of a registry write leaves a temporary file;
        // only the lock holder may clean those up.
        crate::registry::remove_stale_temps(&self.dir);
        let ident = ScopeIdent::of(&self.dir, &file)
            .map_err(|e| Error::io("inspecting the locked scope", &self.dir, e))?;
        Ok(InstanceLock { file, path, ident })
    }

    /// The pid of the process holding the instance lock, `None` if the
    /// scope is free.
    ///
    /// Read from `/proc/locks` ([`shellper_proctree::flock_holder`]); no
    /// lock is taken, not even for an instant: a `flock` probe could make a
    /// Tower starting at that moment fail its `LOCK_EX|LOCK_NB` and refuse
    /// to start. When `/proc/locks` shows the file locked but names no
    /// usable pid (a holder in another pid namespace, or a descriptor
    /// inherited from a dead locker), the pid written in the file is
    /// returned instead (`None` if that is unreadable).
    pub fn lock_holder(&self) -> Result<Option<u32>> {
        let path = self.lock_path();
        match shellper_proctree::flock_holder(&path) {
            Ok(None) => Ok(None),
            Ok(Some(h)) => Ok(h
                .pid
                .or_else(|| File::open(&path).ok().and_then(|mut f| read_pid(&mut f)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("finding the holder (/proc/locks) of", &path, e)),
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// The held instance lock of a scope; released when dropped (or when the
/// process dies).
#[derive(Debug)]
pub struct InstanceLock {
    // Held for its flock. std opens files O_CLOEXEC, so a spawned shellper
    // never keeps it past exec; but a child forked between clone and exec
    // shares the open file description for a moment, which is why `Drop`
    // unlocks explicitly instead of relying on the close.
    file: File,
    path: PathBuf,
    ident: ScopeIdent,
}

/// What a Tower locked: the scope directory and the lock file, each by
/// device and inode. A path can be re-created under a running Tower (the
/// scope deleted, a second Tower starting there); the identities cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeIdent {
    dir: PathBuf,
    dir_id: (u64, u64),
    lock_path: PathBuf,
    lock_id: (u64, u64),
}

impl ScopeIdent {
    fn of(dir: &Path, lock: &File) -> std::io::Result<ScopeIdent> {
        let d = fs::symlink_metadata(dir)?;
        let l = lock.metadata()?;
        Ok(ScopeIdent {
            dir: dir.to_path_buf(),
            dir_id: (d.dev(), d.ino()),
            lock_path: dir.join(LOCK_FILE),
            lock_id: (l.dev(), l.ino()),
        })
    }

    /// `Ok` while the paths still name the directory and lock file that
    /// were locked; else why not (a Tower must then stop writing there).
    pub fn verify(&self) -> std::result::Result<(), String> {
        let id = |p: &Path| fs::symlink_metadata(p).map(|m| (m.dev(), m.ino()));
        match id(&self.dir) {
            Ok(d) if d == self.dir_id => {}
            Ok(_) => {
                return Err(format!(
                    "{} was replaced by another directory",
                    self.dir.display()
                ));
            }
            Err(e) => return Err(format!("{} is gone ({e})", self.dir.display())),
        }
        match id(&self.lock_path) {
            Ok(l) if l == self.lock_id => Ok(()),
            Ok(_) => Err(format!(
                "{} was replaced (another Tower may hold the new one)",
                self.lock_path.display()
            )),
            Err(e) => Err(format!("{} is gone ({e})", self.lock_path.display())),
        }
    }
}

impl Drop for InstanceLock {
    /// Unlocks with `LOCK_UN` before the descriptor is closed. A `flock`
    /// belongs to the open file description, and closing our descriptor
    /// releases it only if no other descriptor refers to it: a child forked
    /// by another thread that has not reached exec yet (or a descriptor a
    /// pre-exec hook duplicated) would otherwise keep the scope locked
    /// after we let go, and a successor Tower would be refused.
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
    }
}

impl InstanceLock {
    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity of what was locked.
    pub fn ident(&self) -> &ScopeIdent {
        &self.ident
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_dir_and_refuses_loose_perms() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b/scope");
        let s = Scope::open(&dir).expect("open");
        let mode = fs::metadata(s.dir()).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = Scope::open(&dir).expect_err("loose perms refused");
        assert!(err.to_string().contains("755"), "{err}");
        assert!(matches!(err, Error::UnsafeScope { .. }));
    }

    #[test]
    fn refuses_file_and_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("file");
        fs::write(&f, "x").expect("write");
        assert!(matches!(Scope::open(&f), Err(Error::UnsafeScope { .. })));
        let real = tmp.path().join("real");
        Scope::open(&real).expect("open");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(matches!(Scope::open(&link), Err(Error::UnsafeScope { .. })));
    }

    #[test]
    fn second_lock_names_the_holder_and_lock_is_released_on_drop() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Scope::open(tmp.path().join("s")).expect("open");
        assert_eq!(s.lock_holder().expect("probe"), None);
        let l = s.lock().expect("first lock");
        match s.lock() {
            Err(Error::ScopeLocked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected ScopeLocked, got {other:?}"),
        }
        let msg = s.lock().expect_err("locked").to_string();
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        assert_eq!(s.lock_holder().expect("probe"), Some(std::process::id()));
        drop(l);
        assert_eq!(s.lock_holder().expect("probe"), None);
        let _again = s.lock().expect("lock after release");
    }

    /// A process that shares the lock's open file description (what a child
    /// forked between clone and exec does) must not keep the scope locked
    /// once the lock is dropped.
    #[test]
    fn lock_is_released_on_drop_even_if_a_child_shares_its_descriptor() {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let guard = shellper_testkit::LeakGuard::new("lock_shared_ofd");
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Scope::open(tmp.path().join("s")).expect("open");
        let l = s.lock().expect("first lock");
        let fd = l.file.as_raw_fd();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        guard.apply(&mut cmd);
        // SAFETY: dup2 is async-signal-safe; the duplicate (fd 9, without
        // CLOEXEC) makes `sleep` hold the lock's open file description.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 9) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn sleep");
        drop(l);
        let again = s.lock();
        let _ = child.kill();
        let _ = child.wait();
        assert!(again.is_ok(), "lock still held after drop: {again:?}");
        guard.finish();
    }

    #[test]
    fn default_dir_prefers_xdg_runtime_dir() {
        let tmp = PathBuf::from("/tmp");
        assert_eq!(
            Scope::default_dir_from(Some("/run/user/7".into()), tmp.clone(), 7),
            PathBuf::from("/run/user/7/shellper")
        );
        // Unset or empty: the per-user directory under the temp dir.
        assert_eq!(
            Scope::default_dir_from(None, tmp.clone(), 7),
            PathBuf::from("/tmp/shellper-7")
        );
        assert_eq!(
            Scope::default_dir_from(Some("".into()), tmp, 7),
            PathBuf::from("/tmp/shellper-7")
        );
        // The real one follows the same rule for this process.
        assert_eq!(
            Scope::default_dir(),
            Scope::default_dir_from(
                std::env::var_os("XDG_RUNTIME_DIR"),
                std::env::temp_dir(),
                rustix::process::geteuid().as_raw()
            )
        );
    }
}
