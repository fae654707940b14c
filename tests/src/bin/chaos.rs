//! The long chaos run: `chaos [--seed N] [--cycles N] [--sessions N]
//! [--pending-faults] [--faults A,B] [--quiet]`. Build everything first
//! (`cargo build --release --workspace --bins`); it finds `minitower` and
//! `shellper` next to itself. Prints the figures, or the seed and the step
//! that failed (exit 1).

use std::time::{SystemTime, UNIX_EPOCH};

use shellper_e2e::chaos::{ChaosConfig, run};
use shellper_testkit::LeakGuard;

fn usage() -> ! {
    eprintln!(
        "usage: chaos [--seed N] [--cycles N] [--sessions N] [--pending-faults] [--faults A,B] [--quiet]\n\
         Runs a seeded chaos schedule against minitower and shellpers (built next to this binary)."
    );
    std::process::exit(2);
}

fn main() {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut cycles = 1000;
    let mut sessions = 3;
    let mut pending = false;
    let mut only: Option<Vec<String>> = None;
    let mut verbose = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("chaos: {what} needs a number");
                usage()
            })
        };
        match a.as_str() {
            "--seed" => seed = num("--seed"),
            "--cycles" => cycles = num("--cycles") as u32,
            "--sessions" => sessions = num("--sessions") as usize,
            "--pending-faults" => pending = true,
            "--faults" => {
                let list = args.next().unwrap_or_else(|| usage());
                only = Some(list.split(',').map(str::to_string).collect());
                // Naming a pending fault means running it.
                pending = true;
            }
            "--quiet" => verbose = false,
            "-h" | "--help" => usage(),
            other => {
                eprintln!("chaos: unknown argument {other:?}");
                usage()
            }
        }
    }
    let mut cfg = ChaosConfig::new(seed, cycles);
    cfg.sessions = sessions;
    cfg.pending_faults = pending;
    cfg.only = only;
    cfg.verbose = verbose;
    eprintln!("chaos: seed {seed}, {cycles} cycles, {sessions} sessions, pending faults {pending}");
    let guard = LeakGuard::new("chaos");
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("chaos: temp dir: {e}");
            std::process::exit(1);
        }
    };
    let result = run(cfg, guard.tag(), dir.path());
    let leaks = guard.wait_gone(std::time::Duration::from_secs(5));
    let killed = guard.kill_all();
    match result {
        Ok(report) => {
            println!("{report}");
            if !leaks.is_empty() {
                eprintln!(
                    "chaos: LEAK: {} process(es) survived the run: {killed:?}",
                    leaks.len()
                );
                std::process::exit(1);
            }
        }
        Err(failure) => {
            eprintln!("{failure}");
            // Keep the logs of a failed run.
            let kept = dir.keep();
            eprintln!("chaos: logs kept in {}", kept.display());
            std::process::exit(1);
        }
    }
    std::mem::forget(guard);
}
