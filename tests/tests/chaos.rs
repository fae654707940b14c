//! The CI-sized chaos run: 100 seeded cycles (a few minutes) over one scope.
//! `CHAOS_SEED` and `CHAOS_CYCLES` override the schedule; a failure names the
//! seed and the step. The long run is the `chaos` binary (see BENCHMARKS.md).
//! This is the only test of its binary: the run makes the process a child
//! subreaper and reaps every child itself.

use shellper_e2e::chaos::{ChaosConfig, run};
use shellper_testkit::LeakGuard;

#[test]
fn chaos_ci_run_keeps_every_invariant() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("CHAOS_SEED").unwrap_or(0x5eed_0011);
    let cycles = env("CHAOS_CYCLES").unwrap_or(100) as u32;
    let mut cfg = ChaosConfig::new(seed, cycles);
    cfg.pending_faults = std::env::var_os("CHAOS_PENDING_FAULTS").is_some();
    cfg.verbose = std::env::var_os("CHAOS_VERBOSE").is_some();
    let guard = LeakGuard::new("chaos_ci").with_settle(std::time::Duration::from_secs(5));
    let dir = tempfile::tempdir().expect("temp dir");
    match run(cfg, guard.tag(), dir.path()) {
        Ok(report) => {
            eprintln!("{report}");
            assert_eq!(report.cycles, cycles);
            assert_eq!((report.orphans, report.false_kills), (0, 0));
        }
        Err(failure) => {
            let kept = dir.keep();
            panic!("{failure}\nlogs kept in {}", kept.display());
        }
    }
    guard.finish();
}
