//! The faults: what each step of the schedule does to the world, and what
//! it then expects of it.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::schedule::{Fault, Rng};
use super::world::{Check, Hold, World};

impl World {
    pub(super) fn run_fault(&mut self, fault: Fault, rng: &mut Rng) -> Check<()> {
        let cfg = self.cfg.clone();
        match fault {
            Fault::Steady => self.watch(rng.between(cfg.ttl, cfg.ttl * 2))?,
            Fault::TowerKill => {
                let at = self.kill_tower()?;
                self.free_all(at + cfg.window, self.kill_bound(at), Some(at + cfg.window));
                self.watch_until_settled()?;
                let spawn = self.top_up();
                self.start_tower(spawn, None)?;
            }
            Fault::TowerKillRestart => {
                let at = self.kill_tower()?;
                self.free_all(at + cfg.window, self.kill_bound(at), None);
                // Restart inside the window, leaving time for adoption.
                let wait = rng.between(Duration::ZERO, cfg.window / 2);
                self.watch(wait)?;
                self.restart_and_expect_adoption()?;
            }
            Fault::TowerKillRestartTwice => {
                let at = self.kill_tower()?;
                self.free_all(at + cfg.window, self.kill_bound(at), None);
                self.watch(rng.between(Duration::ZERO, cfg.window / 4))?;
                // The second Tower dies in the middle of its adoption.
                let spawn = self.top_up();
                self.launch_tower(spawn, None)?;
                self.watch(rng.between(Duration::ZERO, Duration::from_millis(150)))?;
                let at2 = self.kill_tower()?;
                self.free_all(at + cfg.window, self.kill_bound(at2), None);
                self.unknown_ok_until =
                    at2 + cfg.claim.max(cfg.window) + cfg.kill_grace + cfg.margin;
                self.watch(rng.between(Duration::ZERO, cfg.window / 4))?;
                self.restart_and_expect_adoption()?;
            }
            Fault::TowerKillMidSpawn => {
                // A Tower that must spawn (and adopt) dies part-way.
                let at = self.kill_tower()?;
                self.free_all(at + cfg.window, self.kill_bound(at), None);
                self.launch_tower(self.top_up().max(1), None)?;
                self.watch(rng.between(Duration::ZERO, Duration::from_millis(600)))?;
                let at2 = self.kill_tower()?;
                // Adopted ones run a window from this kill, ones it never
                // acquired keep the first; unclaimed spawns die at their claim
                // deadline.
                self.free_all(at + cfg.window, self.kill_bound(at2), None);
                let unclaimed = at2 + cfg.claim.max(cfg.window) + cfg.kill_grace + cfg.margin;
                self.unknown_ok_until = unclaimed;
                for s in self.sessions.values_mut() {
                    if let Hold::Free { latest, .. } = &mut s.hold {
                        *latest = (*latest).max(unclaimed);
                    }
                }
                self.watch_until_settled()?;
                let spawn = self.top_up();
                self.start_tower(spawn, None)?;
            }
            Fault::TowerTerminate => {
                let t = self.tower.as_ref().expect("tower");
                let pid = t.pid;
                let held: Vec<String> = self
                    .sessions
                    .values()
                    .filter(|s| s.hold == Hold::Held)
                    .map(|s| s.id.clone())
                    .collect();
                let at = Instant::now();
                if let Some(t) = self.tower.as_mut() {
                    t.may_exit = true;
                }
                self.signal(pid, libc::SIGTERM, "SIGTERM");
                // Terminated sessions may die at once.
                self.free_all(at, at + cfg.kill_grace + cfg.margin, None);
                if rng.chance(50) {
                    // Killed in the middle of its terminate.
                    self.watch(rng.between(Duration::ZERO, Duration::from_millis(300)))?;
                    let at2 = self.kill_tower()?;
                    self.free_all(at, self.kill_bound(at2), None);
                } else {
                    for id in &held {
                        self.wait_event("terminated", Duration::from_secs(15), |v| {
                            v["event"] == "terminated" && v["id"] == id.as_str()
                        })?;
                    }
                    let deadline = Instant::now() + Duration::from_secs(15);
                    while self.reaper.exit_of(pid).is_none() {
                        if Instant::now() > deadline {
                            return self.fail("minitower did not exit after terminate");
                        }
                        self.poll()?;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let status = self.reaper.exit_of(pid).unwrap_or(-1);
                    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                        return self.fail(format!(
                            "minitower exited with status {status:#x} after SIGTERM"
                        ));
                    }
                    self.drain_events()?;
                    self.tower = None;
                }
                self.watch_until_settled()?;
                let spawn = self.top_up();
                self.start_tower(spawn, None)?;
            }
            Fault::TowerStopShort => {
                let pid = self.tower.as_ref().expect("tower").pid;
                let d = rng.between(cfg.ttl / 10, cfg.ttl * 9 / 10);
                self.note_lapse_floors();
                self.signal(pid, libc::SIGSTOP, "SIGSTOP");
                self.watch(d)?;
                self.signal(pid, libc::SIGCONT, "SIGCONT");
                self.watch(cfg.ttl)?;
                self.check_status()?;
            }
            Fault::TowerStopMid => {
                let pid = self.tower.as_ref().expect("tower").pid;
                let d = rng.between(cfg.ttl + cfg.ttl / 4, cfg.window * 3 / 4);
                self.note_lapse_floors();
                // Only these come back to Held after SIGCONT; a session
                // already free (a socket deleted, so never re-adopted) keeps
                // running down its own window.
                let held: Vec<String> = self
                    .sessions
                    .values()
                    .filter(|s| s.hold == Hold::Held)
                    .map(|s| s.id.clone())
                    .collect();
                self.signal(pid, libc::SIGSTOP, "SIGSTOP");
                let at = Instant::now();
                // Frozen: no death before the window could end.
                self.free_all(at + cfg.window, self.kill_bound(at + cfg.ttl), None);
                self.watch(d)?;
                self.signal(pid, libc::SIGCONT, "SIGCONT");
                for s in self.sessions.values_mut() {
                    if held.contains(&s.id) && matches!(s.hold, Hold::Free { .. }) {
                        s.hold = Hold::Held;
                    }
                }
                self.check_status()?;
            }
            Fault::TowerStopLong => {
                let pid = self.tower.as_ref().expect("tower").pid;
                self.note_lapse_floors();
                self.signal(pid, libc::SIGSTOP, "SIGSTOP");
                let at = Instant::now();
                let held: Vec<String> = self
                    .sessions
                    .values()
                    .filter(|s| s.hold == Hold::Held)
                    .map(|s| s.id.clone())
                    .collect();
                self.free_all(at + cfg.window, self.kill_bound(at + cfg.ttl), None);
                self.watch_until_settled()?;
                self.drain_events()?;
                let seen_before = self.tower.as_ref().map_or(0, |t| t.seen.len());
                self.signal(pid, libc::SIGCONT, "SIGCONT");
                if let Some(t) = self.tower.as_mut() {
                    t.stopped = false;
                }
                for id in &held {
                    self.wait_event("lost", Duration::from_secs(10), |v| {
                        (v["event"] == "lost" || v["event"] == "revoked") && v["id"] == id.as_str()
                    })?;
                }
                // It never gets them back.
                self.watch(cfg.ttl)?;
                let regained: Vec<Value> = self
                    .tower
                    .as_ref()
                    .map(|t| {
                        t.seen[seen_before.min(t.seen.len())..]
                            .iter()
                            .filter(|v| {
                                v["event"] == "held" && held.iter().any(|id| v["id"] == id.as_str())
                            })
                            .filter(|v| v["recovered"] == true)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if !regained.is_empty() {
                    return self.fail(format!(
                        "a resumed Tower regained lost sessions: {regained:?}"
                    ));
                }
                // A Tower with nothing to hold: replace it.
                self.kill_tower()?;
                let spawn = self.top_up();
                self.start_tower(spawn, None)?;
            }
            Fault::ShellperStop => {
                let Some(s) = self.pick_held(rng, |_| true) else {
                    return Ok(());
                };
                let d = rng.between(Duration::from_millis(100), cfg.ttl * 4);
                self.signal(s.pid, libc::SIGSTOP, "SIGSTOP");
                self.watch(d)?;
                self.signal(s.pid, libc::SIGCONT, "SIGCONT");
                self.watch(cfg.ttl)?;
                self.check_status()?;
            }
            Fault::ShellperKill => {
                let Some(s) = self.pick_held(rng, |_| true) else {
                    return Ok(());
                };
                // The Tower proves a dead shellper's orphans its own by
                // what it recorded of the tree at its renewals (at least
                // one per TTL): a process younger than that may be missed,
                // by design. Trees are complete since the step began; give
                // the Tower one TTL to have seen them.
                self.watch(cfg.ttl)?;
                self.signal(s.pid, libc::SIGKILL, "SIGKILL");
                let at = Instant::now();
                // The Tower saw it die: the orphaned tree must go soon.
                if let Some(x) = self.sessions.get_mut(&s.id) {
                    x.husk = true;
                    x.hold = Hold::Free {
                        earliest: at,
                        latest: at + cfg.kill_grace + cfg.margin,
                        exact: None,
                    };
                }
                self.wait_event("lost/exited", Duration::from_secs(10), |v| {
                    (v["event"] == "lost" || v["event"] == "exited") && v["id"] == s.id.as_str()
                })?;
                self.watch_until_settled()?;
            }
            Fault::ChildExit => {
                let Some(s) = self.pick_held(rng, |s| !s.husk) else {
                    return Ok(());
                };
                self.signal(s.child_pid, libc::SIGKILL, "SIGKILL");
                if let Some(x) = self.sessions.get_mut(&s.id) {
                    x.husk = true;
                }
                self.wait_event("exited", Duration::from_secs(10), |v| {
                    v["event"] == "exited" && v["id"] == s.id.as_str() && v["what"] == "child"
                })?;
                self.watch(cfg.ttl)?;
                self.check_status()?;
            }
            Fault::SocketDelete => {
                let Some(s) = self.pick_held(rng, |s| !s.socket_deleted) else {
                    return Ok(());
                };
                let sock = self.scope.join(format!("{}.sock", s.id));
                let _ = std::fs::remove_file(&sock);
                if let Some(x) = self.sessions.get_mut(&s.id) {
                    x.socket_deleted = true;
                }
                // The holder's connection is unaffected.
                self.watch(cfg.ttl * 2)?;
            }
            Fault::StdoutBlocked => {
                let Some(victim) = self.pick_held(rng, |s| !s.husk) else {
                    return Ok(());
                };
                let t = self.tower.as_ref().expect("tower");
                t.pause_reading();
                let stop = t.filler_stop.clone();
                stop.store(false, Ordering::SeqCst);
                let fd = t.filler_fd.clone();
                let filler = std::thread::spawn(move || {
                    let Some(fd) = fd else { return };
                    let line = b"{\"event\":\"chaos_filler\"}\n";
                    let mut f: &File = &fd;
                    while !stop.load(Ordering::SeqCst) {
                        if f.write_all(line).is_err() {
                            return;
                        }
                    }
                });
                // The pipe fills; the Tower's next event blocks its write.
                self.watch(cfg.ttl / 2)?;
                self.signal(victim.child_pid, libc::SIGKILL, "SIGKILL");
                if let Some(x) = self.sessions.get_mut(&victim.id) {
                    x.husk = true;
                }
                // Renewals must go on meanwhile: past several TTLs every
                // session is still held by this Tower.
                self.watch(cfg.ttl * 3)?;
                self.check_status()?;
                let t = self.tower.as_ref().expect("tower");
                t.filler_stop.store(true, Ordering::SeqCst);
                t.resume_reading();
                let _ = filler.join();
                // The event is delivered, or its loss is reported.
                self.wait_event("exited (or a drop count)", Duration::from_secs(10), |v| {
                    (v["event"] == "exited" && v["id"] == victim.id.as_str())
                        || v.get("dropped").is_some()
                })?;
            }
            Fault::LowFdLimit => {
                let at = self.kill_tower()?;
                self.free_all(at + cfg.window, self.kill_bound(at), None);
                let n = self.live_sessions() as u64;
                // Too few descriptors to hold every session.
                self.launch_tower(0, Some(8 + 2 * n))?;
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    self.poll()?;
                    let ready = self
                        .tower
                        .as_ref()
                        .is_some_and(|t| t.seen.iter().any(|v| v["event"] == "ready"));
                    if ready || !self.tower_alive() || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                self.watch(cfg.ttl)?;
                // Whatever it could not hold, it must not have destroyed:
                // a normal Tower started next adopts every live session.
                self.kill_tower()?;
                self.free_all(at + cfg.window, self.kill_bound(Instant::now()), None);
                self.restart_and_expect_adoption()?;
            }
        }
        Ok(())
    }
}
