//! The spawn handshake of SPEC.md §3, parsed: pure (no IO, no environment),
//! one implementation for the PTY shellper and every embedded leased
//! process, so the two cannot disagree about what a Tower may send.
//!
//! Every rule of SPEC.md §3 that concerns what arrives in argv and on stdin
//! is here, and each has its test below, named after the rule.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shellper_protocol::frame::MAX_DATA_PAYLOAD;
use shellper_protocol::lease::{
    ConfigError, DEFAULT_CLAIM, DEFAULT_KILL_GRACE, DEFAULT_TTL, DEFAULT_WINDOW, LeaseConfig,
};
use shellper_protocol::token::Token;

use crate::exit;
use crate::server::DEFAULT_WRITE_STALL;

/// The argument that selects the config-on-stdin form (the last one).
pub const CONFIG_STDIN_FLAG: &str = "--config-stdin";
/// Most bytes accepted on stdin in the config-on-stdin form (token line
/// plus config line).
pub const MAX_STDIN_CONFIG: usize = 4 * 1024 * 1024;
/// Longest first line of stdin read as the token in the argv form (64 hex
/// digits and some slack for white space).
pub const MAX_TOKEN_LINE: usize = 128;
/// codev's default replay depth in lines.
pub const DEFAULT_REPLAY_LINES: usize = 10_000;
/// codev's default replay ceiling in bytes (8 MiB).
pub const DEFAULT_REPLAY_BYTES: usize = 8 * 1024 * 1024;
/// How long a new connection may take to send HELLO.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Terminal size used when the config says 0.
pub const DEFAULT_COLS: u16 = 80;
/// Terminal size used when the config says 0.
pub const DEFAULT_ROWS: u16 = 24;
/// Bounds of `handshakeTimeoutMs` and `writeStallMs` (values outside are
/// moved to the nearest bound).
pub const TIMEOUT_BOUNDS: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(600));

/// Why the handshake was refused; the exit code says which rule.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The invocation or the config is malformed (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The lease timing breaks a rule of SPEC.md §3 (exit 2).
    #[error("invalid lease configuration: {0}")]
    Lease(#[from] ConfigError),
    /// The token is malformed, missing or late (exit 3).
    #[error("lease token: {0}")]
    Token(String),
}

impl ParseError {
    /// SPEC.md §3: a bad invocation or config exits 2, a bad token 3.
    pub fn exit_code(&self) -> i32 {
        match self {
            ParseError::Usage(_) | ParseError::Lease(_) => exit::USAGE,
            ParseError::Token(_) => exit::STARTUP,
        }
    }
}

/// Which form of SPEC.md §3 an argv (without the program name) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form<'a> {
    /// The last argument is `--config-stdin`: token and config on stdin.
    ConfigStdin,
    /// The last argument is a JSON object: the config (codev's form).
    ConfigArgv(&'a str),
    /// Neither (the PTY shellper's friendly flags, or a mistake).
    Other,
}

/// Tells the forms apart by the **last** argument; anything before it is
/// ignored (codev passes a script path there). After a `--` every argument
/// belongs to a command (the shellper's flags form), so neither form is
/// recognised behind one.
pub fn form(args: &[String]) -> Form<'_> {
    let Some((last, before)) = args.split_last() else {
        return Form::Other;
    };
    if before.iter().any(|a| a == "--") {
        return Form::Other;
    }
    if last == CONFIG_STDIN_FLAG {
        Form::ConfigStdin
    } else if last.trim_start().starts_with('{') {
        Form::ConfigArgv(last)
    } else {
        Form::Other
    }
}

/// The `CONFIG_JSON` of SPEC.md §3, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnConfig {
    /// The program to run (never empty).
    pub command: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The worker's **whole** environment (it does not inherit ours).
    /// Always `Some` from `CONFIG_JSON`, which requires it; `None` only where
    /// a program is configured another way and its worker inherits the
    /// program's environment (the PTY shellper's flags).
    pub env: Option<BTreeMap<String, String>>,
    /// Initial terminal size (0 in the config: the default).
    pub cols: u16,
    pub rows: u16,
    pub socket_path: PathBuf,
    pub replay_lines: usize,
    /// At most the largest REPLAY payload a peer accepts.
    pub replay_bytes: usize,
    pub lease: LeaseConfig,
    /// A token is required: the config came on stdin, or has a `lease`
    /// object. Otherwise legacy mode (SPEC.md §12).
    pub leased: bool,
    pub handshake_timeout: Duration,
    pub write_stall: Duration,
    /// The session's cgroup v2 directory (SPEC.md §9.1), an absolute path:
    /// the worker moves into it before it executes the command, and the
    /// kill ladder kills it. `None`: the process-tree ladder.
    pub cgroup: Option<PathBuf>,
}

/// The `lease` object (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonLease {
    ttl_ms: Option<u64>,
    window_ms: Option<u64>,
    claim_ms: Option<u64>,
    kill_grace_ms: Option<u64>,
}

/// The wire shape. Fields without `Option` or `default` are required;
/// unknown fields are ignored (codev adds fields over time, and an older
/// shellper must still start).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonConfig {
    command: String,
    args: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    cols: u16,
    rows: u16,
    socket_path: PathBuf,
    replay_buffer_lines: Option<usize>,
    replay_buffer_bytes: Option<usize>,
    lease: Option<JsonLease>,
    handshake_timeout_ms: Option<u64>,
    write_stall_ms: Option<u64>,
    cgroup: Option<PathBuf>,
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_millis)
}

fn nonzero(v: u16, default: u16) -> u16 {
    if v == 0 { default } else { v }
}

/// Clamps a connection timeout to [`TIMEOUT_BOUNDS`].
pub fn clamp_timeout(d: Duration) -> Duration {
    d.clamp(TIMEOUT_BOUNDS.0, TIMEOUT_BOUNDS.1)
}

/// A REPLAY frame larger than the peer's DATA/REPLAY limit would kill the
/// connection it is sent on (codev #1198), so the buffer never holds more.
pub fn clamp_replay_bytes(v: Option<usize>) -> usize {
    v.unwrap_or(DEFAULT_REPLAY_BYTES)
        .min(MAX_DATA_PAYLOAD as usize)
}

/// Parses and validates `CONFIG_JSON`. `leased` is whether a token comes
/// with it whatever the config says (the stdin form); otherwise a `lease`
/// object selects leased mode.
pub fn parse_config(json: &str, leased: bool) -> Result<SpawnConfig, ParseError> {
    let j: JsonConfig = serde_json::from_str(json)
        .map_err(|e| ParseError::Usage(format!("invalid JSON config: {e}")))?;
    if j.command.is_empty() {
        return Err(ParseError::Usage("JSON config: `command` is empty".into()));
    }
    if j.socket_path.as_os_str().is_empty() {
        return Err(ParseError::Usage(
            "JSON config: `socketPath` is empty".into(),
        ));
    }
    if j.cgroup.as_ref().is_some_and(|c| !c.is_absolute()) {
        return Err(ParseError::Usage(
            "JSON config: `cgroup` must be an absolute path".into(),
        ));
    }
    let leased = leased || j.lease.is_some();
    let l = j.lease.unwrap_or_default();
    let lease = LeaseConfig::new(
        ms(l.ttl_ms, DEFAULT_TTL),
        ms(l.window_ms, DEFAULT_WINDOW),
        ms(l.claim_ms, DEFAULT_CLAIM),
        ms(l.kill_grace_ms, DEFAULT_KILL_GRACE),
    )?;
    Ok(SpawnConfig {
        command: j.command,
        args: j.args,
        cwd: j.cwd,
        env: Some(j.env),
        cols: nonzero(j.cols, DEFAULT_COLS),
        rows: nonzero(j.rows, DEFAULT_ROWS),
        socket_path: j.socket_path,
        replay_lines: j.replay_buffer_lines.unwrap_or(DEFAULT_REPLAY_LINES),
        replay_bytes: clamp_replay_bytes(j.replay_buffer_bytes),
        lease,
        leased,
        handshake_timeout: clamp_timeout(ms(j.handshake_timeout_ms, DEFAULT_HANDSHAKE_TIMEOUT)),
        write_stall: clamp_timeout(ms(j.write_stall_ms, DEFAULT_WRITE_STALL)),
        cgroup: j.cgroup,
    })
}

/// The token: 64 hexadecimal digits (white space around them is
/// forgiven). A malformed token is a token error (exit 3).
pub fn parse_token(line: &[u8]) -> Result<Token, ParseError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| ParseError::Token("the token is not UTF-8".into()))?;
    Token::from_hex(text).map_err(|e| ParseError::Token(e.to_string()))
}

/// Parses what a Tower wrote on stdin in the config-on-stdin form: the
/// token line, the config line, then EOF. Both lines end with `\n`;
/// nothing may follow the config line, not even an empty line. The config
/// is leased whether or not it has a `lease` object. `input` may be one
/// byte longer than [`MAX_STDIN_CONFIG`] (so "too large" can be told).
pub fn parse_stdin(input: &[u8]) -> Result<(Token, SpawnConfig), ParseError> {
    if input.len() > MAX_STDIN_CONFIG {
        return Err(ParseError::Usage(format!(
            "stdin config is larger than {MAX_STDIN_CONFIG} bytes"
        )));
    }
    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
        return Err(ParseError::Usage(
            "stdin config: expected a token line and a config line".into(),
        ));
    };
    let (token_line, rest) = (&input[..nl], &input[nl + 1..]);
    let token = parse_token(token_line)?;
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return Err(ParseError::Usage(
            "stdin config: the config line is missing or not terminated by a newline".into(),
        ));
    };
    if end + 1 != rest.len() {
        return Err(ParseError::Usage(format!(
            "stdin config: {} unexpected bytes after the config line",
            rest.len() - end - 1
        )));
    }
    let json = std::str::from_utf8(&rest[..end])
        .map_err(|_| ParseError::Usage("stdin config: the config line is not UTF-8".into()))?;
    Ok((token, parse_config(json, true)?))
}

#[cfg(test)]
mod tests {
    //! One test per rule of SPEC.md §3 (the rule is the test's name).
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const HEX: &str = "abababababababababababababababababababababababababababababababab";
    const FULL: &str = r#"{"command":"sh","args":["-l"],"cwd":"/tmp","env":{"K":"v"},"cols":100,"rows":30,"socketPath":"/s/sh-1.sock"}"#;

    /// `FULL` with `field` replaced by `value` (or removed when `None`).
    fn with(field: &str, value: Option<serde_json::Value>) -> String {
        let mut v: serde_json::Value = serde_json::from_str(FULL).expect("FULL");
        let o = v.as_object_mut().expect("object");
        match value {
            Some(x) => o.insert(field.into(), x),
            None => o.remove(field),
        };
        v.to_string()
    }

    fn usage(r: Result<SpawnConfig, ParseError>) -> String {
        let e = r.expect_err("must be refused");
        assert_eq!(e.exit_code(), exit::USAGE, "{e}");
        e.to_string()
    }

    fn stdin(input: &str) -> Result<(Token, SpawnConfig), ParseError> {
        parse_stdin(input.as_bytes())
    }

    #[test]
    fn the_last_argument_selects_the_form_and_anything_before_it_is_ignored() {
        assert_eq!(form(&args(&["--config-stdin"])), Form::ConfigStdin);
        assert_eq!(form(&args(&["x.js", "--config-stdin"])), Form::ConfigStdin);
        assert_eq!(form(&args(&["x.js", "{}"])), Form::ConfigArgv("{}"));
        assert_eq!(
            form(&args(&["--config-stdin", "{}"])),
            Form::ConfigArgv("{}")
        );
        // Not last: not the stdin form.
        assert_eq!(form(&args(&["--config-stdin", "x"])), Form::Other);
        assert_eq!(form(&args(&[])), Form::Other);
    }

    #[test]
    fn behind_a_double_dash_the_arguments_are_a_command() {
        assert_eq!(form(&args(&["--", "--config-stdin"])), Form::Other);
        assert_eq!(form(&args(&["--socket", "s", "--", "{}"])), Form::Other);
    }

    #[test]
    fn the_config_fields_are_read_as_codev_sends_them() {
        let c = parse_config(FULL, false).expect("valid");
        assert_eq!(c.command, "sh");
        assert_eq!(c.args, ["-l"]);
        assert_eq!(c.cwd, PathBuf::from("/tmp"));
        let env = c.env.as_ref().expect("CONFIG_JSON has an environment");
        assert_eq!(env.get("K").map(String::as_str), Some("v"));
        assert_eq!((c.cols, c.rows), (100, 30));
        assert_eq!(c.socket_path, PathBuf::from("/s/sh-1.sock"));
        assert_eq!(c.replay_lines, DEFAULT_REPLAY_LINES);
        assert_eq!(c.replay_bytes, DEFAULT_REPLAY_BYTES);
        assert_eq!(c.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(c.write_stall, DEFAULT_WRITE_STALL);
    }

    #[test]
    fn every_field_not_marked_optional_is_required() {
        for field in [
            "command",
            "args",
            "cwd",
            "env",
            "cols",
            "rows",
            "socketPath",
        ] {
            let msg = usage(parse_config(&with(field, None), false));
            assert!(msg.contains(field), "{field}: {msg}");
            let msg = usage(parse_config(
                &with(field, Some(serde_json::Value::Null)),
                false,
            ));
            assert!(msg.contains("invalid"), "{field} null: {msg}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let c = parse_config(&with("futureField", Some(serde_json::json!(true))), false);
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn the_command_and_the_socket_path_are_not_empty() {
        let msg = usage(parse_config(&with("command", Some("".into())), false));
        assert!(msg.contains("command"), "{msg}");
        let msg = usage(parse_config(&with("socketPath", Some("".into())), false));
        assert!(msg.contains("socketPath"), "{msg}");
    }

    #[test]
    fn the_config_is_one_json_object_and_nothing_else() {
        usage(parse_config(&format!("{FULL} x"), false));
        usage(parse_config("{", false));
        usage(parse_config("[]", false));
    }

    #[test]
    fn a_zero_terminal_size_means_the_default() {
        let c = parse_config(&with("cols", Some(0.into())), false).expect("valid");
        assert_eq!(c.cols, DEFAULT_COLS);
        let c = parse_config(&with("rows", Some(0.into())), false).expect("valid");
        assert_eq!(c.rows, DEFAULT_ROWS);
    }

    #[test]
    fn the_replay_caps_are_optional_and_bytes_are_held_below_the_frame_limit() {
        let c = parse_config(&with("replayBufferLines", Some(5.into())), false).expect("valid");
        assert_eq!(c.replay_lines, 5);
        let c = parse_config(&with("replayBufferBytes", Some(999_999_999.into())), false)
            .expect("valid");
        assert_eq!(c.replay_bytes, MAX_DATA_PAYLOAD as usize);
    }

    #[test]
    fn connection_timeouts_are_optional_and_bounded() {
        let c = parse_config(&with("handshakeTimeoutMs", Some(800.into())), false).expect("ok");
        assert_eq!(c.handshake_timeout, Duration::from_millis(800));
        let c = parse_config(&with("writeStallMs", Some(1.into())), false).expect("ok");
        assert_eq!(c.write_stall, TIMEOUT_BOUNDS.0);
        let c =
            parse_config(&with("handshakeTimeoutMs", Some(u64::MAX.into())), false).expect("ok");
        assert_eq!(c.handshake_timeout, TIMEOUT_BOUNDS.1);
    }

    #[test]
    fn the_cgroup_is_optional_and_an_absolute_path() {
        assert_eq!(parse_config(FULL, false).expect("valid").cgroup, None);
        let c = parse_config(&with("cgroup", Some("/sys/fs/cgroup/t/sh-1".into())), false)
            .expect("valid");
        assert_eq!(c.cgroup, Some(PathBuf::from("/sys/fs/cgroup/t/sh-1")));
        let msg = usage(parse_config(&with("cgroup", Some("t/sh-1".into())), false));
        assert!(msg.contains("absolute"), "{msg}");
    }

    #[test]
    fn in_argv_a_lease_object_selects_leased_mode_with_defaults_for_missing_fields() {
        let legacy = parse_config(FULL, false).expect("valid");
        assert!(!legacy.leased);
        assert_eq!(legacy.lease, LeaseConfig::default());
        let c = parse_config(&with("lease", Some(serde_json::json!({}))), false).expect("ok");
        assert!(c.leased);
        assert_eq!(c.lease, LeaseConfig::default());
        let lease =
            serde_json::json!({"ttlMs":400,"windowMs":1000,"claimMs":2000,"killGraceMs":300});
        let c = parse_config(&with("lease", Some(lease)), false).expect("ok");
        assert_eq!(c.lease.ttl, Duration::from_millis(400));
        assert_eq!(c.lease.window, Duration::from_secs(1));
        assert_eq!(c.lease.claim, Duration::from_secs(2));
        assert_eq!(c.lease.kill_grace, Duration::from_millis(300));
    }

    #[test]
    fn lease_timing_rules_are_checked_at_start() {
        for bad in [
            serde_json::json!({"ttlMs": 5000, "windowMs": 1000}),
            serde_json::json!({"ttlMs": 10}),
            serde_json::json!({"claimMs": 0}),
            serde_json::json!({"killGraceMs": 600_001}),
            serde_json::json!({"windowMs": 8 * 24 * 3600 * 1000u64}),
        ] {
            let e = parse_config(&with("lease", Some(bad.clone())), false).expect_err("invalid");
            assert!(matches!(e, ParseError::Lease(_)), "{bad}: {e}");
            assert_eq!(e.exit_code(), exit::USAGE);
        }
    }

    #[test]
    fn on_stdin_the_token_line_then_the_config_line_then_eof() {
        let (t, c) = stdin(&format!("{HEX}\n{FULL}\n")).expect("valid");
        assert_eq!(t.to_hex().as_str(), HEX);
        assert_eq!(c.command, "sh");
    }

    #[test]
    fn on_stdin_the_config_is_leased_without_a_lease_object() {
        let (_, c) = stdin(&format!("{HEX}\n{FULL}\n")).expect("valid");
        assert!(c.leased);
        assert_eq!(c.lease, LeaseConfig::default());
    }

    #[test]
    fn on_stdin_nothing_may_follow_the_config_line() {
        for tail in ["\n", "x", "\n\n", " "] {
            let e = stdin(&format!("{HEX}\n{FULL}\n{tail}")).expect_err(tail);
            assert_eq!(e.exit_code(), exit::USAGE, "{tail:?}");
            assert!(e.to_string().contains("after the config line"), "{e}");
        }
    }

    #[test]
    fn on_stdin_a_missing_or_unterminated_config_line_is_refused() {
        for input in [
            format!("{HEX}\n{FULL}"),
            format!("{HEX}\n"),
            HEX.to_string(),
        ] {
            let e = stdin(&input).expect_err(&input);
            assert_eq!(e.exit_code(), exit::USAGE, "{input:?}: {e}");
        }
    }

    #[test]
    fn on_stdin_at_most_4_mib() {
        let big = format!("{HEX}\n{}\n", " ".repeat(MAX_STDIN_CONFIG));
        let e = stdin(&big).expect_err("too large");
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn on_stdin_a_bad_config_is_a_usage_error() {
        let e = stdin(&format!("{HEX}\n{{\n")).expect_err("bad JSON");
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(e.to_string().contains("invalid JSON"), "{e}");
    }

    #[test]
    fn a_malformed_token_exits_3() {
        for line in ["nothex", "abc", &HEX[..63], &format!("{HEX}0")] {
            let e = stdin(&format!("{line}\n{FULL}\n")).expect_err(line);
            assert!(matches!(e, ParseError::Token(_)), "{line}: {e}");
            assert_eq!(e.exit_code(), exit::STARTUP);
        }
        assert!(parse_token(b"\xff").is_err());
        assert!(parse_token(HEX.as_bytes()).is_ok());
    }
}
