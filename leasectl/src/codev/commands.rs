//! The commands: `install`, `status` and `uninstall`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::exit::{EXIT_FOUND, EXIT_OK};
use crate::output::{json_out, out};

use super::disk::*;
use super::*;

pub(super) async fn install(
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

pub(super) async fn status(place: &Place, node: Option<&Path>, json: bool) -> Result<i32> {
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

pub(super) async fn uninstall(place: &Place) -> Result<i32> {
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
