//! Hostile input (scenario 10) and output flood (scenario 11): the lease,
//! the child and the other clients are unaffected.

mod common;

use std::io::Read;
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use shellper_protocol::msg::*;
use shellper_protocol::{Frame, Token};
use shellper_testkit::LeakGuard;

const T: Duration = Duration::from_secs(5);

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn header(ty: u8, len: u32) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn raw_frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = header(ty, payload.len() as u32);
    v.extend_from_slice(payload);
    v
}

fn hello_bytes() -> Vec<u8> {
    Frame::Hello(Hello::v1(ClientType::Terminal))
        .to_bytes()
        .expect("encode")
        .to_vec()
}

/// Sends `bytes` on a fresh connection (after HELLO if `after_hello`) and
/// expects an ERROR with `code` followed by the connection closing.
fn expect_closed_with_error(
    sh: &Shellper,
    what: &str,
    after_hello: bool,
    bytes: &[u8],
    half_close: bool,
) {
    let mut c = sh.connect();
    if after_hello {
        c.hello(ClientType::Terminal, true, false, false);
    }
    c.send_raw(bytes).expect("send");
    if half_close {
        c.stream.shutdown(Shutdown::Write).expect("shutdown");
    }
    let (closed, errors) = c.closed_within(T);
    assert!(closed, "{what}: connection not closed");
    assert!(
        errors.iter().any(|e| e.code == ErrorCode::Protocol),
        "{what}: no protocol ERROR: {errors:?}"
    );
}

#[test]
fn s10_hostile_input_closes_only_the_offending_connection() {
    let guard = LeakGuard::new("s10");
    let mut sh = Shellper::start_codev(
        &guard,
        "/bin/sh",
        &["-c", "while read l; do echo got-$l; done"],
        Some(FAST),
        serde_json::json!({}),
    );
    let (holder, g) = sh.holder();
    let renewer = Renewer::start(holder, g.epoch, ms(FAST.ttl / 3));
    let renewing_since = Instant::now();
    let mut term = sh.connect();
    term.hello(ClientType::Terminal, true, true, true);

    // Garbage (an HTTP request: type 'G', absurd length).
    expect_closed_with_error(
        &sh,
        "garbage",
        false,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
    );
    // A huge length header, before and after HELLO.
    expect_closed_with_error(&sh, "huge length", false, &header(0x01, u32::MAX), false);
    expect_closed_with_error(
        &sh,
        "huge DATA after hello",
        true,
        &header(0x01, u32::MAX),
        false,
    );
    expect_closed_with_error(&sh, "huge RENEW", true, &header(0x22, 1 << 20), false);
    // A truncated frame, then EOF.
    let mut trunc = header(0x08, 100);
    trunc.extend_from_slice(b"{\"version\"");
    expect_closed_with_error(&sh, "truncated", false, &trunc, true);
    // Undecodable payloads (JSON and postcard).
    expect_closed_with_error(
        &sh,
        "bad HELLO",
        false,
        &raw_frame(0x08, b"not json"),
        false,
    );
    expect_closed_with_error(
        &sh,
        "bad RENEW",
        true,
        &raw_frame(0x22, &[0xff, 0xff, 0xff]),
        false,
    );
    expect_closed_with_error(
        &sh,
        "bad RESIZE",
        true,
        &raw_frame(0x02, b"{\"cols\":-1}"),
        false,
    );
    // Trailing bytes (JSON and postcard).
    expect_closed_with_error(
        &sh,
        "trailing JSON",
        true,
        &raw_frame(0x08, b"{\"version\":1} x"),
        false,
    );
    let mut renew = Frame::Renew(Renew { epoch: 1, seq: 1 })
        .encode_payload()
        .expect("encode")
        .to_vec();
    renew.push(0);
    expect_closed_with_error(
        &sh,
        "trailing postcard",
        true,
        &raw_frame(0x22, &renew),
        false,
    );

    // Unknown types are ignored; the connection stays usable.
    let mut u = sh.connect();
    u.send_raw(&raw_frame(0x7e, b"future")).expect("send");
    u.hello(ClientType::Terminal, true, false, false);
    u.send_raw(&raw_frame(0x99, &[0; 1000])).expect("send");
    u.send(&Frame::Ping);
    assert!(
        u.recv_until(T, |f| matches!(f, Frame::Pong).then_some(()))
            .is_ok()
    );

    // A client that never finishes its handshake is closed after the
    // handshake timeout (800 ms in these tests).
    let mut silent = sh.connect();
    let t0 = Instant::now();
    let (closed, errors) = silent.closed_within(T);
    assert!(closed && t0.elapsed() >= ms(700), "{:?}", t0.elapsed());
    assert!(errors.iter().any(|e| e.code == ErrorCode::Protocol));

    // Wrong token and stale epoch: answered with ERROR, connection kept.
    let mut intruder = sh.connect();
    intruder.hello(ClientType::Tower, true, false, false);
    let e = intruder.acquire(&Token([1; 32])).expect_err("wrong token");
    assert_eq!(e.code, ErrorCode::BadToken);
    let e = intruder.renew(0, 1).expect_err("stale epoch");
    assert_eq!(e.code, ErrorCode::StaleEpoch);
    let e = intruder.renew(g.epoch, 1).expect_err("not holder");
    assert_eq!(e.code, ErrorCode::NotHolder);
    intruder.send(&Frame::Signal(SignalMsg { signal: 9 }));
    intruder.send(&Frame::Signal(SignalMsg { signal: 19 }));
    intruder.send(&Frame::Ping);
    assert!(
        intruder
            .recv_until(T, |f| matches!(f, Frame::Pong).then_some(()))
            .is_ok()
    );

    // Hundreds of idle connections: the lease and status still work.
    let idle: Vec<Client> = (0..200).map(|_| sh.connect()).collect();
    let st = sh.status();
    assert_eq!(st.phase, WirePhase::Held);
    term.data("alive\n");
    term.wait_output("got-alive", T);
    drop(idle);

    // Another uid is refused at once (needs root to act as another user).
    if rustix::process::geteuid().is_root() {
        other_uid_is_refused(&sh);
    }

    // Everything is as before: same epoch, holder renewing, child running.
    std::thread::sleep(ms(FAST.ttl));
    let st = sh.status();
    assert_eq!(st.phase, WirePhase::Held);
    assert_eq!(st.epoch, g.epoch);
    assert!(matches!(st.child, ChildState::Running));
    assert_eq!(st.counters.lapses, 0);
    assert!(st.counters.rejected_tokens >= 1);
    assert!(st.counters.stale_epochs >= 1);
    assert!(st.counters.protocol_errors >= 10, "{:?}", st.counters);
    assert!(renewer.errors().is_empty(), "{:?}", renewer.errors());
    // Renewals went on all along (at least half of those due).
    let due = renewing_since.elapsed().as_millis() as u64 / (FAST.ttl / 3);
    let ok = renewer.ok.load(std::sync::atomic::Ordering::SeqCst);
    assert!(ok >= due / 2 && ok >= 3, "renewals {ok} of {due}");
    term.data("still\n");
    term.wait_output("got-still", T);
    drop(renewer.finish());
    assert_eq!(
        code(sh.wait_exit(ms(FAST.window + FAST.grace + 1500))),
        Some(11)
    );
    guard.finish();
}

fn other_uid_is_refused(sh: &Shellper) {
    let open = std::fs::Permissions::from_mode(0o777);
    let dirs = [
        sh.dir.path().to_path_buf(),
        sh.socket.parent().expect("dir").to_path_buf(),
    ];
    for d in &dirs {
        std::fs::set_permissions(d, open.clone()).expect("chmod");
    }
    std::fs::set_permissions(&sh.socket, open).expect("chmod socket");
    let script = format!(
        "import os,socket\nos.setgid(65534)\nos.setuid(65534)\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ntry:\n  s.sendall(bytes.fromhex({:?}))\n  s.settimeout(5)\n  print(len(s.recv(100)))\nexcept (ConnectionResetError, BrokenPipeError):\n  print(0)\n",
        sh.socket.display().to_string(),
        hex(&hello_bytes()),
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "closed, no WELCOME"
    );
    let close = std::fs::Permissions::from_mode(0o700);
    for d in &dirs {
        std::fs::set_permissions(d, close.clone()).expect("chmod");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn s11_output_flood_with_a_slow_reader_does_not_lapse_and_memory_stays_bounded() {
    let guard = LeakGuard::new("s11");
    let mut sh = Shellper::start_codev(
        &guard,
        "/bin/sh",
        &[
            "-c",
            "exec yes flood-flood-flood-flood-flood-flood-flood-flood",
        ],
        Some(FAST),
        serde_json::json!({}),
    );
    let (holder, g) = sh.holder();
    let renewer = Renewer::start(holder, g.epoch, ms(FAST.ttl / 3));
    // A slow terminal: reads 4 KiB every 20 ms.
    let mut slow = sh.connect();
    slow.hello(ClientType::Terminal, true, true, true);
    let flood = ms(3000);
    let before = renewer.ok.load(std::sync::atomic::Ordering::SeqCst);
    let end = Instant::now() + flood;
    let mut buf = [0u8; 4096];
    let mut read = 0usize;
    slow.stream
        .set_read_timeout(Some(ms(100)))
        .expect("timeout");
    while Instant::now() < end {
        if let Ok(n) = slow.stream.read(&mut buf) {
            read += n;
        }
        std::thread::sleep(ms(20));
    }
    assert!(read > 0);
    let st = sh.status();
    assert_eq!(st.phase, WirePhase::Held);
    assert_eq!(st.counters.lapses, 0, "{:?}", st.counters);
    assert!(renewer.errors().is_empty(), "{:?}", renewer.errors());
    // At least two thirds of the renewals due during the flood got through.
    let renewals = renewer.ok.load(std::sync::atomic::Ordering::SeqCst) - before;
    let due = flood.as_millis() as u64 / (FAST.ttl / 3);
    assert!(
        renewals >= due * 2 / 3,
        "renewals got through the flood: {renewals} of {due}"
    );
    // Replay 8 MiB + per-client queue 1 MiB + runtime: far below 64 MiB.
    let hwm = vm_hwm_kib(sh.pid);
    assert!(hwm > 0 && hwm < 64 * 1024, "VmHWM {hwm} KiB");
    // A fast reader still gets current output.
    let mut fast = sh.connect();
    fast.hello(ClientType::Terminal, true, false, true);
    fast.wait_output("flood", T);
    // Input gets through the flood too: ^C ends `yes`.
    fast.send(&Frame::Data(Bytes::from_static(b"\x03")));
    let exit = fast
        .recv_until(T, |f| match f {
            Frame::Exit(e) => Some(e.clone()),
            _ => None,
        })
        .expect("EXIT after ^C");
    assert_eq!(exit.signal.as_deref(), Some("2"));
    drop(renewer.finish());
    drop(slow);
    // Holder gone with the child dead: the husk ends after its window (11).
    assert_eq!(
        code(sh.wait_exit(ms(FAST.window + FAST.grace + 2500))),
        Some(11)
    );
    guard.finish();
}
