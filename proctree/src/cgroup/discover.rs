//! Discovery: the v2 mount, this process's own cgroup, and a Tower's base
//! (the directory its sessions' cgroups are made in).

use std::fs;
use std::io::{self};
use std::path::{Path, PathBuf};

use crate::Error;

use super::*;

/// The v2 hierarchy as this process sees it (`/proc/self/mountinfo`).
pub fn find_v2_mount() -> io::Result<Option<V2Mount>> {
    Ok(parse_mountinfo_v2(&read_small(Path::new(
        "/proc/self/mountinfo",
    ))?))
}

/// The v2 cgroup path of a process (`/proc/PID/cgroup`), `None` if it has
/// none (no v2 hierarchy) or is gone.
pub fn cgroup_path_of(pid: i32) -> Option<String> {
    parse_proc_cgroup_v2(&read_small(Path::new(&format!("/proc/{pid}/cgroup"))).ok()?)
}

/// The directory of this process's own v2 cgroup.
pub fn own_cgroup() -> Result<Cgroup, Error> {
    let unavailable = |why: String| Error::NoCgroupV2 { why };
    let mount = find_v2_mount()
        .map_err(|e| unavailable(format!("read /proc/self/mountinfo: {e}")))?
        .ok_or_else(|| unavailable("no cgroup2 file system is mounted".into()))?;
    let path = cgroup_path_of(std::process::id() as i32)
        .ok_or_else(|| unavailable("/proc/self/cgroup has no v2 entry".into()))?;
    mount.dir_of(&path).map(Cgroup::at).ok_or_else(|| {
        unavailable(format!(
            "our cgroup {path} is outside the v2 mount at {}",
            mount.mount_point.display()
        ))
    })
}

/// Where a Tower puts its sessions' cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupChoice {
    /// The Tower's own cgroup, where it is delegated (a systemd service with
    /// `Delegate=yes`): the Tower moves itself into a leaf of it.
    Auto,
    /// This directory (which must be a writable cgroup v2 directory).
    Dir(PathBuf),
}

impl std::str::FromStr for CgroupChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty cgroup: give `auto` or a directory".into()),
            "auto" => Ok(CgroupChoice::Auto),
            p => Ok(CgroupChoice::Dir(PathBuf::from(p))),
        }
    }
}

/// The base of a Tower's session cgroups, ready for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBase {
    pub base: Cgroup,
    /// Controllers the sessions get (the base's `cgroup.subtree_control`).
    pub controllers: Vec<String>,
    /// The leaf the Tower moved itself into, when it had to (its own
    /// cgroup was the base: a cgroup with processes cannot give its
    /// children controllers).
    pub tower_leaf: Option<PathBuf>,
}

impl SessionBase {
    /// Checks that `limits` can be applied to sessions here: each needs its
    /// controller enabled in the base's `cgroup.subtree_control`.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), Error> {
        for c in limits.controllers() {
            if !self.controllers.iter().any(|o| o == c) {
                return Err(Error::ControllerUnavailable {
                    controller: c,
                    path: self.base.dir().to_path_buf(),
                    available: self.controllers.join(" "),
                });
            }
        }
        Ok(())
    }

    /// Creates the cgroup of session `id` with `limits`; removed again if
    /// the limits cannot be set.
    pub fn create_session(&self, id: &str, limits: &Limits) -> Result<Cgroup, Error> {
        let cg = self.base.create_child(id)?;
        if let Err(e) = cg.set_limits(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// True if `dir` is on a cgroup2 file system.
fn is_cgroup2(dir: &Path) -> io::Result<bool> {
    let st = rustix::fs::statfs(dir)?;
    Ok(st.f_type as u64 == CGROUP2_SUPER_MAGIC)
}

/// Makes `choice` usable as the base of a Tower's session cgroups, or says
/// why it cannot be (the caller then falls back to the `/proc` ladder and
/// reports the reason).
///
/// * `Dir(p)`: `p` must be a directory of a cgroup2 file system where we
///   can create cgroups (checked by creating and removing a probe).
/// * `Auto`: our own cgroup, if it is not the root and we can create
///   cgroups in it. Under systemd that needs `Delegate=yes`; without it a
///   root Tower could write there but systemd would fight it, so a
///   `.service`/`.scope` cgroup without systemd's delegation mark
///   (`user.delegate` or `trusted.delegate` extended attribute) is refused.
///   If our own cgroup is already the leaf `<unit>/<tower_leaf>` (systemd
///   254+ with `DelegateSubgroup=<tower_leaf>`), the base is its parent.
///
/// When the Tower's own cgroup *is* the base, the Tower moves itself into
/// the leaf `base/<tower_leaf>` first (processes only in leaves).
///
/// Controllers for the sessions: every one of [`SESSION_CONTROLLERS`] the
/// base offers, except when the base is a cgroup whose manager puts
/// processes into it (the Tower's own, e.g. a systemd unit without
/// `DelegateSubgroup=`): there a controller enabled in its
/// `cgroup.subtree_control` would make the next start of the service fail
/// (a cgroup with domain controllers enabled for its children cannot take
/// processes: `EBUSY`), so only the controllers in `needed` (those the
/// limits asked for) are enabled.
pub fn prepare_base(
    choice: &CgroupChoice,
    tower_leaf: &str,
    needed: &[&str],
) -> Result<SessionBase, Error> {
    let not_usable = |path: &Path, why: String| Error::CgroupNotUsable {
        path: path.to_path_buf(),
        why,
    };
    let own = own_cgroup().ok();
    let mut tower_leaf_dir = None;
    let base = match choice {
        CgroupChoice::Dir(p) => Cgroup::at(p),
        CgroupChoice::Auto => {
            let own = own_cgroup()?;
            let mount = find_v2_mount().ok().flatten();
            let is_root = |c: &Path| mount.as_ref().is_some_and(|m| m.mount_point == c);
            let name_of = |c: &Path| {
                c.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let (dir, leaf) = match own.dir().parent() {
                Some(parent) if name_of(own.dir()) == tower_leaf && !is_root(own.dir()) => {
                    (parent.to_path_buf(), Some(own.dir().to_path_buf()))
                }
                _ => (own.dir().to_path_buf(), None),
            };
            if is_root(&dir) {
                return Err(not_usable(
                    &dir,
                    "this process is in the root cgroup (not a delegated service): \
                     pass --cgroup DIR"
                        .into(),
                ));
            }
            let name = name_of(&dir);
            if (name.ends_with(".service") || name.ends_with(".scope")) && !delegated(&dir) {
                return Err(not_usable(
                    &dir,
                    "systemd did not delegate it (set Delegate=yes in the unit)".into(),
                ));
            }
            tower_leaf_dir = leaf;
            Cgroup::at(dir)
        }
    };
    let dir = base.dir().to_path_buf();
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(not_usable(&dir, "not a directory".into())),
        Err(e) => return Err(not_usable(&dir, e.to_string())),
    }
    match is_cgroup2(&dir) {
        Ok(true) => {}
        Ok(false) => return Err(not_usable(&dir, "not on a cgroup2 file system".into())),
        Err(e) => return Err(not_usable(&dir, format!("statfs: {e}"))),
    }
    let probe = dir.join(format!(".shellper-probe-{}", std::process::id()));
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
        }
        Err(e) => {
            return Err(not_usable(&dir, format!("cannot create cgroups here: {e}")));
        }
    }
    let ours = own.as_ref().is_some_and(|o| o.dir == dir);
    if ours {
        let leaf = base.create_child(tower_leaf).or_else(|e| {
            // Our own leaf from an earlier run holds our predecessor's
            // shellpers: populated, and ours to join.
            let p = dir.join(tower_leaf);
            if p.join("cgroup.procs").is_file() {
                Ok(Cgroup::at(p))
            } else {
                Err(e)
            }
        })?;
        leaf.move_self()?;
        tower_leaf_dir = Some(leaf.dir().to_path_buf());
    }
    let controllers = if ours {
        base.enable_controllers(needed)
    } else {
        base.enable_controllers(SESSION_CONTROLLERS)
    };
    Ok(SessionBase {
        base,
        controllers,
        tower_leaf: tower_leaf_dir,
    })
}

/// systemd marks a delegated cgroup with a `user.delegate` (unprivileged
/// managers) or `trusted.delegate` extended attribute.
fn delegated(dir: &Path) -> bool {
    let mut buf = [0u8; 8];
    ["user.delegate", "trusted.delegate"]
        .iter()
        .any(|name| rustix::fs::getxattr(dir, *name, &mut buf).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses() {
        assert_eq!("auto".parse::<CgroupChoice>(), Ok(CgroupChoice::Auto));
        assert_eq!(
            "/x".parse::<CgroupChoice>(),
            Ok(CgroupChoice::Dir("/x".into()))
        );
        assert!("".parse::<CgroupChoice>().is_err());
    }
}
