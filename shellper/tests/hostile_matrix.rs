//! The hostile-input matrix (scenario 10), the cases `scenarios_hostile.rs`
//! does not cover: a header with no body, every unknown frame type, 300 idle
//! connections, wrong tokens counted, stale epochs counted, renew before
//! acquire, SIGNAL outside the allow-list, absurd RESIZE, SPAWN of a missing
//! command, slowloris. Each runs against a live shellper and then proves,
//! with [`Rig::assert_unaffected`], that the lease (same epoch, held, no
//! lapse), the child (same pid, echoing) and a well-behaved terminal client
//! are unaffected and that the shellper's memory stayed bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shellper_protocol::frame::FrameType;
use shellper_protocol::msg::*;
use shellper_protocol::{Frame, Token};
use shellper_testkit::LeakGuard;

const T: Duration = Duration::from_secs(5);

/// Long enough that a test renews by hand between steps without a
/// background renewer (holder-only requests need the holder's connection).
const SLOW: Timing = Timing {
    ttl: 4000,
    window: 8000,
    claim: 10000,
    grace: 300,
};

/// Growth of the shellper's resident set a hostile client may cause.
const RSS_SLACK_KIB: u64 = 16 * 1024;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn raw_frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A live shellper running an echo loop, its holder and a well-behaved
/// terminal client.
struct Rig {
    sh: Shellper,
    holder: Client,
    epoch: u64,
    seq: u64,
    term: Client,
    child_pid: u32,
    rss0: u64,
    guard: LeakGuard,
}

impl Rig {
    fn start(name: &str) -> Rig {
        let guard = LeakGuard::new(name);
        let sh = Shellper::start_codev(
            &guard,
            "/bin/sh",
            &["-c", "while read l; do echo got-$l; done"],
            Some(SLOW),
            serde_json::json!({}),
        );
        let (holder, g) = sh.holder();
        let mut term = sh.connect();
        let w = term.hello(ClientType::Terminal, true, false, true);
        let child_pid = u32::try_from(w.pid).expect("a running child");
        term.data("ready\n");
        term.wait_output("got-ready", T);
        let rss0 = vm_rss_kib(sh.pid);
        assert!(rss0 > 0);
        Rig {
            sh,
            holder,
            epoch: g.epoch,
            seq: 0,
            term,
            child_pid,
            rss0,
            guard,
        }
    }

    fn renew(&mut self) {
        self.seq += 1;
        self.holder
            .renew(self.epoch, self.seq)
            .expect("the holder renews");
    }

    /// The lease, the child and the terminal client are as before, and
    /// memory is bounded.
    fn assert_unaffected(&mut self, what: &str) {
        self.renew();
        // Asked over the well-behaved client's own connection: a new one
        // may be refused while hostile clients hold every slot.
        let st = self.term.status();
        assert_eq!(st.phase, WirePhase::Held, "{what}: {st:?}");
        assert_eq!(st.epoch, self.epoch, "{what}: epoch changed");
        assert_eq!(st.counters.lapses, 0, "{what}: {:?}", st.counters);
        assert_eq!(st.child_pid, Some(self.child_pid), "{what}: child replaced");
        assert!(
            matches!(st.child, ChildState::Running),
            "{what}: {:?}",
            st.child
        );
        let probe = format!("probe{}", self.seq);
        self.term.data(&format!("{probe}\n"));
        self.term.wait_output(&format!("got-{probe}"), T);
        let rss = vm_rss_kib(self.sh.pid);
        assert!(
            rss < self.rss0 + RSS_SLACK_KIB,
            "{what}: RSS grew from {} to {rss} KiB",
            self.rss0
        );
    }

    fn finish(mut self) {
        drop(self.term);
        drop(self.holder);
        // Holder gone: the window (8 s) is not waited for; SIGTERM is the
        // orderly end, and the whole tree must go.
        self.sh.signal(libc::SIGTERM);
        assert_eq!(code(self.sh.wait_exit(ms(SLOW.grace + 5000))), Some(0));
        self.guard.finish();
    }
}

fn error_reply(c: &mut Client) -> ErrorMsg {
    c.recv_until(T, |f| match f {
        Frame::Error(e) => Some(e.clone()),
        _ => None,
    })
    .expect("an ERROR reply")
}

#[test]
fn s10_matrix_header_with_no_body_is_closed_and_harmless() {
    let mut rig = Rig::start("s10_matrix_header_no_body");
    // A DATA header announcing 100 bytes, then EOF: truncated frame.
    let mut c = rig.sh.connect();
    c.hello(ClientType::Terminal, true, false, false);
    c.send_raw(&[0x01, 0, 0, 0, 100]).expect("send");
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let (closed, errors) = c.closed_within(T);
    assert!(closed, "closed after a header with no body");
    assert!(
        errors.iter().any(|e| e.code == ErrorCode::Protocol),
        "{errors:?}"
    );
    // Before HELLO, a header and silence: the handshake timeout closes it.
    let mut c = rig.sh.connect();
    c.send_raw(&[0x08, 0, 0, 0, 50]).expect("send");
    let t0 = Instant::now();
    let (closed, _) = c.closed_within(T);
    assert!(closed, "a stalled handshake is closed");
    assert!(t0.elapsed() < ms(4000), "{:?}", t0.elapsed());
    rig.assert_unaffected("header with no body");
    rig.finish();
}

#[test]
fn s10_matrix_every_unknown_frame_type_is_skipped() {
    let mut rig = Rig::start("s10_matrix_unknown_types");
    let mut c = rig.sh.connect();
    c.hello(ClientType::Terminal, true, false, false);
    let unknown: Vec<u8> = (0..=255u8)
        .filter(|b| FrameType::from_u8(*b).is_none())
        .collect();
    assert!(unknown.len() > 200);
    for ty in &unknown {
        c.send_raw(&raw_frame(*ty, &[*ty; 16])).expect("send");
    }
    c.send(&Frame::Ping);
    c.recv_until(T, |f| matches!(f, Frame::Pong).then_some(()))
        .expect("PONG after every unknown type: the connection stays usable");
    let st = rig.sh.status();
    assert_eq!(
        st.counters.protocol_errors, 0,
        "unknown types are not errors"
    );
    rig.assert_unaffected("unknown frame types");
    rig.finish();
}

#[test]
fn s10_matrix_three_hundred_idle_connections() {
    let mut rig = Rig::start("s10_matrix_idle_300");
    let idle: Vec<Client> = (0..300).map(|_| rig.sh.connect()).collect();
    // Past the connection cap the extra ones are refused; nothing else is.
    rig.assert_unaffected("300 idle connections");
    drop(idle);
    // Once they are gone a new client gets in (the slots come back).
    assert!(
        wait_for(T, || {
            let mut c = rig.sh.connect();
            c.send(&Frame::Hello(Hello::v1(ClientType::Terminal)));
            matches!(c.recv(ms(1000)), Ok(Frame::Welcome(_)))
        }),
        "slots are released when idle clients leave"
    );
    rig.assert_unaffected("after 300 idle connections left");
    rig.finish();
}

#[test]
fn s10_matrix_wrong_tokens_are_refused_and_counted() {
    let mut rig = Rig::start("s10_matrix_wrong_tokens");
    let mut c = rig.sh.connect();
    c.hello(ClientType::Tower, true, false, false);
    for i in 0..20u8 {
        let e = c
            .acquire(&Token([i.wrapping_add(100); 32]))
            .expect_err("wrong token");
        assert_eq!(e.code, ErrorCode::BadToken);
    }
    let st = rig.sh.status();
    assert_eq!(st.counters.rejected_tokens, 20);
    assert_eq!(st.counters.acquires, 1, "only the holder's acquire");
    rig.assert_unaffected("wrong tokens");
    rig.finish();
}

#[test]
fn s10_matrix_stale_epochs_and_renew_before_acquire_are_refused() {
    let mut rig = Rig::start("s10_matrix_epochs");
    // Renew and release before any acquire, on a fresh tower connection.
    let mut c = rig.sh.connect();
    c.hello(ClientType::Tower, true, false, false);
    let e = c.renew(rig.epoch, 1).expect_err("renew before acquire");
    assert_eq!(e.code, ErrorCode::NotHolder);
    c.send(&Frame::Release(Release {
        epoch: rig.epoch,
        mode: ReleaseMode::Terminate,
    }));
    assert_eq!(error_reply(&mut c).code, ErrorCode::NotHolder);
    // Stale epochs from the intruder and from the holder itself.
    for stale in [0, rig.epoch + 1, u64::MAX] {
        let e = c.renew(stale, 1).expect_err("stale");
        assert_eq!(e.code, ErrorCode::StaleEpoch);
    }
    let e = rig.holder.renew(rig.epoch + 7, 1).expect_err("stale");
    assert_eq!(e.code, ErrorCode::StaleEpoch);
    let st = rig.sh.status();
    assert_eq!(st.counters.stale_epochs, 4, "{:?}", st.counters);
    rig.assert_unaffected("stale epochs");
    rig.finish();
}

#[test]
fn s10_matrix_signal_outside_the_allow_list_is_forbidden() {
    let mut rig = Rig::start("s10_matrix_signals");
    for sig in [0, -1, 19, 10, 17, 64, 1000, i32::MIN] {
        rig.holder.send(&Frame::Signal(SignalMsg { signal: sig }));
        let e = error_reply(&mut rig.holder);
        assert_eq!(e.code, ErrorCode::Forbidden, "signal {sig}: {e:?}");
    }
    // The child was not stopped (19 is SIGSTOP): it still echoes.
    rig.assert_unaffected("signals outside the allow-list");
    rig.finish();
}

#[test]
fn s10_matrix_absurd_resize_is_clamped_or_refused() {
    let mut rig = Rig::start("s10_matrix_resize");
    for (cols, rows) in [(0, 0), (u16::MAX, u16::MAX), (1, u16::MAX), (u16::MAX, 1)] {
        rig.term.send(&Frame::Resize(Resize { cols, rows }));
    }
    // Out of range for u16: undecodable, that connection is closed.
    let mut c = rig.sh.connect();
    c.hello(ClientType::Terminal, true, false, false);
    c.send_raw(&raw_frame(0x02, b"{\"cols\":70000,\"rows\":-5}"))
        .expect("send");
    let (closed, errors) = c.closed_within(T);
    assert!(closed && errors.iter().any(|e| e.code == ErrorCode::Protocol));
    rig.term.send(&Frame::Resize(Resize { cols: 80, rows: 24 }));
    rig.assert_unaffected("absurd RESIZE");
    rig.finish();
}

/// SPEC §5: a SPAWN whose command cannot start replaces the old child with
/// an exited-with-code-1 child (codev's node-pty behaviour): ERROR to the
/// sender, EXIT to every client, STATUS honest about it; the lease is
/// untouched and a SPAWN that works restarts the session in place.
#[test]
fn s10_matrix_spawn_of_a_missing_command_is_an_error() {
    let mut rig = Rig::start("s10_matrix_spawn_missing");
    rig.holder.send(&Frame::Spawn(Spawn {
        command: "/nonexistent/shellper-test-command".into(),
        args: vec![],
        cwd: "/tmp".into(),
        env: std::collections::BTreeMap::new(),
    }));
    let e = error_reply(&mut rig.holder);
    assert_eq!(e.code, ErrorCode::Protocol, "{e:?}");
    assert!(
        e.message.contains("nonexistent"),
        "the reason names the command: {e:?}"
    );
    let exit = rig
        .term
        .recv_until(T, |f| match f {
            Frame::Exit(x) => Some(x.clone()),
            _ => None,
        })
        .expect("EXIT to the terminal client");
    assert_eq!(exit.code, Some(1), "{exit:?}");
    rig.renew();
    let st = rig.term.status();
    assert_eq!((st.phase, st.epoch), (WirePhase::Held, rig.epoch));
    assert!(
        !matches!(st.child, ChildState::Running),
        "STATUS must not call a child that never started running: {st:?}"
    );
    // Restart in place with a command that works; the session is whole again.
    let (env_k, env_v) = rig.guard.env_pair();
    rig.holder.send(&Frame::Spawn(Spawn {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), "while read l; do echo got-$l; done".into()],
        cwd: "/tmp".into(),
        env: [(env_k.to_string(), env_v)].into_iter().collect(),
    }));
    let mut running = None;
    assert!(
        wait_for(T, || {
            let st = rig.sh.status();
            running = st
                .child_pid
                .filter(|_| matches!(st.child, ChildState::Running));
            running.is_some()
        }),
        "a good SPAWN restarts the child"
    );
    rig.child_pid = running.expect("child pid");
    rig.term = rig.sh.connect();
    rig.term.hello(ClientType::Terminal, true, false, true);
    rig.assert_unaffected("SPAWN of a missing command, then a good one");
    rig.finish();
}

#[test]
fn s10_matrix_slowloris_is_cut_off_by_the_handshake_deadline() {
    let mut rig = Rig::start("s10_matrix_slowloris");
    let hello = Frame::Hello(Hello::v1(ClientType::Terminal))
        .to_bytes()
        .expect("encode")
        .to_vec();
    // Ten clients trickle a HELLO one byte every 150 ms (the whole frame
    // would take ~8 s; the handshake deadline in these tests is 800 ms).
    let t0 = Instant::now();
    let mut clients: Vec<Client> = (0..10).map(|_| rig.sh.connect()).collect();
    let mut closed_at: Vec<Option<Duration>> = vec![None; clients.len()];
    for b in &hello {
        for (i, c) in clients.iter_mut().enumerate() {
            if closed_at[i].is_none() && c.send_raw(&[*b]).is_err() {
                closed_at[i] = Some(t0.elapsed());
            }
        }
        if closed_at.iter().all(Option::is_some) || t0.elapsed() > ms(6000) {
            break;
        }
        std::thread::sleep(ms(150));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        if closed_at[i].is_none() {
            let (closed, _) = c.closed_within(ms(100));
            if closed {
                closed_at[i] = Some(t0.elapsed());
            }
        }
    }
    for (i, at) in closed_at.iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("slowloris client {i} never cut off"));
        assert!(at < ms(5000), "client {i} held on for {at:?}");
    }
    rig.assert_unaffected("slowloris");
    rig.finish();
}
