//! codev compatibility: the binary driven exactly as codev's unmodified
//! Tower drives its Node shellper (legacy mode, v1 frames only).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use shellper_protocol::Frame;
use shellper_protocol::msg::*;
use shellper_testkit::LeakGuard;

const T: Duration = Duration::from_secs(5);

fn stat_of(pid: i64) -> shellper_proctree::ProcInfo {
    shellper_proctree::read_stat(pid as i32).expect("child exists")
}

#[test]
fn codev_compat_tower_and_terminal_drive_the_legacy_protocol() {
    let guard = LeakGuard::new("codev_compat");
    let mut sh = Shellper::start_codev(&guard, "/bin/sh", &[], None, serde_json::json!({}));
    assert!(sh.start_time > 0);

    // Tower: HELLO (v1, no lease fields) → WELCOME with the child's pid,
    // then REPLAY even though nothing may have been printed yet.
    let mut tower = sh.connect();
    let w = tower.hello_v1(ClientType::Tower);
    assert!(w.always_sends_replay);
    assert_eq!(w.lease, None, "no lease block for a v1 client");
    assert_eq!((w.cols, w.rows), (100, 30));
    let child = stat_of(w.pid);
    assert_eq!(child.ppid, sh.pid as i32, "WELCOME pid is the PTY child");
    assert_eq!(child.sid as i64, w.pid, "child leads its own session");
    assert!(
        matches!(tower.recv(T), Ok(Frame::Replay(_))),
        "REPLAY follows WELCOME"
    );

    // A terminal client beside it.
    let mut term = sh.connect();
    let tw = term.hello_v1(ClientType::Terminal);
    assert_eq!(tw.pid, w.pid);
    assert!(matches!(term.recv(T), Ok(Frame::Replay(_))));

    // DATA both ways; output is broadcast to both clients.
    tower.data("echo comp$((1+1))at\n");
    tower.wait_output("comp2at", T);
    term.wait_output("comp2at", T);

    // RESIZE reaches the PTY.
    tower.send(&Frame::Resize(Resize {
        cols: 120,
        rows: 40,
    }));
    tower.data("stty size\n");
    tower.wait_output("40 120", T);

    // Terminal input works; terminal SIGNAL is refused and harmless.
    term.data("echo fromterm$((2+3))\n");
    tower.wait_output("fromterm5", T);
    term.send(&Frame::Signal(SignalMsg { signal: 9 }));
    let refused = term
        .recv_until(T, |f| match f {
            Frame::Error(e) => Some(e.code),
            _ => None,
        })
        .expect("ERROR for a terminal SIGNAL");
    assert_eq!(refused, ErrorCode::Forbidden);
    assert!(shellper_testkit::proc_alive(w.pid as i32));

    // Tower SIGNAL (allow-listed) → EXIT codev-style: code 0 plus signal.
    tower.send(&Frame::Signal(SignalMsg { signal: 9 }));
    let exit = tower
        .recv_until(T, |f| match f {
            Frame::Exit(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("EXIT: {e:?}\nlog:\n{}", sh.log()));
    assert_eq!(
        exit,
        ExitMsg {
            code: Some(0),
            signal: Some("9".into())
        }
    );
    let texit = term
        .recv_until(T, |f| match f {
            Frame::Exit(e) => Some(e.clone()),
            _ => None,
        })
        .expect("EXIT to terminal");
    assert_eq!(texit, exit);

    // A Tower that connects after the exit: WELCOME, REPLAY, then the EXIT.
    // It replaces the old tower connection, which is closed.
    let mut tower2 = sh.connect();
    let w2 = tower2.hello_v1(ClientType::Tower);
    assert_eq!(w2.pid, w.pid);
    assert!(matches!(tower2.recv(T), Ok(Frame::Replay(_))));
    assert!(matches!(tower2.recv(T), Ok(Frame::Exit(e)) if e == exit));
    assert!(tower.closed_within(T).0, "old tower replaced");
    assert!(sh.alive(), "a husk lives while a tower is connected");

    // SPAWN a new child.
    tower2.send(&Frame::Spawn(Spawn {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), "echo spawned-$((6*7)); exec sleep 30".into()],
        cwd: "/tmp".into(),
        env: env_with_tag(&guard),
    }));
    tower2.wait_output("spawned-42", T);
    term.wait_output("spawned-42", T);
    let st = sh.status();
    let new_pid = st.child_pid.expect("child pid");
    assert_ne!(i64::from(new_pid), w.pid);
    assert_eq!(st.child, ChildState::Running);
    assert_eq!(st.command, "/bin/sh");
    assert!(!st.leased);
    let mut late = sh.connect();
    let w3 = late.hello_v1(ClientType::Terminal);
    assert_eq!(w3.pid, i64::from(new_pid));
    match late.recv(T) {
        Ok(Frame::Replay(b)) => assert!(String::from_utf8_lossy(&b).contains("spawned-42")),
        other => panic!("expected REPLAY, got {other:?}"),
    }
    // Input to the new child still flows (DATA after SPAWN).
    late.send(&Frame::Data(Bytes::from_static(b"x")));

    // codev stops a shellper with SIGTERM: orderly exit 0, socket removed.
    sh.signal(libc::SIGTERM);
    let status = sh.wait_exit(Duration::from_secs(5));
    assert_eq!(code(status), Some(0), "log:\n{}", sh.log());
    assert!(!sh.socket.exists(), "socket removed on exit");
    guard.finish();
}

#[test]
fn codev_compat_unknown_frames_and_pre_hello_frames_are_ignored() {
    let guard = LeakGuard::new("codev_compat_unknown");
    let mut sh = Shellper::start_codev(
        &guard,
        "/bin/sh",
        &["-c", "echo ready; exec sleep 30"],
        None,
        serde_json::json!({}),
    );
    let mut c = sh.connect();
    c.send_raw(&[0x7f, 0, 0, 0, 3, b'a', b'b', b'c'])
        .expect("send");
    c.send(&Frame::Ping);
    c.hello_v1(ClientType::Terminal);
    c.send_raw(&[0x55, 0, 0, 0, 0]).expect("send");
    c.send(&Frame::Ping);
    let got = c
        .recv_until(T, |f| matches!(f, Frame::Pong).then_some(()))
        .is_ok();
    assert!(got, "PONG after an unknown frame");
    sh.signal(libc::SIGTERM);
    assert_eq!(code(sh.wait_exit(Duration::from_secs(5))), Some(0));
    guard.finish();
}
