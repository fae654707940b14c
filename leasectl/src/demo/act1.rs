//! Act 1: minitower holds three shellpers (one runs an escape-torture
//! tree) and is SIGKILLed for good; the shellpers see EOF at once, wait out
//! the reattach window, kill their whole trees, and /proc proves nothing
//! survives. Measures EOF detection and kill precision.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use shellper_proctree::read_stat;

use super::setup::{DeathWatch, DemoGuard, Say, secs, start_tower, tower_args, wait_ready};
use super::{DEMO_TAG_VAR, KILL_GRACE, TTL};
use crate::error::Result;
use crate::model::Phase;
use crate::render::{self, short_duration};
use crate::scan::scan_scope;

/// The PTY command of the demo: the first shellper to start it wins the
/// `mkdir` and builds the escape-torture tree, the others just sleep.
const TORTURE: &str = r#"if mkdir "$SHELLPER_DEMO_DIR/torture" 2>/dev/null; then
  (trap '' HUP; exec sleep 600) &
  setsid sleep 600 &
  (trap '' HUP TERM; exec sleep 600) &
  sh -c 'sleep 600 & exit 0' &
  exec sleep 600
else
  exec sleep 600
fi"#;

/// Results of act 1.
#[derive(Debug, Default)]
pub(super) struct Act1 {
    /// Lapse time after the SIGKILL by the shellper's own clock (a lower
    /// bound: the STATUS answer is a few ms old when we read it).
    pub(super) eof_ms: Vec<u64>,
    /// When a poll first saw it lapsed (an upper bound).
    pub(super) eof_seen_ms: Vec<u64>,
    /// Tree death minus kill deadline, ms (negative = early).
    pub(super) precision_ms: Vec<i64>,
    pub(super) survivors: usize,
    pub(super) processes: usize,
    pub(super) all_gone: bool,
}

pub(super) async fn act1(
    guard: &mut DemoGuard,
    bin: &Path,
    window: Duration,
    say: &Say<'_>,
) -> Result<Act1> {
    let scope = guard.dir.join("act1");
    let log = guard.dir.join("minitower-act1.log");
    say.head(&format!(
        "act 1: the Tower is SIGKILLed and never comes back (ttl {}, window {}, kill grace {})",
        short_duration(TTL),
        short_duration(window),
        short_duration(KILL_GRACE)
    ));
    let mut args = tower_args(&scope, window, 3, &[]);
    args.extend(["--".into(), "sh".into(), "-c".into(), TORTURE.into()]);
    let (tower_pid, mut rx) = start_tower(guard, bin, &args, &log)?;
    let st = wait_ready(&mut rx, Duration::from_secs(20), &log).await?;
    say.line(&format!(
        "minitower (pid {tower_pid}) holds {} shellper(s) in {}",
        st.held,
        scope.display()
    ));
    // Let the torture tree finish forking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scan = scan_scope(&scope, Duration::from_millis(500), None).await?;
    say.table(&scan);
    let snap = shellper_proctree::snapshot();
    let mut member_of: HashMap<i32, String> = HashMap::new();
    let mut watched: Vec<(i32, u64)> = Vec::new();
    for (id, (pid, _child)) in &st.shellpers {
        let (tree, _) = crate::procs::tree_of(&snap, *pid as i32, None, &[]);
        let sessions: std::collections::BTreeSet<i32> = tree.iter().map(|t| t.sid).collect();
        let torture = tree.len() > 3;
        say.line(&format!(
            "{id}: {} process(es) in {} session(s){}",
            tree.len(),
            sessions.len(),
            if torture {
                "  <- escape torture: SIGHUP-ignoring job, setsid'd sleeper, SIGHUP+SIGTERM-ignoring job, orphaned grandchild"
            } else {
                ""
            }
        ));
        for t in tree {
            member_of.insert(t.pid, id.clone());
            watched.push((t.pid, t.start_ticks));
        }
    }
    // Anything else tagged (there should be nothing) is watched too.
    for t in guard.tagged() {
        if t.pid as u32 != tower_pid && !member_of.contains_key(&t.pid) {
            watched.push((t.pid, t.start_ticks));
        }
    }
    let processes = watched.len();
    let deaths = DeathWatch::start(watched.clone());

    say.line(&format!("SIGKILL minitower (pid {tower_pid})"));
    let t0 = Instant::now();
    if let Some(t) = guard.towers.iter_mut().find(|c| c.id() == tower_pid) {
        let _ = t.kill();
        let _ = t.wait();
    }
    let mut phases: HashMap<String, Phase> = st
        .shellpers
        .keys()
        .map(|id| (id.clone(), Phase::Held))
        .collect();
    let mut deadline: HashMap<String, Instant> = HashMap::new();
    let mut seen_lapsed: HashMap<String, Duration> = HashMap::new();
    let bound = window + KILL_GRACE + Duration::from_secs(8);
    let mut printed_lapsed_table = false;
    loop {
        let scan_start = Instant::now();
        let scan = scan_scope(&scope, Duration::from_millis(300), None).await?;
        for (id, (pid, _)) in &st.shellpers {
            let v = scan.shellpers.iter().find(|v| &v.id == id);
            let alive = deaths.death(*pid as i32).is_none();
            // `dead` (process gone, socket file not yet unlinked) is gone
            // for the demo's purpose.
            let now_phase = match v {
                Some(v) if v.reachable => v.phase,
                _ if !alive => Phase::Gone,
                Some(v) if v.phase == Phase::Dead => Phase::Gone,
                Some(v) => v.phase,
                None => Phase::Gone,
            };
            if let Some(v) = v
                && v.phase == Phase::Lapsed
                && let Some(k) = v.kill_in_ms
                && !deadline.contains_key(id)
            {
                deadline.insert(id.clone(), scan_start + Duration::from_millis(k));
            }
            let before = phases.insert(id.clone(), now_phase);
            if now_phase == Phase::Lapsed && !seen_lapsed.contains_key(id) {
                seen_lapsed.insert(id.clone(), t0.elapsed());
            }
            if before != Some(now_phase) {
                let extra = match (now_phase, v) {
                    (Phase::Lapsed, Some(v)) => v
                        .kill_in_ms
                        .map(|k| {
                            format!("  (kill in {})", short_duration(Duration::from_millis(k)))
                        })
                        .unwrap_or_default(),
                    (Phase::Gone, _) => "  (tree dead, socket removed)".into(),
                    _ => String::new(),
                };
                say.line(&format!(
                    "{:>8}  {id}  {} → {}{extra}",
                    secs(t0.elapsed().as_secs_f64()),
                    before.map_or("?", |b| b.as_str()),
                    say.p
                        .paint(render::phase_style(now_phase), now_phase.as_str())
                ));
            }
        }
        if !printed_lapsed_table && phases.values().all(|p| *p == Phase::Lapsed) {
            printed_lapsed_table = true;
            say.table(&scan);
        }
        let all_gone = phases.values().all(|p| *p == Phase::Gone);
        let tree_gone = watched.iter().all(|(pid, _)| deaths.death(*pid).is_some());
        if (all_gone && tree_gone) || t0.elapsed() > bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Measurements.
    let mut a = Act1 {
        processes,
        ..Act1::default()
    };
    say.line("");
    for (id, (pid, _)) in &st.shellpers {
        let Some(d) = deadline.get(id) else {
            say.line(&format!("{id}: never seen lapsed (no deadline to compare)"));
            continue;
        };
        let lapse = d.checked_sub(window).unwrap_or(t0);
        let eof = lapse.saturating_duration_since(t0).as_millis() as u64;
        // Tree death: the last of its members (shellper included).
        let last = member_of
            .iter()
            .filter(|(_, owner)| *owner == id)
            .filter_map(|(p, _)| deaths.death(*p))
            .chain(deaths.death(*pid as i32))
            .max();
        match last {
            Some(t) => {
                let prec = if t >= *d {
                    t.duration_since(*d).as_millis() as i64
                } else {
                    -(d.duration_since(t).as_millis() as i64)
                };
                let seen = seen_lapsed.get(id).map_or(0, |d| d.as_millis() as u64);
                say.line(&format!(
                    "{id}: lapsed {eof}..{seen} ms after the SIGKILL; whole tree dead {} after its kill deadline (lapse + {}){}",
                    if prec >= 0 { format!("{prec} ms") } else { format!("{} ms BEFORE", -prec) },
                    short_duration(window),
                    if prec > (KILL_GRACE.as_millis() / 2) as i64 {
                        format!(": a job ignored SIGTERM and got SIGKILL after the {} kill grace", short_duration(KILL_GRACE))
                    } else {
                        String::new()
                    }
                ));
                a.eof_seen_ms.push(seen);
                a.precision_ms.push(prec);
            }
            None => say.line(&format!("{id}: tree still alive")),
        }
        a.eof_ms.push(eof);
    }
    a.all_gone = watched.iter().all(|(pid, _)| deaths.death(*pid).is_some());
    drop(deaths);
    let survivors = guard.tagged();
    a.survivors = survivors.len();
    say.line(&format!(
        "/proc scan for {DEMO_TAG_VAR}: {} live process(es) of {} ({} zombie(s) not counted: nobody reaps orphans here)",
        survivors.len(),
        processes,
        count_zombies(&watched)
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

/// Watched processes that are zombies now: dead, but nobody reaped them
/// (PID 1 does not reap on these machines). A zombie runs no code and holds
/// nothing but its pid, so it counts as gone.
fn count_zombies(watched: &[(i32, u64)]) -> usize {
    watched
        .iter()
        .filter(|(pid, t)| read_stat(*pid).is_some_and(|p| p.start_ticks == *t && p.state == 'Z'))
        .count()
}
