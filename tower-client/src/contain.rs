//! Which containment a Tower's sessions get: a cgroup v2 each, or the
//! process-tree ladder.
//!
//! Chosen once, when the Tower opens ([`TowerConfig::cgroup`]):
//!
//! * `None`: the process tree (the `/proc` ladder), as before cgroups.
//! * `Some(Dir(p))` or `Some(Auto)`: [`shellper_proctree::prepare_base`]
//!   makes the directory the base of the sessions' cgroups (or says why it
//!   cannot). When it cannot, the Tower falls back to the process tree and
//!   says why ([`Containment::ProcessTree`]`{reason}`), unless limits were
//!   asked for: limits without a cgroup would be a silent ignore, so that is
//!   an error ([`Error::Containment`]).
//!
//! With a cgroup, each spawn creates `base/<id>` with the limits and passes
//! its path to the shellper (config field `cgroup`), which moves the PTY
//! child into it between fork and exec. The path is kept in the registry,
//! so a later Tower or `leasectl reap` can kill exactly that session after
//! its shellper was SIGKILLed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use shellper_proctree::{Cgroup, CgroupChoice, CgroupKillReport, Limits, SessionBase};

use crate::config::TowerConfig;
use crate::error::{Error, Result};

/// The name of the leaf a Tower moves itself into when its own cgroup is
/// the base (systemd's delegation rules: processes only in leaves).
pub const TOWER_LEAF: &str = "tower";

/// The containment in force for a Tower's new sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Containment {
    /// Each session in a cgroup of its own under `base`.
    Cgroup {
        base: PathBuf,
        /// Controllers each session gets (empty: CPU time and process
        /// counts are still accounted; memory and limits are not).
        controllers: Vec<String>,
        /// Where the Tower moved itself, if it had to.
        #[serde(skip_serializing_if = "Option::is_none")]
        tower_leaf: Option<PathBuf>,
        limits: Limits,
    },
    /// The `/proc` ladder: no writable cgroup v2 (or none asked for).
    ProcessTree { reason: String },
}

impl Containment {
    /// One line for humans: `cgroup /sys/fs/cgroup/... (controllers: ...)`
    /// or `process tree (...)`.
    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup {
                base, controllers, ..
            } => format!(
                "cgroup v2 under {} (controllers: {})",
                base.display(),
                if controllers.is_empty() {
                    "none".to_string()
                } else {
                    controllers.join(" ")
                }
            ),
            Containment::ProcessTree { reason } => format!("process tree ({reason})"),
        }
    }
}

/// Decides the containment for `cfg` (see the module docs).
pub(crate) fn choose(cfg: &TowerConfig) -> Result<(Containment, Option<SessionBase>)> {
    let Some(choice) = &cfg.cgroup else {
        if !cfg.limits.is_empty() {
            return Err(Error::Containment(
                "session limits need a cgroup: pass a cgroup (--cgroup DIR|auto)".into(),
            ));
        }
        return Ok((
            Containment::ProcessTree {
                reason: "no cgroup asked for".into(),
            },
            None,
        ));
    };
    match shellper_proctree::prepare_base(choice, TOWER_LEAF, &cfg.limits.controllers()) {
        Ok(base) => {
            base.check_limits(&cfg.limits)
                .map_err(|e| Error::Containment(e.to_string()))?;
            let c = Containment::Cgroup {
                base: base.base.dir().to_path_buf(),
                controllers: base.controllers.clone(),
                tower_leaf: base.tower_leaf.clone(),
                limits: cfg.limits,
            };
            Ok((c, Some(base)))
        }
        Err(e) if cfg.limits.is_empty() => {
            // Asked for by name: the operator wants to hear it. `auto` on
            // a system without delegation is the ordinary case.
            match choice {
                CgroupChoice::Auto => {
                    tracing::info!("no cgroup found (auto), using the process tree: {e}");
                }
                CgroupChoice::Dir(_) => {
                    tracing::warn!("the cgroup given is not usable, using the process tree: {e}");
                }
            }
            Ok((
                Containment::ProcessTree {
                    reason: format!("no writable cgroup v2: {e}"),
                },
                None,
            ))
        }
        Err(e) => Err(Error::Containment(format!(
            "session limits asked for, but {e}"
        ))),
    }
}

/// Kills whatever runs in a session's cgroup and removes it, off the runtime
/// thread: the cgroup holds exactly that session (a failed spawn's, or a
/// gone shellper's), so nothing outside it is touched. `Ok(None)`: no such
/// cgroup (already removed). The error is the blocking task's (it panicked).
pub(crate) async fn kill_session_cgroup(
    cg: Cgroup,
    grace: Duration,
) -> std::result::Result<Option<CgroupKillReport>, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        cg.exists().then(|| {
            shellper_proctree::kill_cgroup(
                &cg,
                &shellper_proctree::RealClock,
                &shellper_proctree::CgroupKillPlan::new(grace),
                &mut || {},
            )
        })
    })
    .await
}
