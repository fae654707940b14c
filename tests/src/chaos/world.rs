//! The running world of one chaos run: the sessions and what is expected of
//! each, and the invariants checked against /proc and STATUS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shellper_protocol::msg::WirePhase;

use super::procs::{Reaper, scan, send_signal, start_ticks, wall};
use super::report::ChaosReport;
use super::schedule::{ChaosConfig, Fault, Rng};
use super::tower::Tower;
use super::trees::{learn_tag, missing_members, tree_members};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Hold {
    /// Held by the current Tower, which is alive and not stopped.
    Held,
    /// Nobody (live and unfrozen) holds it: no death before `earliest`,
    /// every process gone by `latest`; `exact` is the window's end when it
    /// is known to the millisecond (for the precision figures).
    Free {
        earliest: Instant,
        latest: Instant,
        exact: Option<Instant>,
    },
    /// Gone, checked.
    Gone,
}

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) pid: i32,
    pub(super) start: u64,
    pub(super) child_pid: i32,
    /// Its [`TREE_VAR`](super::TREE_VAR) value; `None` until learnt (a session adopted
    /// before this run saw it spawned).
    pub(super) tree_tag: Option<String>,
    pub(super) hold: Hold,
    /// The PTY child exited: its tree may shrink, and a husk may end at its
    /// lapse or at its deadline.
    pub(super) husk: bool,
    pub(super) socket_deleted: bool,
    /// Every lasting member of its tree was seen once (see
    /// [`lasting_member`](super::lasting_member)): from then on each must stay while it is held.
    pub(super) steady: bool,
}

/// The running world of one chaos run.
pub(super) struct World {
    pub(super) cfg: ChaosConfig,
    pub(super) tag: String,
    pub(super) scope: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) tower: Option<Tower>,
    pub(super) towers: u32,
    pub(super) sessions: BTreeMap<String, Session>,
    pub(super) bystanders: Vec<(i32, u64)>,
    /// Unknown tagged processes are tolerated until then (a Tower starting,
    /// or killed before it printed what it spawned).
    pub(super) unknown_ok_until: Instant,
    /// Tagged processes no Tower accounts for, at the last poll.
    pub(super) unknown_now: usize,
    /// Per session, a lower bound of the instant its lease lapses (or
    /// lapsed), from STATUS just before the Tower was killed or stopped:
    /// the window runs from the lapse, which a live Tower renewing late
    /// under load can put before the kill.
    pub(super) lapse_floor: HashMap<String, Instant>,
    /// What the run did, with wall-clock times (`chaos.log`).
    pub(super) actions: Option<File>,
    pub(super) reaper: Reaper,
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) report: ChaosReport,
    pub(super) step: u32,
    pub(super) fault: Option<Fault>,
}

pub(super) type Check<T> = Result<T, String>;

impl World {
    pub(super) fn fail<T>(&self, msg: impl Into<String>) -> Check<T> {
        Err(msg.into())
    }

    /// Sends a signal, logged.
    pub(super) fn signal(&mut self, pid: i32, sig: i32, name: &str) {
        self.act(format_args!("{name} -> {pid}"));
        send_signal(pid, sig);
    }

    pub(super) fn act(&mut self, what: impl fmt::Display) {
        let step = self.step;
        if let Some(f) = self.actions.as_mut() {
            let _ = writeln!(f, "{} step {step} {what}", wall());
        }
    }

    /// Waits until every held session's tree is complete.
    pub(super) fn settle_trees(&mut self) -> Check<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.drain_events()?;
            let procs = scan(self.tag.as_bytes());
            let mut waiting = Vec::new();
            for s in self.sessions.values_mut() {
                if s.steady || s.husk || s.hold == Hold::Gone {
                    continue;
                }
                learn_tag(&procs, s);
                let missing = missing_members(&procs, s);
                if missing.is_empty() {
                    s.steady = true;
                } else {
                    waiting.push((s.id.clone(), missing));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return self.fail(format!(
                    "trees not complete within 20 s (session, missing members): {waiting:?}"
                ));
            }
            self.poll()?;
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Checks every invariant that /proc can decide, once.
    pub(super) fn poll(&mut self) -> Check<()> {
        self.drain_events()?;
        // Sessions are "held by a live Tower" only while it lives: a Tower
        // that dies on its own is a failure of its own, named as such.
        if let Some(t) = self.tower.as_ref().filter(|t| !t.may_exit)
            && let Some(status) = self.reaper.exit_of(t.pid)
        {
            return self.fail(format!(
                "minitower {} exited on its own (wait status {status:#x}); log:\n{}",
                t.pid,
                self.tower_log_tail()
            ));
        }
        // A scan takes a while on a loaded machine: a death it sees happened
        // before its end, a survivor it sees was alive after its start. So
        // "died too early" is judged at the end, "alive too late" at the
        // start, and neither can be a measurement artefact.
        let now = Instant::now();
        let procs = scan(self.tag.as_bytes());
        let scanned = Instant::now();
        for (pid, start) in &self.bystanders {
            if start_ticks(*pid) != Some(*start) {
                return self.fail(format!(
                    "bystander pid {pid} (outside every tree) was killed"
                ));
            }
        }
        let mut known: HashSet<i32> = self.bystanders.iter().map(|(p, _)| *p).collect();
        if let Some(t) = &self.tower {
            known.insert(t.pid);
        }
        let mut failure = None;
        let mut precision = Vec::new();
        let mut window_kills = 0;
        for s in self.sessions.values_mut() {
            if s.hold == Hold::Gone {
                // Checked gone once; its pids may be recycled since.
                continue;
            }
            learn_tag(&procs, s);
            let alive = procs.get(&s.pid).is_some_and(|p| p.start == s.start);
            let tree = tree_members(&procs, s);
            known.insert(s.pid);
            known.insert(s.child_pid);
            known.extend(tree.iter().copied());
            let missing = if s.husk || !s.steady {
                Vec::new()
            } else {
                missing_members(&procs, s)
            };
            let whole = missing.is_empty();
            match s.hold {
                Hold::Held => {
                    if !alive || !whole {
                        failure.get_or_insert(format!(
                            "FALSE KILL: {} (pid {}) {} while a live Tower held it \
                             (tree: {} tagged, lasting members missing {missing:?}: {:?})",
                            s.id,
                            s.pid,
                            if alive {
                                "lost part of its tree"
                            } else {
                                "died"
                            },
                            tree.len(),
                            tree.iter()
                                .filter_map(|p| procs.get(p).map(|x| (*p, x.cmdline())))
                                .collect::<Vec<_>>()
                        ));
                    }
                }
                Hold::Free {
                    earliest,
                    latest,
                    exact,
                } => {
                    let gone = !alive && tree.is_empty();
                    if scanned < earliest && !s.husk && (!alive || !whole) {
                        failure.get_or_insert(format!(
                            "FALSE KILL: {} (pid {}) died {:?} before its window could end \
                             (tree: {} tagged, lasting members missing {missing:?})",
                            s.id,
                            s.pid,
                            earliest - scanned,
                            tree.len()
                        ));
                    } else if gone {
                        s.hold = Hold::Gone;
                        window_kills += 1;
                        if let Some(x) = exact {
                            precision.push(scanned.saturating_duration_since(x));
                        }
                    } else if now > latest {
                        failure.get_or_insert(format!(
                            "ORPHAN: {} (pid {}, alive {alive}) has {} tree process(es) {:?} past its kill bound: {:?}",
                            s.id,
                            s.pid,
                            tree.len(),
                            now - latest,
                            tree.iter()
                                .filter_map(|p| procs.get(p).map(|x| (p, x.cmdline())))
                                .collect::<Vec<_>>()
                        ));
                    }
                }
                Hold::Gone => {}
            }
        }
        self.report.trees_killed_by_window += window_kills;
        self.report.kill_precision.extend(precision);
        if let Some(f) = failure {
            if f.starts_with("FALSE KILL") {
                self.report.false_kills += 1;
            } else if f.starts_with("ORPHAN") {
                self.report.orphans += 1;
            }
            return Err(f);
        }
        let unknown: Vec<(i32, String)> = procs
            .iter()
            .filter(|(pid, _)| !known.contains(pid))
            .map(|(pid, p)| (*pid, p.cmdline()))
            .collect();
        self.unknown_now = unknown.len();
        if now > self.unknown_ok_until && !unknown.is_empty() {
            self.report.orphans += unknown.len() as u32;
            return self.fail(format!(
                "ORPHAN: tagged processes no Tower accounts for: {unknown:?}"
            ));
        }
        Ok(())
    }

    /// Polls the invariants for `d`.
    pub(super) fn watch(&mut self, d: Duration) -> Check<()> {
        let end = Instant::now() + d;
        loop {
            self.poll()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(25)));
        }
    }

    /// Polls until no session is `Free` any more (each died or was
    /// re-held), failing at the bounds.
    pub(super) fn watch_until_settled(&mut self) -> Check<()> {
        let limit = Instant::now() + self.cfg.claim + self.cfg.window * 4 + self.cfg.margin * 3;
        loop {
            self.poll()?;
            let free = self
                .sessions
                .values()
                .any(|s| matches!(s.hold, Hold::Free { .. }));
            if !free && self.unknown_now == 0 {
                return Ok(());
            }
            if Instant::now() > limit {
                return self.fail("the world did not settle".to_string());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Every held session answers STATUS held by the current Tower.
    pub(super) fn check_status(&mut self) -> Check<()> {
        let Some(tower_pid) = self.tower.as_ref().map(|t| t.pid) else {
            return Ok(());
        };
        let held: Vec<Session> = self
            .sessions
            .values()
            .filter(|s| s.hold == Hold::Held && !s.socket_deleted)
            .cloned()
            .collect();
        for s in held {
            let sock = self.scope.join(format!("{}.sock", s.id));
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let st = self
                    .rt
                    .block_on(tower_client::query_status(&sock, Duration::from_secs(2)));
                let ok = match &st {
                    Ok(st) => {
                        st.phase == WirePhase::Held && st.holder_peer_pid == Some(tower_pid as u32)
                    }
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    return self.fail(format!(
                        "{} is not held by the live Tower {tower_pid}: {:?}",
                        s.id,
                        st.map(|s| (s.phase, s.holder_peer_pid, s.epoch))
                    ));
                }
                self.poll()?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Records, for every held session, a lower bound of when its lease
    /// lapses (see `lapse_floor`), and counts leases found lapsed although
    /// a live Tower holds them.
    pub(super) fn note_lapse_floors(&mut self) {
        self.lapse_floor.clear();
        let held: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.hold == Hold::Held && !s.socket_deleted)
            .map(|s| s.id.clone())
            .collect();
        for id in held {
            let sock = self.scope.join(format!("{id}.sock"));
            let before = Instant::now();
            let Ok(st) = self.rt.block_on(tower_client::query_status(
                &sock,
                Duration::from_millis(500),
            )) else {
                // Unknown: the widest floor (it may have lapsed just now).
                self.lapse_floor
                    .insert(id, before.checked_sub(self.cfg.ttl).unwrap_or(before));
                continue;
            };
            self.act(format_args!(
                "status {id}: {:?} expires_in {:?} kill_in {:?} epoch {}",
                st.phase, st.expires_in_ms, st.kill_in_ms, st.epoch
            ));
            let floor = match (st.phase, st.expires_in_ms, st.kill_in_ms) {
                (WirePhase::Held, Some(e), _) => before + Duration::from_millis(e),
                (WirePhase::Lapsed, _, Some(k)) => {
                    self.report.lapses_while_held += 1;
                    (before + Duration::from_millis(k))
                        .checked_sub(self.cfg.window)
                        .unwrap_or(before)
                }
                _ => before,
            };
            self.lapse_floor.insert(id, floor);
        }
    }

    /// Every live session is set free with the same bounds (a session
    /// whose lease lapses before `earliest - window` may die that much
    /// earlier, see `lapse_floor`).
    pub(super) fn free_all(&mut self, earliest: Instant, latest: Instant, exact: Option<Instant>) {
        let window = self.cfg.window;
        for s in self.sessions.values_mut() {
            let floor = self.lapse_floor.get(&s.id).map(|f| *f + window);
            let (earliest, exact) = match floor {
                Some(f) if f < earliest => (f, None),
                _ => (earliest, exact),
            };
            match s.hold {
                Hold::Held => {
                    s.hold = Hold::Free {
                        earliest,
                        latest,
                        exact,
                    }
                }
                Hold::Free {
                    earliest: e,
                    latest: l,
                    exact: x,
                } => {
                    // Already free (a second kill before adoption): the
                    // earlier window may still run, or a re-acquire may have
                    // started a new one: keep the widest bounds.
                    s.hold = Hold::Free {
                        earliest: e.min(earliest),
                        latest: l.max(latest),
                        exact: if x == exact { x } else { None },
                    };
                }
                Hold::Gone => {}
            }
        }
    }

    pub(super) fn kill_bound(&self, from: Instant) -> Instant {
        from + self.cfg.window + self.cfg.kill_grace + self.cfg.margin
    }

    pub(super) fn live_sessions(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.hold != Hold::Gone)
            .count()
    }

    pub(super) fn top_up(&self) -> usize {
        self.cfg.sessions.saturating_sub(self.live_sessions())
    }

    pub(super) fn pick_held(
        &mut self,
        rng: &mut Rng,
        usable: impl Fn(&Session) -> bool,
    ) -> Option<Session> {
        let held: Vec<&Session> = self
            .sessions
            .values()
            .filter(|s| s.hold == Hold::Held && usable(s))
            .collect();
        if held.is_empty() {
            return None;
        }
        Some(held[rng.below(held.len() as u64) as usize].clone())
    }
}
