//! The friendly flags: `shellper --socket PATH [--ttl DUR] [--window DUR]
//! [--claim DUR] [--kill-grace DUR] [--token-stdin] [--cols N --rows N
//! --cwd DIR] -- CMD ARGS…`, `--help` and `--version`. Leased only with
//! `--token-stdin`, legacy otherwise. Pure: every rule is unit-tested.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shellper_leased::invocation::parse::{
    DEFAULT_COLS, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_REPLAY_LINES, DEFAULT_ROWS,
    clamp_replay_bytes, clamp_timeout,
};
use shellper_leased::server::DEFAULT_WRITE_STALL;
use shellper_protocol::LeaseConfig;
use shellper_protocol::lease::{DEFAULT_CLAIM, DEFAULT_KILL_GRACE, DEFAULT_TTL, DEFAULT_WINDOW};

use super::{Config, Parsed};
use crate::error::{Error, Result};

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

/// Parses the flags form (or `--help`/`--version`).
pub(super) fn parse(args: &[String], cwd: &Path) -> Result<Parsed> {
    match parse_flags(args)? {
        Ok(cli) => from_cli(cli, cwd).map(|c| Parsed::Run(Box::new(c))),
        Err(text) => Ok(Parsed::Print(text)),
    }
}

fn nonzero(v: Option<u16>, default: u16) -> u16 {
    match v {
        Some(0) | None => default,
        Some(n) => n,
    }
}

/// The configuration the flags describe; `cwd` is the default working
/// directory.
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
        handshake_timeout: clamp_timeout(
            cli.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        ),
        write_stall: DEFAULT_WRITE_STALL,
        cgroup: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse_args;
    use super::*;

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
        assert_eq!(
            super::super::log_path_for(&legacy.socket_path),
            PathBuf::from("/s.log")
        );
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
}
