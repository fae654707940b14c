//! Act 2: minitower is SIGKILLed and restarted within the window: it
//! adopts every shellper (same child pids, new epochs), nothing is killed;
//! then it terminates them on SIGTERM (`--on-exit terminate`) and /proc
//! proves nothing survives.

use std::path::Path;
use std::time::{Duration, Instant};

use shellper_proctree::{LinuxTable, ProcessTable};

use super::DEMO_TAG_VAR;
use super::setup::{DemoGuard, Say, secs, start_tower, tower_args, wait_ready};
use crate::error::Result;
use crate::render::{self, short_duration};
use crate::scan::scan_scope;

/// Results of act 2.
#[derive(Debug, Default)]
pub(super) struct Act2 {
    pub(super) adopted: usize,
    pub(super) same_children: usize,
    pub(super) killed_before_cleanup: usize,
    pub(super) epochs: Vec<(u64, u64)>,
    pub(super) survivors: usize,
    pub(super) processes: usize,
}

pub(super) async fn act2(
    guard: &mut DemoGuard,
    bin: &Path,
    window: Duration,
    say: &Say<'_>,
) -> Result<Act2> {
    let scope = guard.dir.join("act2");
    let log = guard.dir.join("minitower-act2.log");
    // A longer window than act 1: the restart must land inside it even on
    // a loaded machine.
    let window2 = window * 2;
    say.head(&format!(
        "act 2: the Tower is SIGKILLed and restarted within the window ({})",
        short_duration(window2)
    ));
    let args = tower_args(&scope, window2, 3, &["--", "sleep", "600"]);
    let (pid1, mut rx1) = start_tower(guard, bin, &args, &log)?;
    let st1 = wait_ready(&mut rx1, Duration::from_secs(20), &log).await?;
    say.line(&format!(
        "minitower (pid {pid1}) holds {} shellper(s)",
        st1.held
    ));
    let snap = shellper_proctree::snapshot();
    let children: Vec<(String, u32, u64)> = st1
        .shellpers
        .iter()
        .filter_map(|(id, (_, c))| {
            snap.iter()
                .find(|p| p.pid == *c as i32)
                .map(|p| (id.clone(), *c, p.start_ticks))
        })
        .collect();
    let before: Vec<(i32, u64)> = guard
        .tagged()
        .iter()
        .map(|p| (p.pid, p.start_ticks))
        .collect();
    say.line(&format!("SIGKILL minitower (pid {pid1})"));
    let t0 = Instant::now();
    if let Some(t) = guard.towers.iter_mut().find(|c| c.id() == pid1) {
        let _ = t.kill();
        let _ = t.wait();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scan = scan_scope(&scope, Duration::from_millis(500), None).await?;
    say.line(&format!(
        "{:>8}  phases: {}",
        secs(t0.elapsed().as_secs_f64()),
        scan.shellpers
            .iter()
            .map(|v| format!("{} {}", v.id, v.phase.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let args2 = tower_args(&scope, window2, 0, &["--on-exit", "terminate"]);
    let (pid2, mut rx2) = start_tower(guard, bin, &args2, &log)?;
    say.line(&format!(
        "{:>8}  restarted minitower (pid {pid2})",
        secs(t0.elapsed().as_secs_f64())
    ));
    let st2 = wait_ready(&mut rx2, Duration::from_secs(20), &log).await?;
    say.line(&format!(
        "{:>8}  minitower adopted {} shellper(s)",
        secs(t0.elapsed().as_secs_f64()),
        st2.shellpers.len()
    ));
    let scan = scan_scope(&scope, Duration::from_millis(500), None).await?;
    say.table(&scan);
    let mut a = Act2 {
        adopted: st2.shellpers.len(),
        ..Act2::default()
    };
    for (id, c, ticks) in &children {
        let same = st2.shellpers.get(id).is_some_and(|(_, c2)| c2 == c)
            && LinuxTable.alive(*c as i32, *ticks);
        if same {
            a.same_children += 1;
        }
        let e1 = st1.epochs.get(id).copied().unwrap_or(1);
        let e2 = scan
            .shellpers
            .iter()
            .find(|v| &v.id == id)
            .and_then(|v| v.epoch)
            .unwrap_or(0);
        a.epochs.push((e1, e2));
        say.line(&format!(
            "{id}: child pid {c} {}, epoch {e1} → {e2}",
            if same {
                "unchanged and alive"
            } else {
                "CHANGED OR DEAD"
            }
        ));
    }
    a.killed_before_cleanup = before
        .iter()
        .filter(|(pid, t)| *pid as u32 != pid1 && !LinuxTable.alive(*pid, *t))
        .count();
    a.processes = before.len().saturating_sub(1);
    say.line(&format!(
        "processes of the sessions killed during the restart: {}",
        a.killed_before_cleanup
    ));
    say.line(&format!(
        "SIGTERM minitower (pid {pid2}, --on-exit terminate): it terminates every shellper"
    ));
    // Our own child, not yet reaped (its handle is in `guard.towers`).
    let _ = shellper_proctree::signal_unreaped_child(pid2 as i32, libc::SIGTERM);
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let exited = guard
            .towers
            .iter_mut()
            .find(|c| c.id() == pid2)
            .is_none_or(|c| c.try_wait().ok().flatten().is_some());
        if exited || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Ok(ev) = rx2.try_recv() {
        if ev["event"] == "terminated" {
            say.line(&format!("minitower: {ev}"));
        }
    }
    // Give the last exits a moment, then count.
    let end = Instant::now() + Duration::from_secs(3);
    while !guard.tagged().is_empty() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let survivors = guard.tagged();
    a.survivors = survivors.len();
    say.line(&format!(
        "/proc scan for {DEMO_TAG_VAR}: {} live process(es)",
        survivors.len()
    ));
    for s in survivors {
        say.line(&format!(
            "  SURVIVOR pid {} ({}) state {}",
            s.pid,
            render::esc(&s.comm),
            render::esc(&s.state.to_string())
        ));
    }
    Ok(a)
}
