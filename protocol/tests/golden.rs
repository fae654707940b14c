//! Golden byte vectors: one frame of every type, byte for byte. These are the
//! vectors printed in SPEC.md; a Tower written in another language can check
//! its encoder against them. A failure here means the wire format changed.

#![allow(clippy::unwrap_used)]

use shellper_protocol::frame::{Frame, FrameType, Parsed, parse};
use shellper_protocol::samples::{hex, sample_frames};

const GOLDEN: &[(&str, &str)] = &[
    ("DATA", "01000000036c730d"),
    (
        "RESIZE",
        "02000000167b22636f6c73223a3132302c22726f7773223a34307d",
    ),
    ("SIGNAL", "030000000c7b227369676e616c223a327d"),
    (
        "EXIT",
        "04000000187b22636f6465223a302c227369676e616c223a223135227d",
    ),
    ("REPLAY", "05000000022420"),
    ("PING", "0600000000"),
    ("PONG", "0700000000"),
    (
        "HELLO",
        "08000000487b2276657273696f6e223a312c22636c69656e7454797065223a22746f776572222c226c65617365223a312c227265706c6179223a66616c73652c2264617461223a66616c73657d",
    ),
    (
        "WELCOME",
        "09000000967b2276657273696f6e223a312c22706964223a343234322c22636f6c73223a38302c22726f7773223a32342c22737461727454696d65223a313730303030303030303030302c22616c7761797353656e64735265706c6179223a747275652c226c65617365223a7b2276657273696f6e223a312c226c6561736564223a747275652c227368656c6c706572506964223a343234317d7d",
    ),
    (
        "SPAWN",
        "0a000000527b22636f6d6d616e64223a222f62696e2f62617368222c2261726773223a5b222d6c225d2c22637764223a222f746d70222c22656e76223a7b225445524d223a22787465726d2d323536636f6c6f72227d7d",
    ),
    (
        "ACQUIRE",
        "200000002c000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f096d696e69746f776572ac02",
    ),
    ("GRANT", "210000000a01f02ec0cf24d00ff02e"),
    ("RENEW", "22000000020107"),
    ("RENEWED", "23000000040107f02e"),
    ("RELEASE", "2400000006010180dddb01"),
    ("RELEASED", "25000000050180dddb01"),
    ("TERMINATED", "26000000050105000c03"),
    ("STATUS_REQUEST", "2700000000"),
    (
        "STATUS",
        "280000004305302e312e309121e80780d095ffbc3101922100046261736800012f010101010174ac0201ac020188270000f02ec0cf24e0d403b8170100ac02010102000000000000",
    ),
    ("REVOKED", "29000000020102"),
    ("ERROR", "2a0000000701057374616c65"),
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_frame_type_has_a_golden_vector() {
    let names: Vec<&str> = GOLDEN.iter().map(|(n, _)| *n).collect();
    for t in FrameType::ALL {
        assert!(
            names.contains(&t.name()),
            "no golden vector for {}",
            t.name()
        );
    }
}

#[test]
fn samples_encode_to_the_golden_bytes() {
    let samples = sample_frames();
    assert_eq!(samples.len(), GOLDEN.len());
    for ((name, frame), (gname, ghex)) in samples.iter().zip(GOLDEN) {
        assert_eq!(name, gname);
        let bytes = frame.to_bytes().unwrap();
        assert_eq!(&hex(&bytes), ghex, "{name} encodes differently");
    }
}

#[test]
fn golden_bytes_decode_to_the_samples() {
    for ((name, frame), (_, ghex)) in sample_frames().iter().zip(GOLDEN) {
        let bytes = unhex(ghex);
        match parse(&bytes).unwrap() {
            Parsed::Frame {
                frame: got,
                consumed,
            } => {
                assert_eq!(consumed, bytes.len(), "{name}");
                assert_eq!(&got, frame, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        // Every strict prefix is incomplete, never an error or a frame.
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut]), Ok(Parsed::Incomplete { .. })),
                "{name} cut at {cut}"
            );
        }
    }
}

#[test]
fn codev_v1_frames_from_a_node_tower_decode() {
    // Exactly what codev's Tower writes: JSON.stringify output, v1 fields only.
    let hello = br#"{"version":1,"clientType":"terminal"}"#;
    let mut b = vec![0x08, 0, 0, 0, hello.len() as u8];
    b.extend_from_slice(hello);
    let Parsed::Frame { frame, .. } = parse(&b).unwrap() else {
        panic!()
    };
    let Frame::Hello(h) = frame else { panic!() };
    assert!(h.wants_replay() && h.wants_data() && h.lease.is_none());
    // A HELLO without clientType defaults to tower, as in codev.
    let hello = br#"{"version":1}"#;
    let mut b = vec![0x08, 0, 0, 0, hello.len() as u8];
    b.extend_from_slice(hello);
    let Parsed::Frame {
        frame: Frame::Hello(h),
        ..
    } = parse(&b).unwrap()
    else {
        panic!()
    };
    assert_eq!(h.client_type, shellper_protocol::msg::ClientType::Tower);
}

#[test]
fn spec_md_prints_the_same_vectors() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../SPEC.md"))
        .expect("SPEC.md at the workspace root");
    for (name, ghex) in GOLDEN {
        assert!(
            spec.contains(&format!("| {name} | `{ghex}` |")),
            "SPEC.md does not show the vector of {name}; regenerate with \
             `cargo run -p shellper-protocol --example vectors`"
        );
    }
}
