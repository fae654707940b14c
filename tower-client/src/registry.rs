//! The registry of a scope: which shellpers the Tower holds and the lease
//! token of each.
//!
//! Format (docs/CONVENTIONS.md), one JSON document, mode 0600:
//!
//! ```json
//! {"schema_version":1,"shellpers":[{"id":"sh-0a1b2c3d","token":"<64 hex>",
//!   "pid":1234,"start_ticks":5678,"socket":"/run/user/1000/shellper/sh-0a1b2c3d.sock",
//!   "command":"/bin/bash","args":["-l"],"cwd":"/home/me","created_at_ms":1700000000000}]}
//! ```
//!
//! Writes are atomic (temporary file, fsync, rename, fsync of the
//! directory): a crash mid-write leaves the previous registry intact. A
//! registry that does not parse is an error, never "no shellpers": treating
//! it as empty would silently orphan every shellper it lists. A registry that
//! cannot be serialized is an error too, and nothing is written.
//!
//! Tokens are held as [`Token`] (redacted `Debug`, zeroed on drop), hex in
//! the file; the bytes read and written are zeroed after use.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shellper_protocol::Token;
use shellper_protocol::token::serde_hex;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Version of the registry format written by this crate.
pub const REGISTRY_SCHEMA_VERSION: u32 = 1;

/// Prefix of the temporary files of atomic writes of `registry.json`
/// ([`crate::write_atomic`] names them `.NAME.tmp.` and random characters).
const TMP_PREFIX: &str = ".registry.json.tmp.";

/// One shellper known to the Tower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// `sh-` + 8 lowercase hex digits.
    pub id: String,
    /// The lease token; 64 lowercase hex digits in the file. Secret: the
    /// file is 0600 in a 0700 directory, and `Debug` prints no token.
    #[serde(with = "serde_hex")]
    pub token: Token,
    /// pid of the shellper process.
    pub pid: u32,
    /// Start time of that process in clock ticks since boot (field 22 of
    /// `/proc/PID/stat`): with the pid, an identity a recycled pid cannot
    /// fake.
    pub start_ticks: u64,
    /// The shellper's socket.
    pub socket: PathBuf,
    /// The PTY command.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    /// Wall-clock ms since the Unix epoch at which the Tower spawned it.
    #[serde(default)]
    pub created_at_ms: u64,
    /// The session's cgroup (the PTY child and everything it started),
    /// when the Tower contained it in one: what a later Tower or `leasectl
    /// reap` kills after the shellper itself was SIGKILLed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// The whole registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub schema_version: u32,
    pub shellpers: Vec<RegistryEntry>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry of the current schema.
    pub fn new() -> Self {
        Registry {
            schema_version: REGISTRY_SCHEMA_VERSION,
            shellpers: Vec::new(),
        }
    }

    /// Loads `path`. A missing file is an empty registry (a fresh scope); a
    /// file that exists but does not parse, has an unknown schema version or
    /// carries a malformed token is [`Error::RegistryCorrupt`].
    pub fn load(path: &Path) -> Result<Registry> {
        let bytes = match fs::read(path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Registry::new()),
            Err(e) if e.kind() == ErrorKind::IsADirectory => {
                return Err(Error::RegistryCorrupt {
                    path: path.to_path_buf(),
                    detail: "it is a directory, not a file".into(),
                });
            }
            Err(e) => return Err(Error::io("reading registry", path, e)),
        };
        Self::parse(&bytes).map_err(|detail| Error::RegistryCorrupt {
            path: path.to_path_buf(),
            detail,
        })
    }

    /// Parses registry bytes; the error is a human-readable reason (a
    /// malformed token is one: "bad token: a lease token is 64 hexadecimal
    /// digits…", with the line and column).
    pub fn parse(bytes: &[u8]) -> Result<Registry, String> {
        let reg: Registry = serde_json::from_slice(bytes).map_err(|e| {
            let s = e.to_string();
            if s.contains("lease token") {
                format!("bad token: {s}")
            } else {
                s
            }
        })?;
        if reg.schema_version != REGISTRY_SCHEMA_VERSION {
            return Err(format!(
                "schema_version {} is not the supported version {REGISTRY_SCHEMA_VERSION}",
                reg.schema_version
            ));
        }
        Ok(reg)
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&RegistryEntry> {
        self.shellpers.iter().find(|e| e.id == id)
    }

    /// Inserts or replaces the entry with the same id.
    pub fn upsert(&mut self, entry: RegistryEntry) {
        match self.shellpers.iter_mut().find(|e| e.id == entry.id) {
            Some(slot) => *slot = entry,
            None => self.shellpers.push(entry),
        }
    }

    /// Removes the entry with this id; true if there was one.
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.shellpers.len();
        self.shellpers.retain(|e| e.id != id);
        before != self.shellpers.len()
    }

    /// Serializes (pretty, one entry per few lines: operators read it);
    /// the bytes hold tokens and are zeroed when dropped. Fails on a path
    /// that is not UTF-8 (JSON has no form for it): the error says which
    /// entry, and a caller writes nothing.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        let mut v = Zeroizing::new(Vec::with_capacity(256 * (self.shellpers.len() + 1)));
        serde_json::to_writer_pretty(&mut *v, self).map_err(|e| {
            let bad: Vec<&str> = self
                .shellpers
                .iter()
                .filter(|e| e.socket.to_str().is_none())
                .map(|e| e.id.as_str())
                .collect();
            if bad.is_empty() {
                e.to_string()
            } else {
                format!("{e}: the socket path of {} is not UTF-8", bad.join(", "))
            }
        })?;
        v.push(b'\n');
        Ok(v)
    }

    /// Writes atomically to `path`: a unique temporary file in the same
    /// directory (mode 0600), fsync, rename over `path`, fsync of the
    /// directory so the rename itself is durable. A registry that cannot be
    /// serialized is [`Error::RegistrySerialize`] and leaves `path` as it was.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes().map_err(|detail| Error::RegistrySerialize {
            path: path.to_path_buf(),
            detail,
        })?;
        write_atomic(path, &bytes)
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::atomic::write_atomic(path, bytes, 0o600)
        .map_err(|e| Error::io("writing registry", path, e))
}

/// Removes temporary files left by a crash during a registry write. Called
/// by the lock holder only (another writer could be mid-write otherwise).
pub(crate) fn remove_stale_temps(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The registry of a running Tower: in memory, persisted with group commit.
///
/// Many concurrent spawns each need their entry durable before they go on;
/// rather than one fsync per spawn, a commit waits for the writer token and
/// skips the write entirely if another writer already persisted a snapshot
/// that includes its change. Hundreds of concurrent spawns cost a handful of
/// writes.
#[derive(Debug)]
pub(crate) struct RegistryStore {
    path: PathBuf,
    state: std::sync::Mutex<(Registry, u64)>,
    write_token: tokio::sync::Mutex<u64>,
    /// The locked scope: checked before every write, so the registry is
    /// never written through a scope that was replaced.
    ident: Option<crate::scope::ScopeIdent>,
}

impl RegistryStore {
    pub(crate) fn new(path: PathBuf, reg: Registry) -> Self {
        RegistryStore {
            path,
            state: std::sync::Mutex::new((reg, 0)),
            write_token: tokio::sync::Mutex::new(0),
            ident: None,
        }
    }

    /// A store that refuses to write once the scope is not the locked one.
    pub(crate) fn guarded(path: PathBuf, reg: Registry, ident: crate::scope::ScopeIdent) -> Self {
        RegistryStore {
            ident: Some(ident),
            ..RegistryStore::new(path, reg)
        }
    }

    pub(crate) fn snapshot(&self) -> Registry {
        self.lock().0.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Registry, u64)> {
        // A panic while holding this lock leaves a registry that is still a
        // valid value (every mutation is a single Vec operation).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` and returns once a registry including the change is on
    /// disk.
    pub(crate) async fn commit(&self, f: impl FnOnce(&mut Registry)) -> Result<()> {
        let mine = {
            let mut st = self.lock();
            f(&mut st.0);
            st.1 += 1;
            st.1
        };
        let mut flushed = self.write_token.lock().await;
        if *flushed >= mine {
            return Ok(());
        }
        let (bytes, version) = {
            let st = self.lock();
            let bytes = st.0.to_bytes().map_err(|detail| Error::RegistrySerialize {
                path: self.path.clone(),
                detail,
            })?;
            (bytes, st.1)
        };
        let path = self.path.clone();
        let ident = self.ident.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(i) = &ident {
                i.verify().map_err(|detail| Error::ScopeReplaced {
                    path: path.clone(),
                    detail,
                })?;
            }
            write_atomic(&path, &bytes)
        })
        .await
        .map_err(|e| Error::io("writing registry", &self.path, std::io::Error::other(e)))??;
        *flushed = version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(id: &str) -> RegistryEntry {
        RegistryEntry {
            id: id.into(),
            token: Token::from_bytes([0xab; 32]),
            pid: 42,
            start_ticks: 7,
            socket: PathBuf::from(format!("/tmp/{id}.sock")),
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "true".into()],
            cwd: "/".into(),
            created_at_ms: 1,
            cgroup: None,
        }
    }

    #[test]
    fn missing_is_empty_and_round_trips_with_0600() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("registry.json");
        assert_eq!(Registry::load(&p).expect("load"), Registry::new());
        let mut r = Registry::new();
        r.upsert(entry("sh-00000001"));
        r.upsert(entry("sh-00000002"));
        r.save(&p).expect("save");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Registry::load(&p).expect("load"), r);
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(&p).expect("read")).expect("json");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["shellpers"][0]["id"], "sh-00000001");
        assert!(r.remove("sh-00000001"));
        assert!(!r.remove("sh-00000001"));
    }

    #[test]
    fn corrupt_registry_is_an_error_never_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("registry.json");
        for bad in [
            &b""[..],
            b"{\"schema_version\":1,\"shellpers\":[",
            b"{\"schema_version\":2,\"shellpers\":[]}",
            b"garbage",
        ] {
            fs::write(&p, bad).expect("write");
            match Registry::load(&p) {
                Err(Error::RegistryCorrupt { detail, .. }) => assert!(!detail.is_empty()),
                other => panic!("{:?}: expected corrupt, got {other:?}", bad),
            }
        }
        let mut r = Registry::new();
        r.shellpers.push(entry("sh-00000001"));
        let text = String::from_utf8(r.to_bytes().expect("bytes").to_vec()).expect("utf-8");
        fs::write(&p, text.replace(&"ab".repeat(32), "nothex")).expect("write");
        match Registry::load(&p) {
            Err(Error::RegistryCorrupt { detail, .. }) => {
                assert!(detail.contains("bad token"), "{detail}")
            }
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[test]
    fn crash_mid_write_leaves_previous_registry() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("registry.json");
        let mut r = Registry::new();
        r.upsert(entry("sh-00000001"));
        r.save(&p).expect("save");
        // A crashed writer leaves a partial temporary file and never renames.
        let partial = tmp.path().join(format!("{TMP_PREFIX}999.1"));
        fs::write(&partial, b"{\"schema_version\":1,\"shell").expect("write");
        assert_eq!(Registry::load(&p).expect("load"), r);
        remove_stale_temps(tmp.path());
        assert!(!partial.exists());
    }

    #[tokio::test]
    async fn group_commit_persists_every_change() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("registry.json");
        let store = std::sync::Arc::new(RegistryStore::new(p.clone(), Registry::new()));
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.commit(|r| r.upsert(entry(&format!("sh-{i:08x}")))).await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("commit");
        }
        let on_disk = Registry::load(&p).expect("load");
        assert_eq!(on_disk.shellpers.len(), 50);
        store
            .commit(|r| {
                r.remove("sh-00000000");
            })
            .await
            .expect("commit");
        assert_eq!(Registry::load(&p).expect("load").shellpers.len(), 49);
    }
}
