//! Test support for the shellper integration tests: start the real binary
//! the way a Tower does, and a small blocking client on the protocol crate.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shellper_protocol::frame::{self, Parsed};
use shellper_protocol::msg::*;
use shellper_protocol::{Frame, Token};
use shellper_testkit::{LeakGuard, cargo_bin};

/// A fixed test token (tests never share a shellper).
pub fn token() -> Token {
    Token([0x5a; 32])
}

/// The environment for a codev config: ours plus the leak tag.
pub fn env_with_tag(guard: &LeakGuard) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    env.insert("TERM".into(), "xterm-256color".into());
    let (k, v) = guard.env_pair();
    env.insert(k.into(), v);
    env
}

/// Lease timing for tests, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl: u64,
    pub window: u64,
    pub claim: u64,
    pub grace: u64,
}

/// Short enough for a quick suite, long enough for a loaded 2-core machine:
/// a renewer every TTL/3 (333 ms) has 667 ms of slack before a lapse (a
/// 400 ms TTL left 267 ms, and renewals were seen later than that under
/// load), and the window leaves a resumed holder 1.5 s or more.
pub const FAST: Timing = Timing {
    ttl: 1000,
    window: 2000,
    claim: 5000,
    grace: 300,
};

/// A running shellper process started by the test.
#[derive(Debug)]
pub struct Shellper {
    pub proc: Child,
    pub pid: u32,
    pub start_time: u64,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    status: Option<ExitStatus>,
}

/// Builds codev's JSON config.
pub fn codev_config(
    guard: &LeakGuard,
    socket: &Path,
    command: &str,
    args: &[&str],
    lease: Option<Timing>,
    extra: serde_json::Value,
) -> String {
    let mut v = serde_json::json!({
        "command": command,
        "args": args,
        "cwd": "/tmp",
        "env": env_with_tag(guard),
        "cols": 100,
        "rows": 30,
        "socketPath": socket,
        "handshakeTimeoutMs": 800,
    });
    if let Some(t) = lease {
        v["lease"] = serde_json::json!({
            "ttlMs": t.ttl, "windowMs": t.window, "claimMs": t.claim, "killGraceMs": t.grace
        });
    }
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v.to_string()
}

impl Shellper {
    /// Starts the binary exactly as codev's Tower does: a script path, then
    /// the JSON config; the token (leased mode) on stdin; reads the info
    /// line from stdout.
    pub fn start_codev(
        guard: &LeakGuard,
        command: &str,
        args: &[&str],
        lease: Option<Timing>,
        extra: serde_json::Value,
    ) -> Shellper {
        Self::start_codev_with(guard, command, args, lease, extra, |_| {})
    }

    /// [`Shellper::start_codev`], with a chance to adjust the command
    /// (inherited signal state, extra arguments) before it runs.
    pub fn start_codev_with(
        guard: &LeakGuard,
        command: &str,
        args: &[&str],
        lease: Option<Timing>,
        extra: serde_json::Value,
        tweak: impl FnOnce(&mut Command),
    ) -> Shellper {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("scope").join("sh-0000abcd.sock");
        let json = codev_config(guard, &socket, command, args, lease, extra);
        let mut cmd = Command::new(cargo_bin("shellper"));
        cmd.arg("/opt/codev/dist/terminal/shellper-main.js")
            .arg(json);
        tweak(&mut cmd);
        Self::launch(guard, cmd, dir, socket, lease.is_some())
    }

    /// Starts with the friendly flags.
    pub fn start_flags(
        guard: &LeakGuard,
        flags: &[&str],
        command: &[&str],
        leased: bool,
    ) -> Shellper {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("scope").join("sh-0000abcd.sock");
        let mut cmd = Command::new(cargo_bin("shellper"));
        cmd.arg("--socket").arg(&socket).args(flags);
        if leased {
            cmd.arg("--token-stdin");
        }
        cmd.arg("--").args(command);
        Self::launch(guard, cmd, dir, socket, leased)
    }

    fn launch(
        guard: &LeakGuard,
        mut cmd: Command,
        dir: tempfile::TempDir,
        socket: PathBuf,
        leased: bool,
    ) -> Shellper {
        guard.apply(&mut cmd);
        std::fs::create_dir_all(socket.parent().expect("parent")).expect("scope dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(socket.with_extension("spawn.log"))
            .expect("log");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut proc = cmd.spawn().expect("spawn shellper");
        {
            let mut stdin = proc.stdin.take().expect("stdin");
            if leased {
                writeln!(stdin, "{}", token().to_hex().as_str()).expect("token");
            }
        }
        let mut line = String::new();
        BufReader::new(proc.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("info line");
        let info: serde_json::Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("info line {line:?}: {e}"));
        let pid = info["pid"].as_u64().expect("pid") as u32;
        assert_eq!(pid, proc.id(), "info line pid is the shellper's");
        Shellper {
            pid,
            start_time: info["startTime"].as_u64().expect("startTime"),
            proc,
            socket,
            dir,
            status: None,
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// A tower client that acquired the lease (leased mode).
    pub fn holder(&self) -> (Client, Grant) {
        let mut c = self.connect();
        c.hello(ClientType::Tower, true, false, false);
        let g = c.acquire(&token()).expect("grant");
        (c, g)
    }

    pub fn status(&self) -> Status {
        let mut c = self.connect();
        c.hello(ClientType::Status, true, false, false);
        c.status()
    }

    /// Polls for exit; returns the status once the shellper exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.proc.try_wait().expect("try_wait") {
                self.status = Some(s);
                return self.status;
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_none()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(self.pid as i32, sig);
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.socket.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Shellper {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGKILL);
            let _ = self.proc.wait();
        }
    }
}

/// Why a receive failed.
#[derive(Debug)]
pub enum RecvError {
    Eof,
    Timeout,
    Io(std::io::Error),
    Frame(frame::FrameError),
}

/// A blocking protocol client.
#[derive(Debug)]
pub struct Client {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).expect("connect");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, f: &Frame) {
        self.stream
            .write_all(&f.to_bytes().expect("encode"))
            .expect("send");
    }

    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    pub fn recv(&mut self, timeout: Duration) -> Result<Frame, RecvError> {
        let end = Instant::now() + timeout;
        loop {
            match frame::parse(&self.buf) {
                Ok(Parsed::Frame { frame, consumed }) => {
                    self.buf.drain(..consumed);
                    return Ok(frame);
                }
                Ok(Parsed::Incomplete { .. }) => {}
                Err(e) => return Err(RecvError::Frame(e)),
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::Timeout);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(RecvError::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }

    /// Receives until `pick` returns `Some`, skipping other frames.
    pub fn recv_until<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&Frame) -> Option<T>,
    ) -> Result<T, RecvError> {
        let end = Instant::now() + timeout;
        loop {
            let f = self.recv(end.saturating_duration_since(Instant::now()))?;
            if let Some(t) = pick(&f) {
                return Ok(t);
            }
        }
    }

    /// Collects DATA/REPLAY output until it contains `needle`.
    pub fn wait_output(&mut self, needle: &str, timeout: Duration) -> String {
        let mut out = String::new();
        let r = self.recv_until(timeout, |f| {
            if let Frame::Data(b) | Frame::Replay(b) = f {
                out.push_str(&String::from_utf8_lossy(b));
            }
            out.contains(needle).then_some(())
        });
        if let Err(e) = r {
            panic!("waiting for {needle:?}: {e:?}; output so far: {out:?}");
        }
        out
    }

    /// HELLO; returns WELCOME (frames in between are not expected).
    pub fn hello(&mut self, kind: ClientType, lease: bool, replay: bool, data: bool) -> Welcome {
        let hello = Hello {
            version: 1,
            client_type: kind,
            lease: lease.then_some(1),
            replay: Some(replay),
            data: Some(data),
        };
        self.send(&Frame::Hello(hello));
        match self.recv(Duration::from_secs(5)) {
            Ok(Frame::Welcome(w)) => w,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    /// A v1 HELLO exactly as codev's Tower sends it (no lease fields).
    pub fn hello_v1(&mut self, kind: ClientType) -> Welcome {
        self.send(&Frame::Hello(Hello::v1(kind)));
        match self.recv(Duration::from_secs(5)) {
            Ok(Frame::Welcome(w)) => w,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    fn lease_reply(&mut self) -> Frame {
        self.recv_until(Duration::from_secs(5), |f| match f {
            Frame::Grant(_)
            | Frame::Renewed(_)
            | Frame::Released(_)
            | Frame::Error(_)
            | Frame::Terminated(_)
            | Frame::Status(_) => Some(f.clone()),
            _ => None,
        })
        .expect("lease reply")
    }

    pub fn acquire(&mut self, t: &Token) -> Result<Grant, ErrorMsg> {
        self.send(&Frame::Acquire(Acquire {
            token: t.clone(),
            holder: HolderInfo {
                name: "test-tower".into(),
                pid: std::process::id(),
            },
        }));
        match self.lease_reply() {
            Frame::Grant(g) => Ok(g),
            Frame::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn renew(&mut self, epoch: u64, seq: u64) -> Result<Renewed, ErrorMsg> {
        self.send(&Frame::Renew(Renew { epoch, seq }));
        match self.lease_reply() {
            Frame::Renewed(r) => Ok(r),
            Frame::Error(e) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn status(&mut self) -> Status {
        self.send(&Frame::StatusRequest(StatusRequest {}));
        match self.lease_reply() {
            Frame::Status(s) => *s,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn data(&mut self, s: &str) {
        self.send(&Frame::Data(Bytes::copy_from_slice(s.as_bytes())));
    }

    /// True if the peer closed the connection within `timeout` (frames
    /// before the close are skipped; ERROR frames are returned).
    pub fn closed_within(&mut self, timeout: Duration) -> (bool, Vec<ErrorMsg>) {
        let mut errors = Vec::new();
        let end = Instant::now() + timeout;
        loop {
            match self.recv(end.saturating_duration_since(Instant::now())) {
                Ok(Frame::Error(e)) => errors.push(e),
                Ok(_) => {}
                Err(RecvError::Timeout) => return (false, errors),
                Err(_) => return (true, errors),
            }
        }
    }
}

/// A holder that renews from a background thread until stopped or paused.
#[derive(Debug)]
pub struct Renewer {
    pub stop: Arc<AtomicBool>,
    pub pause: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    handle: Option<JoinHandle<Client>>,
}

impl Renewer {
    pub fn start(mut client: Client, epoch: u64, every: Duration) -> Renewer {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, p, o, e) = (stop.clone(), pause.clone(), ok.clone(), errors.clone());
        let handle = std::thread::spawn(move || {
            let mut seq = 0;
            let mut last: Option<Instant> = None;
            while !s.load(Ordering::SeqCst) {
                let due = last.is_none_or(|t| t.elapsed() >= every);
                if due && !p.load(Ordering::SeqCst) {
                    last = Some(Instant::now());
                    seq += 1;
                    client.send(&Frame::Renew(Renew { epoch, seq }));
                    let r = client.recv_until(Duration::from_secs(10), |f| match f {
                        Frame::Renewed(_) | Frame::Error(_) | Frame::Terminated(_) => {
                            Some(f.clone())
                        }
                        _ => None,
                    });
                    match r {
                        Ok(Frame::Renewed(_)) => {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                        other => e.lock().expect("lock").push(format!("{other:?}")),
                    }
                }
                // Fine-grained, so a "resumed" Tower renews at once.
                std::thread::sleep(Duration::from_millis(5));
            }
            client
        });
        Renewer {
            stop,
            pause,
            ok,
            errors,
            handle: Some(handle),
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("lock").clone()
    }

    /// Stops renewing and hands the client back.
    pub fn finish(mut self) -> Client {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("handle")
            .join()
            .expect("renewer thread")
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[allow(unused_imports)] // not every test binary polls
pub use shellper_testkit::wait_for;

/// Exit code of a finished shellper.
pub fn code(s: Option<ExitStatus>) -> Option<i32> {
    s.and_then(|s| s.code())
}
