//! Start-up configuration: codev's JSON invocation and the friendly flags.
//!
//! Two invocations are accepted (BRIEF §4):
//!
//! * **codev**: the *last* argument is a JSON object
//!   `{command, args, cwd, env, cols, rows, socketPath, replayBufferLines?,
//!   replayBufferBytes?, lease?}`; anything before it is ignored (codev passes
//!   a script path there). A `lease` object (`{ttlMs, windowMs, claimMs,
//!   killGraceMs}`, every field optional) selects leased mode: the token is
//!   the first line of stdin.
//! * **config on stdin** (a Tower of ours): `shellper --config-stdin`. Line
//!   1 of stdin is the token, line 2 the whole JSON config (the codev object
//!   plus `lease`), then EOF: argv carries neither the environment (world
//!   readable in `/proc/PID/cmdline`, and one argument is capped at
//!   128 KiB) nor anything secret. Always leased. See [`parse_stdin_config`].
//! * **flags**: `shellper --socket PATH [--ttl DUR] [--window DUR] [--claim
//!   DUR] [--kill-grace DUR] [--token-stdin] [--cols N --rows N --cwd DIR] --
//!   CMD ARGS…`. Leased only with `--token-stdin`, legacy otherwise.
//!
//! Parsing is pure (no IO, no environment lookups beyond the defaults the
//! caller passes in) so every rule is unit-tested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shellper_protocol::frame::MAX_DATA_PAYLOAD;
use shellper_protocol::lease::{DEFAULT_CLAIM, DEFAULT_KILL_GRACE, DEFAULT_TTL, DEFAULT_WINDOW};
use shellper_protocol::{LeaseConfig, Token};

use crate::error::{Error, Result};

/// codev's default replay depth in lines.
pub const DEFAULT_REPLAY_LINES: usize = 10_000;
/// codev's default replay ceiling in bytes (8 MiB).
pub const DEFAULT_REPLAY_BYTES: usize = 8 * 1024 * 1024;
/// How long a new connection may take to send HELLO.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default terminal size when none is given.
pub const DEFAULT_COLS: u16 = 80;
/// Default terminal size when none is given.
pub const DEFAULT_ROWS: u16 = 24;

/// Everything a shellper needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The child's *whole* environment (codev semantics: node-pty replaces
    /// the environment). `None` = inherit the shellper's environment.
    pub env: Option<BTreeMap<String, String>>,
    pub cols: u16,
    pub rows: u16,
    pub socket_path: PathBuf,
    pub replay_lines: usize,
    /// Clamped to the largest REPLAY frame a peer accepts.
    pub replay_bytes: usize,
    pub lease: LeaseConfig,
    /// `true`: a token is read from stdin and ACQUIRE is required (leased
    /// mode). `false`: legacy mode, a connected `tower` client is the holder.
    pub leased: bool,
    pub handshake_timeout: Duration,
    /// A client that accepts no bytes for this long is disconnected.
    pub write_stall: Duration,
    /// The session's cgroup v2 directory (SPEC.md §9.1): the PTY child moves
    /// into it before it executes the command, and the kill ladder kills
    /// it. `None`: the process-tree ladder.
    pub cgroup: Option<PathBuf>,
}

impl Config {
    /// The log file beside the socket: `X.sock` → `X.log`, otherwise the
    /// socket path with `.log` appended (CONVENTIONS.md).
    pub fn log_path(&self) -> PathBuf {
        log_path_for(&self.socket_path)
    }
}

/// `X.sock` → `X.log`; any other name gets `.log` appended.
pub fn log_path_for(socket: &Path) -> PathBuf {
    match socket.extension() {
        Some(ext) if ext == "sock" => socket.with_extension("log"),
        _ => {
            let mut s = socket.as_os_str().to_owned();
            s.push(".log");
            PathBuf::from(s)
        }
    }
}

/// The lease object of codev's JSON config (our extension).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonLease {
    ttl_ms: Option<u64>,
    window_ms: Option<u64>,
    claim_ms: Option<u64>,
    kill_grace_ms: Option<u64>,
}

/// codev's JSON config. Unknown fields are ignored: codev adds fields over
/// time and an older shellper must still start.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonConfig {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<PathBuf>,
    env: Option<BTreeMap<String, String>>,
    cols: Option<u16>,
    rows: Option<u16>,
    socket_path: PathBuf,
    replay_buffer_lines: Option<usize>,
    replay_buffer_bytes: Option<usize>,
    lease: Option<JsonLease>,
    /// Our extension for tests: how long a client may take to say HELLO.
    handshake_timeout_ms: Option<u64>,
    /// Our extension for tests: the write stall limit (SPEC §7).
    write_stall_ms: Option<u64>,
    /// Our extension: the session's cgroup (SPEC §9.1).
    cgroup: Option<PathBuf>,
}

/// Examples and exit codes, shown by `shellper --help`.
const AFTER_HELP: &str = "\
Examples:
  # A shell that survives its terminal, in legacy mode: a `tower` client must
  # connect within 60 s (--claim), and 10 minutes (--window) after the last one
  # leaves, the whole tree dies.
  shellper --socket /tmp/s/demo.sock -- bash -l &

  # Leased: the token is the first line of stdin; no renewal for 6 s starts a
  # 30 s window, after which the whole tree is killed.
  echo \"$TOKEN_HEX\" | shellper --socket /tmp/s/a.sock --token-stdin --ttl 6s --window 30s -- make test &

  # A Tower of ours: token line, then the JSON config line on stdin (nothing in argv).
  printf '%s\\n%s\\n' \"$TOKEN_HEX\" \"$CONFIG_JSON\" | shellper --config-stdin &

  # codev's invocation (a Tower spawning it): the JSON config is the last argument.
  shellper ignored.js '{\"command\":\"bash\",\"args\":[],\"cwd\":\"/tmp\",\"env\":{},\"cols\":80,\"rows\":24,\"socketPath\":\"/tmp/s/b.sock\"}'

On start it prints {\"pid\":N,\"startTime\":MS} on stdout, then logs to the socket path with
.log instead of .sock. The protocol is in SPEC.md.

Environment (codev's JSON invocation without a lease object only):
  SHELLPER_LEGACY_WINDOW  reattach window after the Tower disconnects (default 10m)
  SHELLPER_LEGACY_CLAIM   claim deadline for the first Tower connection (default 60s)

Exit codes:
  0   terminated on request (RELEASE Terminate) or by SIGTERM/SIGHUP/SIGINT; tree gone
  2   usage or configuration error (nothing started)
  3   start-up failure (socket, PTY, token)
  10  claim deadline passed with no holder
  11  reattach window expired
  12  reserved (earlier versions: child exited while unheld; never produced now)
  13  the kill ladder left survivors (a bug: reported loudly)";

/// The friendly flags' help (`shellper --help`), followed by [`AFTER_HELP`].
const USAGE: &str = "\
Leased, self-terminating PTY shellper

Runs CMD on a PTY behind a Unix socket. With --token-stdin the shellper is leased: it kills
its whole process tree when no holder renews the lease within the reattach window. codev's
invocation (last argument = JSON config) is accepted too.

Usage: shellper --socket <SOCKET> [OPTIONS] -- <COMMAND>...

Arguments:
  <COMMAND>...  The command and its arguments

Options:
      --socket <SOCKET>        Socket path (its directory is created with mode 0700)
      --ttl <TTL>              Lease time-to-live between renewals (humantime: 500ms, 6s)
      --window <WINDOW>        Reattach window after a lapse
      --claim <CLAIM>          Claim deadline: how long the shellper waits for its first holder
      --kill-grace <GRACE>     Grace between SIGTERM and SIGKILL in the kill ladder
      --token-stdin            Read the lease token (64 hex digits) from the first line of
                               stdin (leased mode). Without it the shellper runs in legacy mode
      --cols <COLS>            Terminal columns
      --rows <ROWS>            Terminal rows
      --cwd <CWD>              Working directory of the child (default: the current directory)
      --replay-lines <N>       Replay buffer depth in lines
      --replay-bytes <N>       Replay buffer ceiling in bytes
      --handshake-timeout <D>  How long a client may take to send HELLO
      --config-stdin           Token line and JSON config line on stdin (a Tower of ours)
  -h, --help                   Print help
  -V, --version                Print version
";

/// The friendly command line, as parsed by [`parse_flags`].
#[derive(Debug, Default)]
struct Cli {
    socket: Option<PathBuf>,
    ttl: Option<Duration>,
    window: Option<Duration>,
    claim: Option<Duration>,
    kill_grace: Option<Duration>,
    token_stdin: bool,
    cols: Option<u16>,
    rows: Option<u16>,
    cwd: Option<PathBuf>,
    replay_lines: Option<usize>,
    replay_bytes: Option<usize>,
    handshake_timeout: Option<Duration>,
    command: Vec<String>,
}

/// Parses the friendly flags by hand: a dozen long options do not need an
/// argument-parsing library, and not linking one keeps the binary, which
/// every idle shellper maps whole, about 0.2 MiB smaller (BENCHMARKS.md).
/// Accepts `--flag value` and `--flag=value`; each flag at most once; the
/// command after `--` (required).
fn parse_flags(args: &[String]) -> Result<std::result::Result<Cli, String>> {
    fn set<T>(slot: &mut Option<T>, flag: &str, v: T) -> Result<()> {
        if slot.replace(v).is_some() {
            return Err(usage(format!("{flag} cannot be used more than once")));
        }
        Ok(())
    }
    fn dur(flag: &str, v: &str) -> Result<Duration> {
        humantime::parse_duration(v)
            .map_err(|e| usage(format!("invalid value {v:?} for {flag}: {e}")))
    }
    fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        v.parse()
            .map_err(|e| usage(format!("invalid value {v:?} for {flag}: {e}")))
    }
    let mut cli = Cli::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        match flag {
            "--" => {
                cli.command = it.by_ref().cloned().collect();
                break;
            }
            "-h" | "--help" => return Ok(Err(format!("{USAGE}\n{AFTER_HELP}\n"))),
            "-V" | "--version" => {
                return Ok(Err(format!("shellper {}\n", env!("CARGO_PKG_VERSION"))));
            }
            "--token-stdin" if inline.is_none() => {
                if std::mem::replace(&mut cli.token_stdin, true) {
                    return Err(usage("--token-stdin cannot be used more than once".into()));
                }
                continue;
            }
            _ => {}
        }
        let known = [
            "--socket",
            "--ttl",
            "--window",
            "--claim",
            "--kill-grace",
            "--cols",
            "--rows",
            "--cwd",
            "--replay-lines",
            "--replay-bytes",
            "--handshake-timeout",
        ];
        if !known.contains(&flag) {
            return Err(usage(format!("unexpected argument {arg:?}")));
        }
        let Some(v) = inline.or_else(|| it.next().cloned()) else {
            return Err(usage(format!("a value is required for {flag}")));
        };
        match flag {
            "--socket" => set(&mut cli.socket, flag, PathBuf::from(v))?,
            "--ttl" => set(&mut cli.ttl, flag, dur(flag, &v)?)?,
            "--window" => set(&mut cli.window, flag, dur(flag, &v)?)?,
            "--claim" => set(&mut cli.claim, flag, dur(flag, &v)?)?,
            "--kill-grace" => set(&mut cli.kill_grace, flag, dur(flag, &v)?)?,
            "--cols" => set(&mut cli.cols, flag, num(flag, &v)?)?,
            "--rows" => set(&mut cli.rows, flag, num(flag, &v)?)?,
            "--cwd" => set(&mut cli.cwd, flag, PathBuf::from(v))?,
            "--replay-lines" => set(&mut cli.replay_lines, flag, num(flag, &v)?)?,
            "--replay-bytes" => set(&mut cli.replay_bytes, flag, num(flag, &v)?)?,
            _ => set(&mut cli.handshake_timeout, flag, dur(flag, &v)?)?,
        }
    }
    if cli.socket.is_none() {
        return Err(usage(
            "the following required argument was not provided: --socket <SOCKET>".into(),
        ));
    }
    if cli.command.is_empty() {
        return Err(usage(
            "the following required argument was not provided: -- <COMMAND>...".into(),
        ));
    }
    Ok(Ok(cli))
}

fn usage(msg: String) -> Error {
    Error::Usage(format!(
        "{msg}\n\nUsage: shellper --socket <SOCKET> [OPTIONS] -- <COMMAND>...\n\nFor more information, try '--help'."
    ))
}

/// What parsing the command line produced.
#[derive(Debug)]
pub enum Parsed {
    /// Run with this configuration.
    Run(Box<Config>),
    /// `--help` or `--version`: print this text to stdout and exit 0.
    Print(String),
    /// `--config-stdin`: token and config come on stdin
    /// ([`parse_stdin_config`]).
    ConfigStdin,
}

/// The flag that selects the config-on-stdin form.
pub const CONFIG_STDIN_FLAG: &str = "--config-stdin";
/// Most bytes accepted on stdin in the `--config-stdin` form (token line
/// plus config line); more is a usage error.
pub const MAX_STDIN_CONFIG: usize = 4 * 1024 * 1024;

/// Parses what a Tower wrote on stdin in the `--config-stdin` form: the
/// token line, the JSON config line, then nothing (a final newline is
/// required after the config; no byte may follow it). The shellper is
/// leased whether or not the config has a `lease` object (defaults then).
/// A malformed token is a token error (exit 3, as in the argv form);
/// everything else is a usage error (exit 2).
pub fn parse_stdin_config(input: &[u8], cwd: &Path) -> Result<(Token, Config)> {
    if input.len() > MAX_STDIN_CONFIG {
        return Err(Error::Usage(format!(
            "stdin config is larger than {MAX_STDIN_CONFIG} bytes"
        )));
    }
    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
        return Err(Error::Usage(
            "stdin config: expected a token line and a config line".into(),
        ));
    };
    let (token_line, rest) = (&input[..nl], &input[nl + 1..]);
    let token_text =
        std::str::from_utf8(token_line).map_err(|_| Error::Token("token is not UTF-8".into()))?;
    let token = Token::from_hex(token_text).map_err(|e| Error::Token(e.to_string()))?;
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return Err(Error::Usage(
            "stdin config: the config line is missing or not terminated by a newline".into(),
        ));
    };
    if end + 1 != rest.len() {
        return Err(Error::Usage(format!(
            "stdin config: {} unexpected bytes after the config line",
            rest.len() - end - 1
        )));
    }
    let json = std::str::from_utf8(&rest[..end])
        .map_err(|_| Error::Usage("stdin config: the config line is not UTF-8".into()))?;
    let mut cfg = parse_json(json, cwd)?;
    cfg.leased = true;
    Ok((token, cfg))
}

/// Whether `argv` (without the program name) is codev's invocation: its
/// last argument is a JSON object and no `--` separator precedes it (with
/// `--`, a `{` argument belongs to the command).
pub fn is_codev_invocation(args: &[String]) -> bool {
    match args.split_last() {
        Some((last, before)) => {
            last.trim_start().starts_with('{') && !before.iter().any(|a| a == "--")
        }
        None => false,
    }
}

/// Parses the arguments after the program name. `cwd` is the default
/// working directory for the flags form.
pub fn parse_args(args: &[String], cwd: &Path) -> Result<Parsed> {
    if args.last().is_some_and(|a| a == CONFIG_STDIN_FLAG) && !args.iter().any(|a| a == "--") {
        return Ok(Parsed::ConfigStdin);
    }
    if is_codev_invocation(args) {
        // Invariant: is_codev_invocation returned true, so args is non-empty.
        let json = args.last().map(String::as_str).unwrap_or_default();
        return parse_json(json, cwd).map(|c| Parsed::Run(Box::new(c)));
    }
    let cli = match parse_flags(args)? {
        Ok(cli) => cli,
        Err(text) => return Ok(Parsed::Print(text)),
    };
    from_cli(cli, cwd).map(|c| Parsed::Run(Box::new(c)))
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_millis)
}

/// Parses codev's JSON config (plus our `lease` object).
pub fn parse_json(json: &str, cwd: &Path) -> Result<Config> {
    let j: JsonConfig = serde_json::from_str(json)
        .map_err(|e| Error::Usage(format!("invalid JSON config: {e}")))?;
    if j.command.is_empty() {
        return Err(Error::Usage("JSON config: `command` is empty".into()));
    }
    if j.socket_path.as_os_str().is_empty() {
        return Err(Error::Usage("JSON config: `socketPath` is empty".into()));
    }
    if j.cgroup.as_ref().is_some_and(|c| !c.is_absolute()) {
        return Err(Error::Usage(
            "JSON config: `cgroup` must be an absolute path".into(),
        ));
    }
    let leased = j.lease.is_some();
    let l = j.lease.unwrap_or_default();
    let lease = LeaseConfig::new(
        ms(l.ttl_ms, DEFAULT_TTL),
        ms(l.window_ms, DEFAULT_WINDOW),
        ms(l.claim_ms, DEFAULT_CLAIM),
        ms(l.kill_grace_ms, DEFAULT_KILL_GRACE),
    )?;
    Ok(Config {
        command: j.command,
        args: j.args,
        cwd: j.cwd.unwrap_or_else(|| cwd.to_path_buf()),
        env: j.env,
        cols: nonzero(j.cols, DEFAULT_COLS),
        rows: nonzero(j.rows, DEFAULT_ROWS),
        socket_path: j.socket_path,
        replay_lines: j.replay_buffer_lines.unwrap_or(DEFAULT_REPLAY_LINES),
        replay_bytes: clamp_replay_bytes(j.replay_buffer_bytes),
        lease,
        leased,
        handshake_timeout: ms(j.handshake_timeout_ms, DEFAULT_HANDSHAKE_TIMEOUT)
            .clamp(Duration::from_millis(10), Duration::from_secs(600)),
        write_stall: ms(
            j.write_stall_ms,
            shellper_leased::server::DEFAULT_WRITE_STALL,
        )
        .clamp(Duration::from_millis(10), Duration::from_secs(600)),
        cgroup: j.cgroup,
    })
}

/// Environment variable that sets the reattach window of a legacy
/// shellper (codev's JSON invocation without a `lease` object).
pub const LEGACY_WINDOW_ENV: &str = "SHELLPER_LEGACY_WINDOW";
/// Environment variable that sets the claim deadline of a legacy shellper.
pub const LEGACY_CLAIM_ENV: &str = "SHELLPER_LEGACY_CLAIM";

/// Applies [`LEGACY_WINDOW_ENV`] and [`LEGACY_CLAIM_ENV`] (humantime:
/// `30m`, `2h`, `1day`; at most 7 days) to a legacy configuration. An
/// unmodified codev Tower cannot pass a `lease` object, but its shellpers
/// inherit its environment, so this is how an operator gives codev users a
/// window longer (or shorter) than the default without touching codev.
/// Leased configurations are left alone (their Tower says what it wants).
/// `get` looks a variable up (the process environment in the binary; a map
/// in tests). An unparsable value is a configuration error (exit 2): a
/// typo must not silently fall back to ten minutes.
pub fn apply_legacy_env(cfg: &mut Config, get: impl Fn(&str) -> Option<String>) -> Result<()> {
    if cfg.leased {
        return Ok(());
    }
    let read = |name: &str| -> Result<Option<Duration>> {
        match get(name).map(|v| v.trim().to_string()) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => humantime::parse_duration(&v)
                .map(Some)
                .map_err(|e| Error::Usage(format!("{name}={v:?}: {e} (expected e.g. 30m, 2h)"))),
        }
    };
    let window = read(LEGACY_WINDOW_ENV)?;
    let claim = read(LEGACY_CLAIM_ENV)?;
    if window.is_none() && claim.is_none() {
        return Ok(());
    }
    let window = window.unwrap_or(cfg.lease.window);
    // A legacy holder never renews, so the TTL only has to satisfy the
    // rule window >= TTL.
    let ttl = cfg.lease.ttl.min(window);
    cfg.lease = LeaseConfig::new(
        ttl,
        window,
        claim.unwrap_or(cfg.lease.claim),
        cfg.lease.kill_grace,
    )?;
    Ok(())
}

fn nonzero(v: Option<u16>, default: u16) -> u16 {
    match v {
        Some(0) | None => default,
        Some(n) => n,
    }
}

/// A REPLAY frame larger than the peer's DATA/REPLAY limit would kill the
/// connection it is sent on (codev #1198), so the buffer never holds more.
fn clamp_replay_bytes(v: Option<usize>) -> usize {
    v.unwrap_or(DEFAULT_REPLAY_BYTES)
        .min(MAX_DATA_PAYLOAD as usize)
}

fn from_cli(cli: Cli, cwd: &Path) -> Result<Config> {
    let mut command = cli.command.into_iter();
    let (Some(program), Some(socket)) = (command.next(), cli.socket) else {
        return Err(Error::Usage(
            "missing --socket or command after `--`".into(),
        ));
    };
    let lease = LeaseConfig::new(
        cli.ttl.unwrap_or(DEFAULT_TTL),
        cli.window.unwrap_or(DEFAULT_WINDOW),
        cli.claim.unwrap_or(DEFAULT_CLAIM),
        cli.kill_grace.unwrap_or(DEFAULT_KILL_GRACE),
    )?;
    Ok(Config {
        command: program,
        args: command.collect(),
        cwd: cli.cwd.unwrap_or_else(|| cwd.to_path_buf()),
        env: None,
        cols: nonzero(cli.cols, DEFAULT_COLS),
        rows: nonzero(cli.rows, DEFAULT_ROWS),
        socket_path: socket,
        replay_lines: cli.replay_lines.unwrap_or(DEFAULT_REPLAY_LINES),
        replay_bytes: clamp_replay_bytes(cli.replay_bytes),
        lease,
        leased: cli.token_stdin,
        handshake_timeout: cli
            .handshake_timeout
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT)
            .clamp(Duration::from_millis(10), Duration::from_secs(600)),
        write_stall: shellper_leased::server::DEFAULT_WRITE_STALL,
        cgroup: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_json() -> Config {
        parse_json(
            r#"{"command":"sh","socketPath":"/tmp/x.sock"}"#,
            Path::new("/"),
        )
        .expect("parse")
    }

    #[test]
    fn legacy_window_and_claim_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut c = legacy_json();
        apply_legacy_env(&mut c, env(&[])).expect("no vars");
        assert_eq!(
            (c.lease.window, c.lease.claim),
            (DEFAULT_WINDOW, DEFAULT_CLAIM)
        );

        let mut c = legacy_json();
        apply_legacy_env(
            &mut c,
            env(&[(LEGACY_WINDOW_ENV, "2h"), (LEGACY_CLAIM_ENV, "5m")]),
        )
        .expect("valid");
        assert_eq!(c.lease.window, Duration::from_secs(7200));
        assert_eq!(c.lease.claim, Duration::from_secs(300));

        // Shorter than the default TTL: the TTL follows (never used in legacy).
        let mut c = legacy_json();
        apply_legacy_env(&mut c, env(&[(LEGACY_WINDOW_ENV, "1s")])).expect("short");
        assert_eq!(c.lease.window, Duration::from_secs(1));
        assert!(c.lease.ttl <= c.lease.window);

        let mut c = legacy_json();
        let e =
            apply_legacy_env(&mut c, env(&[(LEGACY_WINDOW_ENV, "ten minutes")])).expect_err("typo");
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains(LEGACY_WINDOW_ENV), "{e}");
        let mut c = legacy_json();
        let e = apply_legacy_env(&mut c, env(&[(LEGACY_WINDOW_ENV, "30days")]))
            .expect_err("above 7 days");
        assert_eq!(e.exit_code(), 2);

        // Leased configurations ignore the variables.
        let mut c = parse_json(
            r#"{"command":"sh","socketPath":"/tmp/x.sock","lease":{}}"#,
            Path::new("/"),
        )
        .expect("parse");
        apply_legacy_env(&mut c, env(&[(LEGACY_WINDOW_ENV, "2h")])).expect("ignored");
        assert_eq!(c.lease.window, DEFAULT_WINDOW);
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn run(a: &[&str]) -> Result<Config> {
        match parse_args(&args(a), Path::new("/start"))? {
            Parsed::Run(c) => Ok(*c),
            Parsed::Print(p) => panic!("unexpected print: {p}"),
            Parsed::ConfigStdin => panic!("unexpected --config-stdin"),
        }
    }

    #[test]
    fn codev_invocation_ignores_leading_args_and_is_legacy_without_lease() {
        let c = run(&[
            "/path/to/shellper-main.js",
            r#"{"command":"/bin/bash","args":["-l"],"cwd":"/tmp","env":{"A":"1"},"cols":100,"rows":30,"socketPath":"/run/x/sh-1.sock","futureField":true}"#,
        ])
        .expect("parses");
        assert_eq!(c.command, "/bin/bash");
        assert_eq!(c.args, vec!["-l"]);
        assert_eq!(c.cwd, PathBuf::from("/tmp"));
        assert_eq!(c.env.as_ref().map(|e| e.len()), Some(1));
        assert_eq!((c.cols, c.rows), (100, 30));
        assert!(!c.leased);
        assert_eq!(c.replay_lines, DEFAULT_REPLAY_LINES);
        assert_eq!(c.replay_bytes, DEFAULT_REPLAY_BYTES);
        assert_eq!(c.log_path(), PathBuf::from("/run/x/sh-1.log"));
    }

    #[test]
    fn codev_lease_object_selects_leased_mode_and_is_validated() {
        let c = run(&[
            r#"{"command":"sh","socketPath":"/s","lease":{"ttlMs":400,"windowMs":1000,"claimMs":2000,"killGraceMs":300},"replayBufferLines":5,"replayBufferBytes":999999999}"#,
        ])
        .expect("parses");
        assert!(c.leased);
        assert_eq!(c.lease.ttl, Duration::from_millis(400));
        assert_eq!(c.lease.window, Duration::from_secs(1));
        assert_eq!(c.lease.claim, Duration::from_secs(2));
        assert_eq!(c.lease.kill_grace, Duration::from_millis(300));
        assert_eq!(c.replay_lines, 5);
        assert_eq!(c.replay_bytes, MAX_DATA_PAYLOAD as usize);
        assert_eq!(c.cwd, PathBuf::from("/start"));

        let empty = run(&[r#"{"command":"sh","socketPath":"/s","lease":{}}"#]).expect("parses");
        assert!(empty.leased);
        assert_eq!(empty.lease, LeaseConfig::default());

        let bad =
            run(&[r#"{"command":"sh","socketPath":"/s","lease":{"ttlMs":5000,"windowMs":1000}}"#]);
        assert!(matches!(bad, Err(Error::Lease(_))), "{bad:?}");
        assert_eq!(bad.expect_err("invalid").exit_code(), 2);
    }

    #[test]
    fn bad_json_is_a_usage_error() {
        for j in [
            "{",
            r#"{"command":"sh"}"#,
            r#"{"command":"","socketPath":"/s"}"#,
            r#"{"command":"sh","socketPath":"/s"} x"#,
        ] {
            let e = run(&[j]).expect_err(j);
            assert!(matches!(e, Error::Usage(_)), "{j}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn flags_form_parses_durations_and_command() {
        let c = run(&[
            "--socket",
            "/run/a.sock",
            "--ttl",
            "500ms",
            "--window",
            "2s",
            "--claim",
            "3s",
            "--kill-grace",
            "300ms",
            "--token-stdin",
            "--cols",
            "120",
            "--rows",
            "40",
            "--cwd",
            "/w",
            "--",
            "bash",
            "-c",
            "{echo hi}",
        ])
        .expect("parses");
        assert!(c.leased);
        assert_eq!(c.command, "bash");
        assert_eq!(c.args, vec!["-c", "{echo hi}"]);
        assert_eq!(c.lease.ttl, Duration::from_millis(500));
        assert_eq!(c.lease.window, Duration::from_secs(2));
        assert_eq!((c.cols, c.rows), (120, 40));
        assert_eq!(c.cwd, PathBuf::from("/w"));
        assert_eq!(c.env, None);

        let legacy = run(&["--socket", "/s", "--", "sh"]).expect("parses");
        assert!(!legacy.leased);
        assert_eq!(legacy.cwd, PathBuf::from("/start"));
        assert_eq!(legacy.log_path(), PathBuf::from("/s.log"));
    }

    #[test]
    fn flags_errors_are_usage_errors() {
        for a in [
            &["--", "sh"][..],
            &["--socket", "/s"][..],
            &["--socket", "/s", "--ttl", "soon", "--", "sh"][..],
            &[
                "--socket", "/s", "--ttl", "10s", "--window", "1s", "--", "sh",
            ][..],
            &["--bogus"][..],
        ] {
            let e = run(a).expect_err("must fail");
            assert_eq!(e.exit_code(), 2, "{a:?}: {e}");
        }
        match parse_args(&args(&["--help"]), Path::new("/")).expect("help") {
            Parsed::Print(t) => assert!(t.contains("--socket")),
            Parsed::Run(_) | Parsed::ConfigStdin => panic!("help must print"),
        }
    }

    #[test]
    fn flags_accept_the_equals_form_and_refuse_repeats_and_missing_values() {
        let c = run(&[
            "--socket=/s",
            "--ttl=2s",
            "--window",
            "3s",
            "--",
            "sh",
            "--ttl",
        ])
        .expect("parses");
        assert_eq!(c.socket_path, PathBuf::from("/s"));
        assert_eq!(c.lease.ttl, Duration::from_secs(2));
        assert_eq!(
            c.args,
            vec!["--ttl"],
            "after `--` everything is the command's"
        );
        for a in [
            &["--socket", "/s", "--socket", "/t", "--", "sh"][..],
            &[
                "--socket",
                "/s",
                "--token-stdin",
                "--token-stdin",
                "--",
                "sh",
            ][..],
            &["--socket", "/s", "--cols"][..],
            &["--socket", "/s", "--cols", "wide", "--", "sh"][..],
            &["--socket", "/s", "--token-stdin=yes", "--", "sh"][..],
            &["--socket", "/s", "sh"][..],
        ] {
            let e = run(a).expect_err("must fail");
            assert_eq!(e.exit_code(), 2, "{a:?}: {e}");
        }
        match parse_args(&args(&["-V"]), Path::new("/")).expect("version") {
            Parsed::Print(t) => assert!(t.starts_with("shellper "), "{t}"),
            Parsed::Run(_) | Parsed::ConfigStdin => panic!("version must print"),
        }
    }

    #[test]
    fn config_on_stdin_is_token_line_then_config_line_then_eof() {
        let cwd = Path::new("/start");
        assert!(matches!(
            parse_args(&args(&["--config-stdin"]), cwd),
            Ok(Parsed::ConfigStdin)
        ));
        assert!(matches!(
            parse_args(&args(&["x.js", "--config-stdin"]), cwd),
            Ok(Parsed::ConfigStdin)
        ));
        let hex = "ab".repeat(32);
        let json = r#"{"command":"sh","socketPath":"/s.sock","env":{"K":"v"}}"#;
        let good = format!("{hex}\n{json}\n");
        let (t, c) = parse_stdin_config(good.as_bytes(), cwd).expect("parses");
        assert_eq!(t.to_hex().as_str(), hex);
        assert!(c.leased, "the stdin form is always leased");
        assert_eq!(
            c.env.as_ref().and_then(|e| e.get("K")).map(String::as_str),
            Some("v")
        );

        let usage = |input: String| {
            let e = parse_stdin_config(input.as_bytes(), cwd).expect_err(&input);
            assert_eq!(e.exit_code(), 2, "{input:?}: {e}");
            e.to_string()
        };
        assert!(usage(format!("{hex}\n{json}\nextra")).contains("after the config line"));
        assert!(usage(format!("{hex}\n{json}")).contains("not terminated"));
        assert!(usage(format!("{hex}\n")).contains("missing"));
        assert!(usage(hex.clone()).contains("token line"));
        assert!(usage(format!("{hex}\n{{\n")).contains("invalid JSON"));
        let big = format!("{hex}\n{}\n", " ".repeat(MAX_STDIN_CONFIG));
        assert!(usage(big).contains("larger than"));
        let bad =
            parse_stdin_config(format!("nothex\n{json}\n").as_bytes(), cwd).expect_err("bad token");
        assert!(matches!(bad, Error::Token(_)), "{bad}");
    }

    #[test]
    fn codev_detection() {
        assert!(is_codev_invocation(&args(&["x.js", "{}"])));
        assert!(!is_codev_invocation(&args(&["--socket", "s", "--", "{}"])));
        assert!(!is_codev_invocation(&args(&[])));
    }
}
