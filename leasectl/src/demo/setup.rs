//! What both acts share: the run's guard (tag, scratch directory, clean-up),
//! starting minitower and reading its events, the death watch, the printer.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shellper_proctree::{LinuxTable, ProcInfo, ProcessTable, Sig, environ_contains};
use tokio::sync::mpsc;

use super::{DEMO_TAG_VAR, KILL_GRACE, TTL};
use crate::error::{Error, Result};
use crate::render::{self, Palette, Style};

/// Kills everything of this demo run when dropped.
#[derive(Debug)]
pub struct DemoGuard {
    pub(super) tag: String,
    pub(super) towers: Vec<Child>,
    // Kept for its Drop: removes the scopes and logs.
    pub(super) _dir: tempfile::TempDir,
    pub(super) dir: PathBuf,
}

impl DemoGuard {
    pub(super) fn new() -> Result<Self> {
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
pub(super) fn tagged(tag: &str) -> Vec<ProcInfo> {
    let me = std::process::id() as i32;
    shellper_proctree::snapshot()
        .into_iter()
        .filter(|p| p.pid != me && p.is_live() && environ_contains(p.pid, DEMO_TAG_VAR, tag))
        .collect()
}

/// Finds minitower: the given path, else next to this executable (or one
/// directory up, for test binaries in `deps/`).
pub(super) fn find_minitower(explicit: Option<PathBuf>) -> Option<PathBuf> {
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
pub(super) fn build_missing_binaries() -> bool {
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
pub(super) type Lines = mpsc::UnboundedReceiver<serde_json::Value>;

/// Starts minitower with the demo's tag; its JSON lines arrive on the
/// returned channel, its stderr goes to `log`.
pub(super) fn start_tower(
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
pub(super) struct Startup {
    /// id → (shellper pid, child pid), from `spawned` or `adopted`.
    pub(super) shellpers: BTreeMap<String, (u32, u32)>,
    pub(super) held: u64,
    pub(super) epochs: HashMap<String, u64>,
}

/// Reads events until `ready` (or fails after `bound`).
pub(super) async fn wait_ready(rx: &mut Lines, bound: Duration, log: &Path) -> Result<Startup> {
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

pub(super) fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Records when each watched process dies, polling /proc every few ms on a
/// thread of its own (so the measurement does not depend on the scans).
pub(super) struct DeathWatch {
    deaths: Arc<Mutex<HashMap<i32, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeathWatch {
    pub(super) fn start(procs: Vec<(i32, u64)>) -> Self {
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

    pub(super) fn death(&self, pid: i32) -> Option<Instant> {
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
pub(super) struct Say<'a> {
    pub(super) p: &'a Palette,
}

impl Say<'_> {
    pub(super) fn head(&self, s: &str) {
        println!("\n{}", self.p.paint(Style::Bold, s));
    }
    pub(super) fn line(&self, s: &str) {
        println!("  {s}");
    }
    pub(super) fn table(&self, scan: &crate::scan::Scan) {
        let t = render::list_table(self.p, &scan.shellpers, &|_| false);
        for l in t.lines() {
            println!("  {l}");
        }
    }
}

/// Seconds with millisecond precision, signed.
pub(super) fn secs(d: f64) -> String {
    format!("{d:+.3}s")
}

pub(super) fn tower_args(
    scope: &Path,
    window: Duration,
    spawn: usize,
    extra: &[&str],
) -> Vec<String> {
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
