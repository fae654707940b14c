//! The shellper's resident size is mostly its mapped binary and libraries
//! (every page of a small binary ends up resident), so what gets compiled
//! into it is what an idle shellper costs. Cargo unifies features across the
//! packages of one build: a feature that minitower or leasectl enables also
//! lands in the shellper built beside them. This test reads the resolved
//! features of the builds the README and the demo use and fails on the ones
//! measured to cost memory (BENCHMARKS.md, "Where the memory goes"):
//!
//! * tokio's `rt-multi-thread`: the shellper runs a current-thread runtime,
//!   but the multi-thread scheduler's statistics call `pow`, which links
//!   libm (0.3 MiB resident);
//! * tracing-subscriber's `env-filter` (regex) and default features;
//! * clap's `color` and `suggestions`.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "tokio feature \"rt-multi-thread\"",
    "tracing-subscriber feature \"env-filter\"",
    "tracing-subscriber feature \"default\"",
    "tracing-subscriber feature \"ansi\"",
    "tracing-subscriber feature \"tracing-log\"",
    "regex-automata",
    "clap feature \"color\"",
    "clap feature \"suggestions\"",
];

/// `cargo tree -e features` for the given packages, normal dependencies of
/// the host (what `cargo build -p …` compiles into binaries).
fn resolved_features(packages: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--locked", "--offline", "-e", "features,normal"])
        .args(["--prefix", "none", "--no-dedupe"]);
    for p in packages {
        if *p == "--workspace" {
            cmd.arg(p);
        } else {
            cmd.args(["-p", p]);
        }
    }
    let out = cmd.output().expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn assert_lean(packages: &[&str]) {
    let tree = resolved_features(packages);
    let found: Vec<&str> = FORBIDDEN
        .iter()
        .copied()
        .filter(|f| tree.contains(f))
        .collect();
    assert!(
        found.is_empty(),
        "`cargo build {packages:?}` compiles {found:?} into the shellper; see \
         BENCHMARKS.md (where the memory goes) before adding them back"
    );
    assert!(
        tree.contains("tokio feature \"rt\""),
        "cargo tree output not understood:\n{tree}"
    );
}

/// README: `cargo build --release -p shellper`.
#[test]
fn the_readme_build_compiles_nothing_that_costs_idle_memory() {
    assert_lean(&["shellper"]);
}

/// The demo (`leasectl demo`) builds minitower and the shellper together.
#[test]
fn the_demo_build_compiles_nothing_that_costs_idle_memory() {
    assert_lean(&["tower-client", "shellper"]);
}

/// `cargo build --release --workspace --bins`: every binary's features are
/// unified, minitower's and leasectl's included. (Examples and tests add
/// dev-dependencies, tokio's multi-thread runtime among them: build the
/// shellper on its own after them, as tests/bench/compare.sh does.)
#[test]
fn the_workspace_build_compiles_nothing_that_costs_idle_memory() {
    assert_lean(&["--workspace"]);
}
