//! Keeps ARCHITECTURE.md's rule true: every /proc read and every signal of
//! the workspace's product code goes through `proctree`.
//!
//! Why it matters: proctree is where the guards live (pid *and* start time
//! before any signal, pidfds, no `cmdline`/`environ` read of a process in
//! `D` state, bounded snapshots). A direct `kill(2)` or `/proc` read
//! elsewhere silently skips them; that is how a bare-sid kill and an
//! unguarded `environ` read slipped in before.
//!
//! Scanned: every `*.rs` under a workspace member's `src/` directory, except
//! `proctree/` itself. Not scanned: tests (they signal processes they
//! started themselves, and the LeakGuard checks them independently) and
//! `examples/` (benchmark harnesses that read `/proc/PID/status` for RSS).
//! Comment lines are skipped. A call of a `.kill()` *method* (a
//! `std`/`tokio` `Child` handle of a child not yet reaped, whose pid cannot
//! be reused) is allowed.

use std::path::{Path, PathBuf};

/// Files that legitimately must, with the reason.
const ALLOWED: &[(&str, &str)] = &[
    (
        "testkit/src/lib.rs",
        "the LeakGuard is the independent checker of proctree's ladders: it must \
         not share their /proc or signal code (ARCHITECTURE.md, testkit)",
    ),
    (
        "tests/src/chaos.rs",
        "the chaos run is a test harness and an independent checker: it signals \
         the processes it injects faults into and reads /proc with its own code",
    ),
];

/// What counts as a /proc read or a signal outside proctree.
fn offence(line: &str) -> Option<&'static str> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return None;
    }
    if code.contains("\"/proc/") || code.contains("\"/proc\"") {
        return Some("/proc path");
    }
    for (needle, what) in [
        ("libc::kill", "libc::kill"),
        ("rustix::process::kill", "rustix::process::kill*"),
        ("kill_process(", "kill_process"),
        ("pidfd_send_signal", "pidfd_send_signal"),
        ("test_kill_process", "test_kill_process"),
    ] {
        if code.contains(needle) {
            return Some(what);
        }
    }
    // A free `kill(` call (not a method, not part of a longer name).
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("kill(") {
        let at = from + i;
        let before = at.checked_sub(1).map(|j| bytes[j]);
        if !before.is_some_and(|b| b == b'.' || b == b'_' || b.is_ascii_alphanumeric()) {
            return Some("kill(");
        }
        from = at + 1;
    }
    None
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn only_proctree_reads_proc_or_sends_signals() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut files = Vec::new();
    for member in std::fs::read_dir(root).expect("workspace").flatten() {
        let dir = member.path();
        let name = member.file_name();
        if name == "proctree"
            || name == "target"
            || name == "fuzz"
            || !dir.join("Cargo.toml").exists()
        {
            continue;
        }
        rs_files(&dir.join("src"), &mut files);
    }
    assert!(files.len() > 20, "found only {files:?}");
    let mut offences = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .expect("inside")
            .to_string_lossy()
            .into_owned();
        if ALLOWED.iter().any(|(p, _)| *p == rel) {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable");
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = offence(line) {
                offences.push(format!("{rel}:{}: {what}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "/proc reads and signals belong in proctree (add a function there, or an \
         ALLOWED entry with its reason):\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_scanner_catches_what_it_should() {
    assert!(offence(r#"std::fs::read(format!("/proc/{pid}/environ"))"#).is_some());
    assert!(offence(r#"std::fs::read_dir("/proc")"#).is_some());
    assert!(offence("unsafe { libc::kill(pid, 9) };").is_some());
    assert!(offence("rustix::process::kill_process(p, s)").is_some());
    assert!(offence("kill(pid, SIGTERM)").is_some());
    assert!(offence("let _ = child.kill();").is_none());
    assert!(offence("child.start_kill()").is_none());
    assert!(offence("// reads /proc/PID/stat via \"/proc/\"").is_none());
    assert!(offence(r#"say("/proc scan for tagged processes")"#).is_none());
}
