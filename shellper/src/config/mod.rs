//! Start-up configuration, in three input forms (BRIEF §4), plus the legacy
//! environment:
//!
//! * **codev**: the *last* argument is the JSON config of SPEC.md §3;
//!   anything before it is ignored (codev passes a script path there). A
//!   `lease` object selects leased mode: the token is the first line of
//!   stdin.
//! * **config on stdin** (a Tower of ours): `shellper --config-stdin`, the
//!   token line and the config line on stdin, then EOF. Always leased.
//! * **flags** (`flags.rs`): `shellper --socket PATH … -- CMD ARGS…`.
//! * the **legacy environment** (`legacy_env.rs`): codev's form without a
//!   `lease` object takes its window and claim deadline from there.
//!
//! The first two are the spawn handshake every shellper shares: parsed by
//! the lease crate ([`shellper_leased::invocation::parse`], one parser for
//! the PTY shellper and embedded leased processes). All parsing is pure (no
//! IO, no environment lookups beyond what the caller passes in) so every
//! rule is unit-tested.

mod flags;
mod legacy_env;

use std::path::{Path, PathBuf};

use shellper_leased::invocation::parse::{self, Form, SpawnConfig};
use shellper_protocol::Token;

use crate::error::Result;

pub use legacy_env::apply_legacy_env;
pub use parse::MAX_STDIN_CONFIG;

/// Everything a shellper needs to start: what the spawn handshake says
/// (the lease crate's [`SpawnConfig`]), or the flags (then `env` is `None`:
/// the child inherits the shellper's environment).
pub type Config = SpawnConfig;

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

/// Parses what a Tower wrote on stdin in the `--config-stdin` form (SPEC.md
/// §3, [`parse::parse_stdin`]): the token and a leased configuration.
pub fn parse_stdin_config(input: &[u8]) -> Result<(Token, Config)> {
    Ok(parse::parse_stdin(input)?)
}

/// Whether `argv` (without the program name) is codev's invocation: its
/// last argument is a JSON object and no `--` separator precedes it (with
/// `--`, a `{` argument belongs to the command).
pub fn is_codev_invocation(args: &[String]) -> bool {
    matches!(parse::form(args), Form::ConfigArgv(_))
}

/// Parses the arguments after the program name. `cwd` is the default
/// working directory for the flags form.
pub fn parse_args(args: &[String], cwd: &Path) -> Result<Parsed> {
    match parse::form(args) {
        Form::ConfigStdin => Ok(Parsed::ConfigStdin),
        Form::ConfigArgv(json) => {
            let c = parse::parse_config(json, false)?;
            Ok(Parsed::Run(Box::new(c)))
        }
        Form::Other => flags::parse(args, cwd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const CODEV: &str = r#"{"command":"/bin/bash","args":["-l"],"cwd":"/tmp","env":{"A":"1"},"cols":100,"rows":30,"socketPath":"/run/x/sh-1.sock","futureField":true}"#;

    #[test]
    fn codev_invocation_ignores_leading_args_and_is_legacy_without_lease() {
        let Ok(Parsed::Run(c)) = parse_args(
            &args(&["/path/to/shellper-main.js", CODEV]),
            Path::new("/start"),
        ) else {
            panic!("codev's invocation must parse");
        };
        assert_eq!(c.command, "/bin/bash");
        assert_eq!(c.args, vec!["-l"]);
        assert_eq!(c.cwd, PathBuf::from("/tmp"));
        assert_eq!(c.env.as_ref().map(|e| e.len()), Some(1));
        assert_eq!((c.cols, c.rows), (100, 30));
        assert!(!c.leased);
        assert_eq!(
            log_path_for(&c.socket_path),
            PathBuf::from("/run/x/sh-1.log")
        );
    }

    #[test]
    fn the_handshake_rules_are_the_lease_crates() {
        // A config the lease crate's parser refuses is refused here, with
        // the same exit code (the rules are tested there).
        let e = parse_args(
            &args(&[r#"{"command":"sh","socketPath":"/s"}"#]),
            Path::new("/"),
        )
        .expect_err("cwd, env, … are required");
        assert!(matches!(e, Error::Usage(_)), "{e}");
        assert_eq!(e.exit_code(), 2);
        let bad = format!("{}\n{CODEV}\n", "ab".repeat(32)).replace("\"cwd\":\"/tmp\",", "");
        assert_eq!(
            parse_stdin_config(bad.as_bytes())
                .expect_err("no cwd")
                .exit_code(),
            2
        );
        let e = parse_stdin_config(format!("nothex\n{CODEV}\n").as_bytes()).expect_err("token");
        assert!(matches!(e, Error::Token(_)), "{e}");
    }

    #[test]
    fn config_on_stdin_is_selected_by_the_last_argument_and_always_leased() {
        let cwd = Path::new("/start");
        for a in [&["--config-stdin"][..], &["x.js", "--config-stdin"][..]] {
            assert!(matches!(parse_args(&args(a), cwd), Ok(Parsed::ConfigStdin)));
        }
        let hex = "ab".repeat(32);
        let (t, c) = parse_stdin_config(format!("{hex}\n{CODEV}\n").as_bytes()).expect("parses");
        assert_eq!(t.to_hex().as_str(), hex);
        assert!(c.leased, "the stdin form is always leased");
        assert_eq!(
            c.env.as_ref().and_then(|e| e.get("A")).map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn codev_detection() {
        assert!(is_codev_invocation(&args(&["x.js", "{}"])));
        assert!(!is_codev_invocation(&args(&["--socket", "s", "--", "{}"])));
        assert!(!is_codev_invocation(&args(&[])));
    }
}
