//! Frame parser and codec: limits, strictness, unknown types, round trips.

#![allow(clippy::unwrap_used)]

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use shellper_protocol::codec::{CodecError, FrameCodec};
use shellper_protocol::frame::*;
use shellper_protocol::msg::*;
use shellper_protocol::token::Token;
use tokio_util::codec::{Decoder, Encoder};

fn raw(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn oversized_header_is_rejected_before_the_payload_arrives() {
    // A RENEW announcing 1 GiB: rejected from the header alone.
    let mut b = vec![0x22];
    b.extend_from_slice(&(1u32 << 30).to_be_bytes());
    assert_eq!(
        parse(&b),
        Err(FrameError::Oversized {
            ty: 0x22,
            len: 1 << 30,
            limit: MAX_LEASE_PAYLOAD
        })
    );
    // Unknown types are bounded by the global limit.
    let mut b = vec![0x7f];
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        parse(&b),
        Err(FrameError::Oversized { ty: 0x7f, .. })
    ));
    // PING carries nothing.
    assert!(matches!(
        parse(&raw(0x06, b"x")),
        Err(FrameError::Oversized { .. })
    ));
}

#[test]
fn undecodable_and_trailing_payloads_are_precise_errors() {
    assert!(matches!(
        parse(&raw(0x02, b"{\"cols\":")),
        Err(FrameError::Undecodable { ty: 0x02, .. })
    ));
    assert!(matches!(
        parse(&raw(0x02, b"{\"cols\":1,\"rows\":2} junk")),
        Err(FrameError::Trailing { ty: 0x02, .. })
    ));
    // Trailing whitespace after JSON is tolerated (JSON allows it).
    assert!(parse(&raw(0x02, b"{\"cols\":1,\"rows\":2}\n")).is_ok());
    // postcard: leftovers after a RENEW.
    assert_eq!(
        parse(&raw(0x22, &[1, 7, 0xff])),
        Err(FrameError::Trailing {
            ty: 0x22,
            name: "RENEW",
            extra: 1
        })
    );
    // postcard: truncated message.
    assert!(matches!(
        parse(&raw(0x22, &[1])),
        Err(FrameError::Undecodable { ty: 0x22, .. })
    ));
    // A bad enum discriminant.
    assert!(matches!(
        parse(&raw(0x24, &[1, 9])),
        Err(FrameError::Undecodable { .. })
    ));
}

#[test]
fn unknown_types_are_surfaced_and_skipped() {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&raw(0x7e, &[0u8; 10]));
    buf.extend_from_slice(&raw(0x06, b""));
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Unknown { ty: 0x7e, len: 10 })
    );
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Ping));
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
}

#[test]
fn unknown_frame_payload_is_skipped_as_it_arrives() {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut header = vec![0x7e];
    header.extend_from_slice(&(1_000_000u32).to_be_bytes());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(&[0u8; 1000]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Unknown {
            ty: 0x7e,
            len: 1_000_000
        })
    );
    assert!(buf.is_empty(), "skipped bytes are not buffered");
    // Feed the rest in chunks: nothing surfaces until the next real frame.
    let mut left = 1_000_000 - 1000;
    while left > 0 {
        let n = left.min(65536);
        buf.extend_from_slice(&vec![0u8; n]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        left -= n;
    }
    buf.extend_from_slice(&raw(0x07, b""));
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Pong));
}

#[test]
fn truncated_frame_at_eof_is_an_error() {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(&raw(0x01, b"hello")[..7]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    let err = codec.decode_eof(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        CodecError::Frame(FrameError::Truncated {
            buffered: 7,
            needed: 10
        })
    ));
    // A clean EOF is fine.
    let mut empty = BytesMut::new();
    assert!(codec.decode_eof(&mut empty).unwrap().is_none());
}

#[test]
fn encoder_refuses_frames_over_their_limit() {
    let big = Frame::Error(ErrorMsg {
        code: ErrorCode::Protocol,
        message: "x".repeat(MAX_LEASE_PAYLOAD as usize + 1),
    });
    let mut dst = BytesMut::new();
    assert!(matches!(
        FrameCodec::new().encode(big, &mut dst),
        Err(CodecError::Frame(FrameError::TooLargeToEncode { .. }))
    ));
    assert!(dst.is_empty());
}

#[test]
fn limits_are_ordered_sensibly() {
    for t in FrameType::ALL {
        assert!(t.max_payload() <= MAX_PAYLOAD);
        assert_eq!(FrameType::from_u8(t as u8), Some(t));
    }
    assert_eq!(FrameType::from_u8(0x00), None);
    assert_eq!(FrameType::from_u8(0x2b), None);
}

// ---------------------------------------------------------------------------
// Property tests: every message round-trips through encode + parse + codec.
// ---------------------------------------------------------------------------

fn token() -> impl Strategy<Value = Token> {
    any::<[u8; 32]>().prop_map(Token::from_bytes)
}

fn holder() -> impl Strategy<Value = HolderInfo> {
    (".{0,40}", any::<u32>()).prop_map(|(name, pid)| HolderInfo { name, pid })
}

fn client_type() -> impl Strategy<Value = ClientType> {
    prop_oneof![
        Just(ClientType::Tower),
        Just(ClientType::Terminal),
        Just(ClientType::Status)
    ]
}

fn phase() -> impl Strategy<Value = WirePhase> {
    prop_oneof![
        Just(WirePhase::Unclaimed),
        Just(WirePhase::Held),
        Just(WirePhase::Lapsed),
        Just(WirePhase::Terminating),
        Just(WirePhase::Exited)
    ]
}

fn reason() -> impl Strategy<Value = TerminateReason> {
    prop_oneof![
        Just(TerminateReason::ClaimExpired),
        Just(TerminateReason::WindowExpired),
        Just(TerminateReason::Requested),
        Just(TerminateReason::Signal),
        Just(TerminateReason::ChildExitedUnheld)
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadToken),
        Just(ErrorCode::StaleEpoch),
        Just(ErrorCode::NotHolder),
        Just(ErrorCode::NotLeased),
        Just(ErrorCode::Terminating),
        Just(ErrorCode::Protocol),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::Busy)
    ]
}

fn status() -> impl Strategy<Value = Status> {
    (
        (
            ".{0,10}",
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u32>()),
        ),
        prop_oneof![
            Just(ChildState::Running),
            (
                proptest::option::of(any::<i32>()),
                proptest::option::of(any::<i32>())
            )
                .prop_map(|(code, signal)| ChildState::Exited { code, signal })
        ],
        (
            ".{0,20}",
            proptest::collection::vec(".{0,8}", 0..4),
            ".{0,20}",
            phase(),
            any::<bool>(),
            any::<u64>(),
        ),
        (
            proptest::option::of(holder()),
            proptest::option::of(any::<u32>()),
        ),
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            any::<[u64; 4]>(),
        ),
        proptest::collection::vec(
            (client_type(), any::<u32>(), any::<bool>())
                .prop_map(|(kind, pid, holder)| ClientInfo { kind, pid, holder }),
            0..5,
        ),
        any::<[u64; 8]>(),
        proptest::option::of(containment()),
    )
        .prop_map(|(a, child, b, h, t, clients, c, containment)| Status {
            version: a.0,
            shellper_pid: a.1,
            shellper_start_ticks: a.2,
            started_at_ms: a.3,
            child_pid: a.4,
            child,
            command: b.0,
            args: b.1,
            cwd: b.2,
            phase: b.3,
            leased: b.4,
            epoch: b.5,
            holder: h.0,
            holder_peer_pid: h.1,
            expires_in_ms: t.0,
            kill_in_ms: t.1,
            claim_in_ms: t.2,
            ttl_ms: t.3[0],
            window_ms: t.3[1],
            claim_ms: t.3[2],
            kill_grace_ms: t.3[3],
            clients,
            counters: Counters {
                acquires: c[0],
                renewals: c[1],
                rejected_tokens: c[2],
                stale_epochs: c[3],
                revocations: c[4],
                lapses: c[5],
                stalls: c[6],
                protocol_errors: c[7],
            },
            containment,
        })
}

fn containment() -> impl Strategy<Value = Containment> {
    (
        proptest::option::of(".{0,30}"),
        proptest::collection::vec("[a-z]{1,8}", 0..4),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u32>()),
        proptest::array::uniform4(proptest::option::of(any::<u64>())),
    )
        .prop_map(|(cgroup, controllers, cpu_usec, procs, m)| Containment {
            cgroup,
            controllers,
            cpu_usec,
            procs,
            memory_current: m[0],
            memory_peak: m[1],
            pids_max: m[2],
            memory_max: m[3],
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..300).prop_map(bytes::Bytes::from);
    prop_oneof![
        bytes.clone().prop_map(Frame::Data),
        bytes.prop_map(Frame::Replay),
        (any::<u16>(), any::<u16>()).prop_map(|(cols, rows)| Frame::Resize(Resize { cols, rows })),
        any::<i32>().prop_map(|signal| Frame::Signal(SignalMsg { signal })),
        (
            proptest::option::of(any::<i32>()),
            proptest::option::of("[0-9]{1,2}")
        )
            .prop_map(|(code, signal)| Frame::Exit(ExitMsg { code, signal })),
        Just(Frame::Ping),
        Just(Frame::Pong),
        (
            any::<u32>(),
            client_type(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>())
        )
            .prop_map(
                |(version, client_type, lease, replay, data)| Frame::Hello(Hello {
                    version,
                    client_type,
                    lease,
                    replay,
                    data
                })
            ),
        (
            any::<i64>(),
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            proptest::option::of((any::<u32>(), any::<bool>(), any::<u32>()))
        )
            .prop_map(
                |(pid, cols, rows, start_time, last_data_at, always_sends_replay, lease)| {
                    Frame::Welcome(Welcome {
                        version: 1,
                        pid,
                        cols,
                        rows,
                        start_time,
                        last_data_at,
                        always_sends_replay,
                        lease: lease.map(|(version, leased, shellper_pid)| WelcomeLease {
                            version,
                            leased,
                            shellper_pid,
                        }),
                    })
                }
            ),
        (
            ".{0,30}",
            proptest::collection::vec(".{0,10}", 0..4),
            ".{0,30}",
            proptest::collection::btree_map("[A-Z_]{1,8}", ".{0,10}", 0..4)
        )
            .prop_map(|(command, args, cwd, env)| Frame::Spawn(Spawn {
                command,
                args,
                cwd,
                env
            })),
        (token(), holder()).prop_map(|(token, holder)| Frame::Acquire(Acquire { token, holder })),
        any::<[u64; 5]>().prop_map(|v| Frame::Grant(Grant {
            epoch: v[0],
            ttl_ms: v[1],
            window_ms: v[2],
            renew_every_ms: v[3],
            expires_in_ms: v[4]
        })),
        (any::<u64>(), any::<u64>()).prop_map(|(epoch, seq)| Frame::Renew(Renew { epoch, seq })),
        any::<[u64; 3]>().prop_map(|v| Frame::Renewed(Renewed {
            epoch: v[0],
            seq: v[1],
            expires_in_ms: v[2]
        })),
        (any::<u64>(), proptest::option::of(any::<u64>())).prop_map(
            |(epoch, hold)| Frame::Release(Release {
                epoch,
                mode: match hold {
                    None => ReleaseMode::Terminate,
                    Some(hold_ms) => ReleaseMode::Detach { hold_ms },
                }
            })
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(epoch, kill_in_ms)| Frame::Released(Released { epoch, kill_in_ms })),
        (
            reason(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(reason, signalled, survivors, elapsed_ms, sweeps)| {
                Frame::Terminated(Terminated {
                    reason,
                    signalled,
                    survivors,
                    elapsed_ms,
                    sweeps,
                })
            }),
        Just(Frame::StatusRequest(StatusRequest {})),
        status().prop_map(|s| Frame::Status(Box::new(s))),
        (any::<u64>(), any::<u64>()).prop_map(|(old_epoch, new_epoch)| Frame::Revoked(Revoked {
            old_epoch,
            new_epoch
        })),
        (error_code(), ".{0,40}")
            .prop_map(|(code, message)| Frame::Error(ErrorMsg { code, message })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(f in frame()) {
        let bytes = f.to_bytes().unwrap();
        match parse(&bytes).unwrap() {
            Parsed::Frame { frame, consumed } => {
                prop_assert_eq!(consumed, bytes.len());
                prop_assert_eq!(frame, f);
            }
            other => prop_assert!(false, "incomplete: {:?}", other),
        }
    }

    #[test]
    fn codec_reassembles_frames_split_anywhere(frames in proptest::collection::vec(frame(), 1..6), cuts in proptest::collection::vec(1usize..64, 1..20)) {
        let mut wire = BytesMut::new();
        let mut codec = FrameCodec::new();
        for f in &frames {
            codec.encode(f.clone(), &mut wire).unwrap();
        }
        let wire = wire.freeze();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - pos);
            buf.put_slice(&wire[pos..pos + n]);
            pos += n;
            i += 1;
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..64 {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn postcard_trailing_bytes_are_always_rejected(f in frame(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let Some(t) = f.frame_type() else { return Ok(()) };
        if (t as u8) < 0x20 { return Ok(()); }
        let mut payload = f.encode_payload().unwrap().to_vec();
        payload.extend_from_slice(&extra);
        if payload.len() > t.max_payload() as usize { return Ok(()); }
        let res = parse(&raw(t as u8, &payload));
        prop_assert!(res.is_err(), "{:?} with {} trailing bytes decoded", t, extra.len());
    }
}

/// Merges consecutive DATA (and consecutive REPLAY) frames: what a
/// streaming decoder delivers in pieces compares equal to the whole frames.
fn merge_bulk(frames: Vec<Frame>) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for f in frames {
        match (out.last_mut(), f) {
            (Some(Frame::Data(a)), Frame::Data(b)) => {
                let mut m = BytesMut::from(&a[..]);
                m.extend_from_slice(&b);
                *a = m.freeze();
            }
            (Some(Frame::Replay(a)), Frame::Replay(b)) => {
                let mut m = BytesMut::from(&a[..]);
                m.extend_from_slice(&b);
                *a = m.freeze();
            }
            (_, f) => out.push(f),
        }
    }
    out
}

/// A 16 MiB DATA frame arriving in 64 KiB reads: the streaming decoder
/// hands it out as it comes, never holding more than what was read, and
/// says it wants nothing buffered ahead for it; the plain decoder waits
/// for all of it.
#[test]
fn streaming_delivers_a_large_data_frame_as_it_arrives() {
    use shellper_protocol::codec::STREAM_PIECE;
    let payload: Vec<u8> = (0..(16u32 << 20)).map(|i| i as u8).collect();
    let wire = raw(0x01, &payload);
    let mut codec = FrameCodec::streaming();
    let mut buf = BytesMut::new();
    let mut got = Vec::with_capacity(payload.len());
    let mut most_buffered = 0;
    for chunk in wire.chunks(64 * 1024) {
        buf.extend_from_slice(chunk);
        most_buffered = most_buffered.max(buf.len());
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            let Frame::Data(b) = f else { panic!("{f:?}") };
            assert!(b.len() <= STREAM_PIECE);
            got.extend_from_slice(&b);
        }
        assert!(buf.is_empty(), "every byte read was handed out");
        assert!(!codec.mid_frame() || codec.wanted(&buf) == 1);
    }
    assert_eq!(got, payload);
    assert!(most_buffered <= 64 * 1024 + 5);
    assert!(!codec.mid_frame());
    assert!(codec.decode_eof(&mut buf).unwrap().is_none());

    // An empty DATA frame is one empty piece.
    let mut buf = BytesMut::from(&raw(0x01, b"")[..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Data(Default::default()))
    );
}

/// Which piece of a streamed frame is its first: a session that refuses
/// DATA answers the first piece only, so the first piece must be known as
/// such even when the header arrived alone, in a read of its own.
#[test]
fn streaming_marks_only_later_pieces_as_continued() {
    use shellper_protocol::codec::STREAM_PIECE;
    let payload = vec![9u8; 3 * STREAM_PIECE];
    let wire = raw(0x01, &payload);
    for first_read in [5usize, 6, 4, STREAM_PIECE + 5] {
        let mut codec = FrameCodec::streaming();
        let mut buf = BytesMut::from(&wire[..first_read]);
        let mut marks = Vec::new();
        let mut rest = &wire[first_read..];
        loop {
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                assert!(matches!(f, Frame::Data(_)));
                marks.push(codec.last_continued());
            }
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(1000);
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        assert!(!marks[0], "first read {first_read}: {marks:?}");
        assert!(marks[1..].iter().all(|c| *c), "first read {first_read}");
        // The frame after it starts afresh.
        let mut buf = BytesMut::from(&raw(0x01, b"ab")[..]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(!codec.last_continued());
        let mut buf = BytesMut::from(&raw(0x06, b"")[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Ping));
        assert!(!codec.last_continued());
    }
}

#[test]
fn streaming_checks_limits_and_reports_truncation() {
    let mut codec = FrameCodec::streaming();
    // Over the wire limit: refused from the header.
    let mut buf = BytesMut::from(&[0x01, 0x01, 0x00, 0x00, 0x01][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::Frame(FrameError::Oversized { .. }))
    ));
    // Cut short: an error at EOF, not a silent end.
    let mut codec = FrameCodec::streaming();
    let wire = raw(0x01, &[7u8; 100]);
    let mut buf = BytesMut::from(&wire[..50]);
    assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Frame::Data(b)) if b.len() == 45));
    assert!(codec.mid_frame());
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(matches!(
        codec.decode_eof(&mut buf),
        Err(CodecError::Frame(FrameError::Truncated {
            buffered: 0,
            needed: 55
        }))
    ));
    // `wanted` for a frame decoded whole: the rest of its bytes.
    let codec = FrameCodec::streaming();
    let spawn = raw(0x0A, &[b' '; 1000]);
    assert_eq!(codec.wanted(&spawn[..3]), 2);
    assert_eq!(codec.wanted(&spawn[..10]), 1005 - 10);
    assert_eq!(codec.wanted(&spawn), 0);
    assert_eq!(codec.wanted(&raw(0x01, &[0; 1000])[..5]), 0, "DATA streams");
    assert_eq!(FrameCodec::new().wanted(&raw(0x01, &[0; 1000])[..5]), 1000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Streaming changes only how DATA and REPLAY are cut: merged back,
    /// the frames are the same as the plain decoder's, split anywhere.
    #[test]
    fn streaming_decodes_the_same_frames_split_anywhere(frames in proptest::collection::vec(frame(), 1..6), cuts in proptest::collection::vec(1usize..64, 1..20)) {
        let mut wire = BytesMut::new();
        let mut codec = FrameCodec::streaming();
        for f in &frames {
            codec.encode(f.clone(), &mut wire).unwrap();
        }
        let wire = wire.freeze();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - pos);
            buf.put_slice(&wire[pos..pos + n]);
            pos += n;
            i += 1;
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(merge_bulk(out), merge_bulk(frames));
    }
}
