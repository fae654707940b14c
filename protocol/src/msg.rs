//! Frame payloads.
//!
//! Two encodings live side by side:
//!
//! * **v1 (JSON)**: RESIZE, SIGNAL, EXIT, HELLO, WELCOME and SPAWN carry the
//!   JSON objects of codev's shellper protocol v1, with the same camelCase
//!   field names, so codev's unmodified Tower can drive a shellper. Unknown
//!   JSON fields are ignored (v1 peers add fields over time); anything after
//!   the JSON value is an error.
//! * **lease (postcard)**: frames 0x20–0x2A carry postcard-encoded structs.
//!   They are kept to plain structs and externally tagged enums so the wire
//!   form is the documented postcard format (SPEC.md §Encoding). Durations
//!   travel as `u64` milliseconds and must be clamped by the receiver before
//!   they reach a timer.

use serde::{Deserialize, Serialize};

use crate::token::Token;

// ---------------------------------------------------------------------------
// v1 JSON payloads
// ---------------------------------------------------------------------------

/// RESIZE (0x02): new terminal size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub cols: u16,
    pub rows: u16,
}

/// SIGNAL (0x03): deliver a signal to the PTY child. Only the allow-list
/// [`ALLOWED_SIGNALS`] is honoured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalMsg {
    pub signal: i32,
}

/// Signals a client may ask for in SIGNAL (codev v1's allow-list):
/// SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGWINCH.
pub const ALLOWED_SIGNALS: [i32; 5] = [1, 2, 9, 15, 28];

/// EXIT (0x04): the PTY child ended, in codev's (node-pty's) shape: a
/// normal exit is `{"code":C,"signal":"0"}`, a death by signal N is
/// `{"code":0,"signal":"N"}` (node-pty reports both numbers, zero for the
/// one that does not apply, and codev turns the signal into a string).
/// Receivers should also accept `null` (older shellpers sent it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitMsg {
    pub code: Option<i32>,
    pub signal: Option<String>,
}

impl ExitMsg {
    /// A normal exit with `code`: `{"code":C,"signal":"0"}`.
    pub fn exited(code: i32) -> Self {
        ExitMsg {
            code: Some(code),
            signal: Some("0".into()),
        }
    }

    /// A death by signal `sig`: `{"code":0,"signal":"N"}`.
    pub fn signaled(sig: i32) -> Self {
        ExitMsg {
            code: Some(0),
            signal: Some(sig.to_string()),
        }
    }

    /// The signal that killed the child, if any: `None` for `null`, `"0"`
    /// or anything that is not a positive number.
    pub fn signal_number(&self) -> Option<i32> {
        self.signal
            .as_deref()
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|n| *n > 0)
    }
}

/// The kind of client named in HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientType {
    /// A Tower: may SIGNAL and SPAWN; in leased mode only while it holds the
    /// lease, in legacy mode a connected tower *is* the holder.
    Tower,
    /// An interactive terminal (`afx attach`): DATA and RESIZE only.
    Terminal,
    /// A read-only status reader (`leasectl`): no DATA, no REPLAY.
    Status,
}

/// HELLO (0x08): first frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub version: u32,
    /// codev v1 defaults a missing clientType to `tower`.
    #[serde(default = "default_client_type")]
    pub client_type: ClientType,
    /// Lease extension version the client speaks; absent for v1 clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u32>,
    /// Send REPLAY after WELCOME (absent = yes, as in v1). A Tower adopting
    /// hundreds of shellpers for their leases sets `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<bool>,
    /// Stream PTY output as DATA to this connection (absent = yes, as in v1).
    /// A lease-only connection sets `false` so renewals never share the
    /// socket with terminal bulk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<bool>,
}

impl Hello {
    /// A plain v1 HELLO as codev's Tower sends it.
    pub fn v1(client_type: ClientType) -> Self {
        Hello {
            version: crate::PROTOCOL_VERSION,
            client_type,
            lease: None,
            replay: None,
            data: None,
        }
    }

    /// Whether REPLAY should follow WELCOME on this connection (status
    /// readers never get one).
    pub fn wants_replay(&self) -> bool {
        self.client_type != ClientType::Status && self.replay.unwrap_or(true)
    }

    /// Whether PTY output should be streamed to this connection.
    pub fn wants_data(&self) -> bool {
        self.client_type != ClientType::Status && self.data.unwrap_or(true)
    }
}

fn default_client_type() -> ClientType {
    ClientType::Tower
}

/// WELCOME (0x09): the shellper's answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    pub version: u32,
    /// pid of the PTY child (codev's Tower treats this as the session pid).
    pub pid: i64,
    pub cols: u16,
    pub rows: u16,
    /// Wall-clock ms since the Unix epoch at which the session started.
    pub start_time: u64,
    /// Wall-clock ms of the last PTY output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_data_at: Option<u64>,
    /// This shellper always sends REPLAY after WELCOME to terminal and tower
    /// clients, even when the buffer is empty.
    #[serde(default)]
    pub always_sends_replay: bool,
    /// Lease extension details; present when the client announced `lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<WelcomeLease>,
}

/// The lease part of WELCOME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WelcomeLease {
    /// Lease extension version the shellper speaks.
    pub version: u32,
    /// `true` when the shellper was started with a lease configuration
    /// (acquire with a token); `false` in legacy mode.
    pub leased: bool,
    /// pid of the shellper process itself.
    pub shellper_pid: u32,
}

/// SPAWN (0x0A): replace the PTY child with a new command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawn {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub cwd: String,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// Lease and status payloads (postcard)
// ---------------------------------------------------------------------------

/// Who a holder says it is. Informational: identity for authorization is the
/// token, and the shellper records the peer pid from SO_PEERCRED itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    /// A free-form name, e.g. `"minitower"` or `"tower@host"`; at most 256 bytes.
    pub name: String,
    /// The holder's pid as it reports it.
    pub pid: u32,
}

/// ACQUIRE (0x20): take the lease with the token. Always starts a new epoch
/// and evicts any current holder (which is sent REVOKED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    pub token: Token,
    pub holder: HolderInfo,
}

/// GRANT (0x21): the lease is yours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub epoch: u64,
    pub ttl_ms: u64,
    pub window_ms: u64,
    /// Suggested renewal interval (TTL / 3).
    pub renew_every_ms: u64,
    /// The lease expires this long after the shellper processed ACQUIRE.
    pub expires_in_ms: u64,
}

/// RENEW (0x22): extend the lease. `seq` is echoed back for round-trip timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renew {
    pub epoch: u64,
    pub seq: u64,
}

/// RENEWED (0x23): the renewal took effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewed {
    pub epoch: u64,
    pub seq: u64,
    pub expires_in_ms: u64,
}

/// How a holder lets go of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseMode {
    /// Run the kill ladder now and report TERMINATED.
    Terminate,
    /// Stop holding; the shellper keeps running for `hold_ms` (at least the
    /// configured window, at most [`MAX_HOLD_MS`]) waiting for a re-acquire.
    Detach { hold_ms: u64 },
}

/// Upper bound on a detach hold (7 days); larger requests are clamped.
pub const MAX_HOLD_MS: u64 = 7 * 24 * 3600 * 1000;

/// RELEASE (0x24).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub epoch: u64,
    pub mode: ReleaseMode,
}

/// RELEASED (0x25): answer to a detach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub epoch: u64,
    /// The shellper will terminate this long from now unless re-acquired.
    pub kill_in_ms: u64,
}

/// Why a shellper ran its kill ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TerminateReason {
    /// Nobody acquired the lease before the claim deadline.
    ClaimExpired,
    /// The lease lapsed and nobody re-acquired within the window.
    WindowExpired,
    /// The holder asked (RELEASE Terminate).
    Requested,
    /// The shellper got SIGTERM, SIGHUP or SIGINT.
    Signal,
    /// Not produced by this version. Older shellpers terminated a husk (a
    /// shellper whose child exited) as soon as nobody held the lease; a husk
    /// now waits for its claim deadline or window like any other session.
    /// The variant stays so that postcard's variant indices never move and
    /// an older shellper's TERMINATED still decodes.
    ChildExitedUnheld,
}

/// TERMINATED (0x26): the kill ladder finished. Sent to the holder (if still
/// connected) just before the shellper exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminated {
    pub reason: TerminateReason,
    /// Distinct processes signalled during the ladder.
    pub signalled: u32,
    /// Processes of the tree still alive when the ladder gave up (must be 0).
    pub survivors: u32,
    /// Time from the start of the ladder to the last process gone.
    pub elapsed_ms: u64,
    /// Sweeps (passes over the process table) performed.
    pub sweeps: u32,
}

/// STATUS_REQUEST (0x27): needs no token. Empty payload.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusRequest {}

/// Lease phase as reported on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WirePhase {
    Unclaimed,
    Held,
    Lapsed,
    Terminating,
    Exited,
}

/// State of the PTY child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildState {
    Running,
    /// Exited with a code, or killed by a signal (code None, signal Some).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// One connected client, as seen by the shellper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub kind: ClientType,
    /// Peer pid from SO_PEERCRED (0 when unknown).
    pub pid: u32,
    /// This connection holds the lease.
    pub holder: bool,
}

/// Lease counters since the shellper started.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    pub acquires: u64,
    pub renewals: u64,
    pub rejected_tokens: u64,
    pub stale_epochs: u64,
    pub revocations: u64,
    pub lapses: u64,
    pub stalls: u64,
    pub protocol_errors: u64,
}

/// STATUS (0x28): everything an operator needs, no token required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Shellper version string (crate version).
    pub version: String,
    pub shellper_pid: u32,
    /// Start time of the shellper in clock ticks since boot (/proc/PID/stat
    /// field 22): with the pid, a recycle-proof identity.
    pub shellper_start_ticks: u64,
    /// Wall-clock ms since the Unix epoch at which the shellper started.
    pub started_at_ms: u64,
    pub child_pid: Option<u32>,
    pub child: ChildState,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub phase: WirePhase,
    /// `false` in legacy mode (no token; a connected tower is the holder).
    pub leased: bool,
    pub epoch: u64,
    pub holder: Option<HolderInfo>,
    /// Peer pid (SO_PEERCRED) of the holder connection, if connected.
    pub holder_peer_pid: Option<u32>,
    pub expires_in_ms: Option<u64>,
    pub kill_in_ms: Option<u64>,
    pub claim_in_ms: Option<u64>,
    pub ttl_ms: u64,
    pub window_ms: u64,
    pub claim_ms: u64,
    pub kill_grace_ms: u64,
    pub clients: Vec<ClientInfo>,
    pub counters: Counters,
    /// How the session is contained, and what the kernel accounts for it
    /// (lease extension version 2 only). Not part of the v1 payload: the
    /// frame codec appends it after `counters` when it is `Some`, and a
    /// shellper sets it only on connections that negotiated version 2,
    /// because v1 decoders reject trailing bytes (SPEC.md §13). `None` from
    /// a v1 shellper: unknown.
    #[serde(skip)]
    pub containment: Option<Containment>,
}

/// The session's containment and accounting (STATUS, lease extension v2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Containment {
    /// The session's cgroup v2 directory; `None`: the process tree (the
    /// `/proc` ladder), no accounting.
    pub cgroup: Option<String>,
    /// Controllers the cgroup has (`cgroup.controllers`).
    pub controllers: Vec<String>,
    /// CPU time of everything that ran in the session (`cpu.stat`
    /// `usage_usec`).
    pub cpu_usec: Option<u64>,
    /// Processes in the session now.
    pub procs: Option<u32>,
    /// `memory.current` and `memory.peak`, where the memory controller is
    /// enabled.
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    /// Limits in force (`pids.max`, `memory.max`; `None`: none).
    pub pids_max: Option<u64>,
    pub memory_max: Option<u64>,
}

/// REVOKED (0x29): sent to a holder that lost the lease to a newer epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub old_epoch: u64,
    pub new_epoch: u64,
}

/// Machine-readable error codes carried in ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The token in ACQUIRE does not match.
    BadToken,
    /// RENEW/RELEASE carried an epoch that is not current.
    StaleEpoch,
    /// RENEW/RELEASE from a connection that does not hold the lease.
    NotHolder,
    /// ACQUIRE on a legacy (no-lease) shellper, or a lease frame before HELLO.
    NotLeased,
    /// The shellper is already terminating; nothing can be acquired.
    Terminating,
    /// A frame was malformed; the connection is closed after this frame.
    Protocol,
    /// The request is not allowed for this client type.
    Forbidden,
    /// Too many connections.
    Busy,
}

/// ERROR (0x2A).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
}
