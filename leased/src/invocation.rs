//! The spawn handshake of SPEC.md §3, for a leased program started by a Tower.
//!
//! A Tower of ours starts the program as `PROGRAM --config-stdin` and writes
//! the token (64 hex digits) on line 1 of stdin and the JSON config on line
//! 2; codev's form (config as the last argument, token on stdin when the
//! config has a `lease` object) is accepted too. When the lease is served the
//! program prints `{"pid":…,"startTime":…}` on stdout and closes it
//! ([`announce_ready`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shellper_protocol::lease::{
    DEFAULT_CLAIM, DEFAULT_KILL_GRACE, DEFAULT_TTL, DEFAULT_WINDOW, LeaseConfig, Mode,
};
use shellper_protocol::token::Token;

use crate::{Describe, Error, Options};

/// How long the spawner has to write stdin.
pub const STDIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read from stdin (token line plus config line).
pub const MAX_STDIN: usize = 4 * 1024 * 1024;

/// The `lease` object of the config (every field optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseJson {
    pub ttl_ms: Option<u64>,
    pub window_ms: Option<u64>,
    pub claim_ms: Option<u64>,
    pub kill_grace_ms: Option<u64>,
}

/// The config a Tower sends (codev's fields; the PTY ones are ignored here).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub cwd: String,
    /// The worker's whole environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub socket_path: PathBuf,
    pub lease: Option<LeaseJson>,
    pub handshake_timeout_ms: Option<u64>,
    /// A peer that accepts no bytes for this long is disconnected (as the
    /// shellper's `writeStallMs`).
    pub write_stall_ms: Option<u64>,
}

/// What the Tower handed over.
#[derive(Debug)]
pub struct Invocation {
    pub config: Config,
    /// `None` in legacy mode (no `lease` object).
    pub token: Option<Token>,
    pub lease: LeaseConfig,
    /// Wall-clock start (ms since the epoch), for the ready line.
    pub started_at_ms: u64,
}

impl Invocation {
    /// Serving options for this invocation.
    pub fn options(&self) -> Options {
        Options {
            socket: self.config.socket_path.clone(),
            mode: match &self.token {
                Some(t) => Mode::Leased(t.clone()),
                None => Mode::Legacy,
            },
            config: self.lease,
            handshake_timeout: Duration::from_millis(
                self.config
                    .handshake_timeout_ms
                    .unwrap_or(5000)
                    .clamp(10, 600_000),
            ),
            write_stall: Duration::from_millis(
                self.config
                    .write_stall_ms
                    .unwrap_or(30_000)
                    .clamp(10, 600_000),
            ),
            describe: Describe {
                command: self.config.command.clone(),
                args: self.config.args.clone(),
                cwd: self.config.cwd.clone(),
            },
            handle_signals: true,
        }
    }
}

/// Reads stdin up to EOF (bounded in size and time) on a helper thread.
fn read_stdin_all() -> Result<Vec<u8>, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let r = std::io::stdin()
                .lock()
                .take(MAX_STDIN as u64 + 1)
                .read_to_end(&mut buf)
                .map(|_| buf);
            let _ = tx.send(r);
        })
        .map_err(|e| Error::io("spawn stdin reader", e))?;
    match rx.recv_timeout(STDIN_TIMEOUT) {
        Ok(Ok(b)) if b.len() > MAX_STDIN => Err(Error::Config(format!(
            "stdin carries more than {MAX_STDIN} bytes"
        ))),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(Error::Token(format!("reading stdin: {e}"))),
        Err(_) => Err(Error::Token(format!(
            "stdin not closed within {STDIN_TIMEOUT:?}"
        ))),
    }
}

fn parse_token(line: &[u8]) -> Result<Token, Error> {
    let s = std::str::from_utf8(line)
        .map_err(|_| Error::Token("token line is not UTF-8".into()))?
        .trim_end_matches('\r');
    Token::from_hex(s).map_err(|e| Error::Token(e.to_string()))
}

fn duration(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_millis)
}

/// Parses the config JSON (exit code 2 on failure).
pub fn parse_config(json: &str) -> Result<(Config, LeaseConfig), Error> {
    let config: Config =
        serde_json::from_str(json).map_err(|e| Error::Config(format!("config JSON: {e}")))?;
    let l = config.lease.clone().unwrap_or_default();
    let lease = LeaseConfig::new(
        duration(l.ttl_ms, DEFAULT_TTL),
        duration(l.window_ms, DEFAULT_WINDOW),
        duration(l.claim_ms, DEFAULT_CLAIM),
        duration(l.kill_grace_ms, DEFAULT_KILL_GRACE),
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    Ok((config, lease))
}

/// Reads the invocation: `--config-stdin` (token and config on stdin) or the
/// config as the last argument (token on stdin when it has a `lease`
/// object). Also starts a new session (`setsid`), so the program outlives
/// its spawner's terminal and process group, as a shellper does.
pub fn read_from_tower(args: &[String]) -> Result<Invocation, Error> {
    let started_at_ms = crate::now_wall_ms();
    // Touch /proc/self so its ctime (which codev reads as the start time) is now.
    shellper_proctree::touch_proc_self();
    let _ = rustix::process::setsid();
    let (config, lease, token) = if args.iter().any(|a| a == "--config-stdin") {
        let all = read_stdin_all()?;
        let mut lines = all.split(|b| *b == b'\n');
        let token = parse_token(lines.next().unwrap_or_default())?;
        let json = lines
            .next()
            .ok_or_else(|| Error::Config("no config line after the token on stdin".into()))?;
        if lines.any(|l| !l.is_empty()) {
            return Err(Error::Config("bytes after the config line on stdin".into()));
        }
        let json = std::str::from_utf8(json)
            .map_err(|_| Error::Config("config line is not UTF-8".into()))?;
        let (config, lease) = parse_config(json)?;
        (config, lease, Some(token))
    } else {
        let json = args.last().ok_or_else(|| {
            Error::Config("no config: pass --config-stdin or the JSON config".into())
        })?;
        let (config, lease) = parse_config(json)?;
        let token = if config.lease.is_some() {
            let all = read_stdin_all()?;
            let line = all.split(|b| *b == b'\n').next().unwrap_or_default();
            Some(parse_token(line)?)
        } else {
            None
        };
        (config, lease, token)
    };
    Ok(Invocation {
        config,
        token,
        lease,
        started_at_ms,
    })
}

/// Prints the ready line `{"pid":…,"startTime":…}` and closes stdout (the
/// Tower reads exactly one line), and points stdin at /dev/null.
pub fn announce_ready(started_at_ms: u64) -> Result<(), Error> {
    let line = format!(
        "{{\"pid\":{},\"startTime\":{}}}\n",
        std::process::id(),
        started_at_ms
    );
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("writing the ready line", e))?;
    drop(out);
    // Point fds 0 and 1 at /dev/null so no descriptor of the spawner stays
    // open (SPEC.md §3) and the spawner's read sees EOF.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| Error::io("dup2 stdin", e.into()))?;
    rustix::stdio::dup2_stdout(&null).map_err(|e| Error::io("dup2 stdout", e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_codev_fields() {
        let (c, lease) = parse_config(
            r#"{"command":"make","args":["-j8"],"cwd":"/src","env":{"A":"1"},"cols":80,"rows":24,
                "socketPath":"/tmp/s/sh-1.sock","replayBufferLines":10,"lease":{"ttlMs":300}}"#,
        )
        .expect("valid config");
        assert_eq!(c.command, "make");
        assert_eq!(c.args, ["-j8"]);
        assert_eq!(c.socket_path, PathBuf::from("/tmp/s/sh-1.sock"));
        assert_eq!(lease.ttl, Duration::from_millis(300));
        assert_eq!(lease.window, DEFAULT_WINDOW);
        assert_eq!(lease.kill_grace, DEFAULT_KILL_GRACE);
    }

    #[test]
    fn invalid_configs_are_usage_errors() {
        for bad in [
            r#"{"cwd":"/","socketPath":"/tmp/x"}"#,
            r#"{"command":"x","cwd":"/","socketPath":"/tmp/x","lease":{"ttlMs":10}}"#,
            r#"{"command":"x","cwd":"/","socketPath":"/tmp/x","lease":{"ttlMs":5000,"windowMs":1000}}"#,
            "not json",
        ] {
            let e = parse_config(bad).expect_err(bad);
            assert_eq!(e.exit_code(), crate::exit::USAGE, "{bad}: {e}");
        }
    }

    #[test]
    fn token_line_is_64_hex_digits() {
        let hex = "ab".repeat(32);
        assert!(parse_token(hex.as_bytes()).is_ok());
        assert!(parse_token(format!("{hex}\r").as_bytes()).is_ok());
        assert!(parse_token(b"abc").is_err());
    }
}
