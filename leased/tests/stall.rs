//! A peer of an embedded lease server that stops reading is disconnected
//! whole after the write stall limit: its slot is freed and it sees EOF,
//! instead of a half-open connection whose reader keeps the slot.
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
use shellper_protocol::msg::{ClientType, Hello, StatusRequest};
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

/// How many status clients the server lists, asked over a fresh connection
/// (which counts itself).
fn status_clients(sock: &Path) -> usize {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&encode(&[
        status_hello(),
        Frame::StatusRequest(StatusRequest {}),
    ]))
    .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match parse(&buf).expect("well-formed frames") {
            Parsed::Frame { frame, consumed } => {
                buf.drain(..consumed);
                if let Frame::Status(st) = frame {
                    return st
                        .clients
                        .iter()
                        .filter(|c| c.kind == ClientType::Status)
                        .count();
                }
            }
            Parsed::Incomplete { .. } => {
                let n = s.read(&mut chunk).expect("STATUS within 5 s");
                assert!(n > 0, "server closed before STATUS");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_whole_after_the_write_stall() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("lease.sock");
    let mut opts = Options::leased(&sock, Token::from_bytes([7; 32]));
    // A long claim deadline: nothing ends the lease during the test.
    opts.config = LeaseConfig::new(
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(120),
        Duration::from_millis(300),
    )
    .expect("valid lease config");
    opts.handle_signals = false;
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
        assert_eq!(status_clients(&sock2), 2, "the stuck peer is listed");

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
