//! Connections to an embedded lease server: a peer that stops reading is
//! disconnected whole after the write stall limit (its slot is freed and it
//! sees EOF, instead of a half-open connection whose reader keeps the
//! slot), and idle connections filling every ordinary slot lock out neither
//! a status reader nor the Tower.
//!
//! In-process (the server runs on this test's runtime); no process is
//! spawned, so no leak guard is needed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use shellper_leased::{Leased, Options};
use shellper_protocol::Frame;
use shellper_protocol::frame::{Parsed, parse};
use shellper_protocol::lease::LeaseConfig;
use shellper_protocol::msg::{Acquire, ClientType, Hello, HolderInfo, StatusRequest};
use shellper_protocol::token::Token;

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    for f in frames {
        f.encode_into(&mut buf).expect("encodable frame");
    }
    buf.to_vec()
}

fn status_hello() -> Frame {
    let mut h = Hello::v1(ClientType::Status);
    h.replay = Some(false);
    h.data = Some(false);
    Frame::Hello(h)
}

/// Reads frames from `s` until one matches `want` (5 s per read).
fn read_until(s: &mut UnixStream, want: impl Fn(&Frame) -> bool) -> Frame {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match parse(&buf).expect("well-formed frames") {
            Parsed::Frame { frame, consumed } => {
                buf.drain(..consumed);
                if want(&frame) {
                    return frame;
                }
            }
            Parsed::Incomplete { .. } => {
                let n = s.read(&mut chunk).expect("a frame within 5 s");
                assert!(n > 0, "server closed the connection");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

const TOKEN: [u8; 32] = [7; 32];

fn options(sock: &Path) -> Options {
    let mut opts = Options::leased(sock, Token::from_bytes(TOKEN));
    // Long enough that nothing ends the lease during a test (the tests'
    // Tower never renews).
    opts.config = LeaseConfig::new(
        Duration::from_secs(60),
        Duration::from_secs(60),
        Duration::from_secs(120),
        Duration::from_millis(300),
    )
    .expect("valid lease config");
    opts.handle_signals = false;
    opts
}

/// How many status clients the server lists, asked over a fresh connection
/// (which counts itself).
fn status_clients(sock: &Path) -> usize {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.write_all(&encode(&[
        status_hello(),
        Frame::StatusRequest(StatusRequest {}),
    ]))
    .expect("write");
    match read_until(&mut s, |f| matches!(f, Frame::Status(_))) {
        Frame::Status(st) => st
            .clients
            .iter()
            .filter(|c| c.kind == ClientType::Status)
            .count(),
        _ => unreachable!("read_until returns a STATUS"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_whole_after_the_write_stall() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("lease.sock");
    let mut opts = options(&sock);
    opts.write_stall = Duration::from_millis(300);
    let _leased = Leased::serve(opts).await.expect("serve");

    let sock2 = sock.clone();
    tokio::task::spawn_blocking(move || {
        // The stuck peer asks for far more STATUS replies than the socket
        // buffer holds (a few hundred of them fill it), then never reads.
        let mut stuck = UnixStream::connect(&sock2).expect("connect");
        let mut burst = vec![status_hello()];
        burst.extend((0..700).map(|_| Frame::StatusRequest(StatusRequest {})));
        stuck.write_all(&encode(&burst)).expect("write the burst");
        let deadline = Instant::now() + Duration::from_secs(10);
        while status_clients(&sock2) != 2 {
            assert!(Instant::now() < deadline, "the stuck peer is never listed");
            std::thread::sleep(Duration::from_millis(20));
        }

        let deadline = Instant::now() + Duration::from_secs(15);
        while status_clients(&sock2) != 1 {
            assert!(
                Instant::now() < deadline,
                "a peer that accepts no bytes keeps its slot after the write stall"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // Closed whole: what was written can be read, then EOF.
        stuck
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stuck.read(&mut chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no EOF after the stall: the connection is half-open ({e})"
                    );
                }
            }
        }
    })
    .await
    .expect("client thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_lock_out_neither_status_readers_nor_the_tower() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("lease.sock");
    let mut opts = options(&sock);
    opts.handshake_timeout = Duration::from_millis(500);
    let _leased = Leased::serve(opts).await.expect("serve");

    let sock2 = sock.clone();
    tokio::task::spawn_blocking(move || {
        // Every ordinary slot (256) taken by a status reader that says
        // HELLO and then idles.
        // Each is welcomed before the next connects, so the idle readers
        // hold exactly the ordinary slots.
        let idle: Vec<UnixStream> = (0..256)
            .map(|_| {
                let mut s = UnixStream::connect(&sock2).expect("connect");
                s.write_all(&encode(&[status_hello()])).expect("hello");
                read_until(&mut s, |f| matches!(f, Frame::Welcome(_)));
                s
            })
            .collect();
        // A status reader still gets its answer (from a reserved slot).
        assert_eq!(status_clients(&sock2), 257);

        // The Tower still gets in and takes the lease, and keeps its slot
        // past the handshake timeout because it holds the lease.
        let mut tower = UnixStream::connect(&sock2).expect("connect");
        let mut hello = Hello::v1(ClientType::Tower);
        hello.lease = Some(shellper_protocol::LEASE_PROTOCOL_VERSION);
        hello.replay = Some(false);
        hello.data = Some(false);
        tower
            .write_all(&encode(&[
                Frame::Hello(hello),
                Frame::Acquire(Acquire {
                    token: Token::from_bytes(TOKEN),
                    holder: HolderInfo {
                        name: "test-tower".into(),
                        pid: std::process::id(),
                    },
                }),
            ]))
            .expect("hello + acquire");
        let reply = read_until(&mut tower, |f| {
            matches!(f, Frame::Grant(_) | Frame::Error(_))
        });
        assert!(
            matches!(reply, Frame::Grant(_)),
            "the Tower was locked out: {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(1200));
        tower
            .write_all(&encode(&[Frame::Ping]))
            .expect("the holder's connection is still open");
        read_until(&mut tower, |f| matches!(f, Frame::Pong));

        // A reserved-slot status reader that idles past the handshake
        // timeout is closed, so the reserve cannot be exhausted for good.
        let mut lingering = UnixStream::connect(&sock2).expect("connect");
        lingering
            .write_all(&encode(&[status_hello()]))
            .expect("hello");
        let closed = read_until(&mut lingering, |f| matches!(f, Frame::Error(_)));
        assert!(matches!(closed, Frame::Error(_)), "{closed:?}");
        drop(idle);
    })
    .await
    .expect("client thread");
}

/// A 16 MiB DATA frame to an embedded process (it has no terminal): the
/// frame is streamed through in pieces, never buffered whole, and refused
/// once, not once per piece (and not zero times when its header arrives in
/// a read of its own); the connection then goes on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_data_frame_is_refused_once_while_it_streams_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("lease.sock");
    let _leased = Leased::serve(options(&sock)).await.expect("serve");
    tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&sock).expect("connect");
        let mut hello = Hello::v1(ClientType::Terminal);
        hello.replay = Some(false);
        s.write_all(&encode(&[Frame::Hello(hello)])).expect("hello");
        read_until(&mut s, |f| matches!(f, Frame::Welcome(_)));
        let big = Frame::Data(bytes::Bytes::from(vec![b'x'; 16 << 20]));
        let mut writer = s.try_clone().expect("clone");
        let w = std::thread::spawn(move || {
            // The header alone first, as a slow or unlucky peer sends it:
            // the piece after it is still the frame's first.
            let wire = encode(&[big, Frame::Ping]);
            writer.write_all(&wire[..5]).expect("send header");
            std::thread::sleep(Duration::from_millis(100));
            writer.write_all(&wire[5..]).expect("send");
        });
        let mut errors = 0;
        while let Frame::Error(e) =
            read_until(&mut s, |f| matches!(f, Frame::Error(_) | Frame::Pong))
        {
            assert!(e.message.contains("no terminal"), "{e:?}");
            errors += 1;
        }
        w.join().expect("writer");
        assert_eq!(errors, 1, "one refusal for one frame");
    })
    .await
    .expect("client thread");
}
