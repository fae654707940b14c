//! The subcommands, each returning its exit code (see [`crate::cli`]).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tower_client::Scope;

use crate::cli::{Cli, Command, EXIT_ERROR, EXIT_FOUND, EXIT_OK};
use crate::error::{Error, Result};
use crate::model::{ListDoc, Phase, SCHEMA_VERSION, ShellperView, ShowDoc};
use crate::output::{json_out, out};
use crate::reap::{self, ReapReport, Target};
use crate::render::{self, Palette};
use crate::scan::{Scan, now_ms, scan_scope};
use crate::{orphans, tracked};

/// Runs the parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    let palette = Palette::detect(cli.color);
    let scope = cli.scope.clone().unwrap_or_else(Scope::default_dir);
    let timeout = cli.timeout;
    match cli.command {
        Command::List { json } => list(&scope, timeout, json, &palette).await,
        Command::Show { id, json } => show(&scope, timeout, &id, json, &palette).await,
        Command::Watch {
            interval,
            json,
            count,
        } => watch(&scope, timeout, interval, json, count, &palette).await,
        Command::Orphans {
            json,
            tracked,
            scope_only,
        } => {
            orphans_cmd(
                &scope,
                timeout,
                json,
                tracked.as_deref(),
                scope_only,
                &palette,
            )
            .await
        }
        Command::Reap {
            ids,
            pid,
            orphans,
            tracked,
            scope_only,
            dry_run,
            grace,
            force,
            json,
        } => {
            let opts = ReapOpts {
                ids,
                pids: pid,
                orphans,
                tracked,
                scope_only,
                dry_run,
                grace,
                force,
                json,
            };
            reap_cmd(&scope, timeout, opts, &palette).await
        }
        Command::Demo { minitower, window } => crate::demo::run(minitower, window, &palette).await,
        Command::Attach {
            id,
            read_only,
            detach_keys,
        } => {
            let o = crate::attach::AttachOpts {
                id,
                read_only,
                detach_keys,
            };
            crate::attach::run(&scope, timeout, o).await
        }
        Command::New(a) => crate::new::new(&scope, timeout, a).await,
        Command::Kill { id, json, grace } => {
            let opts = ReapOpts {
                ids: vec![id.clone()],
                pids: Vec::new(),
                orphans: false,
                tracked: None,
                scope_only: false,
                dry_run: false,
                grace,
                force: false,
                json,
            };
            crate::new::kill(&scope, timeout, &id, json, || {
                reap_cmd(&scope, timeout, opts, &palette)
            })
            .await
        }
        Command::Logs {
            id,
            follow,
            lines,
            all,
        } => {
            let o = crate::logs::LogsOpts {
                id,
                follow,
                lines,
                all,
            };
            crate::logs::run(&scope, o).await
        }
        Command::Metrics { output, mode } => {
            crate::metrics::run(&scope, timeout, output.as_deref(), mode).await
        }
        Command::Prune {
            yes,
            json,
            keep_logs,
            log_cap_mib,
        } => {
            let policy = tower_client::TidyPolicy {
                keep_gone_logs: keep_logs,
                scope_log_cap: log_cap_mib.saturating_mul(1 << 20),
                ..tower_client::TidyPolicy::default()
            };
            let opts = crate::prune::PruneOpts { yes, policy };
            let Some(report) = crate::prune::run(&scope, timeout, opts).await? else {
                return Ok(EXIT_ERROR);
            };
            if json {
                json_out(&report)?;
            } else {
                out(&render::prune_text(&report))?;
            }
            Ok(report.exit_code())
        }
        Command::Codev(c) => crate::codev::run(c).await,
        Command::Completions { .. } | Command::Man { .. } => Ok(EXIT_OK),
    }
}

/// Prints the registry problem once (stderr). The commands that report on
/// the scope (`list`, `show`, `orphans`) still print what they found, then
/// exit [`EXIT_ERROR`]: their answer is incomplete (no tokens, no registry
/// entries), and a script must not take it for a clean one.
fn warn_registry(scan: &Scan) {
    if let Some(e) = &scan.registry_error {
        eprintln!("leasectl: warning: {}", render::esc(e));
    }
}

/// `code`, or [`EXIT_ERROR`] when the registry could not be read.
fn unless_registry_error(scan: &Scan, code: i32) -> i32 {
    if scan.registry_error.is_some() {
        EXIT_ERROR
    } else {
        code
    }
}

async fn list(scope: &Path, timeout: Duration, json: bool, p: &Palette) -> Result<i32> {
    let scan = scan_scope(scope, timeout, None).await?;
    warn_registry(&scan);
    if json {
        json_out(&ListDoc {
            schema_version: SCHEMA_VERSION,
            scope: scope.display().to_string(),
            tower: &scan.tower,
            shellpers: &scan.shellpers,
        })?;
    } else {
        out(&render::list_text(
            p,
            &scope.display().to_string(),
            &scan.shellpers,
        ))?;
    }
    Ok(unless_registry_error(&scan, EXIT_OK))
}

async fn show(scope: &Path, timeout: Duration, id: &str, json: bool, p: &Palette) -> Result<i32> {
    let scan = scan_scope(scope, timeout, Some(id)).await?;
    warn_registry(&scan);
    let Some(v) = scan.shellpers.first() else {
        return Err(Error::UnknownId {
            id: id.to_string(),
            scope: scope.to_path_buf(),
        });
    };
    let tree = match v.pid {
        Some(pid) => {
            let (ticks, child) = (v.start_ticks, v.child_pid);
            tokio::task::spawn_blocking(move || {
                reap::tree_procs(&shellper_proctree::snapshot(), pid, ticks, child, &[]).0
            })
            .await
            .unwrap_or_default()
        }
        None => Vec::new(),
    };
    if json {
        json_out(&ShowDoc {
            schema_version: SCHEMA_VERSION,
            scope: scope.display().to_string(),
            shellper: v,
            tree: &tree,
        })?;
    } else {
        out(&render::show_text(p, v, &tree))?;
    }
    Ok(unless_registry_error(&scan, EXIT_OK))
}

/// One JSON line of `watch` (not on a terminal).
#[derive(Debug, Serialize)]
struct WatchEvent<'a> {
    schema_version: u32,
    ts_ms: u64,
    /// `added`, `changed` (phase) or `removed`.
    event: &'static str,
    id: &'a str,
    phase: Phase,
    previous: Option<Phase>,
    shellper: Option<&'a ShellperView>,
}

/// How many refreshes a changed phase stays highlighted.
const HIGHLIGHT_REFRESHES: u64 = 3;

async fn watch(
    scope: &Path,
    timeout: Duration,
    interval: Duration,
    json: bool,
    count: Option<u64>,
    p: &Palette,
) -> Result<i32> {
    let tty = std::io::stdout().is_terminal() && !json;
    let mut prev: HashMap<String, Phase> = HashMap::new();
    let mut changed_at: HashMap<String, u64> = HashMap::new();
    let mut log: Vec<render::Change> = Vec::new();
    // Every way an operator stops `watch` (Ctrl-C, `kill`, a closed
    // terminal) ends the loop below, so the cursor is shown again. The
    // handlers are installed before the cursor is hidden.
    let mut quit = Quit::install()?;
    let mut registry_warned: Option<String> = None;
    if tty {
        out("\x1b[?25l")?;
    }
    let mut iteration: u64 = 0;
    let result = loop {
        let scan = tokio::select! {
            s = scan_scope(scope, timeout, None) => match s {
                Ok(s) => s,
                Err(e) => break Err(e),
            },
            _ = quit.recv() => break Ok(EXIT_OK),
        };
        if scan.registry_error != registry_warned {
            warn_registry(&scan);
            registry_warned.clone_from(&scan.registry_error);
        }
        let ts = now_ms();
        let mut lines = String::new();
        let mut seen = Vec::new();
        for v in &scan.shellpers {
            seen.push(v.id.clone());
            let before = prev.insert(v.id.clone(), v.phase);
            let event = match before {
                None => Some("added"),
                Some(b) if b != v.phase => Some("changed"),
                _ => None,
            };
            if let Some(event) = event {
                if iteration > 0 {
                    changed_at.insert(v.id.clone(), iteration);
                    log.push(render::Change {
                        ts_ms: ts,
                        id: v.id.clone(),
                        from: before,
                        to: Some(v.phase),
                    });
                }
                let ev = WatchEvent {
                    schema_version: SCHEMA_VERSION,
                    ts_ms: ts,
                    event,
                    id: &v.id,
                    phase: v.phase,
                    previous: before,
                    shellper: Some(v),
                };
                lines.push_str(&serde_json::to_string(&ev).unwrap_or_default());
                lines.push('\n');
            }
        }
        let gone: Vec<String> = prev.keys().filter(|k| !seen.contains(k)).cloned().collect();
        for id in gone {
            let before = prev.remove(&id);
            log.push(render::Change {
                ts_ms: ts,
                id: id.clone(),
                from: before,
                to: None,
            });
            let ev = WatchEvent {
                schema_version: SCHEMA_VERSION,
                ts_ms: ts,
                event: "removed",
                id: &id,
                phase: Phase::Gone,
                previous: before,
                shellper: None,
            };
            lines.push_str(&serde_json::to_string(&ev).unwrap_or_default());
            lines.push('\n');
        }
        let r = if tty {
            let hl = |id: &str| {
                changed_at
                    .get(id)
                    .is_some_and(|at| iteration - at < HIGHLIGHT_REFRESHES)
            };
            out(&render::watch_screen(
                p,
                scope,
                interval,
                ts,
                &scan.shellpers,
                &hl,
                &log,
            ))
        } else {
            out(&lines)
        };
        if let Err(e) = r {
            break Err(e);
        }
        iteration += 1;
        if count.is_some_and(|c| iteration >= c) {
            break Ok(EXIT_OK);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = quit.recv() => break Ok(EXIT_OK),
        }
    };
    if tty {
        let _ = out("\x1b[?25h");
    }
    result
}

/// SIGINT, SIGTERM and SIGHUP, as one stream: `watch` quits on any.
struct Quit {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Quit {
    fn install() -> Result<Quit> {
        use tokio::signal::unix::{SignalKind, signal};
        let sig = |k| signal(k).map_err(|e| Error::Output(std::io::Error::other(e)));
        Ok(Quit {
            int: sig(SignalKind::interrupt())?,
            term: sig(SignalKind::terminate())?,
            hup: sig(SignalKind::hangup())?,
        })
    }

    /// Resolves when one of the signals arrives (cancel-safe).
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

async fn orphans_cmd(
    scope: &Path,
    timeout: Duration,
    json: bool,
    tracked_arg: Option<&str>,
    scope_only: bool,
    p: &Palette,
) -> Result<i32> {
    let tracked = tracked_arg.map(tracked::read_tracked).transpose()?;
    let scan = scan_scope(scope, timeout, None).await?;
    warn_registry(&scan);
    let registry_ok = scan.registry_error.is_none();
    let report =
        tokio::task::spawn_blocking(move || orphans::find(&scan, tracked.as_ref(), scope_only))
            .await
            .map_err(|e| Error::Output(std::io::Error::other(e)))?;
    if json {
        json_out(&report)?;
    } else {
        out(&render::orphans_text(p, &report))?;
    }
    Ok(if !registry_ok {
        EXIT_ERROR
    } else if report.orphans.is_empty() {
        EXIT_OK
    } else {
        EXIT_FOUND
    })
}

/// Options of `reap`.
#[derive(Debug)]
pub struct ReapOpts {
    pub ids: Vec<String>,
    pub pids: Vec<u32>,
    pub orphans: bool,
    pub tracked: Option<String>,
    pub scope_only: bool,
    pub dry_run: bool,
    pub grace: Duration,
    pub force: bool,
    pub json: bool,
}

async fn reap_cmd(scope: &Path, timeout: Duration, o: ReapOpts, p: &Palette) -> Result<i32> {
    let tracked = o
        .tracked
        .as_deref()
        .map(tracked::read_tracked)
        .transpose()?;
    let scan = scan_scope(scope, timeout, None).await?;
    warn_registry(&scan);
    // Full /proc scans (the orphan search, the tree of every target) run
    // on the blocking pool, never on the runtime's threads.
    let (ids, pids, orphans_mode, scope_only, force) =
        (o.ids, o.pids, o.orphans, o.scope_only, o.force);
    let scope_buf = scope.to_path_buf();
    let (targets, plans) = tokio::task::spawn_blocking(move || -> Result<_> {
        let snap = shellper_proctree::snapshot();
        let targets: Vec<Target> = if orphans_mode {
            let report = orphans::find(&scan, tracked.as_ref(), scope_only);
            reap::targets_from_orphans(&report, &scan)
        } else {
            let mut t = Vec::new();
            for id in &ids {
                let v = scan.shellpers.iter().find(|v| &v.id == id).ok_or_else(|| {
                    Error::UnknownId {
                        id: id.clone(),
                        scope: scope_buf.clone(),
                    }
                })?;
                let mut target = Target::from_view(v, &scan);
                // A dead shellper may have left its child's session running.
                target.sessions = orphans::sessions_of_dead(v, &scan, &snap);
                t.push(target);
            }
            for pid in &pids {
                t.push(reap::target_from_pid(*pid, &scan)?);
            }
            t
        };
        let plans: Vec<_> = targets
            .iter()
            .map(|t| reap::plan(t, &snap, force))
            .collect();
        Ok((targets, plans))
    })
    .await
    .map_err(|e| Error::Output(std::io::Error::other(e)))??;
    let mut outcomes = Vec::new();
    if o.dry_run {
        for plan in plans {
            outcomes.push(reap::Outcome {
                plan,
                executed: Vec::new(),
                killed: Vec::new(),
                survivors: Vec::new(),
                clean: false,
            });
        }
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (t, plan)) in targets.into_iter().zip(plans).enumerate() {
            let (grace, force) = (o.grace, o.force);
            let handshake = timeout.max(Duration::from_secs(1));
            tasks.spawn(async move { (i, reap::execute(&t, plan, grace, handshake, force).await) });
        }
        let mut done: Vec<(usize, reap::Outcome)> = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(x) = r {
                done.push(x);
            }
        }
        done.sort_by_key(|(i, _)| *i);
        outcomes = done.into_iter().map(|(_, o)| o).collect();
    }
    let report = ReapReport {
        schema_version: SCHEMA_VERSION,
        scope: scope.display().to_string(),
        dry_run: o.dry_run,
        targets: outcomes,
    };
    if o.json {
        json_out(&report)?;
    } else {
        out(&render::reap_text(p, &report))?;
    }
    Ok(if report.all_clean() {
        EXIT_OK
    } else {
        EXIT_FOUND
    })
}

/// Maps an error to its exit code (always [`EXIT_ERROR`]) after printing it.
pub fn report_error(e: &Error) -> i32 {
    // An error may quote what a shellper or a file said: escaped.
    eprintln!("leasectl: {}", render::esc(&e.to_string()));
    EXIT_ERROR
}

/// The default scope, for messages.
pub fn default_scope() -> PathBuf {
    Scope::default_dir()
}
