//! Is a workspace binary as new as its sources?
//!
//! Tests in one crate run other crates' binaries from `target/` (leasectl's
//! tests run `shellper` and `minitower`). `cargo test -p leasectl` builds
//! leasectl, not them: after a change to the shellper, such a test would
//! silently run the old one. [`crate::cargo_bin`] therefore checks each
//! binary against the dep-info file cargo writes beside it
//! (`target/<profile>/<name>.d`: every source file the binary was built
//! from) and fails, naming the newer source, when one was modified after the
//! binary was linked, or no longer exists. `cargo build --workspace --bins`
//! (or `cargo test --workspace`) makes them fresh again.
//!
//! [`ALLOW_STALE_VAR`] set to `1` skips the check (running a deliberately
//! older binary).

use std::path::{Path, PathBuf};

/// Set to `1` to run binaries older than their sources anyway.
pub const ALLOW_STALE_VAR: &str = "SHELLPER_TEST_ALLOW_STALE_BINS";

/// Why a binary is not fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// A source file was modified after the binary.
    NewerSource { source: PathBuf },
    /// A source file the binary was built from is gone (renamed, deleted).
    MissingSource { source: PathBuf },
}

/// The source files a dep-info file lists for its first target (Makefile
/// syntax: `target: dep dep …`, spaces in paths escaped with `\`).
pub fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some(first) = text.lines().find(|l| !l.trim().is_empty()) else {
        return Vec::new();
    };
    // The target itself may hold escaped colons only in odd paths; the
    // separator is the first ": " after it.
    let Some(idx) = first.find(": ") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = first[idx + 2..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ' ' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// Checks `bin` against the sources listed in `dep_info`. `Ok` when every
/// source is older than the binary, or when there is no dep-info file (a
/// binary from elsewhere: nothing to compare with).
pub fn check_fresh(bin: &Path, dep_info: &Path) -> Result<(), Stale> {
    let Ok(text) = std::fs::read_to_string(dep_info) else {
        return Ok(());
    };
    let built = match std::fs::metadata(bin).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => return Ok(()),
    };
    for source in dep_info_sources(&text) {
        match std::fs::metadata(&source).and_then(|m| m.modified()) {
            Ok(t) if t > built => return Err(Stale::NewerSource { source }),
            Ok(_) => {}
            Err(_) => return Err(Stale::MissingSource { source }),
        }
    }
    Ok(())
}

/// The message a test fails with for a stale `bin`.
pub fn stale_message(name: &str, bin: &Path, why: &Stale) -> String {
    let (what, source) = match why {
        Stale::NewerSource { source } => ("was modified after it was built", source),
        Stale::MissingSource { source } => ("no longer exists (it was built from it)", source),
    };
    format!(
        "binary {name} at {} is older than its sources: {} {what}. This test runs \
         another crate's binary, which `cargo test -p <crate>` does not rebuild: run \
         `cargo build --workspace --bins` (or `cargo test --workspace`) first, or set \
         {ALLOW_STALE_VAR}=1 to run it anyway",
        bin.display(),
        source.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn dep_info_lists_sources_with_escaped_spaces() {
        let d = "/t/debug/shellper: /w/a/src/lib.rs /w/my\\ dir/x.rs /w/b.rs\n\n/w/a/src/lib.rs:\n";
        assert_eq!(
            dep_info_sources(d),
            vec![
                PathBuf::from("/w/a/src/lib.rs"),
                PathBuf::from("/w/my dir/x.rs"),
                PathBuf::from("/w/b.rs")
            ]
        );
        assert!(dep_info_sources("").is_empty());
    }

    fn set_mtime(p: &Path, t: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    /// A source newer than the binary, or gone, makes it stale; older
    /// sources and no dep-info at all do not.
    #[test]
    fn a_binary_older_than_a_source_is_stale() {
        let dir = crate::tests::tempfile_dir("testkit-fresh");
        let bin = dir.join("shellper");
        let src = dir.join("lib.rs");
        let dep = dir.join("shellper.d");
        std::fs::write(&bin, b"").unwrap();
        std::fs::write(&src, b"").unwrap();
        std::fs::write(
            &dep,
            format!("{}: {}\n", bin.display(), src.display()).as_bytes(),
        )
        .unwrap();
        let now = SystemTime::now();
        set_mtime(&src, now - Duration::from_secs(60));
        set_mtime(&bin, now - Duration::from_secs(30));
        assert_eq!(check_fresh(&bin, &dep), Ok(()));
        set_mtime(&src, now);
        assert_eq!(
            check_fresh(&bin, &dep),
            Err(Stale::NewerSource {
                source: src.clone()
            })
        );
        let msg = stale_message(
            "shellper",
            &bin,
            &Stale::NewerSource {
                source: src.clone(),
            },
        );
        assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
        std::fs::remove_file(&src).unwrap();
        assert_eq!(
            check_fresh(&bin, &dep),
            Err(Stale::MissingSource { source: src })
        );
        assert_eq!(check_fresh(&bin, &dir.join("none.d")), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
