//! A leased worker without a PTY: the smallest program that a Tower of ours
//! holds like a shellper and that takes its whole tree down when the lease
//! ends. It runs the config's `command` as a plain child process (the "build
//! worker" or "agent runner"), with the config's `env` and `cwd`.
//!
//! ```text
//! minitower --scope DIR --shellper target/debug/examples/leased_worker \
//!           --spawn 1 -- sh -c 'make -j8'
//! ```
//!
//! Exit codes are SPEC.md §9's (`shellper_leased::exit`).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use shellper_leased::{Leased, exit, invocation};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inv = match invocation::read_from_tower(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("leased_worker: {e}");
            std::process::exit(e.exit_code());
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leased_worker: tokio runtime: {e}");
            std::process::exit(exit::STARTUP);
        }
    };
    std::process::exit(rt.block_on(run(inv)));
}

async fn run(inv: invocation::Invocation) -> i32 {
    let leased = match Leased::serve(inv.options()).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("leased_worker: {e}");
            return e.exit_code();
        }
    };
    let c = &inv.config;
    let spawned = Command::new(&c.command)
        .args(&c.args)
        .current_dir(&c.cwd)
        .env_clear()
        .envs(c.env.iter().flatten())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("leased_worker: starting {}: {e}", c.command);
            return exit::STARTUP;
        }
    };
    leased.set_worker(child.id());
    if let Err(e) = invocation::announce_ready(inv.started_at_ms) {
        eprintln!("leased_worker: {e}");
    }
    // The worker is our one child we wait for; its exit goes to the lease.
    let report = leased.reporter();
    tokio::task::spawn_blocking(move || {
        if let Ok(status) = child.wait() {
            report.exited(status.code(), status.signal());
        }
    });
    let ended = leased.ended().await;
    eprintln!(
        "leased_worker: lease ended ({:?}): signalled {}, survivors {}, {} ms",
        ended.reason,
        ended.report.signalled,
        ended.report.survivors.len(),
        ended.report.elapsed.as_millis()
    );
    ended.exit_code
}
