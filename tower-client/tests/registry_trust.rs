#![allow(clippy::unwrap_used)]
//! The registry holds secrets and is the only record of a scope's sessions:
//! its `Debug` (and that of anything carrying an entry, such as
//! `AdoptFailure`) never prints a token, its file format stays what SPEC §2
//! says, and a registry that cannot be serialized is an error that leaves
//! the file on disk as it was (it used to be replaced by `{}`, orphaning
//! every session it listed).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use tower_client::{AdoptFailure, Error, Registry};

const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn one_entry() -> Registry {
    let json = format!(
        r#"{{"schema_version":1,"shellpers":[{{"id":"sh-0123abcd","token":"{HEX}","pid":1234,
        "start_ticks":987654,"socket":"/run/user/1000/shellper/sh-0123abcd.sock",
        "command":"bash","args":["-l"],"cwd":"/home/u","created_at_ms":1700000000000}}]}}"#
    );
    Registry::parse(json.as_bytes()).unwrap()
}

#[test]
fn debug_never_prints_a_token() {
    let reg = one_entry();
    let shown = format!("{reg:?} {:?} {:#?}", reg.shellpers[0], reg.shellpers[0]);
    assert!(!shown.contains(HEX), "{shown}");
    assert!(!shown.contains("aabbccddeeff"), "{shown}");
    let failure = AdoptFailure {
        entry: reg.shellpers[0].clone(),
        error: Error::Conn {
            socket: PathBuf::from("/x"),
            step: "connect",
            detail: "refused".into(),
        },
    };
    let shown = format!("{failure:?}");
    assert!(!shown.contains(HEX), "{shown}");
    assert!(shown.contains("sh-0123abcd"), "{shown}");
}

/// The file is SPEC §2's: the token as 64 lowercase hex digits, the other
/// fields as they were.
#[test]
fn file_format_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("registry.json");
    let reg = one_entry();
    reg.save(&path).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"schema_version":1,"shellpers":[{"id":"sh-0123abcd","token":HEX,
            "pid":1234,"start_ticks":987654,"socket":"/run/user/1000/shellper/sh-0123abcd.sock",
            "command":"bash","args":["-l"],"cwd":"/home/u","created_at_ms":1700000000000u64}]})
    );
    assert_eq!(Registry::load(&path).unwrap(), reg);
}

#[test]
fn a_registry_that_cannot_be_serialized_is_an_error_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("registry.json");
    let good = one_entry();
    good.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    let mut bad = good.clone();
    bad.shellpers[0].socket = PathBuf::from(OsStr::from_bytes(b"/run/\xff\xfe.sock"));
    let err = bad
        .save(&path)
        .expect_err("a non-UTF-8 path cannot be written as JSON");
    let text = err.to_string();
    assert!(text.contains("sh-0123abcd"), "{text}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the registry on disk is the previous one"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("registry.json")]);
}
