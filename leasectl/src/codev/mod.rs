//! `leasectl codev install | status | uninstall`: put our shellper under an
//! unmodified codev, show which shellper codev launches, and undo it.
//!
//! codev's Tower starts every session as `node <codev>/dist/terminal/
//! shellper-main.js CONFIG` and cannot launch a native binary, so the swap is
//! a file swap: codev's script is kept beside the shim as
//! `shellper-main.orig.js` (the shim hands over to it on a platform the
//! shellper does not support), the shim (`integrations/codev/
//! shellper-main.js`, embedded in this binary so a lone `leasectl` can
//! install it) takes its place, and the `shellper` binary goes next to it,
//! where the shim looks first. Doing it by hand was four shell lines that
//! lost the original on a second run and said nothing about an old Node.
//!
//! The decisions (what to back up, what a re-install or an install over an
//! upgraded codev does, whether the Node can run the shim) are pure functions
//! of what is on disk ([`plan_install`], [`plan_uninstall`],
//! [`NodeInfo::supports_shim`]); the rest reads and writes files, each write
//! to a temporary file renamed into place, the shim last, so codev never
//! starts a session on a shim without its binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::exit::{EXIT_FOUND, EXIT_OK};
use crate::output::{json_out, out};

/// The shim, as installed (`integrations/codev/shellper-main.js`).
pub const SHIM: &str = include_str!("shellper-main.js");

/// The line that marks a `shellper-main.js` as our shim.
pub const SHIM_MARKER: &str = "@shellper-shim";

/// The script codev launches, relative to its package root.
pub const SCRIPT_REL: &str = "dist/terminal/shellper-main.js";

/// codev's original script, kept next to the shim (the shim's macOS
/// fallback imports it under this name: it must end in `.js`).
pub const BACKUP_NAME: &str = "shellper-main.orig.js";

/// Where the README's manual instructions used to keep the original.
pub const LEGACY_BACKUP_NAME: &str = "shellper-main.js.orig";

/// codev's npm package name, under `npm root -g`.
pub const CODEV_PACKAGE: &str = "@cluesmith/codev";

/// The first Node with `process.execve`, which the shim needs.
pub const MIN_NODE: (u32, u32, u32) = (22, 15, 0);

/// How long `node` and `npm` get to answer a question.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

const CODEV_HELP: &str = "\
codev's Tower starts every session as `node <codev>/dist/terminal/shellper-main.js
CONFIG`. `install` keeps that script as shellper-main.orig.js, puts the shim (which
replaces the Node process with the native shellper through process.execve: same pid,
same start time) in its place and the shellper binary next to it; `uninstall` puts
codev's script back. Sessions started before keep their shellper until they end;
restart the Tower (afx tower stop; afx tower start) for new sessions to use the new one.

Examples:
  leasectl codev install                      codev from `npm root -g`, shellper next to leasectl
  leasectl codev install --codev ~/src/codev  a codev checkout or another install
  leasectl codev install --node ~/.nvm/versions/node/v22.15.0/bin/node
  leasectl codev status                       which shellper codev launches; is the backup there?
  leasectl codev status --json
  leasectl codev uninstall                    codev's own shellper-main.js back

Exit codes:
  0  done; `status`: codev launches the native shellper, and it can
  1  `status`: codev launches its own Node shellper, or the install is broken
     (no shellper binary the shim would find, a Node without process.execve)
  2  error: codev not found, Node too old (install without --force), no
     backup to restore, a file could not be written";

/// `leasectl codev …`.
#[derive(Debug, Subcommand)]
#[command(after_long_help = CODEV_HELP)]
pub enum CodevCommand {
    /// Swap codev's shellper-main.js for the shim and the native shellper (keeps a backup)
    #[command(after_long_help = CODEV_HELP)]
    Install {
        #[command(flatten)]
        place: Place,
        /// The Node that runs codev [default: node on PATH]
        #[arg(long, value_name = "PATH")]
        node: Option<PathBuf>,
        /// The shellper binary to install [default: shellper next to leasectl, else on PATH]
        #[arg(long, value_name = "PATH")]
        shellper: Option<PathBuf>,
        /// Install even when that Node has no process.execve (Node < 22.15) or cannot be run
        #[arg(long)]
        force: bool,
    },
    /// Which shellper codev launches, whether the backup exists, and whether Node can run the shim
    #[command(after_long_help = CODEV_HELP)]
    Status {
        #[command(flatten)]
        place: Place,
        /// The Node that runs codev [default: node on PATH]
        #[arg(long, value_name = "PATH")]
        node: Option<PathBuf>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Put codev's own shellper-main.js back and remove the shellper binary installed beside it
    #[command(after_long_help = CODEV_HELP)]
    Uninstall {
        #[command(flatten)]
        place: Place,
    },
}

/// Where codev is.
#[derive(Debug, Args)]
pub struct Place {
    /// codev's package directory (holding dist/terminal/shellper-main.js), or that
    /// dist/terminal directory (default: @cluesmith/codev under `npm root -g`)
    #[arg(long, value_name = "DIR")]
    pub codev: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// Pure logic.

/// What a `shellper-main.js` (or its backup) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptKind {
    /// Our shim, byte for byte the one this leasectl carries.
    Shim,
    /// Our shim, but another version (an older or newer leasectl put it there).
    OtherShim,
    /// Anything else: codev's own script.
    Codev,
}

/// Classifies a script by its content.
pub fn classify(content: &[u8]) -> ScriptKind {
    if content == SHIM.as_bytes() {
        ScriptKind::Shim
    } else if content
        .windows(SHIM_MARKER.len())
        .any(|w| w == SHIM_MARKER.as_bytes())
    {
        ScriptKind::OtherShim
    } else {
        ScriptKind::Codev
    }
}

/// What is on disk before an install or an uninstall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// The kind of `shellper-main.js`.
    pub script: ScriptKind,
    /// Whether `shellper-main.js` and the backup have the same bytes (`None`:
    /// no backup).
    pub backup_same: Option<bool>,
    /// The README's old manual backup (`shellper-main.js.orig`) exists.
    pub legacy_backup: bool,
}

/// One step of an install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Copy codev's script to the backup (there was none).
    Backup,
    /// codev's script differs from the backup: codev was upgraded (or
    /// reinstalled) since the last install, which put its own script back;
    /// the backup of the old version is replaced by the current one.
    RefreshBackup,
    /// The backup already holds this very script.
    KeepBackup,
    /// Rename the old manual backup (`shellper-main.js.orig`) to the new name.
    AdoptLegacyBackup,
    /// The shim is in place without any backup: proceed, but `uninstall`
    /// will not be able to restore codev's script.
    NoBackup,
    /// Copy the shellper binary next to the script.
    Binary,
    /// Write the shim over `shellper-main.js`.
    Shim,
}

/// The steps of an install, in order (backup, binary, shim last).
pub fn plan_install(d: &OnDisk) -> Vec<Step> {
    let mut steps = Vec::new();
    match (d.script, d.backup_same) {
        (ScriptKind::Codev, None) => steps.push(Step::Backup),
        (ScriptKind::Codev, Some(true)) => steps.push(Step::KeepBackup),
        (ScriptKind::Codev, Some(false)) => steps.push(Step::RefreshBackup),
        (_, Some(_)) => steps.push(Step::KeepBackup),
        (_, None) if d.legacy_backup => steps.push(Step::AdoptLegacyBackup),
        (_, None) => steps.push(Step::NoBackup),
    }
    steps.push(Step::Binary);
    steps.push(Step::Shim);
    steps
}

/// What an uninstall does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Move the backup over the shim, remove the binary beside it.
    Restore,
    /// Move the README's old manual backup over the shim.
    RestoreLegacy,
    /// codev's own script is in place already.
    NothingToDo,
    /// The shim is in place and no backup exists: refuse.
    NoBackup,
}

/// Decides an uninstall.
pub fn plan_uninstall(d: &OnDisk) -> Undo {
    match (d.script, d.backup_same.is_some(), d.legacy_backup) {
        (ScriptKind::Codev, _, _) => Undo::NothingToDo,
        (_, true, _) => Undo::Restore,
        (_, false, true) => Undo::RestoreLegacy,
        (_, false, false) => Undo::NoBackup,
    }
}

/// What the Node that runs codev is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    /// The binary asked.
    pub path: PathBuf,
    /// `process.version`, e.g. `v22.15.0`.
    pub version: String,
    /// `typeof process.execve === "function"`.
    pub execve: bool,
}

impl NodeInfo {
    /// Parses the answer of [`NODE_PROBE`]: `VERSION EXECVE` (`v22.15.0 true`).
    pub fn parse(path: PathBuf, answer: &str) -> Option<NodeInfo> {
        let mut it = answer.split_whitespace();
        let version = it.next()?.to_string();
        let execve = match it.next()? {
            "true" => true,
            "false" => false,
            _ => return None,
        };
        parse_version(&version)?;
        Some(NodeInfo {
            path,
            version,
            execve,
        })
    }

    /// The shim needs `process.execve`. Its presence is what counts (a
    /// build could lack it); the version only explains a refusal.
    pub fn supports_shim(&self) -> bool {
        self.execve
    }
}

/// What leasectl asks `node` (no file, no network).
pub const NODE_PROBE: &str =
    "process.stdout.write(process.version + ' ' + (typeof process.execve === 'function'))";

/// `v22.15.0` → `(22, 15, 0)`.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.strip_prefix('v').unwrap_or(v).splitn(3, '.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch: String = it
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor, patch.parse().ok()?))
}

// ---------------------------------------------------------------------------
// IO.

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

    fn on_disk(&self) -> Result<OnDisk> {
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

fn read(p: &Path) -> Result<Vec<u8>> {
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
async fn ask(program: &Path, args: &[&str]) -> std::io::Result<String> {
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

async fn npm_root_global() -> Result<PathBuf> {
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

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Asks the Node that runs codev for its version and `process.execve`.
async fn probe_node(explicit: Option<&Path>) -> std::result::Result<NodeInfo, String> {
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
fn source_binary(explicit: Option<&Path>) -> Result<PathBuf> {
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
fn shim_would_launch(layout: &Layout) -> (Option<PathBuf>, &'static str) {
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
async fn version_of(bin: &Path) -> Option<String> {
    ask(bin, &["--version"])
        .await
        .ok()
        .filter(|v| !v.is_empty())
}

/// Writes `bytes` to `dest` atomically (tower-client's one atomic write):
/// codev starting a session reads the old file or the new one, never half
/// of one.
fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
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

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map_or(0o644, |m| m.permissions().mode() & 0o7777)
}

/// Runs a `codev` subcommand; returns the exit code.
pub async fn run(cmd: CodevCommand) -> Result<i32> {
    match cmd {
        CodevCommand::Install {
            place,
            node,
            shellper,
            force,
        } => install(&place, node.as_deref(), shellper.as_deref(), force).await,
        CodevCommand::Status { place, node, json } => status(&place, node.as_deref(), json).await,
        CodevCommand::Uninstall { place } => uninstall(&place).await,
    }
}

async fn install(
    place: &Place,
    node: Option<&Path>,
    shellper: Option<&Path>,
    force: bool,
) -> Result<i32> {
    let layout = locate(place).await?;
    out(&format!("codev: {}\n", layout.script.display()))?;

    // The Node first: refusing must leave everything untouched.
    match probe_node(node).await {
        Ok(n) if n.supports_shim() => out(&format!(
            "node: {} {} has process.execve\n",
            n.path.display(),
            n.version
        ))?,
        Ok(n) => {
            let why = format!(
                "{} {} has no process.execve (needs Node {}.{}.{} or later): \
                 codev's sessions would fail to start with the shim",
                n.path.display(),
                n.version,
                MIN_NODE.0,
                MIN_NODE.1,
                MIN_NODE.2
            );
            if !force {
                return Err(Error::Codev(format!(
                    "{why}; run codev with a newer Node (and pass it with --node), or --force"
                )));
            }
            out(&format!(
                "node: warning: {why} (--force: installing anyway)\n"
            ))?;
        }
        Err(why) => {
            if !force {
                return Err(Error::Codev(format!("{why}; or --force")));
            }
            out(&format!(
                "node: warning: {why} (--force: installing anyway)\n"
            ))?;
        }
    }

    let binary = source_binary(shellper)?;
    let version = version_of(&binary).await.ok_or_else(|| {
        Error::Codev(format!(
            "{} --version failed: not a working shellper binary (a musl or glibc build for this machine?)",
            binary.display()
        ))
    })?;

    let disk = layout.on_disk()?;
    let script_mode = mode_of(&layout.script);
    for step in plan_install(&disk) {
        match step {
            Step::Backup => {
                write_atomic(&layout.backup, &read(&layout.script)?, script_mode)?;
                out(&format!(
                    "backed up codev's shellper-main.js to {}\n",
                    layout.backup.display()
                ))?;
            }
            Step::RefreshBackup => {
                write_atomic(&layout.backup, &read(&layout.script)?, script_mode)?;
                out(&format!(
                    "codev's shellper-main.js changed since the last install (codev upgraded?): \
                     {} now holds the new one\n",
                    layout.backup.display()
                ))?;
            }
            Step::KeepBackup => out(&format!(
                "backup {} kept (codev's original)\n",
                layout.backup.display()
            ))?,
            Step::AdoptLegacyBackup => {
                std::fs::rename(&layout.legacy_backup, &layout.backup)
                    .map_err(|e| Error::io("renaming", &layout.legacy_backup, e))?;
                out(&format!(
                    "renamed the old backup {} to {}\n",
                    layout.legacy_backup.display(),
                    layout.backup.display()
                ))?;
            }
            Step::NoBackup => out(&format!(
                "warning: the shim is already in place and there is no backup of codev's \
                 shellper-main.js: `uninstall` will not be able to restore it (reinstall codev: \
                 npm install -g {CODEV_PACKAGE})\n"
            ))?,
            Step::Binary => {
                // Same file (a re-install from the installed copy): nothing to do.
                if !same_file(&binary, &layout.binary) {
                    let bytes = read(&binary)?;
                    write_atomic(&layout.binary, &bytes, 0o755)?;
                }
                out(&format!(
                    "installed {} ({version}) as {}\n",
                    binary.display(),
                    layout.binary.display()
                ))?;
            }
            Step::Shim => {
                let was = match disk.script {
                    ScriptKind::Shim => "refreshed",
                    ScriptKind::OtherShim => "updated",
                    ScriptKind::Codev => "installed",
                };
                write_atomic(&layout.script, SHIM.as_bytes(), script_mode)?;
                out(&format!("{was} the shim as {}\n", layout.script.display()))?;
            }
        }
    }
    out(
        "done: new codev sessions run the native shellper; restart the Tower to be sure \
         (sessions started before keep their shellper until they end)\n",
    )?;
    Ok(EXIT_OK)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `codev status --json`.
#[derive(Debug, Serialize)]
struct StatusDoc {
    schema_version: u32,
    script: PathBuf,
    /// `shim`, `other_shim` or `codev`.
    installed: ScriptKind,
    /// What codev launches: `native` or `node`.
    launches: &'static str,
    /// The shellper binary the shim would exec (`null` if none).
    shellper: Option<PathBuf>,
    shellper_found: &'static str,
    shellper_version: Option<String>,
    backup: PathBuf,
    backup_exists: bool,
    /// Does the backup hold codev's script (not a shim)?
    backup_is_codev: bool,
    node: Option<NodeInfo>,
    node_error: Option<String>,
    /// Everything in place for codev to run the native shellper.
    ok: bool,
}

async fn status(place: &Place, node: Option<&Path>, json: bool) -> Result<i32> {
    let layout = locate(place).await?;
    let script = read(&layout.script)?;
    let installed = classify(&script);
    let backup = match std::fs::read(&layout.backup) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("reading", &layout.backup, e)),
    };
    let backup_is_codev = backup
        .as_deref()
        .is_some_and(|b| classify(b) == ScriptKind::Codev);
    let native = installed != ScriptKind::Codev;
    let (shellper, found) = if native {
        shim_would_launch(&layout)
    } else {
        (None, "not used: codev runs its own shellper-main.js")
    };
    let shellper_version = match &shellper {
        Some(b) => version_of(b).await,
        None => None,
    };
    let (node_info, node_error) = match probe_node(node).await {
        Ok(n) => (Some(n), None),
        Err(e) => (None, Some(e)),
    };
    let node_ok = node_info.as_ref().is_some_and(NodeInfo::supports_shim);
    let ok = native && shellper_version.is_some() && node_ok;
    let doc = StatusDoc {
        schema_version: 1,
        script: layout.script.clone(),
        installed,
        launches: if native { "native" } else { "node" },
        shellper,
        shellper_found: found,
        shellper_version,
        backup: layout.backup.clone(),
        backup_exists: backup.is_some(),
        backup_is_codev,
        node: node_info,
        node_error,
        ok,
    };
    if json {
        json_out(&doc)?;
    } else {
        out(&render_status(&doc))?;
    }
    Ok(if ok { EXIT_OK } else { EXIT_FOUND })
}

fn render_status(d: &StatusDoc) -> String {
    let mut s = format!("codev:     {}\n", d.script.display());
    let launches = match d.installed {
        ScriptKind::Codev => "codev's own Node shellper (the shim is not installed)".to_string(),
        kind => {
            let which = match (&d.shellper, &d.shellper_version) {
                (Some(p), Some(v)) => format!("{} ({v}, {})", p.display(), d.shellper_found),
                (Some(p), None) => format!(
                    "{} ({}), which does not run: `--version` failed",
                    p.display(),
                    d.shellper_found
                ),
                (None, _) => format!("no binary: {}", d.shellper_found),
            };
            let shim = if kind == ScriptKind::OtherShim {
                "; the shim differs from this leasectl's (`leasectl codev install` updates it)"
            } else {
                ""
            };
            format!("the native shellper {which}{shim}")
        }
    };
    s += &format!("launches:  {launches}\n");
    let backup = match (d.backup_exists, d.backup_is_codev) {
        (true, true) => format!("{} (codev's original)", d.backup.display()),
        (true, false) => format!("{} (a shim, not codev's script!)", d.backup.display()),
        (false, _) if d.installed == ScriptKind::Codev => "none (none needed)".to_string(),
        (false, _) => format!(
            "missing: {}; `uninstall` cannot restore codev's script",
            d.backup.display()
        ),
    };
    s += &format!("backup:    {backup}\n");
    let node = match (&d.node, &d.node_error) {
        (Some(n), _) if n.execve => {
            format!("{} {} (has process.execve)", n.path.display(), n.version)
        }
        (Some(n), _) => format!(
            "{} {}: no process.execve (needs {}.{}.{}): the shim cannot start sessions",
            n.path.display(),
            n.version,
            MIN_NODE.0,
            MIN_NODE.1,
            MIN_NODE.2
        ),
        (None, Some(e)) => e.clone(),
        (None, None) => "unknown".to_string(),
    };
    s += &format!("node:      {node}\n");
    s
}

async fn uninstall(place: &Place) -> Result<i32> {
    let layout = locate(place).await?;
    out(&format!("codev: {}\n", layout.script.display()))?;
    let disk = layout.on_disk()?;
    let from = match plan_uninstall(&disk) {
        Undo::NothingToDo => {
            out("codev's own shellper-main.js is in place: nothing to undo\n")?;
            return Ok(EXIT_OK);
        }
        Undo::NoBackup => {
            return Err(Error::Codev(format!(
                "the shim is in place but there is no backup ({}): reinstall codev \
                 (npm install -g {CODEV_PACKAGE}) to get its shellper-main.js back",
                layout.backup.display()
            )));
        }
        Undo::Restore => &layout.backup,
        Undo::RestoreLegacy => &layout.legacy_backup,
    };
    if classify(&read(from)?) != ScriptKind::Codev {
        return Err(Error::Codev(format!(
            "the backup {} is a shim, not codev's script: nothing to restore; reinstall codev \
             (npm install -g {CODEV_PACKAGE})",
            from.display()
        )));
    }
    std::fs::rename(from, &layout.script).map_err(|e| Error::io("restoring", from, e))?;
    out(&format!(
        "restored codev's shellper-main.js from {}\n",
        from.display()
    ))?;
    match std::fs::remove_file(&layout.binary) {
        Ok(()) => out(&format!("removed {}\n", layout.binary.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing", &layout.binary, e)),
    }
    out("done: new codev sessions run codev's own shellper (restart the Tower to be sure)\n")?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(script: ScriptKind, backup_same: Option<bool>, legacy: bool) -> OnDisk {
        OnDisk {
            script,
            backup_same,
            legacy_backup: legacy,
        }
    }

    #[test]
    fn the_embedded_shim_carries_its_marker_and_is_recognised() {
        assert!(SHIM.contains(SHIM_MARKER));
        assert_eq!(classify(SHIM.as_bytes()), ScriptKind::Shim);
        let older = SHIM.replace("process.execve", "process.execve ");
        assert_eq!(classify(older.as_bytes()), ScriptKind::OtherShim);
        assert_eq!(
            classify(b"#!/usr/bin/env node\n// codev's shellper\n"),
            ScriptKind::Codev
        );
    }

    #[test]
    fn first_install_backs_up_then_binary_then_shim() {
        assert_eq!(
            plan_install(&disk(ScriptKind::Codev, None, false)),
            [Step::Backup, Step::Binary, Step::Shim]
        );
    }

    #[test]
    fn reinstall_keeps_the_backup() {
        for kind in [ScriptKind::Shim, ScriptKind::OtherShim] {
            assert_eq!(
                plan_install(&disk(kind, Some(false), false))[0],
                Step::KeepBackup
            );
        }
    }

    #[test]
    fn install_over_an_upgraded_codev_refreshes_the_backup() {
        assert_eq!(
            plan_install(&disk(ScriptKind::Codev, Some(false), false))[0],
            Step::RefreshBackup
        );
        assert_eq!(
            plan_install(&disk(ScriptKind::Codev, Some(true), false))[0],
            Step::KeepBackup
        );
    }

    #[test]
    fn a_shim_without_backup_adopts_the_manual_one_or_warns() {
        assert_eq!(
            plan_install(&disk(ScriptKind::Shim, None, true))[0],
            Step::AdoptLegacyBackup
        );
        assert_eq!(
            plan_install(&disk(ScriptKind::OtherShim, None, false))[0],
            Step::NoBackup
        );
    }

    #[test]
    fn uninstall_restores_only_from_a_backup() {
        assert_eq!(
            plan_uninstall(&disk(ScriptKind::Shim, Some(false), true)),
            Undo::Restore
        );
        assert_eq!(
            plan_uninstall(&disk(ScriptKind::Shim, None, true)),
            Undo::RestoreLegacy
        );
        assert_eq!(
            plan_uninstall(&disk(ScriptKind::OtherShim, None, false)),
            Undo::NoBackup
        );
        assert_eq!(
            plan_uninstall(&disk(ScriptKind::Codev, Some(true), false)),
            Undo::NothingToDo
        );
    }

    #[test]
    fn node_answers_parse() {
        let n = NodeInfo::parse("/n".into(), "v22.15.0 true").expect("parses");
        assert!(n.supports_shim());
        let old = NodeInfo::parse("/n".into(), "v20.20.2 false").expect("parses");
        assert!(!old.supports_shim());
        assert_eq!(NodeInfo::parse("/n".into(), "hello"), None);
        assert_eq!(NodeInfo::parse("/n".into(), "v22.1.0 maybe"), None);
        assert_eq!(parse_version("v22.15.0"), Some((22, 15, 0)));
        assert_eq!(parse_version("v23.0.0-pre"), Some((23, 0, 0)));
        assert_eq!(parse_version("22"), None);
    }
}
