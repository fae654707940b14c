//! codev drop-in: our shellper driven by a Tower that behaves like codev's
//! unmodified `SessionManager` + `ShellperClient` (written from SPEC.md and
//! codev's documented v1 behaviour, no codev code):
//!
//! * it spawns `node shellper-main.js CONFIG` detached, stdout a pipe for the
//!   info line, stderr the session's `.log`; checks the info line's pid
//!   against the process it started and its start time against
//!   `/proc/<pid>` (codev's PID + start-time identity check, ±2 s);
//! * it connects late (after the child has exited, when the test says so);
//! * it handles every frame of its **first read** before its listeners
//!   exist: REPLAY is kept, an EXIT or DATA in that read is lost;
//! * it disconnects from and reconnects to husks, sends SPAWN to them, and
//!   kills a session with SIGTERM (then SIGKILL after 5 s).
//!
//! Every scenario runs twice: launching the binary directly (as a Tower
//! with a native launcher would) and through `integrations/codev/
//! shellper-main.js` on a Node that has `process.execve` (>= 22.15). That
//! Node is found through `SHELLPER_TEST_NODE` or `node` on PATH; without
//! one the shim half is skipped with a note, unless
//! `SHELLPER_REQUIRE_NODE_EXECVE=1` (set by `.ci/run`), which makes its
//! absence a failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shellper_testkit::{LeakGuard, cargo_bin};

const T: Duration = Duration::from_secs(5);
const EXIT: u8 = 0x04;
const DATA: u8 = 0x01;
const REPLAY: u8 = 0x05;
const WELCOME: u8 = 0x09;

/// How the Tower starts a shellper.
#[derive(Debug, Clone)]
enum Launch {
    /// `shellper shellper-main.js CONFIG`.
    Direct,
    /// `node integrations/codev/shellper-main.js CONFIG` (execve).
    Shim(PathBuf),
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn shim_path() -> PathBuf {
    repo_root().join("integrations/codev/shellper-main.js")
}

fn has_execve(node: &Path) -> bool {
    Command::new(node)
        .args([
            "-e",
            "process.exit(typeof process.execve === 'function' ? 0 : 1)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Node with `process.execve`, or `None` (a skip, or a failure in CI).
fn node_with_execve() -> Option<PathBuf> {
    let required = std::env::var("SHELLPER_REQUIRE_NODE_EXECVE").is_ok_and(|v| v == "1");
    let candidates: Vec<PathBuf> = match std::env::var_os("SHELLPER_TEST_NODE") {
        Some(p) => vec![PathBuf::from(p)],
        None => std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("node")).collect())
            .unwrap_or_default(),
    };
    if let Some(node) = candidates
        .into_iter()
        .find(|n| n.is_file() && has_execve(n))
    {
        return Some(node);
    }
    assert!(
        !required,
        "SHELLPER_REQUIRE_NODE_EXECVE=1 but no Node with process.execve (>= 22.15) was found \
         (SHELLPER_TEST_NODE={:?}); .ci/run installs one",
        std::env::var_os("SHELLPER_TEST_NODE")
    );
    eprintln!(
        "note: no Node >= 22.15 (set SHELLPER_TEST_NODE); the shellper-main.js half is skipped"
    );
    None
}

fn launches() -> Vec<Launch> {
    let mut v = vec![Launch::Direct];
    if let Some(node) = node_with_execve() {
        v.push(Launch::Shim(node));
    }
    v
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `/proc/<pid>`'s ctime in ms: what codev's Tower reads as a process's
/// start time.
fn proc_ctime_ms(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(format!("/proc/{pid}")).ok()?;
    Some(md.ctime() as u64 * 1000 + md.ctime_nsec() as u64 / 1_000_000)
}

fn alive(pid: u32) -> bool {
    shellper_testkit::proc_alive(pid as i32)
}

/// One session as codev's SessionManager holds it.
struct Session {
    child: Child,
    pid: u32,
    socket: PathBuf,
    log: PathBuf,
    /// The log as it was the moment stdout closed (codev's "spawned with
    /// file stderr survives parent exit" test reads it then).
    log_at_info: String,
    _dir: tempfile::TempDir,
}

/// codev's config: the child's whole environment (PATH and the leak tag).
fn config(guard: &LeakGuard, socket: &Path, command: &str, args: &[&str]) -> String {
    let (k, v) = guard.env_pair();
    let env: BTreeMap<String, String> = [
        (k.to_string(), v),
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
    ]
    .into_iter()
    .collect();
    serde_json::json!({
        "command": command, "args": args, "cwd": "/tmp", "env": env,
        "cols": 80, "rows": 24, "socketPath": socket,
    })
    .to_string()
}

impl Session {
    /// createSession: spawn detached, info line from stdout, identity check.
    fn create(
        guard: &LeakGuard,
        launch: &Launch,
        command: &str,
        args: &[&str],
        tower_env: &[(&str, &str)],
    ) -> Session {
        Self::create_in(
            tempfile::tempdir().unwrap(),
            guard,
            launch,
            command,
            args,
            tower_env,
        )
    }

    fn create_in(
        dir: tempfile::TempDir,
        guard: &LeakGuard,
        launch: &Launch,
        command: &str,
        args: &[&str],
        tower_env: &[(&str, &str)],
    ) -> Session {
        let socket = dir.path().join("shellper-s1.sock");
        let log = dir.path().join("shellper-s1.log");
        let json = config(guard, &socket, command, args);
        let mut cmd = match launch {
            Launch::Direct => {
                let mut c = Command::new(cargo_bin("shellper"));
                c.arg("/opt/codev/dist/terminal/shellper-main.js");
                c
            }
            Launch::Shim(node) => {
                let mut c = Command::new(node);
                c.arg(shim_path())
                    .env("SHELLPER_BIN", cargo_bin("shellper"));
                c
            }
        };
        cmd.arg(&json);
        for (k, v) in tower_env {
            cmd.env(k, v);
        }
        guard.apply(&mut cmd);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logf))
            .process_group(0);
        let t0 = wall_ms();
        let mut child = cmd.spawn().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let log_at_info = std::fs::read_to_string(&log).unwrap_or_default();
        let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!(
                "info line {out:?}: {e}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let pid = info["pid"].as_u64().unwrap() as u32;
        let start = info["startTime"].as_u64().unwrap();
        // codev kills the spawned child on failure by handle and later
        // signals `pid`: both must be the same process (execve keeps it).
        assert_eq!(
            pid,
            child.id(),
            "the info line names the process codev started"
        );
        let ctime = proc_ctime_ms(pid).unwrap();
        assert!(
            ctime.abs_diff(start) <= 2000,
            "codev's start-time check: /proc ctime {ctime} vs startTime {start}"
        );
        assert!(start >= t0.saturating_sub(1000) && start <= wall_ms() + 1000);
        let s = Session {
            child,
            pid,
            socket,
            log,
            log_at_info,
            _dir: dir,
        };
        // waitForSocket: codev polls for the file.
        let end = Instant::now() + T;
        while !s.socket.exists() {
            assert!(Instant::now() < end, "socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// killSession: SIGTERM, wait up to 5 s, SIGKILL.
    fn kill(&mut self) -> ExitStatus {
        unsafe_free_kill(self.pid, libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(!self.socket.exists(), "socket removed on exit");
                return st;
            }
            if Instant::now() > end {
                unsafe_free_kill(self.pid, libc::SIGKILL);
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn unsafe_free_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A raw frame as codev's parser yields it.
#[derive(Debug, Clone)]
struct RawFrame {
    kind: u8,
    payload: Vec<u8>,
}

fn split_frames(buf: &mut Vec<u8>) -> Vec<RawFrame> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 5 {
            return out;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            return out;
        }
        out.push(RawFrame {
            kind: buf[0],
            payload: buf[5..5 + len].to_vec(),
        });
        buf.drain(..5 + len);
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// codev's ShellperClient as SessionManager uses it.
struct CodevClient {
    stream: UnixStream,
    buf: Vec<u8>,
    welcome: serde_json::Value,
    replay: Option<Vec<u8>>,
    /// Frames of the first read after WELCOME that codev would drop (EXIT,
    /// DATA): no listener is attached yet when they are emitted.
    lost: Vec<RawFrame>,
    /// Frames delivered to listeners, in order.
    events: Vec<RawFrame>,
}

impl CodevClient {
    /// connect(): HELLO as codev encodes it, then the first read. The read
    /// is deliberately late (Node's event loop is busy elsewhere), so that
    /// everything the shellper writes at once lands in that one read.
    fn connect(socket: &Path) -> CodevClient {
        let stream = Self::hello(socket);
        std::thread::sleep(Duration::from_millis(150));
        Self::first_read(stream)
    }

    /// The connection and its HELLO, nothing read yet.
    fn hello(socket: &Path) -> UnixStream {
        let mut stream = UnixStream::connect(socket).unwrap();
        stream
            .write_all(&frame(0x08, br#"{"version":1,"clientType":"tower"}"#))
            .unwrap();
        stream
    }

    /// The read that completes WELCOME, and what codev makes of it.
    fn first_read(mut stream: UnixStream) -> CodevClient {
        stream.set_read_timeout(Some(T)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        let mut frames = Vec::new();
        // Reads until WELCOME is complete; the read that completes it is
        // "the first read" (everything in it is handled synchronously).
        while !frames.iter().any(|f: &RawFrame| f.kind == WELCOME) {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            frames.extend(split_frames(&mut buf));
        }
        let pos = frames.iter().position(|f| f.kind == WELCOME).unwrap();
        let welcome: serde_json::Value = serde_json::from_slice(&frames[pos].payload).unwrap();
        let mut c = CodevClient {
            stream,
            buf,
            welcome,
            replay: None,
            lost: Vec::new(),
            events: Vec::new(),
        };
        for f in frames.into_iter().skip(pos + 1) {
            match f.kind {
                REPLAY => c.replay = Some(f.payload),
                _ => c.lost.push(f),
            }
        }
        c
    }

    /// Reads until `done` holds for the frames delivered to listeners so far.
    fn wait_until(&mut self, timeout: Duration, done: impl Fn(&[RawFrame]) -> bool) {
        let end = Instant::now() + timeout;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            for f in split_frames(&mut self.buf) {
                if f.kind == REPLAY && self.replay.is_none() {
                    self.replay = Some(f.payload.clone());
                }
                self.events.push(f);
            }
            if done(&self.events) {
                return;
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out; events {:?}, lost {:?}",
                self.events,
                self.lost
            );
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("connection closed; events {:?}", self.events),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads until a delivered frame satisfies `pick`; returns it.
    fn wait_for(&mut self, timeout: Duration, pick: impl Fn(&RawFrame) -> bool) -> RawFrame {
        self.wait_until(timeout, |ev| ev.iter().any(&pick));
        self.events.iter().find(|f| pick(f)).cloned().unwrap()
    }

    fn output(&mut self, needle: &str) {
        let needle = needle.to_string();
        self.wait_for(T, |f| {
            f.kind == DATA && String::from_utf8_lossy(&f.payload).contains(&needle)
        });
    }

    /// Waits for the EXIT the session's listener gets; fails if codev would
    /// have lost it in the first read.
    fn exit(&mut self) -> String {
        assert!(
            !self.lost.iter().any(|f| f.kind == EXIT),
            "EXIT arrived in the same read as WELCOME: codev loses it ({:?})",
            self.lost
        );
        let f = self.wait_for(T, |f| f.kind == EXIT);
        String::from_utf8(f.payload).unwrap()
    }

    /// The screen: REPLAY, or later DATA.
    fn output_contains(&mut self, needle: &str) {
        let replay = self.replay.clone().unwrap_or_default();
        if !String::from_utf8_lossy(&replay).contains(needle) {
            self.output(needle);
        }
    }

    fn send(&mut self, kind: u8, payload: &[u8]) {
        self.stream.write_all(&frame(kind, payload)).unwrap();
    }

    fn spawn(&mut self, guard: &LeakGuard, command: &str, args: &[&str]) {
        let (k, v) = guard.env_pair();
        let msg = serde_json::json!({
            "command": command, "args": args, "cwd": "/tmp",
            "env": { k: v, "PATH": "/usr/bin:/bin" },
        });
        self.send(0x0A, msg.to_string().as_bytes());
    }
}

fn wait_child_exited(s: &Session) {
    // The Tower connects only after the child has exited: codev's harness
    // may die before the Tower says HELLO.
    let end = Instant::now() + T;
    while !s.log().contains("PTY exited") {
        assert!(
            Instant::now() < end,
            "child never exited; log:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Items 1–4 and 6: a child that exits before the Tower connects leaves a
/// husk that answers HELLO with WELCOME, REPLAY and, in a later read, the
/// EXIT in node-pty's shape; the Tower disconnects and reconnects (a Tower
/// restart), collects the EXIT again and restarts the child in place.
#[test]
fn codev_husk_lingers_replays_its_exit_in_a_later_read_and_restarts_in_place() {
    for launch in launches() {
        let guard = LeakGuard::new("codev_dropin_husk");
        let mut s = Session::create(
            &guard,
            &launch,
            "/bin/sh",
            &["-c", "echo early-out; exit 3"],
            &[],
        );
        wait_child_exited(&s);
        assert!(
            alive(s.pid),
            "{launch:?}: the husk lingers; log:\n{}",
            s.log()
        );

        let mut tower = CodevClient::connect(&s.socket);
        assert_eq!(tower.welcome["version"], 1);
        assert_eq!(tower.welcome["alwaysSendsReplay"], true);
        let replay =
            String::from_utf8_lossy(tower.replay.as_deref().unwrap_or_default()).into_owned();
        assert!(
            replay.contains("early-out"),
            "{launch:?}: REPLAY {replay:?}"
        );
        assert_eq!(tower.exit(), r#"{"code":3,"signal":"0"}"#, "{launch:?}");

        // Tower restart: disconnect; the husk waits (window), a new Tower
        // reconnects and collects the EXIT again.
        drop(tower);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            alive(s.pid),
            "{launch:?}: a lapsed husk waits for its window"
        );
        let mut tower = CodevClient::connect(&s.socket);
        assert_eq!(tower.exit(), r#"{"code":3,"signal":"0"}"#, "{launch:?}");

        // Restart in place (auto-restart): SPAWN to the husk.
        tower.spawn(
            &guard,
            "/bin/sh",
            &["-c", "echo respawned-$((40+2)); exec sleep 30"],
        );
        tower.output("respawned-42");
        // A later Tower sees the new child, no stale EXIT.
        drop(tower);
        let mut t3 = CodevClient::connect(&s.socket);
        t3.output_contains("respawned-42");
        assert!(t3.welcome["pid"].as_i64().unwrap() > 0);
        assert!(t3.lost.iter().all(|f| f.kind != EXIT));

        let log = s.log();
        for line in [
            "Shellper started",
            "Socket listening",
            "PTY exited: code=3, signal=0",
        ] {
            assert!(log.contains(line), "{launch:?}: log lacks {line:?}:\n{log}");
        }
        drop(t3);
        let st = s.kill();
        assert_eq!(st.code(), Some(0), "{launch:?}");
        guard.finish();
    }
}

/// A child that exits right after the Tower connected (a keystroke from a
/// terminal client ends it) while the Tower has not read yet: its EXIT
/// must not share the Tower's first read with WELCOME (codev would lose
/// it: its exit listener is attached after `connect()` resolves). It used
/// to be there every time; every EXIT now waits until WELCOME and REPLAY
/// have been read.
#[test]
fn codev_exit_right_after_connect_is_never_in_the_first_read() {
    for launch in launches() {
        let guard = LeakGuard::new("codev_dropin_exit_race");
        let mut s = Session::create(
            &guard,
            &launch,
            "/bin/sh",
            &["-c", "read x; echo bye-$x; exit 7"],
            &[],
        );
        let tower = CodevClient::hello(&s.socket);
        // The shellper has answered (WELCOME, REPLAY written, unread).
        std::thread::sleep(Duration::from_millis(200));
        let mut term = UnixStream::connect(&s.socket).unwrap();
        term.write_all(&frame(0x08, br#"{"version":1,"clientType":"terminal"}"#))
            .unwrap();
        term.write_all(&frame(DATA, b"now\n")).unwrap();
        let end = Instant::now() + T;
        while !s.log().contains("PTY exited") {
            assert!(
                Instant::now() < end,
                "{launch:?}: child never exited:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        // Node's event loop gets to the socket only now.
        let mut tower = CodevClient::first_read(tower);
        assert_eq!(tower.exit(), r#"{"code":7,"signal":"0"}"#, "{launch:?}");
        drop(term);
        drop(tower);
        let st = s.kill();
        assert_eq!(st.code(), Some(0), "{launch:?}");
        guard.finish();
    }
}

/// codev reads the session log as soon as stdout closes: its first three
/// lines are there before the info line is written. Several launches, as
/// the race was lost now and then.
#[test]
fn codev_startup_lines_are_in_the_log_before_the_info_line() {
    for launch in launches() {
        for _ in 0..5 {
            let guard = LeakGuard::new("codev_dropin_log_order");
            let mut s = Session::create(&guard, &launch, "/bin/sh", &["-c", "exec sleep 30"], &[]);
            for line in ["Shellper started", "PTY spawned", "Socket listening"] {
                assert!(
                    s.log_at_info.contains(line),
                    "{launch:?}: {line:?} not in the log when stdout closed:\n{}",
                    s.log_at_info
                );
            }
            s.kill();
            guard.finish();
        }
    }
}

/// Under codev's Tower the session log tells each connection, as codev's
/// shellper does: accepted, HELLO with the client type, WELCOME, closed.
/// A status reader (leasectl) is not logged at the default level.
#[test]
fn codev_connections_are_logged() {
    for launch in launches() {
        let guard = LeakGuard::new("codev_dropin_conn_log");
        let mut s = Session::create(&guard, &launch, "/bin/sh", &["-c", "exec sleep 30"], &[]);
        let tower = CodevClient::connect(&s.socket);
        drop(tower);
        let mut status = UnixStream::connect(&s.socket).unwrap();
        status
            .write_all(&frame(0x08, br#"{"version":1,"clientType":"status"}"#))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(status);
        let end = Instant::now() + T;
        let wanted = [
            "Connection accepted",
            "HELLO: version=1, clientType=tower",
            "WELCOME sent: pid=",
            "Connection 1 closed",
        ];
        while !wanted.iter().all(|w| s.log().contains(w)) {
            assert!(
                Instant::now() < end,
                "{launch:?}: log lacks {wanted:?}:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let log = s.log();
        assert!(
            !log.contains("clientType=status"),
            "{launch:?}: status readers stay quiet:\n{log}"
        );
        s.kill();
        guard.finish();
    }
}

/// Item 5: a command that does not exist. The shellper starts, prints its
/// info line (createSession succeeds), reports EXIT code 1 and logs why;
/// the Tower's restart path can then SPAWN something that works.
#[test]
fn codev_command_not_found_starts_and_reports_exit_code_1() {
    for launch in launches() {
        let guard = LeakGuard::new("codev_dropin_enoent");
        let mut s = Session::create(&guard, &launch, "/nonexistent/codev-harness", &["--x"], &[]);
        assert!(alive(s.pid));
        let mut tower = CodevClient::connect(&s.socket);
        assert_eq!(tower.welcome["pid"], -1, "{launch:?}: no child ever ran");
        assert_eq!(tower.exit(), r#"{"code":1,"signal":"0"}"#, "{launch:?}");
        let replay =
            String::from_utf8_lossy(tower.replay.as_deref().unwrap_or_default()).into_owned();
        assert!(
            replay.contains("/nonexistent/codev-harness"),
            "{launch:?}: the terminal shows why: {replay:?}"
        );
        let log = s.log();
        assert!(
            log.contains("cannot start") && log.contains("/nonexistent/codev-harness"),
            "{launch:?}: the exec error is logged:\n{log}"
        );
        // SPAWN of a missing command: a fresh EXIT code 1 (codev counts it
        // as a failing exit), then a good command runs.
        tower.spawn(&guard, "/nonexistent/again", &[]);
        tower.wait_until(T, |ev| ev.iter().filter(|f| f.kind == EXIT).count() >= 2);
        let second = tower
            .events
            .iter()
            .filter(|f| f.kind == EXIT)
            .nth(1)
            .unwrap();
        assert_eq!(second.payload, br#"{"code":1,"signal":"0"}"#);
        tower.spawn(&guard, "/bin/sh", &["-c", "echo works; exec sleep 30"]);
        tower.output("works");
        drop(tower);
        assert_eq!(s.kill().code(), Some(0), "{launch:?}");
        guard.finish();
    }
}

/// Item 7: the operator sets the legacy window and claim deadline through
/// the Tower's environment, which the shellper inherits.
#[test]
fn codev_legacy_window_and_claim_from_the_towers_environment() {
    for launch in launches() {
        let guard = LeakGuard::new("codev_dropin_window");
        let env = [
            ("SHELLPER_LEGACY_WINDOW", "1500ms"),
            ("SHELLPER_LEGACY_CLAIM", "20s"),
        ];
        let mut s = Session::create(&guard, &launch, "/bin/sh", &["-c", "exec sleep 60"], &env);
        let tower = CodevClient::connect(&s.socket);
        drop(tower);
        let t0 = Instant::now();
        let st = s.wait_exit(Duration::from_secs(10));
        let took = t0.elapsed();
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(11),
            "{launch:?}: window expired; log:\n{}",
            s.log()
        );
        assert!(
            took >= Duration::from_millis(1400),
            "{launch:?}: not before the window: {took:?}"
        );
        assert!(took < Duration::from_secs(8), "{launch:?}: {took:?}");
        guard.finish();

        // A typo is a loud configuration error, not a silent default.
        let guard = LeakGuard::new("codev_dropin_window_bad");
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("shellper-bad.sock");
        let out = match &launch {
            Launch::Direct => Command::new(cargo_bin("shellper"))
                .arg(config(&guard, &socket, "/bin/true", &[]))
                .env("SHELLPER_LEGACY_WINDOW", "ten minutes")
                .output()
                .unwrap(),
            Launch::Shim(node) => Command::new(node)
                .arg(shim_path())
                .arg(config(&guard, &socket, "/bin/true", &[]))
                .env("SHELLPER_BIN", cargo_bin("shellper"))
                .env("SHELLPER_LEGACY_WINDOW", "ten minutes")
                .output()
                .unwrap(),
        };
        assert_eq!(out.status.code(), Some(2), "{launch:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("SHELLPER_LEGACY_WINDOW"));
        guard.finish();
    }
}

/// Items 8–9: the whole session lifecycle through the Node shim, as codev
/// drives it: create, DATA both ways, RESIZE, a Tower restart with REPLAY,
/// SIGNAL, kill. The process keeps "shellper-main.js" and the socket
/// directory in its argv (codev's `ps` sweep finds it) and is our binary.
#[test]
fn codev_session_lifecycle_through_the_node_shim() {
    let Some(node) = node_with_execve() else {
        return;
    };
    let launch = Launch::Shim(node);
    let guard = LeakGuard::new("codev_dropin_shim");
    let mut s = Session::create(&guard, &launch, "/bin/sh", &[], &[]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.pid)).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        argv.iter().any(|a| a.ends_with("shellper-main.js")),
        "{argv:?}"
    );
    let scope_marker = format!("{}/", s.socket.parent().unwrap().display());
    assert!(argv.last().unwrap().contains(&scope_marker), "{argv:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid)).unwrap();
    assert_eq!(
        exe.canonicalize().unwrap(),
        cargo_bin("shellper").canonicalize().unwrap(),
        "the node process became the shellper"
    );

    let mut tower = CodevClient::connect(&s.socket);
    let child_pid = tower.welcome["pid"].as_i64().unwrap();
    assert!(child_pid > 0);
    tower.send(DATA, b"echo life$((6*7))cycle\n");
    tower.output("life42cycle");
    tower.send(0x02, br#"{"cols":120,"rows":40}"#);
    tower.send(DATA, b"stty size\n");
    tower.output("40 120");
    // Tower restart: the session survives, REPLAY restores the screen.
    drop(tower);
    std::thread::sleep(Duration::from_millis(300));
    let mut tower = CodevClient::connect(&s.socket);
    assert_eq!(tower.welcome["pid"].as_i64().unwrap(), child_pid);
    tower.output_contains("life42cycle");
    // SIGNAL (the Tower's kill of the child): EXIT codev-style.
    tower.send(0x03, br#"{"signal":9}"#);
    assert_eq!(tower.exit(), r#"{"code":0,"signal":"9"}"#);
    // killSession.
    assert_eq!(s.kill().code(), Some(0));
    guard.finish();
}

/// Item 9: codev removes `<id>.sock` and `<id>.log` with a session but
/// knows nothing of the rotated `<id>.log.1`; the shellper removes it when
/// it exits, so rotated logs do not pile up in codev's socket directory.
#[test]
fn codev_rotated_log_is_removed_when_the_shellper_exits() {
    let guard = LeakGuard::new("codev_dropin_log1");
    let dir = tempfile::tempdir().unwrap();
    let rotated = dir.path().join("shellper-s1.log.1");
    std::fs::write(&rotated, "older log lines\n").unwrap();
    let mut s = Session::create_in(
        dir,
        &guard,
        &Launch::Direct,
        "/bin/sh",
        &["-c", "exec sleep 30"],
        &[],
    );
    assert!(rotated.exists());
    let log = s.log.clone();
    assert_eq!(s.kill().code(), Some(0));
    assert!(!rotated.exists(), "the rotated log is removed on exit");
    assert!(
        log.exists(),
        "the live log stays for post-mortem (codev removes it)"
    );
    guard.finish();
}
