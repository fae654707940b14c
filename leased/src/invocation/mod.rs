//! The spawn handshake of SPEC.md §3, for a leased program started by a
//! Tower: [`parse`] (pure: which form, the config, the token; shared with
//! the PTY shellper) and the reading of stdin, bounded in size and time.
//!
//! A Tower of ours starts the program as `PROGRAM --config-stdin` and writes
//! the token (64 hex digits) on line 1 of stdin and the JSON config on line
//! 2; codev's form (config as the last argument, token on stdin when the
//! config has a `lease` object) is accepted too. When the lease is served the
//! program prints `{"pid":…,"startTime":…}` on stdout and closes it
//! ([`announce_ready`]).

pub mod parse;

use std::io::{Read, Write};
use std::time::Duration;

use shellper_protocol::lease::Mode;
use shellper_protocol::token::Token;

pub use parse::{Form, ParseError, SpawnConfig};

use crate::{Describe, Error, Options};

/// How long the spawner has to write stdin (the token line, or the token
/// and config lines and EOF): a spawner that never writes must not leave
/// the process hanging before any deadline exists.
pub const STDIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the Tower handed over.
#[derive(Debug)]
pub struct Invocation {
    pub config: SpawnConfig,
    /// `None` in legacy mode (argv form without a `lease` object).
    pub token: Option<Token>,
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
            config: self.config.lease,
            handshake_timeout: self.config.handshake_timeout,
            write_stall: self.config.write_stall,
            describe: Describe {
                command: self.config.command.clone(),
                args: self.config.args.clone(),
                cwd: self.config.cwd.to_string_lossy().into_owned(),
            },
            handle_signals: true,
        }
    }
}

/// Runs `read` on a helper thread and waits for it at most `timeout`
/// (stdin has no timeout of its own). A read error or the timeout is a
/// token error (exit 3).
fn read_stdin<T: Send + 'static>(
    timeout: Duration,
    what: &'static str,
    read: impl FnOnce(&mut std::io::StdinLock<'static>) -> Result<T, String> + Send + 'static,
) -> Result<T, ParseError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let _ = tx.send(read(&mut std::io::stdin().lock()));
        })
        .map_err(|e| ParseError::Token(format!("cannot start the stdin reader: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(ParseError::Token),
        Err(_) => Err(ParseError::Token(format!(
            "{what} not on stdin within {timeout:?}"
        ))),
    }
}

/// Reads all of stdin up to EOF (the config-on-stdin form), at most
/// `cap + 1` bytes (so [`parse::parse_stdin`] can tell "too large"),
/// within `timeout` for the whole read.
pub fn read_stdin_to_eof(timeout: Duration, cap: usize) -> Result<Vec<u8>, ParseError> {
    read_stdin(timeout, "token and config (closed)", move |stdin| {
        let mut buf = Vec::new();
        let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
        stdin
            .take(limit)
            .read_to_end(&mut buf)
            .map(|_| buf)
            .map_err(|e| format!("reading stdin: {e}"))
    })
}

/// Reads the token line of the argv form: the first line of stdin (byte
/// by byte up to the newline or EOF: nothing after it is consumed, and a
/// hostile stream cannot make us buffer more than
/// [`parse::MAX_TOKEN_LINE`] bytes), within `timeout`.
pub fn read_token_line(timeout: Duration) -> Result<Token, ParseError> {
    let line = read_stdin(timeout, "no token line", |stdin| {
        let mut line = Vec::with_capacity(72);
        let mut byte = [0u8; 1];
        loop {
            match stdin.read(&mut byte) {
                Ok(0) => return Ok(line),
                Ok(_) if byte[0] == b'\n' => return Ok(line),
                Ok(_) if line.len() >= parse::MAX_TOKEN_LINE => {
                    return Err("first line of stdin is too long".into());
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading stdin: {e}")),
            }
        }
    })?;
    parse::parse_token(&line)
}

/// Reads the invocation: `--config-stdin` (token and config on stdin) or the
/// config as the last argument (token on stdin when it has a `lease`
/// object); anything else is a usage error. Also starts a new session
/// (`setsid`), so the program outlives its spawner's terminal and process
/// group, as a shellper does.
pub fn read_from_tower(args: &[String]) -> Result<Invocation, Error> {
    let started_at_ms = crate::now_wall_ms();
    // Touch /proc/self so its ctime (which codev reads as the start time) is now.
    shellper_proctree::touch_proc_self();
    let _ = rustix::process::setsid();
    let (config, token) = match parse::form(args) {
        Form::ConfigStdin => {
            let input = read_stdin_to_eof(STDIN_TIMEOUT, parse::MAX_STDIN_CONFIG)?;
            let (token, config) = parse::parse_stdin(&input)?;
            (config, Some(token))
        }
        Form::ConfigArgv(json) => {
            let config = parse::parse_config(json, false)?;
            let token = if config.leased {
                Some(read_token_line(STDIN_TIMEOUT)?)
            } else {
                None
            };
            (config, token)
        }
        Form::Other => {
            return Err(Error::Config(format!(
                "no config: the last argument must be {} or the JSON config",
                parse::CONFIG_STDIN_FLAG
            )));
        }
    };
    Ok(Invocation {
        config,
        token,
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
