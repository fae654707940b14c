//! Keeps ARCHITECTURE.md's rule true: every /proc read and every signal of
//! the workspace's product code goes through `proctree`.
//!
//! Why it matters: proctree is where the guards live (pid *and* start time
//! before any signal, pidfds, no `cmdline`/`environ` read of a process in
//! `D` state, bounded snapshots). A direct `kill(2)` or `/proc` read
//! elsewhere silently skips them; that is how a bare-sid kill and an
//! unguarded `environ` read slipped in before.
//!
//! Scanned: every `*.rs` under the `src/` and `examples/` directories of
//! every workspace member listed in the root `Cargo.toml`, except
//! `proctree/` itself; the test fails if a member or one of the files the
//! rule was first broken in is not scanned (a moved directory must not
//! silently drop out of the check). Not scanned: `tests/` directories (they
//! signal processes they started themselves, and the LeakGuard checks them
//! independently). Comment lines are skipped. A call of a `.kill()`
//! *method* (a `std`/`tokio` `Child` handle of a child not yet reaped,
//! whose pid cannot be reused) is allowed.

use std::path::{Path, PathBuf};

/// Files that legitimately must, with the reason.
const ALLOWED: &[(&str, &str)] = &[
    (
        "testkit/src/lib.rs",
        "the LeakGuard is the independent checker of proctree's ladders: it must \
         not share their /proc or signal code (ARCHITECTURE.md, testkit)",
    ),
    (
        "testkit/src/cgroup.rs",
        "a test helper: finds the cgroup2 mount and kills and removes the test's \
         own cgroup at teardown, independently of proctree's cgroup code it checks",
    ),
    (
        "testkit/src/minitower.rs",
        "a test helper: signals the minitower it started (its own child, not \
         yet reaped), as the scenario tests it serves did",
    ),
    (
        "tests/src/chaos/procs.rs",
        "the chaos run is a test harness and an independent checker: it signals \
         the processes it injects faults into and reads /proc with its own code \
         (all of it in this one file of the run)",
    ),
    (
        "shellper/examples/bench.rs",
        "a benchmark harness: reads /proc/PID/status for RSS, and its baseline is \
         the naive process-group kill the product replaces",
    ),
    (
        "tower-client/examples/hold_bench.rs",
        "a benchmark harness: reads its own /proc/self/status for RSS",
    ),
];

/// Files the rule was once broken in (issue 9): each must be scanned.
const MUST_SCAN: &[&str] = &[
    "shellper/src/child.rs",
    "shellper/src/startup.rs",
    "leasectl/src/procs.rs",
    "leasectl/src/reap/mod.rs",
    "leasectl/src/reap/plan.rs",
    "leasectl/src/reap/execute.rs",
    "leasectl/src/demo/mod.rs",
    "leasectl/src/demo/setup.rs",
    "leasectl/src/demo/act1.rs",
    "leasectl/src/demo/act2.rs",
    "leased/src/lib.rs",
    "tower-client/src/spawn.rs",
    "leased/examples/leased_worker.rs",
];

/// The workspace members, from the root `Cargo.toml` (`members = [...]`).
fn members(root: &Path) -> Vec<String> {
    let toml = std::fs::read_to_string(root.join("Cargo.toml")).expect("root Cargo.toml");
    let start = toml.find("members").expect("a members list");
    let open = start + toml[start..].find('[').expect("[");
    let close = open + toml[open..].find(']').expect("]");
    toml[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

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
        ("kill_process_group(", "kill_process_group"),
        ("pidfd_send_signal", "pidfd_send_signal"),
        ("test_kill_process", "test_kill_process"),
        ("SYS_kill", "SYS_kill"),
        ("tgkill", "tgkill"),
        ("SYS_tkill", "tkill"),
        ("sigqueue", "sigqueue"),
        ("libc::raise", "libc::raise"),
        ("nix::sys::signal", "nix signals"),
        ("Command::new(\"kill\")", "the kill command"),
        ("Command::new(\"pkill\")", "the pkill command"),
        ("Command::new(\"killall\")", "the killall command"),
        // Killing, freezing or moving processes through a cgroup is a
        // signal by other means: proctree's cgroup module does it.
        ("cgroup.kill\"", "cgroup.kill"),
        ("cgroup.freeze\"", "cgroup.freeze"),
        ("cgroup.procs\"", "cgroup.procs"),
    ] {
        if code.contains(needle) {
            return Some(what);
        }
    }
    // An import that renames a signal call out of sight (`use libc::{kill
    // as k}`).
    if code.starts_with("use ")
        && code.contains("kill")
        && ["libc", "rustix", "nix"].iter().any(|c| code.contains(c))
    {
        return Some("kill import");
    }
    // A free `kill(` call (not a method, not part of a longer name, not a
    // function of the workspace's own named by its path: `crate::new::kill(`).
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("kill(") {
        let at = from + i;
        let before = at.checked_sub(1).map(|j| bytes[j]);
        let path_start = code[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |j| j + 1);
        let path = &code[path_start..at];
        let own = path.ends_with("::")
            && ["crate::", "super::", "self::"]
                .iter()
                .any(|p| path.starts_with(p));
        if !own && !before.is_some_and(|b| b == b'.' || b == b'_' || b.is_ascii_alphanumeric()) {
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
    let members = members(root);
    for m in [
        "leasectl",
        "shellper",
        "tower-client",
        "leased",
        "testkit",
        "tests",
    ] {
        assert!(members.iter().any(|x| x == m), "{m} not in {members:?}");
    }
    let mut files = Vec::new();
    for m in members.iter().filter(|m| *m != "proctree") {
        let before = files.len();
        rs_files(&root.join(m).join("src"), &mut files);
        rs_files(&root.join(m).join("examples"), &mut files);
        assert!(files.len() > before, "no source scanned in member {m}");
    }
    let rel = |f: &PathBuf| {
        f.strip_prefix(root)
            .expect("inside")
            .to_string_lossy()
            .into_owned()
    };
    let scanned: Vec<String> = files.iter().map(rel).collect();
    for f in MUST_SCAN {
        assert!(
            scanned.iter().any(|s| s == f),
            "{f} is not scanned (moved? update MUST_SCAN)"
        );
    }
    for (f, _) in ALLOWED {
        assert!(
            scanned.iter().any(|s| s == f),
            "ALLOWED entry {f} matches no file: remove it"
        );
    }
    let mut offences = Vec::new();
    for f in &files {
        let rel = rel(f);
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
    // A function of our own named `kill`, by its path, is not a signal;
    // any other path to a `kill(` still is.
    assert!(offence("crate::new::kill(&scope, timeout, &id)").is_none());
    assert!(offence("signal::kill(pid, sig)").is_some());
    assert!(offence("kill(pid, 9)").is_some());
    assert!(offence("unsafe { libc::kill(pid, 9) };").is_some());
    assert!(offence("rustix::process::kill_process(p, s)").is_some());
    assert!(offence("kill(pid, SIGTERM)").is_some());
    assert!(offence("let _ = child.kill();").is_none());
    assert!(offence("child.start_kill()").is_none());
    assert!(offence("// reads /proc/PID/stat via \"/proc/\"").is_none());
    assert!(offence(r#"say("/proc scan for tagged processes")"#).is_none());
    assert!(offence("unsafe { libc::killpg(pgid, libc::SIGKILL) };").is_some());
    assert!(offence(r#"std::fs::write(dir.join("cgroup.kill"), "1")"#).is_some());
    assert!(offence(r#"open(dir.join("cgroup.procs"))"#).is_some());
    assert!(offence("libc::syscall(libc::SYS_tgkill, pid, tid, 9)").is_some());
    assert!(offence("libc::syscall(libc::SYS_kill, pid, 9)").is_some());
    assert!(offence("rustix::process::kill_process_group(g, s)").is_some());
    assert!(offence(r#"Command::new("kill").arg("-9")"#).is_some());
    assert!(offence(r#"std::process::Command::new("pkill")"#).is_some());
    assert!(offence("use libc::{kill as send};").is_some());
    assert!(offence("use rustix::process::{Pid, kill_process};").is_some());
    assert!(offence("use shellper_proctree::{kill_tree, KillPlan};").is_none());
    assert!(offence("let n = killed.len();").is_none());
}
