//! The control protocol's wire types and their checks, pure (no IO, no
//! clock): a request line in, a validated [`Request`] or a [`WireError`]
//! out; a [`Response`] in, a line out. SPEC.md ("Control socket") is the
//! normative text; `tests/control_golden.rs` pins the examples it shows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shellper_protocol::LeaseConfig;

use crate::spawn::SpawnSpec;

/// The version every request and response carries in `"v"`.
pub const CONTROL_VERSION: u64 = 1;

/// Longest request line accepted, newline included. A spawn request carries
/// the whole environment of the session; 256 KiB holds any real one (Linux
/// caps one environment string at 128 KiB) and bounds what a client can
/// make the Tower buffer.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Longest response line a client accepts (a `list` of thousands of
/// sessions fits).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Largest PTY dimension accepted.
pub const MAX_PTY_DIM: u16 = 4096;

/// What a Tower allows a request to ask for. Lease timings outside these
/// bounds are refused with [`ErrorCode::Limit`], never clamped: a client
/// that asked for a 1-week window and silently got less would be surprised
/// when its session dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// Shortest TTL: below it a loaded host lapses leases by noise alone.
    pub min_ttl: Duration,
    /// Longest TTL.
    pub max_ttl: Duration,
    /// Longest reattach window.
    pub max_window: Duration,
    /// Longest claim deadline.
    pub max_claim: Duration,
    /// Longest kill grace.
    pub max_kill_grace: Duration,
    /// Longest a terminate may wait for confirmed death.
    pub max_terminate_timeout: Duration,
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits {
            min_ttl: Duration::from_millis(500),
            max_ttl: Duration::from_secs(600),
            max_window: Duration::from_secs(24 * 3600),
            max_claim: Duration::from_secs(600),
            max_kill_grace: Duration::from_secs(60),
            max_terminate_timeout: Duration::from_secs(120),
        }
    }
}

/// Why a request was refused: the `error.code` of a response. Stable
/// strings; clients branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a JSON object.
    BadJson,
    /// The line is longer than [`MAX_REQUEST_BYTES`] (the connection is
    /// closed: there is no line boundary to resume from).
    TooLarge,
    /// `"v"` is missing or not a version this Tower speaks.
    UnsupportedVersion,
    /// `"op"` is missing or unknown.
    UnknownOp,
    /// A field is missing, unknown, of the wrong type or has a bad value.
    BadRequest,
    /// Lease timings outside the Tower's limits.
    Limit,
    /// Terminate of an id this Tower does not hold.
    NotHeld,
    /// The spawn failed (nothing was left running).
    SpawnFailed,
    /// The terminate did not end in confirmed death.
    TerminateFailed,
    /// Too many control connections at once.
    Busy,
    /// The request line did not arrive in time (the connection is closed).
    Timeout,
    /// The Tower is stopping and takes no new requests.
    Stopping,
    /// The peer runs as another user (the connection is closed).
    Forbidden,
}

/// A refusal: a code and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = serde_json::to_value(self.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        write!(f, "{} ({code})", self.message)
    }
}

/// Lease timings a spawn asks for, in milliseconds; each omitted one is the
/// Tower's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace_ms: Option<u64>,
}

impl LeaseRequest {
    /// True when nothing is asked for (the Tower's timings).
    pub fn is_empty(&self) -> bool {
        *self == LeaseRequest::default()
    }
}

/// `op: "spawn"`: start a session and hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// Program run in the PTY (looked up on the session's `PATH`).
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Absolute working directory; omitted: the Tower's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The session's environment. Without `inherit_env` it is the whole
    /// environment (omitted: empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Start from the Tower's own environment and apply `env` on top.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inherit_env: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "LeaseRequest::is_empty")]
    pub lease: LeaseRequest,
}

/// `op: "terminate"`: kill a held session's whole tree, confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminateRequest {
    pub id: String,
    /// How long to wait for confirmed death; omitted: the session's kill
    /// grace plus 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `op: "list"` takes no field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {}

/// A request, as the `op` field names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Spawn(SpawnRequest),
    Terminate(TerminateRequest),
    List(ListRequest),
}

impl Request {
    /// The `op` string.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Spawn(_) => "spawn",
            Request::Terminate(_) => "terminate",
            Request::List(_) => "list",
        }
    }

    /// One request line (newline included): `v` and `op` first, then the
    /// fields in the order SPEC.md shows them.
    pub fn to_line(&self) -> String {
        // Invariant: the request types are strings, integers, booleans,
        // maps and options; they always serialize to an object.
        let body = match self {
            Request::Spawn(r) => serde_json::to_string(r),
            Request::Terminate(r) => serde_json::to_string(r),
            Request::List(r) => serde_json::to_string(r),
        }
        .unwrap_or_else(|_| "{}".into());
        let head = format!("{{\"v\":{CONTROL_VERSION},\"op\":\"{}\"", self.op());
        match body.strip_prefix('{') {
            Some("}") | None => format!("{head}}}\n"),
            Some(rest) => format!("{head},{rest}\n"),
        }
    }
}

/// Parses one request line (without its newline). Checks the envelope
/// (`v`, `op`) first so that a client of a later version is told so rather
/// than about a field it did not expect.
///
/// Error messages never quote a field's value: an environment value is a
/// secret as often as not, and refusals are logged.
pub fn parse_request(line: &[u8]) -> Result<Request, WireError> {
    let bad = |m: String| WireError::new(ErrorCode::BadRequest, m);
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        WireError::new(
            ErrorCode::BadJson,
            format!(
                "not a JSON object on one line (line {}, column {}: {})",
                e.line(),
                e.column(),
                classify(&e)
            ),
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(WireError::new(
            ErrorCode::BadJson,
            "a request is a JSON object, one per line",
        ));
    };
    match obj.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(CONTROL_VERSION) => {}
        Some(v) => {
            return Err(WireError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "this Tower speaks version {CONTROL_VERSION} of the control protocol; the request has \"v\": {}",
                    short(&v)
                ),
            ));
        }
        None => {
            return Err(WireError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "missing \"v\" (the protocol version; this Tower speaks {CONTROL_VERSION})"
                ),
            ));
        }
    }
    let op = match obj.remove("op") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(WireError::new(
                ErrorCode::UnknownOp,
                "\"op\" must be a string",
            ));
        }
        None => {
            return Err(WireError::new(
                ErrorCode::UnknownOp,
                "missing \"op\" (one of spawn, terminate, list)",
            ));
        }
    };
    let body = Value::Object(obj);
    let field_err = |e: serde_json::Error| bad(format!("{op}: {}", classify(&e)));
    match op.as_str() {
        "spawn" => serde_json::from_value(body)
            .map(Request::Spawn)
            .map_err(field_err),
        "terminate" => serde_json::from_value(body)
            .map(Request::Terminate)
            .map_err(field_err),
        "list" => serde_json::from_value(body)
            .map(Request::List)
            .map_err(field_err),
        other => Err(WireError::new(
            ErrorCode::UnknownOp,
            format!(
                "unknown op \"{}\" (one of spawn, terminate, list)",
                other.chars().take(40).collect::<String>().escape_debug()
            ),
        )),
    }
}

/// serde_json's message without any quoted value: serde names the
/// offending value in "invalid type" and "invalid value" errors, and that
/// value may be a secret. Field names (unknown field, missing field) are
/// kept: they are what the client needs.
fn classify(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg);
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        // "invalid type: string \"…\", expected u16": keep the expectation.
        match msg.rsplit_once(", expected ") {
            Some((_, exp)) => format!("a value of the wrong type or range (expected {exp})"),
            None => "a value of the wrong type or range".into(),
        }
    } else {
        msg.chars().take(200).collect()
    }
}

/// A version value, shortened for a message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 20 {
        format!("{}…", s.chars().take(20).collect::<String>())
    } else {
        s
    }
}

/// Checks a spawn request against the Tower's defaults and limits and
/// turns it into a [`SpawnSpec`]. Pure: the working directory's existence
/// is checked by the server.
pub fn spawn_spec(
    req: &SpawnRequest,
    tower_lease: &LeaseConfig,
    limits: &ControlLimits,
) -> Result<SpawnSpec, WireError> {
    let bad = |m: String| WireError::new(ErrorCode::BadRequest, m);
    if req.command.is_empty() {
        return Err(bad("spawn: \"command\" is empty".into()));
    }
    if req.command.contains('\0') {
        return Err(bad("spawn: \"command\" contains a NUL byte".into()));
    }
    if let Some(i) = req.args.iter().position(|a| a.contains('\0')) {
        return Err(bad(format!("spawn: args[{i}] contains a NUL byte")));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(bad(format!(
                "spawn: env name {:?} is not a variable name (empty, or has '=' or NUL)",
                k.chars().take(60).collect::<String>()
            )));
        }
        if v.contains('\0') {
            // The name only: the value may be a secret.
            return Err(bad(format!("spawn: env {k} has a NUL byte in its value")));
        }
    }
    let cwd = match &req.cwd {
        None => None,
        Some(c) if c.contains('\0') => {
            return Err(bad("spawn: \"cwd\" contains a NUL byte".into()));
        }
        Some(c) if !c.starts_with('/') => {
            return Err(bad(format!(
                "spawn: \"cwd\" must be an absolute path (got {:?}): the Tower's own working directory means nothing to a client",
                c.chars().take(200).collect::<String>()
            )));
        }
        Some(c) => Some(PathBuf::from(c)),
    };
    let dim = |what: &str, v: Option<u16>, def: u16| -> Result<u16, WireError> {
        match v {
            None => Ok(def),
            Some(n) if (1..=MAX_PTY_DIM).contains(&n) => Ok(n),
            Some(n) => Err(bad(format!(
                "spawn: {what} {n} is not in 1..={MAX_PTY_DIM}"
            ))),
        }
    };
    let cols = dim("cols", req.cols, 80)?;
    let rows = dim("rows", req.rows, 24)?;
    let lease = lease_config(&req.lease, tower_lease, limits)?;
    let mut spec = SpawnSpec::new(req.command.clone()).args(req.args.iter().cloned());
    spec.cwd = cwd;
    spec.inherit_env = req.inherit_env;
    spec.env = req.env.clone();
    spec.cols = cols;
    spec.rows = rows;
    spec.lease = lease;
    Ok(spec)
}

/// The lease a spawn asks for, checked against the limits and the
/// protocol's rules; `None` when it asks for nothing (the Tower's own).
pub fn lease_config(
    req: &LeaseRequest,
    tower: &LeaseConfig,
    limits: &ControlLimits,
) -> Result<Option<LeaseConfig>, WireError> {
    if req.is_empty() {
        return Ok(None);
    }
    let limit = |m: String| WireError::new(ErrorCode::Limit, m);
    let ms = |v: Option<u64>, def: Duration| v.map_or(def, Duration::from_millis);
    let ttl = ms(req.ttl_ms, tower.ttl);
    let window = ms(req.window_ms, tower.window);
    let claim = ms(req.claim_ms, tower.claim);
    let kill_grace = ms(req.kill_grace_ms, tower.kill_grace);
    if req.ttl_ms.is_some() && ttl < limits.min_ttl {
        return Err(limit(format!(
            "ttl {} is below this Tower's minimum of {}",
            hd(ttl),
            hd(limits.min_ttl)
        )));
    }
    for (what, asked, value, max) in [
        ("ttl", req.ttl_ms.is_some(), ttl, limits.max_ttl),
        ("window", req.window_ms.is_some(), window, limits.max_window),
        ("claim", req.claim_ms.is_some(), claim, limits.max_claim),
        (
            "kill grace",
            req.kill_grace_ms.is_some(),
            kill_grace,
            limits.max_kill_grace,
        ),
    ] {
        if asked && value > max {
            return Err(limit(format!(
                "{what} {} is above this Tower's maximum of {}",
                hd(value),
                hd(max)
            )));
        }
    }
    LeaseConfig::new(ttl, window, claim, kill_grace)
        .map(Some)
        .map_err(|e| WireError::new(ErrorCode::BadRequest, format!("lease: {e}")))
}

fn hd(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A held session as `spawn` and `list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionInfo {
    pub id: String,
    pub pid: u32,
    pub child_pid: Option<u32>,
    pub socket: String,
    pub epoch: u64,
    /// `held`, `unresponsive`, `lapsed` or `ended`.
    pub state: String,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
}

/// The `spawned` object of a spawn's response: minitower's `spawned` event
/// line, plus the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spawned {
    /// Always `"spawned"`.
    pub event: String,
    pub id: String,
    pub pid: u32,
    pub child_pid: Option<u32>,
    pub socket: String,
    pub epoch: u64,
}

/// A terminate's outcome: the shellper's kill-ladder report and how its
/// process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminatedInfo {
    pub id: String,
    /// Distinct processes the ladder signalled.
    pub signalled: u32,
    /// Processes of the tree alive when the ladder gave up (0: confirmed).
    pub survivors: u32,
    pub elapsed_ms: u64,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
}

/// Who answered (every successful response names its Tower).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerInfo {
    pub pid: u32,
    pub holder: String,
    pub scope: String,
}

/// A response line: `ok` with the op's result, or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub v: u64,
    pub ok: bool,
    /// The request's op when it was understood.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tower: Option<TowerInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawned: Option<Spawned>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<TerminatedInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl Response {
    /// A success for `op`, answered by `tower`.
    pub fn ok(op: &str, tower: TowerInfo) -> Self {
        Response {
            v: CONTROL_VERSION,
            ok: true,
            op: Some(op.into()),
            tower: Some(tower),
            spawned: None,
            terminated: None,
            sessions: None,
            error: None,
        }
    }

    /// A refusal (`op` when the request got that far).
    pub fn err(op: Option<&str>, e: WireError) -> Self {
        Response {
            v: CONTROL_VERSION,
            ok: false,
            op: op.map(str::to_owned),
            tower: None,
            spawned: None,
            terminated: None,
            sessions: None,
            error: Some(e),
        }
    }

    /// One response line (newline included).
    pub fn to_line(&self) -> String {
        // Invariant: plain strings, integers, booleans and options.
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }

    /// Parses a response line (strict: unknown fields are errors, so a
    /// client notices a Tower speaking something else).
    pub fn parse(line: &[u8]) -> Result<Response, String> {
        let r: Response = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        if r.v != CONTROL_VERSION {
            return Err(format!(
                "the Tower answered in version {} of the control protocol; this client speaks {CONTROL_VERSION}",
                r.v
            ));
        }
        if r.ok == r.error.is_some() {
            return Err("a response is either ok or carries an error".into());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> Result<Request, WireError> {
        parse_request(s.as_bytes())
    }

    fn code(s: &str) -> ErrorCode {
        p(s).unwrap_err().code
    }

    #[test]
    fn envelope_is_checked_first() {
        assert_eq!(code("nope"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"op":"list"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(
            code(r#"{"v":2,"op":"list"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(r#"{"v":"1","op":"list"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(code(r#"{"v":1}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"v":1,"op":"reboot"}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"v":1,"op":7}"#), ErrorCode::UnknownOp);
        assert_eq!(
            p(r#"{"v":1,"op":"list"}"#).unwrap(),
            Request::List(ListRequest {})
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        assert_eq!(code(r#"{"v":1,"op":"list","x":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"v":1,"op":"spawn"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"v":1,"op":"terminate"}"#), ErrorCode::BadRequest);
        let e = p(r#"{"v":1,"op":"spawn","command":"sh","colour":1}"#).unwrap_err();
        assert!(e.message.contains("colour"), "{e}");
        assert_eq!(
            code(r#"{"v":1,"op":"spawn","command":"sh","lease":{"ttl":5}}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn messages_never_quote_values() {
        let e = p(r#"{"v":1,"op":"spawn","command":"sh","env":{"TOKEN":7}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = p(r#"{"v":1,"op":"spawn","command":"sh","cols":"hunter2"}"#).unwrap_err();
        assert!(!e.message.contains("hunter2"), "{e}");
        let e = p(r#"{"v":1,"op":"spawn","command":"sh","cols":99999}"#).unwrap_err();
        assert!(!e.message.contains("99999"), "{e}");
        let r = p(r#"{"v":1,"op":"spawn","command":"sh","env":{"K":"a\u0000hunter2"}}"#).unwrap();
        let Request::Spawn(s) = r else { panic!() };
        let e = spawn_spec(&s, &LeaseConfig::default(), &ControlLimits::default()).unwrap_err();
        assert!(
            e.message.contains("env K") && !e.message.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn lines_round_trip() {
        let req = Request::Spawn(SpawnRequest {
            command: "bash".into(),
            args: vec!["-l".into()],
            cwd: Some("/tmp".into()),
            env: [("A".to_string(), "b c".to_string())].into(),
            inherit_env: false,
            cols: Some(100),
            rows: None,
            lease: LeaseRequest {
                window_ms: Some(60_000),
                ..LeaseRequest::default()
            },
        });
        let line = req.to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert!(line.starts_with(r#"{"v":1,"op":"spawn","#), "{line}");
        assert_eq!(p(line.trim_end()).unwrap(), req);
        let t = Request::Terminate(TerminateRequest {
            id: "sh-0000abcd".into(),
            timeout_ms: None,
        });
        assert_eq!(p(t.to_line().trim_end()).unwrap(), t);
    }

    fn spec_of(s: &str) -> Result<SpawnSpec, WireError> {
        let Request::Spawn(r) = p(s).unwrap() else {
            panic!()
        };
        spawn_spec(&r, &LeaseConfig::default(), &ControlLimits::default())
    }

    #[test]
    fn spawn_values_are_checked() {
        let s = spec_of(r#"{"v":1,"op":"spawn","command":"sh","args":["-c","x"],"env":{"A":"1"}}"#)
            .unwrap();
        assert_eq!(s.command, "sh");
        assert_eq!(s.args, ["-c", "x"]);
        assert!(!s.inherit_env);
        assert_eq!(s.env.get("A").map(String::as_str), Some("1"));
        assert_eq!((s.cols, s.rows), (80, 24));
        assert!(s.lease.is_none());
        for bad in [
            r#"{"v":1,"op":"spawn","command":""}"#,
            r#"{"v":1,"op":"spawn","command":"s\u0000h"}"#,
            r#"{"v":1,"op":"spawn","command":"sh","args":["\u0000"]}"#,
            r#"{"v":1,"op":"spawn","command":"sh","env":{"A=B":"1"}}"#,
            r#"{"v":1,"op":"spawn","command":"sh","env":{"":"1"}}"#,
            r#"{"v":1,"op":"spawn","command":"sh","cwd":"relative/dir"}"#,
            r#"{"v":1,"op":"spawn","command":"sh","cols":0}"#,
            r#"{"v":1,"op":"spawn","command":"sh","rows":5000}"#,
            r#"{"v":1,"op":"spawn","command":"sh","lease":{"window_ms":1000,"ttl_ms":2000}}"#,
        ] {
            assert_eq!(
                spec_of(bad).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn lease_limits_refuse_never_clamp() {
        let l = ControlLimits::default();
        let t = LeaseConfig::default();
        let ask = |r: LeaseRequest| lease_config(&r, &t, &l);
        assert_eq!(ask(LeaseRequest::default()).unwrap(), None);
        let got = ask(LeaseRequest {
            ttl_ms: Some(1000),
            window_ms: Some(5000),
            ..LeaseRequest::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(got.ttl, Duration::from_secs(1));
        assert_eq!(got.window, Duration::from_secs(5));
        assert_eq!(got.kill_grace, t.kill_grace);
        for r in [
            LeaseRequest {
                ttl_ms: Some(100),
                ..LeaseRequest::default()
            },
            LeaseRequest {
                window_ms: Some(25 * 3600 * 1000),
                ..LeaseRequest::default()
            },
            LeaseRequest {
                kill_grace_ms: Some(61_000),
                ..LeaseRequest::default()
            },
            LeaseRequest {
                claim_ms: Some(u64::MAX),
                ..LeaseRequest::default()
            },
        ] {
            assert_eq!(ask(r.clone()).unwrap_err().code, ErrorCode::Limit, "{r:?}");
        }
    }

    #[test]
    fn responses_are_strict() {
        let tower = TowerInfo {
            pid: 1,
            holder: "minitower@1".into(),
            scope: "/s".into(),
        };
        let ok = Response::ok("list", tower);
        let back = Response::parse(ok.to_line().trim_end().as_bytes()).unwrap();
        assert_eq!(back, ok);
        let err = Response::err(None, WireError::new(ErrorCode::Busy, "busy"));
        assert_eq!(
            err.to_line(),
            "{\"v\":1,\"ok\":false,\"error\":{\"code\":\"busy\",\"message\":\"busy\"}}\n"
        );
        assert!(
            Response::parse(br#"{"v":1,"ok":true,"error":{"code":"busy","message":""}}"#).is_err()
        );
        assert!(Response::parse(br#"{"v":2,"ok":true}"#).is_err());
        assert!(Response::parse(br#"{"v":1,"ok":true,"extra":1}"#).is_err());
    }
}
