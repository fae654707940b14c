//! STATUS across lease extension versions (SPEC.md §6.2, §13): version 2
//! appends the session's containment after the v1 fields. A v1 payload
//! still decodes (containment unknown), a v2 payload round-trips, the v1
//! bytes of a v2 status are exactly the old payload, and an old (v1)
//! decoder rejects the v2 form: which is why a shellper appends it only on
//! connections that negotiated version 2.

use shellper_protocol::frame::{Frame, FrameError, Parsed, parse};
use shellper_protocol::msg::Status;
use shellper_protocol::samples::{sample_status, sample_status_v2};
use shellper_protocol::{LEASE_PROTOCOL_VERSION, negotiated_lease_version};

fn payload(f: &Frame) -> Vec<u8> {
    f.encode_payload().expect("encodes").to_vec()
}

fn decode(bytes: &[u8]) -> Result<Status, FrameError> {
    match parse(bytes)? {
        Parsed::Frame {
            frame: Frame::Status(s),
            ..
        } => Ok(*s),
        other => panic!("{other:?}"),
    }
}

#[test]
fn v1_payload_decodes_with_containment_unknown() {
    let v1 = Frame::Status(Box::new(sample_status()));
    let s = decode(&v1.to_bytes().expect("bytes")).expect("decodes");
    assert_eq!(s, sample_status());
    assert_eq!(s.containment, None);
}

#[test]
fn v2_payload_round_trips_and_starts_with_the_v1_bytes() {
    let v2 = sample_status_v2();
    let f = Frame::Status(Box::new(v2.clone()));
    let s = decode(&f.to_bytes().expect("bytes")).expect("decodes");
    assert_eq!(s, v2);
    let v1_bytes = payload(&Frame::Status(Box::new(sample_status())));
    let v2_bytes = payload(&f);
    assert!(v2_bytes.len() > v1_bytes.len());
    assert_eq!(
        &v2_bytes[..v1_bytes.len()],
        &v1_bytes[..],
        "v1 fields first, unchanged"
    );
}

#[test]
fn a_v1_decoder_rejects_the_v2_form_so_it_is_sent_only_when_negotiated() {
    // What every decoder before version 2 does: the v1 struct, strictly.
    let v2_bytes = payload(&Frame::Status(Box::new(sample_status_v2())));
    let (_, rest) = postcard::take_from_bytes::<Status>(&v2_bytes).expect("v1 prefix");
    assert!(
        !rest.is_empty(),
        "an old decoder sees trailing bytes: an error there"
    );
    assert_eq!(negotiated_lease_version(Some(1)), Some(1));
    assert_eq!(negotiated_lease_version(None), None);
    assert_eq!(
        negotiated_lease_version(Some(99)),
        Some(LEASE_PROTOCOL_VERSION)
    );
}

#[test]
fn garbage_after_the_v1_fields_is_still_an_error() {
    let mut b = payload(&Frame::Status(Box::new(sample_status())));
    b.extend_from_slice(&[0xff; 3]);
    let mut frame = vec![0x28];
    frame.extend_from_slice(&(b.len() as u32).to_be_bytes());
    frame.extend_from_slice(&b);
    assert!(decode(&frame).is_err());
    // A complete containment followed by one more byte: trailing.
    let mut b = payload(&Frame::Status(Box::new(sample_status_v2())));
    b.push(0);
    let mut frame = vec![0x28];
    frame.extend_from_slice(&(b.len() as u32).to_be_bytes());
    frame.extend_from_slice(&b);
    assert!(matches!(decode(&frame), Err(FrameError::Trailing { .. })));
}
