//! The control socket of a running minitower, spoken to as a second
//! implementation would: raw JSON lines on a Unix socket, nothing from
//! tower-client's client code. Spawn, list and terminate work end to end;
//! hostile or oversized requests get a clear error and change nothing;
//! secrets in a session's environment reach neither argv nor a log.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shellper_testkit::minitower::MiniTower;
use shellper_testkit::{LEAK_TAG_VAR, LeakGuard, proc_alive, wait_for};

const EVENT_WAIT: Duration = Duration::from_secs(20);

struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// The next response line, or None at EOF.
    fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                assert!(line.ends_with('\n'), "response not a whole line: {line:?}");
                Some(serde_json::from_str(&line).unwrap())
            }
            Err(e) => panic!("reading a response: {e}"),
        }
    }

    /// True when the server closed the connection: EOF, or a reset (it
    /// closed with bytes of ours unread).
    fn closed(&mut self) -> bool {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    fn ask(&mut self, req: &Value) -> Value {
        self.send_raw(format!("{req}\n").as_bytes());
        self.recv().expect("a response")
    }
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["ok"], false, "expected a refusal: {v}");
    assert_eq!(v["v"], 1, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a refusal says why: {v}"
    );
    v["error"]["code"].as_str().unwrap()
}

fn start(guard: &LeakGuard, scope: &Path) -> MiniTower {
    let mut t = MiniTower::start(
        guard,
        scope,
        &["--ttl", "1s", "--window", "6s", "--kill-grace", "300ms"],
    );
    t.event("ready", EVENT_WAIT);
    t
}

fn ctl(scope: &Path) -> PathBuf {
    scope.join("tower.ctl")
}

fn spawn_req(guard: &LeakGuard, script: &str, extra_env: &[(&str, &str)]) -> Value {
    let mut env = serde_json::Map::new();
    env.insert(LEAK_TAG_VAR.into(), guard.tag().into());
    env.insert("PATH".into(), "/usr/bin:/bin".into());
    for (k, v) in extra_env {
        env.insert((*k).into(), (*v).into());
    }
    json!({"v":1,"op":"spawn","command":"/bin/sh","args":["-c",script],"env":env,"cols":100,"rows":30})
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[test]
fn control_spawn_list_terminate_and_secrets_stay_out_of_argv_and_logs() {
    let guard = LeakGuard::new("control_spawn");
    let dir = tempfile::tempdir().unwrap();
    let scope = dir.path().join("scope");
    let mut t = start(&guard, &scope);
    let sock = ctl(&scope);
    let mode = std::fs::symlink_metadata(&sock)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    let secret = format!("s3cr3t-{:016x}", rand_u64());
    let mut c = Client::connect(&sock);
    let r = c.ask(&spawn_req(
        &guard,
        "echo started; exec sleep 1000",
        &[("API_TOKEN", &secret)],
    ));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["op"], "spawn");
    assert_eq!(r["tower"]["pid"], t.pid());
    let sp = &r["spawned"];
    assert_eq!(sp["event"], "spawned");
    let id = sp["id"].as_str().unwrap().to_string();
    let pid = sp["pid"].as_u64().unwrap() as i32;
    let child = sp["child_pid"].as_u64().unwrap() as i32;
    assert!(sp["epoch"].as_u64().unwrap() >= 1);
    // minitower reports it like its own spawns.
    let ev = t.wait_for(EVENT_WAIT, |v| {
        v["event"] == "spawned" && v["id"] == id.as_str()
    });
    assert_eq!(ev["via"], "control");

    // The session got exactly the environment asked for (not minitower's:
    // RUST_LOG is set on minitower by the test kit), the secret included;
    // and the secret is in no argv.
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(vars.contains(&format!("API_TOKEN={secret}").as_bytes()));
    assert!(
        !vars.iter().any(|v| v.starts_with(b"RUST_LOG=")),
        "minitower's env leaked"
    );
    for p in [pid, child, t.pid()] {
        let argv = read_lossy(Path::new(&format!("/proc/{p}/cmdline")));
        assert!(!argv.contains(&secret), "secret in argv of {p}: {argv:?}");
    }

    let r = c.ask(&json!({"v":1,"op":"list"}));
    assert_eq!(r["ok"], true, "{r}");
    let sessions = r["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{r}");
    assert_eq!(sessions[0]["id"], id.as_str());
    assert_eq!(sessions[0]["state"], "held");
    assert_eq!(sessions[0]["command"], "/bin/sh");

    let started = Instant::now();
    let r = c.ask(&json!({"v":1,"op":"terminate","id":id}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["terminated"]["survivors"], 0, "{r}");
    assert!(r["terminated"]["signalled"].as_u64().unwrap() >= 1, "{r}");
    // Confirmed means gone when the answer comes.
    assert!(
        !proc_alive(child),
        "child alive after a confirmed terminate"
    );
    assert!(
        wait_for(Duration::from_secs(2), || !proc_alive(pid)),
        "shellper alive after a confirmed terminate"
    );
    eprintln!("terminate answered in {:?}", started.elapsed());
    t.wait_for(EVENT_WAIT, |v| {
        v["event"] == "terminated" && v["id"] == id.as_str()
    });
    let r = c.ask(&json!({"v":1,"op":"list"}));
    assert_eq!(r["sessions"], json!([]), "{r}");
    drop(c);

    t.signal(libc::SIGTERM);
    assert!(t.wait_exit(EVENT_WAIT).success(), "{}", t.stderr());
    assert!(!sock.exists(), "control socket left behind");
    let printed: String = t.seen.iter().map(|v| v.to_string()).collect();
    assert!(!printed.contains(&secret), "secret on minitower's stdout");
    assert!(
        !t.stderr().contains(&secret),
        "secret on minitower's stderr"
    );
    for e in std::fs::read_dir(&scope).unwrap().flatten() {
        let text = read_lossy(&e.path());
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !text.contains(&secret) || name == "registry.json",
            "secret in scope file {name}"
        );
    }
    assert!(
        !read_lossy(&scope.join("registry.json")).contains(&secret),
        "secret in the registry"
    );
    guard.finish();
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u64::from_ne_bytes(b)
}

#[test]
fn s10_hostile_control_requests_get_clear_errors_and_change_nothing() {
    let guard = LeakGuard::new("control_hostile");
    let dir = tempfile::tempdir().unwrap();
    let scope = dir.path().join("scope");
    let mut t = start(&guard, &scope);
    let sock = ctl(&scope);
    let mut c = Client::connect(&sock);
    let r = c.ask(&spawn_req(&guard, "exec sleep 1000", &[]));
    assert_eq!(r["ok"], true, "{r}");
    let id = r["spawned"]["id"].as_str().unwrap().to_string();
    let epoch = r["spawned"]["epoch"].clone();
    let child = r["spawned"]["child_pid"].as_u64().unwrap() as i32;
    let registry = std::fs::read(scope.join("registry.json")).unwrap();
    let procs = guard.wait_steady(3, Duration::from_secs(10));

    // Silent clients hold slots until the request timeout, no longer: the
    // slot limit answers `busy` meanwhile. Fifteen more fill the 16.
    let mut idle: Vec<Client> = (0..15).map(|_| Client::connect(&sock)).collect();
    let mut extra = Client::connect(&sock);
    assert_eq!(error_code(&extra.recv().unwrap()), "busy");
    assert!(extra.closed(), "busy closes the connection");
    let idle_since = Instant::now();

    // One complete line at a time: an error leaves the connection usable.
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (b"hello\n".to_vec(), "bad_json"),
        (b"[1,2]\n".to_vec(), "bad_json"),
        (b"{\"v\":1,\"op\":\"list\"} trailing\n".to_vec(), "bad_json"),
        (b"\xff\xfe{}\n".to_vec(), "bad_json"),
        (b"\n".to_vec(), "bad_json"),
        (format!("{}\n", "[".repeat(100_000)).into_bytes(), "bad_json"),
        (b"{\"op\":\"list\"}\n".to_vec(), "unsupported_version"),
        (b"{\"v\":2,\"op\":\"list\"}\n".to_vec(), "unsupported_version"),
        (b"{\"v\":1}\n".to_vec(), "unknown_op"),
        (b"{\"v\":1,\"op\":\"shutdown\"}\n".to_vec(), "unknown_op"),
        (b"{\"v\":1,\"op\":\"list\",\"all\":true}\n".to_vec(), "bad_request"),
        (b"{\"v\":1,\"op\":\"spawn\"}\n".to_vec(), "bad_request"),
        (b"{\"v\":1,\"op\":\"spawn\",\"command\":\"\"}\n".to_vec(), "bad_request"),
        (b"{\"v\":1,\"op\":\"spawn\",\"command\":\"sh\",\"cwd\":\"rel\"}\n".to_vec(), "bad_request"),
        (b"{\"v\":1,\"op\":\"spawn\",\"command\":\"sh\",\"cwd\":\"/nonexistent/x\"}\n".to_vec(), "bad_request"),
        (b"{\"v\":1,\"op\":\"spawn\",\"command\":\"sh\",\"cols\":70000}\n".to_vec(), "bad_request"),
        (b"{\"v\":1,\"op\":\"spawn\",\"command\":\"sh\",\"env\":{\"A=B\":\"x\"}}\n".to_vec(), "bad_request"),
        (b"{\"v\":1,\"op\":\"spawn\",\"command\":\"sh\",\"lease\":{\"window_ms\":999999999999}}\n".to_vec(), "limit"),
        (b"{\"v\":1,\"op\":\"spawn\",\"command\":\"sh\",\"lease\":{\"ttl_ms\":10}}\n".to_vec(), "limit"),
        (b"{\"v\":1,\"op\":\"spawn\",\"command\":\"sh\",\"lease\":{\"ttl_ms\":5000,\"window_ms\":1000}}\n".to_vec(), "bad_request"),
        (b"{\"v\":1,\"op\":\"terminate\",\"id\":\"sh-00000000\"}\n".to_vec(), "not_held"),
        (b"{\"v\":1,\"op\":\"terminate\",\"id\":\"../../etc\"}\n".to_vec(), "not_held"),
        (format!("{{\"v\":1,\"op\":\"terminate\",\"id\":\"{id}\",\"timeout_ms\":0}}\n").into_bytes(), "limit"),
    ];
    for (line, want) in cases.drain(..) {
        c.send_raw(&line);
        let r = c.recv().expect("an answer, connection kept");
        assert_eq!(
            error_code(&r),
            want,
            "{:?} → {r}",
            String::from_utf8_lossy(&line[..line.len().min(80)])
        );
    }

    // Oversized: refused, and the connection closed (no line boundary to
    // resume from).
    // Free a slot for it: one idle client leaves.
    drop(idle.pop());
    let mut big = None;
    for _ in 0..50 {
        let mut b = Client::connect(&sock);
        // A refusal comes at once; a served connection says nothing yet.
        b.w.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match b.r.fill_buf().map(|buf| buf.len()) {
            Ok(_) => {
                assert_eq!(error_code(&b.recv().unwrap()), "busy");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => {
                b.w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                big = Some(b);
                break;
            }
        }
    }
    let mut big = big.expect("a slot came free when an idle client left");
    big.send_raw(&vec![b'a'; 300 * 1024]);
    let r = big.recv().unwrap();
    assert_eq!(error_code(&r), "too_large", "{r}");
    assert!(big.closed(), "closed after too_large");
    drop(big);

    // The idle ones are told they timed out, then closed; not before the
    // request timeout (10 s), not much after.
    let r = idle[0].recv().unwrap();
    assert_eq!(error_code(&r), "timeout");
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_secs(8) && waited <= Duration::from_secs(25),
        "timeout after {waited:?}, not about 10 s"
    );
    assert!(idle[0].closed());
    idle.clear();

    // Nothing changed: same session, same epoch, same child, same registry,
    // same processes, and the Tower still answers.
    let r = c.ask(&json!({"v":1,"op":"list"}));
    let s = r["sessions"].as_array().unwrap();
    assert_eq!(s.len(), 1, "{r}");
    assert_eq!(s[0]["id"], id.as_str());
    assert_eq!(s[0]["epoch"], epoch);
    assert_eq!(s[0]["state"], "held");
    assert!(proc_alive(child));
    assert_eq!(
        std::fs::read(scope.join("registry.json")).unwrap(),
        registry
    );
    assert_eq!(guard.wait_steady(procs, Duration::from_secs(10)), procs);
    let refused = t.of("control_refused").len();
    t.collect_for(Duration::from_millis(300));
    assert!(t.of("control_refused").len() >= refused);
    assert_eq!(t.count("spawned"), 1, "{:#?}", t.seen);

    let r = c.ask(&json!({"v":1,"op":"terminate","id":id}));
    assert_eq!(r["ok"], true, "{r}");
    t.signal(libc::SIGTERM);
    assert!(t.wait_exit(EVENT_WAIT).success(), "{}", t.stderr());
    guard.finish();
}

/// A peer of another uid is refused by its credentials, whatever the
/// file permissions let through (here: a client with CAP_DAC_OVERRIDE,
/// which the scope's 0700 and the socket's 0600 do not stop).
#[test]
fn control_refuses_a_peer_of_another_uid() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    let guard = LeakGuard::new("control_uid");
    let dir = tempfile::tempdir().unwrap();
    let scope = dir.path().join("scope");
    let mut t = start(&guard, &scope);
    let script = format!(
        "import os, socket\n\
         assert os.getuid() == 65534\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.connect({:?})\n\
         print(s.makefile().readline(), end='')\n",
        ctl(&scope).display().to_string()
    );
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=+dac_override", "--ambient-caps=+dac_override"])
        .args(["python3", "-c", &script]);
    guard.apply(&mut c);
    let out = c.output().expect("setpriv (util-linux) and python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error_code(&r), "forbidden");
    t.wait_for(EVENT_WAIT, |v| {
        v["event"] == "control_refused" && v["code"] == "forbidden"
    });
    t.signal(libc::SIGTERM);
    assert!(t.wait_exit(EVENT_WAIT).success(), "{}", t.stderr());
    guard.finish();
}

/// The README's Python example, run as printed (plus the leak guard's tag
/// in its environment): a second implementation in a dozen lines.
#[test]
fn the_readme_python_client_spawns_a_session() {
    let guard = LeakGuard::new("control_python");
    let dir = tempfile::tempdir().unwrap();
    let xdg = dir.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let scope = xdg.join("shellper");
    let mut t = start(&guard, &scope);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start_at = readme
        .find("```python\n")
        .expect("README has a Python example")
        + 10;
    let snippet = &readme[start_at..start_at + readme[start_at..].find("```").unwrap()];
    let env = r#"{"PATH": "/usr/bin:/bin"}"#;
    assert!(snippet.contains(env), "{snippet}");
    let tagged = snippet.replace(
        env,
        &format!(
            r#"{{"PATH": "/usr/bin:/bin", "{LEAK_TAG_VAR}": "{}"}}"#,
            guard.tag()
        ),
    );
    let mut c = Command::new("python3");
    c.args(["-c", &tagged]).env("XDG_RUNTIME_DIR", &xdg);
    guard.apply(&mut c);
    let out = c.output().expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sh-"), "{id:?}");
    t.wait_for(EVENT_WAIT, |v| {
        v["event"] == "spawned" && v["id"] == id.as_str()
    });
    let mut c2 = Client::connect(&ctl(&scope));
    let r = c2.ask(&json!({"v":1,"op":"terminate","id":id}));
    assert_eq!(r["ok"], true, "{r}");
    t.signal(libc::SIGTERM);
    assert!(t.wait_exit(EVENT_WAIT).success(), "{}", t.stderr());
    guard.finish();
}
