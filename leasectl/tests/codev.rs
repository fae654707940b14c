//! `leasectl codev install | status | uninstall` against a directory laid
//! out like codev's npm package (`package.json`, `dist/terminal/
//! shellper-main.js` that identifies itself), with the real `shellper`
//! binary; and the shim's hand-over to codev's original script on a
//! platform the shellper does not support.
//!
//! The Node that "runs codev" is a two-line script answering leasectl's
//! probe (version and whether `process.execve` exists): the decision under
//! test is leasectl's, given what Node says, and it must not depend on which
//! Node the machine has. The hand-over test runs a real Node.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shellper_testkit::{LeakGuard, cargo_bin};

/// The shim as the repository has it (leasectl embeds the same bytes).
fn shim() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../integrations/codev/shellper-main.js"),
    )
    .unwrap()
}

/// codev's script of a given version: says who it is when run.
fn codev_script(version: &str) -> String {
    format!(
        "#!/usr/bin/env node\n\
         // codev {version}: Shellper main (the Node shellper)\n\
         import {{ tag }} from './shellper-process.js';\n\
         console.log(`codev-shellper {version} config=${{process.argv[2]}} ${{tag}}`);\n"
    )
}

/// A codev install: `<tmp>/lib/node_modules/@cluesmith/codev`.
struct Codev {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
}

impl Codev {
    fn new(version: &str) -> Codev {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("lib/node_modules/@cluesmith/codev");
        let term = root.join("dist/terminal");
        std::fs::create_dir_all(&term).unwrap();
        std::fs::write(
            root.join("package.json"),
            format!(r#"{{"name":"@cluesmith/codev","version":"{version}","type":"module"}}"#),
        )
        .unwrap();
        std::fs::write(term.join("shellper-main.js"), codev_script(version)).unwrap();
        std::fs::write(
            term.join("shellper-process.js"),
            "export const tag = 'sibling-import-ok';\n",
        )
        .unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        Codev {
            _tmp: tmp,
            root,
            bin,
        }
    }

    fn term(&self) -> PathBuf {
        self.root.join("dist/terminal")
    }
    fn script(&self) -> Vec<u8> {
        std::fs::read(self.term().join("shellper-main.js")).unwrap()
    }
    fn backup(&self) -> Option<Vec<u8>> {
        std::fs::read(self.term().join("shellper-main.orig.js")).ok()
    }
    fn binary(&self) -> PathBuf {
        self.term().join("shellper")
    }

    /// A `node` in `self.bin` that answers leasectl's probe like `version`.
    fn fake_node(&self, version: &str, execve: bool) -> PathBuf {
        let p = self.bin.join(format!("node-{version}"));
        std::fs::write(&p, format!("#!/bin/sh\nprintf '%s' '{version} {execve}'\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Runs `leasectl codev ARGS --codev ROOT` with PATH = the fake bin
    /// directory only (no node, npm or shellper from the machine).
    fn leasectl(&self, guard: &LeakGuard, args: &[&str]) -> Output {
        let mut c = Command::new(cargo_bin("leasectl"));
        c.arg("codev").args(args).arg("--codev").arg(&self.root);
        c.env("PATH", &self.bin).env_remove("SHELLPER_BIN");
        guard.apply(&mut c);
        c.output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn shellper_bin() -> String {
    cargo_bin("shellper").display().to_string()
}

#[test]
fn install_status_reinstall_uninstall_round_trip() {
    let guard = LeakGuard::new("codev_round_trip");
    let codev = Codev::new("1.4.0");
    let original = codev.script();
    let node = codev.fake_node("v22.15.0", true);
    let node = node.to_str().unwrap();

    let o = codev.leasectl(&guard, &["status", "--node", node]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("codev's own Node shellper"),
        "{}",
        text(&o)
    );

    let o = codev.leasectl(
        &guard,
        &["install", "--node", node, "--shellper", &shellper_bin()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("backed up codev's shellper-main.js"),
        "{}",
        text(&o)
    );
    assert_eq!(codev.script(), shim(), "the shim is in place");
    assert_eq!(
        codev.backup().as_deref(),
        Some(&original[..]),
        "the original is kept"
    );
    assert_eq!(
        std::fs::read(codev.binary()).unwrap(),
        std::fs::read(shellper_bin()).unwrap()
    );
    let mode = std::fs::metadata(codev.binary())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the binary is executable: {mode:o}");

    let o = codev.leasectl(&guard, &["status", "--node", node]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains(&codev.binary().display().to_string()), "{t}");
    assert!(
        t.contains("shellper 0.1.0") && t.contains("next to the shim"),
        "{t}"
    );
    assert!(t.contains("(codev's original)"), "{t}");

    let o = codev.leasectl(&guard, &["status", "--node", node, "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["installed"], "shim", "{doc}");
    assert_eq!(doc["launches"], "native", "{doc}");
    assert_eq!(doc["backup_exists"], true, "{doc}");
    assert_eq!(doc["ok"], true, "{doc}");

    // A second install must not take the shim for codev's script.
    let o = codev.leasectl(
        &guard,
        &["install", "--node", node, "--shellper", &shellper_bin()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("kept"), "{}", text(&o));
    assert_eq!(codev.backup().as_deref(), Some(&original[..]));
    assert_eq!(codev.script(), shim());

    // The binary gone: status says the install is broken.
    std::fs::remove_file(codev.binary()).unwrap();
    let o = codev.leasectl(&guard, &["status", "--node", node]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no binary"), "{}", text(&o));

    let o = codev.leasectl(&guard, &["uninstall"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(codev.script(), original, "codev's script is back");
    assert_eq!(codev.backup(), None);
    assert!(!codev.binary().exists());

    let o = codev.leasectl(&guard, &["uninstall"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to undo"), "{}", text(&o));
    assert_eq!(codev.script(), original);
    guard.finish();
}

#[test]
fn install_over_a_newer_codev_backs_up_the_new_script() {
    let guard = LeakGuard::new("codev_upgrade");
    let codev = Codev::new("1.4.0");
    let node = codev.fake_node("v24.1.0", true);
    let node = node.to_str().unwrap();
    let o = codev.leasectl(
        &guard,
        &["install", "--node", node, "--shellper", &shellper_bin()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // `npm install -g @cluesmith/codev` of 1.5.0 writes its own script over
    // the shim (the stale backup of 1.4.0 may survive in place).
    let newer = codev_script("1.5.0");
    std::fs::write(codev.term().join("shellper-main.js"), &newer).unwrap();
    let o = codev.leasectl(&guard, &["status", "--node", node]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let o = codev.leasectl(
        &guard,
        &["install", "--node", node, "--shellper", &shellper_bin()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("codev upgraded?"), "{}", text(&o));
    assert_eq!(codev.backup().as_deref(), Some(newer.as_bytes()));
    assert_eq!(codev.script(), shim());

    let o = codev.leasectl(&guard, &["uninstall"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        codev.script(),
        newer.as_bytes(),
        "1.5.0's script is restored"
    );
    guard.finish();
}

#[test]
fn a_missing_or_old_node_is_refused_and_nothing_changes() {
    let guard = LeakGuard::new("codev_node");
    let codev = Codev::new("1.4.0");
    let original = codev.script();
    let untouched = |codev: &Codev| {
        assert_eq!(codev.script(), original);
        assert_eq!(codev.backup(), None);
        assert!(!codev.binary().exists());
    };

    // No node on PATH.
    let o = codev.leasectl(&guard, &["install", "--shellper", &shellper_bin()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no `node` on PATH"), "{}", text(&o));
    untouched(&codev);

    // --node naming nothing.
    let gone = codev.bin.join("no-such-node");
    let o = codev.leasectl(
        &guard,
        &[
            "install",
            "--node",
            gone.to_str().unwrap(),
            "--shellper",
            &shellper_bin(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cannot run"), "{}", text(&o));
    untouched(&codev);

    // A Node without process.execve.
    let old = codev.fake_node("v22.14.0", false);
    let o = codev.leasectl(
        &guard,
        &[
            "install",
            "--node",
            old.to_str().unwrap(),
            "--shellper",
            &shellper_bin(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("v22.14.0") && t.contains("22.15.0") && t.contains("--force"),
        "{t}"
    );
    untouched(&codev);

    // --force installs anyway, and says what it overrode.
    let o = codev.leasectl(
        &guard,
        &["install", "--force", "--shellper", &shellper_bin()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("--force: installing anyway"),
        "{}",
        text(&o)
    );
    assert_eq!(codev.script(), shim());
    assert_eq!(codev.backup().as_deref(), Some(&original[..]));
    // ... and status reports the Node it could not find.
    let o = codev.leasectl(&guard, &["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    guard.finish();
}

#[test]
fn no_codev_is_a_clear_error() {
    let guard = LeakGuard::new("codev_missing");
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Command::new(cargo_bin("leasectl"));
    c.args(["codev", "status", "--codev"]).arg(tmp.path());
    guard.apply(&mut c);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("dist/terminal/shellper-main.js"),
        "{}",
        text(&o)
    );
    guard.finish();
}

/// A real Node: `SHELLPER_TEST_NODE`, else `node` on PATH.
fn real_node() -> Option<PathBuf> {
    if let Some(n) = std::env::var_os("SHELLPER_TEST_NODE") {
        return Some(PathBuf::from(n));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
}

#[test]
fn on_macos_the_shim_hands_over_to_codevs_original_and_says_so_once() {
    let Some(node) = real_node() else {
        if std::env::var_os("SHELLPER_REQUIRE_NODE_EXECVE").is_some() {
            panic!("no Node to run the shim with (SHELLPER_TEST_NODE or node on PATH)");
        }
        eprintln!("note: no node on PATH: the shim's hand-over is not tested");
        return;
    };
    let guard = LeakGuard::new("codev_macos");
    let codev = Codev::new("1.4.0");
    let fake = codev.fake_node("v22.15.0", true);
    let o = codev.leasectl(
        &guard,
        &[
            "install",
            "--node",
            fake.to_str().unwrap(),
            "--shellper",
            &shellper_bin(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Node on macOS, as far as the shim can tell.
    let darwin = codev.bin.join("darwin.cjs");
    std::fs::write(
        &darwin,
        "Object.defineProperty(process, 'platform', { value: 'darwin' });\n",
    )
    .unwrap();
    let session_log = codev.bin.join("sh-1.log");
    let mut c = Command::new(&node);
    c.arg("--require")
        .arg(&darwin)
        .arg(codev.term().join("shellper-main.js"))
        .arg(r#"{"command":"bash"}"#)
        .stderr(std::fs::File::create(&session_log).unwrap());
    guard.apply(&mut c);
    let o = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let log = std::fs::read_to_string(&session_log).unwrap();
    assert_eq!(o.status.code(), Some(0), "stdout {stdout}\nlog {log}");
    assert_eq!(
        stdout.trim(),
        r#"codev-shellper 1.4.0 config={"command":"bash"} sibling-import-ok"#,
        "codev's original ran, with codev's argument and its sibling import"
    );
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "one line in the session log: {log}");
    assert!(
        lines[0].contains("does not run on darwin") && lines[0].contains("shellper-main.orig.js"),
        "{log}"
    );

    // Without the backup, the shim fails with a reason instead.
    std::fs::remove_file(codev.term().join("shellper-main.orig.js")).unwrap();
    let mut c = Command::new(&node);
    c.arg("--require")
        .arg(&darwin)
        .arg(codev.term().join("shellper-main.js"))
        .arg("{}");
    guard.apply(&mut c);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("reinstall codev"), "{}", text(&o));
    guard.finish();
}
