//! `leasectl demo`: the product's main job in one command.
//!
//! Act 1: minitower holds three shellpers (one runs an escape-torture tree)
//! in a throwaway scope; minitower is SIGKILLed; the shellpers see EOF at
//! once (held → lapsed), wait out the reattach window, kill their whole
//! trees (terminating → gone), and /proc proves nothing survives.
//! Act 2: minitower is SIGKILLed again and restarted within the window: it
//! adopts every shellper, nothing is killed (same child pids), then it
//! terminates them on SIGTERM (`--on-exit terminate`) and /proc proves
//! nothing survives.
//!
//! Whatever happens (an error, Ctrl-C, SIGTERM, a panic), [`DemoGuard`]
//! kills minitower and every process carrying this run's
//! `SHELLPER_DEMO_TAG`, which every demo process inherits (environment
//! variables survive fork, exec, setsid and double forks), and the scope
//! directory is a temporary directory removed on drop.
//!
//! One module per act (`act1.rs`, `act2.rs`), what they share in `setup.rs`,
//! and the verdict (`verdict.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::EXIT_INTERRUPTED;
use crate::error::{Error, Result};
use crate::render::{Palette, Style};

mod act1;
mod act2;
mod setup;
mod verdict;

use act1::{Act1, act1};
use act2::{Act2, act2};
pub use setup::DemoGuard;
use setup::{Say, build_missing_binaries, find_minitower};
use verdict::verdict;

/// The environment variable that tags every process of a demo run.
pub const DEMO_TAG_VAR: &str = "SHELLPER_DEMO_TAG";

/// Lease settings of the demo (short, so it finishes in seconds).
const TTL: Duration = Duration::from_millis(500);
const KILL_GRACE: Duration = Duration::from_millis(500);
/// Slack for "died on time" on a loaded two-core machine.
const LATE_SLACK: Duration = Duration::from_millis(1000);
/// How early a death may be measured and still count as "not early" (the
/// deadline estimate comes from a STATUS answer, a few ms old).
const EARLY_SLACK: Duration = Duration::from_millis(50);

/// Runs the demo; the exit code is 0 only if the verdict is good.
pub async fn run(minitower: Option<PathBuf>, window: Duration, p: &Palette) -> Result<i32> {
    let explicit = minitower.is_some();
    let bin = match find_minitower(minitower.clone()) {
        Some(b) => b,
        None if !explicit && build_missing_binaries() => find_minitower(None)
            .ok_or_else(|| Error::Demo("minitower still not found after building it".into()))?,
        None => {
            return Err(Error::Demo(
                "minitower not found next to leasectl: build it with `cargo build --workspace --bins` (or pass --minitower PATH)".into(),
            ));
        }
    };
    if window < Duration::from_secs(1) || window > Duration::from_secs(20) {
        return Err(Error::Demo("--window must be between 1s and 20s".into()));
    }
    let mut guard = DemoGuard::new()?;
    let started = Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Demo(format!("installing a SIGTERM handler: {e}")))?;
    let outcome = tokio::select! {
        r = acts(&mut guard, &bin, window, p) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm.recv() => None,
    };
    let result = match outcome {
        None => {
            println!("\ninterrupted: cleaning up…");
            let n = guard.cleanup();
            println!("killed {n} demo process(es); nothing left running");
            Ok(EXIT_INTERRUPTED)
        }
        Some(Err(e)) => {
            guard.cleanup();
            Err(e)
        }
        Some(Ok((a1, a2))) => {
            let code = verdict(p, &a1, &a2, window, started.elapsed());
            Ok(code)
        }
    };
    let left = guard.tagged().len();
    drop(guard);
    if left > 0 {
        eprintln!("leasectl demo: {left} process(es) were still alive at the end and were killed");
    }
    result
}

async fn acts(
    guard: &mut DemoGuard,
    bin: &Path,
    window: Duration,
    p: &Palette,
) -> Result<(Act1, Act2)> {
    let say = Say { p };
    println!(
        "{}",
        p.paint(
            Style::Bold,
            "leasectl demo: leased shellpers clean up after a dead Tower, and survive a restarted one"
        )
    );
    println!(
        "  scratch dir {}  (every process tagged {DEMO_TAG_VAR}={})",
        guard.dir.display(),
        guard.tag
    );
    let a1 = act1(guard, bin, window, &say).await?;
    let a2 = act2(guard, bin, window, &say).await?;
    Ok((a1, a2))
}
