//! Real-shellper measurements: Tower CPU to hold N leases at default
//! timings, renewal round trip over the real socket, adoption time after a
//! restart. Everything it starts is terminated (and checked gone by a leak
//! guard) before it exits.
//!
//! ```text
//! cargo build --release -p shellper
//! cargo run --release -p tower-client --example hold_bench -- [N] [HOLD_SECS]
//! BENCH_RT=multi cargo run ... # the Tower on two worker threads instead of one
//! ```
//!
//! `BENCH_TREE_WALK_BACKOFF=N` sets `TowerConfig::tree_walk_backoff` (1:
//! the tree record walked at every renewal, as before the backoff);
//! `BENCH_CGROUP=DIR` puts each session in a cgroup v2 of its own under
//! `DIR` (a writable cgroup v2 directory; the sessions are then never
//! walked).
//!
//! With `BENCH_JSON=1` it also prints one JSON line with the figures
//! (`tests/bench/compare.py` reads it); `BENCH_IDLE_SECS` sets the idle
//! baseline's length (default: HOLD_SECS, at most 10).
//!
//! Default timings (TTL 6 s, renew every 2 s ± 10 %), except the window
//! (30 s instead of 10 min) so that a crashed run cleans up after itself
//! quickly; the window does not affect the renewal cost.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shellper_protocol::frame::{Parsed, parse};
use shellper_protocol::msg::{Acquire, ClientType, Hello, HolderInfo, Renew};
use shellper_protocol::{Frame, LEASE_PROTOCOL_VERSION, LeaseConfig, PROTOCOL_VERSION, Token};
use shellper_testkit::{LEAK_TAG_VAR, LeakGuard};
use tower_client::{Scope, SpawnSpec, Tower, TowerConfig};

fn cpu_self() -> Duration {
    let mut ru: libc::rusage = unsafe_zeroed();
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn unsafe_zeroed() -> libc::rusage {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A blocking lease connection to one shellper we started by hand.
struct Raw {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    fn send(&mut self, f: &Frame) {
        self.s.write_all(&f.to_bytes().unwrap()).unwrap();
    }
    fn recv(&mut self) -> Frame {
        loop {
            if let Ok(Parsed::Frame { frame, consumed }) = parse(&self.buf) {
                self.buf.drain(..consumed);
                return frame;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "shellper closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// RENEW→RENEWED and PING→PONG round trips on an idle shellper.
fn raw_rtt(guard: &LeakGuard, dir: &Path, samples: usize) -> (Vec<Duration>, Vec<Duration>) {
    let sock = dir.join("sh-rawrtt00.sock");
    let token = Token::from_bytes(rand_bytes());
    let cfg = serde_json::json!({
        "command": "sleep", "args": ["100000"], "cwd": "/",
        "env": {"PATH": "/usr/bin:/bin", LEAK_TAG_VAR: guard.tag()},
        "cols": 80, "rows": 24, "socketPath": sock,
        "lease": {"ttlMs": 6000, "windowMs": 30000, "claimMs": 10000, "killGraceMs": 1000},
    });
    let mut cmd = std::process::Command::new(tower_client::resolve_shellper(None).unwrap());
    guard.apply(&mut cmd);
    let mut child = cmd
        .arg(cfg.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", token.to_hex().as_str()).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut c = Raw {
        s: UnixStream::connect(&sock).unwrap(),
        buf: Vec::new(),
    };
    c.send(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_type: ClientType::Tower,
        lease: Some(LEASE_PROTOCOL_VERSION),
        replay: Some(false),
        data: Some(false),
    }));
    assert!(matches!(c.recv(), Frame::Welcome(_)));
    c.send(&Frame::Acquire(Acquire {
        token,
        holder: HolderInfo {
            name: "hold_bench".into(),
            pid: std::process::id(),
        },
    }));
    let epoch = match c.recv() {
        Frame::Grant(g) => g.epoch,
        other => panic!("{other:?}"),
    };
    let (mut renew, mut ping) = (Vec::new(), Vec::new());
    for seq in 1..=samples as u64 {
        std::thread::sleep(Duration::from_millis(1)); // idle between samples
        let t = Instant::now();
        c.send(&Frame::Renew(Renew { epoch, seq }));
        loop {
            if let Frame::Renewed(r) = c.recv()
                && r.seq == seq
            {
                break;
            }
        }
        renew.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(1));
        let t = Instant::now();
        c.send(&Frame::Ping);
        while !matches!(c.recv(), Frame::Pong) {}
        ping.push(t.elapsed());
    }
    c.send(&Frame::Release(shellper_protocol::msg::Release {
        epoch,
        mode: shellper_protocol::msg::ReleaseMode::Terminate,
    }));
    child.wait().unwrap();
    (renew, ping)
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(100, |a| a.parse().unwrap());
    let hold: u64 = args.next().map_or(20, |a| a.parse().unwrap());
    tower_client::raise_fd_limit();
    let guard = LeakGuard::new("hold_bench").with_settle(Duration::from_secs(5));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("scope");
    // Single-threaded like minitower; BENCH_RT=multi for two workers.
    let rt = if std::env::var("BENCH_RT").as_deref() == Ok("multi") {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    // 1. Raw round trip on an idle shellper (before anything else runs).
    Scope::open(&dir).unwrap();
    let (mut renew, mut ping) = raw_rtt(&guard, &dir, 2000);
    println!("== renewal round trip over the real socket, idle (2000 samples)");
    let (r50, r99, p50, p99) = (
        pct(&mut renew, 0.5),
        pct(&mut renew, 0.99),
        pct(&mut ping, 0.5),
        pct(&mut ping, 0.99),
    );
    println!(
        "RENEW->RENEWED p50 {:.0} us  p99 {:.0} us | baseline PING->PONG p50 {:.0} us  p99 {:.0} us | ratio p50 x{:.2} p99 x{:.2}",
        us(r50),
        us(r99),
        us(p50),
        us(p99),
        us(r50) / us(p50),
        us(r99) / us(p99)
    );

    rt.block_on(async {
        let lease = LeaseConfig::new(
            Duration::from_secs(6),
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .unwrap();
        let cfg = TowerConfig {
            lease,
            holder_name: "hold_bench".into(),
            // BENCH_TREE_WALK_BACKOFF=1: walk every renewal (the cost
            // before the backoff), for comparisons in one run.
            tree_walk_backoff: std::env::var("BENCH_TREE_WALK_BACKOFF")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(tower_client::DEFAULT_TREE_WALK_BACKOFF),
            // BENCH_CGROUP=DIR: each session in a cgroup v2 of its own
            // under DIR (no tree walks: the cgroup is the record).
            cgroup: std::env::var_os("BENCH_CGROUP")
                .map(|d| tower_client::CgroupChoice::Dir(d.into())),
            ..TowerConfig::default()
        };
        let (tower, mut events) = Tower::open(Scope::open(&dir).unwrap(), cfg.clone()).unwrap();
        let tower = Arc::new(tower);

        // 2. Baseline: the same process with the Tower open and nothing held.
        let idle_secs = std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(hold.min(10));
        let c0 = cpu_self();
        tokio::time::sleep(Duration::from_secs(idle_secs)).await;
        let idle_cpu = (cpu_self() - c0).as_secs_f64() / idle_secs as f64;

        let rss0 = rss_kib();
        let t = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let tw = tower.clone();
            let sem = sem.clone();
            let spec = SpawnSpec::new("sleep")
                .args(["100000"])
                .tag_env(LEAK_TAG_VAR, guard.tag());
            set.spawn(async move {
                let _p = sem.acquire().await;
                tw.spawn(spec).await
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        let spawn_time = t.elapsed();
        println!(
            "\n== holding {n} real shellpers (TTL 6 s, renew 2 s ± 10 %)\nspawned {n} in {:.2} s ({:.1} ms each, 16 at a time)",
            spawn_time.as_secs_f64(),
            spawn_time.as_secs_f64() * 1e3 / n as f64
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss1 = rss_kib();
        let (_, renewed0) = tower.rtt_samples();
        let c0 = cpu_self();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(hold)).await;
        let held_secs = t0.elapsed().as_secs_f64();
        let hold_cpu = (cpu_self() - c0).as_secs_f64() / held_secs;
        let (mut rtts, renewed1) = tower.rtt_samples();
        let tower_rss = rss_kib();
        let mut bad = 0;
        while let Some(e) = events.try_recv() {
            if !matches!(e, tower_client::Event::Held { .. }) {
                bad += 1;
                println!("unexpected event: {}", e.to_json());
            }
        }
        let renewals = renewed1 - renewed0;
        let per_lease = (hold_cpu - idle_cpu).max(0.0) / n as f64;
        println!(
            "Tower CPU: {:.3} % of one core holding {n} (idle Tower baseline {:.3} %) => {:.4} % per lease, {:.1} us CPU per renewal",
            hold_cpu * 100.0,
            idle_cpu * 100.0,
            per_lease * 100.0,
            (hold_cpu - idle_cpu).max(0.0) * held_secs * 1e6 / renewals.max(1) as f64
        );
        println!(
            "renewals acknowledged: {renewals} in {held_secs:.1} s ({:.1}/s); lapse/lost/unresponsive events: {bad}",
            renewals as f64 / held_secs
        );
        println!(
            "Tower RSS: +{} KiB for {n} leases = {:.1} KiB per lease (connections, holders, buffers)",
            rss1.saturating_sub(rss0),
            rss1.saturating_sub(rss0) as f64 / n as f64
        );
        if !rtts.is_empty() {
            println!(
                "Tower-perceived renewal round trip (scheduler decision -> ack seen by holder): p50 {:.0} us  p99 {:.0} us ({} samples)",
                us(pct(&mut rtts, 0.5)),
                us(pct(&mut rtts, 0.99)),
                rtts.len()
            );
        }

        // 3. Restart: abandon (like a crash), adopt everything again.
        let tower = Arc::into_inner(tower).unwrap();
        tower.abandon();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (t2, _ev2) = Tower::open(Scope::open(&dir).unwrap(), cfg).unwrap();
        let sockets: Vec<_> = t2
            .registry()
            .shellpers
            .iter()
            .map(|e| e.socket.clone())
            .collect();
        // Baseline: a concurrent read-only STATUS sweep of the same sockets.
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for s in sockets.clone() {
            set.spawn(async move {
                tower_client::query_status(&s, Duration::from_secs(2)).await
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            ok += usize::from(matches!(r, Ok(Ok(_))));
        }
        let sweep = t.elapsed();
        let t = Instant::now();
        let rep = t2.adopt_all().await;
        let adopt = t.elapsed();
        println!(
            "\n== restart\nadopted {} of {n} in {:.1} ms ({} failed) | baseline STATUS sweep of {ok} sockets {:.1} ms | ratio x{:.2}",
            rep.adopted.len(),
            adopt.as_secs_f64() * 1e3,
            rep.failed.len(),
            sweep.as_secs_f64() * 1e3,
            adopt.as_secs_f64() / sweep.as_secs_f64()
        );

        if std::env::var_os("BENCH_JSON").is_some() {
            println!(
                "{}",
                serde_json::json!({
                    "n": n,
                    "hold_secs": held_secs,
                    "cpu_pct": hold_cpu * 100.0,
                    "idle_cpu_pct": idle_cpu * 100.0,
                    "tower_rss_kib": tower_rss,
                    "rss_per_lease_kib": rss1.saturating_sub(rss0) as f64 / n as f64,
                    "spawn_ms_each": spawn_time.as_secs_f64() * 1e3 / n as f64,
                    "adopt_ms": adopt.as_secs_f64() * 1e3,
                    "adopted": rep.adopted.len(),
                    "adopt_failed": rep.failed.len(),
                    "sweep_ms": sweep.as_secs_f64() * 1e3,
                    "bad_events": bad,
                })
            );
        }

        // 4. Clean up: terminate everything with confirmed death.
        let t = Instant::now();
        let res = t2.terminate_all(Duration::from_secs(20)).await;
        let failed = res.iter().filter(|(_, r)| r.is_err()).count();
        if let Some((id, Err(e))) = res.iter().find(|(_, r)| r.is_err()) {
            println!("first terminate failure: {id}: {e}");
        }
        println!(
            "terminated {} with confirmed death in {:.2} s ({failed} failed)",
            res.len(),
            t.elapsed().as_secs_f64()
        );
    });
    drop(rt);
    guard.finish();
    println!("leak guard: nothing left running");
}
