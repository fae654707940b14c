//! The rules (pure): what a tidy may remove, from the scope's files, the
//! registry and the facts gathered by the caller; nothing here reads the
//! file system or asks the kernel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::registry::Registry;

/// What a tidy may remove, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TidyPolicy {
    /// Logs of gone shellpers are kept this long after their last write
    /// (post-mortems), unless the cap needs the room.
    pub keep_gone_logs: Duration,
    /// Bytes of logs (live and rotated) the scope may hold in total.
    pub scope_log_cap: u64,
    /// Nothing younger than this is removed (a shellper being spawned has a
    /// log and a socket before it has a registry entry or a listener).
    pub min_age: Duration,
}

/// Default [`TidyPolicy::keep_gone_logs`]: a week.
pub const DEFAULT_KEEP_GONE_LOGS: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default [`TidyPolicy::scope_log_cap`]: 256 MiB (a shellper's own logs are
/// capped at 2 MiB by rotation, so this is 128 busy shellpers' worth).
pub const DEFAULT_SCOPE_LOG_CAP: u64 = 256 * 1024 * 1024;
/// Default [`TidyPolicy::min_age`]: two minutes, past the spawn timeout and
/// the default claim deadline.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(120);

impl Default for TidyPolicy {
    fn default() -> Self {
        TidyPolicy {
            keep_gone_logs: DEFAULT_KEEP_GONE_LOGS,
            scope_log_cap: DEFAULT_SCOPE_LOG_CAP,
            min_age: DEFAULT_MIN_AGE,
        }
    }
}

/// Kind of a scope file a tidy considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// `<id>.sock`
    Socket,
    /// `<id>.log`, the live log.
    Log,
    /// `<id>.log.N`, a rotated log.
    RotatedLog,
}

/// One file of the scope that belongs to a shellper id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeFile {
    pub id: String,
    pub kind: FileKind,
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// The scope's shellper files (bounded by [`MAX_ENTRIES`](super::MAX_ENTRIES)).
#[derive(Debug, Clone, Default)]
pub struct ScopeFiles {
    pub files: Vec<ScopeFile>,
    /// True when the listing stopped at [`MAX_ENTRIES`](super::MAX_ENTRIES).
    pub truncated: bool,
}

/// The shellper id a scope file name belongs to, and its kind:
/// `sh-XXXXXXXX.sock`, `.log`, `.log.N`. Other files (the registry, the
/// lock, strangers) are never touched.
pub fn classify(name: &str) -> Option<(String, FileKind)> {
    let valid_id = |id: &str| {
        id.len() == 11
            && id.starts_with("sh-")
            && id[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let (id, kind) = if let Some(id) = name.strip_suffix(".sock") {
        (id, FileKind::Socket)
    } else if let Some(id) = name.strip_suffix(".log") {
        (id, FileKind::Log)
    } else {
        let (stem, n) = name.rsplit_once('.')?;
        let id = stem.strip_suffix(".log")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        (id, FileKind::RotatedLog)
    };
    valid_id(id).then(|| (id.to_string(), kind))
}

/// Whether a registry entry's process is alive (the kernel's word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Gone,
    /// Could not tell: treated as alive.
    Unknown,
}

/// What the caller learned about the scope's shellpers (the IO part).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Ids whose lease the Tower holds (alive by definition).
    pub held: HashSet<String>,
    /// Liveness of each registry entry not held.
    pub entries: HashMap<String, Liveness>,
    /// Socket files whose connect was refused: nothing listens.
    pub refused: HashSet<String>,
    /// Ids whose files must stay whatever the rules say (`leasectl`: a
    /// gone shellper whose session still runs; its log and entry are what
    /// `reap` needs to find that session).
    pub keep: HashSet<String>,
    /// Gone entries whose session cgroup still exists and holds no process
    /// (its session ended after its shellper was killed): an empty
    /// directory nothing will use again.
    pub empty_cgroups: HashSet<String>,
}

/// Something a tidy removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    RegistryEntry,
    Socket,
    Log,
    RotatedLog,
    /// An empty session cgroup of a gone entry (removed with `rmdir`,
    /// which the kernel refuses if a process entered it since).
    Cgroup,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub what: What,
    pub id: String,
    /// The file (the registry file for an entry).
    pub path: PathBuf,
    /// Bytes freed (0 for entries and sockets).
    pub bytes: u64,
    /// Why, in one sentence.
    pub reason: String,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TidyPlan {
    pub actions: Vec<Action>,
    /// Bytes of logs in the scope now, and after the plan.
    pub log_bytes: u64,
    pub log_bytes_after: u64,
    /// The cap, and whether the scope stays over it (only live shellpers'
    /// current logs left).
    pub log_cap: u64,
    pub over_cap: bool,
    /// The listing stopped at [`MAX_ENTRIES`](super::MAX_ENTRIES): run again for the rest.
    pub truncated: bool,
}

impl TidyPlan {
    /// Ids whose registry entry the plan removes.
    pub fn entry_ids(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter(|a| a.what == What::RegistryEntry)
            .map(|a| a.id.clone())
            .collect()
    }
}

fn age(now: SystemTime, t: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{}d", s / 86_400)
    } else if s >= 3600 {
        format!("{}h", s / 3600)
    } else if s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Decides what to remove. Pure: everything it needs is passed in.
pub fn plan(
    files: &ScopeFiles,
    registry: &Registry,
    registry_path: &Path,
    facts: &Facts,
    now: SystemTime,
    policy: &TidyPolicy,
) -> TidyPlan {
    let mut out = TidyPlan {
        log_cap: policy.scope_log_cap,
        truncated: files.truncated,
        ..TidyPlan::default()
    };
    // An entry is live unless the kernel said its process is gone.
    let live_entry = |id: &str| {
        facts.held.contains(id)
            || (registry.get(id).is_some()
                && !matches!(facts.entries.get(id), Some(Liveness::Gone)))
    };
    // 1. Registry entries whose process is gone.
    for e in &registry.shellpers {
        if facts.held.contains(&e.id) || facts.keep.contains(&e.id) {
            continue;
        }
        if facts.entries.get(&e.id) == Some(&Liveness::Gone) {
            out.actions.push(Action {
                what: What::RegistryEntry,
                id: e.id.clone(),
                path: registry_path.to_path_buf(),
                bytes: 0,
                reason: format!("process {} is gone (pid and start time checked)", e.pid),
            });
            if let Some(dir) = e
                .cgroup
                .as_ref()
                .filter(|_| facts.empty_cgroups.contains(&e.id))
            {
                out.actions.push(Action {
                    what: What::Cgroup,
                    id: e.id.clone(),
                    path: dir.clone(),
                    bytes: 0,
                    reason: "session cgroup of a gone shellper, with no process left in it".into(),
                });
            }
        }
    }
    // 2. Socket files nothing listens on.
    let mut sockets: BTreeMap<&str, bool> = BTreeMap::new(); // id -> stays
    for f in files.files.iter().filter(|f| f.kind == FileKind::Socket) {
        let old = age(now, f.modified) >= policy.min_age;
        let removable = old
            && facts.refused.contains(&f.id)
            && !live_entry(&f.id)
            && !facts.held.contains(&f.id)
            && !facts.keep.contains(&f.id);
        if removable {
            out.actions.push(Action {
                what: What::Socket,
                id: f.id.clone(),
                path: f.path.clone(),
                bytes: 0,
                reason: "socket file with nothing listening (connect refused)".into(),
            });
        }
        sockets.insert(&f.id, !removable);
    }
    // 3. Which ids are alive (or may be): their files stay.
    let alive = |id: &str| {
        facts.held.contains(id)
            || facts.keep.contains(id)
            || live_entry(id)
            || sockets.get(id).copied().unwrap_or(false)
    };
    let logs: Vec<&ScopeFile> = files
        .files
        .iter()
        .filter(|f| f.kind != FileKind::Socket)
        .collect();
    out.log_bytes = logs.iter().map(|f| f.bytes).sum();
    let mut total = out.log_bytes;
    let mut removed: HashSet<&Path> = HashSet::new();
    let what_of = |f: &ScopeFile| match f.kind {
        FileKind::RotatedLog => What::RotatedLog,
        _ => What::Log,
    };
    // 4. Logs of gone shellpers past the retention.
    for f in &logs {
        let a = age(now, f.modified);
        if !alive(&f.id) && a >= policy.keep_gone_logs.max(policy.min_age) {
            out.actions.push(Action {
                what: what_of(f),
                id: f.id.clone(),
                path: f.path.clone(),
                bytes: f.bytes,
                reason: format!(
                    "log of a gone shellper, last written {} ago (kept {})",
                    human(a),
                    human(policy.keep_gone_logs)
                ),
            });
            total = total.saturating_sub(f.bytes);
            removed.insert(&f.path);
        }
    }
    // 5. The cap: gone shellpers' logs, then live ones' rotated logs,
    // oldest first; never a live shellper's current log.
    if total > policy.scope_log_cap {
        let mut cands: Vec<(u8, SystemTime, &ScopeFile)> = logs
            .iter()
            .filter(|f| !removed.contains(f.path.as_path()))
            .filter(|f| age(now, f.modified) >= policy.min_age)
            .filter_map(|f| {
                if !alive(&f.id) {
                    Some((0, f.modified, *f))
                } else if f.kind == FileKind::RotatedLog && !facts.keep.contains(&f.id) {
                    Some((1, f.modified, *f))
                } else {
                    None
                }
            })
            .collect();
        cands.sort_by(|a, b| (a.0, a.1, &a.2.path).cmp(&(b.0, b.1, &b.2.path)));
        for (class, _, f) in cands {
            if total <= policy.scope_log_cap {
                break;
            }
            out.actions.push(Action {
                what: what_of(f),
                id: f.id.clone(),
                path: f.path.clone(),
                bytes: f.bytes,
                reason: format!(
                    "scope logs over the {} MiB cap: oldest {} first",
                    policy.scope_log_cap / (1024 * 1024),
                    if class == 0 {
                        "log of a gone shellper"
                    } else {
                        "rotated log of a live shellper"
                    }
                ),
            });
            total = total.saturating_sub(f.bytes);
        }
    }
    out.log_bytes_after = total;
    out.over_cap = total > policy.scope_log_cap;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryEntry;

    const T0: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0)
    }

    fn file(id: &str, kind: FileKind, bytes: u64, age_s: u64) -> ScopeFile {
        let name = match kind {
            FileKind::Socket => format!("{id}.sock"),
            FileKind::Log => format!("{id}.log"),
            FileKind::RotatedLog => format!("{id}.log.1"),
        };
        ScopeFile {
            id: id.into(),
            kind,
            path: PathBuf::from("/s").join(name),
            bytes,
            modified: now() - Duration::from_secs(age_s),
        }
    }

    fn entry(id: &str) -> RegistryEntry {
        RegistryEntry {
            id: id.into(),
            token: shellper_protocol::Token::from_bytes([0; 32]),
            pid: 4242,
            start_ticks: 1,
            socket: PathBuf::from(format!("/s/{id}.sock")),
            command: "sh".into(),
            args: vec![],
            cwd: String::new(),
            created_at_ms: 0,
            cgroup: None,
        }
    }

    fn reg(ids: &[&str]) -> Registry {
        let mut r = Registry::new();
        for id in ids {
            r.upsert(entry(id));
        }
        r
    }

    fn files(v: Vec<ScopeFile>) -> ScopeFiles {
        ScopeFiles {
            files: v,
            truncated: false,
        }
    }

    fn ids(p: &TidyPlan, what: What) -> Vec<String> {
        p.actions
            .iter()
            .filter(|a| a.what == what)
            .map(|a| a.id.clone())
            .collect()
    }

    const DAY: u64 = 86_400;
    const A: &str = "sh-0000000a";
    const B: &str = "sh-0000000b";
    const C: &str = "sh-0000000c";

    #[test]
    fn names_are_classified_strictly() {
        assert_eq!(
            classify("sh-0123abcd.sock"),
            Some(("sh-0123abcd".into(), FileKind::Socket))
        );
        assert_eq!(
            classify("sh-0123abcd.log"),
            Some(("sh-0123abcd".into(), FileKind::Log))
        );
        assert_eq!(
            classify("sh-0123abcd.log.1"),
            Some(("sh-0123abcd".into(), FileKind::RotatedLog))
        );
        for bad in [
            "registry.json",
            "tower.lock",
            "sh-0123ABCD.log",
            "sh-0123abc.log",
            "sh-0123abcd.log.x",
            "sh-0123abcd.log.",
            "notes.log",
            ".registry.json.tmp.1.2",
        ] {
            assert_eq!(classify(bad), None, "{bad}");
        }
    }

    /// The rule that matters most: nothing of a shellper that is alive or
    /// may be goes, however old its files and however full the scope.
    #[test]
    fn never_prunes_what_is_alive_or_unknown() {
        let r = reg(&[A, B, C]);
        let f = files(vec![
            file(A, FileKind::Socket, 0, 30 * DAY),
            file(A, FileKind::Log, 10 << 20, 30 * DAY),
            file(B, FileKind::Socket, 0, 30 * DAY),
            file(B, FileKind::Log, 10 << 20, 30 * DAY),
            file(C, FileKind::Log, 10 << 20, 30 * DAY),
        ]);
        let facts = Facts {
            held: [A.to_string()].into(),
            // B: alive per the kernel; C: could not tell.
            entries: [(B.into(), Liveness::Alive), (C.into(), Liveness::Unknown)].into(),
            // Even a refusing socket stays while its entry is alive.
            refused: [A.to_string(), B.to_string()].into(),
            keep: HashSet::new(),
            empty_cgroups: HashSet::new(),
        };
        let policy = TidyPolicy {
            scope_log_cap: 1,
            ..TidyPolicy::default()
        };
        let p = plan(
            &f,
            &r,
            Path::new("/s/registry.json"),
            &facts,
            now(),
            &policy,
        );
        assert!(p.actions.is_empty(), "{:#?}", p.actions);
        assert!(p.over_cap);
    }

    #[test]
    fn gone_entry_socket_and_old_logs_go() {
        let r = reg(&[A]);
        let f = files(vec![
            file(A, FileKind::Socket, 0, 2 * DAY),
            file(A, FileKind::Log, 100, 8 * DAY),
            file(A, FileKind::RotatedLog, 100, 9 * DAY),
            // A gone one whose log is recent: kept for post-mortems.
            file(B, FileKind::Log, 100, DAY),
        ]);
        let facts = Facts {
            entries: [(A.into(), Liveness::Gone)].into(),
            refused: [A.to_string()].into(),
            ..Facts::default()
        };
        let p = plan(
            &f,
            &r,
            Path::new("/s/registry.json"),
            &facts,
            now(),
            &TidyPolicy::default(),
        );
        assert_eq!(ids(&p, What::RegistryEntry), [A]);
        assert_eq!(ids(&p, What::Socket), [A]);
        assert_eq!(ids(&p, What::Log), [A]);
        assert_eq!(ids(&p, What::RotatedLog), [A]);
        assert_eq!(p.log_bytes, 300);
        assert_eq!(p.log_bytes_after, 100);
    }

    #[test]
    fn a_gone_entrys_empty_cgroup_goes_with_it_and_a_populated_one_stays() {
        let mut r = Registry::new();
        for id in [A, B] {
            let mut e = entry(id);
            e.cgroup = Some(PathBuf::from(format!("/sys/fs/cgroup/t/{id}")));
            r.upsert(e);
        }
        let facts = Facts {
            entries: [(A.into(), Liveness::Gone), (B.into(), Liveness::Gone)].into(),
            // B's session still runs in its cgroup (an orphan for `reap`).
            empty_cgroups: [A.to_string()].into(),
            ..Facts::default()
        };
        let p = plan(
            &files(Vec::new()),
            &r,
            Path::new("/r"),
            &facts,
            now(),
            &TidyPolicy::default(),
        );
        assert_eq!(ids(&p, What::RegistryEntry), [A, B]);
        assert_eq!(ids(&p, What::Cgroup), [A]);
        let a = p.actions.iter().find(|a| a.what == What::Cgroup).unwrap();
        assert_eq!(a.path, PathBuf::from(format!("/sys/fs/cgroup/t/{A}")));
    }

    #[test]
    fn a_socket_that_answers_or_is_young_keeps_its_shellper_alive() {
        // No registry entry (a legacy shellper, or one spawned by a Tower
        // that has not registered it yet).
        let f = files(vec![
            file(A, FileKind::Socket, 0, 30 * DAY),
            file(A, FileKind::Log, 100, 30 * DAY),
            file(B, FileKind::Socket, 0, 10),
            file(B, FileKind::Log, 100, 30 * DAY),
        ]);
        let facts = Facts {
            // A answers; B refuses but was bound ten seconds ago.
            refused: [B.to_string()].into(),
            ..Facts::default()
        };
        let p = plan(
            &f,
            &Registry::new(),
            Path::new("/r"),
            &facts,
            now(),
            &TidyPolicy::default(),
        );
        assert!(p.actions.is_empty(), "{:#?}", p.actions);
    }

    #[test]
    fn kept_ids_stay_even_when_gone() {
        let r = reg(&[A]);
        let f = files(vec![file(A, FileKind::Log, 100, 30 * DAY)]);
        let facts = Facts {
            entries: [(A.into(), Liveness::Gone)].into(),
            keep: [A.to_string()].into(),
            ..Facts::default()
        };
        let p = plan(
            &f,
            &r,
            Path::new("/r"),
            &facts,
            now(),
            &TidyPolicy::default(),
        );
        assert!(p.actions.is_empty(), "{:#?}", p.actions);
    }

    #[test]
    fn cap_removes_gone_logs_then_rotated_live_logs_oldest_first_never_live_current() {
        let mib = 1 << 20;
        let f = files(vec![
            // Gone (no socket, no entry), recent: within retention.
            file(A, FileKind::Log, 3 * mib, 3600),
            file(A, FileKind::RotatedLog, mib, 7200),
            // Live (held), with a rotated log.
            file(B, FileKind::Log, 4 * mib, 60),
            file(B, FileKind::RotatedLog, 2 * mib, 600),
            file(C, FileKind::Log, 4 * mib, 30),
            file(C, FileKind::RotatedLog, 2 * mib, 900),
        ]);
        let facts = Facts {
            held: [B.to_string(), C.to_string()].into(),
            ..Facts::default()
        };
        let policy = TidyPolicy {
            scope_log_cap: 9 * mib,
            ..TidyPolicy::default()
        };
        let p = plan(
            &f,
            &Registry::new(),
            Path::new("/r"),
            &facts,
            now(),
            &policy,
        );
        let order: Vec<(String, What)> = p.actions.iter().map(|a| (a.id.clone(), a.what)).collect();
        // 16 MiB; A's two (4 MiB) → 12; C's rotated (older) → 10; B's → 8.
        assert_eq!(
            order,
            [
                (A.to_string(), What::RotatedLog),
                (A.to_string(), What::Log),
                (C.to_string(), What::RotatedLog),
                (B.to_string(), What::RotatedLog),
            ]
        );
        assert_eq!(p.log_bytes_after, 8 * mib);
        assert!(!p.over_cap);
        // Stops as soon as it fits.
        let policy = TidyPolicy {
            scope_log_cap: 13 * mib,
            ..policy
        };
        let p = plan(
            &f,
            &Registry::new(),
            Path::new("/r"),
            &facts,
            now(),
            &policy,
        );
        assert_eq!(p.actions.len(), 2, "{:#?}", p.actions);
    }

    #[test]
    fn young_files_are_never_removed_even_over_the_cap() {
        let f = files(vec![file(A, FileKind::Log, 10 << 20, 5)]);
        let policy = TidyPolicy {
            scope_log_cap: 0,
            ..TidyPolicy::default()
        };
        let p = plan(
            &f,
            &Registry::new(),
            Path::new("/r"),
            &Facts::default(),
            now(),
            &policy,
        );
        assert!(p.actions.is_empty());
        assert!(p.over_cap);
    }
}
