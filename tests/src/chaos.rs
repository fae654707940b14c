//! The seeded chaos run: one scope, one `minitower` at a time, a few
//! shellpers running escape-torture trees, and a schedule of faults drawn
//! from a seeded generator. After every step (and every 25 ms while a step
//! waits) the run checks, from `/proc` and from STATUS:
//!
//! * no session (shellper or any process of its tree) dies while a live,
//!   unfrozen Tower holds it, nor before the earliest instant its window
//!   allows once no Tower holds it (a *false kill*);
//! * every tree whose Tower is gone past its window is gone within the kill
//!   bound (window + kill grace + margin), and so is every process that no
//!   Tower ever learnt about (an *orphan* otherwise);
//! * a Tower frozen past TTL + window is told, when it resumes, that it lost
//!   its sessions, and does not get them back;
//! * no process outside the trees is ever signalled (bystanders, tagged like
//!   ours, must survive everything);
//! * no Tower event is lost (a child exit is reported, a terminate is
//!   confirmed, an adoption is printed).
//!
//! A failure names the seed, the step and the fault; the same seed replays
//! the same schedule (the timing of the machine differs, the decisions do
//! not). The harness makes itself a child subreaper and is the one reaper of
//! everything it starts, so no zombie is left behind by a long run.
//!
//! The /proc reading here is the run's own (plus `shellper-testkit`'s
//! reader, which parses /proc differently from `proctree`): nothing comes
//! from `proctree`, the code under test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use shellper_protocol::msg::WirePhase;
use shellper_testkit::{LEAK_TAG_VAR, cargo_bin, read_survivor};

/// The environment variable that marks every process of one torture tree:
/// `G<tower>-<pid of its PTY child>` (set by the tree's own shell). The
/// Tower's number keeps two trees apart when a pid is recycled (pid_max is
/// 32768 on small machines, and a long run goes through it).
pub const TREE_VAR: &str = "CHAOS_TREE";

/// The escape-torture tree each shellper runs: a background job in its own
/// process group, a job ignoring HUP and TERM, a `setsid` grandchild, a
/// double-forked daemon, a `nohup` job and a stopped job; the shell itself
/// then becomes a long sleep. Eight live processes once started. Every
/// process execs after its fork (the stopped job stops itself after its
/// exec), so each one's `/proc/PID/environ` carries [`TREE_VAR`].
pub const TORTURE: &str = "export CHAOS_TREE=GEN-$$; set -m; \
     sleep 100000 & \
     (trap '' HUP TERM; exec sleep 100001) & \
     setsid sleep 100002 & \
     (sh -c 'sleep 100003 &' &) ; \
     nohup sleep 100004 >/dev/null 2>&1 & \
     sh -c 'kill -STOP $$; exec sleep 100005' & \
     sleep 100006 & \
     exec sleep 100007";

/// Live processes of a started tree (the shell, exec'd into a sleep, and
/// seven escaped sleeps).
pub const TREE_SIZE: usize = 8;

/// Which of the [`TREE_SIZE`] lasting members of a torture tree a process
/// is, from its argv: `sleep 10000N` is member N, and the self-stopped job
/// (`sh -c 'kill -STOP $$; exec sleep 100005'`) is member 5 before and after
/// its exec. Anything else carrying the tree's tag is a transient of the
/// tree's start-up: the double fork's inner `sh -c 'sleep 100003 &'`, or a
/// `setsid`/`nohup` before its exec. Counting those would let a tree look
/// complete while one lasting member is still missing, and then shrink by
/// one when the transient exits (seen: 8, 7, 8 in one start-up), which
/// reads as a false kill.
pub fn lasting_member(argv: &[String]) -> Option<u8> {
    match argv {
        [cmd, n] if cmd == "sleep" => {
            let n: u32 = n.parse().ok()?;
            (100_000..100_000 + TREE_SIZE as u32)
                .contains(&n)
                .then(|| (n - 100_000) as u8)
        }
        [cmd, c, script] if cmd == "sh" && c == "-c" && script.starts_with("kill -STOP $$;") => {
            Some(5)
        }
        _ => None,
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub seed: u64,
    /// Steps (one fault each) to run.
    pub cycles: u32,
    /// How many sessions the run keeps alive (topped up at each restart).
    pub sessions: usize,
    pub ttl: Duration,
    pub window: Duration,
    pub kill_grace: Duration,
    pub claim: Duration,
    /// Slack on top of the kill bound before a survivor counts as an
    /// orphan (a loaded 2-core machine).
    pub margin: Duration,
    /// Include the faults whose fixes are not in this tree yet (none
    /// today). A SIGKILLed shellper, the Tower's stdout blocked and the fd
    /// limit lowered at restart were pending and are in the default
    /// schedule since their fixes landed.
    pub pending_faults: bool,
    /// Only these faults (by name, as `Fault`'s variants), to chase one.
    pub only: Option<Vec<String>>,
    /// Print one line per step.
    pub verbose: bool,
}

impl ChaosConfig {
    /// Short leases so that many cycles fit in minutes.
    pub fn new(seed: u64, cycles: u32) -> ChaosConfig {
        ChaosConfig {
            seed,
            cycles,
            sessions: 3,
            ttl: Duration::from_millis(600),
            window: Duration::from_millis(1500),
            kill_grace: Duration::from_millis(300),
            claim: Duration::from_secs(3),
            margin: Duration::from_secs(3),
            pending_faults: false,
            only: None,
            verbose: false,
        }
    }
}

/// One kind of fault (a step of the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Nothing: a healthy Tower holds for a while.
    Steady,
    /// SIGKILL the Tower, never restart it (a fresh one starts after every
    /// tree is gone).
    TowerKill,
    /// SIGKILL the Tower and restart it inside the window.
    TowerKillRestart,
    /// The same, twice in a row, the second kill in the middle of adoption.
    TowerKillRestartTwice,
    /// SIGKILL a Tower in the middle of its start-up (adoption and spawns).
    TowerKillMidSpawn,
    /// SIGTERM a Tower with `--on-exit terminate`, sometimes SIGKILL it in
    /// the middle of the terminate.
    TowerTerminate,
    /// SIGSTOP the Tower for less than the TTL.
    TowerStopShort,
    /// SIGSTOP the Tower past the TTL but inside the window: safe.
    TowerStopMid,
    /// SIGSTOP the Tower past TTL + window, then SIGCONT.
    TowerStopLong,
    /// SIGSTOP one shellper for up to a few seconds.
    ShellperStop,
    /// SIGKILL one shellper: its Tower must take its tree down.
    ShellperKill,
    /// The PTY child exits (the session becomes a husk).
    ChildExit,
    /// A session's socket file is deleted.
    SocketDelete,
    /// The Tower's stdout is blocked: renewals must go on, the event must
    /// arrive (or its loss be counted) once it is unblocked.
    StdoutBlocked,
    /// The Tower is restarted with a low fd limit: whatever it cannot hold
    /// it must not destroy (the next Tower adopts every live session).
    LowFdLimit,
}

const FAULTS: &[(Fault, u32, bool)] = &[
    // (fault, weight, pending)
    (Fault::Steady, 1, false),
    (Fault::TowerKill, 2, false),
    (Fault::TowerKillRestart, 3, false),
    (Fault::TowerKillRestartTwice, 2, false),
    (Fault::TowerKillMidSpawn, 2, false),
    (Fault::TowerTerminate, 1, false),
    (Fault::TowerStopShort, 2, false),
    (Fault::TowerStopMid, 2, false),
    (Fault::TowerStopLong, 1, false),
    (Fault::ShellperStop, 2, false),
    (Fault::ChildExit, 2, false),
    (Fault::SocketDelete, 1, false),
    (Fault::StdoutBlocked, 2, false),
    (Fault::LowFdLimit, 1, false),
    // Its Tower takes the tree of a SIGKILLed shellper down from outside,
    // by what it recorded of the tree (was pending until that landed).
    (Fault::ShellperKill, 2, false),
    // Pending faults (fix not in yet) are flagged `true`; none today.
];

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub cycles: u32,
    pub faults: BTreeMap<String, u32>,
    pub towers_started: u32,
    pub sessions_spawned: u32,
    pub adoptions: u32,
    pub trees_killed_by_window: u32,
    /// Leases found lapsed by STATUS although a live Tower held them (its
    /// renewals late past the TTL under load); not a failure by itself.
    pub lapses_while_held: u32,
    /// Processes alive past their kill bound (0 in a passing run).
    pub orphans: u32,
    /// Sessions dead while held or before their window (0 in a passing run).
    pub false_kills: u32,
    /// Window end to whole tree gone, for Towers killed with a known instant.
    pub kill_precision: Vec<Duration>,
    pub elapsed: Duration,
}

impl ChaosReport {
    /// (min, median, p99, max) of the kill precision.
    pub fn precision(&self) -> Option<[Duration; 4]> {
        let mut v = self.kill_precision.clone();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some([v[0], at(0.5), at(0.99), v[v.len() - 1]])
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos: seed {} cycles {} in {:.0?}: towers {}, sessions spawned {}, adoptions {}, \
             trees killed by their window {}, lapses while held {}, orphans {}, false kills {}",
            self.seed,
            self.cycles,
            self.elapsed,
            self.towers_started,
            self.sessions_spawned,
            self.adoptions,
            self.trees_killed_by_window,
            self.lapses_while_held,
            self.orphans,
            self.false_kills
        )?;
        if let Some([min, med, p99, max]) = self.precision() {
            writeln!(
                f,
                "kill precision (window end -> tree gone, {} trees): min {:?} median {:?} p99 {:?} max {:?}",
                self.kill_precision.len(),
                min,
                med,
                p99,
                max
            )?;
        }
        write!(f, "faults: {:?}", self.faults)
    }
}

/// A failed invariant, with what reproduces it.
#[derive(Debug, Clone)]
pub struct ChaosFailure {
    pub seed: u64,
    pub step: u32,
    pub fault: Option<Fault>,
    pub message: String,
    /// The figures up to the failure.
    pub report: Box<ChaosReport>,
}

impl fmt::Display for ChaosFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chaos FAILED: seed {} step {} fault {:?}: {}\n(replay: chaos --seed {} --cycles {})\n{}",
            self.seed,
            self.step,
            self.fault,
            self.message,
            self.seed,
            self.step + 1,
            self.report
        )
    }
}

impl std::error::Error for ChaosFailure {}

/// splitmix64: tiny, seedable and stable forever (a run's schedule must not
/// change when a dependency is upgraded).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// A duration uniform in `[lo, hi]`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------------------
// /proc, read independently of the code under test
// ---------------------------------------------------------------------------

/// One live tagged process.
#[derive(Debug, Clone)]
struct Proc {
    start: u64,
    /// The tree it belongs to, from [`TREE_VAR`].
    tree: Option<String>,
    argv: Vec<String>,
}

impl Proc {
    fn cmdline(&self) -> String {
        self.argv.join(" ")
    }
}

/// Every live process carrying our leak tag.
fn scan(tag: &[u8]) -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut ours = false;
        let mut tree = None;
        for entry in env.split(|b| *b == 0) {
            if let Some(v) = entry
                .strip_prefix(LEAK_TAG_VAR.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            {
                ours = v == tag;
            } else if let Some(v) = entry
                .strip_prefix(TREE_VAR.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            {
                tree = std::str::from_utf8(v).ok().map(str::to_string);
            }
        }
        if !ours {
            continue;
        }
        match read_survivor(pid) {
            Some(s) if !matches!(s.state, 'Z' | 'X' | 'x') => {
                out.insert(
                    pid,
                    Proc {
                        start: s.start_ticks,
                        tree,
                        argv: s.cmdline,
                    },
                );
            }
            _ => {}
        }
    }
    out
}

/// Wall-clock time as seconds.micros since the epoch, to line the run's
/// logs up with the shellpers' (which log wall-clock time).
fn wall() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

fn start_ticks(pid: i32) -> Option<u64> {
    read_survivor(pid)
        .filter(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
        .map(|s| s.start_ticks)
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid this run started and has not reaped (the
    // reaper records exits; callers check liveness first).
    unsafe {
        libc::kill(pid, sig);
    }
}

// ---------------------------------------------------------------------------
// The one reaper
// ---------------------------------------------------------------------------

/// Makes this process a child subreaper and reaps every child in one
/// thread, recording exit statuses by pid. Only for a process that owns all
/// of its children (the chaos test binary, the chaos binary).
///
/// A pid is recycled in a long run (pid_max 32768, and every orphan of the
/// run is reaped here): a status recorded for an earlier process must never
/// be taken for the exit of a new one with the same pid (seen: a Tower
/// "exited on its own" with status 0, a stale status of an earlier process,
/// 100 ms after it started). So reaping and recording happen under one
/// lock, and [`Reaper::spawn`] starts a child and forgets any status of its
/// pid under that same lock.
#[derive(Debug, Clone)]
struct Reaper {
    exits: Arc<Mutex<HashMap<i32, i32>>>,
}

impl Reaper {
    fn start() -> Reaper {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) affects only this process.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        let exits: Arc<Mutex<HashMap<i32, i32>>> = Arc::default();
        let e2 = exits.clone();
        std::thread::spawn(move || {
            loop {
                let mut reaped = false;
                {
                    let mut m = e2.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        let mut status = 0;
                        // SAFETY: waitpid with a valid out pointer.
                        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                        if pid <= 0 {
                            break;
                        }
                        m.insert(pid, status);
                        reaped = true;
                    }
                }
                if !reaped {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Reaper { exits }
    }

    /// Starts `cmd`; no pid can be reaped meanwhile, so a status recorded
    /// for the new child's pid is an earlier process's and is dropped.
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<i32> {
        let mut m = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // The reaper owns the exit status; the handle is only a pid now.
        drop(child);
        m.remove(&pid);
        Ok(pid)
    }

    fn exit_of(&self, pid: i32) -> Option<i32> {
        self.exits.lock().ok()?.get(&pid).copied()
    }
}

// ---------------------------------------------------------------------------
// A Tower (minitower) with its event stream
// ---------------------------------------------------------------------------

struct Gate {
    paused: Mutex<bool>,
    cv: Condvar,
}

struct Tower {
    pid: i32,
    rx: mpsc::Receiver<Result<Value, String>>,
    seen: Vec<Value>,
    gate: Arc<Gate>,
    /// A second write end of the Tower's stdout, to fill the pipe.
    filler_fd: Option<Arc<File>>,
    filler_stop: Arc<AtomicBool>,
    stopped: bool,
    /// It was asked to exit (SIGTERM), or may exit on its own (started
    /// under a low fd limit): its exit is not a failure.
    may_exit: bool,
    log: PathBuf,
    /// Every event, with its arrival time, for the post-mortem.
    events_log: Option<File>,
}

impl Tower {
    fn pause_reading(&self) {
        *self.gate.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
    fn resume_reading(&self) {
        *self.gate.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.gate.cv.notify_all();
    }
}

// ---------------------------------------------------------------------------
// Sessions and what is expected of them
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Hold {
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
struct Session {
    id: String,
    pid: i32,
    start: u64,
    child_pid: i32,
    /// Its [`TREE_VAR`] value; `None` until learnt (a session adopted
    /// before this run saw it spawned).
    tree_tag: Option<String>,
    hold: Hold,
    /// The PTY child exited: its tree may shrink, and a husk may end at its
    /// lapse or at its deadline.
    husk: bool,
    socket_deleted: bool,
    /// Every lasting member of its tree was seen once (see
    /// [`lasting_member`]): from then on each must stay while it is held.
    steady: bool,
}

/// The running world of one chaos run.
struct World {
    cfg: ChaosConfig,
    tag: String,
    scope: PathBuf,
    logs: PathBuf,
    tower: Option<Tower>,
    towers: u32,
    sessions: BTreeMap<String, Session>,
    bystanders: Vec<(i32, u64)>,
    /// Unknown tagged processes are tolerated until then (a Tower starting,
    /// or killed before it printed what it spawned).
    unknown_ok_until: Instant,
    /// Tagged processes no Tower accounts for, at the last poll.
    unknown_now: usize,
    /// Per session, a lower bound of the instant its lease lapses (or
    /// lapsed), from STATUS just before the Tower was killed or stopped:
    /// the window runs from the lapse, which a live Tower renewing late
    /// under load can put before the kill.
    lapse_floor: HashMap<String, Instant>,
    /// What the run did, with wall-clock times (`chaos.log`).
    actions: Option<File>,
    reaper: Reaper,
    rt: tokio::runtime::Runtime,
    report: ChaosReport,
    step: u32,
    fault: Option<Fault>,
}

type Check<T> = Result<T, String>;

impl World {
    fn fail<T>(&self, msg: impl Into<String>) -> Check<T> {
        Err(msg.into())
    }

    /// Sends a signal, logged.
    fn signal(&mut self, pid: i32, sig: i32, name: &str) {
        self.act(format_args!("{name} -> {pid}"));
        kill(pid, sig);
    }

    fn act(&mut self, what: impl fmt::Display) {
        let step = self.step;
        if let Some(f) = self.actions.as_mut() {
            let _ = writeln!(f, "{} step {step} {what}", wall());
        }
    }

    fn tower_args(&self, spawn: usize) -> Vec<String> {
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
    fn launch_tower(&mut self, spawn: usize, nofile: Option<u64>) -> Check<()> {
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

    fn tower_log_tail(&self) -> String {
        let Some(t) = &self.tower else {
            return String::new();
        };
        let text = std::fs::read_to_string(&t.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Reads the events that arrived, updating sessions.
    fn drain_events(&mut self) -> Check<()> {
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

    fn tower_alive(&self) -> bool {
        self.tower
            .as_ref()
            .is_some_and(|t| self.reaper.exit_of(t.pid).is_none())
    }

    /// Waits for an event matching `pred` from the current Tower.
    fn wait_event(
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
    fn start_tower(&mut self, spawn: usize, nofile: Option<u64>) -> Check<()> {
        let before = self.unknown_ok_until;
        self.launch_tower(spawn, nofile)?;
        self.wait_event("ready", Duration::from_secs(30), |v| v["event"] == "ready")?;
        self.settle_trees()?;
        self.unknown_ok_until = before.max(Instant::now());
        Ok(())
    }

    /// Waits until every held session's tree is complete.
    fn settle_trees(&mut self) -> Check<()> {
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
    fn poll(&mut self) -> Check<()> {
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
    fn watch(&mut self, d: Duration) -> Check<()> {
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
    fn watch_until_settled(&mut self) -> Check<()> {
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
    fn check_status(&mut self) -> Check<()> {
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
    fn note_lapse_floors(&mut self) {
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
    fn free_all(&mut self, earliest: Instant, latest: Instant, exact: Option<Instant>) {
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

    fn kill_bound(&self, from: Instant) -> Instant {
        from + self.cfg.window + self.cfg.kill_grace + self.cfg.margin
    }

    /// SIGKILLs the Tower (stopped or not) and waits until it is reaped.
    fn kill_tower(&mut self) -> Check<Instant> {
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

    fn live_sessions(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.hold != Hold::Gone)
            .count()
    }

    fn top_up(&self) -> usize {
        self.cfg.sessions.saturating_sub(self.live_sessions())
    }

    fn pick_held(&mut self, rng: &mut Rng, usable: impl Fn(&Session) -> bool) -> Option<Session> {
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

    /// Restarts within the window after a kill at `killed`: everything alive
    /// is adopted again (apart from sessions whose socket is gone).
    fn restart_and_expect_adoption(&mut self) -> Check<()> {
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

    // ---------------------------------------------------------------------
    // The faults
    // ---------------------------------------------------------------------

    fn run_fault(&mut self, fault: Fault, rng: &mut Rng) -> Check<()> {
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

fn tree_members(procs: &HashMap<i32, Proc>, s: &Session) -> Vec<i32> {
    let Some(tag) = &s.tree_tag else {
        return Vec::new();
    };
    procs
        .iter()
        .filter(|(_, p)| p.tree.as_deref() == Some(tag.as_str()))
        .map(|(pid, _)| *pid)
        .collect()
}

/// The lasting members (see [`lasting_member`]) of `s`'s tree that are not
/// alive in `procs`, in order.
fn missing_members(procs: &HashMap<i32, Proc>, s: &Session) -> Vec<u8> {
    let Some(tag) = &s.tree_tag else {
        return (0..TREE_SIZE as u8).collect();
    };
    let present: HashSet<u8> = procs
        .values()
        .filter(|p| p.tree.as_deref() == Some(tag.as_str()))
        .filter_map(|p| lasting_member(&p.argv))
        .collect();
    (0..TREE_SIZE as u8)
        .filter(|m| !present.contains(m))
        .collect()
}

/// Learns the tree tag of a session adopted without being seen spawned:
/// the newest tower generation among trees of its child's pid.
fn learn_tag(procs: &HashMap<i32, Proc>, s: &mut Session) {
    if s.tree_tag.is_some() {
        return;
    }
    let suffix = format!("-{}", s.child_pid);
    s.tree_tag = procs
        .values()
        .filter_map(|p| p.tree.as_deref())
        .filter(|t| t.ends_with(&suffix))
        .max_by_key(|t| {
            t.trim_start_matches('G')
                .split('-')
                .next()
                .and_then(|g| g.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .map(str::to_string);
}

fn pick_fault(rng: &mut Rng, pending: bool, only: Option<&[String]>) -> Fault {
    let table: Vec<(Fault, u32)> = FAULTS
        .iter()
        .filter(|(_, _, p)| pending || !*p)
        .filter(|(f, _, _)| only.is_none_or(|o| o.iter().any(|n| *n == format!("{f:?}"))))
        .map(|(f, w, _)| (*f, *w))
        .collect();
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(u64::from(total)) as u32;
    for (f, w) in &table {
        if x < *w {
            return *f;
        }
        x -= w;
    }
    Fault::Steady
}

/// Spawns a bystander: a tagged process outside every tree, which no one
/// may ever signal.
fn bystander(tag: &str, own_session: bool) -> std::io::Result<(i32, u64)> {
    let mut cmd = Command::new("sleep");
    cmd.arg("100008")
        .env(LEAK_TAG_VAR, tag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid and prctl are async-signal-safe; runs in the child only.
    unsafe {
        cmd.pre_exec(move || {
            if own_session {
                libc::setsid();
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Wait for the exec, so the start time is the sleep's.
        if let Some(s) = read_survivor(pid)
            && s.comm == "sleep"
        {
            return Ok((pid, s.start_ticks));
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other("bystander did not start"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a chaos schedule. Every process is tagged with `tag` (a
/// `LeakGuard`'s tag), so the caller's guard proves at the end that nothing
/// survived. Makes the calling process a child subreaper and starts its one
/// reaper thread: call it from a process that owns all of its children.
pub fn run(cfg: ChaosConfig, tag: &str, dir: &Path) -> Result<ChaosReport, ChaosFailure> {
    let t0 = Instant::now();
    let reaper = Reaper::start();
    let mut world = World {
        tag: tag.to_string(),
        scope: dir.join("scope"),
        logs: dir.to_path_buf(),
        tower: None,
        towers: 0,
        sessions: BTreeMap::new(),
        bystanders: Vec::new(),
        unknown_ok_until: Instant::now(),
        unknown_now: 0,
        lapse_floor: HashMap::new(),
        actions: File::create(dir.join("chaos.log")).ok(),
        reaper,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds"),
        report: ChaosReport {
            seed: cfg.seed,
            ..ChaosReport::default()
        },
        step: 0,
        fault: None,
        cfg: cfg.clone(),
    };
    let mut rng = Rng::new(cfg.seed);
    if let Some(only) = &cfg.only {
        let unknown: Vec<&String> = only
            .iter()
            .filter(|n| !FAULTS.iter().any(|(f, _, _)| format!("{f:?}") == **n))
            .collect();
        assert!(
            unknown.is_empty(),
            "unknown fault names {unknown:?}; known: {:?}",
            FAULTS.iter().map(|(f, _, _)| *f).collect::<Vec<_>>()
        );
    }
    let result = (|| -> Check<()> {
        for own in [false, true] {
            let b = bystander(tag, own).map_err(|e| format!("bystander: {e}"))?;
            world.bystanders.push(b);
        }
        world.start_tower(cfg.sessions, None)?;
        world.check_status()?;
        for step in 0..cfg.cycles {
            world.step = step;
            let fault = pick_fault(&mut rng, cfg.pending_faults, cfg.only.as_deref());
            world.fault = Some(fault);
            *world.report.faults.entry(format!("{fault:?}")).or_default() += 1;
            let t = Instant::now();
            world.act(format_args!("fault {fault:?}"));
            world.run_fault(fault, &mut rng)?;
            world.poll()?;
            world.check_status()?;
            world.report.cycles = step + 1;
            if cfg.verbose {
                eprintln!(
                    "chaos step {step} {fault:?} ok in {:?}: {} live session(s)",
                    t.elapsed(),
                    world.live_sessions()
                );
            }
        }
        world.fault = None;
        // The end: terminate everything, and it must all be gone.
        if let Some(t) = &world.tower {
            kill(t.pid, libc::SIGTERM);
            let pid = t.pid;
            let deadline = Instant::now() + Duration::from_secs(20);
            while world.reaper.exit_of(pid).is_none() {
                if Instant::now() > deadline {
                    return world.fail("the last minitower did not exit on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            world.tower = None;
        }
        let at = Instant::now();
        world.free_all(at, at + cfg.kill_grace + cfg.margin, None);
        world.watch_until_settled()
    })();
    for (pid, _) in &world.bystanders {
        kill(*pid, libc::SIGKILL);
    }
    if let Some(t) = &world.tower {
        kill(t.pid, libc::SIGKILL);
    }
    world.report.elapsed = t0.elapsed();
    match result {
        Ok(()) => Ok(world.report),
        Err(message) => Err(ChaosFailure {
            seed: cfg.seed,
            step: world.step,
            fault: world.fault,
            message,
            report: Box::new(world.report.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn proc_of(tree: &str, a: &[&str]) -> Proc {
        Proc {
            start: 1,
            tree: Some(tree.to_string()),
            argv: argv(a),
        }
    }

    fn session(tag: &str) -> Session {
        Session {
            id: "sh-1".into(),
            pid: 10,
            start: 1,
            child_pid: 11,
            tree_tag: Some(tag.into()),
            hold: Hold::Held,
            husk: false,
            socket_deleted: false,
            steady: false,
        }
    }

    #[test]
    fn lasting_members_are_the_eight_sleeps_and_the_stopped_job() {
        for n in 0..8u8 {
            let a = argv(&["sleep", &format!("10000{n}")]);
            assert_eq!(lasting_member(&a), Some(n), "{a:?}");
        }
        let stopped = argv(&["sh", "-c", "kill -STOP $$; exec sleep 100005"]);
        assert_eq!(lasting_member(&stopped), Some(5));
        // Transients of the start-up, and bystanders, are not members.
        for a in [
            &["sh", "-c", "sleep 100003 &"][..],
            &["setsid", "sleep", "100002"],
            &["nohup", "sleep", "100004"],
            &["sleep", "100008"],
            &[
                "sh",
                "-c",
                "export CHAOS_TREE=G1-11; set -m; sleep 100000 &",
            ],
            &["sleep"],
        ] {
            assert_eq!(lasting_member(&argv(a)), None, "{a:?}");
        }
    }

    /// The start-up seen in a failed CI run: the double fork's inner `sh`
    /// is still alive, the shell has not exec'd its last sleep yet: eight
    /// tagged processes, but the tree is not complete (counting tagged
    /// processes said it was, and the next scan, after the inner `sh`
    /// exited, found 7 and reported a false kill).
    #[test]
    fn a_transient_start_up_process_does_not_complete_a_tree() {
        let tag = "G13-11";
        let mut procs = HashMap::new();
        let mut pid = 100;
        let mut add = |procs: &mut HashMap<i32, Proc>, a: &[&str]| {
            pid += 1;
            procs.insert(pid, proc_of(tag, a));
        };
        for n in ["100000", "100001", "100002", "100003", "100004", "100006"] {
            add(&mut procs, &["sleep", n]);
        }
        add(
            &mut procs,
            &["sh", "-c", "kill -STOP $$; exec sleep 100005"],
        );
        add(&mut procs, &["sh", "-c", "sleep 100003 &"]);
        // Another tree's last sleep does not count for this one.
        procs.insert(
            999,
            Proc {
                start: 1,
                tree: Some("G12-11".into()),
                argv: argv(&["sleep", "100007"]),
            },
        );
        let s = session(tag);
        assert_eq!(
            procs
                .values()
                .filter(|p| p.tree.as_deref() == Some(tag))
                .count(),
            TREE_SIZE
        );
        assert_eq!(missing_members(&procs, &s), vec![7]);
        add(&mut procs, &["sleep", "100007"]);
        assert!(missing_members(&procs, &s).is_empty());
        // Once the inner `sh` exits, the tree is still complete.
        procs.retain(|_, p| p.argv.get(2).map(String::as_str) != Some("sleep 100003 &"));
        assert!(missing_members(&procs, &s).is_empty());
    }
}
