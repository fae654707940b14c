//! A Tower (minitower) with its event stream: started, read, waited on,
//! killed and restarted by the world.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use shellper_testkit::{LEAK_TAG_VAR, cargo_bin};

use super::procs::{start_ticks, wall};
use super::trees::TORTURE;
use super::world::{Check, Hold, Session, World};

// ---------------------------------------------------------------------------

pub(super) struct Gate {
    pub(super) paused: Mutex<bool>,
    pub(super) cv: Condvar,
}

pub(super) struct Tower {
    pub(super) pid: i32,
    pub(super) rx: mpsc::Receiver<Result<Value, String>>,
    pub(super) seen: Vec<Value>,
    pub(super) gate: Arc<Gate>,
    /// A second write end of the Tower's stdout, to fill the pipe.
    pub(super) filler_fd: Option<Arc<File>>,
    pub(super) filler_stop: Arc<AtomicBool>,
    pub(super) stopped: bool,
    /// It was asked to exit (SIGTERM), or may exit on its own (started
    /// under a low fd limit): its exit is not a failure.
    pub(super) may_exit: bool,
    pub(super) log: PathBuf,
    /// Every event, with its arrival time, for the post-mortem.
    pub(super) events_log: Option<File>,
}

impl Tower {
    pub(super) fn pause_reading(&self) {
        *self.gate.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
    pub(super) fn resume_reading(&self) {
        *self.gate.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.gate.cv.notify_all();
    }
}

// ---------------------------------------------------------------------------
// Sessions and what is expected of them

impl World {
    pub(super) fn tower_args(&self, spawn: usize) -> Vec<String> {
        let d = |d: Duration| format!("{}ms", d.as_millis());
        let mut a = vec![
            "--scope".to_string(),
            self.scope.display().to_string(),
            "--ttl".into(),
            d(self.cfg.ttl),
            "--window".into(),
            d(self.cfg.window),
            "--kill-grace".into(),
            d(self.cfg.kill_grace),
            "--claim".into(),
            d(self.cfg.claim),
            "--on-exit".into(),
            "terminate".into(),
            "--spawn".into(),
            spawn.to_string(),
        ];
        a.extend(["--", "sh", "-c"].map(String::from));
        a.push(TORTURE.replace("GEN", &format!("G{}", self.towers)));
        a
    }

    /// Starts a Tower spawning `spawn` sessions; with `nofile`, under that
    /// fd limit. Does not wait for `ready`.
    pub(super) fn launch_tower(&mut self, spawn: usize, nofile: Option<u64>) -> Check<()> {
        assert!(self.tower.is_none());
        self.towers += 1;
        self.report.towers_started += 1;
        let log = self.logs.join(format!("tower-{}.log", self.towers));
        let mut fds = [0; 2];
        // SAFETY: pipe2 with a valid two-int array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return self.fail(format!("pipe2: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: both fds were just returned by pipe2 and are owned once.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let filler = write_end.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(cargo_bin("minitower"));
        cmd.args(self.tower_args(spawn))
            .env(LEAK_TAG_VAR, &self.tag)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::from(
                File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?,
            ));
        // SAFETY: prctl and setrlimit are async-signal-safe; this runs in
        // the child only. If the run itself dies, its Tower goes with it
        // (and every session then ends at its window).
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let pid = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| format!("spawn minitower: {e}"))?;
        let gate = Arc::new(Gate {
            paused: Mutex::new(false),
            cv: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let g2 = gate.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(File::from(read_end)).lines();
            loop {
                {
                    let mut p = g2.paused.lock().unwrap_or_else(|e| e.into_inner());
                    while *p {
                        p = g2.cv.wait(p).unwrap_or_else(|e| e.into_inner());
                    }
                }
                let Some(Ok(line)) = lines.next() else { break };
                let msg = serde_json::from_str::<Value>(&line)
                    .map_err(|e| format!("minitower printed non-JSON {line:?}: {e}"));
                if matches!(&msg, Ok(v) if v["event"] == "chaos_filler") {
                    continue;
                }
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        self.tower = Some(Tower {
            pid,
            rx,
            seen: Vec::new(),
            gate,
            filler_fd: Some(Arc::new(File::from(filler))),
            filler_stop: Arc::new(AtomicBool::new(false)),
            stopped: false,
            may_exit: nofile.is_some(),
            events_log: File::create(log.with_extension("events")).ok(),
            log,
        });
        self.unknown_ok_until = self
            .unknown_ok_until
            .max(Instant::now() + self.cfg.claim + self.cfg.margin * 2);
        Ok(())
    }

    pub(super) fn tower_log_tail(&self) -> String {
        let Some(t) = &self.tower else {
            return String::new();
        };
        let text = std::fs::read_to_string(&t.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Reads the events that arrived, updating sessions.
    pub(super) fn drain_events(&mut self) -> Check<()> {
        let Some(t) = self.tower.as_mut() else {
            return Ok(());
        };
        let mut new = Vec::new();
        while let Ok(msg) = t.rx.try_recv() {
            match msg {
                Ok(v) => new.push(v),
                Err(e) => return Err(e),
            }
        }
        for v in new {
            let ev = v["event"].as_str().unwrap_or_default().to_string();
            let id = v["id"].as_str().unwrap_or_default().to_string();
            match ev.as_str() {
                "spawned" | "adopted" => {
                    let pid = v["pid"].as_i64().unwrap_or(0) as i32;
                    let child_pid = v["child_pid"].as_i64().unwrap_or(0) as i32;
                    if ev == "spawned" {
                        self.report.sessions_spawned += 1;
                    } else {
                        self.report.adoptions += 1;
                    }
                    let start = start_ticks(pid);
                    match self.sessions.get_mut(&id) {
                        Some(s) => {
                            if s.pid != pid {
                                return Err(format!("{id} adopted with pid {pid}, was {}", s.pid));
                            }
                            if s.hold == Hold::Gone {
                                return Err(format!("{id} adopted after it was gone: {v}"));
                            }
                            s.hold = Hold::Held;
                        }
                        None => {
                            let Some(start) = start else {
                                return Err(format!("{ev} {id}: pid {pid} is not alive"));
                            };
                            self.sessions.insert(
                                id.clone(),
                                Session {
                                    id: id.clone(),
                                    pid,
                                    start,
                                    child_pid,
                                    tree_tag: (ev == "spawned")
                                        .then(|| format!("G{}-{child_pid}", self.towers)),
                                    hold: Hold::Held,
                                    husk: false,
                                    socket_deleted: false,
                                    steady: false,
                                },
                            );
                        }
                    }
                }
                _ => {}
            }
            if let Some(t) = self.tower.as_mut() {
                if let Some(f) = t.events_log.as_mut() {
                    let _ = writeln!(f, "{} step {} {v}", wall(), self.step);
                }
                t.seen.push(v);
            }
        }
        Ok(())
    }

    pub(super) fn tower_alive(&self) -> bool {
        self.tower
            .as_ref()
            .is_some_and(|t| self.reaper.exit_of(t.pid).is_none())
    }

    /// Waits for an event matching `pred` from the current Tower.
    pub(super) fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Check<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain_events()?;
            if let Some(v) = self
                .tower
                .as_ref()
                .and_then(|t| t.seen.iter().find(|v| pred(v)))
            {
                return Ok(v.clone());
            }
            if Instant::now() >= deadline {
                let seen = self
                    .tower
                    .as_ref()
                    .map(|t| t.seen.clone())
                    .unwrap_or_default();
                return self.fail(format!(
                    "no {what} event within {timeout:?}; events: {seen:?}\ntower log:\n{}",
                    self.tower_log_tail()
                ));
            }
            self.poll()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a Tower and waits for `ready` and for every tree to be steady.
    pub(super) fn start_tower(&mut self, spawn: usize, nofile: Option<u64>) -> Check<()> {
        let before = self.unknown_ok_until;
        self.launch_tower(spawn, nofile)?;
        self.wait_event("ready", Duration::from_secs(30), |v| v["event"] == "ready")?;
        self.settle_trees()?;
        self.unknown_ok_until = before.max(Instant::now());
        Ok(())
    }

    /// SIGKILLs the Tower (stopped or not) and waits until it is reaped.
    pub(super) fn kill_tower(&mut self) -> Check<Instant> {
        if !self.tower.as_ref().is_some_and(|t| t.stopped) {
            self.note_lapse_floors();
        }
        let t = self.tower.as_ref().expect("a tower is running");
        let pid = t.pid;
        t.filler_stop.store(true, Ordering::SeqCst);
        t.resume_reading();
        let at = Instant::now();
        self.signal(pid, libc::SIGKILL, "SIGKILL");
        let deadline = at + Duration::from_secs(10);
        while self.reaper.exit_of(pid).is_none() {
            if Instant::now() > deadline {
                return self.fail(format!("minitower {pid} not reaped 10 s after SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.drain_events()?;
        self.tower = None;
        Ok(at)
    }

    /// Restarts within the window after a kill at `killed`: everything alive
    /// is adopted again (apart from sessions whose socket is gone).
    pub(super) fn restart_and_expect_adoption(&mut self) -> Check<()> {
        let spawn = self.top_up();
        self.start_tower(spawn, None)?;
        for s in self.sessions.values() {
            if let Hold::Free { earliest, .. } = s.hold {
                // Only while its window surely still runs (a slow start
                // may legitimately see it end).
                let alive = start_ticks(s.pid) == Some(s.start);
                if alive && !s.socket_deleted && Instant::now() < earliest {
                    return self.fail(format!(
                        "{} (pid {}) alive inside its window but not adopted by the new Tower",
                        s.id, s.pid
                    ));
                }
            }
        }
        Ok(())
    }
}
