//! What the command-line tools built on this crate share (`minitower` here,
//! `leasectl`): one logging set-up, so that both read `RUST_LOG` the same way.
//! Behind the `cli` feature, with the dependencies only they need.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Logs to stderr, filtered by `RUST_LOG` (`warn` by default): a level
/// (`debug`) or `target=level` directives separated by commas
/// (`warn,tower_client=debug`). `Targets`, not `EnvFilter`: the workspace
/// does without tracing-subscriber's `env-filter` feature (regex), which
/// feature unification would hand to every binary built beside this one,
/// the shellper included (BENCHMARKS.md, where the memory goes).
/// An unparsable `RUST_LOG` means the default. stdout stays the tools'
/// own (minitower's JSON lines, leasectl's reports).
pub fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::WARN));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
}
