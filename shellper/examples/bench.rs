//! Measurements for BENCHMARKS.md (not a test):
//!
//! * peak RSS (VmHWM) of an idle leased shellper with a `bash` child;
//! * spawn-to-ready: from `spawn()` to the info line (socket bound, child
//!   running), median of 30;
//! * kill-ladder time for a 50-process tree with escapes (nothing ignores
//!   SIGTERM): TERMINATED `elapsed_ms` after RELEASE Terminate, median of 5.
//!
//! Run: `cargo build --release -p shellper && cargo run --release -p shellper --example bench`

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shellper_protocol::frame::{self, Parsed};
use shellper_protocol::msg::*;
use shellper_protocol::{Frame, Token};

const TOKEN: [u8; 32] = [0x42; 32];

fn shellper_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/examples/bench → target/<profile>/shellper
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("shellper"))
        .expect("profile dir");
    assert!(
        bin.is_file(),
        "{} missing: cargo build --release -p shellper",
        bin.display()
    );
    bin
}

struct Conn {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(path: &Path) -> Conn {
        Conn {
            s: UnixStream::connect(path).expect("connect"),
            buf: Vec::new(),
        }
    }
    fn send(&mut self, f: Frame) {
        self.s
            .write_all(&f.to_bytes().expect("encode"))
            .expect("send");
    }
    fn recv(&mut self) -> Frame {
        loop {
            if let Parsed::Frame { frame, consumed } = frame::parse(&self.buf).expect("parse") {
                self.buf.drain(..consumed);
                return frame;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "eof");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
    fn holder(path: &Path) -> (Conn, u64) {
        let mut c = Conn::new(path);
        c.send(Frame::Hello(Hello {
            version: 1,
            client_type: ClientType::Tower,
            lease: Some(1),
            replay: Some(false),
            data: Some(false),
        }));
        c.send(Frame::Acquire(Acquire {
            token: Token(TOKEN),
            holder: HolderInfo {
                name: "bench".into(),
                pid: std::process::id(),
            },
        }));
        loop {
            if let Frame::Grant(g) = c.recv() {
                return (c, g.epoch);
            }
        }
    }
}

fn start(dir: &Path, cmd: &[&str]) -> (Child, PathBuf, Duration) {
    let sock = dir.join(format!("sh-{:08x}.sock", rand_id()));
    let t0 = Instant::now();
    let mut child = Command::new(shellper_bin())
        .arg("--socket")
        .arg(&sock)
        .args([
            "--ttl",
            "6s",
            "--window",
            "10m",
            "--kill-grace",
            "3s",
            "--token-stdin",
            "--",
        ])
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    writeln!(
        child.stdin.take().expect("stdin"),
        "{}",
        Token(TOKEN).to_hex().as_str()
    )
    .expect("token");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("info line");
    let ready = t0.elapsed();
    assert!(line.contains("\"pid\""), "{line}");
    (child, sock, ready)
}

fn rand_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::process::id().wrapping_mul(65536) + N.fetch_add(1, Ordering::Relaxed)
}

fn vm(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own unreaped child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");

    // 1. Idle RSS with a bash child.
    let (child, sock, _) = start(dir.path(), &["bash"]);
    let (holder, _epoch) = Conn::holder(&sock);
    let mut term = Conn::new(&sock);
    term.send(Frame::Hello(Hello::v1(ClientType::Terminal)));
    let _ = term.recv();
    std::thread::sleep(Duration::from_secs(1));
    let pid = child.id();
    let shellper_hwm = vm(pid, "VmHWM:");
    // Baseline in the same run: the smallest dynamically linked program on
    // this libc (`sleep`), i.e. what any process costs before doing anything.
    let mut sleeper = Command::new("sleep").arg("1000").spawn().expect("sleep");
    std::thread::sleep(Duration::from_millis(200));
    let sleep_hwm = vm(sleeper.id(), "VmHWM:");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    println!(
        "idle shellper (bash child, holder + terminal attached): VmHWM {} KiB, VmRSS {} KiB; \
         baseline `sleep`: VmHWM {} KiB; ratio x{:.2}",
        shellper_hwm,
        vm(pid, "VmRSS:"),
        sleep_hwm,
        shellper_hwm as f64 / sleep_hwm.max(1) as f64
    );
    drop(term);
    drop(holder);
    stop(child);

    // 2. Spawn-to-ready.
    let mut times = Vec::new();
    for _ in 0..30 {
        let (child, _sock, ready) = start(dir.path(), &["sleep", "1000"]);
        times.push(ready.as_secs_f64() * 1000.0);
        stop(child);
    }
    let min = times.iter().copied().fold(f64::MAX, f64::min);
    // Baseline: fork + exec + first stdout line of a shell that prints at once.
    let mut base = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        let mut c = Command::new("sh")
            .args(["-c", "echo '{\"pid\":0}'; exec sleep 1000"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        BufReader::new(c.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("line");
        base.push(t0.elapsed().as_secs_f64() * 1000.0);
        let _ = c.kill();
        let _ = c.wait();
    }
    let (med, base_med) = (median(times), median(base));
    println!(
        "spawn-to-ready (info line read): median {med:.2} ms, min {min:.2} ms (n=30); \
         baseline `sh -c 'echo; exec sleep'` first line: median {base_med:.2} ms; ratio x{:.2}",
        med / base_med
    );

    // 3. Kill ladder on a 50-process tree with escapes.
    let script = r#"set -m
for i in $(seq 1 10); do sleep 1000 & done
for i in $(seq 1 10); do setsid sleep 1000 & done
for i in $(seq 1 10); do ( ( setsid sleep 1000 & ) & ) ; done
for i in $(seq 1 10); do nohup sleep 1000 >/dev/null 2>&1 & done
for i in $(seq 1 9); do (trap '' HUP; exec sleep 1000) & done
wait"#;
    let mut ladder = Vec::new();
    let mut signalled = 0;
    for _ in 0..5 {
        let (mut child, sock, _) = start(dir.path(), &["bash", "-c", script]);
        let pid = child.id() as i32;
        // Wait for the tree to be complete (bash + 49 sleeps + escapes).
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            let n = shellper_proctree::snapshot()
                .iter()
                .filter(|p| p.is_live() && descends(p.pid, pid))
                .count();
            if n >= 50 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (mut h, epoch) = Conn::holder(&sock);
        let t0 = Instant::now();
        h.send(Frame::Release(Release {
            epoch,
            mode: ReleaseMode::Terminate,
        }));
        let report = loop {
            if let Frame::Terminated(t) = h.recv() {
                break t;
            }
        };
        let wall = t0.elapsed();
        let _ = child.wait();
        assert_eq!(report.survivors, 0);
        signalled = report.signalled;
        ladder.push(report.elapsed_ms as f64);
        eprintln!(
            "  ladder {} ms (release→TERMINATED {:.1} ms), signalled {}, sweeps {}",
            report.elapsed_ms,
            wall.as_secs_f64() * 1000.0,
            report.signalled,
            report.sweeps
        );
    }
    let ladder_med = median(ladder);
    // Baseline: what a process-group kill does with the same tree: SIGKILL
    // to the shell's process group, then wait until that group is empty.
    // It is fast and it misses every escape, which is the bug this ladder
    // exists to fix; the survivors are counted, then killed here.
    let (naive_ms, missed) = naive_group_kill(script);
    println!(
        "kill ladder, 50-process tree with escapes: median {ladder_med} ms (signalled {signalled}, \
         survivors 0, n=5); baseline killpg(SIGKILL): {naive_ms:.1} ms with {missed} escaped \
         survivors; ratio x{:.1}",
        ladder_med / naive_ms.max(0.001)
    );
}

/// Runs `script` in its own session, kills its process group with SIGKILL and
/// waits until the group is empty. Returns (ms, processes of the tree that
/// survived), after killing those survivors too.
fn naive_group_kill(script: &str) -> (f64, usize) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]);
    // SAFETY: setsid is async-signal-safe; the child owns a new session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("bash");
    let sid = child.id() as i32;
    let tag = |p: &shellper_proctree::ProcInfo| {
        p.is_live() && (p.sid == sid || descends(p.pid, sid) || p.comm == "sleep" && p.ppid == 1)
    };
    let end = Instant::now() + Duration::from_secs(10);
    let mut before: Vec<(i32, u64)> = Vec::new();
    while Instant::now() < end {
        before = shellper_proctree::snapshot()
            .iter()
            .filter(|p| p.is_live() && (p.sid == sid || descends(p.pid, sid)))
            .map(|p| (p.pid, p.start_ticks))
            .collect();
        if before.len() >= 40 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let members: Vec<(i32, u64)> = shellper_proctree::snapshot()
        .iter()
        .filter(|p| tag(p) && p.start_ticks >= before.iter().map(|b| b.1).min().unwrap_or(0))
        .map(|p| (p.pid, p.start_ticks))
        .collect();
    let t0 = Instant::now();
    // SAFETY: kill(2) on the process group our child leads.
    unsafe {
        libc::kill(-sid, libc::SIGKILL);
    }
    loop {
        let left = shellper_proctree::snapshot()
            .iter()
            .filter(|p| p.is_live() && p.pgid == sid)
            .count();
        if left == 0 || t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let _ = child.wait();
    let mut missed = 0;
    for (pid, ticks) in members {
        if shellper_proctree::same_process(pid, ticks)
            && shellper_proctree::read_stat(pid).is_some_and(|p| p.is_live())
        {
            missed += 1;
            // SAFETY: pid + start time checked just above; cleanup only.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    (ms, missed)
}

fn descends(mut pid: i32, root: i32) -> bool {
    for _ in 0..64 {
        let Some(p) = shellper_proctree::read_stat(pid) else {
            return false;
        };
        if p.ppid == root {
            return true;
        }
        if p.ppid <= 1 {
            return false;
        }
        pid = p.ppid;
    }
    false
}
