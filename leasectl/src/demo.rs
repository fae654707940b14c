//! `leasectl demo`: the product's main job in one command.
//!
//! Act 1: minitower holds three shellpers (one runs an escape-torture tree)
//! in a throwaway scope; minitower is SIGKILLed; the shellpers see EOF at
//! once (held → lapsed), wait out the reattach window, kill their whole
//! trees (terminating → gone), and /proc proves nothing survives.
//! Act 2: minitower is SIGKILLed again and restarted within the window: it
//! adopts every shellper, nothing is killed (same child pids), then it
//! terminates them on SIGTERM (`--on-exit terminate`) and /proc proves
//! nothing survives.
//!
//! Whatever happens (an error, Ctrl-C, SIGTERM, a panic), [`DemoGuard`]
//! kills minitower and every process carrying this run's
//! `SHELLPER_DEMO_TAG`, which every demo process inherits (environment
//! variables survive fork, exec, setsid and double forks), and the scope
//! directory is a temporary directory removed on drop.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shellper_proctree::{LinuxTable, ProcInfo, ProcessTable, Sig, environ_contains, read_stat};
use tokio::sync::mpsc;

use crate::cli::{EXIT_FOUND, EXIT_INTERRUPTED, EXIT_OK};
use crate::error::{Error, Result};
use crate::model::Phase;
use crate::render::{self, Palette, Style, short_duration};
use crate::scan::scan_scope;

/// The environment variable that tags every process of a demo run.
pub const DEMO_TAG_VAR: &str = "SHELLPER_DEMO_TAG";

/// Lease settings of the demo (short, so it finishes in seconds).
const TTL: Duration = Duration::from_millis(500);
const KILL_GRACE: Duration = Duration::from_millis(500);
/// Slack for "died on time" on a loaded two-core machine.
const LATE_SLACK: Duration = Duration::from_millis(1000);
/// How early a death may be measured and still count as "not early" (the
/// deadline estimate comes from a STATUS answer, a few ms old).
const EARLY_SLACK: Duration = Duration::from_millis(50);

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

/// Kills everything of this demo run when dropped.
#[derive(Debug)]
pub struct DemoGuard {
    tag: String,
    towers: Vec<Child>,
    // Kept for its Drop: removes the scopes and logs.
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl DemoGuard {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("leasectl-demo-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory in", std::env::temp_dir(), e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(DemoGuard {
            tag: format!("demo-{}-{nanos:08x}", std::process::id()),
            towers: Vec::new(),
            dir: dir.path().to_path_buf(),
            _dir: dir,
        })
    }

    /// Live processes carrying this run's tag.
    pub fn tagged(&self) -> Vec<ProcInfo> {
        tagged(&self.tag)
    }

    /// Kills minitower(s) and every tagged process, in passes, until none
    /// is left (bounded); returns how many were signalled.
    pub fn cleanup(&mut self) -> usize {
        let mut n = 0;
        for t in &mut self.towers {
            if t.try_wait().ok().flatten().is_none() {
                let _ = t.kill();
                n += 1;
            }
            let _ = t.wait();
        }
        self.towers.clear();
        let table = LinuxTable;
        for _ in 0..50 {
            let left = self.tagged();
            if left.is_empty() {
                break;
            }
            for p in &left {
                let _ = table.signal(p.pid, p.start_ticks, Sig::Kill);
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        let n = self.cleanup();
        if n > 0 {
            eprintln!("leasectl demo: cleanup killed {n} leftover process(es)");
        }
    }
}

/// Live processes whose environment has `SHELLPER_DEMO_TAG=tag`.
fn tagged(tag: &str) -> Vec<ProcInfo> {
    let me = std::process::id() as i32;
    shellper_proctree::snapshot()
        .into_iter()
        .filter(|p| p.pid != me && p.is_live() && environ_contains(p.pid, DEMO_TAG_VAR, tag))
        .collect()
}

/// Finds minitower: the given path, else next to this executable (or one
/// directory up, for test binaries in `deps/`).
fn find_minitower(explicit: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then_some(p);
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("minitower"), dir.parent()?.join("minitower")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Under `cargo run`, builds the workspace binaries the demo needs (only
/// leasectl's own binary is built by `cargo run -p leasectl`).
fn build_missing_binaries() -> bool {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return false;
    };
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("Cargo.toml");
    let release = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.ends_with("release")))
        .unwrap_or(false);
    eprintln!("leasectl demo: building minitower and shellper first (cargo build --bins)…");
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--manifest-path").arg(manifest).args([
        "-p",
        "tower-client",
        "-p",
        "shellper",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    cmd.status().is_ok_and(|s| s.success())
}

/// A line of minitower's output.
type Lines = mpsc::UnboundedReceiver<serde_json::Value>;

/// Starts minitower with the demo's tag; its JSON lines arrive on the
/// returned channel, its stderr goes to `log`.
fn start_tower(
    guard: &mut DemoGuard,
    bin: &Path,
    args: &[String],
    log: &Path,
) -> Result<(u32, Lines)> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("creating", log, e))?;
    let mut child = Command::new(bin)
        .args(args)
        .env(DEMO_TAG_VAR, &guard.tag)
        .env("SHELLPER_DEMO_DIR", &guard.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|e| Error::io("starting", bin, e))?;
    let pid = child.id();
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => tracing::debug!("minitower: {line}"),
                }
            }
        });
    }
    guard.towers.push(child);
    Ok((pid, rx))
}

/// What minitower reported at startup.
#[derive(Debug, Default)]
struct Startup {
    /// id → (shellper pid, child pid), from `spawned` or `adopted`.
    shellpers: BTreeMap<String, (u32, u32)>,
    held: u64,
    epochs: HashMap<String, u64>,
}

/// Reads events until `ready` (or fails after `bound`).
async fn wait_ready(rx: &mut Lines, bound: Duration, log: &Path) -> Result<Startup> {
    let mut s = Startup::default();
    let end = tokio::time::Instant::now() + bound;
    loop {
        let ev = match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                return Err(Error::Demo(format!(
                    "minitower exited before it was ready; its log:\n{}",
                    tail(log)
                )));
            }
            Err(_) => {
                return Err(Error::Demo(format!(
                    "minitower not ready after {bound:?}; its log:\n{}",
                    tail(log)
                )));
            }
        };
        let kind = ev["event"].as_str().unwrap_or("");
        match kind {
            "spawned" | "adopted" => {
                let id = ev["id"].as_str().unwrap_or("").to_string();
                let pid = ev["pid"].as_u64().unwrap_or(0) as u32;
                let child = ev["child_pid"].as_u64().unwrap_or(0) as u32;
                if let Some(e) = ev["epoch"].as_u64() {
                    s.epochs.insert(id.clone(), e);
                }
                s.shellpers.insert(id, (pid, child));
            }
            "spawn_failed" | "adopt_failed" => {
                return Err(Error::Demo(format!("minitower: {ev}")));
            }
            "ready" => {
                s.held = ev["held"].as_u64().unwrap_or(0);
                return Ok(s);
            }
            _ => {}
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Records when each watched process dies, polling /proc every few ms on a
/// thread of its own (so the measurement does not depend on the scans).
struct DeathWatch {
    deaths: Arc<Mutex<HashMap<i32, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeathWatch {
    fn start(procs: Vec<(i32, u64)>) -> Self {
        let deaths = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, s) = (deaths.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut left = procs;
            while !left.is_empty() && !s.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                left.retain(|(pid, ticks)| {
                    let alive = LinuxTable.alive(*pid, *ticks);
                    if !alive {
                        // A poisoned lock only means another thread panicked
                        // mid-insert; the map is still usable.
                        d.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(*pid, now);
                    }
                    alive
                });
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        DeathWatch {
            deaths,
            stop,
            thread: Some(thread),
        }
    }

    fn death(&self, pid: i32) -> Option<Instant> {
        self.deaths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .copied()
    }
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Printer with the demo's formatting.
struct Say<'a> {
    p: &'a Palette,
}

impl Say<'_> {
    fn head(&self, s: &str) {
        println!("\n{}", self.p.paint(Style::Bold, s));
    }
    fn line(&self, s: &str) {
        println!("  {s}");
    }
    fn table(&self, scan: &crate::scan::Scan) {
        let t = render::list_table(self.p, &scan.shellpers, &|_| false);
        for l in t.lines() {
            println!("  {l}");
        }
    }
}

/// Seconds with millisecond precision, signed.
fn secs(d: f64) -> String {
    format!("{d:+.3}s")
}

/// Results of act 1.
#[derive(Debug, Default)]
struct Act1 {
    /// Lapse time after the SIGKILL by the shellper's own clock (a lower
    /// bound: the STATUS answer is a few ms old when we read it).
    eof_ms: Vec<u64>,
    /// When a poll first saw it lapsed (an upper bound).
    eof_seen_ms: Vec<u64>,
    /// Tree death minus kill deadline, ms (negative = early).
    precision_ms: Vec<i64>,
    survivors: usize,
    processes: usize,
    all_gone: bool,
}

/// Results of act 2.
#[derive(Debug, Default)]
struct Act2 {
    adopted: usize,
    same_children: usize,
    killed_before_cleanup: usize,
    epochs: Vec<(u64, u64)>,
    survivors: usize,
    processes: usize,
}

/// Runs the demo; the exit code is 0 only if the verdict is good.
pub async fn run(minitower: Option<PathBuf>, window: Duration, p: &Palette) -> Result<i32> {
    let explicit = minitower.is_some();
    let bin = match find_minitower(minitower.clone()) {
        Some(b) => b,
        None if !explicit && build_missing_binaries() => find_minitower(None)
            .ok_or_else(|| Error::Demo("minitower still not found after building it".into()))?,
        None => {
            return Err(Error::Demo(
                "minitower not found next to leasectl: build it with `cargo build --workspace --bins` (or pass --minitower PATH)".into(),
            ));
        }
    };
    if window < Duration::from_secs(1) || window > Duration::from_secs(20) {
        return Err(Error::Demo("--window must be between 1s and 20s".into()));
    }
    let mut guard = DemoGuard::new()?;
    let started = Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Demo(format!("installing a SIGTERM handler: {e}")))?;
    let outcome = tokio::select! {
        r = acts(&mut guard, &bin, window, p) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm.recv() => None,
    };
    let result = match outcome {
        None => {
            println!("\ninterrupted: cleaning up…");
            let n = guard.cleanup();
            println!("killed {n} demo process(es); nothing left running");
            Ok(EXIT_INTERRUPTED)
        }
        Some(Err(e)) => {
            guard.cleanup();
            Err(e)
        }
        Some(Ok((a1, a2))) => {
            let code = verdict(p, &a1, &a2, window, started.elapsed());
            Ok(code)
        }
    };
    let left = guard.tagged().len();
    drop(guard);
    if left > 0 {
        eprintln!("leasectl demo: {left} process(es) were still alive at the end and were killed");
    }
    result
}

async fn acts(
    guard: &mut DemoGuard,
    bin: &Path,
    window: Duration,
    p: &Palette,
) -> Result<(Act1, Act2)> {
    let say = Say { p };
    println!(
        "{}",
        p.paint(
            Style::Bold,
            "leasectl demo: leased shellpers clean up after a dead Tower, and survive a restarted one"
        )
    );
    println!(
        "  scratch dir {}  (every process tagged {DEMO_TAG_VAR}={})",
        guard.dir.display(),
        guard.tag
    );
    let a1 = act1(guard, bin, window, &say).await?;
    let a2 = act2(guard, bin, window, &say).await?;
    Ok((a1, a2))
}

fn tower_args(scope: &Path, window: Duration, spawn: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--scope".into(),
        scope.display().to_string(),
        "--ttl".into(),
        format!("{}ms", TTL.as_millis()),
        "--window".into(),
        format!("{}ms", window.as_millis()),
        "--kill-grace".into(),
        format!("{}ms", KILL_GRACE.as_millis()),
        "--claim".into(),
        "10s".into(),
        "--spawn".into(),
        spawn.to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

async fn act1(guard: &mut DemoGuard, bin: &Path, window: Duration, say: &Say<'_>) -> Result<Act1> {
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
            s.pid, s.comm, s.state
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

async fn act2(guard: &mut DemoGuard, bin: &Path, window: Duration, say: &Say<'_>) -> Result<Act2> {
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
            s.pid, s.comm, s.state
        ));
    }
    Ok(a)
}

fn verdict(p: &Palette, a1: &Act1, a2: &Act2, window: Duration, total: Duration) -> i32 {
    let say = Say { p };
    say.head("verdict");
    let n1 = 3;
    let eof_max = a1.eof_ms.iter().max().copied().unwrap_or(0);
    // A crash is seen at once (EOF), not after the TTL a hang would take.
    let eof_ok = a1.eof_ms.len() == n1 && eof_max < TTL.as_millis() as u64;
    let early = a1
        .precision_ms
        .iter()
        .any(|x| *x < -(EARLY_SLACK.as_millis() as i64));
    let late_bound = (KILL_GRACE + LATE_SLACK).as_millis() as i64;
    let late = a1.precision_ms.iter().any(|x| *x > late_bound);
    let prec_ok = a1.precision_ms.len() == n1 && !early && !late;
    let (pmin, pmax) = (
        a1.precision_ms.iter().min().copied().unwrap_or(0),
        a1.precision_ms.iter().max().copied().unwrap_or(0),
    );
    let surv_ok = a1.survivors == 0 && a2.survivors == 0 && a1.all_gone;
    let adopt_ok = a2.adopted == 3 && a2.same_children == 3 && a2.killed_before_cleanup == 0;
    let mark = |ok: bool| {
        if ok {
            p.paint(Style::Green, "ok  ")
        } else {
            p.paint(Style::Red, "FAIL")
        }
    };
    let seen_max = a1.eof_seen_ms.iter().max().copied().unwrap_or(0);
    say.line(&format!(
        "{} EOF detection: every shellper lapsed {eof_max}..{seen_max} ms after the Tower's SIGKILL ({} shellpers; by their own clocks .. first seen by polling)",
        mark(eof_ok),
        a1.eof_ms.len()
    ));
    say.line(&format!(
        "{} kill precision: trees dead {pmin}..{pmax} ms after their deadline (lapse + {} window); none early; bound: kill grace {} + {} slack",
        mark(prec_ok),
        short_duration(window),
        short_duration(KILL_GRACE),
        short_duration(LATE_SLACK)
    ));
    say.line(&format!(
        "{} survivors: {} (act 1, {} processes watched) + {} (act 2)",
        mark(surv_ok),
        a1.survivors,
        a1.processes,
        a2.survivors
    ));
    say.line(&format!(
        "{} re-adoption: {}/3 adopted, {}/3 same child pids, {} killed, epochs {}",
        mark(adopt_ok),
        a2.adopted,
        a2.same_children,
        a2.killed_before_cleanup,
        a2.epochs
            .iter()
            .map(|(a, b)| format!("{a}→{b}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    say.line(&format!("total time: {}", short_duration(total)));
    let good = eof_ok && prec_ok && surv_ok && adopt_ok;
    println!(
        "\n{}",
        if good {
            p.paint(Style::Green, "DEMO OK: survivors: 0")
        } else {
            p.paint(Style::Red, "DEMO FAILED (see above)")
        }
    );
    if good { EXIT_OK } else { EXIT_FOUND }
}
