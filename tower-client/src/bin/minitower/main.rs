//! minitower: the reference Tower. Holds the leases of every shellper of a
//! scope until signalled, spawns more on request, prints one JSON line per
//! event.
//!
//! `cli.rs` is the command line, `output.rs` the event lines; this file
//! starts the Tower and runs it until a signal.

mod cli;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tower_client::{Error, LeaseConfig, Scope, SpawnSpec, Tower, TowerConfig};

use shellper_protocol::lease::{DEFAULT_CLAIM, DEFAULT_KILL_GRACE, DEFAULT_TTL, DEFAULT_WINDOW};

use cli::*;
use output::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(what) = cli.generate {
        return generate(what);
    }
    tower_client::cli::init_logging();
    let lease = match LeaseConfig::new(
        cli.ttl.unwrap_or(DEFAULT_TTL),
        cli.window.unwrap_or(DEFAULT_WINDOW),
        cli.claim.unwrap_or(DEFAULT_CLAIM),
        cli.kill_grace.unwrap_or(DEFAULT_KILL_GRACE),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("minitower: invalid lease settings: {e}");
            return ExitCode::from(2);
        }
    };
    tower_client::raise_fd_limit();
    // One thread: a Tower's work is small and IO-bound, and a single-threaded
    // runtime avoids cross-thread wakeups (measured ~30 % less CPU per
    // renewal than two workers). Registry writes go to the blocking pool.
    // Its threads are kept for an hour once started (not tokio's 10 s): the
    // pool panics a task when it has no thread at all and the system refuses
    // a new one (EAGAIN, a full pid table), and a panicked holder would stop
    // renewing. With a thread kept, such work waits in the pool's queue; the
    // first is started before any holder runs.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(Duration::from_secs(3600))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("minitower: cannot start the event loop: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = OUTPUT.set(std::sync::Mutex::new(Some(Output::start())));
    if let Err(e) = rt.block_on(rt.spawn_blocking(|| ())) {
        eprintln!("minitower: cannot start a worker thread: {e}");
        return ExitCode::from(1);
    }
    let code = rt.block_on(run(cli, lease));
    // Holders of detached or terminated shellpers are done; anything left
    // (a background reaper) must not delay the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    if let Some(m) = OUTPUT.get()
        && let Some(o) = m.lock().unwrap_or_else(|p| p.into_inner()).take()
    {
        o.finish(Duration::from_secs(1));
    }
    code
}

/// Tells the service manager that startup is done (`READY=1` on
/// `$NOTIFY_SOCKET`, sd_notify(3)'s protocol: one datagram; a path, or an
/// abstract name after `@`). Nothing without the variable; a failure is
/// logged, never fatal (the service runs either way).
fn sd_notify_ready() {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(b"READY=1", &addr)
        } else {
            sock.send_to(b"READY=1", &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!("telling the service manager we are ready (NOTIFY_SOCKET): {e}");
    }
}

async fn run(cli: Cli, lease: LeaseConfig) -> ExitCode {
    // Signals first, so a SIGTERM during a slow startup is not lost.
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            eprintln!("minitower: cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let dir = cli.scope.clone().unwrap_or_else(Scope::default_dir);
    let scope = match Scope::open(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(4);
        }
    };
    let cgroup = match cli.cgroup.as_str() {
        "none" => None,
        c => match c.parse::<tower_client::CgroupChoice>() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("minitower: --cgroup: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let cfg = TowerConfig {
        lease,
        cgroup,
        limits: tower_client::Limits {
            pids_max: cli.pids_max,
            memory_max: cli.memory_max,
        },
        holder_name: format!("minitower@{}", std::process::id()),
        shellper_bin: cli.shellper.clone(),
        tidy: tower_client::TidyPolicy {
            keep_gone_logs: cli.keep_logs,
            scope_log_cap: cli.log_cap_mib.saturating_mul(1 << 20),
            ..tower_client::TidyPolicy::default()
        },
        ..TowerConfig::default()
    };
    let (tower, mut events) = match Tower::open(scope, cfg) {
        Ok(t) => t,
        Err(e @ Error::Containment(_)) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(2);
        }
        Err(e @ Error::ScopeLocked { .. }) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(3);
        }
        Err(e @ (Error::RegistryCorrupt { .. } | Error::UnsafeScope { .. } | Error::Io { .. })) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(4);
        }
        Err(e) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(1);
        }
    };

    // The control socket first: `leasectl new` right after a start finds
    // it as soon as the scope is locked.
    let limits = tower_client::control::ControlLimits {
        max_window: cli.max_window.max(lease.window),
        ..Default::default()
    };
    let control = match tower_client::control::ControlServer::bind(&tower, limits) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("minitower: {e}");
            return ExitCode::from(4);
        }
    };
    let tower = std::sync::Arc::new(tower);
    let control_stop = tokio_util::sync::CancellationToken::new();
    let control_task = tokio::spawn(control.serve(tower.clone(), control_stop.clone(), |n| {
        if let Some(v) = n.event_json() {
            out(v);
        }
    }));

    let report = tower.adopt_all().await;
    print_adoption(&report, false);

    let (command, args) = match cli.command.split_first() {
        Some((c, a)) => (c.clone(), a.to_vec()),
        None => (
            std::env::var("SHELL")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/bin/sh".into()),
            Vec::new(),
        ),
    };
    let mut set = JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for _ in 0..cli.spawn {
        let mut spec = SpawnSpec::new(command.clone()).args(args.clone());
        spec.cols = cli.cols;
        spec.rows = cli.rows;
        let t = tower.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire().await;
            t.spawn(spec).await
        });
    }
    let mut stop_signal = None;
    let mut spawned = 0usize;
    while !set.is_empty() {
        tokio::select! {
            j = set.join_next() => match j {
                Some(Ok(Ok(h))) => {
                    spawned += 1;
                    let i = h.info();
                    out(json!({"event":"spawned","id":i.id,"pid":i.pid,"child_pid":i.child_pid,"socket":i.socket}));
                }
                Some(Ok(Err(e))) => {
                    eprintln!("minitower: {e}");
                    out(json!({"event":"spawn_failed","error":e.to_string()}));
                }
                Some(Err(e)) => eprintln!("minitower: spawn task failed: {e}"),
                None => break,
            },
            _ = sigint.recv() => { stop_signal = Some("SIGINT"); break; }
            _ = sigterm.recv() => { stop_signal = Some("SIGTERM"); break; }
        }
    }
    if stop_signal.is_some() {
        // Let in-flight spawns finish (each is bounded) so that what they
        // started is held and released below, never left unclaimed.
        while let Some(j) = set.join_next().await {
            if let Ok(Ok(h)) = j {
                let i = h.info();
                out(
                    json!({"event":"spawned","id":i.id,"pid":i.pid,"child_pid":i.child_pid,"socket":i.socket}),
                );
            }
        }
    }
    // Startup Held events are implied by adopted/spawned lines; print the
    // rest (child exits seen during startup, anything unusual).
    while let Some(ev) = events.try_recv() {
        if !matches!(
            ev,
            tower_client::Event::Held {
                recovered: false,
                ..
            }
        ) {
            out_line(&ev.to_json());
        }
    }
    let mut spawns_failed = false;
    let mut scope_lost = false;
    if stop_signal.is_none() && cli.spawn > 0 && spawned == 0 {
        // Asked to run something and nothing runs: say so with the exit
        // code rather than holding nothing (what was adopted is detached,
        // never killed, so its window still protects it).
        eprintln!(
            "minitower: none of the {} requested spawns succeeded",
            cli.spawn
        );
        spawns_failed = true;
    } else if stop_signal.is_none() {
        let budget = tower.fd_budget();
        out(
            json!({"event":"ready","held":tower.len(),"capacity":budget.capacity,"fd_limit":budget.limit,"containment":tower.containment()}),
        );
        // Under systemd (Type=notify): `systemctl start` returns now, with
        // the control socket up and the scope adopted.
        sd_notify_ready();
        // Entries that could not be adopted stay in the registry; retry
        // them with backoff (an EMFILE or a wedged shellper passes).
        let mut retry_in = Duration::from_secs(1);
        let mut retry_at =
            (!report.failed.is_empty()).then(|| tokio::time::Instant::now() + retry_in);
        // The first tidy runs now (after adoption: what was adopted is held,
        // and what is gone was pruned by it), then every --tidy-every.
        let mut tidy_at = (!cli.tidy_every.is_zero()).then(tokio::time::Instant::now);
        stop_signal = loop {
            let tidy_due = async {
                match tidy_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev @ tower_client::Event::ScopeLost { .. }) => {
                        out_line(&ev.to_json());
                        if let tower_client::Event::ScopeLost { scope, detail } = &ev {
                            eprintln!("minitower: scope {scope}: {detail}; stopping (sessions detached, alive for their window)");
                        }
                        scope_lost = true;
                        break Some("scope lost");
                    }
                    Some(ev) => out_line(&ev.to_json()),
                    None => break None,
                },
                _ = tidy_due => {
                    print_tidy(&tower.tidy().await);
                    tidy_at = Some(tokio::time::Instant::now() + cli.tidy_every);
                }
                _ = retry => {
                    let r = tower.adopt_all().await;
                    print_adoption(&r, true);
                    retry_in = (retry_in * 2).min(Duration::from_secs(30));
                    retry_at = (!r.failed.is_empty()).then(|| tokio::time::Instant::now() + retry_in);
                }
                _ = sigint.recv() => break Some("SIGINT"),
                _ = sigterm.recv() => break Some("SIGTERM"),
            }
        };
    }

    // No new requests; those in flight finish (each is bounded), so what
    // they spawned is held and released below.
    control_stop.cancel();
    let _ = tokio::time::timeout(
        tower_client::control::DRAIN_TIMEOUT + Duration::from_secs(1),
        control_task,
    )
    .await;

    let on_exit = if spawns_failed || scope_lost {
        OnExit::Detach
    } else {
        cli.on_exit
    };
    out(
        json!({"event":"stopping","signal":stop_signal,"reason":spawns_failed.then_some("no spawn succeeded"),"on_exit":match on_exit { OnExit::Detach => "detach", OnExit::Terminate => "terminate" },"held":tower.len()}),
    );
    let mut failed = 0;
    match on_exit {
        OnExit::Detach => {
            for (id, r) in tower.detach_all(cli.hold).await {
                if let Err(e) = r {
                    failed += 1;
                    eprintln!("minitower: detach {id}: {e}");
                    out(json!({"event":"release_failed","id":id,"error":e.to_string()}));
                }
            }
        }
        OnExit::Terminate => {
            let timeout = lease.kill_grace + Duration::from_secs(5);
            for (id, r) in tower.terminate_all(timeout).await {
                if let Err(e) = r {
                    failed += 1;
                    eprintln!("minitower: terminate {id}: {e}");
                    out(json!({"event":"release_failed","id":id,"error":e.to_string()}));
                }
            }
        }
    }
    // Report the detached/terminated/exited events of the release.
    tokio::time::sleep(Duration::from_millis(20)).await;
    while let Some(ev) = events.try_recv() {
        out_line(&ev.to_json());
    }
    if scope_lost {
        ExitCode::from(4)
    } else if failed > 0 || spawns_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
