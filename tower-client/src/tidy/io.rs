//! The IO of a tidy: listing the scope (bounded), gathering the facts the
//! rules need (the kernel's word on each entry's process, connect probes),
//! and removing the files a plan names.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::rules::{
    Action, Facts, FileKind, Liveness, ScopeFile, ScopeFiles, TidyPlan, What, classify,
};
use crate::registry::Registry;

/// At most this many directory entries are looked at in one tidy: a scope
/// with more (someone dumped files into it) is tidied in several rounds.
pub const MAX_ENTRIES: usize = 20_000;

/// How long a connection probe of a socket file may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Lists the scope's shellper files (bounded; symlinks and other file
/// types than sockets and regular files are skipped).
pub fn list_scope(dir: &Path) -> std::io::Result<ScopeFiles> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = ScopeFiles::default();
    for (n, e) in std::fs::read_dir(dir)?.enumerate() {
        if n >= MAX_ENTRIES {
            out.truncated = true;
            break;
        }
        let Ok(e) = e else { continue };
        let name = e.file_name();
        let Some((id, kind)) = classify(&name.to_string_lossy()) else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ft = meta.file_type();
        let ok = match kind {
            FileKind::Socket => ft.is_socket(),
            FileKind::Log | FileKind::RotatedLog => ft.is_file(),
        };
        if !ok {
            continue;
        }
        out.files.push(ScopeFile {
            id,
            kind,
            path: e.path(),
            bytes: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    out.files
        .sort_by(|a, b| (&a.id, a.kind).cmp(&(&b.id, b.kind)));
    Ok(out)
}

/// Gathers [`Facts`] for the registry entries and socket files that are
/// not `held`: the kernel's word on each entry's process (pidfd and start
/// time, on the blocking pool), and a connect probe of each socket file
/// that no live entry explains (bounded by [`PROBE_TIMEOUT`] each, at most
/// 64 at once).
pub async fn gather(files: &ScopeFiles, registry: &Registry, held: HashSet<String>) -> Facts {
    let todo: Vec<(String, u32, u64, Option<PathBuf>)> = registry
        .shellpers
        .iter()
        .filter(|e| !held.contains(&e.id))
        .map(|e| (e.id.clone(), e.pid, e.start_ticks, e.cgroup.clone()))
        .collect();
    let (entries, empty_cgroups): (HashMap<String, Liveness>, HashSet<String>) =
        tokio::task::spawn_blocking(move || {
            let mut entries = HashMap::new();
            let mut empty = HashSet::new();
            for (id, pid, ticks, cgroup) in todo {
                let l = match shellper_proctree::pidfd_for(pid as i32, ticks) {
                    shellper_proctree::PidfdLookup::Alive(_) => Liveness::Alive,
                    shellper_proctree::PidfdLookup::Gone => Liveness::Gone,
                    shellper_proctree::PidfdLookup::Unknown(_) => Liveness::Unknown,
                };
                if l == Liveness::Gone
                    && let Some(dir) = cgroup
                {
                    let cg = shellper_proctree::Cgroup::at(&dir);
                    if cg.exists() && matches!(cg.populated(), Ok(false)) {
                        empty.insert(id.clone());
                    }
                }
                entries.insert(id, l);
            }
            (entries, empty)
        })
        .await
        .unwrap_or_default();
    let probe: Vec<(String, PathBuf)> = files
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Socket && !held.contains(&f.id))
        .filter(|f| match entries.get(&f.id) {
            None => true,
            Some(l) => *l == Liveness::Gone,
        })
        .map(|f| (f.id.clone(), f.path.clone()))
        .collect();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for (id, path) in probe {
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            let r =
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(&path)).await;
            let refused =
                matches!(r, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused);
            (id, refused)
        });
    }
    let mut refused = HashSet::new();
    while let Some(j) = set.join_next().await {
        if let Ok((id, true)) = j {
            refused.insert(id);
        }
    }
    Facts {
        held,
        entries,
        refused,
        keep: HashSet::new(),
        empty_cgroups,
    }
}

/// What executing a plan did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TidyDone {
    /// Actions carried out.
    pub done: Vec<Action>,
    /// Actions that failed, with the error.
    pub failed: Vec<(Action, String)>,
}

/// Removes the plan's files (sockets, logs, empty session cgroups; a file
/// already gone counts as removed). Registry entries are the caller's: a Tower commits through
/// its registry store, `leasectl` writes under the instance lock.
pub fn remove_files(plan: &TidyPlan) -> TidyDone {
    let mut out = TidyDone::default();
    for a in &plan.actions {
        if a.what == What::RegistryEntry {
            continue;
        }
        let removed = if a.what == What::Cgroup {
            // rmdir: the kernel refuses (EBUSY) a cgroup a process entered.
            std::fs::remove_dir(&a.path)
        } else {
            std::fs::remove_file(&a.path)
        };
        match removed {
            Ok(()) => out.done.push(a.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.done.push(a.clone()),
            Err(e) => out.failed.push((a.clone(), e.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listing_skips_strangers_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("sh-0000000a.log"), "x").unwrap();
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("sh-0000000b.log")).unwrap();
        // A regular file named like a socket is not a socket.
        std::fs::write(d.path().join("sh-0000000c.sock"), "").unwrap();
        let l = list_scope(d.path()).unwrap();
        let names: Vec<_> = l.files.iter().map(|f| (f.id.as_str(), f.kind)).collect();
        assert_eq!(names, [("sh-0000000a", FileKind::Log)]);
    }
}
