//! Finding what the commands work on (codev's script, Node, the shellper
//! binary) and writing files.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

use super::*;

/// codev's script and where its neighbours go.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    /// `…/dist/terminal/shellper-main.js`.
    pub script: PathBuf,
    /// `…/dist/terminal/shellper-main.orig.js`.
    pub backup: PathBuf,
    /// `…/dist/terminal/shellper-main.js.orig` (the README's old manual backup).
    #[serde(skip)]
    pub legacy_backup: PathBuf,
    /// `…/dist/terminal/shellper`, where the shim looks first.
    pub binary: PathBuf,
}

impl Layout {
    fn in_dir(dir: &Path) -> Layout {
        Layout {
            script: dir.join("shellper-main.js"),
            backup: dir.join(BACKUP_NAME),
            legacy_backup: dir.join(LEGACY_BACKUP_NAME),
            binary: dir.join("shellper"),
        }
    }

    pub(super) fn on_disk(&self) -> Result<OnDisk> {
        let script = read(&self.script)?;
        let backup_same = match std::fs::read(&self.backup) {
            Ok(b) => Some(b == script),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("reading", &self.backup, e)),
        };
        Ok(OnDisk {
            script: classify(&script),
            backup_same,
            legacy_backup: self.legacy_backup.is_file(),
        })
    }
}

pub(super) fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| Error::io("reading", p, e))
}

/// Finds codev's script: `--codev DIR` (the package or its dist/terminal),
/// else `npm root -g`/@cluesmith/codev.
pub async fn locate(place: &Place) -> Result<Layout> {
    let root = match &place.codev {
        Some(dir) => dir.clone(),
        None => npm_root_global().await?.join(CODEV_PACKAGE),
    };
    for dir in [root.join("dist/terminal"), root.clone()] {
        if dir.join("shellper-main.js").is_file() {
            // Absolute, so every report names the files unambiguously.
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            return Ok(Layout::in_dir(&dir));
        }
    }
    let hint = if place.codev.is_some() {
        "pass codev's package directory (the one with package.json and dist/)"
    } else {
        "is codev installed (npm install -g @cluesmith/codev)? Else pass --codev DIR"
    };
    Err(Error::Codev(format!(
        "no codev here: neither {} nor {} exists; {hint}",
        root.join(SCRIPT_REL).display(),
        root.join("shellper-main.js").display()
    )))
}

/// Runs a tool with a deadline; its stdout, trimmed.
pub(super) async fn ask(program: &Path, args: &[&str]) -> std::io::Result<String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let output = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer in {}s", TOOL_TIMEOUT.as_secs()),
            )
        })??;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(std::io::Error::other(format!(
            "{}: {}",
            output.status,
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

pub(super) async fn npm_root_global() -> Result<PathBuf> {
    let npm = which("npm").ok_or_else(|| {
        Error::Codev("no `npm` on PATH to find codev's global install: pass --codev DIR".into())
    })?;
    let root = ask(&npm, &["root", "-g"])
        .await
        .map_err(|e| Error::Codev(format!("`npm root -g` failed: {e}; pass --codev DIR")))?;
    Ok(PathBuf::from(root))
}

/// `name` in a directory of `$PATH`, as an executable file.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Asks the Node that runs codev for its version and `process.execve`.
pub(super) async fn probe_node(explicit: Option<&Path>) -> std::result::Result<NodeInfo, String> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => which("node").ok_or_else(|| {
            "no `node` on PATH (codev's Tower runs on Node; pass --node PATH, the Node that runs codev)"
                .to_string()
        })?,
    };
    let answer = ask(&path, &["-e", NODE_PROBE])
        .await
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    NodeInfo::parse(path.clone(), &answer)
        .ok_or_else(|| format!("{} answered {answer:?}, not a Node version", path.display()))
}

/// The shellper binary to install: `--shellper`, else next to this
/// executable, else on PATH.
pub(super) fn source_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Codev(format!(
                "--shellper {}: not an executable file",
                p.display()
            )))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("shellper")))
        .filter(|p| is_executable(p));
    beside.or_else(|| which("shellper")).ok_or_else(|| {
        Error::Codev(
            "no shellper binary next to leasectl or on PATH: pass --shellper PATH \
             (cargo build --release -p shellper builds one)"
                .into(),
        )
    })
}

/// Which shellper the shim at `layout` would start, the way it looks
/// (`$SHELLPER_BIN` as leasectl sees it, which may differ from the Tower's
/// environment; then next to the script; then `PATH`).
pub(super) fn shim_would_launch(layout: &Layout) -> (Option<PathBuf>, &'static str) {
    if let Some(b) = std::env::var_os("SHELLPER_BIN") {
        let b = PathBuf::from(b);
        return if is_executable(&b) {
            (Some(b), "$SHELLPER_BIN")
        } else {
            (None, "$SHELLPER_BIN (not an executable file)")
        };
    }
    if is_executable(&layout.binary) {
        return (Some(layout.binary.clone()), "next to the shim");
    }
    match which("shellper") {
        Some(p) => (Some(p), "on PATH"),
        None => (None, "nowhere: no shellper next to the shim or on PATH"),
    }
}

/// `BIN --version`, for the reports (`shellper 0.1.0`).
pub(super) async fn version_of(bin: &Path) -> Option<String> {
    ask(bin, &["--version"])
        .await
        .ok()
        .filter(|v| !v.is_empty())
}

/// Writes `bytes` to `dest` atomically (tower-client's one atomic write):
/// codev starting a session reads the old file or the new one, never half
/// of one.
pub(super) fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    tower_client::write_atomic(dest, bytes, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            // A global npm prefix (/usr/lib/node_modules) belongs to root.
            Error::Codev(format!(
                "writing {}: permission denied: codev's directory belongs to another user; \
                 run leasectl codev as that user (e.g. with sudo)",
                dest.display()
            ))
        } else {
            Error::io("writing", dest, e)
        }
    })
}

pub(super) fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map_or(0o644, |m| m.permissions().mode() & 0o7777)
}

pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
