//! Any bytes into the frame parser: it must return a frame, "incomplete" or
//! an error, never panic; a decoded known frame must re-encode to bytes that
//! decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shellper_protocol::frame::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Frame { frame, consumed }) = parse(data) {
        assert!(consumed <= data.len());
        if frame.frame_type().is_some() {
            let bytes = frame.to_bytes().expect("a decoded frame re-encodes");
            match parse(&bytes) {
                Ok(Parsed::Frame { frame: again, .. }) => assert_eq!(again, frame),
                other => panic!("re-encoded frame does not parse: {other:?}"),
            }
        }
    }
});
