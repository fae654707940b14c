//! The JSON shapes leasectl prints (`list`, `show`, `watch`, `orphans`,
//! `reap`). Scripts depend on these: fields are only ever added, and every
//! document carries `schema_version`.
//!
//! Fields that leasectl could not learn are `null`, never invented: an
//! unreachable shellper has no epoch, and "0" would be a lie.
//!
//! What STATUS reports is held in the protocol's own types
//! ([`ChildState`], [`ClientInfo`], [`Counters`], [`HolderInfo`]), not in
//! mirrors of them. Where their serde shape is what scripts read, they are
//! serialized as they are; where it differs from the contract, a small
//! explicit adapter writes the contract's shape: only `child` (the
//! protocol's [`ChildState`] is externally tagged, for postcard; `list
//! --json` has always said `{"state":"running"}`). `tests/json_contract.rs`
//! pins the whole document byte for byte, so a change in the protocol crate
//! cannot change the operators' JSON unnoticed.

use serde::{Serialize, Serializer};
use shellper_protocol::msg::{
    ChildState, ClientInfo, Containment, Counters, HolderInfo, WirePhase,
};

/// Version of every JSON document leasectl prints.
pub const SCHEMA_VERSION: u32 = 1;

/// A shellper's phase as leasectl shows it: the wire phase when the
/// shellper answered, else what the filesystem and /proc say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Unclaimed,
    Held,
    Lapsed,
    Terminating,
    Exited,
    /// A process is there (or may be) but did not answer in time: stopped,
    /// wedged, or overloaded.
    Unreachable,
    /// A socket file with nothing alive behind it (the shellper crashed or
    /// was SIGKILLed; the next bind reclaims the file).
    Dead,
    /// No longer present at all (used by `watch` and `demo` only).
    Gone,
}

impl Phase {
    /// Lower-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unclaimed => "unclaimed",
            Phase::Held => "held",
            Phase::Lapsed => "lapsed",
            Phase::Terminating => "terminating",
            Phase::Exited => "exited",
            Phase::Unreachable => "unreachable",
            Phase::Dead => "dead",
            Phase::Gone => "gone",
        }
    }
}

impl From<WirePhase> for Phase {
    fn from(p: WirePhase) -> Self {
        match p {
            WirePhase::Unclaimed => Phase::Unclaimed,
            WirePhase::Held => Phase::Held,
            WirePhase::Lapsed => Phase::Lapsed,
            WirePhase::Terminating => Phase::Terminating,
            WirePhase::Exited => Phase::Exited,
        }
    }
}

/// Where a shellper's pid came from (an operator should know how much to
/// trust it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PidSource {
    /// The shellper's own STATUS.
    Status,
    /// The Tower's registry (checked against /proc start time).
    Registry,
    /// The process listening on the socket (/proc/net/unix and fds).
    Socket,
}

/// The lease holder as the shellper reports it, with the peer pid of its
/// connection (STATUS carries that beside the holder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderView {
    /// Self-declared name and pid (`minitower`, `tower@host`).
    #[serde(flatten)]
    pub info: HolderInfo,
    /// Peer pid of the holder connection (SO_PEERCRED), when connected.
    pub peer_pid: Option<u32>,
}

impl HolderView {
    /// The holder's pid as seen from the connection when it is connected,
    /// else as it declared itself.
    pub fn effective_pid(&self) -> u32 {
        self.peer_pid.unwrap_or(self.info.pid)
    }
}

/// `child` as JSON: `{"state":"running"}` or `{"state":"exited","code":…,
/// "signal":…}` (internally tagged; the protocol's [`ChildState`] is
/// externally tagged). The one place the contract's shape differs from the
/// protocol's.
#[derive(Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum ChildJson {
    Running,
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

fn child_json<S: Serializer>(c: &Option<ChildState>, s: S) -> Result<S::Ok, S::Error> {
    c.as_ref()
        .map(|c| match c {
            ChildState::Running => ChildJson::Running,
            ChildState::Exited { code, signal } => ChildJson::Exited {
                code: *code,
                signal: *signal,
            },
        })
        .serialize(s)
}

/// Lease settings of a shellper. STATUS carries them as four fields of its
/// own; the JSON groups them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub ttl_ms: u64,
    pub window_ms: u64,
    pub claim_ms: u64,
    pub kill_grace_ms: u64,
}

/// One shellper: an entry of `list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShellperView {
    pub id: String,
    pub socket: String,
    /// The shellper process.
    pub pid: Option<u32>,
    pub pid_source: Option<PidSource>,
    /// Start time of `pid` in clock ticks since boot (its identity).
    pub start_ticks: Option<u64>,
    /// The PTY child (session leader of the shellper's tree).
    pub child_pid: Option<u32>,
    #[serde(serialize_with = "child_json")]
    pub child: Option<ChildState>,
    pub phase: Phase,
    /// The shellper answered STATUS within the timeout.
    pub reachable: bool,
    /// The shellper process's state from /proc when it did not answer
    /// (`stopped`, `disk-sleep`, ...), else `null`.
    pub proc_state: Option<String>,
    /// `false` in legacy mode (no token; a connected tower is the holder).
    pub leased: Option<bool>,
    pub epoch: Option<u64>,
    pub holder: Option<HolderView>,
    /// Whether the holder's process is alive (peer pid if connected, else
    /// its self-declared pid); `null` when there is no holder.
    pub holder_alive: Option<bool>,
    pub expires_in_ms: Option<u64>,
    pub kill_in_ms: Option<u64>,
    pub claim_in_ms: Option<u64>,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub cwd: Option<String>,
    /// RFC 3339 wall-clock start of the shellper.
    pub started_at: Option<String>,
    pub started_at_ms: Option<u64>,
    pub age_ms: Option<u64>,
    pub clients: Option<Vec<ClientInfo>>,
    /// The scope's registry lists it (so an authenticated terminate is possible).
    pub in_registry: bool,
    pub timings: Option<Timings>,
    pub counters: Option<Counters>,
    /// Shellper version (from STATUS).
    pub version: Option<String>,
    /// Why it is unreachable or dead (the query error).
    pub error: Option<String>,
    /// How the session is contained and what the kernel accounts for it
    /// (STATUS of a version 2 shellper; for one that does not answer, read
    /// from the cgroup the registry names): `cgroup` null means the process
    /// tree. `null` when unknown (an older shellper).
    pub containment: Option<Containment>,
}

impl ShellperView {
    /// A bare entry: only the id and socket known.
    pub fn bare(id: String, socket: String) -> Self {
        ShellperView {
            id,
            socket,
            pid: None,
            pid_source: None,
            start_ticks: None,
            child_pid: None,
            child: None,
            phase: Phase::Unreachable,
            reachable: false,
            proc_state: None,
            leased: None,
            epoch: None,
            holder: None,
            holder_alive: None,
            expires_in_ms: None,
            kill_in_ms: None,
            claim_in_ms: None,
            command: None,
            args: Vec::new(),
            cwd: None,
            started_at: None,
            started_at_ms: None,
            age_ms: None,
            clients: None,
            in_registry: false,
            timings: None,
            counters: None,
            version: None,
            error: None,
            containment: None,
        }
    }

    /// The command line for display: command and args joined.
    pub fn command_line(&self) -> String {
        let mut s = self.command.clone().unwrap_or_default();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// The scope's Tower as seen from outside.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TowerView {
    /// pid holding the instance lock, `null` when no Tower runs.
    pub pid: Option<u32>,
    /// The pid written in `tower.lock` when nobody holds it: the last Tower.
    pub last_pid: Option<u32>,
}

/// `list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ListDoc<'a> {
    pub schema_version: u32,
    pub scope: String,
    /// The scope's Tower (instance lock holder).
    pub tower: &'a TowerView,
    pub shellpers: &'a [ShellperView],
}

/// One process of a shellper's tree (for `show` and `reap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeProc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// `/proc` state letter (`S`, `R`, `T`, ...).
    pub state: String,
    pub start_ticks: u64,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// `shellper`, `child` (the PTY child), or `descendant`.
    pub role: &'static str,
}

/// `show --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ShowDoc<'a> {
    pub schema_version: u32,
    pub scope: String,
    pub shellper: &'a ShellperView,
    pub tree: &'a [TreeProc],
}

/// Human name of a /proc state letter.
pub fn proc_state_name(c: char) -> &'static str {
    match c {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk-sleep",
        'T' => "stopped",
        't' => "traced",
        'Z' => "zombie",
        'X' | 'x' => "dead",
        'I' => "idle",
        _ => "unknown",
    }
}
