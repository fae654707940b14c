//! Wiring: start-up order, the running shellper, and the orderly exit.
//!
//! Start-up order matters (BRIEF §4, CONVENTIONS.md):
//! 1. parse the invocation (errors: exit 2, nothing started);
//! 2. touch `/proc/self`, `setsid`, read the token (leased mode), point
//!    stdin at /dev/null, become a child subreaper;
//! 3. on the runtime: open the log, bind the socket, spawn the PTY child
//!    (failures: exit 3, socket removed);
//! 4. log "Shellper started", "PTY spawned", "Socket listening" (codev reads
//!    them as soon as stdout closes), then write the info line and close
//!    stdout, send stderr to the log;
//! 5. run until the lease enforcer says "terminate", then run the kill ladder,
//!    report TERMINATED to the holder, remove the socket and exit with the
//!    code that says why.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shellper_leased::invocation;
use shellper_protocol::lease::{LeaseMachine, Mode};
use shellper_protocol::msg::{TerminateReason, Terminated};
use shellper_protocol::{Frame, Token};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::child::{ChildActor, SpawnSpec, spawn_pty_in};
use crate::config::{self, Config, Parsed};
use crate::hub::Hub;
use crate::lease::{LeaseEnforcer, LeaseHandle, Termination};
use crate::server::{self, Identity, Pty, Server, Timeouts};
use crate::{exit, kill, startup};

/// Longest wait for the token line (or the token and config) on stdin.
const TOKEN_TIMEOUT: Duration = invocation::STDIN_TIMEOUT;
/// How long connections get to flush TERMINATED and other last frames.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// The whole binary: parses `args` (without the program name), starts, runs
/// and returns the exit code.
pub fn main_entry(args: Vec<String>) -> i32 {
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let mut stdin_token = None;
    let cfg = match config::parse_args(&args, &cwd) {
        Ok(Parsed::Run(c)) => {
            let mut c = *c;
            if config::is_codev_invocation(&args)
                && let Err(e) = config::apply_legacy_env(&mut c, |k| std::env::var(k).ok())
            {
                eprintln!("shellper: {e}");
                return e.exit_code();
            }
            c
        }
        Ok(Parsed::ConfigStdin) => {
            let parsed = invocation::read_stdin_to_eof(TOKEN_TIMEOUT, config::MAX_STDIN_CONFIG)
                .map_err(crate::Error::from)
                .and_then(|input| config::parse_stdin_config(&input));
            match parsed {
                Ok((token, c)) => {
                    stdin_token = Some(token);
                    c
                }
                Err(e) => {
                    eprintln!("shellper: {e}");
                    return e.exit_code();
                }
            }
        }
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return exit::OK;
        }
        Err(e) => {
            eprintln!("shellper: {e}");
            return e.exit_code();
        }
    };
    startup::touch_proc_self();
    startup::new_session();
    let token = if let Some(t) = stdin_token {
        Some(t)
    } else if cfg.leased {
        match invocation::read_token_line(TOKEN_TIMEOUT).map_err(crate::Error::from) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("shellper: {e}");
                return e.exit_code();
            }
        }
    } else {
        None
    };
    if let Err(e) = startup::detach_stdin() {
        eprintln!("shellper: {e}");
        return e.exit_code();
    }
    if let Err(e) = shellper_proctree::become_subreaper() {
        eprintln!("shellper: {e}");
        return exit::STARTUP;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shellper: tokio runtime: {e}");
            return exit::STARTUP;
        }
    };
    rt.block_on(run(cfg, token))
}

fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "removing the socket file"),
    }
}

/// Removes `<log>.1`, the rotated half of the log. A Tower (codev's, ours)
/// removes `<id>.sock` and `<id>.log` with a session but does not know
/// about rotation, so without this every session that ever rotated would
/// leave a file of up to 1 MiB behind for good. The live `<id>.log`, which
/// ends with why the shellper exited, stays for post-mortem.
fn remove_rotated_log(log: &Path) {
    let mut rotated = log.as_os_str().to_owned();
    rotated.push(".1");
    match std::fs::remove_file(&rotated) {
        Ok(()) => tracing::info!("removed the rotated log"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "removing the rotated log"),
    }
}

/// Runs a configured shellper on the current runtime; returns the exit code.
pub async fn run(cfg: Config, token: Option<Token>) -> i32 {
    let log_path = config::log_path_for(&cfg.socket_path);
    if let Some(dir) = cfg
        .socket_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.exists()
            && let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
        {
            eprintln!("shellper: create {}: {e}", dir.display());
            return exit::STARTUP;
        }
    }
    if let Err(e) = startup::init_logging(&log_path) {
        eprintln!("shellper: {e}");
        return e.exit_code();
    }
    let listener = match server::bind(&cfg.socket_path).map_err(crate::Error::from) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot bind");
            eprintln!("shellper: {e}");
            return e.exit_code();
        }
    };
    let spec = SpawnSpec {
        command: cfg.command.clone(),
        args: cfg.args.clone(),
        cwd: cfg.cwd.to_string_lossy().into_owned(),
        env: cfg.env.clone(),
        cols: cfg.cols,
        rows: cfg.rows,
    };
    // The session's cgroup (SPEC §9.1), opened before the first child: the
    // child moves itself in before it executes the command.
    let cgroup = match &cfg.cgroup {
        None => None,
        Some(dir) => match shellper_proctree::Cgroup::at(dir).attach_fd() {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) => {
                tracing::error!(error = %e, "cannot use the session cgroup");
                eprintln!("shellper: {e}");
                drop(listener);
                remove_socket(&cfg.socket_path);
                return exit::STARTUP;
            }
        },
    };
    let first = match spawn_pty_in(&spec, cgroup.as_ref()) {
        Ok(c) => Ok(c),
        // Legacy mode (codev's Tower): the command cannot start, so do as
        // codev's shellper does: start anyway and report the child as
        // exited with code 1, which runs the Tower's restart and error
        // paths (SPEC §3). A leased spawner (ours) gets exit 3 and the
        // reason instead: it reports a failed spawn at spawn time.
        Err(e @ crate::error::Error::Exec { .. }) if token.is_none() => {
            tracing::error!(error = %e, "the command cannot start; reporting exit code 1");
            Err(e)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot spawn the PTY child");
            eprintln!("shellper: {e}");
            drop(listener);
            remove_socket(&cfg.socket_path);
            return e.exit_code();
        }
    };
    let child_pid = first.as_ref().ok().map(|c| c.pid);
    let leased = token.is_some();
    let hub = Arc::new(Hub::new(
        &spec,
        child_pid.map(|p| p as u32),
        cfg.replay_lines,
        cfg.replay_bytes,
    ));
    if let Err(e) = &first {
        hub.start_failed(0, &spec, &e.to_string());
    }
    let (term_tx, term_rx) = oneshot::channel::<Termination>();
    let mode = token.map_or(Mode::Legacy, Mode::Leased);
    let machine = LeaseMachine::new(cfg.lease, mode, tokio::time::Instant::now().into_std());
    let (lease, _enforcer) = LeaseEnforcer::spawn(machine, move |t: Termination| {
        let _ = term_tx.send(t);
    });
    if first.is_err() {
        lease.child_exited();
    }
    let (mut actor, child) = ChildActor::new(hub.clone(), lease.clone(), first.ok());
    actor.set_cgroup(cgroup);
    tokio::spawn(actor.run());
    let session = Pty {
        hub: hub.clone(),
        child,
        lease: lease.clone(),
    };
    // Legacy mode (codev's Tower): every connection in the log, as codev's
    // own shellper writes it.
    let server = Arc::new(
        Server::new(
            session,
            lease.clone(),
            Identity::current(hub.start_time_ms),
            Timeouts {
                handshake: cfg.handshake_timeout,
                write_stall: cfg.write_stall,
            },
        )
        .with_cgroup(cfg.cgroup.clone())
        .log_connections(!leased),
    );
    let stop = CancellationToken::new();
    tokio::spawn(server.clone().accept_loop(listener, stop.clone()));
    watch_signals(lease.clone());

    // The first three lines are codev's, word for word: its tests and its
    // operators grep the log for them, and read it as soon as the info line
    // is out (stdout closed): they are written (synchronously) before it.
    tracing::info!(
        leased,
        ttl_ms = ms(cfg.lease.ttl),
        window_ms = ms(cfg.lease.window),
        claim_ms = ms(cfg.lease.claim),
        "Shellper started: pid={}, command={}, socket={}",
        std::process::id(),
        cfg.command,
        cfg.socket_path.display()
    );
    tracing::info!(
        "PTY spawned: pid={}, cols={}, rows={}",
        child_pid.unwrap_or(-1),
        cfg.cols,
        cfg.rows
    );
    tracing::info!("Socket listening: {}", cfg.socket_path.display());
    if let Err(e) = startup::write_info_line(std::process::id(), hub.start_time_ms) {
        tracing::warn!(error = %e, "info line");
    }
    if let Err(e) = startup::stderr_to(&log_path) {
        tracing::warn!(error = %e, "stderr to log");
    }

    let t = term_rx.await.unwrap_or(Termination {
        reason: TerminateReason::Signal,
        holder: None,
    });
    tracing::info!(reason = ?t.reason, "terminating: running the kill ladder");
    let sessions = hub.sessions();
    let grace = cfg.lease.kill_grace;
    let cgroup_dir = cfg.cgroup.clone();
    // On a thread of its own, or inline if none can be started: the ladder
    // must run even when the pid table is full (`offthread`).
    let report = match shellper_leased::offthread::run("kill-ladder", move || {
        kill::run_ladder(sessions, grace, cgroup_dir.as_deref())
    })
    .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "kill ladder panicked");
            shellper_proctree::KillReport {
                survivors: Vec::new(),
                errors: vec![e.to_string()],
                ..Default::default()
            }
        }
    };
    let survivors = report.survivors.len() as u32;
    if let Some(holder) = t.holder {
        let sent = server.send(
            holder,
            Frame::Terminated(Terminated {
                reason: t.reason,
                signalled: report.signalled,
                survivors,
                elapsed_ms: ms(report.elapsed),
                sweeps: report.sweeps,
            }),
        );
        tracing::info!(holder, sent, "TERMINATED report to the holder");
    }
    stop.cancel();
    server.close_all(FINAL_FLUSH).await;
    lease.exited();
    remove_socket(&cfg.socket_path);
    remove_rotated_log(&log_path);
    let code = exit::for_termination(t.reason, survivors);
    tracing::info!(code, reason = ?t.reason, survivors, "shellper exiting");
    code
}

/// SIGTERM, SIGHUP and SIGINT to the shellper: terminate (kill ladder).
fn watch_signals(lease: LeaseHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::interrupt(),
    ] {
        match signal(kind) {
            Ok(mut s) => {
                let lease = lease.clone();
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        tracing::info!(?kind, "signal received");
                        lease.signalled();
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, ?kind, "cannot watch signal"),
        }
    }
}
