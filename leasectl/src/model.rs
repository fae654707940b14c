//! The JSON shapes leasectl prints (`list`, `show`, `watch`, `orphans`,
//! `reap`). Scripts depend on these: fields are only ever added, and every
//! document carries `schema_version`.
//!
//! Fields that leasectl could not learn are `null`, never invented: an
//! unreachable shellper has no epoch, and "0" would be a lie.

use serde::Serialize;
use shellper_protocol::msg::{ChildState, ClientType, Counters, WirePhase};

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

/// The lease holder as the shellper reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderView {
    /// Self-declared name (`minitower`, `tower@host`).
    pub name: String,
    /// Self-declared pid.
    pub pid: u32,
    /// Peer pid of the holder connection (SO_PEERCRED), when connected.
    pub peer_pid: Option<u32>,
}

/// The PTY child's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ChildView {
    Running,
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

impl From<&ChildState> for ChildView {
    fn from(c: &ChildState) -> Self {
        match c {
            ChildState::Running => ChildView::Running,
            ChildState::Exited { code, signal } => ChildView::Exited {
                code: *code,
                signal: *signal,
            },
        }
    }
}

/// One connected client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientView {
    /// `tower`, `terminal` or `status`.
    pub kind: &'static str,
    pub pid: u32,
    pub holder: bool,
}

/// Lower-case client type name.
pub fn client_kind(k: ClientType) -> &'static str {
    match k {
        ClientType::Tower => "tower",
        ClientType::Terminal => "terminal",
        ClientType::Status => "status",
    }
}

/// Lease settings of a shellper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub ttl_ms: u64,
    pub window_ms: u64,
    pub claim_ms: u64,
    pub kill_grace_ms: u64,
}

/// Lease counters (from STATUS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountersView {
    pub acquires: u64,
    pub renewals: u64,
    pub rejected_tokens: u64,
    pub stale_epochs: u64,
    pub revocations: u64,
    pub lapses: u64,
    pub stalls: u64,
    pub protocol_errors: u64,
}

impl From<&Counters> for CountersView {
    fn from(c: &Counters) -> Self {
        CountersView {
            acquires: c.acquires,
            renewals: c.renewals,
            rejected_tokens: c.rejected_tokens,
            stale_epochs: c.stale_epochs,
            revocations: c.revocations,
            lapses: c.lapses,
            stalls: c.stalls,
            protocol_errors: c.protocol_errors,
        }
    }
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
    pub child: Option<ChildView>,
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
    pub clients: Option<Vec<ClientView>>,
    /// The scope's registry lists it (so an authenticated terminate is possible).
    pub in_registry: bool,
    pub timings: Option<Timings>,
    pub counters: Option<CountersView>,
    /// Shellper version (from STATUS).
    pub version: Option<String>,
    /// Why it is unreachable or dead (the query error).
    pub error: Option<String>,
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

/// `list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ListDoc<'a> {
    pub schema_version: u32,
    pub scope: String,
    /// The scope's Tower (instance lock holder).
    pub tower: &'a crate::scan::TowerView,
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
