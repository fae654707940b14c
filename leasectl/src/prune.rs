//! `leasectl prune`: remove what gone shellpers left in a scope (registry
//! entries, socket files, logs) and keep the scope's logs under a cap.
//!
//! The rules are tower-client's ([`tower_client::tidy`]), the same a
//! running Tower applies at its start and every `--tidy-every`: only what
//! is proven gone goes, never anything of a live, held or undecidable
//! shellper. leasectl adds one rule: a gone shellper whose PTY session
//! still runs (`leasectl orphans` reason `shellper_gone`) keeps its entry
//! and log, which are what `reap` needs to find that session.
//!
//! Dry run by default: `prune` shows what it would remove; `prune --yes`
//! removes it. Removing needs the scope's instance lock (taken without
//! changing the last Tower's pid written in it, and held for the few
//! milliseconds of the removal): when a Tower holds the scope, `--yes`
//! defers to it, removes nothing and exits 3; that Tower tidies the scope
//! itself.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tower_client::tidy::{self, Action, TidyPlan, TidyPolicy, What};
use tower_client::{Registry, Scope};

use crate::error::{Error, Result};
use crate::exit::{EXIT_FOUND, EXIT_OK};
use crate::model::SCHEMA_VERSION;
use crate::orphans::{self, Reason};
use crate::scan::{Scan, scan_scope};

/// Exit code of `prune --yes` when a Tower holds the scope: nothing was
/// removed, the Tower tidies it.
pub const EXIT_DEFERRED: i32 = 3;

/// Options of `prune`.
#[derive(Debug, Clone)]
pub struct PruneOpts {
    /// Remove (else: dry run).
    pub yes: bool,
    pub policy: TidyPolicy,
}

/// One removal that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub action: Action,
    pub error: String,
}

/// `prune --json`.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub schema_version: u32,
    pub scope: String,
    /// True: nothing was removed (no `--yes`, or deferred).
    pub dry_run: bool,
    /// The pid of the Tower holding the scope, if one runs.
    pub tower_pid: Option<u32>,
    /// `--yes` found a Tower holding the scope and left the work to it.
    pub deferred: bool,
    /// What the rules select.
    pub plan: TidyPlan,
    /// What was removed (empty in a dry run).
    pub removed: Vec<Action>,
    pub failed: Vec<Failure>,
}

/// Ids that must keep their files: gone shellpers whose session still runs.
fn keep_ids(scan: &Scan) -> HashSet<String> {
    orphans::find(scan, None, true)
        .orphans
        .into_iter()
        .filter(|o| o.reasons.contains(&Reason::ShellperGone))
        .filter_map(|o| o.id)
        .collect()
}

/// The plan for a swept scope; `None` when the registry could not be read
/// (nothing is pruned without it: an entry could not be told from a
/// stranger) or the scope does not exist.
pub async fn plan_scope(scan: &Scan, policy: &TidyPolicy) -> Result<Option<TidyPlan>> {
    let Some(registry) = scan.registry.clone() else {
        return Ok(None);
    };
    if !scan.exists {
        return Ok(None);
    }
    let dir = scan.scope.clone();
    let files = tokio::task::spawn_blocking(move || tidy::list_scope(&dir))
        .await
        .map_err(|e| Error::Output(std::io::Error::other(e)))?
        .map_err(|e| Error::io("listing scope", &scan.scope, e))?;
    let mut facts = tidy::gather(&files, &registry, HashSet::new()).await;
    // The orphan search reads /proc: blocking pool. The scan is cloned in
    // the parts it needs (the views and registry), cheap next to /proc.
    let scan2 = Scan {
        scope: scan.scope.clone(),
        exists: scan.exists,
        registry: scan.registry.clone(),
        registry_error: scan.registry_error.clone(),
        shellpers: scan.shellpers.clone(),
        tower: scan.tower.clone(),
    };
    facts.keep = tokio::task::spawn_blocking(move || keep_ids(&scan2))
        .await
        .unwrap_or_default();
    let registry_path = scan.scope.join("registry.json");
    Ok(Some(tidy::plan(
        &files,
        &registry,
        &registry_path,
        &facts,
        SystemTime::now(),
        policy,
    )))
}

/// `leasectl prune [--yes]`: the report for the command to print (as
/// JSON or through `render::prune_text`), or `None` when the registry
/// cannot be read (said on stderr; nothing done).
pub async fn run(scope: &Path, timeout: Duration, o: PruneOpts) -> Result<Option<PruneReport>> {
    if !scope.exists() {
        let report = PruneReport {
            schema_version: SCHEMA_VERSION,
            scope: scope.display().to_string(),
            dry_run: !o.yes,
            tower_pid: None,
            deferred: false,
            plan: TidyPlan::default(),
            removed: Vec::new(),
            failed: Vec::new(),
        };
        return Ok(Some(report));
    }
    let handle = Scope::open_existing(scope).map_err(|e| Error::Scope(Box::new(e)))?;
    // With --yes, the lock first: the sweep and the plan then see a scope
    // no Tower changes under them.
    let mut deferred = false;
    let lock = if o.yes {
        match handle.lock_for_maintenance() {
            Ok(l) => Some(l),
            Err(tower_client::Error::ScopeLocked { .. }) => {
                deferred = true;
                None
            }
            Err(e) => return Err(Error::Scope(Box::new(e))),
        }
    } else {
        None
    };
    let scan = scan_scope(scope, timeout, None).await?;
    if let Some(e) = &scan.registry_error {
        eprintln!("leasectl: prune needs a readable registry, nothing done: {e}");
        return Ok(None);
    }
    let plan = plan_scope(&scan, &o.policy).await?.unwrap_or_default();
    let mut report = PruneReport {
        schema_version: SCHEMA_VERSION,
        scope: scope.display().to_string(),
        dry_run: lock.is_none(),
        tower_pid: scan.tower.pid,
        deferred,
        plan,
        removed: Vec::new(),
        failed: Vec::new(),
    };
    if lock.is_some() {
        execute(&handle, &mut report);
    }
    drop(lock);
    Ok(Some(report))
}

impl PruneReport {
    /// `prune`'s exit code for this report: deferred to a running Tower,
    /// something failed or a dry run found work, or nothing to do.
    pub fn exit_code(&self) -> i32 {
        if self.deferred {
            EXIT_DEFERRED
        } else if !self.failed.is_empty() || (self.dry_run && !self.plan.actions.is_empty()) {
            EXIT_FOUND
        } else {
            EXIT_OK
        }
    }
}

/// Carries the plan out (the caller holds the instance lock).
fn execute(scope: &Scope, report: &mut PruneReport) {
    let ids: HashSet<String> = report.plan.entry_ids().into_iter().collect();
    if !ids.is_empty() {
        let path = scope.registry_path();
        let r = Registry::load(&path).and_then(|mut reg| {
            reg.shellpers.retain(|e| !ids.contains(&e.id));
            reg.save(&path)
        });
        for a in report
            .plan
            .actions
            .iter()
            .filter(|a| a.what == What::RegistryEntry)
        {
            match &r {
                Ok(()) => report.removed.push(a.clone()),
                Err(e) => report.failed.push(Failure {
                    action: a.clone(),
                    error: e.to_string(),
                }),
            }
        }
    }
    let files = tidy::remove_files(&report.plan);
    report.removed.extend(files.done);
    report.failed.extend(
        files
            .failed
            .into_iter()
            .map(|(action, error)| Failure { action, error }),
    );
}
