//! The decisions, pure functions of what is on disk: what a script is, what
//! to back up, what an install or an uninstall does, whether a Node can run
//! the shim.

use serde::Serialize;

use super::*;

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
