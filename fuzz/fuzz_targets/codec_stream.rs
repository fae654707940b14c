//! Any byte stream, split at arbitrary points, through the tokio codec: it
//! must never panic, never buffer more than a frame's limit, and must decode
//! the same frames however the stream is split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shellper_protocol::codec::FrameCodec;
use shellper_protocol::frame::{HEADER_LEN, MAX_PAYLOAD};
use tokio_util::codec::Decoder;

fn run(data: &[u8], step: usize) -> (Vec<shellper_protocol::Frame>, bool) {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        assert!(buf.len() <= HEADER_LEN + MAX_PAYLOAD as usize);
    }
    let failed = codec.decode_eof(&mut buf).is_err();
    (out, failed)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let step = data[0] as usize % 17 + 1;
    let whole = run(&data[1..], data.len());
    let split = run(&data[1..], step);
    assert_eq!(whole, split);
});
