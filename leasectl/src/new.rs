//! `leasectl new` and `leasectl kill`: ask the scope's running Tower, over
//! its control socket (SPEC.md §15), for a session or for a session's end.
//!
//! `new` never spawns a shellper itself: a session nobody holds would live
//! out its claim deadline and die, or worse, look held when it is not. No
//! Tower answering is an error with its own exit code.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tower_client::Scope;
use tower_client::control::{self, ErrorCode, LeaseRequest, Request, SpawnRequest};

use crate::error::{Error, Result};
use crate::exit::{EXIT_ERROR, EXIT_FOUND, EXIT_OK};
use crate::output::{json_out, out};
use crate::scan::parse_duration;

/// Exit code of `new` and `kill`: no Tower runs in the scope (nothing was
/// started; `kill` exits with reap's codes instead, as it falls back to it).
pub const EXIT_NO_TOWER: i32 = 4;

/// Variables of the client's environment a session does not get by
/// default: they describe the client's own terminal, multiplexer, shell or
/// service, not the new session's. `--env NAME=VALUE` sets any of them.
pub const DROPPED_ENV: &[&str] = &[
    // The client's multiplexer: the session is not inside it.
    "TMUX",
    "TMUX_PANE",
    "STY",
    "WINDOW",
    // The client's terminal size: the session's PTY has its own.
    "COLUMNS",
    "LINES",
    // The client shell's bookkeeping; the directory is --cwd.
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    // systemd's handles of the client's own service.
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// `new --help` epilogue.
pub const NEW_HELP: &str = "\
The session runs under the scope's running Tower (minitower, or the systemd
user service: `systemctl --user start minitower`), which holds its lease: it
survives the Tower's restarts and ends when the lease says so. Without a
running Tower nothing is started (exit 4).

Environment (like tmux new-session): the session gets leasectl's own
environment, minus TMUX TMUX_PANE STY WINDOW COLUMNS LINES PWD OLDPWD SHLVL _
NOTIFY_SOCKET LISTEN_FDS LISTEN_PID LISTEN_FDNAMES INVOCATION_ID JOURNAL_STREAM
WATCHDOG_PID WATCHDOG_USEC (they describe this terminal, shell or service, not the
session); --clean-env starts from nothing (the Tower sets TERM=xterm-256color
when it is unset); --env NAME=VALUE sets one,
--env NAME copies NAME from leasectl's environment (keeps a secret out of
argv). The environment goes to the Tower over its private socket and to the
shellper on its stdin: never into an argv or a log.

Examples:
  leasectl new -- bash                       prints the new session's id
  leasectl new --attach -- bash              and attaches (ctrl-] d detaches)
  leasectl new --json -- make test           {\"event\":\"spawned\",\"id\":…,\"pid\":…,…}
  leasectl new --cwd ~/src --window 2h -- claude
  leasectl new --clean-env --env PATH --env API_KEY -- ./agent.sh
  id=$(leasectl new -- sleep 600) && leasectl kill \"$id\"

Exit codes of new:
  0  the session was started (with --attach: attach's exit codes, see
     `leasectl attach --help`)
  1  the Tower refused (bad command or directory, lease outside its limits,
     the spawn failed); nothing was left running
  2  error: bad usage, the Tower could not be reached or did not answer
  4  no Tower runs in the scope; nothing was started";

/// `kill --help` epilogue.
pub const KILL_HELP: &str = "\
Asks the scope's running Tower to terminate the session (whole process tree,
death confirmed). When no Tower runs, or the Tower does not hold it, the
session is terminated with its token as `leasectl reap ID` does (refused if
something else holds its lease).

Examples:
  leasectl kill sh-0123abcd
  leasectl kill sh-0123abcd --json

Exit codes of kill:
  0  terminated, death confirmed
  1  the Tower could not confirm death, or (fallback) reap refused or
     something survived
  2  error: unknown id, the Tower could not be reached";

/// `leasectl new` options.
#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// Attach to the session once started, as `leasectl attach` does
    #[arg(long, conflicts_with = "json")]
    pub attach: bool,
    /// Print the spawn event as JSON instead of the id
    #[arg(long)]
    pub json: bool,
    /// Working directory [default: the current one]
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Set NAME=VALUE, or copy NAME from this environment (repeatable)
    #[arg(long = "env", short = 'e', value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Start from an empty environment instead of this one
    #[arg(long)]
    pub clean_env: bool,
    /// Lease time-to-live [default: the Tower's]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Reattach window: how long the session outlives a Tower that is gone
    /// [default: the Tower's]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Claim deadline [default: the Tower's]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub claim: Option<Duration>,
    /// Grace between SIGTERM and SIGKILL when the tree is killed
    /// [default: the Tower's]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub kill_grace: Option<Duration>,
    /// PTY columns [default: this terminal's, else 80]
    #[arg(long)]
    pub cols: Option<u16>,
    /// PTY rows [default: this terminal's, else 24]
    #[arg(long)]
    pub rows: Option<u16>,
    /// With --attach: the detach sequence (see `leasectl attach --help`)
    #[arg(long, value_name = "KEYS", default_value = crate::attach::DEFAULT_DETACH_KEYS)]
    pub detach_keys: crate::attach::DetachKeys,
    /// Command and arguments [default: $SHELL, else /bin/sh]
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The session's environment: `base` (the client's, or nothing with
/// `clean`) minus [`DROPPED_ENV`], then each `--env` in order. Pure: the
/// client's environment comes in as pairs. Non-UTF-8 variables cannot
/// travel in JSON; they are skipped and named in the warnings.
pub fn session_env(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    clean: bool,
    sets: &[String],
) -> std::result::Result<(BTreeMap<String, String>, Vec<String>), String> {
    let base: Vec<(OsString, OsString)> = base.into_iter().collect();
    let mut env = BTreeMap::new();
    let mut warnings = Vec::new();
    if !clean {
        for (k, v) in &base {
            match (k.to_str(), v.to_str()) {
                (Some(k), _) if DROPPED_ENV.contains(&k) => {}
                (Some(k), Some(v)) => {
                    env.insert(k.to_string(), v.to_string());
                }
                (k, _) => warnings.push(format!(
                    "{} is not UTF-8 and is left out (use --env to set it)",
                    k.map_or_else(|| k_lossy(&base, v), str::to_string)
                )),
            }
        }
    }
    for s in sets {
        match s.split_once('=') {
            Some(("", _)) => return Err(format!("--env {s:?}: the name is empty")),
            Some((k, v)) => {
                env.insert(k.to_string(), v.to_string());
            }
            None if s.is_empty() => return Err("--env: the name is empty".into()),
            None => {
                let found = base.iter().find(|(k, _)| k.to_str() == Some(s.as_str()));
                match found.map(|(_, v)| v.to_str()) {
                    Some(Some(v)) => {
                        env.insert(s.clone(), v.to_string());
                    }
                    Some(None) => return Err(format!("--env {s}: its value is not UTF-8")),
                    None => {
                        return Err(format!(
                            "--env {s}: {s} is not set here (NAME=VALUE sets a value)"
                        ));
                    }
                }
            }
        }
    }
    Ok((env, warnings))
}

fn k_lossy(base: &[(OsString, OsString)], v: &OsString) -> String {
    base.iter()
        .find(|(_, bv)| bv == v)
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The requested lease, in the wire's milliseconds.
fn lease_request(a: &NewArgs) -> LeaseRequest {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis().min(u64::MAX as u128) as u64);
    LeaseRequest {
        ttl_ms: ms(a.ttl),
        window_ms: ms(a.window),
        claim_ms: ms(a.claim),
        kill_grace_ms: ms(a.kill_grace),
    }
}

/// This terminal's size, if stdout or stdin is one.
fn terminal_size() -> Option<(u16, u16)> {
    for fd in [rustix::stdio::stdout(), rustix::stdio::stdin()] {
        if let Ok(ws) = rustix::termios::tcgetwinsize(fd)
            && ws.ws_col > 0
            && ws.ws_row > 0
        {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

/// How long a Tower that holds the scope's lock may take to open its
/// control socket (a `systemctl --user start` returns before minitower
/// has bound it).
const TOWER_STARTING: Duration = Duration::from_secs(5);

/// Whole exchange bound of a spawn: the Tower's spawn timeout (10 s in
/// minitower) plus a loaded host's slack.
const SPAWN_WAIT: Duration = Duration::from_secs(30);

/// One request to the scope's Tower; [`Error::NoTower`] with the advice
/// an operator needs when nothing answers.
async fn ask(
    scope: &Path,
    req: &Request,
    connect: Duration,
    wait: Duration,
) -> Result<control::Response> {
    let s = Scope::open_existing(scope).map_err(|e| match e {
        tower_client::Error::Io { ref source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Error::NoTower {
                scope: scope.to_path_buf(),
                detail: "the scope directory does not exist".into(),
            }
        }
        e => Error::Scope(Box::new(e)),
    })?;
    let socket = control::socket_path(&s);
    let deadline = tokio::time::Instant::now() + TOWER_STARTING;
    loop {
        match control::request(&socket, req, connect, wait).await {
            Err(tower_client::Error::NoTower { detail, .. }) => {
                let holder = s.lock_holder().ok().flatten();
                match holder {
                    Some(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Some(pid) => {
                        return Err(Error::NoTower {
                            scope: scope.to_path_buf(),
                            detail: format!(
                                "the Tower holding it (pid {pid}) takes no requests on {} ({detail}): a minitower older than the control socket, or a Tower of another kind",
                                socket.display()
                            ),
                        });
                    }
                    None => {
                        return Err(Error::NoTower {
                            scope: scope.to_path_buf(),
                            detail: "no Tower holds it".into(),
                        });
                    }
                }
            }
            Err(e) => return Err(Error::Scope(Box::new(e))),
            Ok(r) => return Ok(r),
        }
    }
}

/// Runs `leasectl new`; returns the exit code.
pub async fn new(scope: &Path, timeout: Duration, a: NewArgs) -> Result<i32> {
    let (env, warnings) = match session_env(std::env::vars_os(), a.clean_env, &a.env) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("leasectl new: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    for w in warnings {
        eprintln!("leasectl new: warning: {w}");
    }
    let cwd = match &a.cwd {
        Some(d) => std::path::absolute(d).map_err(|e| Error::io("resolving --cwd", d, e))?,
        None => std::env::current_dir()
            .map_err(|e| Error::io("reading the current directory", ".", e))?,
    };
    let Some(cwd) = cwd.to_str().map(str::to_owned) else {
        eprintln!(
            "leasectl new: the directory {} is not UTF-8; pass --cwd",
            cwd.display()
        );
        return Ok(EXIT_ERROR);
    };
    let (command, args) = match a.command.split_first() {
        Some((c, rest)) => (c.clone(), rest.to_vec()),
        None => (
            env.get("SHELL")
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| "/bin/sh".into()),
            Vec::new(),
        ),
    };
    let size = terminal_size();
    let req = Request::Spawn(SpawnRequest {
        command,
        args,
        cwd: Some(cwd),
        env,
        inherit_env: false,
        cols: a.cols.or(size.map(|s| s.0)),
        rows: a.rows.or(size.map(|s| s.1)),
        lease: lease_request(&a),
    });
    let connect = timeout.max(Duration::from_secs(1));
    let resp = match ask(scope, &req, connect, SPAWN_WAIT).await {
        Ok(r) => r,
        Err(e @ Error::NoTower { .. }) => {
            eprintln!("leasectl new: {e}");
            return Ok(EXIT_NO_TOWER);
        }
        Err(Error::Scope(e)) if matches!(*e, tower_client::Error::ControlRefused { .. }) => {
            eprintln!("leasectl new: {e}");
            return Ok(EXIT_FOUND);
        }
        Err(e) => return Err(e),
    };
    let Some(spawned) = resp.spawned else {
        eprintln!("leasectl new: the Tower answered without a session");
        return Ok(EXIT_ERROR);
    };
    if a.json {
        out(&format!(
            "{}\n",
            serde_json::to_string(&spawned).map_err(|e| Error::Output(e.into()))?
        ))?;
        return Ok(EXIT_OK);
    }
    if !a.attach {
        out(&format!("{}\n", spawned.id))?;
        return Ok(EXIT_OK);
    }
    let o = crate::attach::AttachOpts {
        id: spawned.id.clone(),
        read_only: false,
        detach_keys: a.detach_keys,
    };
    let code = crate::attach::run(scope, timeout, o).await;
    if code.is_err() {
        // The session runs; say which, so it can be attached or killed.
        eprintln!(
            "leasectl new: session {} is running (held by the Tower, pid {})",
            spawned.id,
            resp.tower.map_or(0, |t| t.pid)
        );
    }
    code
}

/// `kill --json` when the Tower did it.
#[derive(Debug, Serialize)]
struct KillDoc {
    schema_version: u32,
    via: &'static str,
    tower_pid: Option<u32>,
    terminated: control::TerminatedInfo,
}

/// Runs `leasectl kill`; returns the exit code. `reap` runs the fallback
/// (its report and exit codes) when no Tower holds the session.
pub async fn kill<F, Fut>(
    scope: &Path,
    timeout: Duration,
    id: &str,
    json: bool,
    reap: F,
) -> Result<i32>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<i32>>,
{
    let req = Request::Terminate(control::TerminateRequest {
        id: id.to_string(),
        timeout_ms: None,
    });
    let wait = control::default_terminate_timeout(&control::ControlLimits::default())
        + Duration::from_secs(10);
    let why = match ask(scope, &req, timeout.max(Duration::from_secs(1)), wait).await {
        Ok(resp) => {
            let Some(t) = resp.terminated else {
                eprintln!("leasectl kill: the Tower answered without a report");
                return Ok(EXIT_ERROR);
            };
            let code = if t.survivors == 0 {
                EXIT_OK
            } else {
                EXIT_FOUND
            };
            if json {
                json_out(&KillDoc {
                    schema_version: 1,
                    via: "tower",
                    tower_pid: resp.tower.map(|t| t.pid),
                    terminated: t,
                })?;
            } else {
                out(&format!(
                    "{id}: terminated by the Tower (pid {}): {} process(es) signalled, {} survivor(s), {} ms\n",
                    resp.tower.map_or(0, |t| t.pid),
                    t.signalled,
                    t.survivors,
                    t.elapsed_ms
                ))?;
            }
            return Ok(code);
        }
        Err(Error::NoTower { .. }) => "no Tower runs in the scope".to_string(),
        Err(Error::Scope(e)) => match *e {
            tower_client::Error::ControlRefused {
                code: ErrorCode::NotHeld,
                ..
            } => "the scope's Tower does not hold it".to_string(),
            tower_client::Error::ControlRefused { message, .. } => {
                eprintln!("leasectl kill: {id}: the Tower refused: {message}");
                return Ok(EXIT_FOUND);
            }
            e => return Err(Error::Scope(Box::new(e))),
        },
        Err(e) => return Err(e),
    };
    eprintln!("leasectl kill: {id}: {why}; terminating it with its token, as `leasectl reap` does");
    reap().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn env_is_the_clients_minus_the_dropped_plus_sets() {
        let base = os(&[
            ("PATH", "/bin"),
            ("TMUX", "/tmp/tmux-0/default,1,0"),
            ("COLUMNS", "80"),
            ("TOKEN", "s"),
            ("TERM", "xterm"),
        ]);
        let (env, w) =
            session_env(base.clone(), false, &["A=1=2".into(), "TMUX=mine".into()]).unwrap();
        assert!(w.is_empty());
        assert_eq!(env.get("PATH").unwrap(), "/bin");
        assert_eq!(env.get("TERM").unwrap(), "xterm");
        assert_eq!(env.get("A").unwrap(), "1=2");
        assert_eq!(
            env.get("TMUX").unwrap(),
            "mine",
            "--env sets even a dropped name"
        );
        assert!(!env.contains_key("COLUMNS"));
        let (env, _) = session_env(base.clone(), true, &["TOKEN".into(), "X=".into()]).unwrap();
        assert_eq!(env.len(), 2);
        assert_eq!(env.get("TOKEN").unwrap(), "s", "--env NAME copies it");
        assert_eq!(env.get("X").unwrap(), "");
        assert!(session_env(base.clone(), true, &["NOPE".into()]).is_err());
        assert!(session_env(base.clone(), true, &["=v".into()]).is_err());
        assert!(session_env(base, true, &[String::new()]).is_err());
    }

    #[test]
    fn non_utf8_variables_are_named_and_left_out() {
        use std::os::unix::ffi::OsStringExt;
        let base = vec![
            (OsString::from("GOOD"), OsString::from("1")),
            (OsString::from("BAD"), OsString::from_vec(vec![0xff, 0xfe])),
        ];
        let (env, w) = session_env(base, false, &[]).unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("BAD"), "{w:?}");
    }

    #[test]
    fn dropped_list_is_the_documented_one() {
        for k in DROPPED_ENV {
            assert!(NEW_HELP.contains(k), "{k} missing from `new --help`");
        }
    }
}
